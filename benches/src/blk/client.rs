//! A vhost-user-blk client on libblkio (`blkio` crate, driver
//! `virtio-blk-vhost-user`): connects to a socket as a VMM would, hands the
//! backend one memfd region for its buffers, and runs fio-like jobs.
//!
//! One queue, completions waited for on the queue's eventfd (not polled):
//! on a 2-core machine a polling client would take a core from the backend
//! it measures.

use std::mem::MaybeUninit;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};

use super::jobs::{Job, Rng};

/// Bytes of the buffer region: the largest job's `iodepth * bs` (32 x 4 KiB,
/// 8 x 128 KiB) and the 1 MiB requests of [`Target::fill`], with room.
pub const BUFFER_REGION_BYTES: usize = 8 << 20;

/// Longest wait for one completion before the run fails (a hung backend).
pub const COMPLETION_TIMEOUT: Duration = Duration::from_secs(30);

fn blkio_err(what: &str) -> impl Fn(blkio::Error) -> anyhow::Error + '_ {
    move |e| anyhow!("{what}: {e} (errno {})", e.errno())
}

/// One connected vhost-user-blk device.
pub struct Target {
    pub name: String,
    pub capacity_bytes: u64,
    /// Longest wait for one completion (default [`COMPLETION_TIMEOUT`]):
    /// libblkio does not notice a backend that went away, so this is how
    /// a run against a dead daemon ends.
    pub completion_timeout: Duration,
    // Field order is drop order: the queue goes before the device.
    queue: Blkioq,
    region: MemoryRegion,
    _blkio: Blkio,
}

/// What one run of a job measured (ramp excluded).
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    pub ops: u64,
    pub bytes: u64,
    pub elapsed_ns: u64,
    /// Submission to completion of every counted request, sorted.
    pub lat_ns: Vec<u64>,
    /// Every counted request in completion order: (completion time since
    /// the measurement started, latency), both in microseconds. Shows what
    /// percentiles hide: whether slow requests come alone or as a stall of
    /// the whole queue, and how often.
    pub timeline_us: Vec<(u64, u64)>,
    /// Submission to completion of every counted FLUSH (jobs with
    /// `fsync_every`), sorted. Their time is in `elapsed_ns`, as in fio.
    pub flush_lat_ns: Vec<u64>,
}

impl RunResult {
    pub fn iops(&self) -> f64 {
        self.ops as f64 / (self.elapsed_ns.max(1) as f64 / 1e9)
    }

    pub fn bw_bytes_per_s(&self) -> f64 {
        self.bytes as f64 / (self.elapsed_ns.max(1) as f64 / 1e9)
    }

    /// Latency at percentile `p` (0..=100), nearest rank; 0 without samples.
    pub fn percentile_ns(&self, p: f64) -> u64 {
        if self.lat_ns.is_empty() {
            return 0;
        }
        let rank = ((p / 100.0) * self.lat_ns.len() as f64).ceil() as usize;
        self.lat_ns[rank.clamp(1, self.lat_ns.len()) - 1]
    }

    pub fn mean_ns(&self) -> f64 {
        mean_ns(&self.lat_ns)
    }

    /// Mean FLUSH latency; 0 without flushes.
    pub fn flush_mean_ns(&self) -> f64 {
        mean_ns(&self.flush_lat_ns)
    }
}

fn mean_ns(xs: &[u64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len() as f64
}

impl Target {
    /// Connects to the vhost-user-blk socket at `socket`.
    pub fn connect(name: &str, socket: &Path) -> Result<Target> {
        let path = socket
            .to_str()
            .ok_or_else(|| anyhow!("socket path {} is not UTF-8", socket.display()))?;
        let mut b = Blkio::new("virtio-blk-vhost-user").map_err(blkio_err("blkio_new"))?;
        b.set_str("path", path).map_err(blkio_err("path"))?;
        b.connect()
            .map_err(blkio_err("connect"))
            .with_context(|| format!("connecting to {}", socket.display()))?;
        // Queues are set between connect and start (libblkio's states).
        b.set_i32("num-queues", 1)
            .map_err(blkio_err("num-queues"))?;
        let capacity_bytes = b.get_u64("capacity").map_err(blkio_err("capacity"))?;
        let mut started = b.start().map_err(blkio_err("start"))?;
        let queue = started
            .queues
            .pop()
            .ok_or_else(|| anyhow!("blkio started no queue"))?;
        let region = b
            .alloc_mem_region(BUFFER_REGION_BYTES)
            .map_err(blkio_err("alloc_mem_region"))?;
        b.map_mem_region(&region)
            .map_err(blkio_err("map_mem_region"))?;
        let mut t = Target {
            name: name.to_string(),
            capacity_bytes,
            completion_timeout: COMPLETION_TIMEOUT,
            queue,
            region,
            _blkio: b,
        };
        // Incompressible buffer contents, so no backend gains by compressing.
        let mut rng = Rng::new(0x5eed_b10c);
        for chunk in t.buffer_mut().chunks_mut(8) {
            let v = rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(t)
    }

    fn buffer_mut(&mut self) -> &mut [u8] {
        // SAFETY: the region is `region.len` bytes mapped read-write by
        // alloc_mem_region and lives as long as `self` (the registry frees it
        // after the device and queue drop); no request is in flight when
        // this is called (every method waits for all of its requests), so
        // the backend does not write it concurrently.
        unsafe { std::slice::from_raw_parts_mut(self.region.addr as *mut u8, self.region.len) }
    }

    /// Waits for at least one completion; returns how many landed in `out`.
    fn wait(&mut self, out: &mut [MaybeUninit<Completion>]) -> Result<usize> {
        let mut timeout = self.completion_timeout;
        self.queue
            .do_io(out, 1, Some(&mut timeout), None)
            .map_err(blkio_err("do_io"))
            .with_context(|| format!("waiting for a completion from {}", self.name))
    }

    fn check(c: &Completion, what: &str) -> Result<()> {
        if c.ret != 0 {
            bail!("{what} failed: errno {}", -c.ret);
        }
        Ok(())
    }

    /// Writes `data` (at most the buffer region) at `offset` and waits.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        ensure!(
            data.len() <= self.region.len,
            "write larger than the buffer"
        );
        self.buffer_mut()[..data.len()].copy_from_slice(data);
        let buf = self.region.addr as *const u8;
        self.queue
            .write(offset, buf, data.len(), 0, ReqFlags::empty());
        let mut c = [MaybeUninit::uninit()];
        let n = self.wait(&mut c)?;
        ensure!(n == 1, "expected one completion, got {n}");
        // SAFETY: do_io initialised the first `n` entries.
        let c = unsafe { c[0].assume_init_read() };
        Self::check(&c, "write")
    }

    /// Reads `len` bytes at `offset`.
    pub fn read_at(&mut self, offset: u64, len: usize) -> Result<Vec<u8>> {
        ensure!(len <= self.region.len, "read larger than the buffer");
        let buf = self.region.addr as *mut u8;
        self.queue.read(offset, buf, len, 0, ReqFlags::empty());
        let mut c = [MaybeUninit::uninit()];
        let n = self.wait(&mut c)?;
        ensure!(n == 1, "expected one completion, got {n}");
        // SAFETY: do_io initialised the first `n` entries.
        let c = unsafe { c[0].assume_init_read() };
        Self::check(&c, "read")?;
        Ok(self.buffer_mut()[..len].to_vec())
    }

    /// A virtio FLUSH; waits for it.
    pub fn flush(&mut self) -> Result<()> {
        self.queue.flush(0, ReqFlags::empty());
        let mut c = [MaybeUninit::uninit()];
        let n = self.wait(&mut c)?;
        ensure!(n == 1, "expected one completion, got {n}");
        // SAFETY: do_io initialised the first `n` entries.
        let c = unsafe { c[0].assume_init_read() };
        Self::check(&c, "flush")
    }

    /// Writes the first `len_bytes` sequentially (1 MiB requests, 4 in
    /// flight) with incompressible bytes, then flushes: lays out the data
    /// that the read jobs read back.
    pub fn fill(&mut self, len_bytes: u64) -> Result<()> {
        let job = Job::new(super::jobs::Rw::Write, 1 << 20, 4);
        let len = len_bytes.min(self.capacity_bytes) / job.bs_bytes * job.bs_bytes;
        self.run_inner(&job, len, Duration::ZERO, None, 1)?;
        self.flush()
    }

    /// Runs `job` over the first `region_bytes` of the device: `ramp`
    /// uncounted, then `runtime` counted (requests submitted in the window
    /// and drained after it count, as in fio).
    pub fn run(
        &mut self,
        job: &Job,
        region_bytes: u64,
        ramp: Duration,
        runtime: Duration,
        seed: u64,
    ) -> Result<RunResult> {
        self.run_inner(job, region_bytes, ramp, Some(runtime), seed)
    }

    /// With `runtime` None: one sequential pass over the region, counted.
    fn run_inner(
        &mut self,
        job: &Job,
        region_bytes: u64,
        ramp: Duration,
        runtime: Option<Duration>,
        seed: u64,
    ) -> Result<RunResult> {
        let bs = job.bs_bytes;
        let qd = job.iodepth;
        let region = region_bytes.min(self.capacity_bytes) / bs * bs;
        ensure!(region >= bs, "region smaller than one block");
        ensure!(
            qd >= 1 && (qd as u64) * bs <= self.region.len as u64,
            "iodepth x bs exceeds the buffer region"
        );
        let mut offsets = Offsets {
            random: job.rw.is_random(),
            single_pass: runtime.is_none(),
            rng: Rng::new(seed),
            bs,
            region,
            seq_next: 0,
        };
        let mut submitted_at = vec![Instant::now(); qd];
        // +1: room for a FLUSH's completion beside a full queue's.
        let mut comps: Vec<MaybeUninit<Completion>> =
            (0..qd + 1).map(|_| MaybeUninit::uninit()).collect();
        let addr = self.region.addr;
        let write = job.rw.is_write();
        // A FLUSH's user_data: no buffer slot has it.
        let flush_tag = qd;
        let fsync_every = if write { job.fsync_every } else { 0 };

        let t0 = Instant::now();
        let ramp_end = t0 + ramp;
        let end = runtime.map(|r| ramp_end + r);
        let mut measuring = ramp.is_zero();
        let mut measure_start = t0;
        let mut out = RunResult::default();
        let mut in_flight = 0usize;
        let mut free_slots: Vec<usize> = (0..qd).rev().collect();
        // Writes submitted since the last FLUSH, and the FLUSH in flight.
        let mut since_flush = 0u64;
        let mut flush_at: Option<Instant> = None;
        let mut done = false;
        let mut last = t0;

        loop {
            let now = Instant::now();
            if end.is_some_and(|e| now >= e) {
                done = true;
            }
            let flush_due = |since_flush: u64| fsync_every > 0 && since_flush >= fsync_every;
            if flush_due(since_flush) && in_flight == 0 && flush_at.is_none() && !done {
                // Every write before it has completed: this FLUSH makes
                // exactly the last `fsync_every` of them durable, as fio's.
                self.queue.flush(flush_tag, ReqFlags::empty());
                flush_at = Some(now);
            }
            while !done && !flush_due(since_flush) && flush_at.is_none() {
                let Some(&slot) = free_slots.last() else {
                    break;
                };
                let Some(offset) = offsets.next() else {
                    done = true;
                    break;
                };
                free_slots.pop();
                submitted_at[slot] = now;
                let buf = addr + slot * bs as usize;
                if write {
                    // Stamp the offset, so no two blocks carry the same bytes.
                    // SAFETY: `buf..buf+bs` lies in the mapped region (checked
                    // above: qd * bs <= region.len) and this slot has no
                    // request in flight (it was on the free list).
                    unsafe { std::ptr::write_unaligned(buf as *mut u64, offset) };
                    self.queue.write(
                        offset,
                        buf as *const u8,
                        bs as usize,
                        slot,
                        ReqFlags::empty(),
                    );
                    since_flush += 1;
                } else {
                    self.queue
                        .read(offset, buf as *mut u8, bs as usize, slot, ReqFlags::empty());
                }
                in_flight += 1;
            }
            if in_flight == 0 && flush_at.is_none() {
                break;
            }
            let n = self.wait(&mut comps)?;
            let now = Instant::now();
            last = now;
            if !measuring && now >= ramp_end {
                measuring = true;
                measure_start = now;
            }
            for c in &comps[..n] {
                // SAFETY: do_io initialised the first `n` entries.
                let c = unsafe { c.assume_init_read() };
                if c.ret != 0 {
                    let what = if c.user_data == flush_tag {
                        "flush"
                    } else {
                        job.rw.fio_name()
                    };
                    bail!("{what} on {} failed: errno {}", self.name, -c.ret);
                }
                if c.user_data == flush_tag {
                    let at = flush_at
                        .take()
                        .ok_or_else(|| anyhow!("a flush completed that was not submitted"))?;
                    since_flush = 0;
                    if measuring {
                        let lat = now.duration_since(at);
                        out.flush_lat_ns
                            .push(u64::try_from(lat.as_nanos()).unwrap_or(u64::MAX));
                    }
                    continue;
                }
                let slot = c.user_data;
                ensure!(
                    slot < qd && !free_slots.contains(&slot),
                    "completion for unknown request {slot}"
                );
                in_flight -= 1;
                free_slots.push(slot);
                if measuring {
                    out.ops += 1;
                    out.bytes += bs;
                    let lat = now.duration_since(submitted_at[slot]);
                    out.lat_ns
                        .push(u64::try_from(lat.as_nanos()).unwrap_or(u64::MAX));
                    let at = now.duration_since(measure_start);
                    out.timeline_us.push((
                        u64::try_from(at.as_micros()).unwrap_or(u64::MAX),
                        u64::try_from(lat.as_micros()).unwrap_or(u64::MAX),
                    ));
                }
            }
        }
        out.elapsed_ns =
            u64::try_from(last.duration_since(measure_start).as_nanos()).unwrap_or(u64::MAX);
        out.lat_ns.sort_unstable();
        out.flush_lat_ns.sort_unstable();
        Ok(out)
    }
}

/// Offsets of a job's requests: uniform over the region's blocks, or
/// sequential (wrapping, or one pass when filling).
struct Offsets {
    random: bool,
    single_pass: bool,
    rng: Rng,
    bs: u64,
    region: u64,
    seq_next: u64,
}

impl Offsets {
    fn next(&mut self) -> Option<u64> {
        if self.random {
            return Some(self.rng.below(self.region / self.bs) * self.bs);
        }
        if self.seq_next >= self.region {
            if self.single_pass {
                return None;
            }
            self.seq_next = 0;
        }
        let o = self.seq_next;
        self.seq_next += self.bs;
        Some(o)
    }
}
