/* RV64I + M: every ALU and M operation over all pairs of a value table,
 * immediates, shifts, loads/stores of every width (incl. misaligned),
 * branches, jal/jalr, lui/auipc. */
#include "common.h"

#define NVALS 14
    .data
    .balign 8
vals:
    .dword 0, 1, -1, 2, 0x7fffffffffffffff, 0x8000000000000000, 0x80000000
    .dword 0x7fffffff, 0xffffffff, 0x123456789abcdef0, -7, 63, 32, 0xfedcba9876543210
out:
    .space NVALS * NVALS * 8

    .text
/* Applies `\op` to every (a, b) pair of vals and writes the results to out,
 * then dumps out. */
.macro PAIRS op
    lla s0, vals
    lla s2, out
    li s3, 0
1:  li s4, 0
2:  slli t0, s3, 3
    add t0, t0, s0
    ld a0, 0(t0)
    slli t1, s4, 3
    add t1, t1, s0
    ld a1, 0(t1)
    \op a2, a0, a1
    sd a2, 0(s2)
    addi s2, s2, 8
    addi s4, s4, 1
    li t2, NVALS
    blt s4, t2, 2b
    addi s3, s3, 1
    blt s3, t2, 1b
    DUMPMEM out, NVALS * NVALS * 8
.endm

    .globl test_main
test_main:
    PAIRS add
    PAIRS sub
    PAIRS sll
    PAIRS slt
    PAIRS sltu
    PAIRS xor
    PAIRS srl
    PAIRS sra
    PAIRS or
    PAIRS and
    PAIRS addw
    PAIRS subw
    PAIRS sllw
    PAIRS srlw
    PAIRS sraw
    PAIRS mul
    PAIRS mulh
    PAIRS mulhsu
    PAIRS mulhu
    PAIRS div
    PAIRS divu
    PAIRS rem
    PAIRS remu
    PAIRS mulw
    PAIRS divw
    PAIRS divuw
    PAIRS remw
    PAIRS remuw

    /* immediates */
    li a0, 0x123456789abcdef0
    addi a1, a0, -2048
    addi a2, a0, 2047
    slti a3, a0, -1
    sltiu a4, a0, -1
    xori a5, a0, -1
    ori a6, a0, 0x555
    andi a7, a0, -16
    slli s1, a0, 63
    srli s2, a0, 1
    srai s3, a0, 60
    addiw s4, a0, 1
    slliw s5, a0, 31
    srliw s6, a0, 3
    sraiw s7, a0, 31
    lui s8, 0x80000
    lui s9, 0xfffff
    auipc s10, 0
    lla s11, vals
    sub s10, s10, s11   /* pc-relative distance, identical in both runs */
    DUMP

    /* loads and stores of every width, aligned and not */
    lla s0, out
    li t0, 0x8899aabbccddeeff
    sd t0, 0(s0)
    sd t0, 8(s0)
    lb a0, 0(s0)
    lbu a1, 0(s0)
    lh a2, 2(s0)
    lhu a3, 2(s0)
    lw a4, 4(s0)
    lwu a5, 4(s0)
    ld a6, 0(s0)
    ld a7, 3(s0)        /* misaligned */
    lw s1, 5(s0)
    lh s2, 7(s0)
    li t1, 0x0102030405060708
    sb t1, 16(s0)
    sh t1, 18(s0)
    sw t1, 20(s0)
    sd t1, 25(s0)       /* misaligned */
    sw t1, 37(s0)
    sh t1, 43(s0)
    DUMP
    DUMPMEM out, 64

    /* branches and jumps */
    li s0, 0
    li a0, -5
    li a1, 3
    beq a0, a1, 1f
    ori s0, s0, 1
1:  bne a0, a1, 1f
    ori s0, s0, 2
1:  blt a0, a1, 1f
    ori s0, s0, 4
1:  bge a0, a1, 1f
    ori s0, s0, 8
1:  bltu a0, a1, 1f
    ori s0, s0, 16
1:  bgeu a0, a1, 1f
    ori s0, s0, 32
1:  jal ra, 2f
    ori s0, s0, 64
    j 3f
2:  lla t0, 4f
    jalr t1, 0(t0)
    ori s0, s0, 128
4:  lla t2, 2b
    sub t1, t1, t2      /* link value relative to a label */
    ret
3:  lla t2, vals
    sub ra, ra, t2
    DUMP
    EXIT
