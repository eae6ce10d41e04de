//! Output: fio-style JSON and text for each run, fio's own JSON read back
//! (the in-guest runs), and the table of medians and ratios.

use std::fmt::Write as _;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::client::RunResult;
use super::jobs::Job;
use super::stages::StageUse;

/// One run of one job on one target, in the units the table prints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    /// "host" (blk-client over libblkio) or "guest" (fio in a QEMU guest).
    pub side: String,
    pub target: String,
    pub job: String,
    pub round: u32,
    pub iops: f64,
    pub bw_bytes: f64,
    pub lat_mean_ns: f64,
    pub lat_p50_ns: f64,
    pub lat_p99_ns: f64,
    pub ops: u64,
    pub runtime_ms: u64,
    /// CPU (user + system) of the target's process per completed request,
    /// when blk-client was told its pid (`--cpu-of`); see [`cpu_table`].
    pub cpu_us_per_op: Option<f64>,
    /// Bytes per second written to the disk under the backends over the
    /// run, when blk-client was told the disk (`--disk`); see
    /// [`disk_table`].
    #[serde(default)]
    pub disk_write_bytes_per_s: Option<f64>,
    /// How busy that disk was over the run, in percent of wall time.
    #[serde(default)]
    pub disk_util_pct: Option<f64>,
    /// Mean size of the disk's write requests over the run, bytes.
    #[serde(default)]
    pub disk_write_bytes_avg: Option<f64>,
    /// Mean requests the disk had in flight over the run.
    #[serde(default)]
    pub disk_queue_avg: Option<f64>,
    /// FLUSHes completed in the run (jobs with a flush cadence) and their
    /// mean latency, fio's `sync` section; 0 for the others.
    #[serde(default)]
    pub sync_ops: u64,
    #[serde(default)]
    pub sync_lat_mean_ns: f64,
    /// Where cowstored's write time went over the run, when blk-client was
    /// told its control socket (`--stages-of`); see [`stages_table`].
    #[serde(default)]
    pub stages: Option<StageUse>,
}

impl Sample {
    pub fn from_run(side: &str, target: &str, job: &Job, round: u32, r: &RunResult) -> Sample {
        Sample {
            side: side.into(),
            target: target.into(),
            job: job.name(),
            round,
            iops: r.iops(),
            bw_bytes: r.bw_bytes_per_s(),
            lat_mean_ns: r.mean_ns(),
            lat_p50_ns: r.percentile_ns(50.0) as f64,
            lat_p99_ns: r.percentile_ns(99.0) as f64,
            ops: r.ops,
            runtime_ms: r.elapsed_ns / 1_000_000,
            cpu_us_per_op: None,
            disk_write_bytes_per_s: None,
            disk_util_pct: None,
            disk_write_bytes_avg: None,
            disk_queue_avg: None,
            stages: None,
            sync_ops: r.flush_lat_ns.len() as u64,
            sync_lat_mean_ns: r.flush_mean_ns(),
        }
    }

    /// From one job of fio's `--output-format=json` (fio 3.x field names).
    /// Latency percentiles are fio's completion latency (`clat_ns`), which
    /// for libaio is submission to completion like ours.
    pub fn from_fio_job(side: &str, target: &str, round: u32, fio_job: &Value) -> Result<Sample> {
        let name = fio_job["jobname"]
            .as_str()
            .ok_or_else(|| anyhow!("fio job without jobname"))?;
        let dir = if fio_job["write"]["io_bytes"].as_u64().unwrap_or(0) > 0 {
            &fio_job["write"]
        } else {
            &fio_job["read"]
        };
        let num = |v: &Value, what: &str| -> Result<f64> {
            v.as_f64()
                .ok_or_else(|| anyhow!("fio job {name}: no number at {what}"))
        };
        let pct = &dir["clat_ns"]["percentile"];
        Ok(Sample {
            side: side.into(),
            target: target.into(),
            job: name.to_string(),
            round,
            iops: num(&dir["iops"], "iops")?,
            bw_bytes: num(&dir["bw_bytes"], "bw_bytes")?,
            lat_mean_ns: num(&dir["lat_ns"]["mean"], "lat_ns.mean")?,
            lat_p50_ns: num(&pct["50.000000"], "clat_ns.percentile.50")?,
            lat_p99_ns: num(&pct["99.000000"], "clat_ns.percentile.99")?,
            ops: dir["total_ios"].as_u64().unwrap_or(0),
            runtime_ms: dir["runtime"].as_u64().unwrap_or(0),
            cpu_us_per_op: None,
            disk_write_bytes_per_s: None,
            disk_util_pct: None,
            disk_write_bytes_avg: None,
            disk_queue_avg: None,
            stages: None,
            sync_ops: fio_job["sync"]["total_ios"].as_u64().unwrap_or(0),
            sync_lat_mean_ns: fio_job["sync"]["lat_ns"]["mean"].as_f64().unwrap_or(0.0),
        })
    }

    /// This run as one job of a fio-style JSON document (the fields fio
    /// tools read: jobname, read/write with iops, bw, bw_bytes, runtime,
    /// total_ios, lat_ns/clat_ns with percentiles), plus target and round.
    pub fn fio_json(&self, job: &Job, region_bytes: u64) -> Value {
        let active = json!({
            "io_bytes": (self.bw_bytes * self.runtime_ms as f64 / 1000.0) as u64,
            "bw_bytes": self.bw_bytes as u64,
            "bw": (self.bw_bytes / 1024.0) as u64,
            "iops": self.iops,
            "runtime": self.runtime_ms,
            "total_ios": self.ops,
            "lat_ns": {
                "mean": self.lat_mean_ns,
                "N": self.ops,
                "percentile": {"50.000000": self.lat_p50_ns, "99.000000": self.lat_p99_ns},
            },
            "clat_ns": {
                "mean": self.lat_mean_ns,
                "N": self.ops,
                "percentile": {"50.000000": self.lat_p50_ns, "99.000000": self.lat_p99_ns},
            },
        });
        let idle = json!({"io_bytes": 0, "bw_bytes": 0, "bw": 0, "iops": 0.0, "runtime": 0, "total_ios": 0});
        let (read, write) = if job.rw.is_write() {
            (idle, active)
        } else {
            (active, idle)
        };
        json!({
            "jobname": self.job,
            "groupid": 0,
            "error": 0,
            "target": self.target,
            "side": self.side,
            "round": self.round,
            "job options": {
                "rw": job.rw.fio_name(),
                "bs": job.bs_bytes.to_string(),
                "iodepth": job.iodepth.to_string(),
                "size": region_bytes.to_string(),
            },
            "read": read,
            "write": write,
            "sync": {
                "total_ios": self.sync_ops,
                "lat_ns": {"mean": self.sync_lat_mean_ns, "N": self.sync_ops},
            },
            // Not a fio field: the backend's CPU per request (`--cpu-of`).
            "cpu_us_per_op": self.cpu_us_per_op,
            // Not fio fields either: the disk under the backends (`--disk`).
            "disk_write_bytes_per_s": self.disk_write_bytes_per_s,
            "disk_util_pct": self.disk_util_pct,
            "disk_write_bytes_avg": self.disk_write_bytes_avg,
            "disk_queue_avg": self.disk_queue_avg,
            // Nor this: cowstored's write stages (`--stages-of`).
            "stages": self.stages,
        })
    }

    /// Two lines like fio's normal output (three with flushes).
    pub fn text(&self, write: bool) -> String {
        let mut text = format!(
            "{}: (target={}, round={})\n  {}: IOPS={}, BW={:.1}MiB/s ({} ios/{}msec)\n    lat (usec): avg={:.1}, p50={:.1}, p99={:.1}",
            self.job,
            self.target,
            self.round,
            if write { "write" } else { "read" },
            kilo(self.iops),
            self.bw_bytes / MIB,
            self.ops,
            self.runtime_ms,
            self.lat_mean_ns / 1e3,
            self.lat_p50_ns / 1e3,
            self.lat_p99_ns / 1e3,
        );
        if self.sync_ops > 0 {
            text.push_str(&format!(
                "\n  sync: {} flushes, lat (usec): avg={:.1}",
                self.sync_ops,
                self.sync_lat_mean_ns / 1e3
            ));
        }
        text
    }
}

const MIB: f64 = (1u64 << 20) as f64;

fn kilo(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.1}k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

/// The fio-style JSON document of a whole run.
pub fn fio_document(tool: &str, jobs: Vec<Value>) -> Value {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({"fio version": tool, "timestamp": timestamp, "jobs": jobs})
}

pub fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// Medians over rounds of one (target, job).
#[derive(Clone, Copy, Debug)]
pub struct Medians {
    pub rounds: usize,
    pub iops: f64,
    pub bw_bytes: f64,
    pub lat_p50_ns: f64,
    pub lat_p99_ns: f64,
}

pub fn medians(samples: &[Sample], target: &str, job: &str) -> Option<Medians> {
    let s: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.target == target && s.job == job)
        .collect();
    let m = |f: fn(&Sample) -> f64| median(s.iter().map(|x| f(x)).collect());
    Some(Medians {
        rounds: s.len(),
        iops: m(|x| x.iops)?,
        bw_bytes: m(|x| x.bw_bytes)?,
        lat_p50_ns: m(|x| x.lat_p50_ns)?,
        lat_p99_ns: m(|x| x.lat_p99_ns)?,
    })
}

/// The median of `figure` over `target`'s runs of `job` that have it.
fn median_of(
    samples: &[Sample],
    target: &str,
    job: &str,
    figure: impl Fn(&Sample) -> Option<f64>,
) -> Option<f64> {
    median(
        samples
            .iter()
            .filter(|s| s.target == target && s.job == job)
            .filter_map(figure)
            .collect(),
    )
}

/// Median CPU per request of each target that has it, as a markdown table
/// with a column per target; `None` when no sample has a CPU figure.
///
/// The figure is the target process's user + system time over a whole run
/// (ramp included) divided by the requests it completed in that time (the
/// measured IOPS times the run's length): what one request costs the
/// backend. Kernel threads working for it (the page cache's writeback
/// flusher) are not counted; io_uring's workers are (they are threads of
/// the process).
pub fn cpu_table(samples: &[Sample], targets: &[String], jobs: &[Job]) -> Option<String> {
    let with_cpu: Vec<&String> = targets
        .iter()
        .filter(|t| {
            samples
                .iter()
                .any(|s| &s.target == *t && s.cpu_us_per_op.is_some())
        })
        .collect();
    if with_cpu.is_empty() {
        return None;
    }
    let mut out = String::from(
        "CPU per request, µs (medians; the target process's user + system time \
         over each run, ramp included, per request completed):\n\n| job |",
    );
    for t in &with_cpu {
        let _ = write!(out, " {t} |");
    }
    out.push_str("\n|---|");
    for _ in &with_cpu {
        out.push_str("---:|");
    }
    out.push('\n');
    for job in jobs {
        let name = job.name();
        let _ = write!(out, "| {name} |");
        for t in &with_cpu {
            match median_of(samples, t, &name, |s| s.cpu_us_per_op) {
                Some(us) => {
                    let _ = write!(out, " {us:.1} |");
                }
                None => out.push_str(" n/a |"),
            }
        }
        out.push('\n');
    }
    Some(out)
}

/// The disk under the backends during each target's runs (medians): MiB/s
/// written, utilisation, and for write jobs the bytes written to the disk
/// per byte the client wrote; `None` when no sample has disk figures.
///
/// The disk figures cover the whole run (ramp included) and everything
/// written to that disk meanwhile: the backend's data, its metadata and
/// journal, and whatever else the machine wrote (it is shared).
pub fn disk_table(samples: &[Sample], targets: &[String], jobs: &[Job]) -> Option<String> {
    if samples.iter().all(|s| s.disk_util_pct.is_none()) {
        return None;
    }
    let mut out = String::from(
        "Disk under the backends (medians over each target's runs, ramp \
         included): MiB/s written, % of the time busy, for writes the \
         bytes written to the disk per byte the client wrote, the mean \
         size of the disk's writes and the mean requests it had in flight:\n\n\
         | job | target | disk MiB/s | disk busy % | disk bytes per byte written | disk write KiB | disk queue |\n\
         |---|---|---:|---:|---:|---:|---:|\n",
    );
    for job in jobs {
        let name = job.name();
        for t in targets {
            let m = |f: fn(&Sample) -> Option<f64>| median_of(samples, t, &name, f);
            let (Some(mib), Some(util)) = (
                m(|s| s.disk_write_bytes_per_s.map(|b| b / MIB)),
                m(|s| s.disk_util_pct),
            ) else {
                continue;
            };
            let (per_byte, write_kib) = if job.rw.is_write() {
                let per_byte = m(|s| {
                    let disk = s.disk_write_bytes_per_s?;
                    (s.bw_bytes > 0.0).then(|| disk / s.bw_bytes)
                })
                .map_or_else(na, |r| format!("{r:.2}"));
                let write_kib = m(|s| s.disk_write_bytes_avg.map(|b| b / 1024.0))
                    .map_or_else(na, |k| format!("{k:.0}"));
                (per_byte, write_kib)
            } else {
                ("-".to_string(), "-".to_string())
            };
            let queue = m(|s| s.disk_queue_avg).map_or_else(na, |q| format!("{q:.1}"));
            let _ = writeln!(
                out,
                "| {name} | {t} | {mib:.0} | {util:.0} | {per_byte} | {write_kib} | {queue} |"
            );
        }
    }
    Some(out)
}

/// A table cell for a figure no run had.
fn na() -> String {
    "n/a".to_string()
}

/// Medians of cowstored's write stages for the write jobs of targets that
/// have them (`--stages-of`); `None` when no run has them.
pub fn stages_table(samples: &[Sample], targets: &[String], jobs: &[Job]) -> Option<String> {
    if samples.iter().all(|s| s.stages.is_none()) {
        return None;
    }
    let mut out = String::from(
        "Where cowstored's write time went (its control socket's write_stages, \
         medians over each target's runs, ramp included): the rate its writes' \
         data became records (the copy out of guest memory and the checksums, \
         on the queue worker), that time per request, and its direct appends' \
         mean latency (submission to completion) and size:\n\n\
         | job | target | encode GB/s | encode µs per request | append µs | append KiB |\n\
         |---|---|---:|---:|---:|---:|\n",
    );
    let fmt = |x: Option<f64>, digits: usize| x.map_or_else(na, |x| format!("{x:.digits$}"));
    for job in jobs.iter().filter(|j| j.rw.is_write()) {
        let name = job.name();
        for t in targets {
            let m = |f: fn(&StageUse) -> Option<f64>| {
                median_of(samples, t, &name, |s| s.stages.as_ref().and_then(f))
            };
            let Some(per_request) = m(|u| Some(u.encode_us_per_request)) else {
                continue;
            };
            let _ = writeln!(
                out,
                "| {name} | {t} | {} | {per_request:.1} | {} | {} |",
                fmt(m(|u| u.encode_gb_per_s), 1),
                fmt(m(|u| u.append_us), 0),
                fmt(m(|u| u.append_bytes_avg.map(|b| b / 1024.0)), 0),
            );
        }
    }
    Some(out)
}

/// A ratio column: `ours` IOPS over `peer` IOPS, labelled like "our/qcow2".
#[derive(Clone, Debug)]
pub struct Ratio {
    pub label: String,
    pub ours: String,
    pub peer: String,
}

impl std::str::FromStr for Ratio {
    type Err = anyhow::Error;
    /// `LABEL=OURS/PEER`, e.g. `our/qcow2=cowstored/qsd-qcow2`.
    fn from_str(s: &str) -> Result<Ratio> {
        let (label, pair) = s
            .split_once('=')
            .with_context(|| format!("ratio {s:?}: want LABEL=OURS/PEER"))?;
        let (ours, peer) = pair
            .split_once('/')
            .with_context(|| format!("ratio {s:?}: want LABEL=OURS/PEER"))?;
        Ok(Ratio {
            label: label.into(),
            ours: ours.into(),
            peer: peer.into(),
        })
    }
}

/// Markdown: every figure (medians), then the IOPS ratios. `latency` says
/// what the latency columns measure.
pub fn table(
    samples: &[Sample],
    targets: &[String],
    jobs: &[Job],
    ratios: &[Ratio],
    latency: &str,
) -> String {
    let mut out = String::new();
    let rounds = samples.iter().map(|s| s.round).max().unwrap_or(0);
    let _ = writeln!(out, "Medians over {rounds} round(s); latency: {latency}.\n");
    let _ = writeln!(out, "| job | target | IOPS | MiB/s | p50 µs | p99 µs |");
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|");
    for job in jobs {
        let name = job.name();
        for t in targets {
            match medians(samples, t, &name) {
                Some(m) => {
                    let _ = writeln!(
                        out,
                        "| {name} | {t} | {:.0} | {:.1} | {:.0} | {:.0} |",
                        m.iops,
                        m.bw_bytes / MIB,
                        m.lat_p50_ns / 1e3,
                        m.lat_p99_ns / 1e3
                    );
                }
                None => {
                    let _ = writeln!(out, "| {name} | {t} | n/a | n/a | n/a | n/a |");
                }
            }
        }
    }
    if ratios.is_empty() {
        return out;
    }
    ratio_table(
        &mut out,
        "Ratios of median IOPS (same for MiB/s; above 1.00: ours is faster):",
        jobs,
        ratios,
        |r, job| match (
            medians(samples, &r.ours, job),
            medians(samples, &r.peer, job),
        ) {
            (Some(a), Some(b)) if b.iops > 0.0 => format!("{:.2}", a.iops / b.iops),
            _ => "n/a".into(),
        },
    );
    ratio_table(
        &mut out,
        "Paired ratios: the median of each round's ratio, and their range (the two \
         targets of a round ran seconds apart, so drift of the machine between rounds \
         cancels):",
        jobs,
        ratios,
        |r, job| match paired_ratios(samples, &r.ours, &r.peer, job) {
            Some((mid, lo, hi)) => format!("{mid:.2} ({lo:.2}-{hi:.2})"),
            None => "n/a".into(),
        },
    );
    out
}

/// Appends a markdown table under `title`: a row per job, a column per
/// ratio, each cell from `cell(ratio, job name)`.
fn ratio_table(
    out: &mut String,
    title: &str,
    jobs: &[Job],
    ratios: &[Ratio],
    cell: impl Fn(&Ratio, &str) -> String,
) {
    let _ = write!(out, "\n{title}\n\n| job |");
    for r in ratios {
        let _ = write!(out, " {} |", r.label);
    }
    out.push_str("\n|---|");
    for _ in ratios {
        out.push_str("---:|");
    }
    out.push('\n');
    for job in jobs {
        let name = job.name();
        let _ = write!(out, "| {name} |");
        for r in ratios {
            let _ = write!(out, " {} |", cell(r, &name));
        }
        out.push('\n');
    }
}

/// The ratio `ours` IOPS / `peer` IOPS of `job` in every round (and side)
/// where both ran: its median, lowest and highest; `None` if no round has
/// both.
pub fn paired_ratios(
    samples: &[Sample],
    ours: &str,
    peer: &str,
    job: &str,
) -> Option<(f64, f64, f64)> {
    let ratios: Vec<f64> = samples
        .iter()
        .filter(|a| a.target == ours && a.job == job)
        .filter_map(|a| {
            let b = samples.iter().find(|b| {
                b.target == peer && b.job == job && b.round == a.round && b.side == a.side
            })?;
            (b.iops > 0.0).then(|| a.iops / b.iops)
        })
        .collect();
    let lo = ratios.iter().copied().reduce(f64::min)?;
    let hi = ratios.iter().copied().reduce(f64::max)?;
    Some((median(ratios)?, lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(target: &str, round: u32, iops: f64) -> Sample {
        Sample {
            side: "host".into(),
            target: target.into(),
            job: "randread-4k-qd1".into(),
            round,
            iops,
            bw_bytes: iops * 4096.0,
            lat_mean_ns: 1e5,
            lat_p50_ns: 9e4,
            lat_p99_ns: 2e5,
            ops: 10,
            runtime_ms: 1000,
            cpu_us_per_op: None,
            disk_write_bytes_per_s: None,
            disk_util_pct: None,
            disk_write_bytes_avg: None,
            disk_queue_avg: None,
            stages: None,
            sync_ops: 0,
            sync_lat_mean_ns: 0.0,
        }
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        let s = vec![
            sample("a", 1, 100.0),
            sample("a", 2, 300.0),
            sample("a", 3, 200.0),
            sample("b", 1, 100.0),
        ];
        let jobs = super::super::jobs::parse_jobs("randread-4k-qd1").unwrap();
        let r: Ratio = "our/b=a/b".parse().unwrap();
        let t = table(
            &s,
            &["a".into(), "b".into(), "c".into()],
            &jobs,
            &[r],
            "submission to completion",
        );
        assert!(t.contains("| randread-4k-qd1 | a | 200 |"), "{t}");
        assert!(t.contains("| randread-4k-qd1 | c | n/a |"), "{t}");
        assert!(t.contains("| randread-4k-qd1 | 2.00 |"), "{t}");
        // Only round 1 has both: its ratio alone.
        assert!(t.contains("| randread-4k-qd1 | 1.00 (1.00-1.00) |"), "{t}");
        let mut s = s;
        s.push(sample("b", 2, 100.0));
        s.push(sample("b", 3, 400.0));
        assert_eq!(
            paired_ratios(&s, "a", "b", "randread-4k-qd1"),
            Some((1.0, 0.5, 3.0))
        );
        assert_eq!(paired_ratios(&s, "a", "c", "randread-4k-qd1"), None);
        assert!("nope".parse::<Ratio>().is_err());
    }

    #[test]
    fn cpu_table_has_medians_of_targets_with_cpu() {
        let jobs = super::super::jobs::parse_jobs("randread-4k-qd1").unwrap();
        let names = ["a".to_string(), "b".to_string()];
        let mut s = vec![sample("a", 1, 100.0), sample("b", 1, 100.0)];
        assert!(cpu_table(&s, &names, &jobs).is_none());
        for (round, us) in [(1, 30.0), (2, 10.0), (3, 20.0)] {
            let mut x = sample("a", round, 100.0);
            x.cpu_us_per_op = Some(us);
            s.push(x);
        }
        let t = cpu_table(&s, &names, &jobs).unwrap();
        assert!(t.contains("| job | a |"), "{t}");
        assert!(!t.contains(" b |"), "{t}");
        assert!(t.contains("| randread-4k-qd1 | 20.0 |"), "{t}");
    }

    #[test]
    fn disk_table_has_medians_and_bytes_per_byte_for_writes() {
        let names = ["a".to_string(), "b".to_string()];
        let reads = super::super::jobs::parse_jobs("randread-4k-qd1").unwrap();
        let mut s = vec![sample("a", 1, 100.0), sample("b", 1, 100.0)];
        assert!(disk_table(&s, &names, &reads).is_none());
        // a: 3 rounds, 100 IOPS of 4 KiB = 400 KiB/s from the client.
        for (round, kib_per_s, util) in [(1, 800.0, 50.0), (2, 400.0, 90.0), (3, 1200.0, 70.0)] {
            let mut x = sample("a", round, 100.0);
            x.disk_write_bytes_per_s = Some(kib_per_s * 1024.0);
            x.disk_util_pct = Some(util);
            x.disk_write_bytes_avg = Some(util * 1024.0);
            x.disk_queue_avg = Some(util / 10.0);
            s.push(x);
        }
        // Only the runs with disk figures count.
        s.remove(0);
        let t = disk_table(&s, &names, &reads).unwrap();
        assert!(
            t.contains("| randread-4k-qd1 | a | 1 | 70 | - | - | 7.0 |"),
            "{t}"
        );
        assert!(!t.contains("| b |"), "{t}");
        let mut writes = super::super::jobs::parse_jobs("randwrite-4k-qd1").unwrap();
        for x in &mut s {
            x.job = writes[0].name();
        }
        let t = disk_table(&s, &names, &writes).unwrap();
        assert!(
            t.contains("| randwrite-4k-qd1 | a | 1 | 70 | 2.00 | 70 | 7.0 |"),
            "{t}"
        );
        writes.clear();
        assert!(!disk_table(&s, &names, &writes).unwrap().contains("| a |"));
    }

    #[test]
    fn stages_table_has_medians_of_write_jobs() {
        let names = ["a".to_string(), "b".to_string()];
        let writes = super::super::jobs::parse_jobs("randwrite-4k-qd1").unwrap();
        let mut s = vec![sample("b", 1, 100.0)];
        assert!(stages_table(&s, &names, &writes).is_none());
        for (round, gb_per_s, append_us) in [(1, 3.0, 300.0), (2, 30.0, 250.0), (3, 10.0, 280.0)] {
            let mut x = sample("a", round, 100.0);
            x.job = writes[0].name();
            x.stages = Some(StageUse {
                encode_gb_per_s: Some(gb_per_s),
                encode_us_per_request: gb_per_s,
                append_us: Some(append_us),
                append_bytes_avg: Some(4096.0),
            });
            s.push(x);
        }
        let t = stages_table(&s, &names, &writes).unwrap();
        assert!(
            t.contains("| randwrite-4k-qd1 | a | 10.0 | 10.0 | 280 | 4 |"),
            "{t}"
        );
        assert!(!t.contains("| b |"), "{t}");
        // Read jobs have no write stages to show.
        let reads = super::super::jobs::parse_jobs("randread-4k-qd1").unwrap();
        assert!(!stages_table(&s, &names, &reads).unwrap().contains("| a |"));
    }

    #[test]
    fn reads_fio_json() {
        let j = json!({
            "jobname": "randwrite-4k-qd32",
            "read": {"io_bytes": 0, "iops": 0.0, "bw_bytes": 0},
            "write": {"io_bytes": 4096000, "iops": 1000.5, "bw_bytes": 4098048, "runtime": 1000,
                      "total_ios": 1000, "lat_ns": {"mean": 31000.0},
                      "clat_ns": {"percentile": {"50.000000": 30000, "99.000000": 90000}}}
        });
        let s = Sample::from_fio_job("guest", "t", 1, &j).unwrap();
        assert_eq!(s.job, "randwrite-4k-qd32");
        assert_eq!(s.iops, 1000.5);
        assert_eq!(s.lat_p99_ns, 90000.0);
        assert!(Sample::from_fio_job("guest", "t", 1, &json!({"jobname": "x"})).is_err());
        // Our own document reads back the same way.
        let job = &super::super::jobs::parse_jobs("randwrite-4k-qd32").unwrap()[0];
        let back = Sample::from_fio_job("host", "t", 1, &s.fio_json(job, 1 << 30)).unwrap();
        assert_eq!(back.iops, s.iops);
        assert_eq!(back.lat_p50_ns, s.lat_p50_ns);
    }
}
