/* A hostile bare-metal guest (M-mode, entry 0x80000000) for the bad-guest
 * tests of hypervisor/tests/disk.rs: with a vhost-user-blk disk in
 * virtio-mmio slot 0 it floods the transport, then powers off through the
 * test finisher. Phases (each prints a line on the UART):
 *
 *   regs     every register offset read with 32-bit loads, N rounds
 *   config   config space reads of 1, 2, 4 and 8 bytes (each one goes to the
 *            backend as GET_CONFIG), including past the backend's config
 *            and the last bytes of the slot, N rounds
 *   writes   garbage stores to every 4-byte offset of the slot but Status
 *            (selectors, features, queue registers, reserved offsets,
 *            config space), N/16 rounds, then a reset
 *   others   the PLIC, CLINT, UART and test finisher registers, N rounds
 *   notify   QueueNotify before the queue runs, N*8 stores
 *   start    a proper start (VERSION_1, 8 descriptors, rings in RAM)
 *   kicks    QueueNotify on the running queue with nothing available, N*8
 *   bad      six requests with bad descriptors (header, data and indirect
 *            table outside RAM, a self-looping chain, a next index past the
 *            table, a data length past the end of RAM), a kick, a bounded
 *            wait for used.idx; then avail.idx jumped by 1000 and a kick
 *   stall    wfi until a timer 0.1 s ahead while that ring is wedged
 *            (requests outstanding that the backend refuses to serve)
 *   cycles   CYCLES resets and restarts with a kick each
 *   done     a final reset, then poweroff (0x5555 to the test finisher)
 *
 * Built with -DBAD_WIDTH it ends with a 1-byte load of the Status register
 * instead (the transport takes 32-bit register accesses only): cowvisor
 * must stop with its fault report.
 */
#ifndef N
#define N 2000
#endif
#ifndef CYCLES
#define CYCLES 100
#endif
#define VIRTIO 0x10001000
#define UART 0x10000000
#define FINISHER 0x100000
#define DESC 0x80100000
#define AVAIL 0x80101000
#define USED 0x80102000
#define HDR 0x80103000
#define DATA 0x80104000
#define STATUSB 0x80105000

    .text
    .globl _start
_start:
    li s0, VIRTIO
    li s1, UART
    la a0, m_start
    call puts
    lw t0, 0(s0)
    li t1, 0x74726976
    bne t0, t1, no_disk

/* regs */
    li t0, N
1:  li t1, 0
2:  add t2, s0, t1
    lw t3, 0(t2)
    addi t1, t1, 4
    li t4, 0x100
    blt t1, t4, 2b
    addi t0, t0, -1
    bnez t0, 1b
    la a0, m_regs
    call puts

/* config */
    li t0, N
1:  andi t1, t0, 0x38
    add t2, s0, t1
    lbu t3, 0x100(t2)
    lhu t3, 0x102(t2)
    lwu t3, 0x104(t2)
    ld t3, 0x100(t2)
    li t2, VIRTIO + 0xff8
    ld t3, 0(t2)
    lbu t3, 7(t2)
    addi t0, t0, -1
    bnez t0, 1b
    la a0, m_config
    call puts

/* writes: value i * 0x9e3779b9 ^ offset to every offset but Status */
    li t0, N / 16
1:  li t1, 0
2:  li t4, 0x070
    beq t1, t4, 3f
    li t5, 0x9e3779b9
    mul t5, t5, t0
    xor t5, t5, t1
    add t2, s0, t1
    sw t5, 0(t2)
3:  addi t1, t1, 4
    li t4, 0x1000
    blt t1, t4, 2b
    addi t0, t0, -1
    bnez t0, 1b
    sw zero, 0x070(s0)
    la a0, m_writes
    call puts

/* the other devices: PLIC claims of nothing and completes of garbage,
 * priority and enable writes, pending reads; CLINT mtime and msip; every
 * UART register read (receive buffer, IIR, LSR, ...) and the scratch one
 * written; the test finisher read */
    li t0, N
    li t1, 0x0c000000
    li t2, 0x0c200000
    li t3, 0x02000000
1:  lw t4, 4(t2)
    sw t0, 4(t2)
    li t5, 0x0c001000
    lw t4, 0(t5)
    sw t0, 4(t1)
    li t5, 0x2000
    add t5, t5, t1
    sw t0, 0(t5)
    li t5, 0xbff8
    add t5, t5, t3
    ld t4, 0(t5)
    sw t0, 0(t3)
    lbu t4, 0(s1)
    lbu t4, 1(s1)
    lbu t4, 2(s1)
    lbu t4, 3(s1)
    lbu t4, 4(s1)
    lbu t4, 5(s1)
    lbu t4, 6(s1)
    sb t0, 7(s1)
    li t5, FINISHER
    lw t4, 0(t5)
    addi t0, t0, -1
    bnez t0, 1b
    sw zero, 0(t3)
    li t5, 0x2000
    add t5, t5, t1
    sw zero, 0(t5)
    la a0, m_others
    call puts

/* notify before start */
    li t0, N * 8
1:  sw zero, 0x050(s0)
    sw t0, 0x050(s0)
    addi t0, t0, -1
    bnez t0, 1b
    la a0, m_notify
    call puts

/* start */
    call start_queue
    lw t0, 0x070(s0)
    li t1, 0xf
    bne t0, t1, refused
    la a0, m_start_ok
    call puts

/* kicks on an empty running queue */
    li t0, N * 8
1:  sw zero, 0x050(s0)
    addi t0, t0, -1
    bnez t0, 1b
    la a0, m_kicks
    call puts

/* bad requests */
    li t6, DESC
    /* req A (head 0): header outside RAM; status in RAM */
    li t0, 0x1000
    sd t0, 0(t6)
    li t0, 16 | (1 << 32) | (1 << 48)       /* len 16, flags NEXT, next 1 */
    sd t0, 8(t6)
    li t0, STATUSB
    sd t0, 16(t6)
    li t0, 1 | (2 << 32)                    /* len 1, flags WRITE */
    sd t0, 24(t6)
    /* req B (head 2): write of sector 2048 (the test's preset) with its data outside RAM */
    li t0, HDR
    sd t0, 32(t6)
    li t0, 16 | (1 << 32) | (3 << 48)
    sd t0, 40(t6)
    li t0, 0xfffffffff000
    sd t0, 48(t6)
    li t0, 512 | (1 << 32) | (4 << 48)
    sd t0, 56(t6)
    li t0, STATUSB + 8
    sd t0, 64(t6)
    li t0, 1 | (2 << 32)
    sd t0, 72(t6)
    /* req C (head 5): a chain that loops on itself */
    li t0, HDR
    sd t0, 80(t6)
    li t0, 16 | (1 << 32) | (5 << 48)
    sd t0, 88(t6)
    /* req D (head 6): next index past the table */
    li t0, HDR
    sd t0, 96(t6)
    li t0, 16 | (1 << 32) | (200 << 48)
    sd t0, 104(t6)
    /* req E (head 7): a read of sector 0 chained to descriptor 3 (B's data,
     * outside RAM); rewritten below to a data length past the end of RAM */
    li t0, HDR + 16
    sd t0, 112(t6)
    li t0, 16 | (1 << 32) | (3 << 48)
    sd t0, 120(t6)
    /* headers: B = OUT sector 2048, E = IN sector 0 */
    li t1, HDR
    li t0, 1
    sw t0, 0(t1)
    li t0, 2048
    sd t0, 8(t1)
    sw zero, 16(t1)
    sd zero, 24(t1)
    /* available ring: heads 0, 2, 5, 6, 7; then an indirect head below */
    li t1, AVAIL
    li t0, 0
    sh t0, 4(t1)
    li t0, 2
    sh t0, 6(t1)
    li t0, 5
    sh t0, 8(t1)
    li t0, 6
    sh t0, 10(t1)
    li t0, 7
    sh t0, 12(t1)
    fence
    li t0, 5
    sh t0, 2(t1)
    fence
    sw zero, 0x050(s0)
    call wait_used
    /* req F (head 4 rewritten): indirect table outside RAM, and a data
     * length past the end of RAM (descriptor 3 rewritten for a read) */
    li t0, 0x2000
    sd t0, 64(t6)
    li t0, 64 | (4 << 32)                   /* flags INDIRECT */
    sd t0, 72(t6)
    li t0, DATA
    sd t0, 48(t6)
    li t0, 0xffffffff | (3 << 32) | (4 << 48) /* WRITE|NEXT, next 4 */
    sd t0, 56(t6)
    /* avail.ring[5] = head 4, avail.ring[6] = head 7 (again) */
    li t1, AVAIL
    li t0, 4
    sh t0, 14(t1)
    li t0, 7
    sh t0, 16(t1)
    fence
    li t0, 7
    sh t0, 2(t1)
    fence
    sw zero, 0x050(s0)
    call wait_used
    /* avail.idx jumps far past the queue size */
    li t1, AVAIL
    lhu t0, 2(t1)
    addi t0, t0, 1000
    sh t0, 2(t1)
    fence
    sw zero, 0x050(s0)
    call wait_used
    la a0, m_bad
    call puts
    lw a0, 0x070(s0)
    call puthex

/* stall: the wedged ring stays "busy" (avail.idx != used.idx, which the
 * backend will never serve) while the hart waits in wfi for a timer 0.1 s
 * of virtual time ahead (mie.MTIE only: wfi wakes, no trap is taken) */
    li t1, 0x200bff8
    ld t4, 0(t1)
    li t2, 1000000
    add t4, t4, t2
    li t1, 0x2004000
    sd t4, 0(t1)
    li t0, 0x80
    csrs mie, t0
1:  wfi
    li t1, 0x200bff8
    ld t3, 0(t1)
    bltu t3, t4, 1b
    csrc mie, t0
    li t0, -1
    li t1, 0x2004000
    sd t0, 0(t1)
    la a0, m_stall
    call puts

/* reset/restart cycles */
    li s2, CYCLES
1:  sw zero, 0x070(s0)
    call start_queue
    sw zero, 0x050(s0)
    addi s2, s2, -1
    bnez s2, 1b
    la a0, m_cycles
    call puts
    lw a0, 0x070(s0)
    call puthex

    sw zero, 0x070(s0)
#ifdef BAD_WIDTH
    la a0, m_width
    call puts
    li a0, 0x1234
    lbu t0, 0x070(s0)
#endif
    la a0, m_done
    call puts
    li t0, FINISHER
    li t1, 0x5555
    sw t1, 0(t0)
hang:
    j hang

no_disk:
    la a0, m_no_disk
    call puts
    j fail
refused:
    la a0, m_refused
    call puts
    lw a0, 0x070(s0)
    call puthex
fail:
    li t0, FINISHER
    li t1, (1 << 16) | 0x3333
    sw t1, 0(t0)
    j hang

/* Status 0, ACKNOWLEDGE|DRIVER, VERSION_1 only, FEATURES_OK, queue 0 with
 * 8 descriptors and zeroed rings in RAM, DRIVER_OK. */
start_queue:
    li t1, AVAIL
    sd zero, 0(t1)
    sd zero, 8(t1)
    sd zero, 16(t1)
    li t1, USED
    sd zero, 0(t1)
    sw zero, 0x070(s0)
    li t0, 3
    sw t0, 0x070(s0)
    li t0, 1
    sw t0, 0x024(s0)
    sw t0, 0x020(s0)
    sw zero, 0x024(s0)
    sw zero, 0x020(s0)
    li t0, 11
    sw t0, 0x070(s0)
    sw zero, 0x030(s0)
    li t0, 8
    sw t0, 0x038(s0)
    li t0, DESC
    sw t0, 0x080(s0)
    sw zero, 0x084(s0)
    li t0, AVAIL
    sw t0, 0x090(s0)
    sw zero, 0x094(s0)
    li t0, USED
    sw t0, 0x0a0(s0)
    sw zero, 0x0a4(s0)
    li t0, 1
    sw t0, 0x044(s0)
    li t0, 15
    sw t0, 0x070(s0)
    ret

/* Spins (bounded: 200000 rounds) until used.idx == avail.idx; prints used.idx. */
wait_used:
    mv s3, ra
    li t2, 200000
    li t1, AVAIL
    li t3, USED
1:  lhu t0, 2(t1)
    lhu t4, 2(t3)
    beq t0, t4, 2f
    addi t2, t2, -1
    bnez t2, 1b
2:  la a0, m_used
    call puts
    li t3, USED
    lhu a0, 2(t3)
    call puthex
    mv ra, s3
    ret

puts:
    lbu t0, 0(a0)
    beqz t0, 1f
    sb t0, 0(s1)
    addi a0, a0, 1
    j puts
1:  ret

/* a0 as 8 hex digits and a newline */
puthex:
    li t1, 28
1:  srl t0, a0, t1
    andi t0, t0, 15
    li t2, 10
    blt t0, t2, 2f
    addi t0, t0, 'a' - 10 - '0'
2:  addi t0, t0, '0'
    sb t0, 0(s1)
    addi t1, t1, -4
    bgez t1, 1b
    li t0, '\n'
    sb t0, 0(s1)
    ret

    .section .rodata
m_start:    .asciz "flood: start\n"
m_regs:     .asciz "flood: regs\n"
m_config:   .asciz "flood: config\n"
m_writes:   .asciz "flood: writes\n"
m_others:   .asciz "flood: others\n"
m_notify:   .asciz "flood: notify\n"
m_start_ok: .asciz "flood: start ok\n"
m_kicks:    .asciz "flood: kicks\n"
m_used:     .asciz "flood: used.idx "
m_bad:      .asciz "flood: bad, status "
m_stall:    .asciz "flood: stall over\n"
m_cycles:   .asciz "flood: cycles, status "
m_width:    .asciz "flood: 1-byte status load\n"
m_done:     .asciz "flood: done\n"
m_no_disk:  .asciz "flood: no virtio disk in slot 0\n"
m_refused:  .asciz "flood: queue refused, status "
