//! The store's side of the object tier: uploading sealed segments,
//! publishing snapshot and volume manifests, reading through the cache,
//! restoring from the bucket alone, leases, and object GC.
//!
//! Ordering rules that make the bucket safe to read from anywhere:
//! - only sealed segments are uploaded (an object never changes), and only
//!   after every write to them completed and was synced;
//! - a manifest is written after every object it names is in the bucket
//!   (checked with HEAD, re-uploaded from the local copy if it vanished);
//! - object GC deletes only what no manifest in the bucket and no segment in
//!   this store's catalog names, and only past a grace period that covers
//!   another host's upload-to-manifest window.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};

use crate::catalog::{Catalog, NameTarget, SegmentMeta, SnapshotMeta, VolumeMeta};
use crate::checkpoint::{checkpoint_path, Checkpoint, CheckpointKind};
use crate::error::{Error, Result};
use crate::segment::{SegmentKind, SEGMENT_HEADER_BYTES};
use crate::snapshot::{Snapshot, SnapshotInner};
use crate::store::{now_unix_s, Store, StoreInner};
use crate::tier::cache::BLOCK_BYTES;
use crate::tier::manifest::{
    self, Lease, SegmentRef, SnapshotManifest, VolumeManifest, MANIFEST_FORMAT,
};
use crate::tier::{Created, Durability, ObjectTier, TierStats};
use crate::volume::{LogTail, Source, VolState, Volume, VolumeInner};

/// How long a background upload keeps retrying before it gives up (the
/// segment stays local and is retried at the next open).
const BACKGROUND_PATIENCE: Duration = Duration::from_secs(3600);
/// How long a foreground upload (a publish someone waits for) retries.
const FOREGROUND_PATIENCE: Duration = Duration::from_secs(120);
/// How long taking a lease retries: it runs at open, where an unreachable
/// object store should fail fast with a clear error.
const LEASE_PATIENCE: Duration = Duration::from_secs(15);
/// Blocks fetched ahead of a sequential reader.
const PREFETCH_BLOCKS: u64 = 4;

/// A block fetch that many readers may await.
pub(crate) type BlockFetch = Shared<BoxFuture<'static, std::result::Result<Arc<Vec<u8>>, String>>>;

/// What one object GC pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectGcReport {
    pub objects_examined: usize,
    pub objects_deleted: usize,
    pub bytes_deleted: u64,
    /// Unreferenced but younger than the grace period.
    pub objects_kept_recent: usize,
}

impl StoreInner {
    pub(crate) fn tier(&self) -> Result<&ObjectTier> {
        self.tier.as_ref().ok_or(Error::NoTier)
    }

    pub(crate) fn remote_durability(&self) -> bool {
        self.tier
            .as_ref()
            .is_some_and(|t| t.config.durability == Durability::Remote)
    }

    /// Where to read segment `id` from: the local file, else the object store.
    pub(crate) fn source(&self, id: u64) -> Result<Source> {
        if let Some(seg) = self.segments.read().get(&id) {
            return Ok(Source::Segment(seg.clone()));
        }
        if self.tier.is_some() && self.remote.read().contains_key(&id) {
            return Ok(Source::Remote(id));
        }
        Err(Error::SegmentMissing { segment_id: id })
    }

    /// Reads `len` bytes at `offset` of a segment that lives only in the
    /// object store, through the block cache, prefetching ahead of a
    /// sequential reader.
    pub(crate) async fn read_remote(
        self: &Arc<Self>,
        id: u64,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>> {
        let tier = self.tier()?;
        let size = *self
            .remote
            .read()
            .get(&id)
            .ok_or(Error::SegmentMissing { segment_id: id })?;
        let end = offset
            .checked_add(len as u64)
            .filter(|&e| e <= size)
            .ok_or_else(|| {
                Error::ObjectStore(format!(
                    "segment {id}: range {offset}+{len} past its {size} bytes"
                ))
            })?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let first = offset / BLOCK_BYTES;
        let last = (end - 1) / BLOCK_BYTES;
        let mut out = Vec::with_capacity(len);
        for block in first..=last {
            let bytes = self.fetch_block(id, block, size).await?;
            let block_start = block * BLOCK_BYTES;
            let from = offset.max(block_start) - block_start;
            let to = end.min(block_start + bytes.len() as u64) - block_start;
            out.extend_from_slice(&bytes[from as usize..to as usize]);
        }
        // A reader that just read the block before this one is sequential.
        if first > 0 && tier.cache.contains(id, first - 1) {
            for ahead in last + 1..=last + PREFETCH_BLOCKS {
                if ahead * BLOCK_BYTES >= size || tier.cache.contains(id, ahead) {
                    continue;
                }
                let me = self.clone();
                tier.spawn(async move {
                    let _ = me.fetch_block(id, ahead, size).await;
                });
            }
        }
        Ok(out)
    }

    /// One block of a remote segment: from the cache, else from the object
    /// store, with concurrent readers of the same block sharing one GET.
    async fn fetch_block(self: &Arc<Self>, id: u64, block: u64, size: u64) -> Result<Arc<Vec<u8>>> {
        let tier = self.tier()?;
        if let Some(bytes) = tier.cache.get(id, block) {
            tier.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Arc::new(bytes));
        }
        let fetch = {
            let mut fetching = self.fetching.lock();
            match fetching.get(&(id, block)) {
                Some(f) => f.clone(),
                None => {
                    tier.counters.cache_misses.fetch_add(1, Ordering::Relaxed);
                    let range = block * BLOCK_BYTES..((block + 1) * BLOCK_BYTES).min(size);
                    let h = tier.handle();
                    let key = ObjectTier::segment_key(id);
                    let me = self.clone();
                    let f: BlockFetch = async move {
                        let got = match me.tier() {
                            Ok(tier) => {
                                tier.run(async move { h.get_range(&key, range).await })
                                    .await
                            }
                            Err(e) => Err(e),
                        };
                        let out = got.map(|bytes| {
                            if let Ok(tier) = me.tier() {
                                tier.cache.put(id, block, &bytes);
                            }
                            Arc::new(bytes.to_vec())
                        });
                        me.fetching.lock().remove(&(id, block));
                        out.map_err(|e| e.to_string())
                    }
                    .boxed()
                    .shared();
                    fetching.insert((id, block), f.clone());
                    f
                }
            }
        };
        fetch.await.map_err(Error::ObjectStore)
    }

    /// A segment was sealed and its seal written: queue its upload.
    pub(crate) fn segment_sealed(self: &Arc<Self>, id: u64) {
        if self.tier.is_some() {
            self.enqueue_upload(id);
        }
    }

    fn enqueue_upload(self: &Arc<Self>, id: u64) {
        let Some(tier) = self.tier.as_ref() else {
            return;
        };
        if self.remote.read().contains_key(&id) || !self.uploading.lock().insert(id) {
            return;
        }
        let weak = Arc::downgrade(self);
        let slots = tier.upload_slots.clone();
        tier.spawn(async move {
            let Ok(_permit) = slots.acquire_owned().await else {
                return;
            };
            let Some(me) = weak.upgrade() else { return };
            if let Err(e) = me.upload_segment(id, BACKGROUND_PATIENCE).await {
                tracing::warn!(
                    segment = id,
                    "background upload failed (retried at next open): {e}"
                );
            }
            me.uploading.lock().remove(&id);
        });
    }

    /// Uploads one sealed segment with a create-only put. Idempotent: an
    /// object already there with the same size counts as uploaded.
    async fn upload_segment(self: &Arc<Self>, id: u64, patience: Duration) -> Result<SegmentRef> {
        if let Some(&bytes) = self.remote.read().get(&id) {
            return Ok(SegmentRef { id, bytes });
        }
        let meta: SegmentMeta = self
            .catalog
            .segments
            .get(id.to_be_bytes())?
            .map(|v| serde_json::from_slice(&v))
            .transpose()
            .map_err(|e| Error::CatalogCorrupt {
                key: format!("segment {id}"),
                why: e.to_string(),
            })?
            .ok_or(Error::SegmentMissing { segment_id: id })?;
        // Every write to the segment (the seal last) must be complete and
        // durable before its bytes are read for upload.
        if meta.kind == SegmentKind::Log {
            if self.log_segment_open(&meta) {
                return Err(Error::ObjectStore(format!(
                    "segment {id} is still being written"
                )));
            }
            let owner = self.volumes.read().get(&meta.volume_id).cloned();
            if let Some(v) = owner {
                Volume {
                    store: self.clone(),
                    inner: v,
                }
                .flush_local()
                .await?;
            }
        } else if self
            .gc_tail
            .lock()
            .as_ref()
            .is_some_and(|(s, _)| s.id == id)
        {
            return Err(Error::ObjectStore(format!(
                "GC segment {id} is still being written"
            )));
        }
        let seg = self.segment(id)?;
        let path = seg.path.clone();
        let mut bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        if meta.kind == SegmentKind::Log {
            // A reused file may hold stale records after the seal: they are
            // not this segment's and must not leave the machine.
            match crate::segment::sealed_len(&bytes) {
                Some(len) => bytes.truncate(len),
                None => {
                    return Err(Error::CorruptSegment {
                        path,
                        why: "sealed log segment without a readable seal".into(),
                    })
                }
            }
        }
        let body = Bytes::from(bytes);
        let len = body.len() as u64;
        let tier = self.tier()?;
        let h = tier.handle();
        let key = ObjectTier::segment_key(id);
        let created = tier
            .run({
                let key = key.clone();
                async move { h.put_create(&key, body, patience).await }
            })
            .await?;
        if created == Created::AlreadyThere {
            let h = tier.handle();
            let k = key.clone();
            let there = tier.run(async move { h.head(&k).await }).await?;
            if there.as_ref().map(|m| m.size) != Some(len) {
                return Err(Error::ObjectStore(format!(
                    "{key} exists with another size ({:?} bytes, local {len}): segment id collision",
                    there.map(|m| m.size)
                )));
            }
        }
        let mut meta = meta;
        meta.remote_bytes = Some(len);
        Catalog::put(&self.catalog.segments, id, &meta)?;
        self.remote.write().insert(id, len);
        tracing::debug!(segment = id, len, "segment uploaded");
        Ok(SegmentRef { id, bytes: len })
    }

    /// Drops the local copy of an uploaded segment unless local replay may
    /// still read it (a log segment at or after its volume's checkpoint).
    fn evict_if_unneeded(&self, meta: &SegmentMeta) -> bool {
        if !self.remote.read().contains_key(&meta.id) {
            return false;
        }
        if meta.kind == SegmentKind::Log {
            let owner = self.volumes.read().get(&meta.volume_id).cloned();
            if let Some(v) = owner {
                let replay_from = v.state.read().ckpt_position.map_or(0, |p| p.chain_index);
                if meta.chain_index >= replay_from {
                    return false;
                }
            }
        }
        // Readers holding the file keep reading it; new reads go remote.
        let Some(seg) = self.segments.write().remove(&meta.id) else {
            return false;
        };
        match std::fs::remove_file(&seg.path) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("evicting {}: {e}", seg.path.display());
                self.segments.write().insert(meta.id, seg);
                false
            }
        }
    }

    /// Makes sure segment `id` is in the bucket right now (another host's
    /// object GC may have removed an object no manifest named yet).
    async fn ensure_uploaded(self: &Arc<Self>, id: u64) -> Result<SegmentRef> {
        let tier = self.tier()?;
        let known = self.remote.read().get(&id).copied();
        if let Some(bytes) = known {
            let h = tier.handle();
            let key = ObjectTier::segment_key(id);
            if tier.run(async move { h.head(&key).await }).await?.is_some() {
                return Ok(SegmentRef { id, bytes });
            }
            if !self.segments.read().contains_key(&id) {
                return Err(Error::ObjectNotFound(ObjectTier::segment_key(id)));
            }
            tracing::warn!(segment = id, "segment object vanished; uploading it again");
            self.remote.write().remove(&id);
        }
        self.upload_segment(id, FOREGROUND_PATIENCE).await
    }

    /// Puts a checkpoint object (create-only). Its name carries a crc of
    /// its content, so an object already there should hold these very
    /// bytes; it is read back and compared, since a manifest naming a
    /// checkpoint that reads other segments than it lists would not
    /// restore. Returns its size.
    async fn put_checkpoint_object(self: &Arc<Self>, key: &str, bytes: Vec<u8>) -> Result<u64> {
        let tier = self.tier()?;
        let len = bytes.len() as u64;
        let body = Bytes::from(bytes);
        let h = tier.handle();
        let (k, b) = (key.to_string(), body.clone());
        let created = tier
            .run(async move { h.put_create(&k, b, FOREGROUND_PATIENCE).await })
            .await?;
        if created == Created::AlreadyThere {
            let h = tier.handle();
            let k = key.to_string();
            match tier.run(async move { h.get(&k).await }).await? {
                Some((there, _)) if there == body => {}
                Some(_) => {
                    return Err(Error::ObjectStore(format!(
                        "{key} exists with other content: checkpoint name collision"
                    )))
                }
                // Deleted since the put found it (object GC of another host).
                None => return Err(Error::ObjectNotFound(key.to_string())),
            }
        }
        Ok(len)
    }

    /// Publishes a snapshot: its checkpoint, every segment it reads, then
    /// its manifest (create-only). A manifest already in the bucket (a
    /// publish cut off after its put) is kept, and what it names is checked.
    pub(crate) async fn publish_snapshot(
        self: &Arc<Self>,
        snap: Arc<SnapshotInner>,
    ) -> Result<SnapshotManifest> {
        let tier = self.tier()?;
        snap.write_checkpoint(&self.ckpt_dir, false)?;
        let key = ObjectTier::snapshot_manifest_key(&snap.meta.name);
        if let Some(existing) = self.get_manifest::<SnapshotManifest>(&key).await? {
            return self.keep_published(&snap, existing).await;
        }
        // One copy of the map gives both the checkpoint object and the
        // segment list: the cleaner may move extents meanwhile, and a
        // manifest whose checkpoint reads a segment it does not name would
        // not restore.
        let ckpt = snap.checkpoint();
        let ids: BTreeSet<u64> = ckpt.map.iter().map(|(_, e)| e.segment_id).collect();
        // A snapshot recovered from its marker after a crash may read from
        // its volume's unsealed tail (the crash came before the seal): seal
        // it first, since only sealed segments are uploaded.
        let owner = self.volumes.read().get(&snap.meta.volume_id).cloned();
        if let Some(v) = owner {
            if ids.contains(&v.state.read().tail.segment.id) {
                Volume {
                    store: self.clone(),
                    inner: v.clone(),
                }
                .seal_log()
                .await?;
            }
        }
        let mut refs = Vec::with_capacity(ids.len());
        for id in ids {
            refs.push(self.ensure_uploaded(id).await?);
        }
        let ckpt_bytes = ckpt.to_bytes();
        drop(ckpt);
        let m = &snap.meta;
        let ckpt_key = ObjectTier::snapshot_checkpoint_key(m.id, &ckpt_bytes);
        let ckpt_len = self.put_checkpoint_object(&ckpt_key, ckpt_bytes).await?;
        // What this snapshot adds over the volume's previous one.
        let previous: HashSet<u64> = self
            .snapshots
            .read()
            .values()
            .filter(|s| s.meta.volume_id == m.volume_id && s.meta.seq < m.seq)
            .max_by_key(|s| s.meta.seq)
            .map(|s| s.map.read().iter().map(|(_, e)| e.segment_id).collect())
            .unwrap_or_default();
        let added_bytes = refs
            .iter()
            .filter(|r| !previous.contains(&r.id))
            .map(|r| r.bytes)
            .sum::<u64>()
            + ckpt_len;
        let manifest = SnapshotManifest {
            format: MANIFEST_FORMAT,
            name: m.name.clone(),
            id: m.id,
            volume_name: m.volume_name.clone(),
            volume_id: m.volume_id,
            size_bytes: m.size_bytes,
            seq: m.seq,
            created_unix_s: m.created_unix_s,
            checkpoint: ckpt_key,
            segments: refs,
            added_bytes,
        };
        let body = Bytes::from(manifest::encode(&manifest));
        let h = tier.handle();
        let k = key.clone();
        if tier
            .run(async move { h.put_create(&k, body, FOREGROUND_PATIENCE).await })
            .await?
            == Created::AlreadyThere
        {
            // Another publish of the same snapshot won the race.
            let existing = self
                .get_manifest::<SnapshotManifest>(&key)
                .await?
                .ok_or_else(|| Error::ObjectNotFound(key.clone()))?;
            return self.keep_published(&snap, existing).await;
        }
        self.mark_published(&snap)?;
        tracing::info!(snapshot = %m.name, added_bytes, "snapshot published");
        Ok(manifest)
    }

    /// Adopts a manifest found in the bucket under the snapshot's name as
    /// its publication, once it is known to be this snapshot's and every
    /// object it names is there (re-uploaded from local copies if a server
    /// lost them).
    async fn keep_published(
        self: &Arc<Self>,
        snap: &SnapshotInner,
        existing: SnapshotManifest,
    ) -> Result<SnapshotManifest> {
        let m = &snap.meta;
        if existing.id != m.id {
            return Err(Error::AlreadyExists(format!(
                "{} (in the object store)",
                m.name
            )));
        }
        let tier = self.tier()?;
        for r in &existing.segments {
            let h = tier.handle();
            let k = ObjectTier::segment_key(r.id);
            if tier.run(async move { h.head(&k).await }).await?.is_none() {
                self.ensure_uploaded(r.id).await?;
            }
        }
        let h = tier.handle();
        let k = existing.checkpoint.clone();
        if tier.run(async move { h.head(&k).await }).await?.is_none() {
            // Rebuildable only if the map is still the one it named.
            let bytes = snap.checkpoint().to_bytes();
            if ObjectTier::snapshot_checkpoint_key(m.id, &bytes) != existing.checkpoint {
                return Err(Error::ObjectNotFound(existing.checkpoint));
            }
            self.put_checkpoint_object(&existing.checkpoint, bytes)
                .await?;
        }
        self.mark_published(snap)?;
        Ok(existing)
    }

    fn mark_published(&self, snap: &SnapshotInner) -> Result<()> {
        let mut meta = snap.meta.clone();
        meta.published = true;
        Catalog::put(&self.catalog.snapshots, meta.id, &meta)
    }

    pub(crate) async fn get_manifest<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>> {
        let tier = self.tier()?;
        let h = tier.handle();
        let k = key.to_string();
        match tier.run(async move { h.get(&k).await }).await? {
            Some((bytes, _)) => Ok(Some(manifest::decode(key, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Publishes a volume's head: seal, checkpoint, upload what the
    /// checkpoint reads, then overwrite the volume manifest (we hold the
    /// lease).
    pub(crate) async fn publish_volume(
        self: &Arc<Self>,
        v: Arc<VolumeInner>,
    ) -> Result<VolumeManifest> {
        let _serial = v.publish_lock.lock().await;
        self.check_lease(&v.name).await?;
        let handle = Volume {
            store: self.clone(),
            inner: v.clone(),
        };
        handle.seal_log().await?;
        // Checkpoint and read it back under the checkpoint lock, so the file
        // we upload is the one we made.
        let me = self.clone();
        let vv = v.clone();
        let (ckpt, bytes) = std::thread::spawn(move || -> Result<(Checkpoint, Vec<u8>)> {
            let _serial = vv.ckpt_lock.lock();
            me.checkpoint_volume_locked(&vv)?;
            let path = checkpoint_path(&me.ckpt_dir, CheckpointKind::Volume, vv.id);
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            Ok((Checkpoint::read(&path)?, bytes))
        })
        .join()
        .map_err(|_| Error::ObjectStore("checkpoint thread panicked".into()))??;
        let ids: BTreeSet<u64> = ckpt.map.iter().map(|(_, e)| e.segment_id).collect();
        let mut refs = Vec::with_capacity(ids.len());
        for id in ids {
            refs.push(self.ensure_uploaded(id).await?);
        }
        let tier = self.tier()?;
        let ckpt_key = ObjectTier::volume_checkpoint_key(v.id, ckpt.seq, &bytes);
        self.put_checkpoint_object(&ckpt_key, bytes).await?;
        let manifest = VolumeManifest {
            format: MANIFEST_FORMAT,
            name: v.name.clone(),
            id: v.id,
            size_bytes: ckpt.size_bytes,
            seq: ckpt.seq,
            checkpoint: ckpt_key,
            segments: refs,
            published_unix_s: now_unix_s(),
            holder: tier.holder.clone(),
        };
        let h = tier.handle();
        let key = ObjectTier::volume_manifest_key(&v.name);
        let body = Bytes::from(manifest::encode(&manifest));
        tier.run(async move { h.put_overwrite(&key, body).await })
            .await?;
        Ok(manifest)
    }

    /// Fails unless this store holds the volume's lease.
    async fn check_lease(&self, name: &str) -> Result<()> {
        let tier = self.tier()?;
        match self
            .get_manifest::<Lease>(&ObjectTier::lease_key(name))
            .await?
        {
            Some(l) if l.holder == tier.holder => Ok(()),
            Some(l) => Err(Error::LeaseHeld {
                volume: name.to_string(),
                holder: l.holder,
            }),
            None => Err(Error::LeaseHeld {
                volume: name.to_string(),
                holder: "nobody (the lease was released)".into(),
            }),
        }
    }

    /// Takes the volume's writer lease with a create-only put. Succeeds if
    /// this store already holds it.
    pub(crate) fn acquire_lease(&self, name: &str) -> Result<()> {
        let tier = self.tier()?;
        let lease = Lease {
            volume: name.to_string(),
            holder: tier.holder.clone(),
            acquired_unix_s: now_unix_s(),
        };
        let h = tier.handle();
        let key = ObjectTier::lease_key(name);
        let body = Bytes::from(manifest::encode(&lease));
        let k = key.clone();
        let created = tier.block(async move { h.put_create(&k, body, LEASE_PATIENCE).await })?;
        if created == Created::Now {
            return Ok(());
        }
        futures::executor::block_on(self.check_lease(name))
    }

    pub(crate) fn release_lease(&self, name: &str) -> Result<()> {
        let tier = self.tier()?;
        futures::executor::block_on(self.check_lease(name))?;
        let h = tier.handle();
        let key = ObjectTier::lease_key(name);
        tier.block(async move { h.delete(&key).await })
    }

    /// Called at open: take the leases of every local volume, queue uploads
    /// of sealed segments not yet in the bucket, publish snapshots that were
    /// not.
    /// A log segment of a live volume at or past its tail: still being
    /// written (the tail) or yet to be (its spare, see
    /// `volume::SpareSegment`). Every other segment is complete.
    pub(crate) fn log_segment_open(&self, meta: &SegmentMeta) -> bool {
        meta.kind == SegmentKind::Log
            && self
                .volumes
                .read()
                .get(&meta.volume_id)
                .is_some_and(|v| meta.chain_index >= v.state.read().tail.chain_index)
    }

    /// Local segments no log appends to any more (GC's tail aside).
    fn complete_local_segments(&self) -> Result<Vec<u64>> {
        let metas: Vec<SegmentMeta> = Catalog::all(&self.catalog.segments)?;
        // Not under the segments lock: `log_segment_open` takes volume
        // state locks, and a log roll takes the segments lock under one.
        let local: HashSet<u64> = self.segments.read().keys().copied().collect();
        Ok(metas
            .iter()
            .filter(|m| local.contains(&m.id) && !self.log_segment_open(m))
            .map(|m| m.id)
            .collect())
    }

    pub(crate) fn tier_resume(self: &Arc<Self>) -> Result<()> {
        let names: Vec<String> = self
            .volumes
            .read()
            .values()
            .map(|v| v.name.clone())
            .collect();
        for name in names {
            self.acquire_lease(&name)?;
        }
        for id in self.complete_local_segments()? {
            self.enqueue_upload(id);
        }
        let metas: Vec<SnapshotMeta> = Catalog::all(&self.catalog.snapshots)?;
        for m in metas.into_iter().filter(|m| !m.published) {
            let snap = self.snapshots.read().get(&m.id).cloned();
            if let Some(snap) = snap {
                let me = self.clone();
                self.tier()?.spawn(async move {
                    if let Err(e) = me.publish_snapshot(snap).await {
                        tracing::warn!(snapshot = %m.name, "publishing failed (retried at next open): {e}");
                    }
                });
            }
        }
        Ok(())
    }
}

impl Store {
    fn tier(&self) -> Result<&ObjectTier> {
        self.inner.tier()
    }

    /// Object tier counters since the store opened.
    pub fn tier_stats(&self) -> Result<TierStats> {
        Ok(self.tier()?.stats())
    }

    /// Publishes snapshot `name` to the object store and waits for it.
    pub fn publish_snapshot(&self, name: &str) -> Result<SnapshotManifest> {
        let snap = self.snapshot(name)?;
        futures::executor::block_on(self.inner.publish_snapshot(snap.inner))
    }

    /// Publishes volume `name`'s current state as its head in the object
    /// store (what [`Store::adopt_volume`] restores).
    pub fn publish_volume(&self, name: &str) -> Result<VolumeManifest> {
        let v = self.volume(name)?;
        futures::executor::block_on(self.inner.publish_volume(v.inner))
    }

    /// Uploads every sealed segment and publishes every snapshot not yet in
    /// the object store, and waits.
    pub fn sync_tier(&self) -> Result<()> {
        let s = &self.inner;
        let gc_tail = s.gc_tail.lock().as_ref().map(|(seg, _)| seg.id);
        for id in s.complete_local_segments()? {
            if Some(id) != gc_tail {
                futures::executor::block_on(s.upload_segment(id, FOREGROUND_PATIENCE))?;
            }
        }
        // Publish what never was, and again what the bucket lost (a server
        // that came back without its data): publishing HEAD-checks every
        // object and re-uploads missing ones from the local copies.
        let metas: Vec<SnapshotMeta> = Catalog::all(&s.catalog.snapshots)?;
        for m in metas {
            let Some(snap) = s.snapshots.read().get(&m.id).cloned() else {
                continue;
            };
            if !snap.ready.load(Ordering::Acquire) {
                continue;
            }
            let in_bucket = m.published && {
                let tier = s.tier()?;
                let h = tier.handle();
                let key = ObjectTier::snapshot_manifest_key(&m.name);
                tier.block(async move { h.head(&key).await })?.is_some()
            };
            if !in_bucket {
                futures::executor::block_on(s.publish_snapshot(snap))?;
            }
        }
        Ok(())
    }

    /// Deletes the local copies of uploaded segments that local replay no
    /// longer needs: the local directory then holds the log tail and the
    /// cache, and older data is read through the cache. Returns how many.
    ///
    /// First every snapshot and every volume head is published, so that
    /// every object a local map reads is named by a manifest: another
    /// store's object GC never deletes what a manifest names, while an
    /// object only this store's catalog knows is protected only by the GC
    /// grace period.
    pub fn evict_uploaded(&self) -> Result<usize> {
        self.sync_tier()?;
        let names: Vec<String> = self.volumes().into_iter().map(|v| v.name).collect();
        for name in names {
            self.publish_volume(&name)?;
        }
        let metas: Vec<SegmentMeta> = Catalog::all(&self.inner.catalog.segments)?;
        Ok(metas
            .iter()
            .filter(|m| self.inner.evict_if_unneeded(m))
            .count())
    }

    /// Snapshot names published in the object store (by any host).
    pub fn remote_snapshots(&self) -> Result<Vec<SnapshotManifest>> {
        self.list_manifests("manifests/snapshots/")
    }

    /// Volume heads published in the object store (by any host).
    pub fn remote_volumes(&self) -> Result<Vec<VolumeManifest>> {
        self.list_manifests("manifests/volumes/")
    }

    fn list_manifests<T: serde::de::DeserializeOwned>(&self, dir: &str) -> Result<Vec<T>> {
        let tier = self.tier()?;
        let h = tier.handle();
        let d = dir.to_string();
        let listed = tier.block(async move { h.list(&d).await })?;
        let mut out = Vec::new();
        for (key, _) in listed {
            if let Some(m) = futures::executor::block_on(self.inner.get_manifest::<T>(&key))? {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Makes snapshot `name` readable here from the object store alone: its
    /// manifest and checkpoint are fetched (metadata only); data is read
    /// lazily on first access, or ahead of time with [`Store::hydrate`].
    pub fn restore_snapshot(&self, name: &str) -> Result<Snapshot> {
        if let Ok(s) = self.snapshot(name) {
            return Ok(s);
        }
        let s = &self.inner;
        let key = ObjectTier::snapshot_manifest_key(name);
        let m: SnapshotManifest = futures::executor::block_on(s.get_manifest(&key))?
            .ok_or_else(|| Error::SnapshotNotFound(name.to_string()))?;
        let map = self
            .fetch_checkpoint(&m.checkpoint, CheckpointKind::Snapshot, m.id)?
            .map;
        self.register_remote_segments(&m.segments)?;
        let meta = SnapshotMeta {
            id: m.id,
            name: m.name.clone(),
            volume_id: m.volume_id,
            volume_name: m.volume_name.clone(),
            published: true,
            seq: m.seq,
            size_bytes: m.size_bytes,
            created_unix_s: m.created_unix_s,
        };
        s.catalog.claim_name(name, NameTarget::Snapshot(m.id))?;
        Catalog::put(&s.catalog.snapshots, m.id, &meta)?;
        s.catalog.flush()?;
        let snap = Arc::new(SnapshotInner::new(meta, map, true));
        snap.ready.store(true, Ordering::Release);
        s.snapshots.write().insert(m.id, snap);
        self.snapshot(name)
    }

    /// Takes over volume `name` from the object store: its lease (which must
    /// be free), its published head (metadata only; data read lazily), and
    /// from then on its writes.
    pub fn adopt_volume(&self, name: &str) -> Result<Volume> {
        crate::limits::check_name(name)?;
        let s = &self.inner;
        let key = ObjectTier::volume_manifest_key(name);
        let m: VolumeManifest = futures::executor::block_on(s.get_manifest(&key))?
            .ok_or_else(|| Error::VolumeNotFound(format!("{name} (in the object store)")))?;
        s.acquire_lease(name)?;
        let ckpt = self.fetch_checkpoint(&m.checkpoint, CheckpointKind::Volume, m.id)?;
        self.register_remote_segments(&m.segments)?;
        s.catalog.claim_name(name, NameTarget::Volume(m.id))?;
        let seg = s.new_segment(SegmentKind::Log, m.id, ckpt.replay_from.chain_index, false)?;
        Catalog::put(
            &s.catalog.volumes,
            m.id,
            &VolumeMeta {
                id: m.id,
                name: name.to_string(),
                size_bytes: ckpt.size_bytes,
                parent_snapshot: None,
                created_unix_s: now_unix_s(),
            },
        )?;
        s.catalog.flush()?;
        let state = VolState {
            map: ckpt.map,
            size_bytes: ckpt.size_bytes,
            next_seq: ckpt.seq + 1,
            tail: LogTail {
                segment: seg.clone(),
                chain_index: ckpt.replay_from.chain_index,
                offset: SEGMENT_HEADER_BYTES,
            },
            dirty: Vec::new(),
            durable_seq: ckpt.seq,
            durable_tail: (seg.id, SEGMENT_HEADER_BYTES),
            ckpt_position: Some(ckpt.replay_from),
            bytes_since_ckpt: 0,
            map_generation: 0,
            ckpt_generation: None,
        };
        let inner = Arc::new(VolumeInner::new(m.id, name.to_string(), None, state));
        s.volumes.write().insert(m.id, inner);
        self.volume(name)
    }

    /// Hands volume `name` over: publishes its head, releases its lease and
    /// forgets it here. Another store can then [`Store::adopt_volume`] it.
    pub fn release_volume(&self, name: &str) -> Result<VolumeManifest> {
        let manifest = self.publish_volume(name)?;
        self.inner.release_lease(name)?;
        self.forget_volume(name)?;
        Ok(manifest)
    }

    /// Takes a stale lease over: for when its holder is known to be gone.
    pub fn take_over_lease(&self, name: &str) -> Result<()> {
        let s = &self.inner;
        let tier = self.tier()?;
        let h = tier.handle();
        let key = ObjectTier::lease_key(name);
        tier.block(async move { h.delete(&key).await })?;
        tracing::warn!(volume = name, "lease taken over");
        s.acquire_lease(name)
    }

    /// Fetches every block of what snapshot or volume `name` reads into the
    /// local cache. Returns the bytes fetched.
    pub fn hydrate(&self, name: &str) -> Result<u64> {
        let s = &self.inner;
        let ids: BTreeSet<u64> = match self.snapshot(name) {
            Ok(snap) => snap
                .inner
                .map
                .read()
                .iter()
                .map(|(_, e)| e.segment_id)
                .collect(),
            Err(_) => self
                .volume(name)?
                .inner
                .state
                .read()
                .map
                .iter()
                .map(|(_, e)| e.segment_id)
                .collect(),
        };
        let before = self.tier()?.stats().bytes_fetched;
        for id in ids {
            let Some(size) = s.remote.read().get(&id).copied() else {
                continue;
            };
            if s.segments.read().contains_key(&id) {
                continue;
            }
            for block in 0..size.div_ceil(BLOCK_BYTES) {
                futures::executor::block_on(s.fetch_block(id, block, size))?;
            }
        }
        Ok(self.tier()?.stats().bytes_fetched - before)
    }

    /// Deletes objects that nothing references: no manifest in the bucket
    /// (from any host), no segment in this store's catalog, and older than
    /// the grace period.
    pub fn gc_objects(&self) -> Result<ObjectGcReport> {
        let s = &self.inner;
        let tier = self.tier()?;
        let _admin = s.admin.lock();
        let mut referenced: HashSet<String> = HashSet::new();
        for m in self.remote_snapshots()? {
            referenced.insert(m.checkpoint.clone());
            referenced.extend(m.segments.iter().map(|r| ObjectTier::segment_key(r.id)));
        }
        for m in self.remote_volumes()? {
            referenced.insert(m.checkpoint.clone());
            referenced.extend(m.segments.iter().map(|r| ObjectTier::segment_key(r.id)));
        }
        let metas: Vec<SegmentMeta> = Catalog::all(&s.catalog.segments)?;
        referenced.extend(metas.iter().map(|m| ObjectTier::segment_key(m.id)));
        // A local snapshot's checkpoint object may be uploaded while its
        // manifest is not yet: kept by prefix (every such prefix has the
        // same length).
        let local_snapshot_prefixes: HashSet<String> = s
            .snapshots
            .read()
            .values()
            .map(|snap| ObjectTier::snapshot_checkpoint_prefix(snap.meta.id))
            .collect();
        let prefix_len = ObjectTier::snapshot_checkpoint_prefix(0).len();
        let grace = Duration::from_secs(tier.config.gc_grace_s);
        let now = std::time::SystemTime::now();
        let mut report = ObjectGcReport::default();
        for dir in ["segments/", "checkpoints/"] {
            let h = tier.handle();
            let d = dir.to_string();
            for (key, meta) in tier.block(async move { h.list(&d).await })? {
                report.objects_examined += 1;
                if referenced.contains(&key)
                    || key
                        .get(..prefix_len)
                        .is_some_and(|p| local_snapshot_prefixes.contains(p))
                {
                    continue;
                }
                let modified: std::time::SystemTime = meta.last_modified.into();
                if now.duration_since(modified).unwrap_or_default() < grace {
                    report.objects_kept_recent += 1;
                    continue;
                }
                let h = tier.handle();
                let k = key.clone();
                tier.block(async move { h.delete(&k).await })?;
                report.objects_deleted += 1;
                report.bytes_deleted += meta.size;
            }
        }
        tracing::info!(?report, "object gc pass done");
        Ok(report)
    }

    fn fetch_checkpoint(&self, key: &str, kind: CheckpointKind, id: u64) -> Result<Checkpoint> {
        let s = &self.inner;
        let tier = self.tier()?;
        let h = tier.handle();
        let k = key.to_string();
        let (bytes, _) = tier
            .block(async move { h.get(&k).await })?
            .ok_or_else(|| Error::ObjectNotFound(key.to_string()))?;
        let path = checkpoint_path(&s.ckpt_dir, kind, id);
        let tmp = path.with_extension("fetch");
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        // Verify before it takes the real name.
        let mut ckpt = Checkpoint::read(&tmp)?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        ckpt.kind = kind;
        Ok(ckpt)
    }

    fn register_remote_segments(&self, refs: &[SegmentRef]) -> Result<()> {
        let s = &self.inner;
        for r in refs {
            if s.catalog.segments.contains_key(r.id.to_be_bytes())? {
                continue;
            }
            Catalog::put(
                &s.catalog.segments,
                r.id,
                &SegmentMeta {
                    id: r.id,
                    kind: SegmentKind::Gc,
                    volume_id: 0,
                    chain_index: 0,
                    remote_bytes: Some(r.bytes),
                },
            )?;
            s.remote.write().insert(r.id, r.bytes);
        }
        Ok(())
    }

    /// Drops a volume from this store without touching the object store.
    fn forget_volume(&self, name: &str) -> Result<()> {
        let s = &self.inner;
        let _admin = s.admin.lock();
        let v = s.volume_by_name(name)?;
        v.deleted.store(true, Ordering::Release);
        s.volumes.write().remove(&v.id);
        Catalog::remove(&s.catalog.volumes, v.id)?;
        s.catalog.release_name(name)?;
        s.catalog.flush()?;
        crate::store::remove_if_exists(&checkpoint_path(
            &s.ckpt_dir,
            CheckpointKind::Volume,
            v.id,
        ))?;
        Ok(())
    }
}
