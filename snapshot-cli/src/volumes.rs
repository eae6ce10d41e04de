//! `cowsnap volume ...`

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use futures::executor::block_on;
use serde_json::json;

use crate::cli::VolumeCommand;
use crate::output::{self, Output};
use crate::{failure, store};

/// Largest write request `volume write` sends at once.
const WRITE_CHUNK_BYTES: usize = 1 << 20;
const SECTOR_BYTES: u64 = 512;

pub fn run(flag: Option<&Path>, cmd: VolumeCommand, out: Output) -> Result<()> {
    let st = store::open(flag)?;
    match cmd {
        VolumeCommand::Create { name, size } => {
            let vol = st.create_volume(&name, size)?;
            out.emit(
                &json!({"name": name, "size_bytes": vol.size_bytes()}),
                || format!("created volume {name} ({})", output::bytes(size)),
            );
        }
        VolumeCommand::List => list(&st, out),
        VolumeCommand::Show { name } => show(&st, &name, out)?,
        VolumeCommand::Resize { name, size } => {
            let vol = st.volume(&name)?;
            block_on(vol.resize(size))?;
            out.emit(&json!({"name": name, "size_bytes": size}), || {
                format!("volume {name} is now {}", output::bytes(size))
            });
        }
        VolumeCommand::Rm { name } => {
            st.delete_volume(&name)?;
            out.emit(&json!({"removed": name}), || {
                format!("removed volume {name} (run `cowsnap gc` to reclaim its space)")
            });
        }
        VolumeCommand::Write { name, offset, from } => {
            let written = write_file(&st, &name, offset, &from)?;
            out.emit(
                &json!({"name": name, "offset_bytes": offset, "len_bytes": written}),
                || {
                    format!(
                        "wrote {} to {name} at byte {offset}",
                        output::bytes(written)
                    )
                },
            );
        }
    }
    store::close(st)
}

fn list(st: &cowstore::Store, out: Output) {
    let vols = st.volumes();
    let snaps = st.snapshots();
    let doc: Vec<_> = vols
        .iter()
        .map(|v| {
            json!({
                "name": v.name,
                "size_bytes": v.size_bytes,
                "extent_count": v.extent_count,
                "snapshots": snaps.iter().filter(|s| s.volume_id == v.id).count(),
                "parent_snapshot": v.parent_snapshot
                    .and_then(|id| snaps.iter().find(|s| s.id == id).map(|s| s.name.clone())),
            })
        })
        .collect();
    out.emit(&doc, || {
        let mut rows = vec![vec![
            "NAME".into(),
            "SIZE".into(),
            "EXTENTS".into(),
            "SNAPSHOTS".into(),
        ]];
        for v in &vols {
            rows.push(vec![
                v.name.clone(),
                output::bytes(v.size_bytes),
                v.extent_count.to_string(),
                snaps
                    .iter()
                    .filter(|s| s.volume_id == v.id)
                    .count()
                    .to_string(),
            ]);
        }
        output::table(&rows)
    });
}

fn show(st: &cowstore::Store, name: &str, out: Output) -> Result<()> {
    let info = st
        .volumes()
        .into_iter()
        .find(|v| v.name == name)
        .ok_or_else(|| cowstore::Error::VolumeNotFound(name.to_string()))?;
    let usage = st
        .space_usage()?
        .into_iter()
        .find(|u| u.name == name && u.kind == cowstore::ObjectKind::Volume);
    let snaps: Vec<_> = st
        .snapshots()
        .into_iter()
        .filter(|s| s.volume_id == info.id)
        .collect();
    let doc = json!({
        "name": info.name,
        "size_bytes": info.size_bytes,
        "extent_count": info.extent_count,
        "usage": usage,
        "snapshots": snaps.iter().map(|s| json!({
            "name": s.name, "created": output::utc_time(s.created_unix_s),
        })).collect::<Vec<_>>(),
    });
    out.emit(&doc, || {
        let mut s = format!(
            "volume {}\n  size       {}\n  extents    {}\n",
            info.name,
            output::bytes(info.size_bytes),
            info.extent_count
        );
        if let Some(u) = &usage {
            s += &output::usage_lines(u);
        }
        s += &format!("  snapshots  {}\n", snaps.len());
        for snap in &snaps {
            s += &format!(
                "    {}  {}\n",
                snap.name,
                output::utc_time(snap.created_unix_s)
            );
        }
        s
    });
    Ok(())
}

fn write_file(st: &cowstore::Store, name: &str, offset: u64, from: &Path) -> Result<u64> {
    if offset % SECTOR_BYTES != 0 {
        return Err(failure::usage(format!(
            "offset {offset} is not a multiple of {SECTOR_BYTES}"
        )));
    }
    let vol = st.volume(name)?;
    let mut file =
        std::fs::File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let mut at = offset;
    let mut buf = vec![0u8; WRITE_CHUNK_BYTES];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = file
                .read(&mut buf[filled..])
                .with_context(|| format!("reading {}", from.display()))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        let padded = filled.next_multiple_of(SECTOR_BYTES as usize);
        buf[filled..padded].fill(0);
        block_on(vol.write(at, &buf[..padded]))?;
        at += padded as u64;
        if filled < buf.len() {
            break;
        }
    }
    block_on(vol.flush())?;
    Ok(at - offset)
}
