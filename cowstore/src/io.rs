//! Segment I/O: positional reads, writes and syncs, submitted without a
//! thread per request.
//!
//! Where the kernel offers io_uring, one ring thread per store owns an
//! `io_uring` instance; callers hand it operations over a channel, wake it
//! through an eventfd, and await a oneshot completion. Elsewhere (io_uring
//! disabled by seccomp or sysctl, or not compiled in the kernel) the blocking
//! backend performs the same call inline: the future is ready when it
//! returns, which keeps page-cache-speed I/O cheap and still correct.
//!
//! Writes are inline with either backend. They are buffered appends to the
//! log, i.e. a copy into the page cache: done in the calling thread that is a
//! memcpy, while through the ring it cost a hop to the ring thread, and
//! io_uring punts a buffered write that extends a file to its io-wq workers,
//! which serialize writes to one inode. Measured on the vhost-blk path (same
//! run, fresh volume, alternating): 128 KiB writes at depth 8 1.3-1.6x and
//! 4 KiB random writes at depth 32 1.7-1.8x faster inline. Reads, which may
//! wait for the disk, and fdatasync stay on the ring so that many run at once,
//! except for a caller with a single request to serve ([`with_inline_io`]).
//! Written pages leave the page cache soon after writeback ([`DropBehind`]),
//! and appends of 64 KiB or more are written by log writer threads
//! ([`LogWriters`]) while the caller prepares the next.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Instant;

use futures::channel::oneshot;
use io_uring::{opcode, types, IoUring};

use crate::drop_behind::DropBehind;
use crate::limits::MAX_LOG_WRITER_THREADS;
use crate::local_ring;
use crate::log_buf::LogBuf;
use crate::log_writer::{self, LogWriters, OFFLOAD_MIN_BYTES};
use crate::ring::RingCore;
use crate::segment::SegmentFile;
use crate::stage_clock::{StageClock, StageTotals};

/// Which I/O backend to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum IoBackendChoice {
    /// io_uring when the kernel allows it, else blocking.
    #[default]
    Auto,
    /// io_uring or fail.
    Uring,
    /// Plain pread/pwrite/fdatasync in the caller.
    Blocking,
}

/// Submission queue depth of the ring. Bounds how many operations are in the
/// kernel at once; more wait in the ring thread's backlog.
const RING_ENTRIES: u32 = 256;

enum Backend {
    Uring(UringIo),
    Blocking,
}

pub(crate) struct SegmentIo {
    backend: Backend,
    /// Drop-behind (see [`DropBehind`]); `None` leaves written pages to
    /// the kernel's reclaim.
    behind: Option<Arc<DropBehind>>,
    /// Threads that take large appends off the caller (see [`LogWriters`]);
    /// `None`: every append is inline. Dropped before `behind`'s last
    /// reference, which its threads share.
    writers: Option<LogWriters>,
    /// Bytes appended with `O_DIRECT` (see [`SegmentIo::direct_bytes`]).
    direct_bytes: std::sync::atomic::AtomicU64,
    /// Of those, bytes from buffers registered with the ring that wrote
    /// them (see `log_buf.rs`).
    fixed_bytes: std::sync::atomic::AtomicU64,
    /// Direct appends, submission to completion (see `stage_clock.rs`).
    direct_clock: StageClock,
}

impl SegmentIo {
    pub fn new(
        choice: IoBackendChoice,
        drop_behind_bytes: Option<u64>,
        log_writer_threads: usize,
    ) -> io::Result<Self> {
        let backend = match choice {
            IoBackendChoice::Blocking => Backend::Blocking,
            IoBackendChoice::Uring => Backend::Uring(UringIo::start()?),
            IoBackendChoice::Auto => match UringIo::start() {
                Ok(u) => Backend::Uring(u),
                Err(e) => {
                    tracing::info!("io_uring unavailable ({e}); using blocking segment I/O");
                    Backend::Blocking
                }
            },
        };
        let behind = match drop_behind_bytes {
            Some(window_bytes) => Some(Arc::new(DropBehind::start(window_bytes)?)),
            None => None,
        };
        let writers = match log_writer_threads.min(MAX_LOG_WRITER_THREADS) {
            0 => None,
            n => Some(LogWriters::start(n, behind.clone())?),
        };
        Ok(SegmentIo {
            backend,
            behind,
            writers,
            direct_bytes: Default::default(),
            fixed_bytes: Default::default(),
            direct_clock: StageClock::default(),
        })
    }

    /// Bytes appended with `O_DIRECT` so far (into reused segment files).
    pub fn direct_bytes(&self) -> u64 {
        self.direct_bytes.load(Ordering::Relaxed)
    }

    /// Of [`SegmentIo::direct_bytes`], those written from registered
    /// buffers (`IORING_OP_WRITE_FIXED`, see `log_buf.rs`).
    pub fn fixed_bytes(&self) -> u64 {
        self.fixed_bytes.load(Ordering::Relaxed)
    }

    /// Direct appends so far: how many, their bytes, their time.
    pub fn direct_append_totals(&self) -> StageTotals {
        self.direct_clock.totals()
    }

    pub fn name(&self) -> &'static str {
        match self.backend {
            Backend::Uring(_) => "io_uring",
            Backend::Blocking => "blocking",
        }
    }

    /// Writes `bytes` at `offset` in the calling thread (see the module
    /// docs), then tells drop-behind.
    pub fn write_at(&self, file: &Arc<SegmentFile>, offset: u64, bytes: &[u8]) -> io::Result<()> {
        log_writer::append(file, offset, bytes, self.behind.as_deref())
    }

    /// Writes `buf[range]` at `offset`: inline like [`SegmentIo::write_at`],
    /// or, for an append of at least [`OFFLOAD_MIN_BYTES`] outside
    /// [`with_inline_io`], in the segment's log writer thread while the
    /// caller goes on (see [`LogWriters`]).
    pub async fn write_shared(
        &self,
        file: &Arc<SegmentFile>,
        offset: u64,
        buf: &Arc<LogBuf>,
        range: std::ops::Range<usize>,
    ) -> io::Result<()> {
        if let Some(direct) = file.direct_for(offset, &buf[range.clone()]) {
            self.direct_bytes
                .fetch_add(range.len() as u64, Ordering::Relaxed);
            let started = Instant::now();
            let len_bytes = range.len();
            let table_id = buf.table_id();
            // Many direct appends in flight at once, as the disk likes
            // them: in the caller's own ring if it has one (no thread
            // hand-over, see `local_ring`), even for a lone request: a
            // `pwrite` would hold the thread for the disk's time while
            // the next requests wait in the virtqueue. Else the ring
            // thread's, or inline where asked.
            let kind = OpKind::Write {
                buf: buf.clone(),
                range: range.clone(),
                done: 0,
            };
            let (op, done) = Op::new(file, offset, kind);
            let op = match local_ring::submit(op) {
                Ok(()) => {
                    if table_id != 0 && table_id == local_ring::fixed_table_id() {
                        self.fixed_bytes
                            .fetch_add(range.len() as u64, Ordering::Relaxed);
                    }
                    let written = Self::reply(done).await.map(drop);
                    self.direct_clock.record(len_bytes, started);
                    return written;
                }
                Err(op) => op,
            };
            let written = match &self.backend {
                Backend::Uring(u) if !INLINE_IO.get() => u.send(op, done).await.map(drop),
                _ => direct.write_all_at(&buf[range], offset),
            };
            self.direct_clock.record(len_bytes, started);
            return written;
        }
        match &self.writers {
            Some(w) if range.len() >= OFFLOAD_MIN_BYTES && !INLINE_IO.get() => {
                w.write(file, offset, buf, range).await
            }
            _ => self.write_at(file, offset, &buf[range]),
        }
    }

    /// Drops a complete (sealed) segment's pages from the cache once they
    /// are written back, in the drop-behind thread.
    pub fn finished(&self, file: &Arc<SegmentFile>, end: u64) {
        if let Some(behind) = &self.behind {
            behind.finished(file, end);
        }
    }

    /// Waits until drop-behind has handled every note sent so far (tests).
    #[cfg(test)]
    pub fn settle_behind(&self) {
        if let Some(behind) = &self.behind {
            behind.settle();
        }
    }

    /// Starts reading `len` bytes at `offset` into the page cache without
    /// waiting, when this thread's reads run inline: a caller about to make
    /// two inline reads (a block and its checksum table entry) prefetches
    /// the second, so that the two go to the disk together instead of one
    /// after the other. Through the ring the two reads are already
    /// concurrent, and this does nothing.
    ///
    /// Measured on the vhost-blk path at queue depth 1 with cold caches:
    /// three reads in four missed the cache for the table entry too, each
    /// a second full disk round trip.
    pub fn prefetch(&self, file: &SegmentFile, offset: u64, len: usize) {
        if matches!(self.backend, Backend::Uring(_)) && !INLINE_IO.get() {
            return;
        }
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: an advisory call on a descriptor `file` keeps open; no
        // memory is passed. `POSIX_FADV_WILLNEED` queues the reads and
        // returns without waiting for them. Its result is ignored: if it
        // fails, the caller's read fetches the range itself, as before.
        unsafe {
            libc::posix_fadvise(
                file.file.as_raw_fd(),
                offset,
                len,
                libc::POSIX_FADV_WILLNEED,
            );
        }
    }

    pub async fn read_at(
        &self,
        file: &Arc<SegmentFile>,
        offset: u64,
        len: usize,
    ) -> io::Result<Vec<u8>> {
        match &self.backend {
            Backend::Uring(u) if !INLINE_IO.get() => {
                let op = OpKind::Read {
                    buf: vec![0u8; len],
                    done: 0,
                };
                match u.run(file, offset, op).await? {
                    Some(buf) => Ok(buf),
                    None => Err(io::Error::other("ring returned no read buffer")),
                }
            }
            _ => {
                let mut buf = vec![0u8; len];
                file.file.read_exact_at(&mut buf, offset)?;
                Ok(buf)
            }
        }
    }

    async fn reply(done: Reply) -> io::Result<Option<Vec<u8>>> {
        done.await
            .map_err(|_| io::Error::other("the ring dropped the request"))?
    }

    pub async fn sync(&self, file: &Arc<SegmentFile>) -> io::Result<()> {
        match &self.backend {
            Backend::Uring(u) if !INLINE_IO.get() => u.run(file, 0, OpKind::Fsync).await.map(drop),
            _ => file.file.sync_data(),
        }
    }
}

thread_local! {
    /// Set by [`with_inline_io`]: this thread's segment reads and syncs
    /// run inline even with the io_uring backend.
    static INLINE_IO: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with this thread's segment reads and syncs done inline (plain
/// `pread`/`fdatasync` in the caller) when `inline` is true.
///
/// For a caller with a single request to serve: the ring's concurrency buys
/// it nothing, and each operation through the ring costs two thread
/// wake-ups (to the ring thread and back), which dominate a 4 KiB read's
/// latency (measured on the vhost-blk path at queue depth 1: 148 us p50
/// against qemu-storage-daemon's 89 us on the same file system). A caller
/// with many requests in flight leaves it off, so that they wait for the
/// disk together.
pub fn with_inline_io<R>(inline: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            INLINE_IO.set(self.0);
        }
    }
    let _restore = Restore(INLINE_IO.replace(inline));
    f()
}

enum OpKind {
    Read {
        buf: Vec<u8>,
        done: usize,
    },
    /// `buf[range]`, of which `done` bytes are written; through the file's
    /// direct descriptor while what is left stays aligned for it.
    Write {
        buf: Arc<LogBuf>,
        range: std::ops::Range<usize>,
        done: usize,
    },
    Fsync,
}

pub(crate) struct Op {
    file: Arc<SegmentFile>,
    offset: u64,
    kind: OpKind,
    pub(crate) reply: oneshot::Sender<io::Result<Option<Vec<u8>>>>,
}

/// Where an [`Op`]'s result arrives.
type Reply = oneshot::Receiver<io::Result<Option<Vec<u8>>>>;

impl Op {
    fn new(file: &Arc<SegmentFile>, offset: u64, kind: OpKind) -> (Op, Reply) {
        let (reply, done) = oneshot::channel();
        let op = Op {
            file: file.clone(),
            offset,
            kind,
            reply,
        };
        (op, done)
    }
}

pub(crate) struct UringIo {
    tx: Option<mpsc::Sender<Op>>,
    wake: Arc<OwnedFd>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UringIo {
    fn start() -> io::Result<Self> {
        let ring = IoUring::new(RING_ENTRIES)?;
        let wake = Arc::new(new_eventfd()?);
        let (tx, rx) = mpsc::channel();
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let wake = wake.clone();
            let stopping = stopping.clone();
            std::thread::Builder::new()
                .name("cowstore-uring".into())
                .spawn(move || ring_thread(ring, rx, wake, stopping))?
        };
        Ok(UringIo {
            tx: Some(tx),
            wake,
            stopping,
            thread: Some(thread),
        })
    }

    async fn run(
        &self,
        file: &Arc<SegmentFile>,
        offset: u64,
        kind: OpKind,
    ) -> io::Result<Option<Vec<u8>>> {
        let (op, done) = Op::new(file, offset, kind);
        self.send(op, done).await
    }

    async fn send(&self, op: Op, done: Reply) -> io::Result<Option<Vec<u8>>> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| io::Error::other("ring stopped"))?;
        tx.send(op)
            .map_err(|_| io::Error::other("ring thread exited"))?;
        signal(self.wake.as_raw_fd());
        SegmentIo::reply(done).await
    }
}

impl Drop for UringIo {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.tx.take();
        signal(self.wake.as_raw_fd());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A new eventfd (counter 0, close-on-exec): how a sleeping ring is woken.
pub(crate) fn new_eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd has no memory-safety preconditions; we check the result.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor we own exclusively.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

pub(crate) fn signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd we keep open.
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

fn ring_thread(
    ring: IoUring,
    rx: mpsc::Receiver<Op>,
    wake: Arc<OwnedFd>,
    stopping: Arc<AtomicBool>,
) {
    // Dropped before `wake`: it waits for what is in flight.
    let mut core = RingCore::new(ring, wake.as_raw_fd());
    let mut disconnected = false;
    loop {
        // Take everything queued so far.
        loop {
            match rx.try_recv() {
                Ok(op) => core.backlog.push_back(op),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        if disconnected
            && stopping.load(Ordering::SeqCst)
            && core.backlog.is_empty()
            && core.in_flight.is_empty()
        {
            return;
        }
        core.fill(!disconnected);
        let want = usize::from(!core.in_flight.is_empty() || core.wake_armed());
        if core.enter(want).is_err() {
            // Everything queued failed; what is sent later fails as the
            // channel closes.
            return;
        }
        core.reap();
    }
}

/// The SQE for `op`, in a ring whose registered buffer table is
/// `fixed_table_id` (0: none): a write from a buffer registered there is a
/// fixed write.
pub(crate) fn prepare(op: &Op, token: u64, fixed_table_id: u64) -> io_uring::squeue::Entry {
    let fd = types::Fd(op.file.file.as_raw_fd());
    match &op.kind {
        OpKind::Read { buf, done } => {
            let rest = &buf[*done..];
            opcode::Read::new(fd, rest.as_ptr() as *mut u8, rest.len() as u32)
                .offset(op.offset + *done as u64)
                .build()
                .user_data(token)
        }
        OpKind::Write { buf, range, done } => {
            let rest = &buf[range.start + *done..range.end];
            let at = op.offset + *done as u64;
            let fd = match op.file.direct_for(at, rest) {
                Some(direct) => types::Fd(direct.as_raw_fd()),
                None => fd,
            };
            // A longer write (over 4 GiB; none is) would come back short
            // and be resubmitted for the rest.
            let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
            match buf.fixed_index(fixed_table_id, rest) {
                Some(index) => opcode::WriteFixed::new(fd, rest.as_ptr(), len, index)
                    .offset(at)
                    .build()
                    .user_data(token),
                None => opcode::Write::new(fd, rest.as_ptr(), len)
                    .offset(at)
                    .build()
                    .user_data(token),
            }
        }
        OpKind::Fsync => opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(token),
    }
}

/// Fails `op` without freeing its buffer: after a ring error the kernel may
/// still read or write it. Leaks the buffer, once per failed ring.
pub(crate) fn abandon(op: Op, e: &io::Error) {
    let Op { kind, reply, .. } = op;
    let _ = reply.send(Err(io::Error::other(format!("io_uring failed: {e}"))));
    std::mem::forget(kind);
}

/// Handles one completion. Returns the op again when it must be resubmitted
/// (a short transfer or EINTR/EAGAIN).
pub(crate) fn complete(mut op: Op, res: i32) -> Option<Op> {
    if res < 0 {
        let err = io::Error::from_raw_os_error(-res);
        if matches!(-res, libc::EINTR | libc::EAGAIN) {
            return Some(op);
        }
        let _ = op.reply.send(Err(err));
        return None;
    }
    let n = res as usize;
    match &mut op.kind {
        OpKind::Fsync => {
            let _ = op.reply.send(Ok(None));
            None
        }
        OpKind::Write { range, done, .. } => {
            *done += n;
            if *done < range.len() {
                if n == 0 {
                    let _ = op.reply.send(Err(io::ErrorKind::WriteZero.into()));
                    return None;
                }
                return Some(op);
            }
            let _ = op.reply.send(Ok(None));
            None
        }
        OpKind::Read { buf, done } => {
            *done += n;
            if *done < buf.len() {
                if n == 0 {
                    let _ = op.reply.send(Err(io::ErrorKind::UnexpectedEof.into()));
                    return None;
                }
                return Some(op);
            }
            let buf = std::mem::take(buf);
            let _ = op.reply.send(Ok(Some(buf)));
            None
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::segment::{SegmentHeader, SegmentKind};

    fn segment(dir: &std::path::Path) -> Arc<SegmentFile> {
        let header = SegmentHeader {
            segment_id: 1,
            volume_id: 1,
            chain_index: 0,
            kind: SegmentKind::Log,
        };
        Arc::new(SegmentFile::create(dir, header).unwrap())
    }

    fn roundtrip(choice: IoBackendChoice) {
        let dir = tempfile::tempdir().unwrap();
        let seg = segment(dir.path());
        let io = SegmentIo::new(choice, Some(64 << 10), 0).unwrap();
        futures::executor::block_on(async {
            for i in 0..64u64 {
                io.write_at(&seg, 64 + i * 4096, &[i as u8; 4096]).unwrap();
            }
            io.sync(&seg).await.unwrap();
            for i in 0..64u64 {
                let b = io.read_at(&seg, 64 + i * 4096, 4096).await.unwrap();
                assert!(b.iter().all(|&x| x == i as u8));
            }
            // Reading past the end is an error, not a short buffer.
            assert!(io.read_at(&seg, 64 + 64 * 4096, 10).await.is_err());
        });
    }

    #[test]
    fn blocking_roundtrip() {
        roundtrip(IoBackendChoice::Blocking);
    }

    #[test]
    fn auto_roundtrip() {
        roundtrip(IoBackendChoice::Auto);
    }

    /// How many of the first `len` bytes' pages of `file` are in the page cache.
    pub(crate) fn resident_pages(file: &std::fs::File, len: usize) -> usize {
        // SAFETY: a fresh read-only shared mapping of `len` bytes of a file
        // at least that long; only mincore reads it, and it is unmapped
        // before returning.
        unsafe {
            let addr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(
                addr,
                libc::MAP_FAILED,
                "mmap: {}",
                io::Error::last_os_error()
            );
            let mut vec = vec![0u8; len.div_ceil(4096)];
            let rc = libc::mincore(addr, len, vec.as_mut_ptr());
            libc::munmap(addr, len);
            assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
            vec.iter().filter(|&&b| b & 1 != 0).count()
        }
    }

    /// Written pages leave the cache two windows behind the log's end (the
    /// drop-behind thread's work, waited for), all of them once the file is
    /// finished (sealed), and stay without drop-behind (the control that
    /// shows the check bites). In the target directory: tmpfs (a common
    /// /tmp) has no writeback.
    #[test]
    fn drop_behind_evicts_written_pages() {
        let base = concat!(env!("CARGO_MANIFEST_DIR"), "/../target");
        std::fs::create_dir_all(base).unwrap();
        let window = 1u64 << 20;
        let written = 8 * window;
        for drop_behind in [Some(window), None] {
            let dir = tempfile::tempdir_in(base).unwrap();
            let seg = segment(dir.path());
            let io = SegmentIo::new(IoBackendChoice::Blocking, drop_behind, 0).unwrap();
            let chunk = vec![0x5a; 64 << 10];
            let mut offset = 64;
            while offset < written {
                io.write_at(&seg, offset, &chunk).unwrap();
                offset += chunk.len() as u64;
            }
            if let Some(behind) = &io.behind {
                behind.settle();
            }
            // The first five windows are two or more windows behind the end.
            let checked = 5 * window as usize;
            let resident = resident_pages(&seg.file, checked);
            let pages = checked / 4096;
            match drop_behind {
                Some(_) => assert!(resident * 10 < pages, "{resident} of {pages} pages cached"),
                None => assert!(
                    resident * 10 > pages * 9,
                    "{resident} of {pages} pages cached"
                ),
            }
            // Finishing the file drops its last windows too.
            io.finished(&seg, offset);
            if let Some(behind) = &io.behind {
                behind.settle();
            }
            let resident = resident_pages(&seg.file, offset as usize);
            let pages = (offset as usize).div_ceil(4096);
            match drop_behind {
                Some(_) => assert!(resident * 10 < pages, "{resident} of {pages} pages cached"),
                None => assert!(
                    resident * 10 > pages * 9,
                    "{resident} of {pages} pages cached"
                ),
            }
        }
    }

    /// An inline prefetch starts reading the range into the cache (its
    /// pages become resident without a read), and a prefetch outside
    /// `with_inline_io` through the ring leaves the cache alone. In the target
    /// directory: tmpfs has no cold pages to fetch.
    #[test]
    fn inline_prefetch_fills_the_cache() {
        let base = concat!(env!("CARGO_MANIFEST_DIR"), "/../target");
        std::fs::create_dir_all(base).unwrap();
        let dir = tempfile::tempdir_in(base).unwrap();
        let seg = segment(dir.path());
        let len = 1usize << 20;
        seg.file.write_all_at(&vec![0x11; len], 0).unwrap();
        seg.file.sync_all().unwrap();
        let evict = || {
            // SAFETY: advisory call on an open descriptor; no memory passed.
            let rc = unsafe {
                libc::posix_fadvise(seg.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED)
            };
            assert_eq!(rc, 0);
            assert!(resident_pages(&seg.file, len) * 10 < len / 4096);
        };
        let ring = SegmentIo::new(IoBackendChoice::Auto, None, 0).unwrap();
        evict();
        ring.prefetch(&seg, 0, len);
        std::thread::sleep(std::time::Duration::from_millis(50));
        if ring.name() == "io_uring" {
            let resident = resident_pages(&seg.file, len);
            assert!(resident * 10 < len / 4096, "{resident} pages cached");
        }
        for io in [
            ring,
            SegmentIo::new(IoBackendChoice::Blocking, None, 0).unwrap(),
        ] {
            evict();
            with_inline_io(true, || io.prefetch(&seg, 0, len));
            // The reads were queued, not waited for: wait for them here.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while resident_pages(&seg.file, len) < len / 4096 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "prefetch never arrived"
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    /// Large appends go to a log writer thread and small ones, or any inside
    /// `with_inline_io`, are written before the call returns; either way the
    /// bytes land where asked.
    #[test]
    fn large_appends_go_to_a_log_writer_thread() {
        use futures::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let seg = segment(dir.path());
        let io = SegmentIo::new(IoBackendChoice::Blocking, None, 2).unwrap();
        let big = Arc::new(LogBuf::plain(vec![0xa5u8; OFFLOAD_MIN_BYTES + 100]));
        let small = Arc::new(LogBuf::plain(vec![0x3cu8; 4096]));
        let big_at = 64u64;
        let small_at = big_at + (OFFLOAD_MIN_BYTES as u64 + 100);
        // Inline: finished on the first poll.
        let inline = io.write_shared(&seg, small_at, &small, 0..small.len());
        assert!(inline.now_or_never().unwrap().is_ok());
        let scoped = with_inline_io(true, || {
            io.write_shared(&seg, big_at, &big, 0..big.len())
                .now_or_never()
        });
        assert!(scoped.unwrap().is_ok());
        // Offloaded: written by the time the future resolves.
        let offloaded = Arc::new(LogBuf::plain(vec![0x77u8; OFFLOAD_MIN_BYTES]));
        futures::executor::block_on(io.write_shared(&seg, big_at, &offloaded, 0..offloaded.len()))
            .unwrap();
        let mut back = vec![0u8; OFFLOAD_MIN_BYTES + 100 + 4096];
        seg.file.read_exact_at(&mut back, big_at).unwrap();
        assert!(back[..OFFLOAD_MIN_BYTES].iter().all(|&b| b == 0x77));
        assert!(back[OFFLOAD_MIN_BYTES..OFFLOAD_MIN_BYTES + 100]
            .iter()
            .all(|&b| b == 0xa5));
        assert!(back[OFFLOAD_MIN_BYTES + 100..].iter().all(|&b| b == 0x3c));
    }

    /// Inside `with_inline_io(true, ..)` reads and syncs through the ring
    /// backend finish on their first poll (no ring thread involved); the
    /// setting ends with the scope, also when the scope panics.
    #[test]
    fn inline_scope_runs_ring_reads_in_the_caller() {
        use futures::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let seg = segment(dir.path());
        let io = SegmentIo::new(IoBackendChoice::Auto, None, 0).unwrap();
        io.write_at(&seg, 64, &[7u8; 4096]).unwrap();
        with_inline_io(true, || {
            let read = io.read_at(&seg, 64, 4096).now_or_never();
            assert_eq!(read.unwrap().unwrap(), vec![7u8; 4096]);
            assert!(io.sync(&seg).now_or_never().unwrap().is_ok());
            // Nested scopes restore what they found.
            with_inline_io(false, || assert!(!INLINE_IO.get()));
            assert!(INLINE_IO.get());
        });
        assert!(!INLINE_IO.get());
        let panicked = std::panic::catch_unwind(|| with_inline_io(true, || panic!("boom")));
        assert!(panicked.is_err());
        assert!(!INLINE_IO.get());
        // Outside the scope the ring still serves reads.
        let read = futures::executor::block_on(io.read_at(&seg, 64, 4096)).unwrap();
        assert_eq!(read, vec![7u8; 4096]);
    }
}
