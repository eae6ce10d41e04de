//! `SegmentFile::open` + `scan` over a file made of a valid segment header
//! and arbitrary record bytes. Nothing may panic, every visited record must
//! verify and lie inside the file, and while `open` and `scan` run no single
//! allocation may exceed a small multiple of the largest record payload (a
//! corrupt length must never size an allocation).
//!
//! Input: one control byte, then the bytes after the segment header.
//! - bit 0: walk the bytes as records and fix up each one's magic, payload
//!   crc (over its declared length) and header crc, so the fuzzer reaches
//!   chains of valid records, seals, and length/kind edge cases;
//! - bit 1: use the first 64 input bytes as the segment header itself
//!   (`open` must reject a bad one with an error);
//! - bit 2: start the scan at an offset taken from the input (inside the
//!   file, or just past its end) instead of right after the header.
//!
//! `sealed_len` (where an upload cuts a sealed segment) walks the same
//! bytes and must agree with a scan from the header: the end just past the
//! seal the scan stopped at, or nothing when the scan met no seal.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use cowstore::record::{
    decode_data, RecordKind, FLAG_BLOCK_CRCS, FLAG_COMPRESSED, MAX_PAYLOAD_BYTES,
    RECORD_HEADER_BYTES, RECORD_MAGIC,
};
use cowstore::segment::{
    sealed_len, segment_path, ScanStep, SegmentFile, SegmentHeader, SegmentKind,
    SEGMENT_HEADER_BYTES,
};
use libfuzzer_sys::fuzz_target;

/// While `GUARD` is set, any single allocation above this aborts: scan's
/// only input-sized buffer is one record payload, which `Vec` growth may
/// double (the harness's own copy of the input is made outside the guard).
const ALLOC_LIMIT: usize = 4 * MAX_PAYLOAD_BYTES;
static GUARD: AtomicBool = AtomicBool::new(false);

struct Bounded;

unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

fn check(size: usize) {
    if size > ALLOC_LIMIT && GUARD.load(Ordering::Relaxed) {
        // No panic here: panicking allocates. Abort is a libFuzzer crash.
        std::process::abort();
    }
}

#[global_allocator]
static ALLOC: Bounded = Bounded;

const SEGMENT_ID: u64 = 0x5e6;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("cowstore-fuzz-seg")
            .tempdir()
            .expect("temp dir")
            .keep()
    })
}

fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Fixes magic and checksums of every record found walking `buf`.
fn fix_up(buf: &mut [u8]) {
    let mut at = 0usize;
    while buf.len() - at >= RECORD_HEADER_BYTES {
        let h = &mut buf[at..];
        h[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        let stored = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) as usize;
        let avail = h.len() - RECORD_HEADER_BYTES;
        let end = RECORD_HEADER_BYTES + stored.min(avail);
        let payload_crc = crc32c(&h[RECORD_HEADER_BYTES..end]);
        h[44..48].copy_from_slice(&payload_crc.to_le_bytes());
        let header_crc = crc32c(&h[8..RECORD_HEADER_BYTES]);
        h[4..8].copy_from_slice(&header_crc.to_le_bytes());
        if stored > avail {
            break;
        }
        at += end;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let header = SegmentHeader {
        segment_id: SEGMENT_ID,
        volume_id: 7,
        chain_index: 3,
        kind: SegmentKind::Log,
    };
    let raw_header = control & 2 != 0 && rest.len() >= SEGMENT_HEADER_BYTES as usize;
    let mut file_bytes = Vec::with_capacity(SEGMENT_HEADER_BYTES as usize + rest.len());
    if raw_header {
        file_bytes.extend_from_slice(rest);
    } else {
        file_bytes.extend_from_slice(&header.encode());
        file_bytes.extend_from_slice(rest);
    }
    if control & 1 != 0 {
        fix_up(&mut file_bytes[SEGMENT_HEADER_BYTES as usize..]);
    }
    let path = segment_path(dir(), SEGMENT_ID);
    std::fs::write(&path, &file_bytes).expect("write segment file");
    let file_len = file_bytes.len() as u64;

    GUARD.store(true, Ordering::Relaxed);
    let opened = SegmentFile::open(dir(), SEGMENT_ID);
    GUARD.store(false, Ordering::Relaxed);
    let (seg, decoded) = match opened {
        Ok(x) => x,
        Err(e) => {
            assert!(raw_header, "a valid segment header was refused: {e}");
            return;
        }
    };
    if !raw_header {
        assert_eq!(decoded, header);
    }
    assert_eq!(seg.len_bytes().expect("len"), file_len);

    let start = if control & 4 != 0 && rest.len() >= 2 {
        u64::from(u16::from_le_bytes([rest[0], rest[1]])) % (file_len + 2)
    } else {
        SEGMENT_HEADER_BYTES
    };
    let mut next = start;
    let mut sealed = false;
    GUARD.store(true, Ordering::Relaxed);
    let scanned = seg.scan(start, |at, h, payload| {
        assert_eq!(at, next, "records must be visited back to back");
        assert_eq!(payload.len(), h.stored_len as usize);
        assert!(payload.len() <= MAX_PAYLOAD_BYTES);
        assert!(at + h.total_bytes() <= file_len, "record past end of file");
        assert!(
            h.check_payload(payload).is_ok(),
            "unverified payload visited"
        );
        if h.kind == RecordKind::Write {
            let want = h.len_sectors as usize * 512;
            if let Ok(out) =
                decode_data(h.flags & (FLAG_COMPRESSED | FLAG_BLOCK_CRCS), payload, want)
            {
                assert_eq!(out.len(), want);
            }
        }
        next = at + h.total_bytes();
        if h.kind == RecordKind::Seal {
            sealed = true;
            ScanStep::StopAfter
        } else {
            ScanStep::Continue
        }
    });
    GUARD.store(false, Ordering::Relaxed);
    let (end, stop) = scanned.expect("scanning a readable file is not an I/O error");
    assert_eq!(end, next, "scan must end right after the last valid record");
    if start <= file_len {
        assert!(end <= file_len);
    }
    if stop.is_none() && !sealed {
        assert_eq!(end, file_len, "a clean stop is only at end of file");
    }
    if start == SEGMENT_HEADER_BYTES {
        // Headers only: a payload sealed_len does not check may be what
        // stopped the scan, so a seal it finds past the scan's end is fine.
        match sealed_len(&file_bytes) {
            Some(cut) => {
                assert!(cut as u64 <= file_len);
                if sealed {
                    assert_eq!(cut as u64, end, "the cut is not the scan's seal");
                }
            }
            None => assert!(!sealed, "the scan found a seal that sealed_len missed"),
        }
    }
});
