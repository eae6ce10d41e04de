//! The bytes of a log batch, and buffers registered with a thread's
//! io_uring so that direct appends from them skip pinning pages.
//!
//! A direct (`O_DIRECT`) write from ordinary memory makes the kernel look
//! up and pin every page of the buffer, and unpin them on completion. On
//! the vhost-blk queue worker at 128 KiB writes, depth 8, that was the
//! largest single cost in the kernel (perf, 2026-12-07: `gup_fast_fallback`
//! 8%, with `bio_iov_iter_get_pages` 13% of the worker thread). A buffer
//! registered with the ring (`IORING_REGISTER_BUFFERS2`) is pinned once,
//! and `IORING_OP_WRITE_FIXED` from it hands the block layer its pages
//! directly.
//!
//! So each thread's own ring (`local_ring.rs`) keeps a small table of
//! [`FIXED_SLOTS`] batch buffers of [`FIXED_SLOT_BYTES`], filled lazily:
//! a slot gets memory and its registration the first time it is needed,
//! and a batch that is done goes back to its ring's free list from
//! whatever thread drops the last reference ([`LogBuf`] is shared by the
//! batch's writes and by readers of its records while they are in flight).
//! A batch too large for a slot, built outside a ring, or when every slot
//! is taken, gets plain memory and a plain write: slower, just as correct.
//!
//! What keeps a fixed write honest: the kernel reads the pages that were
//! registered, so a write may name a slot only while its bytes are still
//! the allocation registered there. A slot's memory is never freed or
//! moved while it is registered, except by a batch growing its `Vec` past
//! the slot (the batch sizes it to prevent that); [`LogBuf::new`] then sees
//! the move and the batch's writes go plain, and the slot is registered
//! anew (with that memory) before its next use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::limits::{MAX_BATCH_DATA_BYTES, MAX_BATCH_WRITES, MAX_RECORD_DATA_BYTES};
use crate::record::{MAX_RECORD_OVERHEAD_BYTES, PAGE_BYTES};

/// Registered buffers per thread ring: a queue worker's batches in flight
/// at once (a guest's large writes at depth 8 make 2-4 batches of
/// [`crate::Volume::write_many`]); more take plain memory. With
/// [`FIXED_SLOT_BYTES`] it bounds the memory a ring pins to 4.5 MiB, under
/// the 8 MiB `RLIMIT_MEMLOCK` a non-root daemon usually has (registered
/// pages count against it).
pub(crate) const FIXED_SLOTS: u16 = 8;

/// One registered buffer: a batch of [`MAX_BATCH_DATA_BYTES`] in up to
/// [`MAX_BATCH_WRITES`] writes, with what their records add to the data
/// (what `Volume::write_many` reserves: [`MAX_RECORD_OVERHEAD_BYTES`] a
/// record of up to 64 KiB, a record per write and per 64 KiB), two pages
/// of pad and a page of alignment room; 64 KiB covers them (the assertion
/// below).
pub(crate) const FIXED_SLOT_BYTES: usize = MAX_BATCH_DATA_BYTES + (64 << 10);

const _: () = assert!(
    (MAX_BATCH_WRITES + MAX_BATCH_DATA_BYTES / MAX_RECORD_DATA_BYTES) * MAX_RECORD_OVERHEAD_BYTES
        + 3 * PAGE_BYTES
        <= FIXED_SLOT_BYTES - MAX_BATCH_DATA_BYTES
);

/// Tells rings apart, so that a buffer is named only in the ring it is
/// registered with. Never 0 (0: a ring without registered buffers).
static NEXT_TABLE_ID: AtomicU64 = AtomicU64::new(1);

/// Where a slot's registration points: (address, length) of its memory.
type Registered = (usize, usize);

fn extent_of(bytes: &Vec<u8>) -> Registered {
    (bytes.as_ptr() as usize, bytes.capacity())
}

/// A slot waiting for its next batch.
struct FreeSlot {
    index: u16,
    /// Its memory; `None` when the batch that had it dropped it (a failed
    /// write before logging), and the slot gets new memory.
    bytes: Option<Vec<u8>>,
    /// What the kernel's table holds for `index`.
    registered: Registered,
}

/// The part of a ring's table that leases return to, from any thread.
struct Shared {
    id: u64,
    free: Mutex<Vec<FreeSlot>>,
}

/// A ring's registered batch buffers; lives beside the ring (`RingCore`)
/// and is used by the thread that owns it.
pub(crate) struct FixedBufs {
    shared: Arc<Shared>,
    /// Slots given memory so far (indices `0..filled`).
    filled: u16,
    /// Registering failed (`RLIMIT_MEMLOCK`, an old kernel): no more tries.
    disabled: bool,
}

impl FixedBufs {
    /// Registers an empty table of [`FIXED_SLOTS`] with `ring`; `None` when
    /// the kernel does not take sparse tables (before Linux 5.19).
    pub(crate) fn register(ring: &io_uring::IoUring) -> Option<Self> {
        if let Err(e) = ring
            .submitter()
            .register_buffers_sparse(u32::from(FIXED_SLOTS))
        {
            tracing::debug!("no registered buffers for a thread ring: {e}");
            return None;
        }
        Some(FixedBufs {
            shared: Arc::new(Shared {
                id: NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed),
                free: Mutex::new(Vec::new()),
            }),
            filled: 0,
            disabled: false,
        })
    }

    /// The id fixed writes in this ring must carry (see [`LogBuf::fixed_index`]).
    pub(crate) fn id(&self) -> u64 {
        self.shared.id
    }

    /// An empty buffer with room for at least `capacity_bytes`, registered
    /// with `ring`, and its lease; `None` when none fits or is free.
    pub(crate) fn lease(
        &mut self,
        ring: &io_uring::IoUring,
        capacity_bytes: usize,
    ) -> Option<(Vec<u8>, Lease)> {
        if self.disabled || capacity_bytes > FIXED_SLOT_BYTES {
            return None;
        }
        let popped = self.shared.free.lock().pop();
        let slot = match popped {
            Some(slot) => slot,
            None if self.filled < FIXED_SLOTS => {
                self.filled += 1;
                FreeSlot {
                    index: self.filled - 1,
                    bytes: None,
                    registered: (0, 0),
                }
            }
            None => return None,
        };
        // Memory a batch grew far past the slot is not worth pinning.
        let mut bytes = slot
            .bytes
            .filter(|b| b.capacity() <= 2 * FIXED_SLOT_BYTES)
            .unwrap_or_else(|| Vec::with_capacity(FIXED_SLOT_BYTES));
        bytes.clear();
        let now = extent_of(&bytes);
        if slot.registered != now {
            let iov = libc::iovec {
                iov_base: now.0 as *mut libc::c_void,
                iov_len: now.1,
            };
            // SAFETY: the iovec is `bytes`' whole allocation, which stays
            // allocated and unmoved while registered (see the module docs:
            // a batch that moved it makes the slot re-register here first,
            // and a fixed write is only issued for memory that matches).
            let res = unsafe {
                ring.submitter()
                    .register_buffers_update(u32::from(slot.index), &[iov], None)
            };
            if let Err(e) = res {
                tracing::info!(
                    "registering a {} KiB log buffer failed ({e}); direct appends pin pages per write",
                    now.1 >> 10
                );
                self.disabled = true;
                // The slot keeps its old registration, never named again.
                return None;
            }
        }
        let lease = Lease {
            home: Some(self.shared.clone()),
            index: slot.index,
            registered: now,
        };
        Some((bytes, lease))
    }
}

/// A slot taken by a batch; goes back to its table when dropped (with the
/// memory, through [`LogBuf`]; without it, if the batch was dropped).
pub(crate) struct Lease {
    home: Option<Arc<Shared>>,
    index: u16,
    registered: Registered,
}

impl Lease {
    /// Returns the slot to its table, with `bytes` as its memory (`None`:
    /// the slot gets new memory next time).
    fn give_back(&mut self, bytes: Option<Vec<u8>>) {
        if let Some(home) = self.home.take() {
            home.free.lock().push(FreeSlot {
                index: self.index,
                bytes,
                registered: self.registered,
            });
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.give_back(None);
    }
}

/// A batch's encoded records: written by its appends, read by readers of
/// records still in flight. Derefs to the bytes.
pub(crate) struct LogBuf {
    bytes: Vec<u8>,
    lease: Option<Lease>,
    /// The bytes are the allocation the lease's slot registered: fixed
    /// writes may name it.
    fixed: bool,
}

impl LogBuf {
    /// Bytes with no registration (seals, tests, batches built elsewhere).
    pub(crate) fn plain(bytes: Vec<u8>) -> Self {
        LogBuf {
            bytes,
            lease: None,
            fixed: false,
        }
    }

    /// A finished batch; `lease` is the slot its `Vec` came from, if any.
    pub(crate) fn new(bytes: Vec<u8>, lease: Option<Lease>) -> Self {
        let fixed = lease
            .as_ref()
            .is_some_and(|l| l.registered == extent_of(&bytes));
        LogBuf {
            bytes,
            lease,
            fixed,
        }
    }

    /// The registered buffer index for a write of `part` (a slice of these
    /// bytes) in the ring whose table is `table_id`; `None`: a plain write.
    pub(crate) fn fixed_index(&self, table_id: u64, part: &[u8]) -> Option<u16> {
        let lease = self.lease.as_ref()?;
        let home = lease.home.as_ref()?;
        let (base, len) = lease.registered;
        let start = part.as_ptr() as usize;
        let inside = start >= base && start + part.len() <= base + len;
        (self.fixed && table_id != 0 && home.id == table_id && inside).then_some(lease.index)
    }

    /// The id of the table these bytes are registered with (0: none).
    pub(crate) fn table_id(&self) -> u64 {
        match &self.lease {
            Some(Lease {
                home: Some(home), ..
            }) if self.fixed => home.id,
            _ => 0,
        }
    }
}

impl std::ops::Deref for LogBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for LogBuf {
    fn drop(&mut self) {
        if let Some(mut lease) = self.lease.take() {
            // Memory that moved away from the slot still goes back: the
            // slot registers it anew before its next use.
            lease.give_back(Some(std::mem::take(&mut self.bytes)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_with_table() -> Option<(io_uring::IoUring, FixedBufs)> {
        let ring = io_uring::IoUring::new(8).ok()?;
        let table = FixedBufs::register(&ring)?;
        Some((ring, table))
    }

    #[test]
    fn slots_are_reused_and_bounded() {
        let Some((ring, mut table)) = ring_with_table() else {
            eprintln!("note: no io_uring with sparse buffer tables here");
            return;
        };
        let mut held = Vec::new();
        for _ in 0..FIXED_SLOTS {
            let (bytes, lease) = table.lease(&ring, 4096).expect("a free slot");
            assert!(bytes.capacity() >= FIXED_SLOT_BYTES);
            held.push(LogBuf::new(bytes, Some(lease)));
        }
        assert!(
            table.lease(&ring, 4096).is_none(),
            "more than {FIXED_SLOTS} slots"
        );
        assert!(table.lease(&ring, FIXED_SLOT_BYTES + 1).is_none());
        let addr = held[3].as_ptr() as usize;
        drop(held.remove(3));
        let (bytes, lease) = table.lease(&ring, 4096).expect("the slot came back");
        assert_eq!(bytes.as_ptr() as usize, addr, "the same memory, reused");
        let buf = LogBuf::new(bytes, Some(lease));
        assert_eq!(buf.table_id(), table.id());
    }

    #[test]
    fn only_the_registered_memory_of_the_right_ring_is_named() {
        let Some((ring, mut table)) = ring_with_table() else {
            eprintln!("note: no io_uring with sparse buffer tables here");
            return;
        };
        let (mut bytes, lease) = table.lease(&ring, 4096).unwrap();
        bytes.resize(8192, 7);
        let buf = LogBuf::new(bytes, Some(lease));
        assert!(buf.fixed_index(table.id(), &buf[4096..]).is_some());
        assert_eq!(buf.fixed_index(table.id() + 1, &buf[..]), None);
        assert_eq!(buf.fixed_index(0, &buf[..]), None);
        let other = vec![0u8; 16];
        assert_eq!(buf.fixed_index(table.id(), &other), None);

        // A batch that outgrew its slot moved to other memory: plain
        // writes, and the slot is registered again for the next batch.
        let (mut bytes, lease) = table.lease(&ring, 4096).unwrap();
        bytes.resize(FIXED_SLOT_BYTES * 2, 1);
        let grown = LogBuf::new(bytes, Some(lease));
        assert_eq!(grown.fixed_index(table.id(), &grown[..16]), None);
        assert_eq!(grown.table_id(), 0);
        drop(grown);
        let (bytes, lease) = table.lease(&ring, 4096).unwrap();
        let again = LogBuf::new(bytes, Some(lease));
        assert!(again.fixed_index(table.id(), &again[..0]).is_some());
    }

    #[test]
    fn a_dropped_lease_frees_its_slot() {
        let Some((ring, mut table)) = ring_with_table() else {
            eprintln!("note: no io_uring with sparse buffer tables here");
            return;
        };
        for _ in 0..FIXED_SLOTS * 2 {
            let (bytes, lease) = table.lease(&ring, 4096).expect("a free slot");
            drop(bytes);
            drop(lease);
        }
    }
}
