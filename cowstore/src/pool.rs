//! Free segment files kept for reuse: the log overwrites blocks it already
//! owns instead of asking the file system for new ones.
//!
//! Why: a log only ever appends, so without reuse every byte it writes goes
//! to blocks the file system has just allocated (and, on a file system
//! mounted with `discard`, that the disk was just told were free). On our
//! test machines such writes got about a fifth less from the disk than
//! overwrites of written blocks (fio, 7 paired rounds), and 128 KiB writes
//! at depth 8 ran 1.22x faster with reuse (9 paired rounds; both in
//! docs/performance.md). Database write-ahead logs recycle their files for
//! the same reason.
//!
//! How: the cleaner hands every segment file it frees to the pool (a rename
//! into `<store>/free/`) instead of deleting it, up to
//! [`StoreConfig::segment_pool_bytes`](crate::StoreConfig) and while the
//! file system keeps [`MIN_FREE_PERCENT`] free; a new log segment of a volume
//! writing large batches takes a file from the pool (a rename back, its
//! header rewritten) instead of creating one.
//!
//! What makes reuse safe (see docs/architecture.md, "Reused segment files"):
//! - A reused file holds stale records after what is written in its new
//!   life. Replay accepts a record only with the volume's id and the next
//!   sequence number; stale records carry older sequence numbers (sequence
//!   numbers only grow once durable, and a crash cut truncates the file at
//!   the cut and deletes, never pools, the segments after it).
//! - A file is pooled only when nothing else holds it open (a reader of an
//!   unlinked file keeps its bytes; a reader of a pooled one would not).
//! - Appends to a reused file end on a page ([`crate::record::pad_bytes_at`]):
//!   an append ending inside a page whose contents are not cached makes the
//!   kernel read that page from disk first (0.62x with reuse but no pads).
//! - A sealed segment is read up to its seal: uploads cut the stale tail
//!   ([`crate::segment::sealed_len`]) and the cleaner stops scanning at the
//!   seal.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::segment::SegmentFile;

/// Freed files are deleted instead of pooled once the file system holding
/// the store has less than this share free (the same floor as the cleaner's
/// low-space rule in vhost-blk): pooled space is no one else's.
pub const MIN_FREE_PERCENT: u64 = 10;

/// Volumes whose recent write batches average at least this many bytes get
/// reused files for their next segments (the default of
/// [`StoreConfig::reuse_min_batch_bytes`](crate::StoreConfig)). Smaller batches would pay a pad of
/// up to a page each (twice the space of a 4 KiB write), and they do not
/// keep the disk busy enough for fresh blocks to matter (4 KiB writes at
/// depth 32 kept it 30% busy, docs/performance.md).
pub const REUSE_MIN_BATCH_BYTES: u64 = 64 << 10;

/// Files in `<store>/free/` are named `<n as 16 hex digits>.free`.
const SUFFIX: &str = ".free";

pub(crate) struct SegmentPool {
    dir: PathBuf,
    max_files: usize,
    state: Mutex<PoolState>,
}

struct PoolState {
    /// Oldest first: the longest-idle file is reused first.
    files: VecDeque<PathBuf>,
    next_name: u64,
}

impl SegmentPool {
    /// Opens the pool in `dir` (created if missing), adopting the files a
    /// previous run left there up to `max_bytes` worth of `segment_bytes`
    /// files and deleting the rest.
    pub fn open(dir: &Path, max_bytes: u64, segment_bytes: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let max_files = usize::try_from(max_bytes / segment_bytes.max(1)).unwrap_or(usize::MAX);
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let name = entry.file_name();
            let n = name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|hex| u64::from_str_radix(hex, 16).ok());
            match n {
                Some(n) => found.push((n, entry.path())),
                None => crate::store::remove_if_exists(&entry.path())?,
            }
        }
        found.sort();
        let next_name = found.last().map_or(0, |(n, _)| n + 1);
        let keep = found.len().min(max_files);
        for (_, path) in found.drain(keep..) {
            crate::store::remove_if_exists(&path)?;
        }
        Ok(SegmentPool {
            dir: dir.to_path_buf(),
            max_files,
            state: Mutex::new(PoolState {
                files: found.into_iter().map(|(_, p)| p).collect(),
                next_name,
            }),
        })
    }

    /// Files in the pool now.
    pub fn len(&self) -> usize {
        self.state.lock().files.len()
    }

    /// Files the pool keeps at most.
    pub fn capacity(&self) -> usize {
        self.max_files
    }

    /// Keeps the freed segment `seg` (already out of the catalog and the
    /// segment table, so no one can look it up any more) for reuse; false
    /// when the caller must delete it instead: the pool is full or off,
    /// space is short, or someone else still holds the file.
    pub fn give(&self, seg: &Arc<SegmentFile>) -> bool {
        // Another holder may still read the old bytes (a read that looked
        // its extent up before the cleaner ran, a drop-behind note): an
        // unlinked file keeps them for it, a reused one would not.
        if Arc::strong_count(seg) != 1 || Arc::weak_count(seg) != 0 {
            tracing::debug!(
                segment = seg.id,
                holders = Arc::strong_count(seg),
                "freed segment file still held: deleted, not pooled"
            );
            return false;
        }
        let mut st = self.state.lock();
        if st.files.len() >= self.max_files || self.short_of_space() {
            tracing::debug!(
                segment = seg.id,
                pooled = st.files.len(),
                "pool full or space short: deleted, not pooled"
            );
            return false;
        }
        let to = self.dir.join(format!("{:016x}{SUFFIX}", st.next_name));
        match std::fs::rename(&seg.path, &to) {
            Ok(()) => {
                st.next_name += 1;
                st.files.push_back(to);
                true
            }
            Err(e) => {
                tracing::warn!("cannot keep {} for reuse: {e}", seg.path.display());
                false
            }
        }
    }

    /// Deletes every pooled file when the file system is short of space
    /// (under [`MIN_FREE_PERCENT`] free); returns how many went.
    pub fn release_if_short(&self) -> Result<usize> {
        if !self.short_of_space() {
            return Ok(0);
        }
        let files: Vec<PathBuf> = self.state.lock().files.drain(..).collect();
        for path in &files {
            crate::store::remove_if_exists(path)?;
        }
        if !files.is_empty() {
            tracing::info!(
                files = files.len(),
                "file system short of space: pooled segment files deleted"
            );
        }
        Ok(files.len())
    }

    /// Whether the file system holding the pool has under
    /// [`MIN_FREE_PERCENT`] free (unknown counts as not short).
    fn short_of_space(&self) -> bool {
        free_percent(&self.dir).is_some_and(|p| p < MIN_FREE_PERCENT)
    }

    /// A pooled file to reuse, if any; the caller renames it into place.
    pub fn take(&self) -> Option<PathBuf> {
        self.state.lock().files.pop_front()
    }

    /// Gives a file taken with [`take`](Self::take) back after a failed reuse.
    pub fn put_back(&self, path: PathBuf) {
        self.state.lock().files.push_front(path);
    }
}

/// Percentage of the file system holding `path` that is free for
/// unprivileged use (`f_bavail` of `f_blocks`), or `None` if it cannot be
/// read. The pool and vhost-blk's cleaner judge "short of space" by it.
pub fn free_percent(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a NUL-terminated string that outlives the call and
    // `st` points to writable memory for one `statvfs`, which the kernel
    // fills when the call returns 0.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialized `st`.
    let st = unsafe { st.assume_init() };
    let (total, avail): (u64, u64) = (st.f_blocks, st.f_bavail);
    if total == 0 {
        return None;
    }
    Some(avail.saturating_mul(100) / total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{RecordHeader, RecordKind, PAGE_BYTES, RECORD_HEADER_BYTES};
    use crate::segment::{sealed_len, SegmentHeader, SegmentKind, SEGMENT_HEADER_BYTES};
    use std::os::unix::fs::FileExt;

    const SEGMENT: u64 = 64 << 10;

    fn header(id: u64) -> SegmentHeader {
        SegmentHeader {
            segment_id: id,
            volume_id: 1,
            chain_index: id,
            kind: SegmentKind::Log,
        }
    }

    fn record(kind: RecordKind, seq: u64, payload: &[u8], out: &mut Vec<u8>) {
        RecordHeader {
            kind,
            flags: 0,
            stored_len: 0,
            seq,
            volume_id: 1,
            lba: 0,
            len_sectors: if kind == RecordKind::Write { 1 } else { 0 },
            payload_crc: 0,
            aux: 0,
        }
        .encode_with_payload(payload, out);
    }

    #[test]
    fn keeps_only_unshared_files_up_to_its_size_and_reuses_the_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let segments = dir.path().join("segments");
        std::fs::create_dir(&segments).unwrap();
        let pool = SegmentPool::open(&dir.path().join("free"), 2 * SEGMENT, SEGMENT).unwrap();
        let make = |id| {
            let seg = SegmentFile::create(&segments, header(id)).unwrap();
            seg.file
                .write_all_at(b"old records", SEGMENT_HEADER_BYTES)
                .unwrap();
            Arc::new(seg)
        };
        let first = make(1);
        let reader = first.clone();
        assert!(
            !pool.give(&first),
            "a file someone still reads is not reused"
        );
        drop(reader);
        assert!(pool.give(&first));
        assert!(!first.path.exists());
        assert!(pool.give(&make(2)));
        let third = make(3);
        assert!(!pool.give(&third), "the pool holds 2 files");
        assert!(third.path.exists());
        assert_eq!(pool.len(), 2);

        let from = pool.take().unwrap();
        let seg = SegmentFile::reuse(&segments, header(9), &from, false).unwrap();
        assert!(seg.reused && !from.exists());
        let (opened, h) = SegmentFile::open(&segments, 9).unwrap();
        assert_eq!(h, header(9));
        // The oldest file came back: segment 1's bytes follow the header.
        let mut old = [0u8; 11];
        opened
            .file
            .read_exact_at(&mut old, SEGMENT_HEADER_BYTES)
            .unwrap();
        assert_eq!(&old, b"old records");
        assert_eq!(pool.len(), 1);

        let off = SegmentPool::open(&dir.path().join("off"), 0, SEGMENT).unwrap();
        assert!(!off.give(&make(4)), "a pool of 0 bytes keeps nothing");
    }

    #[test]
    fn reopening_adopts_files_up_to_the_limit_and_deletes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let free = dir.path().join("free");
        std::fs::create_dir(&free).unwrap();
        for n in [3u64, 1, 7] {
            std::fs::write(free.join(format!("{n:016x}{SUFFIX}")), b"x").unwrap();
        }
        std::fs::write(free.join("stray.tmp"), b"x").unwrap();
        let pool = SegmentPool::open(&free, 2 * SEGMENT, SEGMENT).unwrap();
        assert_eq!(pool.len(), 2);
        let mut left: Vec<String> = std::fs::read_dir(&free)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        // The two oldest stay; the newest and the stray file are gone.
        assert_eq!(
            left,
            vec![format!("{:016x}{SUFFIX}", 1), format!("{:016x}{SUFFIX}", 3)]
        );
        assert_eq!(
            pool.take().unwrap(),
            free.join(format!("{:016x}{SUFFIX}", 1))
        );
        // New names continue after every name seen, kept or not.
        let segments = dir.path().join("segments");
        std::fs::create_dir(&segments).unwrap();
        let seg = Arc::new(SegmentFile::create(&segments, header(5)).unwrap());
        assert!(pool.give(&seg));
        assert!(free.join(format!("{:016x}{SUFFIX}", 8)).exists());
    }

    #[test]
    fn a_sealed_segment_ends_at_its_seal() {
        let mut bytes = header(1).encode().to_vec();
        record(RecordKind::Write, 1, &[7u8; 512], &mut bytes);
        let pad = crate::record::pad_bytes_at(bytes.len() as u64);
        record(
            RecordKind::Pad,
            2,
            &vec![0u8; pad - RECORD_HEADER_BYTES],
            &mut bytes,
        );
        assert_eq!(bytes.len() % PAGE_BYTES, 0);
        record(RecordKind::Seal, 3, &[], &mut bytes);
        let sealed = bytes.len();
        // Stale records of the file's earlier life follow.
        record(RecordKind::Write, 90, &[9u8; 512], &mut bytes);
        record(RecordKind::Seal, 91, &[], &mut bytes);
        assert_eq!(sealed_len(&bytes), Some(sealed));
        assert_eq!(sealed_len(&bytes[..sealed]), Some(sealed));
        // No seal, a cut record, garbage: no length.
        assert_eq!(sealed_len(&bytes[..sealed - RECORD_HEADER_BYTES]), None);
        assert_eq!(sealed_len(&bytes[..100]), None);
        let mut bad = bytes.clone();
        bad[SEGMENT_HEADER_BYTES as usize + 9] ^= 1;
        assert_eq!(sealed_len(&bad), None);
        assert_eq!(sealed_len(&[]), None);
    }
}
