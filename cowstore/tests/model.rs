//! State-machine test: random sequences of volume, snapshot, clone, GC,
//! reopen and crash operations against a plain in-memory model (one byte
//! vector per volume and per snapshot).
//!
//! Checked: every read equals the model; after a crash (drop without flush,
//! then the unflushed log tail truncated or corrupted at a random offset)
//! every volume equals the model as of some point at or after its last
//! completed flush, and every snapshot equals the model exactly.
//!
//! `PROPTEST_CASES` sets the number of cases (default 1000). For a long run:
//! `PROPTEST_CASES=100000 cargo test --release -p cowstore --test model`.

use std::collections::BTreeMap;

use cowstore::{IoBackendChoice, Store, StoreConfig};
use futures::executor::block_on;
use proptest::prelude::*;

const SECTOR: u64 = 512;
const SLOTS: usize = 4;
const MAX_VOLUME_SECTORS: u64 = 512; // 256 KiB

#[derive(Clone, Debug)]
enum Fill {
    Random(u64),
    Zero,
    Repeating(u8),
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        slot: u8,
        sectors: u16,
    },
    Write {
        slot: u8,
        at: u16,
        len: u16,
        fill: Fill,
    },
    /// Several writes as one batch (`Volume::write_many`).
    WriteMany {
        slot: u8,
        writes: Vec<(u16, u16, Fill)>,
    },
    Read {
        slot: u8,
        at: u16,
        len: u16,
    },
    Flush {
        slot: u8,
    },
    Discard {
        slot: u8,
        at: u16,
        len: u16,
    },
    WriteZeroes {
        slot: u8,
        at: u16,
        len: u16,
    },
    Resize {
        slot: u8,
        grow: u16,
    },
    Snapshot {
        slot: u8,
    },
    ReadSnapshot {
        pick: u16,
        at: u16,
        len: u16,
    },
    Clone {
        pick: u16,
        slot: u8,
    },
    DeleteVolume {
        slot: u8,
    },
    DeleteSnapshot {
        pick: u16,
    },
    Gc,
    Reopen,
    Crash {
        cut_at: u16,
        corrupt: bool,
    },
}

fn fill_strategy() -> impl Strategy<Value = Fill> {
    prop_oneof![
        6 => any::<u64>().prop_map(Fill::Random),
        1 => Just(Fill::Zero),
        2 => any::<u8>().prop_map(Fill::Repeating),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS as u8;
    prop_oneof![
        3 => (slot.clone(), 1..MAX_VOLUME_SECTORS as u16).prop_map(|(slot, sectors)| Op::Create { slot, sectors }),
        20 => (slot.clone(), any::<u16>(), 1..300u16, fill_strategy())
            .prop_map(|(slot, at, len, fill)| Op::Write { slot, at, len, fill }),
        6 => (slot.clone(), proptest::collection::vec((any::<u16>(), 1..300u16, fill_strategy()), 1..5))
            .prop_map(|(slot, writes)| Op::WriteMany { slot, writes }),
        8 => (slot.clone(), any::<u16>(), 1..300u16).prop_map(|(slot, at, len)| Op::Read { slot, at, len }),
        5 => slot.clone().prop_map(|slot| Op::Flush { slot }),
        3 => (slot.clone(), any::<u16>(), 1..300u16).prop_map(|(slot, at, len)| Op::Discard { slot, at, len }),
        2 => (slot.clone(), any::<u16>(), 1..300u16).prop_map(|(slot, at, len)| Op::WriteZeroes { slot, at, len }),
        1 => (slot.clone(), 1..64u16).prop_map(|(slot, grow)| Op::Resize { slot, grow }),
        4 => slot.clone().prop_map(|slot| Op::Snapshot { slot }),
        4 => (any::<u16>(), any::<u16>(), 1..300u16).prop_map(|(pick, at, len)| Op::ReadSnapshot { pick, at, len }),
        2 => (any::<u16>(), slot.clone()).prop_map(|(pick, slot)| Op::Clone { pick, slot }),
        1 => slot.clone().prop_map(|slot| Op::DeleteVolume { slot }),
        2 => any::<u16>().prop_map(|pick| Op::DeleteSnapshot { pick }),
        2 => Just(Op::Gc),
        1 => Just(Op::Reopen),
        2 => (any::<u16>(), any::<bool>()).prop_map(|(cut_at, corrupt)| Op::Crash { cut_at, corrupt }),
    ]
}

fn make_data(fill: &Fill, len: usize) -> Vec<u8> {
    match fill {
        Fill::Zero => vec![0; len],
        Fill::Repeating(b) => vec![*b; len],
        Fill::Random(seed) => {
            let mut x = seed | 1;
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        }
    }
}

struct ModelVolume {
    name: String,
    data: Vec<u8>,
    /// Content at the last completed flush, then after each later change:
    /// after a crash the volume must equal one of these.
    since_flush: Vec<Vec<u8>>,
}

impl ModelVolume {
    fn changed(&mut self) {
        self.since_flush.push(self.data.clone());
    }
    fn flushed(&mut self) {
        self.since_flush = vec![self.data.clone()];
    }
}

struct Harness {
    dir: tempfile::TempDir,
    config: StoreConfig,
    store: Option<Store>,
    volumes: [Option<ModelVolume>; SLOTS],
    snapshots: BTreeMap<String, Vec<u8>>,
    next_name: u64,
}

/// Clamps a request to the volume: returns (offset, len) in bytes, len >= 1 sector.
fn clamp(size_bytes: u64, at: u16, len: u16) -> (u64, u64) {
    let sectors = size_bytes / SECTOR;
    let at = u64::from(at) % sectors;
    let len = u64::from(len).min(sectors - at).max(1);
    (at * SECTOR, len * SECTOR)
}

impl Harness {
    fn new(io_backend: IoBackendChoice, aligned_records: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            segment_bytes: 64 << 10,
            io_backend,
            aligned_records,
            checkpoint_interval_bytes: 192 << 10,
            gc_live_threshold_pct: 60,
            tier: None,
            // Every segment after the first cleaner pass is a reused file
            // (stale records after the log's end), whatever the writes.
            reuse_min_batch_bytes: 0,
            ..Default::default()
        };
        let store = Store::create(dir.path().join("store"), config.clone()).unwrap();
        Harness {
            dir,
            config,
            store: Some(store),
            volumes: Default::default(),
            snapshots: BTreeMap::new(),
            next_name: 0,
        }
    }

    fn store(&self) -> &Store {
        self.store.as_ref().unwrap()
    }

    fn fresh_name(&mut self, prefix: &str) -> String {
        self.next_name += 1;
        format!("{prefix}{}", self.next_name)
    }

    fn reopen(&mut self) {
        self.store = Some(Store::open(self.dir.path().join("store"), self.config.clone()).unwrap());
    }

    fn check_all(&self) {
        let store = self.store();
        for m in self.volumes.iter().flatten() {
            let v = store.volume(&m.name).unwrap();
            assert_eq!(v.size_bytes(), m.data.len() as u64, "size of {}", m.name);
            let got = block_on(v.read(0, m.data.len() as u64)).unwrap();
            assert!(got == m.data, "volume {} differs from the model", m.name);
        }
        for (name, data) in &self.snapshots {
            let s = store.snapshot(name).unwrap();
            let got = block_on(s.read(0, data.len() as u64)).unwrap();
            assert!(&got == data, "snapshot {name} differs from the model");
        }
        let names: Vec<String> = store.snapshots().into_iter().map(|s| s.name).collect();
        let expected: Vec<String> = self.snapshots.keys().cloned().collect();
        assert_eq!(names, expected, "snapshot list");
        let mut vols: Vec<String> = store.volumes().into_iter().map(|v| v.name).collect();
        vols.sort();
        let mut expected: Vec<String> = self
            .volumes
            .iter()
            .flatten()
            .map(|m| m.name.clone())
            .collect();
        expected.sort();
        assert_eq!(vols, expected, "volume list");
    }

    fn apply(&mut self, op: &Op) {
        match op.clone() {
            Op::Create { slot, sectors } => {
                let slot = slot as usize;
                if self.volumes[slot].is_some() {
                    return;
                }
                let name = self.fresh_name("vol");
                let size = u64::from(sectors) * SECTOR;
                self.store().create_volume(&name, size).unwrap();
                let data = vec![0; size as usize];
                self.volumes[slot] = Some(ModelVolume {
                    name,
                    since_flush: vec![data.clone()],
                    data,
                });
            }
            Op::Write {
                slot,
                at,
                len,
                fill,
            } => {
                let Some(m) = self.volumes[slot as usize].as_mut() else {
                    return;
                };
                let (off, len) = clamp(m.data.len() as u64, at, len);
                let data = make_data(&fill, len as usize);
                let v = self.store.as_ref().unwrap().volume(&m.name).unwrap();
                block_on(v.write(off, &data)).unwrap();
                m.data[off as usize..(off + len) as usize].copy_from_slice(&data);
                m.changed();
            }
            Op::WriteMany { slot, ref writes } => {
                let Some(m) = self.volumes[slot as usize].as_mut() else {
                    return;
                };
                let writes: Vec<(u64, Vec<u8>)> = writes
                    .iter()
                    .map(|(at, len, fill)| {
                        let (off, len) = clamp(m.data.len() as u64, *at, *len);
                        (off, make_data(fill, len as usize))
                    })
                    .collect();
                let v = self.store.as_ref().unwrap().volume(&m.name).unwrap();
                let batch = writes
                    .iter()
                    .map(|(off, data)| {
                        let mut rest = &data[..];
                        let fill = move |out: &mut Vec<u8>, n: usize| {
                            let (chunk, tail) = rest.split_at(n);
                            out.extend_from_slice(chunk);
                            rest = tail;
                            Ok(())
                        };
                        (*off, data.len() as u64, fill)
                    })
                    .collect();
                for result in block_on(v.write_many(batch)) {
                    result.unwrap();
                }
                // In order: a crash may keep any prefix of the batch's writes.
                for (off, data) in &writes {
                    m.data[*off as usize..*off as usize + data.len()].copy_from_slice(data);
                    m.changed();
                }
            }
            Op::Read { slot, at, len } => {
                let Some(m) = self.volumes[slot as usize].as_ref() else {
                    return;
                };
                let (off, len) = clamp(m.data.len() as u64, at, len);
                let v = self.store().volume(&m.name).unwrap();
                let got = block_on(v.read(off, len)).unwrap();
                assert!(
                    got == m.data[off as usize..(off + len) as usize],
                    "read of {} at {off}+{len}",
                    m.name
                );
            }
            Op::Flush { slot } => {
                let Some(m) = self.volumes[slot as usize].as_mut() else {
                    return;
                };
                let v = self.store.as_ref().unwrap().volume(&m.name).unwrap();
                block_on(v.flush()).unwrap();
                m.flushed();
            }
            Op::Discard { slot, at, len } | Op::WriteZeroes { slot, at, len } => {
                let Some(m) = self.volumes[slot as usize].as_mut() else {
                    return;
                };
                let (off, len) = clamp(m.data.len() as u64, at, len);
                let v = self.store.as_ref().unwrap().volume(&m.name).unwrap();
                if matches!(op, Op::Discard { .. }) {
                    block_on(v.discard(off, len)).unwrap();
                } else {
                    block_on(v.write_zeroes(off, len)).unwrap();
                }
                m.data[off as usize..(off + len) as usize].fill(0);
                m.changed();
            }
            Op::Resize { slot, grow } => {
                let Some(m) = self.volumes[slot as usize].as_mut() else {
                    return;
                };
                let new_size = m.data.len() as u64 + u64::from(grow) * SECTOR;
                let v = self.store.as_ref().unwrap().volume(&m.name).unwrap();
                block_on(v.resize(new_size)).unwrap();
                m.data.resize(new_size as usize, 0);
                m.flushed();
            }
            Op::Snapshot { slot } => {
                let name = self.fresh_name("snap");
                let Some(m) = self.volumes[slot as usize].as_mut() else {
                    return;
                };
                self.store
                    .as_ref()
                    .unwrap()
                    .create_snapshot(&m.name, &name)
                    .unwrap();
                m.flushed();
                self.snapshots.insert(name, m.data.clone());
            }
            Op::ReadSnapshot { pick, at, len } => {
                let Some((name, data)) = self
                    .snapshots
                    .iter()
                    .nth(pick as usize % self.snapshots.len().max(1))
                else {
                    return;
                };
                let (off, len) = clamp(data.len() as u64, at, len);
                let s = self.store().snapshot(name).unwrap();
                let got = block_on(s.read(off, len)).unwrap();
                assert!(
                    got == data[off as usize..(off + len) as usize],
                    "read of snapshot {name}"
                );
            }
            Op::Clone { pick, slot } => {
                if self.volumes[slot as usize].is_some() || self.snapshots.is_empty() {
                    return;
                }
                let (snap, data) = self
                    .snapshots
                    .iter()
                    .nth(pick as usize % self.snapshots.len())
                    .unwrap();
                let (snap, data) = (snap.clone(), data.clone());
                let name = self.fresh_name("clone");
                self.store().clone_snapshot(&snap, &name).unwrap();
                self.volumes[slot as usize] = Some(ModelVolume {
                    name,
                    since_flush: vec![data.clone()],
                    data,
                });
            }
            Op::DeleteVolume { slot } => {
                let Some(m) = self.volumes[slot as usize].take() else {
                    return;
                };
                self.store().delete_volume(&m.name).unwrap();
                // A deleted volume's name is free again and its data unreadable.
                assert!(self.store().volume(&m.name).is_err());
            }
            Op::DeleteSnapshot { pick } => {
                let Some(name) = self
                    .snapshots
                    .keys()
                    .nth(pick as usize % self.snapshots.len().max(1))
                    .cloned()
                else {
                    return;
                };
                self.store().delete_snapshot(&name).unwrap();
                self.snapshots.remove(&name);
            }
            Op::Gc => {
                self.store().gc().unwrap();
                // GC checkpoints (so flushes) every volume.
                for m in self.volumes.iter_mut().flatten() {
                    m.flushed();
                }
                self.check_all();
            }
            Op::Reopen => {
                self.store.take().unwrap().close().unwrap();
                self.reopen();
                for m in self.volumes.iter_mut().flatten() {
                    m.flushed();
                }
                self.check_all();
            }
            Op::Crash { cut_at, corrupt } => self.crash(cut_at, corrupt),
        }
    }

    /// Drops the store without flushing, then damages the first unflushed
    /// log region of every volume at a random offset: truncation or a
    /// flipped byte. Checks recovery against the model.
    fn crash(&mut self, cut_at: u16, corrupt: bool) {
        let store = self.store.take().unwrap();
        let handles: Vec<_> = self
            .volumes
            .iter()
            .flatten()
            .map(|m| store.volume(&m.name).unwrap())
            .collect();
        // Stop background checkpoints first, so the unflushed region we
        // read is still unflushed when the store is gone.
        store.abandon();
        let regions: Vec<_> = handles
            .iter()
            .filter_map(|v| v.unflushed_log().into_iter().next())
            .collect();
        drop(handles);
        for (i, (path, from)) in regions.into_iter().enumerate() {
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if len <= from {
                continue;
            }
            let span = len - from;
            let at = from
                + (u64::from(cut_at)
                    .wrapping_mul(31)
                    .wrapping_add(i as u64 * 7919))
                    % span;
            if corrupt {
                let mut bytes = std::fs::read(&path).unwrap();
                bytes[at as usize] ^= 0x5a;
                std::fs::write(&path, bytes).unwrap();
            } else {
                let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.set_len(at).unwrap();
            }
        }
        self.reopen();
        let store = self.store.as_ref().unwrap();
        for m in self.volumes.iter_mut().flatten() {
            let v = store.volume(&m.name).unwrap();
            let got = block_on(v.read(0, v.size_bytes())).unwrap();
            let found = m.since_flush.iter().position(|state| *state == got);
            let Some(idx) = found else {
                panic!(
                    "after crash, volume {} matches no state at or after its last flush ({} candidates)",
                    m.name,
                    m.since_flush.len()
                );
            };
            m.data = m.since_flush[idx].clone();
            m.flushed();
        }
        self.check_all();
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_model(
        ops in proptest::collection::vec(op_strategy(), 1..60),
        blocking_io in any::<bool>(),
        aligned_records in any::<bool>(),
    ) {
        // Both I/O backends (io_uring where the kernel has it, and the
        // blocking fallback) and both record layouts run the same
        // sequences.
        let io = if blocking_io { IoBackendChoice::Blocking } else { IoBackendChoice::Auto };
        let mut h = Harness::new(io, aligned_records);
        // Start with one volume so most sequences do I/O.
        h.apply(&Op::Create { slot: 0, sectors: 300 });
        for op in &ops {
            h.apply(op);
        }
        h.check_all();
        h.apply(&Op::Reopen);
    }
}
