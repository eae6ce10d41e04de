//! How fast a cleaner pass relocates live data, beside a plain copy of the
//! same number of bytes on the same disk in the same run.
//!
//! Each round makes a fresh store under `COWSTORE_BENCH_DIR`, fills a volume
//! with 128 KiB writes, overwrites it with 4 KiB writes at random offsets
//! (what a guest's random writes leave: segments partly live, their live
//! records scattered), flushes, drops the page cache, and times one full
//! pass with no relocation budget. The peer reads as many bytes from a cold
//! file and writes them to a new one in 1 MiB pieces, then fsyncs: the floor
//! any relocation is measured against (it must read and write the live
//! bytes at least once).
//!
//! `gc-figures [VOLUME_MIB [OVERWRITE_MIB [ROUNDS]]]`, defaults 1024 1536 3.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cowstore::{GcMode, StoreConfig};
use cowstore_benches::{drop_cache_under, fill, median, run_qd, temp_store, RandomData, Rng};

const MIB: u64 = 1 << 20;

fn main() -> Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().with_context(|| format!("not a number: {a}")))
        .collect::<Result<_>>()?;
    let volume_bytes = args.first().copied().unwrap_or(1024) * MIB;
    let overwrite_bytes = args.get(1).copied().unwrap_or(1536) * MIB;
    let rounds = args.get(2).copied().unwrap_or(3).max(1);
    let data = RandomData::standard();

    let mut gc_rates = Vec::new();
    let mut copy_rates = Vec::new();
    let mut ratios = Vec::new();
    let mut gc_cpus = Vec::new();
    println!(
        "{:>5} {:>12} {:>9} {:>9} {:>9} {:>10} {:>10} {:>8}",
        "round", "relocated_MB", "segments", "gc_s", "gc_cpu_s", "gc_MB/s", "copy_MB/s", "gc/copy"
    );
    for round in 0..rounds {
        let config = StoreConfig {
            gc_max_relocate_bytes: 0,
            ..StoreConfig::default()
        };
        let (dir, store) = temp_store(config);
        let vol = store.create_volume("v", volume_bytes)?;
        futures::executor::block_on(async {
            fill(&vol, volume_bytes, 128 << 10, 8, &data).await?;
            let mut rng = Rng::new(round + 1);
            let blocks = volume_bytes / 4096;
            let offsets: Vec<u64> = (0..overwrite_bytes / 4096)
                .map(|_| rng.below(blocks) * 4096)
                .collect();
            run_qd(offsets.len() as u64, 32, |i| {
                vol.write(offsets[i as usize], data.slice(i, 4096))
            })
            .await?;
            vol.flush().await
        })?;
        drop_cache_under(dir.path())?;
        let started = Instant::now();
        let cpu_before = thread_cpu();
        let report = store.gc_with(GcMode::Full)?;
        let gc_cpu = thread_cpu().saturating_sub(cpu_before);
        let gc_time = started.elapsed();
        anyhow::ensure!(report.bytes_relocated > 0, "nothing relocated: {report:?}");
        anyhow::ensure!(report.corrupt.is_empty(), "corrupt: {:?}", report.corrupt);
        // The data must still read back after the pass (spot check).
        futures::executor::block_on(vol.read(0, 4096))?;
        drop(vol);
        drop(store);

        let copy_time = copy_floor(dir.path(), report.bytes_relocated)?;
        let mb = report.bytes_relocated as f64 / 1e6;
        let gc_rate = mb / gc_time.as_secs_f64();
        let copy_rate = mb / copy_time.as_secs_f64();
        println!(
            "{round:>5} {mb:>12.1} {:>9} {:>9.2} {:>9.2} {gc_rate:>10.1} {copy_rate:>10.1} {:>8.2}",
            report.segments_cleaned,
            gc_time.as_secs_f64(),
            gc_cpu.as_secs_f64(),
            gc_rate / copy_rate
        );
        gc_cpus.push(gc_cpu.as_secs_f64());
        gc_rates.push(gc_rate);
        copy_rates.push(copy_rate);
        ratios.push(gc_rate / copy_rate);
    }
    println!(
        "median: gc {:.1} MB/s ({:.2} s CPU), copy {:.1} MB/s, paired gc/copy {:.2} (range {:.2}-{:.2})",
        median(&mut gc_rates),
        median(&mut gc_cpus),
        median(&mut copy_rates),
        median(&mut ratios.clone()),
        ratios.iter().cloned().fold(f64::INFINITY, f64::min),
        ratios.iter().cloned().fold(0.0, f64::max),
    );
    Ok(())
}

/// CPU time (user + system) of the calling thread, which runs the pass (the
/// store's drop-behind thread is not in it).
fn thread_cpu() -> Duration {
    // SAFETY: getrusage fills the struct we pass; zeroed is a valid rusage.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Writes `len` bytes to a file, drops it from the page cache, then times
/// reading it back and writing it to a second file in 1 MiB pieces, fsync
/// included.
fn copy_floor(dir: &std::path::Path, len: u64) -> Result<Duration> {
    let data = RandomData::standard();
    let from = dir.join("copy-from");
    let to = dir.join("copy-to");
    {
        let mut f = std::fs::File::create(&from)?;
        let mut done = 0;
        while done < len {
            let n = MIB.min(len - done);
            f.write_all(data.slice(done / MIB, n as usize))?;
            done += n;
        }
        f.sync_all()?;
    }
    drop_cache_under(dir)?;
    let started = Instant::now();
    let mut src = std::fs::File::open(&from)?;
    let mut dst = std::fs::File::create(&to)?;
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n])?;
    }
    dst.sync_all()?;
    let took = started.elapsed();
    std::fs::remove_file(&from)?;
    std::fs::remove_file(&to)?;
    Ok(took)
}
