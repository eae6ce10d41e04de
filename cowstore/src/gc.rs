//! The segment cleaner: frees segments no map references and relocates the
//! live records out of mostly-dead ones.
//!
//! Safety argument (what the GC proptest exercises):
//! 1. Every volume is checkpointed first, so every sealed segment lies behind
//!    every replay start: no future recovery reads a candidate's records as
//!    log, only through a map.
//! 2. Liveness is the union of the records referenced by every map (all
//!    volumes, all snapshots). A candidate is no longer written to, and a
//!    map only ever gains references to new records, so references into a
//!    candidate can only shrink after this point: the computed live set is
//!    a superset of what anyone can read later.
//! 3. Live records are copied verbatim (checksums and all) into a GC segment
//!    and fsynced before any map points at the copy.
//! 4. Maps are rewritten under the relocation lock (no clone can be cut from
//!    a half-rewritten set), then checkpointed; only then are the old
//!    segments removed, catalog first. A crash anywhere leaves either the
//!    old location or the new one referenced and present.
//! 5. A candidate whose live records cannot all be read back intact is
//!    never deleted: the corruption is reported instead.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::catalog::{Catalog, Liveness, SegmentMeta};
use crate::checkpoint::sync_dir;
use crate::error::{Error, Result};
use crate::record::{RecordHeader, RecordKind, RECORD_HEADER_BYTES};
use crate::segment::{SegmentFile, SegmentKind, SEGMENT_HEADER_BYTES};
use crate::store::{remove_if_exists, StoreInner};

/// What one cleaner pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Sealed segments examined.
    pub segments_examined: usize,
    /// Segments deleted because nothing referenced them.
    pub segments_deleted: usize,
    /// Segments emptied by relocating their live records, then deleted.
    pub segments_cleaned: usize,
    /// Record bytes copied into GC segments.
    pub bytes_relocated: u64,
    /// Segment file bytes freed: given back to the file system, or kept in
    /// the pool for reuse (`segments_pooled` of the files).
    pub bytes_freed: u64,
    /// Freed segment files kept for reuse instead (see `pool.rs`).
    pub segments_pooled: usize,
    /// Segments worth cleaning left for a later pass: relocating them too
    /// would have passed [`crate::StoreConfig::gc_max_relocate_bytes`].
    pub segments_deferred: usize,
    /// Segments kept because a live record in them failed verification.
    pub corrupt: Vec<String>,
}

/// What a pass may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcMode {
    /// Free dead segments and relocate the live records of segments under
    /// [`crate::StoreConfig::gc_live_threshold_pct`].
    Full,
    /// Only free segments nothing references: no relocation, so a pass
    /// costs the checkpoints and the liveness count, not disk bandwidth.
    /// What refills the segment pool while guests write hard.
    DeadOnly,
    /// As `Full`, but relocation stops (the rest is deferred, as over the
    /// relocation budget) once guests have written [`YIELD_AFTER_BYTES`]
    /// since the pass began: a background pass that started in a lull
    /// gives the disk back when the writes resume. At least one segment
    /// is cleaned, so passes still make progress. What cowstored's cleaner
    /// runs unless space is short.
    Yielding,
}

/// Guest writes during a [`GcMode::Yielding`] pass after which it stops
/// relocating. A pass relocating its 256 MiB budget took 5 s while a guest
/// wrote 128 KiB requests at 2.5 GB/s (docs/performance.md); this is about
/// a tenth of a second of such writing.
pub const YIELD_AFTER_BYTES: u64 = 256 << 20;

/// Whether a [`GcMode::Yielding`] pass stops relocating now: guests have
/// started `started` log segments of `segment_bytes` since it began, and it
/// has cleaned `cleaned` segments (at least one always goes).
fn should_yield(mode: GcMode, started: u64, segment_bytes: u64, cleaned: usize) -> bool {
    mode == GcMode::Yielding
        && cleaned > 0
        && started.saturating_mul(segment_bytes) >= YIELD_AFTER_BYTES
}

pub(crate) fn run(s: &Arc<StoreInner>, mode: GcMode) -> Result<GcReport> {
    let _admin = s.admin.lock();
    let segments_at_start = s.log_segments_started.load(Ordering::Relaxed);
    let mut report = GcReport::default();
    // Space held for reuse goes back first when space is short.
    s.pool.release_if_short()?;

    // 1. Every volume checkpointed: sealed segments are behind replay.
    let volumes: Vec<_> = s.volumes.read().values().cloned().collect();
    for v in &volumes {
        s.checkpoint_volume(v)?;
    }

    // Candidates: sealed log segments behind their volume's checkpoint, log
    // segments of deleted volumes, and GC segments no longer appended to.
    let replay_start: HashMap<u64, u64> = s
        .volumes
        .read()
        .values()
        .map(|v| {
            (
                v.id,
                v.state.read().ckpt_position.map_or(0, |p| p.chain_index),
            )
        })
        .collect();
    let gc_tail_id = s.gc_tail.lock().as_ref().map(|(seg, _)| seg.id);
    let metas: Vec<SegmentMeta> = Catalog::all(&s.catalog.segments)?;
    let candidates: HashMap<u64, Arc<SegmentFile>> = metas
        .iter()
        .filter(|m| match m.kind {
            SegmentKind::Log => replay_start
                .get(&m.volume_id)
                .is_none_or(|&start| m.chain_index < start),
            SegmentKind::Gc => Some(m.id) != gc_tail_id,
        })
        .filter_map(|m| s.segments.read().get(&m.id).cloned().map(|f| (m.id, f)))
        .collect();
    report.segments_examined = candidates.len();
    if candidates.is_empty() {
        return Ok(report);
    }

    // 2. Liveness: records in candidates referenced by any map.
    let mut maps = Vec::new();
    for v in s.volumes.read().values() {
        maps.push(v.state.read().map.clone());
    }
    for snap in s.snapshots.read().values() {
        maps.push(snap.map.read().clone());
    }
    let mut live: HashMap<u64, HashMap<u32, u32>> = HashMap::new();
    for map in &maps {
        for (_, e) in map.iter() {
            if candidates.contains_key(&e.segment_id) {
                live.entry(e.segment_id)
                    .or_default()
                    .insert(e.record_offset, e.stored_len);
            }
        }
    }
    drop(maps);

    // 3. Classify.
    let threshold = match mode {
        GcMode::Full | GcMode::Yielding => u64::from(s.config.gc_live_threshold_pct.min(100)),
        GcMode::DeadOnly => 0,
    };
    let mut dead = Vec::new();
    let mut to_clean = Vec::new();
    for (&id, seg) in &candidates {
        let file_bytes = seg.len_bytes()?;
        let total = file_bytes.saturating_sub(SEGMENT_HEADER_BYTES);
        let records = live.get(&id);
        let live_bytes: u64 = records.map_or(0, |r| {
            r.values()
                .map(|&len| RECORD_HEADER_BYTES as u64 + u64::from(len))
                .sum()
        });
        Catalog::put(
            &s.catalog.liveness,
            id,
            &Liveness {
                live_bytes,
                total_bytes: total,
            },
        )?;
        if live_bytes == 0 {
            dead.push((id, file_bytes));
        } else if live_bytes * 100 < total * threshold {
            to_clean.push((id, file_bytes, live_bytes, total));
        }
    }
    // Emptiest first, and no more live bytes than one pass may move: a pass
    // relocating scattered small records ran 20 s for 1.1 GB while guests
    // wrote, and held off the dead-only passes that keep the segment pool
    // fed (docs/performance.md). The rest waits for the next pass. At
    // least one segment goes, so every pass makes progress.
    to_clean.sort_by_key(|&(id, _, live, total)| (live.saturating_mul(1000) / total.max(1), id));
    let budget = s.config.gc_max_relocate_bytes;
    let mut moved = 0u64;
    let keep = to_clean
        .iter()
        .take_while(|&&(_, _, live, _)| {
            let first = moved == 0;
            moved = moved.saturating_add(live);
            first || budget == 0 || moved <= budget
        })
        .count();
    report.segments_deferred = to_clean.len() - keep;
    to_clean.truncate(keep);

    // 4. Relocate live records of the segments to clean: only the live
    // ranges are read, a few large reads per segment, and the copies go out
    // in large writes (see `read_live_records` and `GcWriter`).
    let mut moves: HashMap<(u64, u32), (u64, u32)> = HashMap::new();
    let mut cleaned = Vec::new();
    let mut out = GcWriter::default();
    let mut read_buf = Vec::new();
    for (done, &(id, file_bytes, ..)) in to_clean.iter().enumerate() {
        let started = s
            .log_segments_started
            .load(Ordering::Relaxed)
            .saturating_sub(segments_at_start);
        if should_yield(mode, started, s.segment_bytes, done) {
            report.segments_deferred += to_clean.len() - done;
            break;
        }
        let seg = &candidates[&id];
        let wanted = &live[&id];
        let mut found = 0usize;
        read_live_records(seg, file_bytes, wanted, &mut read_buf, |at, record| {
            let to = out.push(s, record)?;
            moves.insert((id, at), to);
            found += 1;
            report.bytes_relocated += record.len() as u64;
            Ok(())
        })?;
        if found == wanted.len() {
            cleaned.push((id, file_bytes));
        } else {
            let missing = wanted.len() - found;
            let why =
                format!("segment {id}: {missing} live record(s) failed verification; segment kept");
            tracing::error!("{why}");
            report.corrupt.push(why);
            moves.retain(|(seg, _), _| *seg != id);
        }
    }
    let written = out.finish(s)?;
    for seg in &written {
        seg.sync()?;
    }

    // 5. Point every map at the copies.
    let mut changed_snapshots = Vec::new();
    if !moves.is_empty() {
        let _reloc = s.relocation.write();
        for v in s.volumes.read().values() {
            let mut st = v.state.write();
            st.map.relocate(&moves);
            // The checkpoint this pass writes next must not be skipped as
            // current: it is what lets the old segments go.
            st.map_generation += 1;
        }
        for snap in s.snapshots.read().values() {
            if snap.map.write().relocate(&moves) > 0 {
                changed_snapshots.push(snap.clone());
            }
        }
    }

    // 6. Make the rewritten maps durable.
    if !moves.is_empty() {
        let volumes: Vec<_> = s.volumes.read().values().cloned().collect();
        for v in &volumes {
            s.checkpoint_volume(v)?;
        }
        for snap in changed_snapshots {
            if snap.ckpt_written.load(Ordering::Acquire) {
                snap.write_checkpoint(&s.ckpt_dir, true)?;
            }
        }
    }

    // Segments that live only in the object store cannot be cleaned here,
    // but once nothing references them they leave the catalog (object GC
    // then deletes the object).
    if s.tier.is_some() {
        let mut referenced: HashSet<u64> = HashSet::new();
        for v in s.volumes.read().values() {
            referenced.extend(v.state.read().map.iter().map(|(_, e)| e.segment_id));
        }
        for snap in s.snapshots.read().values() {
            referenced.extend(snap.map.read().iter().map(|(_, e)| e.segment_id));
        }
        let local = s.segments.read();
        for m in &metas {
            if m.remote_bytes.is_some() && !local.contains_key(&m.id) && !referenced.contains(&m.id)
            {
                Catalog::remove(&s.catalog.segments, m.id)?;
                s.remote.write().remove(&m.id);
                report.segments_deleted += 1;
            }
        }
    }

    // 7. Remove what nothing references any more: catalog first. The
    // candidates' handles go first, so that the pool sees whether anyone
    // else still holds a file.
    drop(candidates);
    let gone: Vec<(u64, u64)> = dead.iter().chain(cleaned.iter()).copied().collect();
    for &(id, _) in &gone {
        Catalog::remove(&s.catalog.segments, id)?;
        Catalog::remove(&s.catalog.liveness, id)?;
    }
    s.catalog.flush()?;
    for &(id, file_bytes) in &gone {
        let removed = s.segments.write().remove(&id);
        if let Some(seg) = removed {
            // Kept for reuse when the pool takes it (see `pool.rs`); the
            // file system gets it back otherwise.
            if s.pool.give(&seg) {
                report.segments_pooled += 1;
            } else {
                remove_if_exists(&seg.path)?;
            }
        }
        report.bytes_freed += file_bytes;
    }
    if !gone.is_empty() {
        sync_dir(&s.segments_dir)?;
    }
    report.segments_deleted += dead.len();
    report.segments_cleaned = cleaned.len();
    // GC segments are sealed at the end of a pass: they go to the object
    // store like any sealed segment.
    let sealed_gc = s.gc_tail.lock().take();
    if let Some((seg, end)) = sealed_gc {
        s.segment_sealed(seg.id);
        s.io.finished(&seg, end);
    }
    tracing::info!(?report, "gc pass done");
    Ok(report)
}

/// Live records closer than this are read together, the gap with them: one
/// read of a few dead kilobytes costs less than a second disk round trip.
const READ_GAP_BYTES: u64 = 64 << 10;

/// The largest read `read_live_records` makes (unless one record is larger),
/// which bounds its buffer.
const READ_SPAN_BYTES: u64 = 4 << 20;

/// How much relocated data `GcWriter` collects before writing it.
const WRITE_CHUNK_BYTES: usize = 1 << 20;

/// Reads the records of `seg` at the offsets `wanted` names (offset ->
/// stored payload length, from the maps), verifies each (header, length,
/// payload checksum) and hands it, header and all, to `visit`. Neighbouring
/// records are read together, up to [`READ_SPAN_BYTES`] per read, so that
/// a segment whose live records are scattered 4 KiB writes costs a few
/// large reads instead of a read per record. A record that fails
/// verification, or lies past the end of the file, is skipped: the caller
/// sees fewer records than it wanted and keeps the segment.
fn read_live_records(
    seg: &SegmentFile,
    file_bytes: u64,
    wanted: &HashMap<u32, u32>,
    buf: &mut Vec<u8>,
    mut visit: impl FnMut(u32, &[u8]) -> Result<()>,
) -> Result<()> {
    let record_end =
        |at: u32, len: u32| u64::from(at) + RECORD_HEADER_BYTES as u64 + u64::from(len);
    let mut records: Vec<(u32, u32)> = wanted
        .iter()
        .map(|(&at, &len)| (at, len))
        .filter(|&(at, len)| {
            u64::from(at) >= SEGMENT_HEADER_BYTES && record_end(at, len) <= file_bytes
        })
        .collect();
    records.sort_unstable();
    let mut first = 0;
    while first < records.len() {
        // One span: records while the gap to the next is small and the
        // span stays under its limit.
        let span_start = u64::from(records[first].0);
        let mut span_end = record_end(records[first].0, records[first].1);
        let mut last = first + 1;
        while let Some(&(at, len)) = records.get(last) {
            let end = record_end(at, len);
            if u64::from(at) > span_end + READ_GAP_BYTES || end - span_start > READ_SPAN_BYTES {
                break;
            }
            span_end = span_end.max(end);
            last += 1;
        }
        // At most READ_SPAN_BYTES, or one record (bounded by the segment).
        buf.resize((span_end - span_start) as usize, 0);
        seg.file
            .read_exact_at(buf, span_start)
            .map_err(|e| Error::io(&seg.path, e))?;
        for &(at, len) in &records[first..last] {
            let from = (u64::from(at) - span_start) as usize;
            let to = (record_end(at, len) - span_start) as usize;
            let bytes = &buf[from..to];
            let intact = RecordHeader::decode(&bytes[..RECORD_HEADER_BYTES]).is_ok_and(|h| {
                h.kind != RecordKind::Seal
                    && h.stored_len == len
                    && h.check_payload(&bytes[RECORD_HEADER_BYTES..]).is_ok()
            });
            if intact {
                visit(at, bytes)?;
            }
        }
        first = last;
    }
    Ok(())
}

/// Appends verbatim records to the store's GC segment, starting a new one
/// when the next record would not fit, and writes them in chunks of
/// [`WRITE_CHUNK_BYTES`] (a write per 4 KiB record made relocation a
/// fraction of the disk's copy rate).
#[derive(Default)]
struct GcWriter {
    /// Records not written yet; they start at the tail's offset.
    pending: Vec<u8>,
    /// Every GC segment written to in this pass, to be fsynced.
    written: Vec<Arc<SegmentFile>>,
}

impl GcWriter {
    /// Queues one record; returns where it will live (segment, offset).
    fn push(&mut self, s: &StoreInner, record: &[u8]) -> Result<(u64, u32)> {
        let mut tail = s.gc_tail.lock();
        let fits = tail.as_ref().is_some_and(|(_, off)| {
            off + (self.pending.len() + record.len()) as u64 <= s.segment_bytes
        });
        if !fits {
            self.write_pending(&mut tail)?;
            let seg = s.new_segment(SegmentKind::Gc, 0, 0, false)?;
            // The full one is complete: its pages leave the page cache once
            // written back, as a sealed log segment's do (relocated records
            // are read through the maps, rarely; a pass may copy gigabytes).
            if let Some((done, end)) = tail.replace((seg, SEGMENT_HEADER_BYTES)) {
                s.io.finished(&done, end);
            }
        }
        let Some((seg, off)) = tail.as_ref() else {
            return Err(Error::Closed);
        };
        let at = off + self.pending.len() as u64;
        // Only a record larger than a whole (tiny, test-sized) segment may
        // pass its end, alone in a fresh segment, as log records may.
        debug_assert!(at == SEGMENT_HEADER_BYTES || at + record.len() as u64 <= s.segment_bytes);
        let id = seg.id;
        self.pending.extend_from_slice(record);
        if self.pending.len() >= WRITE_CHUNK_BYTES {
            self.write_pending(&mut tail)?;
        }
        // Segments are at most MAX_SEGMENT_BYTES (< 4 GiB), checked at open.
        Ok((id, at as u32))
    }

    /// Writes what is pending at the tail's offset and moves the tail past it.
    fn write_pending(&mut self, tail: &mut Option<(Arc<SegmentFile>, u64)>) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let Some((seg, off)) = tail.as_mut() else {
            return Err(Error::Closed);
        };
        seg.file
            .write_all_at(&self.pending, *off)
            .map_err(|e| Error::io(&seg.path, e))?;
        *off += self.pending.len() as u64;
        self.pending.clear();
        if !self.written.iter().any(|w| Arc::ptr_eq(w, seg)) {
            self.written.push(seg.clone());
        }
        Ok(())
    }

    /// Writes the rest; returns the segments written to.
    fn finish(mut self, s: &StoreInner) -> Result<Vec<Arc<SegmentFile>>> {
        self.write_pending(&mut s.gc_tail.lock())?;
        Ok(self.written)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use crate::catalog::Catalog;
    use crate::record::RECORD_HEADER_BYTES;
    use crate::segment::SegmentKind;
    use crate::{Store, StoreConfig};
    use futures::executor::block_on;

    /// The segments a pass writes relocated records into leave the page
    /// cache like sealed log segments do (they used to stay cached until
    /// reclaim). In the target directory: tmpfs has no writeback.
    #[test]
    fn gc_segments_leave_the_page_cache() {
        let base = concat!(env!("CARGO_MANIFEST_DIR"), "/../target");
        std::fs::create_dir_all(base).unwrap();
        let dir = tempfile::tempdir_in(base).unwrap();
        let config = StoreConfig {
            segment_bytes: 1 << 20,
            drop_behind_bytes: Some(256 << 10),
            ..StoreConfig::default()
        };
        let store = Store::create(dir.path().join("s"), config).unwrap();
        let vol = store.create_volume("v", 16 << 20).unwrap();
        // Incompressible 64 KiB writes over 8 MiB, then three of every four
        // overwritten: the first segments are a quarter live, below the
        // cleaner's threshold, so a pass relocates their live records.
        let data = crate::record::tests::random_bytes(64 << 10);
        let chunk = data.len() as u64;
        for i in 0..128u64 {
            block_on(vol.write(i * chunk, &data)).unwrap();
        }
        for i in (0..128u64).filter(|i| i % 4 != 0) {
            block_on(vol.write(i * chunk, &data)).unwrap();
        }
        block_on(vol.flush()).unwrap();
        let report = store.gc().unwrap();
        assert!(report.bytes_relocated > 0, "{report:?}");
        let s = &store.inner;
        s.io.settle_behind();
        let metas: Vec<crate::catalog::SegmentMeta> = Catalog::all(&s.catalog.segments).unwrap();
        let gc_segments: Vec<_> = metas
            .into_iter()
            .filter(|m| m.kind == SegmentKind::Gc)
            .filter_map(|m| s.segments.read().get(&m.id).cloned())
            .collect();
        assert!(!gc_segments.is_empty());
        for seg in gc_segments {
            let len = seg.len_bytes().unwrap() as usize;
            let resident = crate::io::tests::resident_pages(&seg.file, len);
            let pages = len.div_ceil(4096);
            assert!(resident * 10 < pages, "{resident} of {pages} pages cached");
        }
        // The data still reads back through the relocated records.
        for i in 0..128u64 {
            assert!(block_on(vol.read(i * chunk, chunk)).unwrap() == data);
        }
    }

    /// A store with `segment_bytes` segments and one volume of `volume_bytes`.
    fn store_with_volume(
        dir: &std::path::Path,
        segment_bytes: u64,
        volume_bytes: u64,
    ) -> (Store, crate::Volume) {
        let config = StoreConfig {
            segment_bytes,
            ..StoreConfig::default()
        };
        let store = Store::create(dir.join("s"), config).unwrap();
        let vol = store.create_volume("v", volume_bytes).unwrap();
        (store, vol)
    }

    /// Writes `records` incompressible 64 KiB records at 0, 64 KiB, ...,
    /// then overwrites those `overwrite` picks: what stays live is what it
    /// leaves.
    fn write_then_overwrite(
        vol: &crate::Volume,
        records: u64,
        overwrite: impl Fn(u64) -> bool,
    ) -> Vec<u8> {
        let data = crate::record::tests::random_bytes(64 << 10);
        let chunk = data.len() as u64;
        for i in 0..records {
            block_on(vol.write(i * chunk, &data)).unwrap();
        }
        for i in (0..records).filter(|&i| overwrite(i)) {
            block_on(vol.write(i * chunk, &data)).unwrap();
        }
        block_on(vol.flush()).unwrap();
        data
    }

    /// A live run longer than one read (`READ_SPAN_BYTES`) and live records
    /// further apart than `READ_GAP_BYTES` all move, and read back.
    #[test]
    fn long_live_runs_and_wide_gaps_relocate_intact() {
        let dir = tempfile::tempdir().unwrap();
        let (store, vol) = store_with_volume(dir.path(), 16 << 20, 32 << 20);
        // The first segment keeps records 0..96 (6 MiB in a row) and every
        // eighth one after them (448 KiB apart): 45% live.
        let data = write_then_overwrite(&vol, 256, |i| i >= 96 && i % 8 != 0);
        let live: usize = 96 + 20;
        let report = store.gc().unwrap();
        assert!(report.segments_cleaned >= 1, "{report:?}");
        assert!(report.corrupt.is_empty(), "{report:?}");
        let record_bytes = (RECORD_HEADER_BYTES + data.len()) as u64;
        assert!(
            report.bytes_relocated >= live as u64 * record_bytes,
            "{report:?}"
        );
        for i in 0..256u64 {
            assert!(
                block_on(vol.read(i << 16, 64 << 10)).unwrap() == data,
                "record {i}"
            );
        }
    }

    /// A live record that fails its checksum keeps its segment (its other
    /// records are not lost either), is reported, and reads as an error.
    #[test]
    fn a_corrupt_live_record_keeps_its_segment_and_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (store, vol) = store_with_volume(dir.path(), 1 << 20, 16 << 20);
        let data = write_then_overwrite(&vol, 128, |i| i % 4 != 0);
        let extent = vol.inner.state.read().map.iter().next().unwrap().1;
        let seg = store.inner.segments.read()[&extent.segment_id].clone();
        let at = u64::from(extent.record_offset) + RECORD_HEADER_BYTES as u64 + 100;
        let mut byte = [0u8];
        seg.file.read_exact_at(&mut byte, at).unwrap();
        seg.file.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
        drop(seg);

        let report = store.gc().unwrap();
        assert!(report.segments_cleaned >= 1, "{report:?}");
        assert_eq!(report.corrupt.len(), 1, "{report:?}");
        let id = extent.segment_id;
        assert!(
            report.corrupt[0].contains(&format!("segment {id}:")),
            "{report:?}"
        );
        assert!(store.inner.segments.read().contains_key(&id));
        assert!(block_on(vol.read(0, 64 << 10)).is_err());
        for i in 1..128u64 {
            assert!(
                block_on(vol.read(i << 16, 64 << 10)).unwrap() == data,
                "record {i}"
            );
        }
        // A second pass finds it again and still keeps the segment.
        let again = store.gc().unwrap();
        assert_eq!(again.corrupt.len(), 1, "{again:?}");
        assert!(store.inner.segments.read().contains_key(&id));
    }

    #[test]
    fn a_yielding_pass_stops_once_guests_wrote_enough_but_cleans_one_segment() {
        use super::{should_yield, GcMode, YIELD_AFTER_BYTES};
        let seg = 32 << 20;
        let enough = YIELD_AFTER_BYTES / seg;
        assert!(should_yield(GcMode::Yielding, enough, seg, 1));
        assert!(!should_yield(GcMode::Yielding, enough - 1, seg, 1));
        assert!(!should_yield(GcMode::Yielding, enough * 10, seg, 0));
        assert!(!should_yield(GcMode::Full, enough * 10, seg, 5));
        assert!(!should_yield(GcMode::DeadOnly, enough * 10, seg, 5));
        assert!(!should_yield(GcMode::Yielding, u64::MAX, u64::MAX, 0));
    }
}
