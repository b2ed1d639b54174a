//! A tier over a key-value store (Spin's, or any other): one value per
//! entry, header then body (the layout of [`crate::encode_header`]), under
//! `daramjwee:` and the SHA-256 of the key, written with one `set` when
//! the body is whole, so a reader sees the old value or the new one.
//!
//! Key-value interfaces read and write whole values, so a body is held in
//! memory while it is stored; bodies over `max_entry` bytes are served
//! but not stored.

use std::future::Future;
use std::rc::Rc;

use daramjwee_component::{Entry, Error, Metadata, Result, Sink, Tier};

use crate::body::EdgeBody;
use crate::entry::{Header, encode_header, storage_name};

/// Keys in the store are this and the SHA-256 of the cache key.
const KEY_PREFIX: &str = "daramjwee:";

/// What the tier needs of a key-value store. Errors are the store's own
/// words.
pub trait KeyValue: 'static {
    /// The value of `key`, if any.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, String>>;
    /// Set `key` to `value`, replacing it whole.
    fn set(&self, key: &str, value: &[u8]) -> impl Future<Output = Result<(), String>>;
    /// Remove `key`; absent is fine.
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), String>>;
}

/// A tier in a key-value store.
pub struct KvTier<S> {
    name: String,
    store: Rc<S>,
    max_entry: u64,
}

impl<S: KeyValue> KvTier<S> {
    /// A tier called `name` over `store`, storing bodies up to `max_entry`
    /// bytes.
    pub fn new(name: impl Into<String>, store: S, max_entry: u64) -> Self {
        KvTier {
            name: name.into(),
            store: Rc::new(store),
            max_entry,
        }
    }

    async fn read(&self, key: &str) -> Result<Option<(Header, Vec<u8>)>> {
        let value = self
            .store
            .get(&store_key(key))
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

fn store_key(key: &str) -> String {
    format!("{KEY_PREFIX}{}", storage_name(key))
}

impl<S: KeyValue> Tier for KvTier<S> {
    type Body = EdgeBody;
    type Sink = KvSink<S>;
    /// Nothing is held in memory: every read streams.
    type Whole = std::convert::Infallible;

    fn name(&self) -> String {
        self.name.clone()
    }

    /// Bodies over `max_entry` bytes are not stored.
    fn admits(&self, _key: &str, _meta: &Metadata, size: u64) -> bool {
        size <= self.max_entry
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

    async fn begin_write(&self, key: &str, meta: &Metadata) -> Result<KvSink<S>> {
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
            .delete(&store_key(key))
            .await
            .map_err(|e| Error::Store(format!("key-value delete of {key:?}: {e}")))
    }
}

/// A write in progress, buffered until commit; dropping it stores nothing.
pub struct KvSink<S> {
    store: Rc<S>,
    key: String,
    meta: Metadata,
    body: Vec<u8>,
    max_entry: u64,
}

impl<S: KeyValue> Sink for KvSink<S> {
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
            .set(&store_key(&self.key), &value)
            .await
            .map_err(|e| Error::Store(format!("key-value set of {:?}: {e}", self.key)))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use futures::executor::block_on;

    use super::*;

    /// An in-memory key-value store, for the tier's own rules.
    #[derive(Default)]
    struct Map(RefCell<HashMap<String, Vec<u8>>>);

    impl KeyValue for Rc<Map> {
        async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
            Ok(self.0.borrow().get(key).cloned())
        }
        async fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
            self.0.borrow_mut().insert(key.into(), value.into());
            Ok(())
        }
        async fn delete(&self, key: &str) -> Result<(), String> {
            self.0.borrow_mut().remove(key);
            Ok(())
        }
    }

    fn meta(tag: &str) -> Metadata {
        Metadata {
            tag: tag.into(),
            cached_at: Some(5),
            ..Metadata::default()
        }
    }

    async fn read(tier: &KvTier<Rc<Map>>, key: &str) -> Option<(Metadata, Vec<u8>)> {
        let entry = tier.get(key).await.expect("get")?;
        let mut body = entry.body;
        let mut bytes = Vec::new();
        while let Some(chunk) = daramjwee_component::Body::next(&mut body).await {
            bytes.extend(chunk.expect("chunk"));
        }
        assert_eq!(bytes.len() as u64, entry.size);
        Some((entry.meta, bytes))
    }

    async fn put(tier: &KvTier<Rc<Map>>, key: &str, tag: &str, body: &[u8]) -> Result<()> {
        let mut sink = tier.begin_write(key, &meta(tag)).await?;
        for chunk in body.chunks(4) {
            sink.write(chunk.to_vec()).await?;
        }
        sink.commit().await
    }

    #[test]
    fn commit_publishes_whole_values_and_delete_removes_them() {
        let map = Rc::new(Map::default());
        let tier = KvTier::new("kv", Rc::clone(&map), 1 << 20);
        block_on(async {
            assert!(read(&tier, "/k").await.is_none());
            put(&tier, "/k", "v1", b"a body of bytes").await.unwrap();
            assert_eq!(
                read(&tier, "/k").await,
                Some((meta("v1"), b"a body of bytes".to_vec()))
            );
            assert_eq!(tier.stat("/k").await.unwrap(), Some(meta("v1")));
            put(&tier, "/k", "v2", b"").await.unwrap();
            assert_eq!(read(&tier, "/k").await, Some((meta("v2"), Vec::new())));
            tier.delete("/k").await.unwrap();
            assert!(read(&tier, "/k").await.is_none());
        });
        assert!(map.0.borrow().is_empty());
    }

    #[test]
    fn dropped_or_oversized_writes_store_nothing() {
        let map = Rc::new(Map::default());
        let tier = KvTier::new("kv", Rc::clone(&map), 8);
        block_on(async {
            let mut sink = tier.begin_write("/k", &meta("v")).await.unwrap();
            sink.write(b"half".to_vec()).await.unwrap();
            drop(sink);
            let err = put(&tier, "/big", "v", b"more than eight bytes")
                .await
                .unwrap_err();
            assert!(err.to_string().contains("max_entry_bytes"), "{err}");
            put(&tier, "/fits", "v", b"eight by").await.unwrap();
        });
        let keys: Vec<String> = map.0.borrow().keys().cloned().collect();
        assert_eq!(keys, vec![store_key("/fits")]);
    }

    #[test]
    fn damaged_or_foreign_values_read_as_misses() {
        let map = Rc::new(Map::default());
        let tier = KvTier::new("kv", Rc::clone(&map), 1 << 20);
        block_on(async {
            put(&tier, "/a", "v", b"0123456789").await.unwrap();
            put(&tier, "/b", "v", b"other").await.unwrap();
            let full = map.0.borrow()[&store_key("/a")].clone();
            for bad in [
                full[..full.len() - 1].to_vec(),
                full[..6].to_vec(),
                b"junk".to_vec(),
            ] {
                map.0.borrow_mut().insert(store_key("/a"), bad);
                assert!(read(&tier, "/a").await.is_none());
            }
            let other = map.0.borrow()[&store_key("/b")].clone();
            map.0.borrow_mut().insert(store_key("/a"), other);
            assert!(read(&tier, "/a").await.is_none(), "another key's value");
        });
    }
}
