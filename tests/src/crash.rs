//! The workload shared by the `crash-victim` binary and the `crash_kill9`
//! test: which operation the victim performs as the n-th operation on each
//! volume, and what every written block holds. Both sides derive everything
//! from (volume, n), so the test can replay the victim's history as a model
//! without the victim telling it anything but how far its flushes got.
//!
//! Each operation is one engine call. Most produce one log record; range
//! writes span several records (one per 64 KiB, the middle one sometimes
//! all zeroes), which the engine promises to recover whole or not at all.
//! So the engine's prefix semantics (a crash keeps a prefix of each volume's
//! log, and never part of a write) translate into "the volume equals the
//! model after some op count m".

use cowstore::limits::{MAX_RECORD_DATA_BYTES, SECTOR_BYTES};
use cowstore::StoreConfig;

/// Names of the victim's volumes, indexed by the `volume` argument below.
pub const VOLUMES: [&str; 2] = ["crash-a", "crash-b"];

/// Writes are made of 4 KiB blocks, each tagged with the op that wrote it.
pub const BLOCK_BYTES: u64 = 4096;
/// Blocks per log record (64 KiB records).
const BLOCKS_PER_RECORD: u64 = (MAX_RECORD_DATA_BYTES as u64) / BLOCK_BYTES;
/// 1024 blocks: 4 MiB per volume, small enough to read whole every round.
pub const VOLUME_BLOCKS: u64 = 1024;
pub const VOLUME_BYTES: u64 = BLOCK_BYTES * VOLUME_BLOCKS;

/// The victim flushes after op n when n is a multiple of this, then prints
/// `FLUSHED <volume> <n>`. It never starts op n+1 before that line is
/// written, so after a kill no op past the next flush point was issued.
pub const FLUSH_EVERY: u64 = 16;

/// A snapshot is taken at op n when n % SNAPSHOT_EVERY == SNAPSHOT_AT ...
pub const SNAPSHOT_EVERY: u64 = 64;
pub const SNAPSHOT_AT: u64 = 32;
/// ... and deleted again this many ops later (at n % 64 == 48), so at most a
/// few snapshots per volume are alive at once.
pub const SNAPSHOT_LIFETIME: u64 = 208;
/// The cleaner runs (from volume 0's thread) at op n when n % GC_EVERY ==
/// GC_AT. It does not change what any volume or snapshot reads.
pub const GC_EVERY: u64 = 256;
pub const GC_AT: u64 = 128;

const MAGIC: &[u8; 8] = b"CRASHBLK";

/// The victim's store settings: small segments and a small checkpoint
/// interval, so segment rolls and background checkpoints happen every
/// fraction of a second; and every log segment after the first cleaner
/// pass a reused file (whatever the batch sizes), so kills land while the
/// log runs through files with stale records after its end.
///
/// With `COWSTORE_CRASH_BUCKET` set, the store also has an object tier in
/// that local folder (local durability: uploads run in the background, so a
/// kill lands mid-upload).
pub fn store_config() -> StoreConfig {
    StoreConfig {
        segment_bytes: 256 << 10,
        checkpoint_interval_bytes: 1 << 20,
        reuse_min_batch_bytes: 0,
        tier: std::env::var("COWSTORE_CRASH_BUCKET")
            .ok()
            .map(cowstore::TierConfig::new),
        ..StoreConfig::default()
    }
}

/// What the victim does as op `n` (n >= 1) of volume `volume`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Writes `block_content(volume, n, block)` at block `block`.
    Write { block: u64 },
    /// One write of `blocks` blocks from `first` on (several log records):
    /// `block_content` for each, except that blocks `zero.0..zero.1` of the
    /// range (counted from `first`) are written as zeroes.
    WriteRange {
        first: u64,
        blocks: u64,
        zero: (u64, u64),
    },
    /// Discards `blocks` blocks from `first` on.
    Discard { first: u64, blocks: u64 },
    /// Write-zeroes over `blocks` blocks from `first` on.
    Zero { first: u64, blocks: u64 },
    /// Takes snapshot `snapshot_name(volume, n)`.
    Snapshot,
    /// Deletes the snapshot taken at op `taken_at`.
    DeleteSnapshot { taken_at: u64 },
    /// Runs `Store::gc` (no effect on contents).
    Gc,
}

pub fn op(volume: usize, n: u64) -> Op {
    assert!(n >= 1, "ops are numbered from 1");
    let r = mix(volume as u64, n);
    if n % SNAPSHOT_EVERY == SNAPSHOT_AT {
        return Op::Snapshot;
    }
    if n % SNAPSHOT_EVERY == SNAPSHOT_AT + 16 && n > SNAPSHOT_LIFETIME {
        return Op::DeleteSnapshot {
            taken_at: n - SNAPSHOT_LIFETIME,
        };
    }
    if volume == 0 && n % GC_EVERY == GC_AT {
        return Op::Gc;
    }
    if n % 8 == 3 {
        let blocks = 17 + (r >> 24) % 24;
        let first = r % (VOLUME_BLOCKS - blocks + 1);
        // Every other range write has an all-zero second record.
        let zero = if (n / 8) % 2 == 0 {
            (0, 0)
        } else {
            (BLOCKS_PER_RECORD, (2 * BLOCKS_PER_RECORD).min(blocks))
        };
        return Op::WriteRange {
            first,
            blocks,
            zero,
        };
    }
    if n % 8 == 5 {
        let first = r % VOLUME_BLOCKS;
        let blocks = (1 + (r >> 20) % 16).min(VOLUME_BLOCKS - first);
        return if (n / 8) % 2 == 0 {
            Op::Discard { first, blocks }
        } else {
            Op::Zero { first, blocks }
        };
    }
    Op::Write {
        block: r % VOLUME_BLOCKS,
    }
}

pub fn snapshot_name(volume: usize, n: u64) -> String {
    format!("{}-s{n}", VOLUMES[volume])
}

/// The op number a snapshot name of `volume` was taken at.
pub fn parse_snapshot_name(volume: usize, name: &str) -> Option<u64> {
    name.strip_prefix(VOLUMES[volume])?
        .strip_prefix("-s")?
        .parse()
        .ok()
}

/// What op `n` does to block contents: (block, what it holds afterwards:
/// `Some(n)` for `block_content(volume, n, block)`, `None` for zeroes).
pub fn block_effects(op: &Op, n: u64) -> Vec<(u64, Option<u64>)> {
    match *op {
        Op::Write { block } => vec![(block, Some(n))],
        Op::WriteRange {
            first,
            blocks,
            zero,
        } => (0..blocks)
            .map(|i| (first + i, (!(zero.0..zero.1).contains(&i)).then_some(n)))
            .collect(),
        Op::Discard { first, blocks } | Op::Zero { first, blocks } => {
            (first..first + blocks).map(|b| (b, None)).collect()
        }
        Op::Snapshot | Op::DeleteSnapshot { .. } | Op::Gc => Vec::new(),
    }
}

/// The buffer a `Write` or `WriteRange` op hands to `Volume::write`, and the
/// byte offset it is written at.
pub fn write_data(volume: usize, n: u64, op: &Op) -> Option<(u64, Vec<u8>)> {
    let first = match *op {
        Op::Write { block } => block,
        Op::WriteRange { first, .. } => first,
        _ => return None,
    };
    let mut data = Vec::new();
    for (block, holds) in block_effects(op, n) {
        match holds {
            Some(n) => data.extend_from_slice(&block_content(volume, n, block)),
            None => data.resize(data.len() + BLOCK_BYTES as usize, 0),
        }
    }
    Some((first * BLOCK_BYTES, data))
}

/// The bytes op `n` of `volume` writes to `block`: a 32-byte header naming
/// all three, then filler that lz4 compresses well for even n and not at
/// all for odd n (so both record encodings are exercised).
pub fn block_content(volume: usize, n: u64, block: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOCK_BYTES as usize);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(volume as u64).to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&block.to_le_bytes());
    let mut state = mix(
        volume as u64 ^ 0xb10c,
        n.wrapping_mul(VOLUME_BLOCKS) + block,
    );
    if n % 2 == 0 {
        let pattern = state.to_le_bytes();
        while out.len() < BLOCK_BYTES as usize {
            out.extend_from_slice(&pattern);
        }
    } else {
        while out.len() < BLOCK_BYTES as usize {
            state = splitmix(state);
            out.extend_from_slice(&state.to_le_bytes());
        }
    }
    out.truncate(BLOCK_BYTES as usize);
    out
}

/// What a block read back holds: `None` for zeroes, `Some(n)` for exactly
/// what op n wrote there, an error for anything else.
pub fn decode_block(volume: usize, block: u64, bytes: &[u8]) -> Result<Option<u64>, String> {
    if bytes.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or([0; 8]));
    if &bytes[..8] != MAGIC || u64_at(8) != volume as u64 || u64_at(24) != block {
        return Err(format!(
            "block {block} of {} holds foreign bytes (header {:02x?})",
            VOLUMES[volume],
            &bytes[..32]
        ));
    }
    let n = u64_at(16);
    if n == 0 || block_content(volume, n, block) != bytes {
        return Err(format!(
            "block {block} of {} claims op {n} but its bytes differ from what op {n} wrote",
            VOLUMES[volume]
        ));
    }
    Ok(Some(n))
}

/// Blocks covered by a discard / write-zeroes, as bytes for the engine.
pub fn byte_range(first: u64, blocks: u64) -> (u64, u64) {
    (first * BLOCK_BYTES, blocks * BLOCK_BYTES)
}

const _: () = assert!(BLOCK_BYTES % SECTOR_BYTES == 0);

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn mix(a: u64, b: u64) -> u64 {
    splitmix(splitmix(a ^ 0x5eed) ^ b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_differ() {
        for n in 1..50 {
            let b = block_content(1, n, 7);
            assert_eq!(b.len(), BLOCK_BYTES as usize);
            assert_eq!(decode_block(1, 7, &b), Ok(Some(n)));
            assert!(decode_block(0, 7, &b).is_err());
            assert!(decode_block(1, 8, &b).is_err());
        }
        assert_eq!(decode_block(0, 3, &[0; 4096]), Ok(None));
    }

    #[test]
    fn schedule() {
        assert_eq!(op(0, 32), Op::Snapshot);
        assert_eq!(op(1, 48 + 256), Op::DeleteSnapshot { taken_at: 96 });
        assert_eq!(op(0, 128), Op::Gc);
        assert!(matches!(op(1, 128), Op::Write { .. }));
        let mut with_zero = 0;
        for n in (3..2000).step_by(8) {
            let Op::WriteRange {
                first,
                blocks,
                zero,
            } = op(1, n)
            else {
                panic!("op {n} should be a range write");
            };
            assert!(blocks > BLOCKS_PER_RECORD && first + blocks <= VOLUME_BLOCKS);
            let (offset, data) = write_data(1, n, &op(1, n)).unwrap();
            assert_eq!(offset, first * BLOCK_BYTES);
            assert_eq!(data.len() as u64, blocks * BLOCK_BYTES);
            if zero.1 > zero.0 {
                with_zero += 1;
                let z = &data[(zero.0 * BLOCK_BYTES) as usize..(zero.1 * BLOCK_BYTES) as usize];
                assert!(z.iter().all(|&b| b == 0));
            }
        }
        assert!(with_zero > 50);
        assert_eq!(parse_snapshot_name(1, &snapshot_name(1, 96)), Some(96));
        assert_eq!(parse_snapshot_name(0, &snapshot_name(1, 96)), None);
        for n in 1..2000 {
            if let Op::Discard { first, blocks } | Op::Zero { first, blocks } = op(0, n) {
                assert!(blocks >= 1 && first + blocks <= VOLUME_BLOCKS);
            }
        }
    }
}
