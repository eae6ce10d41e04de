//! Helpers for the QEMU end-to-end suites (tests/tests/qemu_*.rs): the guest
//! kernel and tools (prepared by `scripts/e2e-qemu-prepare`), an initramfs
//! writer (newc format, no root and no cpio needed), the `cowstored` daemon
//! as a child process, and QEMU itself (TCG; guest RAM in a shared memfd as
//! vhost-user needs).
//!
//! A guest runs `tests/guest/init.sh` as /init, which loads the virtio and
//! ext4 modules, runs the suite's script as /test.sh, and powers off. Lines
//! the script prints as `COWTEST key=value` come back as a map.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where the guest kernel, modules, busybox and QEMU are.
#[derive(Clone, Debug)]
pub struct GuestEnv {
    pub kernel: PathBuf,
    pub modules: PathBuf,
    pub busybox: PathBuf,
    pub qemu: PathBuf,
}

impl GuestEnv {
    /// Runs `scripts/e2e-qemu-prepare` (installs missing tools with apt-get,
    /// unpacks Debian's kernel). Fails, never skips, when a tool is missing.
    pub fn prepare() -> Result<GuestEnv> {
        let script = workspace().join("scripts/e2e-qemu-prepare");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "{} failed ({}): the QEMU suites need qemu-system-x86, busybox-static, e2fsprogs \
                 and Debian's linux-image-amd64; see its output above",
                script.display(),
                out.status
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let get = |k: &str| -> Result<PathBuf> {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(PathBuf::from)
                .ok_or_else(|| anyhow!("e2e-qemu-prepare printed no {k}="))
        };
        let env = GuestEnv {
            kernel: get("KERNEL")?,
            modules: get("MODULES")?,
            busybox: get("BUSYBOX")?,
            qemu: get("QEMU")?,
        };
        for p in [&env.kernel, &env.modules, &env.busybox, &env.qemu] {
            if !p.exists() {
                bail!("{} is missing after e2e-qemu-prepare", p.display());
            }
        }
        Ok(env)
    }

    /// Writes an initramfs with busybox, the modules, tests/guest/init.sh as
    /// /init and `script` as /test.sh.
    pub fn initramfs(&self, path: &Path, script: &str) -> Result<()> {
        let mut w = Newc::default();
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
            w.dir(d);
        }
        w.file("bin/busybox", &std::fs::read(&self.busybox)?, 0o755);
        let init = std::fs::read(workspace().join("tests/guest/init.sh"))?;
        w.file("init", &init, 0o755);
        w.file("test.sh", script.as_bytes(), 0o755);
        for e in std::fs::read_dir(&self.modules)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().to_string();
            w.file(
                &format!("lib/modules/{name}"),
                &std::fs::read(e.path())?,
                0o644,
            );
        }
        std::fs::write(path, w.finish())?;
        Ok(())
    }
}

/// A tiny writer of the cpio "newc" format the kernel unpacks.
#[derive(Default)]
pub struct Newc {
    out: Vec<u8>,
    ino: u32,
}

impl Newc {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            namesize,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }
    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }
    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }
    pub fn file(&mut self, name: &str, data: &[u8], perm: u32) {
        self.entry(name, 0o100000 | perm, data);
    }
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

/// Builds `cowstored` (debug, like the tests) and returns its path.
pub fn cowstored_binary() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace())
        .args(["build", "--quiet", "-p", "vhost-blk", "--bin", "cowstored"])
        .status()
        .context("building cowstored")?;
    if !status.success() {
        bail!("cargo build of cowstored failed");
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("target"));
    Ok(target.join("debug/cowstored"))
}

/// A running cowstored.
pub struct Daemon {
    pub child: Child,
    pub control: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts cowstored over `store` with `args` (e.g. `--attach v=sock`)
    /// and waits for its control socket.
    pub fn start(bin: &Path, store: &Path, dir: &Path, args: &[String]) -> Result<Daemon> {
        let control = dir.join("control.sock");
        let log = dir.join(format!(
            "cowstored-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis()
        ));
        let child = Command::new(bin)
            .arg("--store")
            .arg(store)
            .arg("--control")
            .arg(&control)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting cowstored")?;
        let mut d = Daemon {
            child,
            control,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !d.control.exists() {
            if let Some(st) = d.child.try_wait()? {
                bail!("cowstored exited early ({st}); log:\n{}", d.log_text());
            }
            if Instant::now() > deadline {
                bail!("cowstored did not start; log:\n{}", d.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One control request (a JSON value), its answer.
    pub fn call(&self, req: serde_json::Value) -> Result<serde_json::Value> {
        use std::io::{BufRead, BufReader};
        let mut s = std::os::unix::net::UnixStream::connect(&self.control)?;
        writeln!(s, "{req}")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(serde_json::from_str(&line)?)
    }

    /// SIGKILL: no flush, no close, the store left as a crash leaves it.
    /// Waits until the process is gone and removes its stale control socket
    /// (so that the next [`Daemon::start`] waits for the new one). Returns
    /// the log file.
    pub fn kill9(mut self) -> Result<PathBuf> {
        self.child.kill().context("SIGKILL cowstored")?;
        self.child
            .wait()
            .context("waiting for the killed cowstored")?;
        let _ = std::fs::remove_file(&self.control);
        Ok(self.log.clone())
    }

    /// SIGTERM, then wait (the daemon flushes and closes the store).
    pub fn stop(mut self) -> Result<()> {
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait()? {
                if !st.success() {
                    bail!("cowstored exited with {st}; log:\n{}", self.log_text());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("cowstored did not stop; log:\n{}", self.log_text());
            }
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

/// One disk of a guest: the vhost-user socket it attaches.
pub struct Guest {
    pub child: Child,
    pub serial: PathBuf,
    started: Instant,
}

impl Guest {
    /// Boots a guest with `initrd` and one vhost-user-blk disk per socket.
    pub fn start(
        env: &GuestEnv,
        initrd: &Path,
        serial: &Path,
        sockets: &[PathBuf],
    ) -> Result<Guest> {
        Guest::start_smp(env, initrd, serial, sockets, 2)
    }

    /// [`Guest::start`] with `smp` vCPUs (1 when several guests share the host).
    pub fn start_smp(
        env: &GuestEnv,
        initrd: &Path,
        serial: &Path,
        sockets: &[PathBuf],
        smp: u32,
    ) -> Result<Guest> {
        Guest::start_opts(env, initrd, serial, sockets, smp, false)
    }

    /// [`Guest::start_smp`]; with `reconnect`, QEMU's chardevs reconnect to
    /// a backend that went away (`reconnect=1`: retry every second), which
    /// the backend-restart suite needs.
    pub fn start_opts(
        env: &GuestEnv,
        initrd: &Path,
        serial: &Path,
        sockets: &[PathBuf],
        smp: u32,
        reconnect: bool,
    ) -> Result<Guest> {
        let mut cmd = Command::new(&env.qemu);
        cmd.args(["-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp"])
            .arg(smp.to_string())
            .args(["-m", "512M"])
            .args(["-object", "memory-backend-memfd,id=mem,size=512M,share=on"])
            .args(["-numa", "node,memdev=mem"])
            .arg("-kernel")
            .arg(&env.kernel)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", "console=ttyS0 quiet panic=-1"])
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()));
        for (i, s) in sockets.iter().enumerate() {
            let reconnect = if reconnect { ",reconnect=1" } else { "" };
            cmd.arg("-chardev")
                .arg(format!("socket,id=c{i},path={}{reconnect}", s.display()))
                .arg("-device")
                .arg(format!("vhost-user-blk-pci,chardev=c{i},num-queues=2"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting qemu-system-x86_64")?;
        Ok(Guest {
            child,
            serial: serial.to_path_buf(),
            started: Instant::now(),
        })
    }

    pub fn serial_text(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Waits for QEMU to exit (the guest powers off), returns the results.
    pub fn wait(mut self, timeout: Duration) -> Result<BTreeMap<String, String>> {
        loop {
            if let Some(st) = self.child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                if !st.success() {
                    bail!(
                        "qemu exited with {st}: {err}\nserial:\n{}",
                        self.serial_text()
                    );
                }
                let results = parse_results(&self.serial_text());
                if !results.contains_key("exit") {
                    bail!(
                        "guest did not finish its script; serial:\n{}",
                        self.serial_text()
                    );
                }
                return Ok(results);
            }
            if self.started.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "guest timed out after {timeout:?}; serial:\n{}",
                    self.serial_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `COWTEST key=value` lines of a serial log.
pub fn parse_results(serial: &str) -> BTreeMap<String, String> {
    serial
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').split_once("COWTEST "))
        .filter_map(|(_, kv)| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// md5 of `data`, by coreutils' md5sum (the guest prints busybox md5sum).
pub fn md5(data: &[u8]) -> Result<String> {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("md5sum")?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("md5sum stdin"))?
        .write_all(data)?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Reads `len` bytes at `offset` of a volume through the engine.
pub fn read_volume(vol: &cowstore::Volume, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len as usize);
    let chunk = 4u64 << 20;
    let mut at = offset;
    while at < offset + len {
        let n = chunk.min(offset + len - at);
        out.extend(futures::executor::block_on(vol.read(at, n))?);
        at += n;
    }
    Ok(out)
}

/// Reads `len` bytes at `offset` of a snapshot through the engine.
pub fn read_snapshot(snap: &cowstore::Snapshot, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len as usize);
    let chunk = 4u64 << 20;
    let mut at = offset;
    while at < offset + len {
        let n = chunk.min(offset + len - at);
        out.extend(futures::executor::block_on(snap.read(at, n))?);
        at += n;
    }
    Ok(out)
}

/// Copies an image file into a volume through the engine, skipping zeros.
pub fn write_image(vol: &cowstore::Volume, image: &[u8]) -> Result<()> {
    let chunk = 1usize << 20;
    futures::executor::block_on(async {
        for (i, c) in image.chunks(chunk).enumerate() {
            if c.iter().any(|&b| b != 0) {
                vol.write((i * chunk) as u64, c).await?;
            }
        }
        vol.flush().await
    })?;
    Ok(())
}
