//! Log record encoding: the unit every volume's log is made of.
//!
//! A record is a fixed 56-byte header followed by `stored_len` payload bytes.
//! All integers are little-endian.
//!
//! | offset | size | field                                                   |
//! |-------:|-----:|---------------------------------------------------------|
//! | 0      | 4    | magic `0x3152_5343` (`"CSR1"` as bytes)                 |
//! | 4      | 4    | crc32c of bytes 8..56                                   |
//! | 8      | 1    | kind (see [`RecordKind`])                               |
//! | 9      | 1    | flags (bit 0: payload is lz4 block-compressed;          |
//! |        |      | bit 1: more records of the same write follow;           |
//! |        |      | bit 2: raw data followed by a block checksum table)     |
//! | 10     | 2    | reserved, zero                                          |
//! | 12     | 4    | stored_len: payload bytes following the header          |
//! | 16     | 8    | seq: the volume's log sequence number, +1 per record    |
//! | 24     | 8    | volume id                                               |
//! | 32     | 8    | lba: first 512-byte sector the record covers            |
//! | 40     | 4    | len_sectors: sectors covered                            |
//! | 44     | 4    | crc32c of the stored payload                            |
//! | 48     | 8    | aux: snapshot id (Snapshot) or new size (Resize)        |
//!
//! The header checksum covers the payload checksum, so every byte of a record
//! is covered by exactly one crc32c that a reader checks.
//!
//! Pad records (kind 7) fill a reused segment file up to the next
//! [`PAGE_BYTES`] boundary after each batch of appends, so that an append
//! never ends inside a page whose old contents the kernel would first have
//! to read from disk (see `pool.rs`). Their payload is zeroes; replay only
//! checks them and moves on.
//!
//! Block checksums (flag bit 2, uncompressed Write records only): the
//! payload is the data followed by one little-endian crc32c per
//! [`CHECK_BLOCK_BYTES`] block of it (the last block may be shorter). A read
//! of a few blocks of a 64 KiB record then fetches and checks only those
//! blocks and their table entries instead of the whole record: a 4 KiB
//! random read moved 16x its size from disk and checksummed all of it
//! without them. The payload checksum still covers data and table, so
//! recovery, the cleaner and `verify` check records whole as before.
//!
//! Aligned data (flag bit 3, uncompressed Write records only): the record
//! starts with a head block of [`ALIGNED_HEAD_BYTES`] — the header, the
//! block checksum table (when bit 2 is set too) and zeroes — and its data
//! follows on the next 512-byte boundary of the record. The payload is
//! then the table, the zeroes and the data, in that order, and its crc32c
//! covers all three. A batch of such records that starts on a sector of the
//! segment keeps every record's data on a sector of the segment, so that
//! it can be written with `O_DIRECT` from wherever the data already is
//! (the zero-copy write path this layout is for, docs/architecture.md).

use crate::limits::{MAX_NAME_BYTES, MAX_RECORD_DATA_BYTES, SECTOR_BYTES};

pub const RECORD_MAGIC: u32 = 0x3152_5343;
pub const RECORD_HEADER_BYTES: usize = 56;

/// Payload flag: the payload is an lz4 block of `len_sectors * 512` bytes.
pub const FLAG_COMPRESSED: u8 = 1;
/// The write this record belongs to continues in the next record. A write
/// larger than one record is replayed only if its last record (without this
/// flag) is intact: writes are atomic on recovery, not torn.
pub const FLAG_CONTINUED: u8 = 2;
/// Payload flag: uncompressed data followed by a crc32c per
/// [`CHECK_BLOCK_BYTES`] block of it (see the module docs).
pub const FLAG_BLOCK_CRCS: u8 = 4;
/// Payload flag: the data starts [`ALIGNED_HEAD_BYTES`] into the record,
/// after the header, the block checksum table (if any) and zeroes (see the
/// module docs).
pub const FLAG_ALIGNED_DATA: u8 = 8;
/// Every flag a record may carry.
pub const KNOWN_FLAGS: u8 = FLAG_COMPRESSED | FLAG_CONTINUED | FLAG_BLOCK_CRCS | FLAG_ALIGNED_DATA;
/// The flags that say how a Write record's payload is laid out (what an
/// extent keeps of its record's flags).
pub const LAYOUT_FLAGS: u8 = FLAG_COMPRESSED | FLAG_BLOCK_CRCS | FLAG_ALIGNED_DATA;

/// Bytes from the start of an aligned-data record to its data: one sector,
/// which holds the header and the largest block checksum table.
pub const ALIGNED_HEAD_BYTES: usize = SECTOR_BYTES as usize;
const _: () = assert!(
    RECORD_HEADER_BYTES + block_crc_table_bytes(MAX_RECORD_DATA_BYTES) <= ALIGNED_HEAD_BYTES
);
/// The most a Write record of raw data occupies beyond its data, in either
/// layout (the aligned one's head sector).
pub const MAX_RECORD_OVERHEAD_BYTES: usize = ALIGNED_HEAD_BYTES;

/// Granularity of block checksums: the guest's usual block size.
pub const CHECK_BLOCK_BYTES: usize = 4096;

/// The page size appends in reused segment files are aligned to (the
/// kernel's on every platform we run on; a larger page only costs reads).
pub const PAGE_BYTES: usize = 4096;

/// Bytes from `offset` to the next page boundary (0 on one).
pub fn bytes_to_page_end(offset: u64) -> usize {
    (PAGE_BYTES - (offset % PAGE_BYTES as u64) as usize) % PAGE_BYTES
}

/// Bytes of the Pad record that takes a log at `offset` to the next page
/// boundary: 0 when it is on one; else the gap, plus a page when the gap is
/// too small to hold a record header. Always under `2 * PAGE_BYTES`.
pub fn pad_bytes_at(offset: u64) -> usize {
    match bytes_to_page_end(offset) {
        0 => 0,
        g if g < RECORD_HEADER_BYTES => g + PAGE_BYTES,
        g => g,
    }
}

/// Bytes of the block checksum table of `data_bytes` of data.
pub const fn block_crc_table_bytes(data_bytes: usize) -> usize {
    data_bytes.div_ceil(CHECK_BLOCK_BYTES) * 4
}

/// Where the parts of an uncompressed Write payload of `data_bytes` of data
/// lie in the payload, by its layout flags: (data start, table start,
/// payload length). The table is [`block_crc_table_bytes`] long with
/// [`FLAG_BLOCK_CRCS`], empty without (its start then means nothing).
pub const fn raw_layout(flags: u8, data_bytes: usize) -> (usize, usize, usize) {
    let table_bytes = if flags & FLAG_BLOCK_CRCS != 0 {
        block_crc_table_bytes(data_bytes)
    } else {
        0
    };
    if flags & FLAG_ALIGNED_DATA != 0 {
        let data_at = ALIGNED_HEAD_BYTES - RECORD_HEADER_BYTES;
        (data_at, 0, data_at + data_bytes)
    } else {
        (0, data_bytes, data_bytes + table_bytes)
    }
}

/// What a record means when the log is replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// Data for `len_sectors` sectors at `lba`.
    Write = 1,
    /// `len_sectors` sectors at `lba` read as zeroes (write-zeroes, or a write
    /// whose data was all zero: stored as metadata only).
    Zero = 2,
    /// `len_sectors` sectors at `lba` are discarded (they read as zeroes).
    Discard = 3,
    /// A snapshot named by the payload was taken here; `aux` is its id.
    Snapshot = 4,
    /// The volume was resized to `aux` bytes.
    Resize = 5,
    /// The segment ends here; the log continues in the next segment.
    Seal = 6,
    /// Filler up to a page boundary (payload: zeroes); nothing to replay.
    Pad = 7,
}

impl RecordKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Write,
            2 => Self::Zero,
            3 => Self::Discard,
            4 => Self::Snapshot,
            5 => Self::Resize,
            6 => Self::Seal,
            7 => Self::Pad,
            _ => return None,
        })
    }
}

/// A decoded, checksum-verified record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub flags: u8,
    pub stored_len: u32,
    pub seq: u64,
    pub volume_id: u64,
    pub lba: u64,
    pub len_sectors: u32,
    pub payload_crc: u32,
    pub aux: u64,
}

/// Why a header failed to decode. Replay stops at the first such record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("shorter than a record header")]
    Truncated,
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("unknown record kind {0}")]
    BadKind(u8),
    #[error("unknown flags {0:#04x}")]
    BadFlags(u8),
    #[error("payload length {0} out of bounds for the record kind")]
    BadLength(u32),
    #[error("payload checksum mismatch")]
    PayloadChecksum,
}

/// Largest payload any record kind may carry; bounds every read sized by a
/// header before the header's own checksum has been trusted further.
pub const MAX_PAYLOAD_BYTES: usize = MAX_RECORD_DATA_BYTES + MAX_RECORD_DATA_BYTES / 128 + 64;

impl RecordHeader {
    /// Appends the header and `payload` to `out`. `self.stored_len` and
    /// `self.payload_crc` are computed here.
    pub fn encode_with_payload(self, payload: &[u8], out: &mut Vec<u8>) {
        out.reserve(RECORD_HEADER_BYTES + payload.len());
        out.extend_from_slice(&self.to_bytes(payload.len(), crate::checksum::crc32c(payload)));
        out.extend_from_slice(payload);
    }

    /// The header's bytes, for a payload of `stored_len` bytes whose crc32c
    /// is `payload_crc` (for writers that place the payload themselves).
    pub fn to_bytes(mut self, stored_len: usize, payload_crc: u32) -> [u8; RECORD_HEADER_BYTES] {
        debug_assert!(stored_len <= MAX_PAYLOAD_BYTES);
        self.stored_len = stored_len as u32;
        self.payload_crc = payload_crc;
        let mut out = [0u8; RECORD_HEADER_BYTES];
        out[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        out[8] = self.kind as u8;
        out[9] = self.flags;
        out[12..16].copy_from_slice(&self.stored_len.to_le_bytes());
        out[16..24].copy_from_slice(&self.seq.to_le_bytes());
        out[24..32].copy_from_slice(&self.volume_id.to_le_bytes());
        out[32..40].copy_from_slice(&self.lba.to_le_bytes());
        out[40..44].copy_from_slice(&self.len_sectors.to_le_bytes());
        out[44..48].copy_from_slice(&self.payload_crc.to_le_bytes());
        out[48..56].copy_from_slice(&self.aux.to_le_bytes());
        let crc = crate::checksum::crc32c(&out[8..RECORD_HEADER_BYTES]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and verifies a header. Does not look at the payload.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let b = bytes
            .get(..RECORD_HEADER_BYTES)
            .ok_or(RecordError::Truncated)?;
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let magic = u32_at(0);
        if magic != RECORD_MAGIC {
            return Err(RecordError::BadMagic(magic));
        }
        if u32_at(4) != crate::checksum::crc32c(&b[8..RECORD_HEADER_BYTES]) {
            return Err(RecordError::HeaderChecksum);
        }
        let kind = RecordKind::from_u8(b[8]).ok_or(RecordError::BadKind(b[8]))?;
        let flags = b[9];
        let compressed_ok = flags & FLAG_COMPRESSED == 0 || kind == RecordKind::Write;
        let block_crcs_ok = flags & FLAG_BLOCK_CRCS == 0 || kind == RecordKind::Write;
        let aligned_ok = flags & FLAG_ALIGNED_DATA == 0
            || (kind == RecordKind::Write && flags & FLAG_COMPRESSED == 0);
        let continued_ok =
            flags & FLAG_CONTINUED == 0 || matches!(kind, RecordKind::Write | RecordKind::Zero);
        if flags & !KNOWN_FLAGS != 0
            || !compressed_ok
            || !block_crcs_ok
            || !aligned_ok
            || !continued_ok
        {
            return Err(RecordError::BadFlags(flags));
        }
        let header = RecordHeader {
            kind,
            flags,
            stored_len: u32_at(12),
            seq: u64_at(16),
            volume_id: u64_at(24),
            lba: u64_at(32),
            len_sectors: u32_at(40),
            payload_crc: u32_at(44),
            aux: u64_at(48),
        };
        header.check_lengths()?;
        Ok(header)
    }

    fn check_lengths(&self) -> Result<(), RecordError> {
        let stored = self.stored_len as usize;
        let data_bytes = u64::from(self.len_sectors) * SECTOR_BYTES;
        let ok = match self.kind {
            RecordKind::Write => {
                self.len_sectors > 0
                    && data_bytes <= MAX_RECORD_DATA_BYTES as u64
                    && if self.is_compressed() {
                        self.flags & FLAG_BLOCK_CRCS == 0
                            && stored > 0
                            && stored <= MAX_PAYLOAD_BYTES
                    } else {
                        // data_bytes <= MAX_RECORD_DATA_BYTES: no overflow.
                        stored == raw_layout(self.flags, data_bytes as usize).2
                    }
            }
            RecordKind::Zero | RecordKind::Discard => stored == 0 && self.len_sectors > 0,
            RecordKind::Snapshot => stored > 0 && stored <= MAX_NAME_BYTES,
            RecordKind::Resize | RecordKind::Seal => stored == 0,
            RecordKind::Pad => stored < PAGE_BYTES,
        };
        if ok {
            Ok(())
        } else {
            Err(RecordError::BadLength(self.stored_len))
        }
    }

    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }

    /// Bytes the whole record occupies in the log.
    pub fn total_bytes(&self) -> u64 {
        RECORD_HEADER_BYTES as u64 + u64::from(self.stored_len)
    }

    /// Verifies `payload` against the header's payload checksum.
    pub fn check_payload(&self, payload: &[u8]) -> Result<(), RecordError> {
        if payload.len() != self.stored_len as usize
            || crate::checksum::crc32c(payload) != self.payload_crc
        {
            return Err(RecordError::PayloadChecksum);
        }
        Ok(())
    }
}

/// One chunk of guest data encoded as a record payload.
#[derive(Debug)]
pub enum Encoded<'a> {
    /// An lz4 block (flag [`FLAG_COMPRESSED`]).
    Compressed { bytes: Vec<u8>, crc: u32 },
    /// The data as is, followed by its block checksum table when it spans
    /// more than one block (flag [`FLAG_BLOCK_CRCS`]; `table` empty else).
    Raw {
        data: &'a [u8],
        table: Vec<u8>,
        crc: u32,
    },
    /// The data as is, after `head`: its block checksum table (when it
    /// spans more than one block) and zeroes up to the data's sector (flag
    /// [`FLAG_ALIGNED_DATA`]).
    Aligned {
        head: Vec<u8>,
        data: &'a [u8],
        crc: u32,
    },
}

impl Encoded<'_> {
    pub fn flags(&self) -> u8 {
        match self {
            Encoded::Compressed { .. } => FLAG_COMPRESSED,
            Encoded::Raw { table, .. } if !table.is_empty() => FLAG_BLOCK_CRCS,
            Encoded::Raw { .. } => 0,
            Encoded::Aligned { data, .. } if data.len() > CHECK_BLOCK_BYTES => {
                FLAG_ALIGNED_DATA | FLAG_BLOCK_CRCS
            }
            Encoded::Aligned { .. } => FLAG_ALIGNED_DATA,
        }
    }

    /// crc32c of the whole payload.
    pub fn crc(&self) -> u32 {
        match self {
            Encoded::Compressed { crc, .. }
            | Encoded::Raw { crc, .. }
            | Encoded::Aligned { crc, .. } => *crc,
        }
    }

    /// The payload, in the pieces it is stored from.
    pub fn parts(&self) -> [&[u8]; 2] {
        match self {
            Encoded::Compressed { bytes, .. } => [bytes, &[]],
            Encoded::Raw { data, table, .. } => [data, table],
            Encoded::Aligned { head, data, .. } => [head, data],
        }
    }
}

/// Encodes one chunk of guest data (at most [`MAX_RECORD_DATA_BYTES`]) for
/// the log: `None` when it is all zeroes (metadata only), lz4-compressed when
/// that saves at least 1/8, else raw with block checksums. The data is read
/// once for checksums (the payload crc is combined from the block crcs) and
/// not copied when stored raw. `hint` is what the writer's recent chunks
/// said about compressing (see [`CompressHint`]); this chunk updates it.
/// `aligned`: a chunk stored raw is laid out with [`FLAG_ALIGNED_DATA`].
pub fn encode_chunk<'a>(data: &'a [u8], hint: &CompressHint, aligned: bool) -> Option<Encoded<'a>> {
    debug_assert!(data.len() <= MAX_RECORD_DATA_BYTES);
    if is_all_zero(data) {
        return None;
    }
    let raw_chunk = if aligned { aligned_chunk } else { raw_chunk };
    if !hint.worth_trying() {
        return Some(raw_chunk(data));
    }
    // Early abort: when the first 4 KiB do not compress, the chunk is stored
    // as is without compressing the rest (lz4 on incompressible data was 7-8%
    // of the write path's CPU). A chunk that only compresses past its first
    // 4 KiB is stored uncompressed: correct, slightly larger.
    if data.len() > 2 * PROBE_BYTES && !saves_an_eighth(&data[..PROBE_BYTES]) {
        hint.note(false);
        return Some(raw_chunk(data));
    }
    let compressed = lz4_flex::block::compress(data);
    if compressed.len() <= data.len() - data.len() / 8 {
        hint.note(true);
        let crc = crate::checksum::crc32c(&compressed);
        Some(Encoded::Compressed {
            bytes: compressed,
            crc,
        })
    } else {
        hint.note(false);
        Some(raw_chunk(data))
    }
}

/// Whether compressing a writer's next chunk is worth a try, from how its
/// last chunks went. After [`CompressHint::MISSES_BEFORE_BACKOFF`] chunks in
/// a row that did not compress, only one chunk in
/// [`CompressHint::PROBE_EVERY`] is tried (the 4 KiB probe and its lz4 hash
/// table were still 6% of the vhost-blk worker's CPU on incompressible
/// 128 KiB writes); the first one that compresses turns trying back on for
/// every chunk. Cost of the back-off: up to `PROBE_EVERY` chunks (1 MiB) of
/// compressible data stored raw after a long incompressible run, which is
/// correct, only larger. Shared by the threads writing a volume: relaxed
/// counting is enough for a hint.
#[derive(Debug, Default)]
pub struct CompressHint {
    /// Chunks since the last one that compressed (wrapping).
    misses: std::sync::atomic::AtomicU32,
}

impl CompressHint {
    pub const MISSES_BEFORE_BACKOFF: u32 = 8;
    pub const PROBE_EVERY: u32 = 16;

    /// True when the next chunk should be tried; counts it otherwise.
    fn worth_trying(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let misses = self.misses.load(Relaxed);
        if misses < Self::MISSES_BEFORE_BACKOFF || misses.is_multiple_of(Self::PROBE_EVERY) {
            return true;
        }
        self.misses.fetch_add(1, Relaxed);
        false
    }

    fn note(&self, compressed: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        if compressed {
            self.misses.store(0, Relaxed);
        } else {
            self.misses.fetch_add(1, Relaxed);
        }
    }
}

/// crc32c(A ++ B) from crc32c(A) and crc32c(B), B one full check block.
/// `crc32c::crc32c_combine` (zlib's method) rebuilds its shift operator on
/// every call, tens of microseconds each: 16 of them per 64 KiB record made
/// 128 KiB writes 5x slower. The shift by one block is linear in crc32c(A)
/// over GF(2), so it is tabulated once per byte of crc32c(A) (4 tables of
/// 256 entries, from the crate's combine) and applied with 4 lookups. A
/// loop over the 32 bits was 7% of the vhost-blk worker's CPU on 128 KiB
/// writes.
fn combine_full_block(crc_a: u32, crc_b: u32) -> u32 {
    static SHIFT: std::sync::OnceLock<[[u32; 256]; 4]> = std::sync::OnceLock::new();
    let shift = SHIFT.get_or_init(|| {
        let bit: [u32; 32] =
            std::array::from_fn(|i| crc32c::crc32c_combine(1 << i, 0, CHECK_BLOCK_BYTES));
        std::array::from_fn(|byte| {
            std::array::from_fn(|value| {
                (0..8)
                    .filter(|j| value >> j & 1 == 1)
                    .fold(0, |acc, j| acc ^ bit[8 * byte + j])
            })
        })
    });
    let [b0, b1, b2, b3] = crc_a.to_le_bytes();
    crc_b
        ^ shift[0][usize::from(b0)]
        ^ shift[1][usize::from(b1)]
        ^ shift[2][usize::from(b2)]
        ^ shift[3][usize::from(b3)]
}

/// The block checksum table of `data` and the crc32c of all of it, read
/// once: the whole crc is combined from the blocks'. An empty table for
/// data of one block or less (a one-block record is read whole anyway).
fn block_crcs(data: &[u8]) -> (Vec<u8>, u32) {
    if data.len() <= CHECK_BLOCK_BYTES {
        return (Vec::new(), crate::checksum::crc32c(data));
    }
    let mut table = Vec::with_capacity(block_crc_table_bytes(data.len()));
    let mut data_crc = 0u32;
    for block in data.chunks(CHECK_BLOCK_BYTES) {
        let block_crc = crate::checksum::crc32c(block);
        data_crc = if block.len() == CHECK_BLOCK_BYTES {
            combine_full_block(data_crc, block_crc)
        } else {
            crc32c::crc32c_combine(data_crc, block_crc, block.len())
        };
        table.extend_from_slice(&block_crc.to_le_bytes());
    }
    (table, data_crc)
}

/// An uncompressed chunk: the data, then its block checksum table.
fn raw_chunk(data: &[u8]) -> Encoded<'_> {
    let (table, data_crc) = block_crcs(data);
    let crc = crc32c::crc32c_append(data_crc, &table);
    Encoded::Raw { data, table, crc }
}

/// An uncompressed chunk with aligned data: the block checksum table and
/// zeroes up to the data's sector, then the data.
fn aligned_chunk(data: &[u8]) -> Encoded<'_> {
    let (mut head, data_crc) = block_crcs(data);
    head.resize(ALIGNED_HEAD_BYTES - RECORD_HEADER_BYTES, 0);
    let head_crc = crate::checksum::crc32c(&head);
    let crc = crc32c::crc32c_combine(head_crc, data_crc, data.len());
    Encoded::Aligned { head, data, crc }
}

/// Bytes of a chunk tried before compressing all of it.
const PROBE_BYTES: usize = 4096;

fn saves_an_eighth(data: &[u8]) -> bool {
    lz4_flex::block::compress(data).len() <= data.len() - data.len() / 8
}

/// Decodes a stored payload back into `data_bytes` bytes of guest data.
pub fn decode_data(flags: u8, payload: &[u8], data_bytes: usize) -> Result<Vec<u8>, String> {
    if flags & FLAG_COMPRESSED == 0 {
        let payload = raw_data(flags, payload, data_bytes)?;
        if payload.len() != data_bytes {
            return Err(format!(
                "payload is {} bytes, expected {data_bytes}",
                payload.len()
            ));
        }
        return Ok(payload.to_vec());
    }
    if data_bytes > MAX_RECORD_DATA_BYTES {
        return Err(format!("decompressed size {data_bytes} too large"));
    }
    let out = lz4_flex::block::decompress(payload, data_bytes).map_err(|e| e.to_string())?;
    if out.len() != data_bytes {
        return Err(format!(
            "decompressed to {} bytes, expected {data_bytes}",
            out.len()
        ));
    }
    Ok(out)
}

/// The data part of an uncompressed payload (without its block checksum
/// table, if it has one).
pub fn raw_data(flags: u8, payload: &[u8], data_bytes: usize) -> Result<&[u8], String> {
    let (data_at, _, want) = raw_layout(flags, data_bytes);
    if payload.len() != want {
        return Err(format!(
            "payload is {} bytes, expected {want} for {data_bytes} bytes of data",
            payload.len()
        ));
    }
    Ok(&payload[data_at..data_at + data_bytes])
}

/// True when every byte is zero. Word-at-a-time; this runs on every write.
pub fn is_all_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(8);
    words.all(|w| u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn sample(kind: RecordKind, payload: &[u8], flags: u8, len_sectors: u32) -> Vec<u8> {
        let mut out = Vec::new();
        RecordHeader {
            kind,
            flags,
            stored_len: 0,
            seq: 7,
            volume_id: 3,
            lba: 1234,
            len_sectors,
            payload_crc: 0,
            aux: 99,
        }
        .encode_with_payload(payload, &mut out);
        out
    }

    /// [`encode_chunk`] as flags and one owned payload.
    fn encode_data(data: &[u8]) -> Option<(u8, Vec<u8>)> {
        encode_chunk(data, &CompressHint::default(), false).map(|e| (e.flags(), e.parts().concat()))
    }

    /// Incompressible bytes (xorshift64).
    pub(crate) fn random_bytes(len: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// After a run of incompressible chunks only one in `PROBE_EVERY` is
    /// tried; compressible data is noticed at the next try, and from then
    /// on every chunk is tried again.
    #[test]
    fn compression_backs_off_after_incompressible_runs() {
        let random = random_bytes(65536);
        let text = b"the quick brown fox jumps over the lazy dog ".repeat(1500);
        let text = &text[..65536];
        let compressed = |e: &Encoded<'_>| e.flags() & FLAG_COMPRESSED != 0;
        let hint = CompressHint::default();
        for _ in 0..CompressHint::MISSES_BEFORE_BACKOFF {
            assert!(!compressed(&encode_chunk(&random, &hint, false).unwrap()));
        }
        // Backed off: compressible chunks are stored raw until the next try.
        let until_try = CompressHint::PROBE_EVERY
            - CompressHint::MISSES_BEFORE_BACKOFF % CompressHint::PROBE_EVERY;
        for _ in 0..until_try {
            assert!(!compressed(&encode_chunk(text, &hint, false).unwrap()));
        }
        for _ in 0..3 * CompressHint::PROBE_EVERY {
            assert!(compressed(&encode_chunk(text, &hint, false).unwrap()));
        }
        // All-zero chunks are metadata only and say nothing either way.
        assert!(encode_chunk(&[0u8; 65536], &hint, false).is_none());
        // A fresh hint tries every chunk.
        assert!(compressed(
            &encode_chunk(text, &CompressHint::default(), false).unwrap()
        ));
    }

    /// Aligned chunks of every size class: the payload is the table (if
    /// any), zeroes to the data's sector, then the data; its crc (combined,
    /// not computed over the payload) checks; the decoder finds the data;
    /// and the flag is refused where it means nothing.
    #[test]
    fn aligned_chunks_put_the_data_a_sector_in() {
        let random = random_bytes(MAX_RECORD_DATA_BYTES);
        for len in [512, 4096, 6144, 65024, MAX_RECORD_DATA_BYTES] {
            let data = &random[..len];
            let e = encode_chunk(data, &CompressHint::default(), true).unwrap();
            let flags = e.flags();
            assert_ne!(flags & FLAG_ALIGNED_DATA, 0, "{len}");
            assert_eq!(
                flags & FLAG_BLOCK_CRCS != 0,
                len > CHECK_BLOCK_BYTES,
                "{len}"
            );
            let payload = e.parts().concat();
            let (data_at, table_at, payload_len) = raw_layout(flags, len);
            assert_eq!(RECORD_HEADER_BYTES + data_at, ALIGNED_HEAD_BYTES);
            assert_eq!((table_at, payload_len), (0, payload.len()), "{len}");
            assert_eq!(crate::checksum::crc32c(&payload), e.crc(), "{len}");
            let table_bytes = if len > CHECK_BLOCK_BYTES {
                block_crc_table_bytes(len)
            } else {
                0
            };
            for (block, entry) in data
                .chunks(CHECK_BLOCK_BYTES)
                .zip(payload[..table_bytes].chunks_exact(4))
            {
                assert_eq!(entry, crate::checksum::crc32c(block).to_le_bytes());
            }
            assert!(payload[table_bytes..data_at].iter().all(|&b| b == 0));
            let record = sample(RecordKind::Write, &payload, flags, (len / 512) as u32);
            let h = RecordHeader::decode(&record).unwrap();
            h.check_payload(&record[RECORD_HEADER_BYTES..]).unwrap();
            assert_eq!(raw_data(flags, &payload, len).unwrap(), data);
            assert_eq!(decode_data(flags, &payload, len).unwrap(), data);
            // One byte short of the layout's length is refused.
            let short = sample(
                RecordKind::Write,
                &payload[..payload.len() - 1],
                flags,
                (len / 512) as u32,
            );
            assert_eq!(
                RecordHeader::decode(&short),
                Err(RecordError::BadLength(payload.len() as u32 - 1))
            );
        }
        let aligned_lz4 = sample(
            RecordKind::Write,
            &[1; 100],
            FLAG_ALIGNED_DATA | FLAG_COMPRESSED,
            8,
        );
        assert!(matches!(
            RecordHeader::decode(&aligned_lz4),
            Err(RecordError::BadFlags(_))
        ));
        let aligned_zero = sample(RecordKind::Zero, &[], FLAG_ALIGNED_DATA, 8);
        assert!(matches!(
            RecordHeader::decode(&aligned_zero),
            Err(RecordError::BadFlags(_))
        ));
    }

    #[test]
    fn round_trip() {
        let payload = vec![0xabu8; 1024];
        let rec = sample(RecordKind::Write, &payload, 0, 2);
        let h = RecordHeader::decode(&rec).unwrap();
        assert_eq!(h.kind, RecordKind::Write);
        assert_eq!(h.seq, 7);
        assert_eq!(h.volume_id, 3);
        assert_eq!(h.lba, 1234);
        assert_eq!(h.aux, 99);
        assert_eq!(h.total_bytes() as usize, rec.len());
        h.check_payload(&rec[RECORD_HEADER_BYTES..]).unwrap();
    }

    /// Every single corrupted byte of a record, header or payload, is caught
    /// by either header decode or the payload check.
    #[test]
    fn every_corrupted_byte_is_detected() {
        let payload: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
        let rec = sample(RecordKind::Write, &payload, 0, 2);
        for i in 0..rec.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = rec.clone();
                bad[i] ^= flip;
                let detected = match RecordHeader::decode(&bad) {
                    Err(_) => true,
                    Ok(h) => h.check_payload(&bad[RECORD_HEADER_BYTES..]).is_err(),
                };
                assert!(detected, "byte {i} flip {flip:#x} went undetected");
            }
        }
    }

    #[test]
    fn lengths_are_bounded_by_kind() {
        // A snapshot record with an empty name is invalid.
        let rec = sample(RecordKind::Snapshot, b"", 0, 0);
        assert_eq!(RecordHeader::decode(&rec), Err(RecordError::BadLength(0)));
        // Zero records carry no payload.
        let rec = sample(RecordKind::Zero, b"x", 0, 1);
        assert!(RecordHeader::decode(&rec).is_err());
        // Compression flag only on writes; continuation only on data.
        let rec = sample(RecordKind::Zero, b"", FLAG_COMPRESSED, 1);
        assert!(RecordHeader::decode(&rec).is_err());
        let rec = sample(RecordKind::Zero, b"", FLAG_CONTINUED, 1);
        assert!(RecordHeader::decode(&rec).is_ok());
        let rec = sample(RecordKind::Snapshot, b"s", FLAG_CONTINUED, 0);
        assert!(RecordHeader::decode(&rec).is_err());
        assert_eq!(
            RecordHeader::decode(&rec[..10]),
            Err(RecordError::Truncated)
        );
    }

    #[test]
    fn pads_reach_the_next_page_and_are_bounded() {
        for offset in [
            64u64,
            4095,
            4096 - 56,
            4096 - 55,
            4096,
            8191,
            12345,
            1 << 30,
        ] {
            let pad = pad_bytes_at(offset);
            assert_eq!(
                (offset + pad as u64) % PAGE_BYTES as u64,
                0,
                "offset {offset}"
            );
            assert!(
                pad == 0 || pad >= RECORD_HEADER_BYTES,
                "offset {offset}: pad {pad}"
            );
            assert!(pad < 2 * PAGE_BYTES);
        }
        assert_eq!(pad_bytes_at(4096), 0);
        assert_eq!(pad_bytes_at(4096 - 55), 55 + PAGE_BYTES);
        // The largest pad a writer makes decodes; a page of payload does not.
        let zeroes = vec![0u8; PAGE_BYTES];
        let largest = pad_bytes_at(4096 - 55) - RECORD_HEADER_BYTES;
        let rec = sample(RecordKind::Pad, &zeroes[..largest], 0, 0);
        assert_eq!(RecordHeader::decode(&rec).unwrap().kind, RecordKind::Pad);
        let rec = sample(RecordKind::Pad, &zeroes, 0, 0);
        assert_eq!(
            RecordHeader::decode(&rec),
            Err(RecordError::BadLength(PAGE_BYTES as u32))
        );
        let rec = sample(RecordKind::Pad, b"", FLAG_CONTINUED, 0);
        assert!(RecordHeader::decode(&rec).is_err());
    }

    #[test]
    fn incompressible_chunks_are_stored_raw_without_compressing_them_whole() {
        let random = random_bytes(65536);
        let (flags, payload) = encode_data(&random).unwrap();
        assert_eq!(flags, FLAG_BLOCK_CRCS);
        assert_eq!(&payload[..65536], &random[..]);
        assert_eq!(payload.len(), 65536 + 16 * 4);
        assert_eq!(decode_data(flags, &payload, 65536).unwrap(), random);
        // Compressible data past the probe still compresses.
        let (flags, _) = encode_data(&[7u8; 65536]).unwrap();
        assert_eq!(flags, FLAG_COMPRESSED);
    }

    #[test]
    fn data_encoding() {
        assert!(encode_data(&[0u8; 4096]).is_none());
        let (flags, payload) = encode_data(&[5u8; 4096]).unwrap();
        assert_eq!(flags, FLAG_COMPRESSED);
        assert!(payload.len() < 4096);
        assert_eq!(decode_data(flags, &payload, 4096).unwrap(), vec![5u8; 4096]);
        let random: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let (flags, payload) = encode_data(&random).unwrap();
        assert_eq!(decode_data(flags, &payload, 4096).unwrap(), random);
        assert!(decode_data(FLAG_COMPRESSED, b"\xff\xff\xff", 4096).is_err());
    }

    #[test]
    fn block_checksum_tables_cover_every_block_and_are_length_checked() {
        // 17 sectors: two full blocks and a 512-byte tail block.
        let data: Vec<u8> = (0..17 * 512u32).map(|i| (i * 31 + 7) as u8).collect();
        let mut x = 0x9e37_79b9u64;
        let data: Vec<u8> = data
            .iter()
            .map(|b| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b ^ x as u8
            })
            .collect();
        let (flags, payload) = encode_data(&data).unwrap();
        assert_eq!(flags, FLAG_BLOCK_CRCS);
        assert_eq!(payload.len(), data.len() + 3 * 4);
        for (i, block) in data.chunks(CHECK_BLOCK_BYTES).enumerate() {
            let at = data.len() + 4 * i;
            let entry = u32::from_le_bytes(payload[at..at + 4].try_into().unwrap());
            assert_eq!(entry, crc32c::crc32c(block), "block {i}");
        }
        let rec = sample(RecordKind::Write, &payload, flags, 17);
        let h = RecordHeader::decode(&rec).unwrap();
        h.check_payload(&rec[RECORD_HEADER_BYTES..]).unwrap();
        // A table of the wrong length, or the flag on a non-write, is refused.
        let rec = sample(RecordKind::Write, &payload[..payload.len() - 4], flags, 17);
        assert!(RecordHeader::decode(&rec).is_err());
        let rec = sample(RecordKind::Zero, b"", FLAG_BLOCK_CRCS, 1);
        assert!(RecordHeader::decode(&rec).is_err());
        let rec = sample(
            RecordKind::Write,
            &payload,
            FLAG_BLOCK_CRCS | FLAG_COMPRESSED,
            9,
        );
        assert!(RecordHeader::decode(&rec).is_err());
        // One block of data gets no table.
        assert_eq!(raw_chunk(&data[..4096]).flags(), 0);
        // The payload crc combined from the blocks is the crc of the payload,
        // for full 64 KiB records too.
        let e = raw_chunk(&data);
        assert_eq!(e.crc(), crc32c::crc32c(&e.parts().concat()));
        let big: Vec<u8> = (0..65536u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        let e = raw_chunk(&big);
        assert_eq!(e.crc(), crc32c::crc32c(&e.parts().concat()));
        let spread = (0..64u32).map(|i| (i.wrapping_mul(0x9e37_79b9), !i << 7));
        for (a, b) in [(0u32, 0u32), (1, 2), (u32::MAX, 0x1234_5678)]
            .into_iter()
            .chain(spread)
        {
            assert_eq!(
                combine_full_block(a, b),
                crc32c::crc32c_combine(a, b, CHECK_BLOCK_BYTES)
            );
        }
    }
}
