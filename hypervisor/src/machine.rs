//! The QEMU-'virt'-compatible machine: memory map, device tree, firmware and
//! kernel loading, and the run loop that interleaves the harts in slices
//! and keeps virtual time.
//!
//! Memory map (as QEMU virt): test finisher 0x10_0000, CLINT 0x200_0000,
//! PLIC 0xc00_0000, UART 0x1000_0000, virtio-mmio slots 0x1000_1000.. (one
//! per `--disk`, PLIC sources 1..=8; see [`crate::virtio`]), RAM at
//! 0x8000_0000 (a shared memfd).

use std::fmt::Write as _;
use std::io::Write;

use thiserror::Error;
use vm_fdt::FdtWriter;

use crate::bus::{Bus, BusError, CodePages, Ram, Reservations};
use crate::cpu::{Engine, Event, Hart, IRQ_MEI, IRQ_MSI, IRQ_MTI, IRQ_SEI};
use crate::devices::{Clint, Plic, Power, TestFinisher, Uart};
use crate::virtio::{VhostUserBlk, VirtioError, VirtioMmio};

pub const RAM_BASE: u64 = 0x8000_0000;
/// Where fw_jump (Debian's generic build) jumps: the kernel goes here.
pub const KERNEL_ADDR: u64 = 0x8020_0000;
pub const MAX_HARTS: usize = 4;
/// Timer frequency in the device tree (as QEMU virt): 10 MHz.
pub const TIMEBASE_HZ: u64 = 10_000_000;
/// Instructions a hart runs before the next one gets its turn.
const SLICE: u64 = 1024;
/// Virtual time: one timer tick per this many instructions of a hart
/// (a nominal 100 MIPS per hart), so runs are deterministic.
const INSTRUCTIONS_PER_TICK: u64 = 10;

#[derive(Debug, Error)]
pub enum MachineError {
    #[error("harts must be 1..={MAX_HARTS}, got {0}")]
    Harts(usize),
    #[error("RAM of {0} MiB is outside 16..=4096 MiB")]
    RamSize(u64),
    #[error("{what} ({len} bytes at {addr:#x}) does not fit in RAM")]
    DoesNotFit {
        what: &'static str,
        addr: u64,
        len: usize,
    },
    #[error("firmware: {0}")]
    Firmware(String),
    #[error("device tree: {0}")]
    Fdt(String),
    #[error("guest RAM: {0}")]
    Ram(std::io::Error),
    #[error("disk {index}: {source}")]
    Disk { index: usize, source: VirtioError },
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Guest powered off; the status it asked for (0 = success).
    PowerOff(u32),
    /// Guest asked for a reset (Linux does on panic with panic=-1).
    Reset,
    /// An access nothing backs: the report has pc and registers.
    Fault {
        hart: usize,
        error: BusError,
        report: String,
    },
    /// Every hart waits for an interrupt that nothing can raise.
    Deadlock { report: String },
    /// The instruction budget ran out.
    Budget { report: String },
}

/// Everything the harts reach through the bus.
pub struct MachineBus {
    pub ram: Ram,
    pub clint: Clint,
    pub plic: Plic,
    pub uart: Uart,
    pub finisher: TestFinisher,
    pub resv: Reservations,
    pub code: CodePages,
    pub mtime: u64,
    pub power: Option<Power>,
    /// virtio-mmio disks, slot i at virtio::BASE + i * SLOT_SIZE.
    pub disks: Vec<VirtioMmio>,
    /// A device register changed that may alter interrupt lines.
    pub irq_dirty: bool,
}

impl MachineBus {
    fn mmio_load(&mut self, addr: u64, size: u8) -> Option<u64> {
        if (Clint::BASE..Clint::BASE + Clint::SIZE).contains(&addr) {
            return self.clint.load(addr - Clint::BASE, size, self.mtime);
        }
        if (Plic::BASE..Plic::BASE + Plic::SIZE).contains(&addr) {
            self.irq_dirty = true;
            // A claim must see the lines as they are now.
            self.plic.set_lines(self.device_lines());
            return self.plic.load(addr - Plic::BASE);
        }
        if (Uart::BASE..Uart::BASE + Uart::SIZE).contains(&addr) {
            self.irq_dirty = true;
            return self.uart.load(addr - Uart::BASE);
        }
        if (TestFinisher::BASE..TestFinisher::BASE + TestFinisher::SIZE).contains(&addr) {
            return Some(0);
        }
        if let Some((disk, off)) = self.disk_at(addr) {
            // (irq_dirty: a config read can put the device in NEEDS_RESET.)
            let v = disk.load(off, size);
            self.irq_dirty = true;
            return v;
        }
        None
    }

    /// Whether a device answers at `addr` (for telling an access a device
    /// rejects from an access to a hole in the map).
    fn device_at(&self, addr: u64) -> bool {
        let ranges = [
            (Clint::BASE, Clint::SIZE),
            (Plic::BASE, Plic::SIZE),
            (Uart::BASE, Uart::SIZE),
            (TestFinisher::BASE, TestFinisher::SIZE),
            (
                crate::virtio::BASE,
                crate::virtio::SLOT_SIZE * self.disks.len() as u64,
            ),
        ];
        ranges
            .iter()
            .any(|&(base, size)| addr >= base && addr - base < size)
    }

    /// The error of an MMIO access nothing served.
    fn mmio_error(&self, addr: u64, size: u8) -> BusError {
        if self.device_at(addr) {
            BusError::BadAccess { addr, size }
        } else {
            BusError::Unmapped { addr, size }
        }
    }

    /// The disk whose slot holds `addr`, and the offset into the slot.
    fn disk_at(&mut self, addr: u64) -> Option<(&mut VirtioMmio, u64)> {
        let off = addr.checked_sub(crate::virtio::BASE)?;
        let slot = usize::try_from(off / crate::virtio::SLOT_SIZE).ok()?;
        let disk = self.disks.get_mut(slot)?;
        Some((disk, off % crate::virtio::SLOT_SIZE))
    }

    /// Takes the backends' completion signals into the disks' interrupt
    /// status (one non-blocking eventfd read per disk); true when any
    /// backend signalled.
    pub fn poll_disks(&mut self) -> bool {
        let mut any = false;
        for d in &mut self.disks {
            let calls = d.calls();
            if d.poll_call() {
                self.irq_dirty = true;
            }
            any |= d.calls() != calls;
        }
        any
    }

    /// True while some disk has requests the backend has not completed.
    fn disks_busy(&self) -> bool {
        self.disks.iter().any(|d| d.in_flight(&self.ram))
    }

    fn mmio_store(&mut self, addr: u64, size: u8, value: u64) -> Option<()> {
        self.irq_dirty = true;
        if (Clint::BASE..Clint::BASE + Clint::SIZE).contains(&addr) {
            return self.clint.store(addr - Clint::BASE, size, value);
        }
        if (Plic::BASE..Plic::BASE + Plic::SIZE).contains(&addr) {
            return self.plic.store(addr - Plic::BASE, value);
        }
        if (Uart::BASE..Uart::BASE + Uart::SIZE).contains(&addr) {
            return self.uart.store(addr - Uart::BASE, value);
        }
        if (TestFinisher::BASE..TestFinisher::BASE + TestFinisher::SIZE).contains(&addr) {
            if let Some(p) = self.finisher.store(addr - TestFinisher::BASE, value)? {
                self.power = Some(p);
            }
            return Some(());
        }
        if let Some((disk, off)) = self.disk_at(addr) {
            return disk.store(off, size, value);
        }
        None
    }

    /// Interrupt lines of the devices into the PLIC (bit n = source n).
    fn device_lines(&self) -> u32 {
        let mut lines = 0;
        if self.uart.irq() {
            lines |= 1 << Uart::IRQ;
        }
        for d in &self.disks {
            if d.irq_level() {
                lines |= 1 << d.irq();
            }
        }
        lines
    }

    /// Current interrupt lines into the harts' mip.
    fn irq_bits(&mut self, hart: usize) -> u64 {
        self.uart.poll_input();
        self.plic.set_lines(self.device_lines());
        let mut bits = 0;
        if self.clint.msip.get(hart).copied().unwrap_or(false) {
            bits |= IRQ_MSI;
        }
        if self.mtime >= self.clint.mtimecmp.get(hart).copied().unwrap_or(u64::MAX) {
            bits |= IRQ_MTI;
        }
        if self.plic.irq(2 * hart) {
            bits |= IRQ_MEI;
        }
        if self.plic.irq(2 * hart + 1) {
            bits |= IRQ_SEI;
        }
        bits
    }
}

impl Bus for MachineBus {
    #[inline]
    fn load(&mut self, addr: u64, size: u8) -> Result<u64, BusError> {
        if let Some(v) = self.ram.load(addr, size) {
            return Ok(v);
        }
        match self.mmio_load(addr, size) {
            Some(v) => Ok(v),
            None => Err(self.mmio_error(addr, size)),
        }
    }

    #[inline]
    fn store(&mut self, addr: u64, size: u8, value: u64) -> Result<(), BusError> {
        self.resv.on_store(addr, size);
        self.code.on_store(addr, size);
        if self.ram.store(addr, size, value).is_some() {
            return Ok(());
        }
        match self.mmio_store(addr, size, value) {
            Some(()) => Ok(()),
            None => Err(self.mmio_error(addr, size)),
        }
    }

    fn ram(&mut self) -> (u64, &mut [u8]) {
        (self.ram.base, &mut self.ram.bytes)
    }

    fn reservations(&mut self) -> &mut Reservations {
        &mut self.resv
    }

    fn code_generation(&self) -> u64 {
        self.code.generation
    }

    fn mark_code_page(&mut self, addr: u64) {
        self.code.mark(addr);
    }
}

/// What to boot.
#[derive(Debug, Clone, Default)]
pub struct BootConfig {
    pub harts: usize,
    pub ram_mib: u64,
    /// Firmware loaded at RAM_BASE (OpenSBI fw_jump.bin, or a bare-metal image).
    pub firmware: Vec<u8>,
    /// Kernel Image loaded at KERNEL_ADDR, if any.
    pub kernel: Option<Vec<u8>>,
    pub initrd: Option<Vec<u8>>,
    pub cmdline: String,
    /// vhost-user-blk sockets, one virtio-mmio disk each (slot order).
    pub disks: Vec<std::path::PathBuf>,
}

pub struct Machine {
    pub harts: Vec<Hart>,
    pub bus: MachineBus,
    pub fdt_addr: u64,
    pub engine: Engine,
    /// Real time the idle machine has waited for its disks since the last
    /// backend completion (see DISK_STALL_MS).
    disk_wait_ms: u64,
}

/// An idle machine with disk requests out waits for the backends with
/// virtual time standing still, but only this long without any completion:
/// then virtual time runs on (timer interrupts, or a deadlock report), so a
/// guest that wedged its own ring (an avail index the backend refuses) or a
/// backend that stopped answering cannot freeze the machine forever.
const DISK_STALL_MS: u64 = 2000;

impl Machine {
    pub fn new(cfg: &BootConfig, console: Box<dyn Write + Send>) -> Result<Self, MachineError> {
        if cfg.harts == 0 || cfg.harts > MAX_HARTS {
            return Err(MachineError::Harts(cfg.harts));
        }
        if !(16..=4096).contains(&cfg.ram_mib) {
            return Err(MachineError::RamSize(cfg.ram_mib));
        }
        let ram_bytes =
            usize::try_from(cfg.ram_mib << 20).map_err(|_| MachineError::RamSize(cfg.ram_mib))?;
        if cfg.disks.len() > crate::virtio::MAX_SLOTS {
            return Err(MachineError::Disk {
                index: cfg.disks.len() - 1,
                source: VirtioError::TooMany,
            });
        }
        let mut ram = Ram::shared(RAM_BASE, ram_bytes).map_err(MachineError::Ram)?;
        let put = |ram: &mut Ram, what: &'static str, addr: u64, data: &[u8]| {
            ram.write_bytes(addr, data).ok_or(MachineError::DoesNotFit {
                what,
                addr,
                len: data.len(),
            })
        };
        put(&mut ram, "firmware", RAM_BASE, &cfg.firmware)?;
        if let Some(k) = &cfg.kernel {
            put(&mut ram, "kernel", KERNEL_ADDR, k)?;
        }
        let ram_end = RAM_BASE + (cfg.ram_mib << 20);
        // As QEMU: the initrd halfway into RAM (at most 128 MiB in), the
        // device tree in the last MiB; fw_jump copies the tree to +34 MiB.
        let initrd_range = match &cfg.initrd {
            Some(data) => {
                let start = RAM_BASE + ((cfg.ram_mib << 20) / 2).min(128 << 20);
                put(&mut ram, "initrd", start, data)?;
                Some((start, start + data.len() as u64))
            }
            None => None,
        };
        let fdt_addr = ram_end - (1 << 20);
        let fdt = build_fdt(cfg, initrd_range).map_err(|e| MachineError::Fdt(e.to_string()))?;
        if let Some((_, end)) = initrd_range {
            if end > fdt_addr {
                return Err(MachineError::DoesNotFit {
                    what: "initrd",
                    addr: end,
                    len: 0,
                });
            }
        }
        put(&mut ram, "device tree", fdt_addr, &fdt)?;
        let mut harts = Vec::with_capacity(cfg.harts);
        for id in 0..cfg.harts {
            let mut h = Hart::new(id as u64);
            h.pc = RAM_BASE;
            h.x[10] = id as u64; // a0 = hartid
            h.x[11] = fdt_addr; // a1 = device tree
            harts.push(h);
        }
        let mut disks = Vec::with_capacity(cfg.disks.len());
        for (index, path) in cfg.disks.iter().enumerate() {
            let disk = VhostUserBlk::connect(path, &ram)
                .and_then(|blk| VirtioMmio::new(index, blk))
                .map_err(|source| MachineError::Disk { index, source })?;
            disks.push(disk);
        }
        let bus = MachineBus {
            ram,
            clint: Clint::new(cfg.harts),
            plic: Plic::new(cfg.harts),
            uart: Uart::new(console),
            finisher: TestFinisher,
            resv: Reservations::new(cfg.harts),
            code: CodePages::new(RAM_BASE, ram_bytes),
            mtime: 0,
            power: None,
            disks,
            irq_dirty: false,
        };
        Ok(Self {
            harts,
            bus,
            fdt_addr,
            engine: Engine::default(),
            disk_wait_ms: 0,
        })
    }

    pub fn instructions(&self) -> u64 {
        self.harts.iter().map(|h| h.instret).sum()
    }

    /// Runs until the guest stops or `budget` instructions (all harts) ran.
    pub fn run(&mut self, budget: u64) -> Stop {
        let n = self.harts.len();
        let mut executed: u64 = 0;
        loop {
            if self.bus.poll_disks() {
                self.disk_wait_ms = 0;
            }
            let mut all_waiting = true;
            for h in 0..n {
                let bits = self.bus.irq_bits(h);
                let hart = &mut self.harts[h];
                hart.mip_hw = bits;
                hart.mtime = self.bus.mtime;
                if hart.waiting {
                    if hart.wake_pending() {
                        hart.waiting = false;
                    } else {
                        continue;
                    }
                }
                all_waiting = false;
                let before = hart.instret;
                // Blocks that retire nothing (a trap at fetch) still count
                // against the slice, so a trap loop cannot starve others.
                let mut rounds = 0;
                while self.harts[h].instret.wrapping_sub(before) < SLICE && rounds < SLICE {
                    rounds += 1;
                    let hart = &mut self.harts[h];
                    // Interrupts are taken between blocks (or instructions).
                    if hart.mip() & hart.mie != 0 {
                        hart.check_interrupts();
                    }
                    let stepped = match self.engine {
                        Engine::Interp => hart.step(&mut self.bus),
                        Engine::Blocks => hart.step_block(&mut self.bus).map(|_| ()),
                        Engine::Jit => hart.step_jit(&mut self.bus).map(|_| ()),
                    };
                    match stepped {
                        Ok(()) | Err(Event::Ecall) => {}
                        Err(Event::Wfi) => break,
                        Err(Event::Bus(error)) => {
                            self.bus.uart.flush();
                            let report = self.report(h, &format!("{error}"));
                            return Stop::Fault {
                                hart: h,
                                error,
                                report,
                            };
                        }
                    }
                    if self.bus.irq_dirty {
                        self.bus.irq_dirty = false;
                        self.harts[h].mip_hw = self.bus.irq_bits(h);
                    }
                    if let Some(p) = self.bus.power {
                        self.bus.uart.flush();
                        return match p {
                            Power::Off(code) => Stop::PowerOff(code),
                            Power::Reset => Stop::Reset,
                        };
                    }
                }
                let hart = &self.harts[h];
                // The guest may rewrite minstret: wrapping, never a panic.
                executed =
                    executed.saturating_add(hart.instret.wrapping_sub(before).min(SLICE * 2));
            }
            // Time runs at a fixed rate per slice of guest work.
            self.bus.mtime += SLICE / INSTRUCTIONS_PER_TICK;
            self.bus.uart.flush_partial();
            if all_waiting {
                // Idle: jump virtual time to the next timer deadline.
                let next = self
                    .bus
                    .clint
                    .mtimecmp
                    .iter()
                    .copied()
                    .min()
                    .unwrap_or(u64::MAX);
                let anything_pending = (0..n).any(|h| {
                    let bits = self.bus.irq_bits(h);
                    (bits | self.harts[h].mip_sw) & self.harts[h].mie != 0
                });
                if !anything_pending && self.bus.uart.input_open() {
                    // Console input may still come: idle in real time a
                    // little instead of racing through virtual time.
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    self.bus.uart.poll_input();
                    if self.bus.uart.irq() {
                        continue;
                    }
                }
                if !anything_pending && self.disk_wait_ms < DISK_STALL_MS && self.bus.disks_busy() {
                    // A disk request is out: wait for the backend in real
                    // time with virtual time standing still, so the guest
                    // sees I/O take no time and a run stays reproducible
                    // whatever the backend's latency.
                    if self.wait_disks(10) {
                        self.disk_wait_ms = 0;
                    } else {
                        self.disk_wait_ms += 10;
                        if self.disk_wait_ms >= DISK_STALL_MS {
                            eprintln!(
                                "cowvisor: disk requests outstanding and no completion for \
                                 {DISK_STALL_MS} ms; virtual time runs on until the next one"
                            );
                            for d in &self.bus.disks {
                                eprintln!("  {}", d.describe(&self.bus.ram));
                            }
                        }
                    }
                    continue;
                }
                if !anything_pending {
                    if next == u64::MAX {
                        return Stop::Deadlock {
                            report: self.report(0, "all harts wait, no timer armed"),
                        };
                    }
                    self.bus.mtime = self.bus.mtime.max(next);
                }
            }
            if executed >= budget {
                return Stop::Budget {
                    report: self.report(0, "instruction budget exhausted"),
                };
            }
        }
    }

    /// Blocks until a disk's backend signals a completion or `timeout_ms`;
    /// true when one did.
    fn wait_disks(&mut self, timeout_ms: i32) -> bool {
        let mut fds: Vec<libc::pollfd> = self
            .bus
            .disks
            .iter()
            .map(|d| libc::pollfd {
                fd: d.call_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: poll(2) on a live array of fds.len() pollfd structures
        // whose descriptors the disks own; it only writes `revents`.
        unsafe {
            libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms);
        }
        self.bus.poll_disks()
    }

    /// A short human-readable state dump of one hart.
    pub fn report(&self, hart: usize, why: &str) -> String {
        let h = &self.harts[hart];
        let mut s = String::new();
        let _ = writeln!(s, "hart {hart}: {why}");
        let _ = writeln!(
            s,
            "  pc {:#018x} priv {} mstatus {:#x} mcause {:#x} mepc {:#x} mtval {:#x}",
            h.pc, h.prv, h.mstatus, h.mcause, h.mepc, h.mtval
        );
        let _ = writeln!(
            s,
            "  scause {:#x} sepc {:#x} stval {:#x} satp {:#x} instret {}",
            h.scause, h.sepc, h.stval, h.satp, h.instret
        );
        const NAMES: [&str; 32] = [
            "zero", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1", "a0", "a1", "a2", "a3",
            "a4", "a5", "a6", "a7", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11",
            "t3", "t4", "t5", "t6",
        ];
        for row in 0..8 {
            let _ = write!(s, " ");
            for col in 0..4 {
                let r = row * 4 + col;
                let _ = write!(s, " {:>4} {:#018x}", NAMES[r], h.x[r]);
            }
            let _ = writeln!(s);
        }
        for d in &self.bus.disks {
            let _ = writeln!(s, "  {}", d.describe(&self.bus.ram));
        }
        let _ = writeln!(
            s,
            "  mip {:#x} mie {:#x} plic pending {:#x} claimed {:#x} empty claims {} {:?}",
            h.mip(),
            h.mie,
            self.bus.plic.pending(),
            self.bus.plic.claimed(),
            self.bus.plic.claims[0],
            self.bus.uart
        );
        s
    }
}

/// Firmware bytes as loaded at RAM_BASE: a bare-metal ELF (entry at
/// RAM_BASE) is flattened by its physical addresses; anything else is
/// taken as a flat image.
pub fn firmware_image(bytes: Vec<u8>) -> Result<Vec<u8>, MachineError> {
    /// Bare-metal ELF images larger than this are refused.
    const MAX_FLAT_BYTES: u64 = 64 << 20;
    if !bytes.starts_with(b"\x7fELF") {
        return Ok(bytes);
    }
    let img = crate::elf::parse(&bytes, true).map_err(|e| MachineError::Firmware(e.to_string()))?;
    if img.entry != RAM_BASE {
        return Err(MachineError::Firmware(format!(
            "ELF entry {:#x} is not {RAM_BASE:#x}",
            img.entry
        )));
    }
    let mut flat = Vec::new();
    for seg in &img.segments {
        let end = seg
            .paddr
            .checked_sub(RAM_BASE)
            .and_then(|off| off.checked_add(seg.mem_len).map(|end| (off, end)))
            .filter(|&(_, end)| end <= MAX_FLAT_BYTES)
            .ok_or_else(|| {
                MachineError::Firmware(format!(
                    "ELF segment at {:#x} outside the first 64 MiB of RAM",
                    seg.paddr
                ))
            })?;
        let (off, end) = (end.0 as usize, end.1 as usize);
        if flat.len() < end {
            flat.resize(end, 0);
        }
        flat[off..off + seg.data.len()].copy_from_slice(&seg.data);
    }
    Ok(flat)
}

fn build_fdt(cfg: &BootConfig, initrd: Option<(u64, u64)>) -> Result<Vec<u8>, vm_fdt::Error> {
    let mut f = FdtWriter::new()?;
    let root = f.begin_node("")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_string("compatible", "riscv-virtio")?;
    f.property_string("model", "riscv-virtio,qemu")?;

    let chosen = f.begin_node("chosen")?;
    f.property_string("bootargs", &cfg.cmdline)?;
    f.property_string("stdout-path", "/soc/serial@10000000")?;
    if let Some((start, end)) = initrd {
        f.property_u64("linux,initrd-start", start)?;
        f.property_u64("linux,initrd-end", end)?;
    }
    f.end_node(chosen)?;

    let mem = f.begin_node(&format!("memory@{RAM_BASE:x}"))?;
    f.property_string("device_type", "memory")?;
    f.property_array_u64("reg", &[RAM_BASE, cfg.ram_mib << 20])?;
    f.end_node(mem)?;

    // phandles: 1..=harts for the per-hart interrupt controllers.
    let intc = |h: usize| h as u32 + 1;
    let plic_ph = 0x100;
    let test_ph = 0x101;
    let cpus = f.begin_node("cpus")?;
    f.property_u32("#address-cells", 1)?;
    f.property_u32("#size-cells", 0)?;
    f.property_u32("timebase-frequency", TIMEBASE_HZ as u32)?;
    for h in 0..cfg.harts {
        let cpu = f.begin_node(&format!("cpu@{h}"))?;
        f.property_string("device_type", "cpu")?;
        f.property_u32("reg", h as u32)?;
        f.property_string("status", "okay")?;
        f.property_string("compatible", "riscv")?;
        f.property_string("riscv,isa", "rv64imafdc")?;
        f.property_string("mmu-type", "riscv,sv48")?;
        let ic = f.begin_node("interrupt-controller")?;
        f.property_u32("#interrupt-cells", 1)?;
        f.property_null("interrupt-controller")?;
        f.property_string("compatible", "riscv,cpu-intc")?;
        f.property_phandle(intc(h))?;
        f.end_node(ic)?;
        f.end_node(cpu)?;
    }
    f.end_node(cpus)?;

    let soc = f.begin_node("soc")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_string("compatible", "simple-bus")?;
    f.property_null("ranges")?;

    let test = f.begin_node(&format!("test@{:x}", TestFinisher::BASE))?;
    f.property_string_list(
        "compatible",
        vec![
            "sifive,test1".into(),
            "sifive,test0".into(),
            "syscon".into(),
        ],
    )?;
    f.property_array_u64("reg", &[TestFinisher::BASE, TestFinisher::SIZE])?;
    f.property_phandle(test_ph)?;
    f.end_node(test)?;

    for (name, value) in [("reboot", 0x7777u32), ("poweroff", 0x5555)] {
        let n = f.begin_node(name)?;
        f.property_string("compatible", &format!("syscon-{name}"))?;
        f.property_u32("regmap", test_ph)?;
        f.property_u32("offset", 0)?;
        f.property_u32("value", value)?;
        f.end_node(n)?;
    }

    let uart = f.begin_node(&format!("serial@{:x}", Uart::BASE))?;
    f.property_string("compatible", "ns16550a")?;
    f.property_array_u64("reg", &[Uart::BASE, Uart::SIZE])?;
    f.property_u32("clock-frequency", 0x38_4000)?;
    f.property_u32("interrupts", Uart::IRQ)?;
    f.property_u32("interrupt-parent", plic_ph)?;
    f.end_node(uart)?;

    let plic = f.begin_node(&format!("plic@{:x}", Plic::BASE))?;
    f.property_string_list(
        "compatible",
        vec!["sifive,plic-1.0.0".into(), "riscv,plic0".into()],
    )?;
    f.property_array_u64("reg", &[Plic::BASE, Plic::SIZE])?;
    f.property_u32("#interrupt-cells", 1)?;
    f.property_u32("#address-cells", 0)?;
    f.property_null("interrupt-controller")?;
    f.property_u32("riscv,ndev", Plic::SOURCES)?;
    let mut ext = Vec::new();
    for h in 0..cfg.harts {
        ext.extend_from_slice(&[intc(h), 11, intc(h), 9]);
    }
    f.property_array_u32("interrupts-extended", &ext)?;
    f.property_phandle(plic_ph)?;
    f.end_node(plic)?;

    let clint = f.begin_node(&format!("clint@{:x}", Clint::BASE))?;
    f.property_string_list(
        "compatible",
        vec!["sifive,clint0".into(), "riscv,clint0".into()],
    )?;
    f.property_array_u64("reg", &[Clint::BASE, Clint::SIZE])?;
    let mut ext = Vec::new();
    for h in 0..cfg.harts {
        ext.extend_from_slice(&[intc(h), 3, intc(h), 7]);
    }
    f.property_array_u32("interrupts-extended", &ext)?;
    f.end_node(clint)?;

    for slot in 0..cfg.disks.len() {
        let base = crate::virtio::BASE + slot as u64 * crate::virtio::SLOT_SIZE;
        let node = f.begin_node(&format!("virtio_mmio@{base:x}"))?;
        f.property_string("compatible", "virtio,mmio")?;
        f.property_array_u64("reg", &[base, crate::virtio::SLOT_SIZE])?;
        f.property_u32("interrupts", crate::virtio::FIRST_IRQ + slot as u32)?;
        f.property_u32("interrupt-parent", plic_ph)?;
        f.end_node(node)?;
    }

    f.end_node(soc)?;
    f.end_node(root)?;
    f.finish()
}
