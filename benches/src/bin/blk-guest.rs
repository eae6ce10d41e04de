//! End to end: fio inside a QEMU (TCG) guest on several vhost-user-blk
//! sockets at once (one disk each), the same jobs as blk-client, one guest
//! boot for all of them.
//!
//!   blk-guest --target NAME=SOCKET... [--jobs all|JOB,...] [--rounds N]
//!             [--ramp-s S] [--runtime-s S] [--region-bytes N]
//!             [--ratio LABEL=OURS/PEER]... [--json FILE] [--serial FILE]
//!
//! The guest is the QEMU suites' (tests/src/qemu.rs: Debian's kernel, a
//! busybox initramfs, `scripts/e2e-qemu-prepare` installs what it needs),
//! plus Debian's fio binary and the shared libraries `ldd` lists for it.
//! Every target must have a different capacity: the guest reports each
//! disk's size, which is how its vdX is matched to the target. Under TCG the
//! guest CPU caps every backend near the same IOPS: this proves the path,
//! it does not rank backends. scripts/bench-blk runs it.

// Shared with blk-client; each binary uses part of it.
#[path = "../blk/mod.rs"]
#[allow(dead_code)]
mod blk;
// The QEMU suites' helpers (guest kernel, initramfs writer, QEMU command).
#[path = "../../../tests/src/qemu.rs"]
#[allow(dead_code)]
mod qemu;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use blk::client::Target;
use blk::jobs::{parse_jobs, parse_target, Job};
use blk::report::{fio_document, table, Ratio, Sample};

struct Args {
    targets: Vec<(String, PathBuf)>,
    jobs: Vec<Job>,
    rounds: u32,
    ramp_s: u64,
    runtime_s: u64,
    region_bytes: u64,
    ratios: Vec<Ratio>,
    json: Option<PathBuf>,
    serial: Option<PathBuf>,
}

const USAGE: &str = "usage: blk-guest --target NAME=SOCKET... [--jobs all|JOB,...] [--rounds N] \
    [--ramp-s S] [--runtime-s S] [--region-bytes N] [--ratio LABEL=OURS/PEER]... [--json FILE] \
    [--serial FILE]";

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args> {
    let mut a = Args {
        targets: Vec::new(),
        jobs: parse_jobs("all")?,
        rounds: 1,
        ramp_s: 1,
        runtime_s: 3,
        region_bytes: 1 << 30,
        ratios: Vec::new(),
        json: None,
        serial: None,
    };
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--target" => a.targets.push(parse_target(&value()?)?),
            "--jobs" => a.jobs = parse_jobs(&value()?)?,
            "--rounds" => a.rounds = value()?.parse().context("--rounds")?,
            "--ramp-s" => a.ramp_s = value()?.parse().context("--ramp-s")?,
            "--runtime-s" => a.runtime_s = value()?.parse().context("--runtime-s")?,
            "--region-bytes" => a.region_bytes = value()?.parse().context("--region-bytes")?,
            "--ratio" => a.ratios.push(value()?.parse()?),
            "--json" => a.json = Some(PathBuf::from(value()?)),
            "--serial" => a.serial = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    ensure!(!a.targets.is_empty(), "no --target\n{USAGE}");
    // Disks vda..vdz.
    ensure!(a.targets.len() <= 26, "at most 26 targets");
    ensure!(
        a.rounds > 0 && a.runtime_s > 0,
        "--rounds and --runtime-s must be above 0"
    );
    Ok(a)
}

/// Adds `path` (absolute) and its parent folders to the initramfs once.
fn add_file(w: &mut qemu::Newc, dirs: &mut BTreeSet<String>, path: &str, data: &[u8]) {
    let rel = path.trim_start_matches('/');
    let mut at = String::new();
    let parts: Vec<&str> = rel.split('/').collect();
    for p in &parts[..parts.len().saturating_sub(1)] {
        if !at.is_empty() {
            at.push('/');
        }
        at.push_str(p);
        if dirs.insert(at.clone()) {
            w.dir(&at);
        }
    }
    w.file(rel, data, 0o755);
}

/// fio and every shared library it loads, at the paths `ldd` names.
fn fio_files() -> Result<Vec<(String, PathBuf)>> {
    let fio = which("fio")
        .context("fio is not installed (scripts/bench-blk installs Debian's fio with apt-get)")?;
    let out = Command::new("ldd")
        .arg(&fio)
        .output()
        .context("running ldd")?;
    ensure!(out.status.success(), "ldd {} failed", fio.display());
    let mut files = vec![("/usr/bin/fio".to_string(), fio)];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next().unwrap_or(""),
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            files.push((path.to_string(), PathBuf::from(path)));
        } else if line.contains("not found") {
            bail!("fio needs a library that is missing: {line}");
        }
    }
    Ok(files)
}

fn which(tool: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .with_context(|| format!("{tool} not found in PATH"))
}

/// The initramfs: busybox, the modules, the suites' /init, fio with its
/// libraries, and benches/guest/fio.sh after a header as /test.sh.
fn initramfs(env: &qemu::GuestEnv, path: &Path, script: &str) -> Result<()> {
    let mut w = qemu::Newc::default();
    let mut dirs = BTreeSet::new();
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "mnt",
        "lib",
        "lib/modules",
    ] {
        dirs.insert(d.to_string());
        w.dir(d);
    }
    w.file("bin/busybox", &std::fs::read(&env.busybox)?, 0o755);
    let init = std::fs::read(qemu::workspace().join("tests/guest/init.sh"))?;
    w.file("init", &init, 0o755);
    w.file("test.sh", script.as_bytes(), 0o755);
    for e in std::fs::read_dir(&env.modules)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        w.file(
            &format!("lib/modules/{name}"),
            &std::fs::read(e.path())?,
            0o644,
        );
    }
    for (at, from) in fio_files()? {
        let data = std::fs::read(&from).with_context(|| format!("reading {}", from.display()))?;
        add_file(&mut w, &mut dirs, &at, &data);
    }
    std::fs::write(path, w.finish())?;
    Ok(())
}

/// The fio JSON documents of a serial log, with their disk and round.
fn parse_serial(serial: &str) -> Result<Vec<(String, u32, serde_json::Value)>> {
    let mut out = Vec::new();
    let mut cur: Option<(String, u32, String)> = None;
    for line in serial.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("COWBENCH-BEGIN ") {
            let mut disk = String::new();
            let mut round = 0;
            for kv in rest.split_whitespace() {
                match kv.split_once('=') {
                    Some(("disk", d)) => disk = d.to_string(),
                    Some(("round", r)) => round = r.parse().context("round")?,
                    _ => {}
                }
            }
            cur = Some((disk, round, String::new()));
        } else if line == "COWBENCH-END" {
            let (disk, round, text) = cur.take().context("COWBENCH-END without BEGIN")?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("fio JSON of {disk} round {round}"))?;
            out.push((disk, round, v));
        } else if let Some((_, _, text)) = cur.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    Ok(out)
}

fn main() -> Result<()> {
    let a = parse_args(std::env::args().skip(1))?;
    // Capacities tell the guest's disks apart: ask each backend for its own.
    let mut by_sectors = BTreeMap::new();
    for (name, sock) in &a.targets {
        let t = Target::connect(name, sock)?;
        ensure!(
            t.capacity_bytes >= a.region_bytes,
            "{name}: capacity {} is below --region-bytes {}",
            t.capacity_bytes,
            a.region_bytes
        );
        if let Some(other) = by_sectors.insert(t.capacity_bytes / 512, name.clone()) {
            bail!("{name} and {other} have the same capacity; the guest could not tell them apart");
        }
    }
    let env = qemu::GuestEnv::prepare()?;
    let dir = tempfile::tempdir()?;
    let disks: Vec<String> = (0..a.targets.len())
        .map(|i| format!("vd{}", (b'a' + i as u8) as char))
        .collect();
    let jobs: Vec<String> = a
        .jobs
        .iter()
        .map(|j| {
            format!(
                "{}:{}:{}:{}:{}",
                j.name(),
                j.rw.fio_name(),
                j.bs_bytes,
                j.iodepth,
                j.fsync_every
            )
        })
        .collect();
    let script = format!(
        "DISKS=\"{}\"\nJOBS=\"{}\"\nROUNDS={}\nRAMP_S={}\nRUNTIME_S={}\nREGION_BYTES={}\n{}",
        disks.join(" "),
        jobs.join(" "),
        a.rounds,
        a.ramp_s,
        a.runtime_s,
        a.region_bytes,
        std::fs::read_to_string(qemu::workspace().join("benches/guest/fio.sh"))?
    );
    let initrd = dir.path().join("initrd");
    initramfs(&env, &initrd, &script)?;
    let serial = a
        .serial
        .clone()
        .unwrap_or_else(|| dir.path().join("serial.log"));
    let sockets: Vec<PathBuf> = a.targets.iter().map(|(_, s)| s.clone()).collect();
    let runs = (a.jobs.len() * a.targets.len()) as u64 * u64::from(a.rounds);
    // Boot, then each run's ramp + runtime plus fio's start under TCG.
    let timeout = Duration::from_secs(180 + runs * (a.ramp_s + a.runtime_s + 15));
    eprintln!(
        "blk-guest: booting a guest with {} disks, {runs} fio runs (timeout {timeout:?})",
        disks.len()
    );
    let guest = qemu::Guest::start(&env, &initrd, &serial, &sockets)?;
    let results = guest.wait(timeout)?;
    let text = std::fs::read_to_string(&serial)?;
    if results.get("exit").map(String::as_str) != Some("0") {
        bail!("the guest's fio script failed; serial:\n{text}");
    }
    // vdX -> target, by size.
    let mut disk_target = BTreeMap::new();
    for d in &disks {
        let sectors: u64 = results
            .get(&format!("size_{d}"))
            .with_context(|| format!("guest reported no size for {d}"))?
            .parse()?;
        let name = by_sectors
            .get(&sectors)
            .with_context(|| format!("{d}: {sectors} sectors match no target"))?;
        disk_target.insert(d.clone(), name.clone());
    }
    let mut samples = Vec::new();
    let mut docs = Vec::new();
    for (disk, round, doc) in parse_serial(&text)? {
        let target = disk_target
            .get(&disk)
            .with_context(|| format!("fio ran on unknown disk {disk}"))?;
        for job in doc["jobs"].as_array().context("fio JSON without jobs")? {
            let s = Sample::from_fio_job("guest", target, round, job)?;
            println!(
                "{}",
                s.text(job["write"]["io_bytes"].as_u64().unwrap_or(0) > 0)
            );
            let mut job = job.clone();
            job["target"] = target.clone().into();
            job["round"] = round.into();
            docs.push(job);
            samples.push(s);
        }
    }
    let want = runs as usize;
    ensure!(
        samples.len() == want,
        "expected {want} fio results from the guest, got {}",
        samples.len()
    );
    if let Some(path) = &a.json {
        let doc = fio_document("fio (in a QEMU TCG guest)", docs);
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    let names: Vec<String> = a.targets.iter().map(|(n, _)| n.clone()).collect();
    println!(
        "\n{}",
        table(
            &samples,
            &names,
            &a.jobs,
            &a.ratios,
            "fio's completion latency (clat)"
        )
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_is_parsed() {
        let serial =
            "noise\r\nCOWBENCH-BEGIN disk=vdb round=2\r\n{\"jobs\": []}\r\nCOWBENCH-END\r\n";
        let r = parse_serial(serial).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].0.as_str(), r[0].1), ("vdb", 2));
        assert!(parse_serial("COWBENCH-BEGIN disk=vda round=1\n{bad\nCOWBENCH-END\n").is_err());
        assert!(parse_serial("COWBENCH-END\n").is_err());
    }

    #[test]
    fn args_are_checked() {
        assert!(parse_args(Vec::<String>::new()).is_err());
        assert!(parse_args(["--target", "a=/s", "--runtime-s", "0"].map(String::from)).is_err());
        assert!(parse_args(["--target", "a=/s"].map(String::from)).is_ok());
    }
}
