//! Benchmarks for cowstore; see benches/engine.rs, src/bin/engine-figures.rs,
//! scripts/bench and docs/performance.md.
//!
//! This library holds what the criterion bench and the figures binary share:
//! incompressible test data, the I/O jobs (kept identical to the fio jobs
//! that `scripts/bench` runs), and the helpers that build fragmented volumes.
//!
//! A job is run in *batches*: one batch is `ops` requests of `bs` bytes with
//! `qd` of them in flight at any time (a `FuturesUnordered` kept full), and a
//! write batch ends with `Volume::flush`, so every byte a batch reports was
//! durable when it was timed. `scripts/bench` gives buffered fio the same
//! `fdatasync` cadence.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cowstore::{Store, StoreConfig, Volume};
use futures::stream::{FuturesUnordered, StreamExt};

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// Bytes every job spreads its I/O over, in total across its volumes (fio:
/// `size=1G` for one job, `size=256M` + `offset_increment=256M` for four).
pub const REGION_BYTES: u64 = GIB;

/// Region used when a bench binary runs in test mode (`cargo test
/// --all-targets` runs each benchmark once): big enough to exercise every
/// path, small enough to keep CI fast.
pub const TEST_REGION_BYTES: u64 = 64 * MIB;

/// Where stores live: `$COWSTORE_BENCH_DIR` (scripts/bench points it at the
/// directory holding fio's file, so both hit the same disk), else the
/// system temp directory.
pub fn bench_dir() -> PathBuf {
    let dir = std::env::var_os("COWSTORE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&dir).expect("create bench dir");
    dir
}

/// A fresh store in a temporary directory under [`bench_dir`]. The
/// directory is removed when the returned guard drops (drop the store
/// first).
pub fn temp_store(config: StoreConfig) -> (tempfile::TempDir, Store) {
    let dir = tempfile::Builder::new()
        .prefix("cowstore-bench-")
        .tempdir_in(bench_dir())
        .expect("tempdir");
    let store = Store::create(dir.path().join("store"), config).expect("create store");
    (dir, store)
}

/// xorshift64*: fast, deterministic, good enough for offsets and data that
/// lz4 cannot compress.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so that small seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A pool of incompressible bytes that writes take slices of. 64 MiB, so
/// that no two writes of a batch carry the same bytes.
pub struct RandomData(Vec<u8>);

impl RandomData {
    pub fn new(bytes: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut v = Vec::with_capacity(bytes + 8);
        while v.len() < bytes {
            v.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
        v.truncate(bytes);
        RandomData(v)
    }

    pub fn standard() -> Self {
        Self::new(64 << 20, 0xC0FFEE)
    }

    /// The `i`-th slice of `len` bytes (wrapping, 512-byte aligned starts).
    pub fn slice(&self, i: u64, len: usize) -> &[u8] {
        let slots = ((self.0.len() - len) / 512) as u64;
        let at = ((i.wrapping_mul(7919)) % slots) as usize * 512;
        &self.0[at..at + len]
    }
}

/// Runs `n` operations made by `make(i)` with at most `qd` in flight.
pub async fn run_qd<F, Fut>(n: u64, qd: usize, mut make: F) -> cowstore::Result<()>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = cowstore::Result<()>>,
{
    let mut inflight = FuturesUnordered::new();
    for i in 0..n {
        if inflight.len() >= qd {
            if let Some(r) = inflight.next().await {
                r?;
            }
        }
        inflight.push(make(i));
    }
    while let Some(r) = inflight.next().await {
        r?;
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    RandWrite,
    RandRead,
    SeqWrite,
    SeqRead,
}

impl Pattern {
    pub fn is_write(self) -> bool {
        matches!(self, Pattern::RandWrite | Pattern::SeqWrite)
    }
    /// fio's `rw=` value.
    pub fn fio_rw(self) -> &'static str {
        match self {
            Pattern::RandWrite => "randwrite",
            Pattern::RandRead => "randread",
            Pattern::SeqWrite => "write",
            Pattern::SeqRead => "read",
        }
    }
}

/// One of the jobs compared with fio.
#[derive(Clone, Copy, Debug)]
pub struct Job {
    pub pattern: Pattern,
    /// Request size.
    pub bs: u64,
    /// Requests in flight per volume (fio `iodepth`).
    pub qd: usize,
    /// Volumes driven in parallel, one thread each (fio `numjobs`).
    pub volumes: usize,
    /// Requests per volume per batch (a write batch ends with a flush; fio
    /// buffered uses `fdatasync=ops`).
    pub ops: u64,
    /// Bytes the job spreads its I/O over, split evenly between volumes.
    pub region_bytes: u64,
}

impl Job {
    /// Short id shared with fio's job names and the result table:
    /// `randwrite-4k-j1` etc.
    pub fn id(&self) -> String {
        let bs = if self.bs >= MIB {
            format!("{}m", self.bs / MIB)
        } else {
            format!("{}k", self.bs / KIB)
        };
        format!("{}-{}-j{}", self.pattern.fio_rw(), bs, self.volumes)
    }

    /// Size of each volume's region.
    pub fn region_per_volume(&self) -> u64 {
        self.region_bytes / self.volumes as u64
    }

    /// Bytes moved by one batch across all volumes.
    pub fn batch_bytes(&self) -> u64 {
        self.bs * self.ops * self.volumes as u64
    }
}

/// The eight jobs: 4 KiB random write/read at queue depth 32 and 1 MiB
/// sequential write/read at queue depth 8, each on 1 and on 4 volumes, over
/// `region_bytes` ([`REGION_BYTES`] for real runs).
pub fn standard_jobs(region_bytes: u64) -> Vec<Job> {
    let mut jobs = Vec::new();
    for volumes in [1usize, 4] {
        for (pattern, bs, qd, ops) in [
            (Pattern::RandWrite, 4 * KIB, 32, 2048),
            (Pattern::RandRead, 4 * KIB, 32, 4096),
            (Pattern::SeqWrite, MIB, 8, 32),
            (Pattern::SeqRead, MIB, 8, 32),
        ] {
            jobs.push(Job {
                pattern,
                bs,
                qd,
                volumes,
                ops,
                region_bytes,
            });
        }
    }
    jobs
}

/// Per-volume position of a job between batches.
#[derive(Clone, Debug)]
pub struct Cursor {
    pub rng: Rng,
    /// Next sequential offset within the region.
    pub next: u64,
    /// Counter that picks data slices.
    pub n: u64,
}

impl Cursor {
    pub fn new(seed: u64) -> Self {
        Cursor {
            rng: Rng::new(seed),
            next: 0,
            n: seed.wrapping_mul(1_000_003),
        }
    }
}

/// Runs one batch of `job` on `vol`.
pub async fn run_batch(
    vol: &Volume,
    job: &Job,
    cur: &mut Cursor,
    data: &RandomData,
) -> cowstore::Result<()> {
    run_batch_timed(vol, job, cur, data).await.map(drop)
}

/// Runs one batch of `job` on `vol` and returns how long its requests took
/// and how long the closing flush took (zero for reads).
pub async fn run_batch_timed(
    vol: &Volume,
    job: &Job,
    cur: &mut Cursor,
    data: &RandomData,
) -> cowstore::Result<(Duration, Duration)> {
    let region = job.region_per_volume();
    let blocks = region / job.bs;
    let bs = job.bs;
    let offsets: Vec<u64> = (0..job.ops)
        .map(|_| match job.pattern {
            Pattern::RandWrite | Pattern::RandRead => cur.rng.below(blocks) * bs,
            Pattern::SeqWrite | Pattern::SeqRead => {
                let off = cur.next;
                cur.next = (cur.next + bs) % region;
                off
            }
        })
        .collect();
    let first = cur.n;
    cur.n = cur.n.wrapping_add(job.ops);
    let offsets = &offsets;
    let start = Instant::now();
    if job.pattern.is_write() {
        run_qd(job.ops, job.qd, |i| {
            vol.write(offsets[i as usize], data.slice(first + i, bs as usize))
        })
        .await?;
        let requests = start.elapsed();
        vol.flush().await?;
        Ok((requests, start.elapsed() - requests))
    } else {
        run_qd(job.ops, job.qd, |i| async move {
            let mut buf = vec![0u8; bs as usize];
            vol.read_into(offsets[i as usize], &mut buf).await
        })
        .await?;
        Ok((start.elapsed(), Duration::ZERO))
    }
}

/// Writes `[0, len)` of `vol` sequentially in `bs` pieces at queue depth
/// `qd`, then flushes. Read jobs run on a volume filled this way: with
/// `bs` = the read size for random reads (each record holds one 4 KiB
/// block, as fio's reads touch one block) and 1 MiB for sequential reads.
pub async fn fill(
    vol: &Volume,
    len: u64,
    bs: u64,
    qd: usize,
    data: &RandomData,
) -> cowstore::Result<()> {
    run_qd(len / bs, qd, |i| {
        vol.write(i * bs, data.slice(i, bs as usize))
    })
    .await?;
    vol.flush().await
}

/// Writes `extents` 512-byte records at every other sector (`lba = 2 i`), so
/// that no two merge or overlap: the map ends up with exactly `extents`
/// entries. The volume must be at least `extents * 1024` bytes.
pub async fn make_extents(vol: &Volume, extents: u64, data: &RandomData) -> cowstore::Result<()> {
    const BATCH: u64 = 1 << 16;
    let mut done = 0;
    while done < extents {
        let n = BATCH.min(extents - done);
        let base = done;
        run_qd(n, 64, |i| {
            vol.write((base + i) * 1024, data.slice(base + i, 512))
        })
        .await?;
        done += n;
    }
    vol.flush().await
}

/// Median of `v` (sorted in place). Panics on empty input.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Drops the page cache of every file under `dir` (clean pages only: call
/// after the data was fsynced), so the next read comes from the disk. Uses
/// `posix_fadvise(DONTNEED)`, which needs no privileges.
pub fn drop_cache_under(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let ft = entry.file_type()?;
        if ft.is_dir() {
            drop_cache_under(&path)?;
        } else if ft.is_file() {
            let f = std::fs::File::open(&path)?;
            f.sync_all()?;
            // SAFETY: plain syscall on an fd we own; no memory is passed.
            let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            if rc != 0 {
                return Err(std::io::Error::from_raw_os_error(rc));
            }
        }
    }
    Ok(())
}

/// Default store settings for the data-path jobs: the engine's defaults.
pub fn job_config() -> StoreConfig {
    StoreConfig::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data the jobs write must not flatter the engine: lz4 must fail to
    /// shrink it, so it is stored raw (flags 0).
    #[test]
    fn random_data_is_incompressible() {
        let data = RandomData::new(4 << 20, 1);
        for (i, len) in [(0u64, 512usize), (1, 4096), (2, 65536), (3, 1 << 20)] {
            let chunk = &data.slice(i, len)[..len.min(64 << 10)];
            let encoded = cowstore::record::encode_chunk(chunk, &Default::default(), false)
                .expect("not all zero");
            assert_eq!(
                encoded.flags() & cowstore::record::FLAG_COMPRESSED,
                0,
                "slice {i} of {len} bytes compressed"
            );
            assert_eq!(encoded.parts()[0], chunk);
        }
    }

    #[test]
    fn job_ids_are_fio_names() {
        let ids: Vec<String> = standard_jobs(REGION_BYTES).iter().map(Job::id).collect();
        assert_eq!(
            ids,
            [
                "randwrite-4k-j1",
                "randread-4k-j1",
                "write-1m-j1",
                "read-1m-j1",
                "randwrite-4k-j4",
                "randread-4k-j4",
                "write-1m-j4",
                "read-1m-j4"
            ]
        );
        for j in standard_jobs(REGION_BYTES) {
            assert_eq!(j.region_per_volume() * j.volumes as u64, REGION_BYTES);
        }
    }

    #[test]
    fn every_extent_write_stays_its_own_extent() {
        let (dir, store) = temp_store(StoreConfig::default());
        let vol = store.create_volume("x", 1000 * 1024).unwrap();
        let data = RandomData::new(1 << 20, 2);
        futures::executor::block_on(make_extents(&vol, 1000, &data)).unwrap();
        assert_eq!(vol.extent_count(), 1000);
        drop(vol);
        store.close().unwrap();
        drop(dir);
    }

    #[test]
    fn batches_cover_the_region_and_read_back() {
        let (dir, store) = temp_store(StoreConfig::default());
        let job = Job {
            pattern: Pattern::SeqWrite,
            bs: MIB,
            qd: 8,
            volumes: 1,
            ops: 4,
            region_bytes: 8 * MIB,
        };
        let vol = store.create_volume("x", job.region_per_volume()).unwrap();
        let data = RandomData::new(8 << 20, 3);
        let mut cur = Cursor::new(1);
        futures::executor::block_on(async {
            run_batch(&vol, &job, &mut cur, &data).await.unwrap();
            run_batch(&vol, &job, &mut cur, &data).await.unwrap();
            // Wrapped around to the start after two batches of 4 MiB.
            assert_eq!(cur.next, 0);
            let read = Job {
                pattern: Pattern::RandRead,
                bs: 4 * KIB,
                ..job
            };
            run_batch(&vol, &read, &mut cur, &data).await.unwrap();
        });
        // 8 MiB in 64 KiB records.
        assert_eq!(vol.extent_count(), 128);
        drop(vol);
        store.close().unwrap();
        drop(dir);
    }
}
