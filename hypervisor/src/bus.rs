//! What a hart sees of the world: physical memory and devices behind one
//! trait, plus the LR/SC reservation set shared by all harts.

/// Why a physical access could not be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("no device or memory at physical address {addr:#x} ({size} bytes)")]
    Unmapped { addr: u64, size: u8 },
    #[error("device at {addr:#x} rejects a {size}-byte access")]
    BadAccess { addr: u64, size: u8 },
}

/// Physical address space as seen by the harts.
pub trait Bus {
    /// Loads `size` (1, 2, 4 or 8) bytes, little-endian, zero-extended.
    fn load(&mut self, addr: u64, size: u8) -> Result<u64, BusError>;
    /// Stores the low `size` bytes of `value`. Must clear any LR reservation
    /// covering `addr` (see [`Reservations`]).
    fn store(&mut self, addr: u64, size: u8, value: u64) -> Result<(), BusError>;
    /// Direct access to guest RAM for fast paths: (base address, bytes).
    fn ram(&mut self) -> (u64, &mut [u8]);
    fn reservations(&mut self) -> &mut Reservations;
    /// Bumped whenever memory holding cached code is written; harts drop
    /// their decoded blocks when it moves.
    fn code_generation(&self) -> u64;
    /// Notes that the page of `addr` holds decoded code.
    fn mark_code_page(&mut self, addr: u64);
}

/// Which RAM pages hold decoded code, and the generation counter stores
/// to them bump. After a bump every hart flushes, so the map restarts empty.
#[derive(Debug, Default, Clone)]
pub struct CodePages {
    bits: Vec<u64>,
    base: u64,
    pub generation: u64,
}

impl CodePages {
    pub fn new(base: u64, len_bytes: usize) -> Self {
        Self {
            bits: vec![0; len_bytes.div_ceil(4096 * 64)],
            base,
            generation: 0,
        }
    }
    #[inline]
    fn index(&self, addr: u64) -> Option<(usize, u64)> {
        let page = usize::try_from(addr.checked_sub(self.base)? >> 12).ok()?;
        (page / 64 < self.bits.len()).then_some((page / 64, 1u64 << (page % 64)))
    }
    pub fn mark(&mut self, addr: u64) {
        if let Some((w, b)) = self.index(addr) {
            self.bits[w] |= b;
        }
    }
    /// Call on every store: bumps the generation when it hits code.
    #[inline]
    pub fn on_store(&mut self, addr: u64, size: u8) {
        for a in [addr, addr.wrapping_add(u64::from(size) - 1)] {
            if let Some((w, b)) = self.index(a) {
                if self.bits[w] & b != 0 {
                    self.generation += 1;
                    self.bits.iter_mut().for_each(|x| *x = 0);
                    return;
                }
            }
        }
    }
}

/// LR/SC reservations, one per hart, with an 8-byte granule.
#[derive(Debug, Default, Clone)]
pub struct Reservations {
    addrs: Vec<Option<u64>>,
}

impl Reservations {
    pub fn new(harts: usize) -> Self {
        Self {
            addrs: vec![None; harts],
        }
    }
    pub fn reserve(&mut self, hart: usize, addr: u64) {
        if let Some(slot) = self.addrs.get_mut(hart) {
            *slot = Some(addr & !7);
        }
    }
    /// Takes the reservation of `hart`; true when it covered `addr`.
    pub fn take(&mut self, hart: usize, addr: u64) -> bool {
        self.addrs.get_mut(hart).and_then(Option::take) == Some(addr & !7)
    }
    pub fn clear(&mut self, hart: usize) {
        if let Some(slot) = self.addrs.get_mut(hart) {
            *slot = None;
        }
    }
    /// A store by anyone to `addr` breaks every reservation on its granule.
    #[inline]
    pub fn on_store(&mut self, addr: u64, size: u8) {
        let first = addr & !7;
        let last = addr.wrapping_add(u64::from(size) - 1) & !7;
        for slot in &mut self.addrs {
            if let Some(a) = *slot {
                if a == first || a == last {
                    *slot = None;
                }
            }
        }
    }
}

/// Plain RAM at a base address: the bus of the user-mode test harness and
/// the memory part of the machine.
#[derive(Debug)]
pub struct Ram {
    pub base: u64,
    pub bytes: GuestMemory,
}

impl Ram {
    /// Private RAM on the heap (the user-mode harness, unit tests).
    pub fn new(base: u64, len_bytes: usize) -> Self {
        Self {
            base,
            bytes: GuestMemory::Heap(vec![0; len_bytes]),
        }
    }

    /// RAM in a shared memfd, so that a vhost-user backend can map it (the
    /// machine's RAM).
    pub fn shared(base: u64, len_bytes: usize) -> std::io::Result<Self> {
        Ok(Self {
            base,
            bytes: GuestMemory::Shared(SharedMemory::new(len_bytes)?),
        })
    }

    /// Offset of [addr, addr+size) inside RAM, when wholly inside.
    #[inline]
    pub fn offset(&self, addr: u64, size: u64) -> Option<usize> {
        let off = addr.checked_sub(self.base)?;
        let end = off.checked_add(size)?;
        if end <= self.bytes.len() as u64 {
            Some(off as usize)
        } else {
            None
        }
    }

    #[inline]
    pub fn load(&self, addr: u64, size: u8) -> Option<u64> {
        let off = self.offset(addr, u64::from(size))?;
        let b = &self.bytes[off..off + usize::from(size)];
        Some(match size {
            1 => u64::from(b[0]),
            2 => u64::from(u16::from_le_bytes([b[0], b[1]])),
            4 => u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            _ => u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        })
    }

    #[inline]
    pub fn store(&mut self, addr: u64, size: u8, value: u64) -> Option<()> {
        let off = self.offset(addr, u64::from(size))?;
        let n = usize::from(size);
        self.bytes[off..off + n].copy_from_slice(&value.to_le_bytes()[..n]);
        Some(())
    }

    pub fn write_bytes(&mut self, addr: u64, data: &[u8]) -> Option<()> {
        let off = self.offset(addr, data.len() as u64)?;
        self.bytes[off..off + data.len()].copy_from_slice(data);
        Some(())
    }

    pub fn read_bytes(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let off = self.offset(addr, len as u64)?;
        Some(&self.bytes[off..off + len])
    }
}

/// The bytes of guest RAM: a heap buffer, or a shared memfd mapping.
#[derive(Debug)]
pub enum GuestMemory {
    Heap(Vec<u8>),
    Shared(SharedMemory),
}

impl GuestMemory {
    /// The memfd and its host mapping, when the memory is shared.
    pub fn shared(&self) -> Option<&SharedMemory> {
        match self {
            GuestMemory::Heap(_) => None,
            GuestMemory::Shared(m) => Some(m),
        }
    }
}

impl std::ops::Deref for GuestMemory {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            GuestMemory::Heap(v) => v,
            GuestMemory::Shared(m) => m.as_slice(),
        }
    }
}

impl std::ops::DerefMut for GuestMemory {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            GuestMemory::Heap(v) => v,
            GuestMemory::Shared(m) => m.as_mut_slice(),
        }
    }
}

/// Guest RAM in a memfd mapped MAP_SHARED: the vhost-user backend maps the
/// same file (SET_MEM_TABLE passes the fd) and moves data in and out of it
/// directly.
///
/// The backend writes these bytes concurrently with the harts (as DMA does
/// on hardware). The guest orders its accesses to buffers it handed to the
/// device by the virtqueue protocol (it reads a buffer only after the used
/// ring says the device is done), so the interpreter never observes a torn
/// buffer it relies on; what Rust sees is memory that another process may
/// change behind a `&mut [u8]`, as with any shared mapping.
#[derive(Debug)]
pub struct SharedMemory {
    fd: std::os::fd::OwnedFd,
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone (no aliasing Rust
// references exist outside the borrows it hands out), so it may move to and
// be used from another thread like a Vec<u8>.
unsafe impl Send for SharedMemory {}

impl SharedMemory {
    pub fn new(len_bytes: usize) -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        if len_bytes == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "empty guest memory",
            ));
        }
        // SAFETY: memfd_create with a NUL-terminated name and valid flags;
        // the result is checked before use.
        let raw = unsafe { libc::memfd_create(c"cowvisor-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let file = std::fs::File::from(fd);
        file.set_len(len_bytes as u64)?;
        let fd = std::os::fd::OwnedFd::from(file);
        // SAFETY: a new MAP_SHARED mapping of the whole memfd (just sized to
        // len_bytes); no existing memory is affected. The result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(Self {
            fd,
            ptr,
            len: len_bytes,
        })
    }

    /// The memfd, for SET_MEM_TABLE.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }

    /// Where the mapping starts in this process (the `userspace_addr` the
    /// vhost-user protocol expresses ring addresses in).
    pub fn host_addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is a live read/write mapping owned by self
        // (unmapped only in Drop), and the borrow of self bounds the slice.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    #[inline]
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice; &mut self makes this the only Rust
        // reference into the mapping.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in new(); no slice into
        // it outlives self.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// RAM alone, for the user-mode harness.
#[derive(Debug)]
pub struct RamBus {
    pub ram: Ram,
    pub resv: Reservations,
    pub code: CodePages,
}

impl RamBus {
    pub fn new(ram: Ram, harts: usize) -> Self {
        let code = CodePages::new(ram.base, ram.bytes.len());
        Self {
            ram,
            resv: Reservations::new(harts),
            code,
        }
    }
}

impl Bus for RamBus {
    fn load(&mut self, addr: u64, size: u8) -> Result<u64, BusError> {
        self.ram
            .load(addr, size)
            .ok_or(BusError::Unmapped { addr, size })
    }
    fn store(&mut self, addr: u64, size: u8, value: u64) -> Result<(), BusError> {
        self.resv.on_store(addr, size);
        self.code.on_store(addr, size);
        self.ram
            .store(addr, size, value)
            .ok_or(BusError::Unmapped { addr, size })
    }
    fn ram(&mut self) -> (u64, &mut [u8]) {
        (self.ram.base, &mut self.ram.bytes)
    }
    fn reservations(&mut self) -> &mut Reservations {
        &mut self.resv
    }
    fn code_generation(&self) -> u64 {
        self.code.generation
    }
    fn mark_code_page(&mut self, addr: u64) {
        self.code.mark(addr);
    }
}
