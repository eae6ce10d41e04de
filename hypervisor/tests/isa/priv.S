/* Privileged architecture, bare metal on the virt machine (runs under
 * qemu-system-riscv64 -bios none and under cowvisor): M-mode traps, CSR
 * write masks, timer and software interrupts, then S-mode with Sv39
 * paging (page faults, hardware A/D updates, MXR, SUM, delegation), then
 * U-mode (ecall, protection). Every observation is appended to `res`; at
 * the end M-mode prints it in hex on the UART and powers off through the
 * test finisher. Registers: main code uses s*, a*; handlers use t*. */
#define UART 0x10000000
#define FINISHER 0x100000
#define CLINT 0x2000000
#define ALIAS_DELTA 0x40000000   /* VA 0x4000_0000 maps PA 0x8000_0000 with U=1 */

/* Appends a register to the result buffer (s11 = write pointer). */
.macro REC reg
    sd \reg, 0(s11)
    addi s11, s11, 8
.endm
/* The next trap resumes at local label 1f. */
.macro RESUME_AT
    lla t6, 1f
    lla t5, resume
    sd t6, 0(t5)
.endm

    .text
    .globl _start
_start:
    .option norelax
    csrr a0, mhartid
    bnez a0, park
    lla sp, stack_top
    lla s11, res
    lla t0, mtrap
    csrw mtvec, t0
    /* FP on, so fcsr is reachable */
    li t0, 1 << 13
    csrs mstatus, t0

    /* --- M-mode exceptions --- */
    RESUME_AT
    csrw 0x7ff, zero            /* no such CSR: illegal */
1:  RESUME_AT
    ecall
1:  RESUME_AT
    ebreak
    /* (a misaligned AMO is left out: QEMU 7.2 reports it as a misaligned
     * load, cause 4; the spec and cowvisor say store/AMO, cause 6) */
1:  RESUME_AT
    lla a0, scratch
    addi a0, a0, 4
    lr.d a1, (a0)               /* misaligned LR */
1:  RESUME_AT
    .word 0x0000107f            /* reserved major opcode */
1:
    /* --- CSR write masks (write all ones, read back) --- */
    li a0, -1
    csrr a1, misa
    REC a1
    csrr a1, mstatus
    REC a1
    /* WARL masks: only the bits an RV64GC hart with S and U defines are
     * compared (QEMU's default CPU also exposes H and Sscofpmf bits) */
    csrrw a1, mie, a0
    csrr a1, mie
    li a2, 0xaaa
    and a1, a1, a2
    REC a1
    csrw mie, zero
    csrrw a1, mideleg, a0
    csrr a1, mideleg
    li a2, 0x222
    and a1, a1, a2
    REC a1
    csrrw a1, medeleg, a0
    csrr a1, medeleg
    li a2, 0xb3ff               /* QEMU also lets 10 and 11 (VS/M ecall) through */
    and a1, a1, a2
    REC a1
    csrw medeleg, zero
    csrw mideleg, zero
    csrr a1, mtvec
    csrw mtvec, a0
    csrr a2, mtvec
    csrw mtvec, a1
    REC a2
    li a2, -2                   /* QEMU keeps a written mepc[0]; the spec clears it */
    csrw mepc, a2
    csrr a1, mepc
    REC a1
    li a2, 0xffffffff           /* 32-bit registers; QEMU keeps upper bits */
    csrw mcounteren, a2
    csrr a1, mcounteren
    REC a1
    csrw scounteren, a2
    csrr a1, scounteren
    REC a1
    csrw sscratch, a0
    csrr a1, sscratch
    REC a1
    csrw fcsr, a0
    csrr a1, fcsr
    REC a1
    csrw fcsr, zero
    li a2, 11 << 60             /* reserved mode: satp keeps its value */
    csrw satp, a2
    csrr a1, satp
    REC a1
    li a2, (9 << 60) | 0x12345
    csrw satp, a2
    csrr a1, satp
    REC a1
    csrw satp, zero
    csrr a1, mhartid
    REC a1
    csrr a1, mvendorid
    REC a1
    li a2, 0x3fffffffffffff     /* pmpaddr holds address bits 55:2 */
    csrw pmpaddr0, a2
    csrr a1, pmpaddr0
    REC a1
    csrr a1, mstatus            /* FS dirty after the fcsr writes: SD set */
    REC a1

    /* --- interrupts in M-mode --- */
    li a0, CLINT
    li a1, 1
    RESUME_AT
    li a2, 1 << 3
    csrs mie, a2                /* MSIE */
    csrsi mstatus, 8            /* MIE */
    sw a1, 0(a0)                /* msip = 1: software interrupt */
2:  j 2b
1:  csrci mstatus, 8
    csrw mie, zero
    RESUME_AT
    li a0, CLINT + 0xbff8
    ld a1, 0(a0)
    addi a1, a1, 200
    li a0, CLINT + 0x4000
    sd a1, 0(a0)                /* mtimecmp = now + 200 */
    li a2, 1 << 7
    csrs mie, a2                /* MTIE */
    csrsi mstatus, 8
2:  wfi
    j 2b
1:  csrci mstatus, 8
    csrw mie, zero
    /* a pending but disabled interrupt does not trap */
    li a2, 1 << 1
    csrs mip, a2
    csrr a1, mip
    REC a1
    csrc mip, a2

    /* --- page tables (addresses known only at run time) --- */
    lla a0, pt_root
    lla a1, pt_l1
    srli a1, a1, 12
    slli a1, a1, 10
    ori a1, a1, 1
    sd a1, 0(a0)
    lla a0, pt_root4            /* Sv48: [0] -> the Sv39 root as level 2 */
    lla a1, pt_root
    srli a1, a1, 12
    slli a1, a1, 10
    ori a1, a1, 1
    sd a1, 0(a0)
    lla a0, pt_l1
    lla a1, pt_l0
    srli a1, a1, 12
    slli a1, a1, 10
    ori a1, a1, 1
    sd a1, 0(a0)
    lla a0, pt_l0
    lla a1, data_page
    srli a1, a1, 12
    slli a1, a1, 10
    ori a2, a1, 0x07            /* 0x1000: V R W, A=D=0 */
    sd a2, 8(a0)
    ori a2, a1, 0x43            /* 0x2000: V R A */
    sd a2, 16(a0)
    ori a2, a1, 0x49            /* 0x3000: V X A */
    sd a2, 24(a0)
    ori a2, a1, 0xd7            /* 0x4000: V R W U A D */
    sd a2, 32(a0)

    /* --- to S-mode with paging --- */
    /* QEMU refuses mret to a lower mode while no PMP rule exists: one
     * NAPOT entry over everything (cowvisor stores PMP, does not enforce) */
    li a0, -1
    csrw pmpaddr0, a0
    li a0, 0x1f
    csrw pmpcfg0, a0
    /* delegate page faults (12, 13, 15), U ecall (8) and SSI to S */
    li a0, (1 << 8) | (1 << 12) | (1 << 13) | (1 << 15)
    csrw medeleg, a0
    li a0, 1 << 1
    csrw mideleg, a0
    li a0, 3 << 11
    csrc mstatus, a0
    li a0, 1 << 11
    csrs mstatus, a0            /* MPP = S */
    lla a0, smode
    csrw mepc, a0
    mret

smode:
    lla t0, strap
    csrw stvec, t0
    lla a0, pt_root
    srli a0, a0, 12
    li a1, 8 << 60
    or a0, a0, a1
    csrw satp, a0
    sfence.vma
    /* A/D: load then store through a page with A=D=0 */
    lla s1, pt_l0
    li s2, 0x1000
    ld a0, 0(s2)
    REC a0
    ld a0, 8(s1)                /* PTE of VA 0x1000 */
    REC a0
    li a1, 0x55
    sd a1, 8(s2)
    sfence.vma
    ld a0, 8(s1)
    REC a0
    /* store to a read-only page */
    RESUME_AT
    li s2, 0x2000
    sd a1, 0(s2)
1:  /* load from execute-only page, without and with MXR */
    RESUME_AT
    li s2, 0x3000
    ld a0, 0(s2)
1:  li a2, 1 << 19
    csrs sstatus, a2
    ld a0, 8(s2)
    REC a0
    csrc sstatus, a2
    /* U page from S, without and with SUM */
    RESUME_AT
    li s2, 0x4000
    ld a0, 8(s2)
1:  li a2, 1 << 18
    csrs sstatus, a2
    ld a0, 8(s2)
    REC a0
    csrc sstatus, a2
    /* invalid PTE: load and fetch */
    RESUME_AT
    li s2, 0x5000
    ld a0, 0(s2)
1:  RESUME_AT
    jalr s2
1:  /* non-canonical address */
    RESUME_AT
    li s2, 0x0000008000000000
    ld a0, 0(s2)
1:  /* Sv48: same low mappings one level deeper; bit 39 is now a valid
     * (unmapped) address, bit 47 alone is not canonical */
    lla a0, pt_root4
    srli a0, a0, 12
    li a1, 9 << 60
    or a0, a0, a1
    csrw satp, a0
    sfence.vma
    csrr a0, satp
    srli a0, a0, 60
    REC a0
    li s2, 0x1000
    ld a0, 8(s2)
    REC a0
    RESUME_AT
    li s2, 0x0000008000000000
    ld a0, 0(s2)
1:  RESUME_AT
    li s2, 0x0000800000000000
    ld a0, 0(s2)
1:  lla a0, pt_root
    srli a0, a0, 12
    li a1, 8 << 60
    or a0, a0, a1
    csrw satp, a0
    sfence.vma
    /* ecall from S goes to M (not delegated) */
    RESUME_AT
    li a7, 7
    ecall
1:  /* S software interrupt, delegated */
    RESUME_AT
    csrsi sie, 2
    csrsi sstatus, 2
    csrsi sip, 2
2:  j 2b
1:  csrci sstatus, 2
    csrw sie, zero
    /* sstatus view */
    csrr a0, sstatus
    REC a0
    /* S may not touch M CSRs: illegal, to M */
    RESUME_AT
    csrr a0, mstatus
1:
    /* --- U-mode through the alias mapping --- */
    li a0, 1 << 8
    csrc sstatus, a0            /* SPP = U */
    lla a0, umode
    li a1, ALIAS_DELTA
    sub a0, a0, a1
    csrw sepc, a0
    sret

umode:
    RESUME_AT
    ecall                       /* cause 8, delegated to S */
1:  RESUME_AT
    li a0, 0x80000000
    ld a1, 0(a0)                /* not a U page: fault 13 in S */
1:  RESUME_AT
    csrr a0, sstatus            /* illegal in U: to M */
1:  RESUME_AT
    wfi                         /* illegal in U */
1:  li a7, 99
    ecall                       /* to S, which ends the test via M */

/* S-mode trap handler: record scause, stval, sepc; resume or finish. */
    .balign 4
strap:
    csrr t0, scause
    bltz t0, 3f
    li t1, 8
    bne t0, t1, 2f
    li t1, 99
    bne a7, t1, 2f
    li a7, 99
    ecall                       /* finish: M prints */
2:  REC t0
    csrr t0, stval
    REC t0
    csrr t0, sepc
    REC t0
    lla t5, resume
    ld t6, 0(t5)
    csrw sepc, t6
    sret
3:  REC t0                      /* interrupt: cause only */
    csrci sip, 2
    lla t5, resume
    ld t6, 0(t5)
    csrw sepc, t6
    sret

/* M-mode trap handler: record mcause, mtval, mepc (exceptions) or the
 * cause (interrupts); resume, or print everything on ecall 99. */
    .balign 4
mtrap:
    csrr t0, mcause
    bltz t0, 3f
    li t1, 9
    bne t0, t1, 2f
    li t1, 99
    beq a7, t1, finish
2:  REC t0
    csrr t0, mtval
    REC t0
    csrr t0, mepc
    REC t0
    csrr t0, mstatus
    srli t0, t0, 11
    andi t0, t0, 3              /* the mode the trap came from */
    REC t0
    lla t5, resume
    ld t6, 0(t5)
    csrw mepc, t6
    mret
3:  REC t0
    li t1, CLINT
    sw zero, 0(t1)              /* msip = 0 */
    li t1, CLINT + 0x4000
    li t2, -1
    sd t2, 0(t1)                /* mtimecmp = max */
    lla t5, resume
    ld t6, 0(t5)
    csrw mepc, t6
    mret

finish:
    lla s0, res
4:  bgeu s0, s11, 6f
    ld a0, 0(s0)
    li a1, 60
5:  srl a2, a0, a1
    andi a2, a2, 15
    lla a3, hex
    add a3, a3, a2
    lbu a2, 0(a3)
    call putc
    addi a1, a1, -4
    bgez a1, 5b
    li a2, '\n'
    call putc
    addi s0, s0, 8
    j 4b
6:  li a0, FINISHER
    li a1, 0x5555
    sw a1, 0(a0)
7:  j 7b

putc:
    li t0, UART
1:  lbu t1, 5(t0)
    andi t1, t1, 0x20
    beqz t1, 1b
    sb a2, 0(t0)
    ret

park:
    wfi
    j park

    .section .rodata
hex: .ascii "0123456789abcdef"

    .data
    .balign 4096
/* Sv39 root: [0] -> pt_l1 (low GiB), [1] U alias gigapage of RAM,
 * [2] identity gigapage of RAM (not U). Leaf flags: V R W X U G A D. */
pt_root:
    .dword 0                                        /* -> pt_l1, set at run time */
    .dword (0x80000 << 10) | 0xdf                   /* VRWXU.AD */
    .dword (0x80000 << 10) | 0xcf                   /* VRWX..AD */
    .fill 509, 8, 0
pt_l1:
    .fill 512, 8, 0
pt_root4:
    .fill 512, 8, 0
pt_l0:
    .fill 512, 8, 0
data_page:
    .dword 0x1111, 0x2222, 0x3333
    .fill 509, 8, 0
scratch:
    .dword 0, 0
resume:
    .dword 0
    .balign 16
res:
    .fill 256, 8, 0
stack:
    .fill 512, 8, 0
stack_top:
