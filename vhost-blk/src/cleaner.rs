//! The background segment cleaner of a served store.
//!
//! A log-structured store only gives space back when its cleaner runs: a
//! volume a guest overwrites at speed otherwise grows its log until the file
//! system is full (measured: a clone overwritten at ~600 MiB/s left 2.5 GiB
//! of dead segments every ~10 s of load over a 256 MiB region). The control
//! op `gc` runs one pass on demand; this thread runs passes on its own when
//! the store has grown by a set fraction since the last pass, or when the
//! file system holding the store runs low on free space.
//!
//! A pass checkpoints every volume, reads the live records of mostly-dead
//! segments and rewrites them, so it competes with guests for disk and CPU
//! (measured: three passes during a write benchmark, the last 12.7 s long
//! relocating 1.26 GB, cut a clone's 128 KiB writes to a quarter). So the
//! growth rule keeps passes in proportion to the writes that made garbage,
//! a pass due by growth waits for a check interval in which the store grew
//! by less than `busy_growth_bytes` (guests writing hard produce the garbage
//! a later pass cleans in one go), unless the store grew by four times the
//! growth threshold; low free space runs a pass regardless. Passes and the control op serialize on the
//! engine's admin lock. No pass starts while the daemon holds a snapshot
//! barrier (guests paused): the pause must stay as short as the drain.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::Serialize;
use tracing::{info, warn};

/// When the cleaner runs a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CleanerPolicy {
    /// How often the thread checks the store; zero disables the thread.
    pub interval: Duration,
    /// Run when the store's segment bytes exceed those after the last pass
    /// by this percentage...
    pub growth_percent: u64,
    /// ...and by at least this many bytes (small stores are not cleaned for
    /// every few megabytes).
    pub min_growth_bytes: u64,
    /// Run regardless of growth when the file system holding the store has
    /// less than this percentage free.
    pub low_free_percent: u64,
    /// A check interval in which the store grew by more than this is busy:
    /// a pass due by growth waits for a quieter one (up to the hard limit).
    pub busy_growth_bytes: u64,
    /// When a volume found the segment pool empty, or the pool is below
    /// `hunger_low_percent` of its capacity, a dead-only pass (it frees, it
    /// does not relocate) runs once the store grew by this much since the
    /// last pass, checked every [`HUNGER_CHECK`]; 0: never.
    pub hunger_growth_bytes: u64,
    /// The pool counts as running low below this percentage of its
    /// capacity: refilled before it runs dry, so that a volume writing at
    /// disk speed does not fall back to new (buffered) files for the time
    /// a check and a pass take.
    pub hunger_low_percent: u64,
}

/// How often the cleaner looks whether the segment pool ran dry. Guests
/// writing 2-3 GB/s use up a gigabyte of pooled files in well under a
/// second, and a pass that only frees dead segments takes tens of ms.
pub const HUNGER_CHECK: Duration = Duration::from_millis(250);

/// How soon the growth rules are checked again after a pass that left
/// segments for later (see `StoreConfig::gc_max_relocate_bytes`).
pub const FOLLOW_UP_CHECK: Duration = Duration::from_secs(1);

impl Default for CleanerPolicy {
    fn default() -> Self {
        CleanerPolicy {
            interval: Duration::from_secs(10),
            growth_percent: 50,
            min_growth_bytes: 1 << 30,
            low_free_percent: 10,
            busy_growth_bytes: 256 << 20,
            hunger_growth_bytes: 1 << 30,
            hunger_low_percent: 25,
        }
    }
}

/// Why a pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Grew past the threshold, in a quiet interval.
    Growth,
    /// Grew past four times the threshold, busy or not.
    HardGrowth,
    LowFreeSpace,
    /// A volume found the segment pool empty and the store grew by
    /// `hunger_growth_bytes`, or the pool ran low: a dead-only pass refills
    /// the pool.
    PoolHunger,
}

/// What the policy sees at one check.
#[derive(Clone, Copy, Debug)]
pub struct Observation {
    /// Segment bytes on disk now.
    pub disk_bytes: u64,
    /// Segment bytes right after the last full pass (or at start), lowered
    /// to the smallest size seen since: what the growth rules measure from.
    pub baseline_bytes: u64,
    /// Segment bytes right after the last pass of any kind: what the pool
    /// rule measures from.
    pub hunger_baseline_bytes: u64,
    /// Free space of the store's file system, in percent (None: unknown).
    pub free_percent: Option<u64>,
    /// How much the segment bytes grew since the previous check.
    pub recent_growth_bytes: u64,
    /// Times a volume found the segment pool empty since the last pass.
    pub pool_misses: u64,
    /// Segment files in the pool now, and how many it keeps at most.
    pub pooled_segments: usize,
    pub pool_capacity_segments: usize,
}

impl CleanerPolicy {
    /// Decides whether a pass runs now. Pure, so the rule is unit-tested.
    pub fn decide(&self, seen: &Observation) -> Option<Trigger> {
        if seen.free_percent.is_some_and(|p| p < self.low_free_percent) {
            return Some(Trigger::LowFreeSpace);
        }
        let by_percent = seen.baseline_bytes.saturating_mul(self.growth_percent) / 100;
        let growth = by_percent.max(self.min_growth_bytes);
        let grown = seen.disk_bytes.saturating_sub(seen.baseline_bytes);
        if grown > growth.saturating_mul(4) {
            return Some(Trigger::HardGrowth);
        }
        (grown > growth && seen.recent_growth_bytes <= self.busy_growth_bytes)
            .then_some(Trigger::Growth)
    }

    /// Whether a pool holding `pooled` of at most `capacity` files runs low.
    pub fn pool_low(&self, pooled: usize, capacity: usize) -> bool {
        (pooled as u64).saturating_mul(100)
            < (capacity as u64).saturating_mul(self.hunger_low_percent)
    }

    /// Decides whether a dead-only pass runs to refill the segment pool
    /// (checked more often than [`CleanerPolicy::decide`]).
    pub fn decide_hunger(&self, seen: &Observation) -> Option<Trigger> {
        let grown = seen.disk_bytes.saturating_sub(seen.hunger_baseline_bytes);
        let hungry = seen.pool_misses > 0
            || self.pool_low(seen.pooled_segments, seen.pool_capacity_segments);
        (self.hunger_growth_bytes > 0 && hungry && grown >= self.hunger_growth_bytes)
            .then_some(Trigger::PoolHunger)
    }
}

/// Which pass a trigger runs. A store that grew hard while guests write may
/// have grown by segments a dead-only pass frees (a guest overwriting at
/// disk speed takes gigabytes of pool between passes), so the first
/// `HardGrowth` of an episode runs dead-only, and the rules look again at
/// what it left within [`FOLLOW_UP_CHECK`]: relocating passes follow only
/// while the store is still past the hard limit. Measured: three full
/// passes of 1.4-6.2 s, due by hard growth, ran during a 128 KiB write
/// benchmark and relocated the random-write rows' leftovers, while a
/// dead-only pass would have taken the store from 12.2 to about 5.7 GB.
/// `freed_first` says whether that dead-only pass already ran in this
/// episode (the run loop clears it at a check that finds the store back
/// under the hard limit); returns the mode and the new `freed_first`.
/// Passes due by growth yield to guest writes (`GcMode::Yielding`); one
/// due to low free space does not.
pub fn mode_for(trigger: Trigger, freed_first: bool) -> (cowstore::GcMode, bool) {
    use cowstore::GcMode::{DeadOnly, Full, Yielding};
    match trigger {
        Trigger::PoolHunger => (DeadOnly, freed_first),
        Trigger::HardGrowth if !freed_first => (DeadOnly, true),
        // Until a check finds the store back under the hard limit: one
        // dead-only pass per episode, then relocating ones.
        Trigger::HardGrowth => (Yielding, true),
        Trigger::Growth => (Yielding, false),
        Trigger::LowFreeSpace => (Full, false),
    }
}

/// Counters the control op `stats` reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CleanerStats {
    pub passes: u64,
    pub passes_low_free_space: u64,
    /// Dead-only passes run because the segment pool ran dry.
    pub passes_pool_hunger: u64,
    pub bytes_freed: u64,
    pub bytes_relocated: u64,
    pub segments_deleted: u64,
    pub failed_passes: u64,
    pub last_error: Option<String>,
    pub last_pass_ms: Option<u64>,
    /// Segments kept because a live record failed verification (latest pass).
    pub corrupt: Vec<String>,
}

/// Says whether a pass may start now (false while guests are paused).
pub type MayRun = Box<dyn Fn() -> bool + Send>;

/// The running cleaner thread; stopping it waits for a pass in progress.
pub struct Cleaner {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    stop: Mutex<bool>,
    wake: Condvar,
    stats: Mutex<CleanerStats>,
}

impl Cleaner {
    /// Starts the thread, or returns `None` when the policy disables it.
    pub fn start(
        store: Arc<cowstore::Store>,
        store_dir: &Path,
        policy: CleanerPolicy,
        may_run: MayRun,
    ) -> std::io::Result<Option<Cleaner>> {
        if policy.interval.is_zero() {
            return Ok(None);
        }
        let shared = Arc::new(Shared {
            stop: Mutex::new(false),
            wake: Condvar::new(),
            stats: Mutex::new(CleanerStats::default()),
        });
        let thread = {
            let shared = shared.clone();
            let dir = store_dir.to_path_buf();
            std::thread::Builder::new()
                .name("cowstored-cleaner".into())
                .spawn(move || run(&store, &dir, &policy, &shared, &may_run))?
        };
        Ok(Some(Cleaner {
            shared,
            thread: Some(thread),
        }))
    }

    pub fn stats(&self) -> CleanerStats {
        self.shared.stats.lock().clone()
    }

    /// Stops the thread after the pass in progress, if any.
    pub fn stop(&mut self) {
        *self.shared.stop.lock() = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Cleaner {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    store: &cowstore::Store,
    dir: &Path,
    policy: &CleanerPolicy,
    shared: &Shared,
    may_run: &MayRun,
) {
    let mut baseline_bytes = store.disk_bytes();
    let mut hunger_baseline_bytes = baseline_bytes;
    let mut last_bytes = baseline_bytes;
    let mut misses_at_pass = store.pool_misses();
    let mut freed_first = false;
    let mut next_check = Instant::now() + policy.interval;
    loop {
        {
            let mut stop = shared.stop.lock();
            if !*stop {
                let until_check = next_check.saturating_duration_since(Instant::now());
                let wait = if policy.hunger_growth_bytes > 0 {
                    until_check.min(HUNGER_CHECK)
                } else {
                    until_check
                };
                shared.wake.wait_for(&mut stop, wait);
            }
            if *stop {
                return;
            }
        }
        let check = Instant::now() >= next_check;
        let pool_misses = store.pool_misses().saturating_sub(misses_at_pass);
        let pooled_segments = store.pooled_segments();
        let pool_capacity_segments = store.pool_capacity_segments();
        if !check && pool_misses == 0 && !policy.pool_low(pooled_segments, pool_capacity_segments) {
            continue;
        }
        let disk_bytes = store.disk_bytes();
        let seen = Observation {
            disk_bytes,
            baseline_bytes,
            hunger_baseline_bytes,
            free_percent: cowstore::free_percent(dir),
            recent_growth_bytes: disk_bytes.saturating_sub(last_bytes),
            pool_misses,
            pooled_segments,
            pool_capacity_segments,
        };
        let decision = if check {
            next_check = Instant::now() + policy.interval;
            last_bytes = disk_bytes;
            policy.decide(&seen)
        } else {
            None
        };
        if check && decision != Some(Trigger::HardGrowth) {
            // Back under the hard limit: the next time it is passed, a
            // dead-only pass goes first again.
            freed_first = false;
        }
        let decision = decision
            .or_else(|| policy.decide_hunger(&seen))
            .filter(|_| may_run());
        let Some(trigger) = decision else {
            // Space given back by deletions (volumes, snapshots) lowers the
            // baseline, so growth is measured from the smallest size seen.
            baseline_bytes = baseline_bytes.min(seen.disk_bytes);
            hunger_baseline_bytes = hunger_baseline_bytes.min(seen.disk_bytes);
            continue;
        };
        let (mode, freed) = mode_for(trigger, freed_first);
        freed_first = freed;
        if trigger == Trigger::HardGrowth && mode == cowstore::GcMode::DeadOnly {
            // The hard rule looks again soon at what this pass leaves.
            next_check = next_check.min(Instant::now() + FOLLOW_UP_CHECK);
        }
        let started = Instant::now();
        let result = store.gc_with(mode);
        misses_at_pass = store.pool_misses();
        let deferred = result.as_ref().map_or(0, |r| r.segments_deferred);
        let took_ms = started.elapsed().as_millis() as u64;
        let after_bytes = store.disk_bytes();
        let mut stats = shared.stats.lock();
        stats.last_pass_ms = Some(took_ms);
        match result {
            Ok(r) => {
                stats.passes += 1;
                match trigger {
                    Trigger::LowFreeSpace => stats.passes_low_free_space += 1,
                    Trigger::PoolHunger => stats.passes_pool_hunger += 1,
                    Trigger::Growth | Trigger::HardGrowth => {}
                }
                stats.bytes_freed += r.bytes_freed;
                stats.bytes_relocated += r.bytes_relocated;
                stats.segments_deleted += r.segments_deleted as u64;
                stats.last_error = None;
                if !r.corrupt.is_empty() {
                    warn!(segments = ?r.corrupt, "cleaner kept segments with corrupt live records");
                }
                stats.corrupt = r.corrupt;
                info!(
                    trigger = ?trigger,
                    mode = ?mode,
                    disk_bytes_before = seen.disk_bytes,
                    disk_bytes_after = after_bytes,
                    bytes_freed = r.bytes_freed,
                    bytes_relocated = r.bytes_relocated,
                    segments_pooled = r.segments_pooled,
                    segments_deferred = r.segments_deferred,
                    took_ms,
                    "cleaner pass"
                );
            }
            Err(e) => {
                stats.failed_passes += 1;
                stats.last_error = Some(e.to_string());
                warn!(trigger = ?trigger, error = %e, "cleaner pass failed");
            }
        }
        hunger_baseline_bytes = after_bytes;
        last_bytes = after_bytes;
        if mode == cowstore::GcMode::DeadOnly {
            // What a dead-only pass freed lowers the growth baseline, but it
            // never raises it: what it left may be partly live, and only a
            // full pass relocates that. (Raising it starved full passes
            // once dead-only passes ran at every gigabyte: a store
            // overwritten by 4 KiB writes grew without a full pass.)
            baseline_bytes = baseline_bytes.min(after_bytes);
            continue;
        }
        if deferred > 0 {
            // The pass hit its relocation budget: the baseline stays, so
            // the growth rules still see the garbage left, and the next
            // check comes within a second (dead-only passes may run in
            // between and keep the pool fed).
            next_check = next_check.min(Instant::now() + FOLLOW_UP_CHECK);
            continue;
        }
        // Measured from what the pass left, so a store whose data is all
        // live does not trigger a pass at every check.
        baseline_bytes = after_bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn seen(disk: u64, base: u64, free: Option<u64>) -> Observation {
        Observation {
            disk_bytes: disk,
            baseline_bytes: base,
            hunger_baseline_bytes: base,
            free_percent: free,
            recent_growth_bytes: 0,
            pool_misses: 0,
            pooled_segments: 0,
            pool_capacity_segments: 0,
        }
    }

    #[test]
    fn policy_runs_on_growth_or_low_free_space_only() {
        let p = CleanerPolicy {
            interval: Duration::from_secs(1),
            growth_percent: 50,
            min_growth_bytes: 100 * MIB,
            low_free_percent: 10,
            busy_growth_bytes: 50 * MIB,
            hunger_growth_bytes: 200 * MIB,
            hunger_low_percent: 25,
        };
        // Small store: the absolute floor applies.
        assert_eq!(
            p.decide(&seen(150 * MIB, 10 * MIB, Some(50))),
            Some(Trigger::Growth)
        );
        assert_eq!(p.decide(&seen(100 * MIB, 10 * MIB, Some(50))), None);
        // Large store: the percentage applies.
        assert_eq!(p.decide(&seen(1400 * MIB, 1000 * MIB, Some(50))), None);
        assert_eq!(
            p.decide(&seen(1600 * MIB, 1000 * MIB, Some(50))),
            Some(Trigger::Growth)
        );
        // Low free space wins over everything, unknown free space never does.
        assert_eq!(
            p.decide(&seen(0, 1000 * MIB, Some(9))),
            Some(Trigger::LowFreeSpace)
        );
        assert_eq!(p.decide(&seen(1000 * MIB, 1000 * MIB, None)), None);
        // No overflow at the top of the range.
        assert_eq!(p.decide(&seen(u64::MAX, u64::MAX, None)), None);
        // While guests write hard, a pass due by growth waits...
        let busy = |disk, base| Observation {
            recent_growth_bytes: 60 * MIB,
            ..seen(disk, base, Some(50))
        };
        assert_eq!(p.decide(&busy(1600 * MIB, 1000 * MIB)), None);
        // ...up to four times the threshold.
        assert_eq!(
            p.decide(&busy(3100 * MIB, 1000 * MIB)),
            Some(Trigger::HardGrowth)
        );
    }

    #[test]
    fn pool_hunger_runs_a_pass_only_after_misses_and_growth() {
        let p = CleanerPolicy {
            hunger_growth_bytes: 200 * MIB,
            ..CleanerPolicy::default()
        };
        let hungry = |disk, base, misses| Observation {
            pool_misses: misses,
            ..seen(disk, base, Some(50))
        };
        assert_eq!(p.decide_hunger(&hungry(1300 * MIB, 1000 * MIB, 0)), None);
        assert_eq!(p.decide_hunger(&hungry(1100 * MIB, 1000 * MIB, 3)), None);
        assert_eq!(
            p.decide_hunger(&hungry(1200 * MIB, 1000 * MIB, 1)),
            Some(Trigger::PoolHunger)
        );
        // A store that shrank since the last pass has nothing to free.
        assert_eq!(p.decide_hunger(&hungry(800 * MIB, 1000 * MIB, 9)), None);
        let off = CleanerPolicy {
            hunger_growth_bytes: 0,
            ..p
        };
        assert_eq!(off.decide_hunger(&hungry(u64::MAX, 0, 9)), None);
    }

    #[test]
    fn a_low_pool_is_refilled_before_it_runs_dry() {
        let p = CleanerPolicy {
            hunger_growth_bytes: 200 * MIB,
            hunger_low_percent: 25,
            ..CleanerPolicy::default()
        };
        let pool = |disk, pooled| Observation {
            pooled_segments: pooled,
            pool_capacity_segments: 256,
            ..seen(disk, 1000 * MIB, Some(50))
        };
        // A quarter of 256 files is 64: at 63 and growth, a pass runs...
        assert_eq!(
            p.decide_hunger(&pool(1200 * MIB, 63)),
            Some(Trigger::PoolHunger)
        );
        // ...not at 64, nor without growth, nor with no pool at all.
        assert_eq!(p.decide_hunger(&pool(1200 * MIB, 64)), None);
        assert_eq!(p.decide_hunger(&pool(1100 * MIB, 0)), None);
        let no_pool = Observation {
            pool_capacity_segments: 0,
            ..pool(1200 * MIB, 0)
        };
        assert_eq!(p.decide_hunger(&no_pool), None);
        let off = CleanerPolicy {
            hunger_low_percent: 0,
            ..p
        };
        assert_eq!(off.decide_hunger(&pool(1200 * MIB, 0)), None);
    }

    #[test]
    fn cleaner_thread_frees_overwritten_segments_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let config = cowstore::StoreConfig {
            segment_bytes: 1 << 20,
            ..Default::default()
        };
        let store = Arc::new(cowstore::Store::open_or_create(dir.path(), config).unwrap());
        let vol = store.create_volume("v", 4 * MIB).unwrap();
        let mut cleaner = Cleaner::start(
            store.clone(),
            dir.path(),
            CleanerPolicy {
                interval: Duration::from_millis(20),
                growth_percent: 50,
                min_growth_bytes: 4 * MIB,
                low_free_percent: 0,
                busy_growth_bytes: u64::MAX,
                hunger_growth_bytes: 0,
                hunger_low_percent: 0,
            },
            Box::new(|| true),
        )
        .unwrap()
        .expect("enabled");
        // Overwrite the same 1 MiB 32 times with data that does not compress:
        // 32 MiB of log for 1 MiB of live data.
        let mut data = vec![0u8; MIB as usize];
        for round in 0..32u64 {
            let mut x = round.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            for b in data.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            futures::executor::block_on(vol.write(0, &data)).unwrap();
            futures::executor::block_on(vol.flush()).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while cleaner.stats().passes == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let stats = cleaner.stats();
        assert!(stats.passes >= 1, "no pass ran: {stats:?}");
        assert!(stats.bytes_freed > 0, "{stats:?}");
        assert!(stats.last_error.is_none(), "{stats:?}");
        cleaner.stop();
        assert!(
            store.disk_bytes() < 16 * MIB,
            "store still holds {} bytes",
            store.disk_bytes()
        );
        // The data survived the relocations.
        let back = futures::executor::block_on(vol.read(0, MIB)).unwrap();
        assert_eq!(back, data);
    }

    /// Dead-only passes that run at every gigabyte (here: megabyte) of
    /// growth must not hold off full passes: a store overwritten by small
    /// random writes has few wholly dead segments, and only a full pass
    /// relocates its partly live ones.
    #[test]
    fn dead_only_passes_do_not_starve_full_passes() {
        let dir = tempfile::tempdir().unwrap();
        let config = cowstore::StoreConfig {
            segment_bytes: 1 << 20,
            segment_pool_bytes: 8 << 20,
            ..Default::default()
        };
        let store = Arc::new(cowstore::Store::open_or_create(dir.path(), config).unwrap());
        let volume_bytes = 16 * MIB;
        let vol = store.create_volume("v", volume_bytes).unwrap();
        let mut model = vec![0u8; volume_bytes as usize];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for b in model.iter_mut() {
            *b = next() as u8;
        }
        futures::executor::block_on(vol.write(0, &model)).unwrap();
        futures::executor::block_on(vol.flush()).unwrap();
        let mut cleaner = Cleaner::start(
            store.clone(),
            dir.path(),
            CleanerPolicy {
                // Growth rules checked every second, the pool rule every
                // HUNGER_CHECK: dead-only passes come first.
                interval: Duration::from_secs(1),
                growth_percent: 50,
                min_growth_bytes: 4 * MIB,
                low_free_percent: 0,
                busy_growth_bytes: u64::MAX,
                hunger_growth_bytes: MIB,
                hunger_low_percent: 25,
            },
            Box::new(|| true),
        )
        .unwrap()
        .expect("enabled");
        // 2 MiB of 4 KiB writes at random offsets, then a pause in which a
        // dead-only pass runs; twelve times.
        for _ in 0..12 {
            for _ in 0..512 {
                let block = (next() % (volume_bytes / 4096)) as usize;
                let at = block * 4096;
                for b in &mut model[at..at + 4096] {
                    *b = next() as u8;
                }
                futures::executor::block_on(vol.write(at as u64, &model[at..at + 4096])).unwrap();
            }
            futures::executor::block_on(vol.flush()).unwrap();
            std::thread::sleep(HUNGER_CHECK + Duration::from_millis(50));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while cleaner.stats().bytes_relocated == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let stats = cleaner.stats();
        cleaner.stop();
        assert!(stats.passes_pool_hunger >= 1, "{stats:?}");
        assert!(stats.bytes_relocated > 0, "no full pass ran: {stats:?}");
        assert!(stats.last_error.is_none(), "{stats:?}");
        let back = futures::executor::block_on(vol.read(0, volume_bytes)).unwrap();
        assert!(back == model, "data differs after the passes");
    }

    #[test]
    fn hard_growth_frees_dead_segments_before_relocating() {
        use cowstore::GcMode::{DeadOnly, Full, Yielding};
        // First a dead-only pass; while the store stays past the limit,
        // relocating ones (the run loop clears the state at a check that
        // finds it back under).
        assert_eq!(mode_for(Trigger::HardGrowth, false), (DeadOnly, true));
        assert_eq!(mode_for(Trigger::HardGrowth, true), (Yielding, true));
        // Pool passes leave the state alone; growth passes yield to
        // guests; low free space runs a pass that does not.
        assert_eq!(mode_for(Trigger::PoolHunger, true), (DeadOnly, true));
        assert_eq!(mode_for(Trigger::PoolHunger, false), (DeadOnly, false));
        assert_eq!(mode_for(Trigger::Growth, true), (Yielding, false));
        assert_eq!(mode_for(Trigger::LowFreeSpace, false), (Full, false));
    }
}
