//! `cowsnap schedule`: group snapshots on a schedule, with retention.
//!
//! The schedule file names groups to take; each run (from cron or a systemd
//! timer) takes one group snapshot per entry, named `PREFIX-<UTC stamp>`,
//! then prunes that entry's older groups: it keeps the newest group of each
//! of the last `keep_hourly` hours that have one, and of each of the last
//! `keep_daily` days that have one (the rule restic and borg call
//! keep-hourly / keep-daily); everything else with that prefix goes.
//!
//! ```toml
//! [[schedule]]
//! prefix = "app"
//! members = ["db:/run/cowstored-a.ctl", "web:/run/cowstored-b.ctl"]
//! timeout_ms = 5000      # optional
//! keep_hourly = 24
//! keep_daily = 7
//! ```

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::json;

use crate::cli::{ScheduleArgs, SnapshotCreateArgs};
use crate::output::{self, Output};
use crate::{failure, group};

/// Entries per file and members per entry: a schedule is a handful of apps.
const MAX_ENTRIES: usize = 64;
const MAX_SCHEDULE_BYTES: u64 = 256 << 10;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleFile {
    schedule: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    prefix: String,
    members: Vec<String>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default)]
    keep_hourly: usize,
    #[serde(default)]
    keep_daily: usize,
}

fn default_timeout_ms() -> u64 {
    5000
}

/// Which of `groups` (name, created unix s) to keep: the newest in each of
/// the `hourly` most recent hours that hold one, and likewise for days.
/// The newest group overall is always kept.
pub fn retained(groups: &[(String, u64)], hourly: usize, daily: usize) -> BTreeSet<String> {
    let mut sorted: Vec<&(String, u64)> = groups.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let mut keep = BTreeSet::new();
    if let Some(newest) = sorted.first() {
        keep.insert(newest.0.clone());
    }
    for (bucket_s, limit) in [(3600u64, hourly), (86_400, daily)] {
        let mut seen = BTreeSet::new();
        for (name, t) in &sorted {
            if seen.len() >= limit {
                break;
            }
            if seen.insert(t / bucket_s) {
                keep.insert(name.clone());
            }
        }
    }
    keep
}

pub fn run(flag: Option<&Path>, args: ScheduleArgs, out: Output) -> Result<()> {
    let len = std::fs::metadata(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?
        .len();
    if len > MAX_SCHEDULE_BYTES {
        return Err(failure::usage(format!(
            "{}: {len} bytes is too large for a schedule file",
            args.config.display()
        )));
    }
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let file: ScheduleFile = toml::from_str(&text)
        .map_err(|e| failure::usage(format!("{}: {e}", args.config.display())))?;
    if file.schedule.len() > MAX_ENTRIES {
        return Err(failure::usage(format!(
            "{}: {} entries (at most {MAX_ENTRIES})",
            args.config.display(),
            file.schedule.len()
        )));
    }
    let mut report = Vec::new();
    let mut first_err = None;
    for entry in &file.schedule {
        let name = format!(
            "{}-{}",
            entry.prefix,
            output::utc_stamp(output::now_unix_s())
        );
        let taken = if args.dry_run {
            Ok(())
        } else {
            group::create_group(
                flag,
                SnapshotCreateArgs {
                    volumes: entry.members.clone(),
                    name: None,
                    group: Some(name.clone()),
                    timeout_ms: entry.timeout_ms,
                },
            )
            .map(|_| ())
        };
        let taken_err = taken.err().map(|e| format!("{e:#}"));
        // Prune even when this run's snapshot failed: retention must not
        // stall because one daemon is down.
        let mine: Vec<(String, u64)> = group::list_manifests(flag)?
            .into_iter()
            .filter(|g| {
                g.name
                    .strip_prefix(&entry.prefix)
                    .is_some_and(|rest| rest.starts_with('-'))
            })
            .map(|g| (g.name, g.created_unix_s))
            .collect();
        let keep = retained(&mine, entry.keep_hourly, entry.keep_daily);
        let mut removed = Vec::new();
        for (g, _) in &mine {
            if keep.contains(g) {
                continue;
            }
            if !args.dry_run {
                if let Err(e) = group::remove_group(flag, g) {
                    first_err.get_or_insert(e.context(format!("pruning {g}")));
                    continue;
                }
            }
            removed.push(g.clone());
        }
        if let Some(e) = &taken_err {
            first_err.get_or_insert(anyhow::anyhow!("{}: {e}", entry.prefix));
        }
        report.push(json!({
            "prefix": entry.prefix,
            "taken": if taken_err.is_none() { Some(&name) } else { None },
            "error": taken_err,
            "kept": keep,
            "removed": removed,
        }));
    }
    out.emit(
        &json!({"dry_run": args.dry_run, "schedules": report}),
        || {
            let mut s = String::new();
            for r in &report {
                let prefix = r["prefix"].as_str().unwrap_or("");
                match r["taken"].as_str() {
                    Some(t) if args.dry_run => s += &format!("{prefix}: would take {t}\n"),
                    Some(t) => s += &format!("{prefix}: took {t}\n"),
                    None => {
                        s += &format!("{prefix}: FAILED: {}\n", r["error"].as_str().unwrap_or(""))
                    }
                }
                let removed: Vec<&str> = r["removed"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                    .unwrap_or_default();
                if !removed.is_empty() {
                    let verb = if args.dry_run {
                        "would remove"
                    } else {
                        "removed"
                    };
                    s += &format!("{prefix}: {verb} {}\n", removed.join(", "));
                }
            }
            s
        },
    );
    first_err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(keep: &BTreeSet<String>) -> Vec<&str> {
        keep.iter().map(String::as_str).collect()
    }

    #[test]
    fn keeps_the_newest_per_hour_and_per_day() {
        const H: u64 = 3600;
        const D: u64 = 86_400;
        let t0 = 100 * D;
        let groups: Vec<(String, u64)> = [
            ("a", t0 + 10),        // day 100, hour 0
            ("b", t0 + 20),        // day 100, hour 0 (newer)
            ("c", t0 + H + 5),     // day 100, hour 1
            ("d", t0 + 2 * H + 5), // day 100, hour 2
            ("e", t0 + D + 5),     // day 101, hour 0
            ("f", t0 + D + H + 5), // day 101, hour 1 (newest)
        ]
        .iter()
        .map(|(n, t)| (n.to_string(), *t))
        .collect();
        // 2 hourly: f, e. 2 daily: f (day 101), d (day 100).
        assert_eq!(names(&retained(&groups, 2, 2)), ["d", "e", "f"]);
        // 0 and 0: only the newest survives.
        assert_eq!(names(&retained(&groups, 0, 0)), ["f"]);
        // Plenty: one per hour bucket.
        assert_eq!(names(&retained(&groups, 10, 0)), ["b", "c", "d", "e", "f"]);
        assert!(retained(&[], 3, 3).is_empty());
    }
}
