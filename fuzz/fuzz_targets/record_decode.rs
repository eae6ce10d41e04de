//! `RecordHeader::decode` on arbitrary bytes; when a header decodes, its
//! payload check and `decode_data` on the bytes after it. Nothing may panic,
//! and whatever decodes must respect the documented bounds.
//!
//! Input: one control byte, then the record bytes.
//! - bit 0: fix up magic, payload crc (over the declared length, clamped to
//!   what is there) and header crc first, so the fuzzer gets past the
//!   checksums and exercises the length/kind/flag rules and the decoder;
//! - bit 1: also run `decode_data(FLAG_COMPRESSED, ..)` on the record bytes
//!   as an lz4 payload, with a target size taken from the input (direct
//!   fuzzing of the decompressor the read path uses).

#![no_main]

use cowstore::limits::{MAX_RECORD_DATA_BYTES, SECTOR_BYTES};
use cowstore::record::{
    decode_data, RecordHeader, RecordKind, FLAG_BLOCK_CRCS, FLAG_COMPRESSED, FLAG_CONTINUED,
    KNOWN_FLAGS, MAX_PAYLOAD_BYTES, RECORD_HEADER_BYTES, RECORD_MAGIC,
};
use libfuzzer_sys::fuzz_target;

/// Makes the checksums of the record at the start of `buf` valid.
fn fix_up(buf: &mut [u8]) {
    if buf.len() < RECORD_HEADER_BYTES {
        return;
    }
    buf[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    let stored = u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]) as usize;
    let end = RECORD_HEADER_BYTES + stored.min(buf.len() - RECORD_HEADER_BYTES);
    let payload_crc = crc32c(&buf[RECORD_HEADER_BYTES..end]);
    buf[44..48].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32c(&buf[8..RECORD_HEADER_BYTES]);
    buf[4..8].copy_from_slice(&header_crc.to_le_bytes());
}

/// crc32c (Castagnoli), bitwise: the fuzz crate does not need a dependency
/// for the few hundred bytes it checksums per input.
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

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let mut buf = rest.to_vec();
    if control & 1 != 0 {
        fix_up(&mut buf);
    }

    if control & 2 != 0 && buf.len() >= 2 {
        let want = usize::from(u16::from_le_bytes([buf[0], buf[1]])) * 2;
        if let Ok(out) = decode_data(FLAG_COMPRESSED, &buf[2..], want) {
            assert_eq!(out.len(), want);
        }
    }

    let Ok(header) = RecordHeader::decode(&buf) else {
        return;
    };
    // What decoded respects the format's bounds.
    let stored = header.stored_len as usize;
    assert!(
        stored <= MAX_PAYLOAD_BYTES,
        "stored_len {stored} past the bound"
    );
    assert_eq!(header.total_bytes(), (RECORD_HEADER_BYTES + stored) as u64);
    assert!(header.flags & !KNOWN_FLAGS == 0);
    if header.is_compressed() || header.flags & FLAG_BLOCK_CRCS != 0 {
        assert_eq!(header.kind, RecordKind::Write);
    }
    if header.flags & FLAG_CONTINUED != 0 {
        assert!(matches!(header.kind, RecordKind::Write | RecordKind::Zero));
    }
    let data_bytes = u64::from(header.len_sectors) * SECTOR_BYTES;
    if header.kind == RecordKind::Write {
        assert!(header.len_sectors > 0 && data_bytes <= MAX_RECORD_DATA_BYTES as u64);
    }
    let payload_all = &buf[RECORD_HEADER_BYTES..];
    // With its whole payload present, re-encoding the record decodes to the
    // same header (encode recomputes the length and payload crc).
    if let Some(payload) = payload_all.get(..stored) {
        let mut again = Vec::new();
        header.encode_with_payload(payload, &mut again);
        let back = RecordHeader::decode(&again).expect("re-encoded header decodes");
        assert_eq!(back.stored_len, header.stored_len);
        assert_eq!(back.kind, header.kind);
        assert_eq!(back.flags, header.flags);
        assert_eq!(back.seq, header.seq);
        assert_eq!(back.volume_id, header.volume_id);
        assert_eq!(back.lba, header.lba);
        assert_eq!(back.len_sectors, header.len_sectors);
        assert_eq!(back.aux, header.aux);
    }

    let payload_ok = header.check_payload(payload_all).is_ok();
    if payload_ok {
        assert_eq!(payload_all.len(), stored);
    }
    // The decoder on the rest of the input, verified or not: it must
    // reject, never panic or allocate past the record bound.
    match decode_data(header.flags, payload_all, data_bytes as usize) {
        Ok(out) => assert_eq!(out.len() as u64, data_bytes),
        Err(_) => {
            // An uncompressed write whose payload verified always decodes.
            assert!(
                !(payload_ok && header.kind == RecordKind::Write && !header.is_compressed()),
                "verified uncompressed write failed to decode"
            );
        }
    }
});
