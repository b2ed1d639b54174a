//! The engine through the component (wasmtime, WASI 0.3) against the same
//! engine compiled natively, in one run: hot hits of 4 KiB and 1 MiB, a
//! lower-tier hit (promotion), a miss, hot hits from many tasks with one
//! and two shards, and misses from many tasks. The `component` cases call
//! the embedding API as an application does: from its own multi-thread
//! runtime, off the cache's shard threads.
//!
//! `cargo bench -p daramjwee --bench engine`

#![expect(
    missing_docs,
    reason = "criterion's macros generate undocumented items"
)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use daramjwee::{Cache, FetchResult, Fetcher, MemoryStore, Metadata, Tier, WorkerStrategy};
use daramjwee_component as native;
use futures::StreamExt;
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;

const SMALL: usize = 4 << 10;
const LARGE: usize = 1 << 20;
const CHUNK: usize = 64 << 10;

// ---- through the component ----------------------------------------------

#[derive(Clone)]
struct Origin(Bytes);

impl Fetcher for Origin {
    async fn fetch(&self, _key: &str, _held: Option<&Metadata>) -> daramjwee::Result<FetchResult> {
        Ok(FetchResult::bytes(Metadata::tagged("v1"), self.0.clone()))
    }
}

struct Hosted {
    rt: tokio::runtime::Runtime,
    cache: Cache,
    tiers: Vec<MemoryStore>,
    origin: Origin,
}

impl Hosted {
    fn new(tiers: usize, shards: usize, body: usize) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let stores: Vec<MemoryStore> = (0..tiers)
            .map(|i| MemoryStore::new(format!("m{i}")))
            .collect();
        let cache = rt.block_on(async {
            let mut builder = Cache::builder()
                .shards(shards)
                .workers(WorkerStrategy::Pool {
                    workers: 1,
                    queue: 10_000,
                });
            for store in &stores {
                builder = builder.tier(store.clone());
            }
            builder.build().await.expect("cache")
        });
        Hosted {
            rt,
            cache,
            tiers: stores,
            origin: Origin(Bytes::from(vec![7u8; body])),
        }
    }

    async fn get(&self, key: &str) -> usize {
        read(&self.cache, &self.origin, key).await
    }

    /// Time `iters` hits of `key` from a task on the first shard's own
    /// thread, as `daramjwee serve` makes them: no hop to another thread
    /// (the shard answers itself, by `get` when it owns the key and by
    /// `peek` when it does not).
    fn time_on_shard(&self, iters: u64, key: &str) -> Duration {
        let (cache, origin, key) = (self.cache.clone(), self.origin.clone(), key.to_owned());
        let shard = self.cache.shard_runtimes()[0].clone();
        self.rt
            .block_on(shard.spawn(async move {
                let started = Instant::now();
                for _ in 0..iters {
                    black_box(read(&cache, &origin, &key).await);
                }
                started.elapsed()
            }))
            .expect("the timing task")
    }

    /// Time `iters` runs of `prepare` (untimed) then `get`.
    fn time(&self, iters: u64, key: &str, prepare: impl AsyncFn(&Hosted)) -> Duration {
        self.rt.block_on(async {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                prepare(self).await;
                let started = Instant::now();
                black_box(self.get(key).await);
                total += started.elapsed();
            }
            total
        })
    }

    fn close(self) {
        self.rt.block_on(self.cache.close());
    }
}

/// Get `key` and read its body, returning its length.
async fn read(cache: &Cache, origin: &Origin, key: &str) -> usize {
    let response = cache.get(key, origin.clone()).await.expect("get");
    let mut body = response.body.expect("a body");
    let mut n = 0;
    while let Some(chunk) = body.next().await {
        n += black_box(chunk.expect("chunk")).len();
    }
    n
}

// ---- natively -------------------------------------------------------------

type Entries = Rc<RefCell<HashMap<String, (native::Metadata, Rc<Vec<u8>>)>>>;

/// A memory tier whose bodies are shared, read in 64 KiB chunks.
#[derive(Clone)]
struct NativeTier {
    name: String,
    entries: Entries,
}

struct NativeBody {
    data: Rc<Vec<u8>>,
    at: usize,
}

impl native::Body for NativeBody {
    async fn next(&mut self) -> Option<native::Result<Vec<u8>>> {
        if self.at >= self.data.len() {
            return None;
        }
        let end = (self.at + CHUNK).min(self.data.len());
        let chunk = self.data[self.at..end].to_vec();
        self.at = end;
        Some(Ok(chunk))
    }
}

struct NativeSink {
    entries: Entries,
    key: String,
    meta: native::Metadata,
    data: Vec<u8>,
}

impl native::Sink for NativeSink {
    async fn write(&mut self, data: Vec<u8>) -> native::Result<()> {
        self.data.extend_from_slice(&data);
        Ok(())
    }

    async fn commit(self) -> native::Result<()> {
        self.entries
            .borrow_mut()
            .insert(self.key, (self.meta, Rc::new(self.data)));
        Ok(())
    }
}

impl native::Tier for NativeTier {
    type Body = NativeBody;
    type Sink = NativeSink;
    type Whole = Rc<Vec<u8>>;

    fn name(&self) -> String {
        self.name.clone()
    }

    async fn get(&self, key: &str) -> native::Result<Option<native::Entry<NativeBody>>> {
        Ok(self
            .entries
            .borrow()
            .get(key)
            .map(|(meta, data)| native::Entry {
                meta: meta.clone(),
                size: data.len() as u64,
                body: NativeBody {
                    data: Rc::clone(data),
                    at: 0,
                },
            }))
    }

    fn get_whole(&self, key: &str) -> native::Result<Option<(native::Metadata, Rc<Vec<u8>>)>> {
        Ok(self
            .entries
            .borrow()
            .get(key)
            .map(|(meta, data)| (meta.clone(), Rc::clone(data))))
    }

    async fn stat(&self, key: &str) -> native::Result<Option<native::Metadata>> {
        Ok(self.entries.borrow().get(key).map(|(meta, _)| meta.clone()))
    }

    async fn begin_write(&self, key: &str, meta: &native::Metadata) -> native::Result<NativeSink> {
        Ok(NativeSink {
            entries: Rc::clone(&self.entries),
            key: key.to_owned(),
            meta: meta.clone(),
            data: Vec::new(),
        })
    }

    async fn delete(&self, key: &str) -> native::Result<()> {
        self.entries.borrow_mut().remove(key);
        Ok(())
    }
}

struct NativeOrigin(Rc<Vec<u8>>);

impl native::Origin for NativeOrigin {
    type Body = NativeBody;

    async fn fetch(
        &self,
        _key: &str,
        _held: Option<&native::Metadata>,
    ) -> native::Result<native::Fetched<NativeBody>> {
        Ok(native::Fetched::Body {
            meta: native::Metadata {
                tag: "v1".into(),
                ..native::Metadata::default()
            },
            body: NativeBody {
                data: Rc::clone(&self.0),
                at: 0,
            },
            no_store: false,
            size: None,
        })
    }
}

/// Background jobs are kept and dropped: none of the measured paths
/// needs one to finish.
struct NativeRt {
    spawner: futures::executor::LocalSpawner,
}

impl native::Runtime for NativeRt {
    type Body = NativeBody;
    type Sink = NativeSink;
    type Tier = NativeTier;
    type Origin = NativeOrigin;

    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn sleep(&self, _ms: u64) -> impl Future<Output = ()> {
        // The operation timeout never fires in these measurements.
        std::future::pending()
    }

    fn submit(&self, _job: native::Job, _origin: Option<NativeOrigin>) -> native::Result<()> {
        Ok(())
    }

    fn spawn(&self, task: impl Future<Output = ()> + 'static) {
        self.spawner.spawn_local(task).expect("spawn");
    }
}

struct Native {
    pool: LocalPool,
    engine: native::Engine<NativeRt>,
    tiers: Vec<NativeTier>,
    body: Rc<Vec<u8>>,
}

impl Native {
    fn new(tiers: usize, body: usize) -> Self {
        let pool = LocalPool::new();
        let stores: Vec<NativeTier> = (0..tiers)
            .map(|i| NativeTier {
                name: format!("m{i}"),
                entries: Entries::default(),
            })
            .collect();
        let rt = NativeRt {
            spawner: pool.spawner(),
        };
        let engine =
            native::Engine::open(native::Config::default(), stores.clone(), rt).expect("engine");
        Native {
            pool,
            engine,
            tiers: stores,
            body: Rc::new(vec![7u8; body]),
        }
    }

    /// What the host does: a small fresh hit whole, else the full `get`.
    async fn get(engine: &native::Engine<NativeRt>, key: &str, body: &Rc<Vec<u8>>) -> usize {
        if let Some(whole) = engine.peek_whole(key, None).expect("peek") {
            return black_box(whole.body.expect("a body")).len();
        }
        let response = engine
            .get(key, None, NativeOrigin(Rc::clone(body)))
            .await
            .expect("get");
        let mut n = 0;
        match response.body.expect("a body") {
            native::ResponseBody::Direct { mut body, .. } => {
                while let Some(chunk) = native::Body::next(&mut body).await {
                    n += black_box(chunk.expect("chunk")).len();
                }
            }
            native::ResponseBody::Fill(mut reader) => {
                while let Some(chunk) = reader.next().await {
                    n += black_box(chunk.expect("chunk")).len();
                }
            }
        }
        n
    }

    fn time(&mut self, iters: u64, key: &str, prepare: impl Fn(&[NativeTier])) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            prepare(&self.tiers);
            let started = Instant::now();
            let (engine, body) = (&self.engine, &self.body);
            black_box(self.pool.run_until(Native::get(engine, key, body)));
            // Let spawned fills finish, as the component's would.
            self.pool.run_until_stalled();
            total += started.elapsed();
        }
        total
    }
}

// ---- the benchmarks -------------------------------------------------------

fn hot_hits(c: &mut Criterion) {
    for (name, size) in [("4KiB", SMALL), ("1MiB", LARGE)] {
        let mut group = c.benchmark_group(format!("hot_hit_{name}"));
        group.throughput(criterion::Throughput::Bytes(size as u64));
        let hosted = Hosted::new(1, 1, size);
        hosted.rt.block_on(hosted.get("k"));
        group.bench_function("component", |b| {
            b.iter_custom(|iters| hosted.time(iters, "k", async |_| {}))
        });
        hosted.close();
        let hosted = Hosted::new(1, 2, size);
        hosted.rt.block_on(hosted.get("k"));
        group.bench_function("component_on_shard_thread", |b| {
            b.iter_custom(|iters| hosted.time_on_shard(iters, "k"))
        });
        hosted.close();
        let mut local = Native::new(1, size);
        local.time(1, "k", |_| {});
        group.bench_function("native", |b| {
            b.iter_custom(|iters| local.time(iters, "k", |_| {}))
        });
        group.finish();
    }
}

fn lower_tier_hit(c: &mut Criterion) {
    let mut group = c.benchmark_group("lower_tier_hit_4KiB");
    let hosted = Hosted::new(2, 1, SMALL);
    hosted.rt.block_on(async {
        hosted.get("k").await;
    });
    let forget_tier0 = async |h: &Hosted| {
        h.tiers[0].delete("k").await.expect("delete");
    };
    group.bench_function("component", |b| {
        b.iter_custom(|iters| hosted.time(iters, "k", forget_tier0))
    });
    hosted.close();
    let mut local = Native::new(2, SMALL);
    let data = Rc::new(vec![7u8; SMALL]);
    let meta = native::Metadata {
        tag: "v1".into(),
        cached_at: Some(u64::MAX / 2),
        ..native::Metadata::default()
    };
    local.tiers[1]
        .entries
        .borrow_mut()
        .insert("k".into(), (meta, data));
    group.bench_function("native", |b| {
        b.iter_custom(|iters| {
            local.time(iters, "k", |tiers| {
                tiers[0].entries.borrow_mut().remove("k");
            })
        })
    });
    group.finish();
}

fn miss(c: &mut Criterion) {
    let mut group = c.benchmark_group("miss_4KiB");
    let hosted = Hosted::new(1, 1, SMALL);
    let forget = async |h: &Hosted| {
        h.tiers[0].delete("k").await.expect("delete");
    };
    group.bench_function("component", |b| {
        b.iter_custom(|iters| hosted.time(iters, "k", forget))
    });
    hosted.close();
    let mut local = Native::new(1, SMALL);
    group.bench_function("native", |b| {
        b.iter_custom(|iters| {
            local.time(iters, "k", |tiers| {
                tiers[0].entries.borrow_mut().remove("k");
            })
        })
    });
    group.finish();
}

/// Tasks of an application's own runtime that ask at once.
const TASKS: usize = 64;

/// The time [`TASKS`] tasks on `hosted`'s runtime take to make `iters`
/// gets each, task `t`'s `i`-th get of the key `key(t, i, buffer)` writes
/// into the task's (cleared) buffer: no allocation a get once it is grown.
fn time_tasks(
    hosted: &std::sync::Arc<Hosted>,
    iters: u64,
    key: impl Fn(usize, usize, &mut String) + Clone + Send + 'static,
) -> Duration {
    hosted.rt.block_on(async {
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(TASKS);
        for t in 0..TASKS {
            let (hosted, key) = (std::sync::Arc::clone(hosted), key.clone());
            tasks.push(tokio::spawn(async move {
                let mut buffer = String::new();
                for i in 0..iters as usize {
                    buffer.clear();
                    key(t, i, &mut buffer);
                    black_box(hosted.get(&buffer).await);
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        started.elapsed()
    })
}

/// Close a cache whose timing tasks have all finished.
fn close_shared(hosted: std::sync::Arc<Hosted>) {
    match std::sync::Arc::try_unwrap(hosted) {
        Ok(hosted) => hosted.close(),
        Err(_) => unreachable!("every task finished"),
    }
}

/// Hot hits from 64 concurrent tasks over 256 keys: how the shards use
/// both cores.
fn concurrent_hot_hits(c: &mut Criterion) {
    let mut group = c.benchmark_group("concurrent_hot_hits_4KiB");
    group.throughput(criterion::Throughput::Elements(TASKS as u64));
    for shards in [1, 2] {
        let hosted = std::sync::Arc::new(Hosted::new(1, shards, SMALL));
        let keys: std::sync::Arc<Vec<String>> =
            std::sync::Arc::new((0..256).map(|i| format!("key-{i}")).collect());
        hosted.rt.block_on(async {
            for key in keys.iter() {
                hosted.get(key).await;
            }
        });
        group.bench_function(format!("{shards}_shards"), |b| {
            b.iter_custom(|iters| {
                let keys = std::sync::Arc::clone(&keys);
                time_tasks(&hosted, iters, move |t, i, key| {
                    key.push_str(&keys[(t * 7 + i) % keys.len()]);
                })
            })
        });
        close_shared(hosted);
    }
    group.finish();
}

/// Misses from 64 concurrent tasks of an application's own runtime, each
/// a key never asked before (the origin in process): how many a second
/// the cache fetches and stores.
fn concurrent_misses(c: &mut Criterion) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut group = c.benchmark_group("concurrent_misses_4KiB");
    group.throughput(criterion::Throughput::Elements(TASKS as u64));
    let hosted = std::sync::Arc::new(Hosted::new(1, 2, SMALL));
    group.bench_function("2_shards", |b| {
        b.iter_custom(|iters| {
            time_tasks(&hosted, iters, |_, _, key| {
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = std::fmt::Write::write_fmt(key, format_args!("miss-{n}"));
            })
        })
    });
    close_shared(hosted);
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = hot_hits, lower_tier_hit, miss, concurrent_hot_hits, concurrent_misses
}
criterion_main!(benches);
