//! The daramjwee cache engine.
//!
//! All cache rules live here in plain Rust, generic over a [`Runtime`]
//! that supplies tiers, origins, time and background jobs. The same code
//! is built as a WASI 0.3 component (the `guest` module, wasm32 only) and
//! natively, where it is unit-tested and benchmarked.

mod config;
mod engine;
mod error;
mod fill;
mod freshness;
mod generation;
pub mod http;
mod meta;
pub mod policy;
mod runtime;
mod wait;

#[cfg(all(target_arch = "wasm32", feature = "fault-injection"))]
mod faults;
#[cfg(all(target_arch = "wasm32", feature = "guest", not(feature = "hit-path")))]
mod guest;
#[cfg(all(target_arch = "wasm32", feature = "hit-path"))]
mod hit_path;
#[cfg(all(target_arch = "wasm32", any(feature = "guest", feature = "hit-path")))]
mod wit_types;

#[cfg(test)]
mod tests;

pub use config::{Config, TierFreshness};
pub use engine::{Engine, Response, ResponseBody, Source, Status, WholeResponse, Writer};
pub use error::{Error, Result};
pub use fill::{Chunk, FillReader};
pub use freshness::{Conditions, Freshness, classify, classify_for};
pub use meta::{Decoder, Metadata, if_none_match};
pub use runtime::{Body, Entry, Fetched, Job, JobKind, Origin, Runtime, Sink, Tier};
