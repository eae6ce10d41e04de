//! One io_uring and its bookkeeping, shared by the two loops that drive a
//! ring: the store's ring thread (`io.rs`) and a thread's own ring
//! (`local_ring.rs`). They differ in where operations come from and when
//! they sleep; what a ring needs besides is here, once:
//!
//! - an eventfd read kept armed, so that another thread can end a sleep in
//!   `io_uring_enter` (the driver owns the eventfd);
//! - a backlog of operations waiting for a submission slot, one slot always
//!   kept for that read;
//! - a table of what is in flight by token, handed its completion (or
//!   resubmitted after a short transfer);
//! - the rule that memory the kernel may still use is never freed: dropping
//!   the core waits for in-flight operations, and after a fatal ring error
//!   their buffers are leaked instead.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::RawFd;

use futures::channel::oneshot;
use io_uring::{opcode, types, IoUring};

use crate::io::{abandon, complete, prepare, Op};
use crate::log_buf::{FixedBufs, Lease};

/// The token of the armed eventfd read; operation tokens never take it.
const WAKE_TOKEN: u64 = u64::MAX;

/// What an SQE in flight was for.
pub(crate) enum Slot {
    Io(Op),
    /// A poll for readiness; the sender is gone once it was cancelled.
    Poll(Option<oneshot::Sender<()>>),
    /// The removal of a poll (its completion carries nothing).
    Cancel,
}

pub(crate) struct RingCore {
    ring: IoUring,
    /// Submission slots: operations in the kernel at once.
    entries: usize,
    /// Read by the armed wake-up read; owned by the driver, open while
    /// the core lives.
    wake_fd: RawFd,
    /// The armed read's 8 bytes. Leaked on purpose: the kernel may still
    /// own that read when the ring goes away. 8 bytes per ring.
    wake_buf: &'static mut [u8; 8],
    wake_armed: bool,
    pub(crate) in_flight: HashMap<u64, Slot>,
    pub(crate) backlog: VecDeque<Op>,
    next_token: u64,
    /// An `io_uring_enter` failed for good: nothing more goes in.
    failed: bool,
    /// Batch buffers registered with this ring (see `log_buf.rs`).
    fixed: Option<FixedBufs>,
}

impl RingCore {
    pub(crate) fn new(ring: IoUring, wake_fd: RawFd) -> Self {
        let entries = ring.params().sq_entries() as usize;
        assert!(
            entries >= 4,
            "a ring needs room for the wake-up read and work"
        );
        RingCore {
            ring,
            entries,
            wake_fd,
            wake_buf: Box::leak(Box::new([0u8; 8])),
            wake_armed: false,
            in_flight: HashMap::new(),
            backlog: VecDeque::new(),
            next_token: 0,
            failed: false,
            fixed: None,
        }
    }

    /// Gives the ring a table of registered batch buffers, where the
    /// kernel takes one (see `log_buf.rs`).
    pub(crate) fn register_fixed_buffers(&mut self) {
        self.fixed = FixedBufs::register(&self.ring);
    }

    /// An empty batch buffer of at least `capacity_bytes` registered with
    /// this ring, if one is free.
    pub(crate) fn lease(&mut self, capacity_bytes: usize) -> Option<(Vec<u8>, Lease)> {
        if self.failed {
            return None;
        }
        self.fixed.as_mut()?.lease(&self.ring, capacity_bytes)
    }

    /// The id of this ring's buffer table (0: it has none).
    pub(crate) fn fixed_table_id(&self) -> u64 {
        self.fixed.as_ref().map_or(0, FixedBufs::id)
    }

    pub(crate) fn failed(&self) -> bool {
        self.failed
    }

    /// Whether the wake-up read is armed (a sleep can be ended by it).
    pub(crate) fn wake_armed(&self) -> bool {
        self.wake_armed
    }

    /// Whether an operation owning a buffer is in the kernel.
    pub(crate) fn io_in_flight(&self) -> bool {
        self.in_flight.values().any(|s| matches!(s, Slot::Io(_)))
    }

    /// Arms the wake-up read when `arm_wake` and it is not armed, then
    /// moves backlog into the submission queue, keeping a slot for that
    /// read. Submits nothing.
    pub(crate) fn fill(&mut self, arm_wake: bool) {
        if self.failed {
            return;
        }
        if arm_wake && !self.wake_armed {
            let sqe = opcode::Read::new(types::Fd(self.wake_fd), self.wake_buf.as_mut_ptr(), 8)
                .build()
                .user_data(WAKE_TOKEN);
            // SAFETY: `wake_buf` is 'static, and only this one read of it
            // is ever in flight.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                self.wake_armed = true;
            }
        }
        while self.in_flight.len() + 1 < self.entries {
            let Some(op) = self.backlog.pop_front() else {
                break;
            };
            let token = self.token();
            let sqe = prepare(&op, token, self.fixed_table_id());
            // SAFETY: the buffer an SQE points into is owned by `op`, which
            // stays in `in_flight` (its heap data unmoved) until completion,
            // or is leaked (see `fail`). A fixed write names a buffer
            // registered with this ring (checked by `prepare`).
            if unsafe { self.ring.submission().push(&sqe) }.is_err() {
                self.backlog.push_front(op);
                break;
            }
            self.in_flight.insert(token, Slot::Io(op));
        }
    }

    fn token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1) % WAKE_TOKEN;
        token
    }

    /// Pushes one SQE that owns no buffer (a poll or its removal), if there
    /// is room besides the wake-up read and one operation; its token.
    pub(crate) fn push_plain(&mut self, sqe: io_uring::squeue::Entry, slot: Slot) -> Option<u64> {
        if self.failed || self.in_flight.len() + 2 >= self.entries {
            return None;
        }
        let token = self.token();
        // SAFETY: the entry points into no memory.
        unsafe { self.ring.submission().push(&sqe.user_data(token)) }.ok()?;
        self.in_flight.insert(token, slot);
        Some(token)
    }

    /// Submits what is queued and waits for `want` completions (0: none).
    /// Transient failures (EINTR, EBUSY, EAGAIN) are `Ok`: the next call
    /// retries. Any other fails the core (see [`RingCore::fail`]) and is
    /// returned.
    pub(crate) fn enter(&mut self, want: usize) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("io_uring failed earlier"));
        }
        match self.ring.submit_and_wait(want) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => {
                self.fail(&e);
                Err(e)
            }
        }
    }

    /// Hands out every completion: operations get their result (or go back
    /// to the front of the backlog to finish a short transfer), polls fire.
    pub(crate) fn reap(&mut self) {
        let completions: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (token, res) in completions {
            if token == WAKE_TOKEN {
                self.wake_armed = false;
                continue;
            }
            match self.in_flight.remove(&token) {
                Some(Slot::Io(op)) => {
                    if let Some(op) = complete(op, res) {
                        self.backlog.push_front(op);
                    }
                }
                Some(Slot::Poll(Some(ready))) if res >= 0 => {
                    let _ = ready.send(());
                }
                // A failed or cancelled poll: its future stays pending.
                Some(Slot::Poll(_) | Slot::Cancel) | None => {}
            }
        }
    }

    /// After a fatal ring error: every waiting operation fails. Those in
    /// the kernel fail too, but their buffers are leaked, not freed: the
    /// kernel may still read or write them.
    fn fail(&mut self, e: &io::Error) {
        tracing::error!("io_uring failed: {e}");
        self.failed = true;
        for op in self.backlog.drain(..) {
            let _ = op
                .reply
                .send(Err(io::Error::other(format!("io_uring failed: {e}"))));
        }
        for (_, slot) in self.in_flight.drain() {
            match slot {
                Slot::Io(op) => abandon(op, e),
                Slot::Poll(_) | Slot::Cancel => {}
            }
        }
    }
}

impl Drop for RingCore {
    /// Waits for the operations in the kernel (their buffers are theirs
    /// until they complete); polls reference no memory and end with the
    /// ring.
    fn drop(&mut self) {
        while self.io_in_flight() && !self.failed {
            if self.enter(1).is_ok() {
                self.reap();
            }
        }
        self.backlog.clear();
    }
}
