//! Backend restart under a running guest: QEMU (TCG) with a vhost-user-blk
//! disk on cowstored (`reconnect=1`), the guest writing numbered 1 MiB blocks
//! from several writers at once (each block O_DIRECT + fsync), while the test
//! kills cowstored with SIGKILL three times (up to six, until a restart
//! found requests to resubmit), each time aiming at a moment with requests
//! in flight, and starts it again on the same store and socket.
//!
//! Checked: the guest sees no I/O error (no failed dd, nothing in dmesg),
//! reads back every header it wrote; then, with QEMU stopped, the volume
//! read offline through the engine holds every block the guest saw
//! acknowledged, byte for byte, and nothing past them. The restarted
//! daemons' logs say how many in-flight requests they resubmitted (the
//! `VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD` path); at least one must have.

#[path = "../src/qemu.rs"]
#[allow(dead_code)]
mod qemu;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use cowstore::{Store, StoreConfig};
use qemu::{read_volume, Daemon, Guest, GuestEnv};
use serde_json::json;

const MIB: u64 = 1 << 20;
const WRITERS: u64 = 4;
/// Capacity of each writer's region, in 1 MiB blocks.
const BLOCKS: u64 = 64;
/// How long the guest's writers run (guest seconds).
const WRITE_SECONDS: u64 = 30;
/// Kills at least this many times...
const KILLS: usize = 3;
/// ...and more, up to this many, until a restart found requests in flight.
const MAX_KILLS: usize = 6;
const GUEST_TIMEOUT: Duration = Duration::from_secs(170);

fn stat(stats: &serde_json::Value, name: &str, key: &str) -> u64 {
    stats["stats"][name][key].as_u64().unwrap_or(0)
}

/// The block writer `w` writes as its `n`-th (see tests/guest/restart_writers.sh).
fn expected_block(w: u64, n: u64) -> Vec<u8> {
    let line = format!("W{w}\n");
    let mut b: Vec<u8> = line.bytes().cycle().take(MIB as usize).collect();
    b[..4096].fill(0);
    let header = format!("W{w} SEQ {n:06}\n");
    b[..header.len()].copy_from_slice(header.as_bytes());
    b
}

/// `text` without ANSI colour sequences (cowstored's text logs have them).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Sum of `resubmit=N` over the "resubmitting in-flight requests" lines.
fn resubmitted(log: &str) -> u64 {
    strip_ansi(log)
        .lines()
        .filter(|l| l.contains("resubmitting in-flight requests"))
        .filter_map(|l| {
            let at = l.find("resubmit=")? + "resubmit=".len();
            let digits: String = l[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
        .sum()
}

#[test]
fn kill9_restart_while_writing() -> Result<()> {
    let t0 = Instant::now();
    let env = GuestEnv::prepare()?;
    let bin = qemu::cowstored_binary()?;
    eprintln!("guest tools and cowstored ready in {:?}", t0.elapsed());
    let dir = tempfile::tempdir()?;
    let store_dir = dir.path().join("store");
    let size = WRITERS * BLOCKS * MIB;
    {
        let store = Store::open_or_create(&store_dir, StoreConfig::default())?;
        store.create_volume("rst", size)?;
        store.close()?;
    }
    let sock = dir.path().join("rst.sock");
    let args = vec!["--attach".to_string(), format!("rst={}", sock.display())];
    let mut daemon = Daemon::start(&bin, &store_dir, dir.path(), &args)?;
    let script = std::fs::read_to_string(qemu::workspace().join("tests/guest/restart_writers.sh"))
        .context("reading tests/guest/restart_writers.sh")?;
    let initrd = dir.path().join("initrd");
    env.initramfs(
        &initrd,
        &format!("WRITERS={WRITERS}\nBLOCKS={BLOCKS}\nSECONDS_={WRITE_SECONDS}\n{script}"),
    )?;
    let mut guest = Guest::start_opts(
        &env,
        &initrd,
        &dir.path().join("serial.log"),
        std::slice::from_ref(&sock),
        2,
        true,
    )?;

    let deadline = Instant::now() + GUEST_TIMEOUT;
    let mut logs: Vec<PathBuf> = Vec::new();
    let mut aimed_in_flight = 0;
    let mut kill = 0;
    loop {
        // This daemon has served some writes (the guest is writing, and
        // after a restart QEMU has reconnected, resubmitted and the writers
        // resumed).
        loop {
            let s = daemon.call(json!({"op": "stats", "name": "rst"}))?;
            if stat(&s, "rst", "writes") >= 6 {
                break;
            }
            ensure!(
                guest.child.try_wait()?.is_none(),
                "guest ended before kill {kill}; serial:\n{}",
                guest.serial_text()
            );
            ensure!(
                Instant::now() < deadline,
                "no guest writes reached cowstored before kill {kill}; log:\n{}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let so_far: u64 = logs
            .iter()
            .chain(std::iter::once(&daemon.log))
            .map(|p| resubmitted(&std::fs::read_to_string(p).unwrap_or_default()))
            .sum();
        if kill >= MAX_KILLS || (kill >= KILLS && so_far > 0) {
            break;
        }
        // Aim at a moment with requests taken off the ring and not yet
        // completed; after 3 s kill anyway.
        let aim = Instant::now() + Duration::from_secs(3);
        while Instant::now() < aim {
            let s = daemon.call(json!({"op": "stats", "name": "rst"}))?;
            if stat(&s, "rst", "in_flight") > 0 {
                aimed_in_flight += 1;
                break;
            }
        }
        logs.push(daemon.kill9()?);
        let down = Instant::now();
        daemon = Daemon::start(&bin, &store_dir, dir.path(), &args)?;
        eprintln!(
            "kill {kill} at {:?}; restarted in {:?}",
            t0.elapsed(),
            down.elapsed()
        );
        kill += 1;
    }

    let r = guest.wait(GUEST_TIMEOUT)?;
    eprintln!("guest results: {r:?}");
    let get = |k: &str| r.get(k).map(String::as_str).unwrap_or("<missing>");
    ensure!(get("exit") == "0", "guest script failed: {r:?}");
    ensure!(get("serial") == "rst", "wrong disk: {r:?}");
    ensure!(
        get("write_fails") == "0",
        "the guest saw failed writes: {r:?}"
    );
    ensure!(
        get("io_errors") == "0",
        "I/O errors in the guest's dmesg: {r:?}"
    );
    ensure!(
        get("bad_headers") == "0",
        "the guest read back wrong blocks: {r:?}"
    );
    let acked: Vec<u64> = (0..WRITERS)
        .map(|w| get(&format!("acked_{w}")).parse::<u64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("acked counts: {r:?}"))?;
    let s = daemon.call(json!({"op": "stats", "name": "rst"}))?;
    ensure!(
        stat(&s, "rst", "writes") > 0,
        "the guest wrote nothing after the last restart: {s}"
    );
    ensure!(stat(&s, "rst", "io_errors") == 0, "{s}");
    ensure!(stat(&s, "rst", "rejected") == 0, "{s}");
    logs.push(daemon.log.clone());
    daemon.stop()?;

    let resubmits: u64 = logs
        .iter()
        .map(|p| resubmitted(&std::fs::read_to_string(p).unwrap_or_default()))
        .sum();
    eprintln!(
        "acked blocks per writer {acked:?}; {kill} kills, {aimed_in_flight} aimed at requests \
         in flight; {resubmits} requests resubmitted by restarted daemons"
    );
    let inflight_lines: Vec<String> = logs
        .iter()
        .flat_map(|p| {
            strip_ansi(&std::fs::read_to_string(p).unwrap_or_default())
                .lines()
                .filter(|l| l.contains("inflight") || l.contains("in-flight"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    ensure!(
        resubmits > 0,
        "no restart found a request in flight to resubmit ({aimed_in_flight} kills aimed at \
         in-flight requests); inflight log lines: {inflight_lines:#?}"
    );

    // Offline: every acknowledged block is there, exactly; the next block
    // of each writer (never acknowledged, never sent) is still zeros.
    let store = Store::open_or_create(&store_dir, StoreConfig::default())?;
    let vol = store.volume("rst")?;
    for (w, &n_acked) in acked.iter().enumerate() {
        let w = w as u64;
        ensure!(n_acked <= BLOCKS, "writer {w} acked {n_acked} blocks");
        for n in 0..n_acked {
            let at = (w * BLOCKS + n) * MIB;
            let got = read_volume(&vol, at, MIB)?;
            ensure!(
                got == expected_block(w, n),
                "writer {w} block {n} (acknowledged to the guest) is wrong offline: starts {:?}",
                String::from_utf8_lossy(&got[..32])
            );
        }
        if n_acked < BLOCKS {
            let at = (w * BLOCKS + n_acked) * MIB;
            let got = read_volume(&vol, at, 4096)?;
            ensure!(
                got.iter().all(|&b| b == 0),
                "writer {w} block {n_acked} was never acknowledged yet holds data"
            );
        }
    }
    drop(vol);
    store.close()?;
    eprintln!("kill9_restart_while_writing passed in {:?}", t0.elapsed());
    Ok(())
}
