//! QEMU end to end, several exports of one cowstored (see qemu_blk.rs for the
//! setup; `scripts/e2e-qemu-prepare` provides the tools, never skipped).
//!
//! - `two_guests_one_daemon`: two guests at once on two volumes of one
//!   daemon, each writing and verifying its own random pattern; offline each
//!   volume holds exactly its guest's pattern, none of the other's.
//! - `snapshot_export_read_only`: a snapshot exported with
//!   `--attach-snapshot`: the guest reads the snapshot's bytes (not the
//!   volume's newer ones), sees a read-only disk, cannot write it, and the
//!   snapshot is unchanged offline.
//! - `snapshot_barrier_while_writing`: pause / snapshot / resume over the
//!   control socket while a guest writes numbered blocks one by one; the
//!   snapshot holds exactly the prefix the barrier's cut reports, the guest
//!   sees no error, the volume ends with every block.
//!
//! The tests take a lock so that only one of them runs guests at a time (the
//! first one runs two): TCG guests on a small host time out when stacked.

#[path = "../src/qemu.rs"]
#[allow(dead_code)]
mod qemu;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use cowstore::{Store, StoreConfig};
use qemu::{md5, read_snapshot, read_volume, Daemon, Guest, GuestEnv};
use serde_json::json;

const MIB: u64 = 1 << 20;
const GUEST_TIMEOUT: Duration = Duration::from_secs(150);

static SERIAL: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The guest tools and the cowstored binary, prepared and built once per run
/// (`cargo build` may wait for the target directory's lock).
fn setup() -> Result<(GuestEnv, PathBuf)> {
    static ONCE: OnceLock<(GuestEnv, PathBuf)> = OnceLock::new();
    if let Some(v) = ONCE.get() {
        return Ok(v.clone());
    }
    let t = Instant::now();
    let v = (GuestEnv::prepare()?, qemu::cowstored_binary()?);
    eprintln!("guest tools and cowstored ready in {:?}", t.elapsed());
    Ok(ONCE.get_or_init(|| v).clone())
}

fn guest_script(name: &str, vars: &str) -> Result<String> {
    let p = qemu::workspace().join("tests/guest").join(name);
    let body = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(format!("{vars}\n{body}"))
}

fn check(results: &BTreeMap<String, String>, key: &str, want: &str) -> Result<()> {
    let got = results.get(key).map(String::as_str).unwrap_or("<missing>");
    ensure!(
        got == want,
        "guest result {key}: got {got:?}, want {want:?}; all: {results:?}"
    );
    Ok(())
}

fn attach_args(list: &[(&str, &str, &PathBuf)]) -> Vec<String> {
    list.iter()
        .flat_map(|(flag, name, sock)| [flag.to_string(), format!("{name}={}", sock.display())])
        .collect()
}

/// `writes` of export `name` in a `stats` answer.
fn writes(stats: &serde_json::Value, name: &str) -> u64 {
    stats["stats"][name]["writes"].as_u64().unwrap_or(0)
}

#[test]
fn two_guests_one_daemon() -> Result<()> {
    let _serial = one_at_a_time();
    let t0 = Instant::now();
    let (env, bin) = setup()?;
    let dir = tempfile::tempdir()?;
    let store_dir = dir.path().join("store");
    // Different sizes, so a guest on the wrong volume shows it.
    let vols = [("alpha", 24 * MIB), ("beta", 40 * MIB)];
    {
        let store = Store::open_or_create(&store_dir, StoreConfig::default())?;
        for (name, size) in vols {
            store.create_volume(name, size)?;
        }
        store.close()?;
    }
    let socks: Vec<PathBuf> = vols
        .iter()
        .map(|(n, _)| dir.path().join(format!("{n}.sock")))
        .collect();
    let daemon = Daemon::start(
        &bin,
        &store_dir,
        dir.path(),
        &attach_args(&[
            ("--attach", vols[0].0, &socks[0]),
            ("--attach", vols[1].0, &socks[1]),
        ]),
    )?;
    let mut guests = Vec::new();
    for (i, (name, _)) in vols.iter().enumerate() {
        let initrd = dir.path().join(format!("initrd-{name}"));
        env.initramfs(
            &initrd,
            &guest_script("multi_pattern.sh", &format!("VOL={name}"))?,
        )?;
        guests.push(Guest::start_smp(
            &env,
            &initrd,
            &dir.path().join(format!("serial-{name}.log")),
            std::slice::from_ref(&socks[i]),
            1,
        )?);
    }

    // While both run: both frontends connected at once, and the spans in
    // which each volume's write counter moved overlap (the guests wrote
    // concurrently, not one after the other).
    let mut both_connected = false;
    let mut first_write: [Option<Instant>; 2] = [None, None];
    let mut last_change: [Option<Instant>; 2] = [None, None];
    let mut last_writes = [0u64; 2];
    let deadline = Instant::now() + GUEST_TIMEOUT;
    loop {
        let mut running = 0;
        for g in guests.iter_mut() {
            if g.child.try_wait()?.is_none() {
                running += 1;
            }
        }
        if running == 0 || Instant::now() > deadline {
            break;
        }
        let list = daemon.call(json!({"op": "list"}))?;
        let connected = list["exports"]
            .as_array()
            .map(|a| a.iter().filter(|e| e["connected"] == json!(true)).count())
            .unwrap_or(0);
        both_connected |= connected == 2;
        let stats = daemon.call(json!({"op": "stats"}))?;
        for (i, (name, _)) in vols.iter().enumerate() {
            let w = writes(&stats, name);
            if w != last_writes[i] {
                let now = Instant::now();
                first_write[i].get_or_insert(now);
                last_change[i] = Some(now);
                last_writes[i] = w;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut results = Vec::new();
    for g in guests {
        results.push(g.wait(GUEST_TIMEOUT)?);
    }
    for (r, (name, size)) in results.iter().zip(vols) {
        eprintln!("{name}: {r:?}");
        check(r, "exit", "0")?;
        check(r, "serial", name)?;
        check(r, "size", &(size / 512).to_string())?;
        check(r, "fails", "0")?;
        check(r, "io_errors", "0")?;
    }
    ensure!(both_connected, "never saw both frontends connected at once");
    let (f, l) = (first_write, last_change);
    eprintln!("write spans (since start): {:?}", {
        let s = |o: Option<Instant>| o.map(|t| t.duration_since(t0));
        [(s(f[0]), s(l[0])), (s(f[1]), s(l[1]))]
    });
    let (Some(f0), Some(f1), Some(l0), Some(l1)) = (f[0], f[1], l[0], l[1]) else {
        anyhow::bail!("a volume's write counter never moved: {f:?} {l:?}");
    };
    ensure!(
        f0.max(f1) < l0.min(l1),
        "the guests' writes did not overlap in time"
    );
    let stats = daemon.call(json!({"op": "stats"}))?;
    for (name, _) in vols {
        ensure!(stats["stats"][name]["io_errors"] == json!(0), "{stats}");
        ensure!(stats["stats"][name]["rejected"] == json!(0), "{stats}");
        ensure!(stats["stats"][name]["connections"] == json!(1), "{stats}");
    }
    daemon.stop()?;

    // Offline: each volume holds its own guest's pattern at 1 MiB, zeros
    // elsewhere, and not one 4 KiB block of the other guest's pattern.
    let pats: Vec<&String> = results
        .iter()
        .map(|r| r.get("pattern_md5").context("pattern_md5"))
        .collect::<Result<_>>()?;
    ensure!(pats[0] != pats[1], "the two guests wrote the same pattern");
    let store = Store::open(&store_dir, StoreConfig::default())?;
    let mut regions = Vec::new();
    for (i, (name, size)) in vols.iter().enumerate() {
        let vol = store.volume(name)?;
        let all = read_volume(&vol, 0, *size)?;
        let region = &all[MIB as usize..9 * MIB as usize];
        ensure!(
            md5(region)? == *pats[i],
            "{name}: offline pattern differs from its guest's"
        );
        ensure!(
            all[..MIB as usize].iter().all(|&b| b == 0)
                && all[9 * MIB as usize..].iter().all(|&b| b == 0),
            "{name}: bytes outside the pattern are not zero"
        );
        regions.push(region.to_vec());
    }
    store.close()?;
    let blocks_of = |r: &[u8]| -> HashSet<Vec<u8>> { r.chunks(4096).map(<[u8]>::to_vec).collect() };
    let (a, b) = (blocks_of(&regions[0]), blocks_of(&regions[1]));
    ensure!(
        a.len() == 2048 && b.len() == 2048,
        "random patterns with repeated blocks?"
    );
    ensure!(
        a.is_disjoint(&b),
        "a volume holds blocks of the other guest's pattern"
    );
    eprintln!("two_guests_one_daemon: {:?}", t0.elapsed());
    Ok(())
}

/// Deterministic bytes (xorshift) for host-made data.
fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn snapshot_export_read_only() -> Result<()> {
    let _serial = one_at_a_time();
    let t0 = Instant::now();
    let (env, bin) = setup()?;
    let dir = tempfile::tempdir()?;
    let store_dir = dir.path().join("store");
    let size = 16 * MIB;
    let old = pseudo_random(4 * MIB as usize, 0x5eed_0001);
    let new = pseudo_random(4 * MIB as usize, 0x5eed_0002);
    let snap_name = "base@s1";
    {
        // The snapshot holds `old` at 1 MiB; the volume moves on to `new`,
        // so a guest served the volume instead of the snapshot shows it.
        let store = Store::open_or_create(&store_dir, StoreConfig::default())?;
        let vol = store.create_volume("base", size)?;
        futures::executor::block_on(async {
            vol.write(MIB, &old).await?;
            vol.flush().await
        })?;
        store.create_snapshot("base", snap_name)?;
        futures::executor::block_on(async {
            vol.write(MIB, &new).await?;
            vol.flush().await
        })?;
        store.close()?;
    }
    let sock = dir.path().join("snap.sock");
    let daemon = Daemon::start(
        &bin,
        &store_dir,
        dir.path(),
        &attach_args(&[("--attach-snapshot", snap_name, &sock)]),
    )?;
    let list = daemon.call(json!({"op": "list"}))?;
    ensure!(list["exports"][0]["read_only"] == json!(true), "{list}");
    let initrd = dir.path().join("initrd");
    env.initramfs(&initrd, &guest_script("snap_ro.sh", "")?)?;
    let guest = Guest::start(&env, &initrd, &dir.path().join("serial.log"), &[sock])?;
    let r = guest.wait(GUEST_TIMEOUT)?;
    eprintln!("guest results: {r:?}");
    check(&r, "exit", "0")?;
    check(&r, "serial", snap_name)?;
    check(&r, "size", &(size / 512).to_string())?;
    check(&r, "ro", "1")?;
    let old_md5 = md5(&old)?;
    ensure!(old_md5 != md5(&new)?);
    check(&r, "data_md5", &old_md5)?;
    check(&r, "after_md5", &old_md5)?;
    for key in ["write_rc", "write_after_setrw_rc", "discard_rc"] {
        let rc = r.get(key).map(String::as_str).unwrap_or("<missing>");
        ensure!(
            rc != "0" && rc != "<missing>",
            "{key}: a write to the read-only disk succeeded ({rc}); {r:?}"
        );
    }
    let stats = daemon.call(json!({"op": "stats", "name": snap_name}))?;
    let s = &stats["stats"][snap_name];
    ensure!(s["reads"].as_u64().unwrap_or(0) > 0, "{stats}");
    ensure!(s["bytes_written"] == json!(0), "{stats}");
    ensure!(s["writes"] == json!(0), "{stats}");
    ensure!(s["discards"] == json!(0), "{stats}");
    ensure!(s["io_errors"] == json!(0), "{stats}");
    daemon.stop()?;

    let store = Store::open(&store_dir, StoreConfig::default())?;
    let snap = store.snapshot(snap_name)?;
    let all = read_snapshot(&snap, 0, size)?;
    ensure!(
        all[MIB as usize..5 * MIB as usize] == old[..],
        "snapshot data changed"
    );
    ensure!(
        all[..MIB as usize].iter().all(|&b| b == 0)
            && all[5 * MIB as usize..].iter().all(|&b| b == 0),
        "snapshot bytes outside the data are not zero"
    );
    let vol = store.volume("base")?;
    ensure!(
        read_volume(&vol, MIB, 4 * MIB)? == new,
        "the volume's data changed"
    );
    store.close()?;
    eprintln!("snapshot_export_read_only: {:?}", t0.elapsed());
    Ok(())
}

#[test]
fn snapshot_barrier_while_writing() -> Result<()> {
    let _serial = one_at_a_time();
    let t0 = Instant::now();
    let (env, bin) = setup()?;
    let dir = tempfile::tempdir()?;
    let store_dir = dir.path().join("store");
    const N: u64 = 200;
    const PAUSE_AT: u64 = 40;
    let size = 8 * MIB;
    {
        let store = Store::open_or_create(&store_dir, StoreConfig::default())?;
        store.create_volume("seq", size)?;
        store.close()?;
    }
    let sock = dir.path().join("seq.sock");
    let daemon = Daemon::start(
        &bin,
        &store_dir,
        dir.path(),
        &attach_args(&[("--attach", "seq", &sock)]),
    )?;
    let initrd = dir.path().join("initrd");
    env.initramfs(&initrd, &guest_script("barrier_seq.sh", &format!("N={N}"))?)?;
    let mut guest = Guest::start(&env, &initrd, &dir.path().join("serial.log"), &[sock])?;

    // Wait for the guest to be well into its sequence, then the barrier.
    let deadline = Instant::now() + GUEST_TIMEOUT;
    loop {
        let s = daemon.call(json!({"op": "stats", "name": "seq"}))?;
        if writes(&s, "seq") >= PAUSE_AT {
            break;
        }
        ensure!(
            guest.child.try_wait()?.is_none(),
            "guest ended before the barrier; serial:\n{}",
            guest.serial_text()
        );
        ensure!(
            Instant::now() < deadline,
            "guest never reached block {PAUSE_AT}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let p = daemon.call(json!({"op": "pause", "names": ["seq"], "timeout_ms": 20000}))?;
    ensure!(p["ok"] == json!(true), "pause: {p}");
    let barrier = p["barrier"].as_u64().context("barrier id")?;
    let cut_writes = p["cut"][0]["writes"].as_u64().context("cut writes")?;
    ensure!(p["cut"][0]["in_flight"] == json!(0), "pause: {p}");
    // Paused: the guest's next write waits, it is not executed.
    std::thread::sleep(Duration::from_millis(500));
    let s = daemon.call(json!({"op": "stats", "name": "seq"}))?;
    ensure!(
        writes(&s, "seq") == cut_writes,
        "writes executed during the pause: cut {cut_writes}, now {s}"
    );
    let snap = daemon.call(json!({"op": "snapshot", "volume": "seq", "name": "seq@cut"}))?;
    ensure!(snap["ok"] == json!(true), "snapshot: {snap}");
    let res = daemon.call(json!({"op": "resume", "barrier": barrier}))?;
    ensure!(res["ok"] == json!(true), "resume: {res}");

    let r = guest.wait(GUEST_TIMEOUT)?;
    eprintln!("guest results: {r:?}; cut writes {cut_writes}");
    check(&r, "exit", "0")?;
    check(&r, "serial", "seq")?;
    check(&r, "write_fails", "0")?;
    check(&r, "io_errors", "0")?;
    let expected = r.get("expected_md5").context("expected_md5")?;
    check(&r, "readback_md5", expected)?;
    let s = daemon.call(json!({"op": "stats", "name": "seq"}))?;
    ensure!(writes(&s, "seq") == N, "writes after the run: {s}");
    ensure!(s["stats"]["seq"]["io_errors"] == json!(0), "{s}");
    ensure!(s["stats"]["seq"]["rejected"] == json!(0), "{s}");
    daemon.stop()?;

    // Offline: block n of the snapshot is either "SEQ n" or zeros, and the
    // present ones are exactly 1..=k with k the cut's write count.
    let block = |n: u64| {
        let mut b = format!("SEQ {n:06}\n").into_bytes();
        b.resize(4096, 0);
        b
    };
    let store = Store::open(&store_dir, StoreConfig::default())?;
    let snap_data = read_snapshot(&store.snapshot("seq@cut")?, 0, size)?;
    let vol_data = read_volume(&store.volume("seq")?, 0, size)?;
    store.close()?;
    let mut present = Vec::new();
    for n in 1..=N {
        let got = &snap_data[(n * 4096) as usize..((n + 1) * 4096) as usize];
        if got == block(n).as_slice() {
            present.push(n);
        } else {
            ensure!(
                got.iter().all(|&b| b == 0),
                "snapshot block {n} is neither its record nor zeros"
            );
        }
        let v = &vol_data[(n * 4096) as usize..((n + 1) * 4096) as usize];
        ensure!(
            v == block(n).as_slice(),
            "volume block {n} is wrong offline"
        );
    }
    let k = present.len() as u64;
    ensure!(
        present.iter().copied().eq(1..=k),
        "the snapshot is not a prefix of the sequence: {present:?}"
    );
    ensure!(
        k == cut_writes,
        "snapshot holds blocks 1..={k}, the cut reported {cut_writes} writes"
    );
    ensure!(
        (PAUSE_AT..N).contains(&k),
        "the cut ({k}) is not mid-sequence"
    );
    ensure!(
        snap_data[..4096].iter().all(|&b| b == 0)
            && snap_data[((N + 1) * 4096) as usize..]
                .iter()
                .all(|&b| b == 0),
        "snapshot bytes outside the sequence are not zero"
    );
    eprintln!(
        "snapshot_barrier_while_writing: {:?}, cut at {k}",
        t0.elapsed()
    );
    Ok(())
}
