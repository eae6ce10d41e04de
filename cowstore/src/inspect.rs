//! Read-only views of extent maps for operators: what is mapped, what
//! changed between two points of a volume's history, and who owns which
//! bytes.
//!
//! Everything here works on frozen copies of maps (an O(1) clone of the
//! persistent B-tree), so it never holds a volume lock while it walks, and a
//! volume may keep taking writes meanwhile.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::extent_map::{Extent, ExtentMap};
use crate::limits::SECTOR_BYTES;
use crate::record::RECORD_HEADER_BYTES;
use crate::store::Store;

/// A run of bytes: `len_bytes` at `offset_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ByteRange {
    pub offset_bytes: u64,
    pub len_bytes: u64,
}

impl ByteRange {
    pub fn end_bytes(&self) -> u64 {
        self.offset_bytes + self.len_bytes
    }
}

/// Which kind of object a name refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    Volume,
    Snapshot,
}

/// Space one volume or snapshot uses.
///
/// Stored bytes are the log records its map references (header plus stored,
/// possibly compressed, payload). A record referenced by several maps (a
/// snapshot and its volume, clones) is `shared` for each of them; one only
/// this map references is `exclusive`: deleting this object (and running the
/// cleaner) frees at most its exclusive bytes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SpaceUsage {
    pub name: String,
    pub kind: ObjectKind,
    /// Volume this snapshot was taken of, or the volume itself.
    pub volume: String,
    pub size_bytes: u64,
    /// Guest bytes that are mapped (not holes).
    pub mapped_bytes: u64,
    pub exclusive_bytes: u64,
    pub shared_bytes: u64,
}

/// Where a sector's bytes come from: one record and the sector's place in it.
/// Two maps agree on a sector exactly when they give the same identity.
fn sector_identity(lba: u64, run_start: u64, e: &Extent) -> (u64, u32, u64) {
    (
        e.segment_id,
        e.record_offset,
        u64::from(e.skip_sectors) + (lba - run_start),
    )
}

/// A map with its mapped runs as `(start_lba, end_lba, extent)`.
fn runs(map: &ExtentMap) -> impl Iterator<Item = (u64, u64, Extent)> + '_ {
    map.iter()
        .map(|(lba, e)| (lba, lba + u64::from(e.len_sectors), e))
}

/// Coalesced mapped ranges of a map, in bytes.
pub(crate) fn mapped_ranges(map: &ExtentMap) -> Vec<ByteRange> {
    let mut out: Vec<ByteRange> = Vec::new();
    for (start, end, _) in runs(map) {
        push_coalesced(&mut out, start, end);
    }
    out
}

/// Appends sectors `start..end` to ascending `out`, merged with the last
/// range when they touch.
fn push_coalesced(out: &mut Vec<ByteRange>, start: u64, end: u64) {
    let (offset_bytes, end_bytes) = (start * SECTOR_BYTES, end * SECTOR_BYTES);
    match out.last_mut() {
        Some(last) if last.end_bytes() == offset_bytes => {
            last.len_bytes = end_bytes - last.offset_bytes
        }
        _ => out.push(ByteRange {
            offset_bytes,
            len_bytes: end_bytes - offset_bytes,
        }),
    }
}

/// Ranges (coalesced, ascending) where `a` and `b` differ: a sector differs
/// when one maps it and the other does not, or they map it to different
/// bytes of the log. Linear in the two maps' extent counts.
pub(crate) fn diff_maps(a: &ExtentMap, b: &ExtentMap) -> Vec<ByteRange> {
    // Boundaries of both maps, so each elementary interval has one state in
    // each map.
    let mut cuts: Vec<u64> = runs(a)
        .chain(runs(b))
        .flat_map(|(s, e, _)| [s, e])
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let (ra, rb): (Vec<_>, Vec<_>) = (runs(a).collect(), runs(b).collect());
    let (mut ia, mut ib) = (0usize, 0usize);
    let mut out: Vec<ByteRange> = Vec::new();
    for w in cuts.windows(2) {
        let (lo, hi) = (w[0], w[1]);
        while ia < ra.len() && ra[ia].1 <= lo {
            ia += 1;
        }
        while ib < rb.len() && rb[ib].1 <= lo {
            ib += 1;
        }
        let at = |r: &[(u64, u64, Extent)], i: usize| {
            r.get(i)
                .filter(|(s, _, _)| *s <= lo)
                .map(|(s, _, e)| sector_identity(lo, *s, e))
        };
        if at(&ra, ia) != at(&rb, ib) {
            push_coalesced(&mut out, lo, hi);
        }
    }
    out
}

/// Bytes read per verify request: large enough to stream, small enough
/// that a bad record pins down a narrow range.
const VERIFY_CHUNK_BYTES: u64 = 1 << 20;
/// Verify reads in flight at once.
const VERIFY_READS_IN_FLIGHT: usize = 8;

/// The outcome of [`Store::verify`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct VerifyReport {
    pub name: String,
    pub kind: ObjectKind,
    pub checked_bytes: u64,
    pub errors: Vec<VerifyError>,
}

/// One range whose bytes could not be read back intact.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VerifyError {
    pub range: ByteRange,
    pub error: String,
}

/// What a name refers to, frozen: its map and facts about it.
struct Frozen {
    kind: ObjectKind,
    volume_id: u64,
    volume: String,
    size_bytes: u64,
    map: ExtentMap,
}

impl Store {
    fn freeze(&self, name: &str) -> Result<Frozen> {
        if let Ok(snap) = self.snapshot(name) {
            let meta = &snap.inner.meta;
            return Ok(Frozen {
                kind: ObjectKind::Snapshot,
                volume_id: meta.volume_id,
                volume: meta.volume_name.clone(),
                size_bytes: meta.size_bytes,
                map: snap.inner.map.read().clone(),
            });
        }
        let vol = self
            .inner
            .volume_by_name(name)
            .map_err(|_| Error::NotFound(name.to_string()))?;
        let st = vol.state.read();
        Ok(Frozen {
            kind: ObjectKind::Volume,
            volume_id: vol.id,
            volume: vol.name.clone(),
            size_bytes: st.size_bytes,
            map: st.map.clone(),
        })
    }

    /// Mapped (non-hole) ranges of the volume or snapshot `name`, coalesced
    /// and ascending. Everything outside them reads as zeros.
    pub fn mapped_ranges(&self, name: &str) -> Result<Vec<ByteRange>> {
        Ok(mapped_ranges(&self.freeze(name)?.map))
    }

    /// The ranges that differ between `from` and `to`: two snapshots of one
    /// volume, or a snapshot and the volume's present state (like EBS
    /// ListChangedBlocks or `rbd diff`). A range counts as changed when it
    /// was rewritten, even with the same bytes. Errors with
    /// [`Error::Unrelated`] when the two belong to different volumes.
    pub fn diff(&self, from: &str, to: &str) -> Result<Vec<ByteRange>> {
        let (a, b) = (self.freeze(from)?, self.freeze(to)?);
        if a.volume_id != b.volume_id {
            return Err(Error::Unrelated {
                a: from.to_string(),
                b: to.to_string(),
            });
        }
        let mut changed = diff_maps(&a.map, &b.map);
        // A volume that grew: the new space reads as zeros and is unchanged
        // unless written, which the maps already show.
        changed.retain(|r| r.len_bytes > 0);
        Ok(changed)
    }

    /// Space used by every volume and snapshot, shared and exclusive.
    /// Linear in the total number of extents; holds no lock while it walks.
    pub fn space_usage(&self) -> Result<Vec<SpaceUsage>> {
        let mut names: Vec<String> = self.volumes().into_iter().map(|v| v.name).collect();
        names.extend(self.snapshots().into_iter().map(|s| s.name));
        let mut frozen = Vec::with_capacity(names.len());
        for name in names {
            match self.freeze(&name) {
                Ok(f) => frozen.push((name, f)),
                // Deleted while we listed: not part of the answer.
                Err(Error::NotFound(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        // record -> (stored bytes, how many maps reference it)
        let mut records: HashMap<(u64, u32), (u64, u32)> = HashMap::new();
        let mut per_map: Vec<Vec<(u64, u32)>> = Vec::with_capacity(frozen.len());
        for (_, f) in &frozen {
            // Each map counts once per record, however many runs it has in it.
            let mut keys: Vec<((u64, u32), u64)> = f
                .map
                .iter()
                .map(|(_, e)| {
                    let stored = RECORD_HEADER_BYTES as u64 + u64::from(e.stored_len);
                    (e.record_key(), stored)
                })
                .collect();
            keys.sort_unstable();
            keys.dedup_by_key(|(k, _)| *k);
            for (k, stored) in &keys {
                records.entry(*k).or_insert((*stored, 0)).1 += 1;
            }
            per_map.push(keys.into_iter().map(|(k, _)| k).collect());
        }
        let mut out = Vec::with_capacity(frozen.len());
        for ((name, f), keys) in frozen.into_iter().zip(per_map) {
            let (mut exclusive_bytes, mut shared_bytes) = (0u64, 0u64);
            for k in keys {
                let (bytes, refs) = records[&k];
                if refs == 1 {
                    exclusive_bytes += bytes;
                } else {
                    shared_bytes += bytes;
                }
            }
            let mapped_bytes = f
                .map
                .iter()
                .map(|(_, e)| u64::from(e.len_sectors) * SECTOR_BYTES)
                .sum();
            out.push(SpaceUsage {
                name,
                kind: f.kind,
                volume: f.volume,
                size_bytes: f.size_bytes,
                mapped_bytes,
                exclusive_bytes,
                shared_bytes,
            });
        }
        Ok(out)
    }

    /// Reads every mapped byte of the volume or snapshot `name`, checking
    /// each record's crc32c, and reports every bad range found (it never
    /// stops at the first, and never repairs). `on_progress` gets the guest
    /// bytes checked so far, for progress bars.
    pub async fn verify(
        &self,
        name: &str,
        mut on_progress: impl FnMut(u64),
    ) -> Result<VerifyReport> {
        use futures::StreamExt;
        let kind = self.kind_of(name)?;
        let ranges = self.mapped_ranges(name)?;
        let chunks: Vec<ByteRange> = ranges
            .iter()
            .flat_map(|r| {
                (r.offset_bytes..r.end_bytes())
                    .step_by(VERIFY_CHUNK_BYTES as usize)
                    .map(move |at| ByteRange {
                        offset_bytes: at,
                        len_bytes: VERIFY_CHUNK_BYTES.min(r.end_bytes() - at),
                    })
            })
            .collect();
        let (volume, snapshot) = match kind {
            ObjectKind::Volume => (Some(self.volume(name)?), None),
            ObjectKind::Snapshot => (None, Some(self.snapshot(name)?)),
        };
        let read = |c: ByteRange| {
            let (volume, snapshot) = (volume.clone(), snapshot.clone());
            async move {
                let mut buf = vec![0u8; c.len_bytes as usize];
                let res = match (&volume, &snapshot) {
                    (Some(v), _) => v.read_into(c.offset_bytes, &mut buf).await,
                    (_, Some(s)) => s.read_into(c.offset_bytes, &mut buf).await,
                    _ => unreachable!("one of the two is set"),
                };
                (c, res)
            }
        };
        let mut report = VerifyReport {
            name: name.to_string(),
            kind,
            checked_bytes: 0,
            errors: Vec::new(),
        };
        let mut reads = futures::stream::iter(chunks)
            .map(read)
            .buffered(VERIFY_READS_IN_FLIGHT);
        while let Some((chunk, res)) = reads.next().await {
            report.checked_bytes += chunk.len_bytes;
            match res {
                Ok(()) => {}
                Err(
                    e @ (Error::Checksum { .. }
                    | Error::CorruptExtent { .. }
                    | Error::SegmentMissing { .. }
                    | Error::Io { .. }
                    | Error::ObjectNotFound(_)
                    | Error::ObjectStore(_)),
                ) => report.errors.push(VerifyError {
                    range: chunk,
                    error: e.to_string(),
                }),
                Err(other) => return Err(other),
            }
            on_progress(report.checked_bytes);
        }
        Ok(report)
    }

    /// Which kind of object `name` is.
    pub fn kind_of(&self, name: &str) -> Result<ObjectKind> {
        Ok(self.freeze(name)?.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(segment_id: u64, record_offset: u32, len_sectors: u32, skip: u8) -> Extent {
        Extent {
            segment_id,
            record_offset,
            stored_len: 4096,
            payload_crc: 0,
            len_sectors,
            skip_sectors: skip,
            record_sectors: 8,
            flags: 0,
        }
    }

    fn r(offset_sectors: u64, len_sectors: u64) -> ByteRange {
        ByteRange {
            offset_bytes: offset_sectors * SECTOR_BYTES,
            len_bytes: len_sectors * SECTOR_BYTES,
        }
    }

    #[test]
    fn identical_maps_have_no_diff() {
        let mut a = ExtentMap::new();
        a.insert(0, ext(1, 0, 8, 0));
        a.insert(100, ext(1, 4096, 8, 0));
        assert!(diff_maps(&a, &a.clone()).is_empty());
    }

    #[test]
    fn overwrite_hole_and_punch_show_up() {
        let mut a = ExtentMap::new();
        a.insert(0, ext(1, 0, 8, 0));
        a.insert(16, ext(1, 4096, 8, 0));
        let mut b = a.clone();
        // Overwrite sectors 2..4 of the first record.
        b.insert(2, ext(2, 0, 2, 0));
        // Write into a hole.
        b.insert(40, ext(2, 512, 8, 0));
        // Punch the second record.
        b.punch(16, 24);
        assert_eq!(diff_maps(&a, &b), vec![r(2, 2), r(16, 8), r(40, 8)]);
        // Symmetric.
        assert_eq!(diff_maps(&b, &a), vec![r(2, 2), r(16, 8), r(40, 8)]);
    }

    #[test]
    fn split_runs_of_one_record_are_unchanged() {
        // The same record seen as one run or as two pieces with skips reads
        // the same bytes: no change.
        let mut a = ExtentMap::new();
        a.insert(0, ext(1, 0, 8, 0));
        let mut b = ExtentMap::new();
        b.insert(0, ext(1, 0, 3, 0));
        b.insert(3, ext(1, 0, 5, 3));
        assert!(diff_maps(&a, &b).is_empty());
        // Shifted within the record: changed.
        let mut c = ExtentMap::new();
        c.insert(0, ext(1, 0, 3, 0));
        c.insert(3, ext(1, 0, 5, 2));
        assert_eq!(diff_maps(&a, &c), vec![r(3, 5)]);
    }

    #[test]
    fn mapped_ranges_coalesce_adjacent_runs() {
        let mut a = ExtentMap::new();
        a.insert(0, ext(1, 0, 8, 0));
        a.insert(8, ext(2, 0, 8, 0));
        a.insert(32, ext(3, 0, 8, 0));
        assert_eq!(mapped_ranges(&a), vec![r(0, 16), r(32, 8)]);
    }
}
