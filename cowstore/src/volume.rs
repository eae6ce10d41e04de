//! Volumes: the write path (log append + map update), the read path (map
//! lookup + checksummed fetch), flush, discard, write-zeroes and resize.
//!
//! Ordering: a write reserves its log position, takes its sequence numbers
//! and updates the extent map in one critical section, so the in-memory map
//! always equals what replaying the log in order produces. The bytes go to
//! disk after the lock is released; until they land, readers are served from
//! the write's own buffer (the pending table), and `flush` waits for them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::checkpoint::LogPosition;
use crate::error::{Error, Result};
use crate::extent_map::{Extent, ExtentMap, Piece};
use crate::inflight::Inflight;
use crate::limits::{
    MAX_IO_BYTES, MAX_RECORD_DATA_BYTES, MAX_TRIM_BYTES, MAX_VOLUME_BYTES, SECTOR_BYTES,
};
use crate::local_ring;
use crate::log_buf::{Lease, LogBuf};
use crate::record::{self, RecordHeader, RecordKind, RECORD_HEADER_BYTES};
use crate::segment::{SegmentFile, DIRECT_ALIGN_BYTES};
use crate::store::StoreInner;

/// The append point of a volume's log.
#[derive(Clone, Debug)]
pub(crate) struct LogTail {
    pub segment: Arc<SegmentFile>,
    pub chain_index: u64,
    pub offset: u64,
}

pub(crate) struct VolState {
    pub map: ExtentMap,
    pub size_bytes: u64,
    /// Sequence number the next record gets.
    pub next_seq: u64,
    pub tail: LogTail,
    /// Segments written since the last flush took the list.
    pub dirty: Vec<Arc<SegmentFile>>,
    /// Every record up to this seq is durable.
    pub durable_seq: u64,
    /// Where the log was when the last flush began: everything before it is
    /// durable. (Used by crash tests to cut only what was never flushed.)
    pub durable_tail: (u64, u64),
    /// Where the last checkpoint says replay starts.
    pub ckpt_position: Option<LogPosition>,
    /// Log bytes appended since the last checkpoint.
    pub bytes_since_ckpt: u64,
    /// Bumped by every change a checkpoint records: each append (records,
    /// seals, resizes) and each cleaner relocation of the map.
    pub map_generation: u64,
    /// The `map_generation` the last checkpoint written in this process
    /// captured (`None`: none yet). Equal to `map_generation`, the
    /// checkpoint file already describes the volume as it is, and another
    /// would only cost its fsyncs.
    pub ckpt_generation: Option<u64>,
}

/// A record still on its way to disk: readers take its bytes from here.
struct PendingRecord {
    buf: Arc<LogBuf>,
    /// Offset of the record header within `buf`.
    at: usize,
}

pub(crate) struct VolumeInner {
    pub id: u64,
    pub name: String,
    /// For a clone: the snapshot whose checkpoint its recovery starts from
    /// until it has a checkpoint of its own.
    pub parent_snapshot: Option<u64>,
    /// A checkpoint request is queued for the background checkpointer.
    pub ckpt_queued: AtomicBool,
    pub state: RwLock<VolState>,
    pending: Mutex<HashMap<(u64, u32), PendingRecord>>,
    inflight: Inflight,
    flush_lock: futures::lock::Mutex<()>,
    /// Serializes checkpoints (and the admin operations that depend on a
    /// checkpoint boundary) of this volume.
    pub ckpt_lock: Mutex<()>,
    /// Serializes publishing this volume's head to the object store.
    pub publish_lock: futures::lock::Mutex<()>,
    pub deleted: AtomicBool,
    /// Set after a failed log write or sync: the log and the map may
    /// disagree, so the volume refuses I/O until the store is reopened
    /// (recovery makes them agree again).
    failed: Mutex<Option<String>>,
    /// Whether this volume's writes have lately been compressible.
    compress_hint: record::CompressHint,
    /// The log's next segment, made ahead by the spare thread.
    pub spare: SpareSegment,
    /// Bytes per append batch lately (a moving average over about 8
    /// batches): decides whether the next segments reuse pooled files.
    pub batch_bytes_avg: AtomicU64,
}

impl VolumeInner {
    pub fn new(id: u64, name: String, parent_snapshot: Option<u64>, state: VolState) -> Self {
        VolumeInner {
            id,
            name,
            parent_snapshot,
            ckpt_queued: AtomicBool::new(false),
            state: RwLock::new(state),
            pending: Mutex::new(HashMap::new()),
            inflight: Inflight::default(),
            flush_lock: futures::lock::Mutex::new(()),
            ckpt_lock: Mutex::new(()),
            publish_lock: futures::lock::Mutex::new(()),
            deleted: AtomicBool::new(false),
            failed: Mutex::new(None),
            compress_hint: record::CompressHint::default(),
            spare: SpareSegment::default(),
            batch_bytes_avg: AtomicU64::new(0),
        }
    }

    fn check_usable(&self) -> Result<()> {
        if self.deleted.load(Ordering::Acquire) {
            return Err(Error::VolumeNotFound(self.name.clone()));
        }
        if let Some(why) = self.failed.lock().as_ref() {
            return Err(Error::io(
                &self.name,
                std::io::Error::other(format!("volume failed earlier and must be reopened: {why}")),
            ));
        }
        Ok(())
    }

    fn fail(&self, why: String) {
        tracing::error!(volume = %self.name, "volume failed: {why}");
        self.failed.lock().get_or_insert(why);
    }
}

/// A volume's next log segment, made by the store's spare thread
/// while the log fills the current one, so that rolling to it costs no
/// fsync under the volume's lock (see `StoreInner::roll_log`).
///
/// A spare is in the catalog with the chain index after the tail's, so no
/// other segment may ever be made for that index: `roll_log` either takes
/// the spare, waits for one being made, or takes the job back while it is
/// only queued and makes the segment itself. A spare left over by a crash
/// or a close is past the end of the log, and recovery removes it like any
/// segment past the end.
#[derive(Default)]
pub(crate) struct SpareSegment {
    state: Mutex<Spare>,
    changed: parking_lot::Condvar,
}

#[derive(Default)]
enum Spare {
    #[default]
    None,
    /// Asked for, not started: `roll_log` may take the job back.
    Queued(u64),
    /// Being made by the spare thread.
    Making(u64),
    Ready(u64, Arc<SegmentFile>),
}

impl SpareSegment {
    /// Asks for a spare for `chain_index`; true if the spare thread
    /// should be told (nothing was asked for yet).
    pub fn queue(&self, chain_index: u64) -> bool {
        let mut st = self.state.lock();
        if !matches!(*st, Spare::None) {
            return false;
        }
        *st = Spare::Queued(chain_index);
        true
    }

    /// The spare thread starts on the queued spare, if it still is.
    pub fn start(&self) -> Option<u64> {
        let mut st = self.state.lock();
        let Spare::Queued(chain_index) = *st else {
            return None;
        };
        *st = Spare::Making(chain_index);
        Some(chain_index)
    }

    pub fn made(&self, chain_index: u64, segment: Arc<SegmentFile>) {
        *self.state.lock() = Spare::Ready(chain_index, segment);
        self.changed.notify_all();
    }

    pub fn failed(&self) {
        *self.state.lock() = Spare::None;
        self.changed.notify_all();
    }

    /// The spare for `chain_index`, waiting if it is being made; `None`
    /// when there is none (a queued job is taken back: the caller makes
    /// the segment).
    pub fn take_for(&self, chain_index: u64) -> Option<Arc<SegmentFile>> {
        let mut st = self.state.lock();
        loop {
            match std::mem::take(&mut *st) {
                Spare::Ready(index, segment) if index == chain_index => return Some(segment),
                Spare::Making(index) if index == chain_index => {
                    *st = Spare::Making(index);
                    self.changed.wait(&mut st);
                }
                Spare::None | Spare::Queued(_) => return None,
                other => {
                    // A spare is only ever asked for the index after the
                    // tail's, and the tail moves only through here.
                    debug_assert!(false, "spare segment for another chain index");
                    *st = other;
                    return None;
                }
            }
        }
    }
}

/// Fails the volume when an append is abandoned (its future dropped, or a
/// panic unwinding through it) after it took its place in the log and the
/// map but before its bytes were written. The log would then hold a gap that
/// recovery cuts at (losing every later write) and flushes would wait for it
/// forever; failing the volume stops every later acknowledgement instead,
/// and flushes that were waiting return an error.
struct AbandonGuard<'a> {
    v: &'a VolumeInner,
    first_seq: u64,
    armed: bool,
}

impl Drop for AbandonGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.v.fail(format!(
                "an append (first seq {}) was abandoned before its bytes were written",
                self.first_seq
            ));
            self.v.inflight.end(self.first_seq);
        }
    }
}

/// What a record does to the map when it is appended (and when replayed).
#[derive(Clone, Copy, Debug)]
enum MapEffect {
    Map { lba: u64, extent: Extent },
    Punch { lba: u64, len_sectors: u64 },
    None,
}

/// Records encoded outside the volume lock, waiting for seqs and a place.
#[derive(Default)]
struct Batch {
    /// Seal the current segment first (if it holds any record), so that
    /// everything before this batch is in sealed, uploadable segments.
    seal_first: bool,
    buf: Vec<u8>,
    /// The registered buffer `buf` came from, if any (see `log_buf.rs`).
    lease: Option<Lease>,
    /// Where the first record starts in `buf` (see [`Batch::aligned`]).
    start: usize,
    /// (offset of the record in `buf`, its length, its map effect)
    records: Vec<(usize, usize, MapEffect)>,
}

impl Batch {
    /// An empty batch whose records start on a [`DIRECT_ALIGN_BYTES`]
    /// boundary in memory, with room for `capacity` bytes of records and a
    /// pad, so that it can go to a reused segment with `O_DIRECT` as it is
    /// (the kernel wants the memory aligned too). Should it grow past that
    /// and move, its writes are buffered instead: slower, just as correct.
    /// Inside a queue worker's `block_on` the memory is one of its ring's
    /// registered buffers when one fits and is free (see `log_buf.rs`).
    fn aligned(capacity: usize) -> Self {
        let room = capacity + 2 * record::PAGE_BYTES;
        let (mut buf, lease) = match local_ring::lease_buf(room + DIRECT_ALIGN_BYTES) {
            Some((buf, lease)) => (buf, Some(lease)),
            None => (Vec::with_capacity(room + DIRECT_ALIGN_BYTES), None),
        };
        let start = match buf.as_ptr().align_offset(DIRECT_ALIGN_BYTES) {
            skip if skip < DIRECT_ALIGN_BYTES => skip,
            _ => 0,
        };
        buf.resize(start, 0);
        Batch {
            buf,
            lease,
            start,
            ..Batch::default()
        }
    }

    fn push(&mut self, header: RecordHeader, payload: &[u8], effect: MapEffect) {
        let at = self.buf.len();
        header.encode_with_payload(payload, &mut self.buf);
        self.records.push((at, self.buf.len() - at, effect));
    }
}

fn header(kind: RecordKind, volume_id: u64, lba: u64, len_sectors: u32) -> RecordHeader {
    RecordHeader {
        kind,
        flags: 0,
        stored_len: 0,
        seq: 0,
        volume_id,
        lba,
        len_sectors,
        payload_crc: 0,
        aux: 0,
    }
}

/// Rewrites the seq of the record at `buf[at..]` and its header checksum.
fn stamp_seq(buf: &mut [u8], at: usize, seq: u64) {
    buf[at + 16..at + 24].copy_from_slice(&seq.to_le_bytes());
    let crc = crate::checksum::crc32c(&buf[at + 8..at + RECORD_HEADER_BYTES]);
    buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One write I/O: `buf[range]` at `offset` of `segment`.
struct WriteIo {
    segment: Arc<SegmentFile>,
    offset: u64,
    buf: Arc<LogBuf>,
    range: std::ops::Range<usize>,
}

/// Where the bytes of one mapped piece come from.
pub(crate) enum Source {
    Pending(Arc<LogBuf>, usize),
    Segment(Arc<SegmentFile>),
    /// Only in the object store: read through the local cache.
    Remote(u64),
}

/// A handle to an open volume. Cheap to clone; every method may be called
/// from many threads and many tasks at once.
#[derive(Clone)]
pub struct Volume {
    pub(crate) store: Arc<StoreInner>,
    pub(crate) inner: Arc<VolumeInner>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("name", &self.inner.name)
            .finish()
    }
}

/// Checks that `[offset, offset + len)` is sector-aligned, within
/// `limit_bytes` and inside a volume of `size_bytes`.
pub(crate) fn check_range(
    name: &str,
    size_bytes: u64,
    offset_bytes: u64,
    len_bytes: u64,
    limit_bytes: u64,
) -> Result<()> {
    if !offset_bytes.is_multiple_of(SECTOR_BYTES) || !len_bytes.is_multiple_of(SECTOR_BYTES) {
        return Err(Error::Unaligned {
            offset_bytes,
            len_bytes,
        });
    }
    if len_bytes > limit_bytes {
        return Err(Error::TooLarge {
            len_bytes,
            limit_bytes,
        });
    }
    match offset_bytes.checked_add(len_bytes) {
        Some(end) if end <= size_bytes => Ok(()),
        _ => Err(Error::OutOfRange {
            volume: name.to_string(),
            offset_bytes,
            len_bytes,
            size_bytes,
        }),
    }
}

/// Room in a batch for the records of a write of `len_bytes`: the data
/// and, per record, the most a record adds to its data (a header and a
/// block checksum table, or an aligned record's head sector).
fn batch_capacity(len_bytes: usize) -> usize {
    let chunk_count = len_bytes.div_ceil(MAX_RECORD_DATA_BYTES);
    len_bytes + chunk_count * record::MAX_RECORD_OVERHEAD_BYTES
}

impl Volume {
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn id(&self) -> u64 {
        self.inner.id
    }

    pub fn size_bytes(&self) -> u64 {
        self.inner.state.read().size_bytes
    }

    /// Number of extents in the volume's map (a measure of fragmentation
    /// and of the map's memory).
    pub fn extent_count(&self) -> usize {
        self.inner.state.read().map.len()
    }

    /// Writes `data` at `offset_bytes`. Both must be multiples of 512; the
    /// length at most [`MAX_IO_BYTES`]. The write is visible to reads when
    /// this returns and durable after the next [`Volume::flush`].
    ///
    /// Writes in flight together complete in the order they took their
    /// place in the log (the order of their first poll): one returns only
    /// after every earlier one finished its I/O, so that an acknowledged
    /// write is never one a crash of this process would cut (recovery keeps
    /// a prefix of the log). As with `flush`, the earlier writes' futures
    /// must be polled meanwhile (join them, or spawn them).
    pub async fn write(&self, offset_bytes: u64, data: &[u8]) -> Result<()> {
        let mut rest = data;
        self.write_from(offset_bytes, data.len() as u64, |buf, len| {
            let (chunk, tail) = rest.split_at(len);
            buf.extend_from_slice(chunk);
            rest = tail;
            Ok(())
        })
        .await
    }

    /// [`Volume::write`] of `len_bytes` taken from `fill`, which appends the
    /// next `len` bytes of the data to the `Vec` it is given, in order, at
    /// most one record's worth ([`MAX_RECORD_DATA_BYTES`]) per call. The data
    /// is copied once, from wherever the caller has it straight into its log
    /// record (vhost-blk: from guest memory). If `fill` fails, or appends
    /// other than `len` bytes, the write fails before anything is logged.
    pub async fn write_from(
        &self,
        offset_bytes: u64,
        len_bytes: u64,
        fill: impl FnMut(&mut Vec<u8>, usize) -> std::result::Result<(), String>,
    ) -> Result<()> {
        // A batch of one: `write_many` returns one result per write, and a
        // missing one must not read as a write that landed.
        let mut results = self.write_many(vec![(offset_bytes, len_bytes, fill)]).await;
        assert_eq!(
            results.len(),
            1,
            "write_many gave no result for its one write"
        );
        results.swap_remove(0)
    }

    /// Several [`Volume::write_from`]s as one batch: their records go to
    /// the log back to back, in the order given, with one write I/O (one
    /// page pad in a reused segment, one submission, one completion). Each
    /// write is still applied whole or not at all by recovery, and a later
    /// one wins where two overlap. A write whose range is refused or whose
    /// `fill` fails gets its own error and leaves the others alone; an I/O
    /// failure fails them all (and the volume, as for any write). The
    /// result for each write, in order. Keep a batch to
    /// [`crate::limits::MAX_BATCH_DATA_BYTES`] and
    /// [`crate::limits::MAX_BATCH_WRITES`]: larger ones work,
    /// without a registered buffer.
    pub async fn write_many<F>(&self, writes: Vec<(u64, u64, F)>) -> Vec<Result<()>>
    where
        F: FnMut(&mut Vec<u8>, usize) -> std::result::Result<(), String>,
    {
        let size_bytes = self.size_bytes();
        let mut results: Vec<Result<()>> = writes
            .iter()
            .map(|&(offset_bytes, len_bytes, _)| {
                check_range(
                    &self.inner.name,
                    size_bytes,
                    offset_bytes,
                    len_bytes,
                    MAX_IO_BYTES,
                )
            })
            .collect();
        // Room for the writes that passed, but never more than one largest
        // write's worth up front: the lengths are the caller's claims, and
        // the buffer grows with data actually given (see `Batch::aligned`).
        let capacity = writes
            .iter()
            .zip(&results)
            .filter(|(_, checked)| checked.is_ok())
            .map(|(&(_, len, _), _)| batch_capacity(len as usize))
            .sum::<usize>()
            .min(batch_capacity(MAX_IO_BYTES as usize));
        let encode_started = std::time::Instant::now();
        let mut encoded_bytes = 0usize;
        let mut batch = Batch::aligned(capacity);
        let mut logged = Vec::with_capacity(writes.len());
        for (i, (offset_bytes, len_bytes, mut fill)) in writes.into_iter().enumerate() {
            if results[i].is_err() {
                continue;
            }
            let (buf_before, records_before) = (batch.buf.len(), batch.records.len());
            let encoded =
                self.encode_write(&mut batch, offset_bytes, len_bytes as usize, &mut fill);
            match encoded {
                Ok(()) => {
                    logged.push(i);
                    encoded_bytes += len_bytes as usize;
                }
                Err(_) => {
                    batch.buf.truncate(buf_before);
                    batch.records.truncate(records_before);
                }
            }
            results[i] = encoded;
        }
        if logged.is_empty() {
            return results;
        }
        self.store
            .encode_clock
            .record(encoded_bytes, encode_started);
        if let Err(e) = self.append(batch, |_, _| {}).await {
            let why = e.to_string();
            let mut first = Some(e);
            for &i in &logged {
                results[i] = Err(first.take().unwrap_or_else(|| {
                    Error::io(&self.inner.name, std::io::Error::other(why.clone()))
                }));
            }
        }
        results
    }

    /// Appends the records of one write (checked by the caller) to `batch`.
    /// If `fill` fails, or gives other than what it was asked for, the
    /// write fails, leaving part of its records in `batch`: the caller
    /// drops the batch or cuts it back.
    fn encode_write(
        &self,
        batch: &mut Batch,
        offset_bytes: u64,
        len_bytes: usize,
        fill: &mut impl FnMut(&mut Vec<u8>, usize) -> std::result::Result<(), String>,
    ) -> Result<()> {
        let first_lba = offset_bytes / SECTOR_BYTES;
        let chunk_count = len_bytes.div_ceil(MAX_RECORD_DATA_BYTES);
        let aligned = self.store.config.aligned_records;
        for i in 0..chunk_count {
            let chunk_start = i * MAX_RECORD_DATA_BYTES;
            let chunk_len = MAX_RECORD_DATA_BYTES.min(len_bytes - chunk_start);
            let lba = first_lba + chunk_start as u64 / SECTOR_BYTES;
            let sectors = (chunk_len as u64 / SECTOR_BYTES) as u32;
            // All records of one write but the last say "continued", so
            // recovery applies the write whole or not at all.
            let continued = if i + 1 < chunk_count {
                record::FLAG_CONTINUED
            } else {
                0
            };
            // The data goes where the record's payload starts (a sector in
            // for aligned records); the header is filled in once the
            // payload is known.
            let at = batch.buf.len();
            let data_at = at
                + if aligned {
                    record::ALIGNED_HEAD_BYTES
                } else {
                    RECORD_HEADER_BYTES
                };
            batch.buf.resize(data_at, 0);
            fill(&mut batch.buf, chunk_len).map_err(|why| Error::WriteData {
                volume: self.inner.name.clone(),
                offset_bytes: offset_bytes + chunk_start as u64,
                why,
            })?;
            if batch.buf.len() != data_at + chunk_len {
                return Err(Error::WriteData {
                    volume: self.inner.name.clone(),
                    offset_bytes: offset_bytes + chunk_start as u64,
                    why: format!(
                        "{} bytes given for a chunk of {chunk_len}",
                        batch.buf.len() - data_at
                    ),
                });
            }
            let Some(encoded) =
                record::encode_chunk(&batch.buf[data_at..], &self.inner.compress_hint, aligned)
            else {
                batch.buf.truncate(at);
                let mut h = header(RecordKind::Zero, self.inner.id, lba, sectors);
                h.flags = continued;
                batch.push(
                    h,
                    &[],
                    MapEffect::Punch {
                        lba,
                        len_sectors: u64::from(sectors),
                    },
                );
                continue;
            };
            let (flags, crc) = (encoded.flags(), encoded.crc());
            match encoded {
                // The block checksum table follows the data.
                record::Encoded::Raw { table, .. } => batch.buf.extend_from_slice(&table),
                // The table and its zeroes fill the head sector.
                record::Encoded::Aligned { head, .. } => {
                    batch.buf[at + RECORD_HEADER_BYTES..data_at].copy_from_slice(&head)
                }
                // The compressed bytes replace the data.
                record::Encoded::Compressed { bytes, .. } => {
                    batch.buf.truncate(at + RECORD_HEADER_BYTES);
                    batch.buf.extend_from_slice(&bytes);
                }
            }
            let payload_at = at + RECORD_HEADER_BYTES;
            let stored_len = batch.buf.len() - payload_at;
            debug_assert_eq!(
                crate::checksum::crc32c(&batch.buf[payload_at..]),
                crc,
                "payload crc combined from the blocks does not match the payload"
            );
            let mut h = header(RecordKind::Write, self.inner.id, lba, sectors);
            h.flags = flags | continued;
            batch.buf[at..payload_at].copy_from_slice(&h.to_bytes(stored_len, crc));
            let extent = Extent {
                segment_id: 0, // placed under the lock
                record_offset: 0,
                stored_len: stored_len as u32,
                payload_crc: crc,
                len_sectors: sectors,
                skip_sectors: 0,
                record_sectors: sectors as u8,
                flags,
            };
            batch
                .records
                .push((at, batch.buf.len() - at, MapEffect::Map { lba, extent }));
        }
        Ok(())
    }

    /// Makes every write that completed before this call durable: in the
    /// local log, and with [`crate::Durability::Remote`] in the object store.
    pub async fn flush(&self) -> Result<()> {
        self.flush_local().await?;
        if self.store.remote_durability() {
            self.store.publish_volume(self.inner.clone()).await?;
        }
        Ok(())
    }

    /// Makes every write that completed before this call durable locally.
    pub(crate) async fn flush_local(&self) -> Result<()> {
        self.inner.check_usable()?;
        let _serial = self.inner.flush_lock.lock().await;
        let (target, dirty, tail) = {
            let mut st = self.inner.state.write();
            let target = st.next_seq - 1;
            if st.durable_seq >= target {
                return Ok(());
            }
            let tail = (st.tail.segment.id, st.tail.offset);
            (target, std::mem::take(&mut st.dirty), tail)
        };
        self.inner.inflight.wait_through(target).await;
        // An append abandoned while we waited failed the volume: its bytes
        // may never land, so nothing up to `target` can be called durable.
        self.inner.check_usable()?;
        let syncs = dirty.iter().map(|s| self.store.io.sync(s));
        for (seg, res) in dirty.iter().zip(futures::future::join_all(syncs).await) {
            if let Err(e) = res {
                // After a failed fsync the page cache may have dropped the
                // data: nothing since the last good flush can be trusted.
                self.inner
                    .fail(format!("fsync of {} failed: {e}", seg.path.display()));
                return Err(Error::io(&seg.path, e));
            }
        }
        let mut st = self.inner.state.write();
        st.durable_seq = st.durable_seq.max(target);
        st.durable_tail = tail;
        Ok(())
    }

    /// Unmaps `[offset, offset + len)`: it reads as zeroes and its space is
    /// freed once no snapshot references it.
    pub async fn discard(&self, offset_bytes: u64, len_bytes: u64) -> Result<()> {
        self.trim(RecordKind::Discard, offset_bytes, len_bytes)
            .await
    }

    /// Makes `[offset, offset + len)` read as zeroes, storing no data.
    pub async fn write_zeroes(&self, offset_bytes: u64, len_bytes: u64) -> Result<()> {
        self.trim(RecordKind::Zero, offset_bytes, len_bytes).await
    }

    async fn trim(&self, kind: RecordKind, offset_bytes: u64, len_bytes: u64) -> Result<()> {
        check_range(
            &self.inner.name,
            self.size_bytes(),
            offset_bytes,
            len_bytes,
            MAX_TRIM_BYTES,
        )?;
        if len_bytes == 0 {
            return Ok(());
        }
        let lba = offset_bytes / SECTOR_BYTES;
        let sectors = len_bytes / SECTOR_BYTES;
        let mut batch = Batch::default();
        // MAX_TRIM_BYTES keeps the sector count within u32.
        batch.push(
            header(kind, self.inner.id, lba, sectors as u32),
            &[],
            MapEffect::Punch {
                lba,
                len_sectors: sectors,
            },
        );
        self.append(batch, |_, _| {}).await.map(drop)
    }

    /// Grows the volume to `new_size_bytes` (a multiple of 512). The new
    /// space reads as zeroes. Durable when this returns.
    pub async fn resize(&self, new_size_bytes: u64) -> Result<()> {
        let size_bytes = self.size_bytes();
        check_size(new_size_bytes)?;
        if new_size_bytes < size_bytes {
            return Err(Error::Shrink {
                volume: self.inner.name.clone(),
                size_bytes,
                new_size_bytes,
            });
        }
        let mut batch = Batch::default();
        let mut h = header(RecordKind::Resize, self.inner.id, 0, 0);
        h.aux = new_size_bytes;
        batch.push(h, &[], MapEffect::None);
        self.append(batch, |st, _| {
            st.size_bytes = st.size_bytes.max(new_size_bytes)
        })
        .await?;
        self.flush_local().await
    }

    /// Reads `len_bytes` at `offset_bytes`.
    pub async fn read(&self, offset_bytes: u64, len_bytes: u64) -> Result<Vec<u8>> {
        check_range(
            &self.inner.name,
            self.size_bytes(),
            offset_bytes,
            len_bytes,
            MAX_IO_BYTES,
        )?;
        let mut out = vec![0u8; len_bytes as usize];
        self.read_into(offset_bytes, &mut out).await?;
        Ok(out)
    }

    /// Reads `out.len()` bytes at `offset_bytes` into `out`.
    pub async fn read_into(&self, offset_bytes: u64, out: &mut [u8]) -> Result<()> {
        self.inner.check_usable()?;
        let len_bytes = out.len() as u64;
        let plan = {
            let st = self.inner.state.read();
            check_range(
                &self.inner.name,
                st.size_bytes,
                offset_bytes,
                len_bytes,
                MAX_IO_BYTES,
            )?;
            let start = offset_bytes / SECTOR_BYTES;
            let pieces = st.map.lookup(start, start + len_bytes / SECTOR_BYTES);
            let pending = self.inner.pending.lock();
            let mut plan = Vec::with_capacity(pieces.len());
            for p in pieces {
                let source = match &p.extent {
                    None => None,
                    Some(e) => Some(match pending.get(&e.record_key()) {
                        Some(rec) => Source::Pending(rec.buf.clone(), rec.at),
                        None => self.store.source(e.segment_id)?,
                    }),
                };
                plan.push((p, source));
            }
            plan
        };
        read_pieces(
            &self.store,
            &self.inner.name,
            offset_bytes / SECTOR_BYTES,
            plan,
            out,
        )
        .await
    }

    /// Appends `batch` to the log, applies it to the map, then waits for the
    /// bytes to reach the segment files. `then` runs under the volume lock
    /// right after the batch is applied, with the seq of its last record.
    /// Seals the log's current segment (if it holds any record) and makes
    /// everything durable locally: afterwards every record written so far is
    /// in a sealed, immutable segment.
    pub(crate) async fn seal_log(&self) -> Result<()> {
        let batch = Batch {
            seal_first: true,
            ..Batch::default()
        };
        self.append(batch, |_, _| {}).await?;
        self.flush_local().await
    }

    pub(crate) async fn append_snapshot_marker(
        &self,
        snapshot_id: u64,
        name: &str,
        then: impl FnOnce(&mut VolState, u64),
    ) -> Result<u64> {
        let mut batch = Batch::default();
        let mut h = header(RecordKind::Snapshot, self.inner.id, 0, 0);
        h.aux = snapshot_id;
        batch.push(h, name.as_bytes(), MapEffect::None);
        self.append(batch, then).await
    }

    async fn append(&self, mut batch: Batch, then: impl FnOnce(&mut VolState, u64)) -> Result<u64> {
        let v = &self.inner;
        v.check_usable()?;
        let (ios, pending_keys, first_seq, last_seq, seal_count) = {
            let mut st = v.state.write();
            st.map_generation += 1;
            let first_seq = st.next_seq;
            let mut ios = Vec::new();
            // Assign seqs (seals from segment rolls take seqs too, so they
            // are assigned as records are placed).
            let mut placements = Vec::with_capacity(batch.records.len());
            let mut seals: Vec<(Arc<SegmentFile>, u64, Vec<u8>)> = Vec::new();
            // In a reused file a batch that does not fit whole goes whole
            // to the next segment (when it fits an empty one): a seal in
            // its middle would end a write inside a page, which the kernel
            // first reads from disk (the worker waited for those reads
            // once per segment), and would leave the rest unaligned for
            // direct appends. The seal then starts on a page too.
            let batch_bytes: u64 = batch.records.iter().map(|&(_, len, _)| len as u64).sum();
            let room_bytes = batch_bytes + (2 * record::PAGE_BYTES + RECORD_HEADER_BYTES) as u64;
            let seal_ahead = st.tail.segment.reused
                && st.tail.offset + room_bytes > self.store.segment_bytes
                && crate::segment::SEGMENT_HEADER_BYTES + room_bytes <= self.store.segment_bytes;
            // `None` first: the forced seal of a `seal_first` batch.
            let records = batch.records.iter().map(|&(at, len, _)| Some((at, len)));
            for next in std::iter::once(None).chain(records) {
                // Seal when the record and a seal would not fit, unless the
                // segment is still empty: a segment always takes at least
                // one record, so it exceeds the target by at most one.
                let fits = match next {
                    None => !(batch.seal_first || seal_ahead),
                    Some((_, len)) => {
                        st.tail.offset + len as u64 + RECORD_HEADER_BYTES as u64
                            <= self.store.segment_bytes
                    }
                };
                if !fits && st.tail.offset > crate::segment::SEGMENT_HEADER_BYTES {
                    let seq = st.next_seq;
                    st.next_seq += 1;
                    let mut seal = Vec::with_capacity(record::PAGE_BYTES);
                    let mut h = header(RecordKind::Seal, v.id, 0, 0);
                    h.seq = seq;
                    h.encode_with_payload(&[], &mut seal);
                    if st.tail.segment.reused {
                        // Zeroes to the page's end: nothing follows a seal in
                        // its segment, and a whole page is written without
                        // reading its old contents first.
                        let end = st.tail.offset + RECORD_HEADER_BYTES as u64;
                        seal.resize(RECORD_HEADER_BYTES + record::bytes_to_page_end(end), 0);
                    }
                    seals.push((st.tail.segment.clone(), st.tail.offset, seal));
                    // The seal must be synced by the next flush even if that
                    // flush already took the segment off the dirty list:
                    // replay only crosses into the next segment at a seal.
                    let sealed = st.tail.segment.clone();
                    if !st.dirty.iter().any(|d| Arc::ptr_eq(d, &sealed)) {
                        st.dirty.push(sealed);
                    }
                    st.tail.offset += RECORD_HEADER_BYTES as u64;
                    if let Err(e) = self.store.roll_log(v, &mut st) {
                        v.fail(format!("cannot start a new log segment: {e}"));
                        return Err(e);
                    }
                }
                let Some((at, len)) = next else { continue };
                let seq = st.next_seq;
                st.next_seq += 1;
                stamp_seq(&mut batch.buf, at, seq);
                placements.push((st.tail.segment.clone(), st.tail.offset));
                st.tail.offset += len as u64;
                st.bytes_since_ckpt += len as u64;
                let seg = st.tail.segment.clone();
                if !st.dirty.iter().any(|d| Arc::ptr_eq(d, &seg)) {
                    st.dirty.push(seg);
                }
            }
            // In a reused file the batch ends on a page, so that no append
            // ends inside a page whose stale contents the kernel would read
            // from disk first (see `pool.rs`). Batches never share a page
            // there, so two in flight never write the same one.
            let pad = record::pad_bytes_at(st.tail.offset);
            if st.tail.segment.reused && pad > 0 && !placements.is_empty() {
                const ZEROES: [u8; 2 * record::PAGE_BYTES] = [0; 2 * record::PAGE_BYTES];
                let at = batch.buf.len();
                let mut h = header(RecordKind::Pad, v.id, 0, 0);
                h.seq = st.next_seq;
                st.next_seq += 1;
                h.encode_with_payload(&ZEROES[..pad - RECORD_HEADER_BYTES], &mut batch.buf);
                batch.records.push((at, pad, MapEffect::None));
                placements.push((st.tail.segment.clone(), st.tail.offset));
                st.tail.offset += pad as u64;
                st.bytes_since_ckpt += pad as u64;
            }
            if !placements.is_empty() {
                let avg = v.batch_bytes_avg.load(Ordering::Relaxed);
                let this = (batch.buf.len() - batch.start) as u64;
                v.batch_bytes_avg
                    .store((avg * 7 + this) / 8, Ordering::Relaxed);
            }
            let last_seq = st.next_seq - 1;
            let buf = Arc::new(LogBuf::new(
                std::mem::take(&mut batch.buf),
                batch.lease.take(),
            ));
            let mut pending_keys = Vec::new();
            {
                let mut pending = v.pending.lock();
                for (&(at, len, effect), (seg, off)) in batch.records.iter().zip(&placements) {
                    match effect {
                        MapEffect::Map { lba, mut extent } => {
                            extent.segment_id = seg.id;
                            extent.record_offset = *off as u32;
                            st.map.insert(lba, extent);
                            pending_keys.push(extent.record_key());
                            pending.insert(
                                extent.record_key(),
                                PendingRecord {
                                    buf: buf.clone(),
                                    at,
                                },
                            );
                        }
                        MapEffect::Punch { lba, len_sectors } => {
                            st.map.punch(lba, lba + len_sectors)
                        }
                        MapEffect::None => {}
                    }
                    // Coalesce records that landed back to back in one segment.
                    match ios.last_mut() {
                        Some(WriteIo {
                            segment,
                            offset,
                            range,
                            ..
                        }) if Arc::ptr_eq(segment, seg)
                            && *offset + range.len() as u64 == *off
                            && range.end == at =>
                        {
                            range.end = at + len;
                        }
                        _ => ios.push(WriteIo {
                            segment: seg.clone(),
                            offset: *off,
                            buf: buf.clone(),
                            range: at..at + len,
                        }),
                    }
                }
            }
            let seal_count = seals.len();
            for (segment, offset, seal) in seals {
                let len = seal.len();
                ios.push(WriteIo {
                    segment,
                    offset,
                    buf: Arc::new(LogBuf::plain(seal)),
                    range: 0..len,
                });
            }
            then(&mut st, last_seq);
            v.inflight.begin(first_seq, last_seq);
            (ios, pending_keys, first_seq, last_seq, seal_count)
        };
        let mut guard = AbandonGuard {
            v,
            first_seq,
            armed: true,
        };
        let results = futures::future::join_all(ios.iter().map(|io| {
            self.store
                .io
                .write_shared(&io.segment, io.offset, &io.buf, io.range.clone())
        }))
        .await;
        {
            let mut pending = v.pending.lock();
            for key in &pending_keys {
                pending.remove(key);
            }
        }
        guard.armed = false;
        v.inflight.end(first_seq);
        for (io, res) in ios.iter().zip(results) {
            if let Err(e) = res {
                v.fail(format!(
                    "log write to {} failed: {e}",
                    io.segment.path.display()
                ));
                return Err(Error::io(&io.segment.path, e));
            }
        }
        for io in ios.iter().skip(ios.len() - seal_count) {
            // A sealed segment is complete once its seal is written (and the
            // uploader flushes the volume before reading it).
            self.store.segment_sealed(io.segment.id);
            self.store
                .io
                .finished(&io.segment, io.offset + io.range.len() as u64);
        }
        self.store.maybe_checkpoint(v);
        // Complete in log order: recovery keeps a prefix of the log, so a
        // record written while an earlier one is still on its way would be
        // cut with it by a crash now; a caller that acknowledges this write
        // (vhost-blk, to a guest) must not before the earlier ones landed.
        // Usually nothing earlier is in flight and this returns at once.
        v.inflight.wait_through(last_seq).await;
        v.check_usable()?;
        Ok(last_seq)
    }

    /// Byte ranges of the log not covered by the last completed flush, as
    /// (segment path, first unflushed offset). Crash tests cut only these.
    pub fn unflushed_log(&self) -> Vec<(std::path::PathBuf, u64)> {
        let st = self.inner.state.read();
        let (seg_id, offset) = st.durable_tail;
        let mut out = Vec::new();
        if let Ok(seg) = self.store.segment(seg_id) {
            out.push((seg.path.clone(), offset));
        }
        if st.tail.segment.id != seg_id {
            out.push((
                st.tail.segment.path.clone(),
                crate::segment::SEGMENT_HEADER_BYTES,
            ));
        }
        out
    }
}

pub(crate) fn check_size(size_bytes: u64) -> Result<()> {
    if size_bytes == 0 || !size_bytes.is_multiple_of(SECTOR_BYTES) {
        return Err(Error::InvalidSize {
            size_bytes,
            why: "must be a positive multiple of 512",
        });
    }
    if size_bytes > MAX_VOLUME_BYTES {
        return Err(Error::InvalidSize {
            size_bytes,
            why: "larger than the 64 TiB limit",
        });
    }
    Ok(())
}

/// What one mapped piece of a read fetched from its record.
enum Fetched {
    /// The whole stored payload (checked against the record's crc32c).
    Whole(Vec<u8>),
    /// Blocks `first_block..` of a record with block checksums: their data
    /// (`buf[data_in_buf..]`, read at `data_in_payload` of the payload) and
    /// their entries of the checksum table.
    Blocks {
        first_block: usize,
        buf: Vec<u8>,
        data_in_buf: usize,
        data_in_payload: usize,
        table: Vec<u8>,
    },
}

/// The blocks `[first, end)` a piece needs from its record, when the record
/// has block checksums and the piece needs fewer than all of them.
fn partial_blocks(e: &Extent) -> Option<(usize, usize)> {
    if e.flags & record::FLAG_BLOCK_CRCS == 0 || e.flags & record::FLAG_COMPRESSED != 0 {
        return None;
    }
    let record_bytes = usize::from(e.record_sectors) * SECTOR_BYTES as usize;
    let first_byte = usize::from(e.skip_sectors) * SECTOR_BYTES as usize;
    let end_byte = first_byte + e.len_sectors as usize * SECTOR_BYTES as usize;
    let first = first_byte / record::CHECK_BLOCK_BYTES;
    let end = end_byte.div_ceil(record::CHECK_BLOCK_BYTES);
    let all = record_bytes.div_ceil(record::CHECK_BLOCK_BYTES);
    (end <= all && end - first < all).then_some((first, end))
}

/// Reads `len` bytes at `offset` of the payload of the record at `e`.
async fn fetch_range(
    store: &Arc<StoreInner>,
    name: &str,
    piece_lba: u64,
    e: &Extent,
    source: &Source,
    offset: usize,
    len: usize,
) -> Result<Vec<u8>> {
    let payload_at = u64::from(e.record_offset) + RECORD_HEADER_BYTES as u64;
    match source {
        Source::Pending(buf, at) => {
            let start = at + RECORD_HEADER_BYTES + offset;
            Ok(buf[start..start + len].to_vec())
        }
        Source::Segment(seg) => store
            .io
            .read_at(seg, payload_at + offset as u64, len)
            .await
            .map_err(|err| Error::CorruptExtent {
                volume: name.to_string(),
                offset_bytes: piece_lba * SECTOR_BYTES,
                segment_id: e.segment_id,
                segment_offset: payload_at + offset as u64,
                why: format!("cannot read stored payload: {err}"),
            }),
        Source::Remote(id) => {
            store
                .read_remote(*id, payload_at + offset as u64, len)
                .await
        }
    }
}

/// Fetches what a piece needs of its record: the blocks it covers (with
/// their checksums) when the record has block checksums, else the payload.
async fn fetch_piece(
    store: &Arc<StoreInner>,
    name: &str,
    piece_lba: u64,
    e: &Extent,
    source: &Source,
) -> Result<Fetched> {
    let Some((first, end)) = partial_blocks(e) else {
        let payload =
            fetch_range(store, name, piece_lba, e, source, 0, e.stored_len as usize).await?;
        return Ok(Fetched::Whole(payload));
    };
    let block = record::CHECK_BLOCK_BYTES;
    let record_bytes = usize::from(e.record_sectors) * SECTOR_BYTES as usize;
    // Offsets in the payload: the table follows the data, or (aligned
    // records) comes first.
    let (data_at, table_at, _) = record::raw_layout(e.flags, record_bytes);
    let data_start = data_at + first * block;
    let data_end = data_at + (end * block).min(record_bytes);
    let table_start = table_at + 4 * first;
    let table_end = table_at + 4 * end;
    // One read when the gap between the blocks and their table entries is
    // at most a block (the page is read anyway), two concurrent ones else.
    let (span_start, span_end) = (data_start.min(table_start), data_end.max(table_end));
    let gap = (span_end - span_start) - (data_end - data_start) - (table_end - table_start);
    let (buf, data_in_buf, table) = if gap <= block {
        let mut bytes = fetch_range(
            store,
            name,
            piece_lba,
            e,
            source,
            span_start,
            span_end - span_start,
        )
        .await?;
        // The data stays where it was read (it is the most of the bytes);
        // only the table entries are copied out.
        let table = bytes
            .get(table_start - span_start..table_end - span_start)
            .filter(|_| bytes.len() >= data_end - span_start)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Error::CorruptExtent {
                volume: name.to_string(),
                offset_bytes: piece_lba * SECTOR_BYTES,
                segment_id: e.segment_id,
                segment_offset: u64::from(e.record_offset),
                why: format!("short read of {} bytes", bytes.len()),
            })?;
        bytes.truncate(data_end - span_start);
        (bytes, data_start - span_start, table)
    } else {
        if let Source::Segment(seg) = source {
            let payload_at = u64::from(e.record_offset) + RECORD_HEADER_BYTES as u64;
            store.io.prefetch(
                seg,
                payload_at + table_start as u64,
                table_end - table_start,
            );
        }
        let (data, table) = futures::future::join(
            fetch_range(
                store,
                name,
                piece_lba,
                e,
                source,
                data_start,
                data_end - data_start,
            ),
            fetch_range(
                store,
                name,
                piece_lba,
                e,
                source,
                table_start,
                table_end - table_start,
            ),
        )
        .await;
        (data?, 0, table?)
    };
    Ok(Fetched::Blocks {
        first_block: first,
        buf,
        data_in_buf,
        data_in_payload: data_start,
        table,
    })
}

/// Fetches, verifies and decodes the mapped pieces of a read into `out`
/// (which starts at sector `first_lba`); holes become zeroes.
pub(crate) async fn read_pieces(
    store: &Arc<StoreInner>,
    name: &str,
    first_lba: u64,
    plan: Vec<(Piece, Option<Source>)>,
    out: &mut [u8],
) -> Result<()> {
    let fetches = plan.iter().map(|(p, source)| async move {
        let (Some(e), Some(source)) = (&p.extent, source) else {
            return Ok(None);
        };
        fetch_piece(store, name, p.lba, e, source).await.map(Some)
    });
    let fetched = futures::future::join_all(fetches).await;
    for ((piece, _), fetched) in plan.iter().zip(fetched) {
        let dst_start = ((piece.lba - first_lba) * SECTOR_BYTES) as usize;
        let dst = &mut out[dst_start..dst_start + (piece.len_sectors * SECTOR_BYTES) as usize];
        let (Some(e), Some(fetched)) = (&piece.extent, fetched?) else {
            dst.fill(0);
            continue;
        };
        let payload_at = u64::from(e.record_offset) + RECORD_HEADER_BYTES as u64;
        let skip = usize::from(e.skip_sectors) * SECTOR_BYTES as usize;
        let corrupt = |why: String| Error::CorruptExtent {
            volume: name.to_string(),
            offset_bytes: piece.lba * SECTOR_BYTES,
            segment_id: e.segment_id,
            segment_offset: payload_at,
            why,
        };
        match fetched {
            Fetched::Blocks {
                first_block,
                buf,
                data_in_buf,
                data_in_payload,
                table,
            } => {
                let block = record::CHECK_BLOCK_BYTES;
                let data = &buf[data_in_buf..];
                for (i, (bytes, entry)) in data.chunks(block).zip(table.chunks_exact(4)).enumerate()
                {
                    let expected = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]);
                    let found = crate::checksum::crc32c(bytes);
                    if found != expected {
                        return Err(Error::Checksum {
                            volume: name.to_string(),
                            offset_bytes: piece.lba * SECTOR_BYTES,
                            segment_id: e.segment_id,
                            segment_offset: payload_at + (data_in_payload + i * block) as u64,
                            expected,
                            found,
                        });
                    }
                }
                let from = skip - first_block * block;
                dst.copy_from_slice(&data[from..from + dst.len()]);
            }
            Fetched::Whole(payload) => {
                let found = crate::checksum::crc32c(&payload);
                if found != e.payload_crc {
                    return Err(Error::Checksum {
                        volume: name.to_string(),
                        offset_bytes: piece.lba * SECTOR_BYTES,
                        segment_id: e.segment_id,
                        segment_offset: payload_at,
                        expected: e.payload_crc,
                        found,
                    });
                }
                let record_bytes = usize::from(e.record_sectors) * SECTOR_BYTES as usize;
                let decoded;
                let data = if e.flags & record::FLAG_COMPRESSED == 0 {
                    record::raw_data(e.flags, &payload, record_bytes).map_err(corrupt)?
                } else {
                    decoded =
                        record::decode_data(e.flags, &payload, record_bytes).map_err(corrupt)?;
                    &decoded
                };
                dst.copy_from_slice(&data[skip..skip + dst.len()]);
            }
        }
    }
    Ok(())
}
