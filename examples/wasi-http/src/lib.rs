//! daramjwee as a `wasi:http` (WASI 0.3) caching middleware for
//! wasmtime-based proxies, stock `wasmtime serve` among them:
//!
//! ```text
//! wasmtime serve -Sp3 -Shttp -Scli --dir ./cache::/cache \
//!     --env DARAMJWEE_ORIGIN=http://127.0.0.1:8080 daramjwee_wasi_http.wasm
//! ```
//!
//! Settings come from environment variables (`DARAMJWEE_ORIGIN`,
//! `DARAMJWEE_FRESH_FOR`, ..., see the README); entries live in files
//! under `DARAMJWEE_CACHE_DIR` (default `/cache`), a directory the host
//! preopens, so they outlive the instance that wrote them.

use std::cell::OnceCell;

use daramjwee_http_cache::{EdgeCache, FileTier, Settings, text_response};
use wasip3::http::types::{ErrorCode, Request, Response};

wasip3::http::service::export!(Middleware);

/// Where entries go when `DARAMJWEE_CACHE_DIR` is unset.
const DEFAULT_CACHE_DIR: &str = "/cache";

thread_local! {
    /// The instance's cache: opened on the first request and kept for the
    /// next ones when the host reuses the instance.
    static CACHE: OnceCell<Result<EdgeCache<FileTier>, String>> = const { OnceCell::new() };
}

struct Middleware;

impl wasip3::exports::http::handler::Guest for Middleware {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        match CACHE.with(|cell| cell.get_or_init(open).clone()) {
            Ok(cache) => cache.handle(request).await,
            Err(why) => Ok(text_response(
                500,
                "daramjwee; detail=config",
                &format!("daramjwee is misconfigured: {why}\n"),
            )),
        }
    }
}

/// Read the settings from `DARAMJWEE_*` variables and open the file tier.
fn open() -> Result<EdgeCache<FileTier>, String> {
    let settings = Settings::from_lookup(env)?;
    let dir = env("cache_dir").unwrap_or_else(|| DEFAULT_CACHE_DIR.into());
    let tier = FileTier::open(&dir).map_err(|e| {
        format!("{e} (preopen a directory there, e.g. `wasmtime serve --dir ./cache::{dir}`)")
    })?;
    EdgeCache::open(settings, tier)
}

/// The `DARAMJWEE_`-prefixed environment variable of setting `name`.
fn env(name: &str) -> Option<String> {
    std::env::var(format!("DARAMJWEE_{}", name.to_ascii_uppercase())).ok()
}
