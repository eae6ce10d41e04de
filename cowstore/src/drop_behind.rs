//! Drop-behind for log files: written pages leave the page cache soon after
//! they reach the disk, in a thread of their own.
//!
//! Appends are buffered (a copy into the page cache, acknowledged at memory
//! speed), but a log is written once and read rarely: the guest caches what
//! it reads, so keeping written pages cached only grows the cache until
//! reclaim, and every append then lands in a freshly allocated page, which
//! costs more than the copy itself (measured: streaming 128 KiB appends
//! 1.1-1.4 GB/s plain, 1.6-1.85 GB/s with drop-behind, 0.86-0.95 GB/s with
//! `O_DIRECT` from one thread; on this VM, whose fresh memory is slow past
//! ~9 GiB, plain buffering fell to ~220 MB/s). So every `window` bytes the
//! newest window is handed to writeback (`sync_file_range`, asynchronous),
//! and the window before it, written back meanwhile, is waited for and
//! dropped (`posix_fadvise(DONTNEED)`); the freed pages are reused, warm,
//! by the next appends. When a segment is sealed, its last windows are
//! written back and dropped too (they used to stay cached: a quarter of
//! every 32 MiB segment). This is not durability: `fdatasync` at flush is.
//!
//! The writer only notes how far a file was written; the `cowstore-behind`
//! thread does the syscalls, among them the wait for writeback, which used
//! to stall the appending thread at every window boundary (128 KiB writes
//! showed it as a p99 of 6-8 ms). Notes go through a bounded queue: when
//! the disk falls behind, the queue fills and appenders wait for it, which
//! keeps written-but-not-dropped data to a few windows per file.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use crate::segment::SegmentFile;

/// Notes the drop-behind thread may have queued before appenders wait: with
/// 8 MiB windows, at most 64 MiB handed on and not yet dropped.
const MAX_QUEUED_NOTES: usize = 8;

/// Per-file drop-behind state (a field of [`SegmentFile`]).
#[derive(Debug, Default)]
pub(crate) struct FileBehind {
    /// The end last handed to the thread; written by appenders.
    noted: AtomicU64,
    /// The thread's progress; only the thread locks it.
    state: parking_lot::Mutex<BehindState>,
}

#[derive(Debug, Default)]
struct BehindState {
    /// Bytes before this offset were handed to writeback.
    started: u64,
    /// Bytes before this offset were dropped from the cache.
    dropped: u64,
}

enum Note {
    /// The file was written up to `end`.
    Written { file: Arc<SegmentFile>, end: u64 },
    /// The file is complete (sealed) at `end`: drop all of it.
    Finished { file: Arc<SegmentFile>, end: u64 },
    /// Answers once every earlier note was handled.
    #[cfg(test)]
    Barrier(mpsc::Sender<()>),
}

/// The store's drop-behind thread and the queue to it.
pub(crate) struct DropBehind {
    window_bytes: u64,
    tx: Option<mpsc::SyncSender<Note>>,
    thread: Option<JoinHandle<()>>,
}

impl DropBehind {
    pub fn start(window_bytes: u64) -> std::io::Result<Self> {
        assert!(window_bytes > 0, "a drop-behind window must hold bytes");
        let (tx, rx) = mpsc::sync_channel(MAX_QUEUED_NOTES);
        let thread = std::thread::Builder::new()
            .name("cowstore-behind".into())
            .spawn(move || {
                // Ends when the store drops the sender.
                while let Ok(note) = rx.recv() {
                    handle(note);
                }
            })?;
        Ok(DropBehind {
            window_bytes,
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Notes that `file` was written up to `end`. Costs an atomic load
    /// unless a window was crossed. Appends may complete out of order
    /// (queues write concurrently): a range handed on early may still miss
    /// a page being written; that page stays dirty, is written back by the
    /// kernel as usual and merely escapes the drop.
    pub fn written(&self, file: &Arc<SegmentFile>, end: u64) {
        let behind = &file.behind;
        let noted = behind.noted.load(Ordering::Relaxed);
        if end < noted.saturating_add(self.window_bytes) {
            return;
        }
        // One appender hands the window on; a racing one covers the same pages.
        if behind
            .noted
            .compare_exchange(noted, end, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.send(Note::Written {
                file: file.clone(),
                end,
            });
        }
    }

    /// Notes that `file` is complete at `end` (sealed): all of it goes.
    pub fn finished(&self, file: &Arc<SegmentFile>, end: u64) {
        file.behind.noted.fetch_max(end, Ordering::Relaxed);
        self.send(Note::Finished {
            file: file.clone(),
            end,
        });
    }

    fn send(&self, note: Note) {
        // The thread only stops when the store drops us; a failed send only
        // costs cache.
        if let Some(tx) = &self.tx {
            let _ = tx.send(note);
        }
    }

    /// Waits until every note sent so far was handled (tests).
    #[cfg(test)]
    pub fn settle(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Note::Barrier(tx));
        let _ = rx.recv();
    }
}

impl Drop for DropBehind {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(note: Note) {
    match note {
        Note::Written { file, end } => {
            let mut st = file.behind.state.lock();
            if end <= st.started {
                return;
            }
            let fd = file.file.as_raw_fd();
            write_back(fd, st.started, end, false);
            let previous = st.started;
            st.started = end;
            if previous > st.dropped {
                write_back(fd, st.dropped, previous, true);
                drop_cached(fd, st.dropped, previous);
                st.dropped = previous;
            }
        }
        Note::Finished { file, end } => {
            let mut st = file.behind.state.lock();
            if end > st.dropped {
                let fd = file.file.as_raw_fd();
                write_back(fd, st.dropped, end, true);
                drop_cached(fd, st.dropped, end);
                st.dropped = end;
            }
            st.started = st.started.max(end);
        }
        #[cfg(test)]
        Note::Barrier(done) => {
            let _ = done.send(());
        }
    }
}

/// Starts writeback of `[from, to)`; with `wait`, also waits for it.
/// Failures only cost cache: the data is written either way.
fn write_back(fd: std::os::fd::RawFd, from: u64, to: u64, wait: bool) {
    let flags = if wait {
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER
    } else {
        libc::SYNC_FILE_RANGE_WRITE
    };
    // SAFETY: a plain syscall on a descriptor the caller's file keeps open.
    unsafe {
        libc::sync_file_range(
            fd,
            from as libc::off64_t,
            (to - from) as libc::off64_t,
            flags,
        );
    }
}

fn drop_cached(fd: std::os::fd::RawFd, from: u64, to: u64) {
    // SAFETY: as in `write_back`.
    unsafe {
        libc::posix_fadvise(
            fd,
            from as libc::off64_t,
            (to - from) as libc::off64_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}
