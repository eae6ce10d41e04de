//! `cowsnap gc`, `verify`, `du`, `hydrate`.

use std::path::Path;

use anyhow::Result;
use futures::executor::block_on;
use serde_json::json;

use crate::cli::{HydrateArgs, VerifyArgs};
use crate::output::{self, Output};
use crate::progress::Progress;
use crate::{failure, store};

pub fn gc(flag: Option<&Path>, out: Output) -> Result<()> {
    let st = store::open(flag)?;
    let before = st.disk_bytes();
    let report = st.gc()?;
    let objects = match st.gc_objects() {
        Ok(r) => Some(r),
        Err(cowstore::Error::NoTier) => None,
        Err(e) => return Err(e.into()),
    };
    let after = st.disk_bytes();
    out.emit(
        &json!({
            "disk_bytes_before": before,
            "disk_bytes_after": after,
            "report": format!("{report:?}"),
            "objects": objects.as_ref().map(|o| format!("{o:?}")),
        }),
        || {
            format!(
                "local disk {} -> {} ({} freed)\n{report:?}{}",
                output::bytes(before),
                output::bytes(after),
                output::bytes(before.saturating_sub(after)),
                objects
                    .as_ref()
                    .map(|o| format!("\nobject store: {o:?}"))
                    .unwrap_or_default()
            )
        },
    );
    store::close(st)
}

pub fn verify(flag: Option<&Path>, args: VerifyArgs, out: Output) -> Result<()> {
    let st = store::open(flag)?;
    let names: Vec<String> = if args.names.is_empty() {
        let mut n: Vec<String> = st.volumes().into_iter().map(|v| v.name).collect();
        n.extend(st.snapshots().into_iter().map(|s| s.name));
        n
    } else {
        args.names.clone()
    };
    let progress = Progress::new(out.json);
    let mut reports = Vec::with_capacity(names.len());
    for name in &names {
        let total: u64 = st.mapped_ranges(name)?.iter().map(|r| r.len_bytes).sum();
        let bar = progress.bytes_bar(name, total);
        let report = block_on(st.verify(name, |done| bar.set_position(done)))?;
        bar.finish_and_clear();
        reports.push(report);
    }
    let bad: usize = reports.iter().map(|r| r.errors.len()).sum();
    let checked: u64 = reports.iter().map(|r| r.checked_bytes).sum();
    out.emit(
        &json!({"ok": bad == 0, "checked_bytes": checked, "objects": reports}),
        || {
            let mut s = String::new();
            for r in &reports {
                let state = if r.errors.is_empty() { "ok" } else { "CORRUPT" };
                s += &format!(
                    "{state:<8} {:<9} {} ({} checked)\n",
                    format!("{:?}", r.kind).to_lowercase(),
                    r.name,
                    output::bytes(r.checked_bytes)
                );
                for e in &r.errors {
                    s += &format!(
                        "         bytes {}..{}: {}\n",
                        e.range.offset_bytes,
                        e.range.end_bytes(),
                        e.error
                    );
                }
            }
            s += &format!(
                "{} objects, {} checked, {bad} bad ranges",
                reports.len(),
                output::bytes(checked)
            );
            s
        },
    );
    store::close(st)?;
    if bad > 0 {
        return Err(failure::integrity(format!(
            "verify found {bad} corrupt ranges (see above); nothing was changed"
        )));
    }
    Ok(())
}

pub fn du(flag: Option<&Path>, out: Output) -> Result<()> {
    let st = store::open(flag)?;
    let usage = st.space_usage()?;
    let disk_bytes = st.disk_bytes();
    out.emit(&json!({"disk_bytes": disk_bytes, "objects": usage}), || {
        let mut rows = vec![vec![
            "NAME".into(),
            "KIND".into(),
            "VOLUME".into(),
            "SIZE".into(),
            "MAPPED".into(),
            "EXCLUSIVE".into(),
            "SHARED".into(),
        ]];
        for u in &usage {
            rows.push(vec![
                u.name.clone(),
                format!("{:?}", u.kind).to_lowercase(),
                u.volume.clone(),
                output::bytes(u.size_bytes),
                output::bytes(u.mapped_bytes),
                output::bytes(u.exclusive_bytes),
                output::bytes(u.shared_bytes),
            ]);
        }
        format!(
            "{}\nstore on local disk: {}",
            output::table(&rows),
            output::bytes(disk_bytes)
        )
    });
    store::close(st)
}

pub fn hydrate(flag: Option<&Path>, args: HydrateArgs, out: Output) -> Result<()> {
    let st = store::open(flag)?;
    // The engine fetches in one call; the bar shows the volume's mapped size
    // and completes when it returns (no per-segment callback yet).
    let total: u64 = st
        .mapped_ranges(&args.name)?
        .iter()
        .map(|r| r.len_bytes)
        .sum();
    let progress = Progress::new(out.json);
    let bar = progress.bytes_bar(&args.name, total);
    let fetched = st.hydrate(&args.name)?;
    bar.set_position(total);
    bar.finish_and_clear();
    out.emit(
        &json!({"name": args.name, "fetched_bytes": fetched}),
        || {
            format!(
                "{} is fully local ({} fetched)",
                args.name,
                output::bytes(fetched)
            )
        },
    );
    store::close(st)
}
