/* A: LR/SC success and failure, every AMO in W and D width over a table
 * of operand pairs (old value returned, new value in memory). */
#include "common.h"

#define NV 8
    .data
    .balign 8
vals:
    .dword 0, 1, -1, 0x7fffffff, 0x80000000, 0x7fffffffffffffff, 0x8000000000000000, 0x123456789abcdef0
cell:
    .dword 0, 0
out:
    .space NV * NV * 16

    .text
.macro AMOPAIRS op, width
    lla s0, vals
    lla s1, cell
    lla s2, out
    li s3, 0
1:  li s4, 0
2:  slli t0, s3, 3
    add t0, t0, s0
    ld a0, 0(t0)
    slli t1, s4, 3
    add t1, t1, s0
    ld a1, 0(t1)
    sd a0, 0(s1)
    sd a0, 8(s1)
    \op a2, a1, (s1)
    sd a2, 0(s2)
    ld a3, 0(s1)
    sd a3, 8(s2)
    addi s2, s2, 16
    addi s4, s4, 1
    li t2, NV
    blt s4, t2, 2b
    addi s3, s3, 1
    blt s3, t2, 1b
    DUMPMEM out, NV * NV * 16
.endm

    .globl test_main
test_main:
    AMOPAIRS amoswap.w
    AMOPAIRS amoadd.w
    AMOPAIRS amoxor.w
    AMOPAIRS amoand.w
    AMOPAIRS amoor.w
    AMOPAIRS amomin.w
    AMOPAIRS amomax.w
    AMOPAIRS amominu.w
    AMOPAIRS amomaxu.w
    AMOPAIRS amoswap.d
    AMOPAIRS amoadd.d
    AMOPAIRS amoxor.d
    AMOPAIRS amoand.d
    AMOPAIRS amoor.d
    AMOPAIRS amomin.d
    AMOPAIRS amomax.d
    AMOPAIRS amominu.d
    AMOPAIRS amomaxu.d
    AMOPAIRS amoadd.w.aqrl
    AMOPAIRS amomaxu.d.aq

    /* LR/SC: a successful pair, then an SC without reservation, then an
     * SC after an intervening store to the reserved word by this hart. */
    lla s1, cell
    li t0, -2
    sd t0, 0(s1)
    lr.d a0, (s1)
    addi a0, a0, 5
    sc.d a1, a0, (s1)
    ld a2, 0(s1)
    sc.d a3, a0, (s1)       /* no reservation: fails, a3 = 1 */
    lr.w a4, (s1)
    addi a4, a4, 1
    sc.w.rl a5, a4, (s1)
    lw a6, 0(s1)
    /* a retry loop, as compilers emit for fetch-and-add */
    li s2, 10
1:  lr.w.aq t1, (s1)
    add t1, t1, s2
    sc.w.rl t2, t1, (s1)
    bnez t2, 1b
    ld s3, 0(s1)
    DUMP
    EXIT
