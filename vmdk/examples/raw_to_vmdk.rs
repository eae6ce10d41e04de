//! `raw_to_vmdk IN.raw OUT.vmdk`: writes a raw image as streamOptimized
//! (VMware's layout) with `StreamOptimizedWriter`; for timing against
//! `qemu-img convert -O vmdk -o subformat=streamOptimized`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;

use vmdk::{StreamOptimizedWriter, GRAIN_BYTES};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: raw_to_vmdk IN.raw OUT.vmdk");
        std::process::exit(2);
    }
    let input = File::open(&args[1])?;
    let len = input.metadata()?.len();
    let out = BufWriter::with_capacity(1 << 20, File::create(&args[2])?);
    let mut w = StreamOptimizedWriter::new(out, len)?;
    // Read 4 MiB at a time, hand over grain by grain.
    let mut buf = vec![0u8; 4 << 20];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        input.read_exact_at(&mut buf[..n], at)?;
        for (i, g) in buf[..n].chunks(GRAIN_BYTES as usize).enumerate() {
            w.write_grain(at + i as u64 * GRAIN_BYTES, g)?;
        }
        at += n as u64;
    }
    w.finish()?.flush()?;
    Ok(())
}
