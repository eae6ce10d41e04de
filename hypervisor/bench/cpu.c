/* CPU-bound guest program for hypervisor/bench/cpu-vs-qemu: CRC-32 and a
 * small LZ77-style match search over a fixed pseudo-random buffer, repeated.
 * Freestanding (no libc): static, linked at the default address, talks to
 * the world through write/exit only, so it runs unchanged under
 * qemu-riscv64 and cowvisor's user-mode harness. Prints one checksum line. */
typedef unsigned long u64;
typedef unsigned int u32;
typedef unsigned char u8;

static long sys3(long nr, long a, long b, long c) {
    register long a0 asm("a0") = a;
    register long a1 asm("a1") = b;
    register long a2 asm("a2") = c;
    register long a7 asm("a7") = nr;
    asm volatile("ecall" : "+r"(a0) : "r"(a1), "r"(a2), "r"(a7) : "memory");
    return a0;
}

#define N (64 * 1024)
static u8 buf[N];
static u32 table[256];

static u32 crc32(const u8 *p, u64 n) {
    u32 c = 0xffffffffu;
    for (u64 i = 0; i < n; i++) c = table[(c ^ p[i]) & 0xff] ^ (c >> 8);
    return ~c;
}

/* Longest earlier match at each position in a 256-byte window, summed. */
static u64 lz_score(const u8 *p, u64 n) {
    u64 total = 0;
    for (u64 i = 256; i < n; i += 7) {
        u64 best = 0;
        for (u64 j = i - 256; j < i; j += 3) {
            u64 k = 0;
            while (k < 32 && i + k < n && p[j + k] == p[i + k]) k++;
            if (k > best) best = k;
        }
        total += best;
    }
    return total;
}

static void put_hex(u64 v) {
    char s[17];
    for (int i = 15; i >= 0; i--) { s[i] = "0123456789abcdef"[v & 15]; v >>= 4; }
    s[16] = '\n';
    sys3(64, 1, (long)s, 17);
}

void _start(void) {
    for (u32 i = 0; i < 256; i++) {
        u32 c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
    u64 x = 0x9e3779b97f4a7c15ull;
    for (u64 i = 0; i < N; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        buf[i] = (u8)((x >> 32) & 0x0f) + 'a'; /* small alphabet: matches exist */
    }
    u64 acc = 0;
    for (int round = 0; round < 16; round++) {
        acc = acc * 31 + crc32(buf, N);
        acc = acc * 31 + lz_score(buf, N);
        buf[round * 97] ^= 1;
    }
    put_hex(acc);
    sys3(93, 0, 0, 0);
    for (;;) {}
}
