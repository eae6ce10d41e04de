//! The virtio-blk device on rust-vmm's `vhost-user-backend`: features,
//! config space, and the queue workers that parse, execute and complete
//! requests.
//!
//! One worker thread per queue (queues are served in parallel). A worker
//! takes every available chain from its ring at once, runs them all
//! concurrently against the engine (the engine keeps many requests in flight
//! through io_uring), then publishes all completions with one used-ring
//! update and at most one interrupt (completions are batched).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::join_all;
use parking_lot::RwLock;
use tracing::{debug, warn};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::QueueOwnedT;
use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::export::{Export, Stats, MAX_DISCARD_SEG, SEG_MAX, SIZE_MAX};
use crate::request::{parse, Limits, Request, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};

/// Ring size the device accepts at most.
pub const MAX_QUEUE_SIZE: usize = 256;

/// `VHOST_USER_F_PROTOCOL_FEATURES` (bit 30 of the device features).
const VHOST_USER_F_PROTOCOL_FEATURES: u32 = 30;

/// Length of the config space we serve (through write_zeroes_may_unmap and
/// its padding; virtio 1.2 5.2.4).
pub const CONFIG_BYTES: usize = 60;

/// Guest memory as the backend sees it.
pub type GuestMem = GuestMemoryMmap<()>;

/// Device feature bits for an export.
pub fn device_features(read_only: bool, multiqueue: bool) -> u64 {
    let mut bits = [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_RING_F_EVENT_IDX,
        VHOST_USER_F_PROTOCOL_FEATURES,
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_TOPOLOGY,
    ]
    .iter()
    .fold(0u64, |acc, b| acc | (1u64 << b));
    if multiqueue {
        bits |= 1 << VIRTIO_BLK_F_MQ;
    }
    if read_only {
        bits |= 1 << VIRTIO_BLK_F_RO;
    } else {
        bits |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
    }
    bits
}

/// The virtio-blk config space (little-endian, virtio 1.2 5.2.4).
pub fn config_space(limits: &Limits, num_queues: u16) -> [u8; CONFIG_BYTES] {
    let mut c = [0u8; CONFIG_BYTES];
    let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, &limits.capacity_sectors.to_le_bytes()); // capacity
    put(8, &SIZE_MAX.to_le_bytes()); // size_max
    put(12, &SEG_MAX.to_le_bytes()); // seg_max
                                     // 16..20 geometry: not offered.
    put(20, &512u32.to_le_bytes()); // blk_size
    put(24, &[3]); // physical_block_exp: 4 KiB physical blocks
    put(25, &[0]); // alignment_offset
    put(26, &1u16.to_le_bytes()); // min_io_size (logical blocks)
    put(28, &128u32.to_le_bytes()); // opt_io_size: 64 KiB, the engine's record
                                    // 32 wce, 33 unused
    put(34, &num_queues.to_le_bytes());
    put(36, &limits.max_discard_sectors.to_le_bytes()); // max_discard_sectors
    put(40, &MAX_DISCARD_SEG.to_le_bytes()); // max_discard_seg
    put(44, &1u32.to_le_bytes()); // discard_sector_alignment
    put(48, &limits.max_discard_sectors.to_le_bytes()); // max_write_zeroes_sectors
    put(52, &MAX_DISCARD_SEG.to_le_bytes()); // max_write_zeroes_seg
    put(56, &[1]); // write_zeroes_may_unmap
    c
}

/// The backend of one vhost-user connection.
pub struct BlkBackend {
    export: Arc<Export>,
    limits: Limits,
    config: [u8; CONFIG_BYTES],
    mem: RwLock<Option<GuestMemoryAtomic<GuestMem>>>,
    event_idx: AtomicBool,
    acked_features: AtomicU64,
    exits: Vec<(EventConsumer, EventNotifier)>,
    /// Set when the connection ended: a worker parked at a paused gate must
    /// not run the dead connection's queued requests once the gate opens
    /// (a new frontend may have written newer data since).
    stopped: AtomicBool,
}

impl BlkBackend {
    pub fn new(export: Arc<Export>) -> io::Result<Self> {
        let limits = export.limits();
        let config = config_space(&limits, export.num_queues);
        let exits = (0..export.num_queues)
            .map(|_| new_event_consumer_and_notifier(EventFlag::NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(BlkBackend {
            export,
            limits,
            config,
            mem: RwLock::new(None),
            event_idx: AtomicBool::new(false),
            acked_features: AtomicU64::new(0),
            exits,
            stopped: AtomicBool::new(false),
        })
    }

    /// Tells every worker thread to exit (after the connection ended).
    pub fn stop_workers(&self) {
        self.stopped.store(true, Ordering::Release);
        for (_, notifier) in &self.exits {
            if let Err(e) = notifier.notify() {
                warn!(error = %e, "cannot signal a queue worker to exit");
            }
        }
    }

    /// Waits at the barrier gate for the next batch; `None` once the
    /// connection has ended (checked after the wait, which may be long).
    fn admit(&self) -> Option<crate::export::GateGuard<'_>> {
        let guard = self.export.gate.enter();
        (!self.stopped.load(Ordering::Acquire)).then_some(guard)
    }

    /// Serves one ring until it has no more available chains.
    fn process_queue(&self, vring: &VringRwLock) -> io::Result<()> {
        let Some(atomic) = self.mem.read().clone() else {
            return Ok(());
        };
        loop {
            let Some(_batch) = self.admit() else {
                return Ok(());
            };
            let guard = atomic.memory();
            let mem: &GuestMem = &guard;
            let chains: Vec<_> = {
                let mut state = vring.get_mut();
                let queue = state.get_queue_mut();
                let iter = queue
                    .iter(mem)
                    .map_err(|e| io::Error::other(format!("virtqueue: {e}")))?;
                iter.collect()
            };
            if chains.is_empty() {
                return Ok(());
            }
            let n = chains.len() as u64;
            Stats::add(&self.export.stats.in_flight, n);
            let max = self.limits.max_descriptors() + 1;
            let work = chains.into_iter().map(|chain| {
                let head = chain.head_index();
                let descs: Vec<Descriptor> = chain.take(max).collect();
                async move { (head, self.execute(&descs, mem).await) }
            });
            let done = futures::executor::block_on(join_all(work));
            for (head, used_len) in done {
                vring
                    .add_used(head, used_len)
                    .map_err(|e| io::Error::other(format!("used ring: {e}")))?;
            }
            self.export.stats.in_flight.fetch_sub(n, Ordering::Relaxed);
            Stats::add(&self.export.stats.batches, 1);
            let notify = vring
                .needs_notification()
                .map_err(|e| io::Error::other(format!("used ring: {e}")))?;
            if notify {
                Stats::add(&self.export.stats.notifications, 1);
                vring.signal_used_queue()?;
            }
        }
    }

    /// Parses and runs one chain; returns the used length (bytes written
    /// into guest buffers, status byte included).
    pub async fn execute(&self, descs: &[Descriptor], mem: &GuestMem) -> u32 {
        let stats = &self.export.stats;
        match parse(descs, mem, &self.limits) {
            Err(rejected) => {
                stats.reject(rejected.error.code());
                debug!(export = self.export.target.name(), error = %rejected.error, "request refused");
                match rejected.status {
                    Some(addr) => match mem.write_obj(rejected.error.status(), addr) {
                        Ok(()) => 1,
                        Err(_) => 0,
                    },
                    None => 0,
                }
            }
            Ok(parsed) => {
                let (status, written) = self.run(parsed.request, mem).await;
                match mem.write_obj(status, parsed.status) {
                    Ok(()) => written.saturating_add(1),
                    Err(_) => 0,
                }
            }
        }
    }

    /// Executes a checked request; returns (status, data bytes written to the guest).
    async fn run(&self, request: Request, mem: &GuestMem) -> (u8, u32) {
        let stats = &self.export.stats;
        let target = &self.export.target;
        let kind = request.kind();
        let result: Result<u32, String> = match request {
            Request::Read { sector, len, data } => {
                Stats::add(&stats.reads, 1);
                let mut buf = vec![0u8; len as usize];
                match target
                    .read_into(Request::offset_bytes(sector), &mut buf)
                    .await
                {
                    Err(e) => Err(e.to_string()),
                    Ok(()) => scatter(&buf, &data, mem).map(|()| {
                        Stats::add(&stats.bytes_read, u64::from(len));
                        len
                    }),
                }
            }
            Request::Write { sector, len, data } => {
                Stats::add(&stats.writes, 1);
                match gather(len, &data, mem) {
                    Err(e) => Err(e),
                    Ok(buf) => target
                        .write(Request::offset_bytes(sector), &buf)
                        .await
                        .map(|()| {
                            Stats::add(&stats.bytes_written, u64::from(len));
                            0
                        })
                        .map_err(|e| e.to_string()),
                }
            }
            Request::Flush => {
                Stats::add(&stats.flushes, 1);
                target.flush().await.map(|()| 0).map_err(|e| e.to_string())
            }
            Request::GetId { data } => {
                Stats::add(&stats.get_ids, 1);
                let id = self.export.device_id();
                let n = (data.len as usize).min(id.len());
                mem.write_slice(&id[..n], data.addr)
                    .map(|()| n as u32)
                    .map_err(|e| e.to_string())
            }
            Request::Discard { ranges } => {
                Stats::add(&stats.discards, 1);
                let mut r = Ok(0);
                for range in ranges {
                    if let Err(e) = target
                        .discard(range.offset_bytes(), range.len_bytes())
                        .await
                    {
                        r = Err(e.to_string());
                        break;
                    }
                }
                r
            }
            Request::WriteZeroes { ranges } => {
                Stats::add(&stats.write_zeroes, 1);
                let mut r = Ok(0);
                for range in ranges {
                    if let Err(e) = target
                        .write_zeroes(range.offset_bytes(), range.len_bytes())
                        .await
                    {
                        r = Err(e.to_string());
                        break;
                    }
                }
                r
            }
        };
        match result {
            Ok(written) => (VIRTIO_BLK_S_OK, written),
            Err(error) => {
                Stats::add(&stats.io_errors, 1);
                warn!(export = target.name(), kind, %error, "request failed");
                (VIRTIO_BLK_S_IOERR, 0)
            }
        }
    }
}

/// Copies `buf` into the guest buffers, in order.
fn scatter(buf: &[u8], data: &[crate::request::Buffer], mem: &GuestMem) -> Result<(), String> {
    let mut at = 0usize;
    for b in data {
        let end = at.saturating_add(b.len as usize);
        let src = buf.get(at..end).ok_or("buffer lengths disagree")?;
        mem.write_slice(src, b.addr).map_err(|e| e.to_string())?;
        at = end;
    }
    Ok(())
}

/// Copies the guest buffers into one `len`-byte vector.
fn gather(len: u32, data: &[crate::request::Buffer], mem: &GuestMem) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; len as usize];
    let mut at = 0usize;
    for b in data {
        let end = at.saturating_add(b.len as usize);
        let dst = buf.get_mut(at..end).ok_or("buffer lengths disagree")?;
        mem.read_slice(dst, b.addr).map_err(|e| e.to_string())?;
        at = end;
    }
    Ok(buf)
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        usize::from(self.export.num_queues)
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        device_features(self.limits.read_only, self.export.num_queues > 1)
    }

    fn acked_features(&self, features: u64) {
        self.acked_features.store(features, Ordering::Relaxed);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let start = offset as usize;
        let end = start.saturating_add(size as usize);
        self.config
            .get(start..end)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMem>) -> io::Result<()> {
        *self.mem.write() = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.export.num_queues).map(|i| 1u64 << i).collect()
    }

    fn exit_event(&self, thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (c, n) = self.exits.get(thread_index)?;
        Some((c.try_clone().ok()?, n.try_clone().ok()?))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        let Some(vring) = vrings.get(usize::from(device_event)) else {
            return Err(io::Error::other(format!("no queue {device_event}")));
        };
        if self.event_idx.load(Ordering::Relaxed) {
            // Process, re-enable notifications, and go again if the driver
            // added chains meanwhile (the classic EVENT_IDX race).
            loop {
                vring
                    .disable_notification()
                    .map_err(|e| io::Error::other(e.to_string()))?;
                self.process_queue(vring)?;
                let more = vring
                    .enable_notification()
                    .map_err(|e| io::Error::other(e.to_string()))?;
                if !more {
                    break;
                }
            }
        } else {
            self.process_queue(vring)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::Target;
    use crate::request::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use vm_memory::GuestAddress;

    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const W: u16 = VRING_DESC_F_WRITE as u16;

    fn setup() -> (tempfile::TempDir, BlkBackend, GuestMem) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            cowstore::Store::open_or_create(dir.path().join("s"), cowstore::StoreConfig::default())
                .unwrap();
        let vol = store.create_volume("v", 1 << 20).unwrap();
        let export = Arc::new(Export::new(Target::Volume(vol), 1));
        let backend = BlkBackend::new(export).unwrap();
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        (dir, backend, mem)
    }

    fn header(mem: &GuestMem, t: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&t.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(0x1000)).unwrap();
    }

    #[test]
    fn write_then_read_round_trip_and_hostile_chain_counted() {
        let (_dir, backend, mem) = setup();
        mem.write_slice(&[0xab; 4096], GuestAddress(0x2000))
            .unwrap();
        header(&mem, VIRTIO_BLK_T_OUT, 8);
        let chain = [
            Descriptor::new(0x1000, 16, NEXT, 0),
            Descriptor::new(0x2000, 4096, NEXT, 0),
            Descriptor::new(0x9000, 1, W, 0),
        ];
        let used = futures::executor::block_on(backend.execute(&chain, &mem));
        assert_eq!(used, 1);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x9000)).unwrap(),
            VIRTIO_BLK_S_OK
        );

        header(&mem, VIRTIO_BLK_T_IN, 8);
        let chain = [
            Descriptor::new(0x1000, 16, NEXT, 0),
            Descriptor::new(0x4000, 4096, NEXT | W, 0),
            Descriptor::new(0x9000, 1, W, 0),
        ];
        let used = futures::executor::block_on(backend.execute(&chain, &mem));
        assert_eq!(used, 4097);
        let mut back = [0u8; 4096];
        mem.read_slice(&mut back, GuestAddress(0x4000)).unwrap();
        assert_eq!(back, [0xab; 4096]);

        // Past the end of the 1 MiB volume: IOERR in the status byte, counted.
        header(&mem, VIRTIO_BLK_T_IN, 2047);
        let chain = [
            Descriptor::new(0x1000, 16, NEXT, 0),
            Descriptor::new(0x4000, 4096, NEXT | W, 0),
            Descriptor::new(0x9000, 1, W, 0),
        ];
        let used = futures::executor::block_on(backend.execute(&chain, &mem));
        assert_eq!(used, 1);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x9000)).unwrap(),
            VIRTIO_BLK_S_IOERR
        );
        // No usable status descriptor: nothing written, still counted.
        let chain = [
            Descriptor::new(0x1000, 16, NEXT, 0),
            Descriptor::new(0x9000, 1, 0, 0),
        ];
        assert_eq!(
            futures::executor::block_on(backend.execute(&chain, &mem)),
            0
        );
        let s = backend.export.stats.snapshot();
        assert_eq!(s.writes, 1);
        assert_eq!(s.reads, 1);
        assert_eq!(s.rejected, 2);
        assert_eq!(s.rejected_by_cause.get("out_of_range"), Some(&1));
        assert_eq!(s.rejected_by_cause.get("status_not_writable"), Some(&1));
    }

    /// A worker parked at a paused gate when its connection ends does not
    /// take another batch once the gate opens.
    #[test]
    fn stopped_connection_takes_no_batch_after_resume() {
        let (_dir, backend, _mem) = setup();
        assert!(backend.admit().is_some());
        backend.export.gate.close();
        std::thread::scope(|scope| {
            let parked = scope.spawn(|| backend.admit().is_some());
            std::thread::sleep(std::time::Duration::from_millis(50));
            backend.stop_workers();
            backend.export.gate.open();
            assert!(
                !parked.join().unwrap(),
                "a stopped connection ran a batch after resume"
            );
        });
        assert!(backend.admit().is_none());
    }

    #[test]
    fn config_space_and_features() {
        let (_dir, backend, _mem) = setup();
        let c = backend.get_config(0, CONFIG_BYTES as u32);
        assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 2048);
        assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), SEG_MAX);
        assert!(backend.get_config(u32::MAX, 16).is_empty());
        assert!(backend.get_config(50, 100).is_empty());
        let f = backend.features();
        assert_ne!(f & (1 << VIRTIO_BLK_F_FLUSH), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(device_features(true, false) & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(
            device_features(true, false) & (1 << VIRTIO_BLK_F_DISCARD),
            0
        );
    }
}
