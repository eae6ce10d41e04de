//! The jobs, named like fio's: `<rw>-<bs>-qd<iodepth>`.

use anyhow::{bail, Context, Result};

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;

/// Direction and pattern of a job, fio's `rw=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rw {
    RandRead,
    RandWrite,
    Read,
    Write,
}

impl Rw {
    /// fio's name for it.
    pub fn fio_name(self) -> &'static str {
        match self {
            Rw::RandRead => "randread",
            Rw::RandWrite => "randwrite",
            Rw::Read => "read",
            Rw::Write => "write",
        }
    }

    pub fn is_write(self) -> bool {
        matches!(self, Rw::RandWrite | Rw::Write)
    }

    pub fn is_random(self) -> bool {
        matches!(self, Rw::RandRead | Rw::RandWrite)
    }
}

/// One job: `iodepth` requests of `bs_bytes` in flight at all times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub rw: Rw,
    pub bs_bytes: u64,
    pub iodepth: usize,
    /// fio's `fsync=`: after every this many writes, wait for the writes in
    /// flight, then a FLUSH, and wait for it too; 0 for never (fio's
    /// default, and what the jobs do).
    pub fsync_every: u64,
}

impl Job {
    pub const fn new(rw: Rw, bs_bytes: u64, iodepth: usize) -> Job {
        Job {
            rw,
            bs_bytes,
            iodepth,
            fsync_every: 0,
        }
    }

    /// The same job with a FLUSH after every `writes` writes.
    pub const fn with_fsync(mut self, writes: u64) -> Job {
        self.fsync_every = writes;
        self
    }

    /// `randread-4k-qd32`; `write-128k-qd8-fsync256` with a flush cadence.
    pub fn name(&self) -> String {
        let bs = if self.bs_bytes % MIB == 0 {
            format!("{}m", self.bs_bytes / MIB)
        } else {
            format!("{}k", self.bs_bytes / KIB)
        };
        let mut name = format!("{}-{bs}-qd{}", self.rw.fio_name(), self.iodepth);
        if self.fsync_every > 0 {
            name.push_str(&format!("-fsync{}", self.fsync_every));
        }
        name
    }

    /// The fio arguments of the same job (without filename and timing).
    pub fn fio_args(&self) -> String {
        format!(
            "--rw={} --bs={} --iodepth={} --fsync={}",
            self.rw.fio_name(),
            self.bs_bytes,
            self.iodepth,
            self.fsync_every
        )
    }
}

/// Depth of the 128 KiB sequential jobs: enough to keep a disk streaming,
/// as a guest's readahead and writeback do.
pub const SEQ_IODEPTH: usize = 8;

/// Writes between flushes of the durable sequential job: 32 MiB of 128 KiB
/// writes, about what a guest's writeback pass puts out before its
/// filesystem commits its journal.
pub const SEQ_FSYNC_EVERY: u64 = 256;

/// The jobs of the issue, reads first: a read job then sees the data the
/// benchmark laid out (for the qcow2 overlay, still in its backing file),
/// not what earlier write jobs reallocated. After them, two jobs that the
/// issue does not list: the write jobs that ask for durability, as a
/// database (a flush after every 4 KiB write) and a filesystem's writeback
/// (a flush every [`SEQ_FSYNC_EVERY`] writes) do. Without flushes a backend
/// that writes into its host's cache and one that has to make room in its
/// log are not doing the same work; these rows compare durable writes.
pub fn standard_jobs() -> Vec<Job> {
    vec![
        Job::new(Rw::RandRead, 4 * KIB, 1),
        Job::new(Rw::RandRead, 4 * KIB, 32),
        Job::new(Rw::Read, 128 * KIB, SEQ_IODEPTH),
        Job::new(Rw::RandWrite, 4 * KIB, 1),
        Job::new(Rw::RandWrite, 4 * KIB, 32),
        Job::new(Rw::Write, 128 * KIB, SEQ_IODEPTH),
        Job::new(Rw::RandWrite, 4 * KIB, 1).with_fsync(1),
        Job::new(Rw::Write, 128 * KIB, SEQ_IODEPTH).with_fsync(SEQ_FSYNC_EVERY),
    ]
}

/// Jobs by name (comma separated), or `all`.
/// A `--target NAME=SOCKET` argument of the bench binaries.
pub fn parse_target(v: &str) -> Result<(String, std::path::PathBuf)> {
    let (name, socket) = v
        .split_once('=')
        .with_context(|| format!("--target {v:?}: want NAME=SOCKET"))?;
    Ok((name.to_string(), socket.into()))
}

pub fn parse_jobs(spec: &str) -> Result<Vec<Job>> {
    let all = standard_jobs();
    if spec == "all" {
        return Ok(all);
    }
    let mut out = Vec::new();
    for name in spec.split(',').filter(|s| !s.is_empty()) {
        match all.iter().find(|j| j.name() == name) {
            Some(j) => out.push(j.clone()),
            None => bail!(
                "unknown job {name:?}; known: {}",
                all.iter().map(Job::name).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    if out.is_empty() {
        bail!("no job selected");
    }
    Ok(out)
}

/// A small, fast PRNG for offsets (xorshift64*), seeded per run so that
/// every backend sees the same offsets.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` for offsets (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for j in standard_jobs() {
            assert_eq!(parse_jobs(&j.name()).unwrap(), vec![j]);
        }
        assert_eq!(standard_jobs()[1].name(), "randread-4k-qd32");
        assert_eq!(standard_jobs()[5].name(), "write-128k-qd8");
        assert_eq!(standard_jobs()[6].name(), "randwrite-4k-qd1-fsync1");
        assert_eq!(standard_jobs()[7].name(), "write-128k-qd8-fsync256");
        assert!(standard_jobs()[7].fio_args().ends_with("--fsync=256"));
        assert!(parse_jobs("randread-8k-qd1").is_err());
        assert!(parse_jobs("").is_err());
    }

    #[test]
    fn rng_stays_in_range() {
        let mut r = Rng::new(7);
        assert!((0..10_000).all(|_| r.below(3) < 3));
    }
}
