//! The object tier suite, run against every backend: the local-folder
//! default (`tier_local.rs`) and a real S3 server (`tier_s3.rs`).
#![allow(dead_code)]

pub mod flaky;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cowstore::{Durability, Error, IoBackendChoice, Store, StoreConfig, TierConfig};
use futures::executor::block_on;

pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A bucket for one test: where it lives and how to build tier configs.
pub trait Bucket {
    fn tier(&self) -> TierConfig;
}

pub fn config(tier: TierConfig) -> StoreConfig {
    StoreConfig {
        segment_bytes: 1 << 20,
        io_backend: IoBackendChoice::Auto,
        checkpoint_interval_bytes: 1 << 40,
        gc_live_threshold_pct: 50,
        tier: Some(tier),
        ..Default::default()
    }
}

fn remote(mut t: TierConfig) -> TierConfig {
    t.durability = Durability::Remote;
    t
}

/// Incremental snapshots upload what changed, not the volume; a snapshot
/// restores on a machine that has nothing but the bucket, byte-identical,
/// lazily; hydrate fetches the rest.
pub fn incremental_snapshots_and_disaster_recovery(bucket: &dyn Bucket) {
    let a = tempfile::tempdir().unwrap();
    let store = Store::create(a.path().join("s"), config(remote(bucket.tier()))).unwrap();
    let v = store.create_volume("db", 256 << 20).unwrap();
    let base = pattern(1, 8 << 20);
    block_on(v.write(0, &base)).unwrap();
    store.create_snapshot("db", "db@1").unwrap();
    let up1 = store.tier_stats().unwrap().bytes_uploaded;
    assert!(up1 >= 8 << 20, "{up1}");
    // Write 1 MiB more and snapshot: only about 1 MiB more goes up.
    let delta = pattern(2, 1 << 20);
    block_on(v.write(100 << 20, &delta)).unwrap();
    let m = store.create_snapshot("db", "db@2").unwrap();
    let up2 = store.tier_stats().unwrap().bytes_uploaded - up1;
    let metadata = 64 << 10; // checkpoints and manifests of a small map
    assert!(
        up2 <= (1 << 20) * 11 / 10 + metadata,
        "second snapshot uploaded {up2} bytes"
    );
    let manifests = store.remote_snapshots().unwrap();
    let m2 = manifests.iter().find(|x| x.name == "db@2").unwrap();
    assert!(m2.added_bytes <= (1 << 20) * 11 / 10 + metadata, "{m2:?}");
    assert!(m2.added_bytes >= 1 << 20);
    let _ = m;
    drop(v);
    store.close().unwrap();
    drop(a); // the whole local directory is gone

    // A new machine: only the bucket.
    let b = tempfile::tempdir().unwrap();
    let store = Store::create(b.path().join("s"), config(bucket.tier())).unwrap();
    let t = std::time::Instant::now();
    let snap = store.restore_snapshot("db@2").unwrap();
    let first = block_on(snap.read(100 << 20, 4096)).unwrap();
    let to_first_read = t.elapsed();
    assert_eq!(first, delta[..4096]);
    assert!(
        to_first_read < std::time::Duration::from_secs(5),
        "{to_first_read:?}"
    );
    // Lazily fetched: far less than the volume came down for that read.
    assert!(store.tier_stats().unwrap().bytes_fetched < 4 << 20);
    assert_eq!(block_on(snap.read(0, 8 << 20)).unwrap(), base);
    assert_eq!(block_on(snap.read(100 << 20, 1 << 20)).unwrap(), delta);
    assert_eq!(
        block_on(snap.read(50 << 20, 1 << 20)).unwrap(),
        vec![0; 1 << 20]
    );
    let old = store.restore_snapshot("db@1").unwrap();
    assert_eq!(block_on(old.read(100 << 20, 4096)).unwrap(), vec![0; 4096]);
    // A writable clone of the restored snapshot.
    let c = store.clone_snapshot("db@2", "db-restored").unwrap();
    block_on(c.write(0, &[9; 4096])).unwrap();
    block_on(c.flush()).unwrap();
    assert_eq!(block_on(c.read(4096, 4096)).unwrap(), base[4096..8192]);
    // Hydrate: everything local, then reads fetch nothing more.
    store.hydrate("db@2").unwrap();
    let fetched = store.tier_stats().unwrap().bytes_fetched;
    assert_eq!(block_on(snap.read(0, 8 << 20)).unwrap(), base);
    assert_eq!(store.tier_stats().unwrap().bytes_fetched, fetched);
}

/// One writer per volume; a release on A and an adopt on B move a volume
/// without losing a byte; a stale lease is taken over explicitly.
pub fn leases_and_moving_a_volume(bucket: &dyn Bucket) {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let host_a = Store::create(a.path().join("s"), config(bucket.tier())).unwrap();
    let host_b = Store::create(b.path().join("s"), config(bucket.tier())).unwrap();
    let v = host_a.create_volume("web", 32 << 20).unwrap();
    let data = pattern(3, 3 << 20);
    block_on(v.write(4096, &data)).unwrap();
    block_on(v.flush()).unwrap();
    // B cannot take the same volume for writing, and is told who has it.
    match host_b.create_volume("web", 32 << 20) {
        Err(Error::LeaseHeld { volume, holder }) => {
            assert_eq!(volume, "web");
            assert!(holder.contains("store"), "{holder}");
        }
        other => panic!("expected LeaseHeld, got {other:?}"),
    }
    assert!(matches!(
        host_b.adopt_volume("web"),
        Err(Error::VolumeNotFound(_)) | Err(Error::LeaseHeld { .. })
    ));
    // Move it: release on A, adopt on B.
    drop(v);
    host_a.release_volume("web").unwrap();
    assert!(host_a.volume("web").is_err());
    let w = host_b.adopt_volume("web").unwrap();
    assert_eq!(block_on(w.read(4096, 3 << 20)).unwrap(), data);
    block_on(w.write(0, &[7; 4096])).unwrap();
    block_on(w.flush()).unwrap();
    host_b.publish_volume("web").unwrap();
    // A is now the second writer and is refused; after B "dies", A takes
    // the lease over explicitly and adopts B's last published head.
    assert!(matches!(
        host_a.adopt_volume("web"),
        Err(Error::LeaseHeld { .. })
    ));
    drop(w);
    host_b.abandon();
    host_a.take_over_lease("web").unwrap();
    let back = host_a.adopt_volume("web").unwrap();
    assert_eq!(block_on(back.read(0, 4096)).unwrap(), vec![7; 4096]);
    assert_eq!(block_on(back.read(4096, 3 << 20)).unwrap(), data);
}

/// Object GC deletes only what nothing references, with two stores on one
/// bucket; what remains restores byte-identical.
pub fn object_gc_keeps_what_anyone_references(bucket: &dyn Bucket) {
    let mut tier = remote(bucket.tier());
    tier.gc_grace_s = 0;
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let host_a = Store::create(a.path().join("s"), config(tier.clone())).unwrap();
    let host_b = Store::create(b.path().join("s"), config(tier.clone())).unwrap();
    let va = host_a.create_volume("a", 16 << 20).unwrap();
    let vb = host_b.create_volume("b", 16 << 20).unwrap();
    for round in 0..3u64 {
        block_on(va.write(0, &pattern(10 + round, 2 << 20))).unwrap();
        block_on(vb.write(0, &pattern(20 + round, 2 << 20))).unwrap();
        host_a.create_snapshot("a", &format!("a@{round}")).unwrap();
        host_b.create_snapshot("b", &format!("b@{round}")).unwrap();
    }
    host_a.delete_snapshot("a@0").unwrap();
    host_a.delete_snapshot("a@1").unwrap();
    host_a.gc().unwrap();
    let r = host_b.gc_objects().unwrap();
    assert!(r.objects_deleted > 0, "{r:?}");
    let r2 = host_a.gc_objects().unwrap();
    let _ = r2;
    // Everything still published restores from the bucket alone.
    let c = tempfile::tempdir().unwrap();
    let fresh = Store::create(c.path().join("s"), config(tier)).unwrap();
    let a2 = fresh.restore_snapshot("a@2").unwrap();
    assert_eq!(block_on(a2.read(0, 2 << 20)).unwrap(), pattern(12, 2 << 20));
    for round in 0..3u64 {
        let s = fresh.restore_snapshot(&format!("b@{round}")).unwrap();
        assert_eq!(
            block_on(s.read(0, 2 << 20)).unwrap(),
            pattern(20 + round, 2 << 20)
        );
    }
    assert!(fresh.restore_snapshot("a@0").is_err());
}

/// A publish cut off after the snapshot's checkpoint object went up, then
/// the cleaner moves the snapshot's extents, then the publish is retried:
/// the manifest and the checkpoint object it names must agree, so a host
/// with nothing but the bucket restores the snapshot. (Found by
/// `crash_kill9_tier`: a create-only put kept the old map under the one
/// name, next to a segment list made from the new one.)
pub fn republish_after_the_cleaner_moved_a_snapshot(bucket: &dyn Bucket) {
    let mut tier = bucket.tier();
    tier.wrap = Some(flaky::Flaky::refusing_snapshot_manifests);
    flaky::REFUSE_SNAPSHOT_MANIFESTS.store(true, Ordering::Relaxed);
    let a = tempfile::tempdir().unwrap();
    let store = Store::create(a.path().join("s"), config(tier)).unwrap();
    let v = store.create_volume("moved", 16 << 20).unwrap();
    // The first 1 MiB segment: a little live data, much overwritten.
    block_on(v.write(0, &pattern(70, 64 << 10))).unwrap();
    block_on(v.write(8 << 20, &pattern(71, 768 << 10))).unwrap();
    block_on(v.write(8 << 20, &pattern(72, 768 << 10))).unwrap();
    block_on(v.flush()).unwrap();
    store.create_snapshot("moved", "moved@0").unwrap();
    let refused = store.publish_snapshot("moved@0");
    assert!(refused.is_err(), "the manifest put was not refused");
    let gc = store.gc().unwrap();
    assert!(gc.bytes_relocated > 0, "the cleaner moved nothing: {gc:?}");
    flaky::REFUSE_SNAPSHOT_MANIFESTS.store(false, Ordering::Relaxed);
    store.sync_tier().unwrap();
    let b = tempfile::tempdir().unwrap();
    let fresh = Store::create(b.path().join("s"), config(bucket.tier())).unwrap();
    let s = fresh.restore_snapshot("moved@0").unwrap();
    assert_eq!(
        block_on(s.read(0, 64 << 10)).unwrap(),
        pattern(70, 64 << 10)
    );
    assert_eq!(
        block_on(s.read(8 << 20, 768 << 10)).unwrap(),
        pattern(72, 768 << 10)
    );
}

/// Counters for the fault-injecting wrapper.
pub static INJECTED: AtomicU64 = AtomicU64::new(0);

/// Uploads survive a flaky store (errors and latency on every call):
/// nothing flushed is lost, nothing corrupt is read.
pub fn flaky_object_store(
    bucket: &dyn Bucket,
    wrap: fn(Arc<dyn object_store::ObjectStore>) -> Arc<dyn object_store::ObjectStore>,
) {
    let mut tier = remote(bucket.tier());
    tier.wrap = Some(wrap);
    let a = tempfile::tempdir().unwrap();
    let store = Store::create(a.path().join("s"), config(tier)).unwrap();
    let v = store.create_volume("flaky", 16 << 20).unwrap();
    let before = INJECTED.load(Ordering::Relaxed);
    for i in 0..4u64 {
        block_on(v.write(i << 20, &pattern(30 + i, 1 << 20))).unwrap();
        store
            .create_snapshot("flaky", &format!("flaky@{i}"))
            .unwrap();
    }
    assert!(
        INJECTED.load(Ordering::Relaxed) > before,
        "no fault was injected"
    );
    assert!(store.tier_stats().unwrap().upload_retries > 0);
    // Listing and deleting go through the faults too (object GC).
    store.delete_snapshot("flaky@0").unwrap();
    store.gc().unwrap();
    store.gc_objects().unwrap();
    assert_eq!(store.remote_snapshots().unwrap().len(), 3);
    drop(v);
    store.close().unwrap();
    let b = tempfile::tempdir().unwrap();
    let fresh = Store::create(b.path().join("s"), config(bucket.tier())).unwrap();
    let s = fresh.restore_snapshot("flaky@3").unwrap();
    for i in 0..4u64 {
        assert_eq!(
            block_on(s.read(i << 20, 1 << 20)).unwrap(),
            pattern(30 + i, 1 << 20)
        );
    }
}

/// With uploaded segments evicted, the local directory holds only the log
/// tail; reads go through the bounded cache (sequential ones prefetch), and
/// a restart still recovers everything.
pub fn local_directory_is_a_cache(bucket: &dyn Bucket) {
    let mut tier = remote(bucket.tier());
    tier.cache_bytes = 4 << 20;
    let a = tempfile::tempdir().unwrap();
    let store = Store::create(a.path().join("s"), config(tier.clone())).unwrap();
    let v = store.create_volume("cold", 64 << 20).unwrap();
    let data = pattern(40, 16 << 20);
    block_on(v.write(0, &data)).unwrap();
    store.create_snapshot("cold", "cold@1").unwrap();
    let before = store.disk_bytes();
    let evicted = store.evict_uploaded().unwrap();
    assert!(evicted >= 10, "{evicted}");
    assert!(
        store.disk_bytes() < before / 4,
        "{} of {before} bytes still local",
        store.disk_bytes()
    );
    // Sequential read of all 16 MiB through a 4 MiB cache.
    for mib in 0..16u64 {
        let got = block_on(v.read(mib << 20, 1 << 20)).unwrap();
        assert!(
            got == data[(mib << 20) as usize..((mib + 1) << 20) as usize],
            "MiB {mib}"
        );
    }
    let st = store.tier_stats().unwrap();
    assert!(st.cache_used_bytes <= 4 << 20, "{st:?}");
    assert!(
        st.cache_hits > 0,
        "sequential reads were not prefetched: {st:?}"
    );
    block_on(v.write(8 << 20, &[5; 4096])).unwrap();
    block_on(v.flush()).unwrap();
    drop(v);
    store.abandon();
    let store = Store::open(a.path().join("s"), config(tier)).unwrap();
    let v = store.volume("cold").unwrap();
    assert_eq!(block_on(v.read(8 << 20, 4096)).unwrap(), vec![5; 4096]);
    assert_eq!(block_on(v.read(0, 4 << 20)).unwrap(), data[..4 << 20]);
}

/// The store dropped (as by a crash) while background uploads run: the next
/// open resumes them, and the bucket converges to everything sealed and
/// every snapshot taken, restorable elsewhere.
pub fn crash_mid_upload_converges(bucket: &dyn Bucket) {
    let mut tier = bucket.tier(); // local durability: uploads in the background
    tier.gc_grace_s = 0;
    let a = tempfile::tempdir().unwrap();
    let store = Store::create(a.path().join("s"), config(tier.clone())).unwrap();
    let v = store.create_volume("busy", 64 << 20).unwrap();
    for i in 0..6u64 {
        block_on(v.write(i << 20, &pattern(50 + i, 1 << 20))).unwrap();
        store.create_snapshot("busy", &format!("busy@{i}")).unwrap();
    }
    block_on(v.flush()).unwrap();
    drop(v);
    store.abandon(); // uploads and publishes cut off wherever they were
    let store = Store::open(a.path().join("s"), config(tier.clone())).unwrap();
    store.sync_tier().unwrap();
    let published = store.remote_snapshots().unwrap();
    assert_eq!(
        published.len(),
        6,
        "{:?}",
        published.iter().map(|m| &m.name).collect::<Vec<_>>()
    );
    let b = tempfile::tempdir().unwrap();
    let fresh = Store::create(b.path().join("s"), config(tier)).unwrap();
    for i in 0..6u64 {
        let s = fresh.restore_snapshot(&format!("busy@{i}")).unwrap();
        for j in 0..=i {
            assert_eq!(
                block_on(s.read(j << 20, 1 << 20)).unwrap(),
                pattern(50 + j, 1 << 20),
                "busy@{i} MiB {j}"
            );
        }
    }
    drop(fresh);
    // Converged means no leak either: once everything is deleted, object
    // GC leaves no segment or checkpoint object behind.
    for i in 0..6u64 {
        store.delete_snapshot(&format!("busy@{i}")).unwrap();
    }
    store.delete_volume("busy").unwrap();
    store.gc().unwrap();
    let first = store.gc_objects().unwrap();
    assert!(first.objects_deleted > 0, "{first:?}");
    let second = store.gc_objects().unwrap();
    assert_eq!(second.objects_examined, 0, "objects leaked: {second:?}");
}
