//! Opening a store: load checkpoints, replay each volume's log tail, and
//! bring the directory back to a state every invariant holds in.
//!
//! Replay of one volume starts at its checkpoint's log position and applies
//! records in order while they verify (magic, header crc32c, payload crc32c,
//! the volume's id, and consecutive sequence numbers). At a seal it moves to
//! the next segment of the chain. At the first record that does not verify
//! it stops: that record was never acknowledged by a flush, and neither was
//! anything after it, so the log is cut there (prefix semantics). Recovery
//! time is therefore proportional to the log written since the checkpoint.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::catalog::{Catalog, NameTarget, SegmentMeta, SnapshotMeta, VolumeMeta};
use crate::checkpoint::{checkpoint_path, sync_dir, Checkpoint, CheckpointKind, LogPosition};
use crate::error::{Error, Result};
use crate::extent_map::{Extent, ExtentMap};
use crate::record::{RecordKind, FLAG_CONTINUED, LAYOUT_FLAGS, RECORD_HEADER_BYTES};
use crate::segment::{segment_path, ScanStep, SegmentFile, SegmentKind, SEGMENT_HEADER_BYTES};
use crate::snapshot::SnapshotInner;
use crate::store::{now_unix_s, remove_if_exists, StoreInner};
use crate::volume::{LogTail, VolState, VolumeInner};

/// What the last open had to do to recover.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Volumes loaded.
    pub volumes: usize,
    /// Log bytes replayed after the volumes' checkpoints.
    pub log_bytes_replayed: u64,
}

pub(crate) fn recover(s: &Arc<StoreInner>) -> Result<RecoveryStats> {
    let mut stats = RecoveryStats::default();
    let segment_metas: Vec<SegmentMeta> = Catalog::all(&s.catalog.segments)?;
    let volume_metas: Vec<VolumeMeta> = Catalog::all(&s.catalog.volumes)?;
    let snapshot_metas: Vec<SnapshotMeta> = Catalog::all(&s.catalog.snapshots)?;
    let live_volumes: HashSet<u64> = volume_metas.iter().map(|m| m.id).collect();

    // Open every segment the catalog knows. A log segment of a live volume
    // whose file is missing or has no valid header was being created when
    // the process died: it holds nothing, and is recreated below if needed.
    {
        let mut table = s.segments.write();
        for m in &segment_metas {
            if let Some(bytes) = m.remote_bytes {
                s.remote.write().insert(m.id, bytes);
            }
            match SegmentFile::open(&s.segments_dir, m.id) {
                Ok((f, _)) => {
                    table.insert(m.id, Arc::new(f));
                }
                // In the object store only: read through the cache.
                Err(Error::SegmentMissing { .. }) if m.remote_bytes.is_some() => {}
                Err(e @ Error::SegmentMissing { .. }) | Err(e @ Error::CorruptSegment { .. }) => {
                    tracing::warn!("segment {}: {e}", m.id);
                }
                Err(e) => return Err(e),
            }
        }
    }
    remove_orphan_segment_files(s, &segment_metas)?;

    // Snapshots with their own checkpoint.
    let mut snapshot_maps: HashMap<u64, Arc<SnapshotInner>> = HashMap::new();
    for m in &snapshot_metas {
        let path = checkpoint_path(&s.ckpt_dir, CheckpointKind::Snapshot, m.id);
        if path.exists() {
            let c = Checkpoint::read(&path)?;
            snapshot_maps.insert(m.id, Arc::new(SnapshotInner::new(m.clone(), c.map, true)));
        }
    }

    // Log segments by volume, in chain order.
    let mut chains: HashMap<u64, BTreeMap<u64, u64>> = HashMap::new();
    for m in &segment_metas {
        if m.kind == SegmentKind::Log {
            chains
                .entry(m.volume_id)
                .or_default()
                .insert(m.chain_index, m.id);
        }
    }

    let catalog_snaps: HashMap<u64, &SnapshotMeta> =
        snapshot_metas.iter().map(|m| (m.id, m)).collect();
    for meta in &volume_metas {
        let chain = chains.remove(&meta.id).unwrap_or_default();
        let (state, frozen) = replay_volume(s, meta, &chain, &snapshot_maps, &catalog_snaps)?;
        stats.volumes += 1;
        stats.log_bytes_replayed += state.bytes_since_ckpt;
        for snap in frozen {
            if !catalog_snaps.contains_key(&snap.meta.id) {
                // The marker was flushed but the catalog write was lost.
                Catalog::put(&s.catalog.snapshots, snap.meta.id, &snap.meta)?;
                if s.catalog
                    .claim_name(&snap.meta.name, NameTarget::Snapshot(snap.meta.id))
                    .is_err()
                {
                    tracing::warn!(snapshot = %snap.meta.name, "recovered snapshot's name is taken");
                }
            }
            snapshot_maps.insert(snap.meta.id, snap);
        }
        let inner = Arc::new(VolumeInner::new(
            meta.id,
            meta.name.clone(),
            meta.parent_snapshot,
            state,
        ));
        s.volumes.write().insert(meta.id, inner);
    }

    // Catalog snapshots that neither have a checkpoint nor were met in
    // replay were never completed (or were being deleted): drop them.
    for m in &snapshot_metas {
        if !snapshot_maps.contains_key(&m.id) {
            tracing::warn!(snapshot = %m.name, "dropping snapshot that never became durable");
            Catalog::remove(&s.catalog.snapshots, m.id)?;
            if let Ok(Some(NameTarget::Snapshot(id))) = s.catalog.lookup_name(&m.name) {
                if id == m.id {
                    s.catalog.release_name(&m.name)?;
                }
            }
        }
    }
    // Names that point at nothing (a create that died half-way).
    let snapshot_ids: HashSet<u64> = snapshot_maps.keys().copied().collect();
    for (name, target) in s.catalog.all_names()? {
        let alive = match target {
            NameTarget::Volume(id) => live_volumes.contains(&id),
            NameTarget::Snapshot(id) => snapshot_ids.contains(&id),
        };
        if !alive {
            s.catalog.release_name(&name)?;
        }
    }
    for snap in snapshot_maps.values() {
        snap.ready.store(true, std::sync::atomic::Ordering::Release);
    }
    *s.snapshots.write() = snapshot_maps.into_iter().collect();
    remove_orphan_checkpoints(s, &live_volumes, &snapshot_ids)?;
    s.catalog.flush()?;
    Ok(stats)
}

/// Loads one volume: its checkpoint (or its parent snapshot's map, or
/// nothing), then its log from the checkpoint's position. Returns the state
/// and the snapshots frozen from markers met on the way.
fn replay_volume(
    s: &Arc<StoreInner>,
    meta: &VolumeMeta,
    chain: &BTreeMap<u64, u64>,
    snapshot_maps: &HashMap<u64, Arc<SnapshotInner>>,
    catalog_snaps: &HashMap<u64, &SnapshotMeta>,
) -> Result<(VolState, Vec<Arc<SnapshotInner>>)> {
    let ckpt_file = checkpoint_path(&s.ckpt_dir, CheckpointKind::Volume, meta.id);
    let (mut map, mut size_bytes, mut last_seq, start, ckpt_position) = if ckpt_file.exists() {
        let c = Checkpoint::read(&ckpt_file)?;
        (
            c.map,
            c.size_bytes,
            c.seq,
            c.replay_from,
            Some(c.replay_from),
        )
    } else {
        let start = LogPosition {
            chain_index: 0,
            offset: SEGMENT_HEADER_BYTES,
        };
        match meta.parent_snapshot {
            Some(parent) => {
                let snap = snapshot_maps
                    .get(&parent)
                    .ok_or_else(|| Error::CatalogCorrupt {
                        key: format!("volume {}", meta.name),
                        why: format!("parent snapshot {parent} has no checkpoint"),
                    })?;
                let map = snap.map.read().clone();
                (map, snap.meta.size_bytes, 0, start, None)
            }
            None => (ExtentMap::new(), meta.size_bytes, 0, start, None),
        }
    };
    let mut frozen = Vec::new();
    let mut chain_index = start.chain_index;
    let mut offset = start.offset;
    let mut bytes_replayed = 0u64;
    // The write being replayed: its map effects wait until its last record
    // (one without FLAG_CONTINUED) verifies, so a torn write is dropped whole.
    let mut batch: Vec<(RecordKind, u64, Extent)> = Vec::new();
    let mut batch_start: Option<BatchStart> = None;
    let (tail_segment, tail_chain_index, tail_offset) = loop {
        let seg = match chain
            .get(&chain_index)
            .and_then(|id| s.segments.read().get(id).cloned())
        {
            Some(seg) => seg,
            None if batch_start.is_none() => {
                // Nothing was ever durably written here: start the segment anew.
                let seg = recreate_log_segment(
                    s,
                    meta.id,
                    chain_index,
                    chain.get(&chain_index).copied(),
                )?;
                break (seg, chain_index, SEGMENT_HEADER_BYTES);
            }
            None => {
                return Err(Error::CorruptSegment {
                    path: segment_path(
                        &s.segments_dir,
                        chain.get(&chain_index).copied().unwrap_or(0),
                    ),
                    why: format!(
                        "log segment {chain_index} of volume {} is missing mid-write",
                        meta.name
                    ),
                })
            }
        };
        let mut sealed = false;
        let (valid_end, stop) = seg.scan(offset, |at, h, payload| {
            if h.volume_id != meta.id || h.seq != last_seq + 1 {
                return ScanStep::Stop;
            }
            match h.kind {
                RecordKind::Write | RecordKind::Zero | RecordKind::Discard => {
                    if batch_start.is_none() {
                        batch_start = Some(BatchStart {
                            segment: seg.clone(),
                            chain_index,
                            offset: at,
                            seq_before: last_seq,
                        });
                    }
                    let extent = Extent {
                        segment_id: seg.id,
                        record_offset: at as u32,
                        stored_len: h.stored_len,
                        payload_crc: h.payload_crc,
                        len_sectors: h.len_sectors,
                        skip_sectors: 0,
                        record_sectors: h.len_sectors as u8,
                        flags: h.flags & LAYOUT_FLAGS,
                    };
                    batch.push((h.kind, h.lba, extent));
                    if h.flags & FLAG_CONTINUED == 0 {
                        for (kind, lba, extent) in batch.drain(..) {
                            if kind == RecordKind::Write {
                                map.insert(lba, extent);
                            } else {
                                map.punch(lba, lba + u64::from(extent.len_sectors));
                            }
                        }
                        batch_start = None;
                    }
                }
                // Only seals may fall inside a multi-record write.
                _ if batch_start.is_some() && h.kind != RecordKind::Seal => return ScanStep::Stop,
                RecordKind::Resize => size_bytes = size_bytes.max(h.aux),
                RecordKind::Snapshot => {
                    let id = h.aux;
                    if !snapshot_maps.contains_key(&id) {
                        let name = String::from_utf8_lossy(payload).into_owned();
                        let m =
                            catalog_snaps
                                .get(&id)
                                .map(|m| (*m).clone())
                                .unwrap_or(SnapshotMeta {
                                    id,
                                    name,
                                    volume_id: meta.id,
                                    volume_name: meta.name.clone(),
                                    published: false,
                                    seq: h.seq,
                                    size_bytes,
                                    created_unix_s: now_unix_s(),
                                });
                        frozen.push(Arc::new(SnapshotInner::new(m, map.clone(), false)));
                    }
                }
                RecordKind::Seal => sealed = true,
                RecordKind::Pad => {}
            }
            last_seq = h.seq;
            bytes_replayed += h.total_bytes();
            if sealed {
                ScanStep::StopAfter
            } else {
                ScanStep::Continue
            }
        })?;
        if sealed {
            chain_index += 1;
            offset = SEGMENT_HEADER_BYTES;
            continue;
        }
        if let Some(why) = stop {
            tracing::info!(
                volume = %meta.name,
                segment = seg.id,
                offset = valid_end,
                "log ends at an unverifiable record ({why}); cutting the unflushed tail"
            );
        }
        // The log ends here, or where the torn write began.
        let (cut_segment, cut_chain_index, cut_offset) = match batch_start.take() {
            Some(b) => {
                last_seq = b.seq_before;
                (b.segment, b.chain_index, b.offset)
            }
            None => (seg, chain_index, valid_end),
        };
        // Cut the tail and forget any later segments of the chain: nothing
        // in them was acknowledged by a flush.
        cut_segment
            .file
            .set_len(cut_offset)
            .and_then(|()| cut_segment.file.sync_all())
            .map_err(|e| Error::io(&cut_segment.path, e))?;
        for (&later_index, &later_id) in chain.range(cut_chain_index + 1..) {
            tracing::info!(volume = %meta.name, chain_index = later_index, "dropping log segment past the end of the log");
            s.segments.write().remove(&later_id);
            Catalog::remove(&s.catalog.segments, later_id)?;
            remove_if_exists(&segment_path(&s.segments_dir, later_id))?;
        }
        break (cut_segment, cut_chain_index, cut_offset);
    };
    debug_assert!(tail_offset >= SEGMENT_HEADER_BYTES);
    tracing::debug!(volume = %meta.name, bytes_replayed, "volume replayed");
    let state = VolState {
        map,
        size_bytes,
        next_seq: last_seq + 1,
        tail: LogTail {
            segment: tail_segment.clone(),
            chain_index: tail_chain_index,
            offset: tail_offset,
        },
        dirty: Vec::new(),
        durable_seq: last_seq,
        durable_tail: (tail_segment.id, tail_offset),
        ckpt_position,
        bytes_since_ckpt: bytes_replayed,
        map_generation: 0,
        ckpt_generation: None,
    };
    Ok((state, frozen))
}

/// Where the write being replayed began, to cut there if it is torn.
struct BatchStart {
    segment: Arc<SegmentFile>,
    chain_index: u64,
    offset: u64,
    seq_before: u64,
}

fn recreate_log_segment(
    s: &Arc<StoreInner>,
    volume_id: u64,
    chain_index: u64,
    old_id: Option<u64>,
) -> Result<Arc<SegmentFile>> {
    if let Some(old) = old_id {
        s.segments.write().remove(&old);
        Catalog::remove(&s.catalog.segments, old)?;
        remove_if_exists(&segment_path(&s.segments_dir, old))?;
    }
    s.new_segment(SegmentKind::Log, volume_id, chain_index, false)
}

fn remove_orphan_segment_files(s: &StoreInner, metas: &[SegmentMeta]) -> Result<()> {
    let known: HashSet<u64> = metas.iter().map(|m| m.id).collect();
    let entries = std::fs::read_dir(&s.segments_dir).map_err(|e| Error::io(&s.segments_dir, e))?;
    let mut removed = false;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&s.segments_dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let id = name
            .strip_suffix(".seg")
            .and_then(|hex| u64::from_str_radix(hex, 16).ok());
        if id.is_none_or(|id| !known.contains(&id)) {
            tracing::info!("removing orphan segment file {name}");
            remove_if_exists(&entry.path())?;
            removed = true;
        }
    }
    if removed {
        sync_dir(&s.segments_dir)?;
    }
    Ok(())
}

fn remove_orphan_checkpoints(
    s: &StoreInner,
    volumes: &HashSet<u64>,
    snapshots: &HashSet<u64>,
) -> Result<()> {
    let entries = std::fs::read_dir(&s.ckpt_dir).map_err(|e| Error::io(&s.ckpt_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&s.ckpt_dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy().into_owned();
        let keep = if let Some(hex) = name
            .strip_prefix("vol-")
            .and_then(|n| n.strip_suffix(".ckpt"))
        {
            u64::from_str_radix(hex, 16).is_ok_and(|id| volumes.contains(&id))
        } else if let Some(hex) = name
            .strip_prefix("snap-")
            .and_then(|n| n.strip_suffix(".ckpt"))
        {
            u64::from_str_radix(hex, 16).is_ok_and(|id| snapshots.contains(&id))
        } else {
            false
        };
        if !keep {
            tracing::info!("removing stale checkpoint file {name}");
            remove_if_exists(&entry.path())?;
        }
    }
    Ok(())
}

// Keep the header size visible to readers of this module's arithmetic.
const _: () = assert!(RECORD_HEADER_BYTES == 56);
