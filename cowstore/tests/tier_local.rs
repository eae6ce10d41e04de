//! The object tier suite on the embedded default: a local folder bucket.

mod tier_suite;

use cowstore::TierConfig;
use tier_suite::Bucket;

struct Folder(tempfile::TempDir);

impl Bucket for Folder {
    fn tier(&self) -> TierConfig {
        TierConfig::new(self.0.path().to_string_lossy().into_owned())
    }
}

fn folder() -> Folder {
    Folder(tempfile::tempdir().unwrap())
}

#[test]
fn incremental_snapshots_and_disaster_recovery() {
    tier_suite::incremental_snapshots_and_disaster_recovery(&folder());
}

#[test]
fn leases_and_moving_a_volume() {
    tier_suite::leases_and_moving_a_volume(&folder());
}

#[test]
fn object_gc_keeps_what_anyone_references() {
    tier_suite::object_gc_keeps_what_anyone_references(&folder());
}

#[test]
fn flaky_object_store() {
    tier_suite::flaky_object_store(&folder(), tier_suite::flaky::Flaky::wrap);
}

#[test]
fn local_directory_is_a_cache() {
    tier_suite::local_directory_is_a_cache(&folder());
}

#[test]
fn crash_mid_upload_converges() {
    tier_suite::crash_mid_upload_converges(&folder());
}

#[test]
fn republish_after_the_cleaner_moved_a_snapshot() {
    tier_suite::republish_after_the_cleaner_moved_a_snapshot(&folder());
}

/// A reused segment file may hold stale records after its seal (its
/// earlier life wrote further); what goes to the bucket ends at the seal.
/// Generations alternate 128 and 256 KiB writes so that the layouts, and
/// so the seal offsets, of a file's two lives differ.
#[test]
fn reused_segments_upload_only_up_to_their_seal() {
    use cowstore::{Durability, Store};
    use futures::executor::block_on;

    let bucket = folder();
    let dir = tempfile::tempdir().unwrap();
    let mut tier = bucket.tier();
    tier.durability = Durability::Remote;
    let mut cfg = tier_suite::config(tier);
    cfg.reuse_min_batch_bytes = 0;
    let store = Store::create(dir.path().join("s"), cfg).unwrap();
    let v = store.create_volume("v", 16 << 20).unwrap();
    for generation in 0..4u64 {
        let write = if generation % 2 == 0 {
            128 << 10
        } else {
            256 << 10
        };
        let data = tier_suite::pattern(generation, 4 << 20);
        for at in (0..4 << 20).step_by(write) {
            block_on(v.write(at as u64, &data[at..at + write])).unwrap();
        }
        block_on(v.flush()).unwrap();
        store.gc().unwrap();
    }
    store.create_snapshot("v", "v@1").unwrap();
    let objects = bucket.0.path().join("segments");
    let local = dir.path().join("s").join("segments");
    let mut checked = 0;
    let mut longer_locally = 0;
    for entry in std::fs::read_dir(&objects).unwrap() {
        let entry = entry.unwrap();
        let object = std::fs::read(entry.path()).unwrap();
        let header = cowstore::segment::SegmentHeader::decode(&object).unwrap();
        if header.kind != cowstore::segment::SegmentKind::Log {
            continue; // the cleaner's segments end where their last record does
        }
        assert_eq!(
            cowstore::segment::sealed_len(&object),
            Some(object.len()),
            "{} goes on past its seal",
            entry.path().display()
        );
        checked += 1;
        if let Ok(m) = std::fs::metadata(local.join(entry.file_name())) {
            if m.len() > object.len() as u64 {
                longer_locally += 1;
            }
        }
    }
    assert!(checked > 0, "nothing was uploaded");
    assert!(
        longer_locally > 0,
        "no uploaded segment was a reused file with a stale tail ({checked} checked)"
    );
    // The snapshot restores from the bucket alone.
    drop(v);
    store.close().unwrap();
    let b = tempfile::tempdir().unwrap();
    let other = Store::create(b.path().join("s"), tier_suite::config(bucket.tier())).unwrap();
    let snap = other.restore_snapshot("v@1").unwrap();
    assert_eq!(
        block_on(snap.read(0, 4 << 20)).unwrap(),
        tier_suite::pattern(3, 4 << 20)
    );
}
