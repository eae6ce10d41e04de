//! Targeted engine tests: integrity errors, limits, GC liveness, clones,
//! concurrency, recovery edge cases. The random interleavings live in
//! `model.rs`; these pin down one behaviour each.

use std::sync::Arc;

use cowstore::{Error, IoBackendChoice, Store, StoreConfig};
use futures::executor::block_on;

fn config(io: IoBackendChoice) -> StoreConfig {
    StoreConfig {
        segment_bytes: 64 << 10,
        io_backend: io,
        checkpoint_interval_bytes: 1 << 40,
        gc_live_threshold_pct: 50,
        tier: None,
        ..Default::default()
    }
}

fn new_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path().join("s"), config(IoBackendChoice::Auto)).unwrap();
    (dir, store)
}

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

#[test]
fn checksum_mismatch_is_an_error_naming_volume_address_and_segment() {
    let (dir, store) = new_store();
    let v = store.create_volume("disk", 1 << 20).unwrap();
    block_on(v.write(8192, &pattern(1, 4096))).unwrap();
    block_on(v.flush()).unwrap();
    drop(v);
    store.close().unwrap();
    // Flip one payload byte of the only data record on disk.
    let seg_dir = dir.path().join("s/segments");
    let mut hit = false;
    for entry in std::fs::read_dir(&seg_dir).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        if bytes.len() > 64 + 56 + 4096 - 1 {
            bytes[64 + 56 + 100] ^= 1;
            std::fs::write(&path, bytes).unwrap();
            hit = true;
        }
    }
    assert!(hit);
    let store = Store::open(dir.path().join("s"), config(IoBackendChoice::Auto)).unwrap();
    let v = store.volume("disk").unwrap();
    let err = block_on(v.read(8192, 4096)).unwrap_err();
    assert!(err.is_integrity());
    match &err {
        Error::Checksum {
            volume,
            offset_bytes,
            ..
        } => {
            assert_eq!(volume, "disk");
            assert_eq!(*offset_bytes, 8192);
        }
        other => panic!("expected a checksum error, got {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("disk") && text.contains("8192") && text.contains("segment"),
        "{text}"
    );
    // Data beside the bad extent still reads.
    assert_eq!(block_on(v.read(0, 4096)).unwrap(), vec![0; 4096]);
}

/// A 64 KiB record carries a checksum per 4 KiB block: a read of a few
/// blocks fetches and checks only those, so a flipped byte fails exactly the
/// reads that cover its block (with the block's address), and the whole
/// record still fails the record checksum.
#[test]
fn block_checksums_localise_corruption_to_the_reads_that_cover_it() {
    block_checksums_case(false);
}

/// The same with aligned records: the data on the sector after the head
/// (header, checksum table, zeroes), where a flipped byte of the data or of
/// its table entry fails the reads of that block alone.
#[test]
fn aligned_records_keep_data_on_its_own_sector_and_localise_corruption() {
    block_checksums_case(true);
}

fn block_checksums_case(aligned: bool) {
    // Segment header, then the record: its data 56 bytes in (after the
    // header) or a sector in (after the header, table and zeroes).
    const SEGMENT_HEADER: usize = 64;
    let data_at = SEGMENT_HEADER + if aligned { 512 } else { 56 };
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        aligned_records: aligned,
        ..config(IoBackendChoice::Auto)
    };
    let store = Store::create(dir.path().join("s"), cfg.clone()).unwrap();
    let v = store.create_volume("disk", 1 << 20).unwrap();
    let data = pattern(7, 64 << 10);
    block_on(v.write(0, &data)).unwrap();
    // Partial reads of the pending record and then of the segment agree.
    for (off, len) in [
        (0usize, 4096usize),
        (4096 * 3 + 512, 1024),
        (61440, 4096),
        (512, 65024),
    ] {
        let got = block_on(v.read(off as u64, len as u64)).unwrap();
        assert_eq!(got, data[off..off + len], "pending {off}+{len}");
    }
    block_on(v.flush()).unwrap();
    drop(v);
    store.close().unwrap();
    // Flip one byte of block 5 (bytes 20480..24576) of the record.
    let bad_byte = 5 * 4096 + 77;
    let mut hit = 0;
    let mut record_path = None;
    for entry in std::fs::read_dir(dir.path().join("s/segments")).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let at = data_at + bad_byte;
        if bytes.len() >= data_at + (64 << 10) && bytes[data_at..data_at + (64 << 10)] == data[..] {
            bytes[at] ^= 0x10;
            std::fs::write(&path, bytes).unwrap();
            hit += 1;
            record_path = Some(path);
        }
    }
    assert_eq!(
        hit, 1,
        "exactly one segment holds the record where its layout says"
    );
    let store = Store::open(dir.path().join("s"), cfg.clone()).unwrap();
    let v = store.volume("disk").unwrap();
    // Blocks beside the bad one read, even within the same record.
    for (off, len) in [
        (0usize, 4096usize),
        (4 * 4096, 4096),
        (6 * 4096, 8192),
        (61440, 4096),
    ] {
        let got = block_on(v.read(off as u64, len as u64)).unwrap();
        assert_eq!(got, data[off..off + len], "clean {off}+{len}");
    }
    // Every read that covers the bad byte fails with a checksum error.
    for (off, len) in [
        (5 * 4096usize, 4096usize),
        (5 * 4096 + 512, 512),
        (4 * 4096, 8192),
    ] {
        match block_on(v.read(off as u64, len as u64)) {
            Err(Error::Checksum { segment_offset, .. }) => {
                assert_eq!(segment_offset, (data_at + 5 * 4096) as u64, "{off}+{len}");
            }
            other => panic!("{off}+{len}: expected a checksum error, got {other:?}"),
        }
    }
    match block_on(v.read(0, 64 << 10)) {
        Err(Error::Checksum { .. }) => {}
        other => panic!("whole record: expected a checksum error, got {other:?}"),
    }
    // verify reports the record.
    let report = block_on(store.verify("disk", |_| {})).unwrap();
    assert_eq!(report.errors.len(), 1, "{report:?}");
    if !aligned {
        return;
    }
    // A flipped table entry (block 9's, 4 bytes each after the header)
    // fails the reads of block 9 as well, and not those of block 8.
    drop(v);
    store.close().unwrap();
    let path = record_path.unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[SEGMENT_HEADER + 56 + 4 * 9] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let store = Store::open(dir.path().join("s"), cfg).unwrap();
    let v = store.volume("disk").unwrap();
    assert_eq!(
        block_on(v.read(8 * 4096, 4096)).unwrap(),
        data[8 * 4096..9 * 4096]
    );
    assert!(matches!(
        block_on(v.read(9 * 4096, 4096)),
        Err(Error::Checksum { .. })
    ));
}

#[test]
fn limits_are_enforced_with_clear_errors() {
    let (_dir, store) = new_store();
    assert!(matches!(
        store.create_volume("bad/name", 1 << 20),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        store.create_volume("x", 1000),
        Err(Error::InvalidSize { .. })
    ));
    assert!(matches!(
        store.create_volume("x", 0),
        Err(Error::InvalidSize { .. })
    ));
    assert!(matches!(
        store.create_volume("x", 128 << 40),
        Err(Error::InvalidSize { .. })
    ));
    let v = store.create_volume("x", 1 << 20).unwrap();
    assert!(matches!(
        store.create_volume("x", 1 << 20),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        block_on(v.write(100, &[0; 512])),
        Err(Error::Unaligned { .. })
    ));
    assert!(matches!(
        block_on(v.write(0, &[0; 100])),
        Err(Error::Unaligned { .. })
    ));
    assert!(matches!(
        block_on(v.write(1 << 20, &[1; 512])),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        block_on(v.read(u64::MAX - 511, 512)),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        block_on(v.discard(0, 2 << 20)),
        Err(Error::OutOfRange { .. })
    ));
    let big = store.create_volume("big", 1 << 30).unwrap();
    assert!(matches!(
        block_on(big.read(0, 33 << 20)),
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(block_on(v.resize(512)), Err(Error::Shrink { .. })));
    assert!(matches!(
        store.volume("nope"),
        Err(Error::VolumeNotFound(_))
    ));
    assert!(matches!(
        store.snapshot("nope"),
        Err(Error::SnapshotNotFound(_))
    ));
    // A snapshot is not a volume, and names are one namespace.
    store.create_snapshot("x", "x-snap").unwrap();
    assert!(matches!(
        store.volume("x-snap"),
        Err(Error::VolumeNotFound(_))
    ));
    assert!(matches!(
        store.create_volume("x-snap", 1 << 20),
        Err(Error::AlreadyExists(_))
    ));
}

#[test]
fn gc_frees_unreferenced_data_and_keeps_what_snapshots_and_clones_read() {
    let (_dir, store) = new_store();
    let v = store.create_volume("v", 4 << 20).unwrap();
    // Fill 2 MiB (about 32 segments of 64 KiB) with incompressible data.
    let first = pattern(7, 2 << 20);
    block_on(v.write(0, &first)).unwrap();
    store.create_snapshot("v", "before").unwrap();
    // Overwrite it all: the old data is referenced only by the snapshot.
    let second = pattern(8, 2 << 20);
    block_on(v.write(0, &second)).unwrap();
    block_on(v.flush()).unwrap();
    let r = store.gc().unwrap();
    // Only segments without data (a marker, a seal) may go.
    assert!(r.bytes_freed < 4096, "snapshot data must stay: {r:?}");
    let snap = store.snapshot("before").unwrap();
    assert_eq!(block_on(snap.read(0, 2 << 20)).unwrap(), first);
    let clone = store.clone_snapshot("before", "c").unwrap();
    store.delete_snapshot("before").unwrap();
    let r = store.gc().unwrap();
    assert!(
        r.bytes_freed < 4096,
        "clone still reads the old data: {r:?}"
    );
    assert_eq!(block_on(clone.read(0, 2 << 20)).unwrap(), first);
    let disk_before = store.disk_bytes();
    store.delete_volume("c").unwrap();
    let r = store.gc().unwrap();
    assert!(r.segments_deleted >= 25, "old data is free now: {r:?}");
    assert!(store.disk_bytes() < disk_before - (1 << 20));
    assert_eq!(block_on(v.read(0, 2 << 20)).unwrap(), second);
}

#[test]
fn gc_relocates_live_records_out_of_mostly_dead_segments() {
    let (dir, store) = new_store();
    let v = store.create_volume("v", 8 << 20).unwrap();
    let mut model = vec![0u8; 4 << 20];
    for i in 0..1024u64 {
        let data = pattern(i, 4096);
        block_on(v.write(i * 4096, &data)).unwrap();
        model[(i * 4096) as usize..((i + 1) * 4096) as usize].copy_from_slice(&data);
    }
    // Overwrite three blocks of every four: segments become 25% live.
    for i in (0..1024u64).filter(|i| i % 4 != 0) {
        let data = pattern(10_000 + i, 4096);
        block_on(v.write(i * 4096, &data)).unwrap();
        model[(i * 4096) as usize..((i + 1) * 4096) as usize].copy_from_slice(&data);
    }
    store.create_snapshot("v", "s").unwrap();
    let r = store.gc().unwrap();
    assert!(r.segments_cleaned > 0 && r.bytes_relocated > 0, "{r:?}");
    assert!(r.bytes_freed > r.bytes_relocated, "{r:?}");
    assert_eq!(block_on(v.read(0, 4 << 20)).unwrap(), model);
    let snap = store.snapshot("s").unwrap();
    assert_eq!(block_on(snap.read(0, 4 << 20)).unwrap(), model);
    // The relocation survives a crash right after it.
    drop((v, snap));
    store.abandon();
    let store = Store::open(dir.path().join("s"), config(IoBackendChoice::Auto)).unwrap();
    let v = store.volume("v").unwrap();
    assert_eq!(block_on(v.read(0, 4 << 20)).unwrap(), model);
    let snap = store.snapshot("s").unwrap();
    assert_eq!(block_on(snap.read(0, 4 << 20)).unwrap(), model);
}

#[test]
fn snapshots_and_clones_nest() {
    let (dir, store) = new_store();
    let v = store.create_volume("base", 1 << 20).unwrap();
    block_on(v.write(0, &[1; 4096])).unwrap();
    let mut expected = vec![(String::from("base"), 1u8)];
    let mut current = v;
    for depth in 0..6u8 {
        let snap = format!("s{depth}");
        store.create_snapshot(current.name(), &snap).unwrap();
        let clone = format!("c{depth}");
        let c = store.clone_snapshot(&snap, &clone).unwrap();
        // The clone sees its parent's data, then diverges.
        assert_eq!(block_on(c.read(0, 4096)).unwrap(), vec![depth + 1; 4096]);
        block_on(c.write(0, &[depth + 2; 4096])).unwrap();
        block_on(c.flush()).unwrap();
        expected.push((clone, depth + 2));
        current = c;
    }
    drop(current);
    store.close().unwrap();
    let store = Store::open(dir.path().join("s"), config(IoBackendChoice::Blocking)).unwrap();
    for (name, byte) in &expected {
        let v = store.volume(name).unwrap();
        assert_eq!(
            block_on(v.read(0, 4096)).unwrap(),
            vec![*byte; 4096],
            "{name}"
        );
    }
    for depth in 0..6u8 {
        let s = store.snapshot(&format!("s{depth}")).unwrap();
        assert_eq!(block_on(s.read(0, 4096)).unwrap(), vec![depth + 1; 4096]);
    }
}

#[test]
fn many_requests_in_flight_from_many_threads() {
    let (_dir, store) = new_store();
    let v = store.create_volume("v", 64 << 20).unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let v = v.clone();
            std::thread::spawn(move || {
                // 256 requests in flight per thread, each to its own block.
                block_on(async {
                    let futs: Vec<_> = (0..256u64)
                        .map(|i| {
                            let block = t * 256 + i;
                            let v = v.clone();
                            async move { v.write(block * 4096, &pattern(block, 4096)).await }
                        })
                        .collect();
                    for r in futures::future::join_all(futs).await {
                        r.unwrap();
                    }
                    v.flush().await.unwrap();
                });
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let v = Arc::new(v);
    block_on(async {
        let reads: Vec<_> = (0..1024u64).map(|b| v.read(b * 4096, 4096)).collect();
        for (b, r) in futures::future::join_all(reads)
            .await
            .into_iter()
            .enumerate()
        {
            assert_eq!(r.unwrap(), pattern(b as u64, 4096), "block {b}");
        }
    });
}

#[test]
fn overlapping_writes_in_flight_resolve_in_submission_order() {
    let (dir, store) = new_store();
    let v = store.create_volume("v", 1 << 20).unwrap();
    block_on(async {
        // 32 overlapping writes submitted together: the last submitted wins,
        // in memory and after recovery.
        let bufs: Vec<Vec<u8>> = (0..32u8).map(|i| vec![i; 64 << 10]).collect();
        let futs: Vec<_> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| v.write(i as u64 * 512, b))
            .collect();
        for r in futures::future::join_all(futs).await {
            r.unwrap();
        }
        v.flush().await.unwrap();
    });
    let expect = |buf: &[u8]| {
        for (s, chunk) in buf.chunks(512).enumerate() {
            let want = if s < 32 { s as u8 } else { 31 };
            assert!(chunk.iter().all(|&b| b == want), "sector {s}");
        }
    };
    expect(&block_on(v.read(0, (31 * 512) + (64 << 10))).unwrap());
    drop(v);
    store.abandon();
    let store = Store::open(dir.path().join("s"), config(IoBackendChoice::Auto)).unwrap();
    let v = store.volume("v").unwrap();
    expect(&block_on(v.read(0, (31 * 512) + (64 << 10))).unwrap());
}

#[test]
fn torn_multi_record_write_is_dropped_whole() {
    let (dir, store) = new_store();
    let v = store.create_volume("v", 4 << 20).unwrap();
    block_on(v.write(0, &pattern(1, 4096))).unwrap();
    block_on(v.flush()).unwrap();
    // A 1 MiB write spans 16 records and several segments.
    block_on(v.write(0, &pattern(2, 1 << 20))).unwrap();
    let regions = v.unflushed_log();
    drop(v);
    store.abandon();
    // Cut the log in the middle of the big write.
    let (path, from) = regions.last().unwrap().clone();
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > from + 1000);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(from + (len - from) / 2)
        .unwrap();
    let store = Store::open(dir.path().join("s"), config(IoBackendChoice::Auto)).unwrap();
    let v = store.volume("v").unwrap();
    let mut want = vec![0u8; 1 << 20];
    want[..4096].copy_from_slice(&pattern(1, 4096));
    assert_eq!(block_on(v.read(0, 1 << 20)).unwrap(), want);
    // The log continues cleanly after the cut.
    block_on(v.write(0, &pattern(3, 8192))).unwrap();
    block_on(v.flush()).unwrap();
    drop(v);
    store.abandon();
    let store = Store::open(dir.path().join("s"), config(IoBackendChoice::Auto)).unwrap();
    let v = store.volume("v").unwrap();
    assert_eq!(block_on(v.read(0, 8192)).unwrap(), pattern(3, 8192));
}

#[test]
fn recovery_replays_only_the_tail_after_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(IoBackendChoice::Auto);
    // No background checkpoint: the explicit one below is the only one,
    // so what recovery replays is exactly the write made after it.
    cfg.checkpoint_interval_bytes = 1 << 40;
    let store = Store::create(dir.path().join("s"), cfg.clone()).unwrap();
    let v = store.create_volume("v", 8 << 20).unwrap();
    for i in 0..512u64 {
        block_on(v.write((i % 1024) * 4096, &pattern(i, 4096))).unwrap();
    }
    block_on(v.flush()).unwrap();
    store.checkpoint_all().unwrap();
    block_on(v.write(0, &pattern(999, 4096))).unwrap();
    block_on(v.flush()).unwrap();
    drop(v);
    store.abandon();
    // The state comes back from the checkpointed map plus the short tail.
    let store = Store::open(dir.path().join("s"), cfg).unwrap();
    // 512 writes (about 2 MiB of log) came before the checkpoint; only the
    // one after it is replayed.
    let stats = store.recovery_stats();
    assert_eq!(stats.volumes, 1);
    assert!(
        stats.log_bytes_replayed > 0 && stats.log_bytes_replayed < 3 * 4096,
        "{stats:?}"
    );
    let v = store.volume("v").unwrap();
    assert_eq!(block_on(v.read(0, 4096)).unwrap(), pattern(999, 4096));
    assert_eq!(block_on(v.read(4096, 4096)).unwrap(), pattern(1, 4096));
    assert_eq!(
        block_on(v.read(511 * 4096, 4096)).unwrap(),
        pattern(511, 4096)
    );
}

/// A write of `data` at offset 0 caught pending on its first poll: a large
/// write's I/O runs in a log writer thread, which can finish before the
/// first poll looks at its reply (CI caught that race once), so up to 100
/// writes are tried. `None` if every one finished on its first poll.
fn write_caught_pending<'a>(
    vol: &'a cowstore::Volume,
    data: &'a [u8],
    cx: &mut std::task::Context<'_>,
) -> Option<std::pin::Pin<Box<impl std::future::Future<Output = cowstore::Result<()>> + 'a>>> {
    use std::future::Future;
    for _ in 0..100 {
        let mut fut = Box::pin(vol.write(0, data));
        match fut.as_mut().poll(cx) {
            std::task::Poll::Ready(r) => r.unwrap(),
            std::task::Poll::Pending => return Some(fut),
        }
    }
    None
}

/// A write whose future is dropped after it took its place in the log (a
/// cancelled task) would leave a gap that recovery cuts at. Small writes,
/// and any write inside `with_inline_io`, are inline: their future finishes
/// on its first poll, with nothing to cancel. Large ones go to a log writer
/// thread (see `log_writer.rs`): dropping such a pending write fails the
/// volume (`AbandonGuard`), so flushes and later writes report an error
/// instead of acknowledging data recovery could cut.
#[test]
fn a_write_dropped_after_its_reservation_fails_the_volume() {
    use std::future::Future;
    use std::task::Context;
    for io in [IoBackendChoice::Uring, IoBackendChoice::Blocking] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path().join("s"), config(io)).unwrap();
        let vol = store.create_volume("v", 1 << 20).unwrap();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let small = pattern(1, 4096);
        let large = pattern(2, 64 << 10);
        for (data, inline) in [(&small, false), (&large, true)] {
            let ready = cowstore::with_inline_io(inline, || {
                let mut fut = Box::pin(vol.write(0, data));
                fut.as_mut().poll(&mut cx).is_ready()
            });
            assert!(
                ready,
                "{io:?}: an inline write waited after its reservation"
            );
        }
        block_on(vol.flush()).unwrap();
        assert_eq!(block_on(vol.read(0, 64 << 10)).unwrap(), large);
        // The writer thread may finish before the first poll looks at its
        // reply (then nothing was abandoned, and the volume stays healthy):
        // try until a write is caught pending (CI caught the race once).
        let pending = write_caught_pending(&vol, &large, &mut cx);
        assert!(
            pending.is_some(),
            "{io:?}: no large write was pending on its first poll"
        );
        drop(pending);
        assert!(
            block_on(vol.flush()).is_err(),
            "{io:?}: flush after an abandoned write"
        );
        assert!(block_on(vol.write(0, &small)).is_err());
    }
}

/// A zero drop-behind window is refused with a clear error at create and
/// open (it used to reach an assertion in the drop-behind thread's setup).
#[test]
fn zero_drop_behind_window_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = StoreConfig {
        drop_behind_bytes: Some(0),
        ..config(IoBackendChoice::Blocking)
    };
    let err = Store::create(dir.path().join("s"), bad.clone()).unwrap_err();
    assert!(err.to_string().contains("drop_behind_bytes"), "{err}");
    Store::create(dir.path().join("s"), config(IoBackendChoice::Blocking))
        .unwrap()
        .close()
        .unwrap();
    let err = Store::open(dir.path().join("s"), bad).unwrap_err();
    assert!(err.to_string().contains("drop_behind_bytes"), "{err}");
}

/// `write_from` takes a write's data a record at a time from the caller; a
/// caller that fails, or gives the wrong number of bytes, fails the write
/// before anything is logged: the old data stays, also after a reopen.
#[test]
fn write_from_takes_data_per_record_and_logs_nothing_when_the_source_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let old = pattern(1, 256 << 10);
    let new = pattern(2, 256 << 10);
    {
        let store = Store::create(&path, config(IoBackendChoice::Auto)).unwrap();
        let vol = store.create_volume("v", 1 << 20).unwrap();
        block_on(vol.write(0, &old)).unwrap();
        // Four records' worth, asked for one record at a time, in order.
        let mut asked = Vec::new();
        let mut at = 0;
        block_on(vol.write_from(4096, 192 << 10, |buf, len| {
            asked.push(len);
            buf.extend_from_slice(&new[at..at + len]);
            at += len;
            Ok(())
        }))
        .unwrap();
        assert_eq!(asked, [64 << 10; 3]);
        let mut want = old.clone();
        want[4096..4096 + (192 << 10)].copy_from_slice(&new[..192 << 10]);
        assert_eq!(block_on(vol.read(0, 256 << 10)).unwrap(), want);
        block_on(vol.flush()).unwrap();
        // A source that fails at its second record.
        let mut calls = 0;
        let err = block_on(vol.write_from(0, 256 << 10, |buf, len| {
            calls += 1;
            if calls == 2 {
                return Err("guest address outside memory".into());
            }
            buf.extend(std::iter::repeat_n(0xee, len));
            Ok(())
        }))
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("guest address outside memory"), "{msg}");
        assert!(msg.contains("at byte 65536"), "{msg}");
        // A source that gives too few bytes.
        let err = block_on(vol.write_from(0, 8192, |buf, len| {
            buf.extend(std::iter::repeat_n(0xee, len - 512));
            Ok(())
        }))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("7680 bytes given for a chunk of 8192"),
            "{err}"
        );
        assert_eq!(block_on(vol.read(0, 256 << 10)).unwrap(), want);
        block_on(vol.flush()).unwrap();
        // The volume is still usable.
        block_on(vol.write(0, &want[..4096])).unwrap();
        block_on(vol.flush()).unwrap();
        drop(vol);
        store.close().unwrap();
        let store = Store::open(&path, config(IoBackendChoice::Auto)).unwrap();
        let vol = store.volume("v").unwrap();
        assert_eq!(block_on(vol.read(0, 256 << 10)).unwrap(), want);
    }
}

/// Writes in flight together complete in log order: a small write that
/// finishes its I/O at once still waits for a large one started before it
/// (recovery after a crash keeps a prefix of the log, so acknowledging the
/// small one first could acknowledge a write the crash then cuts).
#[test]
fn writes_in_flight_complete_in_log_order() {
    use std::future::Future;
    use std::task::Context;
    for io in [IoBackendChoice::Uring, IoBackendChoice::Blocking] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path().join("s"), config(io)).unwrap();
        let vol = store.create_volume("v", 1 << 20).unwrap();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let large = pattern(1, 64 << 10);
        let small = pattern(2, 4096);
        // The large write goes to a log writer thread.
        let mut earlier = write_caught_pending(&vol, &large, &mut cx)
            .expect("no large write was pending on its first poll");
        // The small write's I/O is inline and done on its first poll, but
        // it is not complete while the earlier write is not.
        let mut later = Box::pin(vol.write(128 << 10, &small));
        for _ in 0..3 {
            assert!(
                later.as_mut().poll(&mut cx).is_pending(),
                "{io:?}: a later write completed before an earlier one"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        block_on(earlier.as_mut()).unwrap();
        block_on(later.as_mut()).unwrap();
        assert_eq!(block_on(vol.read(0, 64 << 10)).unwrap(), large);
        assert_eq!(block_on(vol.read(128 << 10, 4096)).unwrap(), small);
    }
}

/// The log rolls onto a spare segment made ahead in the background (a
/// header-only file past the tail that later holds data); a spare left by
/// a crash lies past the end of the log, and recovery removes it and keeps
/// every flushed byte.
#[test]
fn spare_segments_are_made_ahead_and_dropped_past_the_log_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let segments = path.join("segments");
    // Header-only segment files: spares not rolled onto yet.
    let spares = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&segments)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| std::fs::metadata(p).unwrap().len() == 64)
            .collect()
    };
    let wait_for_spare = || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let [one] = spares().as_slice() {
                return one.clone();
            }
            assert!(std::time::Instant::now() < deadline, "no spare was made");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    let data = pattern(7, 2 << 20);
    let store = Store::create(&path, config(IoBackendChoice::Auto)).unwrap();
    let vol = store.create_volume("v", 4 << 20).unwrap();
    // 16 KiB writes: four to a 64 KiB segment, so the log rolls often.
    let write = |range: std::ops::Range<usize>| {
        for at in range.step_by(16 << 10) {
            block_on(vol.write(at as u64, &data[at..at + (16 << 10)])).unwrap();
        }
        block_on(vol.flush()).unwrap();
    };
    write(0..1 << 20);
    let spare = wait_for_spare();
    write(1 << 20..(1 << 20) + (256 << 10));
    assert!(
        std::fs::metadata(&spare).unwrap().len() > 64,
        "the log did not roll onto the spare"
    );
    let next_spare = wait_for_spare();
    assert_ne!(next_spare, spare);
    drop(vol);
    store.abandon();
    let store = Store::open(&path, config(IoBackendChoice::Auto)).unwrap();
    assert!(
        !next_spare.exists(),
        "recovery kept a spare past the log end"
    );
    assert!(spares().is_empty());
    let vol = store.volume("v").unwrap();
    let end = (1 << 20) + (256 << 10);
    assert_eq!(block_on(vol.read(0, end as u64)).unwrap(), data[..end]);
    // The log goes on from there.
    block_on(vol.write(0, &data[..4096])).unwrap();
    block_on(vol.flush()).unwrap();
}

/// Segment files the cleaner frees come back as new log segments (the
/// pool), and recovery never takes their old records for log. Every
/// generation here writes the same 128 KiB writes in the same order, so a
/// reused file's old records (same volume, older sequence numbers) sit at
/// exactly the offsets the new ones take: right after the log's end there
/// is always a well-formed old record, which replay must refuse.
///
/// Run three ways: appends to reused files with `O_DIRECT` through the
/// store's ring thread, through the writing thread's own ring
/// (`cowstore::block_on`, as vhost-blk's queue workers), and buffered.
#[test]
fn reused_segment_files_never_replay_their_old_records() {
    reused_segments_case(Appends::DirectRingThread);
    reused_segments_case(Appends::DirectOwnRing);
    reused_segments_case(Appends::Buffered);
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Appends {
    DirectRingThread,
    DirectOwnRing,
    Buffered,
}

/// Whether `dir`'s file system takes `O_DIRECT` (tmpfs before Linux 6.6
/// does not; the engine then buffers every append).
fn direct_io_works(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(dir.join("direct-probe"))
        .is_ok()
}

fn reused_segments_case(appends: Appends) {
    const WRITE: usize = 128 << 10;
    const WRITES: u64 = 8;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    // Segments of a few writes each: a segment's first batch starts right
    // after its 64-byte header and is always buffered; the others are
    // page-aligned and may go direct.
    let cfg = StoreConfig {
        segment_bytes: 512 << 10,
        direct_appends: appends != Appends::Buffered,
        ..config(IoBackendChoice::Auto)
    };
    let store = Store::create(&path, cfg.clone()).unwrap();
    let vol = store.create_volume("v", 4 << 20).unwrap();
    let data = |generation: u64, i: u64| pattern(generation * 1000 + i, WRITE);
    let fill = |vol: &cowstore::Volume, generation: u64, writes: u64| {
        let writes = async {
            for i in 0..writes {
                vol.write(i * WRITE as u64, &data(generation, i))
                    .await
                    .unwrap();
            }
        };
        match appends {
            Appends::DirectOwnRing => cowstore::block_on(writes),
            _ => block_on(writes),
        }
    };
    let mut reused = 0;
    for generation in 1..=6 {
        let pooled_before = store.pooled_segments();
        fill(&vol, generation, WRITES);
        block_on(vol.flush()).unwrap();
        reused += pooled_before.saturating_sub(store.pooled_segments());
        let report = store.gc().unwrap();
        if generation > 1 {
            assert!(report.segments_pooled > 0, "{report:?}");
        }
    }
    assert!(
        reused >= 8,
        "new segments came from the pool ({reused} did)"
    );
    let direct_bytes = store.direct_append_bytes();
    // Every write was encoded as a batch of its own, and every direct
    // append was timed to its completion.
    let stages = store.write_stages();
    assert_eq!(stages.encode.ops, 6 * WRITES, "{stages:?}");
    assert_eq!(stages.encode.bytes, 6 * WRITES * WRITE as u64, "{stages:?}");
    assert!(stages.encode.ns > 0, "{stages:?}");
    assert_eq!(stages.direct_append.bytes, direct_bytes, "{stages:?}");
    assert_eq!(stages.direct_append.ops > 0, direct_bytes > 0, "{stages:?}");
    if appends == Appends::Buffered {
        assert_eq!(direct_bytes, 0, "{appends:?}");
    } else if direct_io_works(dir.path()) {
        assert!(
            direct_bytes >= 4 * WRITE as u64,
            "{appends:?}: only {direct_bytes} bytes went direct"
        );
        // The thread's own ring writes from its registered buffers; the
        // ring thread never does.
        let fixed_bytes = store.fixed_buffer_append_bytes();
        if appends == Appends::DirectOwnRing {
            assert!(
                fixed_bytes >= 4 * WRITE as u64,
                "{appends:?}: only {fixed_bytes} of {direct_bytes} direct bytes were fixed writes"
            );
        } else {
            assert_eq!(fixed_bytes, 0, "{appends:?}");
        }
    } else {
        eprintln!(
            "note: no O_DIRECT on {}; appends were buffered",
            dir.path().display()
        );
    }

    // Three writes of a 7th generation, not flushed, then a crash that keeps
    // the page cache (the process dies, the machine does not).
    fill(&vol, 7, 3);
    drop(vol);
    store.abandon();
    let store = Store::open(&path, cfg.clone()).unwrap();
    let vol = store.volume("v").unwrap();
    for i in 0..WRITES {
        let generation = if i < 3 { 7 } else { 6 };
        let got = block_on(vol.read(i * WRITE as u64, WRITE as u64)).unwrap();
        assert!(
            got == data(generation, i),
            "after the crash, write {i} is not generation {generation}"
        );
    }
    // And the log goes on in the recycled files across another open.
    fill(&vol, 8, WRITES);
    block_on(vol.flush()).unwrap();
    drop(vol);
    drop(store);
    let store = Store::open(&path, cfg).unwrap();
    let vol = store.volume("v").unwrap();
    for i in 0..WRITES {
        let got = block_on(vol.read(i * WRITE as u64, WRITE as u64)).unwrap();
        assert!(
            got == data(8, i),
            "after reopening, write {i} is not generation 8"
        );
    }
}

/// A store made before pad records (format 1) or aligned records (2) is
/// upgraded when opened, so that older builds refuse it afterwards; a newer
/// format is refused here.
#[test]
fn opening_upgrades_older_formats_and_refuses_unknown_formats() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let cfg = config(IoBackendChoice::Auto);
    let store = Store::create(&path, cfg.clone()).unwrap();
    let v = store.create_volume("v", 1 << 20).unwrap();
    block_on(v.write(0, &pattern(1, 4096))).unwrap();
    drop(v);
    store.close().unwrap();
    let format = path.join("format");
    let with_version = |version: u32| {
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&format).unwrap()).unwrap();
        json["format_version"] = version.into();
        std::fs::write(&format, serde_json::to_vec(&json).unwrap()).unwrap();
    };
    let version = || -> u64 {
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&format).unwrap()).unwrap();
        json["format_version"].as_u64().unwrap()
    };
    for old in [1, 2] {
        with_version(old);
        let store = Store::open(&path, cfg.clone()).unwrap();
        assert_eq!(version(), 3, "format {old} upgraded");
        let v = store.volume("v").unwrap();
        assert_eq!(block_on(v.read(0, 4096)).unwrap(), pattern(1, 4096));
        drop(v);
        store.close().unwrap();
    }
    with_version(4);
    match Store::open(&path, cfg) {
        Err(Error::Config(why)) => assert!(why.contains("format version 4"), "{why}"),
        other => panic!("a format 4 store opened: {other:?}"),
    }
}

/// One cleaner pass relocates at most `gc_max_relocate_bytes` of live
/// data (emptiest segments first, at least one segment); later passes
/// finish the job, and the data reads back the same throughout.
#[test]
fn a_pass_relocates_within_its_budget_and_later_passes_finish() {
    const BLOCK: usize = 4096;
    const BLOCKS: u64 = 512;
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        segment_bytes: 256 << 10,
        // About one segment's live records per pass.
        gc_max_relocate_bytes: 64 << 10,
        ..config(IoBackendChoice::Auto)
    };
    let store = Store::create(dir.path().join("s"), cfg).unwrap();
    let vol = store.create_volume("v", BLOCKS * BLOCK as u64).unwrap();
    let block = |seed: u64| pattern(seed, BLOCK);
    for i in 0..BLOCKS {
        block_on(vol.write(i * BLOCK as u64, &block(i))).unwrap();
    }
    // Overwrite two blocks of every three: the first segments are then
    // about a third live, worth cleaning under the 50% threshold.
    for i in (0..BLOCKS).filter(|i| i % 3 != 0) {
        block_on(vol.write(i * BLOCK as u64, &block(10_000 + i))).unwrap();
    }
    block_on(vol.flush()).unwrap();
    let expected = |i: u64| {
        if i.is_multiple_of(3) {
            block(i)
        } else {
            block(10_000 + i)
        }
    };
    let first = store.gc().unwrap();
    assert!(first.segments_cleaned >= 1, "{first:?}");
    assert!(
        first.segments_deferred > 0,
        "the budget left nothing: {first:?}"
    );
    assert!(
        first.bytes_relocated <= 2 * (64 << 10),
        "relocated {} bytes against a 64 KiB budget",
        first.bytes_relocated
    );
    let mut passes = 1;
    let mut last = first;
    while last.segments_deferred > 0 {
        last = store.gc().unwrap();
        passes += 1;
        assert!(passes < 100, "passes never finish: {last:?}");
    }
    assert!(passes > 1);
    for i in 0..BLOCKS {
        let got = block_on(vol.read(i * BLOCK as u64, BLOCK as u64)).unwrap();
        assert!(got == expected(i), "block {i} changed");
    }
}

/// `write_many`: one batch, each write applied in order and whole, a
/// refused or failing write reported alone, everything back after a crash
/// (in a thread's own ring, from its registered buffers, as cowstored's
/// queue workers write).
#[test]
fn a_batch_of_writes_fails_and_survives_write_by_write() {
    const WRITE: usize = 128 << 10;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let cfg = StoreConfig {
        segment_bytes: 4 << 20,
        ..config(IoBackendChoice::Auto)
    };
    let store = Store::create(&path, cfg.clone()).unwrap();
    let size = 2 << 20;
    let vol = store.create_volume("v", size).unwrap();
    let data: Vec<Vec<u8>> = (0..5).map(|i| pattern(100 + i, WRITE)).collect();
    let plan: Vec<(u64, &[u8], bool)> = vec![
        (0, &data[0], true),
        // Refused: past the end.
        (size - 4096, &data[1], true),
        // Its data cannot be taken (a guest buffer gone, say).
        (WRITE as u64, &data[2], false),
        // Overlaps the first; being later in the batch, it wins.
        (4096, &data[3], true),
        (3 * WRITE as u64, &data[4], true),
    ];
    let batch = plan
        .iter()
        .map(|&(off, bytes, ok)| {
            let mut rest = bytes;
            let fill = move |out: &mut Vec<u8>, n: usize| {
                if !ok && rest.len() < WRITE {
                    return Err("guest buffer unmapped".to_string());
                }
                let (chunk, tail) = rest.split_at(n);
                out.extend_from_slice(chunk);
                rest = tail;
                Ok(())
            };
            (off, bytes.len() as u64, fill)
        })
        .collect();
    let results = cowstore::block_on(vol.write_many(batch));
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(results[1], Err(Error::OutOfRange { .. })),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(results[2], Err(Error::WriteData { .. })),
        "{:?}",
        results[2]
    );
    assert!(results[3].is_ok() && results[4].is_ok(), "{results:?}");

    let mut want = vec![0u8; size as usize];
    for &(off, bytes, ok) in &plan {
        let off = off as usize;
        if ok && off + bytes.len() <= want.len() {
            want[off..off + bytes.len()].copy_from_slice(bytes);
        }
    }
    assert!(block_on(vol.read(0, size)).unwrap() == want, "read back");
    block_on(vol.flush()).unwrap();
    drop(vol);
    store.abandon();
    let store = Store::open(&path, cfg).unwrap();
    let vol = store.volume("v").unwrap();
    assert!(
        block_on(vol.read(0, size)).unwrap() == want,
        "after a crash"
    );
}

/// The lengths a `write_many` caller claims do not size an allocation: a
/// thousand 32 MiB writes (32 GiB claimed) whose data never comes fail one
/// by one, without the store reserving room for all of them first.
#[test]
fn a_batch_reserves_no_more_than_one_largest_write() {
    const CLAIM: u64 = cowstore::limits::MAX_IO_BYTES;
    let (_dir, store) = new_store();
    let vol = store.create_volume("v", 1000 * CLAIM).unwrap();
    let batch = (0..1000u64)
        .map(|i| {
            let fill = |_: &mut Vec<u8>, _: usize| Err("the guest went away".to_string());
            (i * CLAIM, CLAIM, fill)
        })
        .collect();
    let results = cowstore::block_on(vol.write_many(batch));
    assert_eq!(results.len(), 1000);
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(Error::WriteData { .. }))),
        "{:?}",
        results
            .iter()
            .find(|r| !matches!(r, Err(Error::WriteData { .. })))
    );
    assert_eq!(block_on(vol.read(0, 4096)).unwrap(), vec![0u8; 4096]);
}
