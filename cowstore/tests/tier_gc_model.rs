//! Property test: object GC interleaved with writes, snapshots, clones,
//! snapshot deletes, local GC, eviction and restarts, on two stores sharing
//! one bucket (the local-folder default, grace period 0: the harshest
//! setting). No readable byte is ever lost: every volume and clone reads
//! its model, and every snapshot still published restores byte-identical on
//! a third, empty store.
//!
//! `TIER_GC_CASES` sets the number of cases (default 24).

use std::collections::BTreeMap;

use cowstore::{Durability, IoBackendChoice, Store, StoreConfig, TierConfig};
use futures::executor::block_on;
use proptest::prelude::*;

const VOLUME_BYTES: u64 = 1 << 20;
const BLOCK: u64 = 16 << 10;

#[derive(Clone, Debug)]
enum Op {
    Write { host: usize, block: u8, seed: u8 },
    Snapshot { host: usize },
    DeleteSnapshot { host: usize, pick: u8 },
    Clone { host: usize, pick: u8 },
    EngineGc { host: usize },
    ObjectGc { host: usize },
    Evict { host: usize },
    Reopen { host: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let host = 0..2usize;
    prop_oneof![
        8 => (host.clone(), any::<u8>(), any::<u8>()).prop_map(|(host, block, seed)| Op::Write { host, block, seed }),
        4 => host.clone().prop_map(|host| Op::Snapshot { host }),
        3 => (host.clone(), any::<u8>()).prop_map(|(host, pick)| Op::DeleteSnapshot { host, pick }),
        1 => (host.clone(), any::<u8>()).prop_map(|(host, pick)| Op::Clone { host, pick }),
        2 => host.clone().prop_map(|host| Op::EngineGc { host }),
        3 => host.clone().prop_map(|host| Op::ObjectGc { host }),
        2 => host.clone().prop_map(|host| Op::Evict { host }),
        1 => host.prop_map(|host| Op::Reopen { host }),
    ]
}

fn block_data(seed: u8) -> Vec<u8> {
    (0..BLOCK as usize)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

struct Host {
    dir: tempfile::TempDir,
    store: Option<Store>,
    volume: Vec<u8>,
    snapshots: BTreeMap<String, Vec<u8>>,
    clones: BTreeMap<String, Vec<u8>>,
}

fn config(bucket: &std::path::Path) -> StoreConfig {
    let mut tier = TierConfig::new(bucket.to_string_lossy().into_owned());
    tier.durability = Durability::Remote;
    tier.gc_grace_s = 0;
    StoreConfig {
        segment_bytes: 128 << 10,
        io_backend: IoBackendChoice::Auto,
        checkpoint_interval_bytes: 1 << 40,
        gc_live_threshold_pct: 60,
        tier: Some(tier),
        ..Default::default()
    }
}

fn run(ops: &[Op]) {
    let bucket = tempfile::tempdir().unwrap();
    let mut hosts: Vec<Host> = (0..2)
        .map(|i| {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::create(dir.path().join("s"), config(bucket.path())).unwrap();
            store
                .create_volume(&format!("vol{i}"), VOLUME_BYTES)
                .unwrap();
            Host {
                dir,
                store: Some(store),
                volume: vec![0; VOLUME_BYTES as usize],
                snapshots: BTreeMap::new(),
                clones: BTreeMap::new(),
            }
        })
        .collect();
    let mut names = 0u32;
    for op in ops {
        match op.clone() {
            Op::Write { host, block, seed } => {
                let h = &mut hosts[host];
                let at = u64::from(block) % (VOLUME_BYTES / BLOCK) * BLOCK;
                let data = block_data(seed);
                let v = h
                    .store
                    .as_ref()
                    .unwrap()
                    .volume(&format!("vol{host}"))
                    .unwrap();
                block_on(v.write(at, &data)).unwrap();
                h.volume[at as usize..(at + BLOCK) as usize].copy_from_slice(&data);
            }
            Op::Snapshot { host } => {
                names += 1;
                let name = format!("vol{host}@{names}");
                let h = &mut hosts[host];
                h.store
                    .as_ref()
                    .unwrap()
                    .create_snapshot(&format!("vol{host}"), &name)
                    .unwrap();
                h.snapshots.insert(name, h.volume.clone());
            }
            Op::DeleteSnapshot { host, pick } => {
                let h = &mut hosts[host];
                let Some(name) = h
                    .snapshots
                    .keys()
                    .nth(usize::from(pick) % h.snapshots.len().max(1))
                    .cloned()
                else {
                    continue;
                };
                h.store.as_ref().unwrap().delete_snapshot(&name).unwrap();
                h.snapshots.remove(&name);
            }
            Op::Clone { host, pick } => {
                let h = &mut hosts[host];
                let Some((snap, data)) = h
                    .snapshots
                    .iter()
                    .nth(usize::from(pick) % h.snapshots.len().max(1))
                else {
                    continue;
                };
                names += 1;
                let name = format!("clone{host}-{names}");
                let store = h.store.as_ref().unwrap();
                store.clone_snapshot(snap, &name).unwrap();
                store.publish_volume(&name).unwrap();
                let data = data.clone();
                h.clones.insert(name, data);
            }
            Op::EngineGc { host } => {
                hosts[host].store.as_ref().unwrap().gc().unwrap();
            }
            Op::ObjectGc { host } => {
                hosts[host].store.as_ref().unwrap().gc_objects().unwrap();
                check(&hosts, bucket.path());
            }
            Op::Evict { host } => {
                hosts[host]
                    .store
                    .as_ref()
                    .unwrap()
                    .evict_uploaded()
                    .unwrap();
            }
            Op::Reopen { host } => {
                let h = &mut hosts[host];
                h.store.take().unwrap().close().unwrap();
                h.store = Some(Store::open(h.dir.path().join("s"), config(bucket.path())).unwrap());
            }
        }
    }
    for h in &hosts {
        h.store.as_ref().unwrap().gc_objects().unwrap();
    }
    check(&hosts, bucket.path());
}

/// Every volume and clone reads its model on its host; every snapshot
/// restores from the bucket alone on a fresh store.
fn check(hosts: &[Host], bucket: &std::path::Path) {
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = Store::create(fresh_dir.path().join("s"), config(bucket)).unwrap();
    for (i, h) in hosts.iter().enumerate() {
        let store = h.store.as_ref().unwrap();
        let v = store.volume(&format!("vol{i}")).unwrap();
        assert!(
            block_on(v.read(0, VOLUME_BYTES)).unwrap() == h.volume,
            "vol{i}"
        );
        for (name, data) in &h.clones {
            let c = store.volume(name).unwrap();
            assert!(
                block_on(c.read(0, VOLUME_BYTES)).unwrap() == *data,
                "{name}"
            );
        }
        for (name, data) in &h.snapshots {
            let s = fresh.restore_snapshot(name).unwrap();
            assert!(
                block_on(s.read(0, VOLUME_BYTES)).unwrap() == *data,
                "restored {name}"
            );
        }
    }
}

fn cases() -> u32 {
    std::env::var("TIER_GC_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn object_gc_never_loses_a_readable_byte(ops in proptest::collection::vec(op(), 1..40)) {
        run(&ops);
    }
}
