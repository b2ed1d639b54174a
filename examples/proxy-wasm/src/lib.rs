//! The daramjwee cache rules as an Envoy HTTP filter (proxy-wasm ABI 0.2.1).
//!
//! Envoy loads core wasm modules that speak the proxy-wasm ABI, not
//! components, so this crate links the engine (`daramjwee-component`) as a
//! library and reuses its rules: the eviction policies, `Cache-Control` and
//! `Cache-Status`, entry metadata, `If-None-Match` and freshness.
//!
//! Everything the filter decides lives in plain modules built and tested
//! natively: [`config`] reads the plugin configuration, [`rules`] decides
//! what a request and a response do, [`tier`] is the bounded in-plugin
//! store and [`entry`] the entry and its shared-data encoding. The ABI glue
//! (`filter`, wasm32 only) reads headers, calls these and acts on the answer.

pub mod config;
pub mod entry;
mod error;
pub mod rules;
pub mod tier;

#[cfg(target_arch = "wasm32")]
mod filter;

pub use config::Settings;
pub use entry::Entry;
pub use error::{Error, Result};
pub use tier::LocalTier;
