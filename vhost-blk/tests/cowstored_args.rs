//! cowstored refuses bad arguments with a message naming the argument, and
//! touches nothing: no store is created.

use std::process::Command;

fn refused(args: &[&str], names: &str) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let out = Command::new(env!("CARGO_BIN_EXE_cowstored"))
        .arg("--store")
        .arg(&store)
        .arg("--control")
        .arg(dir.path().join("ctl"))
        .args(args)
        .output()
        .expect("cowstored runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} was accepted");
    assert!(
        stderr.contains(names),
        "{args:?}: stderr does not name {names:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(!store.exists(), "{args:?} created the store");
}

#[test]
fn bad_arguments_are_refused_by_name() {
    refused(
        &["--checkpoint-interval-bytes", "4096"],
        "--checkpoint-interval-bytes",
    );
    refused(
        &["--checkpoint-interval-bytes", "lots"],
        "--checkpoint-interval-bytes",
    );
    refused(&["--queues", "-1"], "--queues");
    refused(&["--log-writers", "99"], "--log-writers");
    refused(&["--poll-after-write-us", "5000"], "--poll-after-write-us");
    refused(&["--io", "carrier-pigeon"], "--io");
    refused(&["--gc-pool-low-percent", "101"], "--gc-pool-low-percent");
    refused(&["--attach", "no-socket-given"], "NAME=SOCKET");
    refused(&["--frobnicate"], "unknown argument");
    refused(&["--segment-pool-bytes"], "needs a value");
}
