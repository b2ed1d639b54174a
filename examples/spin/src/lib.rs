//! daramjwee as a Spin app (Spin 4.1, WASI 0.3): the shared caching
//! middleware (`daramjwee-http-cache`) over Spin's key-value store as the
//! tier and Spin's outbound HTTP (`wasi:http/client`) as the origin.
//! Settings are Spin variables (`origin`, `fresh_for`, ...; `spin.toml`).

use std::cell::RefCell;
use std::rc::Rc;

use daramjwee_component::{Entry, Error, Metadata, Result, Sink, Tier};
use daramjwee_http_cache::{
    EdgeBody, EdgeCache, Header, Settings, encode_header, storage_name, text_response,
};
use spin_sdk::key_value::Store;
use wasip3::http::types::{ErrorCode, Request, Response};

wasip3::http::service::export!(App);

/// Largest entry kept in the key-value store when `max_entry_bytes` is
/// unset: larger bodies are served but not stored.
const DEFAULT_MAX_ENTRY: u64 = 8 << 20;

/// Key-value keys are `daramjwee:` and the SHA-256 of the cache key.
const KEY_PREFIX: &str = "daramjwee:";

thread_local! {
    /// The instance's cache, opened on the first request.
    static CACHE: RefCell<Option<EdgeCache<KvTier>>> = const { RefCell::new(None) };
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
async fn open() -> std::result::Result<EdgeCache<KvTier>, String> {
    let mut values = Vec::new();
    for name in Settings::NAMES.into_iter().chain(["max_entry_bytes"]) {
        // An undeclared or empty variable means "use the default".
        if let Ok(value) = spin_sdk::variables::get(name).await
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
    let store = Store::open_default()
        .await
        .map_err(|e| format!("key-value store `default`: {e}"))?;
    EdgeCache::open(
        settings,
        KvTier {
            store: Rc::new(store),
            max_entry,
        },
    )
}

/// A tier in Spin's key-value store: one value per entry, header then
/// body (the layout of `daramjwee-http-cache`), written in one `set` on
/// commit, so readers see the old value or the new one.
pub struct KvTier {
    store: Rc<Store>,
    max_entry: u64,
}

impl KvTier {
    async fn read(&self, key: &str) -> Result<Option<(Header, Vec<u8>)>> {
        let value = self
            .store
            .get(format!("{KEY_PREFIX}{}", storage_name(key)))
            .await
            .map_err(|e| Error::Store(format!("key-value get of {key:?}: {e}")))?;
        // A damaged value, another key's value (a hash collision) or a
        // short one reads as a miss.
        Ok(value.and_then(|value| {
            let header = Header::decode(&value)?;
            (header.key == key && (value.len() - header.len) as u64 == header.body_len)
                .then_some((header, value))
        }))
    }
}

impl Tier for KvTier {
    type Body = EdgeBody;
    type Sink = KvSink;

    fn name(&self) -> String {
        "spin-kv:default".into()
    }

    async fn get(&self, key: &str) -> Result<Option<Entry<EdgeBody>>> {
        Ok(self.read(key).await?.map(|(header, data)| Entry {
            meta: header.meta,
            size: header.body_len,
            body: EdgeBody::Bytes {
                data,
                at: header.len,
            },
        }))
    }

    async fn stat(&self, key: &str) -> Result<Option<Metadata>> {
        Ok(self.read(key).await?.map(|(header, _)| header.meta))
    }

    async fn begin_write(&self, key: &str, meta: &Metadata) -> Result<KvSink> {
        Ok(KvSink {
            store: Rc::clone(&self.store),
            key: key.to_owned(),
            meta: meta.clone(),
            body: Vec::new(),
            max_entry: self.max_entry,
        })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.store
            .delete(format!("{KEY_PREFIX}{}", storage_name(key)))
            .await
            .map_err(|e| Error::Store(format!("key-value delete of {key:?}: {e}")))
    }
}

/// A write in progress, buffered until commit (the key-value interface
/// has no streaming write); dropping it stores nothing.
pub struct KvSink {
    store: Rc<Store>,
    key: String,
    meta: Metadata,
    body: Vec<u8>,
    max_entry: u64,
}

impl Sink for KvSink {
    async fn write(&mut self, data: Vec<u8>) -> Result<()> {
        if (self.body.len() + data.len()) as u64 > self.max_entry {
            self.body = Vec::new();
            return Err(Error::Store(format!(
                "{:?} is larger than max_entry_bytes ({}): not stored",
                self.key, self.max_entry
            )));
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn commit(self) -> Result<()> {
        let mut value = encode_header(&self.key, &self.meta, self.body.len() as u64);
        value.extend_from_slice(&self.body);
        self.store
            .set(format!("{KEY_PREFIX}{}", storage_name(&self.key)), &value)
            .await
            .map_err(|e| Error::Store(format!("key-value set of {:?}: {e}", self.key)))
    }
}
