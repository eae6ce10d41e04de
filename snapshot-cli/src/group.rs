//! The snapshot manager: crash-consistent group snapshots across volumes
//! served by several cowstored daemons (and volumes no one serves).
//!
//! Protocol, per group:
//! 1. intent: `groups/.pending-NAME.json` lists every member snapshot about
//!    to be made, so a manager that dies mid-way leaves nothing behind that
//!    the next run cannot find and remove;
//! 2. prepare: every daemon pauses new I/O on its members and drains and
//!    flushes what is in flight (in parallel); each resumes by itself when
//!    the timeout passes, whatever happens to us;
//! 3. commit: every member snapshot is taken (O(1) each);
//! 4. resume: every daemon lets I/O flow. A daemon whose barrier already
//!    timed out answers "no such barrier": the cut was not held, the group
//!    aborts;
//! 5. the manifest `groups/NAME.json` is written (rename of the intent): the
//!    group exists from this moment.
//!
//! Any failure before 5 resumes every daemon, deletes the member snapshots
//! already made, and names the member that failed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cli::SnapshotCreateArgs;
use crate::config;
use crate::daemon::{DaemonClient, DaemonError};
use crate::failure;
use crate::output::{self, Output};
use crate::store;

const GROUPS_DIR: &str = "groups";
const PENDING_PREFIX: &str = ".pending-";
/// Members per group: bounds the manifest and the barrier's fan-out.
const MAX_MEMBERS: usize = 256;
/// Longest barrier timeout accepted (the daemons cap theirs at 600 s too).
const MAX_TIMEOUT_MS: u64 = 600_000;
/// Manifests are small; a larger file is not one of ours.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// One volume of a group. A member is known by its store (a directory); the
/// daemon that served it when the group was taken is remembered, and used
/// again when it still answers; otherwise later commands (show, rm,
/// restore) open the store directly.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Member {
    pub volume: String,
    pub store: PathBuf,
    #[serde(default)]
    pub daemon: Option<PathBuf>,
    pub snapshot: String,
    #[serde(default)]
    pub size_bytes: u64,
}

impl Member {
    fn place(&self) -> String {
        match &self.daemon {
            Some(d) => format!("{} (cowstored {})", self.store.display(), d.display()),
            None => self.store.display().to_string(),
        }
    }
}

/// How long one daemon held its guests' I/O.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pause {
    /// The store whose daemon paused.
    pub store: PathBuf,
    pub volumes: usize,
    /// Gate closed to gate open, as the daemon measured it.
    pub paused_us: u64,
    /// Pause request sent to resume answered, as the manager measured it
    /// (an upper bound of what the guests saw).
    pub window_us: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupManifest {
    pub name: String,
    pub created_unix_s: u64,
    pub members: Vec<Member>,
    #[serde(default)]
    pub pauses: Vec<Pause>,
}

/// `VOLUME` (in the manager's store, not served) or
/// `VOLUME:CONTROL_SOCKET` (served by that cowstored).
fn parse_member(spec: &str) -> Result<(String, Option<PathBuf>)> {
    match spec.split_once(':') {
        None => Ok((spec.to_string(), None)),
        Some((vol, sock)) if !vol.is_empty() && !sock.is_empty() => {
            Ok((vol.to_string(), Some(PathBuf::from(sock))))
        }
        _ => Err(failure::usage(format!(
            "member {spec:?}: expected VOLUME or VOLUME:CONTROL_SOCKET"
        ))),
    }
}

fn check_group_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(failure::usage(format!(
            "group name {name:?}: use 1-64 of A-Z a-z 0-9 . _ - (not starting with . or -)"
        )))
    }
}

fn groups_dir(flag: Option<&Path>) -> Result<PathBuf> {
    Ok(config::find_store(flag)?.join(GROUPS_DIR))
}

fn manifest_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

fn pending_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{PENDING_PREFIX}{name}.json"))
}

fn read_manifest(path: &Path) -> Result<GroupManifest> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > MAX_MANIFEST_BYTES {
        return Err(failure::integrity(format!(
            "{}: {len} bytes is too large for a group manifest",
            path.display()
        )));
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| failure::integrity(format!("group manifest {}: {e}", path.display())))
}

/// Writes `path` so that a crash leaves the old or the new file, never half.
fn write_atomic(path: &Path, value: &impl Serialize) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec_pretty(value).context("encoding a group manifest")?;
    {
        use std::io::Write;
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&text)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

/// The manifest of group `name`: the committed one, else the intent a
/// manager left when it died mid-barrier (so `rm` can clean it up).
fn find_manifest(dir: &Path, name: &str) -> Option<PathBuf> {
    [manifest_path(dir, name), pending_path(dir, name)]
        .into_iter()
        .find(|p| p.exists())
}

pub fn exists(flag: Option<&Path>, name: &str) -> Result<bool> {
    if check_group_name(name).is_err() {
        return Ok(false);
    }
    Ok(find_manifest(&groups_dir(flag)?, name).is_some())
}

fn load(flag: Option<&Path>, name: &str) -> Result<(PathBuf, GroupManifest)> {
    let dir = groups_dir(flag)?;
    let path = find_manifest(&dir, name)
        .ok_or_else(|| failure::not_found(format!("no group snapshot named {name:?}")))?;
    let m = read_manifest(&path)?;
    Ok((path, m))
}

pub fn list_manifests(flag: Option<&Path>) -> Result<Vec<GroupManifest>> {
    let dir = groups_dir(flag)?;
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if file.starts_with('.') || !file.ends_with(".json") {
            continue;
        }
        out.push(read_manifest(&path)?);
    }
    out.sort_by(|a, b| (a.created_unix_s, &a.name).cmp(&(b.created_unix_s, &b.name)));
    Ok(out)
}

/// How the manager reaches one store: through the daemon serving it, or by
/// opening it (nobody serves it).
enum Access {
    Daemon(DaemonClient),
    Store(cowstore::Store),
}

/// Every store a group touches, each reached once.
struct Places {
    stores: BTreeMap<PathBuf, Access>,
}

impl Places {
    /// Reaches each member's store. With `need_daemon`, a member recorded
    /// with a daemon must be reached through it (the barrier needs it);
    /// otherwise an unreachable daemon falls back to opening the store.
    fn open(members: &[Member], timeout: Duration, need_daemon: bool) -> Result<Places> {
        let mut stores = BTreeMap::new();
        for m in members {
            if stores.contains_key(&m.store) {
                continue;
            }
            let via_daemon = match &m.daemon {
                Some(sock) => match DaemonClient::connect(sock, timeout) {
                    Ok(c) => Some(c),
                    Err(e) if need_daemon => {
                        return Err(failure::aborted(format!(
                            "member {}: cannot reach its daemon: {e}",
                            m.volume
                        )))
                    }
                    Err(_) => None,
                },
                None => None,
            };
            let access = match via_daemon {
                Some(c) => Access::Daemon(c),
                None => Access::Store(
                    store::open(Some(&m.store))
                        .with_context(|| format!("member {}: opening its store", m.volume))?,
                ),
            };
            stores.insert(m.store.clone(), access);
        }
        Ok(Places { stores })
    }

    fn access(&mut self, m: &Member) -> Result<&mut Access> {
        self.stores
            .get_mut(&m.store)
            .ok_or_else(|| anyhow::anyhow!("store {} is not open", m.store.display()))
    }

    fn delete_snapshot(&mut self, m: &Member) -> Result<()> {
        match self.access(m)? {
            Access::Store(st) => match st.delete_snapshot(&m.snapshot) {
                Ok(()) | Err(cowstore::Error::SnapshotNotFound(_)) => Ok(()),
                Err(e) => Err(e.into()),
            },
            Access::Daemon(d) => {
                match d.call(&json!({"op": "delete_snapshot", "name": m.snapshot})) {
                    Ok(_) => Ok(()),
                    Err(DaemonError::Refused { error, .. }) if error.contains("not found") => {
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    fn clone_snapshot(&mut self, m: &Member, name: &str) -> Result<()> {
        match self.access(m)? {
            Access::Store(st) => {
                st.clone_snapshot(&m.snapshot, name)?;
            }
            Access::Daemon(d) => {
                d.call(&json!({"op": "clone_snapshot", "snapshot": m.snapshot, "name": name}))?;
            }
        }
        Ok(())
    }

    fn changed_bytes(&mut self, m: &Member, from: &str) -> Result<u64> {
        match self.access(m)? {
            Access::Store(st) => Ok(st
                .diff(from, &m.snapshot)?
                .iter()
                .map(|r| r.len_bytes)
                .sum()),
            Access::Daemon(d) => {
                let v = d.call(
                    &json!({"op": "diff", "from": from, "to": m.snapshot, "summary": true}),
                )?;
                v.get("changed_bytes")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| anyhow::anyhow!("diff answer without changed_bytes"))
            }
        }
    }

    fn close(self) -> Result<()> {
        let mut first_err = None;
        for (_, access) in self.stores {
            if let Access::Store(st) = access {
                if let Err(e) = store::close(st) {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// The store directory a daemon serves (from its `list` answer).
fn daemon_store(sock: &Path, timeout: Duration) -> Result<PathBuf> {
    let mut client = DaemonClient::connect(sock, timeout)
        .map_err(|e| failure::aborted(format!("cannot reach a member's daemon: {e}")))?;
    let list = client.call(&json!({"op": "list"}))?;
    let dir = list.get("store").and_then(Value::as_str).ok_or_else(|| {
        anyhow::anyhow!(
            "cowstored {} does not say which store it serves",
            sock.display()
        )
    })?;
    Ok(std::fs::canonicalize(dir).unwrap_or_else(|_| PathBuf::from(dir)))
}

/// Fault injection for the end-to-end suites (tests/tests/qemu_group.rs):
/// `COWSNAP_FAILPOINT=abort-after-prepare` kills the manager right after
/// every daemon paused (a manager that dies mid-barrier);
/// `COWSNAP_FAILPOINT=sleep-after-prepare-ms=N` (or `sleep-before-prepare-ms=N`)
/// stalls it there, so a test can detach a volume or kill a daemon at that
/// exact step. Unset in production, where it costs one getenv per group.
fn failpoint(at: &str) {
    let Ok(spec) = std::env::var("COWSNAP_FAILPOINT") else {
        return;
    };
    if spec == format!("abort-{at}") {
        eprintln!("cowsnap: failpoint abort-{at}");
        std::process::abort();
    }
    if let Some(ms) = spec
        .strip_prefix(&format!("sleep-{at}-ms="))
        .and_then(|v| v.parse::<u64>().ok())
    {
        eprintln!("cowsnap: failpoint sleep-{at}: {ms} ms");
        std::thread::sleep(Duration::from_millis(ms.min(MAX_TIMEOUT_MS)));
    }
}

/// A barrier held on one daemon.
struct Held {
    barrier: u64,
    volumes: usize,
    sent: Instant,
}

pub fn create(flag: Option<&Path>, args: SnapshotCreateArgs, out: Output) -> Result<()> {
    let manifest = create_group(flag, args)?;
    report_created(&manifest, out);
    Ok(())
}

/// Takes group snapshot `args.group` (the whole protocol; see the module
/// docs) and returns its manifest.
pub fn create_group(flag: Option<&Path>, args: SnapshotCreateArgs) -> Result<GroupManifest> {
    let group = args.group.clone().unwrap_or_default();
    check_group_name(&group)?;
    if args.name.is_some() {
        return Err(failure::usage(
            "--name is for one snapshot; group members are named VOLUME@GROUP",
        ));
    }
    if args.volumes.len() > MAX_MEMBERS {
        return Err(failure::usage(format!(
            "{} members: a group holds at most {MAX_MEMBERS}",
            args.volumes.len()
        )));
    }
    if args.timeout_ms == 0 || args.timeout_ms > MAX_TIMEOUT_MS {
        return Err(failure::usage(format!(
            "--timeout-ms must be 1..={MAX_TIMEOUT_MS}"
        )));
    }
    let timeout = Duration::from_millis(args.timeout_ms);
    let own_store = config::find_store(flag)?;
    let own_store = std::fs::canonicalize(&own_store).unwrap_or(own_store);
    let mut daemon_stores: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    let mut members: Vec<Member> = Vec::with_capacity(args.volumes.len());
    for spec in &args.volumes {
        let (volume, daemon) = parse_member(spec)?;
        let store = match &daemon {
            None => own_store.clone(),
            Some(sock) => match daemon_stores.get(sock) {
                Some(dir) => dir.clone(),
                None => {
                    let dir =
                        daemon_store(sock, timeout).with_context(|| format!("member {spec}"))?;
                    daemon_stores.insert(sock.clone(), dir.clone());
                    dir
                }
            },
        };
        if let Some(other) = members
            .iter()
            .find(|m| m.volume == volume && m.store == store)
        {
            return Err(failure::usage(format!(
                "member {spec:?} is given twice (same volume and store as {:?})",
                other.place()
            )));
        }
        members.push(Member {
            snapshot: format!("{volume}@{group}"),
            volume,
            store,
            daemon,
            size_bytes: 0,
        });
    }
    if let Some(m) = members.iter().find(|m| {
        m.daemon.is_none()
            && members
                .iter()
                .any(|d| d.daemon.is_some() && d.store == m.store)
    }) {
        return Err(failure::usage(format!(
            "member {}: its store is served by a daemon; name it as {}:CONTROL_SOCKET",
            m.volume, m.volume
        )));
    }
    let dir = groups_dir(flag)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if manifest_path(&dir, &group).exists() || pending_path(&dir, &group).exists() {
        return Err(failure::conflict(format!(
            "a group snapshot named {group:?} already exists (or is being taken)"
        )));
    }
    let mut places = Places::open(&members, timeout, true)?;
    let mut manifest = GroupManifest {
        name: group.clone(),
        created_unix_s: output::now_unix_s(),
        members,
        pauses: Vec::new(),
    };
    write_atomic(&pending_path(&dir, &group), &manifest)?;

    let mut held: BTreeMap<PathBuf, Held> = BTreeMap::new();
    let mut made: Vec<usize> = Vec::new();
    let result = run_barrier(
        &mut places,
        &mut manifest,
        &mut held,
        &mut made,
        args.timeout_ms,
    );
    match result {
        Ok(()) => {
            write_atomic(&manifest_path(&dir, &group), &manifest)?;
            let _ = std::fs::remove_file(pending_path(&dir, &group));
            places.close()?;
            Ok(manifest)
        }
        Err((member, err)) => {
            // Guests first: every daemon resumes (one that already resumed
            // by itself answers "no such barrier", which is fine).
            for (store_dir, h) in &held {
                if let Some(Access::Daemon(d)) = places.stores.get_mut(store_dir) {
                    let _ = d.call(&json!({"op": "resume", "barrier": h.barrier}));
                }
            }
            let mut leftovers = Vec::new();
            for &i in &made {
                let m = manifest.members[i].clone();
                if let Err(e) = places.delete_snapshot(&m) {
                    leftovers.push(format!("{} on {}: {e:#}", m.snapshot, m.place()));
                }
            }
            if leftovers.is_empty() {
                let _ = std::fs::remove_file(pending_path(&dir, &group));
            }
            let _ = places.close();
            let mut msg =
                format!("group snapshot {group} aborted: {member}: {err:#}; every daemon resumed");
            if leftovers.is_empty() {
                msg += ", no member snapshot was kept";
            } else {
                msg += &format!(
                    "; could not remove {} (kept in {} for `cowsnap snapshot rm {group}`)",
                    leftovers.join(", "),
                    pending_path(&dir, &group).display()
                );
            }
            Err(failure::aborted(msg))
        }
    }
}

/// Prepare, commit, resume. On failure, names the member (or daemon) at
/// fault; `held` and `made` say what the caller must undo.
fn run_barrier(
    places: &mut Places,
    manifest: &mut GroupManifest,
    held: &mut BTreeMap<PathBuf, Held>,
    made: &mut Vec<usize>,
    timeout_ms: u64,
) -> std::result::Result<(), (String, anyhow::Error)> {
    // Which members each daemon serves right now: only those are paused
    // (the others take no I/O; their snapshot is all they need).
    let mut pause_names: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    for (store_dir, access) in places.stores.iter_mut() {
        let Access::Daemon(d) = access else { continue };
        let list = d
            .call(&json!({"op": "list"}))
            .map_err(|e| (format!("daemon of {}", store_dir.display()), e.into()))?;
        let served: Vec<String> = list
            .get("exports")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter(|e| e.get("read_only").and_then(Value::as_bool) != Some(true))
                    .filter_map(|e| e.get("name").and_then(Value::as_str).map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let names: Vec<String> = manifest
            .members
            .iter()
            .filter(|m| &m.store == store_dir && served.contains(&m.volume))
            .map(|m| m.volume.clone())
            .collect();
        if !names.is_empty() {
            pause_names.insert(store_dir.clone(), names);
        }
    }

    failpoint("before-prepare");
    // Prepare: every daemon at once, so the pauses overlap.
    let sent = Instant::now();
    let answers: Vec<(PathBuf, Result<Value, DaemonError>)> = std::thread::scope(|s| {
        let handles: Vec<_> = places
            .stores
            .iter_mut()
            .filter_map(|(store_dir, access)| {
                let Access::Daemon(client) = access else {
                    return None;
                };
                let names = pause_names.get(store_dir)?.clone();
                let req = json!({"op": "pause", "names": names, "timeout_ms": timeout_ms});
                Some((store_dir.clone(), s.spawn(move || client.call(&req))))
            })
            .collect();
        handles
            .into_iter()
            .map(|(dir, h)| {
                let r = h.join().unwrap_or_else(|_| {
                    Err(DaemonError::Closed {
                        socket: dir.clone(),
                    })
                });
                (dir, r)
            })
            .collect()
    });
    let mut first_err = None;
    for (store_dir, answer) in answers {
        let who = || format!("prepare on the daemon of {}", store_dir.display());
        match answer.map(|v| v.get("barrier").and_then(Value::as_u64)) {
            Ok(Some(barrier)) => {
                let volumes = pause_names.get(&store_dir).map_or(0, Vec::len);
                held.insert(
                    store_dir,
                    Held {
                        barrier,
                        volumes,
                        sent,
                    },
                );
            }
            Ok(None) => {
                first_err
                    .get_or_insert((who(), anyhow::anyhow!("pause answer without a barrier id")));
            }
            Err(e) => {
                first_err.get_or_insert((who(), e.into()));
            }
        }
    }
    if let Some(err) = first_err {
        return Err(err);
    }

    failpoint("after-prepare");
    // Commit: every member's snapshot, all stores at once (and inside a
    // store, all volumes at once: each has its own log to flush), so the
    // pause lasts one round of snapshots, not one per member.
    let mut by_store: BTreeMap<PathBuf, Vec<usize>> = BTreeMap::new();
    for (i, m) in manifest.members.iter().enumerate() {
        by_store.entry(m.store.clone()).or_default().push(i);
    }
    let members = &manifest.members;
    type Committed = std::result::Result<Vec<(usize, u64)>, (String, anyhow::Error)>;
    let outcomes: Vec<Committed> = std::thread::scope(|s| {
        let handles: Vec<_> = places
            .stores
            .iter_mut()
            .filter_map(|(dir, access)| {
                let idxs = by_store.get(dir)?.clone();
                Some(s.spawn(move || commit_store(access, members, &idxs)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err((
                        "commit".to_string(),
                        anyhow::anyhow!("commit thread panicked"),
                    ))
                })
            })
            .collect()
    });
    let mut first_err = None;
    for outcome in outcomes {
        match outcome {
            Ok(done) => {
                for (i, size) in done {
                    made.push(i);
                    manifest.members[i].size_bytes = size;
                }
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(err) = first_err {
        return Err(err);
    }

    // Resume: a barrier that is gone timed out while we committed.
    let dirs: Vec<PathBuf> = held.keys().cloned().collect();
    for store_dir in dirs {
        let Some(h) = held.get(&store_dir) else {
            continue;
        };
        let (barrier, volumes, sent) = (h.barrier, h.volumes, h.sent);
        let who = format!("resume on the daemon of {}", store_dir.display());
        let Some(Access::Daemon(d)) = places.stores.get_mut(&store_dir) else {
            return Err((who, anyhow::anyhow!("lost the daemon connection")));
        };
        let answer = d.call(&json!({"op": "resume", "barrier": barrier}));
        let window_us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        match answer {
            Ok(v) => {
                held.remove(&store_dir);
                manifest.pauses.push(Pause {
                    store: store_dir.clone(),
                    volumes,
                    paused_us: v
                        .get("paused_us")
                        .and_then(Value::as_u64)
                        .unwrap_or(window_us),
                    window_us,
                });
            }
            Err(e) => {
                return Err((
                    who,
                    anyhow::Error::from(e).context(format!(
                        "the barrier was not held until the commit ended (timeout {timeout_ms} ms)"
                    )),
                ))
            }
        }
    }
    Ok(())
}

/// Takes the snapshots of one store's members: one `snapshot_many` for a
/// daemon (all or none), parallel snapshots for a store opened here (those
/// made are kept and reported even when another fails, so the caller can
/// undo them).
fn commit_store(
    access: &mut Access,
    members: &[Member],
    idxs: &[usize],
) -> std::result::Result<Vec<(usize, u64)>, (String, anyhow::Error)> {
    let names = || {
        idxs.iter()
            .map(|&i| members[i].volume.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match access {
        Access::Daemon(d) => {
            let items: Vec<Value> = idxs
                .iter()
                .map(|&i| json!({"volume": members[i].volume, "name": members[i].snapshot}))
                .collect();
            let who = || {
                format!(
                    "members {} in {}",
                    names(),
                    idxs.first().map_or(String::new(), |&i| members[i].place())
                )
            };
            let v = d
                .call(&json!({"op": "snapshot_many", "snapshots": items}))
                .map_err(|e| (who(), e.into()))?;
            let made = v
                .get("snapshots")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    (
                        who(),
                        anyhow::anyhow!("snapshot_many answer without snapshots"),
                    )
                })?;
            Ok(idxs
                .iter()
                .zip(made)
                .map(|(&i, m)| (i, m.get("size_bytes").and_then(Value::as_u64).unwrap_or(0)))
                .collect())
        }
        Access::Store(st) => {
            let st: &cowstore::Store = st;
            let results: Vec<(usize, cowstore::Result<u64>)> = std::thread::scope(|s| {
                let handles: Vec<_> = idxs
                    .iter()
                    .map(|&i| {
                        let m = &members[i];
                        (
                            i,
                            s.spawn(move || {
                                st.create_snapshot(&m.volume, &m.snapshot)
                                    .map(|info| info.size_bytes)
                            }),
                        )
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|(i, h)| {
                        (
                            i,
                            h.join().unwrap_or_else(|_| {
                                Err(cowstore::Error::Config("snapshot thread panicked".into()))
                            }),
                        )
                    })
                    .collect()
            });
            let mut done = Vec::new();
            let mut failed = None;
            for (i, r) in results {
                match r {
                    Ok(size) => done.push((i, size)),
                    Err(e) => {
                        failed.get_or_insert((
                            format!("member {} in {}", members[i].volume, members[i].place()),
                            anyhow::Error::from(e),
                        ));
                    }
                }
            }
            match failed {
                None => Ok(done),
                Some(err) => {
                    // Undo what this store made; the caller only learns of
                    // the failure.
                    for (i, _) in done {
                        let _ = st.delete_snapshot(&members[i].snapshot);
                    }
                    Err(err)
                }
            }
        }
    }
}

fn report_created(m: &GroupManifest, out: Output) {
    out.emit(m, || {
        let mut s = format!(
            "created group snapshot {} ({} members)\n",
            m.name,
            m.members.len()
        );
        for mem in &m.members {
            s += &format!(
                "  {}  ({}, {})\n",
                mem.snapshot,
                mem.place(),
                output::bytes(mem.size_bytes)
            );
        }
        for p in &m.pauses {
            s += &format!(
                "  I/O paused for {:.1} ms on {} volumes of {} ({:.1} ms as seen by the manager)\n",
                p.paused_us as f64 / 1000.0,
                p.volumes,
                p.store.display(),
                p.window_us as f64 / 1000.0
            );
        }
        s
    });
}

pub fn show(flag: Option<&Path>, name: &str, out: Output) -> Result<()> {
    let all = list_manifests(flag)?;
    let (_, m) = load(flag, name)?;
    let mut places = Places::open(&m.members, Duration::from_secs(30), false)?;
    // Bytes changed since the previous group snapshot holding the same
    // volume of the same store.
    let mut rows = Vec::new();
    for mem in &m.members {
        let prev = all
            .iter()
            .filter(|g| (g.created_unix_s, &g.name) < (m.created_unix_s, &m.name))
            .filter_map(|g| {
                g.members
                    .iter()
                    .find(|x| x.volume == mem.volume && x.store == mem.store)
            })
            .next_back();
        let changed = match prev {
            Some(p) => Some(places.changed_bytes(mem, &p.snapshot)?),
            None => None,
        };
        rows.push(json!({
            "volume": mem.volume, "store": mem.store, "daemon": mem.daemon,
            "snapshot": mem.snapshot, "size_bytes": mem.size_bytes,
            "previous": prev.map(|p| p.snapshot.clone()),
            "changed_bytes_since_previous": changed,
        }));
    }
    places.close()?;
    out.emit(
        &json!({"name": m.name, "created": output::utc_time(m.created_unix_s),
                "members": rows, "pauses": m.pauses}),
        || {
            let mut s = format!(
                "group snapshot {}\n  created  {}\n  members  {}\n",
                m.name,
                output::utc_time(m.created_unix_s),
                m.members.len()
            );
            for r in &rows {
                let changed = match r["changed_bytes_since_previous"].as_u64() {
                    Some(b) => format!(
                        "{} changed since {}",
                        output::bytes(b),
                        r["previous"].as_str().unwrap_or("")
                    ),
                    None => "first group snapshot of this volume".into(),
                };
                s += &format!(
                    "    {}  {}  {}\n",
                    r["snapshot"].as_str().unwrap_or(""),
                    output::bytes(r["size_bytes"].as_u64().unwrap_or(0)),
                    changed
                );
            }
            for p in &m.pauses {
                s += &format!(
                    "  I/O paused for {:.1} ms on {} volumes of {}\n",
                    p.paused_us as f64 / 1000.0,
                    p.volumes,
                    p.store.display()
                );
            }
            s
        },
    );
    Ok(())
}

pub fn remove(flag: Option<&Path>, name: &str, out: Output) -> Result<()> {
    let members = remove_group(flag, name)?;
    out.emit(&json!({"removed": name, "members": members}), || {
        format!("removed group snapshot {name} and its {members} member snapshots")
    });
    Ok(())
}

/// Deletes every member snapshot of group `name`, then its manifest;
/// returns the member count.
pub fn remove_group(flag: Option<&Path>, name: &str) -> Result<usize> {
    let (path, m) = load(flag, name)?;
    let mut places = Places::open(&m.members, Duration::from_secs(30), false)?;
    for mem in &m.members {
        places
            .delete_snapshot(mem)
            .with_context(|| format!("removing member {} in {}", mem.snapshot, mem.place()))?;
    }
    places.close()?;
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok(m.members.len())
}

pub fn restore(flag: Option<&Path>, name: &str, suffix: Option<&str>, out: Output) -> Result<()> {
    let (path, m) = load(flag, name)?;
    if path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
    {
        return Err(failure::not_found(format!(
            "group snapshot {name:?} was never completed (remove it with `cowsnap snapshot rm {name}`)"
        )));
    }
    let suffix = suffix.map(String::from).unwrap_or_else(|| name.to_string());
    let mut places = Places::open(&m.members, Duration::from_secs(30), false)?;
    let mut made = Vec::new();
    for mem in &m.members {
        let target = format!("{}-{suffix}", mem.volume);
        if let Err(e) = places.clone_snapshot(mem, &target) {
            return Err(e.context(format!(
                "restoring {} in {} as {target} (made so far: {})",
                mem.snapshot,
                mem.place(),
                if made.is_empty() {
                    "none".to_string()
                } else {
                    made.join(", ")
                }
            )));
        }
        made.push(target);
    }
    places.close()?;
    out.emit(&json!({"group": name, "volumes": made}), || {
        format!(
            "restored group snapshot {name} as volumes {}",
            made.join(", ")
        )
    });
    Ok(())
}
