//! What the engine needs from the world it runs in: tiers, an origin, a
//! clock, a job queue and a way to spawn tasks. The guest glue implements
//! these over WIT imports; tests and the native benchmark implement them
//! in plain Rust. Everything is single-threaded (`!Send`), like a
//! component instance.

use std::future::Future;

use crate::{Metadata, Result};

/// A body being read: a sequence of chunks.
pub trait Body: 'static {
    /// The next chunk; `None` at a complete end; an error when the body
    /// broke off (a short tier read, a failed origin stream).
    fn next(&mut self) -> impl Future<Output = Option<Result<Vec<u8>>>>;
}

/// A write in progress; dropping it without `commit` aborts it.
pub trait Sink: 'static {
    /// Append `data`.
    fn write(&mut self, data: Vec<u8>) -> impl Future<Output = Result<()>>;
    /// Publish atomically.
    fn commit(self) -> impl Future<Output = Result<()>>;
}

/// An entry opened for reading.
pub struct Entry<B> {
    /// The entry's metadata.
    pub meta: Metadata,
    /// Body length in bytes.
    pub size: u64,
    /// The body.
    pub body: B,
}

/// One storage tier.
pub trait Tier: 'static {
    /// Body type of reads.
    type Body: Body;
    /// Write handle type.
    type Sink: Sink;
    /// A body handed over at once by [`Tier::get_whole`], passed through
    /// the engine unread.
    type Whole: 'static;
    /// Unique name, for logs and configuration checks.
    fn name(&self) -> String;
    /// Open `key` for reading.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Entry<Self::Body>>>>;
    /// The entry of `key` with its body as the tier holds it, when the
    /// tier can hand it over at once (it holds it in memory). `None` says
    /// only that this way cannot answer (`get` can); tiers that hold
    /// nothing in memory keep this default.
    fn get_whole(&self, key: &str) -> Result<Option<(Metadata, Self::Whole)>> {
        let _ = key;
        Ok(None)
    }
    /// Whether the tier would keep the entry of `key` with `meta` and a
    /// body of `size` bytes; tiers that keep entries of any size keep
    /// this default.
    fn admits(&self, key: &str, meta: &Metadata, size: u64) -> bool {
        let _ = (key, meta, size);
        true
    }
    /// Metadata of `key` without the body.
    fn stat(&self, key: &str) -> impl Future<Output = Result<Option<Metadata>>>;
    /// Start writing `key`.
    fn begin_write(&self, key: &str, meta: &Metadata) -> impl Future<Output = Result<Self::Sink>>;
    /// Remove `key`; absent is fine.
    fn delete(&self, key: &str) -> impl Future<Output = Result<()>>;
}

/// The origin's answer.
pub enum Fetched<B> {
    /// A new body with its metadata.
    Body {
        /// Metadata; `cached-at` is set by the engine.
        meta: Metadata,
        /// The body.
        body: B,
        /// Stream it, but write it to no tier (HTTP `no-store`).
        no_store: bool,
        /// The body's length when known in advance: it is written to the
        /// first tier that admits it.
        size: Option<u64>,
    },
    /// The copy we hold is still good.
    NotModified,
    /// The copy we hold is still good, with this metadata from now on.
    Revalidated(Metadata),
    /// The key does not exist; cache that.
    NotFound,
}

/// The fetcher of one request.
pub trait Origin: 'static {
    /// Body type of fetched bodies.
    type Body: Body;
    /// Fetch `key`; `held` is the metadata of the copy we hold.
    fn fetch(
        &self,
        key: &str,
        held: Option<&Metadata>,
    ) -> impl Future<Output = Result<Fetched<Self::Body>>>;
}

/// A background job, handed to the host's queue and back to
/// [`crate::Engine::run_job`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// The key.
    pub key: String,
    /// The key's generation when the job was made.
    pub generation: u64,
    /// What to do.
    pub kind: JobKind,
}

/// What a background job does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// Fetch again and replace the cached copy.
    Refresh,
    /// Copy the entry from tier `source` into `targets`.
    Copy {
        /// Tier read from.
        source: u32,
        /// Tiers written.
        targets: Vec<u32>,
    },
}

/// The world the engine runs in.
pub trait Runtime: Sized + 'static {
    /// Body type shared by tiers and origins.
    type Body: Body;
    /// Sink type of the tiers.
    type Sink: Sink;
    /// Tier type.
    type Tier: Tier<Body = Self::Body, Sink = Self::Sink>;
    /// Origin type.
    type Origin: Origin<Body = Self::Body>;

    /// Wall-clock time in ms since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Wait `ms` milliseconds.
    fn sleep(&self, ms: u64) -> impl Future<Output = ()>;
    /// Queue a background job; `Busy` when the queue is full.
    fn submit(&self, job: Job, origin: Option<Self::Origin>) -> Result<()>;
    /// Run `task` concurrently with the caller, to completion.
    fn spawn(&self, task: impl Future<Output = ()> + 'static);
}
