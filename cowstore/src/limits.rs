//! Every bound the engine enforces on what it accepts from outside.
//!
//! Each limit exists so that no caller (a guest, a CLI user, a corrupted file)
//! can make the engine allocate or loop without bound. Crossing one is a
//! typed error, never a panic.

/// Guest block size the engine addresses in. All offsets and lengths are
/// multiples of it.
pub const SECTOR_BYTES: u64 = 512;

/// Largest volume: 64 TiB. Keeps sector numbers far from overflow and the
/// map's per-volume extent count plausible for memory.
pub const MAX_VOLUME_BYTES: u64 = 64 << 40;

/// Largest single read, write, discard or write-zeroes request: 32 MiB.
/// A virtio request is at most `seg_max * size_max`, well under this.
pub const MAX_IO_BYTES: u64 = 32 << 20;

/// Largest discard / write-zeroes range. These carry no payload, so they may
/// be larger than a data request; they are still bounded to keep one record's
/// map update bounded in time.
pub const MAX_TRIM_BYTES: u64 = 1 << 40;

/// Largest logical payload of one log record: 64 KiB. Larger writes become
/// several records. It bounds read amplification (a read verifies the whole
/// record's checksum) and the unit of compression.
pub const MAX_RECORD_DATA_BYTES: usize = 64 << 10;

/// Data bytes a caller should put in one [`crate::Volume::write_many`]:
/// 512 KiB, four 128 KiB writes. A batch up to this size (and
/// [`MAX_BATCH_WRITES`]) fits a queue worker's registered buffer (see
/// `log_buf.rs`); past it a batch still works, with plain memory.
pub const MAX_BATCH_DATA_BYTES: usize = 512 << 10;

/// Writes a caller should put in one [`crate::Volume::write_many`]: each
/// costs at least a record header and checksum table in the batch buffer.
pub const MAX_BATCH_WRITES: usize = 64;

/// Names of volumes and snapshots: 1..=128 bytes of `[A-Za-z0-9._@-]`,
/// not starting with `.`, `-` or `@` (`vol@snap` is the usual snapshot name).
pub const MAX_NAME_BYTES: usize = 128;

/// Default sealed segment size.
pub const DEFAULT_SEGMENT_BYTES: u64 = 32 << 20;

/// Drop-behind window of log files: written pages stay cached for one to
/// two windows. 8 MiB: large enough that writeback gets whole runs, small
/// enough that the cache a busy log holds stays a few tens of MiB.
pub const DEFAULT_DROP_BEHIND_BYTES: u64 = 8 << 20;

/// Freed segment files a store keeps for reuse by default (see `pool.rs`):
/// 8 GiB, i.e. 256 segments of 32 MiB, about what a cleaner pass frees
/// after 5 s of 128 KiB writes at full speed here. Space the store already
/// used; released under 10% free space.
pub const DEFAULT_SEGMENT_POOL_BYTES: u64 = 8 << 30;

/// Log writer threads per store by default: two, so that on a 2-core
/// machine one copies appends into the page cache while the queue worker
/// prepares the next (see `log_writer`); segments are spread over them.
pub const DEFAULT_LOG_WRITER_THREADS: usize = 2;

/// At most this many log writer threads per store: appends to one file
/// serialize in the kernel (the inode lock of a buffered write), so more
/// threads only help with more files written at once.
pub const MAX_LOG_WRITER_THREADS: usize = 8;

/// Smallest and largest configurable segment size. The upper bound keeps
/// in-segment offsets within `u32`.
pub const MIN_SEGMENT_BYTES: u64 = 64 << 10;
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

/// Largest number of extents a checkpoint file may declare. A corrupted
/// count must not size an allocation: 2^32 extents is past any volume the
/// 64 TiB limit allows at 64 KiB records... and we never preallocate from it.
pub const MAX_CHECKPOINT_EXTENTS: u64 = 1 << 32;

/// Validates a volume or snapshot name.
pub fn check_name(name: &str) -> Result<(), crate::Error> {
    let bad = |why: &'static str| crate::Error::InvalidName {
        name: name.chars().take(MAX_NAME_BYTES).collect(),
        why,
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(bad("longer than 128 bytes"));
    }
    if name.starts_with(['.', '-', '@']) {
        return Err(bad("starts with '.', '-' or '@'"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
    {
        return Err(bad("only A-Z a-z 0-9 . _ - @ are allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("vm1-disk0.raw").is_ok());
        assert!(check_name("vm1@monday").is_ok());
        assert!(check_name("@x").is_err());
        assert!(check_name("").is_err());
        assert!(check_name(".hidden").is_err());
        assert!(check_name("-x").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name(&"a".repeat(128)).is_ok());
        assert!(check_name(&"a".repeat(129)).is_err());
    }
}
