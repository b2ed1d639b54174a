//! daramjwee as a Spin app (Spin 4.1, WASI 0.3): the shared caching
//! middleware (`daramjwee-http-cache`) over Spin's key-value store as the
//! tier and Spin's outbound HTTP (`wasi:http/client`) as the origin.
//! Settings are Spin variables (`origin`, `fresh_for`, ...; `spin.toml`).

use std::cell::RefCell;

use daramjwee_http_cache::{EdgeCache, KeyValue, KvTier, Settings, text_response};
use wasip3::http::types::{ErrorCode, Request, Response};

use bindings::spin::key_value::key_value::Store;
use bindings::spin::variables::variables;

/// Spin's key-value store and variables (`wit/`).
mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "daramjwee:spin-app/spin-imports",
        // Spin's functions are `async func`s: bound as async Rust functions.
        async: true,
        generate_all,
    });
}

wasip3::http::service::export!(App);

/// Largest entry kept in the key-value store when `max_entry_bytes` is
/// unset: larger bodies are served but not stored.
const DEFAULT_MAX_ENTRY: u64 = 8 << 20;

thread_local! {
    /// The instance's cache, opened on the first request.
    static CACHE: RefCell<Option<EdgeCache<KvTier<SpinKv>>>> = const { RefCell::new(None) };
}

struct App;

impl wasip3::exports::http::handler::Guest for App {
    async fn handle(request: Request) -> std::result::Result<Response, ErrorCode> {
        let cache = match CACHE.with(|c| c.borrow().clone()) {
            Some(cache) => cache,
            None => match open().await {
                Ok(cache) => {
                    CACHE.with(|c| *c.borrow_mut() = Some(cache.clone()));
                    cache
                }
                Err(why) => {
                    return Ok(text_response(
                        500,
                        "daramjwee; detail=config",
                        &format!("daramjwee is misconfigured: {why}\n"),
                    ));
                }
            },
        };
        cache.handle(request).await
    }
}

/// Read the Spin variables and open the default key-value store.
async fn open() -> std::result::Result<EdgeCache<KvTier<SpinKv>>, String> {
    let mut values = Vec::new();
    for name in Settings::NAMES.into_iter().chain(["max_entry_bytes"]) {
        // An undeclared or empty variable means "use the default".
        if let Ok(value) = variables::get(name.to_owned()).await
            && !value.trim().is_empty()
        {
            values.push((name, value));
        }
    }
    let lookup = |name: &str| {
        values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    };
    let settings = Settings::from_lookup(lookup)?;
    let max_entry = match lookup("max_entry_bytes") {
        None => DEFAULT_MAX_ENTRY,
        Some(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("max_entry_bytes: {text:?} is not a number of bytes"))?,
    };
    let store = Store::open("default".to_owned())
        .await
        .map_err(|e| format!("key-value store `default`: {e:?}"))?;
    EdgeCache::open(
        settings,
        KvTier::new("spin-kv:default", SpinKv(store), max_entry),
    )
}

/// Spin's key-value store as the [`KeyValue`] of the shared tier.
pub struct SpinKv(Store);

impl KeyValue for SpinKv {
    async fn get(&self, key: &str) -> std::result::Result<Option<Vec<u8>>, String> {
        self.0
            .get(key.to_owned())
            .await
            .map_err(|e| format!("{e:?}"))
    }

    async fn set(&self, key: &str, value: &[u8]) -> std::result::Result<(), String> {
        self.0
            .set(key.to_owned(), value.to_vec())
            .await
            .map_err(|e| format!("{e:?}"))
    }

    async fn delete(&self, key: &str) -> std::result::Result<(), String> {
        self.0
            .delete(key.to_owned())
            .await
            .map_err(|e| format!("{e:?}"))
    }
}
