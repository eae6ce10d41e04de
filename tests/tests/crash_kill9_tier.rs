//! A store with an object tier (local-folder bucket, background uploads)
//! killed with SIGKILL while it writes, snapshots and uploads. After each
//! kill: the store reopens (the same store is the same lease holder), the
//! bucket converges (`sync_tier`), and every snapshot the reopened store has
//! restores on an empty directory from the bucket alone, byte-identical to
//! what the reopened store reads. (What the store reads is checked against
//! the workload's model by `crash_kill9.rs`.)

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cowstore::{Store, StoreConfig, TierConfig};
use cowstore_e2e::crash;
use futures::executor::block_on;

fn config(bucket: &std::path::Path) -> StoreConfig {
    StoreConfig {
        tier: Some(TierConfig::new(bucket.to_string_lossy().into_owned())),
        ..crash::store_config()
    }
}

#[test]
fn kill9_mid_upload_converges_and_restores() {
    let mut restored_total = 0;
    for round in 0..4u64 {
        let dir = tempfile::tempdir().unwrap();
        let bucket = dir.path().join("bucket");
        let store_dir = dir.path().join("store");
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash-victim"))
            .arg(&store_dir)
            .args(["1", "1"])
            .env("COWSTORE_CRASH_BUCKET", &bucket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start crash-victim");
        // Let it run past a few snapshots (one every 64 ops per volume).
        let stdout = child.stdout.take().expect("stdout");
        let started = Instant::now();
        let budget = Duration::from_millis(700 + 300 * round);
        let mut flushed = 0u64;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("FLUSHED") {
                flushed += 1;
            }
            if started.elapsed() > budget && flushed > 40 {
                break;
            }
        }
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        assert!(
            status.code().is_none(),
            "victim exited by itself ({status}); stderr: {}",
            std::io::read_to_string(child.stderr.take().unwrap()).unwrap_or_default()
        );

        let store = Store::open(&store_dir, config(&bucket)).expect("reopen after kill");
        store.sync_tier().expect("bucket converges");
        let snapshots = store.snapshots();
        let published: Vec<String> = store
            .remote_snapshots()
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        for s in &snapshots {
            assert!(
                published.contains(&s.name),
                "snapshot {} not in the bucket after sync",
                s.name
            );
        }
        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh = Store::create(fresh_dir.path().join("s"), config(&bucket)).unwrap();
        for s in &snapshots {
            let here = store.snapshot(&s.name).unwrap();
            let there = fresh.restore_snapshot(&s.name).unwrap();
            let size = here.size_bytes();
            assert_eq!(there.size_bytes(), size);
            assert!(
                block_on(here.read(0, size)).unwrap() == block_on(there.read(0, size)).unwrap(),
                "snapshot {} restored from the bucket differs",
                s.name
            );
            restored_total += 1;
        }
    }
    assert!(
        restored_total > 0,
        "no snapshot was ever taken: the test proved nothing"
    );
}
