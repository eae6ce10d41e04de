//! cowvisor: boots a RISC-V guest on the emulated QEMU-virt-compatible machine.
//!
//!   cowvisor --bios fw_jump.bin --kernel Image --initrd initramfs.cpio \
//!            --append "console=ttyS0" --smp 2 --memory 256
//!
//! Exit status: 0 when the guest powers off cleanly; otherwise non-zero with
//! a report (guest pc and registers) on stderr.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use hypervisor::cpu::Engine;
use hypervisor::machine::{BootConfig, Machine, Stop};

#[derive(Parser, Debug)]
#[command(
    name = "cowvisor",
    about = "RV64GC hypervisor (QEMU-virt-compatible machine)"
)]
struct Args {
    /// Firmware loaded at 0x80000000 (OpenSBI fw_jump.bin) or a bare-metal
    /// ELF/flat image.
    #[arg(long, required_unless_present = "user")]
    bios: Option<PathBuf>,
    /// Instead of a machine: run a static RV64 Linux ELF in user mode
    /// (write and exit syscalls only), as the conformance tests do.
    #[arg(long, conflicts_with_all = ["bios", "kernel", "initrd"])]
    user: Option<PathBuf>,
    /// Kernel Image, loaded at 0x80200000 where fw_jump jumps.
    #[arg(long)]
    kernel: Option<PathBuf>,
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (device tree /chosen/bootargs).
    #[arg(long, default_value = "console=ttyS0")]
    append: String,
    /// Number of harts (1..=4).
    #[arg(long, default_value_t = 1)]
    smp: usize,
    /// RAM size in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u64,
    /// Stop after this many guest instructions (all harts); 0 = no limit.
    #[arg(long, default_value_t = 0)]
    max_instructions: u64,
    /// Execution engine: `jit` (hot blocks translated to x86-64 and
    /// chained), `blocks` (decoded-block cache) or `interp` (the reference
    /// interpreter, one fetch+decode per instruction).
    #[arg(long, default_value = "jit")]
    engine: String,
    /// Connect stdin to the guest's UART (console input).
    #[arg(long)]
    stdin: bool,
    /// A virtio-blk disk (virtio-mmio slot 0, 1, ... in order) served by
    /// the vhost-user-blk backend listening on PATH: `vhost-user=PATH`.
    /// Repeatable, up to 8.
    #[arg(long, value_name = "vhost-user=PATH")]
    disk: Vec<String>,
    /// Print instructions executed and the rate on exit.
    #[arg(long)]
    stats: bool,
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// Largest user-mode run: 100 G instructions.
const USER_MAX_INSTRUCTIONS: u64 = 100_000_000_000;

fn engine_of(name: &str) -> Result<Engine> {
    Ok(match name {
        "blocks" => Engine::Blocks,
        "interp" => Engine::Interp,
        "jit" => Engine::Jit,
        other => anyhow::bail!("unknown --engine {other} (jit, blocks or interp)"),
    })
}

fn run_user(args: &Args, path: &PathBuf) -> Result<()> {
    use std::io::Write;
    let bytes = read(path, "user program")?;
    let budget = if args.max_instructions == 0 {
        USER_MAX_INSTRUCTIONS
    } else {
        args.max_instructions
    };
    let started = Instant::now();
    let run = hypervisor::user::run_elf(&bytes, budget, engine_of(&args.engine)?)?;
    let secs = started.elapsed().as_secs_f64();
    std::io::stdout().write_all(&run.stdout)?;
    if args.stats {
        eprintln!(
            "cowvisor: {} instructions in {secs:.2} s ({:.1} MIPS)",
            run.instructions,
            run.instructions as f64 / secs.max(1e-9) / 1e6
        );
    }
    std::process::exit(i32::try_from(run.exit_code & 0xff).unwrap_or(1));
}

/// The socket of a `--disk vhost-user=PATH` argument.
fn disk_path(arg: &str) -> Result<PathBuf> {
    match arg.split_once('=') {
        Some(("vhost-user", path)) if !path.is_empty() => Ok(PathBuf::from(path)),
        _ => anyhow::bail!("--disk {arg}: expected vhost-user=PATH"),
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.user {
        return run_user(&args, path);
    }
    let bios = args.bios.as_ref().context("--bios is required")?;
    let cfg = BootConfig {
        harts: args.smp,
        ram_mib: args.memory,
        firmware: hypervisor::machine::firmware_image(read(bios, "firmware")?)?,
        kernel: args
            .kernel
            .as_ref()
            .map(|p| read(p, "kernel"))
            .transpose()?,
        initrd: args
            .initrd
            .as_ref()
            .map(|p| read(p, "initrd"))
            .transpose()?,
        cmdline: args.append.clone(),
        disks: args
            .disk
            .iter()
            .map(|d| disk_path(d))
            .collect::<Result<_>>()?,
    };
    let mut machine = Machine::new(&cfg, Box::new(std::io::stdout()))?;
    if args.stdin {
        // Console input: a thread forwards stdin bytes to the UART. The
        // channel's capacity bounds what waits on a guest that does not read.
        let (tx, rx) = std::sync::mpsc::sync_channel::<u8>(4096);
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 || buf[..n].iter().any(|&b| tx.send(b).is_err()) {
                    break;
                }
            }
        });
        machine.bus.uart.set_input(rx);
    }
    machine.engine = engine_of(&args.engine)?;
    let started = Instant::now();
    let budget = if args.max_instructions == 0 {
        u64::MAX
    } else {
        args.max_instructions
    };
    let stop = machine.run(budget);
    let secs = started.elapsed().as_secs_f64();
    if args.stats {
        let n = machine.instructions();
        eprintln!(
            "cowvisor: {n} instructions in {secs:.2} s ({:.1} MIPS)",
            n as f64 / secs.max(1e-9) / 1e6
        );
        let built: u64 = machine.harts.iter().map(|h| h.blocks_built).sum();
        let flushes: u64 = machine.harts.iter().map(|h| h.block_flushes).sum();
        eprintln!("cowvisor: {built} blocks decoded, {flushes} block-cache flushes");
    }
    let code = match stop {
        Stop::PowerOff(0) => 0,
        Stop::PowerOff(code) => {
            eprintln!("cowvisor: guest powered off with failure status {code}");
            i32::try_from(code).unwrap_or(1).clamp(1, 255)
        }
        Stop::Reset => {
            eprintln!("cowvisor: guest requested a reset (reboot or panic); stopping");
            2
        }
        Stop::Fault { report, .. } => {
            eprintln!("cowvisor: guest fault\n{report}");
            3
        }
        Stop::Deadlock { report } => {
            eprintln!("cowvisor: guest deadlocked\n{report}");
            4
        }
        Stop::Budget { report } => {
            eprintln!("cowvisor: instruction budget reached\n{report}");
            5
        }
    };
    std::process::exit(code);
}
