//! The main job on the embedded default (a local folder store), step by step:
//! create volumes, write, snapshot, clone, overwrite, crash without a flush,
//! recover, verify, delete, clean. Each step prints what it did and checks
//! what it claims; any mismatch exits non-zero.
//!
//! `cargo run --release -p cowstore --example tour -- [STORE_DIR]`

use std::time::Instant;

use cowstore::{Store, StoreConfig, TierConfig};
use futures::executor::block_on;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
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

fn step(what: &str) {
    println!("\n== {what}");
}

fn check(ok: bool, what: &str) -> Result<(), Box<dyn std::error::Error>> {
    if ok {
        println!("   ok: {what}");
        Ok(())
    } else {
        Err(format!("FAILED: {what}").into())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = match std::env::args().nth(1) {
        Some(d) => std::path::PathBuf::from(d),
        None => std::env::temp_dir().join(format!("cowstore-tour-{}", std::process::id())),
    };
    if dir.exists() {
        return Err(format!("{} exists; give a new directory", dir.display()).into());
    }
    // The embedded default object store: a local folder beside the store.
    let bucket = dir.with_extension("bucket");
    let config = StoreConfig {
        tier: Some(TierConfig::new(bucket.to_string_lossy().into_owned())),
        ..StoreConfig::default()
    };

    step(&format!("create a store in {}", dir.display()));
    let store = Store::create(&dir, config.clone())?;
    println!("   segment I/O: {}", store.io_backend());

    step("create two 1 GiB volumes and write 64 MiB to each (1 MiB writes, 8 in flight)");
    let web = store.create_volume("web-root", 1 << 30)?;
    let db = store.create_volume("db-data", 1 << 30)?;
    let started = Instant::now();
    for (v, seed) in [(&web, 1u64), (&db, 2u64)] {
        block_on(async {
            for batch in 0..8u64 {
                let bufs: Vec<Vec<u8>> = (0..8u64)
                    .map(|i| pattern(seed * 1000 + batch * 8 + i, 1 << 20))
                    .collect();
                let writes = bufs
                    .iter()
                    .enumerate()
                    .map(|(i, b)| v.write((batch * 8 + i as u64) << 20, b));
                for r in futures::future::join_all(writes).await {
                    r?;
                }
            }
            v.flush().await
        })?;
    }
    println!(
        "   128 MiB written and flushed in {:.2?}",
        started.elapsed()
    );

    step("snapshot both volumes");
    let t = Instant::now();
    store.create_snapshot("web-root", "web-root@v1")?;
    store.create_snapshot("db-data", "db-data@v1")?;
    println!(
        "   two snapshots in {:.2?} (O(1): no data or map copied)",
        t.elapsed()
    );

    step("overwrite the first 4 MiB of db-data");
    block_on(db.write(0, &pattern(99, 4 << 20)))?;
    block_on(db.flush())?;
    let snap = store.snapshot("db-data@v1")?;
    check(
        block_on(snap.read(0, 1 << 20))? == pattern(2000, 1 << 20),
        "snapshot still reads the old data",
    )?;
    check(
        block_on(db.read(0, 1 << 20))? == pattern(99, 1 << 20)[..1 << 20],
        "volume reads the new data",
    )?;

    step("clone the snapshot into a writable volume (instant, shares data)");
    let before = store.disk_bytes();
    let clone = store.clone_snapshot("db-data@v1", "db-data-test")?;
    let grown = store.disk_bytes() - before;
    check(
        grown < 4096,
        &format!("the clone copied no data ({grown} bytes: its empty log segment)"),
    )?;
    block_on(clone.write(4096, &[0xee; 4096]))?;
    block_on(clone.flush())?;
    check(
        block_on(clone.read(4096, 4096))? == vec![0xee; 4096]
            && block_on(snap.read(4096, 4096))? != vec![0xee; 4096],
        "clone diverges, snapshot unchanged",
    )?;

    step("write without flushing, then crash (drop the store without closing)");
    block_on(web.write(0, &[0xab; 65536]))?;
    block_on(web.flush())?;
    block_on(web.write(65536, &[0xcd; 65536]))?; // not flushed: may or may not survive
    drop((web, db, clone, snap));
    store.abandon();

    step("reopen: recovery replays the log tail");
    let t = Instant::now();
    let store = Store::open(&dir, config.clone())?;
    println!("   recovered in {:.2?}", t.elapsed());
    let web = store.volume("web-root")?;
    check(
        block_on(web.read(0, 65536))? == vec![0xab; 65536],
        "the flushed write survived",
    )?;
    let tail = block_on(web.read(65536, 65536))?;
    check(
        tail == vec![0xcd; 65536] || tail == pattern(1000, 1 << 20)[65536..131072],
        "the unflushed write is whole or absent, never torn",
    )?;

    step("list");
    for v in store.volumes() {
        println!(
            "   volume   {:<14} {:>6} MiB  {:>6} extents",
            v.name,
            v.size_bytes >> 20,
            v.extent_count
        );
    }
    for s in store.snapshots() {
        println!(
            "   snapshot {:<14} {:>6} MiB  {:>6} extents",
            s.name,
            s.size_bytes >> 20,
            s.extent_count
        );
    }

    step("delete the clone and the snapshot, then clean");
    let disk_before = store.disk_bytes();
    store.delete_volume("db-data-test")?;
    store.delete_snapshot("db-data@v1")?;
    let report = store.gc()?;
    println!(
        "   gc: {} segments deleted, {} cleaned, {} KiB relocated, {} KiB freed",
        report.segments_deleted,
        report.segments_cleaned,
        report.bytes_relocated >> 10,
        report.bytes_freed >> 10
    );
    check(store.disk_bytes() < disk_before, "space came back")?;
    let db = store.volume("db-data")?;
    check(
        block_on(db.read(0, 4 << 20))? == pattern(99, 4 << 20),
        "live data intact after GC",
    )?;

    step("publish to the object store, then lose the whole local directory");
    store.sync_tier()?;
    for m in store.remote_snapshots()? {
        println!(
            "   in the bucket: {:<14} {:>6} KiB added",
            m.name,
            m.added_bytes >> 10
        );
    }
    drop((web, db));
    store.close()?;
    std::fs::remove_dir_all(&dir)?;

    step("disaster recovery on an empty directory, from the bucket alone");
    let t = Instant::now();
    let store = Store::create(&dir, config)?;
    let snap = store.restore_snapshot("web-root@v1")?;
    let first = block_on(snap.read(0, 1 << 20))?;
    println!(
        "   restored and first MiB read in {:.2?} (metadata, then data on demand)",
        t.elapsed()
    );
    check(
        first == pattern(1000, 1 << 20),
        "restored snapshot reads back byte-identical",
    )?;
    drop(snap);
    store.close()?;
    println!(
        "\ntour complete; store left in {}, bucket in {}",
        dir.display(),
        bucket.display()
    );
    Ok(())
}
