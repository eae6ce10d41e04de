/* Self-modifying code (Zifencei): a routine in a writable+executable
 * section is run, rewritten, fenced and run again, including a rewrite of
 * the very block that performs the store. Checks block-cache invalidation
 * against qemu-riscv64. */
#include "common.h"

    .section .data.smc, "awx", @progbits
    .balign 4
    .option push
    .option norvc               /* 4-byte slots, rewritten by 4-byte stores */
patchme:
    addi a0, a0, 1
    ret
    .option pop

    .text
    .globl test_main
test_main:
    li a0, 0
    call patchme                /* a0 = 1 */
    mv s1, a0
    li t0, 0x06450513           /* addi a0, a0, 100 */
    lla t1, patchme
    sw t0, 0(t1)
    fence.i
    call patchme                /* a0 = 101 */
    mv s2, a0
    /* patch and call in a loop: every iteration writes a new immediate */
    li s3, 0
    li s4, 1
1:  slli t0, s4, 20
    li t2, 0x00050513           /* addi a0, a0, 0 */
    or t0, t0, t2
    sw t0, 0(t1)
    fence.i
    li a0, 0
    call patchme
    add s3, s3, a0
    addi s4, s4, 1
    li t2, 50
    blt s4, t2, 1b
    DUMP
    EXIT
