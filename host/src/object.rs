//! An object-store tier: S3, Google Cloud Storage, Azure Blob, a local
//! directory or memory, through the `object_store` crate. This is the cold
//! tier several cache nodes can share.
//!
//! A key becomes the object `<prefix>/<h[0..2]>/<h[2..4]>/<h>` where `h` is
//! the hex SHA-256 of the key, so any key (`../`, `/`, NUL, very long,
//! non-ASCII) maps to a short path of safe characters under the prefix. The
//! original key is stored with the object and compared on every read, so an
//! object that does not belong to the key reads as not found.
//!
//! Metadata travels with the object in one of two layouts, and readers
//! accept both:
//!
//! - **attribute**: the encoded metadata is the user-defined attribute
//!   `daramjwee` (`x-amz-meta-daramjwee` on S3, `x-goog-meta-daramjwee` on
//!   GCS, `x-ms-meta-daramjwee` on Azure) and the object holds the body
//!   only; `stat` is one HEAD request. Used on S3, GCS, Azure and
//!   `memory://`, as long as the encoded metadata fits in
//!   [`ObjectStoreTier::ATTRIBUTE_BUDGET`] bytes (S3 allows 2 KiB of user
//!   metadata per object).
//! - **header**: the object starts with a small header (magic, version,
//!   metadata length, metadata) followed by the body; `stat` is a HEAD plus
//!   a ranged GET. Used on `file://` (its backend keeps no attributes), for
//!   metadata too large for an attribute, and on any backend that answers
//!   "not implemented" to attributes.
//!
//! Bodies smaller than one part are written with a single PUT. Larger ones
//! become a multipart upload that starts once a full part is buffered: at
//! most [`ObjectStoreTier::with_max_in_flight_parts`] parts are uploading
//! while one more fills, so a write holds at most
//! `(in-flight + 1) × part size` bytes whatever the object's size. The
//! upload completes on commit, which publishes the object atomically;
//! dropping the sink aborts the upload (on the tokio runtime, see
//! [`ObjectStoreTier::settle`]).

use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, GetOptions, GetRange, GetResult, GetResultPayload,
    MultipartUpload, ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutMultipartOptions,
    PutOptions, PutPayload, PutPayloadMut,
};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::tier::{ByteStream, Tier, TierEntry, TierSink};
use crate::{Error, Metadata, Result};

/// Name of the user-defined attribute holding the metadata. Letters only:
/// Azure wants metadata names to be identifiers.
const META_ATTRIBUTE: &str = "daramjwee";
const HEADER_MAGIC: &[u8; 4] = b"DJWO";
const HEADER_VERSION: u8 = 1;
/// Magic, version byte, metadata length.
const HEADER_FIXED: usize = 4 + 1 + 4;
/// Bytes fetched to read a header in one request in the common case.
const HEADER_PROBE: u64 = 4096;
/// Encoded metadata larger than this is refused on write and treated as
/// damage on read, so a bad length never makes a reader allocate much.
const MAX_META: usize = 1 << 20;
/// 3 added `stale-if-error`; an object of another version reads as
/// absent.
const META_VERSION: u8 = 3;
/// Read size for objects of the `file://` backend.
const FILE_CHUNK: usize = 256 * 1024;

/// Where a tier puts the metadata of the objects it writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MetadataPlacement {
    /// As the object's `daramjwee` attribute, or in a header when it is too
    /// large for one or the backend keeps no attributes. The default.
    #[default]
    Attribute,
    /// Always in a header at the start of the object.
    Header,
}

/// A tier backed by an [`ObjectStore`]. Cheap to clone; clones share the
/// store and settings.
#[derive(Clone)]
pub struct ObjectStoreTier {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    /// Names the store in errors: the URL it was built from.
    label: Arc<str>,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    part_size: usize,
    max_in_flight: usize,
    placement: MetadataPlacement,
    /// Set once the backend refused attributes; later writes use headers.
    no_attributes: AtomicBool,
    aborts: Arc<PendingAborts>,
}

/// A copy of the settings for a reconfigured tier; it keeps sharing the
/// store and the pending aborts.
impl Clone for Inner {
    fn clone(&self) -> Self {
        Inner {
            name: self.name.clone(),
            label: Arc::clone(&self.label),
            store: Arc::clone(&self.store),
            prefix: self.prefix.clone(),
            part_size: self.part_size,
            max_in_flight: self.max_in_flight,
            placement: self.placement,
            no_attributes: AtomicBool::new(self.no_attributes.load(Ordering::Relaxed)),
            aborts: Arc::clone(&self.aborts),
        }
    }
}

impl fmt::Debug for ObjectStoreTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreTier")
            .field("name", &self.inner.name)
            .field("store", &self.inner.label)
            .field("part_size", &self.inner.part_size)
            .field("max_in_flight_parts", &self.inner.max_in_flight)
            .field("placement", &self.inner.placement)
            .finish()
    }
}

impl ObjectStoreTier {
    /// Default size of one multipart part: 8 MiB.
    pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
    /// Smallest part size accepted: S3 rejects smaller parts (but the last).
    pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
    /// Largest part size accepted, S3's limit.
    pub const MAX_PART_SIZE: usize = 5 * 1024 * 1024 * 1024;
    /// Default number of parts uploading at once per write.
    pub const DEFAULT_MAX_IN_FLIGHT_PARTS: usize = 2;
    /// Longest encoded metadata kept as an attribute; longer metadata goes
    /// into the object's header. S3 limits all user metadata of an object
    /// to 2 KiB.
    pub const ATTRIBUTE_BUDGET: usize = 1900;

    /// A tier called `name` on the store addressed by `url`:
    ///
    /// - `s3://bucket/prefix` (also `s3a://` and the `https://` forms of
    ///   S3 and R2), configured from the `AWS_*` environment variables
    ///   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    ///   `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, ...);
    /// - `gs://bucket/prefix`, from the `GOOGLE_*` variables;
    /// - `az://container/prefix` (also `azure://`, `abfs[s]://`, `adl://`
    ///   and the `https://` Azure forms), from the `AZURE_*` variables;
    /// - `file:///absolute/dir`, a local directory, created if missing;
    /// - `memory://`, a fresh store private to this tier.
    pub fn from_url(name: impl Into<String>, url: &str) -> Result<Self> {
        Self::from_url_with_options(name, url, std::iter::empty::<(&str, &str)>())
    }

    /// Like [`ObjectStoreTier::from_url`], with builder options that
    /// override the environment, named as `object_store` names them (for
    /// S3: `aws_endpoint`, `aws_allow_http`, `aws_access_key_id`,
    /// `aws_secret_access_key`, `aws_region`, ...). An unknown option is an
    /// error; `file://` and `memory://` take none.
    pub fn from_url_with_options<I, K, V>(
        name: impl Into<String>,
        url: &str,
        options: I,
    ) -> Result<Self>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let invalid = |why: &dyn fmt::Display| {
            Error::InvalidConfig(format!("object store url {url:?}: {why}"))
        };
        let parsed = url::Url::parse(url).map_err(|e| invalid(&e))?;
        let mut options = options
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_ascii_lowercase(), v.into()))
            .peekable();

        let (store, prefix): (Arc<dyn ObjectStore>, Path) = match parsed.scheme() {
            "memory" => {
                if options.peek().is_some() {
                    return Err(invalid(&"memory:// takes no options"));
                }
                let prefix = format!("{}{}", parsed.host_str().unwrap_or(""), parsed.path());
                let prefix = Path::parse(prefix.trim_matches('/')).map_err(|e| invalid(&e))?;
                (Arc::new(InMemory::new()), prefix)
            }
            "file" => {
                if options.peek().is_some() {
                    return Err(invalid(&"file:// takes no options"));
                }
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| invalid(&"not an absolute local path"))?;
                std::fs::create_dir_all(&dir).map_err(|e| invalid(&e))?;
                let store = LocalFileSystem::new_with_prefix(&dir).map_err(|e| invalid(&e))?;
                (Arc::new(store), Path::default())
            }
            _ => {
                let (scheme, prefix) =
                    ObjectStoreScheme::parse(&parsed).map_err(|e| invalid(&e))?;
                let store: Arc<dyn ObjectStore> = match scheme {
                    ObjectStoreScheme::AmazonS3 => {
                        let mut builder = AmazonS3Builder::from_env().with_url(url);
                        for (key, value) in options {
                            let key: AmazonS3ConfigKey = key
                                .parse()
                                .map_err(|_| invalid(&format!("unknown S3 option {key:?}")))?;
                            builder = builder.with_config(key, value);
                        }
                        Arc::new(builder.build().map_err(|e| invalid(&e))?)
                    }
                    ObjectStoreScheme::GoogleCloudStorage => {
                        let mut builder = GoogleCloudStorageBuilder::from_env().with_url(url);
                        for (key, value) in options {
                            let key: GoogleConfigKey = key
                                .parse()
                                .map_err(|_| invalid(&format!("unknown GCS option {key:?}")))?;
                            builder = builder.with_config(key, value);
                        }
                        Arc::new(builder.build().map_err(|e| invalid(&e))?)
                    }
                    ObjectStoreScheme::MicrosoftAzure => {
                        let mut builder = MicrosoftAzureBuilder::from_env().with_url(url);
                        for (key, value) in options {
                            let key: AzureConfigKey = key
                                .parse()
                                .map_err(|_| invalid(&format!("unknown Azure option {key:?}")))?;
                            builder = builder.with_config(key, value);
                        }
                        Arc::new(builder.build().map_err(|e| invalid(&e))?)
                    }
                    _ => return Err(invalid(&"unsupported scheme")),
                };
                (store, prefix)
            }
        };
        let placement = match parsed.scheme() {
            "file" => MetadataPlacement::Header,
            _ => MetadataPlacement::Attribute,
        };
        Ok(Self::build(name.into(), url.into(), store, prefix).with_metadata_placement(placement))
    }

    /// A tier called `name` on `store`, its objects under `prefix` (`""`
    /// for the store's root). Metadata goes into attributes; use
    /// [`MetadataPlacement::Header`] for a store that keeps none (it is
    /// also detected on the first write).
    pub fn new(name: impl Into<String>, store: Arc<dyn ObjectStore>, prefix: &str) -> Result<Self> {
        let parsed = Path::parse(prefix)
            .map_err(|e| Error::InvalidConfig(format!("object store prefix {prefix:?}: {e}")))?;
        let label = format!("{store}/{parsed}");
        Ok(Self::build(name.into(), label, store, parsed))
    }

    fn build(name: String, label: String, store: Arc<dyn ObjectStore>, prefix: Path) -> Self {
        ObjectStoreTier {
            inner: Arc::new(Inner {
                name,
                label: label.into(),
                store,
                prefix,
                part_size: Self::DEFAULT_PART_SIZE,
                max_in_flight: Self::DEFAULT_MAX_IN_FLIGHT_PARTS,
                placement: MetadataPlacement::Attribute,
                no_attributes: AtomicBool::new(false),
                aborts: Arc::default(),
            }),
        }
    }

    fn with_inner(mut self, change: impl FnOnce(&mut Inner)) -> Self {
        change(Arc::make_mut(&mut self.inner));
        self
    }

    /// Size of one multipart part, from [`ObjectStoreTier::MIN_PART_SIZE`] (5 MiB) to
    /// [`ObjectStoreTier::MAX_PART_SIZE`] (5 GiB). Default [`ObjectStoreTier::DEFAULT_PART_SIZE`] (8 MiB).
    /// Bodies smaller than one part are written with a single PUT.
    pub fn with_part_size(self, bytes: usize) -> Result<Self> {
        if !(Self::MIN_PART_SIZE..=Self::MAX_PART_SIZE).contains(&bytes) {
            return Err(Error::InvalidConfig(format!(
                "part_size {bytes} is outside {}..={} bytes",
                Self::MIN_PART_SIZE,
                Self::MAX_PART_SIZE
            )));
        }
        Ok(self.with_inner(|inner| inner.part_size = bytes))
    }

    /// How many parts of one write may upload at once, at least 1. Default
    /// [`ObjectStoreTier::DEFAULT_MAX_IN_FLIGHT_PARTS`] (2). A write buffers at most this
    /// many parts plus the one it is filling.
    pub fn with_max_in_flight_parts(self, parts: usize) -> Result<Self> {
        if parts == 0 {
            return Err(Error::InvalidConfig(
                "max_in_flight_parts must be at least 1".into(),
            ));
        }
        Ok(self.with_inner(|inner| inner.max_in_flight = parts))
    }

    /// Where written objects keep their metadata. Default
    /// [`MetadataPlacement::Attribute`], except for `file://` URLs.
    pub fn with_metadata_placement(self, placement: MetadataPlacement) -> Self {
        self.with_inner(|inner| inner.placement = placement)
    }

    /// The store this tier writes to.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.store
    }

    /// The object that holds `key`.
    pub fn object_path(&self, key: &str) -> Path {
        let hash = Sha256::digest(key.as_bytes());
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        self.inner
            .prefix
            .clone()
            .join(&hex[0..2])
            .join(&hex[2..4])
            .join(hex.as_str())
    }

    /// Wait until the multipart uploads of sinks dropped without commit
    /// have been aborted. Their aborts run in the background; call this
    /// before shutting down so no upload is left pending in the bucket.
    pub async fn settle(&self) {
        self.inner.aborts.none_pending().await;
    }
}

impl Inner {
    fn error(&self, e: impl fmt::Display) -> Error {
        store_error(&self.label, e)
    }

    fn attributes_wanted(&self) -> bool {
        self.placement == MetadataPlacement::Attribute
            && !self.no_attributes.load(Ordering::Relaxed)
    }

    /// Read a header-layout object's metadata through ranged GETs.
    async fn stat_header(&self, path: &Path, size: u64) -> Result<Option<(String, Metadata)>> {
        if size < HEADER_FIXED as u64 {
            return Ok(None);
        }
        let mut want = HEADER_PROBE.min(size);
        loop {
            let range = GetOptions::new().with_range(Some(GetRange::Bounded(0..want)));
            let head = match self.store.get_opts(path, range).await {
                Ok(result) => result.bytes().await.map_err(|e| self.error(e))?,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(self.error(e)),
            };
            match parse_header(&head) {
                HeaderParse::Done { meta_end } => {
                    return Ok(decode_meta(&head[HEADER_FIXED..meta_end]));
                }
                HeaderParse::Need(n) if (n as u64) <= size && n as u64 > want => want = n as u64,
                HeaderParse::Need(_) | HeaderParse::Invalid => return Ok(None),
            }
        }
    }
}

fn store_error(label: &str, e: impl fmt::Display) -> Error {
    Error::Store(format!("object store {label}: {e}"))
}

/// Counts background aborts so that [`ObjectStoreTier::settle`] can wait.
#[derive(Default)]
struct PendingAborts {
    count: AtomicUsize,
    changed: Notify,
}

impl PendingAborts {
    fn start(self: &Arc<Self>) -> PendingAbort {
        self.count.fetch_add(1, Ordering::SeqCst);
        PendingAbort(Arc::clone(self))
    }

    async fn none_pending(&self) {
        loop {
            let changed = self.changed.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            changed.await;
        }
    }
}

struct PendingAbort(Arc<PendingAborts>);

impl Drop for PendingAbort {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

impl Tier for ObjectStoreTier {
    fn name(&self) -> String {
        self.inner.name.clone()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<TierEntry>>> {
        async move {
            let inner = &self.inner;
            let result = match inner
                .store
                .get_opts(&self.object_path(key), GetOptions::new())
                .await
            {
                Ok(result) => result,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(inner.error(e)),
            };
            let size = result.meta.size;
            if let Some(value) = meta_attribute(&result.attributes) {
                let Some(meta) = decode_attribute(value).and_then(|m| owned_by(m, key)) else {
                    return Ok(None);
                };
                let body = body_stream(result, &inner.label);
                return Ok(Some(TierEntry { meta, size, body }));
            }

            // Header layout: read until the header is complete, then hand
            // out what is left of the object as the body.
            let mut body = body_stream(result, &inner.label);
            let mut head = BytesMut::new();
            let meta_end = loop {
                match parse_header(&head) {
                    HeaderParse::Done { meta_end } => break meta_end,
                    HeaderParse::Invalid => return Ok(None),
                    HeaderParse::Need(_) => match body.next().await {
                        Some(chunk) => head.extend_from_slice(&chunk?),
                        None => return Ok(None),
                    },
                }
            };
            let Some(meta) =
                decode_meta(&head[HEADER_FIXED..meta_end]).and_then(|m| owned_by(m, key))
            else {
                return Ok(None);
            };
            let rest = head.split_off(meta_end).freeze();
            let body: ByteStream = if rest.is_empty() {
                body
            } else {
                Box::pin(futures::stream::once(async { Ok(rest) }).chain(body))
            };
            Ok(Some(TierEntry {
                meta,
                size: size - meta_end as u64,
                body,
            }))
        }
        .boxed()
    }

    fn stat<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Metadata>>> {
        async move {
            let inner = &self.inner;
            let path = self.object_path(key);
            let head = match inner
                .store
                .get_opts(&path, GetOptions::new().with_head(true))
                .await
            {
                Ok(head) => head,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(inner.error(e)),
            };
            let found = match meta_attribute(&head.attributes) {
                Some(value) => decode_attribute(value),
                None => inner.stat_header(&path, head.meta.size).await?,
            };
            Ok(found.and_then(|m| owned_by(m, key)))
        }
        .boxed()
    }

    fn begin_write<'a>(
        &'a self,
        key: &'a str,
        meta: Metadata,
    ) -> BoxFuture<'a, Result<Box<dyn TierSink>>> {
        async move {
            let inner = &self.inner;
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(inner.error("writes need a tokio runtime"));
            }
            let encoded = encode_meta(key, &meta);
            if encoded.len() > MAX_META {
                return Err(Error::InvalidKey(format!(
                    "key and metadata take {} bytes, more than the object store tier's {MAX_META}",
                    encoded.len()
                )));
            }
            let mut sink = ObjectSink {
                inner: Arc::clone(inner),
                path: self.object_path(key),
                attributes: Attributes::new(),
                header: header_bytes(&encoded),
                state: SinkState::Buffering(PutPayloadMut::new()),
                broken: false,
            };
            let value = URL_SAFE_NO_PAD.encode(&encoded);
            if inner.attributes_wanted() && value.len() <= ObjectStoreTier::ATTRIBUTE_BUDGET {
                sink.attributes
                    .insert(Attribute::Metadata(META_ATTRIBUTE.into()), value.into());
            } else {
                sink.use_header();
            }
            Ok(Box::new(sink) as Box<dyn TierSink>)
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            match self.inner.store.delete(&self.object_path(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.inner.error(e)),
            }
        }
        .boxed()
    }
}

fn meta_attribute(attributes: &Attributes) -> Option<&AttributeValue> {
    attributes.get(&Attribute::Metadata(META_ATTRIBUTE.into()))
}

fn decode_attribute(value: &str) -> Option<(String, Metadata)> {
    let raw = URL_SAFE_NO_PAD.decode(value).ok()?;
    decode_meta(&raw)
}

/// The metadata, if the object was written for `key`. A different key
/// means a foreign object at our path: not ours to serve.
fn owned_by((stored, meta): (String, Metadata), key: &str) -> Option<Metadata> {
    if stored == key {
        Some(meta)
    } else {
        tracing::warn!(key, stored, "object store entry holds another key; ignored");
        None
    }
}

/// The body of a GET as a [`ByteStream`]. Local files are read in larger
/// chunks than `object_store`'s default of 8 KiB.
fn body_stream(result: GetResult, label: &Arc<str>) -> ByteStream {
    let label = Arc::clone(label);
    match result.payload {
        GetResultPayload::File(file, _) => {
            let range = result.range;
            Box::pin(
                file_stream(file, range.start, range.end - range.start)
                    .map_err(move |e| store_error(&label, e)),
            )
        }
        GetResultPayload::Stream(stream) => {
            Box::pin(stream.map_err(move |e| store_error(&label, e)))
        }
    }
}

fn file_stream(
    file: std::fs::File,
    start: u64,
    len: u64,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures::stream::try_unfold(
        (file, start, len, true),
        |(mut file, start, left, first)| async move {
            if left == 0 {
                return Ok(None);
            }
            let (file, chunk) = tokio::task::spawn_blocking(move || {
                if first {
                    file.seek(SeekFrom::Start(start))?;
                }
                let mut chunk = Vec::with_capacity(FILE_CHUNK.min(left as usize));
                (&mut file)
                    .take(FILE_CHUNK as u64)
                    .read_to_end(&mut chunk)?;
                Ok::<_, std::io::Error>((file, chunk))
            })
            .await
            .map_err(std::io::Error::other)??;
            if chunk.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "object file ended early",
                ));
            }
            let read = chunk.len() as u64;
            Ok(Some((
                Bytes::from(chunk),
                (file, start, left.saturating_sub(read), false),
            )))
        },
    )
}

enum SinkState {
    /// Less than a part written so far: nothing exists in the store yet.
    Buffering(PutPayloadMut),
    /// A multipart upload is open.
    Uploading(PartUploader),
    /// Committed, or nothing left to clean up.
    Done,
}

struct ObjectSink {
    inner: Arc<Inner>,
    path: Path,
    /// Empty when the metadata goes into the header.
    attributes: Attributes,
    header: Bytes,
    state: SinkState,
    /// A write failed; the sink only awaits being dropped.
    broken: bool,
}

impl ObjectSink {
    /// Switch to the header layout: the header becomes the object's start.
    fn use_header(&mut self) {
        self.attributes = Attributes::new();
        if let SinkState::Buffering(buffer) = &mut self.state {
            let mut with_header = PutPayloadMut::new();
            with_header.push(self.header.clone());
            for chunk in &std::mem::take(buffer).freeze() {
                with_header.push(chunk.clone());
            }
            *buffer = with_header;
        }
    }

    async fn write_inner(&mut self, data: Bytes) -> object_store::Result<()> {
        match &mut self.state {
            SinkState::Buffering(buffer) => {
                buffer.push(data);
                if buffer.content_length() >= self.inner.part_size {
                    self.start_upload().await?;
                }
                Ok(())
            }
            SinkState::Uploading(upload) => upload.put(data).await,
            SinkState::Done => Err(object_store::Error::Generic {
                store: "daramjwee",
                source: "write after the end".into(),
            }),
        }
    }

    /// Open the multipart upload and send what was buffered.
    async fn start_upload(&mut self) -> object_store::Result<()> {
        let store = Arc::clone(&self.inner.store);
        let upload = match store
            .put_multipart_opts(&self.path, multipart_options(&self.attributes))
            .await
        {
            Err(object_store::Error::NotImplemented { .. }) if !self.attributes.is_empty() => {
                self.inner.no_attributes.store(true, Ordering::Relaxed);
                self.use_header();
                store
                    .put_multipart_opts(&self.path, PutMultipartOptions::default())
                    .await?
            }
            other => other?,
        };
        let SinkState::Buffering(buffer) = std::mem::replace(
            &mut self.state,
            SinkState::Uploading(PartUploader::new(
                upload,
                self.inner.part_size,
                self.inner.max_in_flight,
            )),
        ) else {
            unreachable!("an upload starts from the buffering state")
        };
        let SinkState::Uploading(uploader) = &mut self.state else {
            unreachable!("just set")
        };
        for chunk in &buffer.freeze() {
            uploader.put(chunk.clone()).await?;
        }
        Ok(())
    }

    async fn commit_inner(&mut self) -> object_store::Result<()> {
        if let SinkState::Uploading(upload) = &mut self.state {
            // The upload stays in the sink while it finishes: if this fails,
            // or the commit future is dropped half-way, dropping the sink
            // aborts it.
            upload.finish().await?;
            self.state = SinkState::Done;
            return Ok(());
        }
        let SinkState::Buffering(buffer) = std::mem::replace(&mut self.state, SinkState::Done)
        else {
            return Ok(());
        };
        let payload = buffer.freeze();
        let options = PutOptions {
            attributes: self.attributes.clone(),
            ..PutOptions::default()
        };
        match self
            .inner
            .store
            .put_opts(&self.path, payload.clone(), options)
            .await
        {
            Err(object_store::Error::NotImplemented { .. }) if !self.attributes.is_empty() => {
                self.inner.no_attributes.store(true, Ordering::Relaxed);
                let with_header: PutPayload = std::iter::once(self.header.clone())
                    .chain(payload.iter().cloned())
                    .collect();
                self.inner
                    .store
                    .put(&self.path, with_header)
                    .await
                    .map(drop)
            }
            other => other.map(drop),
        }
    }
}

fn multipart_options(attributes: &Attributes) -> PutMultipartOptions {
    PutMultipartOptions {
        attributes: attributes.clone(),
        ..PutMultipartOptions::default()
    }
}

impl TierSink for ObjectSink {
    fn write(&mut self, data: Bytes) -> BoxFuture<'_, Result<()>> {
        async move {
            if self.broken {
                return Err(self.inner.error("write after a failed write"));
            }
            if data.is_empty() {
                return Ok(());
            }
            self.write_inner(data).await.map_err(|e| {
                self.broken = true;
                self.inner.error(e)
            })
        }
        .boxed()
    }

    fn commit(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        async move {
            if self.broken {
                return Err(self.inner.error("commit after a failed write"));
            }
            // On failure the sink is dropped with its upload, which aborts it.
            self.commit_inner().await.map_err(|e| self.inner.error(e))
        }
        .boxed()
    }
}

impl Drop for ObjectSink {
    fn drop(&mut self) {
        let SinkState::Uploading(upload) = std::mem::replace(&mut self.state, SinkState::Done)
        else {
            return;
        };
        let pending = self.inner.aborts.start();
        let label = Arc::clone(&self.inner.label);
        let path = self.path.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = upload.abort().await {
                        tracing::warn!(store = %label, %path, error = %e, "aborting a multipart upload failed");
                    }
                    drop(pending);
                });
            }
            Err(_) => {
                tracing::warn!(store = %label, %path, "no runtime to abort a multipart upload; it stays pending");
            }
        }
    }
}

/// A multipart upload with a bounded number of parts in flight. Parts are
/// numbered in the order they are handed to `put_part`, so they may finish
/// in any order.
struct PartUploader {
    upload: Box<dyn MultipartUpload>,
    in_flight: JoinSet<object_store::Result<()>>,
    buffer: PutPayloadMut,
    part_size: usize,
    max_in_flight: usize,
}

impl PartUploader {
    fn new(upload: Box<dyn MultipartUpload>, part_size: usize, max_in_flight: usize) -> Self {
        PartUploader {
            upload,
            in_flight: JoinSet::new(),
            buffer: PutPayloadMut::new(),
            part_size,
            max_in_flight,
        }
    }

    async fn put(&mut self, mut data: Bytes) -> object_store::Result<()> {
        while !data.is_empty() {
            let room = self.part_size - self.buffer.content_length();
            if data.len() < room {
                self.buffer.push(data);
                return Ok(());
            }
            self.buffer.push(data.split_to(room));
            self.send_part().await?;
        }
        Ok(())
    }

    async fn send_part(&mut self) -> object_store::Result<()> {
        while self.in_flight.len() >= self.max_in_flight {
            self.join_one().await?;
        }
        let part = std::mem::take(&mut self.buffer).freeze();
        self.in_flight.spawn(self.upload.put_part(part));
        Ok(())
    }

    async fn join_one(&mut self) -> object_store::Result<()> {
        match self.in_flight.join_next().await {
            None => Ok(()),
            Some(Ok(uploaded)) => uploaded,
            Some(Err(join)) => Err(object_store::Error::Generic {
                store: "daramjwee",
                source: Box::new(join),
            }),
        }
    }

    async fn finish(&mut self) -> object_store::Result<()> {
        if !self.buffer.is_empty() {
            self.send_part().await?;
        }
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        self.upload.complete().await.map(drop)
    }

    async fn abort(mut self) -> object_store::Result<()> {
        self.in_flight.shutdown().await;
        self.upload.abort().await
    }
}

fn header_bytes(meta: &[u8]) -> Bytes {
    let mut header = BytesMut::with_capacity(HEADER_FIXED + meta.len());
    header.put_slice(HEADER_MAGIC);
    header.put_u8(HEADER_VERSION);
    header.put_u32_le(meta.len() as u32);
    header.put_slice(meta);
    header.freeze()
}

enum HeaderParse {
    /// The header is complete; the metadata ends (and the body starts) at
    /// this offset.
    Done { meta_end: usize },
    /// At least this many bytes are needed.
    Need(usize),
    /// Not a header this version can read.
    Invalid,
}

fn parse_header(bytes: &[u8]) -> HeaderParse {
    let known = bytes.len().min(HEADER_MAGIC.len());
    if bytes[..known] != HEADER_MAGIC[..known] {
        return HeaderParse::Invalid;
    }
    if bytes.len() < HEADER_FIXED {
        return HeaderParse::Need(HEADER_FIXED);
    }
    if bytes[4] != HEADER_VERSION {
        return HeaderParse::Invalid;
    }
    let len = u32::from_le_bytes(bytes[5..9].try_into().expect("four bytes")) as usize;
    if len > MAX_META {
        return HeaderParse::Invalid;
    }
    let meta_end = HEADER_FIXED + len;
    if bytes.len() < meta_end {
        HeaderParse::Need(meta_end)
    } else {
        HeaderParse::Done { meta_end }
    }
}

const HAS_CACHED_AT: u8 = 1 << 0;
const NEGATIVE: u8 = 1 << 1;
const HAS_FRESH_FOR: u8 = 1 << 2;
const HAS_STALE_FOR: u8 = 1 << 3;
const HAS_STALE_IF_ERROR: u8 = 1 << 4;

/// Key and metadata as bytes: a version byte, a flag byte, the optional
/// times as little-endian nanoseconds (since the Unix epoch for
/// `cached-at`), then length-prefixed strings (key,
/// tag, attribute count and pairs).
fn encode_meta(key: &str, meta: &Metadata) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + key.len() + meta.tag.len());
    let mut flags = 0;
    if meta.cached_at.is_some() {
        flags |= HAS_CACHED_AT;
    }
    if meta.negative {
        flags |= NEGATIVE;
    }
    if meta.fresh_for.is_some() {
        flags |= HAS_FRESH_FOR;
    }
    if meta.stale_for.is_some() {
        flags |= HAS_STALE_FOR;
    }
    if meta.stale_if_error.is_some() {
        flags |= HAS_STALE_IF_ERROR;
    }
    out.push(META_VERSION);
    out.push(flags);
    if let Some(at) = meta.cached_at {
        out.put_u64_le(nanos(at.duration_since(UNIX_EPOCH).unwrap_or_default()));
    }
    if let Some(fresh) = meta.fresh_for {
        out.put_u64_le(nanos(fresh));
    }
    if let Some(stale) = meta.stale_for {
        out.put_u64_le(nanos(stale));
    }
    if let Some(grace) = meta.stale_if_error {
        out.put_u64_le(nanos(grace));
    }
    let put_str = |out: &mut Vec<u8>, s: &str| {
        out.put_u32_le(u32::try_from(s.len()).unwrap_or(u32::MAX));
        out.put_slice(s.as_bytes());
    };
    put_str(&mut out, key);
    put_str(&mut out, &meta.tag);
    out.put_u32_le(u32::try_from(meta.attributes.len()).unwrap_or(u32::MAX));
    for (name, value) in &meta.attributes {
        put_str(&mut out, name);
        put_str(&mut out, value);
    }
    out
}

/// `d` in nanoseconds, saturating (584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The inverse of [`encode_meta`]; `None` for anything malformed.
fn decode_meta(mut raw: &[u8]) -> Option<(String, Metadata)> {
    fn u64_le(raw: &mut &[u8]) -> Option<u64> {
        (raw.len() >= 8).then(|| raw.get_u64_le())
    }
    fn u32_le(raw: &mut &[u8]) -> Option<usize> {
        (raw.len() >= 4).then(|| raw.get_u32_le() as usize)
    }
    fn string(raw: &mut &[u8]) -> Option<String> {
        let len = u32_le(raw)?;
        let bytes = raw.get(..len)?;
        let s = std::str::from_utf8(bytes).ok()?.to_owned();
        raw.advance(len);
        Some(s)
    }

    let [version, flags, ..] = *raw else {
        return None;
    };
    if version != META_VERSION {
        return None;
    }
    raw.advance(2);
    let mut meta = Metadata {
        negative: flags & NEGATIVE != 0,
        ..Metadata::default()
    };
    if flags & HAS_CACHED_AT != 0 {
        meta.cached_at = UNIX_EPOCH.checked_add(Duration::from_nanos(u64_le(&mut raw)?));
    }
    if flags & HAS_FRESH_FOR != 0 {
        meta.fresh_for = Some(Duration::from_nanos(u64_le(&mut raw)?));
    }
    if flags & HAS_STALE_FOR != 0 {
        meta.stale_for = Some(Duration::from_nanos(u64_le(&mut raw)?));
    }
    if flags & HAS_STALE_IF_ERROR != 0 {
        meta.stale_if_error = Some(Duration::from_nanos(u64_le(&mut raw)?));
    }
    let key = string(&mut raw)?;
    meta.tag = string(&mut raw)?;
    let count = u32_le(&mut raw)?;
    // Each pair takes at least eight bytes: a bad count fails here rather
    // than reserving memory for it.
    if count > raw.len() / 8 {
        return None;
    }
    meta.attributes.reserve(count);
    for _ in 0..count {
        let name = string(&mut raw)?;
        let value = string(&mut raw)?;
        meta.attributes.push((name, value));
    }
    raw.is_empty().then_some((key, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn full_meta() -> Metadata {
        Metadata {
            tag: "\"v1\"".into(),
            cached_at: Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
            negative: true,
            fresh_for: Some(Duration::from_secs(60)),
            stale_for: Some(Duration::from_millis(1500)),
            stale_if_error: None,
            attributes: vec![
                ("content-type".into(), "text/plain".into()),
                ("é".into(), String::new()),
            ],
        }
    }

    #[test]
    fn metadata_round_trips() {
        for meta in [Metadata::default(), full_meta(), Metadata::tagged("x")] {
            let raw = encode_meta("a/../key\0é", &meta);
            assert_eq!(decode_meta(&raw), Some(("a/../key\0é".to_owned(), meta)));
        }
    }

    #[test]
    fn damaged_metadata_is_rejected() {
        let raw = encode_meta("key", &full_meta());
        for cut in 0..raw.len() {
            assert_eq!(decode_meta(&raw[..cut]), None, "cut at {cut}");
        }
        let mut long = raw.clone();
        long.push(0);
        assert_eq!(decode_meta(&long), None);
        let mut version = raw;
        version[0] = 9;
        assert_eq!(decode_meta(&version), None);
    }

    #[test]
    fn header_parses_incrementally() {
        let header = header_bytes(&encode_meta("k", &Metadata::default()));
        assert!(matches!(
            parse_header(&header[..2]),
            HeaderParse::Need(HEADER_FIXED)
        ));
        assert!(
            matches!(parse_header(&header[..HEADER_FIXED]), HeaderParse::Need(n) if n == header.len())
        );
        assert!(
            matches!(parse_header(&header), HeaderParse::Done { meta_end } if meta_end == header.len())
        );
        assert!(matches!(parse_header(b"PK\x03\x04"), HeaderParse::Invalid));
        let mut huge = header.to_vec();
        huge[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse_header(&huge), HeaderParse::Invalid));
    }

    #[test]
    fn object_paths_stay_under_the_prefix() {
        let tier =
            ObjectStoreTier::new("t", Arc::new(InMemory::new()), "cache/node").expect("tier");
        for key in [
            "../../etc/passwd",
            "/abs",
            "a\0b",
            "é🦀",
            &"k".repeat(100_000),
            "",
        ] {
            let path = tier.object_path(key);
            let parts: Vec<_> = path.parts().map(|p| p.as_ref().to_owned()).collect();
            assert_eq!(parts.len(), 5, "{path}");
            assert_eq!(parts[..2], ["cache", "node"]);
            assert_eq!(parts[4].len(), 64);
            assert!(parts[4].bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn bad_urls_name_the_url() {
        for url in ["nope", "ftp://host/x", "file://relative", "s3://"] {
            match ObjectStoreTier::from_url("t", url) {
                Err(Error::InvalidConfig(why)) => assert!(why.contains(url), "{why}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn part_size_is_validated() {
        let tier = ObjectStoreTier::from_url("t", "memory://").expect("tier");
        assert!(matches!(
            tier.clone().with_part_size(1024),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            tier.clone().with_max_in_flight_parts(0),
            Err(Error::InvalidConfig(_))
        ));
        assert!(tier.with_part_size(ObjectStoreTier::MIN_PART_SIZE).is_ok());
    }

    #[test]
    fn times_survive_exactly() {
        let meta = Metadata {
            cached_at: Some(SystemTime::now()),
            fresh_for: Some(Duration::new(60, 123_456_789)),
            stale_for: Some(Duration::from_nanos(7)),
            ..Metadata::default()
        };
        let (_, back) = decode_meta(&encode_meta("k", &meta)).expect("decodes");
        assert_eq!(back, meta);
    }
}
