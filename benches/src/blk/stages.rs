//! Where cowstored's write time went during a run, from its control
//! socket's `write_stages` (`{"op":"stats"}`, docs/operations.md): how
//! fast its writes' data became records (the copy out of guest memory, the
//! zero check and the checksums, on the queue worker) and how long its
//! direct appends took (submission to completion: the disk).
//!
//! Why: a 128 KiB write job at depth is bound either by the disk or by
//! that copy, and on the benchmark machine the copy's rate swings tenfold
//! from minute to minute (docs/performance.md, "Where a large write's
//! time goes"). Beside the IOPS these two figures say which bound a run.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
/// The engine's own types: the control socket reports them field by field.
pub use cowstore::{StageTotals, WriteStages as Stages};

/// The stages over one run.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StageUse {
    /// Data bytes encoded per second of encoding, GB/s (10^9).
    pub encode_gb_per_s: Option<f64>,
    /// Encoding time per request the client completed, µs.
    pub encode_us_per_request: f64,
    /// Mean direct append latency, µs, and size, bytes; `None` without one.
    pub append_us: Option<f64>,
    pub append_bytes_avg: Option<f64>,
}

/// Answers wait at most this long: a daemon that stopped answering costs
/// the run its figures, not the bench its progress.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the stages from the control socket at `control`.
pub fn read(control: &Path) -> Result<Stages> {
    let mut stream = UnixStream::connect(control)
        .with_context(|| format!("connecting to {}", control.display()))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(b"{\"op\":\"stats\"}\n")?;
    let mut line = String::new();
    // Bounded: a stats answer is a few KiB per export.
    BufReader::new(stream.take(1 << 20)).read_line(&mut line)?;
    parse_stats(&line).with_context(|| format!("stats from {}", control.display()))
}

/// The stages in one `{"op":"stats"}` answer.
pub fn parse_stats(answer: &str) -> Result<Stages> {
    let v: serde_json::Value = serde_json::from_str(answer).context("not JSON")?;
    if v["ok"] != serde_json::Value::Bool(true) {
        bail!("refused: {answer}");
    }
    let stages = &v["store"]["write_stages"];
    let stage = |name: &str| -> Result<StageTotals> {
        let field = |f: &str| {
            stages[name][f]
                .as_u64()
                .with_context(|| format!("no store.write_stages.{name}.{f}"))
        };
        Ok(StageTotals {
            ops: field("ops")?,
            bytes: field("bytes")?,
            ns: field("ns")?,
        })
    };
    Ok(Stages {
        encode: stage("encode")?,
        direct_append: stage("direct_append")?,
    })
}

/// What the stages did between two readings, over a run that completed
/// `requests`; `None` if a counter went backwards (the daemon restarted)
/// or no request completed.
pub fn stage_use(before: Stages, after: Stages, requests: u64) -> Option<StageUse> {
    let diff = |b: StageTotals, a: StageTotals| -> Option<StageTotals> {
        Some(StageTotals {
            ops: a.ops.checked_sub(b.ops)?,
            bytes: a.bytes.checked_sub(b.bytes)?,
            ns: a.ns.checked_sub(b.ns)?,
        })
    };
    let encode = diff(before.encode, after.encode)?;
    let append = diff(before.direct_append, after.direct_append)?;
    if requests == 0 {
        return None;
    }
    Some(StageUse {
        // bytes per ns is GB/s.
        encode_gb_per_s: (encode.ns > 0).then(|| encode.bytes as f64 / encode.ns as f64),
        encode_us_per_request: encode.ns as f64 / 1e3 / requests as f64,
        append_us: (append.ops > 0).then(|| append.ns as f64 / 1e3 / append.ops as f64),
        append_bytes_avg: (append.ops > 0).then(|| append.bytes as f64 / append.ops as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = r#"{"ok":true,"stats":{},"store":{"disk_bytes":1,
        "write_stages":{"encode":{"ops":10,"bytes":5242880,"ns":500000},
        "direct_append":{"ops":4,"bytes":2097152,"ns":1200000}}}}"#;

    #[test]
    fn parses_the_stats_answer() {
        let s = parse_stats(&ANSWER.replace('\n', "")).unwrap();
        assert_eq!(
            s.encode,
            StageTotals {
                ops: 10,
                bytes: 5 << 20,
                ns: 500_000
            }
        );
        assert_eq!(s.direct_append.ops, 4);
        assert!(parse_stats(r#"{"ok":false,"error":"x"}"#).is_err());
        assert!(parse_stats(r#"{"ok":true,"store":{}}"#).is_err());
        assert!(parse_stats("not json").is_err());
    }

    #[test]
    fn rates_from_two_readings() {
        let before = Stages::default();
        let after = parse_stats(&ANSWER.replace('\n', "")).unwrap();
        let u = stage_use(before, after, 40).unwrap();
        // 5 MiB in 0.5 ms: 10.5 GB/s; 500 µs over 40 requests.
        assert!(
            (u.encode_gb_per_s.unwrap() - 10.48576).abs() < 1e-9,
            "{u:?}"
        );
        assert!((u.encode_us_per_request - 12.5).abs() < 1e-9, "{u:?}");
        assert!((u.append_us.unwrap() - 300.0).abs() < 1e-9, "{u:?}");
        assert_eq!(u.append_bytes_avg, Some(524_288.0));
        // A restarted daemon, or a run without requests: no figures.
        assert_eq!(stage_use(after, before, 40), None);
        assert_eq!(stage_use(before, after, 0), None);
        // Reads only: no encode rate, no appends, nothing divided by zero.
        let idle = stage_use(before, before, 40).unwrap();
        assert_eq!((idle.encode_gb_per_s, idle.append_us), (None, None));
        assert_eq!(idle.encode_us_per_request, 0.0);
    }
}
