//! A memory tier: entries held as shared [`Bytes`], so a hit hands out the
//! stored bytes without copying them.
//!
//! Keys are spread over shards, each with its own map and, when the store
//! is bounded, its own eviction policy over an equal part of the capacity.
//! An entry the policy does not admit is not kept: one larger than its
//! shard's part, or for S3-FIFO not smaller than the small queue (a tenth
//! of the part). Bounded stores get at most 8 shards and no fewer than
//! 64 MiB each (one below 128 MiB), so that part stays useful.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::{Bytes, BytesMut};
use daramjwee_component::policy::{KeyHasher, Policy, PolicyKind};
use futures::FutureExt;
use futures::future::BoxFuture;

use crate::tier::{StoreStats, Tier, TierEntry, TierSink};
use crate::{Metadata, Result};

/// Shards of an unbounded store, which has no policy lock to contend on.
const UNBOUNDED_SHARDS: u64 = 16;
/// Shards of a bounded store at most: enough for a few cores to rarely
/// meet on a policy lock.
const MAX_SHARDS: u64 = 8;
/// A bounded store gets no more shards than leave each this much: an entry
/// larger than its shard's part, or for S3-FIFO than a tenth of it, is
/// never kept.
const MIN_SHARD_CAPACITY: u64 = 64 << 20;

struct Stored {
    meta: Metadata,
    body: Bytes,
    charge: u64,
}

type Policed = Box<dyn Policy<Arc<str>>>;

struct Shard {
    map: RwLock<HashMap<Arc<str>, Arc<Stored>, KeyHasher>>,
    /// Taken before `map` whenever both are held.
    policy: Option<Mutex<Policed>>,
}

struct Inner {
    name: String,
    shards: Box<[Shard]>,
    /// Picks a key's shard; keyed at random, as the maps and policies are.
    hasher: KeyHasher,
    /// Bytes each shard may hold; 0 for unbounded.
    shard_capacity: u64,
    entries: AtomicU64,
    bytes: AtomicU64,
    evictions: AtomicU64,
}

/// An in-memory tier, sharded by key, optionally bounded in bytes.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

// Poisoning only follows a panic elsewhere; the maps stay consistent
// because every update is a single insert or remove.
fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What an entry costs against the capacity: its key, body, tag and
/// attributes.
fn charge(key: &str, meta: &Metadata, body_len: u64) -> u64 {
    let attributes: usize = meta
        .attributes
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum();
    ((key.len() + meta.tag.len() + attributes) as u64).saturating_add(body_len)
}

impl MemoryStore {
    /// An empty, unbounded memory tier called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        MemoryStore::with_capacity(name, 0, crate::spec::DEFAULT_POLICY)
    }

    /// An empty memory tier called `name` holding at most `capacity` bytes
    /// (see [`MemoryStore::charge`]), evicting with `policy` after each
    /// commit. A capacity of 0 means unbounded: no policy then.
    pub fn with_capacity(name: impl Into<String>, capacity: u64, policy: PolicyKind) -> Self {
        let shards = if capacity == 0 {
            UNBOUNDED_SHARDS
        } else {
            (capacity / MIN_SHARD_CAPACITY).clamp(1, MAX_SHARDS)
        };
        let shard_capacity = capacity / shards;
        MemoryStore {
            inner: Arc::new(Inner {
                name: name.into(),
                shards: (0..shards)
                    .map(|_| Shard {
                        map: RwLock::default(),
                        policy: (capacity > 0).then(|| Mutex::new(policy.build(shard_capacity))),
                    })
                    .collect(),
                hasher: KeyHasher::new(),
                shard_capacity,
                entries: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                evictions: AtomicU64::new(0),
            }),
        }
    }

    /// The bytes an entry is charged against the capacity: its key, body,
    /// tag, and attribute names and values.
    pub fn charge(key: &str, meta: &Metadata, body_len: u64) -> u64 {
        charge(key, meta, body_len)
    }

    /// The capacity in bytes (0: unbounded). Slightly below the configured
    /// one when it does not divide evenly among the shards.
    pub fn capacity(&self) -> u64 {
        self.inner.shard_capacity * self.inner.shards.len() as u64
    }

    fn shard(&self, key: &str) -> &Shard {
        let i = self.inner.hasher.hash_one(key) % self.inner.shards.len() as u64;
        &self.inner.shards[i as usize]
    }

    /// Whether the policy of `key`'s shard admits an entry charged
    /// `charged` bytes (an unbounded store keeps everything).
    fn keeps(&self, key: &Arc<str>, charged: u64) -> bool {
        match &self.shard(key).policy {
            Some(policy) => lock(policy).admits(key, charged),
            None => true,
        }
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.inner.entries.load(Ordering::Relaxed) as usize
    }

    /// Whether the tier holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries, charged bytes and evictions so far.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            entries: self.inner.entries.load(Ordering::Relaxed),
            bytes: self.inner.bytes.load(Ordering::Relaxed),
            evictions: self.inner.evictions.load(Ordering::Relaxed),
        }
    }

    /// The entry of `key`; that counts as a hit for the policy.
    fn lookup(&self, key: &str) -> Option<Arc<Stored>> {
        let shard = self.shard(key);
        let (key, found) = read(&shard.map)
            .get_key_value(key)
            .map(|(k, v)| (Arc::clone(k), Arc::clone(v)))?;
        if let Some(policy) = &shard.policy {
            lock(policy).touch(&key);
        }
        Some(found)
    }

    fn forget(&self, old: &Stored) {
        self.inner.entries.fetch_sub(1, Ordering::Relaxed);
        self.inner.bytes.fetch_sub(old.charge, Ordering::Relaxed);
    }

    /// Publish `stored` under `key`, then evict what the policy says.
    fn publish(&self, key: &str, stored: Stored) {
        let shard = self.shard(key);
        let key: Arc<str> = Arc::from(key);
        let charge = stored.charge;
        let mut policy = shard.policy.as_ref().map(lock);
        let mut map = write(&shard.map);
        if let Some(old) = map.insert(Arc::clone(&key), Arc::new(stored)) {
            self.forget(&old);
        }
        self.inner.entries.fetch_add(1, Ordering::Relaxed);
        self.inner.bytes.fetch_add(charge, Ordering::Relaxed);
        let Some(policy) = &mut policy else {
            return;
        };
        let mut evicted = Vec::new();
        policy.insert(key, charge, &mut evicted);
        for victim in evicted {
            self.inner.evictions.fetch_add(1, Ordering::Relaxed);
            if let Some(old) = map.remove(&victim) {
                self.forget(&old);
            }
        }
    }

    fn remove(&self, key: &str) {
        let shard = self.shard(key);
        let mut policy = shard.policy.as_ref().map(lock);
        let Some((key, old)) = write(&shard.map).remove_entry(key) else {
            return;
        };
        self.forget(&old);
        if let Some(policy) = &mut policy {
            policy.remove(&key);
        }
    }
}

struct MemorySink {
    store: MemoryStore,
    /// Shared so each write can ask the policy about it without a copy.
    key: Arc<str>,
    meta: Metadata,
    /// Kept as handed in: a body written in one chunk is stored as is.
    chunks: Vec<Bytes>,
    len: u64,
    /// The body outgrew what the store can hold; it is no longer kept.
    too_large: bool,
}

impl TierSink for MemorySink {
    fn write(&mut self, data: Bytes) -> BoxFuture<'_, Result<()>> {
        if !self.too_large && !data.is_empty() {
            self.len += data.len() as u64;
            self.chunks.push(data);
            // Stop holding a body the policy would drop on commit anyway,
            // rather than buffer up to the whole capacity to find out.
            let charged = charge(&self.key, &self.meta, self.len);
            if !self.store.keeps(&self.key, charged) {
                self.too_large = true;
                self.chunks = Vec::new();
            }
        }
        async { Ok(()) }.boxed()
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        let MemorySink {
            store,
            key,
            meta,
            chunks,
            len,
            too_large,
        } = *self;
        if too_large {
            // Like an entry the policy turns away: the new version is not
            // kept, and the old one is superseded.
            store.inner.evictions.fetch_add(1, Ordering::Relaxed);
            store.remove(&key);
        } else {
            let body = match <[Bytes; 1]>::try_from(chunks) {
                Ok([one]) => one,
                Err(chunks) => {
                    let mut body = BytesMut::with_capacity(len as usize);
                    for chunk in chunks {
                        body.extend_from_slice(&chunk);
                    }
                    body.freeze()
                }
            };
            let charge = charge(&key, &meta, len);
            store.publish(&key, Stored { meta, body, charge });
        }
        async { Ok(()) }.boxed()
    }
}

impl Tier for MemoryStore {
    fn name(&self) -> String {
        self.inner.name.clone()
    }

    fn admits(&self, key: &str, meta: &Metadata, size: u64) -> bool {
        // Charged as the sink charges the entry once written.
        self.keeps(&Arc::from(key), charge(key, meta, size))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<TierEntry>>> {
        let found = self.lookup(key).map(|stored| {
            let body = stored.body.clone();
            TierEntry {
                meta: stored.meta.clone(),
                size: body.len() as u64,
                body: Box::pin(futures::stream::iter(
                    (!body.is_empty()).then_some(Ok(body)),
                )),
            }
        });
        async { Ok(found) }.boxed()
    }

    fn get_whole(&self, key: &str) -> Result<Option<(Metadata, Bytes)>> {
        Ok(self
            .lookup(key)
            .map(|stored| (stored.meta.clone(), stored.body.clone())))
    }

    fn stat<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Metadata>>> {
        let shard = self.shard(key);
        let found = read(&shard.map).get(key).map(|s| s.meta.clone());
        async { Ok(found) }.boxed()
    }

    fn begin_write<'a>(
        &'a self,
        key: &'a str,
        meta: Metadata,
    ) -> BoxFuture<'a, Result<Box<dyn TierSink>>> {
        let sink = MemorySink {
            store: self.clone(),
            key: Arc::from(key),
            meta,
            chunks: Vec::new(),
            len: 0,
            too_large: false,
        };
        async { Ok(Box::new(sink) as Box<dyn TierSink>) }.boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        self.remove(key);
        async { Ok(()) }.boxed()
    }
}
