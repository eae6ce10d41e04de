//! The template emitter: one decoded block to x86-64.
//!
//! Conventions of the generated code:
//! - `rbx` points at the [`Hart`](crate::cpu::Hart) (guest x registers,
//!   pc and instret live there between blocks), `r12` at the
//!   [`JitCtx`](super::runtime::JitCtx), `r13` counts the chain's budget
//!   down by the instructions each block retires, `r14` is the value r13
//!   had when instret was last brought up to date (so instret lags by
//!   r14 - r13, settled before an interpreter call and at exit), `r15`
//!   points at the load TLB (the store TLB follows it), `rbp` holds host
//!   RAM minus its guest base (the direct RAM window). All are
//!   callee-saved, so helper calls keep them; rax, rcx, rdx and rsi are
//!   scratch.
//! - Within a block, guest registers are cached in rdi and r8-r11
//!   ([`RegCache`]): loaded on first use, results kept there (dirty) and
//!   stored to the hart only when the slot is reused, before a helper
//!   call (helpers and the interpreter see the hart) and on each way out
//!   of the block (a side exit stores what was dirty where it branches).
//!   Helper calls clobber these registers: the cache is emptied after an
//!   interpreter call, a slow path reloads what the fast path had cached.
//! - Loads in a context without data translation (M-mode, satp Bare: the
//!   user-mode harness, OpenSBI) use the direct RAM window: a bounds
//!   check against RAM and a load from `[va + rbp]`; such blocks are
//!   cached apart from blocks using the load TLB.
//! - The trampoline saves the callee-saved registers, aligns the stack to
//!   16 bytes (so blocks call helpers directly) and jumps to the block;
//!   every exit jumps back to its epilogue with the status in eax.
//! - Integer ALU, M multiplies, LUI/AUIPC/JAL/JALR, branches and the RAM
//!   fast paths of loads and stores (through the load and store TLBs or
//!   the RAM window) are
//!   inline; TLB misses, division and everything else (CSRs, FP, AMOs,
//!   system instructions) call Rust.
//! - Blocks are position independent (labels are relative, everything
//!   outside the block is an absolute 64-bit address), so a block can be
//!   copied anywhere in the arena.

// dynasm's dynamic registers (`Rq(h)`) expand to `h.into()`, a u8 to u8
// conversion.
#![allow(clippy::useless_conversion)]

use dynasmrt::x64::X64Relocation;
use dynasmrt::{dynasm, DynamicLabel, DynasmApi, DynasmLabelApi, VecAssembler};

use crate::cpu::{ends_block, BlockInst};
use crate::decode::{AluOp, BranchOp, Inst, LoadOp, MulOp, StoreOp};

use super::cache::{JCACHE_SIZE, JTLB_SIZE};
use super::runtime::{
    load_desc, muldiv_code, store_desc, CTX_BUDGET, CTX_JCACHE, CTX_JTLB, CTX_MISS_SLOT,
    CTX_RAM_ADDEND, HART_INSTRET, HART_PC, HART_X,
};

type Asm = VecAssembler<X64Relocation>;

macro_rules! asm {
    ($ops:ident $($t:tt)*) => {
        dynasm!($ops ; .arch x64 $($t)*)
    };
}

/// Host addresses of the helpers, instantiated for one bus type.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Helpers {
    pub load: u64,
    pub store: u64,
    pub interp: u64,
    pub muldiv: u64,
    /// The trampoline's epilogue.
    pub exit: u64,
}

/// The entry/exit trampoline: `enter(hart, ctx, code) -> status`. Returns
/// the code and the offset of the epilogue.
pub(crate) fn trampoline() -> (Vec<u8>, usize) {
    let mut ops = Asm::new(0);
    asm!(ops
        ; push rbx
        ; push rbp
        ; push r12
        ; push r13
        ; push r14
        ; push r15
        ; sub rsp, 8
        ; mov rbx, rdi
        ; mov r12, rsi
        ; mov r13, [rsi + CTX_BUDGET]
        ; mov r14, r13
        ; mov r15, [rsi + CTX_JTLB]
        ; mov rbp, [rsi + CTX_RAM_ADDEND]
        ; jmp rdx
    );
    let exit = ops.offset().0;
    asm!(ops
        ; sub r14, r13
        ; add [rbx + HART_INSTRET], r14
        ; add rsp, 8
        ; pop r15
        ; pop r14
        ; pop r13
        ; pop r12
        ; pop rbp
        ; pop rbx
        ; ret
    );
    (ops.finalize().expect("trampoline labels"), exit)
}

fn xoff(r: u8) -> i32 {
    HART_X + 8 * i32::from(r)
}

/// Host registers that cache guest registers within a block (scratch to
/// helper calls: every call empties the cache or reloads it from the
/// hart).
const POOL: [u8; 5] = [7, 8, 9, 10, 11];

/// Which guest registers a host register of [`POOL`] holds, within one
/// block. Write-back: an instruction's result stays in its host register
/// (dirty) and reaches the hart's copy in memory when the slot is taken
/// for another register, before any helper call (the helpers and the
/// interpreter read the hart) and on every way out of the block (each
/// exit stores what was dirty where it branches off).
#[derive(Debug, Clone, Copy, Default)]
struct RegCache {
    /// Guest register -> host register (0: not cached).
    host: [u8; 32],
    /// Pool slot -> guest register (0: free).
    guest: [u8; POOL.len()],
    /// Pool slot holds a value not yet stored to the hart.
    dirty: [bool; POOL.len()],
    next: usize,
    /// The destination of the instruction being emitted: a read of it is
    /// not worth caching (the result replaces it).
    dst: u8,
}

impl RegCache {
    fn get(&self, r: u8) -> Option<u8> {
        let h = self.host[usize::from(r)];
        (r != 0 && h != 0).then_some(h)
    }

    /// Forgets everything (host registers clobbered): only after a spill.
    fn clear(&mut self) {
        debug_assert!(!self.dirty.iter().any(|d| *d));
        *self = Self::default();
    }

    /// A host register for guest register r (its own, or a slot taken
    /// round-robin from another, whose dirty value is stored first).
    fn assign(&mut self, ops: &mut Asm, r: u8) -> u8 {
        if let Some(h) = self.get(r) {
            return h;
        }
        let slot = self.next;
        self.next = (self.next + 1) % POOL.len();
        let old = self.guest[slot];
        if old != 0 {
            if self.dirty[slot] {
                asm!(ops ; mov [rbx + xoff(old)], Rq(POOL[slot]));
            }
            self.host[usize::from(old)] = 0;
        }
        self.guest[slot] = r;
        self.dirty[slot] = false;
        self.host[usize::from(r)] = POOL[slot];
        POOL[slot]
    }

    /// Guest register r's host register now holds its value (not yet
    /// in memory).
    fn set_dirty(&mut self, r: u8) {
        if let Some(slot) = self.guest.iter().position(|g| *g == r) {
            self.dirty[slot] = true;
        }
    }

    /// Guest register r was written in memory behind the cache's back
    /// (its cached value, dirty or not, is dropped).
    fn forget(&mut self, r: u8) {
        if self.get(r).is_some() {
            self.host[usize::from(r)] = 0;
            for (g, d) in self.guest.iter_mut().zip(self.dirty.iter_mut()) {
                if *g == r {
                    *g = 0;
                    *d = false;
                }
            }
        }
    }

    /// (host register, guest register) pairs in use.
    fn entries(&self) -> Pairs {
        self.pairs(false)
    }

    /// The dirty pairs (what a side exit taken now must store).
    fn dirty_entries(&self) -> Pairs {
        self.pairs(true)
    }

    fn pairs(&self, dirty_only: bool) -> Pairs {
        let mut out = Pairs::default();
        for (i, &g) in self.guest.iter().enumerate() {
            if g != 0 && (!dirty_only || self.dirty[i]) {
                out.p[out.n] = (POOL[i], g);
                out.n += 1;
            }
        }
        out
    }

    /// Stores every dirty register; they stay cached, clean.
    fn spill(&mut self, ops: &mut Asm) {
        store_all(ops, &self.dirty_entries());
        self.dirty = [false; POOL.len()];
    }
}

/// Up to one (host register, guest register) pair per pool slot, without
/// a heap allocation (translation speed matters: a boot translates
/// mostly cold code).
#[derive(Debug, Clone, Copy, Default)]
struct Pairs {
    n: usize,
    p: [(u8, u8); POOL.len()],
}

impl std::ops::Deref for Pairs {
    type Target = [(u8, u8)];
    fn deref(&self) -> &[(u8, u8)] {
        &self.p[..self.n]
    }
}

/// Stores host registers to their guest registers in the hart.
fn store_all(ops: &mut Asm, pairs: &[(u8, u8)]) {
    for &(h, g) in pairs {
        asm!(ops ; mov [rbx + xoff(g)], Rq(h));
    }
}

/// rax = guest register r. `carried` is the register rax still holds
/// from the end of the previous instruction, if any (then no load: this
/// keeps dependent instructions off a store-to-load forwarding chain).
fn rax_from(ops: &mut Asm, rc: &mut RegCache, carried: &mut Option<u8>, r: u8) {
    let held = carried.take();
    if r == 0 || held != Some(r) {
        reg_into(ops, rc, r, RAX);
    }
}

/// rax = guest register a, rcx = guest register b.
fn operands(ops: &mut Asm, rc: &mut RegCache, carried: &mut Option<u8>, a: u8, b: u8) {
    if b != 0 && *carried == Some(b) {
        asm!(ops ; mov rcx, rax);
        if a != b {
            rax_from(ops, rc, carried, a);
        }
        *carried = None;
    } else {
        rax_from(ops, rc, carried, a);
        rcx_from(ops, rc, b);
    }
}

fn rcx_from(ops: &mut Asm, rc: &mut RegCache, r: u8) {
    reg_into(ops, rc, r, RCX);
}

/// x86 register numbers.
const RAX: u8 = 0;
const RCX: u8 = 1;
const RSI: u8 = 6;

/// The JIT-TLB probe for an access of `size` bytes at va rax, in the half
/// of the table at `half_off` (loads 0, stores after them): entry
/// (va >> 12) & (N-1) (16 bytes each), tag = the page of va. Comparing the
/// page of the access's last byte (computed in `scratch`) sends an access
/// crossing the page to `slow` too. On a hit rax = the host address.
fn tlb_probe(ops: &mut Asm, size: i32, scratch: u8, half_off: i32, slow: DynamicLabel) {
    asm!(ops
        ; mov rdx, rax
        ; shr rdx, 8
        ; and edx, ((JTLB_SIZE - 1) << 4) as i32
        ; lea Rq(scratch), [rax + (size - 1)]
        ; and Rq(scratch), -4096
        ; cmp Rq(scratch), [r15 + rdx + half_off]
        ; jne =>slow
        ; add rax, [r15 + rdx + half_off + 8]
    );
}

/// Host register `x` (rax or rcx) = guest register r: from its cache
/// register, or from memory (then cached, unless r is the destination of
/// the instruction being emitted, whose result replaces it).
fn reg_into(ops: &mut Asm, rc: &mut RegCache, r: u8, x: u8) {
    if r == 0 {
        asm!(ops ; xor Rd(x), Rd(x));
    } else if let Some(h) = rc.get(r) {
        asm!(ops ; mov Rq(x), Rq(h));
    } else if r == rc.dst {
        asm!(ops ; mov Rq(x), [rbx + xoff(r)]);
    } else {
        let h = rc.assign(ops, r);
        asm!(ops
            ; mov Rq(x), [rbx + xoff(r)]
            ; mov Rq(h), Rq(x)
        );
    }
}

/// Guest register r = rax; the last thing an instruction emits, so the
/// next one may use rax as r (`held`).
fn rax_to(ops: &mut Asm, rc: &mut RegCache, held: &mut Option<u8>, r: u8) {
    if r != 0 {
        let h = rc.assign(ops, r);
        asm!(ops ; mov Rq(h), rax);
        rc.set_dirty(r);
    }
    *held = (r != 0).then_some(r);
}

/// Jumps to the translated block of guest address rax when the jump cache
/// knows it, else goes on at `miss` (rax unchanged).
fn jump_cache(ops: &mut Asm, miss: DynamicLabel) {
    asm!(ops
        ; mov edx, eax
        ; shl edx, 4
        ; and edx, ((JCACHE_SIZE - 1) << 5) as i32
        ; add rdx, [r12 + CTX_JCACHE]
        ; cmp rax, [rdx]
        ; jne =>miss
        ; jmp QWORD [rdx + 8]
    );
}

/// A store slow path (rax = va, rcx = value on entry).
struct SlowStore {
    /// Registers dirty at the branch to the slow path (stored first).
    spill: Pairs,
    /// The register cache at `done`, reloaded after the call.
    reload: Pairs,
    entry: DynamicLabel,
    done: DynamicLabel,
    desc: u64,
    pc: u64,
    before: usize,
}

/// A load slow path, emitted after the block's straight-line code.
struct SlowLoad {
    /// Registers dirty at the branch to the slow path (stored first).
    spill: Pairs,
    /// The register cache at `done`, reloaded after the call.
    reload: Pairs,
    /// The fast path addressed off a cache register without computing
    /// the va in rax: (host register, offset) to compute it from.
    va_from: Option<(u8, i32)>,
    rd: u8,
    entry: DynamicLabel,
    done: DynamicLabel,
    desc: u64,
    pc: u64,
    /// Instructions retired before this one (for the exit stub).
    before: usize,
}

/// Records a chain link: (successor va, executable address just past the
/// jmp's rel32) -> link number, None when links ran out (the caller
/// flushes before that can happen).
pub(crate) type NewSlot<'a> = dyn FnMut(u64, u64) -> Option<u64> + 'a;

/// Emits one block. `va` is its guest virtual start, `base` the executable
/// address it will be copied to (only chain links use it); `new_slot`
/// records a chain link to a successor in the same page. Returns the code.
pub(crate) fn emit_block(
    insts: &[BlockInst],
    va: u64,
    base: u64,
    h: &Helpers,
    window: Option<(u64, u64)>,
    new_slot: &mut NewSlot<'_>,
) -> Vec<u8> {
    let mut e = Emitter {
        window,
        ops: Asm::new(0),
        h: *h,
        va,
        base,
        slow: Vec::new(),
        slow_stores: Vec::new(),
        exits: vec![None; insts.len() + 1],
        held: None,
        carried: None,
        rc: RegCache::default(),
        last: false,
        taken_exits: Vec::new(),
    };
    let mut pc = va;
    let mut ended = false;
    for (i, bi) in insts.iter().enumerate() {
        let next = pc.wrapping_add(u64::from(bi.len));
        e.last = i + 1 == insts.len();
        ended = e.inst(i, bi, pc, next, new_slot);
        pc = match bi.inst {
            // Followed by the superblock (see build_region).
            Inst::Jal { off, .. } if !e.last => pc.wrapping_add(off as u64),
            _ => next,
        };
        if ended {
            break;
        }
    }
    if !ended {
        // Page end or the length limit: fall through to the next block.
        e.rc.spill(&mut e.ops);
        e.chain_exit(pc, insts.len(), new_slot);
    }
    for (label, target, retired, dirty) in std::mem::take(&mut e.taken_exits) {
        let ops = &mut e.ops;
        asm!(ops ; =>label);
        store_all(ops, &dirty);
        e.chain_exit(target, retired, new_slot);
    }
    e.finish()
}

/// A taken exit of a branch inside a superblock: (label, target pc,
/// instructions retired, the registers dirty when the branch is taken).
type TakenExit = (DynamicLabel, u64, usize, Pairs);

struct Emitter {
    /// Loads go straight to RAM (guest physical base, length; rbp = host
    /// minus base) instead of through the load TLB: data accesses are
    /// untranslated in the context this block is made for.
    window: Option<(u64, u64)>,
    ops: Asm,
    h: Helpers,
    va: u64,
    base: u64,
    slow: Vec<SlowLoad>,
    slow_stores: Vec<SlowStore>,
    /// Exit stubs by instructions-retired-before count.
    exits: Vec<Option<DynamicLabel>>,
    /// The guest register rax holds at the end of the last instruction.
    held: Option<u8>,
    /// The same, for the instruction being emitted (taken by its first
    /// operand read).
    carried: Option<u8>,
    /// Guest registers held in host registers (see [`RegCache`]).
    rc: RegCache,
    /// The instruction being emitted is the block's last.
    last: bool,
    /// Taken exits of branches inside a superblock: (label, target pc,
    /// instructions retired).
    taken_exits: Vec<TakenExit>,
}

impl Emitter {
    /// The stub a helper's non-zero status jumps to: count the
    /// instructions before, return the status.
    fn fault_exit(&mut self, before: usize) -> DynamicLabel {
        if let Some(l) = self.exits[before] {
            return l;
        }
        let l = self.ops.new_dynamic_label();
        self.exits[before] = Some(l);
        l
    }

    fn call(&mut self, f: u64) {
        let ops = &mut self.ops;
        asm!(ops
            ; mov rax, QWORD f as i64
            ; call rax
        );
    }

    /// Leaves for the dispatcher with pc already stored.
    fn dynamic_exit(&mut self, retired: usize) {
        let exit = self.h.exit;
        let ops = &mut self.ops;
        asm!(ops
            ; sub r13, retired as i32
            ; xor eax, eax
            ; mov rcx, QWORD exit as i64
            ; jmp rcx
        );
    }

    /// Ends the block towards a statically known pc: straight into the
    /// successor's native code when it is linked and the budget allows,
    /// else back to the dispatcher (noting the slot to link on a miss).
    fn chain_exit(&mut self, target: u64, retired: usize, new_slot: &mut NewSlot<'_>) {
        let exit = self.h.exit;
        let out = self.ops.new_dynamic_label();
        let n = retired as i32;
        let same_page = target >> 12 == self.va >> 12;
        let ops = &mut self.ops;
        if !same_page {
            asm!(ops ; mov rax, QWORD target as i64);
        }
        asm!(ops
            ; sub r13, n
            ; jle =>out
        );
        // Only within the page: the same virtual page maps to the same
        // physical page, so the link stays right for any run that entered
        // this block (whose page translation was just checked).
        if same_page {
            // A jmp to the next instruction until the dispatcher links it.
            let miss = ops.new_dynamic_label();
            asm!(ops ; jmp =>miss);
            let end = self.base + ops.offset().0 as u64;
            if let Some(slot) = new_slot(target, end) {
                asm!(ops
                    ; =>miss
                    ; mov QWORD [r12 + CTX_MISS_SLOT], (slot + 1) as i32
                );
            } else {
                asm!(ops ; =>miss);
            }
            asm!(ops
                ; =>out
                ; mov rax, QWORD target as i64
            );
        } else {
            // Another page: through the jump cache (rax = target).
            jump_cache(ops, out);
            asm!(ops ; =>out);
        }
        asm!(ops
            ; mov [rbx + HART_PC], rax
            ; xor eax, eax
            ; mov rcx, QWORD exit as i64
            ; jmp rcx
        );
    }

    /// Calls the interpreter for one instruction; a terminal instruction
    /// then leaves for the dispatcher.
    fn interp(&mut self, i: usize, bi: &BlockInst, pc: u64) -> bool {
        let ptr = bi as *const BlockInst as u64;
        let f = self.h.interp;
        let stop = self.fault_exit(i);
        let ops = &mut self.ops;
        // The interpreter reads and writes the hart's registers.
        self.rc.spill(ops);
        // The interpreter may read or write instret (CSRs): bring it up to
        // date first.
        asm!(ops
            ; sub r14, r13
            ; add [rbx + HART_INSTRET], r14
            ; mov r14, r13
            ; mov rdi, rbx
            ; mov rsi, r12
            ; mov rdx, QWORD ptr as i64
            ; mov rcx, QWORD pc as i64
        );
        self.call(f);
        // The call clobbers the cache, the instruction may write any register.
        self.rc.clear();
        let ops = &mut self.ops;
        asm!(ops
            ; test eax, eax
            ; jnz =>stop
        );
        if ends_block(&bi.inst) {
            self.dynamic_exit(i + 1);
            true
        } else {
            false
        }
    }

    /// Emits instruction `i`; true when it ended the block.
    fn inst(
        &mut self,
        i: usize,
        bi: &BlockInst,
        pc: u64,
        next: u64,
        new_slot: &mut NewSlot<'_>,
    ) -> bool {
        self.carried = self.held.take();
        self.rc.dst = match bi.inst {
            Inst::Lui { rd, .. }
            | Inst::Auipc { rd, .. }
            | Inst::Jal { rd, .. }
            | Inst::Jalr { rd, .. }
            | Inst::Load { rd, .. }
            | Inst::OpImm { rd, .. }
            | Inst::Op { rd, .. }
            | Inst::MulDiv { rd, .. } => rd,
            _ => 0,
        };
        let ended = self.inst_body(i, bi, pc, next, new_slot);
        self.carried = None;
        ended
    }

    fn inst_body(
        &mut self,
        i: usize,
        bi: &BlockInst,
        pc: u64,
        next: u64,
        new_slot: &mut NewSlot<'_>,
    ) -> bool {
        match bi.inst {
            Inst::Lui { rd, imm } => {
                if rd != 0 {
                    let ops = &mut self.ops;
                    asm!(ops ; mov rax, QWORD imm);
                    rax_to(ops, &mut self.rc, &mut self.held, rd);
                }
            }
            Inst::Auipc { rd, imm } => {
                if rd != 0 {
                    let v = pc.wrapping_add(imm as u64);
                    let ops = &mut self.ops;
                    asm!(ops ; mov rax, QWORD v as i64);
                    rax_to(ops, &mut self.rc, &mut self.held, rd);
                }
            }
            Inst::Jal { rd, off } => {
                if rd != 0 {
                    let ops = &mut self.ops;
                    asm!(ops ; mov rax, QWORD next as i64);
                    rax_to(ops, &mut self.rc, &mut self.held, rd);
                }
                if !self.last {
                    // The superblock goes on at the target.
                    return false;
                }
                self.rc.spill(&mut self.ops);
                self.chain_exit(pc.wrapping_add(off as u64), i + 1, new_slot);
                return true;
            }
            Inst::Jalr { rd, rs1, off } => {
                let exit = self.h.exit;
                let out = self.ops.new_dynamic_label();
                let n = (i + 1) as i32;
                let ops = &mut self.ops;
                rax_from(ops, &mut self.rc, &mut self.carried, rs1);
                asm!(ops
                    ; add rax, off as i32
                    ; and rax, -2
                );
                // Everything to the hart, then rd (which may be cached).
                self.rc.spill(ops);
                if rd != 0 {
                    asm!(ops
                        ; mov rcx, QWORD next as i64
                        ; mov [rbx + xoff(rd)], rcx
                    );
                    self.rc.forget(rd);
                }
                asm!(ops
                    ; sub r13, n
                    ; jle =>out
                );
                jump_cache(ops, out);
                asm!(ops
                    ; =>out
                    ; mov [rbx + HART_PC], rax
                    ; xor eax, eax
                    ; mov rcx, QWORD exit as i64
                    ; jmp rcx
                );
                return true;
            }
            Inst::Branch { op, rs1, rs2, off } => {
                let taken = self.ops.new_dynamic_label();
                let ops = &mut self.ops;
                if self.last {
                    // Both ways leave the block.
                    self.rc.spill(ops);
                }
                let h1 = self.rc.get(rs1).filter(|_| rs1 != 0);
                if let Some(h1) = h1 {
                    if rs2 == 0 {
                        asm!(ops ; cmp Rq(h1), 0);
                    } else if let Some(h2) = self.rc.get(rs2) {
                        asm!(ops ; cmp Rq(h1), Rq(h2));
                    } else {
                        asm!(ops ; cmp Rq(h1), [rbx + xoff(rs2)]);
                    }
                } else if rs2 != 0 && self.carried != Some(rs2) {
                    rax_from(ops, &mut self.rc, &mut self.carried, rs1);
                    if let Some(h) = self.rc.get(rs2) {
                        asm!(ops ; cmp rax, Rq(h));
                    } else {
                        asm!(ops ; cmp rax, [rbx + xoff(rs2)]);
                    }
                } else {
                    operands(ops, &mut self.rc, &mut self.carried, rs1, rs2);
                    asm!(ops ; cmp rax, rcx);
                }
                match op {
                    BranchOp::Eq => asm!(ops ; je =>taken),
                    BranchOp::Ne => asm!(ops ; jne =>taken),
                    BranchOp::Lt => asm!(ops ; jl =>taken),
                    BranchOp::Ge => asm!(ops ; jge =>taken),
                    BranchOp::Ltu => asm!(ops ; jb =>taken),
                    BranchOp::Geu => asm!(ops ; jae =>taken),
                }
                let target = pc.wrapping_add(off as u64);
                if !self.last {
                    // Inside a superblock: the not-taken path goes on, the
                    // taken exit is emitted after the block's code.
                    let dirty = self.rc.dirty_entries();
                    self.taken_exits.push((taken, target, i + 1, dirty));
                    return false;
                }
                self.chain_exit(next, i + 1, new_slot);
                let ops = &mut self.ops;
                asm!(ops ; =>taken);
                self.chain_exit(target, i + 1, new_slot);
                return true;
            }
            Inst::Load { op, rd, rs1, off } => self.load(i, bi, pc, op, rd, rs1, off),
            Inst::Store { op, rs1, rs2, off } => self.store(i, bi, pc, op, rs1, rs2, off),
            Inst::OpImm {
                op,
                word,
                rd,
                rs1,
                imm,
            } => {
                if rd != 0 && !self.op_imm(op, word, rd, rs1, imm) {
                    return self.interp(i, bi, pc);
                }
            }
            Inst::Op {
                op,
                word,
                rd,
                rs1,
                rs2,
            } => {
                if rd != 0 && !self.op(op, word, rd, rs1, rs2) {
                    return self.interp(i, bi, pc);
                }
            }
            Inst::MulDiv {
                op,
                word,
                rd,
                rs1,
                rs2,
            } => {
                if rd != 0 {
                    self.muldiv(op, word, rd, rs1, rs2);
                }
            }
            // A host full barrier, as in the interpreter (see there).
            Inst::Fence => {
                let ops = &mut self.ops;
                asm!(ops ; mfence);
            }
            _ => return self.interp(i, bi, pc),
        }
        false
    }

    /// A store: inline into RAM through the store TLB (pages that hold no
    /// code and no reservation), else the helper.
    #[allow(clippy::too_many_arguments)]
    fn store(
        &mut self,
        i: usize,
        bi: &BlockInst,
        pc: u64,
        op: StoreOp,
        rs1: u8,
        rs2: u8,
        off: i64,
    ) {
        let size: i32 = match op {
            StoreOp::B => 1,
            StoreOp::H => 2,
            StoreOp::W => 4,
            StoreOp::D => 8,
        };
        let slow = self.ops.new_dynamic_label();
        let done = self.ops.new_dynamic_label();
        let stlb = (JTLB_SIZE * 16) as i32;
        let ops = &mut self.ops;
        operands(ops, &mut self.rc, &mut self.carried, rs1, rs2);
        let spill = self.rc.dirty_entries();
        if off != 0 {
            asm!(ops ; add rax, off as i32);
        }
        // rax = va, rcx = value. Probe as for loads, in the store half.
        tlb_probe(ops, size, RSI, stlb, slow);
        match op {
            StoreOp::B => asm!(ops ; mov [rax], cl),
            StoreOp::H => asm!(ops ; mov [rax], cx),
            StoreOp::W => asm!(ops ; mov [rax], ecx),
            StoreOp::D => asm!(ops ; mov [rax], rcx),
        }
        asm!(ops ; =>done);
        self.slow_stores.push(SlowStore {
            spill,
            reload: self.rc.entries(),
            entry: slow,
            done,
            desc: store_desc(size as u8, bi.len),
            pc,
            before: i,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn load(&mut self, i: usize, bi: &BlockInst, pc: u64, op: LoadOp, rd: u8, rs1: u8, off: i64) {
        let (size, signed) = match op {
            LoadOp::B => (1, true),
            LoadOp::H => (2, true),
            LoadOp::W => (4, true),
            LoadOp::D => (8, false),
            LoadOp::Bu => (1, false),
            LoadOp::Hu => (2, false),
            LoadOp::Wu => (4, false),
        };
        let slow = self.ops.new_dynamic_label();
        let done = self.ops.new_dynamic_label();
        let ops = &mut self.ops;
        // Direct window, base register cached: address off it. Yields the
        // registers to spill on the slow path and where its va comes from.
        let cached = self.rc.get(rs1).filter(|_| rs1 != 0);
        let off_cached = 'cached: {
            let (Some((base, len)), Some(h)) = (self.window, cached) else {
                break 'cached None;
            };
            let spill = self.rc.dirty_entries();
            let limit = (len - size as u64) as i32;
            if let Ok(disp) = i32::try_from(off - base as i64) {
                let off = off as i32;
                asm!(ops
                    ; lea rcx, [Rq(h) + disp]
                    ; cmp rcx, limit
                    ; ja =>slow
                );
                match op {
                    LoadOp::B => asm!(ops ; movsx rax, BYTE [Rq(h) + rbp + off]),
                    LoadOp::H => asm!(ops ; movsx rax, WORD [Rq(h) + rbp + off]),
                    LoadOp::W => asm!(ops ; movsxd rax, DWORD [Rq(h) + rbp + off]),
                    LoadOp::D => asm!(ops ; mov rax, [Rq(h) + rbp + off]),
                    LoadOp::Bu => asm!(ops ; movzx eax, BYTE [Rq(h) + rbp + off]),
                    LoadOp::Hu => asm!(ops ; movzx eax, WORD [Rq(h) + rbp + off]),
                    LoadOp::Wu => asm!(ops ; mov eax, [Rq(h) + rbp + off]),
                }
                break 'cached Some((spill, Some((h, off))));
            }
            None
        };
        let (spill, va_from) = match off_cached {
            Some(fast) => fast,
            None => (self.load_fast_path_from_rax(op, size, rs1, off, slow), None),
        };
        let ops = &mut self.ops;
        rax_to(ops, &mut self.rc, &mut self.held, rd);
        asm!(ops ; =>done);
        self.slow.push(SlowLoad {
            spill,
            reload: self.rc.entries(),
            va_from,
            rd,
            entry: slow,
            done,
            desc: load_desc(size as u8, signed, rd, bi.len),
            pc,
            before: i,
        });
    }

    /// The fast path of a load whose va is computed in rax (base register
    /// not cached, or the window offset not an i32): the direct window's
    /// bounds check or the load-TLB probe, then the load into rax; jumps to
    /// `slow` when neither applies. Returns the registers dirty at that
    /// branch (spilled on the slow path).
    fn load_fast_path_from_rax(
        &mut self,
        op: LoadOp,
        size: i32,
        rs1: u8,
        off: i64,
        slow: DynamicLabel,
    ) -> Pairs {
        let ops = &mut self.ops;
        rax_from(ops, &mut self.rc, &mut self.carried, rs1);
        let spill = self.rc.dirty_entries();
        if off != 0 {
            asm!(ops ; add rax, off as i32);
        }
        if let Some((base, len)) = self.window {
            // Direct window: va - base must leave room for the access.
            let limit = (len - size as u64) as i32;
            let disp = (base as i64).wrapping_neg() as i32;
            asm!(ops
                ; lea rcx, [rax + disp]
                ; cmp rcx, limit
                ; ja =>slow
            );
            match op {
                LoadOp::B => asm!(ops ; movsx rax, BYTE [rax + rbp]),
                LoadOp::H => asm!(ops ; movsx rax, WORD [rax + rbp]),
                LoadOp::W => asm!(ops ; movsxd rax, DWORD [rax + rbp]),
                LoadOp::D => asm!(ops ; mov rax, [rax + rbp]),
                LoadOp::Bu => asm!(ops ; movzx eax, BYTE [rax + rbp]),
                LoadOp::Hu => asm!(ops ; movzx eax, WORD [rax + rbp]),
                LoadOp::Wu => asm!(ops ; mov eax, [rax + rbp]),
            }
        } else {
            tlb_probe(ops, size, RCX, 0, slow);
            match op {
                LoadOp::B => asm!(ops ; movsx rax, BYTE [rax]),
                LoadOp::H => asm!(ops ; movsx rax, WORD [rax]),
                LoadOp::W => asm!(ops ; movsxd rax, DWORD [rax]),
                LoadOp::D => asm!(ops ; mov rax, [rax]),
                LoadOp::Bu => asm!(ops ; movzx eax, BYTE [rax]),
                LoadOp::Hu => asm!(ops ; movzx eax, WORD [rax]),
                LoadOp::Wu => asm!(ops ; mov eax, [rax]),
            }
        }
        spill
    }

    fn op_imm(&mut self, op: AluOp, word: bool, rd: u8, rs1: u8, imm: i64) -> bool {
        let ops = &mut self.ops;
        let imm32 = imm as i32;
        if i64::from(imm32) != imm {
            return false;
        }
        if word {
            rax_from(ops, &mut self.rc, &mut self.carried, rs1);
            let sh = (imm & 31) as i8;
            match op {
                AluOp::Add => asm!(ops ; add eax, imm32),
                AluOp::Sll => asm!(ops ; shl eax, sh),
                AluOp::Srl => asm!(ops ; shr eax, sh),
                AluOp::Sra => asm!(ops ; sar eax, sh),
                _ => return false,
            }
            asm!(ops ; movsxd rax, eax);
            rax_to(ops, &mut self.rc, &mut self.held, rd);
            return true;
        }
        if let Some(hs) = self.rc.get(rs1).filter(|_| rs1 != 0) {
            // Straight between cache registers (rax untouched). Taking a
            // slot for rd may evict rs1, whose host register then still
            // holds its value: hd == hs.
            let sh = (imm & 63) as i8;
            let simple = matches!(
                op,
                AluOp::Add
                    | AluOp::Xor
                    | AluOp::Or
                    | AluOp::And
                    | AluOp::Sll
                    | AluOp::Srl
                    | AluOp::Sra
            );
            if simple {
                let hd = self.rc.assign(ops, rd);
                if hd != hs && op == AluOp::Add {
                    asm!(ops ; lea Rq(hd), [Rq(hs) + imm32]);
                } else {
                    if hd != hs {
                        asm!(ops ; mov Rq(hd), Rq(hs));
                    }
                    match op {
                        AluOp::Add => asm!(ops ; add Rq(hd), imm32),
                        AluOp::Xor => asm!(ops ; xor Rq(hd), imm32),
                        AluOp::Or => asm!(ops ; or Rq(hd), imm32),
                        AluOp::And => asm!(ops ; and Rq(hd), imm32),
                        AluOp::Sll => asm!(ops ; shl Rq(hd), sh),
                        AluOp::Srl => asm!(ops ; shr Rq(hd), sh),
                        _ => asm!(ops ; sar Rq(hd), sh),
                    }
                }
                self.rc.set_dirty(rd);
                return true;
            }
        }
        if op == AluOp::Add && rs1 == 0 {
            let h = self.rc.assign(ops, rd);
            asm!(ops ; mov Rq(h), imm32);
            self.rc.set_dirty(rd);
            return true;
        }
        rax_from(ops, &mut self.rc, &mut self.carried, rs1);
        let sh = (imm & 63) as i8;
        match op {
            AluOp::Add => asm!(ops ; add rax, imm32),
            AluOp::Xor => asm!(ops ; xor rax, imm32),
            AluOp::Or => asm!(ops ; or rax, imm32),
            AluOp::And => asm!(ops ; and rax, imm32),
            AluOp::Sll => asm!(ops ; shl rax, sh),
            AluOp::Srl => asm!(ops ; shr rax, sh),
            AluOp::Sra => asm!(ops ; sar rax, sh),
            AluOp::Slt => asm!(ops
                ; xor ecx, ecx
                ; cmp rax, imm32
                ; setl cl
                ; mov rax, rcx
            ),
            AluOp::Sltu => asm!(ops
                ; xor ecx, ecx
                ; cmp rax, imm32
                ; setb cl
                ; mov rax, rcx
            ),
            AluOp::Sub => return false,
        }
        rax_to(ops, &mut self.rc, &mut self.held, rd);
        true
    }

    fn op(&mut self, op: AluOp, word: bool, rd: u8, rs1: u8, rs2: u8) -> bool {
        let ops = &mut self.ops;
        let direct = matches!(
            op,
            AluOp::Add | AluOp::Sub | AluOp::Xor | AluOp::Or | AluOp::And
        );
        // rd = rd op rs2 with rd cached: in its host register.
        if !word && direct && rd == rs1 && rs2 != 0 {
            if let Some(h) = self.rc.get(rd) {
                if let Some(h2) = self.rc.get(rs2) {
                    match op {
                        AluOp::Add => asm!(ops ; add Rq(h), Rq(h2)),
                        AluOp::Sub => asm!(ops ; sub Rq(h), Rq(h2)),
                        AluOp::Xor => asm!(ops ; xor Rq(h), Rq(h2)),
                        AluOp::Or => asm!(ops ; or Rq(h), Rq(h2)),
                        _ => asm!(ops ; and Rq(h), Rq(h2)),
                    }
                } else {
                    let m = xoff(rs2);
                    match op {
                        AluOp::Add => asm!(ops ; add Rq(h), [rbx + m]),
                        AluOp::Sub => asm!(ops ; sub Rq(h), [rbx + m]),
                        AluOp::Xor => asm!(ops ; xor Rq(h), [rbx + m]),
                        AluOp::Or => asm!(ops ; or Rq(h), [rbx + m]),
                        _ => asm!(ops ; and Rq(h), [rbx + m]),
                    }
                }
                self.rc.set_dirty(rd);
                return true;
            }
        }
        // The common two-operand forms take rs2 straight from memory.
        if !word && rs2 != 0 && self.carried != Some(rs2) {
            let m = xoff(rs2);
            if direct {
                rax_from(ops, &mut self.rc, &mut self.carried, rs1);
                if let Some(h) = self.rc.get(rs2) {
                    match op {
                        AluOp::Add => asm!(ops ; add rax, Rq(h)),
                        AluOp::Sub => asm!(ops ; sub rax, Rq(h)),
                        AluOp::Xor => asm!(ops ; xor rax, Rq(h)),
                        AluOp::Or => asm!(ops ; or rax, Rq(h)),
                        _ => asm!(ops ; and rax, Rq(h)),
                    }
                } else {
                    match op {
                        AluOp::Add => asm!(ops ; add rax, [rbx + m]),
                        AluOp::Sub => asm!(ops ; sub rax, [rbx + m]),
                        AluOp::Xor => asm!(ops ; xor rax, [rbx + m]),
                        AluOp::Or => asm!(ops ; or rax, [rbx + m]),
                        _ => asm!(ops ; and rax, [rbx + m]),
                    }
                }
                rax_to(ops, &mut self.rc, &mut self.held, rd);
                return true;
            }
        }
        operands(ops, &mut self.rc, &mut self.carried, rs1, rs2);
        if word {
            match op {
                AluOp::Add => asm!(ops ; add eax, ecx),
                AluOp::Sub => asm!(ops ; sub eax, ecx),
                AluOp::Sll => asm!(ops ; shl eax, cl),
                AluOp::Srl => asm!(ops ; shr eax, cl),
                AluOp::Sra => asm!(ops ; sar eax, cl),
                _ => return false,
            }
            asm!(ops ; movsxd rax, eax);
        } else {
            match op {
                AluOp::Add => asm!(ops ; add rax, rcx),
                AluOp::Sub => asm!(ops ; sub rax, rcx),
                AluOp::Xor => asm!(ops ; xor rax, rcx),
                AluOp::Or => asm!(ops ; or rax, rcx),
                AluOp::And => asm!(ops ; and rax, rcx),
                AluOp::Sll => asm!(ops ; shl rax, cl),
                AluOp::Srl => asm!(ops ; shr rax, cl),
                AluOp::Sra => asm!(ops ; sar rax, cl),
                AluOp::Slt => asm!(ops
                    ; xor edx, edx
                    ; cmp rax, rcx
                    ; setl dl
                    ; mov rax, rdx
                ),
                AluOp::Sltu => asm!(ops
                    ; xor edx, edx
                    ; cmp rax, rcx
                    ; setb dl
                    ; mov rax, rdx
                ),
            }
        }
        rax_to(ops, &mut self.rc, &mut self.held, rd);
        true
    }

    fn muldiv(&mut self, op: MulOp, word: bool, rd: u8, rs1: u8, rs2: u8) {
        let f = self.h.muldiv;
        let ops = &mut self.ops;
        operands(ops, &mut self.rc, &mut self.carried, rs1, rs2);
        match (op, word) {
            (MulOp::Mul, false) => asm!(ops ; imul rax, rcx),
            (MulOp::Mul, true) => asm!(ops
                ; imul eax, ecx
                ; movsxd rax, eax
            ),
            (MulOp::Mulh, false) => asm!(ops
                ; imul rcx
                ; mov rax, rdx
            ),
            (MulOp::Mulhu, false) => asm!(ops
                ; mul rcx
                ; mov rax, rdx
            ),
            _ => {
                let code = muldiv_code(op, word);
                // Before rdi (a cache register) becomes an argument.
                self.rc.spill(ops);
                asm!(ops
                    ; mov rdi, rax
                    ; mov rsi, rcx
                    ; mov rdx, QWORD code as i64
                );
                self.call(f);
                self.rc.clear();
            }
        }
        let ops = &mut self.ops;
        rax_to(ops, &mut self.rc, &mut self.held, rd);
    }

    fn finish(mut self) -> Vec<u8> {
        let slow = std::mem::take(&mut self.slow);
        for s in slow {
            let stop = self.fault_exit(s.before);
            let f = self.h.load;
            let ops = &mut self.ops;
            asm!(ops ; =>s.entry);
            if let Some((h, off)) = s.va_from {
                asm!(ops ; lea rax, [Rq(h) + off]);
            }
            store_all(ops, &s.spill);
            asm!(ops
                ; mov rdx, rax
                ; mov rdi, rbx
                ; mov rsi, r12
                ; mov rcx, QWORD s.desc as i64
                ; mov r8, QWORD s.pc as i64
            );
            self.call(f);
            let ops = &mut self.ops;
            asm!(ops
                ; test eax, eax
                ; jnz =>stop
            );
            for &(h, g) in s.reload.iter() {
                asm!(ops ; mov Rq(h), [rbx + xoff(g)]);
            }
            if s.rd != 0 {
                // The fast path leaves the value in rax too.
                asm!(ops ; mov rax, [rbx + xoff(s.rd)]);
            }
            asm!(ops ; jmp =>s.done);
        }
        let stores = std::mem::take(&mut self.slow_stores);
        for s in stores {
            let stop = self.fault_exit(s.before);
            let f = self.h.store;
            let ops = &mut self.ops;
            asm!(ops ; =>s.entry);
            store_all(ops, &s.spill);
            asm!(ops
                ; mov rdx, rax
                ; mov rdi, rbx
                ; mov rsi, r12
                ; mov r8, QWORD s.desc as i64
                ; mov r9, QWORD s.pc as i64
            );
            self.call(f);
            let ops = &mut self.ops;
            asm!(ops
                ; test eax, eax
                ; jnz =>stop
            );
            for &(h, g) in s.reload.iter() {
                asm!(ops ; mov Rq(h), [rbx + xoff(g)]);
            }
            asm!(ops ; jmp =>s.done);
        }
        let exit = self.h.exit;
        for (before, l) in self.exits.iter().enumerate() {
            if let Some(l) = *l {
                let ops = &mut self.ops;
                asm!(ops ; =>l);
                if before > 0 {
                    asm!(ops ; sub r13, before as i32);
                }
                asm!(ops
                    ; mov eax, 1
                    ; mov rcx, QWORD exit as i64
                    ; jmp rcx
                );
            }
        }
        self.ops.finalize().expect("block labels all defined")
    }
}
