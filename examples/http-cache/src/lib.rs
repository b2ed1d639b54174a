//! The daramjwee caching middleware for WASI 0.3 `wasi:http` hosts.
//!
//! The engine (`daramjwee-component`, all cache rules) is linked in as a
//! library and driven over a [`daramjwee_component::Runtime`] made of what
//! a `wasi:http` host offers: the origin is fetched through
//! `wasi:http/client`, tiers keep entries in the host's storage (a
//! preopened directory for stock `wasmtime serve`, a key-value store in
//! Spin), and background refreshes run as tasks of the instance. Each home
//! (`examples/wasi-http`, `examples/spin`) only picks its tier and reads
//! its settings; everything else is here, so the tests of one home
//! exercise the other's logic too.

mod body;
mod entry;
mod file;
mod handler;
mod kv;
mod origin;
mod runtime;
mod settings;

pub use body::EdgeBody;
pub use entry::{Header, encode_header, storage_name};
pub use file::{FileSink, FileTier};
pub use handler::{EdgeCache, text_response};
pub use kv::{KeyValue, KvSink, KvTier};
pub use origin::HttpOrigin;
pub use runtime::EdgeRt;
pub use settings::{OriginUrl, Settings};
