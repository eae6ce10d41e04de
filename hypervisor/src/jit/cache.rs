//! Where translated blocks live: an executable code arena (W^X: written
//! through one mapping, executed through another), the map from (physical,
//! virtual) block address to native entry point, the chain links (jumps
//! patched to point at a successor), and the load TLB the native fast
//! path reads.
//!
//! Nothing is ever freed one block at a time: a flush (code generation
//! moved, fence.i, arena or slots full) resets everything at once, so a
//! link from one block to another can never dangle.

use std::rc::Rc;

use crate::cpu::BlockInst;

/// Executable memory per hart (reserved, committed as it is touched).
const ARENA_BYTES: usize = 32 << 20;
/// The entry/exit trampoline owns the first page.
pub(crate) const TRAMPOLINE_BYTES: usize = 4096;
/// Largest native form of one block (64 instructions of at most ~120 bytes
/// plus exits); a block that would not fit triggers a flush first.
pub(crate) const MAX_BLOCK_BYTES: usize = 32 << 10;
/// Chain links (two per block at most).
pub(crate) const LINK_SLOTS: usize = 1 << 16;
const MAP_SLOTS: usize = 1 << 14;
/// Load-TLB entries (a power of two; the emitter masks with JTLB_SIZE - 1).
/// The store TLB follows it in the same table (entries JTLB_SIZE..2*JTLB_SIZE).
pub(crate) const JTLB_SIZE: usize = 256;
/// Never a page-aligned address: marks an empty load-TLB entry.
pub(crate) const JTLB_EMPTY: u64 = 1;

/// Jump-cache entries (a power of two).
pub(crate) const JCACHE_SIZE: usize = 1024;
/// Never a block address (blocks start at even addresses).
pub(crate) const JCACHE_EMPTY: u64 = 1;

/// One jump-cache entry: guest virtual address -> native block, valid in
/// the current translation context (how indirect jumps and jumps to
/// another page find their successor without the dispatcher).
#[repr(C, align(32))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct JcEntry {
    pub va: u64,
    pub code: u64,
    /// Physical address of the block (for the dispatcher's own lookups).
    pub pa: u64,
}

/// One load-TLB entry: a guest virtual page that is RAM and readable in the
/// current translation context, and what to add to a guest virtual address
/// in it to get the host address.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct JtlbEntry {
    pub tag: u64,
    pub addend: u64,
}

/// A fixed-size array whose address never changes and which Rust only
/// touches through its raw pointer, because native code reads it too.
pub(crate) struct RawTable<T: Copy> {
    ptr: *mut T,
    len: usize,
}

impl<T: Copy> RawTable<T> {
    fn new(len: usize, fill: T) -> Self {
        let b: Box<[T]> = vec![fill; len].into_boxed_slice();
        let ptr = Box::into_raw(b).cast::<T>();
        Self { ptr, len }
    }
    pub fn ptr(&self) -> *mut T {
        self.ptr
    }
    pub fn get(&self, i: usize) -> T {
        assert!(i < self.len);
        // SAFETY: i is in bounds of the live allocation made in new(), and
        // no native code runs while Rust reads it.
        unsafe { self.ptr.add(i).read() }
    }
    pub fn set(&mut self, i: usize, v: T) {
        assert!(i < self.len);
        // SAFETY: i is in bounds of the live allocation made in new(); no
        // Rust reference into it exists (native code reads it only while
        // this hart runs it, on this thread), and &mut self serializes
        // Rust writers.
        unsafe { self.ptr.add(i).write(v) }
    }
    pub fn fill(&mut self, v: T) {
        for i in 0..self.len {
            self.set(i, v);
        }
    }
}

impl<T: Copy> Drop for RawTable<T> {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly the boxed slice leaked in new().
        unsafe {
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.ptr, self.len,
            )));
        }
    }
}

/// The executable code arena: one memfd mapped twice, writable at one
/// address and executable at another, so no page is ever both writable
/// and executable and adding a block costs no system call.
pub(crate) struct Arena {
    /// The read+write view (where blocks are copied in).
    rw: *mut u8,
    /// The read+execute view (what native code runs from).
    rx: *mut u8,
    used: usize,
}

fn map_view(fd: i32, prot: i32) -> std::io::Result<*mut u8> {
    // SAFETY: a new shared mapping of the whole memfd (sized by the
    // caller); no existing memory is affected. The result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            ARENA_BYTES,
            prot,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(p.cast())
    }
}

impl Arena {
    pub fn new() -> std::io::Result<Self> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: memfd_create with a NUL-terminated name and valid flags;
        // the result is checked before use.
        let raw = unsafe { libc::memfd_create(c"cowvisor-jit".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let file = unsafe { std::fs::File::from_raw_fd(raw) };
        file.set_len(ARENA_BYTES as u64)?;
        let rw = map_view(file.as_raw_fd(), libc::PROT_READ | libc::PROT_WRITE)?;
        let rx = match map_view(file.as_raw_fd(), libc::PROT_READ | libc::PROT_EXEC) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: unmaps the view just made.
                unsafe { libc::munmap(rw.cast(), ARENA_BYTES) };
                return Err(e);
            }
        };
        // The mappings keep the memory; the descriptor may close.
        drop(file);
        Ok(Self {
            rw,
            rx,
            used: TRAMPOLINE_BYTES,
        })
    }

    /// Host address of the executable view.
    pub fn base(&self) -> usize {
        self.rx as usize
    }

    /// Whether a block of MAX_BLOCK_BYTES still fits.
    pub fn has_room(&self) -> bool {
        self.used + MAX_BLOCK_BYTES <= ARENA_BYTES
    }

    /// The executable address the next block will get.
    pub fn next_addr(&self) -> usize {
        self.rx as usize + self.used
    }

    /// Points the rel32 of a `jmp` whose displacement ends at executable
    /// address `end` at executable address `target` (a chain link).
    pub fn link(&mut self, end: u64, target: u64) {
        let base = self.rx as u64;
        let at = usize::try_from(end - 4 - base).expect("inside the arena");
        // SAFETY: `at - 1` lies inside the writable view (a block's code).
        let opcode = unsafe { self.rw.add(at - 1).read() };
        assert_eq!(opcode, 0xe9, "a chain link patches a jmp rel32");
        let rel = i32::try_from(target as i64 - end as i64).expect("arena is < 2 GiB");
        self.write_at(at, &rel.to_le_bytes());
    }

    /// Copies `code` to arena offset `at`.
    pub fn write_at(&mut self, at: usize, code: &[u8]) {
        assert!(at + code.len() <= ARENA_BYTES);
        // SAFETY: [at, at+len) lies inside the writable view (asserted);
        // no native code of this hart runs now (the dispatcher translates
        // only between native runs) and no earlier block of this epoch
        // overlaps it, and no Rust reference into the arena exists. x86
        // keeps instruction fetch coherent with stores through any alias.
        unsafe {
            std::ptr::copy_nonoverlapping(code.as_ptr(), self.rw.add(at), code.len());
        }
    }

    /// Appends a block; returns its executable address.
    pub fn append(&mut self, code: &[u8]) -> usize {
        let at = self.used;
        self.write_at(at, code);
        self.used = (at + code.len()).div_ceil(16) * 16;
        self.rx as usize + at
    }

    pub fn reset(&mut self) {
        self.used = TRAMPOLINE_BYTES;
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the two views made in new(); no native
        // code runs (a running block holds &mut of the hart owning this
        // arena).
        unsafe {
            libc::munmap(self.rw.cast(), ARENA_BYTES);
            libc::munmap(self.rx.cast(), ARENA_BYTES);
        }
    }
}

#[derive(Clone, Copy)]
struct MapEntry {
    pa: u64,
    va: u64,
    epoch: u64,
    code: usize,
}

/// A chain link: a `jmp rel32` at the end of a block (executable address
/// just past its displacement), the successor's virtual address and the
/// physical page of the block that jumps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlotInfo {
    pub jmp_end: u64,
    pub target_va: u64,
    pub pred_page: u64,
}

/// Translated blocks of one hart.
pub(crate) struct CodeCache {
    pub arena: Arena,
    map: Vec<MapEntry>,
    /// Bumped by every flush; map entries of older epochs miss.
    pub epoch: u64,
    slot_info: Vec<SlotInfo>,
    /// Decoded instructions the native code points at (interpreter
    /// call-outs); kept alive until the next flush.
    pub keep: Vec<Rc<[BlockInst]>>,
    pub jtlb: RawTable<JtlbEntry>,
    pub jcache: RawTable<JcEntry>,
}

impl CodeCache {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            arena: Arena::new()?,
            map: vec![
                MapEntry {
                    pa: 0,
                    va: 0,
                    epoch: u64::MAX,
                    code: 0,
                };
                MAP_SLOTS
            ],
            epoch: 0,
            slot_info: Vec::with_capacity(LINK_SLOTS),
            keep: Vec::new(),
            jtlb: RawTable::new(
                2 * JTLB_SIZE,
                JtlbEntry {
                    tag: JTLB_EMPTY,
                    addend: 0,
                },
            ),
            jcache: RawTable::new(
                JCACHE_SIZE,
                JcEntry {
                    va: JCACHE_EMPTY,
                    code: 0,
                    pa: 0,
                },
            ),
        })
    }

    fn index(pa: u64) -> usize {
        ((pa >> 1) as usize) % MAP_SLOTS
    }

    pub fn lookup(&self, pa: u64, va: u64) -> Option<usize> {
        let e = self.map[Self::index(pa)];
        (e.pa == pa && e.va == va && e.epoch == self.epoch).then_some(e.code)
    }

    pub fn insert(&mut self, pa: u64, va: u64, code: usize) {
        self.map[Self::index(pa)] = MapEntry {
            pa,
            va,
            epoch: self.epoch,
            code,
        };
    }

    /// Records a chain link; returns its number (what the native miss
    /// path reports), or None when all are used.
    pub fn new_slot(&mut self, info: SlotInfo) -> Option<u64> {
        let i = self.slot_info.len();
        if i >= LINK_SLOTS {
            return None;
        }
        self.slot_info.push(info);
        Some(i as u64)
    }

    pub fn slots_free(&self) -> usize {
        LINK_SLOTS - self.slot_info.len()
    }

    /// The link numbered `i`.
    pub fn slot(&self, i: u64) -> Option<SlotInfo> {
        self.slot_info.get(usize::try_from(i).ok()?).copied()
    }

    /// Forgets every block and link (the arena is reused from its start).
    pub fn flush(&mut self) {
        self.epoch += 1;
        self.arena.reset();
        self.slot_info.clear();
        self.keep.clear();
        self.flush_jcache();
    }

    pub fn flush_jcache(&mut self) {
        self.jcache.fill(JcEntry {
            va: JCACHE_EMPTY,
            code: 0,
            pa: 0,
        });
    }

    fn jcache_index(va: u64) -> usize {
        ((va >> 1) as usize) & (JCACHE_SIZE - 1)
    }

    /// Notes that `va` runs the block at `code` (in the current context).
    pub fn remember_jump(&mut self, va: u64, pa: u64, code: usize) {
        self.jcache.set(
            Self::jcache_index(va),
            JcEntry {
                va,
                code: code as u64,
                pa,
            },
        );
    }

    /// The block the jump cache knows for `va`: (physical address, code).
    pub fn recall_jump(&self, va: u64) -> Option<(u64, usize)> {
        let e = self.jcache.get(Self::jcache_index(va));
        (e.va == va).then_some((e.pa, e.code as usize))
    }

    /// Empties the load and the store TLB.
    pub fn flush_jtlb(&mut self) {
        self.jtlb.fill(JtlbEntry {
            tag: JTLB_EMPTY,
            addend: 0,
        });
    }

    /// Empties the store TLB alone.
    pub fn flush_stlb(&mut self) {
        for i in JTLB_SIZE..2 * JTLB_SIZE {
            self.jtlb.set(
                i,
                JtlbEntry {
                    tag: JTLB_EMPTY,
                    addend: 0,
                },
            );
        }
    }
}
