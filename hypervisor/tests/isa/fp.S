/* F and D: arithmetic over all pairs of a table of special values in all
 * five rounding modes, with the fflags each operation raised; fused
 * multiply-add, sqrt, conversions, comparisons, min/max, classify, sign
 * injection, moves, NaN-boxing. Each result and its flags go to `out`. */
#include "common.h"

#define ND 16
#define NS 16
    .data
    .balign 8
dvals:
    .dword 0x0000000000000000, 0x8000000000000000, 0x3ff0000000000000, 0xbff0000000000000
    .dword 0x3ff8000000000000, 0x4008000000000000, 0x3fd5555555555555, 0x7fefffffffffffff
    .dword 0x0010000000000000, 0x0000000000000001, 0x7ff0000000000000, 0xfff0000000000000
    .dword 0x7ff8000000000000, 0x7ff0000000000001, 0x4340000000000001, 0xc004000000000000
svals:   /* NaN-boxed singles; the last two are not boxed */
    .dword 0xffffffff00000000, 0xffffffff80000000, 0xffffffff3f800000, 0xffffffffbf800000
    .dword 0xffffffff3fc00000, 0xffffffff40400000, 0xffffffff3eaaaaab, 0xffffffff7f7fffff
    .dword 0xffffffff00800000, 0xffffffff00000001, 0xffffffff7f800000, 0xffffffffff800000
    .dword 0xffffffff7fc00000, 0xffffffff7f800001, 0x000000003f800000, 0xffffffffc0200000
ints:
    .dword 0, 1, -1, 0x7fffffff, 0x80000000, 0xffffffff, 0x7fffffffffffffff, 0x8000000000000000
    .dword 0x123456789abcdef1, -3, 16777217, 9007199254740993, 0xfffffffffffffffe, 3, 100, -100
out:
    .space 16 * 16 * 5 * 16

    .text
/* For every pair (i, j) of \tab and rounding mode 0..4: rd = op(f[i], f[j]),
 * storing the result bits and fflags (then clearing fflags). */
.macro FPAIRS op, tab, n
    lla s0, \tab
    lla s2, out
    li s3, 0
1:  li s4, 0
2:  li s5, 0
3:  slli t0, s3, 3
    add t0, t0, s0
    fld fa0, 0(t0)
    slli t1, s4, 3
    add t1, t1, s0
    fld fa1, 0(t1)
    fsrm s5
    \op fa2, fa0, fa1
    fsd fa2, 0(s2)
    frflags t2
    sd t2, 8(s2)
    fsflags zero
    addi s2, s2, 16
    addi s5, s5, 1
    li t2, 5
    blt s5, t2, 3b
    addi s4, s4, 1
    li t2, \n
    blt s4, t2, 2b
    addi s3, s3, 1
    blt s3, t2, 1b
    DUMPMEM out, \n * \n * 5 * 16
.endm

/* For every value of \tab and mode: unary \op from f to \kind (f or x). */
.macro FUNARY op, tab, n, kind
    lla s0, \tab
    lla s2, out
    li s3, 0
1:  li s5, 0
3:  slli t0, s3, 3
    add t0, t0, s0
    fld fa0, 0(t0)
    ld a0, 0(t0)
    fsrm s5
    .ifc \kind, f
    \op fa2, fa0
    fsd fa2, 0(s2)
    .endif
    .ifc \kind, x
    \op a2, fa0
    sd a2, 0(s2)
    .endif
    .ifc \kind, i
    \op fa2, a0
    fsd fa2, 0(s2)
    .endif
    frflags t2
    sd t2, 8(s2)
    fsflags zero
    addi s2, s2, 16
    addi s5, s5, 1
    li t2, 5
    blt s5, t2, 3b
    addi s3, s3, 1
    li t2, \n
    blt s3, t2, 1b
    DUMPMEM out, \n * 5 * 16
.endm

/* Fused ops over triples from the first 8 values of \tab, mode RNE and RTZ. */
.macro FTRIPLES op, tab
    lla s0, \tab
    lla s2, out
    li s3, 0
1:  li s4, 0
2:  li s6, 0
4:  li s5, 0
3:  slli t0, s3, 3
    add t0, t0, s0
    fld fa0, 0(t0)
    slli t1, s4, 3
    add t1, t1, s0
    fld fa1, 0(t1)
    slli t1, s6, 3
    add t1, t1, s0
    fld fa3, 40(t1)
    fsrm s5
    \op fa2, fa0, fa1, fa3
    fsd fa2, 0(s2)
    frflags t2
    sd t2, 8(s2)
    fsflags zero
    addi s2, s2, 16
    addi s5, s5, 1
    li t2, 2
    blt s5, t2, 3b
    addi s6, s6, 1
    li t2, 8
    blt s6, t2, 4b
    addi s4, s4, 1
    blt s4, t2, 2b
    addi s3, s3, 1
    blt s3, t2, 1b
    DUMPMEM out, 8 * 8 * 8 * 2 * 16
.endm

.macro FCMP op, tab, n
    lla s0, \tab
    lla s2, out
    li s3, 0
1:  li s4, 0
2:  slli t0, s3, 3
    add t0, t0, s0
    fld fa0, 0(t0)
    slli t1, s4, 3
    add t1, t1, s0
    fld fa1, 0(t1)
    \op a2, fa0, fa1
    sd a2, 0(s2)
    frflags t2
    sd t2, 8(s2)
    fsflags zero
    addi s2, s2, 16
    addi s4, s4, 1
    li t2, \n
    blt s4, t2, 2b
    addi s3, s3, 1
    blt s3, t2, 1b
    DUMPMEM out, \n * \n * 16
.endm

    .globl test_main
test_main:
    FPAIRS fadd.d, dvals, ND
    FPAIRS fsub.d, dvals, ND
    FPAIRS fmul.d, dvals, ND
    FPAIRS fdiv.d, dvals, ND
    FPAIRS fmin.d, dvals, ND
    FPAIRS fmax.d, dvals, ND
    FPAIRS fsgnj.d, dvals, ND
    FPAIRS fsgnjn.d, dvals, ND
    FPAIRS fsgnjx.d, dvals, ND
    FPAIRS fadd.s, svals, NS
    FPAIRS fsub.s, svals, NS
    FPAIRS fmul.s, svals, NS
    FPAIRS fdiv.s, svals, NS
    FPAIRS fmin.s, svals, NS
    FPAIRS fmax.s, svals, NS
    FPAIRS fsgnj.s, svals, NS
    FPAIRS fsgnjn.s, svals, NS
    FPAIRS fsgnjx.s, svals, NS
    FCMP feq.d, dvals, ND
    FCMP flt.d, dvals, ND
    FCMP fle.d, dvals, ND
    FCMP feq.s, svals, NS
    FCMP flt.s, svals, NS
    FCMP fle.s, svals, NS
    FTRIPLES fmadd.d, dvals
    FTRIPLES fmsub.d, dvals
    FTRIPLES fnmsub.d, dvals
    FTRIPLES fnmadd.d, dvals
    FTRIPLES fmadd.s, svals
    FTRIPLES fnmadd.s, svals
    FUNARY fsqrt.d, dvals, ND, f
    FUNARY fsqrt.s, svals, NS, f
    FUNARY fcvt.s.d, dvals, ND, f
    FUNARY fcvt.d.s, svals, NS, f
    FUNARY fclass.d, dvals, ND, x
    FUNARY fclass.s, svals, NS, x
    FUNARY fmv.x.d, dvals, ND, x
    FUNARY fmv.x.w, svals, NS, x
    FUNARY fcvt.w.d, dvals, ND, x
    FUNARY fcvt.wu.d, dvals, ND, x
    FUNARY fcvt.l.d, dvals, ND, x
    FUNARY fcvt.lu.d, dvals, ND, x
    FUNARY fcvt.w.s, svals, NS, x
    FUNARY fcvt.wu.s, svals, NS, x
    FUNARY fcvt.l.s, svals, NS, x
    FUNARY fcvt.lu.s, svals, NS, x
    FUNARY fcvt.d.w, ints, 16, i
    FUNARY fcvt.d.wu, ints, 16, i
    FUNARY fcvt.d.l, ints, 16, i
    FUNARY fcvt.d.lu, ints, 16, i
    FUNARY fcvt.s.w, ints, 16, i
    FUNARY fcvt.s.wu, ints, 16, i
    FUNARY fcvt.s.l, ints, 16, i
    FUNARY fcvt.s.lu, ints, 16, i
    FUNARY fmv.d.x, ints, 16, i
    FUNARY fmv.w.x, ints, 16, i

    /* fractional values through the integer conversions in every mode */
    li t0, 0x4004000000000000   /* 2.5 */
    fmv.d.x fs0, t0
    li t0, 0xc004000000000000   /* -2.5 */
    fmv.d.x fs1, t0
    li t0, 0x3fe0000000000000   /* 0.5 */
    fmv.d.x fs2, t0
    fcvt.l.d s0, fs0, rne
    fcvt.l.d s1, fs0, rtz
    fcvt.l.d s2, fs0, rdn
    fcvt.l.d s3, fs0, rup
    fcvt.l.d s4, fs0, rmm
    fcvt.l.d s5, fs1, rne
    fcvt.l.d s6, fs1, rmm
    fcvt.l.d s7, fs1, rup
    fcvt.wu.d s8, fs2, rup
    fcvt.lu.d s9, fs1, rtz
    /* a bad dynamic rounding mode is reported by fcsr but not used here */
    li t0, 0xaa
    csrw fcsr, t0
    csrr s10, frm
    csrr s11, fflags
    csrw fcsr, zero
    DUMP
    EXIT
