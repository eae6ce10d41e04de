//! One vhost-user connection: the protocol's requests (the `vhost` crate
//! frames and checks the messages and calls [`Connection`] through its
//! `VhostUserBackendReqHandlerMut` trait), guest memory, the rings, and one
//! worker thread per queue that waits for kicks and runs the device.
//!
//! Why not `vhost-user-backend`'s `VhostUserDaemon`: its request handler
//! refuses GET_INFLIGHT_FD / SET_INFLIGHT_FD and its type is private to that
//! crate, so it cannot be wrapped. We keep its `VringRwLock` (ring state,
//! event fds, EVENT_IDX bookkeeping) and drive the protocol ourselves, which
//! lets the device track in-flight requests ([`crate::inflight`]) and
//! resubmit them after a backend restart.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use tracing::{debug, info, warn};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    Backend, Error as VhostUserError, GpuBackend, Result as VhostUserResult,
    VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestRegionMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::backing::check_holds;
use crate::device::{BlkBackend, GuestMem, MAX_QUEUE_SIZE};
use crate::inflight::InflightRegion;

/// Memory regions a frontend may add one by one (CONFIGURE_MEM_SLOTS).
const MAX_MEM_SLOTS: usize = 256;

/// Epoll data of a worker's event sources.
const EV_EXIT: u64 = 0;
const EV_KICK: u64 = 1;
const EV_WAKE: u64 = 2;

fn handler_error(e: impl std::fmt::Display) -> VhostUserError {
    VhostUserError::ReqHandlerError(io::Error::other(e.to_string()))
}

/// A frontend address range (its process's virtual addresses) and where it
/// sits in guest physical memory; rings are given in frontend addresses.
struct Mapping {
    frontend_addr: u64,
    len_bytes: u64,
    guest_addr: u64,
}

/// One queue's worker thread and what the protocol side needs to steer it.
struct Worker {
    epoll: Arc<Epoll>,
    wake: EventFd,
    /// The kick fd registered in `epoll`, if any.
    kick: Option<RawFd>,
    thread: Option<JoinHandle<()>>,
}

/// The backend side of one vhost-user connection.
pub struct Connection {
    backend: Arc<BlkBackend>,
    mem: GuestMemoryAtomic<GuestMem>,
    vrings: Vec<VringRwLock>,
    workers: Vec<Worker>,
    mappings: Vec<Mapping>,
    owned: bool,
    acked_features: u64,
    acked_protocol_features: u64,
    inflight: Option<Arc<InflightRegion>>,
}

impl Connection {
    /// Creates the rings and starts one worker thread per queue.
    pub fn new(backend: Arc<BlkBackend>) -> io::Result<Connection> {
        let mem = GuestMemoryAtomic::new(GuestMem::new());
        let queues = backend.num_queues();
        let mut vrings = Vec::with_capacity(usize::from(queues));
        let mut workers = Vec::with_capacity(usize::from(queues));
        for q in 0..queues {
            let vring = VringRwLock::new(mem.clone(), MAX_QUEUE_SIZE as u16)
                .map_err(|e| io::Error::other(format!("vring {q}: {e}")))?;
            let epoll = Arc::new(Epoll::new()?);
            let wake = EventFd::new(EFD_NONBLOCK)?;
            let exit = backend
                .exit_event(q)
                .ok_or_else(|| io::Error::other(format!("no exit event for queue {q}")))?;
            epoll.ctl(
                ControlOperation::Add,
                exit.as_raw_fd(),
                EpollEvent::new(EventSet::IN, EV_EXIT),
            )?;
            epoll.ctl(
                ControlOperation::Add,
                wake.as_raw_fd(),
                EpollEvent::new(EventSet::IN, EV_WAKE),
            )?;
            let thread = {
                let backend = backend.clone();
                let vring = vring.clone();
                let epoll = epoll.clone();
                let wake = wake.try_clone()?;
                std::thread::Builder::new()
                    .name(format!("vq{q}-{}", backend.name()))
                    .spawn(move || {
                        // Keep the exit consumer open as long as the thread runs.
                        let _exit = exit;
                        run_worker(&backend, q, &vring, &epoll, &wake)
                    })?
            };
            vrings.push(vring);
            workers.push(Worker {
                epoll,
                wake,
                kick: None,
                thread: Some(thread),
            });
        }
        Ok(Connection {
            backend,
            mem,
            vrings,
            workers,
            mappings: Vec::new(),
            owned: false,
            acked_features: 0,
            acked_protocol_features: 0,
            inflight: None,
        })
    }

    /// Stops and joins the worker threads (the connection has ended).
    pub fn stop(&mut self) {
        self.backend.stop_workers();
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                if t.join().is_err() {
                    warn!(export = self.backend.name(), "queue worker panicked");
                }
            }
        }
    }

    fn vring(&self, index: u32) -> VhostUserResult<&VringRwLock> {
        self.vrings
            .get(index as usize)
            .ok_or(VhostUserError::InvalidParam)
    }

    fn frontend_to_guest(&self, addr: u64) -> VhostUserResult<u64> {
        self.mappings
            .iter()
            .find(|m| addr >= m.frontend_addr && addr - m.frontend_addr < m.len_bytes)
            .map(|m| addr - m.frontend_addr + m.guest_addr)
            .ok_or_else(|| handler_error(format!("ring address {addr:#x} is in no memory region")))
    }

    /// Registers the queue's kick fd with its worker while the ring is
    /// started and enabled, and removes it otherwise.
    fn update_registration(&mut self, index: usize) -> VhostUserResult<()> {
        let (active, kick) = {
            let state = self.vrings[index].get_ref();
            let active = state.get_queue().ready() && state.is_enabled();
            (active, state.get_kick().as_ref().map(|k| k.as_raw_fd()))
        };
        let w = &mut self.workers[index];
        let want = if active { kick } else { None };
        if w.kick == want {
            return Ok(());
        }
        if let Some(fd) = w.kick.take() {
            // The fd may already be closed (replaced); epoll dropped it then.
            let _ = w
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        if let Some(fd) = want {
            w.epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, EV_KICK),
                )
                .map_err(VhostUserError::ReqHandlerError)?;
            w.kick = Some(fd);
            // Serve whatever is already on the ring (or to be resubmitted)
            // without waiting for the next kick.
            w.wake.write(1).map_err(VhostUserError::ReqHandlerError)?;
        }
        Ok(())
    }

    /// The ring starts (its kick fd arrived): with inflight tracking, read
    /// the region, repair it, and hand the device what to resubmit.
    fn start_ring(&mut self, index: usize) -> VhostUserResult<()> {
        let vring = &self.vrings[index];
        vring.set_queue_ready(true);
        let queue = u16::try_from(index).map_err(|_| VhostUserError::InvalidParam)?;
        let tracked =
            self.acked_protocol_features & VhostUserProtocolFeatures::INFLIGHT_SHMFD.bits() != 0;
        match (&self.inflight, tracked) {
            (Some(region), true) => {
                let size = vring.get_ref().get_queue().size();
                let q = region.queue(queue, size).map_err(handler_error)?;
                let used = vring.queue_used_idx().map_err(handler_error)?;
                let rec = q.recover(used).map_err(handler_error)?;
                if let Some(next_avail) = rec.next_avail {
                    vring.set_queue_next_avail(next_avail);
                }
                if !rec.resubmit.is_empty() || rec.repaired_head.is_some() {
                    info!(
                        export = self.backend.name(),
                        queue,
                        resubmit = rec.resubmit.len(),
                        repaired_head = ?rec.repaired_head,
                        used_idx = used,
                        "resubmitting in-flight requests after a reconnect"
                    );
                }
                self.backend
                    .set_tracking(queue, Some(q), rec.resubmit, rec.next_counter);
            }
            _ => self.backend.set_tracking(queue, None, Vec::new(), 0),
        }
        self.update_registration(index)
    }

    fn ring_needs_start(&self, index: usize) -> bool {
        let state = self.vrings[index].get_ref();
        !state.get_queue().ready() && state.get_kick().is_some()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A queue's worker: waits for kicks (and wake-ups from the protocol side)
/// and serves the ring until told to exit.
fn run_worker(
    backend: &BlkBackend,
    queue: u16,
    vring: &VringRwLock,
    epoll: &Epoll,
    wake: &EventFd,
) {
    let mut events = vec![EpollEvent::default(); 4];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!(export = backend.name(), queue, error = %e, "epoll failed; worker stops");
                return;
            }
        };
        let mut serve = false;
        for ev in &events[..n] {
            match ev.data() {
                EV_EXIT => return,
                EV_KICK => match vring.read_kick() {
                    Ok(enabled) => serve |= enabled,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => warn!(export = backend.name(), queue, error = %e, "reading the kick"),
                },
                _ => {
                    let _ = wake.read();
                    let state = vring.get_ref();
                    serve |= state.is_enabled() && state.get_queue().ready();
                }
            }
        }
        if serve && !backend.stopped() {
            if let Err(e) = backend.serve(queue, vring) {
                warn!(export = backend.name(), queue, error = %e, "serving the queue");
            }
        }
    }
}

impl VhostUserBackendReqHandlerMut for Connection {
    fn set_owner(&mut self) -> VhostUserResult<()> {
        if self.owned {
            return Err(VhostUserError::InvalidOperation("already owned"));
        }
        self.owned = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> VhostUserResult<()> {
        self.owned = false;
        self.acked_features = 0;
        self.acked_protocol_features = 0;
        Ok(())
    }

    fn reset_device(&mut self) -> VhostUserResult<()> {
        for i in 0..self.vrings.len() {
            self.vrings[i].set_enabled(false);
            self.update_registration(i)?;
        }
        self.acked_features = 0;
        Ok(())
    }

    fn get_features(&mut self) -> VhostUserResult<u64> {
        Ok(self.backend.features())
    }

    fn set_features(&mut self, features: u64) -> VhostUserResult<()> {
        if features & !self.backend.features() != 0 {
            return Err(VhostUserError::InvalidParam);
        }
        self.acked_features = features;
        // Without VHOST_USER_F_PROTOCOL_FEATURES rings are enabled at once
        // (vhost-user spec, "Ring states"); with it, SET_VRING_ENABLE decides.
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            for i in 0..self.vrings.len() {
                self.vrings[i].set_enabled(true);
                self.update_registration(i)?;
            }
        }
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for v in &self.vrings {
            v.set_queue_event_idx(event_idx);
        }
        self.backend.set_event_idx(event_idx);
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        postcopy_listening: Option<bool>,
    ) -> VhostUserResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        if postcopy_listening.is_some() {
            return Err(VhostUserError::InvalidOperation("postcopy not supported"));
        }
        let mut regions = Vec::with_capacity(ctx.len());
        let mut mappings = Vec::with_capacity(ctx.len());
        for (region, file) in ctx.iter().zip(files) {
            check_holds(&file, region.mmap_offset, region.memory_size).map_err(handler_error)?;
            let mapped = GuestRegionMmap::new(
                region.mmap_region(file)?,
                GuestAddress(region.guest_phys_addr),
            )
            .ok_or_else(|| handler_error("memory region wraps around"))?;
            regions.push(mapped);
            mappings.push(Mapping {
                frontend_addr: region.user_addr,
                len_bytes: region.memory_size,
                guest_addr: region.guest_phys_addr,
            });
        }
        let mem = GuestMem::from_regions(regions).map_err(handler_error)?;
        self.mem
            .lock()
            .map_err(|_| handler_error("guest memory lock poisoned"))?
            .replace(mem);
        self.backend.update_memory(self.mem.clone());
        self.mappings = mappings;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VhostUserResult<()> {
        let vring = self.vring(index)?;
        if num == 0 || num as usize > MAX_QUEUE_SIZE {
            return Err(VhostUserError::InvalidParam);
        }
        vring.set_queue_size(num as u16);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VhostUserResult<()> {
        let desc = self.frontend_to_guest(descriptor)?;
        let avail = self.frontend_to_guest(available)?;
        let used = self.frontend_to_guest(used)?;
        let vring = self.vring(index)?;
        vring
            .set_queue_info(desc, avail, used)
            .map_err(|_| VhostUserError::InvalidParam)?;
        // The used index lives in guest memory; start completing from there.
        let idx = vring.queue_used_idx().map_err(handler_error)?;
        vring.set_queue_next_used(idx);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VhostUserResult<()> {
        let vring = self.vring(index)?;
        let base = u16::try_from(base).map_err(|_| VhostUserError::InvalidParam)?;
        vring.set_queue_next_avail(base);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VhostUserResult<VhostUserVringState> {
        let i = index as usize;
        let vring = self.vring(index)?;
        // Stop the ring (vhost-user spec: GET_VRING_BASE stops it), and let
        // a batch already running finish first: after the answer the
        // frontend owns the ring again (and may reset it).
        vring.set_queue_ready(false);
        self.update_registration(i)?;
        self.backend
            .quiesce(u16::try_from(index).map_err(|_| VhostUserError::InvalidParam)?);
        let vring = &self.vrings[i];
        let next_avail = vring.queue_next_avail();
        vring.set_kick(None);
        vring.set_call(None);
        Ok(VhostUserVringState::new(index, u32::from(next_avail)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VhostUserResult<()> {
        let i = usize::from(index);
        self.vring(u32::from(index))?;
        // The old fd closes when replaced: take it out of epoll first.
        if let Some(old) = self.workers[i].kick.take() {
            let _ = self.workers[i]
                .epoll
                .ctl(ControlOperation::Delete, old, EpollEvent::default());
        }
        self.vrings[i].set_kick(fd);
        if self.ring_needs_start(i) {
            self.start_ring(i)
        } else {
            self.update_registration(i)
        }
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VhostUserResult<()> {
        self.vring(u32::from(index))?.set_call(fd);
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> VhostUserResult<()> {
        self.vring(u32::from(index))?.set_err(fd);
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VhostUserResult<VhostUserProtocolFeatures> {
        Ok(self.backend.protocol_features())
    }

    fn set_protocol_features(&mut self, features: u64) -> VhostUserResult<()> {
        self.acked_protocol_features = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VhostUserResult<u64> {
        Ok(u64::from(self.backend.num_queues()))
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VhostUserResult<()> {
        if self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            return Err(VhostUserError::InactiveFeature(
                VhostUserVirtioFeatures::PROTOCOL_FEATURES,
            ));
        }
        self.vring(index)?.set_enabled(enable);
        self.update_registration(index as usize)
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VhostUserResult<Vec<u8>> {
        Ok(self.backend.get_config(offset, size))
    }

    fn set_config(
        &mut self,
        _offset: u32,
        _buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VhostUserResult<()> {
        // No writable field is offered (no CONFIG_WCE).
        Err(VhostUserError::InvalidOperation(
            "config space is read-only",
        ))
    }

    fn set_backend_req_fd(&mut self, _backend: Backend) {}

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VhostUserResult<()> {
        Err(VhostUserError::InvalidOperation("not a GPU"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VhostUserResult<File> {
        Err(VhostUserError::InvalidOperation("no shared objects"))
    }

    fn get_inflight_fd(
        &mut self,
        inflight: &VhostUserInflight,
    ) -> VhostUserResult<(VhostUserInflight, File)> {
        let (file, len_bytes) = InflightRegion::create(
            inflight.num_queues,
            inflight.queue_size,
            self.backend.num_queues(),
            MAX_QUEUE_SIZE as u16,
        )
        .map_err(handler_error)?;
        debug!(
            export = self.backend.name(),
            num_queues = inflight.num_queues,
            queue_size = inflight.queue_size,
            len_bytes,
            "inflight region created"
        );
        Ok((
            VhostUserInflight::new(len_bytes, 0, inflight.num_queues, inflight.queue_size),
            file,
        ))
    }

    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: File) -> VhostUserResult<()> {
        let region = InflightRegion::map(
            file,
            inflight.mmap_size,
            inflight.mmap_offset,
            inflight.num_queues,
            inflight.queue_size,
            self.backend.num_queues(),
            MAX_QUEUE_SIZE as u16,
        )
        .map_err(handler_error)?;
        info!(
            export = self.backend.name(),
            num_queues = region.num_queues(),
            queue_size = region.queue_size(),
            "inflight tracking on"
        );
        self.inflight = Some(region);
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> VhostUserResult<u64> {
        Ok(MAX_MEM_SLOTS as u64)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        postcopy_listening: Option<bool>,
    ) -> VhostUserResult<Option<VhostUserMemoryRegionBase>> {
        if postcopy_listening.is_some() {
            return Err(VhostUserError::InvalidOperation("postcopy not supported"));
        }
        if self.mappings.len() >= MAX_MEM_SLOTS {
            return Err(handler_error(format!(
                "more than {MAX_MEM_SLOTS} memory regions"
            )));
        }
        check_holds(&fd, region.mmap_offset, region.memory_size).map_err(handler_error)?;
        let mapped = GuestRegionMmap::new(
            region.mmap_region(fd)?,
            GuestAddress(region.guest_phys_addr),
        )
        .ok_or_else(|| handler_error("memory region wraps around"))?;
        let mem = self
            .mem
            .memory()
            .insert_region(Arc::new(mapped))
            .map_err(handler_error)?;
        self.mem
            .lock()
            .map_err(|_| handler_error("guest memory lock poisoned"))?
            .replace(mem);
        self.backend.update_memory(self.mem.clone());
        self.mappings.push(Mapping {
            frontend_addr: region.user_addr,
            len_bytes: region.memory_size,
            guest_addr: region.guest_phys_addr,
        });
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> VhostUserResult<()> {
        let (mem, _) = self
            .mem
            .memory()
            .remove_region(GuestAddress(region.guest_phys_addr), region.memory_size)
            .map_err(handler_error)?;
        self.mem
            .lock()
            .map_err(|_| handler_error("guest memory lock poisoned"))?
            .replace(mem);
        self.backend.update_memory(self.mem.clone());
        self.mappings
            .retain(|m| m.guest_addr != region.guest_phys_addr);
        Ok(())
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VhostUserResult<Option<File>> {
        Err(VhostUserError::InvalidOperation("DEVICE_STATE not offered"))
    }

    fn check_device_state(&mut self) -> VhostUserResult<()> {
        Err(VhostUserError::InvalidOperation("DEVICE_STATE not offered"))
    }

    fn get_shmem_config(&mut self) -> VhostUserResult<VhostUserShMemConfig> {
        Err(VhostUserError::InvalidOperation("SHMEM not offered"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VhostUserResult<()> {
        Err(VhostUserError::InvalidOperation("LOG_SHMFD not offered"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{Export, Target};
    use vm_memory::{Bytes, GuestMemoryBackend};

    /// A memfd of `len` bytes, as a frontend hands over.
    fn test_memfd(len: u64) -> File {
        crate::inflight::memfd(len).unwrap()
    }

    fn connection() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            cowstore::Store::open_or_create(dir.path().join("s"), cowstore::StoreConfig::default())
                .unwrap();
        let vol = store.create_volume("v", 1 << 20).unwrap();
        let backend = BlkBackend::new(Arc::new(Export::new(Target::Volume(vol), 1))).unwrap();
        (dir, Connection::new(Arc::new(backend)).unwrap())
    }

    /// A region whose file ends before it does would map, and the first
    /// access past the end would kill the daemon with SIGBUS.
    #[test]
    fn memory_regions_past_their_files_end_are_refused() {
        const MIB: u64 = 1 << 20;
        let (_dir, mut conn) = connection();
        let table = [VhostUserMemoryRegion::new(0, MIB, 0x7000_0000, 0)];
        conn.set_mem_table(&table, vec![test_memfd(MIB)], None)
            .unwrap();
        assert_eq!(conn.mem.memory().num_regions(), 1);

        let err = conn
            .set_mem_table(&table, vec![test_memfd(64 << 10)], None)
            .unwrap_err();
        assert!(format!("{err:?}").contains("holds 65536 bytes"), "{err:?}");
        // The table before the refused one stays, whole.
        assert_eq!(conn.mem.memory().num_regions(), 1);
        assert_eq!(conn.mem.memory().last_addr(), GuestAddress(MIB - 1));

        let at_1g = |offset| VhostUserSingleMemoryRegion::new(1 << 30, MIB, 0x8000_0000, offset);
        assert!(conn
            .add_mem_region(&at_1g(0), test_memfd(4096), None)
            .is_err());
        // The file holds the region's length, but not from its offset.
        assert!(conn
            .add_mem_region(&at_1g(MIB), test_memfd(MIB), None)
            .is_err());
        assert_eq!(conn.mem.memory().num_regions(), 1);

        conn.add_mem_region(&at_1g(MIB), test_memfd(2 * MIB), None)
            .unwrap();
        assert_eq!(conn.mem.memory().num_regions(), 2);
        let mut last = [0xffu8; 8];
        conn.mem
            .memory()
            .read_slice(&mut last, GuestAddress((1 << 30) + MIB - 8))
            .unwrap();
        assert_eq!(last, [0; 8]);
    }
}
