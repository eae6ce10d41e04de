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
//!
//! A writer takes every append queued for it at once and writes each run
//! of them that continue one another with one `pwritev`: one wake-up and
//! one system call for what queued up during the last write. Context
//! switches were ~23% of cowstored's CPU on 128 KiB writes at depth 8
//! (perf); gathered, that row ran 1.21x and 1.12x faster (A/B in one
//! client run, docs/performance.md).

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use futures::channel::oneshot;

use crate::drop_behind::DropBehind;
use crate::limits::MAX_LOG_WRITER_THREADS;
use crate::log_buf::LogBuf;
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

/// Writes `parts`, back to back from `offset` of `file`, with one
/// `pwritev`, then tells drop-behind.
fn append_gathered(
    file: &Arc<SegmentFile>,
    offset: u64,
    parts: &[&[u8]],
    behind: Option<&DropBehind>,
) -> io::Result<()> {
    pwritev_all(&file.file, offset, parts)?;
    if let Some(behind) = behind {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        behind.written(file, offset + len as u64);
    }
    Ok(())
}

/// `pwritev` of all of `parts` from `offset`, resuming after short writes.
fn pwritev_all(file: &std::fs::File, mut offset: u64, parts: &[&[u8]]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    assert!(parts.len() <= MAX_GATHER_OPS);
    let mut iov: Vec<libc::iovec> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    let mut first = 0;
    while first < iov.len() {
        let at = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // SAFETY: every iovec points into a live slice of `parts`, which
        // the kernel only reads; `iov[first..]` has at most MAX_GATHER_OPS
        // entries, below IOV_MAX.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iov[first..].as_ptr(),
                (iov.len() - first) as libc::c_int,
                at,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut n = n as usize;
        offset += n as u64;
        while n > 0 {
            let v = &mut iov[first];
            if n >= v.iov_len {
                n -= v.iov_len;
                first += 1;
            } else {
                // SAFETY: advances within the same slice (n < iov_len).
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
                v.iov_len -= n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// At most this many queued appends are taken at once (bounds the iovec
/// array, far below `IOV_MAX`).
const MAX_GATHER_OPS: usize = 64;
/// A gathered write stops growing at this many bytes.
const MAX_GATHER_BYTES: usize = 4 << 20;

/// Performs `ops` (independent appends to disjoint ranges, so any order is
/// correct), writing each run of them that continue one another in one
/// file with one `pwritev`.
fn run_ops(mut ops: Vec<WriteOp>, behind: Option<&DropBehind>) {
    // Several queue workers may hand in one file's appends out of order.
    ops.sort_by_key(|op| (op.file.id, op.offset));
    let mut ops = ops.into_iter().peekable();
    while let Some(first) = ops.next() {
        let mut run = vec![first];
        let mut end = run[0].offset + run[0].range.len() as u64;
        let mut bytes = run[0].range.len();
        while let Some(next) = ops.next_if(|next| {
            Arc::ptr_eq(&next.file, &run[0].file)
                && next.offset == end
                && bytes + next.range.len() <= MAX_GATHER_BYTES
        }) {
            end += next.range.len() as u64;
            bytes += next.range.len();
            run.push(next);
        }
        let parts: Vec<&[u8]> = run.iter().map(|op| &op.buf[op.range.clone()]).collect();
        let res = append_gathered(&run[0].file, run[0].offset, &parts, behind);
        drop(parts);
        for op in run {
            // The caller may be gone (a dropped future): the bytes are
            // written either way.
            let _ = op.reply.send(match &res {
                Ok(()) => Ok(()),
                // Each caller gets the error (io::Error is not Clone).
                Err(e) => Err(match e.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(e.kind(), e.to_string()),
                }),
            });
        }
    }
}

pub(crate) struct LogWriters {
    senders: Vec<mpsc::Sender<WriteOp>>,
    threads: Vec<JoinHandle<()>>,
}

struct WriteOp {
    file: Arc<SegmentFile>,
    offset: u64,
    buf: Arc<LogBuf>,
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
                    while let Ok(first) = rx.recv() {
                        let mut ops = vec![first];
                        while ops.len() < MAX_GATHER_OPS {
                            match rx.try_recv() {
                                Ok(op) => ops.push(op),
                                Err(_) => break,
                            }
                        }
                        run_ops(ops, behind.as_deref());
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
        buf: &Arc<LogBuf>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::{SegmentHeader, SegmentKind, SEGMENT_HEADER_BYTES};

    /// Appends handed in out of order, with a gap and a second file, land
    /// where they were placed, and every caller hears back.
    #[test]
    fn gathered_appends_land_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let segment = |id| {
            let header = SegmentHeader {
                segment_id: id,
                volume_id: 1,
                chain_index: id,
                kind: SegmentKind::Log,
            };
            Arc::new(SegmentFile::create(dir.path(), header).unwrap())
        };
        let (a, b) = (segment(1), segment(2));
        let buf = Arc::new(LogBuf::plain(crate::record::tests::random_bytes(64 << 10)));
        let at = SEGMENT_HEADER_BYTES;
        // (file, offset, range of buf): a's 0..4 KiB and 4..12 KiB continue
        // each other, 20..24 KiB leaves a gap; b gets one append.
        let plan = [
            (&a, at + (20 << 10), 20 << 10..24 << 10),
            (&b, at, 0..(16 << 10)),
            (&a, at + (4 << 10), 4 << 10..12 << 10),
            (&a, at, 0..4 << 10),
        ];
        let mut replies = Vec::new();
        let ops = plan
            .iter()
            .map(|(file, offset, range)| {
                let (reply, done) = oneshot::channel();
                replies.push(done);
                WriteOp {
                    file: Arc::clone(file),
                    offset: *offset,
                    buf: buf.clone(),
                    range: range.clone(),
                    reply,
                }
            })
            .collect();
        run_ops(ops, None);
        for done in replies {
            futures::executor::block_on(done).unwrap().unwrap();
        }
        let a_bytes = std::fs::read(&a.path).unwrap();
        let h = at as usize;
        assert_eq!(a_bytes[h..h + (12 << 10)], buf[..12 << 10]);
        assert!(a_bytes[h + (12 << 10)..h + (20 << 10)]
            .iter()
            .all(|&x| x == 0));
        assert_eq!(a_bytes[h + (20 << 10)..], buf[20 << 10..24 << 10]);
        let b_bytes = std::fs::read(&b.path).unwrap();
        assert_eq!(b_bytes[h..], buf[..16 << 10]);
    }
}
