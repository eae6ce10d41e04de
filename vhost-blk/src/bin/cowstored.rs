//! cowstored: serves cowstore volumes over vhost-user-blk.
//!
//! ```text
//! cowstored --store DIR --control SOCK [--queues N] [--log-json] [--io auto|uring|blocking]
//!           [--drop-behind-bytes N|off] [--log-writers N] [--poll-after-write-us US]
//!           [--segment-pool-bytes N] [--buffered-appends]
//!           [--attach NAME=SOCKET]... [--attach-snapshot NAME=SOCKET]...
//!           [--create NAME=SIZE_BYTES]...
//!           [--gc-interval-ms MS] [--gc-growth-percent P]
//!           [--gc-min-growth-bytes N] [--gc-busy-growth-bytes N]
//!           [--gc-hunger-growth-bytes N] [--gc-pool-low-percent P]
//!           [--gc-low-free-percent P]
//! ```
//! The background cleaner (on unless `--gc-interval-ms 0`) runs a segment
//! cleaner pass when the store grew by P% (and at least N bytes) since the
//! last pass and the last interval was quiet (grew by at most the busy
//! bytes), or grew by four times that threshold, or when its file system
//! has less than P% free, or, when a volume found the segment pool empty
//! or the pool holds less than `--gc-pool-low-percent` (default 25) of its
//! capacity, a pass that only frees dead segments once the store grew by
//! the hunger bytes (default 1 GiB; 0: never). Segment files the cleaner frees are kept for
//! reuse up to `--segment-pool-bytes` (default 8 GiB; 0 deletes them);
//! aligned appends to reused files bypass the page cache (`O_DIRECT`)
//! unless `--buffered-appends`.
//! Runs until SIGTERM or SIGINT, then stops every export, flushes every
//! volume and closes the store. Logs go to stderr (`RUST_LOG` filters).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tracing::info;
use vhost_blk::cleaner::CleanerPolicy;
use vhost_blk::Daemon;

struct Args {
    store: PathBuf,
    control: PathBuf,
    queues: u16,
    log_json: bool,
    attach: Vec<(String, PathBuf, bool)>,
    create: Vec<(String, u64)>,
    cleaner: CleanerPolicy,
    io_backend: cowstore::IoBackendChoice,
    drop_behind_bytes: Option<u64>,
    log_writer_threads: usize,
    poll_after_write: std::time::Duration,
    segment_pool_bytes: u64,
    direct_appends: bool,
    checkpoint_interval_bytes: u64,
}

fn usage() -> &'static str {
    "usage: cowstored --store DIR --control SOCK [--queues N] [--log-json] [--io auto|uring|blocking] \
     [--drop-behind-bytes N|off] [--log-writers N] [--poll-after-write-us US] \
     [--segment-pool-bytes N] [--buffered-appends] [--checkpoint-interval-bytes N] [--create NAME=SIZE_BYTES]... [--attach NAME=SOCKET]... [--attach-snapshot NAME=SOCKET]... \
     [--gc-interval-ms MS] [--gc-growth-percent P] [--gc-min-growth-bytes N] \
     [--gc-busy-growth-bytes N] [--gc-hunger-growth-bytes N] [--gc-pool-low-percent P] \
     [--gc-low-free-percent P]"
}

fn parse_args() -> Result<Args> {
    let mut store = None;
    let mut control = None;
    let mut queues = 4u16;
    let mut log_json = false;
    let mut attach = Vec::new();
    let mut create = Vec::new();
    let mut cleaner = CleanerPolicy::default();
    let mut io_backend = cowstore::IoBackendChoice::Auto;
    let mut drop_behind_bytes = cowstore::StoreConfig::default().drop_behind_bytes;
    let mut log_writer_threads = cowstore::StoreConfig::default().log_writer_threads;
    let mut poll_after_write = vhost_blk::export::DEFAULT_POLL_AFTER_WRITE;
    let mut segment_pool_bytes = cowstore::StoreConfig::default().segment_pool_bytes;
    let mut direct_appends = cowstore::StoreConfig::default().direct_appends;
    let mut checkpoint_interval_bytes = cowstore::StoreConfig::default().checkpoint_interval_bytes;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{a} needs a value\n{}", usage()))
        };
        match a.as_str() {
            "--store" => store = Some(PathBuf::from(value()?)),
            "--control" => control = Some(PathBuf::from(value()?)),
            "--queues" => queues = value()?.parse().context("--queues")?,
            "--log-json" => log_json = true,
            "--attach" | "--attach-snapshot" => {
                let v = value()?;
                let (name, sock) = v.split_once('=').context("expected NAME=SOCKET")?;
                attach.push((
                    name.to_string(),
                    PathBuf::from(sock),
                    a == "--attach-snapshot",
                ));
            }
            "--io" => {
                io_backend = match value()?.as_str() {
                    "auto" => cowstore::IoBackendChoice::Auto,
                    "uring" => cowstore::IoBackendChoice::Uring,
                    "blocking" => cowstore::IoBackendChoice::Blocking,
                    other => bail!("--io takes auto, uring or blocking, not {other:?}"),
                }
            }
            "--drop-behind-bytes" => {
                drop_behind_bytes = match value()?.as_str() {
                    "off" => None,
                    n => match n.parse().context("--drop-behind-bytes")? {
                        0 => bail!("--drop-behind-bytes must be above 0 (or off)"),
                        n => Some(n),
                    },
                }
            }
            "--log-writers" => {
                log_writer_threads = value()?.parse().context("--log-writers")?;
                if log_writer_threads > cowstore::limits::MAX_LOG_WRITER_THREADS {
                    bail!(
                        "--log-writers takes 0..={}, got {log_writer_threads}",
                        cowstore::limits::MAX_LOG_WRITER_THREADS
                    );
                }
            }
            "--poll-after-write-us" => {
                let us: u64 = value()?.parse().context("--poll-after-write-us")?;
                poll_after_write = std::time::Duration::from_micros(us);
                if poll_after_write > vhost_blk::export::MAX_POLL_AFTER_WRITE {
                    bail!(
                        "--poll-after-write-us takes 0..={}, got {us}",
                        vhost_blk::export::MAX_POLL_AFTER_WRITE.as_micros()
                    );
                }
            }
            "--segment-pool-bytes" => {
                segment_pool_bytes = value()?.parse().context("--segment-pool-bytes")?
            }
            "--buffered-appends" => direct_appends = false,
            "--checkpoint-interval-bytes" => {
                checkpoint_interval_bytes =
                    value()?.parse().context("--checkpoint-interval-bytes")?;
                if checkpoint_interval_bytes < cowstore::limits::MIN_SEGMENT_BYTES {
                    bail!(
                        "--checkpoint-interval-bytes must be at least {}, got {checkpoint_interval_bytes}",
                        cowstore::limits::MIN_SEGMENT_BYTES
                    );
                }
            }
            "--gc-interval-ms" => {
                let ms: u64 = value()?.parse().context("--gc-interval-ms")?;
                cleaner.interval = std::time::Duration::from_millis(ms);
            }
            "--gc-growth-percent" => {
                cleaner.growth_percent = value()?.parse().context("--gc-growth-percent")?
            }
            "--gc-min-growth-bytes" => {
                cleaner.min_growth_bytes = value()?.parse().context("--gc-min-growth-bytes")?
            }
            "--gc-busy-growth-bytes" => {
                cleaner.busy_growth_bytes = value()?.parse().context("--gc-busy-growth-bytes")?
            }
            "--gc-hunger-growth-bytes" => {
                cleaner.hunger_growth_bytes =
                    value()?.parse().context("--gc-hunger-growth-bytes")?
            }
            "--gc-pool-low-percent" => {
                let p: u64 = value()?.parse().context("--gc-pool-low-percent")?;
                if p > 100 {
                    bail!("--gc-pool-low-percent must be 0..=100, got {p}");
                }
                cleaner.hunger_low_percent = p;
            }
            "--gc-low-free-percent" => {
                let p: u64 = value()?.parse().context("--gc-low-free-percent")?;
                if p > 100 {
                    bail!("--gc-low-free-percent must be 0..=100, got {p}");
                }
                cleaner.low_free_percent = p;
            }
            "--create" => {
                let v = value()?;
                let (name, size) = v.split_once('=').context("expected NAME=SIZE_BYTES")?;
                create.push((name.to_string(), size.parse().context("size")?));
            }
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    Ok(Args {
        store: store.context(usage())?,
        control: control.context(usage())?,
        queues,
        log_json,
        attach,
        create,
        cleaner,
        io_backend,
        drop_behind_bytes,
        log_writer_threads,
        poll_after_write,
        segment_pool_bytes,
        direct_appends,
        checkpoint_interval_bytes,
    })
}

/// Blocks SIGTERM and SIGINT in this thread (and every thread started
/// later), so that `wait_for_signal` can take them synchronously.
fn block_signals() -> Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it
    // and pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            bail!("pthread_sigmask failed: {rc}");
        }
        Ok(set)
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is an initialised signal set and `sig` a valid out pointer.
    let rc = unsafe { libc::sigwait(set, &mut sig) };
    if rc == 0 {
        sig
    } else {
        libc::SIGTERM
    }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    // A panicking worker must leave its message and place in the log (the
    // structured one operators read), not only on a stderr nobody kept.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("?"),
            panic = %info,
            "panic"
        );
        default_hook(info);
    }));
    let signals = block_signals()?;

    let config = cowstore::StoreConfig {
        io_backend: args.io_backend,
        drop_behind_bytes: args.drop_behind_bytes,
        log_writer_threads: args.log_writer_threads,
        segment_pool_bytes: args.segment_pool_bytes,
        direct_appends: args.direct_appends,
        checkpoint_interval_bytes: args.checkpoint_interval_bytes,
        ..Default::default()
    };
    let store = cowstore::Store::open_or_create(&args.store, config)
        .with_context(|| format!("opening store {}", args.store.display()))?;
    info!(store = %args.store.display(), io_backend = store.io_backend(), "store open");
    for (name, size) in &args.create {
        if store.volume(name).is_err() {
            store
                .create_volume(name, *size)
                .with_context(|| format!("creating volume {name}"))?;
            info!(volume = %name, size_bytes = size, "volume created");
        }
    }
    let daemon = Daemon::new(store, args.queues);
    daemon.set_poll_after_write(args.poll_after_write);
    for (name, sock, snapshot) in &args.attach {
        daemon
            .attach(name, sock, *snapshot, None)
            .with_context(|| format!("attaching {name}"))?;
    }
    daemon
        .start_cleaner(args.cleaner.clone())
        .context("starting the segment cleaner")?;
    info!(policy = ?args.cleaner, "segment cleaner");
    daemon
        .serve_control(&args.control)
        .with_context(|| format!("control socket {}", args.control.display()))?;
    info!(control = %args.control.display(), "cowstored ready");

    let sig = wait_for_signal(&signals);
    info!(signal = sig, "shutting down");
    daemon.stop_all();
    let _ = std::fs::remove_file(&args.control);
    match std::sync::Arc::try_unwrap(daemon) {
        Ok(d) => match std::sync::Arc::try_unwrap(d.store) {
            Ok(store) => store.close().context("closing the store")?,
            Err(_) => info!("store still referenced; dropping without close"),
        },
        Err(_) => info!("daemon still referenced; exiting"),
    }
    info!("stopped");
    Ok(())
}
