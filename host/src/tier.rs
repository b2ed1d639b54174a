//! The tier trait every store implements, and the body stream type.

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;
use futures::future::BoxFuture;

use crate::{Metadata, Result};

/// A body: chunks of bytes, or an error if it broke off.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// An entry opened for reading from a tier.
pub struct TierEntry {
    /// The entry's metadata.
    pub meta: Metadata,
    /// Body length in bytes.
    pub size: u64,
    /// The body.
    pub body: ByteStream,
}

/// A write in progress. Dropping it without [`TierSink::commit`] aborts
/// the write: readers never see a partial entry.
pub trait TierSink: Send {
    /// Append `data`.
    fn write(&mut self, data: Bytes) -> BoxFuture<'_, Result<()>>;
    /// Publish the entry atomically, replacing any previous one.
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
}

/// One store in the ordered list of tiers. Implementations must be safe to
/// call from many threads at once.
pub trait Tier: Send + Sync + 'static {
    /// A name unique within one cache, for logs and configuration checks.
    fn name(&self) -> String;
    /// Open `key` for reading, or `None` when absent.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<TierEntry>>>;
    /// The entry of `key` with its body as held, when the tier can hand
    /// it over at once (it holds it in memory). `None` says only that
    /// this way cannot answer: the key may still be there for
    /// [`Tier::get`]. Must not block; stores that hold nothing in memory
    /// keep this default.
    fn get_whole(&self, key: &str) -> Result<Option<(Metadata, Bytes)>> {
        let _ = key;
        Ok(None)
    }
    /// Whether the store would keep the entry of `key` with `meta` and
    /// `size` body bytes (its capacity and eviction policy admit it,
    /// charging the key and metadata as a write would). The engine writes
    /// a body whose size the origin states to the first tier that would.
    /// Must not block; stores that keep entries of any size keep this
    /// default.
    fn admits(&self, key: &str, meta: &Metadata, size: u64) -> bool {
        let _ = (key, meta, size);
        true
    }
    /// The metadata of `key` without its body.
    fn stat<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Metadata>>>;
    /// Start writing `key`.
    fn begin_write<'a>(
        &'a self,
        key: &'a str,
        meta: Metadata,
    ) -> BoxFuture<'a, Result<Box<dyn TierSink>>>;
    /// Remove `key`; removing an absent key succeeds.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>>;
}

/// Counters a store keeps, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Entries held.
    pub entries: u64,
    /// Bytes held, as the store charges them against its capacity.
    pub bytes: u64,
    /// Entries dropped to stay within the capacity (an entry too large for
    /// the whole capacity counts once when it is turned away).
    pub evictions: u64,
}
