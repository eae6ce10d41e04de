//! What a vhost-user socket serves: a volume (read-write) or a snapshot
//! (read-only), with its stats and its pause gate.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::Serialize;

use crate::request::{Limits, SECTOR_BYTES, VIRTIO_BLK_ID_BYTES};

/// Descriptors per data request (advertised as seg_max). With a 128-entry
/// ring a request without indirect descriptors still fits.
pub const SEG_MAX: u32 = 126;
/// Largest data descriptor (size_max): 256 KiB, so seg_max * size_max
/// stays under the engine's 32 MiB per-request bound.
pub const SIZE_MAX: u32 = 256 << 10;
/// Segments per discard / write-zeroes request.
pub const MAX_DISCARD_SEG: u32 = 16;

/// The engine object behind an export.
#[derive(Clone)]
pub enum Target {
    Volume(cowstore::Volume),
    Snapshot(cowstore::Snapshot),
}

impl Target {
    pub fn name(&self) -> &str {
        match self {
            Target::Volume(v) => v.name(),
            Target::Snapshot(s) => s.name(),
        }
    }

    pub fn size_bytes(&self) -> u64 {
        match self {
            Target::Volume(v) => v.size_bytes(),
            Target::Snapshot(s) => s.size_bytes(),
        }
    }

    pub fn read_only(&self) -> bool {
        matches!(self, Target::Snapshot(_))
    }

    pub async fn read_into(&self, offset: u64, out: &mut [u8]) -> cowstore::Result<()> {
        match self {
            Target::Volume(v) => v.read_into(offset, out).await,
            Target::Snapshot(s) => s.read_into(offset, out).await,
        }
    }

    fn read_only_error(&self) -> cowstore::Error {
        cowstore::Error::ReadOnly {
            snapshot: self.name().to_string(),
        }
    }

    /// Writes `len` bytes at `offset`, taken from `fill` (see
    /// [`cowstore::Volume::write_from`]); a snapshot refuses.
    pub async fn write_from(
        &self,
        offset: u64,
        len: u64,
        fill: impl FnMut(&mut Vec<u8>, usize) -> Result<(), String>,
    ) -> cowstore::Result<()> {
        match self {
            Target::Volume(v) => v.write_from(offset, len, fill).await,
            Target::Snapshot(_) => Err(self.read_only_error()),
        }
    }

    /// Several writes as one batch ([`cowstore::Volume::write_many`]); a
    /// snapshot refuses each.
    pub async fn write_many<F>(&self, writes: Vec<(u64, u64, F)>) -> Vec<cowstore::Result<()>>
    where
        F: FnMut(&mut Vec<u8>, usize) -> Result<(), String>,
    {
        match self {
            Target::Volume(v) => v.write_many(writes).await,
            Target::Snapshot(_) => writes.iter().map(|_| Err(self.read_only_error())).collect(),
        }
    }

    pub async fn flush(&self) -> cowstore::Result<()> {
        match self {
            Target::Volume(v) => v.flush().await,
            Target::Snapshot(_) => Ok(()),
        }
    }

    pub async fn discard(&self, offset: u64, len: u64) -> cowstore::Result<()> {
        match self {
            Target::Volume(v) => v.discard(offset, len).await,
            Target::Snapshot(_) => Err(self.read_only_error()),
        }
    }

    pub async fn write_zeroes(&self, offset: u64, len: u64) -> cowstore::Result<()> {
        match self {
            Target::Volume(v) => v.write_zeroes(offset, len).await,
            Target::Snapshot(_) => Err(self.read_only_error()),
        }
    }
}

/// Counters of one export. Monotonic; read with [`Stats::snapshot`].
#[derive(Default)]
pub struct Stats {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub flushes: AtomicU64,
    pub get_ids: AtomicU64,
    pub discards: AtomicU64,
    pub write_zeroes: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Requests that reached the engine and failed there.
    pub io_errors: AtomicU64,
    /// Requests refused before execution, all causes.
    pub rejected: AtomicU64,
    /// Batches of completions (one used-ring update + at most one interrupt each).
    pub batches: AtomicU64,
    /// Interrupts sent to the guest.
    pub notifications: AtomicU64,
    /// vhost-user connections accepted.
    pub connections: AtomicU64,
    /// Requests popped and not yet completed.
    pub in_flight: AtomicU64,
    /// Requests run in a pipeline (every pop of more than one chain)
    /// rather than alone.
    pub pipelined: AtomicU64,
    /// Engine batches of several writes of one take from the ring, and the
    /// writes in them (see `BlkBackend::plan`).
    pub write_batches: AtomicU64,
    pub batched_writes: AtomicU64,
    /// Polls after a write pass that found new chains, and that gave up.
    pub poll_hits: AtomicU64,
    pub poll_misses: AtomicU64,
    /// Refused requests by cause ([`crate::request::RequestError::code`]).
    pub rejected_by_cause: Mutex<BTreeMap<&'static str, u64>>,
}

/// A point-in-time copy of [`Stats`], as the control socket reports it.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct StatsReport {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub get_ids: u64,
    pub discards: u64,
    pub write_zeroes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub io_errors: u64,
    pub rejected: u64,
    pub batches: u64,
    pub notifications: u64,
    pub connections: u64,
    pub in_flight: u64,
    #[serde(default)]
    pub pipelined: u64,
    #[serde(default)]
    pub write_batches: u64,
    #[serde(default)]
    pub batched_writes: u64,
    #[serde(default)]
    pub poll_hits: u64,
    #[serde(default)]
    pub poll_misses: u64,
    pub rejected_by_cause: BTreeMap<String, u64>,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn reject(&self, code: &'static str) {
        Stats::add(&self.rejected, 1);
        *self.rejected_by_cause.lock().entry(code).or_insert(0) += 1;
    }

    pub fn snapshot(&self) -> StatsReport {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsReport {
            reads: g(&self.reads),
            writes: g(&self.writes),
            flushes: g(&self.flushes),
            get_ids: g(&self.get_ids),
            discards: g(&self.discards),
            write_zeroes: g(&self.write_zeroes),
            bytes_read: g(&self.bytes_read),
            bytes_written: g(&self.bytes_written),
            io_errors: g(&self.io_errors),
            rejected: g(&self.rejected),
            batches: g(&self.batches),
            notifications: g(&self.notifications),
            connections: g(&self.connections),
            in_flight: g(&self.in_flight),
            pipelined: g(&self.pipelined),
            write_batches: g(&self.write_batches),
            batched_writes: g(&self.batched_writes),
            poll_hits: g(&self.poll_hits),
            poll_misses: g(&self.poll_misses),
            rejected_by_cause: self
                .rejected_by_cause
                .lock()
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        }
    }
}

/// The snapshot barrier's gate: while paused, queue workers take no new
/// requests from the rings; [`Gate::pause`] returns once the batches already
/// taken have completed.
#[derive(Default)]
pub struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    paused: bool,
    /// Worker batches between `enter` and the guard's drop.
    active: u64,
}

/// Held by a worker while it serves one batch.
pub struct GateGuard<'a>(&'a Gate);

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state.lock();
        st.active = st.active.saturating_sub(1);
        self.0.changed.notify_all();
    }
}

impl Gate {
    /// Waits while the gate is paused, then registers one active batch.
    pub fn enter(&self) -> GateGuard<'_> {
        let mut st = self.state.lock();
        while st.paused {
            self.changed.wait(&mut st);
        }
        st.active += 1;
        GateGuard(self)
    }

    /// Closes the gate. New batches wait from now on.
    pub fn close(&self) {
        self.state.lock().paused = true;
    }

    /// Waits until no batch is active, up to `deadline`. True when drained.
    pub fn drain(&self, deadline: Instant) -> bool {
        let mut st = self.state.lock();
        while st.active > 0 {
            if self.changed.wait_until(&mut st, deadline).timed_out() {
                return st.active == 0;
            }
        }
        true
    }

    pub fn open(&self) {
        self.state.lock().paused = false;
        self.changed.notify_all();
    }

    pub fn is_paused(&self) -> bool {
        self.state.lock().paused
    }
}

/// One served volume or snapshot, shared by every connection to its socket.
pub struct Export {
    pub target: Target,
    pub stats: Stats,
    pub gate: Gate,
    pub num_queues: u16,
    /// The most a queue worker watches its ring after a pass that wrote
    /// before it sleeps (adaptive, see [`crate::poll`]); zero: never.
    pub poll_after_write: std::time::Duration,
}

/// Default of [`Export::poll_after_write`]: about one VM wake-up.
pub const DEFAULT_POLL_AFTER_WRITE: std::time::Duration = std::time::Duration::from_micros(50);

/// Longest poll a daemon accepts: beyond a millisecond a sleeping thread's
/// wake-up is noise, and the core is wasted.
pub const MAX_POLL_AFTER_WRITE: std::time::Duration = std::time::Duration::from_millis(1);

impl Export {
    pub fn new(target: Target, num_queues: u16) -> Self {
        Export {
            target,
            stats: Stats::default(),
            gate: Gate::default(),
            num_queues: num_queues.max(1),
            poll_after_write: DEFAULT_POLL_AFTER_WRITE,
        }
    }

    /// What requests are checked against. Read at each connection.
    pub fn limits(&self) -> Limits {
        let max_trim_sectors = cowstore::limits::MAX_TRIM_BYTES / SECTOR_BYTES;
        Limits {
            capacity_sectors: self.target.size_bytes() / SECTOR_BYTES,
            read_only: self.target.read_only(),
            seg_max: SEG_MAX,
            size_max: SIZE_MAX,
            max_io_bytes: cowstore::limits::MAX_IO_BYTES,
            max_discard_seg: MAX_DISCARD_SEG,
            max_discard_sectors: u32::try_from(max_trim_sectors).unwrap_or(u32::MAX),
        }
    }

    /// The 20-byte device ID: the export's name, truncated, zero-padded.
    pub fn device_id(&self) -> [u8; VIRTIO_BLK_ID_BYTES] {
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES];
        let name = self.target.name().as_bytes();
        let n = name.len().min(VIRTIO_BLK_ID_BYTES);
        id[..n].copy_from_slice(&name[..n]);
        id
    }
}

/// Waits until `deadline` or until `cond` is true, polling every `step`.
pub fn wait_until(deadline: Instant, step: Duration, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(step);
    }
}
