//! # daramjwee
//!
//! A stream-based hybrid cache whose rules run in a WebAssembly component.
//! This crate is the wasmtime host: it builds a cache of N ordered tiers,
//! runs the embedded engine component (the `daramjwee-component` crate,
//! built for `wasm32-wasip2`) inside wasmtime with WASI 0.3, and streams
//! bodies between tiers, the origin and the caller.
//!
//! ```no_run
//! use daramjwee::{Cache, FetchResult, Fetcher, MemoryStore, Metadata, Result};
//!
//! struct Origin;
//!
//! impl Fetcher for Origin {
//!     async fn fetch(&self, key: &str, _held: Option<&Metadata>) -> Result<FetchResult> {
//!         Ok(FetchResult::bytes(Metadata::tagged("v1"), format!("hello, {key}")))
//!     }
//! }
//!
//! # async fn demo() -> Result<()> {
//! let cache = Cache::builder().tier(MemoryStore::new("memory")).build().await?;
//! let response = cache.get("greeting", Origin).await?;
//! let body = response.body.expect("a body").bytes().await?;
//! assert_eq!(&body[..], b"hello, greeting");
//! cache.close().await;
//! # Ok(()) }
//! ```

mod bindings;
mod body;
mod cache;
mod component;
mod error;
mod fetcher;
mod file;
mod hit_path;
mod imports;
mod memory;
mod meta;
mod object;
mod pool;
mod rules;
pub mod serve;
mod shard;
mod spec;
mod tier;

pub use body::Body;
pub use cache::{Cache, CacheBuilder, GetResponse, Source, Status, Writer};
#[cfg(feature = "fault-injection")]
pub use component::FAULTY_COMPONENT;
pub use component::{ComponentSource, EMBEDDED_COMPONENT, default_compile_cache};
/// Eviction policies, re-exported from the engine crate.
pub use daramjwee_component::Conditions;
pub use daramjwee_component::policy::PolicyKind;
pub use error::{Error, Result};
pub use fetcher::{FetchResult, Fetcher};
pub use file::{FileStore, FileStoreBuilder, WriteMode};
pub use memory::MemoryStore;
pub use meta::Metadata;
pub use object::{MetadataPlacement, ObjectStoreTier};
pub use pool::{PoolStats, WorkerStrategy};
pub use rules::{HttpRules, Judged, Judgement, OriginUrl, Policy, RawFields, Reading, Upstream};
pub use spec::{DEFAULT_POLICY, TierSpec, parse_size};
pub use tier::{ByteStream, StoreStats, Tier, TierEntry, TierSink};

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
mod readme {}
