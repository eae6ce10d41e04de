//! The object storage tier: the durable home of sealed segments, snapshot
//! and volume manifests, checkpoints and writer leases.
//!
//! Any store `object_store` speaks to: a local folder (the embedded default,
//! `LocalFileSystem`) or S3 and compatibles (`s3://bucket/prefix`, configured
//! by the usual `AWS_*` environment variables: `AWS_ENDPOINT`,
//! `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_ALLOW_HTTP=true` for a loopback endpoint).
//!
//! Object layout under the prefix (every data object is written once with a
//! create-only put and never overwritten):
//!
//! ```text
//! segments/<segment id>.seg                  sealed segments, byte-identical to the local file
//! checkpoints/snap-<id>-<crc>.ckpt           a snapshot's map (crc: see `checkpoint_tag`)
//! checkpoints/vol-<id>-<seq>-<crc>.ckpt      a volume's map at one sequence number
//! manifests/snapshots/<name>.json            what a snapshot needs (checksummed)
//! manifests/volumes/<name>.json              a volume's latest published head
//! leases/<name>.json                         the volume's single writer
//! ```
//!
//! In keys, a name's `_` is written `__` and its `@` is written `_a`.
//!
//! The tier runs on its own small tokio runtime; the engine hands it work
//! and awaits the results from any executor.

pub(crate) mod cache;
pub mod manifest;

use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::{Error, Result};

/// When `flush` returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Once the local log is durable; the object store catches up in the
    /// background (segments as they seal, manifests as snapshots are taken).
    #[default]
    Local,
    /// Only once the volume's data and a manifest naming it are in the
    /// object store. Each flush seals, checkpoints and publishes: meant for
    /// infrequent flushes (a snapshot cadence), not per-write flushes.
    Remote,
}

/// Wraps the object store before use (fault injection in tests).
pub type WrapStore = fn(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>;

/// How to reach the object store.
#[derive(Clone, Debug)]
pub struct TierConfig {
    /// `s3://bucket/prefix`, `file:///path`, or a plain local path.
    pub url: String,
    pub durability: Durability,
    /// Local cache for ranges read back from the object store.
    pub cache_bytes: u64,
    /// Segment uploads in flight at once (each holds one segment in memory).
    pub upload_concurrency: usize,
    /// Object GC deletes an unreferenced object only once it is this old, so
    /// an upload another host has not yet named in a manifest survives.
    pub gc_grace_s: u64,
    /// S3 settings that override the environment, as object_store config
    /// keys (`aws_endpoint`, `aws_access_key_id`, `aws_allow_http`, ...).
    pub s3_options: Vec<(String, String)>,
    /// Tests: wrap the object store (fault injection) before use.
    pub wrap: Option<WrapStore>,
}

impl TierConfig {
    pub fn new(url: impl Into<String>) -> Self {
        TierConfig {
            url: url.into(),
            durability: Durability::Local,
            cache_bytes: 1 << 30,
            upload_concurrency: 4,
            gc_grace_s: 3600,
            s3_options: Vec::new(),
            wrap: None,
        }
    }
}

/// Byte counts since the store opened.
#[derive(Default, Debug)]
pub struct TierCounters {
    pub bytes_uploaded: AtomicU64,
    pub objects_uploaded: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub upload_retries: AtomicU64,
}

/// A snapshot of [`TierCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierStats {
    pub bytes_uploaded: u64,
    pub objects_uploaded: u64,
    pub bytes_fetched: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub upload_retries: u64,
    pub cache_used_bytes: u64,
}

pub(crate) struct ObjectTier {
    pub store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// Always `Some` until drop (taken there to shut it down).
    runtime: Option<tokio::runtime::Runtime>,
    pub config: TierConfig,
    pub cache: cache::BlockCache,
    pub upload_slots: Arc<tokio::sync::Semaphore>,
    pub counters: Arc<TierCounters>,
    /// Who we are, written into leases.
    pub holder: String,
}

pub(crate) fn tier_err(what: impl std::fmt::Display, e: object_store::Error) -> Error {
    Error::ObjectStore(format!("{what}: {e}"))
}

/// Errors worth retrying: anything but a definite answer from the store.
fn is_transient(e: &object_store::Error) -> bool {
    !matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
    )
}

/// The crc32c of a checkpoint's bytes before its 4-byte trailer (which is
/// that same crc). Not the crc of the whole object: a message followed by
/// its own crc32c always has the same crc32c (the CRC residue), so that
/// would name every checkpoint alike.
fn checkpoint_tag(bytes: &[u8]) -> u32 {
    crate::checksum::crc32c(&bytes[..bytes.len().saturating_sub(4)])
}

/// Outcome of a create-only put.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Created {
    Now,
    AlreadyThere,
}

/// An S3 client for `s3://BUCKET/PREFIX` (`rest` is `BUCKET/PREFIX`),
/// configured from the usual AWS environment variables.
#[cfg(feature = "s3")]
fn open_s3(
    url: &str,
    rest: &str,
    options: &[(String, String)],
) -> Result<(Arc<dyn ObjectStore>, ObjectPath)> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let allow_http = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v == "true" || v == "1");
    let mut builder = object_store::aws::AmazonS3Builder::from_env().with_allow_http(allow_http);
    for (key, value) in options {
        let key: object_store::aws::AmazonS3ConfigKey = key
            .parse()
            .map_err(|e| Error::Config(format!("S3 option {key}: {e}")))?;
        builder = builder.with_config(key, value);
    }
    let s3 = builder
        .with_bucket_name(bucket)
        .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
        .with_retry(object_store::RetryConfig {
            max_retries: 4,
            retry_timeout: Duration::from_secs(30),
            ..Default::default()
        })
        .build()
        .map_err(|e| tier_err(format!("configuring {url}"), e))?;
    Ok((Arc::new(s3), ObjectPath::from(prefix)))
}

#[cfg(not(feature = "s3"))]
fn open_s3(
    url: &str,
    _rest: &str,
    _options: &[(String, String)],
) -> Result<(Arc<dyn ObjectStore>, ObjectPath)> {
    Err(Error::Config(format!(
        "{url}: this build has no S3 support (cowstore's `s3` feature)"
    )))
}

impl ObjectTier {
    pub fn open(config: TierConfig, cache_dir: std::path::PathBuf, holder: String) -> Result<Self> {
        let (store, prefix): (Arc<dyn ObjectStore>, ObjectPath) =
            if let Some(rest) = config.url.strip_prefix("s3://") {
                open_s3(&config.url, rest, &config.s3_options)?
            } else {
                let dir = config.url.strip_prefix("file://").unwrap_or(&config.url);
                if dir.is_empty() || dir.contains("://") {
                    return Err(Error::Config(format!(
                        "object store URL {:?}: use s3://bucket/prefix, file:///path or a path",
                        config.url
                    )));
                }
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| tier_err(format!("opening {dir}"), e))?;
                (Arc::new(fs), ObjectPath::from(""))
            };
        let store = match config.wrap {
            Some(wrap) => wrap(store),
            None => store,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cowstore-tier")
            .enable_all()
            .build()
            .map_err(|e| Error::io("tier runtime", e))?;
        let cache = cache::BlockCache::open(cache_dir, config.cache_bytes)?;
        Ok(ObjectTier {
            store,
            prefix,
            runtime: Some(runtime),
            upload_slots: Arc::new(tokio::sync::Semaphore::new(
                config.upload_concurrency.max(1),
            )),
            config,
            cache,
            counters: Arc::new(TierCounters::default()),
            holder,
        })
    }

    pub fn stats(&self) -> TierStats {
        let c = &self.counters;
        TierStats {
            bytes_uploaded: c.bytes_uploaded.load(Ordering::Relaxed),
            objects_uploaded: c.objects_uploaded.load(Ordering::Relaxed),
            bytes_fetched: c.bytes_fetched.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            cache_misses: c.cache_misses.load(Ordering::Relaxed),
            upload_retries: c.upload_retries.load(Ordering::Relaxed),
            cache_used_bytes: self.cache.used_bytes(),
        }
    }

    /// Runs `fut` on the tier's runtime and waits for it from any context.
    pub async fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        self.rt()?
            .spawn(fut)
            .await
            .map_err(|e| Error::ObjectStore(format!("tier task failed: {e}")))?
    }

    /// Blocking variant of [`ObjectTier::run`] for the engine's blocking calls.
    pub fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        futures::executor::block_on(self.run(fut))
    }

    pub fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        if let Ok(rt) = self.rt() {
            rt.spawn(fut);
        }
    }

    fn rt(&self) -> Result<&tokio::runtime::Runtime> {
        self.runtime.as_ref().ok_or(Error::Closed)
    }

    pub fn segment_key(id: u64) -> String {
        format!("segments/{id:016x}.seg")
    }

    /// Checkpoint objects are named by their content as well: the cleaner
    /// may move a snapshot's extents (or rewrite a volume's checkpoint at
    /// the same seq) between two publish attempts, and a create-only put
    /// must never leave an older map under the name a newer manifest gives,
    /// next to that manifest's segment list.
    pub fn snapshot_checkpoint_key(id: u64, bytes: &[u8]) -> String {
        format!(
            "{}-{:08x}.ckpt",
            Self::snapshot_checkpoint_prefix(id),
            checkpoint_tag(bytes)
        )
    }

    /// What every checkpoint object of snapshot `id` starts with (including
    /// `snap-<id>.ckpt`, the name before checkpoint objects were named by
    /// content).
    pub fn snapshot_checkpoint_prefix(id: u64) -> String {
        format!("checkpoints/snap-{id:016x}")
    }

    pub fn volume_checkpoint_key(id: u64, seq: u64, bytes: &[u8]) -> String {
        format!(
            "checkpoints/vol-{id:016x}-{seq:016x}-{:08x}.ckpt",
            checkpoint_tag(bytes)
        )
    }

    pub fn snapshot_manifest_key(name: &str) -> String {
        format!("manifests/snapshots/{}.json", key_safe(name))
    }

    pub fn volume_manifest_key(name: &str) -> String {
        format!("manifests/volumes/{}.json", key_safe(name))
    }

    pub fn lease_key(name: &str) -> String {
        format!("leases/{}.json", key_safe(name))
    }
}

/// Names may hold `@`, which object_store percent-encodes and servers
/// canonicalize differently when checking signatures: keys use only
/// `[A-Za-z0-9._-]`, with `_` written `__` and `@` written `_a`
/// (collision-free and reversible).
fn key_safe(name: &str) -> String {
    name.replace('_', "__").replace('@', "_a")
}

impl Drop for ObjectTier {
    /// The last reference to a store may be dropped by one of the tier's own
    /// background tasks; a runtime cannot be dropped from inside itself, so
    /// it is shut down in the background. Unfinished uploads and publishes
    /// resume at the next open.
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The async operations, as free functions over a cloned handle so they can
/// run on the tier runtime (`'static`).
#[derive(Clone)]
pub(crate) struct TierHandle {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: ObjectPath,
    pub counters: Arc<TierCounters>,
}

impl ObjectTier {
    pub fn handle(&self) -> TierHandle {
        TierHandle {
            store: self.store.clone(),
            prefix: self.prefix.clone(),
            counters: self.counters.clone(),
        }
    }
}

impl TierHandle {
    pub fn path(&self, key: &str) -> ObjectPath {
        if self.prefix.as_ref().is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix.as_ref()))
        }
    }

    /// Create-only put, retried with capped exponential backoff on
    /// transient errors for up to `patience`.
    pub async fn put_create(&self, key: &str, body: Bytes, patience: Duration) -> Result<Created> {
        let path = self.path(key);
        let started = std::time::Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            let opts = PutOptions::from(PutMode::Create);
            match self
                .store
                .put_opts(&path, PutPayload::from(body.clone()), opts)
                .await
            {
                Ok(_) => {
                    self.counters
                        .bytes_uploaded
                        .fetch_add(body.len() as u64, Ordering::Relaxed);
                    self.counters
                        .objects_uploaded
                        .fetch_add(1, Ordering::Relaxed);
                    return Ok(Created::Now);
                }
                Err(object_store::Error::AlreadyExists { .. }) => return Ok(Created::AlreadyThere),
                Err(e) if is_transient(&e) && started.elapsed() < patience => {
                    self.counters.upload_retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(key, "put failed, retrying in {backoff:?}: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(tier_err(format!("put {key}"), e)),
            }
        }
    }

    pub async fn put_overwrite(&self, key: &str, body: Bytes) -> Result<()> {
        let path = self.path(key);
        retry_read(key, || {
            self.store.put_opts(
                &path,
                PutPayload::from(body.clone()),
                PutOptions::from(PutMode::Overwrite),
            )
        })
        .await
        .map(drop)
    }

    pub async fn get(&self, key: &str) -> Result<Option<(Bytes, ObjectMeta)>> {
        let path = self.path(key);
        let got = retry_read(key, || async {
            let r = self.store.get(&path).await?;
            let meta = r.meta.clone();
            Ok((r.bytes().await?, meta))
        })
        .await;
        match got {
            Ok(v) => {
                self.counters
                    .bytes_fetched
                    .fetch_add(v.0.len() as u64, Ordering::Relaxed);
                Ok(Some(v))
            }
            Err(Error::ObjectNotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let path = self.path(key);
        let len = range.end - range.start;
        let b = retry_read(key, || self.store.get_range(&path, range.clone())).await?;
        if b.len() as u64 != len {
            return Err(Error::ObjectStore(format!(
                "{key}: asked {len} bytes, got {}",
                b.len()
            )));
        }
        self.counters
            .bytes_fetched
            .fetch_add(len, Ordering::Relaxed);
        Ok(b)
    }

    pub async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path(key);
        match retry_read(key, || self.store.head(&path)).await {
            Ok(m) => Ok(Some(m)),
            Err(Error::ObjectNotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        match retry_read(key, || self.store.delete(&path)).await {
            Ok(()) | Err(Error::ObjectNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Lists objects under `dir` (keys relative to the prefix).
    ///
    /// Lists the whole bucket and filters here: moto (our test server)
    /// refuses the SigV4 signature of any list request whose prefix holds a
    /// `/`, and object_store always sends one. Listing is rare (object GC,
    /// remote listings); a prefix-scoped list is the next step once the
    /// test server accepts it.
    pub async fn list(&self, dir: &str) -> Result<Vec<(String, ObjectMeta)>> {
        // A listing that fails part-way is started over, a few times.
        let mut attempt = 0;
        loop {
            match self.list_once(dir).await {
                Err(Error::ObjectStore(why)) if attempt < 6 => {
                    attempt += 1;
                    tracing::warn!("list {dir} failed, retrying: {why}");
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn list_once(&self, dir: &str) -> Result<Vec<(String, ObjectMeta)>> {
        let wanted = self.path(dir.trim_end_matches('/')).as_ref().to_string() + "/";
        let mut out = Vec::new();
        let mut stream = self.store.list(None);
        while let Some(item) = stream.next().await {
            let meta = item.map_err(|e| tier_err(format!("list {dir}"), e))?;
            let full = meta.location.as_ref().to_string();
            if !full.starts_with(&wanted) {
                continue;
            }
            let rel = match self.prefix.as_ref() {
                "" => full,
                p => full
                    .strip_prefix(&format!("{p}/"))
                    .unwrap_or(&full)
                    .to_string(),
            };
            out.push((rel, meta));
        }
        Ok(out)
    }
}

/// Retries a read-like call a few times on transient errors.
async fn retry_read<T, F, Fut>(key: &str, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = object_store::Result<T>>,
{
    let mut backoff = Duration::from_millis(50);
    let mut attempt = 0;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::ObjectNotFound(key.to_string()))
            }
            Err(e) if is_transient(&e) && attempt < 6 => {
                attempt += 1;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(tier_err(key, e)),
        }
    }
}
