//! `cowsnap snapshot ...`, `cowsnap clone`, `cowsnap restore`.

use std::path::Path;

use anyhow::Result;
use serde_json::json;

use crate::cli::{CloneArgs, RestoreArgs, SnapshotCommand, SnapshotCreateArgs};
use crate::output::{self, Output};
use crate::{failure, group, store};

pub fn run(flag: Option<&Path>, cmd: SnapshotCommand, out: Output) -> Result<()> {
    match cmd {
        SnapshotCommand::Create(args) if args.group.is_some() => group::create(flag, args, out),
        SnapshotCommand::Create(args) => create(flag, args, out),
        SnapshotCommand::List => list(flag, out),
        SnapshotCommand::Show { name } => {
            if group::exists(flag, &name)? {
                return group::show(flag, &name, out);
            }
            let st = store::open(flag)?;
            show(&st, &name, out)?;
            store::close(st)
        }
        SnapshotCommand::Rm { name } => {
            if group::exists(flag, &name)? {
                return group::remove(flag, &name, out);
            }
            let st = store::open(flag)?;
            st.delete_snapshot(&name)?;
            out.emit(&json!({"removed": name}), || {
                format!("removed snapshot {name} (run `cowsnap gc` to reclaim its space)")
            });
            store::close(st)
        }
        SnapshotCommand::Diff { from, to } => {
            let st = store::open(flag)?;
            diff(&st, &from, &to, out)?;
            store::close(st)
        }
    }
}

fn create(flag: Option<&Path>, args: SnapshotCreateArgs, out: Output) -> Result<()> {
    let [volume] = args.volumes.as_slice() else {
        return Err(failure::usage(
            "several volumes need --group NAME (one crash-consistent cut across them)",
        ));
    };
    let name = args
        .name
        .unwrap_or_else(|| format!("{volume}@{}", output::utc_stamp(output::now_unix_s())));
    let st = store::open(flag)?;
    let info = st.create_snapshot(volume, &name)?;
    out.emit(
        &json!({"name": info.name, "volume": volume, "size_bytes": info.size_bytes,
                "created": output::utc_time(info.created_unix_s)}),
        || format!("created snapshot {} of {volume}", info.name),
    );
    store::close(st)
}

fn list(flag: Option<&Path>, out: Output) -> Result<()> {
    let groups = group::list_manifests(flag)?;
    let st = store::open(flag)?;
    let snaps = st.snapshots();
    let doc = json!({
        "snapshots": snaps.iter().map(|s| json!({
            "name": s.name, "volume": s.volume_name, "size_bytes": s.size_bytes,
            "extent_count": s.extent_count, "created": output::utc_time(s.created_unix_s),
        })).collect::<Vec<_>>(),
        "groups": groups.iter().map(|g| json!({
            "name": g.name, "members": g.members.len(),
            "created": output::utc_time(g.created_unix_s),
        })).collect::<Vec<_>>(),
    });
    out.emit(&doc, || {
        let mut rows = vec![vec![
            "NAME".into(),
            "VOLUME".into(),
            "SIZE".into(),
            "CREATED".into(),
        ]];
        for s in &snaps {
            rows.push(vec![
                s.name.clone(),
                s.volume_name.clone(),
                output::bytes(s.size_bytes),
                output::utc_time(s.created_unix_s),
            ]);
        }
        let mut text = output::table(&rows);
        if !groups.is_empty() {
            let mut rows = vec![vec!["GROUP".into(), "MEMBERS".into(), "CREATED".into()]];
            for g in &groups {
                rows.push(vec![
                    g.name.clone(),
                    g.members.len().to_string(),
                    output::utc_time(g.created_unix_s),
                ]);
            }
            text += "\n";
            text += &output::table(&rows);
        }
        text
    });
    store::close(st)
}

fn show(st: &cowstore::Store, name: &str, out: Output) -> Result<()> {
    let info = st
        .snapshots()
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| cowstore::Error::SnapshotNotFound(name.to_string()))?;
    let usage = st
        .space_usage()?
        .into_iter()
        .find(|u| u.name == name && u.kind == cowstore::ObjectKind::Snapshot);
    let doc = json!({
        "name": info.name, "volume": info.volume_name, "size_bytes": info.size_bytes,
        "extent_count": info.extent_count, "created": output::utc_time(info.created_unix_s),
        "usage": usage,
    });
    out.emit(&doc, || {
        let mut s = format!(
            "snapshot {}\n  volume     {}\n  size       {}\n  created    {}\n  extents    {}\n",
            info.name,
            info.volume_name,
            output::bytes(info.size_bytes),
            output::utc_time(info.created_unix_s),
            info.extent_count
        );
        if let Some(u) = &usage {
            s += &output::usage_lines(u);
        }
        s
    });
    Ok(())
}

fn diff(st: &cowstore::Store, from: &str, to: &str, out: Output) -> Result<()> {
    let ranges = st.diff(from, to)?;
    let changed_bytes: u64 = ranges.iter().map(|r| r.len_bytes).sum();
    out.emit(
        &json!({"from": from, "to": to, "ranges": ranges, "changed_bytes": changed_bytes}),
        || {
            let mut s = String::new();
            for r in &ranges {
                s += &format!("{:>16} {:>12}\n", r.offset_bytes, r.len_bytes);
            }
            s += &format!(
                "{} changed in {} ranges between {from} and {to}",
                output::bytes(changed_bytes),
                ranges.len()
            );
            s
        },
    );
    Ok(())
}

pub fn clone(flag: Option<&Path>, args: CloneArgs, out: Output) -> Result<()> {
    let st = store::open(flag)?;
    let vol = st.clone_snapshot(&args.snapshot, &args.name)?;
    out.emit(
        &json!({"name": args.name, "snapshot": args.snapshot, "size_bytes": vol.size_bytes()}),
        || format!("cloned {} into volume {}", args.snapshot, args.name),
    );
    store::close(st)
}

pub fn restore(flag: Option<&Path>, args: RestoreArgs, out: Output) -> Result<()> {
    if group::exists(flag, &args.name)? {
        if args.in_place {
            return Err(failure::usage(
                "--in-place is for one snapshot; a group restores as new clones",
            ));
        }
        return group::restore(flag, &args.name, args.as_name.as_deref(), out);
    }
    let st = store::open(flag)?;
    // A snapshot only the object store still has (disaster recovery) comes
    // back first.
    let info = match st.snapshots().into_iter().find(|s| s.name == args.name) {
        Some(info) => info,
        None => {
            st.restore_snapshot(&args.name)?;
            st.snapshots()
                .into_iter()
                .find(|s| s.name == args.name)
                .ok_or_else(|| cowstore::Error::SnapshotNotFound(args.name.clone()))?
        }
    };
    let target = if args.in_place {
        if st.volumes().iter().any(|v| v.name == info.volume_name) {
            st.delete_volume(&info.volume_name)?;
        }
        info.volume_name.clone()
    } else {
        args.as_name.clone().unwrap_or_else(|| {
            format!(
                "{}-restored-{}",
                info.volume_name,
                output::utc_stamp(output::now_unix_s())
            )
        })
    };
    st.clone_snapshot(&args.name, &target)?;
    out.emit(
        &json!({"snapshot": args.name, "volume": target, "in_place": args.in_place}),
        || {
            if args.in_place {
                format!("rolled volume {target} back to {}", args.name)
            } else {
                format!("restored {} as volume {target}", args.name)
            }
        },
    );
    store::close(st)
}
