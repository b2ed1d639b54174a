//! A memory tier: entries held as shared [`Bytes`], so a hit hands out the
//! stored bytes without copying them.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, RwLock};

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::future::BoxFuture;

use crate::tier::{Tier, TierEntry, TierSink};
use crate::{Metadata, Result};

const SHARDS: usize = 16;

type Shard = RwLock<HashMap<String, (Metadata, Bytes)>>;

/// An in-memory tier, sharded by key.
#[derive(Clone)]
pub struct MemoryStore {
    name: String,
    shards: Arc<[Shard]>,
    hasher: RandomState,
}

impl MemoryStore {
    /// An empty memory tier called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        MemoryStore {
            name: name.into(),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &str) -> &Shard {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().expect("lock").len())
            .sum()
    }

    /// Whether the tier holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lookup(&self, key: &str) -> Option<(Metadata, Bytes)> {
        self.shard(key).read().expect("lock").get(key).cloned()
    }
}

struct MemorySink {
    store: MemoryStore,
    key: String,
    meta: Metadata,
    body: BytesMut,
}

impl TierSink for MemorySink {
    fn write(&mut self, data: Bytes) -> BoxFuture<'_, Result<()>> {
        self.body.extend_from_slice(&data);
        async { Ok(()) }.boxed()
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        let MemorySink {
            store,
            key,
            meta,
            body,
        } = *self;
        store
            .shard(&key)
            .write()
            .expect("lock")
            .insert(key, (meta, body.freeze()));
        async { Ok(()) }.boxed()
    }
}

impl Tier for MemoryStore {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<TierEntry>>> {
        let found = self.lookup(key).map(|(meta, body)| TierEntry {
            meta,
            size: body.len() as u64,
            body: Box::pin(futures::stream::iter(
                (!body.is_empty()).then_some(Ok(body)),
            )),
        });
        async { Ok(found) }.boxed()
    }

    fn stat<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Metadata>>> {
        let found = self.lookup(key).map(|(meta, _)| meta);
        async { Ok(found) }.boxed()
    }

    fn begin_write<'a>(
        &'a self,
        key: &'a str,
        meta: Metadata,
    ) -> BoxFuture<'a, Result<Box<dyn TierSink>>> {
        let sink = MemorySink {
            store: self.clone(),
            key: key.to_owned(),
            meta,
            body: BytesMut::new(),
        };
        async { Ok(Box::new(sink) as Box<dyn TierSink>) }.boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        self.shard(key).write().expect("lock").remove(key);
        async { Ok(()) }.boxed()
    }
}
