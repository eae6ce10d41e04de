//! crc32c (Castagnoli): the checksum of every record, header, checkpoint
//! and manifest. One place picks how it is computed.
//!
//! Whole buffers go through the `crc-fast` crate (carry-less multiply
//! folding with PCLMULQDQ/VPCLMULQDQ where the CPU has them, a table
//! elsewhere); the `crc32c` crate (the SSE4.2 `crc32` instruction over three
//! streams) stays for extending and combining checksums. Measured on this
//! machine (AMD EPYC with VPCLMULQDQ; `benches/benches/checksum.rs`,
//! docs/performance.md): 62-64 against 27-30 GB/s on 4-64 KiB buffers, 6.7
//! against 4.6 GB/s on a 48-byte header. crc32c was a fifth of the vhost-blk
//! queue worker's CPU on 128 KiB writes. `crc-fast` is also what
//! object_store checksums uploads with, so the build gains no crate. Same
//! polynomial, same values: the tests hold the two crates to each other.

/// crc32c of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    // CRC-32/ISCSI is crc32c; the crate returns every width as u64.
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length from 0 to a few blocks, at every alignment in a word,
    /// and a few large buffers: the same value as the `crc32c` crate.
    #[test]
    fn matches_the_crc32c_crate() {
        let data = crate::record::tests::random_bytes(300 << 10);
        for len in (0..9000).chain([65536, 65536 + 56, 131072, 300 << 10]) {
            for at in 0..8usize.min(data.len() - len + 1) {
                let slice = &data[at..at + len];
                assert_eq!(crc32c(slice), crc32c::crc32c(slice), "len {len} at {at}");
            }
        }
        assert_eq!(crc32c(b"123456789"), 0xE306_9283, "the check value");
    }
}
