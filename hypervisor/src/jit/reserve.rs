//! What the inline store fast path must never bypass: pages holding
//! translated or decoded code (a store there must reach the bus, whose
//! code-page bitmap moves the code generation) and granules an LR reserved
//! (a store there must reach the bus, which breaks the reservation).
//!
//! The store TLB only takes pages that are neither. Two things can make a
//! page one of them later, and both bump [`epoch`], after which every hart
//! empties its store TLB before it runs native code again: a block decoded
//! on a page (by any hart, any engine path of the JIT), and an LR. Harts of
//! one machine run interleaved on one thread, so no hart is inside native
//! code when another bumps the epoch. The epoch and the registry are
//! process-wide (several machines in one process only cost each other
//! refills); the registry is keyed by the bus address, which identifies a
//! machine while it lives.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

static EPOCH: AtomicU64 = AtomicU64::new(0);

/// (bus address, hart id, physical page) of each hart's latest LR, until
/// that hart's next SC. Conservative: a reservation broken by another
/// store stays listed until then.
static RESERVED: Mutex<Vec<(usize, u64, u64)>> = Mutex::new(Vec::new());

pub(crate) fn epoch() -> u64 {
    EPOCH.load(Ordering::Acquire)
}

/// A block was decoded on some page.
pub(crate) fn code_page_marked() {
    EPOCH.fetch_add(1, Ordering::AcqRel);
}

fn registry() -> std::sync::MutexGuard<'static, Vec<(usize, u64, u64)>> {
    RESERVED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Hart `hart` of the machine whose bus lives at `bus` executed an LR of
/// physical address `pa`.
pub(crate) fn lr(bus: usize, hart: u64, pa: u64) {
    let page = pa & !0xfff;
    let mut r = registry();
    r.retain(|&(b, h, _)| (b, h) != (bus, hart));
    r.push((bus, hart, page));
    drop(r);
    EPOCH.fetch_add(1, Ordering::AcqRel);
}

/// The same hart executed an SC: its reservation is gone either way.
pub(crate) fn sc(bus: usize, hart: u64) {
    registry().retain(|&(b, h, _)| (b, h) != (bus, hart));
}

/// Whether some hart of this machine may hold a reservation in the page.
pub(crate) fn page_reserved(bus: usize, pa: u64) -> bool {
    let page = pa & !0xfff;
    registry().iter().any(|&(b, _, p)| b == bus && p == page)
}
