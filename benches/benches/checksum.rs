//! crc32c implementations side by side: the `crc32c` crate (SSE4.2 `crc32`
//! instruction, three streams) and `crc-fast` (carry-less multiply
//! folding). The engine times both once per process and uses the faster
//! (`cowstore/src/checksum.rs`): which one wins depends on the host.
//! Sizes: a record header's checked bytes, a check block, a record's
//! payload, a 128 KiB guest write.
//!
//! `cargo bench -p cowstore-benches --bench checksum`; figures in
//! docs/performance.md ("Checksums").

use cowstore_benches::RandomData;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn checksums(c: &mut Criterion) {
    // Twice the largest size: `slice` needs room to pick a start.
    let data = RandomData::new(256 << 10, 7);
    let mut group = c.benchmark_group("crc32c");
    for len in [48usize, 4096, 65536, 131072] {
        let bytes = data.slice(0, len);
        assert_eq!(
            crc32c::crc32c(bytes),
            crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, bytes) as u32
        );
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("crc32c-crate", len), bytes, |b, bytes| {
            b.iter(|| crc32c::crc32c(std::hint::black_box(bytes)))
        });
        group.bench_with_input(BenchmarkId::new("crc-fast", len), bytes, |b, bytes| {
            b.iter(|| {
                crc_fast::checksum(
                    crc_fast::CrcAlgorithm::Crc32Iscsi,
                    std::hint::black_box(bytes),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, checksums);
criterion_main!(benches);
