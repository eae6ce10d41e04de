//! The object tier suite against a real S3-protocol server (moto, with
//! SigV4 checking) on loopback. `scripts/test` starts the server and sets
//! the environment; run by hand with
//! `scripts/s3-server start DIR && . DIR/env && cargo test -p cowstore --test tier_s3`.

mod tier_suite;

use cowstore::TierConfig;
use tier_suite::Bucket;

/// A fresh prefix in the test bucket for each test.
struct S3Prefix(String);

impl Bucket for S3Prefix {
    fn tier(&self) -> TierConfig {
        TierConfig::new(self.0.clone())
    }
}

fn bucket(test: &str) -> S3Prefix {
    let base = std::env::var("COWSTORE_TEST_S3_URL").unwrap_or_else(|_| {
        panic!(
            "COWSTORE_TEST_S3_URL is not set: the S3 suite needs a server. \
             Run scripts/test, which starts one, or scripts/s3-server start DIR and source DIR/env"
        )
    });
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    S3Prefix(format!("{}/{test}-{nonce:x}", base.trim_end_matches('/')))
}

#[test]
fn incremental_snapshots_and_disaster_recovery() {
    tier_suite::incremental_snapshots_and_disaster_recovery(&bucket("dr"));
}

#[test]
fn leases_and_moving_a_volume() {
    tier_suite::leases_and_moving_a_volume(&bucket("lease"));
}

#[test]
fn object_gc_keeps_what_anyone_references() {
    tier_suite::object_gc_keeps_what_anyone_references(&bucket("gc"));
}

#[test]
fn flaky_object_store() {
    tier_suite::flaky_object_store(&bucket("flaky"), tier_suite::flaky::Flaky::wrap);
}

/// Create-only puts really are exclusive on this server: 16 racing stores
/// creating the same volume name, exactly one gets the lease.
#[test]
fn lease_race_has_one_winner() {
    let b = bucket("race");
    let dirs: Vec<_> = (0..16).map(|_| tempfile::tempdir().unwrap()).collect();
    let stores: Vec<_> = dirs
        .iter()
        .map(|d| cowstore::Store::create(d.path().join("s"), tier_suite::config(b.tier())).unwrap())
        .collect();
    let winners = std::thread::scope(|scope| {
        let handles: Vec<_> = stores
            .iter()
            .map(|s| scope.spawn(move || s.create_volume("contested", 1 << 20).is_ok()))
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok())
            .filter(|won| *won)
            .count()
    });
    assert_eq!(winners, 1);
}

#[test]
fn local_directory_is_a_cache() {
    tier_suite::local_directory_is_a_cache(&bucket("cache"));
}

#[test]
fn crash_mid_upload_converges() {
    tier_suite::crash_mid_upload_converges(&bucket("crash"));
}

#[test]
fn republish_after_the_cleaner_moved_a_snapshot() {
    tier_suite::republish_after_the_cleaner_moved_a_snapshot(&bucket("moved"));
}
