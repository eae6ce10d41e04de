//! Crash victim for the `crash_kill9` test: opens (or creates) a store,
//! opens (or creates) its volumes and runs the deterministic workload of
//! `cowstore_e2e::crash` on each of them, one thread per volume, forever.
//!
//! Usage: `crash-victim <store dir> <first op of volume 0> <first op of volume 1>`
//! (the test passes the op after the last one the recovered store holds).
//!
//! After every flush it prints `FLUSHED <volume> <n>` (n = the last op the
//! flush covers) and flushes stdout before starting op n+1. Any error ends
//! the process with a non-zero status, which the test reports.

use std::io::Write;
use std::sync::{mpsc, Arc};

use anyhow::{bail, Context, Result};
use cowstore::{Store, Volume};
use cowstore_e2e::crash::{self, Op};
use futures::executor::block_on;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 1 + crash::VOLUMES.len() {
        bail!("usage: crash-victim <store dir> <first op of each volume>...");
    }
    let dir = &args[0];
    let starts = args[1..]
        .iter()
        .map(|a| {
            a.parse::<u64>()
                .with_context(|| format!("bad op number {a:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let store = Arc::new(
        Store::open_or_create(dir, crash::store_config())
            .with_context(|| format!("opening store {dir}"))?,
    );
    let (tx, rx) = mpsc::channel();
    for (index, name) in crash::VOLUMES.iter().enumerate() {
        let volume = match store.volume(name) {
            Ok(v) => v,
            Err(cowstore::Error::VolumeNotFound(_)) => store
                .create_volume(name, crash::VOLUME_BYTES)
                .with_context(|| format!("creating volume {name}"))?,
            Err(e) => return Err(e).with_context(|| format!("opening volume {name}")),
        };
        let store = store.clone();
        let tx = tx.clone();
        let start = starts[index];
        std::thread::spawn(move || {
            let err = run(&store, index, &volume, start).unwrap_err();
            let _ = tx.send(err.context(format!("volume {}", crash::VOLUMES[index])));
        });
    }
    // The workers never stop on their own: the first error ends the process.
    match rx.recv() {
        Ok(err) => Err(err),
        Err(_) => bail!("every worker thread vanished"),
    }
}

/// Runs ops `start..` of volume `index`; returns only on error.
fn run(store: &Store, index: usize, volume: &Volume, start: u64) -> Result<()> {
    let name = crash::VOLUMES[index];
    for n in start.. {
        let what = crash::op(index, n);
        let done = match &what {
            Op::Write { .. } | Op::WriteRange { .. } => {
                let (offset, data) =
                    crash::write_data(index, n, &what).context("write op without data")?;
                block_on(volume.write(offset, &data))
            }
            Op::Discard { first, blocks } => {
                let (offset, len) = crash::byte_range(*first, *blocks);
                block_on(volume.discard(offset, len))
            }
            Op::Zero { first, blocks } => {
                let (offset, len) = crash::byte_range(*first, *blocks);
                block_on(volume.write_zeroes(offset, len))
            }
            Op::Snapshot => store
                .create_snapshot(name, &crash::snapshot_name(index, n))
                .map(drop),
            Op::DeleteSnapshot { taken_at } => {
                store.delete_snapshot(&crash::snapshot_name(index, *taken_at))
            }
            Op::Gc => store.gc().map(drop),
        };
        done.with_context(|| format!("op {n} ({what:?})"))?;
        if n % crash::FLUSH_EVERY == 0 {
            block_on(volume.flush()).with_context(|| format!("flush after op {n}"))?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "FLUSHED {index} {n}")?;
            out.flush()?;
        }
    }
    bail!("op numbers ran out")
}
