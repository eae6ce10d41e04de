//! QEMU end to end: real guests (Debian's kernel under TCG) on cowstored over
//! vhost-user-blk. Needs the tools `scripts/e2e-qemu-prepare` installs (it is
//! run from here; a missing tool fails the suite, it is never skipped).
//!
//! - `pattern_ext4_offline`: O_DIRECT pattern write + read-back, discard,
//!   GET_ID, ext4 (made on the host with mkfs.ext4, mounted and written in
//!   the guest), then the same bytes read offline through the engine.
//!
//! Several guests or exports of one daemon (two guests at once, a read-only
//! snapshot export, the snapshot barrier while a guest writes): qemu_multi.rs.

#[path = "../src/qemu.rs"]
#[allow(dead_code)]
mod qemu;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use cowstore::{Store, StoreConfig};
use qemu::{md5, read_volume, write_image, Daemon, Guest, GuestEnv};
use serde_json::json;

const MIB: u64 = 1 << 20;
const GUEST_TIMEOUT: Duration = Duration::from_secs(150);

fn guest_script(name: &str) -> Result<String> {
    let p = qemu::workspace().join("tests/guest").join(name);
    std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
}

fn check(
    results: &std::collections::BTreeMap<String, String>,
    key: &str,
    want: &str,
) -> Result<()> {
    let got = results.get(key).map(String::as_str).unwrap_or("<missing>");
    ensure!(
        got == want,
        "guest result {key}: got {got:?}, want {want:?}; all: {results:?}"
    );
    Ok(())
}

/// A host-made ext4 image of `size` bytes.
fn ext4_image(dir: &Path, size: u64) -> Result<Vec<u8>> {
    let img = dir.join("fs.img");
    std::fs::File::create(&img)?.set_len(size)?;
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(&img)
        .status()
        .context("mkfs.ext4 (e2fsprogs)")?;
    ensure!(st.success(), "mkfs.ext4 failed");
    Ok(std::fs::read(&img)?)
}

#[test]
fn pattern_ext4_offline() -> Result<()> {
    let t0 = Instant::now();
    let env = GuestEnv::prepare()?;
    let bin = qemu::cowstored_binary()?;
    let dir = tempfile::tempdir()?;
    let store_dir = dir.path().join("store");
    {
        let store = Store::open_or_create(&store_dir, StoreConfig::default())?;
        store.create_volume("raw", 32 * MIB)?;
        let fs = store.create_volume("fs", 64 * MIB)?;
        write_image(&fs, &ext4_image(dir.path(), 64 * MIB)?)?;
        store.close()?;
    }
    let raw_sock = dir.path().join("raw.sock");
    let fs_sock = dir.path().join("fs.sock");
    let daemon = Daemon::start(
        &bin,
        &store_dir,
        dir.path(),
        &[
            "--attach".into(),
            format!("raw={}", raw_sock.display()),
            "--attach".into(),
            format!("fs={}", fs_sock.display()),
        ],
    )?;
    let initrd = dir.path().join("initrd");
    env.initramfs(&initrd, &guest_script("pattern_ext4.sh")?)?;
    let guest = Guest::start(
        &env,
        &initrd,
        &dir.path().join("serial.log"),
        &[raw_sock, fs_sock],
    )?;
    let r = guest.wait(GUEST_TIMEOUT)?;
    eprintln!("guest results: {r:?}");
    check(&r, "exit", "0")?;
    check(&r, "serial_a", "raw")?;
    check(&r, "size_a", &(32 * MIB / 512).to_string())?;
    check(&r, "write_rc", "0")?;
    let pattern = r.get("pattern_md5").context("pattern_md5")?.clone();
    check(&r, "readback_md5", &pattern)?;
    check(&r, "discard_rc", "0")?;
    let zero_md5 = md5(&vec![0u8; MIB as usize])?;
    check(&r, "discarded_md5", &zero_md5)?;
    check(&r, "mount_rc", "0")?;
    check(&r, "copy_rc", "0")?;
    check(&r, "umount_rc", "0")?;
    let busybox_md5 = md5(&std::fs::read(&env.busybox)?)?;
    check(&r, "busybox_md5", &busybox_md5)?;

    let stats = daemon.call(json!({"op": "stats"}))?;
    ensure!(stats["ok"] == json!(true), "stats: {stats}");
    ensure!(
        stats["stats"]["raw"]["writes"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );
    ensure!(
        stats["stats"]["raw"]["discards"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );
    ensure!(
        stats["stats"]["raw"]["get_ids"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );
    ensure!(stats["stats"]["raw"]["io_errors"] == json!(0), "{stats}");
    ensure!(stats["stats"]["raw"]["rejected"] == json!(0), "{stats}");
    daemon.stop()?;

    // Offline, through the engine: the same bytes.
    let store = Store::open(&store_dir, StoreConfig::default())?;
    let raw = store.volume("raw")?;
    ensure!(
        md5(&read_volume(&raw, MIB, 8 * MIB)?)? == pattern,
        "offline pattern differs"
    );
    ensure!(
        md5(&read_volume(&raw, 16 * MIB, MIB)?)? == zero_md5,
        "offline discarded range is not zero"
    );
    let fs = store.volume("fs")?;
    let img = dir.path().join("fs-after.img");
    std::fs::write(&img, read_volume(&fs, 0, 64 * MIB)?)?;
    store.close()?;
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&img)
        .output()?;
    ensure!(
        fsck.status.success(),
        "e2fsck of the offline image failed: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let dumped = dir.path().join("busybox.out");
    let st = Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump /busybox {}", dumped.display()))
        .arg(&img)
        .output()?;
    ensure!(st.status.success(), "debugfs failed");
    ensure!(
        md5(&std::fs::read(&dumped)?)? == busybox_md5,
        "file copied in the guest differs offline"
    );
    let pat = dir.path().join("pat.out");
    Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump /pat {}", pat.display()))
        .arg(&img)
        .output()?;
    ensure!(
        md5(&std::fs::read(&pat)?)? == pattern,
        "pattern file differs offline"
    );
    eprintln!("pattern_ext4_offline: {:?}", t0.elapsed());
    Ok(())
}
