//! The reference interpreter: one RV64GC hart with M/S/U modes, traps and
//! interrupts, Sv39/Sv48 paging with a software TLB and hardware A/D updates.
//! Any faster execution engine is checked against this one.

use crate::bus::{Bus, BusError};
use crate::decode::{decode, AluOp, AmoOp, BranchOp, CsrOp, Fp, Inst, LoadOp, MulOp, StoreOp};
use crate::fpu;

pub const PRV_U: u8 = 0;
pub const PRV_S: u8 = 1;
pub const PRV_M: u8 = 3;

// mstatus fields
pub const MSTATUS_SIE: u64 = 1 << 1;
pub const MSTATUS_MIE: u64 = 1 << 3;
pub const MSTATUS_SPIE: u64 = 1 << 5;
pub const MSTATUS_MPIE: u64 = 1 << 7;
pub const MSTATUS_SPP: u64 = 1 << 8;
pub const MSTATUS_MPP: u64 = 3 << 11;
pub const MSTATUS_FS: u64 = 3 << 13;
pub const MSTATUS_MPRV: u64 = 1 << 17;
pub const MSTATUS_SUM: u64 = 1 << 18;
pub const MSTATUS_MXR: u64 = 1 << 19;
pub const MSTATUS_TVM: u64 = 1 << 20;
pub const MSTATUS_TW: u64 = 1 << 21;
pub const MSTATUS_TSR: u64 = 1 << 22;
pub const MSTATUS_UXL: u64 = 3 << 32;
pub const MSTATUS_SXL: u64 = 3 << 34;
pub const MSTATUS_SD: u64 = 1 << 63;

const MSTATUS_WMASK: u64 = MSTATUS_SIE
    | MSTATUS_MIE
    | MSTATUS_SPIE
    | MSTATUS_MPIE
    | MSTATUS_SPP
    | MSTATUS_MPP
    | MSTATUS_FS
    | MSTATUS_MPRV
    | MSTATUS_SUM
    | MSTATUS_MXR
    | MSTATUS_TVM
    | MSTATUS_TW
    | MSTATUS_TSR;
/// UXL = SXL = 2: U and S run with XLEN 64.
const XLEN64_FIELDS: u64 = (2 << 32) | (2 << 34);
const SSTATUS_MASK: u64 = MSTATUS_SIE
    | MSTATUS_SPIE
    | MSTATUS_SPP
    | MSTATUS_FS
    | MSTATUS_SUM
    | MSTATUS_MXR
    | MSTATUS_UXL
    | MSTATUS_SD;

// Interrupt bits (mip/mie)
pub const IRQ_SSI: u64 = 1 << 1;
pub const IRQ_MSI: u64 = 1 << 3;
pub const IRQ_STI: u64 = 1 << 5;
pub const IRQ_MTI: u64 = 1 << 7;
pub const IRQ_SEI: u64 = 1 << 9;
pub const IRQ_MEI: u64 = 1 << 11;
const S_IRQS: u64 = IRQ_SSI | IRQ_STI | IRQ_SEI;
const ALL_IRQS: u64 = S_IRQS | IRQ_MSI | IRQ_MTI | IRQ_MEI;

// Exception causes
pub const EXC_INST_MISALIGNED: u64 = 0;
pub const EXC_INST_ACCESS: u64 = 1;
pub const EXC_ILLEGAL: u64 = 2;
pub const EXC_BREAKPOINT: u64 = 3;
pub const EXC_LOAD_ACCESS: u64 = 5;
pub const EXC_STORE_MISALIGNED: u64 = 6;
pub const EXC_STORE_ACCESS: u64 = 7;
pub const EXC_ECALL_U: u64 = 8;
pub const EXC_INST_PAGE: u64 = 12;
pub const EXC_LOAD_PAGE: u64 = 13;
pub const EXC_STORE_PAGE: u64 = 15;
const INTERRUPT: u64 = 1 << 63;

/// A synchronous exception about to be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trap {
    pub cause: u64,
    pub tval: u64,
}

/// How instructions are executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// Fetch and decode every instruction: the reference.
    Interp,
    /// Decode each basic block once, cache it by physical address.
    Blocks,
    /// Translate each hot basic block to x86-64 once, cache and chain it
    /// (src/jit/); cold blocks run in the block engine.
    #[default]
    Jit,
}

/// Why [`Hart::step`] did not simply retire an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// An ecall when the hart runs with `ecall_exits` (user-mode harness).
    Ecall,
    /// The hart executed wfi and waits for an interrupt.
    Wfi,
    /// An access to physical memory that nothing backs.
    Bus(BusError),
}

pub(crate) enum Fault {
    Trap(Trap),
    Event(Event),
}

impl From<Trap> for Fault {
    fn from(t: Trap) -> Self {
        Fault::Trap(t)
    }
}

fn trap(cause: u64, tval: u64) -> Fault {
    Fault::Trap(Trap { cause, tval })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Fetch,
    Load,
    Store,
}

impl Access {
    fn page_fault(self) -> u64 {
        match self {
            Access::Fetch => EXC_INST_PAGE,
            Access::Load => EXC_LOAD_PAGE,
            Access::Store => EXC_STORE_PAGE,
        }
    }
    fn access_fault(self) -> u64 {
        match self {
            Access::Fetch => EXC_INST_ACCESS,
            Access::Load => EXC_LOAD_ACCESS,
            Access::Store => EXC_STORE_ACCESS,
        }
    }
}

const TLB_SIZE: usize = 256;

/// One cached 4 KiB translation (superpages are cached per 4 KiB piece).
#[derive(Debug, Clone, Copy, Default)]
struct TlbEntry {
    /// Virtual page number + 1; 0 marks an empty slot.
    tag: u64,
    ppage: u64,
    /// PTE flag bits (R W X U ... D) as in the page table.
    flags: u64,
}

const PTE_V: u64 = 1;
const PTE_R: u64 = 2;
const PTE_W: u64 = 4;
const PTE_X: u64 = 8;
const PTE_U: u64 = 16;
const PTE_A: u64 = 64;
const PTE_D: u64 = 128;

/// Architectural state of one hart.
#[derive(Debug, Clone)]
pub struct Hart {
    pub id: u64,
    pub x: [u64; 32],
    pub f: [u64; 32],
    pub pc: u64,
    pub prv: u8,
    pub mstatus: u64,
    pub medeleg: u64,
    pub mideleg: u64,
    pub mie: u64,
    /// Software-writable pending bits (SSIP, STIP, SEIP).
    pub mip_sw: u64,
    /// Pending bits driven by devices (MSIP, MTIP, MEIP, SEIP), set by the machine.
    pub mip_hw: u64,
    pub mtvec: u64,
    pub mscratch: u64,
    pub mepc: u64,
    pub mcause: u64,
    pub mtval: u64,
    pub mcounteren: u64,
    pub scounteren: u64,
    pub stvec: u64,
    pub sscratch: u64,
    pub sepc: u64,
    pub scause: u64,
    pub stval: u64,
    pub satp: u64,
    pub fflags: u8,
    pub frm: u8,
    pub pmpcfg: [u64; 16],
    pub pmpaddr: [u64; 64],
    pub instret: u64,
    /// Current value of the machine timer, kept up to date by the machine.
    pub mtime: u64,
    /// Return [`Event::Ecall`] instead of trapping (user-mode test harness).
    pub ecall_exits: bool,
    /// Set by wfi, cleared when an interrupt becomes pending.
    pub waiting: bool,
    tlb: Vec<TlbEntry>,
    blocks: BlockCache,
    /// Blocks decoded and whole-cache flushes, for --stats.
    pub blocks_built: u64,
    pub block_flushes: u64,
    /// Translated native code (the JIT engine).
    pub(crate) jit: crate::jit::JitState,
}

impl Hart {
    pub fn new(id: u64) -> Self {
        Self {
            id,
            x: [0; 32],
            f: [0; 32],
            pc: 0,
            prv: PRV_M,
            mstatus: XLEN64_FIELDS,
            medeleg: 0,
            mideleg: 0,
            mie: 0,
            mip_sw: 0,
            mip_hw: 0,
            mtvec: 0,
            mscratch: 0,
            mepc: 0,
            mcause: 0,
            mtval: 0,
            mcounteren: 0,
            scounteren: 0,
            stvec: 0,
            sscratch: 0,
            sepc: 0,
            scause: 0,
            stval: 0,
            satp: 0,
            fflags: 0,
            frm: 0,
            pmpcfg: [0; 16],
            pmpaddr: [0; 64],
            instret: 0,
            mtime: 0,
            ecall_exits: false,
            waiting: false,
            tlb: vec![TlbEntry::default(); TLB_SIZE],
            blocks: BlockCache::new(),
            blocks_built: 0,
            block_flushes: 0,
            jit: crate::jit::JitState::default(),
        }
    }

    pub fn mip(&self) -> u64 {
        self.mip_sw | self.mip_hw
    }

    pub fn flush_tlb(&mut self) {
        self.tlb.fill(TlbEntry::default());
        self.jit.flush_tlb();
    }

    /// Interrupt that would be taken now, if any (cause number).
    pub fn pending_interrupt(&self) -> Option<u64> {
        let pending = self.mip() & self.mie;
        if pending == 0 {
            return None;
        }
        let m_enabled = self.prv < PRV_M || self.mstatus & MSTATUS_MIE != 0;
        let s_enabled = self.prv < PRV_S || (self.prv == PRV_S && self.mstatus & MSTATUS_SIE != 0);
        let m_set = if m_enabled {
            pending & !self.mideleg
        } else {
            0
        };
        let s_set = if s_enabled { pending & self.mideleg } else { 0 };
        let set = if m_set != 0 { m_set } else { s_set };
        [11u64, 3, 7, 9, 1, 5]
            .into_iter()
            .find(|&bit| set & (1 << bit) != 0)
    }

    /// True when some enabled-in-mie interrupt is pending (wakes wfi even
    /// when globally disabled).
    pub fn wake_pending(&self) -> bool {
        self.mip() & self.mie != 0
    }

    /// Takes an exception or interrupt: delegation, status stack, vectoring.
    pub fn take_trap(&mut self, cause: u64, tval: u64, interrupt: bool) {
        let deleg = if interrupt {
            self.mideleg
        } else {
            self.medeleg
        };
        let code = cause & 63;
        if self.prv <= PRV_S && (deleg >> code) & 1 != 0 {
            self.scause = cause | if interrupt { INTERRUPT } else { 0 };
            self.sepc = self.pc;
            self.stval = tval;
            let sie = self.mstatus & MSTATUS_SIE != 0;
            self.mstatus &= !(MSTATUS_SPIE | MSTATUS_SPP | MSTATUS_SIE);
            if sie {
                self.mstatus |= MSTATUS_SPIE;
            }
            if self.prv == PRV_S {
                self.mstatus |= MSTATUS_SPP;
            }
            self.prv = PRV_S;
            self.pc = vector(self.stvec, code, interrupt);
        } else {
            self.mcause = cause | if interrupt { INTERRUPT } else { 0 };
            self.mepc = self.pc;
            self.mtval = tval;
            let mie = self.mstatus & MSTATUS_MIE != 0;
            self.mstatus &= !(MSTATUS_MPIE | MSTATUS_MPP | MSTATUS_MIE);
            if mie {
                self.mstatus |= MSTATUS_MPIE;
            }
            self.mstatus |= u64::from(self.prv) << 11;
            self.prv = PRV_M;
            self.pc = vector(self.mtvec, code, interrupt);
        }
    }

    /// Takes a pending interrupt if one is enabled; returns whether it did.
    pub fn check_interrupts(&mut self) -> bool {
        if let Some(cause) = self.pending_interrupt() {
            self.waiting = false;
            self.take_trap(cause, 0, true);
            true
        } else {
            false
        }
    }

    /// Executes one instruction (or takes the exception it raises).
    #[inline]
    pub fn step<B: Bus>(&mut self, bus: &mut B) -> Result<(), Event> {
        match self.exec_one(bus) {
            Ok(()) => {
                self.instret = self.instret.wrapping_add(1);
                Ok(())
            }
            Err(Fault::Trap(t)) => {
                self.take_trap(t.cause, t.tval, false);
                Ok(())
            }
            Err(Fault::Event(e)) => Err(e),
        }
    }

    /// Executes one basic block through the block cache: the block at the
    /// physical address of pc is decoded once and reused until code memory
    /// changes (a store to a page holding cached code, or fence.i). Returns
    /// the number of instructions retired. Interrupts are the caller's, at
    /// block boundaries.
    pub fn step_block<B: Bus>(&mut self, bus: &mut B) -> Result<u64, Event> {
        let gen = bus.code_generation();
        if gen != self.blocks.generation {
            self.blocks.flush(gen);
            self.block_flushes += 1;
        }
        let pa = match self.translate(bus, self.pc, Access::Fetch) {
            Ok(pa) => pa,
            Err(Fault::Trap(t)) => {
                self.take_trap(t.cause, t.tval, false);
                return Ok(0);
            }
            Err(Fault::Event(e)) => return Err(e),
        };
        let block = match self.blocks.get(pa) {
            Some(b) => b,
            None => match build_block(bus, pa) {
                Some(b) => {
                    self.blocks_built += 1;
                    bus.mark_code_page(pa);
                    if self.jit.active() {
                        // The JIT's cold path: no store may bypass the bus
                        // on this page from now on.
                        self.jit.code_page_marked();
                    }
                    self.blocks.insert(pa, b.clone());
                    b
                }
                // First instruction straddles a page or is not RAM: the
                // plain path handles (and reports) it.
                None => return self.step(bus).map(|()| 1),
            },
        };
        let mut retired = 0;
        for e in block.iter() {
            match self.exec(bus, e.inst, e.len, e.raw) {
                Ok(()) => {
                    retired += 1;
                }
                Err(Fault::Trap(t)) => {
                    self.take_trap(t.cause, t.tval, false);
                    break;
                }
                Err(Fault::Event(ev)) => {
                    self.instret = self.instret.wrapping_add(retired);
                    if ev == Event::Wfi {
                        // wfi retired (pc already moved past it).
                        self.instret = self.instret.wrapping_add(1);
                    }
                    return Err(ev);
                }
            }
            // Self-modifying code: this block may be stale now.
            if bus.code_generation() != gen {
                break;
            }
        }
        self.instret = self.instret.wrapping_add(retired);
        Ok(retired)
    }

    /// Forgets every cached block (fence.i, or an external code change).
    pub fn flush_blocks(&mut self) {
        self.block_flushes += 1;
        let gen = self.blocks.generation;
        self.blocks.flush(gen);
        // Translated code too; deferred to the JIT dispatcher, since this
        // may run inside a native block (fence.i).
        self.jit.flush_pending = true;
    }

    // ---- memory -------------------------------------------------------

    pub(crate) fn effective_prv(&self, acc: Access) -> u8 {
        if acc != Access::Fetch && self.mstatus & MSTATUS_MPRV != 0 {
            ((self.mstatus >> 11) & 3) as u8
        } else {
            self.prv
        }
    }

    pub(crate) fn translate<B: Bus>(
        &mut self,
        bus: &mut B,
        va: u64,
        acc: Access,
    ) -> Result<u64, Fault> {
        let prv = self.effective_prv(acc);
        let mode = self.satp >> 60;
        if prv == PRV_M || mode == 0 {
            return Ok(va);
        }
        let levels: u32 = if mode == 9 { 4 } else { 3 };
        let va_bits = 12 + 9 * levels;
        // The upper bits must copy the top VA bit.
        let top = ((va as i64) >> (va_bits - 1)) as u64;
        if top != 0 && top != u64::MAX {
            return Err(trap(acc.page_fault(), va));
        }
        let vpn = (va >> 12) & ((1 << (va_bits - 12)) - 1);
        let slot = (vpn as usize) % TLB_SIZE;
        let e = self.tlb[slot];
        if e.tag == vpn + 1 && (acc != Access::Store || e.flags & PTE_D != 0) {
            self.check_perm(e.flags, prv, acc, va)?;
            return Ok(e.ppage | (va & 0xfff));
        }
        let (ppage, flags) = self.walk(bus, va, acc, prv, levels)?;
        self.tlb[slot] = TlbEntry {
            tag: vpn + 1,
            ppage,
            flags,
        };
        Ok(ppage | (va & 0xfff))
    }

    fn check_perm(&self, flags: u64, prv: u8, acc: Access, va: u64) -> Result<(), Fault> {
        let user_page = flags & PTE_U != 0;
        let ok_mode = if prv == PRV_U {
            user_page
        } else {
            !user_page || (acc != Access::Fetch && self.mstatus & MSTATUS_SUM != 0)
        };
        let ok_kind = match acc {
            Access::Fetch => flags & PTE_X != 0,
            Access::Load => {
                flags & PTE_R != 0 || (self.mstatus & MSTATUS_MXR != 0 && flags & PTE_X != 0)
            }
            Access::Store => flags & PTE_W != 0,
        };
        if ok_mode && ok_kind {
            Ok(())
        } else {
            Err(trap(acc.page_fault(), va))
        }
    }

    fn walk<B: Bus>(
        &mut self,
        bus: &mut B,
        va: u64,
        acc: Access,
        prv: u8,
        levels: u32,
    ) -> Result<(u64, u64), Fault> {
        let pf = || trap(acc.page_fault(), va);
        let mut table = (self.satp & ((1 << 44) - 1)) << 12;
        let mut level = levels;
        while level > 0 {
            level -= 1;
            let idx = (va >> (12 + 9 * level)) & 0x1ff;
            let pte_addr = table + idx * 8;
            let pte = bus
                .load(pte_addr, 8)
                .map_err(|_| trap(acc.access_fault(), va))?;
            if pte & PTE_V == 0 || (pte & PTE_R == 0 && pte & PTE_W != 0) || pte >> 54 != 0 {
                return Err(pf());
            }
            let ppn = (pte >> 10) & ((1 << 44) - 1);
            if pte & (PTE_R | PTE_X) == 0 {
                if pte & (PTE_A | PTE_D | PTE_U) != 0 {
                    return Err(pf());
                }
                table = ppn << 12;
                continue;
            }
            // Leaf. A superpage must be aligned to its size.
            let low_ppn_mask = (1u64 << (9 * level)) - 1;
            if ppn & low_ppn_mask != 0 {
                return Err(pf());
            }
            self.check_perm(pte, prv, acc, va)?;
            let mut new_pte = pte | PTE_A;
            if acc == Access::Store {
                new_pte |= PTE_D;
            }
            if new_pte != pte {
                bus.store(pte_addr, 8, new_pte)
                    .map_err(|_| trap(acc.access_fault(), va))?;
            }
            let page_in_super = (va >> 12) & low_ppn_mask;
            let ppage = (ppn | page_in_super) << 12;
            return Ok((ppage, new_pte & 0xff));
        }
        Err(pf())
    }

    pub(crate) fn load<B: Bus>(&mut self, bus: &mut B, va: u64, size: u8) -> Result<u64, Fault> {
        if (va & 0xfff) + u64::from(size) > 0x1000 {
            // Crosses a page: byte by byte, each translated.
            let mut v = 0u64;
            for i in 0..u64::from(size) {
                let pa = self.translate(bus, va.wrapping_add(i), Access::Load)?;
                let b = bus.load(pa, 1).map_err(|e| Fault::Event(Event::Bus(e)))?;
                v |= b << (8 * i);
            }
            return Ok(v);
        }
        let pa = self.translate(bus, va, Access::Load)?;
        bus.load(pa, size).map_err(|e| Fault::Event(Event::Bus(e)))
    }

    pub(crate) fn store<B: Bus>(
        &mut self,
        bus: &mut B,
        va: u64,
        size: u8,
        value: u64,
    ) -> Result<(), Fault> {
        if (va & 0xfff) + u64::from(size) > 0x1000 {
            // Translate every byte first so a fault leaves memory untouched.
            let mut pas = [0u64; 8];
            for (i, pa) in pas.iter_mut().enumerate().take(usize::from(size)) {
                *pa = self.translate(bus, va.wrapping_add(i as u64), Access::Store)?;
            }
            for (i, pa) in pas.iter().enumerate().take(usize::from(size)) {
                bus.store(*pa, 1, value >> (8 * i))
                    .map_err(|e| Fault::Event(Event::Bus(e)))?;
            }
            return Ok(());
        }
        let pa = self.translate(bus, va, Access::Store)?;
        bus.store(pa, size, value)
            .map_err(|e| Fault::Event(Event::Bus(e)))
    }

    fn fetch<B: Bus>(&mut self, bus: &mut B) -> Result<u32, Fault> {
        let pc = self.pc;
        let pa = self.translate(bus, pc, Access::Fetch)?;
        let lo = bus.load(pa, 2).map_err(|e| Fault::Event(Event::Bus(e)))? as u32;
        if lo & 3 != 3 {
            return Ok(lo);
        }
        let pc2 = pc.wrapping_add(2);
        let pa2 = if pc2 & 0xfff == 0 {
            // The second half lies on the next page; a fault there reports
            // the address of that half.
            match self.translate(bus, pc2, Access::Fetch) {
                Ok(p) => p,
                Err(Fault::Trap(t)) => return Err(trap(t.cause, pc2)),
                Err(e) => return Err(e),
            }
        } else {
            pa + 2
        };
        let hi = bus.load(pa2, 2).map_err(|e| Fault::Event(Event::Bus(e)))? as u32;
        Ok(lo | (hi << 16))
    }

    // ---- execution ----------------------------------------------------

    #[inline]
    pub(crate) fn set_x(&mut self, rd: u8, v: u64) {
        if rd != 0 {
            self.x[usize::from(rd)] = v;
        }
    }

    fn set_f(&mut self, rd: u8, v: u64) {
        self.f[usize::from(rd)] = v;
        self.mstatus |= MSTATUS_FS;
    }

    fn fp_enabled(&self) -> bool {
        self.mstatus & MSTATUS_FS != 0
    }

    fn add_fflags(&mut self, fl: u8) {
        if fl != 0 {
            self.fflags |= fl;
            self.mstatus |= MSTATUS_FS;
        }
    }

    fn exec_one<B: Bus>(&mut self, bus: &mut B) -> Result<(), Fault> {
        let raw = self.fetch(bus)?;
        let (inst, len) = decode(raw);
        self.exec(bus, inst, len, raw)
    }

    /// Executes one decoded instruction at `self.pc`.
    #[inline]
    pub(crate) fn exec<B: Bus>(
        &mut self,
        bus: &mut B,
        inst: Inst,
        len: u8,
        raw: u32,
    ) -> Result<(), Fault> {
        let pc = self.pc;
        let next = pc.wrapping_add(u64::from(len));
        let raw_bits = if len == 2 {
            u64::from(raw & 0xffff)
        } else {
            u64::from(raw)
        };
        let illegal = || trap(EXC_ILLEGAL, raw_bits);
        macro_rules! x {
            ($r:expr) => {
                self.x[usize::from($r)]
            };
        }
        match inst {
            Inst::Lui { rd, imm } => self.set_x(rd, imm as u64),
            Inst::Auipc { rd, imm } => self.set_x(rd, pc.wrapping_add(imm as u64)),
            Inst::Jal { rd, off } => {
                self.set_x(rd, next);
                self.pc = pc.wrapping_add(off as u64);
                return Ok(());
            }
            Inst::Jalr { rd, rs1, off } => {
                let target = x!(rs1).wrapping_add(off as u64) & !1;
                self.set_x(rd, next);
                self.pc = target;
                return Ok(());
            }
            Inst::Branch { op, rs1, rs2, off } => {
                let (a, b) = (x!(rs1), x!(rs2));
                let taken = match op {
                    BranchOp::Eq => a == b,
                    BranchOp::Ne => a != b,
                    BranchOp::Lt => (a as i64) < (b as i64),
                    BranchOp::Ge => (a as i64) >= (b as i64),
                    BranchOp::Ltu => a < b,
                    BranchOp::Geu => a >= b,
                };
                if taken {
                    self.pc = pc.wrapping_add(off as u64);
                    return Ok(());
                }
            }
            Inst::Load { op, rd, rs1, off } => {
                let va = x!(rs1).wrapping_add(off as u64);
                let v = match op {
                    LoadOp::B => self.load(bus, va, 1)? as i8 as i64 as u64,
                    LoadOp::H => self.load(bus, va, 2)? as i16 as i64 as u64,
                    LoadOp::W => self.load(bus, va, 4)? as i32 as i64 as u64,
                    LoadOp::D => self.load(bus, va, 8)?,
                    LoadOp::Bu => self.load(bus, va, 1)?,
                    LoadOp::Hu => self.load(bus, va, 2)?,
                    LoadOp::Wu => self.load(bus, va, 4)?,
                };
                self.set_x(rd, v);
            }
            Inst::Store { op, rs1, rs2, off } => {
                let va = x!(rs1).wrapping_add(off as u64);
                let size = match op {
                    StoreOp::B => 1,
                    StoreOp::H => 2,
                    StoreOp::W => 4,
                    StoreOp::D => 8,
                };
                let v = x!(rs2);
                self.store(bus, va, size, v)?;
            }
            Inst::OpImm {
                op,
                word,
                rd,
                rs1,
                imm,
            } => {
                let v = alu(op, word, x!(rs1), imm as u64);
                self.set_x(rd, v);
            }
            Inst::Op {
                op,
                word,
                rd,
                rs1,
                rs2,
            } => {
                let v = alu(op, word, x!(rs1), x!(rs2));
                self.set_x(rd, v);
            }
            Inst::MulDiv {
                op,
                word,
                rd,
                rs1,
                rs2,
            } => {
                let v = muldiv(op, word, x!(rs1), x!(rs2));
                self.set_x(rd, v);
            }
            // A host full barrier: RAM is shared with vhost-user backends,
            // and the virtqueue protocol's Dekker-style checks (driver
            // writes avail/used_event then reads used idx while the device
            // does the converse) need store->load order, which x86's store
            // buffer does not give without mfence. Harts themselves run on
            // one thread and need nothing.
            Inst::Fence => std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst),
            Inst::FenceI => self.flush_blocks(),
            Inst::Ecall => {
                if self.ecall_exits {
                    return Err(Fault::Event(Event::Ecall));
                }
                return Err(trap(EXC_ECALL_U + u64::from(self.prv), 0));
            }
            // tval 0 for ebreak, as QEMU (the spec allows pc or 0).
            Inst::Ebreak => return Err(trap(EXC_BREAKPOINT, 0)),
            Inst::Mret => {
                if self.prv != PRV_M {
                    return Err(illegal());
                }
                let mpp = ((self.mstatus >> 11) & 3) as u8;
                let mpie = self.mstatus & MSTATUS_MPIE != 0;
                self.mstatus &= !(MSTATUS_MIE | MSTATUS_MPP);
                if mpie {
                    self.mstatus |= MSTATUS_MIE;
                }
                self.mstatus |= MSTATUS_MPIE;
                if mpp != PRV_M {
                    self.mstatus &= !MSTATUS_MPRV;
                }
                self.prv = mpp;
                self.pc = self.mepc;
                return Ok(());
            }
            Inst::Sret => {
                if self.prv == PRV_U || (self.prv == PRV_S && self.mstatus & MSTATUS_TSR != 0) {
                    return Err(illegal());
                }
                let spp = if self.mstatus & MSTATUS_SPP != 0 {
                    PRV_S
                } else {
                    PRV_U
                };
                let spie = self.mstatus & MSTATUS_SPIE != 0;
                self.mstatus &= !(MSTATUS_SIE | MSTATUS_SPP | MSTATUS_MPRV);
                if spie {
                    self.mstatus |= MSTATUS_SIE;
                }
                self.mstatus |= MSTATUS_SPIE;
                self.prv = spp;
                self.pc = self.sepc;
                return Ok(());
            }
            Inst::Wfi => {
                if self.prv == PRV_U || (self.prv == PRV_S && self.mstatus & MSTATUS_TW != 0) {
                    return Err(illegal());
                }
                self.pc = next;
                if !self.wake_pending() {
                    self.waiting = true;
                    return Err(Fault::Event(Event::Wfi));
                }
                return Ok(());
            }
            Inst::SfenceVma { .. } => {
                if self.prv == PRV_U || (self.prv == PRV_S && self.mstatus & MSTATUS_TVM != 0) {
                    return Err(illegal());
                }
                self.flush_tlb();
            }
            Inst::Csr {
                op,
                imm,
                rd,
                src,
                csr,
            } => {
                let operand = if imm { u64::from(src) } else { x!(src) };
                // csrrs/csrrc with x0 (or uimm 0) do not write, so read-only
                // CSRs may be read that way.
                let writes = op == CsrOp::Rw || src != 0;
                let old = self.csr_read(csr, raw_bits)?;
                if writes {
                    if csr >> 10 == 3 {
                        return Err(illegal());
                    }
                    // mip.SEIP reads as the software bit OR the PLIC's
                    // line, but csrrs/csrrc modify the software bit alone
                    // (privileged spec 3.1.9): otherwise OpenSBI's
                    // `csrc mip, STIP` would latch a momentary device
                    // interrupt into the software bit, and the guest would
                    // take external interrupts forever with nothing to claim.
                    let base = if csr == 0x344 {
                        (old & !IRQ_SEI) | (self.mip_sw & IRQ_SEI)
                    } else {
                        old
                    };
                    let new = match op {
                        CsrOp::Rw => operand,
                        CsrOp::Rs => base | operand,
                        CsrOp::Rc => base & !operand,
                    };
                    self.csr_write(csr, new, raw_bits)?;
                }
                self.set_x(rd, old);
            }
            Inst::Lr { double, rd, rs1 } => {
                let va = x!(rs1);
                let size = if double { 8 } else { 4 };
                if va & (size - 1) != 0 {
                    return Err(trap(4, va));
                }
                let pa = self.translate(bus, va, Access::Load)?;
                let v = bus
                    .load(pa, size as u8)
                    .map_err(|e| Fault::Event(Event::Bus(e)))?;
                bus.reservations().reserve(self.id as usize, pa);
                if self.jit.active() {
                    // Stores of the JIT's fast path must not skip this page.
                    self.jit.note_lr(bus as *const B as usize, self.id, pa);
                }
                self.set_x(rd, if double { v } else { v as i32 as i64 as u64 });
            }
            Inst::Sc {
                double,
                rd,
                rs1,
                rs2,
            } => {
                let va = x!(rs1);
                let size = if double { 8 } else { 4 };
                if va & (size - 1) != 0 {
                    return Err(trap(EXC_STORE_MISALIGNED, va));
                }
                let pa = self.translate(bus, va, Access::Store)?;
                if self.jit.active() {
                    self.jit.note_sc(bus as *const B as usize, self.id);
                }
                if bus.reservations().take(self.id as usize, pa) {
                    let v = x!(rs2);
                    bus.store(pa, size as u8, v)
                        .map_err(|e| Fault::Event(Event::Bus(e)))?;
                    self.set_x(rd, 0);
                } else {
                    self.set_x(rd, 1);
                }
            }
            Inst::Amo {
                op,
                double,
                rd,
                rs1,
                rs2,
            } => {
                let va = x!(rs1);
                let size: u64 = if double { 8 } else { 4 };
                if va & (size - 1) != 0 {
                    return Err(trap(EXC_STORE_MISALIGNED, va));
                }
                let pa = self.translate(bus, va, Access::Store)?;
                let raw_old = bus
                    .load(pa, size as u8)
                    .map_err(|e| Fault::Event(Event::Bus(e)))?;
                let old = if double {
                    raw_old
                } else {
                    raw_old as i32 as i64 as u64
                };
                let b = x!(rs2);
                let new = amo(op, double, old, b);
                bus.store(pa, size as u8, new)
                    .map_err(|e| Fault::Event(Event::Bus(e)))?;
                self.set_x(rd, old);
            }
            Inst::FLoad { fp, rd, rs1, off } => {
                if !self.fp_enabled() {
                    return Err(illegal());
                }
                let va = x!(rs1).wrapping_add(off as u64);
                let v = match fp {
                    Fp::S => fpu::box_s(self.load(bus, va, 4)? as u32),
                    Fp::D => self.load(bus, va, 8)?,
                };
                self.set_f(rd, v);
            }
            Inst::FStore { fp, rs1, rs2, off } => {
                if !self.fp_enabled() {
                    return Err(illegal());
                }
                let va = x!(rs1).wrapping_add(off as u64);
                let v = self.f[usize::from(rs2)];
                match fp {
                    Fp::S => self.store(bus, va, 4, v & 0xffff_ffff)?,
                    Fp::D => self.store(bus, va, 8, v)?,
                }
            }
            Inst::FMa {
                op,
                fp,
                rd,
                rs1,
                rs2,
                rs3,
                rm,
            } => {
                let round = self.rounding(rm).ok_or_else(illegal)?;
                let f = &self.f;
                let (v, fl) = fpu::fma(
                    fp,
                    op,
                    f[usize::from(rs1)],
                    f[usize::from(rs2)],
                    f[usize::from(rs3)],
                    round,
                );
                self.add_fflags(fl);
                self.set_f(rd, v);
            }
            Inst::FBin {
                op,
                fp,
                rd,
                rs1,
                rs2,
                rm,
            } => {
                // Sign injection and min/max carry no rounding mode.
                let round = if matches!(
                    op,
                    crate::decode::FBinOp::Add
                        | crate::decode::FBinOp::Sub
                        | crate::decode::FBinOp::Mul
                        | crate::decode::FBinOp::Div
                ) {
                    self.rounding(rm).ok_or_else(illegal)?
                } else if self.fp_enabled() {
                    rustc_apfloat::Round::NearestTiesToEven
                } else {
                    return Err(illegal());
                };
                let (v, fl) = fpu::bin(
                    fp,
                    op,
                    self.f[usize::from(rs1)],
                    self.f[usize::from(rs2)],
                    round,
                );
                self.add_fflags(fl);
                self.set_f(rd, v);
            }
            Inst::FSqrt { fp, rd, rs1, rm } => {
                let round = self.rounding(rm).ok_or_else(illegal)?;
                let (v, fl) = fpu::sqrt(fp, self.f[usize::from(rs1)], round);
                self.add_fflags(fl);
                self.set_f(rd, v);
            }
            Inst::FCmp {
                op,
                fp,
                rd,
                rs1,
                rs2,
            } => {
                if !self.fp_enabled() {
                    return Err(illegal());
                }
                let (v, fl) = fpu::cmp(fp, op, self.f[usize::from(rs1)], self.f[usize::from(rs2)]);
                self.add_fflags(fl);
                self.set_x(rd, v);
            }
            Inst::FClass { fp, rd, rs1 } => {
                if !self.fp_enabled() {
                    return Err(illegal());
                }
                let v = fpu::class(fp, self.f[usize::from(rs1)]);
                self.set_x(rd, v);
            }
            Inst::FCvtToInt {
                fp,
                ty,
                rd,
                rs1,
                rm,
            } => {
                let round = self.rounding(rm).ok_or_else(illegal)?;
                let (v, fl) = fpu::to_int(fp, ty, self.f[usize::from(rs1)], round);
                self.add_fflags(fl);
                self.set_x(rd, v);
            }
            Inst::FCvtFromInt {
                fp,
                ty,
                rd,
                rs1,
                rm,
            } => {
                let round = self.rounding(rm).ok_or_else(illegal)?;
                let (v, fl) = fpu::from_int(fp, ty, x!(rs1), round);
                self.add_fflags(fl);
                self.set_f(rd, v);
            }
            Inst::FCvtFp { to, rd, rs1, rm } => {
                let round = self.rounding(rm).ok_or_else(illegal)?;
                let (v, fl) = fpu::convert(to, self.f[usize::from(rs1)], round);
                self.add_fflags(fl);
                self.set_f(rd, v);
            }
            Inst::FMvToInt { fp, rd, rs1 } => {
                if !self.fp_enabled() {
                    return Err(illegal());
                }
                let v = self.f[usize::from(rs1)];
                let v = match fp {
                    Fp::S => v as u32 as i32 as i64 as u64,
                    Fp::D => v,
                };
                self.set_x(rd, v);
            }
            Inst::FMvFromInt { fp, rd, rs1 } => {
                if !self.fp_enabled() {
                    return Err(illegal());
                }
                let v = match fp {
                    Fp::S => fpu::box_s(x!(rs1) as u32),
                    Fp::D => x!(rs1),
                };
                self.set_f(rd, v);
            }
            Inst::Illegal => return Err(illegal()),
        }
        self.pc = next;
        Ok(())
    }

    /// Resolves an instruction's rm field (7 = dynamic, from frm). None when
    /// FP is off or the mode is reserved: the instruction is illegal.
    fn rounding(&self, rm: u8) -> Option<rustc_apfloat::Round> {
        if !self.fp_enabled() {
            return None;
        }
        let rm = if rm == 7 { self.frm } else { rm };
        fpu::round_of(rm)
    }

    // ---- CSRs -----------------------------------------------------------

    fn counter_allowed(&self, bit: u16) -> bool {
        match self.prv {
            PRV_M => true,
            PRV_S => self.mcounteren >> bit & 1 != 0,
            _ => self.mcounteren >> bit & 1 != 0 && self.scounteren >> bit & 1 != 0,
        }
    }

    fn csr_read(&self, csr: u16, raw: u64) -> Result<u64, Fault> {
        let illegal = || trap(EXC_ILLEGAL, raw);
        // The privilege needed is encoded in bits 9:8.
        if u8::try_from((csr >> 8) & 3).unwrap_or(3) > self.prv {
            return Err(illegal());
        }
        let fs_off = !self.fp_enabled();
        Ok(match csr {
            0x001 if !fs_off => u64::from(self.fflags),
            0x002 if !fs_off => u64::from(self.frm),
            0x003 if !fs_off => u64::from(self.fflags) | (u64::from(self.frm) << 5),
            0xc00..=0xc1f => {
                if !self.counter_allowed(csr - 0xc00) {
                    return Err(illegal());
                }
                match csr {
                    0xc00 | 0xc02 => self.instret,
                    0xc01 => self.mtime,
                    _ => 0,
                }
            }
            0x100 => self.sstatus(),
            0x104 => self.mie & self.mideleg,
            0x105 => self.stvec,
            0x106 => self.scounteren,
            0x10a => 0,
            0x140 => self.sscratch,
            0x141 => self.sepc,
            0x142 => self.scause,
            0x143 => self.stval,
            0x144 => self.mip() & self.mideleg,
            0x180 => {
                if self.prv == PRV_S && self.mstatus & MSTATUS_TVM != 0 {
                    return Err(illegal());
                }
                self.satp
            }
            0xf11..=0xf13 | 0xf15 => 0,
            0xf14 => self.id,
            0x300 => self.mstatus_read(),
            0x301 => (2 << 62) | misa_extensions(),
            0x302 => self.medeleg,
            0x303 => self.mideleg,
            0x304 => self.mie,
            0x305 => self.mtvec,
            0x306 => self.mcounteren,
            0x30a => 0,
            0x320 => 0,
            0x323..=0x33f => 0,
            0x340 => self.mscratch,
            0x341 => self.mepc,
            0x342 => self.mcause,
            0x343 => self.mtval,
            0x344 => self.mip(),
            // 16 PMP entries, as QEMU virt: pmpcfg0/2 and pmpaddr0..15. Stored, not enforced.
            0x3a0 | 0x3a2 => self.pmpcfg[usize::from(csr - 0x3a0)],
            0x3b0..=0x3bf => self.pmpaddr[usize::from(csr - 0x3b0)],
            0xb00 | 0xb02 => self.instret,
            0xb03..=0xb1f => 0,
            _ => return Err(illegal()),
        })
    }

    fn mstatus_read(&self) -> u64 {
        let mut s = self.mstatus;
        if s & MSTATUS_FS == MSTATUS_FS {
            s |= MSTATUS_SD;
        }
        s
    }

    fn sstatus(&self) -> u64 {
        self.mstatus_read() & SSTATUS_MASK
    }

    fn csr_write(&mut self, csr: u16, v: u64, raw: u64) -> Result<(), Fault> {
        if csr <= 3 {
            // Writing the FP CSRs dirties the FP state.
            self.mstatus |= MSTATUS_FS;
        }
        match csr {
            0x001 => self.fflags = (v & 0x1f) as u8,
            0x002 => self.frm = (v & 7) as u8,
            0x003 => {
                self.fflags = (v & 0x1f) as u8;
                self.frm = ((v >> 5) & 7) as u8;
            }
            0x100 => {
                let m = SSTATUS_MASK & !(MSTATUS_UXL | MSTATUS_SD);
                self.write_mstatus((self.mstatus & !m) | (v & m));
            }
            0x104 => self.mie = (self.mie & !self.mideleg) | (v & self.mideleg),
            0x105 => self.stvec = legal_tvec(self.stvec, v),
            0x106 => self.scounteren = v & 0xffff_ffff,
            0x10a => {}
            0x140 => self.sscratch = v,
            0x141 => self.sepc = v & !1,
            0x142 => self.scause = v,
            0x143 => self.stval = v,
            0x144 => {
                let m = IRQ_SSI & self.mideleg;
                self.mip_sw = (self.mip_sw & !m) | (v & m);
            }
            0x180 => {
                if self.prv == PRV_S && self.mstatus & MSTATUS_TVM != 0 {
                    return Err(trap(EXC_ILLEGAL, raw));
                }
                // Unsupported modes (e.g. Sv57) leave satp unchanged: the
                // kernel probes the paging mode this way.
                let mode = v >> 60;
                if mode == 0 || mode == 8 || mode == 9 {
                    self.satp = v; // MODE, 16-bit ASID and 44-bit PPN: all 64 bits
                    self.flush_tlb();
                }
            }
            0x300 => self.write_mstatus((self.mstatus & !MSTATUS_WMASK) | (v & MSTATUS_WMASK)),
            0x301 => {}
            0x302 => self.medeleg = v & 0xb3ff,
            0x303 => self.mideleg = v & S_IRQS,
            0x304 => self.mie = v & ALL_IRQS,
            0x305 => self.mtvec = legal_tvec(self.mtvec, v),
            0x306 => self.mcounteren = v & 0xffff_ffff,
            0x30a | 0x320 | 0x323..=0x33f | 0xb03..=0xb1f => {}
            0x340 => self.mscratch = v,
            0x341 => self.mepc = v & !1,
            0x342 => self.mcause = v,
            0x343 => self.mtval = v,
            0x344 => {
                let m = IRQ_SSI | IRQ_STI | IRQ_SEI;
                self.mip_sw = (self.mip_sw & !m) | (v & m);
            }
            0x3a0 | 0x3a2 => self.pmpcfg[usize::from(csr - 0x3a0)] = v,
            0x3b0..=0x3bf => self.pmpaddr[usize::from(csr - 0x3b0)] = v & ((1 << 54) - 1),
            0xb00 | 0xb02 => self.instret = v,
            _ => return Err(trap(EXC_ILLEGAL, raw)),
        }
        Ok(())
    }

    fn write_mstatus(&mut self, mut v: u64) {
        // MPP is WARL: the reserved value 2 reads back as U.
        if (v >> 11) & 3 == 2 {
            v &= !MSTATUS_MPP;
        }
        let changed = self.mstatus ^ v;
        self.mstatus = (v & !(MSTATUS_SD | MSTATUS_UXL | MSTATUS_SXL)) | XLEN64_FIELDS;
        if changed & (MSTATUS_MPRV | MSTATUS_SUM | MSTATUS_MXR | MSTATUS_MPP) != 0 {
            // Cached permissions depend on none of these (checked per
            // access), but MPRV changes which translation applies.
        }
    }
}

/// One pre-decoded instruction of a block.
#[derive(Debug, Clone, Copy)]
pub struct BlockInst {
    pub inst: Inst,
    pub len: u8,
    pub raw: u32,
}

/// Longest block; bounds interrupt latency too.
const MAX_BLOCK_INSTS: usize = 64;
const BLOCK_CACHE_SLOTS: usize = 8192;

/// Direct-mapped cache of decoded blocks keyed by physical address. A
/// flush is O(1): entries carry the epoch they were decoded in, and only
/// entries of the current epoch hit.
#[derive(Debug, Clone)]
struct BlockCache {
    slots: Vec<Option<BlockSlot>>,
    /// The bus code generation these blocks were decoded under.
    generation: u64,
    /// Bumped by every flush.
    epoch: u64,
}

#[derive(Debug, Clone)]
struct BlockSlot {
    pa: u64,
    epoch: u64,
    insts: std::rc::Rc<[BlockInst]>,
}

impl BlockCache {
    fn new() -> Self {
        Self {
            slots: vec![None; BLOCK_CACHE_SLOTS],
            generation: 0,
            epoch: 0,
        }
    }
    fn slot(pa: u64) -> usize {
        ((pa >> 1) as usize) % BLOCK_CACHE_SLOTS
    }
    fn get(&self, pa: u64) -> Option<std::rc::Rc<[BlockInst]>> {
        match &self.slots[Self::slot(pa)] {
            Some(s) if s.pa == pa && s.epoch == self.epoch => Some(s.insts.clone()),
            _ => None,
        }
    }
    fn insert(&mut self, pa: u64, insts: std::rc::Rc<[BlockInst]>) {
        self.slots[Self::slot(pa)] = Some(BlockSlot {
            pa,
            epoch: self.epoch,
            insts,
        });
    }
    fn flush(&mut self, generation: u64) {
        self.epoch += 1;
        self.generation = generation;
    }
}

/// Whether a block must end after this instruction: control flow, and
/// anything that can change translation, privilege or the code itself.
pub(crate) fn ends_block(inst: &Inst) -> bool {
    matches!(
        inst,
        Inst::Jal { .. }
            | Inst::Jalr { .. }
            | Inst::Branch { .. }
            | Inst::Ecall
            | Inst::Ebreak
            | Inst::Mret
            | Inst::Sret
            | Inst::Wfi
            | Inst::SfenceVma { .. }
            | Inst::Csr { .. }
            | Inst::FenceI
            | Inst::Illegal
    )
}

/// Decodes the block starting at physical `pa`, never past its page.
pub(crate) fn build_block<B: Bus>(bus: &mut B, pa: u64) -> Option<std::rc::Rc<[BlockInst]>> {
    build_region(bus, pa, false)
}

/// As [`build_block`]; with `through_branches`, conditional branches do
/// not end the block (the JIT's superblocks: the not-taken path goes on)
/// and neither does a JAL to the same page (the block goes on at its
/// target, so instructions no longer follow each other in memory).
pub(crate) fn build_region<B: Bus>(
    bus: &mut B,
    pa: u64,
    through_branches: bool,
) -> Option<std::rc::Rc<[BlockInst]>> {
    let page_end = (pa | 0xfff).saturating_add(1);
    let mut insts = Vec::with_capacity(16);
    let mut at = pa;
    while insts.len() < MAX_BLOCK_INSTS && at < page_end && at <= u64::MAX - 4 {
        let lo = bus.load(at, 2).ok()? as u32;
        let raw = if lo & 3 == 3 {
            if at + 4 > page_end {
                break; // straddles the page: leave it to the plain path
            }
            lo | ((bus.load(at + 2, 2).ok()? as u32) << 16)
        } else {
            lo
        };
        let (inst, len) = decode(raw);
        insts.push(BlockInst { inst, len, raw });
        if let (true, Inst::Jal { off, .. }) = (through_branches, inst) {
            // A superblock goes on at the target of a direct jump in the
            // same page (the emitter follows a JAL that is not last).
            let target = at.wrapping_add(off as u64);
            if target >> 12 == pa >> 12 {
                at = target;
                continue;
            }
        }
        at += u64::from(len);
        if ends_block(&inst) && !(through_branches && matches!(inst, Inst::Branch { .. })) {
            break;
        }
    }
    if insts.is_empty() {
        None
    } else {
        Some(insts.into())
    }
}

fn misa_extensions() -> u64 {
    let ext = |c: u8| 1u64 << (c - b'A');
    ext(b'I') | ext(b'M') | ext(b'A') | ext(b'F') | ext(b'D') | ext(b'C') | ext(b'S') | ext(b'U')
}

/// Modes 2 and 3 are reserved: such a write leaves the register unchanged
/// (WARL; QEMU does the same).
fn legal_tvec(old: u64, v: u64) -> u64 {
    if v & 3 >= 2 {
        old
    } else {
        v
    }
}

fn vector(tvec: u64, code: u64, interrupt: bool) -> u64 {
    let base = tvec & !3;
    if interrupt && tvec & 3 == 1 {
        base.wrapping_add(4 * code)
    } else {
        base
    }
}

#[inline]
pub fn alu(op: AluOp, word: bool, a: u64, b: u64) -> u64 {
    if word {
        let (a32, b32) = (a as u32, b as u32);
        let r = match op {
            AluOp::Add => a32.wrapping_add(b32),
            AluOp::Sub => a32.wrapping_sub(b32),
            AluOp::Sll => a32 << (b32 & 31),
            AluOp::Srl => a32 >> (b32 & 31),
            AluOp::Sra => ((a32 as i32) >> (b32 & 31)) as u32,
            // Not encodable as *W; decode never produces these.
            AluOp::Slt | AluOp::Sltu | AluOp::Xor | AluOp::Or | AluOp::And => 0,
        };
        return r as i32 as i64 as u64;
    }
    match op {
        AluOp::Add => a.wrapping_add(b),
        AluOp::Sub => a.wrapping_sub(b),
        AluOp::Sll => a << (b & 63),
        AluOp::Slt => u64::from((a as i64) < (b as i64)),
        AluOp::Sltu => u64::from(a < b),
        AluOp::Xor => a ^ b,
        AluOp::Srl => a >> (b & 63),
        AluOp::Sra => ((a as i64) >> (b & 63)) as u64,
        AluOp::Or => a | b,
        AluOp::And => a & b,
    }
}

pub fn muldiv(op: MulOp, word: bool, a: u64, b: u64) -> u64 {
    if word {
        let (a32, b32) = (a as i32, b as i32);
        let r: i32 = match op {
            MulOp::Mul => a32.wrapping_mul(b32),
            MulOp::Div => {
                if b32 == 0 {
                    -1
                } else {
                    a32.wrapping_div(b32)
                }
            }
            MulOp::Divu => {
                if b32 == 0 {
                    -1
                } else {
                    ((a32 as u32) / (b32 as u32)) as i32
                }
            }
            MulOp::Rem => {
                if b32 == 0 {
                    a32
                } else {
                    a32.wrapping_rem(b32)
                }
            }
            MulOp::Remu => {
                if b32 == 0 {
                    a32
                } else {
                    ((a32 as u32) % (b32 as u32)) as i32
                }
            }
            MulOp::Mulh | MulOp::Mulhsu | MulOp::Mulhu => 0,
        };
        return r as i64 as u64;
    }
    match op {
        MulOp::Mul => a.wrapping_mul(b),
        MulOp::Mulh => ((i128::from(a as i64) * i128::from(b as i64)) >> 64) as u64,
        MulOp::Mulhsu => ((i128::from(a as i64).wrapping_mul(i128::from(b))) >> 64) as u64,
        MulOp::Mulhu => ((u128::from(a) * u128::from(b)) >> 64) as u64,
        MulOp::Div => {
            if b == 0 {
                u64::MAX
            } else {
                (a as i64).wrapping_div(b as i64) as u64
            }
        }
        MulOp::Divu => a.checked_div(b).unwrap_or(u64::MAX),
        MulOp::Rem => {
            if b == 0 {
                a
            } else {
                (a as i64).wrapping_rem(b as i64) as u64
            }
        }
        MulOp::Remu => a.checked_rem(b).unwrap_or(a),
    }
}

fn amo(op: AmoOp, double: bool, old: u64, b: u64) -> u64 {
    let (a, b) = if double {
        (old, b)
    } else {
        (old as i32 as i64 as u64, b as i32 as i64 as u64)
    };
    match op {
        AmoOp::Swap => b,
        AmoOp::Add => a.wrapping_add(b),
        AmoOp::Xor => a ^ b,
        AmoOp::And => a & b,
        AmoOp::Or => a | b,
        AmoOp::Min => (a as i64).min(b as i64) as u64,
        AmoOp::Max => (a as i64).max(b as i64) as u64,
        AmoOp::Minu => {
            if double {
                a.min(b)
            } else {
                u64::from((a as u32).min(b as u32))
            }
        }
        AmoOp::Maxu => {
            if double {
                a.max(b)
            } else {
                u64::from((a as u32).max(b as u32))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Bus, Ram, RamBus};

    fn bus_with(code: &[u32]) -> RamBus {
        let mut ram = Ram::new(0x8000_0000, 1 << 20);
        for (i, w) in code.iter().enumerate() {
            ram.store(0x8000_0000 + 4 * i as u64, 4, u64::from(*w))
                .unwrap();
        }
        RamBus::new(ram, 1)
    }

    /// A store to a page holding a cached block must make the next run of
    /// that block see the new code (the engine is checked against the
    /// interpreter by the conformance suite; this pins invalidation).
    #[test]
    fn block_cache_sees_code_writes() {
        // addi a0, zero, 1 ; jalr zero, 0(zero)... we only run one block:
        // addi a0, zero, 1 ; ebreak
        let mut bus = bus_with(&[0x0010_0513, 0x0010_0073]);
        let mut h = Hart::new(0);
        h.mtvec = 0x8000_0100;
        let run = |h: &mut Hart, bus: &mut RamBus| {
            h.pc = 0x8000_0000;
            h.step_block(bus).unwrap();
            h.x[10]
        };
        assert_eq!(run(&mut h, &mut bus), 1);
        assert_eq!(h.blocks_built, 1);
        assert_eq!(run(&mut h, &mut bus), 1);
        assert_eq!(h.blocks_built, 1, "second run hits the cache");
        // Patch to addi a0, zero, 2 through the bus, as a guest store would.
        bus.store(0x8000_0000, 4, 0x0020_0513).unwrap();
        assert_eq!(run(&mut h, &mut bus), 2);
        assert_eq!(h.blocks_built, 2);
        // A store elsewhere (not code) keeps the cache.
        bus.store(0x8000_8000, 8, 7).unwrap();
        assert_eq!(run(&mut h, &mut bus), 2);
        assert_eq!(h.blocks_built, 2);
    }

    /// `csrc mip, t0` (OpenSBI clearing STIP) while the PLIC raises SEIP
    /// must not latch SEIP into the software bit: once the line drops, mip
    /// shows no external interrupt.
    #[test]
    fn csrc_mip_does_not_latch_the_external_line() {
        // csrrc zero, mip, t0
        let mut bus = bus_with(&[(0x344 << 20) | (5 << 15) | (3 << 12) | 0x73]);
        let mut h = Hart::new(0);
        h.pc = 0x8000_0000;
        h.x[5] = IRQ_STI;
        h.mip_sw = IRQ_STI;
        h.mip_hw = IRQ_SEI;
        h.step(&mut bus).unwrap();
        assert_eq!(h.mip_sw, 0, "STIP cleared, SEIP not latched");
        h.mip_hw = 0;
        assert_eq!(h.mip() & IRQ_SEI, 0);
    }

    #[test]
    fn division_edge_cases() {
        assert_eq!(muldiv(MulOp::Div, false, 5, 0), u64::MAX);
        assert_eq!(muldiv(MulOp::Rem, false, 5, 0), 5);
        assert_eq!(
            muldiv(MulOp::Div, false, i64::MIN as u64, u64::MAX),
            i64::MIN as u64
        );
        assert_eq!(muldiv(MulOp::Rem, false, i64::MIN as u64, u64::MAX), 0);
        assert_eq!(muldiv(MulOp::Divu, true, 0xffff_fffe, 0), u64::MAX);
        assert_eq!(muldiv(MulOp::Mulhsu, false, u64::MAX, 2), u64::MAX);
    }

    #[test]
    fn illegal_instruction_traps_with_bits_in_mtval() {
        let mut bus = bus_with(&[0xffff_ffff]);
        let mut h = Hart::new(0);
        h.pc = 0x8000_0000;
        h.mtvec = 0x8000_0100;
        h.step(&mut bus).unwrap();
        assert_eq!(h.mcause, EXC_ILLEGAL);
        assert_eq!(h.mtval, 0xffff_ffff);
        assert_eq!(h.mepc, 0x8000_0000);
        assert_eq!(h.pc, 0x8000_0100);
    }

    #[test]
    fn sv39_fault_on_unmapped_page() {
        // lw a0, 0(zero) in S-mode with an empty root table.
        let mut bus = bus_with(&[0x0000_2503]);
        let mut h = Hart::new(0);
        h.prv = PRV_S;
        h.pc = 0x8000_0000;
        // Identity megapage for the code at 0x8000_0000 in a root at +0x1000.
        let root = 0x8000_1000u64;
        let leaf = ((0x8000_0000u64 >> 12) << 10) | PTE_V | PTE_R | PTE_X | PTE_A;
        bus.ram.store(root + 2 * 8, 8, leaf).unwrap();
        h.satp = (8 << 60) | (root >> 12);
        h.mtvec = 0x8000_0200;
        h.step(&mut bus).unwrap();
        assert_eq!(h.mcause, EXC_LOAD_PAGE);
        assert_eq!(h.mtval, 0);
    }
}
