//! Log writer threads: large appends are copied into the page cache by a
//! thread of their own, so that the caller (a vhost-blk queue worker) can
//! gather and checksum the next request of its batch meanwhile.
//!
//! With every append inline, the queue worker was the bottleneck of 128 KiB
//! writes: one core busy, the other idle, the buffered write alone ~42% of
//! the worker's time (perf, docs/performance.md). A segment always goes to
//! the same thread (by id), so one file's appends never contend for its
//! inode lock from two threads; different volumes' segments spread over
//! the threads. Small appends stay inline (see [`OFFLOAD_MIN_BYTES`]).

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use futures::channel::oneshot;

use crate::drop_behind::DropBehind;
use crate::limits::MAX_LOG_WRITER_THREADS;
use crate::segment::SegmentFile;

/// Appends at least this long go to a log writer thread; shorter ones cost
/// about what the hand-over and the wake-up cost, so they stay inline.
pub const OFFLOAD_MIN_BYTES: usize = 64 << 10;

/// Writes `bytes` at `offset` of `file`, then tells drop-behind.
pub(crate) fn append(
    file: &Arc<SegmentFile>,
    offset: u64,
    bytes: &[u8],
    behind: Option<&DropBehind>,
) -> io::Result<()> {
    file.file.write_all_at(bytes, offset)?;
    if let Some(behind) = behind {
        behind.written(file, offset + bytes.len() as u64);
    }
    Ok(())
}

pub(crate) struct LogWriters {
    senders: Vec<mpsc::Sender<WriteOp>>,
    threads: Vec<JoinHandle<()>>,
}

struct WriteOp {
    file: Arc<SegmentFile>,
    offset: u64,
    buf: Arc<Vec<u8>>,
    range: std::ops::Range<usize>,
    reply: oneshot::Sender<io::Result<()>>,
}

impl LogWriters {
    pub fn start(threads: usize, behind: Option<Arc<DropBehind>>) -> io::Result<Self> {
        assert!(threads > 0 && threads <= MAX_LOG_WRITER_THREADS);
        let mut writers = LogWriters {
            senders: Vec::with_capacity(threads),
            threads: Vec::with_capacity(threads),
        };
        for i in 0..threads {
            let (tx, rx) = mpsc::channel::<WriteOp>();
            let behind = behind.clone();
            let thread = std::thread::Builder::new()
                .name(format!("cowstore-wr{i}"))
                .spawn(move || {
                    // Ends when the store drops the senders.
                    while let Ok(op) = rx.recv() {
                        let bytes = &op.buf[op.range.clone()];
                        let res = append(&op.file, op.offset, bytes, behind.as_deref());
                        // The caller may be gone (a dropped future): the
                        // bytes are written either way.
                        let _ = op.reply.send(res);
                    }
                })?;
            writers.senders.push(tx);
            writers.threads.push(thread);
        }
        Ok(writers)
    }

    /// Writes `buf[range]` at `offset` of `file` in the file's thread.
    pub async fn write(
        &self,
        file: &Arc<SegmentFile>,
        offset: u64,
        buf: &Arc<Vec<u8>>,
        range: std::ops::Range<usize>,
    ) -> io::Result<()> {
        let (reply, done) = oneshot::channel();
        let op = WriteOp {
            file: file.clone(),
            offset,
            buf: buf.clone(),
            range,
            reply,
        };
        let lane = (file.id % self.senders.len() as u64) as usize;
        self.senders[lane]
            .send(op)
            .map_err(|_| io::Error::other("log writer thread exited"))?;
        done.await
            .map_err(|_| io::Error::other("log writer thread dropped the write"))?
    }
}

impl Drop for LogWriters {
    fn drop(&mut self) {
        self.senders.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
