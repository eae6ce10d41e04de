//! Multi-VM crash-consistent group snapshots, end to end: a QEMU (TCG) guest
//! whose two disks are served by two different cowstored daemons (two
//! stores), and the real `cowsnap` as the snapshot manager.
//!
//! - `group_snapshots_are_crash_consistent_across_daemons`: the guest writes
//!   numbered records alternately (record n to disk A, flush, record n to
//!   disk B, flush) while the test takes group snapshots at random moments.
//!   Every group snapshot, restored (`cowsnap restore`) and read offline,
//!   holds a prefix of records on each disk, and B's last record is A's or
//!   the one before: never a hole, never B ahead.
//! - `group_faults_never_freeze_or_lose`: while the guest writes to disk A,
//!   the manager is killed after prepare (daemons resume by themselves at
//!   the timeout), a volume is detached mid-barrier, and daemon B is killed
//!   during prepare. Each group either completes or aborts leaving no member
//!   snapshot; the guest never sees an I/O error and every record it wrote
//!   is on disk A afterwards.
//!
//! Tools come from `scripts/e2e-qemu-prepare` (never skipped).

#[path = "../src/qemu.rs"]
#[allow(dead_code)]
mod qemu;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cowstore::{Store, StoreConfig};
use qemu::{Daemon, Guest, GuestEnv};
use serde_json::json;

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4096;
const GUEST_TIMEOUT: Duration = Duration::from_secs(240);

static SERIAL: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Guest tools, cowstored and cowsnap, prepared and built once per run.
fn setup() -> Result<(GuestEnv, PathBuf, PathBuf)> {
    static ONCE: OnceLock<(GuestEnv, PathBuf, PathBuf)> = OnceLock::new();
    if let Some(v) = ONCE.get() {
        return Ok(v.clone());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(qemu::workspace())
        .args(["build", "--quiet", "-p", "snapshot-cli", "--bin", "cowsnap"])
        .status()
        .context("building cowsnap")?;
    ensure!(status.success(), "cargo build of cowsnap failed");
    let cowstored = qemu::cowstored_binary()?;
    let cowsnap = cowstored.with_file_name("cowsnap");
    let v = (GuestEnv::prepare()?, cowstored, cowsnap);
    Ok(ONCE.get_or_init(|| v).clone())
}

fn guest_script(name: &str, vars: &str) -> Result<String> {
    let p = qemu::workspace().join("tests/guest").join(name);
    let body = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(format!("{vars}\n{body}"))
}

/// A store with one volume, served by its own cowstored.
struct Side {
    dir: PathBuf,
    store: PathBuf,
    sock: PathBuf,
    volume: &'static str,
}

impl Side {
    fn new(root: &Path, name: &str, volume: &'static str, size: u64) -> Result<Side> {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        let store = dir.join("store");
        let s = Store::open_or_create(&store, StoreConfig::default())?;
        s.create_volume(volume, size)?;
        s.close()?;
        Ok(Side {
            sock: dir.join(format!("{volume}.sock")),
            dir,
            store,
            volume,
        })
    }

    fn start(&self, bin: &Path) -> Result<Daemon> {
        Daemon::start(
            bin,
            &self.store,
            &self.dir,
            &[
                "--attach".into(),
                format!("{}={}", self.volume, self.sock.display()),
            ],
        )
    }

    fn control(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    fn member(&self) -> String {
        format!("{}:{}", self.volume, self.control().display())
    }
}

/// Runs cowsnap on `store`; returns (exit code, stdout, stderr).
fn cowsnap(
    bin: &Path,
    store: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> Result<(i32, String, String)> {
    let out = Command::new(bin)
        .arg("--store")
        .arg(store)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .context("running cowsnap")?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The records 1..=n of a volume image: the length of the prefix of
/// well-formed records, and whether any record follows a gap (a hole).
fn record_prefix(image: &[u8], n: u64) -> (u64, bool) {
    let mut prefix = 0;
    let mut hole = false;
    for i in 1..=n {
        let at = (i * BLOCK) as usize;
        let want = format!("REC {i:06}\n");
        let ok = image.get(at..at + want.len()) == Some(want.as_bytes());
        if ok && prefix == i - 1 {
            prefix = i;
        } else if ok {
            hole = true;
        }
    }
    (prefix, hole)
}

fn read_all(store: &Path, volume: &str) -> Result<Vec<u8>> {
    let s = Store::open(store, StoreConfig::default())?;
    let v = s.volume(volume)?;
    let img = qemu::read_volume(&v, 0, v.size_bytes())?;
    drop(v);
    s.close()?;
    Ok(img)
}

fn wait_serial(guest: &Guest, needle: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !guest.serial_text().contains(needle) {
        if Instant::now() > deadline {
            bail!(
                "guest never printed {needle:?}; serial:\n{}",
                guest.serial_text()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// xorshift: reproducible "random" moments.
fn next_rand(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[test]
fn group_snapshots_are_crash_consistent_across_daemons() -> Result<()> {
    let _serial = one_at_a_time();
    let (env, cowstored, cowsnap_bin) = setup()?;
    let root = tempfile::tempdir()?;
    const N: u64 = 600;
    let a = Side::new(root.path(), "A", "a", 8 * MIB)?;
    let b = Side::new(root.path(), "B", "b", 8 * MIB)?;
    let da = a.start(&cowstored)?;
    let db = b.start(&cowstored)?;
    let initrd = root.path().join("initrd");
    env.initramfs(
        &initrd,
        &guest_script("group_alternate.sh", &format!("N={N}"))?,
    )?;
    let mut guest = Guest::start(
        &env,
        &initrd,
        &root.path().join("serial.log"),
        &[a.sock.clone(), b.sock.clone()],
    )?;
    wait_serial(&guest, "COWTEST ready=1", GUEST_TIMEOUT)?;

    // Group snapshots at random moments until the guest is done.
    let mut groups = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let members = [a.member(), b.member()];
    while guest.child.try_wait()?.is_none() && groups.len() < 40 {
        std::thread::sleep(Duration::from_millis(50 + next_rand(&mut seed) % 350));
        let name = format!("g{}", groups.len());
        let (code, out, err) = cowsnap(
            &cowsnap_bin,
            &a.store,
            &[],
            &[
                "--json",
                "snapshot",
                "create",
                "--group",
                &name,
                &members[0],
                &members[1],
            ],
        )?;
        ensure!(code == 0, "group {name} failed ({code}): {err}{out}");
        let doc: serde_json::Value = serde_json::from_str(&out)?;
        let paused: Vec<u64> = doc["pauses"]
            .as_array()
            .map(|p| p.iter().filter_map(|x| x["paused_us"].as_u64()).collect())
            .unwrap_or_default();
        eprintln!("group {name}: paused_us {paused:?}");
        groups.push(name);
    }
    let results = guest.wait(GUEST_TIMEOUT)?;
    for (k, want) in [
        ("serial_a", "a"),
        ("serial_b", "b"),
        ("write_fails", "0"),
        ("io_errors", "0"),
    ] {
        let got = results.get(k).map(String::as_str).unwrap_or("<missing>");
        ensure!(
            got == want,
            "guest {k}: got {got:?}, want {want:?}; {results:?}"
        );
    }
    ensure!(
        groups.len() >= 5,
        "only {} group snapshots were taken",
        groups.len()
    );
    da.stop()?;
    db.stop()?;

    // Restore every group (clones on both stores) and read them offline.
    let mut cuts = Vec::new();
    for g in &groups {
        let (code, _, err) = cowsnap(&cowsnap_bin, &a.store, &[], &["restore", g])?;
        ensure!(code == 0, "restore {g}: {err}");
        let (last_a, hole_a) = record_prefix(&read_all(&a.store, &format!("a-{g}"))?, N);
        let (last_b, hole_b) = record_prefix(&read_all(&b.store, &format!("b-{g}"))?, N);
        ensure!(
            !hole_a && !hole_b,
            "group {g}: a hole (a: {hole_a}, b: {hole_b})"
        );
        ensure!(
            last_b == last_a || last_b + 1 == last_a,
            "group {g}: last record on A is {last_a}, on B {last_b}: the cut is not consistent"
        );
        cuts.push(last_a);
    }
    eprintln!("cuts (last record on A per group): {cuts:?}");
    let mid = cuts.iter().filter(|&&c| c > 0 && c < N).count();
    ensure!(
        mid >= 3,
        "only {mid} group snapshots fell while records were being written: {cuts:?}"
    );
    // The live volumes hold every record.
    ensure!(record_prefix(&read_all(&a.store, "a")?, N) == (N, false));
    ensure!(record_prefix(&read_all(&b.store, "b")?, N) == (N, false));
    Ok(())
}

#[test]
fn group_faults_never_freeze_or_lose() -> Result<()> {
    let _serial = one_at_a_time();
    let (env, cowstored, cowsnap_bin) = setup()?;
    let root = tempfile::tempdir()?;
    const N: u64 = 1500;
    let a = Side::new(root.path(), "A", "a", 16 * MIB)?;
    let b = Side::new(root.path(), "B", "b", 8 * MIB)?;
    let da = a.start(&cowstored)?;
    let db = b.start(&cowstored)?;
    let initrd = root.path().join("initrd");
    env.initramfs(
        &initrd,
        &guest_script("group_faults.sh", &format!("N={N}"))?,
    )?;
    let guest = Guest::start(
        &env,
        &initrd,
        &root.path().join("serial.log"),
        &[a.sock.clone(), b.sock.clone()],
    )?;
    wait_serial(&guest, "COWTEST ready=1", GUEST_TIMEOUT)?;
    let members = [a.member(), b.member()];
    let no_member_snapshots = |group: &str| -> Result<()> {
        for (d, vol) in [(&da, "a"), (&db, "b")] {
            let snap = format!("{vol}@{group}");
            let r = d.call(json!({"op": "diff", "from": snap, "to": vol, "summary": true}))?;
            ensure!(r["ok"] == false, "{snap} was left behind: {r}");
        }
        Ok(())
    };

    // 1. The manager dies right after every daemon paused. Guests must not
    //    stay frozen: the daemons resume by themselves at the timeout.
    let before = progress(&guest);
    let (code, _, err) = cowsnap(
        &cowsnap_bin,
        &a.store,
        &[("COWSNAP_FAILPOINT", "abort-after-prepare")],
        &[
            "snapshot",
            "create",
            "--group",
            "f1",
            "--timeout-ms",
            "1500",
            &members[0],
            &members[1],
        ],
    )?;
    ensure!(code != 0, "the manager was meant to die: {err}");
    let list = da.call(json!({"op": "list"}))?;
    ensure!(
        list["exports"][0]["paused"] == true,
        "A should still be paused: {list}"
    );
    std::thread::sleep(Duration::from_millis(2500));
    let list = da.call(json!({"op": "list"}))?;
    ensure!(
        list["exports"][0]["paused"] == false,
        "A did not resume by itself: {list}"
    );
    wait_progress(&guest, before + 50)?;
    no_member_snapshots("f1")?;
    // The manager's intent is left for `rm`, which finds nothing to undo.
    let (code, _, err) = cowsnap(&cowsnap_bin, &a.store, &[], &["snapshot", "rm", "f1"])?;
    ensure!(code == 0, "rm of the dead manager's group: {err}");

    // 2. A volume detached while the barrier holds it: the group completes
    //    (the volume is still in its store), the other guest disk flows.
    let mgr = std::thread::scope(|s| -> Result<(i32, String, String)> {
        let h = s.spawn(|| {
            cowsnap(
                &cowsnap_bin,
                &a.store,
                &[("COWSNAP_FAILPOINT", "sleep-after-prepare-ms=1000")],
                &[
                    "snapshot",
                    "create",
                    "--group",
                    "f2",
                    "--timeout-ms",
                    "5000",
                    &members[0],
                    &members[1],
                ],
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        let r = db.call(json!({"op": "detach", "name": "b"}))?;
        ensure!(r["ok"] == true, "detach: {r}");
        h.join()
            .map_err(|_| anyhow::anyhow!("manager thread panicked"))?
    })?;
    ensure!(
        mgr.0 == 0,
        "group with a detached member: {}{}",
        mgr.2,
        mgr.1
    );
    let before = progress(&guest);
    wait_progress(&guest, before + 50)?;

    // 3. Daemon B killed during prepare: the group aborts naming it, A
    //    resumes at once, nothing is kept.
    let mgr = std::thread::scope(|s| -> Result<(i32, String, String)> {
        let h = s.spawn(|| {
            cowsnap(
                &cowsnap_bin,
                &a.store,
                &[("COWSNAP_FAILPOINT", "sleep-before-prepare-ms=1000")],
                &[
                    "snapshot",
                    "create",
                    "--group",
                    "f3",
                    "--timeout-ms",
                    "5000",
                    &members[0],
                    &members[1],
                ],
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        db.kill9()?;
        h.join()
            .map_err(|_| anyhow::anyhow!("manager thread panicked"))?
    })?;
    ensure!(
        mgr.0 == 6,
        "group with a dead daemon should abort (exit 6): {}{}",
        mgr.2,
        mgr.1
    );
    ensure!(
        mgr.2.contains(&b.dir.display().to_string()),
        "the error names B: {}",
        mgr.2
    );
    let list = da.call(json!({"op": "list"}))?;
    ensure!(
        list["exports"][0]["paused"] == false,
        "A left paused: {list}"
    );
    let r = da.call(json!({"op": "diff", "from": "a@f3", "to": "a", "summary": true}))?;
    ensure!(r["ok"] == false, "a@f3 was left behind: {r}");

    let results = guest.wait(GUEST_TIMEOUT)?;
    for (k, want) in [("serial_a", "a"), ("write_fails", "0"), ("io_errors", "0")] {
        let got = results.get(k).map(String::as_str).unwrap_or("<missing>");
        ensure!(
            got == want,
            "guest {k}: got {got:?}, want {want:?}; {results:?}"
        );
    }
    da.stop()?;
    ensure!(
        record_prefix(&read_all(&a.store, "a")?, N) == (N, false),
        "disk A lost records"
    );
    // The group that completed is whole and restorable offline.
    let (code, _, err) = cowsnap(&cowsnap_bin, &a.store, &[], &["restore", "f2"])?;
    ensure!(code == 0, "restore f2: {err}");
    Ok(())
}

/// The last COWPROGRESS count the guest printed.
fn progress(guest: &Guest) -> u64 {
    guest
        .serial_text()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COWPROGRESS "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

fn wait_progress(guest: &Guest, at_least: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress(guest) < at_least {
        if Instant::now() > deadline {
            bail!(
                "guest I/O stalled below record {at_least}; serial:\n{}",
                guest.serial_text()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
