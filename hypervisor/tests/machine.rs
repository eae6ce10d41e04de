//! Whole-machine tests: Linux from the packaged guest (scripts/riscv-guest)
//! boots to init under cowvisor and powers off; broken guests end with a
//! clear report and a non-zero status.

mod common;

use std::process::Command;

fn boot(smp: usize, engine: &[&str]) -> (i32, String, String) {
    let g = common::guest();
    let out = Command::new(env!("CARGO_BIN_EXE_cowvisor"))
        .args(engine)
        .arg("--bios")
        .arg(&g.fw_jump)
        .arg("--kernel")
        .arg(&g.image)
        .arg("--initrd")
        .arg(&g.initramfs)
        .args([
            "--append",
            "console=ttyS0 earlycon=uart8250,mmio,0x10000000 rdinit=/init panic=-1",
        ])
        .args(["--smp", &smp.to_string(), "--memory", "256", "--stats"])
        // A hung guest ends here instead of hanging the suite.
        .args(["--max-instructions", "3000000000"])
        .output()
        .expect("run cowvisor");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn assert_boots(smp: usize, engine: &[&str]) {
    let (code, console, err) = boot(smp, engine);
    let ctx = || format!("exit {code}\n--- console ---\n{console}\n--- stderr ---\n{err}");
    assert!(console.contains("OpenSBI"), "no OpenSBI banner: {}", ctx());
    assert!(
        console.contains("Linux version 6.1"),
        "kernel did not start: {}",
        ctx()
    );
    assert!(
        console.contains("cowvisor-guest: init ok"),
        "init did not run: {}",
        ctx()
    );
    assert!(
        console.contains(&format!("cpus {smp}")),
        "guest does not see {smp} harts: {}",
        ctx()
    );
    assert!(
        console.contains("cowvisor-guest: sum 42"),
        "busybox shell arithmetic: {}",
        ctx()
    );
    assert_eq!(code, 0, "poweroff must exit 0: {}", ctx());
    eprintln!("{}", err.lines().find(|l| l.contains("MIPS")).unwrap_or(""));
}

/// The JIT on a whole machine, named explicitly (it is also the default):
/// translated code, chaining, the jump cache, block flushes on code writes,
/// interrupts at chain ends, SBI and SMP. The translator's ISA conformance
/// is checked in tests/isa.rs.
#[test]
fn linux_boots_under_the_jit() {
    assert_boots(1, &["--engine", "jit"]);
}

#[test]
fn linux_boots_smp_under_the_jit() {
    assert_boots(2, &["--engine", "jit"]);
}

#[test]
fn linux_boots_to_init_and_powers_off() {
    assert_boots(1, &[]);
}

#[test]
fn linux_boots_smp() {
    assert_boots(4, &[]);
}

#[test]
fn jump_into_unmapped_memory_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ld = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/isa/bare.ld");
    let ld_arg = format!("-Wl,-T,{}", ld.display());
    let elf = common::build_isa("badjump", dir.path(), &[&ld_arg, "-Wl,--build-id=none"]);
    let out = Command::new(env!("CARGO_BIN_EXE_cowvisor"))
        .arg("--bios")
        .arg(&elf)
        .args(["--memory", "64", "--max-instructions", "1000000"])
        .output()
        .expect("run cowvisor");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "expected the fault status: {err}"
    );
    assert!(
        err.contains("0x50000000"),
        "report names the address: {err}"
    );
    assert!(
        err.contains("pc 0x0000000050000000"),
        "report names the pc: {err}"
    );
    assert!(
        err.contains("a0 0x0000000000001234"),
        "report has registers: {err}"
    );
}

/// `cowvisor --user` (the CLI over the user-mode harness) prints what the
/// program writes, as qemu-riscv64 does, and exits with its status.
#[test]
fn user_mode_cli_matches_qemu_user() {
    let dir = tempfile::tempdir().expect("tempdir");
    let elf = common::build_isa("rvc", dir.path(), &[]);
    let q = Command::new("qemu-riscv64")
        .arg(&elf)
        .output()
        .expect("run qemu-riscv64");
    assert!(q.status.success());
    let c = Command::new(env!("CARGO_BIN_EXE_cowvisor"))
        .arg("--user")
        .arg(&elf)
        .output()
        .expect("run cowvisor --user");
    assert_eq!(
        c.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&c.stderr)
    );
    assert!(!q.stdout.is_empty());
    assert_eq!(c.stdout, q.stdout);
}

/// Console input: with --stdin, bytes typed after the shell prompt reach the
/// guest through the UART's receive interrupt, and the shell runs them.
#[test]
fn console_input_reaches_the_guest_shell() {
    use std::io::{Read, Write};
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    let g = common::guest();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cowvisor"))
        .arg("--bios")
        .arg(&g.fw_jump)
        .arg("--kernel")
        .arg(&g.image)
        .arg("--initrd")
        .arg(&g.initramfs)
        .args([
            "--append",
            "console=ttyS0 rdinit=/bin/sh panic=-1",
            "--stdin",
        ])
        .args(["--max-instructions", "3000000000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cowvisor");
    let console = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().expect("stdout");
    let sink = console.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&buf[..n]);
        }
    });
    let text =
        || String::from_utf8_lossy(&console.lock().unwrap_or_else(|e| e.into_inner())).to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    // The 8250 driver drains the receive FIFO when the tty opens: type only
    // once the shell prompts, as a person would.
    while !text().contains("/ # ") {
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            panic!("no shell prompt:\n{}", text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"echo hello-from-$((40+2))\n/bin/busybox poweroff -f\n")
        .expect("type into the guest");
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("guest did not power off:\n{}", text());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = reader.join();
    let out = text();
    assert!(
        out.contains("hello-from-42"),
        "shell did not run the input:\n{out}"
    );
    assert_eq!(status.code(), Some(0), "poweroff must exit 0:\n{out}");
}
