//! Map checkpoints: a volume's or snapshot's whole extent map at one log
//! sequence number, so that recovery replays only the log after it.
//!
//! Written to a temporary file, fsynced, renamed over the old one and the
//! directory fsynced: a checkpoint is either the old one or the new one,
//! never a mix. Layout (little-endian):
//!
//! | offset | size   | field                                              |
//! |-------:|-------:|----------------------------------------------------|
//! | 0      | 8      | magic `"COWCKPT1"`                                 |
//! | 8      | 1      | kind: 1 volume, 2 snapshot                         |
//! | 9      | 7      | reserved, zero                                     |
//! | 16     | 8      | id (volume id or snapshot id)                      |
//! | 24     | 8      | volume id whose log this map came from             |
//! | 32     | 8      | size in bytes                                      |
//! | 40     | 8      | seq: last log record applied                       |
//! | 48     | 8      | replay start: chain index of the log segment       |
//! | 56     | 8      | replay start: byte offset in that segment          |
//! | 64     | 8      | extent count n                                     |
//! | 72     | 8      | reserved, zero                                     |
//! | 80     | 40 * n | extents, by ascending lba (below)                  |
//! | end-4  | 4      | crc32c of every byte before it                     |
//!
//! Extent entry: lba u64, segment id u64, record offset u32, stored length
//! u32, payload crc32c u32, length in sectors u32, skip sectors u8, record
//! sectors u8, flags u8, 5 reserved bytes.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::extent_map::{Extent, ExtentMap};
use crate::limits::MAX_CHECKPOINT_EXTENTS;

const MAGIC: &[u8; 8] = b"COWCKPT1";
const HEADER_BYTES: u64 = 80;
const ENTRY_BYTES: u64 = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointKind {
    Volume,
    Snapshot,
}

/// A replay start position in a volume's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LogPosition {
    pub chain_index: u64,
    pub offset: u64,
}

#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub kind: CheckpointKind,
    pub id: u64,
    pub volume_id: u64,
    pub size_bytes: u64,
    pub seq: u64,
    pub replay_from: LogPosition,
    pub map: ExtentMap,
}

pub fn checkpoint_path(dir: &Path, kind: CheckpointKind, id: u64) -> PathBuf {
    match kind {
        CheckpointKind::Volume => dir.join(format!("vol-{id:016x}.ckpt")),
        CheckpointKind::Snapshot => dir.join(format!("snap-{id:016x}.ckpt")),
    }
}

/// Writer that checksums everything it passes on.
struct CrcWriter<W> {
    inner: W,
    crc: u32,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Checkpoint {
    /// Writes the checkpoint durably and atomically into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = checkpoint_path(dir, self.kind, self.id);
        let tmp = path.with_extension("tmp");
        let io = |e| Error::io(&tmp, e);
        let file = File::create(&tmp).map_err(io)?;
        let buffered = self
            .encode_into(BufWriter::with_capacity(1 << 20, file))
            .map_err(io)?;
        let file = buffered
            .into_inner()
            .map_err(|e| Error::io(&tmp, e.into_error()))?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        sync_dir(dir)
    }

    /// The checkpoint as one buffer, byte-identical to the file `write`
    /// makes (what the object tier uploads).
    pub fn to_bytes(&self) -> Vec<u8> {
        let len_bytes = HEADER_BYTES as usize + self.map.len() * ENTRY_BYTES as usize + 4;
        let mut bytes = Vec::with_capacity(len_bytes);
        // Writing into a Vec cannot fail.
        let written = self.encode_into(&mut bytes).is_ok();
        debug_assert!(written && bytes.len() == len_bytes);
        bytes
    }

    /// Streams header, entries and the crc trailer into `out`.
    fn encode_into<W: Write>(&self, out: W) -> std::io::Result<W> {
        let mut w = CrcWriter { inner: out, crc: 0 };
        let mut header = [0u8; HEADER_BYTES as usize];
        header[0..8].copy_from_slice(MAGIC);
        header[8] = match self.kind {
            CheckpointKind::Volume => 1,
            CheckpointKind::Snapshot => 2,
        };
        for (at, v) in [
            (16, self.id),
            (24, self.volume_id),
            (32, self.size_bytes),
            (40, self.seq),
            (48, self.replay_from.chain_index),
            (56, self.replay_from.offset),
            (64, self.map.len() as u64),
        ] {
            header[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        w.write_all(&header)?;
        let mut entry = [0u8; ENTRY_BYTES as usize];
        for (lba, e) in self.map.iter() {
            entry[0..8].copy_from_slice(&lba.to_le_bytes());
            entry[8..16].copy_from_slice(&e.segment_id.to_le_bytes());
            entry[16..20].copy_from_slice(&e.record_offset.to_le_bytes());
            entry[20..24].copy_from_slice(&e.stored_len.to_le_bytes());
            entry[24..28].copy_from_slice(&e.payload_crc.to_le_bytes());
            entry[28..32].copy_from_slice(&e.len_sectors.to_le_bytes());
            entry[32] = e.skip_sectors;
            entry[33] = e.record_sectors;
            entry[34] = e.flags;
            w.write_all(&entry)?;
        }
        let crc = w.crc;
        let mut out = w.inner;
        out.write_all(&crc.to_le_bytes())?;
        Ok(out)
    }

    /// Reads and verifies a checkpoint. The extent count is checked against
    /// the file size before anything is sized by it.
    pub fn read(path: &Path) -> Result<Self> {
        let corrupt = |why: String| Error::CorruptCheckpoint {
            path: path.to_path_buf(),
            why,
        };
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut r = BufReader::with_capacity(1 << 20, file);
        let mut header = [0u8; HEADER_BYTES as usize];
        r.read_exact(&mut header)
            .map_err(|e| corrupt(format!("short header: {e}")))?;
        if &header[0..8] != MAGIC {
            return Err(corrupt("bad magic".into()));
        }
        let u64_at = |b: &[u8], o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let kind = match header[8] {
            1 => CheckpointKind::Volume,
            2 => CheckpointKind::Snapshot,
            k => return Err(corrupt(format!("unknown kind {k}"))),
        };
        let count = u64_at(&header, 64);
        if count > MAX_CHECKPOINT_EXTENTS || HEADER_BYTES + count * ENTRY_BYTES + 4 != file_len {
            return Err(corrupt(format!(
                "extent count {count} does not match file size {file_len}"
            )));
        }
        let mut crc = crate::checksum::crc32c(&header);
        let mut map = ExtentMap::new();
        let mut entry = [0u8; ENTRY_BYTES as usize];
        let mut prev_end = 0u64;
        for i in 0..count {
            r.read_exact(&mut entry)
                .map_err(|e| corrupt(format!("short entry {i}: {e}")))?;
            crc = crc32c::crc32c_append(crc, &entry);
            let lba = u64_at(&entry, 0);
            let e = Extent {
                segment_id: u64_at(&entry, 8),
                record_offset: u32_at(&entry, 16),
                stored_len: u32_at(&entry, 20),
                payload_crc: u32_at(&entry, 24),
                len_sectors: u32_at(&entry, 28),
                skip_sectors: entry[32],
                record_sectors: entry[33],
                flags: entry[34],
            };
            // Structural checks, so that a checkpoint with a good checksum
            // but impossible content (a bug) is still refused.
            if e.len_sectors == 0
                || lba < prev_end
                || u32::from(e.skip_sectors) + e.len_sectors > u32::from(e.record_sectors)
            {
                return Err(corrupt(format!("extent {i} at lba {lba} is malformed")));
            }
            prev_end = lba + u64::from(e.len_sectors);
            map.insert(lba, e);
        }
        let mut trailer = [0u8; 4];
        r.read_exact(&mut trailer)
            .map_err(|e| corrupt(format!("short trailer: {e}")))?;
        if u32::from_le_bytes(trailer) != crc {
            return Err(corrupt("checksum mismatch".into()));
        }
        Ok(Checkpoint {
            kind,
            id: u64_at(&header, 16),
            volume_id: u64_at(&header, 24),
            size_bytes: u64_at(&header, 32),
            seq: u64_at(&header, 40),
            replay_from: LogPosition {
                chain_index: u64_at(&header, 48),
                offset: u64_at(&header, 56),
            },
            map,
        })
    }
}

/// fsyncs a directory so that file creations and renames in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    OpenOptions::new()
        .read(true)
        .open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let mut map = ExtentMap::new();
        for i in 0..100u64 {
            map.insert(
                i * 10,
                Extent {
                    segment_id: i,
                    record_offset: 64,
                    stored_len: 4096,
                    payload_crc: i as u32,
                    len_sectors: 8,
                    skip_sectors: 0,
                    record_sectors: 8,
                    flags: 0,
                },
            );
        }
        Checkpoint {
            kind: CheckpointKind::Volume,
            id: 5,
            volume_id: 5,
            size_bytes: 1 << 30,
            seq: 77,
            replay_from: LogPosition {
                chain_index: 3,
                offset: 4096,
            },
            map,
        }
    }

    #[test]
    fn round_trip_and_every_byte_detected() {
        let dir = tempfile::tempdir().unwrap();
        let c = sample();
        c.write(dir.path()).unwrap();
        let path = checkpoint_path(dir.path(), CheckpointKind::Volume, 5);
        let back = Checkpoint::read(&path).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            c.to_bytes(),
            "file and object differ"
        );
        assert_eq!(back.seq, 77);
        assert_eq!(back.replay_from, c.replay_from);
        assert_eq!(
            back.map.iter().collect::<Vec<_>>(),
            c.map.iter().collect::<Vec<_>>()
        );
        let good = std::fs::read(&path).unwrap();
        for i in (0..good.len()).step_by(7) {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            assert!(Checkpoint::read(&path).is_err(), "byte {i} undetected");
        }
        // A truncated file is refused before anything is sized by its count.
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(Checkpoint::read(&path).is_err());
    }
}
