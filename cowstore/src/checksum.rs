//! crc32c (Castagnoli): the checksum of every record, header, checkpoint
//! and manifest. One place picks how it is computed.
//!
//! Two implementations, same polynomial, same values (the tests hold them
//! to each other): the `crc32c` crate (the SSE4.2 `crc32` instruction over
//! three streams) and `crc-fast` (carry-less multiply folding with
//! PCLMULQDQ/VPCLMULQDQ; object_store already builds it). Which is faster
//! depends on the CPU, by more than either's margin: on 2026-11-27's
//! machine crc-fast ran 58.6 against 26.6 GiB/s on a 4 KiB block, on
//! 2026-12-07's (same machine type, another host) 13.0 against 15.7 GiB/s,
//! and in the vhost-blk write path the checksums cost 13 us of CPU per 128
//! KiB write there (docs/performance.md, "Checksums"). So, as Linux picks
//! its RAID-6 and xor routines at boot, the process times both on a 4 KiB
//! block (the size of nearly every call: block checksums) the first time
//! it needs one, and keeps the faster. `COWSTORE_CRC32C=crc-fast` or
//! `=sse42` forces one (benchmarks, or a host where the timing misleads).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A crc32c implementation the process may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    /// `crc-fast`: carry-less multiply folding.
    CrcFast,
    /// The `crc32c` crate: the SSE4.2 `crc32` instruction (a table without it).
    Sse42,
}

impl Implementation {
    pub const ALL: [Implementation; 2] = [Implementation::CrcFast, Implementation::Sse42];

    /// The name `COWSTORE_CRC32C` takes and logs show.
    pub fn name(self) -> &'static str {
        match self {
            Implementation::CrcFast => "crc-fast",
            Implementation::Sse42 => "sse42",
        }
    }

    /// The implementation called `name`, if any.
    pub fn from_name(name: &str) -> Option<Implementation> {
        Self::ALL.into_iter().find(|i| i.name() == name)
    }

    /// crc32c of `data` with this implementation.
    pub fn checksum(self, data: &[u8]) -> u32 {
        match self {
            // CRC-32/ISCSI is crc32c; the crate returns every width as u64.
            Implementation::CrcFast => {
                crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32
            }
            Implementation::Sse42 => crc32c::crc32c(data),
        }
    }

    /// The fastest of a few timed runs over one 4 KiB block, per call.
    fn time_per_block(self, block: &[u8]) -> Duration {
        const RUNS: usize = 5;
        const CALLS_PER_RUN: u32 = 32;
        let mut best = Duration::MAX;
        for _ in 0..RUNS {
            let start = Instant::now();
            for _ in 0..CALLS_PER_RUN {
                std::hint::black_box(self.checksum(std::hint::black_box(block)));
            }
            best = best.min(start.elapsed() / CALLS_PER_RUN);
        }
        best
    }
}

/// Times every implementation on a 4 KiB block and returns the fastest
/// with the time per block of each (about 100 us in all, once a process).
pub fn calibrate() -> (Implementation, Vec<(Implementation, Duration)>) {
    let block: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    // A first pass warms caches and clocks; only the second counts.
    for i in Implementation::ALL {
        i.time_per_block(&block);
    }
    let timed: Vec<(Implementation, Duration)> = Implementation::ALL
        .into_iter()
        .map(|i| (i, i.time_per_block(&block)))
        .collect();
    let fastest = timed
        .iter()
        .min_by_key(|(_, t)| *t)
        .map_or(Implementation::Sse42, |(i, _)| *i);
    (fastest, timed)
}

/// The implementation this process uses: forced by `COWSTORE_CRC32C`, else
/// the fastest by [`calibrate`]. Chosen once.
pub fn implementation() -> Implementation {
    static CHOSEN: OnceLock<Implementation> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        if let Ok(name) = std::env::var("COWSTORE_CRC32C") {
            match Implementation::from_name(&name) {
                Some(i) => {
                    tracing::info!(
                        implementation = i.name(),
                        "crc32c forced by COWSTORE_CRC32C"
                    );
                    return i;
                }
                None => tracing::warn!(
                    value = %name,
                    "COWSTORE_CRC32C is not crc-fast or sse42; timing both instead"
                ),
            }
        }
        let (fastest, timed) = calibrate();
        let ns: Vec<String> = timed
            .iter()
            .map(|(i, t)| format!("{} {} ns", i.name(), t.as_nanos()))
            .collect();
        tracing::info!(
            implementation = fastest.name(),
            per_4k_block = %ns.join(", "),
            "crc32c implementation chosen"
        );
        fastest
    })
}

/// crc32c of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    implementation().checksum(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length from 0 to a few blocks, at every alignment in a word,
    /// and a few large buffers: every implementation gives the `crc32c`
    /// crate's value, and so does the one chosen.
    #[test]
    fn every_implementation_matches_the_crc32c_crate() {
        let data = crate::record::tests::random_bytes(300 << 10);
        for len in (0..9000).chain([65536, 65536 + 56, 131072, 300 << 10]) {
            for at in 0..8usize.min(data.len() - len + 1) {
                let slice = &data[at..at + len];
                let want = crc32c::crc32c(slice);
                for i in Implementation::ALL {
                    assert_eq!(i.checksum(slice), want, "{} len {len} at {at}", i.name());
                }
                assert_eq!(crc32c(slice), want, "chosen, len {len} at {at}");
            }
        }
        assert_eq!(crc32c(b"123456789"), 0xE306_9283, "the check value");
    }

    #[test]
    fn calibration_times_every_implementation_and_picks_the_fastest() {
        let (fastest, timed) = calibrate();
        assert_eq!(timed.len(), Implementation::ALL.len());
        let best = timed.iter().map(|(_, t)| *t).min().unwrap();
        assert!(timed.contains(&(fastest, best)), "{fastest:?} {timed:?}");
        assert!(best > Duration::ZERO, "a 4 KiB crc cannot take no time");
    }

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for i in Implementation::ALL {
            assert_eq!(Implementation::from_name(i.name()), Some(i));
        }
        assert_eq!(Implementation::from_name("crc32"), None);
        assert_eq!(Implementation::from_name(""), None);
    }
}
