//! A fault-injecting wrapper around any object store: every third call
//! (put, get, head, list, delete) fails with a transient error, and puts and
//! gets are delayed. Or, as `refusing_snapshot_manifests`, only puts of
//! snapshot manifests fail (any key with `manifests/snapshots/` in it: the
//! store may sit under a prefix), while `REFUSE_SNAPSHOT_MANIFESTS` is set.
//! Beside the real store, never instead of it.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// While set, stores wrapped by `Flaky::refusing_snapshot_manifests` fail
/// every put of a snapshot manifest.
pub static REFUSE_SNAPSHOT_MANIFESTS: AtomicBool = AtomicBool::new(false);

#[derive(Debug)]
pub struct Flaky {
    inner: Arc<dyn ObjectStore>,
    calls: AtomicU64,
    /// Every third call fails (else only refused manifest puts).
    every_third: bool,
}

impl Flaky {
    pub fn wrap(inner: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        Arc::new(Flaky {
            inner,
            calls: AtomicU64::new(0),
            every_third: true,
        })
    }

    pub fn refusing_snapshot_manifests(inner: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        Arc::new(Flaky {
            inner,
            calls: AtomicU64::new(0),
            every_third: false,
        })
    }

    async fn fault(&self, what: &str) -> Result<()> {
        if !self.every_third {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
        self.fault_now(what)
    }

    fn fault_now(&self, what: &str) -> Result<()> {
        if self.every_third && self.calls.fetch_add(1, Ordering::Relaxed) % 3 == 2 {
            super::INJECTED.fetch_add(1, Ordering::Relaxed);
            return Err(object_store::Error::Generic {
                store: "flaky",
                source: format!("injected fault on {what}").into(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for Flaky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Flaky({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Flaky {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.fault("put").await?;
        if !self.every_third
            && REFUSE_SNAPSHOT_MANIFESTS.load(Ordering::Relaxed)
            && location.as_ref().contains("manifests/snapshots/")
        {
            // Not transient: the publish gives up at once.
            return Err(object_store::Error::PermissionDenied {
                path: location.to_string(),
                source: "snapshot manifest puts refused".into(),
            });
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.fault("get").await?;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        match self.fault_now("delete") {
            Ok(()) => self.inner.delete_stream(locations),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        match self.fault_now("list") {
            Ok(()) => self.inner.list(prefix),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
