/* C: every compressed instruction class, written explicitly with c.*
 * mnemonics, including the stack-relative and FP forms. */
#include "common.h"

    .data
    .balign 8
buf:
    .dword 0x1122334455667788, 0x99aabbccddeeff00, 0x400921fb54442d18, 0
    .space 64

    .text
    .globl test_main
test_main:
    .option push
    .option rvc
    c.li a0, -32
    c.li a1, 31
    c.lui a2, 0x1f
    c.lui a3, 0xfffe0
    c.addi a0, 7
    c.addiw a1, -1
    c.addi16sp sp, -64
    c.addi4spn a4, sp, 16
    sub a4, a4, sp
    c.mv a5, a0
    c.add a5, a1
    c.sub a5, a2
    c.xor a5, a3
    c.or a5, a0
    c.and a5, a1
    c.subw a5, a2
    c.addw a5, a3
    c.slli a0, 40
    c.srli a1, 3
    c.srai a3, 7
    c.andi a2, -9
    lla s0, buf
    c.ld s1, 0(s0)
    c.lw a4, 8(s0)
    c.fld fa0, 16(s0)
    c.sd s1, 24(s0)
    c.sw a4, 36(s0)
    c.fsd fa0, 40(s0)
    c.sdsp s1, 8(sp)
    c.swsp a4, 20(sp)
    c.fsdsp fa0, 32(sp)
    c.ldsp s1, 8(sp)
    c.lwsp a4, 20(sp)
    c.fldsp fa1, 32(sp)
    c.addi16sp sp, 64
    mv t5, s1
    mv t6, a5
    c.li s1, 0
    c.beqz s1, 1f
    c.li s1, 1
1:  c.bnez s1, 2f
    c.li a5, 5
    c.bnez a5, 2f
    c.li a5, 9
2:  c.j 3f
    c.li a5, 11
3:  lla t2, 4f
    c.jalr t2
    c.j 5f
4:  lla t3, buf
    sub t3, ra, t3
    c.jr ra
5:  c.nop
    .option pop
    DUMP
    DUMPMEM buf, 96
    EXIT
