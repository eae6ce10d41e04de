//! The daemon's state and its control socket.
//!
//! Protocol: a Unix stream socket; each request is one line of JSON, each
//! answer one line of JSON, in order. Every answer has `"ok": true|false`;
//! a failed one carries `"error": "..."`. See docs/operations.md for the
//! commands. Requests longer than [`MAX_REQUEST_BYTES`] are refused.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::export::{Export, StatsReport, Target};
use crate::server::Served;

/// Longest control request line.
pub const MAX_REQUEST_BYTES: u64 = 64 << 10;
/// Longest a barrier may hold I/O before it resumes by itself.
pub const MAX_PAUSE: Duration = Duration::from_secs(600);
/// Pause timeout when the request names none.
pub const DEFAULT_PAUSE: Duration = Duration::from_secs(30);

/// A control request.
#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Serve volume (or, with `snapshot: true`, the snapshot) `name` on `socket`.
    Attach {
        name: String,
        socket: PathBuf,
        #[serde(default)]
        snapshot: bool,
        #[serde(default)]
        queues: Option<u16>,
    },
    /// Stop serving `name` (drops a connected frontend).
    Detach { name: String },
    /// Exports, their sockets and whether a frontend is connected.
    List,
    /// Counters of one export, or of all.
    Stats {
        #[serde(default)]
        name: Option<String>,
    },
    /// Creates a volume in the store.
    CreateVolume { name: String, size_bytes: u64 },
    /// The snapshot barrier, step 1: pause new I/O on the named exports (all
    /// volumes when absent), drain what is in flight, flush, report the cut.
    /// Resumes by itself after `timeout_ms`.
    Pause {
        #[serde(default)]
        names: Option<Vec<String>>,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Takes snapshot `name` of `volume` (normally between pause and resume).
    Snapshot { volume: String, name: String },
    /// The snapshot barrier, last step: let I/O flow again.
    Resume { barrier: u64 },
    /// Takes several snapshots at once, in parallel (each volume has its own
    /// log and flush), all or none: when one fails, those made are deleted.
    /// The group snapshot manager's commit step.
    SnapshotMany { snapshots: Vec<SnapshotItem> },
    /// Deletes snapshot `name` (a group snapshot manager undoing a member).
    DeleteSnapshot { name: String },
    /// Makes volume `name` from `snapshot`, sharing its data.
    CloneSnapshot { snapshot: String, name: String },
    /// Changed ranges between two snapshots of one volume (or a snapshot and
    /// the volume).
    /// Runs the segment cleaner on the served store (online: volumes keep
    /// serving; the engine relocates live records under its own locks).
    Gc,
    /// With `summary: true` only the totals come back (answers stay small).
    Diff {
        from: String,
        to: String,
        #[serde(default)]
        summary: bool,
    },
}

/// One snapshot of a [`Command::SnapshotMany`].
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotItem {
    pub volume: String,
    pub name: String,
}

/// Most snapshots one `snapshot_many` takes (one thread each).
pub const MAX_SNAPSHOTS_PER_REQUEST: usize = 64;

struct Barrier {
    id: u64,
    names: Vec<String>,
    /// When the gates closed: resume reports how long guests were held.
    paused_at: Instant,
}

/// Everything cowstored serves, over one store.
pub struct Daemon {
    pub store: Arc<cowstore::Store>,
    exports: Mutex<BTreeMap<String, Served>>,
    barrier: Mutex<Option<Barrier>>,
    next_barrier: Mutex<u64>,
    default_queues: u16,
    /// Applied to exports attached from then on.
    poll_after_write: Mutex<std::time::Duration>,
    cleaner: Mutex<Option<crate::cleaner::Cleaner>>,
}

/// A failed control request.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("{0:?} is already attached")]
    AlreadyAttached(String),
    #[error("{0:?} is not attached")]
    NotAttached(String),
    #[error("a barrier ({0}) is already active")]
    BarrierActive(u64),
    #[error("no active barrier with id {0}")]
    NoSuchBarrier(u64),
    #[error("in-flight I/O on {0:?} did not drain in time")]
    DrainTimeout(String),
    #[error(transparent)]
    Engine(#[from] cowstore::Error),
    #[error(transparent)]
    Serve(#[from] crate::server::ServeError),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Daemon {
    pub fn new(store: cowstore::Store, default_queues: u16) -> Arc<Daemon> {
        Arc::new(Daemon {
            store: Arc::new(store),
            exports: Mutex::new(BTreeMap::new()),
            barrier: Mutex::new(None),
            next_barrier: Mutex::new(1),
            default_queues: default_queues.max(1),
            poll_after_write: Mutex::new(crate::export::DEFAULT_POLL_AFTER_WRITE),
            cleaner: Mutex::new(None),
        })
    }

    /// How long queue workers of exports attached from now on poll their
    /// ring after a pass that wrote (capped at
    /// [`crate::export::MAX_POLL_AFTER_WRITE`]; zero turns polling off).
    pub fn set_poll_after_write(&self, poll: std::time::Duration) {
        *self.poll_after_write.lock() = poll.min(crate::export::MAX_POLL_AFTER_WRITE);
    }

    /// Starts the background segment cleaner (see [`crate::cleaner`]).
    pub fn start_cleaner(
        self: &Arc<Self>,
        policy: crate::cleaner::CleanerPolicy,
    ) -> std::io::Result<()> {
        // Weak: the cleaner thread must not keep the daemon alive.
        let daemon = Arc::downgrade(self);
        let may_run =
            Box::new(move || daemon.upgrade().is_some_and(|d| d.barrier.lock().is_none()));
        let cleaner =
            crate::cleaner::Cleaner::start(self.store.clone(), self.store.root(), policy, may_run)?;
        *self.cleaner.lock() = cleaner;
        Ok(())
    }

    pub fn attach(
        &self,
        name: &str,
        socket: &Path,
        snapshot: bool,
        queues: Option<u16>,
    ) -> Result<Value, ControlError> {
        let mut exports = self.exports.lock();
        if exports.contains_key(name) {
            return Err(ControlError::AlreadyAttached(name.to_string()));
        }
        let target = if snapshot {
            Target::Snapshot(self.store.snapshot(name)?)
        } else {
            Target::Volume(self.store.volume(name)?)
        };
        let queues = queues.unwrap_or(self.default_queues).clamp(1, 16);
        let mut export = Export::new(target, queues);
        export.poll_after_write = *self.poll_after_write.lock();
        let export = Arc::new(export);
        let served = Served::start(export, socket)?;
        exports.insert(name.to_string(), served);
        Ok(json!({"name": name, "socket": socket, "read_only": snapshot, "queues": queues}))
    }

    pub fn detach(&self, name: &str) -> Result<Value, ControlError> {
        let served = self
            .exports
            .lock()
            .remove(name)
            .ok_or_else(|| ControlError::NotAttached(name.to_string()))?;
        let export = served.export.clone();
        served.stop();
        futures::executor::block_on(export.target.flush())?;
        info!(export = name, "detached");
        Ok(json!({"name": name}))
    }

    fn list(&self) -> Value {
        let exports = self.exports.lock();
        let list: Vec<Value> = exports
            .iter()
            .map(|(name, s)| {
                json!({
                    "name": name,
                    "socket": s.socket,
                    "read_only": s.export.target.read_only(),
                    "size_bytes": s.export.target.size_bytes(),
                    "queues": s.export.num_queues,
                    "connected": s.connected(),
                    "paused": s.export.gate.is_paused(),
                })
            })
            .collect();
        json!({ "exports": list, "store": self.store.root() })
    }

    pub fn stats(&self, name: Option<&str>) -> Result<BTreeMap<String, StatsReport>, ControlError> {
        let exports = self.exports.lock();
        match name {
            Some(n) => {
                let s = exports
                    .get(n)
                    .ok_or_else(|| ControlError::NotAttached(n.to_string()))?;
                Ok(BTreeMap::from([(n.to_string(), s.export.stats.snapshot())]))
            }
            None => Ok(exports
                .iter()
                .map(|(k, s)| (k.clone(), s.export.stats.snapshot()))
                .collect()),
        }
    }

    /// Pause, drain, flush, report the cut; schedules the auto-resume.
    pub fn pause(
        self: &Arc<Self>,
        names: Option<Vec<String>>,
        timeout: Duration,
    ) -> Result<Value, ControlError> {
        let timeout = timeout.min(MAX_PAUSE);
        let mut barrier = self.barrier.lock();
        if let Some(b) = barrier.as_ref() {
            return Err(ControlError::BarrierActive(b.id));
        }
        let targets: Vec<(String, Arc<Export>)> = {
            let exports = self.exports.lock();
            match &names {
                Some(list) => list
                    .iter()
                    .map(|n| {
                        exports
                            .get(n)
                            .map(|s| (n.clone(), s.export.clone()))
                            .ok_or_else(|| ControlError::NotAttached(n.clone()))
                    })
                    .collect::<Result<_, _>>()?,
                None => exports
                    .iter()
                    .filter(|(_, s)| !s.export.target.read_only())
                    .map(|(n, s)| (n.clone(), s.export.clone()))
                    .collect(),
            }
        };
        let started = Instant::now();
        for (_, e) in &targets {
            e.gate.close();
        }
        let deadline = started + timeout;
        let reopen = |targets: &[(String, Arc<Export>)]| {
            for (_, e) in targets {
                e.gate.open();
            }
        };
        for (n, e) in &targets {
            if !e.gate.drain(deadline) {
                reopen(&targets);
                return Err(ControlError::DrainTimeout(n.clone()));
            }
        }
        let drained_us = started.elapsed().as_micros();
        let mut cut = Vec::new();
        for (n, e) in &targets {
            if let Err(err) = futures::executor::block_on(e.target.flush()) {
                reopen(&targets);
                return Err(err.into());
            }
            let s = e.stats.snapshot();
            cut.push(json!({
                "name": n,
                "writes": s.writes,
                "bytes_written": s.bytes_written,
                "discards": s.discards,
                "write_zeroes": s.write_zeroes,
                "flushes": s.flushes,
                "in_flight": s.in_flight,
            }));
        }
        let id = {
            let mut next = self.next_barrier.lock();
            let id = *next;
            *next += 1;
            id
        };
        *barrier = Some(Barrier {
            id,
            names: targets.iter().map(|(n, _)| n.clone()).collect(),
            paused_at: started,
        });
        drop(barrier);
        let me = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name(format!("barrier-{id}"))
            .spawn(move || {
                std::thread::sleep(timeout);
                if let Some(d) = me.upgrade() {
                    if d.resume(id).is_ok() {
                        warn!(barrier = id, "barrier timed out: I/O resumed automatically");
                    }
                }
            });
        if let Err(e) = spawned {
            let _ = self.resume(id);
            return Err(ControlError::BadRequest(format!(
                "cannot start the auto-resume timer: {e}"
            )));
        }
        info!(
            barrier = id,
            exports = targets.len(),
            drained_us,
            "barrier: paused"
        );
        Ok(json!({
            "barrier": id,
            "paused_at_unix_ms": now_ms(),
            "drain_us": drained_us,
            "auto_resume_ms": u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            "cut": cut,
        }))
    }

    pub fn resume(&self, id: u64) -> Result<Value, ControlError> {
        let mut barrier = self.barrier.lock();
        match barrier.as_ref() {
            Some(b) if b.id == id => {}
            _ => return Err(ControlError::NoSuchBarrier(id)),
        }
        let b = barrier.take().ok_or(ControlError::NoSuchBarrier(id))?;
        let exports = self.exports.lock();
        for n in &b.names {
            if let Some(s) = exports.get(n) {
                s.export.gate.open();
            }
        }
        let paused_us = u64::try_from(b.paused_at.elapsed().as_micros()).unwrap_or(u64::MAX);
        info!(barrier = id, paused_us, "barrier: resumed");
        Ok(json!({"barrier": id, "paused_us": paused_us}))
    }

    fn snapshot_many(&self, items: &[SnapshotItem]) -> Result<Value, ControlError> {
        if items.len() > MAX_SNAPSHOTS_PER_REQUEST {
            return Err(ControlError::BadRequest(format!(
                "{} snapshots in one request (at most {MAX_SNAPSHOTS_PER_REQUEST})",
                items.len()
            )));
        }
        let results: Vec<cowstore::Result<cowstore::SnapshotInfo>> = std::thread::scope(|s| {
            let handles: Vec<_> = items
                .iter()
                .map(|it| s.spawn(|| self.store.create_snapshot(&it.volume, &it.name)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(cowstore::Error::Config("snapshot thread panicked".into()))
                    })
                })
                .collect()
        });
        if let Some(pos) = results.iter().position(Result::is_err) {
            for (it, r) in items.iter().zip(&results) {
                if r.is_ok() {
                    if let Err(e) = self.store.delete_snapshot(&it.name) {
                        warn!(snapshot = %it.name, error = %e, "undoing a snapshot failed");
                    }
                }
            }
            let mut results = results;
            return Err(results.swap_remove(pos).err().map_or_else(
                || ControlError::BadRequest("snapshot failed".into()),
                ControlError::Engine,
            ));
        }
        let made: Vec<Value> = results
            .into_iter()
            .flatten()
            .map(|info| json!({"name": info.name, "size_bytes": info.size_bytes}))
            .collect();
        Ok(json!({ "snapshots": made }))
    }

    /// Executes one request.
    pub fn handle(self: &Arc<Self>, cmd: Command) -> Result<Value, ControlError> {
        match cmd {
            Command::Attach {
                name,
                socket,
                snapshot,
                queues,
            } => self.attach(&name, &socket, snapshot, queues),
            Command::Detach { name } => self.detach(&name),
            Command::List => Ok(self.list()),
            Command::Stats { name } => {
                let (checkpoints_written, checkpoints_skipped) = self.store.checkpoints();
                let stages = self.store.write_stages();
                let stage =
                    |t: cowstore::StageTotals| json!({"ops": t.ops, "bytes": t.bytes, "ns": t.ns});
                Ok(json!({
                    "stats": self.stats(name.as_deref())?,
                    "cleaner": self.cleaner.lock().as_ref().map(|c| c.stats()),
                    // How the log's appends go out: with O_DIRECT (the rest is
                    // buffered: new files before the pool has any) and, of
                    // those, from registered buffers (0 when RLIMIT_MEMLOCK
                    // refused every slot; operations.md).
                    "store": {
                        "disk_bytes": self.store.disk_bytes(),
                        "direct_append_bytes": self.store.direct_append_bytes(),
                        "fixed_buffer_append_bytes": self.store.fixed_buffer_append_bytes(),
                        // Volume checkpoints written, and skipped because the
                        // volume had not changed since its last one.
                        "checkpoints_written": checkpoints_written,
                        "checkpoints_skipped": checkpoints_skipped,
                        // Where writes' time went: turning their data into
                        // records (copy and checksums, on the queue worker)
                        // and their direct appends (the disk); rates come
                        // from two readings (operations.md, "Control socket").
                        "write_stages": {
                            "encode": stage(stages.encode),
                            "direct_append": stage(stages.direct_append),
                        },
                    },
                }))
            }
            Command::CreateVolume { name, size_bytes } => {
                self.store.create_volume(&name, size_bytes)?;
                Ok(json!({"name": name, "size_bytes": size_bytes}))
            }
            Command::Pause { names, timeout_ms } => self.pause(
                names,
                timeout_ms
                    .map(Duration::from_millis)
                    .unwrap_or(DEFAULT_PAUSE),
            ),
            Command::Snapshot { volume, name } => {
                let info = self.store.create_snapshot(&volume, &name)?;
                Ok(json!({"volume": volume, "name": info.name, "size_bytes": info.size_bytes}))
            }
            Command::Resume { barrier } => self.resume(barrier),
            Command::SnapshotMany { snapshots } => self.snapshot_many(&snapshots),
            Command::Gc => {
                let before = self.store.disk_bytes();
                let r = self.store.gc()?;
                info!(
                    segments_deleted = r.segments_deleted,
                    segments_cleaned = r.segments_cleaned,
                    bytes_freed = r.bytes_freed,
                    "gc"
                );
                Ok(json!({
                    "disk_bytes_before": before,
                    "disk_bytes_after": self.store.disk_bytes(),
                    "segments_examined": r.segments_examined,
                    "segments_deleted": r.segments_deleted,
                    "segments_cleaned": r.segments_cleaned,
                    "bytes_relocated": r.bytes_relocated,
                    "bytes_freed": r.bytes_freed,
                    "segments_pooled": r.segments_pooled,
                    "segments_deferred": r.segments_deferred,
                    "pooled_segments": self.store.pooled_segments(),
                    "corrupt": r.corrupt,
                }))
            }
            Command::DeleteSnapshot { name } => {
                self.store.delete_snapshot(&name)?;
                Ok(json!({"name": name}))
            }
            Command::CloneSnapshot { snapshot, name } => {
                let vol = self.store.clone_snapshot(&snapshot, &name)?;
                Ok(json!({"name": name, "snapshot": snapshot, "size_bytes": vol.size_bytes()}))
            }
            Command::Diff { from, to, summary } => {
                let ranges = self.store.diff(&from, &to)?;
                let changed_bytes: u64 = ranges.iter().map(|r| r.len_bytes).sum();
                let mut answer = json!({"from": from, "to": to, "changed_bytes": changed_bytes,
                                        "range_count": ranges.len()});
                if !summary {
                    answer["ranges"] = json!(ranges);
                }
                Ok(answer)
            }
        }
    }

    /// Answers one request line.
    pub fn handle_line(self: &Arc<Self>, line: &str) -> Value {
        let result = serde_json::from_str::<Command>(line)
            .map_err(|e| ControlError::BadRequest(e.to_string()))
            .and_then(|cmd| self.handle(cmd));
        match result {
            Ok(Value::Object(mut m)) => {
                m.insert("ok".into(), Value::Bool(true));
                Value::Object(m)
            }
            Ok(other) => json!({"ok": true, "result": other}),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        }
    }

    /// Stops every export and flushes every volume.
    pub fn stop_all(&self) {
        // First, so no pass runs while exports flush and the store closes.
        if let Some(mut cleaner) = self.cleaner.lock().take() {
            cleaner.stop();
        }
        let exports = std::mem::take(&mut *self.exports.lock());
        for (name, served) in exports {
            let export = served.export.clone();
            served.stop();
            if let Err(e) = futures::executor::block_on(export.target.flush()) {
                warn!(export = %name, error = %e, "flush at shutdown failed");
            }
        }
    }

    /// Serves the control socket on a background thread.
    pub fn serve_control(self: &Arc<Self>, path: &Path) -> std::io::Result<()> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        // Weak: the control threads must not keep the daemon (and so the
        // store) alive at shutdown.
        let me = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    match conn {
                        Ok(stream) => {
                            let d = me.clone();
                            let _ = std::thread::Builder::new()
                                .name("control-client".into())
                                .spawn(move || Daemon::serve_client(d, stream));
                        }
                        Err(e) => warn!(error = %e, "control accept failed"),
                    }
                }
            })?;
        Ok(())
    }

    fn serve_client(me: std::sync::Weak<Self>, stream: UnixStream) {
        let Ok(mut out) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(stream);
        loop {
            let mut line = String::new();
            let n = match (&mut reader).take(MAX_REQUEST_BYTES).read_line(&mut line) {
                Ok(n) => n,
                Err(e) => {
                    let _ = writeln!(out, "{}", json!({"ok": false, "error": e.to_string()}));
                    return;
                }
            };
            if n == 0 {
                return;
            }
            if !line.ends_with('\n') && n as u64 >= MAX_REQUEST_BYTES {
                let _ = writeln!(out, "{}", json!({"ok": false, "error": "request too long"}));
                return;
            }
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let Some(daemon) = me.upgrade() else {
                let _ = writeln!(out, "{}", json!({"ok": false, "error": "shutting down"}));
                return;
            };
            let answer = daemon.handle_line(line);
            drop(daemon);
            if writeln!(out, "{answer}").is_err() {
                return;
            }
        }
    }
}

/// A client for the control socket (used by tests and tools).
pub struct ControlClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl ControlClient {
    pub fn connect(path: &Path) -> std::io::Result<ControlClient> {
        let s = UnixStream::connect(path)?;
        Ok(ControlClient {
            writer: s.try_clone()?,
            reader: BufReader::new(s),
        })
    }

    /// Sends one request, returns the answer.
    pub fn call(&mut self, request: &Value) -> std::io::Result<Value> {
        writeln!(self.writer, "{request}")?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        serde_json::from_str(&line).map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daemon() -> (tempfile::TempDir, Arc<Daemon>) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            cowstore::Store::open_or_create(dir.path().join("s"), cowstore::StoreConfig::default())
                .unwrap();
        store.create_volume("v", 1 << 20).unwrap();
        (dir, Daemon::new(store, 1))
    }

    #[test]
    fn gc_frees_overwritten_segments_while_serving() {
        let dir = tempfile::tempdir().unwrap();
        let config = cowstore::StoreConfig {
            segment_bytes: 1 << 20,
            ..cowstore::StoreConfig::default()
        };
        let store = cowstore::Store::open_or_create(dir.path().join("s"), config).unwrap();
        store.create_volume("v", 1 << 20).unwrap();
        let d = Daemon::new(store, 1);
        let sock = dir.path().join("v.sock");
        let a = d.handle_line(&json!({"op": "attach", "name": "v", "socket": sock}).to_string());
        assert_eq!(a["ok"], json!(true), "{a}");
        // Overwrite the whole 1 MiB volume with incompressible data many
        // times: only the last copy is live, the rest is garbage in sealed
        // segments.
        let vol = d.store.volume("v").unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut data: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for round in 0..16u8 {
            data[0] = round;
            futures::executor::block_on(vol.write(0, &data)).unwrap();
        }
        futures::executor::block_on(vol.flush()).unwrap();
        let g = d.handle_line(r#"{"op":"gc"}"#);
        assert_eq!(g["ok"], json!(true), "{g}");
        let before = g["disk_bytes_before"].as_u64().unwrap();
        let after = g["disk_bytes_after"].as_u64().unwrap();
        assert!(after < before / 2, "gc freed too little: {g}");
        let back = futures::executor::block_on(vol.read(0, 1 << 20)).unwrap();
        assert!(back == data, "the live copy changed");
    }

    #[test]
    fn barrier_pause_cut_resume_and_auto_resume() {
        let (dir, d) = daemon();
        let sock = dir.path().join("v.sock");
        let a = d.handle_line(&json!({"op": "attach", "name": "v", "socket": sock}).to_string());
        assert_eq!(a["ok"], json!(true), "{a}");
        let p = d.handle_line(r#"{"op":"pause","timeout_ms":60000}"#);
        assert_eq!(p["ok"], json!(true), "{p}");
        assert_eq!(p["cut"][0]["name"], json!("v"));
        let id = p["barrier"].as_u64().unwrap();
        let again = d.handle_line(r#"{"op":"pause"}"#);
        assert_eq!(again["ok"], json!(false));
        let list = d.handle_line(r#"{"op":"list"}"#);
        assert_eq!(list["exports"][0]["paused"], json!(true), "{list}");
        let s = d.handle_line(r#"{"op":"snapshot","volume":"v","name":"v@cut"}"#);
        assert_eq!(s["ok"], json!(true), "{s}");
        let r = d.handle_line(&json!({"op": "resume", "barrier": id}).to_string());
        assert_eq!(r["ok"], json!(true), "{r}");
        let list = d.handle_line(r#"{"op":"list"}"#);
        assert_eq!(list["exports"][0]["paused"], json!(false));

        // Nobody resumes: the timer does.
        let p = d.handle_line(r#"{"op":"pause","names":["v"],"timeout_ms":100}"#);
        let id = p["barrier"].as_u64().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let list = d.handle_line(r#"{"op":"list"}"#);
        assert_eq!(list["exports"][0]["paused"], json!(false), "{list}");
        let r = d.handle_line(&json!({"op": "resume", "barrier": id}).to_string());
        assert_eq!(r["ok"], json!(false));

        let st = d.handle_line(r#"{"op":"stats","name":"v"}"#);
        assert_eq!(st["stats"]["v"]["writes"], json!(0), "{st}");
        assert!(st["store"]["disk_bytes"].as_u64().is_some(), "{st}");
        assert!(
            st["store"]["direct_append_bytes"].as_u64().is_some(),
            "{st}"
        );
        assert!(
            st["store"]["fixed_buffer_append_bytes"].as_u64().is_some(),
            "{st}"
        );
        for stage in ["encode", "direct_append"] {
            for field in ["ops", "bytes", "ns"] {
                let v = &st["store"]["write_stages"][stage][field];
                assert!(v.as_u64().is_some(), "{stage}.{field}: {st}");
            }
        }
        let det = d.handle_line(r#"{"op":"detach","name":"v"}"#);
        assert_eq!(det["ok"], json!(true), "{det}");
        assert!(!sock.exists());
    }

    #[test]
    fn bad_requests_are_answered_not_fatal() {
        let (_dir, d) = daemon();
        for line in [
            "not json",
            r#"{"op":"nope"}"#,
            r#"{"op":"detach","name":"missing"}"#,
            r#"{"op":"attach","name":"missing","socket":"/nonexistent/x.sock"}"#,
            r#"{"op":"resume","barrier":7}"#,
            r#"{"op":"pause","names":["missing"]}"#,
        ] {
            let a = d.handle_line(line);
            assert_eq!(a["ok"], json!(false), "{line} -> {a}");
            assert!(a["error"].is_string());
        }
    }
}
