//! The engine's error type: one variant per failure, each naming what failed.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("catalog error: {0}")]
    Catalog(#[from] sled::Error),
    #[error("catalog entry {key} is malformed: {why}")]
    CatalogCorrupt { key: String, why: String },
    #[error("invalid name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("volume {0:?} not found")]
    VolumeNotFound(String),
    #[error("snapshot {0:?} not found")]
    SnapshotNotFound(String),
    #[error("no volume or snapshot named {0:?}")]
    NotFound(String),
    #[error("{a:?} and {b:?} are not of the same volume")]
    Unrelated { a: String, b: String },
    #[error("a volume or snapshot named {0:?} already exists")]
    AlreadyExists(String),
    #[error("volume size {size_bytes} is invalid: {why}")]
    InvalidSize { size_bytes: u64, why: &'static str },
    #[error("request at offset {offset_bytes} length {len_bytes} is not a multiple of 512 bytes")]
    Unaligned { offset_bytes: u64, len_bytes: u64 },
    #[error("request at offset {offset_bytes} length {len_bytes} is past the end of volume {volume:?} ({size_bytes} bytes)")]
    OutOfRange {
        volume: String,
        offset_bytes: u64,
        len_bytes: u64,
        size_bytes: u64,
    },
    #[error("request length {len_bytes} exceeds the limit of {limit_bytes} bytes")]
    TooLarge { len_bytes: u64, limit_bytes: u64 },
    #[error("volume {volume:?} can only grow: {size_bytes} -> {new_size_bytes}")]
    Shrink {
        volume: String,
        size_bytes: u64,
        new_size_bytes: u64,
    },
    #[error("checksum mismatch in volume {volume:?} at byte {offset_bytes}: segment {segment_id} offset {segment_offset}: expected crc32c {expected:#010x}, found {found:#010x}")]
    Checksum {
        volume: String,
        offset_bytes: u64,
        segment_id: u64,
        segment_offset: u64,
        expected: u32,
        found: u32,
    },
    #[error("corrupt data in volume {volume:?} at byte {offset_bytes}: segment {segment_id} offset {segment_offset}: {why}")]
    CorruptExtent {
        volume: String,
        offset_bytes: u64,
        segment_id: u64,
        segment_offset: u64,
        why: String,
    },
    #[error("write to volume {volume:?} at byte {offset_bytes}: cannot take its data: {why}")]
    WriteData {
        volume: String,
        offset_bytes: u64,
        why: String,
    },
    #[error("segment {segment_id} is missing from the local store")]
    SegmentMissing { segment_id: u64 },
    #[error("corrupt segment file {path}: {why}")]
    CorruptSegment { path: PathBuf, why: String },
    #[error("corrupt checkpoint {path}: {why}")]
    CorruptCheckpoint { path: PathBuf, why: String },
    #[error("snapshot {snapshot:?} is read-only")]
    ReadOnly { snapshot: String },
    #[error("{0:?} is not a store directory (no catalog)")]
    NotAStore(PathBuf),
    #[error("store {0:?} already exists")]
    StoreExists(PathBuf),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("the store is closed")]
    Closed,
    #[error("object store: {0}")]
    ObjectStore(String),
    #[error("object {0} not found in the object store")]
    ObjectNotFound(String),
    #[error("manifest {key} is corrupt: {why}")]
    ManifestCorrupt { key: String, why: String },
    #[error("volume {volume:?} is held for writing by {holder}; take the lease over explicitly if that holder is gone")]
    LeaseHeld { volume: String, holder: String },
    #[error("no object store is configured for this store")]
    NoTier,
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// True when the error reports corrupt stored data (checksum, decode).
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            Error::Checksum { .. }
                | Error::CorruptExtent { .. }
                | Error::CorruptSegment { .. }
                | Error::CorruptCheckpoint { .. }
                | Error::CatalogCorrupt { .. }
                | Error::ManifestCorrupt { .. }
        )
    }
}
