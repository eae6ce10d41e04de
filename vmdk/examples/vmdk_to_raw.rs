//! `vmdk_to_raw DISK.vmdk OUT.raw [threads]`: writes a VMDK (a delta chain
//! resolved through its parents) as a sparse raw file, reading each layer's
//! runs in 4 MiB pieces on several threads. The same read path an import
//! uses; for timing against `qemu-img convert -O raw`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use vmdk::{open_chain, RunKind};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: vmdk_to_raw DISK.vmdk OUT.raw [threads]");
        std::process::exit(2);
    }
    let threads: usize = match args.get(3) {
        Some(t) => t.parse()?,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut chain = open_chain(&PathBuf::from(&args[1]))?;
    // The pieces are already read on `threads` threads.
    if std::env::var_os("VMDK_INFLATE_THREADS").is_none() {
        chain.iter_mut().for_each(|d| d.set_inflate_threads(1));
    }
    let capacity = chain.last().map_or(0, |d| d.capacity_bytes());
    let out = File::create(&args[2])?;
    out.set_len(capacity)?;
    const PIECE: u64 = 4 << 20;
    for layer in &chain {
        let mut pieces = Vec::new();
        for r in layer.runs()? {
            let mut pos = r.offset_bytes;
            while pos < r.offset_bytes + r.len_bytes {
                let n = (r.offset_bytes + r.len_bytes - pos).min(PIECE - pos % PIECE);
                pieces.push((pos, n, r.kind));
                pos += n;
            }
        }
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| -> Result<(), String> {
            let workers: Vec<_> = (0..threads.max(1))
                .map(|_| {
                    s.spawn(|| -> Result<(), String> {
                        let mut buf = vec![0u8; PIECE as usize];
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&(pos, n, kind)) = pieces.get(i) else {
                                return Ok(());
                            };
                            let b = &mut buf[..n as usize];
                            match kind {
                                RunKind::Data => {
                                    layer.read_at(b, pos).map_err(|e| e.to_string())?
                                }
                                RunKind::Zero => b.fill(0),
                            }
                            if chain.len() > 1 || b.iter().any(|&x| x != 0) {
                                out.write_all_at(b, pos).map_err(|e| e.to_string())?;
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().map_err(|_| "worker panicked".to_string())??;
            }
            Ok(())
        })?;
    }
    Ok(())
}
