//! `cowsnap import`: VMDK files (any layout, delta chains) and OVAs into
//! volumes.
//!
//! Each file is one volume, imported on its own thread; inside a file,
//! worker threads read (and for streamOptimized, inflate) separate chunks
//! and write them to the volume, so work overlaps across files and cores.
//! Zero and unallocated grains are never written. A delta chain becomes one
//! volume whose older layers are snapshots, oldest first. A file that fails
//! leaves nothing behind: its volume and layer snapshots are removed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use futures::executor::block_on;
use indicatif::ProgressBar;
use serde::Serialize;
use serde_json::json;

use crate::cli::ImportArgs;
use crate::output::{self, Output};
use crate::progress::Progress;
use crate::{failure, store};

/// Bytes per read/write request: large enough to stream, aligned so chunks
/// of different runs never share a request.
const CHUNK_BYTES: u64 = 1 << 20;
/// The engine's largest write-zeroes request.
const MAX_ZERO_BYTES: u64 = 1 << 40;
/// Threads reading and writing chunks of one file: at least this many, so
/// that writes stay in flight while others read or inflate, even on 2 cores.
const MIN_WORKERS_PER_FILE: usize = 4;
/// And at most this many.
const MAX_WORKERS_PER_FILE: usize = 8;

/// One volume to make: the layers of one disk, oldest first.
struct Job {
    /// What the user named (file, or OVA member), for messages.
    source: String,
    volume: String,
    layers: Vec<vmdk::Disk>,
}

#[derive(Debug, Serialize)]
struct Imported {
    source: String,
    volume: String,
    size_bytes: u64,
    data_bytes: u64,
    zero_bytes: u64,
    layer_snapshots: Vec<String>,
    seconds: f64,
}

/// `disk-1.vmdk` -> `disk-1`; characters a volume name cannot hold become `_`.
fn volume_name_for(prefix: &str, stem: &str) -> String {
    let mut name: String = format!("{prefix}{stem}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with(['.', '-']) || name.is_empty() {
        name.insert(0, 'v');
    }
    name.truncate(100);
    name
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk".into())
}

fn is_ova(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("ova"))
}

/// Opens every file named into jobs (before any volume is made, so a bad
/// file fails the command without touching the store).
fn plan(
    args: &ImportArgs,
    ova_lists: &mut Vec<(PathBuf, serde_json::Value, String)>,
) -> Result<Vec<Job>> {
    if args.name.is_some() && args.files.len() != 1 {
        return Err(failure::usage("--name needs exactly one input file"));
    }
    let mut jobs = Vec::new();
    for path in &args.files {
        if is_ova(path) {
            let ova = vmdk::ova::Ova::open(path)?;
            let mut systems = Vec::new();
            for sys in ova.systems() {
                let mut vols = Vec::new();
                for disk in &sys.disks {
                    let volume =
                        volume_name_for(&args.prefix, &format!("{}-{}", sys.name, disk.disk_id));
                    let mut opened = ova.open_disk(disk)?;
                    opened.set_inflate_threads(1);
                    vols.push(volume.clone());
                    jobs.push(Job {
                        source: format!("{}:{}", path.display(), disk.file_href),
                        volume,
                        layers: vec![opened],
                    });
                }
                systems.push(json!({"name": sys.name, "volumes": vols}));
            }
            ova_lists.push((
                path.clone(),
                json!({"ova": path, "virtual_systems": systems}),
                ova.ovf_xml().to_string(),
            ));
        } else {
            let mut layers = vmdk::open_chain(path)?;
            // Our workers already read on several threads; the reader's own
            // inflate threads would only double them.
            for layer in &mut layers {
                layer.set_inflate_threads(1);
            }
            let volume = match &args.name {
                Some(n) => n.clone(),
                None => volume_name_for(&args.prefix, &stem(path)),
            };
            jobs.push(Job {
                source: path.display().to_string(),
                volume,
                layers,
            });
        }
    }
    for (i, a) in jobs.iter().enumerate() {
        if jobs[..i].iter().any(|b| b.volume == a.volume) {
            return Err(failure::usage(format!(
                "two inputs would both become volume {:?} ({}); use --prefix or import them separately",
                a.volume, a.source
            )));
        }
    }
    Ok(jobs)
}

pub fn run(flag: Option<&Path>, args: ImportArgs, out: Output) -> Result<()> {
    let mut ova_lists = Vec::new();
    let jobs = plan(&args, &mut ova_lists)?;
    let st = store::open(flag)?;
    let existing: Vec<String> = st.volumes().into_iter().map(|v| v.name).collect();
    if let Some(j) = jobs.iter().find(|j| existing.contains(&j.volume)) {
        return Err(failure::conflict(format!(
            "volume {:?} already exists (importing {})",
            j.volume, j.source
        )));
    }
    let progress = Progress::new(out.json);
    let results: Vec<Result<Imported>> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|job| {
                let total: u64 = job
                    .layers
                    .iter()
                    .map(|d| d.capacity_bytes())
                    .max()
                    .unwrap_or(0);
                let bar = progress.bytes_bar(&job.volume, total);
                let st = &st;
                s.spawn(move || import_one(st, job, &bar))
            })
            .collect();
        handles
            .into_iter()
            .zip(&jobs)
            .map(|(h, job)| {
                h.join().unwrap_or_else(|_| {
                    Err(anyhow::anyhow!("{}: import thread panicked", job.source))
                })
            })
            .collect()
    });
    // The OVF's VM list, kept beside the volumes for later restores.
    if results.iter().all(Result::is_ok) {
        for (path, doc, xml) in &ova_lists {
            save_ova_list(st.root(), path, doc, xml)?;
        }
    }
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(i) => ok.push(i),
            Err(e) => failed.push(e),
        }
    }
    out.emit(&json!({"imported": ok, "failed": failed.iter().map(|e| format!("{e:#}")).collect::<Vec<_>>()}), || {
        let mut s = String::new();
        for i in &ok {
            s += &format!(
                "imported {} as volume {} ({}: {} data, {} zero) in {:.2} s",
                i.source,
                i.volume,
                output::bytes(i.size_bytes),
                output::bytes(i.data_bytes),
                output::bytes(i.zero_bytes),
                i.seconds
            );
            if !i.layer_snapshots.is_empty() {
                s += &format!("; older layers: {}", i.layer_snapshots.join(", "));
            }
            s += "\n";
        }
        s
    });
    store::close(st)?;
    match failed.into_iter().next() {
        None => Ok(()),
        Some(first) => Err(first),
    }
}

fn save_ova_list(root: &Path, ova: &Path, doc: &serde_json::Value, xml: &str) -> Result<()> {
    let dir = root.join("ova");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let base = dir.join(stem(ova));
    let json_path = base.with_extension("json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(doc)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let ovf_path = base.with_extension("ovf");
    std::fs::write(&ovf_path, xml).with_context(|| format!("writing {}", ovf_path.display()))
}

fn import_one(st: &cowstore::Store, job: &Job, bar: &ProgressBar) -> Result<Imported> {
    let started = Instant::now();
    let size_bytes = job
        .layers
        .iter()
        .map(|d| d.capacity_bytes())
        .max()
        .unwrap_or(0);
    let first_size = job.layers.first().map_or(0, |d| d.capacity_bytes());
    let vol = st
        .create_volume(&job.volume, first_size)
        .with_context(|| format!("{}: creating volume {}", job.source, job.volume))?;
    let mut snapshots = Vec::new();
    let result = (|| -> Result<(u64, u64)> {
        let (mut data_bytes, mut zero_bytes) = (0, 0);
        for (i, layer) in job.layers.iter().enumerate() {
            if layer.capacity_bytes() > vol.size_bytes() {
                block_on(vol.resize(layer.capacity_bytes()))?;
            }
            bar.set_position(0);
            let (d, z) = copy_layer(&vol, layer, i == 0, bar)
                .with_context(|| format!("importing {}", layer.name()))?;
            data_bytes += d;
            zero_bytes += z;
            block_on(vol.flush())?;
            if i + 1 < job.layers.len() {
                let snap = format!(
                    "{}@{}",
                    job.volume,
                    volume_name_for("", &stem(Path::new(layer.name())))
                );
                st.create_snapshot(&job.volume, &snap)?;
                snapshots.push(snap);
            }
        }
        Ok((data_bytes, zero_bytes))
    })();
    bar.finish_and_clear();
    match result {
        Ok((data_bytes, zero_bytes)) => Ok(Imported {
            source: job.source.clone(),
            volume: job.volume.clone(),
            size_bytes,
            data_bytes,
            zero_bytes,
            layer_snapshots: snapshots,
            seconds: started.elapsed().as_secs_f64(),
        }),
        Err(e) => {
            // Nothing half-imported stays.
            drop(vol);
            for s in &snapshots {
                let _ = st.delete_snapshot(s);
            }
            let _ = st.delete_volume(&job.volume);
            Err(e.context(format!(
                "{}: import failed; volume {} was removed",
                job.source, job.volume
            )))
        }
    }
}

/// Copies one layer's runs into the volume; returns (data, zero) bytes
/// written. On the first layer the volume is empty, so zero runs and
/// all-zero chunks are skipped; on a delta layer they must hide the parent.
fn copy_layer(
    vol: &cowstore::Volume,
    layer: &vmdk::Disk,
    fresh: bool,
    bar: &ProgressBar,
) -> Result<(u64, u64)> {
    let runs = layer.runs()?;
    let mut chunks: Vec<(u64, u64)> = Vec::new();
    let mut zero_bytes = 0u64;
    for run in &runs {
        match run.kind {
            vmdk::RunKind::Zero => {
                zero_bytes += run.len_bytes;
                if !fresh {
                    let mut at = run.offset_bytes;
                    let end = run.offset_bytes + run.len_bytes;
                    while at < end {
                        let n = (end - at).min(MAX_ZERO_BYTES);
                        block_on(vol.write_zeroes(at, n))?;
                        at += n;
                    }
                }
                bar.inc(run.len_bytes);
            }
            vmdk::RunKind::Data => {
                let end = run.offset_bytes + run.len_bytes;
                let mut at = run.offset_bytes;
                while at < end {
                    let next = ((at / CHUNK_BYTES) + 1) * CHUNK_BYTES;
                    let n = next.min(end) - at;
                    chunks.push((at, n));
                    at += n;
                }
            }
        }
    }
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(MIN_WORKERS_PER_FILE, MAX_WORKERS_PER_FILE);
    let chunks = Arc::new(chunks);
    let results: Vec<Result<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (chunks, next) = (chunks.clone(), &next);
                s.spawn(move || -> Result<u64> {
                    let mut buf = vec![0u8; CHUNK_BYTES as usize];
                    let mut written = 0u64;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(at, n)) = chunks.get(i) else {
                            return Ok(written);
                        };
                        let data = &mut buf[..n as usize];
                        layer.read_at(data, at)?;
                        if fresh && data.iter().all(|&b| b == 0) {
                            bar.inc(n);
                            continue;
                        }
                        block_on(vol.write(at, data))?;
                        written += n;
                        bar.inc(n);
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("import worker panicked")))
            })
            .collect()
    });
    let mut data_bytes = 0;
    for r in results {
        data_bytes += r?;
    }
    Ok((data_bytes, zero_bytes))
}
