//! The bucket, spoken to synchronously: `object_store` on a small runtime of its own, every
//! request counted, every failure turned into a store error that says what to do.
//!
//! Any [`ObjectStore`] will do ([`Remote::new`]): S3 in production ([`Remote::connect`]), a
//! wrapper that fails, delays or cuts responses in tests.
//!
//! The store's interface is synchronous (the memory manager calls it from worker threads), so
//! each request is spawned onto this runtime and waited for over a channel. That works from any
//! thread, including an async one, where `block_on` would panic.

use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aetherflow_store::{Error, RequestCounts, Result, What};
use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig, UpdateVersion,
};

use crate::location::S3Location;

/// GETs of one batch ([`Remote::for_each_object`]) in flight at once.
const IN_FLIGHT: usize = 32;
/// Results of one batch in flight or waiting for the caller at once.
pub const AHEAD: usize = 2 * IN_FLIGHT;

/// The GETs of one walk ([`Remote::for_each_object`]) under way. Dropped when the walk ends,
/// however it ends: cancels the GETs its caller no longer wants and counts every GET begun.
struct Walk<'a> {
    producer: tokio::task::JoinHandle<()>,
    begun: Arc<AtomicU64>,
    counted: &'a AtomicU64,
}

impl Drop for Walk<'_> {
    fn drop(&mut self) {
        self.producer.abort();
        self.counted
            .fetch_add(self.begun.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// One object as listed.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Key relative to the store's prefix.
    pub key: String,
    pub size: u64,
    /// Last modification, in the object store's clock (milliseconds since the epoch).
    pub modified_ms: i64,
}

/// Request timeouts and retries.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// One attempt of one request.
    pub request: Duration,
    /// All attempts of one request together; after this the request fails as unavailable.
    pub retry: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request: Duration::from_secs(30),
            retry: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    put: AtomicU64,
    get: AtomicU64,
    head: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
}

/// A bucket and prefix.
#[derive(Debug)]
pub struct Remote {
    bucket: Arc<dyn ObjectStore>,
    prefix: String,
    runtime: Option<tokio::runtime::Runtime>,
    counts: Counts,
    pub location: S3Location,
}

impl Remote {
    /// Connects to the S3 server `location` names (lazily: the first request tells whether
    /// the bucket answers).
    pub fn connect(location: &S3Location, timeouts: Timeouts) -> Result<Remote> {
        Remote::new(s3_bucket(location, timeouts)?, location)
    }

    /// Speaks to `bucket`, under `location`'s prefix (`location` also names the bucket in
    /// messages).
    pub fn new(bucket: Arc<dyn ObjectStore>, location: &S3Location) -> Result<Remote> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("aetherflow-s3")
            .enable_all()
            .build()?;
        let prefix = if location.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", location.prefix)
        };
        Ok(Remote {
            bucket,
            prefix,
            runtime: Some(runtime),
            counts: Counts::default(),
            location: location.clone(),
        })
    }

    /// Whether the bucket can be listed: asked when an object the store must have is not
    /// found, to tell an empty prefix (the listing succeeds) from a bucket that does not exist
    /// or may not be listed (it fails).
    pub fn bucket_listable(&self) -> bool {
        self.counts.list.fetch_add(1, Ordering::Relaxed);
        let (bucket, path) = (Arc::clone(&self.bucket), self.path(""));
        let prefix = (!self.prefix.is_empty()).then_some(path);
        self.run(async move { bucket.list_with_delimiter(prefix.as_ref()).await })
            .is_ok()
    }

    /// Requests made so far.
    pub fn counts(&self) -> RequestCounts {
        let c = &self.counts;
        RequestCounts {
            put: c.put.load(Ordering::Relaxed),
            get: c.get.load(Ordering::Relaxed),
            head: c.head.load(Ordering::Relaxed),
            list: c.list.load(Ordering::Relaxed),
            delete: c.delete.load(Ordering::Relaxed),
        }
    }

    fn path(&self, key: &str) -> Path {
        Path::from(format!("{}{key}", self.prefix))
    }

    fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime
            .as_ref()
            .expect("runtime lives as long as the remote")
            .spawn(async move {
                let _ = tx.send(fut.await);
            });
        rx.recv().expect("the object store runtime stopped")
    }

    /// Writes an object; with `create`, only if no object has the key
    /// ([`Error::AlreadyExists`] otherwise).
    pub fn put(&self, key: &str, body: Bytes, create: bool) -> Result<()> {
        let mode = if create {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        self.put_mode(key, body, mode).map(|_| ())
    }

    /// Replaces an object only if it is still the version whose ETag is `etag` (If-Match):
    /// [`Error::AlreadyExists`] if another write came first. Returns the new version's ETag.
    pub fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> Result<Option<String>> {
        let version = UpdateVersion {
            e_tag: Some(etag.to_string()),
            version: None,
        };
        self.put_mode(key, body, PutMode::Update(version))
    }

    /// Creates an object only if no object has the key; returns its ETag.
    pub fn create(&self, key: &str, body: Bytes) -> Result<Option<String>> {
        self.put_mode(key, body, PutMode::Create)
    }

    fn put_mode(&self, key: &str, body: Bytes, mode: PutMode) -> Result<Option<String>> {
        self.counts.put.fetch_add(1, Ordering::Relaxed);
        let (bucket, path) = (Arc::clone(&self.bucket), self.path(key));
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let r = self.run(async move {
            bucket
                .put_opts(&path, PutPayload::from_bytes(body), options)
                .await
        });
        r.map(|done| done.e_tag)
            .map_err(|e| self.error("writing", key, e))
    }

    /// The bucket's clock: the modification time of an object `writer` writes now.
    pub fn bucket_now(&self, writer: &str) -> Result<i64> {
        let key = crate::keys::clock(writer);
        self.put(&key, Bytes::new(), false)?;
        Ok(self.head(&key)?.modified_ms)
    }

    /// A whole object and its ETag.
    pub fn get_with_etag(&self, key: &str) -> Result<(Bytes, Option<String>)> {
        self.counts.get.fetch_add(1, Ordering::Relaxed);
        let (bucket, path) = (Arc::clone(&self.bucket), self.path(key));
        let r = self.run(async move {
            let got = bucket.get_opts(&path, GetOptions::default()).await?;
            let etag = got.meta.e_tag.clone();
            Ok::<_, object_store::Error>((got.bytes().await?, etag))
        });
        r.map_err(|e| self.error("reading", key, e))
    }

    /// A whole object.
    pub fn get(&self, key: &str) -> Result<Bytes> {
        self.get_opts(key, None)
    }

    /// Bytes `range` of an object (fewer at its end).
    pub fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.get_opts(key, Some(GetRange::Bounded(range)))
    }

    /// Starts a ranged GET and returns at once; `done` receives the bytes (on the runtime's
    /// thread: it must not block).
    pub fn spawn_get_range(
        &self,
        key: &str,
        range: Range<u64>,
        done: impl FnOnce(Result<Bytes>) + Send + 'static,
    ) {
        self.counts.get.fetch_add(1, Ordering::Relaxed);
        let (bucket, path) = (Arc::clone(&self.bucket), self.path(key));
        let context = RemoteError {
            prefix: self.prefix.clone(),
            location: self.location.clone(),
            key: key.to_string(),
        };
        let options = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..GetOptions::default()
        };
        self.runtime
            .as_ref()
            .expect("runtime lives as long as the remote")
            .spawn(async move {
                let got = async { bucket.get_opts(&path, options).await?.bytes().await }.await;
                done(got.map_err(|e| context.error("reading", e)));
            });
    }

    fn get_opts(&self, key: &str, range: Option<GetRange>) -> Result<Bytes> {
        self.counts.get.fetch_add(1, Ordering::Relaxed);
        let (bucket, path) = (Arc::clone(&self.bucket), self.path(key));
        let options = GetOptions {
            range: range.clone(),
            ..GetOptions::default()
        };
        let r = self.run(async move { bucket.get_opts(&path, options).await?.bytes().await });
        match (r, range) {
            (Ok(bytes), _) => Ok(bytes),
            // A range the object cannot satisfy: ask its size, so that an object shorter than
            // what refers to it is named as damage, not as an outage.
            (Err(e), Some(GetRange::Bounded(want))) if is_generic(&e) => match self.head(key) {
                Ok(meta) if meta.size < want.end => Err(Error::Corrupt(format!(
                    "object {}{key} is {} bytes, shorter than the {} its index says",
                    self.prefix, meta.size, want.end
                ))),
                _ => Err(self.error("reading", key, e)),
            },
            (Err(e), _) => Err(self.error("reading", key, e)),
        }
    }

    /// GETs every object of `keys`, whole, and hands each result to `each` with its index in
    /// `keys`, in that order, as it arrives (see [`Remote::for_each_get`]).
    pub fn for_each_object(
        &self,
        keys: &[String],
        mut each: impl FnMut(usize, Result<Bytes>) -> Result<()>,
    ) -> Result<()> {
        self.for_each_get(keys, None, |i, r| each(i, r.map(|(bytes, _)| bytes)))
    }

    /// The last `n` bytes of every object of `keys`, with its size, as
    /// [`Remote::for_each_object`].
    pub fn for_each_tail(
        &self,
        keys: &[String],
        n: u64,
        each: impl FnMut(usize, Result<(Bytes, u64)>) -> Result<()>,
    ) -> Result<()> {
        self.for_each_get(keys, Some(GetRange::Suffix(n)), each)
    }

    /// GETs `keys` ([`IN_FLIGHT`] at a time) and hands each result to `each` in the order of
    /// `keys` as it arrives, on the calling thread. A GET starts only while fewer than
    /// [`AHEAD`] results are in flight or waiting for `each`, so that the bodies held at once
    /// are bounded whatever the number of keys: a cold open of a large bucket parses each
    /// pack's tail and drops it instead of holding them all. The first error `each` returns
    /// ends the walk, cancels the GETs under way and is returned.
    fn for_each_get(
        &self,
        keys: &[String],
        range: Option<GetRange>,
        mut each: impl FnMut(usize, Result<(Bytes, u64)>) -> Result<()>,
    ) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let bucket = Arc::clone(&self.bucket);
        let paths: Vec<Path> = keys.iter().map(|k| self.path(k)).collect();
        let room = Arc::new(tokio::sync::Semaphore::new(AHEAD));
        let (tx, rx) = std::sync::mpsc::channel();
        let producer_room = Arc::clone(&room);
        let begun = Arc::new(AtomicU64::new(0));
        let producer_begun = Arc::clone(&begun);
        let producer = self
            .runtime
            .as_ref()
            .expect("runtime lives as long as the remote")
            .spawn(async move {
                let results = futures_util::stream::iter(paths)
                    .then(|path| {
                        let room = Arc::clone(&producer_room);
                        async move {
                            // Given back by the consumer once it has handled a result.
                            room.acquire_owned()
                                .await
                                .expect("the walk's semaphore is never closed")
                                .forget();
                            path
                        }
                    })
                    .map(|path| {
                        let (bucket, begun) = (Arc::clone(&bucket), Arc::clone(&producer_begun));
                        let options = GetOptions {
                            range: range.clone(),
                            ..GetOptions::default()
                        };
                        async move {
                            begun.fetch_add(1, Ordering::Relaxed);
                            let got = bucket.get_opts(&path, options).await?;
                            let size = got.meta.size;
                            Ok::<_, object_store::Error>((got.bytes().await?, size))
                        }
                    })
                    .buffered(IN_FLIGHT);
                let mut results = std::pin::pin!(results);
                while let Some(result) = results.next().await {
                    if tx.send(result).is_err() {
                        return; // the consumer stopped
                    }
                }
            });
        let _walk = Walk {
            producer,
            begun,
            counted: &self.counts.get,
        };
        for (i, key) in keys.iter().enumerate() {
            let Ok(result) = rx.recv() else {
                return Err(Error::Unavailable(format!(
                    "reading {}{key} in bucket {}: the request task stopped",
                    self.prefix, self.location.bucket
                )));
            };
            each(i, result.map_err(|e| self.error("reading", key, e)))?;
            room.add_permits(1);
        }
        Ok(())
    }

    /// An object's size and modification time.
    pub fn head(&self, key: &str) -> Result<Listed> {
        self.counts.head.fetch_add(1, Ordering::Relaxed);
        let (bucket, path) = (Arc::clone(&self.bucket), self.path(key));
        let r = self.run(async move { bucket.head(&path).await });
        let meta = r.map_err(|e| self.error("looking up", key, e))?;
        Ok(Listed {
            key: key.to_string(),
            size: meta.size,
            modified_ms: meta.last_modified.timestamp_millis(),
        })
    }

    /// Deletes an object; one that is already gone is no error.
    pub fn delete(&self, key: &str) -> Result<()> {
        self.counts.delete.fetch_add(1, Ordering::Relaxed);
        let (bucket, path) = (Arc::clone(&self.bucket), self.path(key));
        match self.run(async move { bucket.delete(&path).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("deleting", key, e)),
        }
    }

    /// Every object whose key starts with `dir` (a folder such as `packs/`), in key order. A
    /// failure of any page fails the whole listing: a partial listing never passes for a
    /// complete one.
    pub fn list(&self, dir: &str) -> Result<Vec<Listed>> {
        self.list_from(dir, None)
    }

    /// Like [`Remote::list`], but only the keys after `after` (a key under `dir`): the listing
    /// starts there, so what lies before costs no request.
    pub fn list_after(&self, dir: &str, after: &str) -> Result<Vec<Listed>> {
        self.list_from(dir, Some(after))
    }

    fn list_from(&self, dir: &str, after: Option<&str>) -> Result<Vec<Listed>> {
        let (bucket, path) = (Arc::clone(&self.bucket), self.path(dir));
        let offset = after.map(|key| self.path(key));
        let prefix = self.prefix.clone();
        // Each entry is cut down to what the store keeps as it arrives: a listing of a large
        // bucket is held once, not once as the client's metadata and again as ours.
        let r = self.run(async move {
            let mut stream = match &offset {
                Some(offset) => bucket.list_with_offset(Some(&path), offset),
                None => bucket.list(Some(&path)),
            };
            let mut out = Vec::new();
            while let Some(meta) = stream.next().await {
                let meta = meta?;
                if let Some(key) = meta.location.as_ref().strip_prefix(&prefix) {
                    out.push(Listed {
                        key: key.to_string(),
                        size: meta.size,
                        modified_ms: meta.last_modified.timestamp_millis(),
                    });
                }
            }
            Ok::<_, object_store::Error>(out)
        });
        let mut out = r.map_err(|e| self.error("listing", dir, e))?;
        // One request per page of up to 1,000 keys.
        self.counts
            .list
            .fetch_add(1 + out.len() as u64 / 1000, Ordering::Relaxed);
        out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn error(&self, doing: &str, key: &str, e: object_store::Error) -> Error {
        RemoteError {
            prefix: self.prefix.clone(),
            location: self.location.clone(),
            key: key.to_string(),
        }
        .error(doing, e)
    }
}

/// The S3 bucket `location` names, with credentials from the environment (`AWS_*`), path-style
/// requests, and `timeouts` for each request and all its retries.
pub fn s3_bucket(location: &S3Location, timeouts: Timeouts) -> Result<Arc<dyn ObjectStore>> {
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&location.bucket)
        .with_virtual_hosted_style_request(false)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_retry(RetryConfig {
            max_retries: 4,
            retry_timeout: timeouts.retry,
            ..RetryConfig::default()
        })
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(location.is_plain_http())
                .with_timeout(timeouts.request)
                .with_connect_timeout(Duration::from_secs(3)),
        );
    if let Some(endpoint) = &location.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    let region = location
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .unwrap_or_else(|| "us-east-1".into());
    builder = builder.with_region(region);
    let bucket = builder
        .build()
        .map_err(|e| Error::Unavailable(format!("configuring {location}: {e}")))?;
    Ok(Arc::new(bucket))
}

/// What a failed request was about, to say so in its error.
struct RemoteError {
    prefix: String,
    location: S3Location,
    key: String,
}

impl RemoteError {
    /// The one mapping from object store failures to store errors.
    fn error(&self, doing: &str, e: object_store::Error) -> Error {
        use object_store::Error as E;
        let key = &self.key;
        let what = format!(
            "{doing} {}{key} in bucket {}",
            self.prefix, self.location.bucket
        );
        match e {
            E::NotFound { .. } => Error::NotFound(What::Object(format!("{}{key}", self.prefix))),
            E::AlreadyExists { .. } | E::Precondition { .. } => {
                Error::AlreadyExists(What::Object(format!("{}{key}", self.prefix)))
            }
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => Error::Denied(format!(
                "{what}: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY ({e})"
            )),
            _ => Error::Unavailable(format!("{what}: {e}")),
        }
    }
}

/// Failures object_store does not sort further (a status it has no variant for, a transport
/// error): the ones where a short object may be the cause.
fn is_generic(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::Generic { .. })
}

impl Drop for Remote {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which panics inside another runtime (the
        // server's); letting them go in the background is safe anywhere.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
