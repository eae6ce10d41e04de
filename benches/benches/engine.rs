//! Criterion benchmarks of the engine through its public API, data on local
//! disk (a store under `$COWSTORE_BENCH_DIR`, else the temp directory).
//!
//! - `io/<job>`: the fio-comparable jobs of `cowstore_benches::standard_jobs`
//!   (4 KiB random write/read at queue depth 32, 1 MiB sequential write/read
//!   at queue depth 8, on 1 volume and on 4 volumes driven by 4 threads),
//!   incompressible data, throughput in bytes. One iteration is one batch;
//!   a write batch ends with `Volume::flush` (the bytes are durable).
//! - `snapshot/create/<extents>`: `Store::create_snapshot` on a volume whose
//!   map holds 1e3, 1e5 or 1e6 extents (built once per run).
//!
//! `cargo bench -p cowstore-benches --bench engine` (all), or add a filter
//! such as `-- snapshot`. scripts/bench runs this and reads the medians from
//! target/criterion/. Under `cargo test --all-targets` every benchmark runs
//! once on a 64 MiB region and only the 1e3-extent snapshot case is built.

use std::time::{Duration, Instant};

use cowstore::{Store, StoreConfig, Volume};
use cowstore_benches::{
    fill, make_extents, run_batch, standard_jobs, temp_store, Cursor, Job, Pattern, RandomData, MIB,
};
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use futures::executor::block_on;

/// Creates the job's volumes and, for a read job, fills them.
fn setup(store: &Store, job: &Job, data: &RandomData) -> Vec<Volume> {
    let region = job.region_per_volume();
    let vols: Vec<Volume> = (0..job.volumes)
        .map(|i| store.create_volume(&format!("v{i}"), region).unwrap())
        .collect();
    if !job.pattern.is_write() {
        let fill_bs = if job.pattern == Pattern::RandRead {
            job.bs
        } else {
            MIB
        };
        std::thread::scope(|s| {
            for v in &vols {
                s.spawn(move || block_on(fill(v, region, fill_bs, 32, data)).unwrap());
            }
        });
    }
    vols
}

fn io_jobs(c: &mut Criterion) {
    let data = RandomData::standard();
    let mut group = c.benchmark_group("io");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    let region = if bench_mode() {
        cowstore_benches::REGION_BYTES
    } else {
        cowstore_benches::TEST_REGION_BYTES
    };
    for job in standard_jobs(region) {
        let id = job.id();
        // Skip setting up jobs the command-line filter excludes.
        if !wanted(&format!("io/{id}")) {
            continue;
        }
        let (dir, store) = temp_store(cowstore_benches::job_config());
        let vols = setup(&store, &job, &data);
        let mut cursors: Vec<Cursor> = (0..job.volumes)
            .map(|i| Cursor::new(i as u64 + 1))
            .collect();
        group.throughput(Throughput::Bytes(job.batch_bytes()));
        group.bench_function(BenchmarkId::from_parameter(&id), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    if job.volumes == 1 {
                        block_on(run_batch(&vols[0], &job, &mut cursors[0], &data)).unwrap();
                    } else {
                        std::thread::scope(|s| {
                            for (v, cur) in vols.iter().zip(cursors.iter_mut()) {
                                let (job, data) = (&job, &data);
                                s.spawn(move || block_on(run_batch(v, job, cur, data)).unwrap());
                            }
                        });
                    }
                }
                start.elapsed()
            })
        });
        drop(vols);
        // A crash-style drop: no final checkpoint to write, the data is thrown away.
        store.abandon();
        drop(dir);
    }
    group.finish();
}

fn snapshots(c: &mut Criterion) {
    let data = RandomData::standard();
    let mut group = c.benchmark_group("snapshot");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    // Under `cargo test` each benchmark runs once: keep to the small volume.
    let sizes: &[u64] = if bench_mode() {
        &[1_000, 100_000, 1_000_000]
    } else {
        &[1_000]
    };
    for &extents in sizes {
        if !wanted(&format!("snapshot/create/{extents}")) {
            continue;
        }
        let (dir, store) = temp_store(StoreConfig::default());
        let vol = store.create_volume("base", extents * 1024).unwrap();
        let t = Instant::now();
        block_on(make_extents(&vol, extents, &data)).unwrap();
        assert_eq!(
            vol.extent_count() as u64,
            extents,
            "every write must stay its own extent"
        );
        // Start the measurement with nothing pending for the checkpointer, as
        // a long-running volume would be most of the time.
        store.checkpoint_all().unwrap();
        eprintln!(
            "snapshot/create/{extents}: built {} extents in {:.1} s",
            vol.extent_count(),
            t.elapsed().as_secs_f64()
        );
        let mut n = 0u64;
        group.bench_function(BenchmarkId::new("create", extents), |b| {
            b.iter(|| {
                n += 1;
                let info = store.create_snapshot("base", &format!("s{n}")).unwrap();
                debug_assert_eq!(info.extent_count as u64, extents);
                info
            })
        });
        eprintln!("snapshot/create/{extents}: {n} snapshots taken");
        drop(vol);
        // close() would write a checkpoint per snapshot (n x the map);
        // nothing here needs to survive.
        store.abandon();
        drop(dir);
    }
    group.finish();
}

/// True under `cargo bench` (criterion gets `--bench`), false under `cargo
/// test --benches`, where criterion runs each benchmark once and the setup
/// is scaled down.
fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Whether criterion's positional filter (if any) can match `id`, so that
/// expensive setup is skipped for filtered-out benchmarks. Substring match,
/// like criterion's default.
fn wanted(id: &str) -> bool {
    let mut args = std::env::args().skip(1);
    let mut filter = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bench" | "--exact" | "--nocapture" | "--quiet" | "--verbose" | "--noplot"
            | "--list" | "--test" => {}
            "--save-baseline"
            | "--baseline"
            | "--load-baseline"
            | "--sample-size"
            | "--measurement-time"
            | "--warm-up-time"
            | "--profile-time"
            | "--color"
            | "--output-format"
            | "--plotting-backend"
            | "--noise-threshold"
            | "--confidence-level"
            | "--significance-level"
            | "--nresamples"
            | "--format"
            | "--logfile" => {
                args.next();
            }
            a if a.starts_with('-') => {}
            a => filter = Some(a.to_string()),
        }
    }
    filter.is_none_or(|f| id.contains(&f))
}

criterion_group!(benches, io_jobs, snapshots);
criterion_main!(benches);
