//! Segment files: the append-only containers of log records.
//!
//! A segment starts with a 64-byte header, then records back to back. A log
//! segment belongs to one volume and is link `chain_index` of its log; a GC
//! segment holds records relocated by the cleaner and is never replayed.
//! A segment is sealed (a `Seal` record, then no more writes) once the next
//! record would not fit in the configured segment size, and is immutable from
//! then on, which is what lets the object tier upload it as-is.
//!
//! | offset | size | field                                   |
//! |-------:|-----:|-----------------------------------------|
//! | 0      | 8    | magic `"COWSEG01"`                      |
//! | 8      | 8    | segment id                              |
//! | 16     | 8    | owning volume id (0 for GC segments)    |
//! | 24     | 8    | chain index within the volume's log     |
//! | 32     | 1    | kind: 1 log, 2 gc                       |
//! | 33     | 27   | reserved, zero                          |
//! | 60     | 4    | crc32c of bytes 0..60                   |

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::record::{
    RecordError, RecordHeader, RecordKind, MAX_PAYLOAD_BYTES, RECORD_HEADER_BYTES,
};

pub const SEGMENT_MAGIC: &[u8; 8] = b"COWSEG01";
pub const SEGMENT_HEADER_BYTES: u64 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SegmentKind {
    Log,
    Gc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub segment_id: u64,
    pub volume_id: u64,
    pub chain_index: u64,
    pub kind: SegmentKind,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES as usize] {
        let mut b = [0u8; SEGMENT_HEADER_BYTES as usize];
        b[0..8].copy_from_slice(SEGMENT_MAGIC);
        b[8..16].copy_from_slice(&self.segment_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.volume_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.chain_index.to_le_bytes());
        b[32] = match self.kind {
            SegmentKind::Log => 1,
            SegmentKind::Gc => 2,
        };
        let crc = crate::checksum::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> std::result::Result<Self, String> {
        if b.len() < SEGMENT_HEADER_BYTES as usize {
            return Err("shorter than a segment header".into());
        }
        if &b[0..8] != SEGMENT_MAGIC {
            return Err("bad segment magic".into());
        }
        let crc = u32::from_le_bytes([b[60], b[61], b[62], b[63]]);
        if crc != crate::checksum::crc32c(&b[..60]) {
            return Err("segment header checksum mismatch".into());
        }
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let kind = match b[32] {
            1 => SegmentKind::Log,
            2 => SegmentKind::Gc,
            k => return Err(format!("unknown segment kind {k}")),
        };
        Ok(SegmentHeader {
            segment_id: u64_at(8),
            volume_id: u64_at(16),
            chain_index: u64_at(24),
            kind,
        })
    }
}

/// An open segment file. Shared by `Arc`: a reader holding one keeps the data
/// readable even if the cleaner unlinks the file meanwhile.
#[derive(Debug)]
pub struct SegmentFile {
    pub id: u64,
    pub path: PathBuf,
    pub file: File,
    /// How far the page cache of this file was written back and dropped
    /// (see `drop_behind`).
    pub(crate) behind: crate::drop_behind::FileBehind,
    /// A file reused from the pool (see `pool.rs`): stale records may
    /// follow the log's end, and appends are padded to pages.
    pub reused: bool,
    /// The same file opened with `O_DIRECT`, for appends that are aligned
    /// (see [`SegmentFile::direct_for`]); only reused files have one.
    pub(crate) direct: Option<File>,
}

/// Offset, length and memory alignment of a direct append: the page size,
/// which covers every logical block size up to it.
pub const DIRECT_ALIGN_BYTES: usize = crate::record::PAGE_BYTES;

/// Whether an `O_DIRECT` write of `bytes` at `offset` meets the alignment
/// the kernel asks for.
pub fn direct_aligned(offset: u64, bytes: &[u8]) -> bool {
    let align = DIRECT_ALIGN_BYTES;
    offset.is_multiple_of(align as u64)
        && bytes.len().is_multiple_of(align)
        && !bytes.is_empty()
        && (bytes.as_ptr() as usize).is_multiple_of(align)
}

pub fn segment_path(dir: &Path, segment_id: u64) -> PathBuf {
    dir.join(format!("{segment_id:016x}.seg"))
}

impl SegmentFile {
    /// Creates a new segment file with its header written (not yet synced).
    pub fn create(dir: &Path, header: SegmentHeader) -> Result<Self> {
        Self::start(dir, header, None)
    }

    /// Makes the pooled file `from` segment `header.segment_id`: renamed into
    /// place and its header rewritten (not yet synced). Its old records stay
    /// behind the header until overwritten. With `direct`, aligned appends
    /// bypass the page cache: they overwrite written blocks, so the file
    /// system has nothing to allocate, and the copy into the cache, its
    /// writeback and drop-behind leave the append path.
    pub fn reuse(dir: &Path, header: SegmentHeader, from: &Path, direct: bool) -> Result<Self> {
        let mut seg = Self::start(dir, header, Some(from))?;
        if direct {
            seg.direct = open_direct(&seg.path);
        }
        Ok(seg)
    }

    /// The descriptor to write `bytes` at `offset` with: the direct one if
    /// the file has one and the write is aligned for it, else the buffered.
    pub(crate) fn direct_for(&self, offset: u64, bytes: &[u8]) -> Option<&File> {
        self.direct
            .as_ref()
            .filter(|_| direct_aligned(offset, bytes))
    }

    fn start(dir: &Path, header: SegmentHeader, reuse: Option<&Path>) -> Result<Self> {
        let path = segment_path(dir, header.segment_id);
        if let Some(from) = reuse {
            std::fs::rename(from, &path).map_err(|e| Error::io(from, e))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(reuse.is_none())
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.write_all_at(&header.encode(), 0)
            .map_err(|e| Error::io(&path, e))?;
        Ok(SegmentFile {
            id: header.segment_id,
            path,
            file,
            behind: Default::default(),
            reused: reuse.is_some(),
            direct: None,
        })
    }

    /// Opens an existing segment and checks its header names `segment_id`.
    pub fn open(dir: &Path, segment_id: u64) -> Result<(Self, SegmentHeader)> {
        let path = segment_path(dir, segment_id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::SegmentMissing { segment_id }
                } else {
                    Error::io(&path, e)
                }
            })?;
        let mut buf = [0u8; SEGMENT_HEADER_BYTES as usize];
        file.read_exact_at(&mut buf, 0)
            .map_err(|e| Error::CorruptSegment {
                path: path.clone(),
                why: format!("cannot read header: {e}"),
            })?;
        let header = SegmentHeader::decode(&buf).map_err(|why| Error::CorruptSegment {
            path: path.clone(),
            why,
        })?;
        if header.segment_id != segment_id {
            return Err(Error::CorruptSegment {
                path,
                why: format!("header names segment {}", header.segment_id),
            });
        }
        Ok((
            SegmentFile {
                id: segment_id,
                path,
                file,
                behind: Default::default(),
                // Recovery cuts an open log segment at its end: no stale
                // records follow what an open finds.
                reused: false,
                direct: None,
            },
            header,
        ))
    }

    pub fn len_bytes(&self) -> Result<u64> {
        Ok(self
            .file
            .metadata()
            .map_err(|e| Error::io(&self.path, e))?
            .len())
    }

    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }

    /// Scans records from `offset`, calling `visit` with each valid record
    /// and its payload. Stops at the end of the file or at the first record
    /// that does not verify; returns the offset just past the last valid
    /// record and why the scan stopped (`None` at a clean end of file).
    pub fn scan(
        &self,
        mut offset: u64,
        mut visit: impl FnMut(u64, &RecordHeader, &[u8]) -> ScanStep,
    ) -> Result<(u64, Option<RecordError>)> {
        let file_len = self.len_bytes()?;
        let mut header_buf = [0u8; RECORD_HEADER_BYTES];
        let mut payload = Vec::new();
        loop {
            if offset == file_len {
                return Ok((offset, None));
            }
            if offset + RECORD_HEADER_BYTES as u64 > file_len {
                return Ok((offset, Some(RecordError::Truncated)));
            }
            self.file
                .read_exact_at(&mut header_buf, offset)
                .map_err(|e| Error::io(&self.path, e))?;
            let header = match RecordHeader::decode(&header_buf) {
                Ok(h) => h,
                Err(e) => return Ok((offset, Some(e))),
            };
            let payload_len = header.stored_len as usize;
            debug_assert!(payload_len <= MAX_PAYLOAD_BYTES);
            let payload_at = offset + RECORD_HEADER_BYTES as u64;
            if payload_at + payload_len as u64 > file_len {
                return Ok((offset, Some(RecordError::Truncated)));
            }
            payload.resize(payload_len, 0);
            self.file
                .read_exact_at(&mut payload, payload_at)
                .map_err(|e| Error::io(&self.path, e))?;
            if let Err(e) = header.check_payload(&payload) {
                return Ok((offset, Some(e)));
            }
            match visit(offset, &header, &payload) {
                ScanStep::Continue => offset += header.total_bytes(),
                ScanStep::Stop => return Ok((offset, Some(RecordError::Truncated))),
                ScanStep::StopAfter => return Ok((offset + header.total_bytes(), None)),
            }
        }
    }
}

/// Opens `path` again with `O_DIRECT`; `None` (buffered appends, as
/// before) where the file system refuses it, e.g. tmpfs.
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(file) => Some(file),
        Err(e) => {
            tracing::debug!("no direct appends to {}: {e}", path.display());
            None
        }
    }
}

/// What [`SegmentFile::scan`] does after a visited record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanStep {
    Continue,
    /// Stop before this record, treating it as the end of the valid log.
    Stop,
    /// Stop after this record (a seal).
    StopAfter,
}

/// Bytes of a sealed log segment up to and including its seal, found by
/// walking the record headers of `bytes` (the whole file); `None` if no
/// seal is found. What follows a seal in a reused file is stale.
pub fn sealed_len(bytes: &[u8]) -> Option<usize> {
    let mut at = SEGMENT_HEADER_BYTES as usize;
    loop {
        let header = RecordHeader::decode(bytes.get(at..)?).ok()?;
        let end = at.checked_add(usize::try_from(header.total_bytes()).ok()?)?;
        if header.kind == RecordKind::Seal {
            debug_assert_eq!(end, at + RECORD_HEADER_BYTES);
            return Some(end);
        }
        if end > bytes.len() {
            return None;
        }
        at = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offset, length and memory must all sit on the alignment; empty
    /// writes never go direct.
    #[test]
    fn direct_appends_need_offset_length_and_memory_aligned() {
        let align = DIRECT_ALIGN_BYTES;
        let mut buf = Vec::<u8>::with_capacity(4 * align);
        let skip = buf.as_ptr().align_offset(align);
        buf.resize(skip + 3 * align, 0);
        let aligned = &buf[skip..skip + 2 * align];
        assert!(direct_aligned(align as u64, aligned));
        assert!(direct_aligned(0, aligned));
        assert!(!direct_aligned(64, aligned), "offset");
        assert!(!direct_aligned(0, &buf[skip..skip + align + 512]), "length");
        assert!(
            !direct_aligned(0, &buf[skip + 1..skip + 1 + align]),
            "memory"
        );
        assert!(!direct_aligned(0, &buf[skip..skip]), "empty");
    }
}
