//! Snapshots: frozen, read-only views of a volume at one point of its log.
//!
//! Taking one appends a marker record and clones the volume's extent map,
//! both O(1) in the volume's size. The frozen map is written to its own
//! checkpoint file later (by the next checkpoint of the volume, or before a
//! clone is made from it); until then the marker in the log is what makes it
//! durable: recovery freezes the replayed map when it meets the marker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::catalog::SnapshotMeta;
use crate::checkpoint::{Checkpoint, CheckpointKind, LogPosition};
use crate::error::Result;
use crate::extent_map::ExtentMap;
use crate::limits::{MAX_IO_BYTES, SECTOR_BYTES};
use crate::store::StoreInner;
use crate::volume::{check_range, read_pieces};

pub(crate) struct SnapshotInner {
    pub meta: SnapshotMeta,
    /// Never changes what it reads; the cleaner may change where.
    pub map: RwLock<ExtentMap>,
    pub ckpt_written: AtomicBool,
    /// False while the snapshot is being taken (its marker not yet durable).
    pub ready: AtomicBool,
    ckpt_lock: Mutex<()>,
}

impl SnapshotInner {
    pub fn new(meta: SnapshotMeta, map: ExtentMap, ckpt_written: bool) -> Self {
        SnapshotInner {
            meta,
            map: RwLock::new(map),
            ckpt_written: AtomicBool::new(ckpt_written),
            ready: AtomicBool::new(false),
            ckpt_lock: Mutex::new(()),
        }
    }

    /// Writes this snapshot's checkpoint. With `force` it is rewritten even
    /// if one exists (the cleaner moved extents).
    pub fn write_checkpoint(&self, dir: &std::path::Path, force: bool) -> Result<()> {
        let _serial = self.ckpt_lock.lock();
        if !force && self.ckpt_written.load(Ordering::Acquire) {
            return Ok(());
        }
        self.checkpoint().write(dir)?;
        self.ckpt_written.store(true, Ordering::Release);
        Ok(())
    }

    /// This snapshot's map as a checkpoint, from one copy of the map (the
    /// cleaner may move extents at any time).
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            kind: CheckpointKind::Snapshot,
            id: self.meta.id,
            volume_id: self.meta.volume_id,
            size_bytes: self.meta.size_bytes,
            seq: self.meta.seq,
            replay_from: LogPosition::default(),
            map: self.map.read().clone(),
        }
    }
}

/// A read-only handle to a snapshot.
#[derive(Clone)]
pub struct Snapshot {
    pub(crate) store: Arc<StoreInner>,
    pub(crate) inner: Arc<SnapshotInner>,
}

impl Snapshot {
    pub fn name(&self) -> &str {
        &self.inner.meta.name
    }

    pub fn size_bytes(&self) -> u64 {
        self.inner.meta.size_bytes
    }

    pub fn extent_count(&self) -> usize {
        self.inner.map.read().len()
    }

    /// Reads `out.len()` bytes at `offset_bytes`.
    pub async fn read_into(&self, offset_bytes: u64, out: &mut [u8]) -> Result<()> {
        let label = format!("snapshot {}", self.inner.meta.name);
        let len_bytes = out.len() as u64;
        check_range(
            &label,
            self.size_bytes(),
            offset_bytes,
            len_bytes,
            MAX_IO_BYTES,
        )?;
        let start = offset_bytes / SECTOR_BYTES;
        let plan = {
            let map = self.inner.map.read();
            let mut plan = Vec::new();
            for p in map.lookup(start, start + len_bytes / SECTOR_BYTES) {
                let source = match &p.extent {
                    None => None,
                    Some(e) => Some(self.store.source(e.segment_id)?),
                };
                plan.push((p, source));
            }
            plan
        };
        read_pieces(&self.store, &label, start, plan, out).await
    }

    pub async fn read(&self, offset_bytes: u64, len_bytes: u64) -> Result<Vec<u8>> {
        check_range(
            self.name(),
            self.size_bytes(),
            offset_bytes,
            len_bytes,
            MAX_IO_BYTES,
        )?;
        let mut out = vec![0u8; len_bytes as usize];
        self.read_into(offset_bytes, &mut out).await?;
        Ok(out)
    }
}
