/* A broken guest: M-mode jumps into a hole of the physical address space.
 * cowvisor must stop with a report naming the pc, not crash or hang. */
    .text
    .globl _start
_start:
    li a0, 0x1234
    li t0, 0x50000000
    jr t0
