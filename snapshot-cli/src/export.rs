//! `cowsnap export`: a volume or snapshot as a raw image or a
//! streamOptimized VMDK, so nobody is locked in.
//!
//! Reads go through the engine (every record's crc32c is checked), several
//! chunks at a time; chunks are consumed in address order, a bounded window
//! at a time, because a streamOptimized file is written front to back.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use futures::executor::block_on;
use serde_json::json;

use crate::cli::{ExportArgs, ExportFormat};
use crate::output::{self, Output};
use crate::progress::Progress;
use crate::{failure, store};

/// Bytes per read request (a multiple of the VMDK grain).
const CHUNK_BYTES: u64 = 1 << 20;
/// Chunks read ahead of the writer: bounds memory to WINDOW x CHUNK.
const WINDOW_CHUNKS: usize = 16;
const READ_THREADS: usize = 4;

/// Reads a volume or a snapshot: whichever the name is.
enum Reader {
    Volume(cowstore::Volume),
    Snapshot(cowstore::Snapshot),
}

impl Reader {
    fn read_into(&self, offset_bytes: u64, buf: &mut [u8]) -> cowstore::Result<()> {
        match self {
            Reader::Volume(v) => block_on(v.read_into(offset_bytes, buf)),
            Reader::Snapshot(s) => block_on(s.read_into(offset_bytes, buf)),
        }
    }

    fn size_bytes(&self) -> u64 {
        match self {
            Reader::Volume(v) => v.size_bytes(),
            Reader::Snapshot(s) => s.size_bytes(),
        }
    }
}

/// Chunks covering `ranges`, each aligned to CHUNK_BYTES and clipped to
/// `size_bytes`, ascending and without repeats.
fn aligned_chunks(ranges: &[cowstore::ByteRange], size_bytes: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for r in ranges {
        let mut at = r.offset_bytes / CHUNK_BYTES * CHUNK_BYTES;
        while at < r.end_bytes() {
            if out.last().is_none_or(|&(last, _)| last < at) {
                out.push((at, CHUNK_BYTES.min(size_bytes - at)));
            }
            at += CHUNK_BYTES;
        }
    }
    out
}

/// Reads `chunks` with several threads, handing each to `consume` in order.
fn read_in_order(
    reader: &Reader,
    chunks: &[(u64, u64)],
    mut consume: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    for window in chunks.chunks(WINDOW_CHUNKS) {
        let mut bufs: Vec<Vec<u8>> = window.iter().map(|&(_, n)| vec![0u8; n as usize]).collect();
        let next = AtomicUsize::new(0);
        let slots: Vec<std::sync::Mutex<&mut Vec<u8>>> =
            bufs.iter_mut().map(std::sync::Mutex::new).collect();
        let errors: Vec<cowstore::Error> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..READ_THREADS.min(window.len()))
                .map(|_| {
                    let (next, slots) = (&next, &slots);
                    s.spawn(move || -> Option<cowstore::Error> {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let &(at, _) = window.get(i)?;
                            let mut slot = match slots[i].lock() {
                                Ok(g) => g,
                                Err(p) => p.into_inner(),
                            };
                            if let Err(e) = reader.read_into(at, slot.as_mut_slice()) {
                                return Some(e);
                            }
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().ok().flatten())
                .collect()
        });
        drop(slots);
        if let Some(e) = errors.into_iter().next() {
            return Err(e.into());
        }
        for (&(at, _), buf) in window.iter().zip(&bufs) {
            consume(at, buf)?;
        }
    }
    Ok(())
}

pub fn run(flag: Option<&Path>, args: ExportArgs, out: Output) -> Result<()> {
    let format = args.format.unwrap_or_else(|| {
        if args
            .output
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("vmdk"))
        {
            ExportFormat::Vmdk
        } else {
            ExportFormat::Raw
        }
    });
    let st = store::open(flag)?;
    let reader = match st.kind_of(&args.name)? {
        cowstore::ObjectKind::Volume => Reader::Volume(st.volume(&args.name)?),
        cowstore::ObjectKind::Snapshot => Reader::Snapshot(st.snapshot(&args.name)?),
    };
    let size_bytes = reader.size_bytes();
    let ranges = st.mapped_ranges(&args.name)?;
    let chunks = aligned_chunks(&ranges, size_bytes);
    let mut open = std::fs::OpenOptions::new();
    open.write(true);
    if args.force {
        open.create(true).truncate(true);
    } else {
        open.create_new(true);
    }
    let file = open.open(&args.output).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            failure::conflict(format!(
                "{} exists (use --force to overwrite)",
                args.output.display()
            ))
        } else {
            anyhow::Error::new(e).context(format!("creating {}", args.output.display()))
        }
    })?;
    let progress = Progress::new(out.json);
    let total: u64 = chunks.iter().map(|&(_, n)| n).sum();
    let bar = progress.bytes_bar(&args.name, total);
    let started = std::time::Instant::now();
    let result = match format {
        ExportFormat::Raw => export_raw(&reader, &chunks, file, size_bytes, &bar),
        ExportFormat::Vmdk => export_vmdk(&reader, &chunks, file, size_bytes, &bar),
    };
    bar.finish_and_clear();
    if let Err(e) = result {
        // A half-written image must not pass for an export.
        let _ = std::fs::remove_file(&args.output);
        return Err(e.context(format!(
            "exporting {} to {}",
            args.name,
            args.output.display()
        )));
    }
    let file_bytes = std::fs::metadata(&args.output)
        .map(|m| m.len())
        .unwrap_or(0);
    out.emit(
        &json!({"name": args.name, "output": args.output, "format": format!("{format:?}").to_lowercase(),
                "size_bytes": size_bytes, "file_bytes": file_bytes,
                "seconds": started.elapsed().as_secs_f64()}),
        || {
            format!(
                "exported {} ({}) to {} as {} ({} file) in {:.2} s",
                args.name,
                output::bytes(size_bytes),
                args.output.display(),
                if format == ExportFormat::Raw { "raw" } else { "streamOptimized VMDK" },
                output::bytes(file_bytes),
                started.elapsed().as_secs_f64()
            )
        },
    );
    store::close(st)
}

fn export_raw(
    reader: &Reader,
    chunks: &[(u64, u64)],
    file: File,
    size_bytes: u64,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    // Holes stay holes: only mapped, non-zero chunks are written.
    file.set_len(size_bytes).context("sizing the output")?;
    read_in_order(reader, chunks, |at, buf| {
        if !buf.iter().all(|&b| b == 0) {
            file.write_all_at(buf, at).context("writing the output")?;
        }
        bar.inc(buf.len() as u64);
        Ok(())
    })?;
    file.sync_all().context("syncing the output")
}

fn export_vmdk(
    reader: &Reader,
    chunks: &[(u64, u64)],
    file: File,
    size_bytes: u64,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let grain = vmdk::GRAIN_BYTES;
    let mut writer =
        vmdk::StreamOptimizedWriter::new(BufWriter::with_capacity(1 << 20, file), size_bytes)?;
    read_in_order(reader, chunks, |at, buf| {
        // The last grain may be short: the disk ends inside it.
        for (i, g) in buf.chunks(grain as usize).enumerate() {
            writer.write_grain(at + i as u64 * grain, g)?;
        }
        bar.inc(buf.len() as u64);
        Ok(())
    })?;
    let mut out = writer.finish()?;
    out.flush().context("writing the output")?;
    let file = out
        .into_inner()
        .map_err(|e| e.into_error())
        .context("writing the output")?;
    file.sync_all().context("syncing the output")
}
