//! The template emitter: one decoded block to x86-64.
//!
//! Conventions of the generated code:
//! - `rbx` points at the [`Hart`](crate::cpu::Hart) (guest x registers,
//!   pc and instret live there: every instruction reads and writes them in
//!   memory, so helpers always see current state; only the value an
//!   instruction leaves in rax is reused by the next one), `r12` at the
//!   [`JitCtx`](super::runtime::JitCtx), `r13` counts the chain's budget
//!   down by the instructions each block retires, `r14` is the value r13
//!   had when instret was last brought up to date (so instret lags by
//!   r14 - r13, settled before an interpreter call and at exit), `r15`
//!   points at the load TLB (the store TLB follows it). All are
//!   callee-saved, so helper calls keep them; rax, rcx, rdx, rsi and the
//!   other argument registers are scratch.
//! - The trampoline saves the callee-saved registers, aligns the stack to
//!   16 bytes (so blocks call helpers directly) and jumps to the block;
//!   every exit jumps back to its epilogue with the status in eax.
//! - Integer ALU, M multiplies, LUI/AUIPC/JAL/JALR, branches and the RAM
//!   fast paths of loads and stores (through the load and store TLBs) are
//!   inline; TLB misses, division and everything else (CSRs, FP, AMOs,
//!   system instructions) call Rust.
//! - Blocks are position independent (labels are relative, everything
//!   outside the block is an absolute 64-bit address), so a block can be
//!   copied anywhere in the arena.

use dynasmrt::x64::X64Relocation;
use dynasmrt::{dynasm, DynamicLabel, DynasmApi, DynasmLabelApi, VecAssembler};

use crate::cpu::{ends_block, BlockInst};
use crate::decode::{AluOp, BranchOp, Inst, LoadOp, MulOp, StoreOp};

use super::cache::{JCACHE_SIZE, JTLB_SIZE};
use super::runtime::{
    load_desc, muldiv_code, store_desc, CTX_BUDGET, CTX_JCACHE, CTX_JTLB, CTX_MISS_SLOT,
    HART_INSTRET, HART_PC, HART_X,
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

/// rax = guest register r. `carried` is the register rax still holds
/// from the end of the previous instruction, if any (then no load: this
/// keeps dependent instructions off a store-to-load forwarding chain).
fn rax_from(ops: &mut Asm, carried: &mut Option<u8>, r: u8) {
    let held = carried.take();
    if r == 0 {
        asm!(ops ; xor eax, eax);
    } else if held != Some(r) {
        asm!(ops ; mov rax, [rbx + xoff(r)]);
    }
}

/// rax = guest register a, rcx = guest register b.
fn operands(ops: &mut Asm, carried: &mut Option<u8>, a: u8, b: u8) {
    if b != 0 && *carried == Some(b) {
        asm!(ops ; mov rcx, rax);
        if a != b {
            rax_from(ops, carried, a);
        }
        *carried = None;
    } else {
        rax_from(ops, carried, a);
        rcx_from(ops, b);
    }
}

fn rcx_from(ops: &mut Asm, r: u8) {
    if r == 0 {
        asm!(ops ; xor ecx, ecx);
    } else {
        asm!(ops ; mov rcx, [rbx + xoff(r)]);
    }
}

/// Guest register r = rax; the last thing an instruction emits, so the
/// next one may use rax as r (`held`).
fn rax_to(ops: &mut Asm, held: &mut Option<u8>, r: u8) {
    if r != 0 {
        asm!(ops ; mov [rbx + xoff(r)], rax);
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
    entry: DynamicLabel,
    done: DynamicLabel,
    desc: u64,
    pc: u64,
    before: usize,
}

/// A load slow path, emitted after the block's straight-line code.
struct SlowLoad {
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
    new_slot: &mut NewSlot<'_>,
) -> Vec<u8> {
    let mut e = Emitter {
        ops: Asm::new(0),
        h: *h,
        va,
        base,
        slow: Vec::new(),
        slow_stores: Vec::new(),
        exits: vec![None; insts.len() + 1],
        held: None,
        carried: None,
        last: false,
        taken_exits: Vec::new(),
    };
    let mut pc = va;
    let mut ended = false;
    for (i, bi) in insts.iter().enumerate() {
        let next = pc.wrapping_add(u64::from(bi.len));
        e.last = i + 1 == insts.len();
        ended = e.inst(i, bi, pc, next, new_slot);
        pc = next;
        if ended {
            break;
        }
    }
    if !ended {
        // Page end or the length limit: fall through to the next block.
        e.chain_exit(pc, insts.len(), new_slot);
    }
    for (label, target, retired) in std::mem::take(&mut e.taken_exits) {
        let ops = &mut e.ops;
        asm!(ops ; =>label);
        e.chain_exit(target, retired, new_slot);
    }
    e.finish()
}

struct Emitter {
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
    /// The instruction being emitted is the block's last.
    last: bool,
    /// Taken exits of branches inside a superblock: (label, target pc,
    /// instructions retired).
    taken_exits: Vec<(DynamicLabel, u64, usize)>,
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
                    rax_to(ops, &mut self.held, rd);
                }
            }
            Inst::Auipc { rd, imm } => {
                if rd != 0 {
                    let v = pc.wrapping_add(imm as u64);
                    let ops = &mut self.ops;
                    asm!(ops ; mov rax, QWORD v as i64);
                    rax_to(ops, &mut self.held, rd);
                }
            }
            Inst::Jal { rd, off } => {
                if rd != 0 {
                    let ops = &mut self.ops;
                    asm!(ops ; mov rax, QWORD next as i64);
                    rax_to(ops, &mut self.held, rd);
                }
                self.chain_exit(pc.wrapping_add(off as u64), i + 1, new_slot);
                return true;
            }
            Inst::Jalr { rd, rs1, off } => {
                let exit = self.h.exit;
                let out = self.ops.new_dynamic_label();
                let n = (i + 1) as i32;
                let ops = &mut self.ops;
                rax_from(ops, &mut self.carried, rs1);
                asm!(ops
                    ; add rax, off as i32
                    ; and rax, -2
                );
                if rd != 0 {
                    asm!(ops
                        ; mov rcx, QWORD next as i64
                        ; mov [rbx + xoff(rd)], rcx
                    );
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
                if rs2 != 0 && self.carried != Some(rs2) {
                    rax_from(ops, &mut self.carried, rs1);
                    asm!(ops ; cmp rax, [rbx + xoff(rs2)]);
                } else {
                    operands(ops, &mut self.carried, rs1, rs2);
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
                    self.taken_exits.push((taken, target, i + 1));
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
        operands(ops, &mut self.carried, rs1, rs2);
        if off != 0 {
            asm!(ops ; add rax, off as i32);
        }
        // rax = va, rcx = value. Probe as for loads, in the store half.
        asm!(ops
            ; mov rdx, rax
            ; shr rdx, 8
            ; and edx, ((JTLB_SIZE - 1) << 4) as i32
            ; lea rsi, [rax + (size - 1)]
            ; and rsi, -4096
            ; cmp rsi, [r15 + rdx + stlb]
            ; jne =>slow
            ; add rax, [r15 + rdx + stlb + 8]
        );
        match op {
            StoreOp::B => asm!(ops ; mov [rax], cl),
            StoreOp::H => asm!(ops ; mov [rax], cx),
            StoreOp::W => asm!(ops ; mov [rax], ecx),
            StoreOp::D => asm!(ops ; mov [rax], rcx),
        }
        asm!(ops ; =>done);
        self.slow_stores.push(SlowStore {
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
        rax_from(ops, &mut self.carried, rs1);
        if off != 0 {
            asm!(ops ; add rax, off as i32);
        }
        // Load-TLB probe: entry (va >> 12) & (N-1) (16 bytes each), tag =
        // the page of va. Comparing the page of the access's last byte
        // sends an access crossing the page to the slow path too.
        asm!(ops
            ; mov rdx, rax
            ; shr rdx, 8
            ; and edx, ((JTLB_SIZE - 1) << 4) as i32
            ; lea rcx, [rax + (size - 1)]
            ; and rcx, -4096
            ; cmp rcx, [r15 + rdx]
            ; jne =>slow
            ; add rax, [r15 + rdx + 8]
        );
        match op {
            LoadOp::B => asm!(ops ; movsx rax, BYTE [rax]),
            LoadOp::H => asm!(ops ; movsx rax, WORD [rax]),
            LoadOp::W => asm!(ops ; movsxd rax, DWORD [rax]),
            LoadOp::D => asm!(ops ; mov rax, [rax]),
            LoadOp::Bu => asm!(ops ; movzx eax, BYTE [rax]),
            LoadOp::Hu => asm!(ops ; movzx eax, WORD [rax]),
            LoadOp::Wu => asm!(ops ; mov eax, [rax]),
        }
        rax_to(ops, &mut self.held, rd);
        asm!(ops ; =>done);
        self.slow.push(SlowLoad {
            rd,
            entry: slow,
            done,
            desc: load_desc(size as u8, signed, rd, bi.len),
            pc,
            before: i,
        });
    }

    fn op_imm(&mut self, op: AluOp, word: bool, rd: u8, rs1: u8, imm: i64) -> bool {
        let ops = &mut self.ops;
        let imm32 = imm as i32;
        if i64::from(imm32) != imm {
            return false;
        }
        if word {
            rax_from(ops, &mut self.carried, rs1);
            let sh = (imm & 31) as i8;
            match op {
                AluOp::Add => asm!(ops ; add eax, imm32),
                AluOp::Sll => asm!(ops ; shl eax, sh),
                AluOp::Srl => asm!(ops ; shr eax, sh),
                AluOp::Sra => asm!(ops ; sar eax, sh),
                _ => return false,
            }
            asm!(ops ; movsxd rax, eax);
            rax_to(ops, &mut self.held, rd);
            return true;
        }
        if op == AluOp::Add && rs1 == 0 {
            asm!(ops ; mov QWORD [rbx + xoff(rd)], imm32);
            return true;
        }
        rax_from(ops, &mut self.carried, rs1);
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
        rax_to(ops, &mut self.held, rd);
        true
    }

    fn op(&mut self, op: AluOp, word: bool, rd: u8, rs1: u8, rs2: u8) -> bool {
        let ops = &mut self.ops;
        // The common two-operand forms take rs2 straight from memory.
        if !word && rs2 != 0 && self.carried != Some(rs2) {
            let m = xoff(rs2);
            let direct = matches!(
                op,
                AluOp::Add | AluOp::Sub | AluOp::Xor | AluOp::Or | AluOp::And
            );
            if direct {
                rax_from(ops, &mut self.carried, rs1);
                match op {
                    AluOp::Add => asm!(ops ; add rax, [rbx + m]),
                    AluOp::Sub => asm!(ops ; sub rax, [rbx + m]),
                    AluOp::Xor => asm!(ops ; xor rax, [rbx + m]),
                    AluOp::Or => asm!(ops ; or rax, [rbx + m]),
                    _ => asm!(ops ; and rax, [rbx + m]),
                }
                rax_to(ops, &mut self.held, rd);
                return true;
            }
        }
        operands(ops, &mut self.carried, rs1, rs2);
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
        rax_to(ops, &mut self.held, rd);
        true
    }

    fn muldiv(&mut self, op: MulOp, word: bool, rd: u8, rs1: u8, rs2: u8) {
        let f = self.h.muldiv;
        let ops = &mut self.ops;
        operands(ops, &mut self.carried, rs1, rs2);
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
                asm!(ops
                    ; mov rdi, rax
                    ; mov rsi, rcx
                    ; mov rdx, QWORD code as i64
                );
                self.call(f);
            }
        }
        let ops = &mut self.ops;
        rax_to(ops, &mut self.held, rd);
    }

    fn finish(mut self) -> Vec<u8> {
        let slow = std::mem::take(&mut self.slow);
        for s in slow {
            let stop = self.fault_exit(s.before);
            let f = self.h.load;
            let ops = &mut self.ops;
            asm!(ops
                ; =>s.entry
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
            asm!(ops
                ; =>s.entry
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
                ; jmp =>s.done
            );
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
