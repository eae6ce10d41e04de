//! Shared helpers of the hypervisor's integration tests: tool discovery
//! (installing through scripts/riscv-guest when absent) and cross builds.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Serializes runs of scripts/riscv-guest inside one test binary (the
/// script also takes a file lock, for separate processes).
static SCRIPT: Mutex<()> = Mutex::new(());

/// Runs scripts/riscv-guest with `args`; its stdout on success.
pub fn riscv_guest_script(args: &[&str]) -> Result<String, String> {
    let _guard = SCRIPT.lock().unwrap_or_else(|e| e.into_inner());
    let script = repo_root().join("scripts/riscv-guest");
    let out = Command::new(&script)
        .args(args)
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(format!(
            "{} {args:?} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Makes sure the cross compiler and QEMU are there, installing them via
/// `scripts/riscv-guest --tools-only` when not; fails the test otherwise.
pub fn ensure_tools() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let tools = [
            "riscv64-linux-gnu-gcc",
            "qemu-riscv64",
            "qemu-system-riscv64",
        ];
        if tools.iter().all(|t| have(t)) {
            return;
        }
        if let Err(e) = riscv_guest_script(&["--tools-only"]) {
            panic!("the ISA suite needs {tools:?}: {e}");
        }
        for t in tools {
            assert!(
                have(t),
                "{t} still missing after scripts/riscv-guest --tools-only"
            );
        }
    });
}

/// Assembles `tests/isa/<name>.S` into a static ELF in `dir`.
pub fn build_isa(name: &str, dir: &Path, extra: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/isa")
        .join(format!("{name}.S"));
    build_source(&src, dir, name, extra)
}

/// Assembles `tests/common/<name>.S` into a bare-metal ELF in `dir` (entry
/// 0x80000000, linked by tests/isa/bare.ld), to run with `cowvisor --bios`.
pub fn build_bare(name: &str, dir: &Path, extra: &[&str]) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = manifest.join("tests/common").join(format!("{name}.S"));
    let ld = format!("-Wl,-T,{}", manifest.join("tests/isa/bare.ld").display());
    let mut args = vec![
        ld.as_str(),
        "-Wl,--build-id=none",
        "-Wl,--no-warn-rwx-segments",
    ];
    args.extend_from_slice(extra);
    build_source(&src, dir, name, &args)
}

/// Assembles `src` into the static ELF `dir/name`.
fn build_source(src: &Path, dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    ensure_tools();
    let out = dir.join(name);
    let o = Command::new("riscv64-linux-gnu-gcc")
        .args([
            "-march=rv64gc",
            "-mabi=lp64d",
            "-static",
            "-nostdlib",
            "-no-pie",
        ])
        .args(extra)
        .arg("-o")
        .arg(&out)
        .arg(src)
        .output()
        .expect("run riscv64-linux-gnu-gcc");
    assert!(
        o.status.success(),
        "assembling {}: {}",
        src.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Paths printed by scripts/riscv-guest (it builds the guest when missing,
/// about 10 minutes on a fresh machine, then caches it).
pub struct Guest {
    pub image: PathBuf,
    pub initramfs: PathBuf,
    pub fw_jump: PathBuf,
}

/// The packaged guest, built or found once per test binary.
pub fn guest() -> &'static Guest {
    static GUEST: OnceLock<Guest> = OnceLock::new();
    GUEST.get_or_init(|| {
        let text = riscv_guest_script(&[]).unwrap_or_else(|e| panic!("{e}"));
        let get = |key: &str| -> PathBuf {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("scripts/riscv-guest printed no {key}=: {text}"))
                .into()
        };
        Guest {
            image: get("IMAGE"),
            initramfs: get("INITRAMFS"),
            fw_jump: get("FW_JUMP"),
        }
    })
}
