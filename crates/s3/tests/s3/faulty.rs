//! An object store that wraps a real one and, on request, fails, delays or cuts short the
//! responses for keys that contain a given text: faults a real S3 server gives only by chance.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// What to do to the requests whose key contains `key`.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Every request fails as an unreachable server's would.
    Fail,
    /// GETs return at most this many bytes of the object (as a short object would).
    Cut(usize),
    /// Listings wait this long first (their prefix is the key).
    SlowListing(Duration),
    /// PUTs land, then their answer comes this much later (a slow network on the way back).
    SlowPut(Duration),
    /// PUTs are sent twice, as by a client that lost the first answer and retried; the caller
    /// sees the second answer (for a create-if-absent: "already exists").
    Replayed,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Faulty {
    inner: Arc<dyn ObjectStore>,
    faults: Mutex<Vec<(String, Fault)>>,
    gets: AtomicU64,
    listed: Mutex<Vec<String>>,
}

impl fmt::Display for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

impl Faulty {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Faulty> {
        Arc::new(Faulty {
            inner,
            faults: Mutex::default(),
            gets: AtomicU64::new(0),
            listed: Mutex::default(),
        })
    }

    /// GETs begun so far.
    pub fn gets(&self) -> u64 {
        self.gets.load(Ordering::SeqCst)
    }

    /// The prefixes listed since the last call.
    pub fn take_listed(&self) -> Vec<String> {
        std::mem::take(&mut *self.listed.lock().unwrap())
    }

    /// From now on, applies `fault` to keys containing `key`.
    pub fn inject(&self, key: &str, fault: Fault) {
        self.faults.lock().unwrap().push((key.to_string(), fault));
    }

    /// Lifts every fault.
    pub fn heal(&self) {
        self.faults.lock().unwrap().clear();
    }

    fn faults_for(&self, path: &str) -> Vec<Fault> {
        self.faults
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| path.contains(k.as_str()))
            .map(|(_, f)| f.clone())
            .collect()
    }

    /// Applies failures; returns the cut, if any.
    async fn before(&self, path: &str) -> Result<Option<usize>> {
        let mut cut = None;
        for fault in self.faults_for(path) {
            match fault {
                Fault::Fail => {
                    return Err(object_store::Error::Generic {
                        store: "faulty",
                        source: format!("injected failure for {path}").into(),
                    })
                }
                Fault::Cut(n) => cut = Some(n),
                Fault::SlowListing(_) | Fault::SlowPut(_) | Fault::Replayed => {}
            }
        }
        Ok(cut)
    }
}

#[async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.before(location.as_ref()).await?;
        let faults = self.faults_for(location.as_ref());
        let mut put = self
            .inner
            .put_opts(location, payload.clone(), opts.clone())
            .await;
        for fault in faults {
            match fault {
                Fault::SlowPut(delay) => tokio::time::sleep(delay).await,
                Fault::Replayed => {
                    put = self
                        .inner
                        .put_opts(location, payload.clone(), opts.clone())
                        .await
                }
                _ => {}
            }
        }
        put
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.before(location.as_ref()).await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let cut = self.before(location.as_ref()).await?;
        let got = self.inner.get_opts(location, options).await?;
        let Some(n) = cut else { return Ok(got) };
        let (meta, range, attributes, extensions) = (
            got.meta.clone(),
            got.range.clone(),
            got.attributes.clone(),
            got.extensions.clone(),
        );
        let bytes = got.bytes().await?;
        let kept = bytes.slice(..n.min(bytes.len()));
        let range: Range<u64> = range.start..range.start + kept.len() as u64;
        Ok(GetResult {
            payload: GetResultPayload::Stream(stream::once(async move { Ok(kept) }).boxed()),
            meta,
            range,
            attributes,
            extensions,
        })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.before(location.as_ref()).await?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.listed
            .lock()
            .unwrap()
            .push(prefix.map_or(String::new(), |p| p.to_string()));
        let faults = self.faults_for(prefix.map_or("", |p| p.as_ref()));
        let inner = self.inner.list(prefix);
        stream::once(async move {
            for fault in faults {
                match fault {
                    Fault::Fail => {
                        return stream::once(async {
                            Err(object_store::Error::Generic {
                                store: "faulty",
                                source: "injected listing failure".into(),
                            })
                        })
                        .boxed()
                    }
                    Fault::SlowListing(d) => tokio::time::sleep(d).await,
                    Fault::Cut(_) | Fault::SlowPut(_) | Fault::Replayed => {}
                }
            }
            inner
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.before(prefix.map_or("", |p| p.as_ref())).await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.before(from.as_ref()).await?;
        self.inner.copy_opts(from, to, options).await
    }
}
