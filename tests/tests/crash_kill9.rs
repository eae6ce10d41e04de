//! Kill -9 crash test: runs `crash-victim` on one store for a random short
//! time, kills it with SIGKILL, reopens the store here and checks it against
//! a model of the victim's deterministic workload, then restarts the victim
//! where the recovered store left off. About ten rounds.
//!
//! Per volume and round, with F the last op the victim reported flushed:
//! - the recovered volume equals the model after some op count m with
//!   F <= m <= (the next flush point; no later op was ever issued): every
//!   flushed write is there with its exact bytes, nothing written after a
//!   lost record survived (prefix semantics), and no multi-record write is
//!   torn (each op is applied whole or not at all);
//! - the snapshots that exist are exactly those the model has after those m
//!   ops (taken, not yet deleted), and each reads back, block for block,
//!   what the model held when it was taken;
//! - the victim never failed on its own (it errors out on any engine error).
//!
//! `COWSTORE_CRASH_SEED` replays a run's kill timings; the seed is printed,
//! and so is the store directory, which is kept when the test fails.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cowstore::Store;
use cowstore_e2e::crash::{self, Op, FLUSH_EVERY, VOLUMES, VOLUME_BLOCKS};
use futures::executor::block_on;

const ROUNDS: usize = 10;
const MIN_RUN_MS: u64 = 200;
const MAX_RUN_MS: u64 = 1500;

/// Contents of a volume or snapshot: per block, the op whose write it holds.
type Blocks = Vec<Option<u64>>;

/// What the test knows a volume holds after its first `done` ops.
#[derive(Clone, Debug)]
struct Model {
    /// The victim created the volume (a first run may die before that).
    created: bool,
    done: u64,
    blocks: Blocks,
    /// Live snapshots by the op that took them, with their contents.
    snapshots: BTreeMap<u64, Blocks>,
}

impl Model {
    fn new() -> Self {
        Model {
            created: false,
            done: 0,
            blocks: vec![None; VOLUME_BLOCKS as usize],
            snapshots: BTreeMap::new(),
        }
    }

    /// Applies op `done + 1`.
    fn step(&mut self, volume: usize) {
        let n = self.done + 1;
        let op = crash::op(volume, n);
        for (block, holds) in crash::block_effects(&op, n) {
            self.blocks[block as usize] = holds;
        }
        match op {
            Op::Write { .. }
            | Op::WriteRange { .. }
            | Op::Discard { .. }
            | Op::Zero { .. }
            | Op::Gc => {}
            Op::Snapshot => {
                self.snapshots.insert(n, self.blocks.clone());
            }
            Op::DeleteSnapshot { taken_at } => {
                assert!(
                    self.snapshots.remove(&taken_at).is_some(),
                    "model bug: op {n} deletes snapshot {taken_at} it does not have"
                );
            }
        }
        self.done = n;
    }
}

/// xorshift64*: kill timings only, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    }
}

#[test]
fn kill9_rounds_keep_flushed_prefix() {
    let seed = std::env::var("COWSTORE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    let mut rng = Rng(seed);
    // Kept on failure for inspection; removed at the end of a passing run.
    let tmp = tempfile::Builder::new()
        .prefix("cowstore-crash-kill9")
        .tempdir()
        .expect("temp dir")
        .keep();
    let store_dir = tmp.join("store");
    eprintln!(
        "crash_kill9: COWSTORE_CRASH_SEED={seed}, store {}",
        store_dir.display()
    );
    let mut models = vec![Model::new(); VOLUMES.len()];
    let started = Instant::now();
    let mut flushed_total = 0u64;

    for round in 0..ROUNDS {
        let run_for = Duration::from_millis(MIN_RUN_MS + rng.below(MAX_RUN_MS - MIN_RUN_MS + 1));
        let starts: Vec<u64> = models.iter().map(|m| m.done + 1).collect();
        let flushed = run_victim(&tmp, &store_dir, round, &starts, run_for);
        for (v, f) in flushed.iter().enumerate() {
            if let Some(f) = f {
                flushed_total += f + 1 - starts[v];
            }
        }
        let t = Instant::now();
        let held = verify(&store_dir, &mut models, &flushed, round);
        eprintln!(
            "round {round}: ran {run_for:?}, flushed through {flushed:?}, recovered ops {held:?}, \
             verified in {:?}",
            t.elapsed()
        );
    }
    eprintln!(
        "crash_kill9: {ROUNDS} rounds in {:?}, {flushed_total} ops flushed",
        started.elapsed()
    );
    assert!(
        flushed_total >= 2 * FLUSH_EVERY,
        "the victim hardly made progress ({flushed_total} ops flushed in {ROUNDS} rounds)"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Runs the victim for `run_for`, kills it with SIGKILL and returns, per
/// volume, the last op it reported flushed this run.
fn run_victim(
    tmp: &Path,
    store_dir: &Path,
    round: usize,
    starts: &[u64],
    run_for: Duration,
) -> Vec<Option<u64>> {
    let stderr_path = tmp.join(format!("victim-{round}.stderr"));
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash-victim"))
        .arg(store_dir)
        .args(starts.iter().map(u64::to_string))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn crash-victim");
    let stdout = child.stdout.take().expect("victim stdout");
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map(|l| l.expect("victim stdout is text"))
            .collect::<Vec<String>>()
    });
    let deadline = Instant::now() + run_for;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "round {round}: crash-victim exited on its own ({status}) before being killed; \
                 stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("SIGKILL crash-victim");
    let status = child.wait().expect("wait for crash-victim");
    let lines = reader.join().expect("stdout reader");
    assert_eq!(
        status.signal(),
        Some(9),
        "round {round}: crash-victim ended with {status}, not by our SIGKILL; stderr:\n{}",
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );

    let mut flushed: Vec<Option<u64>> = vec![None; VOLUMES.len()];
    for line in &lines {
        let parsed = line.strip_prefix("FLUSHED ").and_then(|rest| {
            let (v, n) = rest.split_once(' ')?;
            Some((v.parse::<usize>().ok()?, n.parse::<u64>().ok()?))
        });
        let Some((v, n)) = parsed.filter(|&(v, _)| v < VOLUMES.len()) else {
            panic!("round {round}: unexpected victim output {line:?}");
        };
        let expected =
            flushed[v].map_or(starts[v].next_multiple_of(FLUSH_EVERY), |f| f + FLUSH_EVERY);
        assert_eq!(
            n, expected,
            "round {round}: volume {v} flush reports out of order"
        );
        flushed[v] = Some(n);
    }
    flushed
}

/// Opens the store the victim left, checks every volume and snapshot against
/// the models, advances the models to what the store holds, and returns the
/// op count each volume was recovered at.
fn verify(
    store_dir: &Path,
    models: &mut [Model],
    flushed: &[Option<u64>],
    round: usize,
) -> Vec<u64> {
    if !store_dir.join("catalog").exists() {
        assert!(
            flushed.iter().all(Option::is_none),
            "round {round}: no store, yet the victim reported flushes"
        );
        return models.iter().map(|m| m.done).collect();
    }
    let store = Store::open(store_dir, crash::store_config())
        .unwrap_or_else(|e| panic!("round {round}: reopening the store after SIGKILL: {e}"));
    if round == 0 {
        eprintln!("crash_kill9: segment I/O backend {}", store.io_backend());
    }
    // Segment files the victim's cleaner freed and its log did not take
    // back yet (the log reuses them: crash::store_config).
    eprintln!(
        "crash_kill9: round {round}: {} pooled segment files",
        store.pooled_segments()
    );
    let all_snapshots = store.snapshots();
    let mut held = Vec::new();
    for (v, model) in models.iter_mut().enumerate() {
        let name = VOLUMES[v];
        let volume = match store.volume(name) {
            Ok(vol) => vol,
            Err(cowstore::Error::VolumeNotFound(_)) => {
                assert!(
                    !model.created && flushed[v].is_none(),
                    "round {round}: volume {name} is gone after recovery"
                );
                held.push(model.done);
                continue;
            }
            Err(e) => panic!("round {round}: opening volume {name}: {e}"),
        };
        model.created = true;
        assert_eq!(volume.size_bytes(), crash::VOLUME_BYTES, "{name} size");
        let bytes = block_on(volume.read(0, crash::VOLUME_BYTES))
            .unwrap_or_else(|e| panic!("round {round}: reading {name}: {e}"));
        let actual = decode_all(v, &bytes).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let mut actual_snaps = Vec::new();
        for s in all_snapshots.iter().filter(|s| s.volume_id == volume.id()) {
            let taken_at = crash::parse_snapshot_name(v, &s.name).unwrap_or_else(|| {
                panic!("round {round}: unexpected snapshot {:?} of {name}", s.name)
            });
            actual_snaps.push(taken_at);
        }
        actual_snaps.sort_unstable();

        // Ops up to `flushed` are durable; none past `issued` were started.
        let floor = flushed[v].unwrap_or(0).max(model.done);
        let issued = (floor / FLUSH_EVERY + 1) * FLUSH_EVERY;
        let mut sim = model.clone();
        let mut candidates = Vec::new();
        let mut trace = Vec::new();
        loop {
            if sim.done >= floor {
                if sim.blocks == actual && sim.snapshots.keys().eq(actual_snaps.iter()) {
                    candidates.push(sim.clone());
                }
                trace.push(sim.clone());
            }
            if sim.done == issued {
                break;
            }
            sim.step(v);
        }
        // Any matching m is the same state; the largest lets the victim
        // continue without redoing ops.
        let Some(found) = candidates.pop() else {
            panic!(
                "round {round}: {name} matches the model after no op count in {floor}..={issued} \
                 (last flushed {:?}, previous recovery at {}):\n{}",
                flushed[v],
                model.done,
                explain(&trace, &actual, &actual_snaps)
            );
        };
        *model = found;
        for (&taken_at, expected) in &model.snapshots {
            let snap_name = crash::snapshot_name(v, taken_at);
            let snap = store
                .snapshot(&snap_name)
                .unwrap_or_else(|e| panic!("round {round}: opening {snap_name}: {e}"));
            assert_eq!(snap.size_bytes(), crash::VOLUME_BYTES, "{snap_name} size");
            let bytes = block_on(snap.read(0, crash::VOLUME_BYTES))
                .unwrap_or_else(|e| panic!("round {round}: reading {snap_name}: {e}"));
            let got = decode_all(v, &bytes)
                .unwrap_or_else(|e| panic!("round {round}: snapshot {snap_name}: {e}"));
            if let Some(b) = (0..got.len()).find(|&b| got[b] != expected[b]) {
                panic!(
                    "round {round}: snapshot {snap_name} block {b} holds {:?}, but when it was \
                     taken (after op {}) the volume held {:?}",
                    got[b],
                    taken_at - 1,
                    expected[b]
                );
            }
        }
        held.push(model.done);
    }
    if round % 2 == 0 {
        store
            .close()
            .unwrap_or_else(|e| panic!("round {round}: closing the store: {e}"));
    } else {
        // Leave it as a crash would: the victim's open replays again.
        store.abandon();
    }
    held
}

fn decode_all(v: usize, bytes: &[u8]) -> Result<Blocks, String> {
    bytes
        .chunks(crash::BLOCK_BYTES as usize)
        .enumerate()
        .map(|(b, chunk)| crash::decode_block(v, b as u64, chunk))
        .collect()
}

/// Says which blocks and snapshots rule out every candidate op count.
fn explain(trace: &[Model], actual: &Blocks, actual_snaps: &[u64]) -> String {
    let mut out = String::new();
    let Some(first) = trace.first() else {
        return "no candidate op counts".into();
    };
    let mut shown = 0;
    for (b, got) in actual.iter().enumerate() {
        let possible: Vec<Option<u64>> = trace.iter().map(|m| m.blocks[b]).collect();
        if !possible.contains(got) {
            shown += 1;
            if shown > 20 {
                out += "  (more blocks differ)\n";
                break;
            }
            let settled = possible.iter().all(|p| *p == possible[0]);
            out += &format!(
                "  block {b}: holds {got:?}; {} {:?}\n",
                if settled {
                    "flushed ops say it must hold"
                } else {
                    "the candidates allow only"
                },
                if settled {
                    possible[..1].to_vec()
                } else {
                    possible
                }
            );
        }
    }
    // Blocks alone: which op counts would fit if snapshots were ignored.
    let data_fits: Vec<&Model> = trace.iter().filter(|m| &m.blocks == actual).collect();
    out += &format!(
        "  op counts whose block contents match: {:?}\n",
        data_fits.iter().map(|m| m.done).collect::<Vec<_>>()
    );
    out += &format!(
        "  snapshots present (by op taken at): {actual_snaps:?}; the model has {:?} after op {} \
         and {:?} after op {}\n",
        first.snapshots.keys().collect::<Vec<_>>(),
        first.done,
        trace[trace.len() - 1].snapshots.keys().collect::<Vec<_>>(),
        trace[trace.len() - 1].done,
    );
    for m in data_fits {
        let missing: Vec<u64> = m
            .snapshots
            .keys()
            .copied()
            .filter(|s| !actual_snaps.contains(s))
            .collect();
        let extra: Vec<u64> = actual_snaps
            .iter()
            .copied()
            .filter(|s| !m.snapshots.contains_key(s))
            .collect();
        if !missing.is_empty() {
            out += &format!(
                "  after op {} (which the data matches) snapshots {missing:?} must exist: their \
                 create_snapshot returned, yet they are gone while later ops survived{}\n",
                m.done,
                if extra.is_empty() {
                    String::new()
                } else {
                    format!("; and {extra:?} should not exist")
                }
            );
        } else if !extra.is_empty() {
            out += &format!(
                "  after op {} (which the data matches) snapshots {extra:?} should not exist\n",
                m.done
            );
        }
    }
    out
}
