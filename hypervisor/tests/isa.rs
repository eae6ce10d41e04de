//! ISA conformance: each program in tests/isa/ runs under qemu-riscv64
//! (user mode) and under each of cowvisor's engines (interpreter, block
//! cache, JIT); the register and memory dumps they write must be
//! identical. The expected bytes come from QEMU in this very run, never
//! from cowvisor.

mod common;

use std::process::Command;

use hypervisor::cpu::Engine;

/// Generous: the programs retire well under a million instructions.
const MAX_INSTRUCTIONS: u64 = 50_000_000;
const DUMP_BYTES: usize = 520;

fn reg_name(i: usize) -> String {
    match i {
        0..=31 => format!("x{i}"),
        32..=63 => format!("f{}", i - 32),
        _ => "fcsr".to_string(),
    }
}

fn check(name: &str) {
    // The JIT engine translates every block on its first run here, so the
    // native code (not the block engine it falls back to for cold blocks)
    // executes every instruction of the suite.
    hypervisor::jit::set_hot_threshold(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let elf = common::build_isa(name, dir.path(), &[]);
    let q = Command::new("timeout")
        .arg("60")
        .arg("qemu-riscv64")
        .arg(&elf)
        .output()
        .expect("run qemu-riscv64");
    assert!(
        q.status.success(),
        "{name} under qemu-riscv64: {:?} {}",
        q.status,
        String::from_utf8_lossy(&q.stderr)
    );
    let expected = q.stdout;
    assert!(
        !expected.is_empty(),
        "{name}: qemu-riscv64 produced no dump"
    );
    let bytes = std::fs::read(&elf).expect("read elf");
    for engine in [Engine::Interp, Engine::Blocks, Engine::Jit] {
        compare(name, &bytes, &expected, engine);
    }
}

fn compare(name: &str, bytes: &[u8], expected: &[u8], engine: Engine) {
    let run = hypervisor::user::run_elf(bytes, MAX_INSTRUCTIONS, engine)
        .unwrap_or_else(|e| panic!("{name} under cowvisor ({engine:?}): {e}"));
    assert_eq!(run.exit_code, 0, "{name}: exit code");
    if run.stdout != expected {
        let at = run
            .stdout
            .iter()
            .zip(expected)
            .position(|(a, b)| a != b)
            .unwrap_or(run.stdout.len().min(expected.len()));
        let dword = at / 8;
        let word = |v: &[u8]| {
            v.get(dword * 8..dword * 8 + 8)
                .map(|s| {
                    format!(
                        "{:#018x}",
                        u64::from_le_bytes(s.try_into().unwrap_or([0; 8]))
                    )
                })
                .unwrap_or_else(|| "<none>".into())
        };
        panic!(
            "{name} ({engine:?}): dumps differ at byte {at} (dword {dword}, i.e. {} if this is a register dump); \
             qemu {} cowvisor {}; lengths qemu {} cowvisor {}",
            reg_name(dword % (DUMP_BYTES / 8)),
            word(expected),
            word(&run.stdout),
            expected.len(),
            run.stdout.len()
        );
    }
}

#[test]
fn integer_and_m() {
    check("int");
}

#[test]
fn float_and_double() {
    check("fp");
}

#[test]
fn atomics() {
    check("amo");
}

#[test]
fn compressed() {
    check("rvc");
}

/// Privileged architecture on the whole machine: the bare-metal program
/// prints its observations on the UART under `qemu-system-riscv64 -M virt
/// -bios none` and under cowvisor's machine; the transcripts must match.
#[test]
fn privileged_traps_paging_interrupts() {
    use hypervisor::machine::{firmware_image, BootConfig, Machine, Stop};
    hypervisor::jit::set_hot_threshold(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let ld = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/isa/bare.ld");
    let ld_arg = format!("-Wl,-T,{}", ld.display());
    let elf = common::build_isa(
        "priv",
        dir.path(),
        &[&ld_arg, "-Wl,--no-relax", "-Wl,--build-id=none"],
    );
    // h=false: the hypervisor extension would add fields cowvisor has not.
    let q = Command::new("timeout")
        .args([
            "30",
            "qemu-system-riscv64",
            "-M",
            "virt",
            "-cpu",
            "rv64,h=false",
            "-m",
            "128M",
        ])
        .args(["-bios", "none", "-nographic", "-monitor", "none", "-kernel"])
        .arg(&elf)
        .output()
        .expect("run qemu-system-riscv64");
    assert!(
        q.status.success(),
        "priv under qemu-system-riscv64: {:?} {}",
        q.status,
        String::from_utf8_lossy(&q.stderr)
    );
    let expected = String::from_utf8_lossy(&q.stdout).replace('\r', "");
    assert!(
        expected.lines().count() > 50,
        "qemu transcript too short:\n{expected}"
    );

    let cfg = BootConfig {
        harts: 1,
        ram_mib: 128,
        firmware: firmware_image(std::fs::read(&elf).expect("read elf")).expect("flatten elf"),
        kernel: None,
        initrd: None,
        cmdline: String::new(),
        disks: Vec::new(),
    };
    for engine in [Engine::Interp, Engine::Blocks, Engine::Jit] {
        let mut m = Machine::new(&cfg, Box::new(std::io::sink())).expect("machine");
        m.engine = engine;
        m.bus.uart.capture = true;
        let stop = m.run(10_000_000);
        assert_eq!(
            stop,
            Stop::PowerOff(0),
            "cowvisor ({engine:?}) did not power off cleanly"
        );
        let got = String::from_utf8_lossy(&m.bus.uart.captured).to_string();
        compare_transcripts(&expected, &got, engine);
    }
}

fn compare_transcripts(expected: &str, got: &str, engine: Engine) {
    for (i, (e, g)) in expected.lines().zip(got.lines()).enumerate() {
        assert_eq!(
            e,
            g,
            "{engine:?}: line {} (record {}) differs; qemu:\n{expected}\ncowvisor:\n{got}",
            i + 1,
            i
        );
    }
    assert_eq!(
        expected.lines().count(),
        got.lines().count(),
        "{engine:?}: record counts differ"
    );
}

#[test]
fn self_modifying_code() {
    check("smc");
}
