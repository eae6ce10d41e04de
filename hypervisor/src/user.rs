//! User-mode harness: runs a static RV64 Linux ELF on one hart in U-mode
//! with bare addressing, emulating the two syscalls the conformance
//! programs use (write, exit). Its output is compared byte for byte with
//! the same program under `qemu-riscv64`.

use thiserror::Error;

use crate::bus::{BusError, Ram, RamBus};
use crate::cpu::{Engine, Event, Hart, PRV_U};
use crate::elf::{self, ElfError};

/// Guest memory of the harness: [0, 64 MiB), enough for the static test
/// programs linked at 0x10000.
const MEM_BYTES: usize = 64 << 20;

#[derive(Debug, Error)]
pub enum UserError {
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error("guest pc {pc:#x}: {source}")]
    Bus { pc: u64, source: BusError },
    #[error("guest pc {pc:#x}: unsupported syscall {nr}")]
    Syscall { pc: u64, nr: u64 },
    #[error("guest pc {pc:#x}: trap to M-mode, mcause {mcause:#x} mtval {mtval:#x}")]
    Trap { pc: u64, mcause: u64, mtval: u64 },
    #[error("guest did not exit within {0} instructions")]
    Timeout(u64),
    #[error("guest write of {len} bytes at {addr:#x} outside memory")]
    BadWrite { addr: u64, len: u64 },
}

/// What the program wrote to fd 1/2 and its exit status.
#[derive(Debug, Default)]
pub struct UserRun {
    pub stdout: Vec<u8>,
    pub exit_code: u64,
    pub instructions: u64,
}

/// Marks M-mode trap vector: a trap out of U-mode lands here and ends the run.
const TRAP_VECTOR: u64 = 0x100;

pub fn run_elf(bytes: &[u8], max_instructions: u64, engine: Engine) -> Result<UserRun, UserError> {
    let image = elf::parse(bytes, false)?;
    let mut bus = RamBus::new(Ram::new(0, MEM_BYTES), 1);
    for seg in &image.segments {
        let end = seg.paddr.checked_add(seg.mem_len);
        if end.is_none_or(|e| e > MEM_BYTES as u64) || seg.paddr < 0x1000 {
            return Err(ElfError::OutOfMemory {
                vaddr: seg.paddr,
                len: seg.mem_len,
            }
            .into());
        }
        bus.ram
            .write_bytes(seg.paddr, &seg.data)
            .ok_or(ElfError::OutOfMemory {
                vaddr: seg.paddr,
                len: seg.mem_len,
            })?;
    }
    let mut hart = Hart::new(0);
    hart.prv = PRV_U;
    hart.pc = image.entry;
    hart.ecall_exits = true;
    hart.mtvec = TRAP_VECTOR;
    hart.mcounteren = 7;
    hart.scounteren = 7;
    hart.mstatus |= 1 << 13; // FS = Initial, as Linux starts a process
    hart.x[2] = MEM_BYTES as u64 - 4096; // sp
    let mut run = UserRun::default();
    while hart.instret < max_instructions {
        let stepped = match engine {
            Engine::Interp => hart.step(&mut bus),
            Engine::Blocks => hart.step_block(&mut bus).map(|_| ()),
            Engine::Jit => hart.step_jit(&mut bus).map(|_| ()),
        };
        match stepped {
            Ok(()) => {
                if hart.prv != PRV_U {
                    return Err(UserError::Trap {
                        pc: hart.mepc,
                        mcause: hart.mcause,
                        mtval: hart.mtval,
                    });
                }
            }
            Err(Event::Ecall) => {
                let nr = hart.x[17];
                match nr {
                    64 => {
                        let (addr, len) = (hart.x[11], hart.x[12]);
                        let data = usize::try_from(len)
                            .ok()
                            .and_then(|l| bus.ram.read_bytes(addr, l))
                            .ok_or(UserError::BadWrite { addr, len })?;
                        run.stdout.extend_from_slice(data);
                        hart.x[10] = len;
                    }
                    93 | 94 => {
                        run.exit_code = hart.x[10];
                        run.instructions = hart.instret;
                        return Ok(run);
                    }
                    _ => return Err(UserError::Syscall { pc: hart.pc, nr }),
                }
                hart.pc += 4;
                hart.instret += 1;
            }
            Err(Event::Wfi) => hart.pc += 4,
            Err(Event::Bus(source)) => {
                return Err(UserError::Bus {
                    pc: hart.pc,
                    source,
                })
            }
        }
    }
    Err(UserError::Timeout(max_instructions))
}
