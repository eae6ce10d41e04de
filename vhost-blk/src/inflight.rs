//! Inflight I/O tracking (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`): a shared
//! memory region, created by the backend and kept by the frontend, in which
//! the backend records which descriptor chains it has taken off each ring
//! and not yet completed. When the backend dies (kill -9) and a new one
//! connects, the frontend hands the same region back and the new backend
//! resubmits those chains, so the guest loses no request and sees no error.
//!
//! Layout (split virtqueues; vhost-user spec, "Inflight I/O tracking"), all
//! little-endian, one queue region after the other, each
//! [`queue_region_bytes`] long:
//!
//! ```text
//! QueueRegionSplit { features: u64, version: u16, desc_num: u16,
//!                    last_batch_head: u16, used_idx: u16,
//!                    desc: [DescStateSplit; desc_num] }          16 + 16 * n bytes
//! DescStateSplit   { inflight: u8, padding: [u8; 5], next: u16, counter: u64 }
//! ```
//!
//! The backend's duties, in order, for each chain:
//! 1. [`QueueInflight::mark`] when the chain is taken off the ring (counter =
//!    fetch order), before any of its work runs;
//! 2. [`QueueInflight::before_used`] (`last_batch_head = head`), then the
//!    used-ring update (element, then `used->idx`), then
//!    [`QueueInflight::after_used`] (`inflight = 0`, then `used_idx = used->idx`).
//!
//! A crash between any two steps is repaired by [`QueueInflight::recover`]:
//! if the region's `used_idx` differs from the ring's `used->idx`, the crash
//! came after the used ring was updated for `last_batch_head`, so that chain
//! is done and is cleared; every chain still marked is resubmitted in counter
//! order, and the ring's next available index is `used->idx + inflight`
//! (every chain taken is either in the used ring or still marked).
//!
//! The region is frontend-supplied memory: every access is bounds-checked
//! and every value read from it is validated before use.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory};

/// The version this backend writes into fresh queue regions.
pub const INFLIGHT_VERSION: u16 = 1;

const HEADER_BYTES: usize = 16;
const DESC_BYTES: usize = 16;
/// Queue regions start on 64-byte boundaries (a cache line each).
const QUEUE_ALIGN_BYTES: usize = 64;

// Offsets inside a queue region header and a descriptor state.
const OFF_VERSION: usize = 8;
const OFF_DESC_NUM: usize = 10;
const OFF_LAST_BATCH_HEAD: usize = 12;
const OFF_USED_IDX: usize = 14;
const DESC_OFF_INFLIGHT: usize = 0;
const DESC_OFF_COUNTER: usize = 8;

/// Bytes one queue region of `queue_size` descriptors takes.
pub fn queue_region_bytes(queue_size: u16) -> usize {
    let raw = HEADER_BYTES + DESC_BYTES * usize::from(queue_size);
    raw.div_ceil(QUEUE_ALIGN_BYTES) * QUEUE_ALIGN_BYTES
}

/// Why an inflight region cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    #[error(
        "inflight region for {num_queues} queues of {queue_size} descriptors is out of range \
         (1..={max_queues} queues, 1..={max_queue_size} descriptors)"
    )]
    Geometry {
        num_queues: u16,
        queue_size: u16,
        max_queues: u16,
        max_queue_size: u16,
    },
    #[error("inflight region of {got_bytes} bytes is smaller than the {need_bytes} bytes its queues need")]
    TooSmall { got_bytes: u64, need_bytes: u64 },
    #[error("inflight region offset {offset} is not page-aligned")]
    Unaligned { offset: u64 },
    #[error("cannot create the inflight memfd: {0}")]
    Memfd(#[source] std::io::Error),
    #[error("cannot map the inflight region: {0}")]
    Map(String),
    #[error("inflight region file: {0}")]
    Backing(#[from] crate::backing::BackingError),
    #[error(
        "inflight queue {queue}: region holds {desc_num} descriptors, the ring has {queue_size}"
    )]
    DescNum {
        queue: u16,
        desc_num: u16,
        queue_size: u16,
    },
    #[error("inflight queue {queue} does not exist in a region of {num_queues} queues")]
    NoQueue { queue: u16, num_queues: u16 },
    #[error("inflight region access at byte {at} failed: {reason}")]
    Access { at: usize, reason: String },
}

/// A mapped inflight region (the frontend's copy of the memfd).
pub struct InflightRegion {
    map: MmapRegion<()>,
    num_queues: u16,
    queue_size: u16,
}

impl std::fmt::Debug for InflightRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InflightRegion")
            .field("num_queues", &self.num_queues)
            .field("queue_size", &self.queue_size)
            .field("len_bytes", &self.map.size())
            .finish()
    }
}

fn check_geometry(
    num_queues: u16,
    queue_size: u16,
    max_queues: u16,
    max_queue_size: u16,
) -> Result<u64, InflightError> {
    if num_queues == 0 || num_queues > max_queues || queue_size == 0 || queue_size > max_queue_size
    {
        return Err(InflightError::Geometry {
            num_queues,
            queue_size,
            max_queues,
            max_queue_size,
        });
    }
    // Bounded by the limits above (at most u16::MAX queues of 64 KiB each).
    Ok(queue_region_bytes(queue_size) as u64 * u64::from(num_queues))
}

/// Creates a zero-filled memfd of `len_bytes` (what GET_INFLIGHT_FD returns).
pub(crate) fn memfd(len_bytes: u64) -> Result<File, InflightError> {
    let name = c"cowstored-inflight";
    // SAFETY: `name` is a valid NUL-terminated string; memfd_create returns
    // a new descriptor (or -1) and touches no other memory.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(InflightError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len_bytes).map_err(InflightError::Memfd)?;
    Ok(file)
}

impl InflightRegion {
    /// A fresh region for `num_queues` queues of `queue_size` descriptors
    /// (GET_INFLIGHT_FD): returns the memfd and its length in bytes. It is
    /// all zeros; version 0 tells [`QueueInflight::recover`] it is new.
    pub fn create(
        num_queues: u16,
        queue_size: u16,
        max_queues: u16,
        max_queue_size: u16,
    ) -> Result<(File, u64), InflightError> {
        let len_bytes = check_geometry(num_queues, queue_size, max_queues, max_queue_size)?;
        Ok((memfd(len_bytes)?, len_bytes))
    }

    /// Maps a region the frontend hands over (SET_INFLIGHT_FD), after
    /// checking that it is large enough for its stated geometry.
    pub fn map(
        file: File,
        mmap_size: u64,
        mmap_offset: u64,
        num_queues: u16,
        queue_size: u16,
        max_queues: u16,
        max_queue_size: u16,
    ) -> Result<Arc<InflightRegion>, InflightError> {
        let need_bytes = check_geometry(num_queues, queue_size, max_queues, max_queue_size)?;
        if mmap_size < need_bytes {
            return Err(InflightError::TooSmall {
                got_bytes: mmap_size,
                need_bytes,
            });
        }
        if mmap_offset % 4096 != 0 {
            return Err(InflightError::Unaligned {
                offset: mmap_offset,
            });
        }
        // Map only what the queues use, never a frontend-chosen larger size,
        // and only what the file holds (past its end an access is SIGBUS).
        crate::backing::check_holds(&file, mmap_offset, need_bytes)?;
        let len = usize::try_from(need_bytes).map_err(|e| InflightError::Map(e.to_string()))?;
        let map = MmapRegion::<()>::from_file(FileOffset::new(file, mmap_offset), len)
            .map_err(|e| InflightError::Map(e.to_string()))?;
        Ok(Arc::new(InflightRegion {
            map,
            num_queues,
            queue_size,
        }))
    }

    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// The tracking of queue `queue` whose ring has `ring_size` descriptors
    /// (at most the region's queue size).
    pub fn queue(
        self: &Arc<Self>,
        queue: u16,
        ring_size: u16,
    ) -> Result<QueueInflight, InflightError> {
        if queue >= self.num_queues {
            return Err(InflightError::NoQueue {
                queue,
                num_queues: self.num_queues,
            });
        }
        if ring_size == 0 || ring_size > self.queue_size {
            return Err(InflightError::DescNum {
                queue,
                desc_num: self.queue_size,
                queue_size: ring_size,
            });
        }
        Ok(QueueInflight {
            region: self.clone(),
            queue,
            base: usize::from(queue) * queue_region_bytes(self.queue_size),
            ring_size,
        })
    }
}

/// What [`QueueInflight::recover`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Heads of the chains to run again, in the order they were fetched.
    pub resubmit: Vec<u16>,
    /// The ring's next available index: `used->idx` + chains still in flight.
    /// `None` for a fresh region (keep what SET_VRING_BASE said).
    pub next_avail: Option<u16>,
    /// The counter to give the next chain fetched.
    pub next_counter: u64,
    /// The crash came after the used ring was updated for this head but
    /// before its inflight entry was cleared; it was cleared now.
    pub repaired_head: Option<u16>,
}

/// One queue's part of an inflight region. Cheap to clone.
#[derive(Clone, Debug)]
pub struct QueueInflight {
    region: Arc<InflightRegion>,
    queue: u16,
    base: usize,
    ring_size: u16,
}

impl QueueInflight {
    fn store<T: vm_memory::AtomicAccess>(&self, at: usize, v: T) -> Result<(), InflightError> {
        let slice = self.region.map.as_volatile_slice();
        let addr = self.base + at;
        slice
            .store(v, addr, Ordering::Release)
            .map_err(|e| InflightError::Access {
                at: addr,
                reason: e.to_string(),
            })
    }

    fn load<T: vm_memory::AtomicAccess>(&self, at: usize) -> Result<T, InflightError> {
        let slice = self.region.map.as_volatile_slice();
        let addr = self.base + at;
        slice
            .load(addr, Ordering::Acquire)
            .map_err(|e| InflightError::Access {
                at: addr,
                reason: e.to_string(),
            })
    }

    /// Byte offset of descriptor `head`'s state, if `head` is in the ring.
    fn desc(&self, head: u16) -> Option<usize> {
        (head < self.ring_size).then(|| HEADER_BYTES + DESC_BYTES * usize::from(head))
    }

    /// Reads the region after a (re)connect, repairs the one step a crash
    /// can leave half done, and says what to resubmit. `ring_used_idx` is
    /// the `used->idx` the guest's used ring holds now.
    pub fn recover(&self, ring_used_idx: u16) -> Result<Recovery, InflightError> {
        let version: u16 = self.load(OFF_VERSION)?;
        if version == 0 {
            // A fresh region (zeros): nothing was in flight.
            self.store(OFF_DESC_NUM, self.ring_size.to_le())?;
            self.store(OFF_LAST_BATCH_HEAD, 0u16)?;
            self.store(OFF_USED_IDX, ring_used_idx.to_le())?;
            fence(Ordering::SeqCst);
            self.store(OFF_VERSION, INFLIGHT_VERSION.to_le())?;
            return Ok(Recovery {
                resubmit: Vec::new(),
                next_avail: None,
                next_counter: 1,
                repaired_head: None,
            });
        }
        let desc_num = u16::from_le(self.load(OFF_DESC_NUM)?);
        if desc_num != self.ring_size {
            return Err(InflightError::DescNum {
                queue: self.queue,
                desc_num,
                queue_size: self.ring_size,
            });
        }
        let mut repaired_head = None;
        let used_idx = u16::from_le(self.load(OFF_USED_IDX)?);
        if used_idx != ring_used_idx {
            // Crashed after the used ring took `last_batch_head` and before
            // its entry was cleared (or before used_idx caught up).
            let head = u16::from_le(self.load(OFF_LAST_BATCH_HEAD)?);
            if let Some(at) = self.desc(head) {
                self.store(at + DESC_OFF_INFLIGHT, 0u8)?;
                repaired_head = Some(head);
            }
            fence(Ordering::SeqCst);
            self.store(OFF_USED_IDX, ring_used_idx.to_le())?;
        }
        let mut pending = Vec::new();
        let mut max_counter = 0u64;
        for head in 0..self.ring_size {
            let at = HEADER_BYTES + DESC_BYTES * usize::from(head);
            let counter = u64::from_le(self.load(at + DESC_OFF_COUNTER)?);
            max_counter = max_counter.max(counter);
            let inflight: u8 = self.load(at + DESC_OFF_INFLIGHT)?;
            if inflight == 1 {
                pending.push((counter, head));
            }
        }
        pending.sort_unstable();
        // At most ring_size entries, so the count fits in u16.
        let in_flight = u16::try_from(pending.len()).unwrap_or(u16::MAX);
        Ok(Recovery {
            resubmit: pending.into_iter().map(|(_, head)| head).collect(),
            next_avail: Some(ring_used_idx.wrapping_add(in_flight)),
            next_counter: max_counter.saturating_add(1),
            repaired_head,
        })
    }

    /// Step 1: chain `head` was taken off the ring as the `counter`-th.
    /// Heads outside the ring are not tracked (the ring refuses them anyway).
    pub fn mark(&self, head: u16, counter: u64) -> Result<(), InflightError> {
        let Some(at) = self.desc(head) else {
            return Ok(());
        };
        self.store(at + DESC_OFF_COUNTER, counter.to_le())?;
        fence(Ordering::SeqCst);
        self.store(at + DESC_OFF_INFLIGHT, 1u8)
    }

    /// Step 2a: chain `head` is about to go into the used ring.
    pub fn before_used(&self, head: u16) -> Result<(), InflightError> {
        if self.desc(head).is_none() {
            return Ok(());
        }
        self.store(OFF_LAST_BATCH_HEAD, head.to_le())?;
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Step 2c: chain `head` is in the used ring, whose `used->idx` is now
    /// `used_idx`.
    pub fn after_used(&self, head: u16, used_idx: u16) -> Result<(), InflightError> {
        fence(Ordering::SeqCst);
        if let Some(at) = self.desc(head) {
            self.store(at + DESC_OFF_INFLIGHT, 0u8)?;
        }
        fence(Ordering::SeqCst);
        self.store(OFF_USED_IDX, used_idx.to_le())
    }

    /// Heads marked in flight right now (for tests and diagnostics).
    pub fn in_flight(&self) -> Result<Vec<u16>, InflightError> {
        let mut out = Vec::new();
        for head in 0..self.ring_size {
            let at = HEADER_BYTES + DESC_BYTES * usize::from(head);
            if self.load::<u8>(at + DESC_OFF_INFLIGHT)? == 1 {
                out.push(head);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QS: u16 = 8;

    /// A region as the frontend would keep it: created, then mapped (a
    /// second mapping of the same memfd stands for the restarted backend).
    fn region(num_queues: u16) -> (File, u64) {
        InflightRegion::create(num_queues, QS, 4, 256).unwrap()
    }

    fn mapped(file: &File, len: u64, num_queues: u16) -> Arc<InflightRegion> {
        InflightRegion::map(file.try_clone().unwrap(), len, 0, num_queues, QS, 4, 256).unwrap()
    }

    /// A toy used ring: what `used->idx` the guest would see.
    struct Ring {
        used_idx: u16,
    }

    impl Ring {
        /// The full completion protocol for one head.
        fn complete(&mut self, q: &QueueInflight, head: u16) {
            q.before_used(head).unwrap();
            self.used_idx = self.used_idx.wrapping_add(1);
            q.after_used(head, self.used_idx).unwrap();
        }
    }

    #[test]
    fn layout_sizes() {
        assert_eq!(queue_region_bytes(1), 64);
        assert_eq!(queue_region_bytes(128), 2112);
        assert_eq!(queue_region_bytes(256), 4160);
        let (file, len) = region(2);
        // 2 queues of 8 descriptors: 16 + 8 * 16 = 144, aligned up to 192 each.
        assert_eq!(len, 2 * 192);
        assert_eq!(file.metadata().unwrap().len(), len);
    }

    #[test]
    fn fresh_region_initialises_and_resubmits_nothing() {
        let (file, len) = region(1);
        let r = mapped(&file, len, 1);
        let q = r.queue(0, QS).unwrap();
        let rec = q.recover(5).unwrap();
        assert_eq!(rec.resubmit, Vec::<u16>::new());
        assert_eq!(rec.next_avail, None);
        // A second look (a reconnect with nothing in flight) is not fresh.
        let rec = q.recover(5).unwrap();
        assert_eq!(rec.next_avail, Some(5));
        assert!(rec.resubmit.is_empty());
    }

    #[test]
    fn resubmits_in_fetch_order_not_head_order() {
        let (file, len) = region(2);
        let q = mapped(&file, len, 2).queue(1, QS).unwrap();
        q.recover(0).unwrap();
        let mut ring = Ring { used_idx: 0 };
        // Fetched in this order: 5, 2, 7, 0; 2 completes.
        for (counter, head) in [(1, 5), (2, 2), (3, 7), (4, 0)] {
            q.mark(head, counter).unwrap();
        }
        ring.complete(&q, 2);
        assert_eq!(q.in_flight().unwrap(), vec![0, 5, 7]);
        // The backend dies; a new one maps the same memfd.
        let q2 = mapped(&file, len, 2).queue(1, QS).unwrap();
        let rec = q2.recover(ring.used_idx).unwrap();
        assert_eq!(rec.resubmit, vec![5, 7, 0]);
        assert_eq!(rec.next_avail, Some(4)); // 1 used + 3 in flight
        assert_eq!(rec.next_counter, 5);
        assert_eq!(rec.repaired_head, None);
        // Queue 0 is untouched by queue 1's traffic.
        let q0 = mapped(&file, len, 2).queue(0, QS).unwrap();
        assert!(q0.in_flight().unwrap().is_empty());
    }

    #[test]
    fn crash_between_used_ring_and_clear_is_repaired() {
        let (file, len) = region(1);
        let q = mapped(&file, len, 1).queue(0, QS).unwrap();
        q.recover(0).unwrap();
        q.mark(3, 1).unwrap();
        q.mark(4, 2).unwrap();
        // Head 3 goes into the used ring, then the backend dies before
        // after_used: the guest's used->idx is 1, the region says 0.
        q.before_used(3).unwrap();
        let ring_used_idx = 1;
        let q2 = mapped(&file, len, 1).queue(0, QS).unwrap();
        let rec = q2.recover(ring_used_idx).unwrap();
        assert_eq!(rec.repaired_head, Some(3));
        assert_eq!(rec.resubmit, vec![4]);
        assert_eq!(rec.next_avail, Some(2));
        // Repaired for good: a second recovery agrees and repairs nothing.
        let rec = q2.recover(ring_used_idx).unwrap();
        assert_eq!(rec.repaired_head, None);
        assert_eq!(rec.resubmit, vec![4]);
    }

    #[test]
    fn crash_before_used_ring_resubmits() {
        let (file, len) = region(1);
        let q = mapped(&file, len, 1).queue(0, QS).unwrap();
        q.recover(0).unwrap();
        q.mark(6, 1).unwrap();
        // Died after before_used but before the used ring moved.
        q.before_used(6).unwrap();
        let rec = mapped(&file, len, 1)
            .queue(0, QS)
            .unwrap()
            .recover(0)
            .unwrap();
        assert_eq!(rec.repaired_head, None);
        assert_eq!(rec.resubmit, vec![6]);
        assert_eq!(rec.next_avail, Some(1));
    }

    #[test]
    fn crash_after_clear_before_used_idx_is_harmless() {
        let (file, len) = region(1);
        let q = mapped(&file, len, 1).queue(0, QS).unwrap();
        q.recover(0).unwrap();
        q.mark(1, 1).unwrap();
        q.mark(2, 2).unwrap();
        q.before_used(1).unwrap();
        // used->idx moved to 1 and the entry was cleared, used_idx not yet.
        q.store(HEADER_BYTES + DESC_BYTES + DESC_OFF_INFLIGHT, 0u8)
            .unwrap();
        let rec = mapped(&file, len, 1)
            .queue(0, QS)
            .unwrap()
            .recover(1)
            .unwrap();
        assert_eq!(rec.resubmit, vec![2]);
        assert_eq!(rec.next_avail, Some(2));
    }

    #[test]
    fn used_idx_wraps() {
        let (file, len) = region(1);
        let q = mapped(&file, len, 1).queue(0, QS).unwrap();
        q.recover(u16::MAX).unwrap();
        q.mark(0, 1).unwrap();
        q.mark(1, 2).unwrap();
        let mut ring = Ring { used_idx: u16::MAX };
        ring.complete(&q, 0);
        assert_eq!(ring.used_idx, 0);
        let rec = mapped(&file, len, 1)
            .queue(0, QS)
            .unwrap()
            .recover(0)
            .unwrap();
        assert_eq!(rec.resubmit, vec![1]);
        assert_eq!(rec.next_avail, Some(1));
    }

    #[test]
    fn hostile_regions_are_refused_not_trusted() {
        let (file, len) = region(1);
        // Too small for its stated geometry, unaligned, absurd geometry.
        assert!(matches!(
            InflightRegion::map(file.try_clone().unwrap(), len - 1, 0, 1, QS, 4, 256),
            Err(InflightError::TooSmall { .. })
        ));
        assert!(matches!(
            InflightRegion::map(file.try_clone().unwrap(), len, 100, 1, QS, 4, 256),
            Err(InflightError::Unaligned { .. })
        ));
        assert!(matches!(
            InflightRegion::map(file.try_clone().unwrap(), len, 0, 9, QS, 4, 256),
            Err(InflightError::Geometry { .. })
        ));
        assert!(matches!(
            InflightRegion::create(1, 0, 4, 256),
            Err(InflightError::Geometry { .. })
        ));
        // A file shorter than the size it is said to have (or than the
        // offset plus the queues' part) would be SIGBUS on first access.
        let (short, short_len) = region(1);
        short.set_len(short_len - 1).unwrap();
        assert!(matches!(
            InflightRegion::map(short, short_len, 0, 1, QS, 4, 256),
            Err(InflightError::Backing(_))
        ));
        assert!(matches!(
            InflightRegion::map(file.try_clone().unwrap(), len + 4096, 4096, 1, QS, 4, 256),
            Err(InflightError::Backing(_))
        ));
        let r = mapped(&file, len, 1);
        assert!(matches!(r.queue(1, QS), Err(InflightError::NoQueue { .. })));
        assert!(matches!(
            r.queue(0, QS + 1),
            Err(InflightError::DescNum { .. })
        ));
        // A region whose desc_num disagrees with the ring is refused.
        let q = r.queue(0, QS).unwrap();
        q.recover(0).unwrap();
        let q4 = r.queue(0, 4).unwrap();
        assert!(matches!(q4.recover(0), Err(InflightError::DescNum { .. })));
        // A garbage last_batch_head (out of the ring) is ignored, not used.
        q.store(OFF_LAST_BATCH_HEAD, 999u16).unwrap();
        let rec = q.recover(7).unwrap();
        assert_eq!(rec.repaired_head, None);
        assert_eq!(rec.next_avail, Some(7));
        // Heads outside the ring are never written.
        q.mark(QS, 1).unwrap();
        q.before_used(QS).unwrap();
        q.after_used(QS, 8).unwrap();
        assert!(q.in_flight().unwrap().is_empty());
    }
}
