//! Where a write's time goes inside the engine, summed over the store:
//! how long its data took to become records (the copy out of the caller's
//! buffers, the zero check, compression when tried, and the checksums),
//! and how long its direct append then took from submission to completion.
//!
//! These two are the stages a large write spends its time in (a 128 KiB
//! write at depth 8: the encode is on the queue worker's thread, the
//! append is the disk's), and their rates are what tell a run bound by
//! the disk from one bound by the copy: on the benchmark machine the copy
//! alone swings tenfold from minute to minute (docs/performance.md,
//! "Where a large write's time goes"). Read twice and divide the
//! differences: bytes per nanosecond is the encode rate, nanoseconds per
//! operation the append latency. Cost: two clock reads per batch, next to
//! a copy of tens of microseconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Running totals of one stage. Monotonic, relaxed: a reader may see one
/// field of an operation before another, which a difference over seconds
/// does not notice.
#[derive(Debug, Default)]
pub(crate) struct StageClock {
    ops: AtomicU64,
    bytes: AtomicU64,
    ns: AtomicU64,
}

impl StageClock {
    /// Counts one operation of `bytes` that began at `started`.
    pub fn record(&self, bytes: usize, started: Instant) {
        // Saturates rather than wraps: 2^64 ns is 584 years.
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn totals(&self) -> StageTotals {
        StageTotals {
            ops: self.ops.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            ns: self.ns.load(Ordering::Relaxed),
        }
    }
}

/// A stage's totals since the store was opened (see [`crate::Store::write_stages`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageTotals {
    /// Operations timed: encoded batches, or direct appends.
    pub ops: u64,
    /// Bytes they handled: data given by writers, or bytes appended.
    pub bytes: u64,
    /// Wall time they took, summed (overlapping operations each count).
    pub ns: u64,
}

/// The write path's two timed stages (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStages {
    /// Batches of writes turned into records, data bytes given.
    pub encode: StageTotals,
    /// Appends with `O_DIRECT`, submission to completion, bytes written.
    pub direct_append: StageTotals,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_what_was_recorded() {
        let clock = StageClock::default();
        assert_eq!(clock.totals(), StageTotals::default());
        let started = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        clock.record(4096, started);
        clock.record(100, Instant::now());
        let t = clock.totals();
        assert_eq!((t.ops, t.bytes), (2, 4196));
        assert!(t.ns >= 2_000_000, "{t:?}");
    }
}
