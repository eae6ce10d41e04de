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
