//! `cowsnap` end to end: the real binary, real VMDKs made by `qemu-img`,
//! judged by `qemu-img` (convert, check, compare).
//!
//! Needs qemu-img and qemu-io (Debian's qemu-utils; scripts/test installs
//! it). A missing tool fails the suite with a message, never skips it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cowsnap_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cowsnap")
}

fn need(tool: &str) {
    let found = Command::new(tool).arg("--version").output().is_ok();
    assert!(
        found,
        "{tool} is not installed: install qemu-utils (scripts/test does this with apt-get)"
    );
}

/// A store in a temp dir and a way to run cowsnap on it.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let env = Env {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let out = env.run(&["init"]);
        assert!(out.status.success(), "init failed: {}", stderr(&out));
        env
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(cowsnap_bin())
            .args(args)
            .env("COWSNAP_STORE", self.store())
            .env("COWSNAP_CONFIG", self.dir.path().join("no-config.toml"))
            .output()
            .expect("running cowsnap")
    }

    /// Runs and insists on success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cowsnap {args:?} failed ({:?}): {}",
            out.status.code(),
            stderr(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).expect("cowsnap --json printed JSON")
    }

    fn export_raw(&self, name: &str) -> Vec<u8> {
        let out = self.path(&format!("{}.export.raw", name.replace('@', "_")));
        self.ok(&["export", name, "-o", out.to_str().unwrap(), "--force"]);
        std::fs::read(out).expect("reading the export")
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn tool(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} cannot run ({e}): install qemu-utils"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        stderr(&out)
    );
}

/// Deterministic bytes (xorshift), so failures reproduce.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A raw disk image of `len` bytes with random runs, zero runs and holes.
fn make_raw(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut img = vec![0u8; len];
    let noise = pattern(seed, len);
    // Data in a few places, some not grain aligned; the rest stays zero.
    for (start, n) in [
        (0usize, 70_000usize),
        (200_704, 4096),
        (1 << 20, 300_000),
        (len - 9_000, 9_000),
    ] {
        let end = (start + n).min(len);
        img[start..end].copy_from_slice(&noise[start..end]);
    }
    std::fs::write(path, &img).expect("writing raw");
    img
}

fn qemu_raw(vmdk: &Path, out: &Path) -> Vec<u8> {
    tool(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            vmdk.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    std::fs::read(out).expect("reading qemu-img's raw")
}

/// Odd size: not a multiple of the 64 KiB grain (but of 512).
const DISK_BYTES: usize = 3 * 1024 * 1024 + 5 * 512;

#[test]
fn import_of_every_qemu_img_subformat_reads_back_like_qemu_img() {
    need("qemu-img");
    let env = Env::new();
    let raw = env.path("src.raw");
    make_raw(&raw, DISK_BYTES, 7);
    let subformats = [
        "monolithicSparse",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
        "streamOptimized",
    ];
    let mut files = Vec::new();
    for sub in subformats {
        let vmdk = env.path(&format!("{sub}.vmdk"));
        tool(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                &format!("subformat={sub}"),
                raw.to_str().unwrap(),
                vmdk.to_str().unwrap(),
            ],
        );
        files.push(vmdk);
    }
    // One command, several files: imported side by side.
    let mut args = vec!["import"];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    let doc = env.json(&args);
    assert_eq!(doc["imported"].as_array().map(Vec::len), Some(5), "{doc}");
    for (sub, vmdk) in subformats.iter().zip(&files) {
        let expected = qemu_raw(vmdk, &env.path(&format!("{sub}.qemu.raw")));
        let got = env.export_raw(sub);
        assert_eq!(got.len(), expected.len(), "{sub}: size");
        assert!(
            got == expected,
            "{sub}: imported bytes differ from qemu-img's"
        );
    }
    // Zero and unallocated grains are not stored: far less than 5 disks.
    let du = env.json(&["du"]);
    let disk_bytes = du["disk_bytes"].as_u64().unwrap();
    assert!(
        disk_bytes < 5 * DISK_BYTES as u64 / 2,
        "store holds {disk_bytes} bytes for 5 x {DISK_BYTES} mostly empty disks"
    );
}

#[test]
fn export_to_vmdk_is_accepted_by_qemu_img_and_round_trips() {
    need("qemu-img");
    let env = Env::new();
    let raw = env.path("src.raw");
    let img = make_raw(&raw, DISK_BYTES, 11);
    env.ok(&["volume", "create", "v", "--size", &DISK_BYTES.to_string()]);
    env.ok(&["volume", "write", "v", "--from", raw.to_str().unwrap()]);
    env.ok(&["snapshot", "create", "v", "--name", "v@1"]);
    let vmdk = env.path("v.vmdk");
    env.ok(&["export", "v@1", "-o", vmdk.to_str().unwrap()]);
    tool("qemu-img", &["check", vmdk.to_str().unwrap()]);
    tool(
        "qemu-img",
        &[
            "compare",
            "-f",
            "vmdk",
            "-F",
            "raw",
            vmdk.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    // VMware's layout (footer, end marker), read back by our importer.
    env.ok(&["import", vmdk.to_str().unwrap(), "--name", "again"]);
    assert!(env.export_raw("again") == img, "round trip changed bytes");
    // Refuses to overwrite without --force.
    let out = env.run(&["export", "v", "-o", vmdk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
}

#[test]
fn a_delta_chain_becomes_one_volume_with_its_older_layer_as_a_snapshot() {
    need("qemu-img");
    need("qemu-io");
    let env = Env::new();
    let raw = env.path("base.raw");
    let base_img = make_raw(&raw, DISK_BYTES, 3);
    let base = env.path("base.vmdk");
    let child = env.path("child.vmdk");
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            raw.to_str().unwrap(),
            base.to_str().unwrap(),
        ],
    );
    tool(
        "qemu-img",
        &[
            "create",
            "-f",
            "vmdk",
            "-b",
            "base.vmdk",
            "-F",
            "vmdk",
            child.to_str().unwrap(),
        ],
    );
    // New data, and zeros over the base's data.
    tool(
        "qemu-io",
        &[
            "-c",
            "write -P 0xab 2M 128k",
            "-c",
            "write -z 0 64k",
            child.to_str().unwrap(),
        ],
    );
    env.ok(&["import", child.to_str().unwrap()]);
    let expected_child = qemu_raw(&child, &env.path("child.qemu.raw"));
    assert!(
        env.export_raw("child") == expected_child,
        "top layer differs"
    );
    assert!(
        env.export_raw("child@base") == base_img,
        "the base layer snapshot differs from the base disk"
    );
}

#[test]
fn an_ova_becomes_one_volume_per_disk_named_after_its_vm() {
    need("qemu-img");
    let env = Env::new();
    let raw = env.path("d.raw");
    let img = make_raw(&raw, DISK_BYTES, 5);
    let pack = env.path("pack");
    std::fs::create_dir_all(&pack).unwrap();
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            raw.to_str().unwrap(),
            pack.join("app-disk1.vmdk").to_str().unwrap(),
        ],
    );
    let ovf = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:id="file1" ovf:href="app-disk1.vmdk"/></References>
  <DiskSection><Info>disks</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="{DISK_BYTES}" ovf:capacityAllocationUnits="byte" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="appvm"><Info>a VM</Info><Name>appvm</Name>
    <VirtualHardwareSection><Info>hw</Info>
      <Item><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#
    );
    std::fs::write(pack.join("app.ovf"), ovf).unwrap();
    let ova = env.path("app.ova");
    tool(
        "tar",
        &[
            "-cf",
            ova.to_str().unwrap(),
            "-C",
            pack.to_str().unwrap(),
            "app.ovf",
            "app-disk1.vmdk",
        ],
    );
    let doc = env.json(&["import", ova.to_str().unwrap()]);
    assert_eq!(doc["imported"][0]["volume"], "appvm-vmdisk1", "{doc}");
    assert!(env.export_raw("appvm-vmdisk1") == img);
    // The OVF's VM list is kept with the volumes.
    let kept = std::fs::read_to_string(env.store().join("ova").join("app.json")).unwrap();
    assert!(kept.contains("appvm-vmdisk1"), "{kept}");
}

#[test]
fn a_hostile_vmdk_fails_clearly_and_leaves_nothing_behind() {
    need("qemu-img");
    let env = Env::new();
    let raw = env.path("src.raw");
    make_raw(&raw, DISK_BYTES, 9);
    let good = env.path("good.vmdk");
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            raw.to_str().unwrap(),
            good.to_str().unwrap(),
        ],
    );
    let bytes = std::fs::read(&good).unwrap();
    // Truncated in the middle of its grains.
    let cut = env.path("cut.vmdk");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = env.run(&["import", cut.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cut.vmdk"),
        "error names the file: {}",
        stderr(&out)
    );
    // Not a VMDK at all.
    let junk = env.path("junk.vmdk");
    std::fs::write(&junk, pattern(1, 4096)).unwrap();
    let out = env.run(&["import", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("junk.vmdk"), "{}", stderr(&out));
    // A missing file.
    let out = env.run(&["import", env.path("nope.vmdk").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let vols = env.json(&["volume", "list"]);
    assert_eq!(vols.as_array().map(Vec::len), Some(0), "{vols}");
}

#[test]
fn exit_codes_and_how_the_store_is_found() {
    let env = Env::new();
    // Usage errors: 2.
    assert_eq!(env.run(&["volume", "frobnicate"]).status.code(), Some(2));
    assert_eq!(
        env.run(&["volume", "create", "x", "--size", "12Q"])
            .status
            .code(),
        Some(2)
    );
    // Missing things: 3.
    assert_eq!(env.run(&["volume", "show", "nope"]).status.code(), Some(3));
    assert_eq!(env.run(&["snapshot", "rm", "nope"]).status.code(), Some(3));
    // Conflicts: 5.
    env.ok(&["volume", "create", "x", "--size", "1M"]);
    assert_eq!(
        env.run(&["volume", "create", "x", "--size", "1M"])
            .status
            .code(),
        Some(5)
    );
    // JSON errors are JSON too.
    let out = env.run(&["--json", "volume", "show", "nope"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["kind"], "notfound");

    // No store anywhere: a usage error that says where to put one.
    let bare = |config: &Path| {
        Command::new(cowsnap_bin())
            .args(["volume", "list"])
            .env_remove("COWSNAP_STORE")
            .env("COWSNAP_CONFIG", config)
            .output()
            .unwrap()
    };
    let config = env.path("config.toml");
    let out = bare(&config);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--store"), "{}", stderr(&out));
    // The config file is the last resort...
    std::fs::write(&config, format!("store = {:?}\n", env.store())).unwrap();
    let out = bare(&config);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains('x'));
    // ...the environment beats it, and --store beats both.
    let other = env.path("other");
    let init = Command::new(cowsnap_bin())
        .args(["init", other.to_str().unwrap()])
        .env("COWSNAP_CONFIG", &config)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", stderr(&init));
    let list = |args: &[&str], store_env: Option<&Path>| {
        let mut c = Command::new(cowsnap_bin());
        c.args(args)
            .env("COWSNAP_CONFIG", &config)
            .env_remove("COWSNAP_STORE");
        if let Some(s) = store_env {
            c.env("COWSNAP_STORE", s);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        doc.as_array().map(Vec::len).unwrap()
    };
    assert_eq!(list(&["--json", "volume", "list"], Some(&other)), 0);
    assert_eq!(
        list(
            &[
                "--json",
                "--store",
                env.store().to_str().unwrap(),
                "volume",
                "list"
            ],
            Some(&other)
        ),
        1
    );
}

#[test]
fn diff_lists_exactly_the_rewritten_ranges_and_du_splits_shared_from_exclusive() {
    let env = Env::new();
    env.ok(&["volume", "create", "v", "--size", "16M"]);
    let data = env.path("d.bin");
    std::fs::write(&data, pattern(2, 1 << 20)).unwrap();
    env.ok(&["volume", "write", "v", "--from", data.to_str().unwrap()]);
    env.ok(&["snapshot", "create", "v", "--name", "v@a"]);
    // Whole 64 KiB records: space is accounted per log record.
    std::fs::write(&data, pattern(3, 65536)).unwrap();
    for offset in ["64K", "8M"] {
        env.ok(&[
            "volume",
            "write",
            "v",
            "--offset",
            offset,
            "--from",
            data.to_str().unwrap(),
        ]);
    }
    env.ok(&["snapshot", "create", "v", "--name", "v@b"]);
    let diff = env.json(&["snapshot", "diff", "v@a", "v@b"]);
    let ranges: Vec<(u64, u64)> = diff["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["offset_bytes"].as_u64().unwrap(),
                r["len_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ranges, vec![(65536, 65536), (8 << 20, 65536)]);
    assert_eq!(diff["changed_bytes"], 131072);
    // Same volume only.
    env.ok(&["volume", "create", "w", "--size", "1M"]);
    env.ok(&["snapshot", "create", "w", "--name", "w@a"]);
    let out = env.run(&["snapshot", "diff", "v@a", "w@a"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    let du = env.json(&["du"]);
    let row = |name: &str| {
        du["objects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .cloned()
            .unwrap()
    };
    // v@a's first 1 MiB is shared with v@b and v except the record rewritten.
    let (a, b) = (row("v@a"), row("v@b"));
    assert!(a["shared_bytes"].as_u64().unwrap() > 900_000, "{a}");
    assert!(a["exclusive_bytes"].as_u64().unwrap() > 0, "{a}");
    assert_eq!(b["exclusive_bytes"], 0, "v@b shares everything with v: {b}");
    assert_eq!(a["mapped_bytes"], 1 << 20);
}

#[test]
fn verify_reports_a_flipped_byte_and_changes_nothing() {
    let env = Env::new();
    env.ok(&["volume", "create", "v", "--size", "4M"]);
    let data = env.path("d.bin");
    std::fs::write(&data, pattern(4, 1 << 20)).unwrap();
    env.ok(&["volume", "write", "v", "--from", data.to_str().unwrap()]);
    assert!(env.ok(&["verify"]).contains("0 bad ranges"));
    // Flip one byte in the middle of the segment's data.
    let segs: Vec<PathBuf> = std::fs::read_dir(env.store().join("segments"))
        .expect("segments dir")
        .map(|e| e.unwrap().path())
        .collect();
    let seg = segs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(seg).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(seg, &bytes).unwrap();
    let out = env.run(&["verify"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CORRUPT"), "{text}");
    assert!(
        text.contains("checksum") || text.contains("corrupt"),
        "{text}"
    );
    // Never repaired silently: the byte is still flipped.
    assert_eq!(std::fs::read(seg).unwrap()[at], bytes[at]);
    // And a read of the bad range is an error, not data.
    let out = env.run(&["export", "v", "-o", env.path("x.raw").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        !env.path("x.raw").exists(),
        "a failed export leaves no file"
    );
}

#[test]
fn offline_group_snapshots_list_show_restore_and_remove_as_a_unit() {
    let env = Env::new();
    let data = env.path("d.bin");
    for v in ["a", "b"] {
        env.ok(&["volume", "create", v, "--size", "4M"]);
        std::fs::write(&data, pattern(v.len() as u64 + 10, 65536)).unwrap();
        env.ok(&["volume", "write", v, "--from", data.to_str().unwrap()]);
    }
    env.ok(&["snapshot", "create", "--group", "g1", "a", "b"]);
    env.ok(&[
        "volume",
        "write",
        "a",
        "--offset",
        "1M",
        "--from",
        data.to_str().unwrap(),
    ]);
    env.ok(&["snapshot", "create", "--group", "g2", "a", "b"]);
    let show = env.json(&["snapshot", "show", "g2"]);
    let changed: Vec<u64> = show["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["changed_bytes_since_previous"].as_u64().unwrap())
        .collect();
    assert_eq!(changed, vec![65536, 0], "{show}");
    let before = env.export_raw("a@g1");
    env.ok(&["restore", "g1"]);
    assert!(env.export_raw("a-g1") == before);
    assert!(env.export_raw("a-g1") != env.export_raw("a"));
    // A member that does not exist aborts the whole group: nothing kept.
    let out = env.run(&["snapshot", "create", "--group", "g3", "a", "nope"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nope"),
        "names the member: {}",
        stderr(&out)
    );
    let list = env.json(&["snapshot", "list"]);
    let names: Vec<&str> = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"a@g3"), "{names:?}");
    // Removed as a unit.
    env.ok(&["snapshot", "rm", "g1"]);
    let list = env.json(&["snapshot", "list"]);
    assert_eq!(list["groups"].as_array().map(Vec::len), Some(1));
    let names: Vec<&str> = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a@g2", "b@g2"]);
}

#[test]
fn a_schedule_takes_group_snapshots_and_prunes_by_retention() {
    let env = Env::new();
    for v in ["a", "b"] {
        env.ok(&["volume", "create", v, "--size", "1M"]);
    }
    let config = env.path("schedule.toml");
    std::fs::write(
        &config,
        "[[schedule]]\nprefix = \"app\"\nmembers = [\"a\", \"b\"]\nkeep_hourly = 1\nkeep_daily = 1\n",
    )
    .unwrap();
    let groups = |env: &Env| -> Vec<String> {
        env.json(&["snapshot", "list"])["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap().to_string())
            .collect()
    };
    let first = env.json(&["schedule", "--config", config.to_str().unwrap()]);
    let first_name = first["schedules"][0]["taken"].as_str().unwrap().to_string();
    assert!(first_name.starts_with("app-"), "{first}");
    assert_eq!(groups(&env), vec![first_name.clone()]);
    // Names carry the second; the next run is a new group.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let dry = env.json(&[
        "schedule",
        "--config",
        config.to_str().unwrap(),
        "--dry-run",
    ]);
    assert_eq!(
        dry["schedules"][0]["removed"].as_array().map(Vec::len),
        Some(0)
    );
    let second = env.json(&["schedule", "--config", config.to_str().unwrap()]);
    let second_name = second["schedules"][0]["taken"]
        .as_str()
        .unwrap()
        .to_string();
    // One hourly and one daily bucket: only the newest group stays, and the
    // old one's member snapshots went with it.
    assert_eq!(groups(&env), vec![second_name.clone()]);
    assert_eq!(second["schedules"][0]["removed"][0], first_name.as_str());
    let snaps = env.json(&["snapshot", "list"]);
    assert_eq!(
        snaps["snapshots"].as_array().map(Vec::len),
        Some(2),
        "{snaps}"
    );
    // A bad schedule file is a usage error.
    std::fs::write(&config, "[[schedule]]\nprefix = 1\n").unwrap();
    let out = env.run(&["schedule", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn a_store_made_with_an_object_store_keeps_using_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let bucket = dir.path().join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(cowsnap_bin())
            .arg("--store")
            .arg(&store)
            .args(args)
            .env("COWSNAP_CONFIG", dir.path().join("none.toml"))
            .output()
            .unwrap();
        assert!(out.status.success(), "cowsnap {args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let url = format!("file://{}", bucket.display());
    run(&["init", "--object-store", &url, "--durability", "remote"]);
    assert!(std::fs::read_to_string(store.join("cowsnap.toml"))
        .unwrap()
        .contains(&url));
    let data = dir.path().join("d.bin");
    std::fs::write(&data, pattern(8, 3 << 20)).unwrap();
    run(&["volume", "create", "v", "--size", "8M"]);
    run(&["volume", "write", "v", "--from", data.to_str().unwrap()]);
    run(&["snapshot", "create", "v", "--name", "v@1"]);
    // Later commands open the store with its tier: the snapshot is in the
    // bucket (durability remote: published before the command returned).
    let objects = walk(&bucket);
    assert!(
        objects
            .iter()
            .any(|p| p.to_string_lossy().contains("v@1") || p.to_string_lossy().contains("v_a1")),
        "no manifest of v@1 in the bucket: {objects:?}"
    );
    assert!(run(&["verify"]).contains("0 bad ranges"));
    run(&["hydrate", "v"]);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
