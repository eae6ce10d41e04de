//! Object tier figures against the S3 server the environment names
//! (`scripts/bench-tier` starts moto on loopback and sets it), each beside a
//! peer measured in the same run:
//!
//! - upload throughput of sealed segments (the engine's background
//!   uploader) as a ratio to raw create-only PUTs of the same object size at
//!   the same concurrency, straight through `object_store`;
//! - cold reads (empty cache, data only in the bucket) of a volume restored
//!   from a snapshot: sequential 1 MiB and random 4 KiB, beside warm reads
//!   of the same data once cached;
//! - time from `restore_snapshot` on an empty directory to the first read,
//!   at two volume sizes (the aim: under 1 s, whatever the size).
//!
//! `TIER_BENCH_MIB` sets the volume data size (default 256).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cowstore::{Durability, Store, StoreConfig, TierConfig};
use futures::executor::block_on;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

const MIB: u64 = 1 << 20;
const SEGMENT_BYTES: u64 = 8 * MIB;
const CONCURRENCY: usize = 4;

fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn url(tag: &str) -> String {
    let base = std::env::var("COWSTORE_TEST_S3_URL").unwrap_or_else(|_| {
        eprintln!(
            "COWSTORE_TEST_S3_URL is not set; run scripts/bench-tier (it starts an S3 server)"
        );
        std::process::exit(2)
    });
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}/bench-{tag}-{nonce:x}", base.trim_end_matches('/'))
}

fn config(url: String, durability: Durability) -> StoreConfig {
    let mut tier = TierConfig::new(url);
    tier.durability = durability;
    tier.upload_concurrency = CONCURRENCY;
    tier.cache_bytes = 4 << 30;
    StoreConfig {
        segment_bytes: SEGMENT_BYTES,
        checkpoint_interval_bytes: 1 << 40,
        tier: Some(tier),
        ..StoreConfig::default()
    }
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

/// Raw create-only PUTs of `count` objects of `size` bytes, `CONCURRENCY`
/// at a time, through object_store's S3 client.
fn raw_put(count: usize, size: usize) -> (Duration, Duration) {
    let base = url("raw");
    let rest = base.strip_prefix("s3://").unwrap_or(&base);
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let s3: Arc<dyn ObjectStore> = Arc::new(
        object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_allow_http(true)
            .build()
            .expect("S3 client"),
    );
    let body = bytes::Bytes::from(data(7, size));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let s3_put = s3.clone();
    let s3 = s3_put;
    rt.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
        let mut tasks = Vec::new();
        for i in 0..count {
            let s3 = s3.clone();
            let body = body.clone();
            let sem = sem.clone();
            let path = object_store::path::Path::from(format!("{prefix}/obj-{i}"));
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire().await.expect("semaphore");
                s3.put_opts(
                    &path,
                    PutPayload::from(body),
                    PutOptions::from(PutMode::Create),
                )
                .await
                .expect("raw put");
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    });
    let put = started.elapsed();
    // The read peer: the same objects read back in 1 MiB ranged GETs, one
    // at a time, as a single sequential reader would without a cache.
    let started = Instant::now();
    rt.block_on(async {
        for i in 0..count {
            let path = object_store::path::Path::from(format!("{prefix}/obj-{i}"));
            for off in (0..size as u64).step_by(MIB as usize) {
                use object_store::ObjectStoreExt;
                s3.get_range(&path, off..off + MIB).await.expect("raw get");
            }
        }
    });
    (put, started.elapsed())
}

fn main() {
    let mib: u64 = std::env::var("TIER_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let bytes = mib * MIB;
    let segments = (bytes / SEGMENT_BYTES) as usize;
    println!(
        "object tier figures: {mib} MiB of data, {} MiB segments, {CONCURRENCY} uploads in flight",
        SEGMENT_BYTES / MIB
    );

    // 1. Upload: the engine's background uploader vs raw PUTs.
    let (raw, raw_get) = raw_put(segments, SEGMENT_BYTES as usize);
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket_url = url("upload");
    let store = Store::create(
        dir.path().join("s"),
        config(bucket_url.clone(), Durability::Local),
    )
    .expect("store");
    let v = store.create_volume("bench", bytes * 2).expect("volume");
    let chunk = data(1, 4 * MIB as usize);
    let started = Instant::now();
    block_on(async {
        for i in 0..bytes / (4 * MIB) {
            v.write(i * 4 * MIB, &chunk).await.expect("write");
        }
        v.flush().await.expect("flush");
    });
    store.sync_tier().expect("sync");
    // sync_tier returns once every sealed segment is up; the background
    // uploader ran since the first seal.
    let ours = started.elapsed();
    let uploaded = store.tier_stats().expect("stats").bytes_uploaded;
    println!(
        "upload      ours {:8.1} MiB/s ({} MiB incl. writing)   raw PUT {:8.1} MiB/s   ratio {:.2}",
        mib_s(uploaded, ours),
        uploaded / MIB,
        mib_s(segments as u64 * SEGMENT_BYTES, raw),
        mib_s(uploaded, ours) / mib_s(segments as u64 * SEGMENT_BYTES, raw)
    );
    store.create_snapshot("bench", "bench@1").expect("snapshot");
    store.sync_tier().expect("sync");
    drop(v);
    store.close().expect("close");

    // 2. Cold and warm reads on an empty directory.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let fresh = Store::create(
        dir2.path().join("s"),
        config(bucket_url.clone(), Durability::Local),
    )
    .expect("store");
    let t = Instant::now();
    let snap = fresh.restore_snapshot("bench@1").expect("restore");
    block_on(snap.read(0, 4096)).expect("first read");
    let first_read = t.elapsed();
    let t = Instant::now();
    block_on(async {
        for i in 0..bytes / MIB {
            snap.read(i * MIB, MIB).await.expect("read");
        }
    });
    let cold_seq = t.elapsed();
    let t = Instant::now();
    block_on(async {
        for i in 0..bytes / MIB {
            snap.read(i * MIB, MIB).await.expect("read");
        }
    });
    let warm_seq = t.elapsed();
    let raw_get_mib_s = mib_s(segments as u64 * SEGMENT_BYTES, raw_get);
    println!(
        "seq read    cold {:8.1} MiB/s   raw 1 MiB GETs {:8.1} MiB/s   ratio {:.2}   warm (cached) {:8.1} MiB/s",
        mib_s(bytes, cold_seq),
        raw_get_mib_s,
        mib_s(bytes, cold_seq) / raw_get_mib_s,
        mib_s(bytes, warm_seq),
    );
    drop(snap);
    fresh.abandon();
    let dir3 = tempfile::tempdir().expect("tempdir");
    let fresh = Store::create(
        dir3.path().join("s"),
        config(bucket_url.clone(), Durability::Local),
    )
    .expect("store");
    let snap = fresh.restore_snapshot("bench@1").expect("restore");
    let reads = 1000u64;
    let offsets: Vec<u64> = (0..reads)
        .map(|i| (i.wrapping_mul(0x9e37_79b9) % (bytes / 4096)) * 4096)
        .collect();
    let t = Instant::now();
    block_on(async {
        for &o in &offsets {
            snap.read(o, 4096).await.expect("read");
        }
    });
    let cold_rand = t.elapsed();
    let t = Instant::now();
    block_on(async {
        for &o in &offsets {
            snap.read(o, 4096).await.expect("read");
        }
    });
    let warm_rand = t.elapsed();
    println!(
        "4k random   cold {:8.0} IOPS   warm (cached) {:8.0} IOPS   cold/warm {:.3}",
        reads as f64 / cold_rand.as_secs_f64(),
        reads as f64 / warm_rand.as_secs_f64(),
        warm_rand.as_secs_f64() / cold_rand.as_secs_f64()
    );
    drop(snap);
    fresh.abandon();

    // 3. Restore to first read, small volume vs this one.
    let small_url = url("small");
    let dir4 = tempfile::tempdir().expect("tempdir");
    let s = Store::create(
        dir4.path().join("s"),
        config(small_url.clone(), Durability::Remote),
    )
    .expect("store");
    let v = s.create_volume("small", 64 * MIB).expect("volume");
    block_on(v.write(0, &data(3, 8 * MIB as usize))).expect("write");
    s.create_snapshot("small", "small@1").expect("snapshot");
    drop(v);
    s.close().expect("close");
    let dir5 = tempfile::tempdir().expect("tempdir");
    let f =
        Store::create(dir5.path().join("s"), config(small_url, Durability::Local)).expect("store");
    let t = Instant::now();
    let snap = f.restore_snapshot("small@1").expect("restore");
    block_on(snap.read(0, 4096)).expect("read");
    let small_first = t.elapsed();
    println!(
        "restore->first read   8 MiB volume {:6.1} ms   {mib} MiB volume {:6.1} ms   ratio {:.2}",
        small_first.as_secs_f64() * 1e3,
        first_read.as_secs_f64() * 1e3,
        first_read.as_secs_f64() / small_first.as_secs_f64()
    );
}
