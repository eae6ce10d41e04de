//! How long a group snapshot holds guest I/O: 8 volumes on two cowstored
//! daemons (4 each), under load from a QEMU (TCG) guest writing to all 8
//! disks at once, against the peer run in the same run: a single-volume
//! group on one daemon under the same load.
//!
//!   cargo run --release -p cowstore-benches --bin group-pause [-- ROUNDS]
//!
//! (scripts/bench-group wraps it.) Prints, per configuration, the median and
//! p90 of the pause each daemon measured (gate closed to gate open; the
//! longest of the daemons per group) and of the window the manager saw
//! (pause sent to resume answered), and the ratio of the medians.

#[path = "../../../tests/src/qemu.rs"]
#[allow(dead_code)]
mod qemu;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cowstore::{Store, StoreConfig};
use qemu::{Daemon, Guest, GuestEnv};

const MIB: u64 = 1 << 20;
const VOLUMES_PER_DAEMON: usize = 4;

const GUEST_LOAD: &str = r#"
# Every disk gets a writer: 64 KiB O_DIRECT writes in a loop, with an fsync
# every 16 blocks, until the host powers the guest off.
for d in /sys/block/vd*; do
    dev=/dev/$(basename $d)
    ( while true; do
        dd if=/dev/urandom of=$dev bs=65536 count=16 oflag=direct conv=fsync,notrunc 2>/dev/null
      done ) &
done
echo "COWTEST ready=1"
sleep 100000
"#;

fn median_p90(mut v: Vec<u64>) -> (u64, u64) {
    v.sort_unstable();
    if v.is_empty() {
        return (0, 0);
    }
    (v[v.len() / 2], v[(v.len() * 9 / 10).min(v.len() - 1)])
}

fn build(bin: &str, package: &str) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(qemu::workspace())
        .args(["build", "--release", "--quiet", "-p", package, "--bin", bin])
        .status()
        .with_context(|| format!("building {bin}"))?;
    ensure!(status.success(), "cargo build of {bin} failed");
    Ok(qemu::workspace().join("target/release").join(bin))
}

/// One group snapshot; returns (longest daemon pause, manager window), µs.
fn take_group(cowsnap: &Path, store: &Path, name: &str, members: &[String]) -> Result<(u64, u64)> {
    let out = Command::new(cowsnap)
        .arg("--store")
        .arg(store)
        .args(["--json", "snapshot", "create", "--group", name])
        .args(members)
        .output()?;
    if !out.status.success() {
        bail!("group {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let pauses = doc["pauses"].as_array().cloned().unwrap_or_default();
    let paused = pauses
        .iter()
        .filter_map(|p| p["paused_us"].as_u64())
        .max()
        .unwrap_or(0);
    let window = pauses
        .iter()
        .filter_map(|p| p["window_us"].as_u64())
        .max()
        .unwrap_or(0);
    Ok((paused, window))
}

fn main() -> Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(30);
    let env = GuestEnv::prepare()?;
    let cowstored = build("cowstored", "vhost-blk")?;
    let cowsnap = build("cowsnap", "snapshot-cli")?;
    let root = tempfile::tempdir()?;
    let mut daemons = Vec::new();
    let mut sockets = Vec::new();
    let mut members = Vec::new();
    let mut stores = Vec::new();
    for d in 0..2 {
        let dir = root.path().join(format!("d{d}"));
        std::fs::create_dir_all(&dir)?;
        let store_dir = dir.join("store");
        let store = Store::open_or_create(&store_dir, StoreConfig::default())?;
        let mut args = Vec::new();
        for v in 0..VOLUMES_PER_DAEMON {
            let name = format!("v{d}{v}");
            store.create_volume(&name, 64 * MIB)?;
            let sock = dir.join(format!("{name}.sock"));
            args.push("--attach".to_string());
            args.push(format!("{name}={}", sock.display()));
            sockets.push(sock);
            members.push(format!("{name}:{}", dir.join("control.sock").display()));
        }
        store.close()?;
        daemons.push(Daemon::start(&cowstored, &store_dir, &dir, &args)?);
        stores.push(store_dir);
    }
    let initrd = root.path().join("initrd");
    env.initramfs(&initrd, GUEST_LOAD)?;
    let guest = Guest::start(&env, &initrd, &root.path().join("serial.log"), &sockets)?;
    let deadline = Instant::now() + Duration::from_secs(240);
    while !guest.serial_text().contains("COWTEST ready=1") {
        ensure!(
            Instant::now() < deadline,
            "guest did not start: {}",
            guest.serial_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let the writers get going.
    std::thread::sleep(Duration::from_secs(3));

    let mut results = Vec::new();
    for (label, group_members) in [
        ("1 volume, 1 daemon (peer)", vec![members[0].clone()]),
        ("8 volumes, 2 daemons", members.clone()),
    ] {
        let (mut paused, mut window) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            let name = format!("g{}-{r}", group_members.len());
            let (p, w) = take_group(&cowsnap, &stores[0], &name, &group_members)?;
            paused.push(p);
            window.push(w);
            std::thread::sleep(Duration::from_millis(200));
        }
        results.push((label, median_p90(paused), median_p90(window)));
    }
    drop(guest);
    for d in daemons {
        d.stop()?;
    }
    println!("group snapshot pause under load ({rounds} rounds each; µs)");
    println!(
        "{:<28} {:>12} {:>12} {:>14} {:>14}",
        "configuration", "pause p50", "pause p90", "window p50", "window p90"
    );
    for (label, (p50, p90), (w50, w90)) in &results {
        println!("{label:<28} {p50:>12} {p90:>12} {w50:>14} {w90:>14}");
    }
    let ratio = results[1].1 .0 as f64 / results[0].1 .0.max(1) as f64;
    println!("ratio 8-volume/1-volume median pause: {ratio:.2}");
    println!(
        "aim: 8-volume median pause under 50 ms: {}",
        if results[1].1 .0 < 50_000 {
            "met"
        } else {
            "MISSED"
        }
    );
    Ok(())
}
