//! What native code calls back into: the context it runs with, and the
//! Rust helpers for everything the templates do not do inline (loads that
//! miss the load TLB, every store, instructions executed by the reference
//! interpreter, division).
//!
//! Helper protocol: arguments in the System V registers, the hart and the
//! context first. A helper returns 0 when the block goes on, or 1 when it
//! must stop now: the helper then has already put pc where execution
//! resumes (a trap handler, the faulting instruction for a bus event, or
//! the next instruction after a store that changed code) and counted the
//! instruction in instret if it retired; the native exit adds the
//! instructions before it.

use std::mem::offset_of;

use crate::bus::Bus;
use crate::cpu::{muldiv, Access, BlockInst, Event, Fault, Hart};
use crate::decode::MulOp;

use super::cache::{JcEntry, JtlbEntry, JTLB_SIZE};

/// Per-run state the native code reads through r12.
#[repr(C)]
pub(crate) struct JitCtx {
    /// Instructions left before the chain must return to the dispatcher
    /// (interrupts are checked there).
    pub budget: i64,
    pub jtlb: *mut JtlbEntry,
    pub jcache: *mut JcEntry,
    /// 1 + the number of the chain link found unpatched, or 0.
    pub miss_slot: u64,
    /// Bus code generation at entry: a helper seeing it move stops the block.
    pub generation: u64,
    /// Host address of RAM minus its guest physical base: rbp in native
    /// code (loads through the direct RAM window).
    pub ram_addend: u64,
    /// `*mut B` of the bus the helpers were instantiated for.
    pub bus: *mut (),
    /// An event (wfi, ecall exit, bus error) for the dispatcher to return.
    pub event: Option<Event>,
}

pub(crate) const CTX_BUDGET: i32 = offset_of!(JitCtx, budget) as i32;
pub(crate) const CTX_JTLB: i32 = offset_of!(JitCtx, jtlb) as i32;
pub(crate) const CTX_JCACHE: i32 = offset_of!(JitCtx, jcache) as i32;
pub(crate) const CTX_RAM_ADDEND: i32 = offset_of!(JitCtx, ram_addend) as i32;
pub(crate) const CTX_MISS_SLOT: i32 = offset_of!(JitCtx, miss_slot) as i32;
pub(crate) const HART_X: i32 = offset_of!(Hart, x) as i32;
pub(crate) const HART_PC: i32 = offset_of!(Hart, pc) as i32;
pub(crate) const HART_INSTRET: i32 = offset_of!(Hart, instret) as i32;

/// Packs what a load helper needs to know about the instruction.
pub(crate) fn load_desc(size: u8, signed: bool, rd: u8, len: u8) -> u64 {
    u64::from(size) | (u64::from(signed) << 4) | (u64::from(rd) << 8) | (u64::from(len) << 16)
}

pub(crate) fn store_desc(size: u8, len: u8) -> u64 {
    u64::from(size) | (u64::from(len) << 16)
}

/// Reborrows the raw pointers native code passes.
///
/// # Safety
/// `hart` and `ctx` must be the pointers the dispatcher passed to the
/// native run now in progress (so both are live and nothing else borrows
/// them), and `ctx.bus` a `*mut B` for this `B`.
unsafe fn parts<'a, B: Bus>(
    hart: *mut Hart,
    ctx: *mut JitCtx,
) -> (&'a mut Hart, &'a mut JitCtx, &'a mut B) {
    // SAFETY: guaranteed by the caller (see above).
    unsafe {
        let ctx = &mut *ctx;
        let bus = &mut *ctx.bus.cast::<B>();
        (&mut *hart, ctx, bus)
    }
}

/// After an instruction retired in a helper: stop the block when it
/// changed cached code (as the block engine does).
fn after_retire<B: Bus>(hart: &mut Hart, ctx: &JitCtx, bus: &B, next: u64) -> u64 {
    if bus.code_generation() != ctx.generation {
        hart.pc = next;
        hart.instret = hart.instret.wrapping_add(1);
        1
    } else {
        0
    }
}

fn fault(hart: &mut Hart, ctx: &mut JitCtx, pc: u64, f: Fault) -> u64 {
    hart.pc = pc;
    match f {
        Fault::Trap(t) => hart.take_trap(t.cause, t.tval, false),
        Fault::Event(e) => ctx.event = Some(e),
    }
    1
}

/// A load the inline fast path did not serve: translate (filling the load
/// TLB when the page is RAM), load, write rd.
pub(crate) extern "sysv64" fn load_slow<B: Bus>(
    hart: *mut Hart,
    ctx: *mut JitCtx,
    va: u64,
    desc: u64,
    pc: u64,
) -> u64 {
    // SAFETY: called only by native code of a run the dispatcher started
    // with these pointers and this B (the code cache is flushed when B
    // changes).
    let (hart, ctx, bus) = unsafe { parts::<B>(hart, ctx) };
    let size = (desc & 15) as u8;
    let signed = desc & 16 != 0;
    let rd = ((desc >> 8) & 31) as u8;
    let len = ((desc >> 16) & 7) as u8;
    let r = if (va & 0xfff) + u64::from(size) <= 0x1000 {
        hart.translate(bus, va, Access::Load).and_then(|pa| {
            let v = bus
                .load(pa, size)
                .map_err(|e| Fault::Event(Event::Bus(e)))?;
            fill_jtlb(ctx, bus, va, pa, 0);
            Ok(v)
        })
    } else {
        hart.load(bus, va, size)
    };
    match r {
        Ok(v) => {
            let v = if signed {
                match size {
                    1 => v as i8 as i64 as u64,
                    2 => v as i16 as i64 as u64,
                    4 => v as i32 as i64 as u64,
                    _ => v,
                }
            } else {
                v
            };
            hart.set_x(rd, v);
            after_retire(hart, ctx, bus, pc.wrapping_add(u64::from(len)))
        }
        Err(f) => fault(hart, ctx, pc, f),
    }
}

/// Enters the page of `va` (translated to RAM at `pa`) in the load TLB
/// (`first` 0) or the store TLB (`first` JTLB_SIZE).
fn fill_jtlb<B: Bus>(ctx: &mut JitCtx, bus: &mut B, va: u64, pa: u64, first: usize) {
    let (base, ram) = bus.ram();
    let ppage = pa & !0xfff;
    let Some(off) = ppage.checked_sub(base) else {
        return;
    };
    if off + 0x1000 > ram.len() as u64 {
        return;
    }
    let host_page = ram.as_mut_ptr() as u64 + off;
    let vpage = va & !0xfff;
    let i = first + (((va >> 12) as usize) & (JTLB_SIZE - 1));
    // SAFETY: ctx.jtlb points at the 2 * JTLB_SIZE entries of this hart's
    // load and store TLB (RawTable, stable address); i is in range.
    unsafe {
        ctx.jtlb.add(i).write(JtlbEntry {
            tag: vpage,
            addend: host_page.wrapping_sub(vpage),
        });
    }
}

/// A store the inline fast path did not serve: translate, store through
/// the bus (reservations, code-page bitmap, devices), stop the block when
/// code changed; else enter the page in the store TLB when it is RAM that
/// holds no code and no reservation (see [`super::reserve`]).
pub(crate) extern "sysv64" fn store<B: Bus>(
    hart: *mut Hart,
    ctx: *mut JitCtx,
    va: u64,
    value: u64,
    desc: u64,
    pc: u64,
) -> u64 {
    // SAFETY: as in load_slow.
    let (hart, ctx, bus) = unsafe { parts::<B>(hart, ctx) };
    let size = (desc & 15) as u8;
    let len = ((desc >> 16) & 7) as u8;
    let r = if (va & 0xfff) + u64::from(size) <= 0x1000 {
        hart.translate(bus, va, Access::Store).and_then(|pa| {
            bus.store(pa, size, value)
                .map_err(|e| Fault::Event(Event::Bus(e)))?;
            Ok(Some(pa))
        })
    } else {
        hart.store(bus, va, size, value).map(|()| None)
    };
    match r {
        Ok(pa) => {
            let stop = after_retire(hart, ctx, bus, pc.wrapping_add(u64::from(len)));
            if let (0, Some(pa)) = (stop, pa) {
                // The store did not hit a code page (the generation would
                // have moved), and the epoch check before every native run
                // covers pages that become code later.
                if !super::reserve::page_reserved(ctx.bus as usize, pa) {
                    fill_jtlb(ctx, bus, va, pa, JTLB_SIZE);
                }
            }
            stop
        }
        Err(f) => fault(hart, ctx, pc, f),
    }
}

/// One instruction through the reference interpreter (CSRs, FP, AMOs,
/// system instructions): exactly what the block engine does for it.
pub(crate) extern "sysv64" fn interp<B: Bus>(
    hart: *mut Hart,
    ctx: *mut JitCtx,
    inst: *const BlockInst,
    pc: u64,
) -> u64 {
    // SAFETY: as in load_slow.
    let (hart, ctx, bus) = unsafe { parts::<B>(hart, ctx) };
    // SAFETY: `inst` points into an Rc<[BlockInst]> the code cache keeps
    // alive as long as the native code that embeds the pointer.
    let bi = unsafe { *inst };
    hart.pc = pc;
    match hart.exec(bus, bi.inst, bi.len, bi.raw) {
        Ok(()) => {
            let next = hart.pc;
            after_retire(hart, ctx, bus, next)
        }
        Err(Fault::Trap(t)) => {
            hart.take_trap(t.cause, t.tval, false);
            1
        }
        Err(Fault::Event(e)) => {
            if e == Event::Wfi {
                // wfi retired (pc already moved past it).
                hart.instret = hart.instret.wrapping_add(1);
            }
            ctx.event = Some(e);
            1
        }
    }
}

/// Division, remainder and the high multiplies (pure; no hart access).
pub(crate) extern "sysv64" fn muldiv_helper(a: u64, b: u64, op: u64) -> u64 {
    let word = op & 0x100 != 0;
    let op = match op & 0xff {
        0 => MulOp::Mul,
        1 => MulOp::Mulh,
        2 => MulOp::Mulhsu,
        3 => MulOp::Mulhu,
        4 => MulOp::Div,
        5 => MulOp::Divu,
        6 => MulOp::Rem,
        _ => MulOp::Remu,
    };
    muldiv(op, word, a, b)
}

pub(crate) fn muldiv_code(op: MulOp, word: bool) -> u64 {
    let c = match op {
        MulOp::Mul => 0,
        MulOp::Mulh => 1,
        MulOp::Mulhsu => 2,
        MulOp::Mulhu => 3,
        MulOp::Div => 4,
        MulOp::Divu => 5,
        MulOp::Rem => 6,
        MulOp::Remu => 7,
    };
    c | (u64::from(word) << 8)
}
