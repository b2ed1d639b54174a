//! The origin as the embedding API sees it: an async trait.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;

use crate::tier::ByteStream;
use crate::{Metadata, Result};

/// The origin's answer to a fetch.
pub enum FetchResult {
    /// A new body with its metadata (`cached_at` is set by the cache to
    /// now, or kept when the fetcher set an earlier time: an answer that
    /// was already that old when it arrived).
    Body {
        /// Metadata of the body; its `tag` is the origin's ETag.
        meta: Metadata,
        /// The body. An `Err` item means it broke off; nothing is cached.
        body: ByteStream,
        /// Serve the body but store it in no tier (HTTP `no-store`).
        no_store: bool,
        /// The body's length when known in advance (HTTP
        /// `Content-Length`): the body is written to the first tier that
        /// admits an entry of this size (see [`crate::Tier::admits`]).
        /// Unknown, it goes to tier 0, which drops it if it turns out too
        /// large. Readers are told it up front; a body that ends at
        /// another length broke off: readers get an error, nothing is
        /// cached.
        size: Option<u64>,
    },
    /// The copy the cache holds (whose metadata was passed in) is good.
    NotModified,
    /// The copy the cache holds is good, with this metadata from now on
    /// (an HTTP 304's fields merged into the stored ones); `cached_at` as
    /// for [`FetchResult::Body`].
    Revalidated(Metadata),
    /// The key does not exist; the cache remembers that (negative entry).
    NotFound,
}

impl FetchResult {
    /// A body held in memory.
    pub fn bytes(meta: Metadata, body: impl Into<Bytes>) -> Self {
        let body: Bytes = body.into();
        FetchResult::Body {
            meta,
            size: Some(body.len() as u64),
            body: Box::pin(futures::stream::iter(
                (!body.is_empty()).then_some(Ok(body)),
            )),
            no_store: false,
        }
    }
}

/// User code that produces the body of a key. Any error is returned to the
/// caller and never cached.
pub trait Fetcher: Send + Sync + 'static {
    /// Fetch `key`. `held` is the metadata of the copy the cache holds, if
    /// any, so the origin can answer [`FetchResult::NotModified`].
    fn fetch(
        &self,
        key: &str,
        held: Option<&Metadata>,
    ) -> impl Future<Output = Result<FetchResult>> + Send;
}

/// The object-safe form the host passes around.
pub(crate) trait DynFetcher: Send + Sync + 'static {
    fn fetch_owned(
        self: Arc<Self>,
        key: String,
        held: Option<Metadata>,
    ) -> BoxFuture<'static, Result<FetchResult>>;
}

impl<F: Fetcher> DynFetcher for F {
    fn fetch_owned(
        self: Arc<Self>,
        key: String,
        held: Option<Metadata>,
    ) -> BoxFuture<'static, Result<FetchResult>> {
        async move { self.fetch(&key, held.as_ref()).await }.boxed()
    }
}

pub(crate) type SharedFetcher = Arc<dyn DynFetcher>;
