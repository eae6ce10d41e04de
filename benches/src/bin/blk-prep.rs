//! Lays out the cowstore side of scripts/bench-blk, offline through the
//! engine, before cowstored serves it:
//!
//! - volume `VOL` of `--size-bytes`, its first `--fill-bytes` written
//!   sequentially in 1 MiB records (incompressible), flushed;
//! - with `--clone NAME=SIZE_BYTES`: volume `NAME-base` of that size,
//!   filled the same way, snapshot `NAME-base@gold`, and the writable clone
//!   `NAME` of it: our copy-on-write peer of a qcow2 overlay on a read-only
//!   base (the control socket has no clone operation, so it is made here).
//!
//!   blk-prep --store DIR --volume NAME=SIZE_BYTES --fill-bytes N [--clone NAME=SIZE_BYTES]

use anyhow::{bail, Context, Result};
use cowstore::{Store, StoreConfig};
use cowstore_benches::{fill, RandomData, MIB};

fn usage() -> &'static str {
    "usage: blk-prep --store DIR --volume NAME=SIZE_BYTES --fill-bytes N [--clone NAME=SIZE_BYTES]"
}

fn name_size(s: &str) -> Result<(String, u64)> {
    let (n, v) = s
        .split_once('=')
        .with_context(|| format!("{s:?}: want NAME=SIZE_BYTES"))?;
    Ok((
        n.to_string(),
        v.parse().with_context(|| format!("size in {s:?}"))?,
    ))
}

fn main() -> Result<()> {
    let mut store_dir = None;
    let mut volume = None;
    let mut clone = None;
    let mut fill_bytes = 0u64;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--store" => store_dir = Some(std::path::PathBuf::from(value()?)),
            "--volume" => volume = Some(name_size(&value()?)?),
            "--clone" => clone = Some(name_size(&value()?)?),
            "--fill-bytes" => fill_bytes = value()?.parse().context("--fill-bytes")?,
            _ => bail!("unknown argument {a:?}\n{}", usage()),
        }
    }
    let (Some(store_dir), Some((vol_name, vol_size))) = (store_dir, volume) else {
        bail!("{}", usage());
    };
    let store = Store::open_or_create(&store_dir, StoreConfig::default())
        .with_context(|| format!("opening {}", store_dir.display()))?;
    let data = RandomData::standard();
    let lay_out = |name: &str, size: u64| -> Result<()> {
        let vol = store
            .create_volume(name, size)
            .with_context(|| format!("creating {name}"))?;
        let len = fill_bytes.min(size) / MIB * MIB;
        let t = std::time::Instant::now();
        futures::executor::block_on(fill(&vol, len, MIB, 8, &data))
            .with_context(|| format!("filling {name}"))?;
        eprintln!(
            "blk-prep: {name}: {size} bytes, first {len} written in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        Ok(())
    };
    lay_out(&vol_name, vol_size)?;
    if let Some((name, size)) = clone {
        let base = format!("{name}-base");
        lay_out(&base, size)?;
        let snap = format!("{base}@gold");
        store.create_snapshot(&base, &snap)?;
        store.clone_snapshot(&snap, &name)?;
        eprintln!("blk-prep: {name}: clone of {snap}");
    }
    store.close()?;
    Ok(())
}
