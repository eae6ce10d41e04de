//! A thread's own io_uring, driven by the thread itself: [`block_on`].
//!
//! Through the store's ring thread (`io.rs`) every operation costs two
//! thread wake-ups besides the disk's: the caller wakes the ring thread to
//! submit, and the ring thread wakes the caller when the completion arrives.
//! On a 2-core VM each wake-up of a sleeping thread is an interprocessor
//! interrupt and a scheduling delay. Measured with direct appends of
//! 128 KiB writes at depth 8 (perf, docs/performance.md): the vhost-blk
//! queue worker and the ring thread each used about a third of a core, the
//! disk held 2-3 of our requests where it held 4 of qemu-storage-daemon's,
//! and the client saw ~300 us per request outside the disk against qsd's
//! ~140 us. qsd submits and reaps in its one event-loop thread.
//!
//! So a thread that serves many requests (a vhost-blk queue worker) runs
//! them under [`block_on`]: operations it starts go into a ring of its own
//! (submitted at once, in the calling thread), and when every future it
//! drives waits, it sleeps in the ring, where a completion or a wake-up from
//! another thread (an eventfd read the ring keeps armed) ends the sleep.
//! Completions are handed to their futures by the same thread, without a
//! wake-up. Only direct appends (`O_DIRECT`, see `segment.rs`) take this
//! path; buffered appends stay inline or with the log writers, reads and
//! syncs with the ring thread.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use io_uring::{opcode, types, IoUring};

use crate::io::{new_eventfd, signal, Op};
use crate::log_buf::Lease;
use crate::ring::{RingCore, Slot};

/// Submission queue entries of a thread's ring: operations in the kernel at
/// once (more wait in the backlog). A queue worker has at most its queue's
/// depth in flight.
const LOCAL_RING_ENTRIES: u32 = 64;

thread_local! {
    static RING: RefCell<Option<LocalRing>> = const { RefCell::new(None) };
    /// Set inside [`block_on`]: operations may go to this thread's ring,
    /// because this thread will reap their completions.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
}

/// Wakes the thread in [`block_on`]: sets `woken`, and if the thread
/// sleeps in its ring, writes the eventfd whose read the ring keeps armed.
struct Wakeup {
    woken: AtomicBool,
    sleeping: AtomicBool,
    fd: OwnedFd,
}

impl Wake for Wakeup {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        // The sleeper sets `sleeping` before it looks at `woken` a last
        // time, so one of the two sees the other.
        if self.sleeping.load(Ordering::SeqCst) {
            signal(self.fd.as_raw_fd());
        }
    }
}

struct LocalRing {
    /// Dropped first: it waits for what is in flight.
    core: RingCore,
    /// Owns the eventfd the core's wake-up read reads.
    wakeup: Arc<Wakeup>,
}

impl LocalRing {
    fn new() -> io::Result<Self> {
        let ring = IoUring::new(LOCAL_RING_ENTRIES)?;
        let wakeup = Arc::new(Wakeup {
            woken: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            fd: new_eventfd()?,
        });
        let mut core = RingCore::new(ring, wakeup.fd.as_raw_fd());
        core.register_fixed_buffers();
        Ok(LocalRing { core, wakeup })
    }

    /// Moves backlog into the submission queue and submits it, without
    /// waiting; hands out what completed meanwhile, so that slots free up
    /// even while the thread never has to sleep.
    fn submit(&mut self) {
        self.core.fill(true);
        // A failure is logged, and what waited in the ring failed with it.
        let _ = self.core.enter(0);
        self.core.reap();
    }

    /// Sleeps until a completion arrives or the thread is woken, then hands
    /// out every completion. Once the ring failed, sleeping is a plain
    /// eventfd read (operations go to the store's ring thread then).
    fn wait(&mut self) {
        if self.core.failed() {
            self.wakeup.sleeping.store(true, Ordering::SeqCst);
            if !self.wakeup.woken.load(Ordering::SeqCst) {
                let mut counter = [0u8; 8];
                // SAFETY: reads 8 bytes into a live local buffer from an
                // eventfd this ring keeps open. A failure only ends the
                // sleep early; the caller polls and sleeps again.
                unsafe { libc::read(self.wakeup.fd.as_raw_fd(), counter.as_mut_ptr().cast(), 8) };
            }
            self.wakeup.sleeping.store(false, Ordering::SeqCst);
            return;
        }
        self.core.fill(true);
        self.wakeup.sleeping.store(true, Ordering::SeqCst);
        let want = usize::from(!self.wakeup.woken.load(Ordering::SeqCst));
        let _ = self.core.enter(want);
        self.wakeup.sleeping.store(false, Ordering::SeqCst);
        self.core.reap();
    }
}

/// Restores [`ACTIVE`] when a [`block_on`] ends, however it ends.
struct ActiveScope(bool);

impl ActiveScope {
    fn enter(active: bool) -> Self {
        ActiveScope(ACTIVE.replace(active))
    }
}

impl Drop for ActiveScope {
    fn drop(&mut self) {
        ACTIVE.set(self.0);
    }
}

/// Runs `fut` to completion on this thread, with this thread's own ring for
/// the operations it starts (see the module docs). Where io_uring is not
/// available, and inside another `block_on` of this thread, it is
/// `futures::executor::block_on`.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let nested = ACTIVE.get();
    let wakeup = if nested {
        None
    } else {
        RING.with(|r| {
            let mut r = r.borrow_mut();
            if r.is_none() {
                match LocalRing::new() {
                    Ok(ring) => *r = Some(ring),
                    Err(e) => tracing::debug!("no thread io_uring: {e}"),
                }
            }
            r.as_ref().map(|ring| ring.wakeup.clone())
        })
    };
    let Some(wakeup) = wakeup else {
        // The outer block_on reaps this thread's ring; inside, operations
        // go to the ring thread.
        let _scope = ActiveScope::enter(false);
        return futures::executor::block_on(fut);
    };
    let _scope = ActiveScope::enter(true);
    let waker = Waker::from(wakeup.clone());
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        wakeup.woken.store(false, Ordering::SeqCst);
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        while !wakeup.woken.load(Ordering::SeqCst) {
            RING.with(|r| {
                if let Some(ring) = r.borrow_mut().as_mut() {
                    ring.wait();
                }
            });
        }
    }
}

/// Resolves once `fd` is readable (`POLLIN`), watched by this thread's ring
/// inside [`block_on`]. Never resolves outside one, or when the ring has no
/// room: it is for waking a loop early, never its only way on. The fd must
/// stay open while the future lives.
pub fn readable(fd: std::os::fd::RawFd) -> Readable {
    let (ready, done) = futures::channel::oneshot::channel();
    let token = if ACTIVE.get() {
        RING.with(|r| {
            let mut r = r.try_borrow_mut().ok()?;
            let ring = r.as_mut()?;
            let sqe = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32).build();
            let token = ring.core.push_plain(sqe, Slot::Poll(Some(ready)))?;
            ring.submit();
            Some(token)
        })
    } else {
        None
    };
    Readable { token, done }
}

/// See [`readable`].
pub struct Readable {
    /// The poll's token in this thread's ring; `None`: never resolves.
    token: Option<u64>,
    done: futures::channel::oneshot::Receiver<()>,
}

impl Future for Readable {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.token.is_none() {
            return Poll::Pending;
        }
        match std::pin::Pin::new(&mut self.done).poll(cx) {
            Poll::Ready(Ok(())) => {
                self.token = None;
                Poll::Ready(())
            }
            // Cancelled (the ring went away): stays pending, as documented.
            Poll::Ready(Err(_)) => {
                self.token = None;
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Readable {
    /// Removes a poll that did not fire, so that polls of dropped futures
    /// do not pile up in the ring.
    fn drop(&mut self) {
        let Some(token) = self.token else { return };
        RING.with(|r| {
            let Ok(mut r) = r.try_borrow_mut() else {
                return;
            };
            let Some(ring) = r.as_mut() else { return };
            if let Some(Slot::Poll(ready)) = ring.core.in_flight.get_mut(&token) {
                ready.take();
                let sqe = opcode::PollRemove::new(token).build();
                if ring.core.push_plain(sqe, Slot::Cancel).is_some() {
                    ring.submit();
                }
            }
        });
    }
}

/// Starts `op` in this thread's ring if the thread is inside [`block_on`]
/// (which reaps it); gives it back otherwise.
pub(crate) fn submit(op: Op) -> Result<(), Op> {
    if !ACTIVE.get() {
        return Err(op);
    }
    RING.with(|r| {
        let Ok(mut r) = r.try_borrow_mut() else {
            return Err(op);
        };
        match r.as_mut() {
            Some(ring) if !ring.core.failed() => {
                ring.core.backlog.push_back(op);
                ring.submit();
                Ok(())
            }
            _ => Err(op),
        }
    })
}

/// An empty batch buffer of at least `capacity_bytes`, registered with
/// this thread's ring, for a batch whose writes this thread will submit
/// (inside [`block_on`]); `None` elsewhere or when none is free.
pub(crate) fn lease_buf(capacity_bytes: usize) -> Option<(Vec<u8>, Lease)> {
    if !ACTIVE.get() {
        return None;
    }
    RING.with(|r| {
        r.try_borrow_mut()
            .ok()?
            .as_mut()?
            .core
            .lease(capacity_bytes)
    })
}

/// The id of this thread's ring's buffer table (0: none, or not inside
/// [`block_on`]).
pub(crate) fn fixed_table_id() -> u64 {
    if !ACTIVE.get() {
        return 0;
    }
    RING.with(|r| {
        r.try_borrow()
            .ok()
            .and_then(|r| r.as_ref().map(|ring| ring.core.fixed_table_id()))
            .unwrap_or(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn polls_in_flight() -> usize {
        RING.with(|r| {
            r.borrow().as_ref().map_or(0, |ring| {
                ring.core
                    .in_flight
                    .values()
                    .filter(|s| matches!(s, Slot::Poll(_)))
                    .count()
            })
        })
    }

    /// A wake from another thread ends the sleep in the ring.
    #[test]
    fn wakes_from_other_threads_end_the_sleep() {
        let (tx, rx) = futures::channel::oneshot::channel();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(7u32).unwrap();
        });
        assert_eq!(block_on(rx).unwrap(), 7);
        sender.join().unwrap();
    }

    /// A `block_on` inside another runs its future too (without the ring).
    #[test]
    fn nested_block_on_runs() {
        assert_eq!(block_on(async { block_on(async { 5 }) + 1 }), 6);
    }

    /// `readable` resolves when the fd becomes readable; a dropped one is
    /// removed from the ring; outside `block_on` it never resolves.
    #[test]
    fn readable_fires_and_dropped_polls_leave_the_ring() {
        let fd = new_eventfd().unwrap();
        let raw = fd.as_raw_fd();
        block_on(async {
            let ready = readable(raw);
            assert!(ready.token.is_some(), "the poll was refused");
            let writer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                signal(raw);
            });
            ready.await;
            writer.join().unwrap();
        });
        let mut counter = [0u8; 8];
        // SAFETY: reads 8 bytes into a live buffer; the eventfd is readable.
        assert_eq!(
            unsafe { libc::read(raw, counter.as_mut_ptr().cast(), 8) },
            8
        );
        for _ in 0..100 {
            block_on(async {
                let pending = readable(raw);
                drop(pending);
            });
        }
        // Reaping happens while waiting: wait for one more poll to fire.
        block_on(async {
            let ready = readable(raw);
            assert!(ready.token.is_some(), "the poll was refused");
            signal(raw);
            ready.await;
        });
        assert!(
            polls_in_flight() <= 1,
            "{} polls left in the ring",
            polls_in_flight()
        );
        let outside = readable(raw);
        assert!(outside.token.is_none(), "a poll outside block_on");
    }
}
