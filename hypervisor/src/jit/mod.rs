//! The JIT engine (`--engine jit`): each guest basic block is decoded once
//! (the block engine's decoder, `cpu::build_block`) and, once it has run
//! [`DEFAULT_HOT_THRESHOLD`] times in the block engine, decoded again as a
//! superblock (on through not-taken conditional branches and JALs into
//! the same page, up to 64 instructions in the page) and translated to x86-64 (`emit.rs`), cached by physical and virtual start address
//! (`cache.rs`), and chained: a successor in the same page through a
//! patched jump, any other (indirect jumps included) through a jump cache.
//! Invalidation is the block engine's: a store to a page holding decoded
//! code moves the bus code generation, fence.i flushes the hart; either
//! drops every translated block at once. Interrupts are taken between
//! dispatcher runs: a chain returns after at most [`BUDGET`] instructions
//! plus one block. Anything the templates do not cover runs in the
//! reference interpreter through `runtime.rs` helpers; `reserve.rs` keeps
//! the inline store path off pages holding code or LR reservations. The
//! conformance suite runs every program under the interpreter, the block
//! engine and this engine against QEMU.

use std::sync::atomic::{AtomicU32, Ordering};

mod cache;
mod emit;
mod reserve;
mod runtime;

use crate::bus::Bus;
use crate::cpu::{build_region, Access, Event, Fault, Hart, MSTATUS_MPP, MSTATUS_MPRV};
use crate::cpu::{MSTATUS_MXR, MSTATUS_SUM, PRV_M};

use cache::{CodeCache, SlotInfo, TRAMPOLINE_BYTES};
use emit::Helpers;
use runtime::JitCtx;

/// Instructions a chain of native blocks may run before it returns to the
/// dispatcher (and so to the machine's interrupt check).
pub const BUDGET: i64 = 1024;

/// A block runs this many times in the block engine before it is
/// translated: most blocks of a boot run a handful of times between two
/// flushes, and decoding is cheaper than translating.
pub const DEFAULT_HOT_THRESHOLD: u32 = 4;
static HOT_THRESHOLD: AtomicU32 = AtomicU32::new(DEFAULT_HOT_THRESHOLD);

/// Sets how many runs make a block hot (process-wide; 1 translates every
/// block on its first run, which is what the conformance suite uses so
/// that the translator, not the block engine, runs every instruction).
pub fn set_hot_threshold(runs: u32) {
    HOT_THRESHOLD.store(runs.max(1), Ordering::Relaxed);
}
const HEAT_SLOTS: usize = 1 << 14;

#[derive(Debug, Clone, Copy, Default)]
struct Heat {
    pa: u64,
    epoch: u64,
    count: u32,
}

type EnterFn = unsafe extern "sysv64" fn(*mut Hart, *mut JitCtx, usize) -> u64;

/// Per-hart JIT state. Created empty; the code arena is mapped on the
/// first JIT step.
#[derive(Default)]
pub struct JitState {
    cache: Option<CodeCache>,
    /// The bus code generation the cached code was translated under.
    generation: u64,
    /// fence.i ran (possibly from inside native code): flush before the next run.
    pub(crate) flush_pending: bool,
    /// A chain exit that found its link unpatched: (what it links, cache
    /// epoch).
    pending_link: Option<(SlotInfo, u64, (u8, u64, u64))>,
    /// Translation context the load TLB was filled under.
    tlb_context: (u8, u64, u64),
    /// [`reserve::epoch`] the store TLB was filled under.
    store_epoch: u64,
    helpers: Option<Helpers>,
    enter: usize,
    /// The bus the load/store TLBs point into (host addresses of its RAM).
    bus_addr: usize,
    /// Executions of not yet translated blocks, by physical address.
    heat: Vec<Heat>,
    /// Blocks translated (for tests and --stats).
    pub translated: u64,
    /// Chain links made.
    pub links: u64,
    /// The code arena could not be mapped (e.g. a policy refusing
    /// executable mappings): this hart runs the block engine instead.
    unavailable: bool,
}

impl Clone for JitState {
    /// A cloned hart starts with an empty translation cache of its own.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for JitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitState")
            .field("translated", &self.translated)
            .field("links", &self.links)
            .finish_non_exhaustive()
    }
}

impl JitState {
    /// Whether this hart runs translated code (stores may then bypass the
    /// bus, see [`reserve`]).
    pub(crate) fn active(&self) -> bool {
        self.cache.is_some()
    }

    /// This hart executed an LR at physical `pa` on the bus at `bus`.
    pub(crate) fn note_lr(&mut self, bus: usize, hart: u64, pa: u64) {
        reserve::lr(bus, hart, pa);
        if let Some(c) = self.cache.as_mut() {
            c.flush_stlb();
        }
    }

    /// A block was decoded on some page (by the block-engine path).
    pub(crate) fn code_page_marked(&self) {
        reserve::code_page_marked();
    }

    /// This hart executed an SC.
    pub(crate) fn note_sc(&mut self, bus: usize, hart: u64) {
        reserve::sc(bus, hart);
    }

    /// The hart's TLB was flushed (sfence.vma, satp): the load TLB too.
    pub(crate) fn flush_tlb(&mut self) {
        if let Some(c) = self.cache.as_mut() {
            c.flush_jtlb();
            c.flush_jcache();
        }
    }

    fn flush(&mut self) {
        if let Some(c) = self.cache.as_mut() {
            c.flush();
        }
        self.pending_link = None;
        self.flush_pending = false;
    }

    /// Maps the arena and writes the trampoline, once; (re)binds the
    /// helpers to bus type B (flushing code made for another). False when
    /// no arena can be had: the caller runs the block engine.
    fn prepare<B: Bus>(&mut self) -> bool {
        if self.unavailable {
            return false;
        }
        if self.cache.is_none() {
            let mut c = match CodeCache::new() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("cowvisor: no JIT code arena ({e}); running the block engine");
                    self.unavailable = true;
                    return false;
                }
            };
            let (code, exit_off) = emit::trampoline();
            assert!(code.len() <= TRAMPOLINE_BYTES);
            c.arena.write_at(0, &code);
            self.enter = c.arena.base();
            self.cache = Some(c);
            self.helpers = Some(Helpers {
                load: 0,
                store: 0,
                interp: 0,
                muldiv: runtime::muldiv_helper as *const () as u64,
                exit: (self.enter + exit_off) as u64,
            });
        }
        let load = runtime::load_slow::<B> as *const () as u64;
        if let Some(h) = self.helpers.as_mut() {
            if h.load != load {
                h.load = load;
                h.store = runtime::store::<B> as *const () as u64;
                h.interp = runtime::interp::<B> as *const () as u64;
                self.flush();
            }
        }
        true
    }

    /// Counts one more run of the untranslated block at `pa`; true when
    /// it is now hot enough to translate.
    fn heat_up(&mut self, pa: u64) -> bool {
        let epoch = self.cache.as_ref().map_or(0, |c| c.epoch);
        if self.heat.is_empty() {
            self.heat = vec![Heat::default(); HEAT_SLOTS];
        }
        let h = &mut self.heat[((pa >> 1) as usize) % HEAT_SLOTS];
        if h.pa == pa && h.epoch == epoch {
            h.count += 1;
        } else {
            *h = Heat {
                pa,
                epoch,
                count: 1,
            };
        }
        h.count >= HOT_THRESHOLD.load(Ordering::Relaxed)
    }

    /// Translates a decoded block; returns its native entry.
    fn translate_block(
        &mut self,
        block: std::rc::Rc<[crate::cpu::BlockInst]>,
        pa: u64,
        va: u64,
        window: Option<(u64, u64)>,
    ) -> usize {
        let need_flush = {
            let c = self.cache.as_ref().expect("prepared");
            !c.arena.has_room() || c.slots_free() < 2
        };
        if need_flush {
            self.flush();
        }
        let h = self.helpers.expect("prepared");
        let c = self.cache.as_mut().expect("prepared");
        let pred_page = pa & !0xfff;
        let base = c.arena.next_addr() as u64;
        let code = emit::emit_block(&block, va, base, &h, window, &mut |target, jmp_end| {
            c.new_slot(SlotInfo {
                jmp_end,
                target_va: target,
                pred_page,
            })
        });
        assert!(
            code.len() <= cache::MAX_BLOCK_BYTES,
            "a translated block of {} bytes",
            code.len()
        );
        let entry = c.arena.append(&code);
        debug_assert_eq!(entry as u64, base);
        c.keep.push(block);
        c.insert(key(pa, window.is_some()), va, entry);
        self.translated += 1;
        entry
    }
}

/// The translation cache key of a block at physical `pa`: blocks made
/// for the direct RAM window (see `step_jit`) apart from the others.
fn key(pa: u64, direct: bool) -> u64 {
    pa | u64::from(direct) << 63
}

impl Hart {
    /// Executes translated blocks from pc until a chain ends (a block
    /// whose successor is not linked or lies in another page, an indirect
    /// jump, a system instruction, a trap, or the budget): the JIT engine.
    /// Returns the instructions retired. Interrupts are the caller's.
    pub fn step_jit<B: Bus>(&mut self, bus: &mut B) -> Result<u64, Event> {
        if !self.jit.prepare::<B>() {
            return self.step_block(bus);
        }
        let bus_addr = bus as *mut B as usize;
        if bus_addr != self.jit.bus_addr {
            // Another machine's RAM: nothing cached may point into it.
            self.jit.bus_addr = bus_addr;
            self.jit.flush();
            self.jit.flush_tlb();
        }
        let gen = bus.code_generation();
        if gen != self.jit.generation {
            self.jit.generation = gen;
            self.jit.flush();
            self.block_flushes += 1;
        } else if self.jit.flush_pending {
            // Counted by flush_blocks already.
            self.jit.flush();
        }
        // The load TLB and the jump cache hold translations of one context.
        let context = (
            self.prv,
            self.mstatus & (MSTATUS_MPRV | MSTATUS_MPP | MSTATUS_SUM | MSTATUS_MXR),
            self.satp,
        );
        if context != self.jit.tlb_context {
            self.jit.tlb_context = context;
            self.jit.flush_tlb();
        }
        // Loads bypass translation in this context (M-mode data, or satp
        // Bare, as in the user-mode harness): blocks translated now load
        // straight from RAM through a bounds check (the direct window) and
        // are cached apart from blocks with the TLB probe.
        let (ram_base, ram) = bus.ram();
        let ram_len = ram.len() as u64;
        let ram_addend = (ram.as_mut_ptr() as u64).wrapping_sub(ram_base);
        let untranslated = self.effective_prv(Access::Load) == PRV_M || self.satp >> 60 == 0;
        let window = (untranslated && ram_base <= 1 << 31 && (8..1 << 31).contains(&ram_len))
            .then_some((ram_base, ram_len));
        let va = self.pc;
        let pending = self.jit.pending_link.take();
        // The jump cache knows blocks entered in this translation context
        // (it is emptied with the TLB), so a hit needs no fetch translation.
        let recalled = self.jit.cache.as_ref().and_then(|c| c.recall_jump(va));
        let (pa, cached) = match recalled {
            Some((pa, code)) => (pa, Some(code)),
            None => {
                let pa = match self.translate(bus, va, Access::Fetch) {
                    Ok(pa) => pa,
                    Err(Fault::Trap(t)) => {
                        self.take_trap(t.cause, t.tval, false);
                        return Ok(0);
                    }
                    Err(Fault::Event(e)) => return Err(e),
                };
                let k = key(pa, window.is_some());
                (pa, self.jit.cache.as_ref().and_then(|c| c.lookup(k, va)))
            }
        };
        let entry = match cached {
            Some(e) => e,
            // Cold: the block engine runs it (and decodes it once).
            None if !self.jit.heat_up(pa) => return self.step_block(bus),
            None => match build_region(bus, pa, true) {
                Some(b) => {
                    self.blocks_built += 1;
                    bus.mark_code_page(pa);
                    reserve::code_page_marked();
                    self.jit.translate_block(b, pa, va, window)
                }
                // First instruction straddles a page or is not RAM: the
                // plain path handles (and reports) it.
                None => return self.step(bus).map(|()| 1),
            },
        };
        if let (Some((info, epoch, ctx)), Some(c)) = (pending, self.jit.cache.as_mut()) {
            if epoch == c.epoch
                && ctx == context
                && info.target_va == va
                && info.pred_page == pa & !0xfff
            {
                c.arena.link(info.jmp_end, entry as u64);
                self.jit.links += 1;
            }
        }
        let c = self.jit.cache.as_mut().expect("prepared");
        c.remember_jump(va, pa, entry);
        // A page may hold code or a reservation now: no store may bypass
        // the bus there.
        let store_epoch = reserve::epoch();
        if store_epoch != self.jit.store_epoch {
            self.jit.store_epoch = store_epoch;
            c.flush_stlb();
        }
        let mut ctx = JitCtx {
            budget: BUDGET,
            jtlb: c.jtlb.ptr(),
            jcache: c.jcache.ptr(),
            miss_slot: 0,
            ram_addend,
            generation: gen,
            bus: (bus as *mut B).cast(),
            event: None,
        };
        // SAFETY: `enter` is the trampoline written by prepare() into the
        // arena, with the signature EnterFn.
        let enter: EnterFn = unsafe { std::mem::transmute::<usize, EnterFn>(self.jit.enter) };
        let start = self.instret;
        let hart: *mut Hart = self;
        // SAFETY: `entry` is native code of the current cache epoch,
        // translated for exactly this (pa, va) with helpers for this B; it
        // reads and writes the hart and the context only through the
        // pointers given, and the helpers rebuild `&mut` from them while
        // neither `self` nor `bus` is used here. The code, its link slots,
        // the decoded instructions it points at and the load TLB stay
        // alive until a flush, which happens only in this function.
        unsafe {
            enter(hart, &mut ctx, entry);
        }
        if ctx.miss_slot != 0 {
            if let Some(c) = self.jit.cache.as_ref() {
                if let Some(info) = c.slot(ctx.miss_slot - 1) {
                    self.jit.pending_link = Some((info, c.epoch, context));
                }
            }
        }
        let retired = self.instret.wrapping_sub(start);
        match ctx.event {
            Some(e) => Err(e),
            None => Ok(retired),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Ram, RamBus};

    const BASE: u64 = 0x8000_0000;
    const TRAP: u64 = 0x8000_0100;

    fn bus_with(code: &[u32]) -> RamBus {
        let mut ram = Ram::new(BASE, 1 << 20);
        for (i, w) in code.iter().enumerate() {
            ram.store(BASE + 4 * i as u64, 4, u64::from(*w)).unwrap();
        }
        RamBus::new(ram, 1)
    }

    /// a0 = sum of 100..1 by a loop, then ebreak (traps to TRAP).
    const SUM_LOOP: [u32; 6] = [
        0x0000_0513, // addi a0, zero, 0
        0x0640_0593, // addi a1, zero, 100
        0x00b5_0533, // add a0, a0, a1
        0xfff5_8593, // addi a1, a1, -1
        0xfe05_9ce3, // bne a1, zero, -8
        0x0010_0073, // ebreak
    ];

    fn run(h: &mut Hart, bus: &mut RamBus, jit: bool) {
        run_at(h, bus, jit, BASE);
    }

    fn run_at(h: &mut Hart, bus: &mut RamBus, jit: bool, pc: u64) {
        h.pc = pc;
        h.mtvec = TRAP;
        for _ in 0..10_000 {
            if h.pc == TRAP {
                return;
            }
            if jit {
                h.step_jit(bus).unwrap();
            } else {
                h.step(bus).unwrap();
            }
        }
        panic!("did not reach the trap vector");
    }

    /// The translated loop computes what the interpreter computes, retires
    /// the same number of instructions, links its blocks, and sees a code
    /// write (a store to the page holding translated code).
    #[test]
    fn translated_loop_matches_interpreter_and_sees_code_writes() {
        let mut bus = bus_with(&SUM_LOOP);
        let mut reference = Hart::new(0);
        run(&mut reference, &mut bus, false);
        assert_eq!(reference.x[10], 5050);

        let mut bus = bus_with(&SUM_LOOP);
        let mut h = Hart::new(0);
        // Enough runs that the loop is hot whatever the threshold.
        for _ in 0..8 {
            run(&mut h, &mut bus, true);
        }
        assert_eq!(h.x[10], 5050);
        assert_eq!(h.mepc, BASE + 20);
        assert_eq!(h.instret, 8 * reference.instret, "instret per run");
        assert!(h.jit.translated > 0, "the loop was translated");
        assert!(h.jit.links > 0, "the loop body chains to itself");
        let translated = h.jit.translated;
        // add a0, a0, a1 -> sub a0, a0, a1, as a guest store would write it.
        bus.store(BASE + 8, 4, 0x40b5_0533).unwrap();
        for _ in 0..8 {
            run(&mut h, &mut bus, true);
        }
        assert_eq!(h.x[10], (-5050i64) as u64, "the new code ran");
        assert!(h.jit.translated > translated, "retranslated");
    }

    /// A chain that never leaves (a jump to itself) still returns to the
    /// dispatcher within the budget, where interrupts are taken.
    #[test]
    fn endless_loop_returns_within_the_budget() {
        let mut bus = bus_with(&[0x0000_006f]); // jal zero, 0
        let mut h = Hart::new(0);
        h.pc = BASE;
        for _ in 0..20 {
            let n = h.step_jit(&mut bus).unwrap();
            assert!(n as i64 <= BUDGET + 1, "ran {n} instructions in one chain");
            assert!(n >= 1);
        }
        assert!(h.jit.translated >= 1);
        assert_eq!(h.pc, BASE);
    }

    /// A store from translated code into its own block stops the block
    /// right after the store, as the block engine does; the rewritten
    /// instruction then runs.
    #[test]
    fn store_into_own_block_stops_it() {
        // t0 = address of the addi below; t1 = (addi a0, zero, 7); sw;
        // addi a0, zero, 1 (rewritten to 7 before it runs); ebreak
        let code = [
            0x0000_0297, // auipc t0, 0
            0x0182_8293, // addi t0, t0, 24
            0x0070_0313, // addi t1, zero, 7
            0x0143_1313, // slli t1, t1, 20
            0x5133_6313, // ori t1, t1, 0x513  -> 0x00700513 = addi a0, zero, 7
            0x0062_a023, // sw t1, 0(t0)   (t0 = the next instruction)
            0x0010_0513, // addi a0, zero, 1
            0x0010_0073, // ebreak
        ];
        let mut bus = bus_with(&code);
        let mut h = Hart::new(0);
        set_hot_threshold(1);
        run(&mut h, &mut bus, true);
        assert_eq!(h.x[10], 7);
    }

    /// Registers cached in host registers (written back lazily) survive
    /// helper calls (division), loads and stores in the direct RAM window
    /// and the block exit: every register ends as the interpreter has it.
    #[test]
    fn cached_registers_survive_helpers_and_exits() {
        let code = [
            0x0640_0513, // li a0, 100
            0x0070_0593, // li a1, 7
            0x0030_0613, // li a2, 3
            0x0050_0693, // li a3, 5
            0x00b0_0713, // li a4, 11
            0x00d0_0793, // li a5, 13
            0x02b5_4833, // div a6, a0, a1
            0x00d6_08b3, // add a7, a2, a3
            0x00e8_88b3, // add a7, a7, a4
            0x00f8_88b3, // add a7, a7, a5
            0x02c7_f2b3, // remu t0, a5, a2
            0x00b5_0333, // add t1, a0, a1
            0x0000_1397, // auipc t2, 1
            0x0113_b023, // sd a7, 0(t2)
            0x0003_be03, // ld t3, 0(t2)
            0x030e_0eb3, // mul t4, t3, a6
            EBREAK,
        ];
        let mut bus = bus_with(&code);
        let mut reference = Hart::new(0);
        run(&mut reference, &mut bus, false);
        assert_eq!(reference.x[16], 14);
        assert_eq!(reference.x[29], 32 * 14);
        let mut bus = bus_with(&code);
        let mut h = Hart::new(0);
        set_hot_threshold(1);
        run(&mut h, &mut bus, true);
        assert!(h.jit.translated > 0);
        assert_eq!(h.x, reference.x);
    }

    /// A superblock goes on at the target of a JAL in its page: the link
    /// register gets the address after the JAL, the skipped instruction
    /// does not run, instret counts what ran.
    #[test]
    fn superblock_follows_jal_in_the_page() {
        let code = [
            0x0010_0513, // li a0, 1
            0x0080_00ef, // jal ra, 8
            0x0020_0513, // li a0, 2 (skipped)
            0x00a5_0513, // addi a0, a0, 10
            EBREAK,
        ];
        let mut bus = bus_with(&code);
        let mut reference = Hart::new(0);
        run(&mut reference, &mut bus, false);
        let mut bus = bus_with(&code);
        let mut h = Hart::new(0);
        set_hot_threshold(1);
        run(&mut h, &mut bus, true);
        assert!(h.jit.translated > 0);
        assert_eq!(h.x[10], 11);
        assert_eq!(h.x[1], BASE + 8);
        assert_eq!(h.x, reference.x);
        assert_eq!(h.instret, reference.instret);
    }

    const SW_A1_A0: u32 = 0x00b5_2023; // sw a1, 0(a0)
    const EBREAK: u32 = 0x0010_0073;

    /// Hart 1's store TLB holds a page before hart 0 reserves a word in
    /// it: hart 1's next store there must still break the reservation
    /// (hart 0's SC fails), as on the bus.
    #[test]
    fn fast_stores_break_reservations_of_other_harts() {
        let mut bus = bus_with(&[SW_A1_A0, EBREAK]);
        let lr_at = BASE + 0x200;
        let sc_at = BASE + 0x300;
        bus.store(lr_at, 4, 0x1005_262f).unwrap(); // lr.w a2, (a0)
        bus.store(lr_at + 4, 4, u64::from(EBREAK)).unwrap();
        bus.store(sc_at, 4, 0x18b5_26af).unwrap(); // sc.w a3, a1, (a0)
        bus.store(sc_at + 4, 4, u64::from(EBREAK)).unwrap();
        bus.resv = crate::bus::Reservations::new(2);
        let data = BASE + 0x8000;
        let (mut h0, mut h1) = (Hart::new(0), Hart::new(1));
        h1.x[10] = data;
        h1.x[11] = 5;
        for _ in 0..8 {
            run(&mut h1, &mut bus, true);
        }
        assert!(h1.jit.translated > 0, "hart 1's store is translated");
        assert_eq!(bus.load(data, 4).unwrap(), 5, "hart 1 stored");
        h0.x[10] = data;
        h0.x[11] = 9;
        run_at(&mut h0, &mut bus, true, lr_at);
        assert_eq!(h0.x[12], 5, "lr read hart 1's value");
        h1.x[11] = 6;
        run(&mut h1, &mut bus, true);
        run_at(&mut h0, &mut bus, true, sc_at);
        assert_eq!(h0.x[13], 1, "sc failed");
        assert_eq!(bus.load(data, 4).unwrap(), 6);
    }

    /// Hart 1's store TLB holds a page before hart 0 translates code in
    /// it: hart 1's next store into that code must reach the bus, and hart
    /// 0 then runs the new code.
    #[test]
    fn fast_stores_see_pages_that_became_code() {
        let mut bus = bus_with(&[SW_A1_A0, EBREAK]);
        let code = BASE + 0x4000;
        bus.store(code, 4, 0x0010_0513).unwrap(); // addi a0, zero, 1
        bus.store(code + 4, 4, u64::from(EBREAK)).unwrap();
        bus.resv = crate::bus::Reservations::new(2);
        let (mut h0, mut h1) = (Hart::new(0), Hart::new(1));
        // Warm hart 1's store TLB on the page (no code there yet).
        h1.x[10] = code + 0x800;
        for _ in 0..8 {
            run(&mut h1, &mut bus, true);
        }
        for _ in 0..8 {
            run_at(&mut h0, &mut bus, true, code);
        }
        assert_eq!(h0.x[10], 1);
        // Hart 1 patches hart 0's code: addi a0, zero, 2.
        h1.x[10] = code;
        h1.x[11] = 0x0020_0513;
        run(&mut h1, &mut bus, true);
        run_at(&mut h0, &mut bus, true, code);
        assert_eq!(h0.x[10], 2, "hart 0 runs the patched code");
    }
}
