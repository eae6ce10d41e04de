//! The store: one local directory holding the catalog, the segment files and
//! the checkpoints, and the registry of open volumes and snapshots.
//!
//! ```text
//! STORE/
//!   catalog/        sled database (volumes, snapshots, segments, names)
//!   segments/       <segment id>.seg, append-only log segments
//!   checkpoints/    vol-<id>.ckpt, snap-<id>.ckpt
//! ```
//!
//! Metadata operations (create, delete, snapshot, clone, GC) are blocking
//! calls; the data path ([`Volume`]) is async. Do not call the blocking ones
//! from inside a `futures::executor` task.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Weak};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};

use crate::catalog::{Catalog, NameTarget, SegmentMeta, Settings, SnapshotMeta, VolumeMeta};
use crate::checkpoint::{checkpoint_path, sync_dir, Checkpoint, CheckpointKind, LogPosition};
use crate::error::{Error, Result};
use crate::extent_map::ExtentMap;
use crate::io::{IoBackendChoice, SegmentIo};
use crate::limits::{
    check_name, DEFAULT_DROP_BEHIND_BYTES, DEFAULT_LOG_WRITER_THREADS, DEFAULT_SEGMENT_BYTES,
    DEFAULT_SEGMENT_POOL_BYTES, MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES,
};
use crate::pool::SegmentPool;
use crate::recovery::RecoveryStats;
use crate::segment::{segment_path, SegmentFile, SegmentHeader, SegmentKind, SEGMENT_HEADER_BYTES};
use crate::snapshot::{Snapshot, SnapshotInner};
use crate::tier::{ObjectTier, TierConfig};
use crate::volume::{check_size, LogTail, VolState, Volume, VolumeInner};

/// 64 random bits from the OS-seeded hasher (no extra dependency needed for
/// an id salt).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

/// The file that makes a directory a store: settings fixed at creation.
const FORMAT_FILE: &str = "format";
/// 2: logs may hold Pad records (kind 7). 3: Write records may have
/// aligned data (flag 8, `record.rs`). An open upgrades an older store, so
/// that a build that does not know what a newer one may write refuses the
/// store instead of cutting its logs at the first such record.
const FORMAT_VERSION: u32 = 3;

/// Store settings.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Size at which log segments are sealed. Fixed when the store is
    /// created; later opens use the stored value.
    pub segment_bytes: u64,
    /// Segment I/O backend.
    pub io_backend: IoBackendChoice,
    /// Written log pages leave the page cache once this many bytes were
    /// appended after them (drop-behind, see docs/architecture.md); `None`
    /// leaves them to the kernel's reclaim.
    pub drop_behind_bytes: Option<u64>,
    /// Threads that write large log appends while the caller prepares the
    /// next ones (see docs/architecture.md, "I/O"); 0 writes everything in
    /// the calling thread.
    pub log_writer_threads: usize,
    /// A volume is checkpointed in the background once this many log bytes
    /// were appended since its last checkpoint. Bounds recovery time.
    pub checkpoint_interval_bytes: u64,
    /// The cleaner relocates live data out of sealed segments whose live
    /// fraction is below this percentage (and deletes fully dead ones).
    pub gc_live_threshold_pct: u8,
    /// One cleaner pass relocates at most about this many live bytes
    /// (emptiest segments first; at least one segment); what is left waits
    /// for the next pass. 0: no bound.
    pub gc_max_relocate_bytes: u64,
    /// The object storage tier; `None` keeps everything local.
    pub tier: Option<TierConfig>,
    /// Segment files the cleaner frees are kept (up to this many bytes) and
    /// reused as new log segments of volumes writing large batches, which
    /// then overwrite written blocks instead of fresh ones (see `pool.rs`).
    /// 0 deletes every freed file.
    pub segment_pool_bytes: u64,
    /// A volume's next segments reuse pooled files once its recent append
    /// batches average at least this many bytes (see `pool.rs` for why
    /// small batches do not).
    pub reuse_min_batch_bytes: u64,
    /// Aligned appends to reused segment files bypass the page cache
    /// (`O_DIRECT`, see docs/architecture.md, "Direct appends"); false
    /// buffers them like every other append.
    pub direct_appends: bool,
    /// Write records are laid out with their data on a sector of its own
    /// (`record::FLAG_ALIGNED_DATA`: 456 more bytes per record), the
    /// layout a write straight from the guest's memory needs. Off by
    /// default: the copy path gains nothing from it yet.
    pub aligned_records: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            io_backend: IoBackendChoice::Auto,
            drop_behind_bytes: Some(DEFAULT_DROP_BEHIND_BYTES),
            log_writer_threads: DEFAULT_LOG_WRITER_THREADS,
            checkpoint_interval_bytes: 256 << 20,
            gc_live_threshold_pct: 50,
            gc_max_relocate_bytes: 256 << 20,
            tier: None,
            segment_pool_bytes: DEFAULT_SEGMENT_POOL_BYTES,
            reuse_min_batch_bytes: crate::pool::REUSE_MIN_BATCH_BYTES,
            direct_appends: true,
            aligned_records: false,
        }
    }
}

pub(crate) struct StoreInner {
    pub root: PathBuf,
    pub segments_dir: PathBuf,
    pub ckpt_dir: PathBuf,
    pub segment_bytes: u64,
    pub config: StoreConfig,
    pub io: SegmentIo,
    pub catalog: Catalog,
    pub segments: RwLock<HashMap<u64, Arc<SegmentFile>>>,
    pub volumes: RwLock<HashMap<u64, Arc<VolumeInner>>>,
    pub snapshots: RwLock<BTreeMap<u64, Arc<SnapshotInner>>>,
    /// Serializes whole-store maintenance (GC, deletes).
    pub admin: Mutex<()>,
    /// Held shared while a map is being cloned into a new volume, and
    /// exclusively while the cleaner rewrites maps.
    pub relocation: RwLock<()>,
    /// Work for the background threads (volume ids).
    background_tx: Mutex<Option<BackgroundTx>>,
    /// The active GC output segment, if any (appended to by the cleaner only).
    pub gc_tail: Mutex<Option<(Arc<SegmentFile>, u64)>>,
    /// Freed segment files kept for reuse.
    pub pool: SegmentPool,
    /// See [`Store::pool_misses`].
    pub pool_misses: std::sync::atomic::AtomicU64,
    /// Log segments started since the store opened: how much guests wrote,
    /// in segments (a cleaner pass yields to them; see `gc.rs`).
    pub log_segments_started: std::sync::atomic::AtomicU64,
    /// See [`Store::checkpoints`].
    pub checkpoints_written: std::sync::atomic::AtomicU64,
    pub checkpoints_skipped: std::sync::atomic::AtomicU64,
    /// Writes' data turned into records (see [`Store::write_stages`]).
    pub encode_clock: crate::stage_clock::StageClock,
    pub tier: Option<ObjectTier>,
    /// Segments in the object store: id -> object size.
    pub remote: RwLock<HashMap<u64, u64>>,
    /// Segment uploads queued or running (so each runs once).
    pub uploading: Mutex<std::collections::HashSet<u64>>,
    /// Block fetches in flight, shared by every reader that wants the block.
    pub fetching: Mutex<HashMap<(u64, u64), crate::remote::BlockFetch>>,
}

pub(crate) fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl StoreInner {
    /// The open segment file `id`.
    pub fn segment(&self, id: u64) -> Result<Arc<SegmentFile>> {
        self.segments
            .read()
            .get(&id)
            .cloned()
            .ok_or(Error::SegmentMissing { segment_id: id })
    }

    /// Creates a segment durably: catalog entry first (so a file without an
    /// entry is always garbage), then the file with its header, fsynced with
    /// its directory entry. With `reuse`, the file is a pooled one when the
    /// pool has any (see `pool.rs`).
    pub fn new_segment(
        &self,
        kind: SegmentKind,
        volume_id: u64,
        chain_index: u64,
        reuse: bool,
    ) -> Result<Arc<SegmentFile>> {
        let id = self.catalog.generate_id()?;
        Catalog::put(
            &self.catalog.segments,
            id,
            &SegmentMeta {
                id,
                kind,
                volume_id,
                chain_index,
                remote_bytes: None,
            },
        )?;
        self.catalog.flush()?;
        let header = SegmentHeader {
            segment_id: id,
            volume_id,
            chain_index,
            kind,
        };
        if kind == SegmentKind::Log {
            self.log_segments_started
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let pooled = if reuse { self.pool.take() } else { None };
        if reuse && pooled.is_none() {
            self.pool_misses
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let seg = match pooled {
            Some(from) => match SegmentFile::reuse(
                &self.segments_dir,
                header,
                &from,
                self.config.direct_appends,
            ) {
                Ok(seg) => {
                    tracing::debug!(segment = id, from = %from.display(), "segment file reused");
                    seg
                }
                Err(e) => {
                    tracing::warn!("cannot reuse {}: {e}", from.display());
                    if from.exists() {
                        self.pool.put_back(from);
                    }
                    // A file renamed into place but not rewritten is
                    // replaced: create_new would refuse its name.
                    remove_if_exists(&segment_path(&self.segments_dir, id))?;
                    SegmentFile::create(&self.segments_dir, header)?
                }
            },
            None => SegmentFile::create(&self.segments_dir, header)?,
        };
        seg.file.sync_all().map_err(|e| Error::io(&seg.path, e))?;
        sync_dir(&self.segments_dir)?;
        let seg = Arc::new(seg);
        self.segments.write().insert(id, seg.clone());
        Ok(seg)
    }

    /// Whether `v`'s next log segment should reuse a pooled file: only for
    /// volumes writing large batches ([`StoreConfig::reuse_min_batch_bytes`]).
    fn reuse_for(&self, v: &VolumeInner) -> bool {
        v.batch_bytes_avg.load(std::sync::atomic::Ordering::Relaxed)
            >= self.config.reuse_min_batch_bytes
    }

    /// Moves a volume's log to a new segment (the caller wrote the seal),
    /// the spare made ahead by the spare thread when there is one,
    /// then asks for the next spare.
    ///
    /// Why spares: making a segment durable (catalog entry, file, two
    /// fsyncs) took 1.4 ms at the median and 6.7 ms at p90 (28 ms at worst)
    /// on 128 KiB writes at 1.3 GB/s, about 50 times a second, with the
    /// volume's lock held: every write of the volume waited.
    pub fn roll_log(&self, v: &VolumeInner, st: &mut VolState) -> Result<()> {
        let next = st.tail.chain_index + 1;
        let seg = match v.spare.take_for(next) {
            Some(seg) => seg,
            None => {
                tracing::debug!(volume = %v.name, "no spare log segment ready; making one inline");
                self.new_segment(SegmentKind::Log, v.id, next, self.reuse_for(v))?
            }
        };
        st.tail = LogTail {
            segment: seg,
            chain_index: next,
            offset: SEGMENT_HEADER_BYTES,
        };
        if v.spare.queue(next + 1) {
            if let Some(tx) = self.background_tx.lock().as_ref() {
                let _ = tx.spare.send(v.id);
            }
        }
        Ok(())
    }

    /// Makes the spare segment queued for `v`, unless `roll_log` took the
    /// job back meanwhile (see [`crate::volume::SpareSegment`]).
    fn make_spare(&self, v: &VolumeInner) {
        let Some(chain_index) = v.spare.start() else {
            return;
        };
        match self.new_segment(SegmentKind::Log, v.id, chain_index, self.reuse_for(v)) {
            Ok(seg) => v.spare.made(chain_index, seg),
            Err(e) => {
                tracing::warn!(volume = %v.name, "cannot make a spare log segment: {e}");
                v.spare.failed();
            }
        }
    }

    /// Queues a background checkpoint when enough log has accumulated.
    pub fn maybe_checkpoint(&self, v: &VolumeInner) {
        if v.state.read().bytes_since_ckpt < self.config.checkpoint_interval_bytes {
            return;
        }
        if v.ckpt_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(tx) = self.background_tx.lock().as_ref() {
            let _ = tx.checkpoint.send(v.id);
        }
    }

    pub fn checkpoint_volume(self: &Arc<Self>, v: &Arc<VolumeInner>) -> Result<()> {
        let _serial = v.ckpt_lock.lock();
        self.checkpoint_volume_locked(v)
    }

    /// Writes a checkpoint of `v` (caller holds `v.ckpt_lock`). Everything
    /// the checkpoint covers is flushed first, and every snapshot of `v`
    /// taken before the checkpoint gets its own checkpoint file first, since
    /// replay will no longer pass its marker. A volume unchanged since the
    /// checkpoint this process last wrote for it is left alone: that file
    /// already says what a new one would, and each checkpoint costs several
    /// fsyncs (a cleaner pass checkpoints every volume of the store, busy or
    /// not).
    pub fn checkpoint_volume_locked(self: &Arc<Self>, v: &Arc<VolumeInner>) -> Result<()> {
        let (map, size_bytes, seq, position, bytes_since, generation, current) = {
            let st = v.state.read();
            (
                st.map.clone(),
                st.size_bytes,
                st.next_seq - 1,
                LogPosition {
                    chain_index: st.tail.chain_index,
                    offset: st.tail.offset,
                },
                st.bytes_since_ckpt,
                st.map_generation,
                st.ckpt_generation == Some(st.map_generation),
            )
        };
        let pending: Vec<_> = self
            .snapshots
            .read()
            .values()
            .filter(|s| {
                s.meta.volume_id == v.id
                    && s.meta.seq <= seq
                    && !s.ckpt_written.load(Ordering::Acquire)
            })
            .cloned()
            .collect();
        if current && pending.is_empty() {
            self.checkpoints_skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let handle = Volume {
            store: self.clone(),
            inner: v.clone(),
        };
        futures::executor::block_on(handle.flush_local())?;
        for s in pending {
            s.write_checkpoint(&self.ckpt_dir, false)?;
        }
        // Catalog entries of those snapshots must be durable before replay
        // stops passing their markers (recovery re-adds them from markers).
        self.catalog.flush()?;
        Checkpoint {
            kind: CheckpointKind::Volume,
            id: v.id,
            volume_id: v.id,
            size_bytes,
            seq,
            replay_from: position,
            map,
        }
        .write(&self.ckpt_dir)?;
        self.checkpoints_written.fetch_add(1, Ordering::Relaxed);
        let mut st = v.state.write();
        st.ckpt_position = Some(position);
        st.ckpt_generation = Some(generation);
        st.bytes_since_ckpt = st.bytes_since_ckpt.saturating_sub(bytes_since);
        tracing::debug!(volume = %v.name, seq, "checkpoint written");
        Ok(())
    }

    pub(crate) fn volume_by_name(&self, name: &str) -> Result<Arc<VolumeInner>> {
        match self.catalog.lookup_name(name)? {
            Some(NameTarget::Volume(id)) => self
                .volumes
                .read()
                .get(&id)
                .cloned()
                .ok_or_else(|| Error::VolumeNotFound(name.to_string())),
            _ => Err(Error::VolumeNotFound(name.to_string())),
        }
    }

    fn snapshot_by_name(&self, name: &str) -> Result<Arc<SnapshotInner>> {
        let not_found = || Error::SnapshotNotFound(name.to_string());
        match self.catalog.lookup_name(name)? {
            // A snapshot still being taken is not handed out.
            Some(NameTarget::Snapshot(id)) => self
                .snapshots
                .read()
                .get(&id)
                .filter(|snap| snap.ready.load(Ordering::Acquire))
                .cloned()
                .ok_or_else(not_found),
            _ => Err(not_found()),
        }
    }
}

/// Facts about a volume, for listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    pub id: u64,
    pub size_bytes: u64,
    pub extent_count: usize,
    pub parent_snapshot: Option<u64>,
}

/// Facts about a snapshot, for listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub name: String,
    pub id: u64,
    pub volume_id: u64,
    /// The volume it was taken of (kept after that volume is deleted).
    pub volume_name: String,
    pub size_bytes: u64,
    pub extent_count: usize,
    pub created_unix_s: u64,
}

/// An open store. Dropping it without [`Store::close`] behaves like a crash
/// (no final checkpoint), which is safe: the next open replays the log.
pub struct Store {
    pub(crate) inner: Arc<StoreInner>,
    /// `cowstore-ckpt` and `cowstore-spare` (see [`BackgroundTx`]).
    background: Vec<JoinHandle<()>>,
    recovery: RecoveryStats,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.inner.root)
            .finish()
    }
}

impl Store {
    /// Creates a new, empty store in `dir` (created if missing, must not
    /// already hold a store).
    pub fn create(dir: impl AsRef<Path>, config: StoreConfig) -> Result<Store> {
        let dir = dir.as_ref();
        check_drop_behind(&config)?;
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&config.segment_bytes) {
            return Err(Error::Config(format!(
                "segment size {} outside {MIN_SEGMENT_BYTES}..={MAX_SEGMENT_BYTES}",
                config.segment_bytes
            )));
        }
        if dir.join(FORMAT_FILE).exists() {
            return Err(Error::StoreExists(dir.to_path_buf()));
        }
        for sub in ["segments", "checkpoints", "catalog"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| Error::io(dir.join(sub), e))?;
        }
        // The format file is written last and atomically: a directory
        // without it is not a store yet, and creating it again is safe.
        let settings = Settings {
            format_version: FORMAT_VERSION,
            segment_bytes: config.segment_bytes,
            id_salt: random_u64(),
        };
        write_settings(dir, &settings)?;
        Self::open(dir, config)
    }

    /// Opens an existing store, recovering from any crash.
    pub fn open(dir: impl AsRef<Path>, config: StoreConfig) -> Result<Store> {
        let dir = dir.as_ref();
        check_drop_behind(&config)?;
        let format_path = dir.join(FORMAT_FILE);
        let body = match std::fs::read(&format_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotAStore(dir.to_path_buf()))
            }
            Err(e) => return Err(Error::io(&format_path, e)),
        };
        let settings: Settings = serde_json::from_slice(&body)
            .map_err(|e| Error::Config(format!("{}: {e}", format_path.display())))?;
        if !(1..=FORMAT_VERSION).contains(&settings.format_version) {
            return Err(Error::Config(format!(
                "store format version {} is not supported",
                settings.format_version
            )));
        }
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&settings.segment_bytes) {
            return Err(Error::Config(format!(
                "{}: bad segment size",
                format_path.display()
            )));
        }
        let catalog = Catalog::open(&dir.join("catalog"), settings.id_salt)?;
        if settings.format_version < FORMAT_VERSION {
            // After the catalog's lock: this process owns the store now.
            tracing::info!(store = %dir.display(), from = settings.format_version, to = FORMAT_VERSION, "upgrading the store format");
            write_settings(
                dir,
                &Settings {
                    format_version: FORMAT_VERSION,
                    ..settings.clone()
                },
            )?;
        }
        let pool = SegmentPool::open(
            &dir.join("free"),
            config.segment_pool_bytes,
            settings.segment_bytes,
        )?;
        let io = SegmentIo::new(
            config.io_backend,
            config.drop_behind_bytes,
            config.log_writer_threads,
        )
        .map_err(|e| Error::io(dir, e))?;
        let tier = match &config.tier {
            Some(t) => Some(ObjectTier::open(
                t.clone(),
                dir.join("cache"),
                // The holder is the store, not the process: only one process
                // can open a store (the catalog lock), and a restarted one
                // after a crash is the same writer.
                format!("store {:016x} on {}", settings.id_salt, hostname()),
            )?),
            None => None,
        };
        tracing::info!(store = %dir.display(), io = io.name(), "opening store");
        let (checkpoint_tx, checkpoint_rx) = mpsc::channel();
        let (spare_tx, spare_rx) = mpsc::channel();
        let inner = Arc::new(StoreInner {
            root: dir.to_path_buf(),
            segments_dir: dir.join("segments"),
            ckpt_dir: dir.join("checkpoints"),
            segment_bytes: settings.segment_bytes,
            config,
            io,
            catalog,
            segments: RwLock::new(HashMap::new()),
            volumes: RwLock::new(HashMap::new()),
            snapshots: RwLock::new(BTreeMap::new()),
            admin: Mutex::new(()),
            relocation: RwLock::new(()),
            background_tx: Mutex::new(Some(BackgroundTx {
                checkpoint: checkpoint_tx,
                spare: spare_tx,
            })),
            gc_tail: Mutex::new(None),
            pool,
            pool_misses: Default::default(),
            log_segments_started: Default::default(),
            checkpoints_written: Default::default(),
            checkpoints_skipped: Default::default(),
            encode_clock: Default::default(),
            tier,
            remote: RwLock::new(HashMap::new()),
            uploading: Mutex::new(std::collections::HashSet::new()),
            fetching: Mutex::new(HashMap::new()),
        });
        let recovery = crate::recovery::recover(&inner)?;
        if inner.tier.is_some() {
            inner.tier_resume()?;
        }
        let mut store = Store {
            inner,
            background: Vec::with_capacity(2),
            recovery,
        };
        for (name, rx, job) in [
            (
                "cowstore-ckpt",
                checkpoint_rx,
                checkpoint_job as BackgroundJob,
            ),
            ("cowstore-spare", spare_rx, spare_job),
        ] {
            let weak = Arc::downgrade(&store.inner);
            let thread = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || run_background(weak, rx, job))
                .map_err(|e| Error::io(dir, e))?;
            store.background.push(thread);
        }
        Ok(store)
    }

    /// Opens the store in `dir`, creating it if it does not exist.
    pub fn open_or_create(dir: impl AsRef<Path>, config: StoreConfig) -> Result<Store> {
        if dir.as_ref().join(FORMAT_FILE).exists() {
            Self::open(dir, config)
        } else {
            Self::create(dir, config)
        }
    }

    /// What opening this store had to replay.
    pub fn recovery_stats(&self) -> RecoveryStats {
        self.recovery
    }

    /// Log bytes appended with `O_DIRECT` since the store was opened (see
    /// [`StoreConfig::direct_appends`]).
    pub fn direct_append_bytes(&self) -> u64 {
        self.inner.io.direct_bytes()
    }

    /// Of [`Store::direct_append_bytes`], those written from buffers
    /// registered with the writing thread's io_uring (no page pinning per
    /// write; inside [`crate::block_on`], where the kernel allows it).
    pub fn fixed_buffer_append_bytes(&self) -> u64 {
        self.inner.io.fixed_bytes()
    }

    /// Where writes' time went since the store was opened: encoding their
    /// data into records, and their direct appends (see `stage_clock.rs`).
    pub fn write_stages(&self) -> crate::WriteStages {
        crate::WriteStages {
            encode: self.inner.encode_clock.totals(),
            direct_append: self.inner.io.direct_append_totals(),
        }
    }

    /// Name of the segment I/O backend in use (`io_uring` or `blocking`).
    pub fn io_backend(&self) -> &'static str {
        self.inner.io.name()
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn stop_background(&mut self) {
        self.inner.background_tx.lock().take();
        for t in self.background.drain(..) {
            let _ = t.join();
        }
    }

    /// Checkpoints every volume and closes the store, so the next open
    /// replays nothing.
    pub fn close(mut self) -> Result<()> {
        self.stop_background();
        self.checkpoint_all()?;
        self.inner.catalog.flush()
    }

    /// Stops background work and drops the store without flushing or
    /// checkpointing anything: what a crash leaves (tests use this).
    pub fn abandon(mut self) {
        self.stop_background();
    }

    /// Checkpoints every volume.
    pub fn checkpoint_all(&self) -> Result<()> {
        let volumes: Vec<_> = self.inner.volumes.read().values().cloned().collect();
        for v in volumes {
            self.inner.checkpoint_volume(&v)?;
        }
        Ok(())
    }

    /// Creates an empty volume of `size_bytes` (a positive multiple of 512,
    /// at most 64 TiB).
    pub fn create_volume(&self, name: &str, size_bytes: u64) -> Result<Volume> {
        check_name(name)?;
        check_size(size_bytes)?;
        self.add_volume(name, size_bytes, None, ExtentMap::new())
    }

    fn add_volume(
        &self,
        name: &str,
        size_bytes: u64,
        parent: Option<u64>,
        map: ExtentMap,
    ) -> Result<Volume> {
        let s = &self.inner;
        if s.tier.is_some() {
            // One writer per volume name across every store on the bucket.
            s.acquire_lease(name)?;
        }
        let id = s.catalog.generate_id()?;
        s.catalog.claim_name(name, NameTarget::Volume(id))?;
        let created = (|| {
            let seg = s.new_segment(SegmentKind::Log, id, 0, false)?;
            Catalog::put(
                &s.catalog.volumes,
                id,
                &VolumeMeta {
                    id,
                    name: name.to_string(),
                    size_bytes,
                    parent_snapshot: parent,
                    created_unix_s: now_unix_s(),
                },
            )?;
            s.catalog.flush()?;
            Ok::<_, Error>(seg)
        })();
        let seg = match created {
            Ok(seg) => seg,
            Err(e) => {
                let _ = s.catalog.release_name(name);
                return Err(e);
            }
        };
        let state = VolState {
            map,
            size_bytes,
            next_seq: 1,
            tail: LogTail {
                segment: seg.clone(),
                chain_index: 0,
                offset: SEGMENT_HEADER_BYTES,
            },
            dirty: Vec::new(),
            durable_seq: 0,
            durable_tail: (seg.id, SEGMENT_HEADER_BYTES),
            ckpt_position: None,
            bytes_since_ckpt: 0,
            map_generation: 0,
            ckpt_generation: None,
        };
        let inner = Arc::new(VolumeInner::new(id, name.to_string(), parent, state));
        s.volumes.write().insert(id, inner.clone());
        Ok(Volume {
            store: s.clone(),
            inner,
        })
    }

    /// Opens the volume named `name`.
    pub fn volume(&self, name: &str) -> Result<Volume> {
        Ok(Volume {
            store: self.inner.clone(),
            inner: self.inner.volume_by_name(name)?,
        })
    }

    pub fn volumes(&self) -> Vec<VolumeInfo> {
        let mut out: Vec<_> = self
            .inner
            .volumes
            .read()
            .values()
            .map(|v| {
                let st = v.state.read();
                VolumeInfo {
                    name: v.name.clone(),
                    id: v.id,
                    size_bytes: st.size_bytes,
                    extent_count: st.map.len(),
                    parent_snapshot: v.parent_snapshot,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Deletes a volume. Its snapshots live on; data no one references any
    /// more is freed by the next [`Store::gc`].
    pub fn delete_volume(&self, name: &str) -> Result<()> {
        let s = &self.inner;
        let _admin = s.admin.lock();
        let v = s.volume_by_name(name)?;
        {
            let _serial = v.ckpt_lock.lock();
            // Gives every snapshot of the volume its own checkpoint.
            s.checkpoint_volume_locked(&v)?;
            v.deleted.store(true, Ordering::Release);
        }
        s.volumes.write().remove(&v.id);
        Catalog::remove(&s.catalog.volumes, v.id)?;
        s.catalog.release_name(name)?;
        s.catalog.flush()?;
        remove_if_exists(&checkpoint_path(&s.ckpt_dir, CheckpointKind::Volume, v.id))?;
        if let Some(tier) = &s.tier {
            let h = tier.handle();
            let key = ObjectTier::volume_manifest_key(name);
            tier.block(async move { h.delete(&key).await })?;
            if let Err(e) = s.release_lease(name) {
                tracing::warn!(volume = name, "lease not released: {e}");
            }
        }
        tracing::info!(volume = name, "volume deleted");
        Ok(())
    }

    /// Takes a read-only snapshot `name` of `volume`: every write completed
    /// before the call is in it, and it is durable when this returns. O(1)
    /// in the size of the volume.
    pub fn create_snapshot(&self, volume: &str, name: &str) -> Result<SnapshotInfo> {
        check_name(name)?;
        let s = &self.inner;
        let v = s.volume_by_name(volume)?;
        let id = s.catalog.generate_id()?;
        s.catalog.claim_name(name, NameTarget::Snapshot(id))?;
        let handle = Volume {
            store: s.clone(),
            inner: v.clone(),
        };
        let created_unix_s = now_unix_s();
        let mut meta = None;
        let marked = {
            let _reloc = s.relocation.read();
            futures::executor::block_on(handle.append_snapshot_marker(id, name, |st, seq| {
                let m = SnapshotMeta {
                    id,
                    name: name.to_string(),
                    volume_id: v.id,
                    volume_name: v.name.clone(),
                    published: false,
                    seq,
                    size_bytes: st.size_bytes,
                    created_unix_s,
                };
                // In the catalog before any checkpoint can pass the marker:
                // a checkpoint flushes the catalog before it is written.
                let put = Catalog::put(&s.catalog.snapshots, id, &m);
                let snap = Arc::new(SnapshotInner::new(m.clone(), st.map.clone(), false));
                s.snapshots.write().insert(id, snap.clone());
                meta = Some((m, snap, put));
            }))
        };
        let result = marked.and_then(|_| futures::executor::block_on(handle.flush_local()));
        let (meta, snap) = match (result, meta) {
            (Ok(()), Some((meta, snap, Ok(())))) => (meta, snap),
            (res, put) => {
                s.snapshots.write().remove(&id);
                let _ = Catalog::remove(&s.catalog.snapshots, id);
                let _ = s.catalog.release_name(name);
                res?;
                if let Some((_, _, Err(e))) = put {
                    return Err(e);
                }
                return Err(Error::Closed);
            }
        };
        if s.tier.is_some() {
            // Everything the snapshot reads goes into sealed, immutable
            // segments, so that it can be uploaded.
            futures::executor::block_on(handle.seal_log())?;
        }
        snap.ready.store(true, Ordering::Release);
        if let Some(tier) = &s.tier {
            if tier.config.durability == crate::tier::Durability::Remote {
                futures::executor::block_on(s.publish_snapshot(snap.clone()))?;
            } else {
                let me = s.clone();
                let snap = snap.clone();
                tier.spawn(async move {
                    if let Err(e) = me.publish_snapshot(snap).await {
                        tracing::warn!("publishing snapshot failed (retried at next open): {e}");
                    }
                });
            }
        }
        let extent_count = snap.map.read().len();
        Ok(SnapshotInfo {
            name: meta.name,
            id,
            volume_id: meta.volume_id,
            volume_name: meta.volume_name,
            size_bytes: meta.size_bytes,
            extent_count,
            created_unix_s,
        })
    }

    /// Opens a snapshot for reading.
    pub fn snapshot(&self, name: &str) -> Result<Snapshot> {
        Ok(Snapshot {
            store: self.inner.clone(),
            inner: self.inner.snapshot_by_name(name)?,
        })
    }

    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        let reg = self.inner.snapshots.read();
        let mut out: Vec<_> = reg
            .values()
            .filter(|x| x.ready.load(Ordering::Acquire))
            .map(|x| SnapshotInfo {
                name: x.meta.name.clone(),
                id: x.meta.id,
                volume_id: x.meta.volume_id,
                volume_name: x.meta.volume_name.clone(),
                size_bytes: x.meta.size_bytes,
                extent_count: x.map.read().len(),
                created_unix_s: x.meta.created_unix_s,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Makes a new writable volume `name` from `snapshot`, sharing all of its
    /// data: no data is copied.
    pub fn clone_snapshot(&self, snapshot: &str, name: &str) -> Result<Volume> {
        check_name(name)?;
        let s = &self.inner;
        let _reloc = s.relocation.read();
        let snap = s.snapshot_by_name(snapshot)?;
        // The clone's recovery starts from the snapshot's checkpoint until
        // the clone has its own.
        snap.write_checkpoint(&s.ckpt_dir, false)?;
        let map = snap.map.read().clone();
        self.add_volume(name, snap.meta.size_bytes, Some(snap.meta.id), map)
    }

    /// Deletes a snapshot. Clones made from it keep their data.
    pub fn delete_snapshot(&self, name: &str) -> Result<()> {
        let s = &self.inner;
        let _admin = s.admin.lock();
        let snap = s.snapshot_by_name(name)?;
        let dependents: Vec<_> = s
            .volumes
            .read()
            .values()
            .filter(|v| {
                v.parent_snapshot == Some(snap.meta.id) && v.state.read().ckpt_position.is_none()
            })
            .cloned()
            .collect();
        for v in dependents {
            s.checkpoint_volume(&v)?;
        }
        let source = s.volumes.read().get(&snap.meta.volume_id).cloned();
        match source {
            Some(src) => {
                let _serial = src.ckpt_lock.lock();
                s.snapshots.write().remove(&snap.meta.id);
                // Replay must never meet this snapshot's marker again.
                if let Err(e) = s.checkpoint_volume_locked(&src) {
                    s.snapshots.write().insert(snap.meta.id, snap.clone());
                    return Err(e);
                }
            }
            None => {
                s.snapshots.write().remove(&snap.meta.id);
            }
        }
        if let Some(tier) = &s.tier {
            let h = tier.handle();
            let key = ObjectTier::snapshot_manifest_key(name);
            let ours = futures::executor::block_on(
                s.get_manifest::<crate::tier::manifest::SnapshotManifest>(&key),
            )
            .ok()
            .flatten()
            .is_some_and(|m| m.id == snap.meta.id);
            if ours {
                tier.block(async move { h.delete(&key).await })?;
            }
        }
        Catalog::remove(&s.catalog.snapshots, snap.meta.id)?;
        s.catalog.release_name(name)?;
        s.catalog.flush()?;
        remove_if_exists(&checkpoint_path(
            &s.ckpt_dir,
            CheckpointKind::Snapshot,
            snap.meta.id,
        ))?;
        tracing::info!(snapshot = name, "snapshot deleted");
        Ok(())
    }

    /// Runs the segment cleaner once. See [`crate::gc`].
    pub fn gc(&self) -> Result<crate::gc::GcReport> {
        crate::gc::run(&self.inner, crate::gc::GcMode::Full)
    }

    /// Runs a cleaner pass of `mode` (see [`crate::gc::GcMode`]).
    pub fn gc_with(&self, mode: crate::gc::GcMode) -> Result<crate::gc::GcReport> {
        crate::gc::run(&self.inner, mode)
    }

    /// How many times a volume wanted a pooled segment file and the pool
    /// was empty (it then started a new file): a cleaner pass would have
    /// given it one.
    pub fn pool_misses(&self) -> u64 {
        self.inner
            .pool_misses
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Volume checkpoints since the store opened: (written, skipped because
    /// the volume had not changed since the last one written).
    pub fn checkpoints(&self) -> (u64, u64) {
        (
            self.inner.checkpoints_written.load(Ordering::Relaxed),
            self.inner.checkpoints_skipped.load(Ordering::Relaxed),
        )
    }

    /// Freed segment files kept for reuse (see
    /// [`StoreConfig::segment_pool_bytes`]); not in [`Store::disk_bytes`].
    pub fn pooled_segments(&self) -> usize {
        self.inner.pool.len()
    }

    /// How many freed segment files the pool keeps at most.
    pub fn pool_capacity_segments(&self) -> usize {
        self.inner.pool.capacity()
    }

    /// Bytes held by segment files on local disk.
    pub fn disk_bytes(&self) -> u64 {
        self.inner
            .segments
            .read()
            .values()
            .filter_map(|s| s.len_bytes().ok())
            .sum()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop_background();
    }
}

/// A zero drop-behind window is a configuration error, not a panic in the
/// drop-behind thread's setup.
fn check_drop_behind(config: &StoreConfig) -> Result<()> {
    if config.drop_behind_bytes == Some(0) {
        return Err(Error::Config(
            "drop_behind_bytes must be above 0 (None turns drop-behind off)".into(),
        ));
    }
    Ok(())
}

/// Writes the format file atomically (a temporary file, synced, renamed).
fn write_settings(dir: &Path, settings: &Settings) -> Result<()> {
    let tmp = dir.join("format.tmp");
    let body = serde_json::to_vec_pretty(settings).map_err(|e| Error::Config(e.to_string()))?;
    std::fs::write(&tmp, body)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, dir.join(FORMAT_FILE)))
        .map_err(|e| Error::io(&tmp, e))?;
    sync_dir(dir)
}

pub(crate) fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Senders to the background threads; each job names a volume by id.
struct BackgroundTx {
    /// `cowstore-ckpt`: a checkpoint of the volume.
    checkpoint: mpsc::Sender<u64>,
    /// `cowstore-spare`: the volume's next log segment, made ahead of need.
    /// Not on the checkpoint thread: at 1.3 GB/s of 128 KiB writes a
    /// checkpoint is due every 256 MiB (about 5 a second) and kept that
    /// thread busy, so most spare jobs waited behind one, were taken back
    /// by the roll and made inline, fsyncs and all, by the guest's queue
    /// worker (`perf` off-CPU stacks: ~60 of ~80 rolls in 2 s).
    spare: mpsc::Sender<u64>,
}

type BackgroundJob = fn(&Arc<StoreInner>, &Arc<VolumeInner>);

fn checkpoint_job(store: &Arc<StoreInner>, v: &Arc<VolumeInner>) {
    if let Err(e) = store.checkpoint_volume(v) {
        tracing::warn!(volume = %v.name, "background checkpoint failed: {e}");
    }
    // Cleared only now: while the checkpoint ran, the volume's log was still
    // past the interval (the count drops at its end), and every append
    // then queued another, which ran at once for the few bytes written
    // meanwhile (at 3.5 GB/s of 128 KiB writes, every checkpoint ran twice;
    // each costs several fsyncs, and the disk under this VM serves nothing
    // else during one). What was appended meanwhile triggers the next.
    v.ckpt_queued.store(false, Ordering::Release);
}

fn spare_job(store: &Arc<StoreInner>, v: &Arc<VolumeInner>) {
    store.make_spare(v);
}

/// Runs `job` for every volume id received until the store drops the
/// sender (or is gone).
fn run_background(store: Weak<StoreInner>, rx: mpsc::Receiver<u64>, job: BackgroundJob) {
    while let Ok(id) = rx.recv() {
        let Some(store) = store.upgrade() else { return };
        let Some(v) = store.volumes.read().get(&id).cloned() else {
            continue;
        };
        job(&store, &v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use std::time::{Duration, Instant};

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A spare is made while a checkpoint runs: the two jobs have threads
    /// of their own (sharing one, a spare queued behind a checkpoint was
    /// taken back and made inline by the next roll).
    #[test]
    fn spares_are_made_while_a_checkpoint_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let config = StoreConfig {
            segment_bytes: 64 << 10,
            checkpoint_interval_bytes: 64 << 10,
            ..StoreConfig::default()
        };
        let store = Store::create(&path, config).unwrap();
        let vol = store.create_volume("v", 4 << 20).unwrap();
        let v = vol.inner.clone();
        // The checkpoint job blocks on the volume's checkpoint lock.
        let held = v.ckpt_lock.lock();
        // Incompressible, so that 16 KiB writes roll 64 KiB segments.
        let data = crate::record::tests::random_bytes(16 << 10);
        for at in (0..256u64 << 10).step_by(16 << 10) {
            block_on(vol.write(at, &data)).unwrap();
        }
        // The first checkpoint job (due after 64 KiB of log) now waits on
        // the lock, and every roll after it queued a spare job.
        // Header-only segment files: spares not rolled onto yet.
        let spares = || {
            std::fs::read_dir(path.join("segments"))
                .unwrap()
                .filter(|e| e.as_ref().unwrap().metadata().unwrap().len() == SEGMENT_HEADER_BYTES)
                .count()
        };
        wait_until("a spare while the checkpoint waits", || spares() == 1);
        drop(held);
        block_on(vol.flush()).unwrap();
    }

    /// Writes that arrive while a background checkpoint waits or runs do
    /// not queue a second one: the log is still past the interval until
    /// the checkpoint ends, and each append used to queue another, which
    /// then ran at once for nothing (every checkpoint ran twice at speed).
    #[test]
    fn writes_during_a_checkpoint_queue_no_second_one() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            checkpoint_interval_bytes: 64 << 10,
            ..StoreConfig::default()
        };
        let store = Store::create(dir.path().join("s"), config).unwrap();
        let vol = store.create_volume("v", 4 << 20).unwrap();
        let held = vol.inner.ckpt_lock.lock();
        let data = crate::record::tests::random_bytes(16 << 10);
        for at in (0..128u64 << 10).step_by(16 << 10) {
            block_on(vol.write(at, &data)).unwrap();
        }
        // The job thread has taken the job by now and waits on the lock.
        std::thread::sleep(Duration::from_millis(100));
        for at in (128u64 << 10..512 << 10).step_by(16 << 10) {
            block_on(vol.write(at, &data)).unwrap();
        }
        drop(held);
        wait_until("the checkpoint", || store.checkpoints().0 == 1);
        // Room for a second job to run, if one had been queued.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(store.checkpoints(), (1, 0), "one checkpoint, no second");
        assert!(vol.inner.state.read().bytes_since_ckpt < 64 << 10);
    }

    /// A checkpoint of a volume unchanged since its last one is skipped
    /// (a cleaner pass checkpoints every volume of the store); one that
    /// changed, by a write or by the cleaner moving its data, is written.
    #[test]
    fn unchanged_volumes_are_not_checkpointed_again() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            checkpoint_interval_bytes: 1 << 40,
            ..StoreConfig::default()
        };
        let store = Store::create(dir.path().join("s"), config.clone()).unwrap();
        let busy = store.create_volume("busy", 1 << 20).unwrap();
        let idle = store.create_volume("idle", 1 << 20).unwrap();
        block_on(idle.write(0, &[7; 4096])).unwrap();
        store.checkpoint_all().unwrap();
        assert_eq!(store.checkpoints(), (2, 0), "the first of each is written");
        block_on(busy.write(0, &[1; 4096])).unwrap();
        store.checkpoint_all().unwrap();
        assert_eq!(store.checkpoints(), (3, 1), "only the written volume");
        store.checkpoint_all().unwrap();
        assert_eq!(store.checkpoints(), (3, 3));
        // A relocation changes the map without an append.
        idle.inner.state.write().map_generation += 1;
        store.checkpoint_all().unwrap();
        assert_eq!(store.checkpoints(), (4, 4));
        // The skipped checkpoints lose nothing: a crash now replays nothing
        // and finds both volumes as they are.
        drop((busy, idle));
        store.abandon();
        let store = Store::open(dir.path().join("s"), config).unwrap();
        assert_eq!(store.recovery_stats().log_bytes_replayed, 0);
        let busy = store.volume("busy").unwrap();
        let idle = store.volume("idle").unwrap();
        assert_eq!(block_on(busy.read(0, 4096)).unwrap(), vec![1; 4096]);
        assert_eq!(block_on(idle.read(0, 4096)).unwrap(), vec![7; 4096]);
    }
}
