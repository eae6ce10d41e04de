/* Shared frame of the user-mode ISA conformance programs (see ../isa.rs).
 * A program starts at _start with every register zeroed, gp pointing at the
 * dump buffer and sp at its own stack, so nothing depends on where the
 * loader put the stack. DUMP writes x0..x31, f0..f31 and fcsr (65 dwords)
 * to stdout; DUMPMEM writes a memory range; EXIT ends the program. The test
 * compares the bytes written under qemu-riscv64 and under cowvisor.
 * Reserved: gp (dump pointer). Everything else is the test's. */
#define SYS_write 64
#define SYS_exit 93

.macro DUMP
    sd x1, 8(gp);   sd x2, 16(gp);  sd x4, 32(gp);  sd x5, 40(gp)
    sd x6, 48(gp);  sd x7, 56(gp);  sd x8, 64(gp);  sd x9, 72(gp)
    sd x10, 80(gp); sd x11, 88(gp); sd x12, 96(gp); sd x13, 104(gp)
    sd x14, 112(gp); sd x15, 120(gp); sd x16, 128(gp); sd x17, 136(gp)
    sd x18, 144(gp); sd x19, 152(gp); sd x20, 160(gp); sd x21, 168(gp)
    sd x22, 176(gp); sd x23, 184(gp); sd x24, 192(gp); sd x25, 200(gp)
    sd x26, 208(gp); sd x27, 216(gp); sd x28, 224(gp); sd x29, 232(gp)
    sd x30, 240(gp); sd x31, 248(gp)
    fsd f0, 256(gp);  fsd f1, 264(gp);  fsd f2, 272(gp);  fsd f3, 280(gp)
    fsd f4, 288(gp);  fsd f5, 296(gp);  fsd f6, 304(gp);  fsd f7, 312(gp)
    fsd f8, 320(gp);  fsd f9, 328(gp);  fsd f10, 336(gp); fsd f11, 344(gp)
    fsd f12, 352(gp); fsd f13, 360(gp); fsd f14, 368(gp); fsd f15, 376(gp)
    fsd f16, 384(gp); fsd f17, 392(gp); fsd f18, 400(gp); fsd f19, 408(gp)
    fsd f20, 416(gp); fsd f21, 424(gp); fsd f22, 432(gp); fsd f23, 440(gp)
    fsd f24, 448(gp); fsd f25, 456(gp); fsd f26, 464(gp); fsd f27, 472(gp)
    fsd f28, 480(gp); fsd f29, 488(gp); fsd f30, 496(gp); fsd f31, 504(gp)
    csrr t0, fcsr
    sd t0, 512(gp)
    li a0, 1
    mv a1, gp
    li a2, 520
    li a7, SYS_write
    ecall
    ld x5, 40(gp); ld x10, 80(gp); ld x11, 88(gp); ld x12, 96(gp); ld x17, 136(gp)
.endm

/* Writes [label, label+len) to stdout; keeps every register but t6. */
.macro DUMPMEM label, len
    sd a0, 528(gp); sd a1, 536(gp); sd a2, 544(gp); sd a7, 552(gp)
    li a0, 1
    lla a1, \label
    li a2, \len
    li a7, SYS_write
    ecall
    ld a0, 528(gp); ld a1, 536(gp); ld a2, 544(gp); ld a7, 552(gp)
.endm

.macro EXIT
    li a0, 0
    li a7, SYS_exit
    ecall
.endm

    .text
    .globl _start
_start:
    .option push
    .option norelax
    li x1, 0; li x2, 0; li x4, 0; li x5, 0; li x6, 0; li x7, 0; li x8, 0
    li x9, 0; li x10, 0; li x11, 0; li x12, 0; li x13, 0; li x14, 0; li x15, 0
    li x16, 0; li x17, 0; li x18, 0; li x19, 0; li x20, 0; li x21, 0; li x22, 0
    li x23, 0; li x24, 0; li x25, 0; li x26, 0; li x27, 0; li x28, 0; li x29, 0
    li x30, 0; li x31, 0
    lla gp, __dump_buf
    lla sp, __stack_top
    csrw fcsr, zero
    .option pop
    j test_main

    .bss
    .balign 16
__dump_buf: .space 576
__stack: .space 8192
__stack_top:
    .text
