//! virtio-blk requests parsed out of untrusted descriptor chains.
//!
//! Every descriptor chain is guest input. [`parse`] turns the descriptors of
//! one chain into a typed [`Request`] before anything is executed, checking
//! directions, lengths (with checked arithmetic), alignment, the device's
//! capacity and that every buffer lies inside guest memory. A chain that
//! fails gets one [`RequestError`] variant, which maps to the virtio status
//! the guest sees ([`RequestError::status`]) and to a counter name
//! ([`RequestError::code`]).
//!
//! Layout assumed (what Linux, QEMU and every driver we know send): the first
//! descriptor is the 16-byte header (device-readable), the last is the 1-byte
//! status (device-writable), and the ones between carry the data.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

/// Bytes in a virtio-blk sector (the unit of `sector` in the header).
pub const SECTOR_BYTES: u64 = 512;

/// Request types (virtio 1.2, 5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Status bytes.
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Length of the device ID returned by GET_ID.
pub const VIRTIO_BLK_ID_BYTES: usize = 20;

/// Length of the request header: type u32, reserved u32, sector u64.
pub const HEADER_BYTES: u32 = 16;

/// Length of one discard / write-zeroes segment: sector u64, sectors u32,
/// flags u32.
pub const SEGMENT_BYTES: u32 = 16;

/// The unmap flag of a discard / write-zeroes segment.
pub const SEGMENT_F_UNMAP: u32 = 1;

/// What the device accepts; the same numbers are advertised in config space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Device size in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Writes, discards and write-zeroes are refused.
    pub read_only: bool,
    /// Most data descriptors in one request.
    pub seg_max: u32,
    /// Largest data descriptor.
    pub size_max: u32,
    /// Largest data request in bytes (the engine's per-request bound).
    pub max_io_bytes: u64,
    /// Most segments in one discard / write-zeroes request.
    pub max_discard_seg: u32,
    /// Largest segment of a discard / write-zeroes request, in sectors.
    pub max_discard_sectors: u32,
}

impl Limits {
    /// Most descriptors a valid chain can have: header, data, status.
    pub fn max_descriptors(&self) -> usize {
        (self.seg_max as usize).saturating_add(2)
    }
}

/// A guest buffer: where and how long. Already checked to lie in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub addr: GuestAddress,
    pub len: u32,
}

/// One discard / write-zeroes range, checked against the capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub sector: u64,
    pub sectors: u32,
    pub unmap: bool,
}

impl Range {
    pub fn offset_bytes(&self) -> u64 {
        // Cannot overflow: checked against the capacity when parsed.
        self.sector * SECTOR_BYTES
    }
    pub fn len_bytes(&self) -> u64 {
        u64::from(self.sectors) * SECTOR_BYTES
    }
}

/// A request that passed every check and can be executed as is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Read `len` bytes at `sector` into `data` (device-writable buffers).
    Read {
        sector: u64,
        len: u32,
        data: Vec<Buffer>,
    },
    /// Write `len` bytes from `data` (device-readable buffers) at `sector`.
    Write {
        sector: u64,
        len: u32,
        data: Vec<Buffer>,
    },
    Flush,
    /// Write the device ID (up to 20 bytes) into `data`.
    GetId {
        data: Buffer,
    },
    Discard {
        ranges: Vec<Range>,
    },
    WriteZeroes {
        ranges: Vec<Range>,
    },
}

impl Request {
    /// The byte offset of a read or write.
    pub fn offset_bytes(sector: u64) -> u64 {
        // Cannot overflow: checked against the capacity when parsed.
        sector * SECTOR_BYTES
    }

    /// Short name, for logs and stats.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Read { .. } => "read",
            Request::Write { .. } => "write",
            Request::Flush => "flush",
            Request::GetId { .. } => "get_id",
            Request::Discard { .. } => "discard",
            Request::WriteZeroes { .. } => "write_zeroes",
        }
    }
}

/// A parsed request and where its status byte goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub request: Request,
    pub status: GuestAddress,
}

/// Why a chain was refused. One variant per failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("empty descriptor chain")]
    EmptyChain,
    #[error("descriptor chain does not end (loop, more than {max} descriptors, or an unreadable next descriptor)")]
    ChainNotTerminated { max: usize },
    #[error("descriptor chain of {count} descriptors is too short")]
    ChainTooShort { count: usize },
    #[error("status descriptor is device-readable")]
    StatusNotWritable,
    #[error("status descriptor is empty")]
    StatusEmpty,
    #[error("status descriptor at {addr:#x} is outside guest memory")]
    StatusOutOfBounds { addr: u64 },
    #[error("header descriptor is device-writable")]
    HeaderWritable,
    #[error("header descriptor of {len} bytes is shorter than 16")]
    HeaderTooShort { len: u32 },
    #[error("header at {addr:#x} is outside guest memory")]
    HeaderOutOfBounds { addr: u64 },
    #[error("request type {0} is not supported")]
    UnsupportedType(u32),
    #[error("data descriptor {index} has the wrong direction for a {kind}")]
    WrongDirection { index: usize, kind: &'static str },
    #[error("data descriptor {index} at {addr:#x}+{len} is outside guest memory")]
    DataOutOfBounds { index: usize, addr: u64, len: u32 },
    #[error("data descriptor {index} of {len} bytes exceeds size_max {max}")]
    SegmentTooLarge { index: usize, len: u32, max: u32 },
    #[error("{count} data descriptors exceed seg_max {max}")]
    TooManySegments { count: usize, max: u32 },
    #[error("request carries no data")]
    NoData,
    #[error("data lengths overflow")]
    LengthOverflow,
    #[error("data length {len} is not a multiple of 512")]
    Unaligned { len: u64 },
    #[error("data length {len} exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    #[error("sectors {sector}+{sectors} are past the end of the device ({capacity} sectors)")]
    OutOfRange {
        sector: u64,
        sectors: u64,
        capacity: u64,
    },
    #[error("the device is read-only")]
    ReadOnly,
    #[error("discard/write-zeroes data of {len} bytes is not a whole number of 16-byte segments")]
    BadSegmentList { len: u64 },
    #[error("{count} discard/write-zeroes segments exceed the limit of {max}")]
    TooManyRanges { count: u64, max: u32 },
    #[error("discard/write-zeroes segment of {sectors} sectors (limit {max})")]
    BadRangeLength { sectors: u32, max: u32 },
    #[error("discard/write-zeroes segment flags {flags:#x} are not supported")]
    UnsupportedFlags { flags: u32 },
    #[error("guest memory read failed at {addr:#x}")]
    MemoryRead { addr: u64 },
}

impl RequestError {
    /// The status byte the guest gets.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::UnsupportedType(_) | RequestError::UnsupportedFlags { .. } => {
                VIRTIO_BLK_S_UNSUPP
            }
            _ => VIRTIO_BLK_S_IOERR,
        }
    }

    /// A stable name, for stats counters.
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::EmptyChain => "empty_chain",
            RequestError::ChainNotTerminated { .. } => "chain_not_terminated",
            RequestError::ChainTooShort { .. } => "chain_too_short",
            RequestError::StatusNotWritable => "status_not_writable",
            RequestError::StatusEmpty => "status_empty",
            RequestError::StatusOutOfBounds { .. } => "status_out_of_bounds",
            RequestError::HeaderWritable => "header_writable",
            RequestError::HeaderTooShort { .. } => "header_too_short",
            RequestError::HeaderOutOfBounds { .. } => "header_out_of_bounds",
            RequestError::UnsupportedType(_) => "unsupported_type",
            RequestError::WrongDirection { .. } => "wrong_direction",
            RequestError::DataOutOfBounds { .. } => "data_out_of_bounds",
            RequestError::SegmentTooLarge { .. } => "segment_too_large",
            RequestError::TooManySegments { .. } => "too_many_segments",
            RequestError::NoData => "no_data",
            RequestError::LengthOverflow => "length_overflow",
            RequestError::Unaligned { .. } => "unaligned",
            RequestError::TooLarge { .. } => "too_large",
            RequestError::OutOfRange { .. } => "out_of_range",
            RequestError::ReadOnly => "read_only",
            RequestError::BadSegmentList { .. } => "bad_segment_list",
            RequestError::TooManyRanges { .. } => "too_many_ranges",
            RequestError::BadRangeLength { .. } => "bad_range_length",
            RequestError::UnsupportedFlags { .. } => "unsupported_flags",
            RequestError::MemoryRead { .. } => "memory_read",
        }
    }
}

/// A refused chain: the error, and where to put the status byte if the
/// chain had a usable status descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub error: RequestError,
    pub status: Option<GuestAddress>,
}

/// Is `[addr, addr + len)` inside guest memory? Zero-length buffers are
/// refused too (they address nothing and usually mean a broken driver).
fn in_memory<M: GuestMemory + ?Sized>(
    mem: &M,
    addr: GuestAddress,
    len: u32,
    access: Permissions,
) -> bool {
    len > 0 && mem.check_range(addr, len as usize, access)
}

/// Parses the descriptors of one chain, as yielded by
/// `virtio_queue::DescriptorChain` (which follows indirect tables and stops
/// a looping chain after a queue's worth of descriptors). `descs` must hold
/// at most `limits.max_descriptors() + 1` descriptors: one more than a valid
/// chain can have, so that an overlong chain is seen as one.
pub fn parse<M: GuestMemory + ?Sized>(
    descs: &[Descriptor],
    mem: &M,
    limits: &Limits,
) -> Result<Parsed, Rejected> {
    let reject = |error: RequestError, status: Option<GuestAddress>| Rejected { error, status };

    // The status descriptor first, so that every later failure can be
    // reported to the guest.
    let Some(last) = descs.last() else {
        return Err(reject(RequestError::EmptyChain, None));
    };
    if last.has_next() || descs.len() > limits.max_descriptors() {
        return Err(reject(
            RequestError::ChainNotTerminated {
                max: limits.max_descriptors(),
            },
            None,
        ));
    }
    if !last.is_write_only() {
        return Err(reject(RequestError::StatusNotWritable, None));
    }
    if last.len() == 0 {
        return Err(reject(RequestError::StatusEmpty, None));
    }
    let status_addr = last.addr();
    if !in_memory(mem, status_addr, 1, Permissions::Write) {
        return Err(reject(
            RequestError::StatusOutOfBounds {
                addr: status_addr.0,
            },
            None,
        ));
    }
    let status = Some(status_addr);
    let fail = |error: RequestError| reject(error, status);

    if descs.len() < 2 {
        return Err(fail(RequestError::ChainTooShort { count: descs.len() }));
    }
    let header = &descs[0];
    if header.is_write_only() {
        return Err(fail(RequestError::HeaderWritable));
    }
    if header.len() < HEADER_BYTES {
        return Err(fail(RequestError::HeaderTooShort { len: header.len() }));
    }
    let mut raw = [0u8; HEADER_BYTES as usize];
    if !in_memory(mem, header.addr(), HEADER_BYTES, Permissions::Read)
        || mem.read_slice(&mut raw, header.addr()).is_err()
    {
        return Err(fail(RequestError::HeaderOutOfBounds {
            addr: header.addr().0,
        }));
    }
    let request_type = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let sector = u64::from_le_bytes([
        raw[8], raw[9], raw[10], raw[11], raw[12], raw[13], raw[14], raw[15],
    ]);
    let data_descs = &descs[1..descs.len() - 1];

    let request = match request_type {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let write = request_type == VIRTIO_BLK_T_OUT;
            if write && limits.read_only {
                return Err(fail(RequestError::ReadOnly));
            }
            let kind = if write { "write" } else { "read" };
            let (data, len) = data_buffers(data_descs, mem, limits, !write, kind).map_err(fail)?;
            check_sectors(sector, len / SECTOR_BYTES, limits).map_err(fail)?;
            // `len` is at most max_io_bytes, far below u32::MAX.
            let len = u32::try_from(len).map_err(|_| fail(RequestError::LengthOverflow))?;
            if write {
                Request::Write { sector, len, data }
            } else {
                Request::Read { sector, len, data }
            }
        }
        VIRTIO_BLK_T_FLUSH => Request::Flush,
        VIRTIO_BLK_T_GET_ID => {
            let Some(first) = data_descs.first() else {
                return Err(fail(RequestError::NoData));
            };
            if !first.is_write_only() {
                return Err(fail(RequestError::WrongDirection {
                    index: 1,
                    kind: "get_id",
                }));
            }
            let len = first.len().min(VIRTIO_BLK_ID_BYTES as u32);
            if !in_memory(mem, first.addr(), len, Permissions::Write) {
                return Err(fail(RequestError::DataOutOfBounds {
                    index: 1,
                    addr: first.addr().0,
                    len: first.len(),
                }));
            }
            Request::GetId {
                data: Buffer {
                    addr: first.addr(),
                    len,
                },
            }
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let zeroes = request_type == VIRTIO_BLK_T_WRITE_ZEROES;
            if limits.read_only {
                return Err(fail(RequestError::ReadOnly));
            }
            let kind = if zeroes { "write_zeroes" } else { "discard" };
            let ranges = parse_ranges(data_descs, mem, limits, zeroes, kind).map_err(fail)?;
            if zeroes {
                Request::WriteZeroes { ranges }
            } else {
                Request::Discard { ranges }
            }
        }
        other => return Err(fail(RequestError::UnsupportedType(other))),
    };
    Ok(Parsed {
        request,
        status: status_addr,
    })
}

/// Checks the data descriptors of a read or write and sums their lengths.
fn data_buffers<M: GuestMemory + ?Sized>(
    descs: &[Descriptor],
    mem: &M,
    limits: &Limits,
    device_writes: bool,
    kind: &'static str,
) -> Result<(Vec<Buffer>, u64), RequestError> {
    if descs.is_empty() {
        return Err(RequestError::NoData);
    }
    if descs.len() > limits.seg_max as usize {
        return Err(RequestError::TooManySegments {
            count: descs.len(),
            max: limits.seg_max,
        });
    }
    let access = if device_writes {
        Permissions::Write
    } else {
        Permissions::Read
    };
    let mut total: u64 = 0;
    let mut out = Vec::with_capacity(descs.len());
    for (i, d) in descs.iter().enumerate() {
        let index = i + 1;
        if d.is_write_only() != device_writes {
            return Err(RequestError::WrongDirection { index, kind });
        }
        if d.len() > limits.size_max {
            return Err(RequestError::SegmentTooLarge {
                index,
                len: d.len(),
                max: limits.size_max,
            });
        }
        if !in_memory(mem, d.addr(), d.len(), access) {
            return Err(RequestError::DataOutOfBounds {
                index,
                addr: d.addr().0,
                len: d.len(),
            });
        }
        total = total
            .checked_add(u64::from(d.len()))
            .ok_or(RequestError::LengthOverflow)?;
        out.push(Buffer {
            addr: d.addr(),
            len: d.len(),
        });
    }
    if total % SECTOR_BYTES != 0 {
        return Err(RequestError::Unaligned { len: total });
    }
    if total > limits.max_io_bytes {
        return Err(RequestError::TooLarge {
            len: total,
            max: limits.max_io_bytes,
        });
    }
    Ok((out, total))
}

/// `[sector, sector + sectors)` must lie inside the device.
fn check_sectors(sector: u64, sectors: u64, limits: &Limits) -> Result<(), RequestError> {
    match sector.checked_add(sectors) {
        Some(end) if end <= limits.capacity_sectors => Ok(()),
        _ => Err(RequestError::OutOfRange {
            sector,
            sectors,
            capacity: limits.capacity_sectors,
        }),
    }
}

/// Reads and checks the segment list of a discard / write-zeroes request.
fn parse_ranges<M: GuestMemory + ?Sized>(
    descs: &[Descriptor],
    mem: &M,
    limits: &Limits,
    zeroes: bool,
    kind: &'static str,
) -> Result<Vec<Range>, RequestError> {
    if descs.is_empty() {
        return Err(RequestError::NoData);
    }
    let mut total: u64 = 0;
    for (i, d) in descs.iter().enumerate() {
        if d.is_write_only() {
            return Err(RequestError::WrongDirection { index: i + 1, kind });
        }
        total = total
            .checked_add(u64::from(d.len()))
            .ok_or(RequestError::LengthOverflow)?;
    }
    if total == 0 || total % u64::from(SEGMENT_BYTES) != 0 {
        return Err(RequestError::BadSegmentList { len: total });
    }
    let count = total / u64::from(SEGMENT_BYTES);
    if count > u64::from(limits.max_discard_seg) {
        return Err(RequestError::TooManyRanges {
            count,
            max: limits.max_discard_seg,
        });
    }
    // Bounded by max_discard_seg * 16 bytes.
    let mut bytes = vec![0u8; total as usize];
    let mut at = 0usize;
    for (i, d) in descs.iter().enumerate() {
        let len = d.len() as usize;
        if len == 0 {
            continue;
        }
        if !in_memory(mem, d.addr(), d.len(), Permissions::Read) {
            return Err(RequestError::DataOutOfBounds {
                index: i + 1,
                addr: d.addr().0,
                len: d.len(),
            });
        }
        let end = at.checked_add(len).ok_or(RequestError::LengthOverflow)?;
        let dst = bytes.get_mut(at..end).ok_or(RequestError::LengthOverflow)?;
        mem.read_slice(dst, d.addr())
            .map_err(|_| RequestError::MemoryRead { addr: d.addr().0 })?;
        at = end;
    }
    let mut ranges = Vec::with_capacity(count as usize);
    for seg in bytes.chunks_exact(SEGMENT_BYTES as usize) {
        let mut s = [0u8; 8];
        s.copy_from_slice(&seg[0..8]);
        let sector = u64::from_le_bytes(s);
        let mut n = [0u8; 4];
        n.copy_from_slice(&seg[8..12]);
        let sectors = u32::from_le_bytes(n);
        n.copy_from_slice(&seg[12..16]);
        let flags = u32::from_le_bytes(n);
        let allowed = if zeroes { SEGMENT_F_UNMAP } else { 0 };
        if flags & !allowed != 0 {
            return Err(RequestError::UnsupportedFlags { flags });
        }
        if sectors == 0 || sectors > limits.max_discard_sectors {
            return Err(RequestError::BadRangeLength {
                sectors,
                max: limits.max_discard_sectors,
            });
        }
        check_sectors(sector, u64::from(sectors), limits)?;
        ranges.push(Range {
            sector,
            sectors,
            unmap: flags & SEGMENT_F_UNMAP != 0,
        });
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};
    use vm_memory::GuestMemoryMmap;

    const MEM: u64 = 1 << 20;
    const HDR: u64 = 0x1000;
    const DATA: u64 = 0x2000;
    const STATUS: u64 = 0x9000;
    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const W: u16 = VRING_DESC_F_WRITE as u16;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
    }

    fn limits() -> Limits {
        Limits {
            capacity_sectors: 2048, // 1 MiB
            read_only: false,
            seg_max: 4,
            size_max: 64 << 10,
            max_io_bytes: 128 << 10,
            max_discard_seg: 2,
            max_discard_sectors: 1024,
        }
    }

    fn header(mem: &GuestMemoryMmap, t: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&t.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    fn d(addr: u64, len: u32, flags: u16) -> Descriptor {
        Descriptor::new(addr, len, flags, 0)
    }

    /// header, data (device-writable when `w`), status.
    fn chain(data: &[(u64, u32, bool)]) -> Vec<Descriptor> {
        let mut v = vec![d(HDR, 16, NEXT)];
        for &(a, l, w) in data {
            v.push(d(a, l, NEXT | if w { W } else { 0 }));
        }
        v.push(d(STATUS, 1, W));
        v
    }

    fn err(descs: &[Descriptor], mem: &GuestMemoryMmap, l: &Limits) -> Rejected {
        parse(descs, mem, l).expect_err("must be refused")
    }

    #[test]
    fn valid_read_write_flush_get_id() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 8);
        let p = parse(
            &chain(&[(DATA, 4096, true), (DATA + 4096, 512, true)]),
            &m,
            &limits(),
        )
        .unwrap();
        assert_eq!(p.status, GuestAddress(STATUS));
        assert!(
            matches!(p.request, Request::Read { sector: 8, len: 4608, ref data } if data.len() == 2)
        );
        header(&m, VIRTIO_BLK_T_OUT, 0);
        let p = parse(&chain(&[(DATA, 4096, false)]), &m, &limits()).unwrap();
        assert!(matches!(
            p.request,
            Request::Write {
                sector: 0,
                len: 4096,
                ..
            }
        ));
        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(
            parse(&chain(&[]), &m, &limits()).unwrap().request,
            Request::Flush
        );
        header(&m, VIRTIO_BLK_T_GET_ID, 0);
        let p = parse(&chain(&[(DATA, 20, true)]), &m, &limits()).unwrap();
        assert!(matches!(p.request, Request::GetId { data } if data.len == 20));
    }

    #[test]
    fn sectors_past_the_end() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 2047);
        let r = err(&chain(&[(DATA, 1024, true)]), &m, &limits());
        assert!(matches!(r.error, RequestError::OutOfRange { .. }));
        assert_eq!(r.error.status(), VIRTIO_BLK_S_IOERR);
        assert_eq!(r.status, Some(GuestAddress(STATUS)));
        // A sector number whose end overflows u64.
        header(&m, VIRTIO_BLK_T_OUT, u64::MAX);
        let r = err(&chain(&[(DATA, 512, false)]), &m, &limits());
        assert!(matches!(r.error, RequestError::OutOfRange { .. }));
    }

    #[test]
    fn wrong_directions() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 0);
        let r = err(&chain(&[(DATA, 512, false)]), &m, &limits());
        assert_eq!(
            r.error,
            RequestError::WrongDirection {
                index: 1,
                kind: "read"
            }
        );
        header(&m, VIRTIO_BLK_T_OUT, 0);
        let r = err(&chain(&[(DATA, 512, true)]), &m, &limits());
        assert_eq!(
            r.error,
            RequestError::WrongDirection {
                index: 1,
                kind: "write"
            }
        );
        // Device-writable header.
        let mut c = chain(&[(DATA, 512, false)]);
        c[0] = d(HDR, 16, NEXT | W);
        assert_eq!(err(&c, &m, &limits()).error, RequestError::HeaderWritable);
        // Device-readable status: nowhere to report, no status address.
        let mut c = chain(&[(DATA, 512, false)]);
        let last = c.len() - 1;
        c[last] = d(STATUS, 1, 0);
        let r = err(&c, &m, &limits());
        assert_eq!(r.error, RequestError::StatusNotWritable);
        assert_eq!(r.status, None);
        header(&m, VIRTIO_BLK_T_GET_ID, 0);
        let r = err(&chain(&[(DATA, 20, false)]), &m, &limits());
        assert!(matches!(r.error, RequestError::WrongDirection { .. }));
    }

    #[test]
    fn short_and_unterminated_chains() {
        let m = mem();
        assert_eq!(err(&[], &m, &limits()).error, RequestError::EmptyChain);
        let r = err(&[d(STATUS, 1, W)], &m, &limits());
        assert_eq!(r.error, RequestError::ChainTooShort { count: 1 });
        header(&m, VIRTIO_BLK_T_IN, 0);
        assert_eq!(err(&chain(&[]), &m, &limits()).error, RequestError::NoData);
        // The iterator stopped while the last descriptor still had NEXT.
        let r = err(&[d(HDR, 16, NEXT), d(DATA, 512, NEXT | W)], &m, &limits());
        assert!(matches!(r.error, RequestError::ChainNotTerminated { .. }));
        // More descriptors than seg_max + 2.
        let many: Vec<_> = (0..6).map(|i| (DATA + i * 512, 512, true)).collect();
        let r = err(&chain(&many), &m, &limits());
        assert!(matches!(r.error, RequestError::ChainNotTerminated { .. }));
        // Short header, empty status.
        let mut c = chain(&[(DATA, 512, true)]);
        c[0] = d(HDR, 15, NEXT);
        assert_eq!(
            err(&c, &m, &limits()).error,
            RequestError::HeaderTooShort { len: 15 }
        );
        let mut c = chain(&[(DATA, 512, true)]);
        c[2] = d(STATUS, 0, W);
        assert_eq!(err(&c, &m, &limits()).error, RequestError::StatusEmpty);
    }

    #[test]
    fn looping_chain_from_a_real_queue() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 0);
        let vq = MockSplitQueue::new(&m, 16);
        // 0 -> 1 -> 0 -> ... never ends.
        let descs = [
            RawDescriptor::from(Descriptor::new(HDR, 16, NEXT, 1)),
            RawDescriptor::from(Descriptor::new(DATA, 512, NEXT | W, 0)),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.iter(&m).unwrap().next().unwrap();
        let l = limits();
        let collected: Vec<Descriptor> = chain.take(l.max_descriptors() + 1).collect();
        let r = err(&collected, &m, &l);
        assert!(matches!(r.error, RequestError::ChainNotTerminated { .. }));
        assert_eq!(r.status, None);
    }

    #[test]
    fn indirect_chain_from_a_real_queue() {
        // The mock places indirect tables at 768 MiB.
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 30)]).unwrap();
        header(&m, VIRTIO_BLK_T_OUT, 4);
        let mut vq = MockSplitQueue::new(&m, 16);
        vq.add_indirect_chain(3).unwrap();
        // Fill the indirect table the mock allocated with a real request.
        let q: Queue = vq.create_queue().unwrap();
        let head = vq.desc_table().load(0).unwrap();
        let table = Descriptor::from(head).addr();
        let entries = [
            Descriptor::new(HDR, 16, NEXT, 1),
            Descriptor::new(DATA, 1024, NEXT, 2),
            Descriptor::new(STATUS, 1, W, 0),
        ];
        for (i, e) in entries.iter().enumerate() {
            m.write_obj(
                RawDescriptor::from(*e),
                GuestAddress(table.0 + 16 * i as u64),
            )
            .unwrap();
        }
        let mut q = q;
        let chain = q.iter(&m).unwrap().next().unwrap();
        let collected: Vec<Descriptor> = chain.take(8).collect();
        let p = parse(&collected, &m, &limits()).unwrap();
        assert!(matches!(
            p.request,
            Request::Write {
                sector: 4,
                len: 1024,
                ..
            }
        ));
    }

    #[test]
    fn lengths_unaligned_too_large_and_overflowing() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 0);
        let r = err(&chain(&[(DATA, 513, true)]), &m, &limits());
        assert_eq!(r.error, RequestError::Unaligned { len: 513 });
        let r = err(&chain(&[(DATA, 128 << 10, true)]), &m, &limits());
        assert!(matches!(r.error, RequestError::SegmentTooLarge { .. }));
        let mut l = limits();
        l.size_max = u32::MAX;
        l.capacity_sectors = u64::MAX;
        let r = err(&chain(&[(DATA, 256 << 10, true)]), &m, &l);
        assert!(matches!(r.error, RequestError::TooLarge { .. }));
        // Huge lengths: never summed into an overflow, refused as out of memory.
        let r = err(
            &chain(&[(DATA, u32::MAX, true), (DATA, u32::MAX, true)]),
            &m,
            &l,
        );
        assert!(matches!(r.error, RequestError::DataOutOfBounds { .. }));
        // Too many data descriptors for seg_max (when the chain itself is allowed).
        let mut l = limits();
        l.seg_max = 1;
        let r = err(&chain(&[(DATA, 512, true), (DATA, 512, true)]), &m, &l);
        assert!(matches!(r.error, RequestError::ChainNotTerminated { .. }));
    }

    #[test]
    fn addresses_outside_guest_memory() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 0);
        let r = err(&chain(&[(MEM - 256, 512, true)]), &m, &limits());
        assert!(matches!(
            r.error,
            RequestError::DataOutOfBounds { index: 1, .. }
        ));
        let r = err(&chain(&[(u64::MAX - 100, 512, true)]), &m, &limits());
        assert!(matches!(r.error, RequestError::DataOutOfBounds { .. }));
        let mut c = chain(&[(DATA, 512, true)]);
        c[0] = d(MEM + 4096, 16, NEXT);
        assert!(matches!(
            err(&c, &m, &limits()).error,
            RequestError::HeaderOutOfBounds { .. }
        ));
        let mut c = chain(&[(DATA, 512, true)]);
        c[2] = d(u64::MAX, 1, W);
        let r = err(&c, &m, &limits());
        assert!(matches!(r.error, RequestError::StatusOutOfBounds { .. }));
        assert_eq!(r.status, None);
        // Zero-length data descriptor.
        let r = err(&chain(&[(DATA, 0, true)]), &m, &limits());
        assert!(matches!(r.error, RequestError::DataOutOfBounds { .. }));
    }

    #[test]
    fn unsupported_type_and_read_only() {
        let m = mem();
        header(&m, 0x1234, 0);
        let r = err(&chain(&[]), &m, &limits());
        assert_eq!(r.error, RequestError::UnsupportedType(0x1234));
        assert_eq!(r.error.status(), VIRTIO_BLK_S_UNSUPP);
        let mut l = limits();
        l.read_only = true;
        for t in [
            VIRTIO_BLK_T_OUT,
            VIRTIO_BLK_T_DISCARD,
            VIRTIO_BLK_T_WRITE_ZEROES,
        ] {
            header(&m, t, 0);
            let r = err(&chain(&[(DATA, 512, false)]), &m, &l);
            assert_eq!(r.error, RequestError::ReadOnly);
            assert_eq!(r.error.status(), VIRTIO_BLK_S_IOERR);
        }
        header(&m, VIRTIO_BLK_T_IN, 0);
        assert!(parse(&chain(&[(DATA, 512, true)]), &m, &l).is_ok());
    }

    fn segment(m: &GuestMemoryMmap, at: u64, sector: u64, sectors: u32, flags: u32) {
        let mut s = [0u8; 16];
        s[0..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&sectors.to_le_bytes());
        s[12..16].copy_from_slice(&flags.to_le_bytes());
        m.write_slice(&s, GuestAddress(at)).unwrap();
    }

    #[test]
    fn discard_and_write_zeroes_segments() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_DISCARD, 0);
        segment(&m, DATA, 8, 16, 0);
        segment(&m, DATA + 16, 100, 8, 0);
        let p = parse(&chain(&[(DATA, 32, false)]), &m, &limits()).unwrap();
        assert!(matches!(p.request, Request::Discard { ref ranges } if ranges.len() == 2));
        // Discard with unmap: UNSUPP. Write-zeroes with unmap: fine.
        segment(&m, DATA, 8, 16, SEGMENT_F_UNMAP);
        let r = err(&chain(&[(DATA, 16, false)]), &m, &limits());
        assert_eq!(r.error.status(), VIRTIO_BLK_S_UNSUPP);
        header(&m, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        let p = parse(&chain(&[(DATA, 16, false)]), &m, &limits()).unwrap();
        assert!(matches!(p.request, Request::WriteZeroes { ref ranges } if ranges[0].unmap));
        // Reserved flags.
        segment(&m, DATA, 8, 16, 0x8000_0000);
        let r = err(&chain(&[(DATA, 16, false)]), &m, &limits());
        assert!(matches!(r.error, RequestError::UnsupportedFlags { .. }));
        // Past the end, zero-length, too long, too many, ragged, wrong direction.
        segment(&m, DATA, 2040, 16, 0);
        let r = err(&chain(&[(DATA, 16, false)]), &m, &limits());
        assert!(matches!(r.error, RequestError::OutOfRange { .. }));
        segment(&m, DATA, 0, 0, 0);
        let r = err(&chain(&[(DATA, 16, false)]), &m, &limits());
        assert!(matches!(r.error, RequestError::BadRangeLength { .. }));
        segment(&m, DATA, 0, 2000, 0);
        let r = err(&chain(&[(DATA, 16, false)]), &m, &limits());
        assert!(matches!(r.error, RequestError::BadRangeLength { .. }));
        let r = err(&chain(&[(DATA, 48, false)]), &m, &limits());
        assert!(matches!(r.error, RequestError::TooManyRanges { .. }));
        let r = err(&chain(&[(DATA, 17, false)]), &m, &limits());
        assert!(matches!(r.error, RequestError::BadSegmentList { .. }));
        let r = err(&chain(&[(DATA, 16, true)]), &m, &limits());
        assert!(matches!(r.error, RequestError::WrongDirection { .. }));
        let r = err(&chain(&[(u32::MAX as u64, u32::MAX, false)]), &m, &limits());
        assert!(matches!(
            r.error,
            RequestError::BadSegmentList { .. } | RequestError::TooManyRanges { .. }
        ));
        let r = err(&chain(&[(MEM - 8, 16, false)]), &m, &limits());
        assert!(matches!(r.error, RequestError::DataOutOfBounds { .. }));
    }

    #[test]
    fn every_error_has_a_code_and_a_status() {
        let e = RequestError::MemoryRead { addr: 1 };
        assert_eq!(e.code(), "memory_read");
        assert_eq!(e.status(), VIRTIO_BLK_S_IOERR);
    }
}
