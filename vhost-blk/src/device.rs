//! The virtio-blk device: features, config space, and what a queue's worker
//! thread ([`crate::connection`]) runs on a kick: parse, execute, complete.
//!
//! One worker thread per queue (queues are served in parallel). A worker
//! takes every available chain from its ring at once, marks them in flight
//! ([`crate::inflight`], when the frontend gave a region), runs them all
//! concurrently against the engine (the engine keeps many requests in flight
//! through io_uring), then publishes all completions with one pass over the
//! used ring and at most one interrupt (completions are batched). After a
//! backend restart, the chains the old backend had taken and not completed
//! run first.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::future::join_all;
use parking_lot::{Mutex, RwLock};
use tracing::{debug, warn};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap,
};
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::export::{Export, Stats, MAX_DISCARD_SEG, SEG_MAX, SIZE_MAX};
use crate::inflight::QueueInflight;
use crate::poll::Poller;
use crate::request::{
    parse, Limits, Parsed, Rejected, Request, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
};
use cowstore::limits::{MAX_BATCH_DATA_BYTES, MAX_BATCH_WRITES};

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

/// Does this chain ask to change the volume (OUT, DISCARD, WRITE_ZEROES)?
/// Reads the request type from the header without validating the chain
/// (that is `parse`'s job): a wrong guess only costs an ordering wait.
fn mutates(descs: &[Descriptor], mem: &GuestMem) -> bool {
    let Some(first) = descs.first() else {
        return false;
    };
    matches!(
        mem.read_obj::<u32>(first.addr()).map(u32::from_le),
        Ok(crate::request::VIRTIO_BLK_T_OUT
            | crate::request::VIRTIO_BLK_T_DISCARD
            | crate::request::VIRTIO_BLK_T_WRITE_ZEROES)
    )
}

/// Work for a pipeline (see [`BlkBackend::plan`]).
enum Job {
    /// One chain, parsed or refused.
    One(u16, Result<Parsed, Rejected>),
    /// Writes run as one engine batch.
    Writes(Vec<WriteJob>),
}

/// A checked write request of a [`Job::Writes`].
struct WriteJob {
    head: u16,
    sector: u64,
    len: u32,
    data: Vec<crate::request::Buffer>,
    status: GuestAddress,
}

/// The most requests one pipeline takes from a ring before it drains
/// and the worker starts a new pass.
const PIPELINE_MAX_REQUESTS: usize = 4096;

/// How a pass over a ring ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    /// No available chain was left.
    Drained,
    /// The ring may not be served now (connection ended, ring stopped, no
    /// guest memory); chains may still be waiting in it.
    Refused,
}

/// Inflight tracking state of one queue (see [`crate::inflight`]).
#[derive(Default)]
struct Track {
    inflight: Option<QueueInflight>,
    /// Fetch-order counter the next chain gets.
    counter: u64,
    /// Heads to run again before taking new chains (after a reconnect).
    resubmit: Vec<u16>,
}

/// The backend of one vhost-user connection.
pub struct BlkBackend {
    export: Arc<Export>,
    limits: Limits,
    config: [u8; CONFIG_BYTES],
    mem: RwLock<Option<GuestMemoryAtomic<GuestMem>>>,
    event_idx: AtomicBool,
    exits: Vec<(EventConsumer, EventNotifier)>,
    tracks: Vec<Mutex<Track>>,
    /// Held by a queue's worker while it runs a batch, so that stopping a
    /// ring (GET_VRING_BASE) can wait until nothing more goes into it.
    busy: Vec<Mutex<()>>,
    /// Set when the connection ended: a worker parked at a paused gate must
    /// not run the dead connection's queued requests once the gate opens
    /// (a new frontend may have written newer data since).
    stopped: AtomicBool,
    /// Per queue: polling after passes that wrote (see [`crate::poll`]).
    pollers: Vec<Poller>,
}

impl BlkBackend {
    pub fn new(export: Arc<Export>) -> io::Result<Self> {
        let limits = export.limits();
        let config = config_space(&limits, export.num_queues);
        let exits = (0..export.num_queues)
            .map(|_| new_event_consumer_and_notifier(EventFlag::NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        let tracks = (0..export.num_queues)
            .map(|_| Mutex::new(Track::default()))
            .collect();
        let export_queues = export.num_queues;
        Ok(BlkBackend {
            export,
            limits,
            config,
            mem: RwLock::new(None),
            event_idx: AtomicBool::new(false),
            exits,
            tracks,
            busy: (0..export_queues).map(|_| Mutex::new(())).collect(),
            stopped: AtomicBool::new(false),
            pollers: (0..export_queues).map(|_| Poller::default()).collect(),
        })
    }

    /// The export's name (for logs and thread names).
    pub fn name(&self) -> &str {
        self.export.target.name()
    }

    /// Queues the device offers.
    pub fn num_queues(&self) -> u16 {
        self.export.num_queues
    }

    /// Device feature bits.
    pub fn features(&self) -> u64 {
        device_features(self.limits.read_only, self.export.num_queues > 1)
    }

    /// vhost-user protocol features.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
    }

    pub fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    /// `size` bytes of config space from `offset` (empty when out of range).
    pub fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let start = offset as usize;
        let end = start.saturating_add(size as usize);
        self.config
            .get(start..end)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    pub fn update_memory(&self, mem: GuestMemoryAtomic<GuestMem>) {
        *self.mem.write() = Some(mem);
    }

    /// The event a queue's worker waits on to exit.
    pub fn exit_event(&self, queue: u16) -> Option<EventConsumer> {
        self.exits.get(usize::from(queue))?.0.try_clone().ok()
    }

    /// Sets a queue's inflight tracking when its ring starts: the region
    /// (if the frontend gave one), the chains to resubmit first, and the
    /// counter to continue from.
    pub fn set_tracking(
        &self,
        queue: u16,
        inflight: Option<QueueInflight>,
        resubmit: Vec<u16>,
        next_counter: u64,
    ) {
        if let Some(t) = self.tracks.get(usize::from(queue)) {
            *t.lock() = Track {
                inflight,
                counter: next_counter,
                resubmit,
            };
        }
    }

    /// Waits until queue `queue`'s worker is not running a batch. Called
    /// after the ring was stopped: the worker takes no new batch from a
    /// stopped ring, so from here on nothing is written to its used ring.
    pub fn quiesce(&self, queue: u16) {
        if let Some(b) = self.busy.get(usize::from(queue)) {
            drop(b.lock());
        }
    }

    /// Has the connection ended?
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
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

    /// Serves queue `queue` after a kick: with EVENT_IDX, processes,
    /// re-enables notifications and goes again if the driver added chains
    /// meanwhile (the classic EVENT_IDX race).
    pub fn serve(&self, queue: u16, vring: &VringRwLock) -> io::Result<()> {
        let poller = self
            .pollers
            .get(usize::from(queue))
            .ok_or_else(|| io::Error::other(format!("no queue {queue}")))?;
        if !self.event_idx.load(Ordering::Relaxed) {
            return self.process_queue(queue, poller, vring).map(drop);
        }
        poller.woken(self.export.poll_after_write);
        loop {
            vring
                .disable_notification()
                .map_err(|e| io::Error::other(e.to_string()))?;
            if self.process_queue(queue, poller, vring)? == Pass::Refused {
                // The chains left in the ring stay there: asking the ring
                // for "more" again would spin on them forever (it did, at
                // SIGTERM under load: the worker never saw its exit event).
                return Ok(());
            }
            let idle_since = std::time::Instant::now();
            if self.poll_for_chains(poller, vring) {
                continue;
            }
            let more = vring
                .enable_notification()
                .map_err(|e| io::Error::other(e.to_string()))?;
            if !more {
                poller.sleeping(idle_since);
                return Ok(());
            }
        }
    }

    /// Watches the ring for new chains for the poller's budget (see
    /// [`crate::poll`]); true when it has some. No PAUSE in the loop: a
    /// hypervisor's pause-loop exiting would deschedule the poller.
    fn poll_for_chains(&self, poller: &Poller, vring: &VringRwLock) -> bool {
        let budget = poller.budget(self.export.poll_after_write);
        if budget.is_zero() {
            return false;
        }
        let Some(atomic) = self.mem.read().clone() else {
            return false;
        };
        let guard = atomic.memory();
        let start = std::time::Instant::now();
        while start.elapsed() < budget {
            {
                let state = vring.get_ref();
                let queue = state.get_queue();
                match queue.avail_idx(&*guard, Ordering::Acquire) {
                    Ok(idx) if idx.0 != queue.next_avail() => {
                        Stats::add(&self.export.stats.poll_hits, 1);
                        return true;
                    }
                    Ok(_) => {}
                    // The ring left guest memory: let the pass report it.
                    Err(_) => return true,
                }
                if !queue.ready() {
                    return false;
                }
            }
            if self.stopped() {
                return false;
            }
        }
        Stats::add(&self.export.stats.poll_misses, 1);
        false
    }

    /// Puts one completed chain into the used ring, with the inflight
    /// protocol's steps around it (last_batch_head, used ring, clear).
    fn complete(
        &self,
        vring: &VringRwLock,
        inflight: Option<&QueueInflight>,
        head: u16,
        used_len: u32,
    ) -> io::Result<()> {
        if let Some(q) = inflight {
            q.before_used(head).map_err(io::Error::other)?;
        }
        vring
            .add_used(head, used_len)
            .map_err(|e| io::Error::other(format!("used ring: {e}")))?;
        if let Some(q) = inflight {
            let used_idx = vring.get_ref().get_queue().next_used();
            q.after_used(head, used_idx).map_err(io::Error::other)?;
        }
        Ok(())
    }

    /// Interrupts the driver if the ring says it wants one.
    fn notify(&self, vring: &VringRwLock) -> io::Result<()> {
        let notify = vring
            .needs_notification()
            .map_err(|e| io::Error::other(format!("used ring: {e}")))?;
        if notify {
            Stats::add(&self.export.stats.notifications, 1);
            vring.signal_used_queue()?;
        }
        Ok(())
    }

    /// Runs the chains a previous backend had taken and not completed, one
    /// at a time in the order it took them (so two writes to one block land
    /// in the order the guest sent them). Completions are published in one
    /// go at the end; each write was acknowledged by the engine only after
    /// every earlier one landed (see `cowstore::Volume::write`).
    fn resubmit(
        &self,
        vring: &VringRwLock,
        inflight: Option<&QueueInflight>,
        heads: Vec<u16>,
        mem: &GuestMem,
    ) -> io::Result<()> {
        let (desc_table, queue_size) = {
            let state = vring.get_ref();
            let q = state.get_queue();
            (GuestAddress(q.desc_table()), q.size())
        };
        let max = self.limits.max_descriptors() + 1;
        let mut done = Vec::with_capacity(heads.len());
        for head in heads {
            let used_len = match walk_chain(mem, desc_table, queue_size, head, max) {
                Ok(descs) => futures::executor::block_on(self.execute(&descs, mem)),
                Err(e) => {
                    warn!(export = self.name(), head, error = %e, "cannot resubmit a chain");
                    0
                }
            };
            done.push((head, used_len));
        }
        for (head, used_len) in done {
            self.complete(vring, inflight, head, used_len)?;
        }
        Stats::add(&self.export.stats.batches, 1);
        self.notify(vring)
    }

    /// Serves one ring until it has no more available chains (`Drained`),
    /// or until it may not be served: the connection ended, the ring
    /// stopped or has no memory (`Refused`).
    fn process_queue(&self, queue: u16, poller: &Poller, vring: &VringRwLock) -> io::Result<Pass> {
        let Some(atomic) = self.mem.read().clone() else {
            return Ok(Pass::Refused);
        };
        let track = self
            .tracks
            .get(usize::from(queue))
            .ok_or_else(|| io::Error::other(format!("no queue {queue}")))?;
        let (inflight, resubmit) = {
            let mut t = track.lock();
            (t.inflight.clone(), std::mem::take(&mut t.resubmit))
        };
        let busy = self
            .busy
            .get(usize::from(queue))
            .ok_or_else(|| io::Error::other(format!("no queue {queue}")))?;
        let ready = || vring.get_ref().get_queue().ready();
        if !resubmit.is_empty() {
            let Some(_batch) = self.admit() else {
                return Ok(Pass::Refused);
            };
            let _busy = busy.lock();
            if !ready() {
                return Ok(Pass::Refused);
            }
            let guard = atomic.memory();
            self.resubmit(vring, inflight.as_ref(), resubmit, &guard)?;
        }
        loop {
            let Some(_batch) = self.admit() else {
                return Ok(Pass::Refused);
            };
            let _busy = busy.lock();
            if !ready() {
                return Ok(Pass::Refused);
            }
            let guard = atomic.memory();
            let mem: &GuestMem = &guard;
            let batch = self.take_chains(vring, inflight.as_ref(), track, mem)?;
            if batch.is_empty() {
                return Ok(Pass::Drained);
            }
            if batch.len() > 1 {
                let wrote = self.run_pipelined(vring, inflight.as_ref(), track, batch, mem)?;
                poller.set_wrote(wrote);
            } else {
                let writes = batch.iter().any(|(_, descs)| mutates(descs, mem));
                poller.set_wrote(writes);
                self.run_closed(vring, inflight.as_ref(), batch, mem)?;
            }
        }
    }

    /// Takes every available chain from the ring (at most the descriptor
    /// limit of each, plus one so that a longer chain is refused), marking
    /// each in flight before any of them runs: a crash from here on
    /// resubmits exactly the unfinished ones.
    fn take_chains(
        &self,
        vring: &VringRwLock,
        inflight: Option<&QueueInflight>,
        track: &Mutex<Track>,
        mem: &GuestMem,
    ) -> io::Result<Vec<(u16, Vec<Descriptor>)>> {
        let chains: Vec<_> = {
            let mut state = vring.get_mut();
            let queue = state.get_queue_mut();
            let iter = queue
                .iter(mem)
                .map_err(|e| io::Error::other(format!("virtqueue: {e}")))?;
            iter.collect()
        };
        if let Some(q) = inflight {
            let mut t = track.lock();
            for chain in &chains {
                q.mark(chain.head_index(), t.counter)
                    .map_err(io::Error::other)?;
                t.counter += 1;
            }
        }
        let max = self.limits.max_descriptors() + 1;
        let taken: Vec<(u16, Vec<Descriptor>)> = chains
            .into_iter()
            .map(|chain| (chain.head_index(), chain.take(max).collect()))
            .collect();
        Stats::add(&self.export.stats.in_flight, taken.len() as u64);
        Ok(taken)
    }

    /// Runs a batch of chains to the end, then publishes all their
    /// completions.
    fn run_closed(
        &self,
        vring: &VringRwLock,
        inflight: Option<&QueueInflight>,
        batch: Vec<(u16, Vec<Descriptor>)>,
        mem: &GuestMem,
    ) -> io::Result<()> {
        let n = batch.len() as u64;
        let work = batch
            .iter()
            .map(|(head, descs)| async move { (*head, self.execute(descs, mem).await) });
        // A lone request waits for its I/O inline: nothing else in this
        // pass could run meanwhile (see cowstore::with_inline_io).
        let done =
            cowstore::with_inline_io(batch.len() == 1, || cowstore::block_on(join_all(work)));
        for (head, used_len) in done {
            self.complete(vring, inflight, head, used_len)?;
        }
        self.export.stats.in_flight.fetch_sub(n, Ordering::Relaxed);
        Stats::add(&self.export.stats.batches, 1);
        self.notify(vring)
    }

    /// Runs requests as a pipeline: each completion is published as soon as
    /// it is ready, and after every wave of completions the ring is looked
    /// at again, so a slow request no longer holds back the ones behind it
    /// (with closed batches, depth-32 reads waited for the slowest of 32,
    /// and 128 KiB writes at depth 8 ran at 0.75 of the pipeline's rate).
    /// Writes need no ordering here: the engine completes a volume's writes
    /// in log order (see `cowstore::Volume::write`), so none is acknowledged
    /// while an earlier one, which recovery after a kill -9 would cut it
    /// with, is still on its way; that holds across queues too. Returns
    /// whether any request asked to change the volume. The pipeline drains,
    /// taking nothing new, when the ring stops, the connection ends or the
    /// snapshot barrier closes the gate, and after `PIPELINE_MAX_REQUESTS`
    /// requests (so that the guest memory map and the gate are taken anew
    /// now and then however busy the guest keeps the ring).
    fn run_pipelined(
        &self,
        vring: &VringRwLock,
        inflight: Option<&QueueInflight>,
        track: &Mutex<Track>,
        batch: Vec<(u16, Vec<Descriptor>)>,
        mem: &GuestMem,
    ) -> io::Result<bool> {
        use futures::stream::{FuturesUnordered, StreamExt};
        use futures::FutureExt;
        use std::os::fd::AsRawFd;
        use std::task::Poll;
        let run = |job: Job| async move { self.run_job(job, mem).await };
        let mut taken = batch.len();
        let mut wrote = batch.iter().any(|(_, descs)| mutates(descs, mem));
        Stats::add(&self.export.stats.pipelined, taken as u64);
        let mut running: FuturesUnordered<_> = self.plan(batch, mem).into_iter().map(run).collect();
        // Notifications stay on while the pipeline runs, and the kick
        // eventfd wakes it (a duplicate, so that it outlives the poll): a
        // chain the driver adds then starts at once. Looked for only after
        // each completion, it waited for the next one, and the disk held
        // half the requests the driver had out (128 KiB direct appends at
        // depth 8: 2-3 of 8 against qemu-storage-daemon's 4-5).
        let kick = vring
            .get_ref()
            .get_kick()
            .as_ref()
            .and_then(|k| k.try_clone().ok());
        // The engine's direct appends go to this thread's own ring, reaped
        // here while the pipeline waits (see `cowstore::block_on`).
        cowstore::block_on(async {
            let mut kicked: Option<cowstore::Readable> = None;
            let mut open = true;
            while !running.is_empty() {
                if open {
                    open = taken < PIPELINE_MAX_REQUESTS
                        && !self.stopped()
                        && !self.export.gate.is_paused()
                        && vring.get_ref().get_queue().ready();
                }
                if open {
                    // Re-armed after every take: with EVENT_IDX the driver
                    // kicks only when it passes the index armed last.
                    let more = vring
                        .enable_notification()
                        .map_err(|e| io::Error::other(e.to_string()))?;
                    if more {
                        let popped = self.take_chains(vring, inflight, track, mem)?;
                        taken += popped.len();
                        wrote |= popped.iter().any(|(_, descs)| mutates(descs, mem));
                        Stats::add(&self.export.stats.pipelined, popped.len() as u64);
                        running.extend(self.plan(popped, mem).into_iter().map(run));
                    }
                    if kicked.is_none() {
                        kicked = kick.as_ref().map(|k| cowstore::readable(k.as_raw_fd()));
                    }
                } else {
                    kicked = None;
                }
                let first = std::future::poll_fn(|cx| {
                    if let Poll::Ready(Some(done)) = running.poll_next_unpin(cx) {
                        return Poll::Ready(Some(done));
                    }
                    match kicked.as_mut().map(|k| k.poll_unpin(cx)) {
                        Some(Poll::Ready(())) => Poll::Ready(None),
                        _ => Poll::Pending,
                    }
                })
                .await;
                let Some(first) = first else {
                    kicked = None;
                    if let Some(k) = &kick {
                        // Readable, and only this thread reads it: no wait.
                        let _ = k.consume();
                    }
                    continue;
                };
                let mut done = first;
                while let Some(Some(more)) = running.next().now_or_never() {
                    done.extend(more);
                }
                for (head, used_len) in done.iter().copied() {
                    self.complete(vring, inflight, head, used_len)?;
                }
                self.export
                    .stats
                    .in_flight
                    .fetch_sub(done.len() as u64, Ordering::Relaxed);
                self.notify(vring)?;
            }
            io::Result::Ok(())
        })?;
        Stats::add(&self.export.stats.batches, 1);
        Ok(wrote)
    }

    /// Parses and runs one chain; returns the used length (bytes written
    /// into guest buffers, status byte included).
    pub async fn execute(&self, descs: &[Descriptor], mem: &GuestMem) -> u32 {
        self.finish(parse(descs, mem, &self.limits), mem).await
    }

    /// Parses the chains of one take from the ring into the jobs of a
    /// pipeline: the writes among them become batches of
    /// [`cowstore::Volume::write_many`] (up to the engine's batch limits),
    /// everything else runs alone. A batch costs the engine one log write
    /// where its writes each cost one (with one page pad each in a reused
    /// segment, 3% of a 128 KiB write and half of a 4 KiB one), and the
    /// guest's writes at depth arrive several at a time.
    fn plan(&self, chains: Vec<(u16, Vec<Descriptor>)>, mem: &GuestMem) -> Vec<Job> {
        let mut jobs = Vec::with_capacity(chains.len());
        let mut writes: Vec<WriteJob> = Vec::new();
        let mut writes_bytes = 0usize;
        for (head, descs) in chains {
            let parsed = parse(&descs, mem, &self.limits);
            let write = match parsed {
                Ok(Parsed {
                    request: Request::Write { sector, len, data },
                    status,
                }) if (len as usize) <= MAX_BATCH_DATA_BYTES => WriteJob {
                    head,
                    sector,
                    len,
                    data,
                    status,
                },
                other => {
                    jobs.push(Job::One(head, other));
                    continue;
                }
            };
            if writes.len() == MAX_BATCH_WRITES
                || writes_bytes + write.len as usize > MAX_BATCH_DATA_BYTES
            {
                writes_bytes = 0;
                jobs.push(Job::Writes(std::mem::take(&mut writes)));
            }
            writes_bytes += write.len as usize;
            writes.push(write);
        }
        if !writes.is_empty() {
            jobs.push(Job::Writes(writes));
        }
        jobs
    }

    /// Runs one job of a pipeline; returns each chain's used length.
    async fn run_job(&self, job: Job, mem: &GuestMem) -> Vec<(u16, u32)> {
        match job {
            Job::One(head, parsed) => vec![(head, self.finish(parsed, mem).await)],
            Job::Writes(writes) => self.run_writes(writes, mem).await,
        }
    }

    /// Runs checked writes as one engine batch and reports each to the
    /// guest: a write fails alone when its data cannot be taken, all fail
    /// when the log write does.
    async fn run_writes(&self, writes: Vec<WriteJob>, mem: &GuestMem) -> Vec<(u16, u32)> {
        let stats = &self.export.stats;
        let target = &self.export.target;
        Stats::add(&stats.writes, writes.len() as u64);
        let mut results: Vec<Result<(), String>> = Vec::with_capacity(writes.len());
        let mut batch = Vec::with_capacity(writes.len());
        let mut in_batch = Vec::with_capacity(writes.len());
        for (i, w) in writes.iter().enumerate() {
            match GuestData::new(w.len, &w.data, mem) {
                Err(e) => results.push(Err(e)),
                Ok(mut guest) => {
                    results.push(Ok(()));
                    in_batch.push(i);
                    let fill = move |out: &mut Vec<u8>, n: usize| guest.take(out, n);
                    batch.push((Request::offset_bytes(w.sector), u64::from(w.len), fill));
                }
            }
        }
        if batch.len() > 1 {
            Stats::add(&stats.write_batches, 1);
            Stats::add(&stats.batched_writes, batch.len() as u64);
        }
        if !batch.is_empty() {
            for (i, r) in in_batch.into_iter().zip(target.write_many(batch).await) {
                results[i] = r.map_err(|e| e.to_string());
            }
        }
        writes
            .iter()
            .zip(results)
            .map(|(w, result)| {
                let status = match result {
                    Ok(()) => {
                        Stats::add(&stats.bytes_written, u64::from(w.len));
                        VIRTIO_BLK_S_OK
                    }
                    Err(error) => {
                        Stats::add(&stats.io_errors, 1);
                        warn!(export = target.name(), kind = "write", %error, "request failed");
                        VIRTIO_BLK_S_IOERR
                    }
                };
                let used_len = match mem.write_obj(status, w.status) {
                    Ok(()) => 1,
                    Err(_) => 0,
                };
                (w.head, used_len)
            })
            .collect()
    }

    /// Runs a parsed (or refused) chain; returns its used length.
    async fn finish(&self, parsed: Result<Parsed, Rejected>, mem: &GuestMem) -> u32 {
        let stats = &self.export.stats;
        match parsed {
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
                match GuestData::new(len, &data, mem) {
                    Err(e) => Err(e),
                    Ok(mut guest) => target
                        .write_from(Request::offset_bytes(sector), u64::from(len), |out, n| {
                            guest.take(out, n)
                        })
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

/// Reads a write request's data out of its guest buffers, in order, a
/// piece at a time: the engine asks for one log record's worth at a time and
/// takes it straight into the record ([`cowstore::Volume::write_from`]), so
/// the data is copied from guest memory once. Appends to uninitialised
/// capacity (vm-memory's `WriteVolatile` for `Vec`): zeroing first cost a
/// tenth of a queue worker's time on 128 KiB writes, and the extra copy of
/// a gathered request another tenth.
struct GuestData<'a> {
    buffers: &'a [crate::request::Buffer],
    mem: &'a GuestMem,
    /// Buffer being read and bytes of it already taken.
    index: usize,
    taken: u32,
}

impl<'a> GuestData<'a> {
    /// Fails unless the buffers hold exactly `len` bytes.
    fn new(
        len: u32,
        buffers: &'a [crate::request::Buffer],
        mem: &'a GuestMem,
    ) -> Result<Self, String> {
        let total: u64 = buffers.iter().map(|b| u64::from(b.len)).sum();
        if total != u64::from(len) {
            return Err("buffer lengths disagree".into());
        }
        Ok(GuestData {
            buffers,
            mem,
            index: 0,
            taken: 0,
        })
    }

    /// Appends the next `len` bytes to `out`.
    fn take(&mut self, out: &mut Vec<u8>, mut len: usize) -> Result<(), String> {
        while len > 0 {
            let b = self
                .buffers
                .get(self.index)
                .ok_or("request data ends early")?;
            let left = (b.len - self.taken) as usize;
            let now = left.min(len);
            let addr = b
                .addr
                .checked_add(u64::from(self.taken))
                .ok_or("buffer address overflows")?;
            self.mem
                .write_all_volatile_to(addr, out, now)
                .map_err(|e| e.to_string())?;
            len -= now;
            if now == left {
                self.index += 1;
                self.taken = 0;
            } else {
                self.taken += now as u32; // now < left <= u32::MAX
            }
        }
        Ok(())
    }
}

/// The descriptors of the chain whose head is `head`, read from the ring's
/// descriptor table in guest memory (used to resubmit chains a previous
/// backend had taken: the ring's iterator only walks chains it pops). Follows
/// one indirect table like the ring's iterator does; at most `max`
/// descriptors are returned, and a chain that loops or leaves its table is
/// refused.
pub fn walk_chain(
    mem: &GuestMem,
    desc_table: GuestAddress,
    queue_size: u16,
    head: u16,
    max: usize,
) -> Result<Vec<Descriptor>, String> {
    const DESC_BYTES: u64 = 16;
    let mut table = desc_table;
    let mut table_len = u32::from(queue_size);
    let mut index = head;
    let mut indirect = false;
    // Each table is visited at most once per entry.
    let mut budget = u32::from(queue_size);
    let mut out = Vec::new();
    loop {
        if u32::from(index) >= table_len {
            return Err(format!(
                "descriptor index {index} outside a table of {table_len}"
            ));
        }
        if budget == 0 {
            return Err("descriptor chain loops".into());
        }
        budget -= 1;
        let addr = table
            .checked_add(u64::from(index) * DESC_BYTES)
            .ok_or("descriptor address overflows")?;
        let d: Descriptor = mem.read_obj(addr).map_err(|e| e.to_string())?;
        if d.flags() & VRING_DESC_F_INDIRECT as u16 != 0 {
            if indirect || d.flags() & VRING_DESC_F_NEXT as u16 != 0 {
                return Err("misplaced indirect descriptor".into());
            }
            if d.len() == 0 || u64::from(d.len()) % DESC_BYTES != 0 {
                return Err(format!("indirect table of {} bytes", d.len()));
            }
            let len = u64::from(d.len()) / DESC_BYTES;
            if len > u64::from(u16::MAX) + 1 {
                return Err(format!("indirect table of {len} descriptors"));
            }
            indirect = true;
            table = d.addr();
            table_len = len as u32;
            budget = table_len;
            index = 0;
            continue;
        }
        out.push(d);
        if out.len() >= max || d.flags() & VRING_DESC_F_NEXT as u16 == 0 {
            return Ok(out);
        }
        index = d.next();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::Target;
    use crate::request::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;

    /// A write's data is taken in record-sized pieces that cross guest
    /// buffer boundaries anywhere; the bytes come out in order. Buffers
    /// whose lengths disagree with the request, or that leave guest memory,
    /// are errors, not panics or short reads.
    #[test]
    fn guest_data_is_taken_in_pieces_across_buffers() {
        use crate::request::Buffer;
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let bytes: Vec<u8> = (0..(128u32 << 10)).map(|i| (i % 251) as u8).collect();
        // Three buffers, out of address order, none aligned to a piece.
        let buffers = [
            Buffer {
                addr: GuestAddress(0x80000),
                len: 100 << 10,
            },
            Buffer {
                addr: GuestAddress(0x1000),
                len: 20 << 10,
            },
            Buffer {
                addr: GuestAddress(0x40000),
                len: 8 << 10,
            },
        ];
        let mut at = 0;
        for b in &buffers {
            let end = at + b.len as usize;
            mem.write_slice(&bytes[at..end], b.addr).unwrap();
            at = end;
        }
        let mut data = GuestData::new(128 << 10, &buffers, &mem).unwrap();
        let mut out = Vec::new();
        for piece in [64 << 10, 512, (64 << 10) - 512] {
            data.take(&mut out, piece).unwrap();
        }
        assert!(out == bytes, "bytes out of order");
        assert!(data.take(&mut out, 1).is_err(), "read past the last buffer");

        assert!(GuestData::new(4096, &buffers, &mem).is_err());
        let outside = [Buffer {
            addr: GuestAddress((1 << 20) - 512),
            len: 4096,
        }];
        let mut data = GuestData::new(4096, &outside, &mem).unwrap();
        assert!(data.take(&mut Vec::new(), 4096).is_err());
    }

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

    /// A 16-entry vring over the mock queue `vq` in `mem`, with `backend`
    /// given that memory (not yet ready or enabled).
    fn vring_on(
        backend: &BlkBackend,
        mem: &GuestMem,
        vq: &virtio_queue::mock::MockSplitQueue<GuestMem>,
    ) -> VringRwLock {
        let atomic = GuestMemoryAtomic::new(mem.clone());
        backend.update_memory(atomic.clone());
        let vring = VringRwLock::new(atomic, 16).unwrap();
        vring.set_queue_size(16);
        vring
            .set_queue_info(vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0)
            .unwrap();
        vring
    }

    /// [`vring_on`], ready and enabled.
    fn serving_vring_on(
        backend: &BlkBackend,
        mem: &GuestMem,
        vq: &virtio_queue::mock::MockSplitQueue<GuestMem>,
    ) -> VringRwLock {
        let vring = vring_on(backend, mem, vq);
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        vring
    }

    /// 4 KiB of the backend's volume at `sector`, read through the engine.
    fn volume_block(backend: &BlkBackend, sector: u64) -> Vec<u8> {
        let mut out = vec![0u8; 4096];
        futures::executor::block_on(backend.export.target.read_into(sector * 512, &mut out))
            .unwrap();
        out
    }

    /// With EVENT_IDX, a stopped connection's worker leaves `serve` although
    /// chains wait in the ring (it once asked the ring for "more" forever,
    /// so cowstored never exited on SIGTERM under load).
    #[test]
    fn stopped_connection_leaves_serve_with_chains_in_the_ring() {
        use virtio_queue::mock::MockSplitQueue;

        let (_dir, backend, _) = setup();
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let mut descs = Vec::new();
        for k in 0..2u16 {
            descs.extend(write_chain(
                &mem,
                3 * k,
                u64::from(k),
                8 * u64::from(k),
                0x5a,
            ));
        }
        vq.add_desc_chains(&descs, 0).unwrap();
        let vring = vring_on(&backend, &mem, &vq);
        vring.set_queue_event_idx(true);
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        backend.set_event_idx(true);
        backend.stop_workers();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let r = backend.serve(0, &vring);
                let _ = tx.send(r.is_ok());
            });
            let returned = rx.recv_timeout(std::time::Duration::from_secs(10));
            if returned.is_err() {
                // Let the spinning worker go so the test can end and fail:
                // an empty ring gives it no "more".
                vq.avail().idx().store(0);
            }
            assert_eq!(returned, Ok(true), "serve did not return after the stop");
        });
        // Nothing ran: the chains are still available, the used ring empty.
        assert_eq!(vq.used().idx().load(), 0);
    }

    /// A chain of 3 descriptors at table index `at` for 4 KiB at sector
    /// `sector`, using slot `k`'s header, data buffer and status byte: OUT
    /// of `fill` bytes with `Some(fill)`, IN into the data buffer with `None`.
    fn data_chain(
        mem: &GuestMem,
        at: u16,
        k: u64,
        sector: u64,
        fill: Option<u8>,
    ) -> [virtio_queue::desc::RawDescriptor; 3] {
        let hdr = 0x10_0000 + k * 0x100;
        let data = 0x20_0000 + k * 0x1000;
        let (kind, data_flags) = match fill {
            Some(byte) => {
                mem.write_slice(&[byte; 4096], GuestAddress(data)).unwrap();
                (VIRTIO_BLK_T_OUT, NEXT)
            }
            None => (VIRTIO_BLK_T_IN, NEXT | W),
        };
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(hdr)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(0x30_0000 + k)).unwrap();
        [
            Descriptor::new(hdr, 16, NEXT, at + 1).into(),
            Descriptor::new(data, 4096, data_flags, at + 2).into(),
            Descriptor::new(0x30_0000 + k, 1, W, 0).into(),
        ]
    }

    fn write_chain(
        mem: &GuestMem,
        at: u16,
        k: u64,
        sector: u64,
        fill: u8,
    ) -> [virtio_queue::desc::RawDescriptor; 3] {
        data_chain(mem, at, k, sector, Some(fill))
    }

    fn read_chain(
        mem: &GuestMem,
        at: u16,
        k: u64,
        sector: u64,
    ) -> [virtio_queue::desc::RawDescriptor; 3] {
        data_chain(mem, at, k, sector, None)
    }

    /// A pop of several chains runs as a pipeline, writes and reads alike,
    /// a lone chain as a closed batch of one; both complete every chain with
    /// the right data and status and leave nothing counted in flight.
    #[test]
    fn pipelines_and_lone_requests_complete_every_chain() {
        use virtio_queue::mock::MockSplitQueue;

        let (_dir, backend, _) = setup();
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let vring = serving_vring_on(&backend, &mem, &vq);
        let serve = |heads: &[[virtio_queue::desc::RawDescriptor; 3]]| {
            let descs: Vec<_> = heads.iter().flatten().copied().collect();
            vq.add_desc_chains(&descs, 0).unwrap();
            backend.serve(0, &vring).unwrap();
        };
        // Two writes (sectors 0 and 8): a pipeline.
        serve(&[
            write_chain(&mem, 0, 0, 0, 0x11),
            write_chain(&mem, 3, 1, 8, 0x22),
        ]);
        assert_eq!(vq.used().idx().load(), 2);
        assert_eq!(backend.export.stats.snapshot().pipelined, 2);
        // Reads: five chains, alternating sectors.
        let reads: Vec<_> = (0..5u16)
            .map(|k| read_chain(&mem, 3 * k, u64::from(k), 8 * u64::from(k % 2)))
            .collect();
        serve(&reads);
        assert_eq!(vq.used().idx().load(), 7);
        assert_eq!(backend.export.stats.snapshot().pipelined, 7);
        for k in 0..5u64 {
            let status: u8 = mem.read_obj(GuestAddress(0x30_0000 + k)).unwrap();
            assert_eq!(status, VIRTIO_BLK_S_OK, "read {k}");
            let mut back = [0u8; 4096];
            mem.read_slice(&mut back, GuestAddress(0x20_0000 + k * 0x1000))
                .unwrap();
            let want = if k % 2 == 0 { 0x11 } else { 0x22 };
            assert!(back.iter().all(|&b| b == want), "read {k}");
        }
        // A write among reads.
        let mixed = [
            read_chain(&mem, 0, 0, 8),
            write_chain(&mem, 3, 1, 16, 0x33),
            read_chain(&mem, 6, 2, 0),
        ];
        serve(&mixed);
        assert_eq!(vq.used().idx().load(), 10);
        let vol_read = |sector: u64| volume_block(&backend, sector);
        assert_eq!(vol_read(16), vec![0x33; 4096]);
        // A lone write: a closed batch of one.
        serve(&[write_chain(&mem, 0, 3, 24, 0x44)]);
        assert_eq!(vq.used().idx().load(), 11);
        assert_eq!(vol_read(24), vec![0x44; 4096]);
        let stats = backend.export.stats.snapshot();
        assert_eq!(stats.in_flight, 0);
        assert_eq!(stats.pipelined, 10, "the lone write ran closed");
        assert!(stats.batches >= 4, "{} batches", stats.batches);
    }

    /// The writes of one take run as one engine batch, in ring order (the
    /// later of two to one sector wins), a refused chain among them alone;
    /// every chain gets its status.
    #[test]
    fn writes_of_one_take_run_as_one_batch() {
        use virtio_queue::mock::MockSplitQueue;

        let (_dir, backend, _) = setup();
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let vring = serving_vring_on(&backend, &mem, &vq);
        let mut hostile = write_chain(&mem, 9, 3, 40, 0x99);
        // Its data buffer ends past guest memory: refused at parse.
        hostile[1] = Descriptor::new((4 << 20) - 100, 4096, NEXT, 11).into();
        let chains = [
            write_chain(&mem, 0, 0, 0, 0x11),
            write_chain(&mem, 3, 1, 8, 0x22),
            write_chain(&mem, 6, 2, 0, 0x33),
            hostile,
            write_chain(&mem, 12, 4, 16, 0x44),
        ];
        let descs: Vec<_> = chains.iter().flatten().copied().collect();
        vq.add_desc_chains(&descs, 0).unwrap();
        backend.serve(0, &vring).unwrap();
        assert_eq!(vq.used().idx().load(), 5);
        for (k, want) in [
            (0, VIRTIO_BLK_S_OK),
            (1, VIRTIO_BLK_S_OK),
            (2, VIRTIO_BLK_S_OK),
            (4, VIRTIO_BLK_S_OK),
        ] {
            let status: u8 = mem.read_obj(GuestAddress(0x30_0000 + k)).unwrap();
            assert_eq!(status, want, "chain {k}");
        }
        let status: u8 = mem.read_obj(GuestAddress(0x30_0000 + 3)).unwrap();
        assert_ne!(status, VIRTIO_BLK_S_OK, "the hostile chain");
        let vol_read = |sector: u64| volume_block(&backend, sector);
        assert_eq!(vol_read(0), vec![0x33; 4096], "the later write wins");
        assert_eq!(vol_read(8), vec![0x22; 4096]);
        assert_eq!(vol_read(16), vec![0x44; 4096]);
        assert_eq!(
            vol_read(40),
            vec![0; 4096],
            "the refused write wrote nothing"
        );
        let stats = backend.export.stats.snapshot();
        assert_eq!(
            (stats.write_batches, stats.batched_writes),
            (1, 4),
            "{stats:?}"
        );
        assert_eq!(
            (stats.writes, stats.rejected, stats.in_flight),
            (4, 1, 0),
            "{stats:?}"
        );
    }

    /// A backend killed with chains in flight, the used ring updated for
    /// one of them but its inflight entry not cleared; the next backend
    /// repairs that entry, resubmits the other two in fetch order, and
    /// takes the ring on from there.
    #[test]
    fn restart_resubmits_in_flight_chains() {
        use crate::inflight::InflightRegion;
        use virtio_queue::mock::MockSplitQueue;
        use virtio_queue::Queue;

        let (_dir, backend, _) = setup();
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        // Heads 0, 3, 6 write sectors 0, 8, 16.
        let mut descs = Vec::new();
        for k in 0..3u16 {
            descs.extend(write_chain(
                &mem,
                3 * k,
                u64::from(k),
                8 * u64::from(k),
                0xa0 + k as u8,
            ));
        }
        vq.add_desc_chains(&descs, 0).unwrap();
        let (file, len) = InflightRegion::create(1, 16, 1, 256).unwrap();

        // The first backend: takes all three (marks them), completes head 3
        // into the used ring, dies before clearing its entry.
        {
            let region =
                InflightRegion::map(file.try_clone().unwrap(), len, 0, 1, 16, 1, 256).unwrap();
            let track = region.queue(0, 16).unwrap();
            assert!(track.recover(0).unwrap().resubmit.is_empty());
            let mut q: Queue = vq.create_queue().unwrap();
            let heads: Vec<u16> = q.iter(&mem).unwrap().map(|c| c.head_index()).collect();
            assert_eq!(heads, vec![0, 3, 6]);
            for (i, h) in heads.iter().enumerate() {
                track.mark(*h, i as u64 + 1).unwrap();
            }
            track.before_used(3).unwrap();
            q.add_used(&mem, 3, 1).unwrap();
        }

        // The second backend, set up as a reconnect does it.
        let vring = vring_on(&backend, &mem, &vq);
        let used = vring.queue_used_idx().unwrap();
        assert_eq!(used, 1);
        vring.set_queue_next_used(used);
        vring.set_queue_next_avail(used); // what QEMU sends after a crash
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        let region = InflightRegion::map(file.try_clone().unwrap(), len, 0, 1, 16, 1, 256).unwrap();
        let track = region.queue(0, 16).unwrap();
        let rec = track.recover(used).unwrap();
        assert_eq!(rec.repaired_head, Some(3));
        assert_eq!(rec.resubmit, vec![0, 6]);
        assert_eq!(rec.next_avail, Some(3));
        vring.set_queue_next_avail(rec.next_avail.unwrap());
        backend.set_tracking(0, Some(track.clone()), rec.resubmit, rec.next_counter);
        backend.serve(0, &vring).unwrap();

        // Used ring: head 3 (old), then 0 and 6 in fetch order; nothing else.
        assert_eq!(vq.used().idx().load(), 3);
        let ids: Vec<u32> = (0..3)
            .map(|i| vq.used().ring().ref_at(i).unwrap().load().id())
            .collect();
        assert_eq!(ids, vec![3, 0, 6]);
        assert!(track.in_flight().unwrap().is_empty());
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x30_0000)).unwrap(),
            VIRTIO_BLK_S_OK
        );
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x30_0002)).unwrap(),
            VIRTIO_BLK_S_OK
        );
        // Head 3 was not run again: its status byte is untouched.
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x30_0001)).unwrap(), 0xff);
        let Target::Volume(vol) = &backend.export.target else {
            panic!("a volume export");
        };
        let read = |sector: u64| futures::executor::block_on(vol.read(sector * 512, 4096)).unwrap();
        assert_eq!(read(0), vec![0xa0; 4096]);
        assert_eq!(read(8), vec![0; 4096]);
        assert_eq!(read(16), vec![0xa2; 4096]);
        assert_eq!(backend.export.stats.snapshot().writes, 2);
    }

    #[test]
    fn walk_chain_direct_indirect_and_hostile() {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let table = GuestAddress(0x1000);
        let put = |base: u64, i: u64, d: Descriptor| {
            mem.write_obj(d, GuestAddress(base + 16 * i)).unwrap();
        };
        // Direct: 2 -> 5 -> 1.
        put(0x1000, 2, Descriptor::new(0x8000, 16, NEXT, 5));
        put(0x1000, 5, Descriptor::new(0x9000, 512, NEXT | W, 1));
        put(0x1000, 1, Descriptor::new(0xa000, 1, W, 0));
        let got = walk_chain(&mem, table, 8, 2, 16).unwrap();
        assert_eq!(
            got.iter().map(|d| d.addr().0).collect::<Vec<_>>(),
            vec![0x8000, 0x9000, 0xa000]
        );
        // At most `max` descriptors come back.
        assert_eq!(walk_chain(&mem, table, 8, 2, 2).unwrap().len(), 2);
        // Indirect: head 0 points at a 2-entry table at 0x4000.
        let ind = VRING_DESC_F_INDIRECT as u16;
        put(0x1000, 0, Descriptor::new(0x4000, 32, ind, 0));
        put(0x4000, 0, Descriptor::new(0x8000, 16, NEXT, 1));
        put(0x4000, 1, Descriptor::new(0xa000, 1, W, 0));
        let got = walk_chain(&mem, table, 8, 0, 16).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].addr().0, 0xa000);
        // A loop (3 -> 4 -> 3), a head outside the ring, a next outside it,
        // a nested indirect, a table outside guest memory: refused.
        put(0x1000, 3, Descriptor::new(0x8000, 16, NEXT, 4));
        put(0x1000, 4, Descriptor::new(0x8000, 16, NEXT, 3));
        assert!(walk_chain(&mem, table, 8, 3, 1000).is_err());
        assert!(walk_chain(&mem, table, 8, 8, 16).is_err());
        put(0x1000, 6, Descriptor::new(0x8000, 16, NEXT, 200));
        assert!(walk_chain(&mem, table, 8, 6, 16).is_err());
        put(0x4000, 1, Descriptor::new(0x4000, 32, ind, 0));
        assert!(walk_chain(&mem, table, 8, 0, 16).is_err());
        assert!(walk_chain(&mem, GuestAddress(1 << 40), 8, 0, 16).is_err());
        put(0x1000, 7, Descriptor::new(0x4000, 17, ind, 0));
        assert!(walk_chain(&mem, table, 8, 7, 16).is_err());
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
