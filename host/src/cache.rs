//! The embedding API: a builder that validates, and the cache handle.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::bindings::{scheduler, types};
use crate::body::Body;
use crate::component::{ComponentSource, default_compile_cache, load};
use crate::fetcher::{Fetcher, SharedFetcher};
use crate::hit_path::{self, Whole};
use crate::meta::duration_millis;
use crate::pool::{Pool, PoolStats, WorkerStrategy};
use crate::shard::{self, Command, Shard, ShardSpec, ticks_in};
use crate::tier::Tier;
use crate::{Conditions, Error, Metadata, Result};

/// Outcome of a `get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// A body follows.
    Ok,
    /// The `If-None-Match` matched; no body.
    NotModified,
    /// The origin says the key does not exist.
    NotFound,
}

/// Where the answer to a `get` came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A tier, by index (0 is the fastest).
    Tier(usize),
    /// The origin, fetched for this request.
    Origin,
    /// Another request's fetch or promotion that this request joined.
    Joined,
}

/// The answer to a `get`.
#[derive(Debug)]
pub struct GetResponse {
    /// The outcome.
    pub status: Status,
    /// The entry's metadata.
    pub meta: Metadata,
    /// Where the answer came from.
    pub source: Source,
    /// The entry was stale; a background refresh was scheduled.
    pub stale: bool,
    /// The answer is being written to a tier: a fetched body (kept once
    /// read to its end, unless it turns out too large for that tier) or
    /// negative answer, a lower-tier hit promoted, a copy the origin
    /// revalidated. False for tier-0 hits, joins, dirty requests,
    /// `no-store` bodies and bodies of a size no tier admits.
    pub stored: bool,
    /// The body, for [`Status::Ok`].
    pub body: Option<Body>,
}

/// Builds a [`Cache`]. Every setting is checked by [`CacheBuilder::build`];
/// a bad one is an [`Error::InvalidConfig`] naming it.
pub struct CacheBuilder {
    tiers: Vec<Arc<dyn Tier>>,
    fresh_for: Duration,
    negative_fresh_for: Duration,
    tier_freshness: Vec<types::TierFreshness>,
    operation_timeout: Duration,
    join_window: u64,
    max_key_len: u32,
    stale_if_error: Duration,
    workers: WorkerStrategy,
    job_timeout: Duration,
    shutdown_timeout: Duration,
    shards: usize,
    component: ComponentSource,
    compile_cache: Option<PathBuf>,
    memory_limit: usize,
    call_time_limit: Duration,
}

impl Default for CacheBuilder {
    fn default() -> Self {
        CacheBuilder {
            tiers: Vec::new(),
            fresh_for: Duration::from_secs(60),
            negative_fresh_for: Duration::from_secs(10),
            tier_freshness: Vec::new(),
            operation_timeout: Duration::from_secs(30),
            join_window: 4 << 20,
            max_key_len: 65_536,
            stale_if_error: Duration::ZERO,
            workers: WorkerStrategy::default(),
            job_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            component: ComponentSource::Embedded,
            compile_cache: default_compile_cache(),
            memory_limit: 256 << 20,
            call_time_limit: Duration::from_secs(1),
        }
    }
}

impl CacheBuilder {
    /// Append a tier; the first is tier 0, the fastest. At least one.
    pub fn tier(mut self, tier: impl Tier) -> Self {
        self.tiers.push(Arc::new(tier));
        self
    }

    /// Append a shared tier.
    pub fn shared_tier(mut self, tier: Arc<dyn Tier>) -> Self {
        self.tiers.push(tier);
        self
    }

    /// How long positive entries stay fresh. Default: 60 s. Zero makes
    /// every hit stale: served at once, then refreshed in the background.
    pub fn fresh_for(mut self, window: Duration) -> Self {
        self.fresh_for = window;
        self
    }

    /// How long negative ("not found") entries stay fresh. Default: 10 s.
    pub fn negative_fresh_for(mut self, window: Duration) -> Self {
        self.negative_fresh_for = window;
        self
    }

    /// Freshness windows for tier `tier` only. Default: the cache's.
    pub fn tier_freshness(
        mut self,
        tier: usize,
        positive: Option<Duration>,
        negative: Option<Duration>,
    ) -> Self {
        self.tier_freshness.push(types::TierFreshness {
            tier: u32::try_from(tier).unwrap_or(u32::MAX),
            fresh_for: positive.map(duration_millis),
            negative_fresh_for: negative.map(duration_millis),
        });
        self
    }

    /// Bound on an operation's setup (tier lookups, the origin's answer),
    /// never on reading the body. Default: 30 s.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Bytes of an in-flight fill kept so that concurrent requests for the
    /// key can join it from its first byte. Default: 4 MiB.
    pub fn join_window(mut self, bytes: u64) -> Self {
        self.join_window = bytes;
        self
    }

    /// Longest key accepted, in bytes. Default: 65 536.
    pub fn max_key_len(mut self, bytes: u32) -> Self {
        self.max_key_len = bytes;
        self
    }

    /// When the origin fails, serve an expired entry that is at most this
    /// far past its freshness window (stale) instead of the error. Default:
    /// zero, off.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = window;
        self
    }

    /// How background jobs run. Default: a pool of 1 worker, queue 500.
    pub fn workers(mut self, strategy: WorkerStrategy) -> Self {
        self.workers = strategy;
        self
    }

    /// Time limit of one background job. Default: 30 s.
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = timeout;
        self
    }

    /// How long `close` waits for background jobs. Default: 30 s.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Number of engine instances, each on its own thread, with keys
    /// routed among them by hash. Default: the number of cores.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    /// Run another engine component instead of the embedded one.
    pub fn component(mut self, source: ComponentSource) -> Self {
        self.component = source;
        self
    }

    /// Where compiled engines are kept between runs; `None` compiles on
    /// every start. Default: `$XDG_CACHE_HOME/daramjwee` or
    /// `~/.cache/daramjwee`. The directory is trusted: its files are loaded
    /// as native code.
    pub fn compile_cache(mut self, dir: Option<PathBuf>) -> Self {
        self.compile_cache = dir;
        self
    }

    /// Cap on the engine's linear memory, per instance. Default: 256 MiB.
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// Longest the engine may compute without returning to the host
    /// before its call is interrupted. Default: 1 s.
    pub fn call_time_limit(mut self, limit: Duration) -> Self {
        self.call_time_limit = limit;
        self
    }

    /// Check every setting, start the engine instances and the worker
    /// pool, and open the cache.
    pub async fn build(self) -> Result<Cache> {
        let bad = |why: &str| Err(Error::InvalidConfig(why.into()));
        if self.shards == 0 {
            return bad("shards: must be positive");
        }
        if self.shutdown_timeout.is_zero() {
            return bad("shutdown-timeout: must be positive");
        }
        if self.call_time_limit.is_zero() {
            return bad("call-time-limit: must be positive");
        }
        if self.memory_limit < (16 << 20) {
            return bad("memory-limit: must be at least 16 MiB");
        }
        if self.operation_timeout.is_zero() {
            return bad("operation-timeout: must be positive");
        }
        let pool = Arc::new(Pool::start(self.workers, self.job_timeout)?);
        let loaded = load(&self.component, self.compile_cache.as_deref())?;
        let config = types::Config {
            fresh_for: duration_millis(self.fresh_for),
            negative_fresh_for: duration_millis(self.negative_fresh_for),
            tier_freshness: self.tier_freshness,
            operation_timeout: duration_millis(self.operation_timeout),
            join_window: self.join_window,
            max_key_len: self.max_key_len,
            stale_if_error: duration_millis(self.stale_if_error),
        };
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let router = Arc::new(Router {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shards: OnceLock::new(),
        });
        let queue = {
            let (router, pool) = (Arc::downgrade(&router), Arc::clone(&pool));
            Arc::new(move |job: scheduler::Job, fetcher: Option<SharedFetcher>| {
                let router = Weak::clone(&router);
                pool.submit(Box::pin(async move {
                    if let Some(router) = router.upgrade()
                        && let Err(e) = router.run_job(job, fetcher).await
                    {
                        tracing::warn!("background job failed: {e}");
                    }
                }))
            })
        };
        let spec = ShardSpec {
            loaded: Arc::clone(&loaded),
            config: config.clone(),
            tiers: self.tiers.clone(),
            queue: queue.clone(),
            memory_limit: self.memory_limit,
            call_ticks: ticks_in(self.call_time_limit),
        };
        let mut shards = Vec::with_capacity(self.shards);
        for index in 0..self.shards {
            shards.push(Shard::start(router.id, index, spec.clone()).await?);
        }
        let _ = router.shards.set(shards);
        // Threads that are none of the shards (the application's own)
        // answer fresh hits with a hit path of their own.
        let elsewhere = loaded
            .hit_path
            .as_ref()
            .map(|pre| Arc::new(hit_path::Source::new(Arc::clone(pre), spec)));
        Ok(Cache {
            inner: Arc::new(Inner {
                elsewhere,
                router,
                pool,
                closed: AtomicBool::new(false),
                shutdown_timeout: self.shutdown_timeout,
            }),
        })
    }
}

/// Routes each key to its shard.
struct Router {
    /// Tells this cache's shard threads from other caches'.
    id: u64,
    shards: OnceLock<Vec<Shard>>,
}

impl Router {
    fn shards(&self) -> &[Shard] {
        self.shards
            .get()
            .expect("shards are set before the cache is handed out")
    }

    fn owner(&self, key: &str) -> usize {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        h.finish() as usize % self.shards().len()
    }

    fn shard(&self, key: &str) -> &Shard {
        &self.shards()[self.owner(key)]
    }

    /// The shard whose thread this runs on, when that is one of this
    /// cache's shards but not the owner of `key`.
    fn local_peer(&self, key: &str) -> Option<&Shard> {
        match shard::current() {
            Some((id, index)) if id == self.id && index != self.owner(key) => {
                self.shards().get(index)
            }
            _ => None,
        }
    }

    /// A fresh tier-0 hit for `key` from the shard of this thread, when
    /// this thread is another shard's than the key's: answered here, it
    /// needs no hop to the owner's thread, and a hot key's hits spread
    /// over every shard. `None` sends the request to the owner.
    async fn peek_here(
        &self,
        key: &str,
        inm: Option<&str>,
        whole_asked: bool,
    ) -> Option<Result<GetResponse>> {
        let shard = self.local_peer(key)?;
        let (tx, rx) = oneshot::channel();
        let command = Command::Peek {
            key: key.to_owned(),
            inm: inm.map(str::to_owned),
            whole_asked,
            reply: tx,
        };
        shard.send(command).await.ok()?;
        match rx.await {
            Ok(Ok(Some(response))) => Some(Ok(response)),
            // The key itself is bad, or the cache closed: the owner would
            // say the same.
            Ok(Err(e @ (Error::InvalidKey(_) | Error::Closed))) => Some(Err(e)),
            _ => None,
        }
    }

    async fn call<T>(
        &self,
        key: &str,
        command: impl FnOnce(oneshot::Sender<Result<T>>) -> Command,
    ) -> Result<T> {
        let shard = self.shard(key);
        let (tx, rx) = oneshot::channel();
        let faults = shard.faults();
        shard.send(command(tx)).await?;
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(shard.lost(faults).await),
        }
    }

    async fn run_job(&self, job: scheduler::Job, fetcher: Option<SharedFetcher>) -> Result<()> {
        let key = job.key.clone();
        self.call(&key, |reply| Command::RunJob {
            job,
            fetcher,
            reply,
        })
        .await
    }
}

struct Inner {
    router: Arc<Router>,
    /// What a thread off the shards needs for a hit path of this cache.
    elsewhere: Option<Arc<hit_path::Source>>,
    pool: Arc<Pool>,
    closed: AtomicBool,
    shutdown_timeout: Duration,
}

/// A cache of N tiers whose rules run in the engine component. Cheap to
/// clone; clones share one cache.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

impl Cache {
    /// A builder with the defaults.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Read `key` through the tiers, then `fetcher`.
    pub async fn get(&self, key: &str, fetcher: impl Fetcher) -> Result<GetResponse> {
        self.get_if_none_match(key, None, fetcher).await
    }

    /// Read `key`, answering [`Status::NotModified`] when `if_none_match`
    /// (an HTTP `If-None-Match` value) matches the entry's tag.
    pub async fn get_if_none_match(
        &self,
        key: &str,
        if_none_match: Option<&str>,
        fetcher: impl Fetcher,
    ) -> Result<GetResponse> {
        self.get_with(key, Conditions::if_none_match(if_none_match), fetcher)
            .await
    }

    /// Read `key` for a caller with `conditions`: an entry too old for
    /// them (`max_age`, `min_fresh`) is validated with the origin before
    /// it is used, one within their `max_stale` is answered stale.
    pub async fn get_with(
        &self,
        key: &str,
        conditions: Conditions,
        fetcher: impl Fetcher,
    ) -> Result<GetResponse> {
        self.check_open()?;
        let if_none_match = conditions.if_none_match.as_deref();
        // The fast paths answer fresh entries as the cache's windows
        // count them: a caller with an age of its own goes to the engine.
        let plain = conditions.ages_unasked();
        let whole_asked = if plain {
            let elsewhere = self.inner.elsewhere.as_ref();
            match hit_path::answer(self.inner.router.id, elsewhere, key, if_none_match) {
                Whole::Answered(answer) => return answer,
                Whole::Declined => true,
                Whole::NotAsked => false,
            }
        } else {
            false
        };
        let router = &self.inner.router;
        if plain && let Some(answer) = router.peek_here(key, if_none_match, whole_asked).await {
            return answer;
        }
        let fetcher: SharedFetcher = Arc::new(fetcher);
        self.inner
            .router
            .call(key, |reply| Command::Get {
                key: key.to_owned(),
                conditions,
                whole_asked,
                fetcher,
                reply,
            })
            .await
    }

    /// Start writing `key` into tier 0 directly (`cached_at` becomes now).
    /// Nothing is visible until [`Writer::commit`]; dropping the writer
    /// aborts.
    pub async fn set(&self, key: &str, meta: Metadata) -> Result<Writer> {
        self.check_open()?;
        let id = self
            .inner
            .router
            .call(key, |reply| Command::Set {
                key: key.to_owned(),
                meta,
                reply,
            })
            .await?;
        Ok(Writer {
            cache: self.clone(),
            key: key.to_owned(),
            id: Some(id),
        })
    }

    /// Remove `key` from every tier, the lowest first; reports the first
    /// failing tier's error after trying them all.
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.check_open()?;
        self.inner
            .router
            .call(key, |reply| Command::Delete {
                key: key.to_owned(),
                reply,
            })
            .await
    }

    /// Refresh `key` from `fetcher` in the background. [`Error::Busy`]
    /// when the queue is full; a refresh of the key already pending makes
    /// this a no-op.
    pub async fn schedule_refresh(&self, key: &str, fetcher: impl Fetcher) -> Result<()> {
        self.check_open()?;
        let fetcher: SharedFetcher = Arc::new(fetcher);
        self.inner
            .router
            .call(key, |reply| Command::ScheduleRefresh {
                key: key.to_owned(),
                fetcher,
                reply,
            })
            .await
    }

    /// Close: later calls fail with [`Error::Closed`]; bodies already
    /// handed out stay readable; queued background jobs run until the
    /// shutdown timeout, the rest are dropped. Idempotent.
    pub async fn close(&self) {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        for shard in self.inner.router.shards.get().into_iter().flatten() {
            let (tx, rx) = oneshot::channel();
            if shard.send(Command::Close { reply: tx }).await.is_ok() {
                let _ = rx.await;
            }
        }
        self.inner.pool.shutdown(self.inner.shutdown_timeout).await;
    }

    /// The runtimes of the shard threads, one per engine instance: a
    /// server that runs its connections on them serves each request on
    /// the thread of an engine, and the request's own shard's thread for
    /// that shard's keys.
    pub fn shard_runtimes(&self) -> Vec<tokio::runtime::Handle> {
        self.inner
            .router
            .shards
            .get()
            .into_iter()
            .flatten()
            .map(|shard| shard.runtime().clone())
            .collect()
    }

    /// Requests answered by the hit path: fresh tier-0 memory hits,
    /// answered in one plain call into the engine's hit-path component on
    /// the asking thread (a shard's, as `daramjwee serve` asks, or any
    /// other).
    pub fn hit_path_answers(&self) -> u64 {
        self.hit_path_total(|c| &c.answers)
    }

    /// The sum of a hit-path counter over the shards' hit paths and those
    /// made on other threads.
    fn hit_path_total(&self, field: impl Fn(&hit_path::Counts) -> &AtomicU64) -> u64 {
        let shards = self.inner.router.shards().iter();
        let on_shards: u64 = shards
            .map(|s| field(s.hit_path()).load(Ordering::Relaxed))
            .sum();
        let elsewhere = self.inner.elsewhere.as_ref().map_or(0, |e| e.total(&field));
        on_shards + elsewhere
    }

    /// Hit-path instances dropped after a fault (a trap, the call time
    /// limit, the memory cap); each such request went on to the engine.
    pub fn hit_path_faults(&self) -> u64 {
        self.hit_path_total(|c| &c.faults)
    }

    /// Failed attempts to open a hit-path instance. Its thread's requests
    /// go to the engine meanwhile, and it is tried again after a second,
    /// then twice as long after each failure, up to a minute.
    pub fn hit_path_open_failures(&self) -> u64 {
        self.hit_path_total(|c| &c.open_failures)
    }

    /// Counters of the background pool.
    pub fn pool_stats(&self) -> &PoolStats {
        self.inner.pool.stats()
    }

    /// Background jobs waiting in the queue.
    pub fn queued_jobs(&self) -> usize {
        self.inner.pool.queued()
    }
}

/// A direct write into tier 0, from [`Cache::set`]. Dropping it without
/// [`Writer::commit`] aborts the write.
pub struct Writer {
    cache: Cache,
    key: String,
    id: Option<u64>,
}

impl Writer {
    /// Append `data` to the body.
    pub async fn write(&mut self, data: impl Into<Bytes>) -> Result<()> {
        let writer = self.id.ok_or(Error::Closed)?;
        let data = data.into().to_vec();
        self.cache
            .inner
            .router
            .call(&self.key, |reply| Command::Write {
                writer,
                data,
                reply,
            })
            .await
    }

    /// Publish the entry. [`Error::Invalidated`] when a later `set` or
    /// `delete` of the key came first (nothing is written then).
    pub async fn commit(mut self) -> Result<()> {
        let writer = self.id.take().ok_or(Error::Closed)?;
        self.cache
            .inner
            .router
            .call(&self.key, |reply| Command::Commit { writer, reply })
            .await
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(writer) = self.id.take() {
            let shard = self.cache.inner.router.shard(&self.key);
            // Best effort: if the shard is gone, so is the write.
            let _ = shard.try_send(Command::Abort { writer });
        }
    }
}
