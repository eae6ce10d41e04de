//! The JIT engine on a whole machine: Linux from the packaged guest
//! (scripts/riscv-guest) boots to init and powers off under `--engine jit`
//! on 1 and 2 harts (translated code, chaining, the jump cache, block
//! flushes on code writes, interrupts at chain ends, SBI and SMP). The ISA
//! conformance of the translator itself is checked in tests/isa.rs.

mod common;

use std::process::Command;

fn boot_jit(smp: usize) {
    let text = common::riscv_guest_script(&[]).unwrap_or_else(|e| panic!("{e}"));
    let get = |key: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("scripts/riscv-guest printed no {key}=: {text}"))
            .to_string()
    };
    let out = Command::new(env!("CARGO_BIN_EXE_cowvisor"))
        .args(["--engine", "jit"])
        .args(["--bios", &get("FW_JUMP")])
        .args(["--kernel", &get("IMAGE")])
        .args(["--initrd", &get("INITRAMFS")])
        .args(["--append", "console=ttyS0 rdinit=/init panic=-1"])
        .args(["--smp", &smp.to_string(), "--memory", "256", "--stats"])
        // A hung guest ends here instead of hanging the suite.
        .args(["--max-instructions", "3000000000"])
        .output()
        .expect("run cowvisor");
    let console = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    let ctx = || {
        format!(
            "{:?}\n--- console ---\n{console}\n--- stderr ---\n{err}",
            out.status
        )
    };
    assert!(
        console.contains("Linux version 6.1"),
        "kernel did not start: {}",
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
    assert_eq!(out.status.code(), Some(0), "no clean poweroff: {}", ctx());
}

#[test]
fn linux_boots_under_the_jit() {
    boot_jit(1);
}

#[test]
fn linux_boots_smp_under_the_jit() {
    boot_jit(2);
}
