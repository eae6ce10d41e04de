//! Prints the engine figures criterion does not measure well:
//!
//! 1. map memory per extent: a counting global allocator around `System`;
//!    the live-bytes delta of building a volume with N one-sector extents,
//!    divided by `Volume::extent_count` (and the same for a bare
//!    `ExtentMap`, to separate the map from the rest of the write path);
//! 2. recovery time for 1 GiB of log tail (no checkpoint since the writes,
//!    `Store::abandon`, then `Store::open`) against opening the same store
//!    after a clean `Store::close`, with warm and with cold page cache;
//! 3. 4 KiB random reads of data written in 4 KiB requests against data
//!    written in 1 MiB requests (read amplification of 64 KiB records);
//! 4. how a write batch splits between requests and the closing flush;
//! 5. the read jobs with the page cache dropped before each batch (disk
//!    reads, comparable with fio direct=1);
//! 6. `Store::create_snapshot` alternated with a durable 512-byte write on
//!    volumes of 1e3, 1e5 and `--extents` extents.
//!
//! Usage: `engine-figures [--extents N] [--recovery-gib G] [--runs R] [--json]`,
//! or `engine-figures --series N [--segment-mib M]` to print N consecutive
//! 1 MiB sequential write batches (throughput over a long run, segment size).
//! With `--json`, a final line `FIGURES_JSON {...}` carries every figure for
//! scripts/bench.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use cowstore::extent_map::{Extent, ExtentMap};
use cowstore::{Store, StoreConfig, Volume};
use cowstore_benches::{
    drop_cache_under, fill, make_extents, median, run_batch, temp_store, Cursor, Job, Pattern,
    RandomData, GIB, KIB, MIB,
};
use futures::executor::block_on;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to `System` unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::SeqCst)
}

struct Args {
    extents: u64,
    recovery_gib: u64,
    runs: usize,
    json: bool,
    /// Only print `series` consecutive 1 MiB sequential write batches, one
    /// line each (to see how throughput evolves over a long run).
    series: usize,
    /// Segment size for `--series` (default: the engine's default).
    segment_mib: u64,
}

fn args() -> Args {
    let mut a = Args {
        extents: 1_000_000,
        recovery_gib: 1,
        runs: 3,
        json: false,
        series: 0,
        segment_mib: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut num = || {
            it.next()
                .and_then(|v| v.parse::<u64>().ok())
                .expect("numeric argument")
        };
        match x.as_str() {
            "--extents" => a.extents = num(),
            "--recovery-gib" => a.recovery_gib = num(),
            "--runs" => a.runs = num() as usize,
            "--json" => a.json = true,
            "--series" => a.series = num() as usize,
            "--segment-mib" => a.segment_mib = num(),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

struct Memory {
    extents: usize,
    volume_bytes_per_extent: f64,
    map_bytes_per_extent: f64,
    map_random_bytes_per_extent: f64,
}

fn extent(i: u64) -> Extent {
    Extent {
        segment_id: 1 + i / 50_000,
        record_offset: (i % 50_000) as u32 * 568,
        stored_len: 512,
        payload_crc: i as u32,
        len_sectors: 1,
        skip_sectors: 0,
        record_sectors: 1,
        flags: 0,
    }
}

/// Live bytes per entry of a bare map holding `2 i` for each `i` in `order`.
fn bare_map_bytes(order: impl Iterator<Item = u64>) -> f64 {
    let before = live();
    let mut map = ExtentMap::new();
    for i in order {
        map.insert(2 * i, extent(i));
    }
    let bytes = (live() - before) as f64;
    bytes / map.len() as f64
}

fn memory(extents: u64, data: &RandomData) -> Memory {
    // Bare map first: the same keys and extents the volume will hold, in
    // the volume's (ascending) order and in a random order.
    let map_bytes_per_extent = bare_map_bytes(0..extents);
    let mut order: Vec<u64> = (0..extents).collect();
    let mut rng = cowstore_benches::Rng::new(42);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let map_random_bytes_per_extent = bare_map_bytes(order.into_iter());

    // Checkpoints off: a background checkpoint would share and copy map
    // nodes while the measurement runs.
    let config = StoreConfig {
        checkpoint_interval_bytes: u64::MAX,
        ..StoreConfig::default()
    };
    let (dir, store) = temp_store(config);
    let vol = store.create_volume("mem", extents * 1024).unwrap();
    // Let the first write set up whatever it sets up once.
    block_on(vol.write(extents * 1024 - 512, data.slice(0, 512))).unwrap();
    block_on(vol.flush()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let before = live();
    let base_count = vol.extent_count();
    block_on(make_extents(&vol, extents, data)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let after = live();
    let count = vol.extent_count() - base_count;
    assert_eq!(
        count as u64, extents,
        "every write must stay its own extent"
    );
    drop(vol);
    store.abandon();
    drop(dir);
    Memory {
        extents: count,
        volume_bytes_per_extent: (after - before) as f64 / count as f64,
        map_bytes_per_extent,
        map_random_bytes_per_extent,
    }
}

struct Recovery {
    gib: u64,
    replay_warm_s: f64,
    replay_cold_s: f64,
    clean_warm_s: f64,
    clean_cold_s: f64,
    extents: usize,
    replayed_bytes: u64,
}

/// Times `Store::open` of `path` `runs` times (optionally dropping the page
/// cache first), abandoning the store after each open so the next open sees
/// the same on-disk state. Returns the median in seconds.
fn time_open(
    path: &std::path::Path,
    config: &StoreConfig,
    runs: usize,
    cold: bool,
    expect: usize,
) -> (f64, u64) {
    let mut times = Vec::new();
    let mut replayed = 0;
    for _ in 0..runs {
        if cold {
            drop_cache_under(path).expect("drop page cache");
        }
        let t = Instant::now();
        let store = Store::open(path, config.clone()).expect("open");
        let el = t.elapsed().as_secs_f64();
        let n = store.volume("r").unwrap().extent_count();
        assert_eq!(n, expect, "recovery lost extents");
        replayed = store.recovery_stats().log_bytes_replayed;
        store.abandon();
        times.push(el);
    }
    (median(&mut times), replayed)
}

fn recovery(gib: u64, runs: usize, data: &RandomData) -> Recovery {
    let config = StoreConfig {
        checkpoint_interval_bytes: u64::MAX,
        ..StoreConfig::default()
    };
    let (dir, store) = temp_store(config.clone());
    let path = dir.path().join("store");
    let bytes = gib * GIB;
    let vol = store.create_volume("r", bytes).unwrap();
    block_on(fill(&vol, bytes, MIB, 8, data)).unwrap();
    let extents = vol.extent_count();
    drop(vol);
    store.abandon();

    let (replay_warm_s, replayed_bytes) = time_open(&path, &config, runs, false, extents);
    let (replay_cold_s, _) = time_open(&path, &config, runs, true, extents);

    let store = Store::open(&path, config.clone()).unwrap();
    store.close().unwrap();
    let (clean_warm_s, clean_replayed) = time_open(&path, &config, runs, false, extents);
    let (clean_cold_s, _) = time_open(&path, &config, runs, true, extents);
    assert_eq!(clean_replayed, 0, "a clean open replays nothing");
    drop(dir);
    Recovery {
        gib,
        replay_warm_s,
        replay_cold_s,
        clean_warm_s,
        clean_cold_s,
        extents,
        replayed_bytes,
    }
}

struct Breakdown {
    job: String,
    mib_s: f64,
    requests_ms: f64,
    flush_ms: f64,
}

/// Where a write batch's time goes: the requests (encode, log append, write
/// into the page cache) against the closing flush (fdatasync). Medians over
/// `runs` batches after one warm-up batch, on one volume.
fn breakdown(runs: usize, data: &RandomData) -> Vec<Breakdown> {
    let mut out = Vec::new();
    for job in cowstore_benches::standard_jobs(cowstore_benches::REGION_BYTES) {
        if !job.pattern.is_write() || job.volumes != 1 {
            continue;
        }
        let (dir, store) = temp_store(StoreConfig::default());
        let vol = store.create_volume("b", job.region_per_volume()).unwrap();
        let mut cur = Cursor::new(3);
        block_on(run_batch(&vol, &job, &mut cur, data)).unwrap();
        let (mut req, mut fl, mut rate) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let (r, f) = block_on(cowstore_benches::run_batch_timed(
                &vol, &job, &mut cur, data,
            ))
            .unwrap();
            req.push(r.as_secs_f64() * 1e3);
            fl.push(f.as_secs_f64() * 1e3);
            rate.push(job.batch_bytes() as f64 / MIB as f64 / (r + f).as_secs_f64());
        }
        out.push(Breakdown {
            job: job.id(),
            mib_s: median(&mut rate),
            requests_ms: median(&mut req),
            flush_ms: median(&mut fl),
        });
        drop(vol);
        store.abandon();
        drop(dir);
    }
    out
}

struct SnapshotTiming {
    extents: u64,
    snapshot_ms: f64,
    durable_write_ms: f64,
}

/// `Store::create_snapshot` against the cheapest durable write (512 bytes
/// and a flush, the same fdatasync a snapshot waits for), alternated call by
/// call on the same volume so that the machine's noise hits both alike.
/// A snapshot that is O(1) in the map costs about one durable write at every
/// size.
fn snapshot_timing(sizes: &[u64], pairs: usize, data: &RandomData) -> Vec<SnapshotTiming> {
    let mut out = Vec::new();
    for &extents in sizes {
        let (dir, store) = temp_store(StoreConfig::default());
        let vol = store.create_volume("base", extents * 1024).unwrap();
        block_on(make_extents(&vol, extents, data)).unwrap();
        store.checkpoint_all().unwrap();
        let (mut snap, mut write) = (Vec::new(), Vec::new());
        for i in 0..pairs {
            let t = Instant::now();
            let info = store.create_snapshot("base", &format!("s{i}")).unwrap();
            snap.push(t.elapsed().as_secs_f64() * 1e3);
            // The volume's extents, plus the one at sector 1 after the first pair.
            assert_eq!(info.extent_count as u64, extents + u64::from(i > 0));
            // Sector 1 lies between the extents at sectors 0 and 2.
            let t = Instant::now();
            block_on(async {
                vol.write(512, data.slice(i as u64, 512)).await?;
                vol.flush().await
            })
            .unwrap();
            write.push(t.elapsed().as_secs_f64() * 1e3);
        }
        out.push(SnapshotTiming {
            extents,
            snapshot_ms: median(&mut snap),
            durable_write_ms: median(&mut write),
        });
        drop(vol);
        // close() would write one checkpoint per snapshot.
        store.abandon();
        drop(dir);
    }
    out
}

struct ColdRead {
    job: String,
    mib_s: f64,
    iops: f64,
}

/// The read jobs on 1 volume with the page cache of the store dropped before
/// every batch, so that the bytes come from the disk as fio direct=1's do
/// (the criterion figures read data still cached from the fill).
fn cold_reads(runs: usize, data: &RandomData) -> Vec<ColdRead> {
    let mut out = Vec::new();
    for job in cowstore_benches::standard_jobs(cowstore_benches::REGION_BYTES) {
        if job.pattern.is_write() || job.volumes != 1 {
            continue;
        }
        let (dir, store) = temp_store(StoreConfig::default());
        let region = job.region_per_volume();
        let vol = store.create_volume("c", region).unwrap();
        let fill_bs = if job.pattern == Pattern::RandRead {
            job.bs
        } else {
            MIB
        };
        block_on(fill(&vol, region, fill_bs, 32, data)).unwrap();
        let mut cur = Cursor::new(11);
        let mut rates = Vec::new();
        for _ in 0..runs {
            drop_cache_under(dir.path()).expect("drop page cache");
            let (t, _) = block_on(cowstore_benches::run_batch_timed(
                &vol, &job, &mut cur, data,
            ))
            .unwrap();
            rates.push(job.batch_bytes() as f64 / t.as_secs_f64());
        }
        let bps = median(&mut rates);
        out.push(ColdRead {
            job: job.id(),
            mib_s: bps / MIB as f64,
            iops: bps / job.bs as f64,
        });
        drop(vol);
        store.abandon();
        drop(dir);
    }
    out
}

struct Amplification {
    small_records_mib_s: f64,
    large_records_mib_s: f64,
}

/// 4 KiB random reads at queue depth 32 on 1 GiB written in 4 KiB requests
/// (one record per block) and in 1 MiB requests (64 KiB records: a 4 KiB
/// read fetches and checksums the whole 64 KiB record).
fn amplification(runs: usize, data: &RandomData) -> Amplification {
    let job = Job {
        pattern: Pattern::RandRead,
        bs: 4 * KIB,
        qd: 32,
        volumes: 1,
        ops: 4096,
        region_bytes: cowstore_benches::REGION_BYTES,
    };
    let mut result = [0.0f64; 2];
    for (slot, fill_bs) in [(0usize, 4 * KIB), (1, MIB)] {
        let (dir, store) = temp_store(StoreConfig::default());
        let vol: Volume = store.create_volume("a", job.region_per_volume()).unwrap();
        block_on(fill(&vol, job.region_per_volume(), fill_bs, 32, data)).unwrap();
        let mut cur = Cursor::new(7);
        block_on(run_batch(&vol, &job, &mut cur, data)).unwrap(); // warm-up
        let mut rates = Vec::new();
        for _ in 0..runs.max(5) {
            let t = Instant::now();
            block_on(run_batch(&vol, &job, &mut cur, data)).unwrap();
            rates.push(job.batch_bytes() as f64 / MIB as f64 / t.elapsed().as_secs_f64());
        }
        result[slot] = median(&mut rates);
        drop(vol);
        store.abandon();
        drop(dir);
    }
    Amplification {
        small_records_mib_s: result[0],
        large_records_mib_s: result[1],
    }
}

/// Prints `n` consecutive batches of the 1-volume 1 MiB sequential write job.
fn series(n: usize, segment_mib: u64, data: &RandomData) {
    let job = cowstore_benches::standard_jobs(cowstore_benches::REGION_BYTES)
        .into_iter()
        .find(|j| j.pattern == Pattern::SeqWrite && j.volumes == 1)
        .unwrap();
    let mut config = StoreConfig::default();
    if segment_mib > 0 {
        config.segment_bytes = segment_mib * MIB;
    }
    let (dir, store) = temp_store(config);
    let vol = store.create_volume("s", job.region_per_volume()).unwrap();
    let mut cur = Cursor::new(3);
    println!("batch written_mib requests_ms flush_ms mib_s");
    for i in 0..n {
        let (r, f) = block_on(cowstore_benches::run_batch_timed(
            &vol, &job, &mut cur, data,
        ))
        .unwrap();
        println!(
            "{i} {} {:.1} {:.1} {:.0}",
            (i as u64 + 1) * job.batch_bytes() / MIB,
            r.as_secs_f64() * 1e3,
            f.as_secs_f64() * 1e3,
            job.batch_bytes() as f64 / MIB as f64 / (r + f).as_secs_f64()
        );
    }
    drop(vol);
    store.abandon();
    drop(dir);
}

fn main() {
    let a = args();
    let data = RandomData::standard();
    if a.series > 0 {
        series(a.series, a.segment_mib, &data);
        return;
    }
    let backend = {
        let (dir, store) = temp_store(StoreConfig::default());
        let name = store.io_backend();
        store.close().unwrap();
        drop(dir);
        name
    };
    println!("segment I/O backend: {backend}");

    println!("== map memory per extent ({} extents) ==", a.extents);
    let m = memory(a.extents, &data);
    println!(
        "volume (write path, {} extents): {:.1} bytes/extent",
        m.extents, m.volume_bytes_per_extent
    );
    println!(
        "bare ExtentMap, ascending inserts: {:.1} bytes/extent",
        m.map_bytes_per_extent
    );
    println!(
        "bare ExtentMap, random-order inserts: {:.1} bytes/extent",
        m.map_random_bytes_per_extent
    );
    println!(
        "aim <= 64 bytes/extent: {}",
        if m.volume_bytes_per_extent <= 64.0 {
            "met"
        } else {
            "MISSED"
        }
    );

    println!(
        "\n== recovery of {} GiB of log tail (median of {}) ==",
        a.recovery_gib, a.runs
    );
    let r = recovery(a.recovery_gib, a.runs, &data);
    println!(
        "extents recovered: {}; log replayed: {:.1} MiB",
        r.extents,
        r.replayed_bytes as f64 / MIB as f64
    );
    println!(
        "page cache warm: replay {:.3} s, clean open {:.4} s, ratio {:.0}x",
        r.replay_warm_s,
        r.clean_warm_s,
        r.replay_warm_s / r.clean_warm_s
    );
    println!(
        "page cache cold: replay {:.3} s, clean open {:.4} s, ratio {:.0}x",
        r.replay_cold_s,
        r.clean_cold_s,
        r.replay_cold_s / r.clean_cold_s
    );

    println!("\n== 4 KiB random read, QD32, by record size of the data (median MiB/s) ==");
    let amp = amplification(a.runs, &data);
    println!(
        "written in 4 KiB: {:.0} MiB/s; written in 1 MiB (64 KiB records): {:.0} MiB/s; ratio {:.2}",
        amp.small_records_mib_s,
        amp.large_records_mib_s,
        amp.large_records_mib_s / amp.small_records_mib_s
    );

    println!(
        "\n== write batch breakdown, 1 volume (medians of {} batches) ==",
        a.runs.max(10)
    );
    let bd = breakdown(a.runs.max(10), &data);
    for b in &bd {
        println!(
            "{}: {:.0} MiB/s; requests {:.1} ms, flush {:.1} ms ({:.0}% of the batch in flush)",
            b.job,
            b.mib_s,
            b.requests_ms,
            b.flush_ms,
            100.0 * b.flush_ms / (b.requests_ms + b.flush_ms)
        );
    }
    let bd_json: Vec<String> = bd
        .iter()
        .map(|b| {
            format!(
                "{{\"job\":\"{}\",\"mib_s\":{:.1},\"requests_ms\":{:.2},\"flush_ms\":{:.2}}}",
                b.job, b.mib_s, b.requests_ms, b.flush_ms
            )
        })
        .collect();

    println!(
        "\n== reads with the page cache dropped before each batch, 1 volume (medians of {}) ==",
        a.runs.max(5)
    );
    let cold = cold_reads(a.runs.max(5), &data);
    for c in &cold {
        println!("{}: {:.0} MiB/s, {:.1}k IOPS", c.job, c.mib_s, c.iops / 1e3);
    }
    let cold_json: Vec<String> = cold
        .iter()
        .map(|c| {
            format!(
                "{{\"job\":\"{}\",\"mib_s\":{:.1},\"iops\":{:.0}}}",
                c.job, c.mib_s, c.iops
            )
        })
        .collect();

    let pairs = 300;
    println!("\n== snapshot vs durable 512-byte write, alternated (medians of {pairs} each) ==");
    let snaps = snapshot_timing(&[1_000, 100_000, a.extents.max(1_000)], pairs, &data);
    for t in &snaps {
        println!(
            "{} extents: create_snapshot {:.3} ms, write+flush {:.3} ms",
            t.extents, t.snapshot_ms, t.durable_write_ms
        );
    }
    let snaps_json: Vec<String> = snaps
        .iter()
        .map(|t| {
            format!(
                "{{\"extents\":{},\"snapshot_ms\":{:.4},\"durable_write_ms\":{:.4}}}",
                t.extents, t.snapshot_ms, t.durable_write_ms
            )
        })
        .collect();

    if a.json {
        println!(
            "FIGURES_JSON {{\"io_backend\":\"{}\",\"extents\":{},\"volume_bytes_per_extent\":{:.2},\"map_bytes_per_extent\":{:.2},\"map_random_bytes_per_extent\":{:.2},\
\"recovery_gib\":{},\"replayed_bytes\":{},\"replay_warm_s\":{:.4},\"replay_cold_s\":{:.4},\"clean_warm_s\":{:.5},\"clean_cold_s\":{:.5},\
\"randread4k_small_records_mib_s\":{:.1},\"randread4k_large_records_mib_s\":{:.1},\"write_breakdown\":[{}],\"cold_reads\":[{}],\"snapshot_vs_write\":[{}]}}",
            backend,
            m.extents,
            m.volume_bytes_per_extent,
            m.map_bytes_per_extent,
            m.map_random_bytes_per_extent,
            r.gib,
            r.replayed_bytes,
            r.replay_warm_s,
            r.replay_cold_s,
            r.clean_warm_s,
            r.clean_cold_s,
            amp.small_records_mib_s,
            amp.large_records_mib_s,
            bd_json.join(","),
            cold_json.join(","),
            snaps_json.join(",")
        );
    }
}
