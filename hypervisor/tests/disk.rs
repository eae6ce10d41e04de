//! Disks: Linux under cowvisor writes and reads back a pattern on a
//! virtio-blk disk whose backend is a real vhost-user-blk daemon (cowstored
//! on a cowstore volume; qemu-storage-daemon on a raw file), and the bytes
//! are then checked offline, through the cowstore engine or the file.
//!
//! The guest's init (hypervisor/guest/init) runs its disk mode when the
//! kernel command line has `cowvisor_disk=SEED`: per disk it prints the md5
//! of the 64 KiB the test put at 1 MiB before boot, writes the 1 MiB
//! pattern "cowvisor SEED vdX\n"... at offset 0 with fsync, drops the buffer
//! cache and prints the md5 of what it wrote and of what it read back.
//!
//! Its ext4 mode (`cowvisor_ext4=SEED`) makes an ext4 on /dev/vda with
//! e2fsprogs' mke2fs, writes files, unmounts, mounts read-only and hashes
//! them; the test then reads the volume offline and checks the filesystem.
//!
//! Bad guests: a bare-metal program (tests/common/mmio-flood.S) floods the
//! virtio-mmio transport and programs bad descriptors; cowvisor must end
//! cleanly (or with its fault report) and cowstored must keep serving.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cowstore::{Store, StoreConfig};

const MIB: u64 = 1 << 20;
const VOLUME_BYTES: u64 = 32 * MIB;
/// Where the test puts bytes before boot for the guest to read (and its
/// length): the guest hashes exactly this range.
const PRESET_AT: u64 = MIB;
const PRESET_LEN: usize = 64 << 10;
/// A hung guest ends here instead of hanging the suite (a disk boot
/// retires about 60 M instructions).
const MAX_INSTRUCTIONS: &str = "3000000000";

/// The bytes the guest writes at offset 0 of disk `dev` with `seed`
/// (`yes "cowvisor SEED DEV" | head -c 1048576`).
fn pattern(seed: &str, dev: &str) -> Vec<u8> {
    let line = format!("cowvisor {seed} {dev}\n");
    line.bytes().cycle().take(MIB as usize).collect()
}

/// Bytes the test presets at PRESET_AT: a simple LCG stream, distinct per
/// disk.
fn preset(salt: u64) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ salt;
    (0..PRESET_LEN)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 56) as u8
        })
        .collect()
}

/// md5 by coreutils' md5sum (the guest prints busybox md5sum's).
fn md5(data: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum (coreutils) must be installed");
    child
        .stdin
        .take()
        .expect("md5sum stdin")
        .write_all(data)
        .expect("write to md5sum");
    let out = child.wait_with_output().expect("md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A running cowvisor whose console and stderr go to files.
struct Run {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// Wall-clock limit of one guest run: a backend that never answers leaves
/// the guest waiting in real time (virtual time stands still meanwhile), so
/// the instruction budget alone cannot end such a run.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Starts cowvisor on the packaged guest in the init's disk mode with one
/// disk per socket; `dir` holds its output files, named after `seed`.
fn start_cowvisor(dir: &Path, seed: &str, sockets: &[&Path]) -> Run {
    start_guest(dir, seed, &format!("cowvisor_disk={seed}"), sockets)
}

/// Starts cowvisor on the packaged Linux guest with `mode` added to the
/// kernel command line; output files are named after `name`.
fn start_guest(dir: &Path, name: &str, mode: &str, sockets: &[&Path]) -> Run {
    let g = common::guest();
    let mut args: Vec<std::ffi::OsString> = vec![
        "--bios".into(),
        g.fw_jump.clone().into(),
        "--kernel".into(),
        g.image.clone().into(),
        "--initrd".into(),
        g.initramfs.clone().into(),
        "--append".into(),
        format!("console=ttyS0 rdinit=/init panic=-1 {mode}").into(),
        "--memory".into(),
        "128".into(),
        "--max-instructions".into(),
        MAX_INSTRUCTIONS.into(),
    ];
    for s in sockets {
        args.push("--disk".into());
        args.push(format!("vhost-user={}", s.display()).into());
    }
    spawn_cowvisor(dir, name, &args)
}

/// Starts cowvisor with `args`; console and stderr go to files in `dir`
/// named after `name`.
fn spawn_cowvisor(dir: &Path, name: &str, args: &[std::ffi::OsString]) -> Run {
    let stdout = dir.join(format!("cowvisor-{name}.out"));
    let stderr = dir.join(format!("cowvisor-{name}.err"));
    let child = Command::new(env!("CARGO_BIN_EXE_cowvisor"))
        .args(args)
        .stdout(std::fs::File::create(&stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("start cowvisor");
    Run {
        child,
        stdout,
        stderr,
    }
}

/// Waits for a cowvisor run (killing it after RUN_TIMEOUT); (status,
/// console, stderr). A killed run has status -1.
fn finish(mut run: Run) -> (i32, String, String) {
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(st) = run.child.try_wait().expect("wait for cowvisor") {
            break st.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = run.child.kill();
            let _ = run.child.wait();
            break -1;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status,
        std::fs::read_to_string(&run.stdout).unwrap_or_default(),
        std::fs::read_to_string(&run.stderr).unwrap_or_default(),
    )
}

/// The value printed after `cowvisor-guest: disk DEV KEY ` (first word).
fn disk_line<'a>(console: &'a str, dev: &str, key: &str) -> Option<&'a str> {
    let prefix = format!("cowvisor-guest: disk {dev} {key} ");
    console
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(&prefix))
        .and_then(|rest| rest.split_whitespace().next())
}

/// Asserts the guest's view of disk `dev`: its size, the preset bytes it
/// read, and that what it wrote is the pattern and reads back unchanged.
fn check_guest(run: &(i32, String, String), dev: &str, seed: &str, preset_md5: &str) {
    let (code, console, err) = run;
    let ctx = || format!("exit {code}\n--- console ---\n{console}\n--- stderr ---\n{err}");
    assert_eq!(*code, 0, "cowvisor did not power off cleanly: {}", ctx());
    assert!(
        console.contains("virtio_blk virtio"),
        "no virtio-blk probe: {}",
        ctx()
    );
    assert_eq!(
        disk_line(console, dev, "sectors"),
        Some((VOLUME_BYTES / 512).to_string().as_str()),
        "{}",
        ctx()
    );
    assert_eq!(
        disk_line(console, dev, "preset"),
        Some(preset_md5),
        "guest read other bytes than the test preset: {}",
        ctx()
    );
    let want = md5(&pattern(seed, dev));
    assert_eq!(
        disk_line(console, dev, "wrote"),
        Some(want.as_str()),
        "{}",
        ctx()
    );
    assert_eq!(
        disk_line(console, dev, "read"),
        Some(want.as_str()),
        "read-back differs from what was written: {}",
        ctx()
    );
    assert!(!console.contains("write failed"), "{}", ctx());
}

/// A running cowstored (the pattern of tests/src/qemu.rs's Daemon).
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(store: &Path, dir: &Path, attach: &[(&str, &Path)]) -> Daemon {
        let bin = cowstored_binary();
        let control = dir.join("control.sock");
        let log = dir.join("cowstored.log");
        let mut cmd = Command::new(bin);
        cmd.arg("--store").arg(store).arg("--control").arg(&control);
        for (vol, sock) in attach {
            cmd.arg("--attach").arg(format!("{vol}={}", sock.display()));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("cowstored log"))
            .spawn()
            .expect("start cowstored");
        let mut d = Daemon { child, log };
        wait_for_sockets(
            &mut d.child,
            &attach.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
            &d.log,
        );
        d
    }

    /// SIGTERM and wait: the daemon flushes and closes the store.
    fn stop(mut self) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().expect("wait cowstored") {
                assert!(
                    st.success(),
                    "cowstored exited with {st}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
                return;
            }
            assert!(Instant::now() < deadline, "cowstored did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until every socket exists (the backend listens), failing early if
/// the process exits.
fn wait_for_sockets(child: &mut Child, sockets: &[&Path], log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sockets.iter().all(|s| s.exists()) {
        if let Some(st) = child.try_wait().expect("try_wait") {
            panic!(
                "backend exited early ({st}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "backend did not listen: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cowstored_binary() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let root = common::repo_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "--quiet", "-p", "vhost-blk", "--bin", "cowstored"])
            .status()
            .expect("cargo build cowstored");
        assert!(
            st.success(),
            "cargo build -p vhost-blk --bin cowstored failed"
        );
        std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join("target"))
            .join("debug/cowstored")
    })
    .clone()
}

fn block_on<T>(f: impl std::future::Future<Output = cowstore::Result<T>>) -> T {
    futures::executor::block_on(f).expect("cowstore")
}

/// Creates `volumes` in a new store, each with its preset at PRESET_AT.
fn make_store(dir: &Path, volumes: &[(&str, u64)]) {
    let store = Store::open_or_create(dir, StoreConfig::default()).expect("create store");
    for (name, salt) in volumes {
        let v = store.create_volume(name, VOLUME_BYTES).expect("volume");
        block_on(v.write(PRESET_AT, &preset(*salt)));
        block_on(v.flush());
    }
    store.close().expect("close store");
}

/// Offline, through the engine: the pattern at 0, the preset untouched.
fn check_volume(store: &Store, name: &str, seed: &str, dev: &str, salt: u64) {
    let v = store.volume(name).expect("volume");
    let got = block_on(v.read(0, MIB));
    assert!(
        got == pattern(seed, dev),
        "volume {name}: offline bytes at 0 are not the guest's pattern (first bytes {:?})",
        String::from_utf8_lossy(&got[..64.min(got.len())])
    );
    let got = block_on(v.read(PRESET_AT, PRESET_LEN as u64));
    assert!(got == preset(salt), "volume {name}: preset changed");
}

/// A fresh store with volume `v` (preset with `salt`) served by cowstored:
/// the temporary directory, the store's path, the socket and the daemon.
fn serve_one_volume(salt: u64) -> (tempfile::TempDir, PathBuf, PathBuf, Daemon) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    make_store(&store_dir, &[("v", salt)]);
    let sock = dir.path().join("v.sock");
    let daemon = Daemon::start(&store_dir, dir.path(), &[("v", &sock)]);
    (dir, store_dir, sock, daemon)
}

#[test]
fn cowstored_disk_pattern_checked_offline() {
    let (dir, store_dir, sock, daemon) = serve_one_volume(1);
    let run = finish(start_cowvisor(dir.path(), "s1", &[&sock]));
    check_guest(&run, "vda", "s1", &md5(&preset(1)));
    daemon.stop();
    let store = Store::open(&store_dir, StoreConfig::default()).expect("reopen store");
    check_volume(&store, "v", "s1", "vda", 1);
}

#[test]
fn two_guests_on_two_volumes_of_one_cowstored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    make_store(&store_dir, &[("a", 2), ("b", 3)]);
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let daemon = Daemon::start(&store_dir, dir.path(), &[("a", &sa), ("b", &sb)]);
    // Both machines run at once against the one daemon.
    let ga = start_cowvisor(dir.path(), "ga", &[&sa]);
    let gb = start_cowvisor(dir.path(), "gb", &[&sb]);
    let (ra, rb) = (finish(ga), finish(gb));
    check_guest(&ra, "vda", "ga", &md5(&preset(2)));
    check_guest(&rb, "vda", "gb", &md5(&preset(3)));
    daemon.stop();
    let store = Store::open(&store_dir, StoreConfig::default()).expect("reopen store");
    check_volume(&store, "a", "ga", "vda", 2);
    check_volume(&store, "b", "gb", "vda", 3);
}

#[test]
fn qemu_storage_daemon_disk_pattern_checked_in_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("disk.raw");
    {
        let mut bytes = vec![0u8; VOLUME_BYTES as usize];
        bytes[PRESET_AT as usize..PRESET_AT as usize + PRESET_LEN].copy_from_slice(&preset(4));
        std::fs::write(&img, bytes).expect("write image");
    }
    let sock = dir.path().join("qsd.sock");
    let log = dir.path().join("qsd.log");
    let mut qsd = Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file0,filename={}",
            img.display()
        ))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=exp0,node-name=file0,writable=on,addr.type=unix,addr.path={}",
            sock.display()
        ))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("qsd log"))
        .spawn()
        .expect("qemu-storage-daemon must be installed (Debian package qemu-system-common / qemu-utils)");
    wait_for_sockets(&mut qsd, &[&sock], &log);
    let run = finish(start_cowvisor(dir.path(), "q1", &[&sock]));
    let _ = qsd.kill();
    let _ = qsd.wait();
    check_guest(&run, "vda", "q1", &md5(&preset(4)));
    let bytes = std::fs::read(&img).expect("read image");
    assert!(
        bytes[..MIB as usize] == pattern("q1", "vda")[..],
        "the file does not hold the guest's pattern"
    );
    assert!(bytes[PRESET_AT as usize..PRESET_AT as usize + PRESET_LEN] == preset(4)[..]);
}

#[test]
fn missing_backend_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("nobody.sock");
    let (code, _, err) = finish(start_cowvisor(dir.path(), "x", &[&sock]));
    assert_ne!(code, 0);
    assert!(
        err.contains("disk 0") && err.contains("nobody.sock"),
        "stderr does not name the disk and socket: {err}"
    );
}

/// A driver that programs its virtqueue outside RAM: the device refuses to
/// start (DEVICE_NEEDS_RESET plus a config-change interrupt), the backend
/// never sees the addresses and keeps serving; after a reset the same
/// device starts with rings inside RAM.
#[test]
fn virtqueue_outside_ram_needs_reset_and_backend_survives() {
    use hypervisor::bus::Ram;
    use hypervisor::virtio::{VhostUserBlk, VirtioMmio};

    let (_dir, _store_dir, sock, daemon) = serve_one_volume(5);
    let ram_base = 0x8000_0000u64;
    let ram = Ram::shared(ram_base, 16 << 20).expect("memfd RAM");
    let blk = VhostUserBlk::connect(&sock, &ram).expect("connect to cowstored");
    let mut dev = VirtioMmio::new(0, blk).expect("slot 0");
    let rd = |dev: &mut VirtioMmio, off: u64| dev.load(off, 4).expect("32-bit register");
    let wr = |dev: &mut VirtioMmio, off: u64, v: u64| dev.store(off, 4, v).expect("register");
    assert_eq!(rd(&mut dev, 0x000), 0x7472_6976, "magic");
    assert_eq!(rd(&mut dev, 0x004), 2, "version 2 only");
    assert_eq!(rd(&mut dev, 0x008), 2, "block device");
    // Capacity from the backend's config space: 32 MiB in sectors.
    let cap = dev.load(0x100, 8).expect("config");
    assert_eq!(cap, VOLUME_BYTES / 512);
    let program = |dev: &mut VirtioMmio, desc: u64| {
        wr(dev, 0x070, 0);
        wr(dev, 0x070, 1 | 2); // ACKNOWLEDGE | DRIVER
        wr(dev, 0x024, 1);
        wr(dev, 0x020, 1); // VERSION_1 (bit 32)
        wr(dev, 0x024, 0);
        wr(dev, 0x020, 0);
        wr(dev, 0x070, 1 | 2 | 8); // FEATURES_OK
        assert_eq!(rd(dev, 0x070) & 8, 8, "features accepted");
        wr(dev, 0x030, 0);
        assert_eq!(rd(dev, 0x034), 128);
        wr(dev, 0x038, 8);
        wr(dev, 0x080, desc & 0xffff_ffff);
        wr(dev, 0x084, desc >> 32);
        let avail = ram_base + 0x1000;
        let used = ram_base + 0x2000;
        wr(dev, 0x090, avail & 0xffff_ffff);
        wr(dev, 0x094, avail >> 32);
        wr(dev, 0x0a0, used & 0xffff_ffff);
        wr(dev, 0x0a4, used >> 32);
        wr(dev, 0x044, 1);
        wr(dev, 0x070, 1 | 2 | 8 | 4); // DRIVER_OK
        rd(dev, 0x070)
    };
    // Descriptor table at 0x1000, far below RAM.
    let status = program(&mut dev, 0x1000);
    assert_eq!(
        status & 0x40,
        0x40,
        "DEVICE_NEEDS_RESET, status {status:#x}"
    );
    assert_eq!(rd(&mut dev, 0x060) & 2, 2, "config-change interrupt");
    assert!(dev.irq_level());
    // The last byte of the table past the end of RAM: refused too.
    let status = program(&mut dev, ram_base + (16 << 20) - 64);
    assert_eq!(status & 0x40, 0x40, "ring crossing the end of RAM");
    // After a reset, rings inside RAM start the queue.
    let status = program(&mut dev, ram_base);
    assert_eq!(status, 1 | 2 | 8 | 4, "queue starts with good addresses");
    assert!(!dev.irq_level());
    drop(dev);
    daemon.stop();
}

/// The files the init's ext4 mode writes with `seed`: (path, content).
fn ext4_files(seed: &str) -> Vec<(&'static str, Vec<u8>)> {
    let big: String = (0..8192)
        .map(|i| format!("cowvisor-ext4 {seed} line {i:08}\n"))
        .collect();
    vec![
        (
            "hello.txt",
            format!("cowvisor-guest ext4 {seed} hello\n").into_bytes(),
        ),
        ("dir/big.txt", big.into_bytes()),
    ]
}

/// CRC-32C (Castagnoli), as ext4's metadata checksums use it.
fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82f6_3b78
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Offline checks of the ext4 the guest made on `img` (the whole volume):
/// the superblock (magic, label, ext4 feature flags, clean state, checksum)
/// and every block of every file present at a block boundary. Returns the
/// block size.
fn check_ext4_image(img: &[u8], seed: &str) -> usize {
    let sb = &img[1024..2048];
    assert_eq!(le16(sb, 56), 0xef53, "ext4 superblock magic");
    let label = &sb[0x78..0x88];
    let want_label = format!("cv-{seed}");
    assert_eq!(
        &label[..want_label.len()],
        want_label.as_bytes(),
        "volume label (mkfs.ext4 -L)"
    );
    let compat = le32(sb, 0x5c);
    let incompat = le32(sb, 0x60);
    let ro_compat = le32(sb, 0x64);
    eprintln!("ext4 features: compat {compat:#x} incompat {incompat:#x} ro_compat {ro_compat:#x}");
    assert_ne!(compat & 0x4, 0, "has_journal");
    for (bit, name) in [
        (0x2, "filetype"),
        (0x40, "extent"),
        (0x80, "64bit"),
        (0x200, "flex_bg"),
    ] {
        assert_ne!(incompat & bit, 0, "incompat feature {name} missing");
    }
    for (bit, name) in [
        (0x1, "sparse_super"),
        (0x2, "large_file"),
        (0x8, "huge_file"),
        (0x20, "dir_nlink"),
        (0x40, "extra_isize"),
        (0x400, "metadata_csum"),
    ] {
        assert_ne!(ro_compat & bit, 0, "ro_compat feature {name} missing");
    }
    assert_eq!(le16(sb, 0x3a) & 1, 1, "state: cleanly unmounted");
    assert!(le16(sb, 0x34) >= 1, "mounted at least once (s_mnt_count)");
    // metadata_csum: crc32c over the superblock up to s_checksum, kept
    // without the final inversion.
    assert_eq!(
        le32(sb, 0x3fc),
        !crc32c(&sb[..0x3fc]),
        "superblock checksum"
    );
    let block = 1024usize << le32(sb, 24);
    assert!(block == 1024 || block == 4096, "block size {block}");
    // File data: every block-sized piece of every file starts some block.
    let blocks: std::collections::HashSet<&[u8]> = img.chunks_exact(block).collect();
    for (name, content) in ext4_files(seed) {
        for (i, piece) in content.chunks(block).enumerate() {
            let found = if piece.len() == block {
                blocks.contains(piece)
            } else {
                img.chunks_exact(block).any(|b| b.starts_with(piece))
            };
            assert!(found, "block {i} of {name} is not on the volume");
        }
    }
    block
}

/// Linux under cowvisor makes an ext4 on a cowstored-served cowstore volume
/// with mke2fs, writes files, unmounts, mounts read-only and reads them
/// back; offline, the volume holds a clean ext4 with the files' bytes.
#[test]
fn guest_ext4_on_cowstored_volume_checked_offline() {
    let (dir, store_dir, sock, daemon) = serve_one_volume(6);
    let seed = "e1";
    let t = Instant::now();
    let (code, console, err) = finish(start_guest(
        dir.path(),
        seed,
        &format!("cowvisor_ext4={seed}"),
        &[&sock],
    ));
    eprintln!("ext4 guest run: {:.1} s", t.elapsed().as_secs_f64());
    for l in console
        .lines()
        .filter(|l| l.contains("ext4") || l.contains("EXT4"))
    {
        eprintln!("{l}");
    }
    let ctx = || format!("exit {code}\n--- console ---\n{console}\n--- stderr ---\n{err}");
    assert_eq!(code, 0, "cowvisor did not power off cleanly: {}", ctx());
    for marker in ["mkfs ok", "mounted rw", "unmounted", "mounted ro", "done"] {
        assert!(
            console.contains(&format!("cowvisor-guest: ext4 {marker}")),
            "no '{marker}': {}",
            ctx()
        );
    }
    assert!(
        console.contains("EXT4-fs (vda): mounted filesystem"),
        "the kernel's ext4 driver mounted it: {}",
        ctx()
    );
    for (name, content) in ext4_files(seed) {
        let want = md5(&content);
        for key in ["wrote", "read"] {
            let prefix = format!("cowvisor-guest: ext4 {key} {name} ");
            let got = console
                .lines()
                .find_map(|l| l.trim_end_matches('\r').strip_prefix(&prefix))
                .and_then(|r| r.split_whitespace().next());
            assert_eq!(got, Some(want.as_str()), "{key} {name}: {}", ctx());
        }
    }
    daemon.stop();
    let store = Store::open(&store_dir, StoreConfig::default()).expect("reopen store");
    let img = block_on(store.volume("v").expect("volume").read(0, VOLUME_BYTES));
    let block = check_ext4_image(&img, seed);
    eprintln!("ext4 block size {block}");
    // The host's e2fsprogs, when installed: a full fsck and the files read
    // through the filesystem's own structures.
    let path = dir.path().join("v.img");
    std::fs::write(&path, &img).expect("write image");
    drop(img);
    match Command::new("e2fsck").arg("-fn").arg(&path).output() {
        Ok(o) => assert!(
            o.status.success(),
            "e2fsck -fn: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => eprintln!("e2fsck not run: {e}"),
    }
    for (name, content) in ext4_files(seed) {
        match Command::new("debugfs")
            .arg("-R")
            .arg(format!("cat /{name}"))
            .arg(&path)
            .output()
        {
            Ok(o) => assert!(o.stdout == content, "debugfs cat /{name} differs"),
            Err(e) => eprintln!("debugfs not run: {e}"),
        }
    }
}

/// Runs tests/common/mmio-flood.S (built with `defines`) as firmware on a
/// machine whose disk 0 is `sock`; (status, console, stderr, seconds).
fn run_flood(dir: &Path, name: &str, defines: &[&str], sock: &Path) -> (i32, String, String, f64) {
    let elf = common::build_bare("mmio-flood", dir, defines);
    let args: Vec<std::ffi::OsString> = vec![
        "--bios".into(),
        elf.into(),
        "--memory".into(),
        "64".into(),
        "--max-instructions".into(),
        MAX_INSTRUCTIONS.into(),
        "--stats".into(),
        "--disk".into(),
        format!("vhost-user={}", sock.display()).into(),
    ];
    let t = Instant::now();
    let (code, console, err) = finish(spawn_cowvisor(dir, name, &args));
    (code, console, err, t.elapsed().as_secs_f64())
}

/// A guest that floods the virtio-mmio transport (every register, config
/// reads forwarded to the backend, garbage stores everywhere, QueueNotify
/// before and after start, bad descriptors, an avail index far ahead,
/// reset/restart cycles) runs to its poweroff; cowstored survives it and
/// then serves a Linux guest on the same volume, whose bytes are checked
/// offline (the bad write request's target is untouched).
#[test]
fn mmio_flood_ends_cleanly_and_backend_survives() {
    let (dir, store_dir, sock, mut daemon) = serve_one_volume(7);
    let (code, console, err, secs) = run_flood(dir.path(), "flood", &[], &sock);
    eprintln!("flood run: {secs:.1} s\n{console}{err}");
    let ctx = || format!("exit {code}\n--- console ---\n{console}\n--- stderr ---\n{err}");
    assert_eq!(
        code,
        0,
        "the flooding guest must reach its poweroff: {}",
        ctx()
    );
    for phase in [
        "regs",
        "config",
        "writes",
        "others",
        "notify",
        "start ok",
        "kicks",
        "bad",
        "stall over",
        "cycles",
        "done",
    ] {
        assert!(
            console.contains(&format!("flood: {phase}")),
            "phase {phase} missing: {}",
            ctx()
        );
    }
    assert!(!err.contains("panicked"), "{}", ctx());
    assert!(
        daemon.child.try_wait().expect("try_wait").is_none(),
        "cowstored died: {}",
        std::fs::read_to_string(&daemon.log).unwrap_or_default()
    );
    let run = finish(start_cowvisor(dir.path(), "after", &[&sock]));
    check_guest(&run, "vda", "after", &md5(&preset(7)));
    daemon.stop();
    let store = Store::open(&store_dir, StoreConfig::default()).expect("reopen store");
    check_volume(&store, "v", "after", "vda", 7);
}

/// The same flood ending in a 1-byte load of a 32-bit-only register: a
/// fault report naming the device, the address and the pc, status 3; the
/// backend lives on.
#[test]
fn mmio_bad_width_is_reported_and_backend_survives() {
    let (dir, _store_dir, sock, mut daemon) = serve_one_volume(8);
    let (code, console, err, _) = run_flood(
        dir.path(),
        "width",
        &["-DBAD_WIDTH", "-DN=16", "-DCYCLES=4"],
        &sock,
    );
    let ctx = || format!("exit {code}\n--- console ---\n{console}\n--- stderr ---\n{err}");
    assert_eq!(code, 3, "expected the fault status: {}", ctx());
    assert!(console.contains("flood: 1-byte status load"), "{}", ctx());
    assert!(!console.contains("flood: done"), "{}", ctx());
    assert!(
        err.contains("device at 0x10001070 rejects a 1-byte access"),
        "report names the device and the access: {}",
        ctx()
    );
    assert!(
        err.contains("a0 0x0000000000001234"),
        "report has registers: {}",
        ctx()
    );
    assert!(
        daemon.child.try_wait().expect("try_wait").is_none(),
        "cowstored died"
    );
    daemon.stop();
}

/// The backend dies (SIGKILL) while the flood runs: cowvisor carries on,
/// the device goes to DEVICE_NEEDS_RESET on the broken socket with a
/// bounded number of messages, the stall bound lets the wedged ring go,
/// and the guest still reaches its poweroff.
#[test]
fn mmio_flood_survives_the_backend_dying() {
    let (dir, _store_dir, sock, mut daemon) = serve_one_volume(9);
    let elf = common::build_bare("mmio-flood", dir.path(), &[]);
    let args: Vec<std::ffi::OsString> = vec![
        "--bios".into(),
        elf.into(),
        "--memory".into(),
        "64".into(),
        "--max-instructions".into(),
        MAX_INSTRUCTIONS.into(),
        "--disk".into(),
        format!("vhost-user={}", sock.display()).into(),
    ];
    let run = spawn_cowvisor(dir.path(), "dying", &args);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&run.stdout)
        .unwrap_or_default()
        .contains("flood: start ok")
    {
        assert!(
            Instant::now() < deadline,
            "the flood never started its queue"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = daemon.child.kill();
    let _ = daemon.child.wait();
    let (code, console, err) = finish(run);
    let ctx = || format!("exit {code}\n--- console ---\n{console}\n--- stderr ---\n{err}");
    assert_eq!(code, 0, "the guest must reach its poweroff: {}", ctx());
    assert!(console.contains("flood: done"), "{}", ctx());
    assert!(
        err.contains("Broken pipe"),
        "the broken socket is named: {}",
        ctx()
    );
    let messages = err.matches("device needs reset").count();
    assert!(
        (1..=8).contains(&messages),
        "{messages} reset messages: {}",
        ctx()
    );
    assert!(err.contains("further failures are counted"), "{}", ctx());
    assert!(!err.contains("panicked"), "{}", ctx());
}
