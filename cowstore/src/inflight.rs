//! Tracks a volume's writes between log reservation and I/O completion, so
//! that `flush` can wait for exactly the writes issued before it.

use parking_lot::Mutex;
use std::collections::BTreeMap;

use futures::channel::oneshot;

#[derive(Default)]
pub struct Inflight {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// first seq -> last seq of each batch still in flight.
    batches: BTreeMap<u64, u64>,
    /// (target seq, waker): resolved once no batch starting at or before
    /// the target is in flight.
    waiters: Vec<(u64, oneshot::Sender<()>)>,
}

impl Inflight {
    /// Registers a batch. Called under the volume lock that assigned the
    /// seqs, so batches register in seq order.
    pub fn begin(&self, first_seq: u64, last_seq: u64) {
        let mut st = self.state.lock();
        st.batches.insert(first_seq, last_seq);
    }

    pub fn end(&self, first_seq: u64) {
        let mut st = self.state.lock();
        st.batches.remove(&first_seq);
        let oldest = st.batches.keys().next().copied().unwrap_or(u64::MAX);
        let waiters = std::mem::take(&mut st.waiters);
        for (target, tx) in waiters {
            if target < oldest {
                let _ = tx.send(());
            } else {
                st.waiters.push((target, tx));
            }
        }
    }

    /// Resolves once every batch with a seq at or before `target` completed.
    pub async fn wait_through(&self, target: u64) {
        let rx = {
            let mut st = self.state.lock();
            match st.batches.keys().next() {
                Some(&oldest) if oldest <= target => {
                    let (tx, rx) = oneshot::channel();
                    st.waiters.push((target, tx));
                    rx
                }
                _ => return,
            }
        };
        let _ = rx.await;
    }
}
