//! Adaptive polling of a ring after a pass that wrote.
//!
//! A guest that keeps writing usually sends its next request within tens of
//! microseconds of a completion, and on a VM waking a sleeping thread costs
//! about as much again. So after a pass that wrote, a queue worker may watch
//! its ring for a while before it sleeps. How long adapts per queue, the way
//! QEMU's iothreads do it, on the time from running out of work to the next
//! request (polling included): when that was longer than the budget but
//! within the maximum, polling that long would have caught the request, so
//! the budget grows (doubles, from [`START`]); when it was longer than the
//! maximum, polling was wasted, so it halves (to zero: no polling until a
//! quick wake-up again). A slow guest (TCG) thus costs no CPU, a fast one
//! gets the full budget. Not after read-only passes: measured, polling there
//! made depth-1 reads 0.56-0.59x as fast (the woken client apparently
//! queued behind the spinning worker; docs/performance.md).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// First non-zero budget.
pub const START: Duration = Duration::from_micros(4);

/// One queue's polling state.
#[derive(Debug, Default)]
pub struct Poller {
    budget_ns: AtomicU64,
    /// The last pass over the queue wrote (polling follows only those).
    wrote: AtomicBool,
    /// When the worker last ran out of work after a pass that wrote (it
    /// then polled, found nothing and slept).
    idle_since: Mutex<Option<Instant>>,
}

impl Poller {
    /// How long to poll now, given the export's maximum.
    pub fn budget(&self, max: Duration) -> Duration {
        if max.is_zero() || !self.wrote.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.budget_ns.load(Ordering::Relaxed)).min(max)
    }

    /// Records whether the pass just run changed the volume.
    pub fn set_wrote(&self, wrote: bool) {
        self.wrote.store(wrote, Ordering::Relaxed);
    }

    /// The worker goes to sleep; it ran out of work at `idle_since`
    /// (before it polled).
    pub fn sleeping(&self, idle_since: Instant) {
        let wrote = self.wrote.load(Ordering::Relaxed);
        *self.idle_since.lock() = wrote.then_some(idle_since);
    }

    /// The worker was woken (a kick): adapts the budget to how long it
    /// waited for the request.
    pub fn woken(&self, max: Duration) {
        let Some(idle_since) = self.idle_since.lock().take() else {
            return;
        };
        self.adapt(idle_since.elapsed(), max);
    }

    fn adapt(&self, waited: Duration, max: Duration) {
        let budget = Duration::from_nanos(self.budget_ns.load(Ordering::Relaxed));
        let next = if waited > max {
            budget / 2
        } else if waited > budget {
            (budget * 2).max(START).min(max)
        } else {
            budget
        };
        // Below the first step, halving only burns a few loop iterations.
        let next = if next < START / 2 {
            Duration::ZERO
        } else {
            next
        };
        let next_ns = u64::try_from(next.as_nanos()).unwrap_or(u64::MAX);
        self.budget_ns.store(next_ns, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(50);

    fn budget_ns(p: &Poller) -> u64 {
        p.budget_ns.load(Ordering::Relaxed)
    }

    /// A poller after a write pass, grown to the full budget.
    fn grown() -> Poller {
        let p = Poller::default();
        p.set_wrote(true);
        for _ in 0..5 {
            p.adapt(Duration::from_micros(45), MAX);
        }
        assert_eq!(p.budget(MAX), MAX);
        p
    }

    #[test]
    fn quick_wake_ups_grow_the_budget_to_the_maximum() {
        let p = Poller::default();
        p.set_wrote(true);
        assert_eq!(p.budget(MAX), Duration::ZERO, "starts without polling");
        let mut seen = Vec::new();
        for _ in 0..6 {
            p.adapt(Duration::from_micros(45), MAX);
            seen.push(budget_ns(&p) / 1000);
        }
        assert_eq!(seen, [4, 8, 16, 32, 50, 50]);
        assert_eq!(p.budget(MAX), MAX);
        // A wait within the budget changes nothing.
        p.adapt(Duration::from_micros(10), MAX);
        assert_eq!(p.budget(MAX), MAX);
    }

    #[test]
    fn long_sleeps_halve_it_to_zero() {
        let p = grown();
        let mut seen = Vec::new();
        for _ in 0..6 {
            p.adapt(Duration::from_millis(5), MAX);
            seen.push(budget_ns(&p) / 1000);
        }
        assert_eq!(seen, [25, 12, 6, 3, 0, 0]);
    }

    #[test]
    fn no_polling_after_reads_or_when_turned_off() {
        let p = grown();
        assert_eq!(p.budget(Duration::ZERO), Duration::ZERO);
        p.set_wrote(false);
        assert_eq!(p.budget(MAX), Duration::ZERO);
        // A sleep after a read pass teaches nothing.
        p.sleeping(Instant::now());
        std::thread::sleep(Duration::from_millis(2));
        p.woken(MAX);
        p.set_wrote(true);
        assert_eq!(p.budget(MAX), MAX);
    }
}
