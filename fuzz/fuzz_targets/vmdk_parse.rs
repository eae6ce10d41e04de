//! The VMDK parser on arbitrary bytes held in memory: open (header, footer,
//! descriptor, grain directory and tables, all the overlap checks), runs,
//! and reads of a few ranges (grain lookup, inflate). Nothing may panic,
//! hang, or allocate beyond the documented limits; runs must ascend inside
//! the capacity.
//!
//! Input: one control byte, then the bytes.
//! - bit 0 set: the bytes are two files, split at (control >> 1) * 64: a
//!   descriptor (or sparse file) and the one extent file every extent line
//!   resolves to; clear: one file, extent lines resolve to nothing.
//! - the last 12 bytes (when there are that many) also pick the read ranges.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmdk::{Disk, MemSource, Source, VmdkError};

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let (main, extent) = if control & 1 == 1 {
        let at = ((control >> 1) as usize * 64).min(rest.len());
        (&rest[..at], Some(rest[at..].to_vec()))
    } else {
        (rest, None)
    };
    let resolver = move |name: &str| -> Result<(Arc<dyn Source>, String), VmdkError> {
        match &extent {
            Some(bytes) => Ok((
                Arc::new(MemSource(bytes.clone())) as Arc<dyn Source>,
                name.to_string(),
            )),
            None => Err(VmdkError::Unsupported {
                file: name.to_string(),
                what: "no extent files".to_string(),
            }),
        }
    };
    let Ok(disk) = Disk::open_source("fuzz.vmdk", Arc::new(MemSource(main.to_vec())), &resolver)
    else {
        return;
    };
    let capacity = disk.capacity_bytes();
    if let Ok(runs) = disk.runs() {
        let mut end = 0;
        for r in &runs {
            assert!(r.offset_bytes >= end, "runs ascend");
            end = r.offset_bytes + r.len_bytes;
            assert!(end <= capacity, "runs inside the capacity");
        }
    }
    if capacity == 0 {
        return;
    }
    let tail: Vec<u8> = data.iter().rev().take(12).copied().collect();
    for pick in tail.chunks(4) {
        let mut b = [0u8; 4];
        b[..pick.len()].copy_from_slice(pick);
        let v = u32::from_le_bytes(b) as u64;
        let offset = (v * 4096) % capacity;
        let len = (1 + (v >> 20) * 512).min(256 * 1024).min(capacity - offset) as usize;
        let mut buf = vec![0u8; len];
        let _ = disk.read_at(&mut buf, offset);
    }
});
