//! Store benchmarks: the memory store under concurrent gets and sets on
//! two threads, and the file store's set and get against plain `std::fs`
//! write+rename and read of the same sizes in the same directory.
//!
//! `cargo bench -p daramjwee --bench stores`; the last lines printed are
//! the file store / `std::fs` time ratios.

#![expect(
    missing_docs,
    reason = "criterion_group! generates an undocumented function"
)]

use std::fs;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use daramjwee::{FileStore, MemoryStore, Metadata, PolicyKind, Tier};
use futures::StreamExt;
use futures::executor::block_on;

const THREADS: usize = 2;
const MEMORY_KEYS: usize = 10_000;
const MEMORY_BODY: usize = 4096;

fn memory_store(capacity: u64) -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::with_capacity(
        "m",
        capacity,
        PolicyKind::S3Fifo,
    ));
    let body = Bytes::from(vec![7u8; MEMORY_BODY]);
    for i in 0..MEMORY_KEYS {
        block_on(async {
            let mut sink = store
                .begin_write(&format!("key-{i}"), Metadata::tagged("v"))
                .await
                .expect("begin");
            sink.write(body.clone()).await.expect("write");
            sink.commit().await.expect("commit");
        });
    }
    store
}

/// `ops` operations split over two threads; returns the wall time.
fn concurrent(store: &Arc<MemoryStore>, ops: u64, write_every: u64) -> Duration {
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    let per_thread = ops / THREADS as u64;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(store);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let body = Bytes::from(vec![t as u8; MEMORY_BODY]);
                let keys: Vec<String> = (0..MEMORY_KEYS).map(|i| format!("key-{i}")).collect();
                let mut x = t as u64 * 7919 + 1;
                barrier.wait();
                for n in 0..per_thread {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    let key = &keys[(x >> 33) as usize % MEMORY_KEYS];
                    block_on(async {
                        if write_every > 0 && n % write_every == 0 {
                            let mut sink = store
                                .begin_write(key, Metadata::tagged("v"))
                                .await
                                .expect("begin");
                            sink.write(body.clone()).await.expect("write");
                            sink.commit().await.expect("commit");
                        } else if let Some(entry) = store.get(key).await.expect("get") {
                            let mut body = entry.body;
                            while let Some(chunk) = body.next().await {
                                black_box(chunk.expect("chunk"));
                            }
                        }
                    });
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for thread in threads {
        thread.join().expect("thread");
    }
    start.elapsed()
}

fn memory(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory_2_threads");
    group.throughput(Throughput::Elements(1));
    for (label, capacity) in [("unbounded", 0u64), ("bounded_s3fifo", 16 << 20)] {
        let store = memory_store(capacity);
        for (mix, write_every) in [("get", 0u64), ("set", 1), ("get90_set10", 10)] {
            group.bench_function(BenchmarkId::new(label, mix), |b| {
                b.iter_custom(|iters| concurrent(&store, iters.max(THREADS as u64), write_every))
            });
        }
    }
    group.finish();
}

const SIZES: [(&str, usize, usize); 2] = [("4KiB", 4096, 256), ("1MiB", 1 << 20, 16)];

struct FileBench {
    _dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    store: FileStore,
    plain: PathBuf,
}

impl FileBench {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("daramjwee-bench")
            .tempdir_in(
                std::env::var_os("BENCH_DIR").unwrap_or_else(|| std::env::temp_dir().into()),
            )
            .expect("tempdir");
        let store = FileStore::open("file", dir.path().join("store")).expect("open");
        let plain = dir.path().join("plain");
        for i in 0..256 {
            fs::create_dir_all(plain.join(format!("{i:02x}"))).expect("mkdir");
        }
        // The shards of the host run current-thread runtimes; so does this.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        FileBench {
            _dir: dir,
            runtime,
            store,
            plain,
        }
    }

    async fn store_set(&self, key: &str, body: &Bytes) {
        let mut sink = self
            .store
            .begin_write(key, Metadata::tagged("v"))
            .await
            .expect("begin");
        // Streamed in 64 KiB chunks, as bodies arrive.
        let mut at = 0;
        while at < body.len() {
            let end = (at + 65536).min(body.len());
            sink.write(body.slice(at..end)).await.expect("write");
            at = end;
        }
        sink.commit().await.expect("commit");
    }

    async fn store_get(&self, key: &str) -> usize {
        let entry = self.store.get(key).await.expect("get").expect("hit");
        let mut body = entry.body;
        let mut n = 0;
        while let Some(chunk) = body.next().await {
            n += black_box(chunk.expect("chunk")).len();
        }
        n
    }

    /// Time `iters` runs of `op` inside one runtime entry, as the store
    /// runs inside the host's runtimes.
    fn time_async<F: Future>(&self, iters: u64, mut op: impl FnMut(u64) -> F) -> Duration {
        self.runtime.block_on(async {
            let start = Instant::now();
            for i in 0..iters {
                black_box(op(i).await);
            }
            start.elapsed()
        })
    }

    fn plain_path(&self, key: &str) -> PathBuf {
        // Same fan-out as the store, so directories are alike.
        let entry = self.store.entry_path(key);
        let rel = entry
            .strip_prefix(self.store.root())
            .expect("under the root");
        self.plain.join(rel)
    }

    fn plain_set(&self, key: &str, body: &[u8]) {
        let path = self.plain_path(key);
        let temp = path.with_extension("tmp");
        fs::write(&temp, body).expect("write");
        fs::rename(&temp, &path).expect("rename");
    }

    fn plain_get(path: &Path) -> usize {
        black_box(fs::read(path).expect("read")).len()
    }
}

fn file(c: &mut Criterion) {
    let bench = FileBench::new();
    for (label, size, keys) in SIZES {
        let body = Bytes::from((0..size).map(|i| i as u8).collect::<Vec<_>>());
        let names: Vec<String> = (0..keys).map(|i| format!("bench/{label}/{i}")).collect();
        for name in &names {
            bench.runtime.block_on(bench.store_set(name, &body));
            bench.plain_set(name, &body);
        }
        let mut group = c.benchmark_group(format!("file_{label}"));
        group.throughput(Throughput::Bytes(size as u64));
        let name = |i: u64| &names[i as usize % keys];
        group.bench_function("set/store", |b| {
            b.iter_custom(|iters| bench.time_async(iters, |i| bench.store_set(name(i), &body)))
        });
        let mut i = 0;
        group.bench_function("set/std_fs_write_rename", |b| {
            b.iter(|| {
                i += 1;
                bench.plain_set(name(i), &body);
            })
        });
        group.bench_function("get/store", |b| {
            b.iter_custom(|iters| bench.time_async(iters, |i| bench.store_get(name(i))))
        });
        let store_files: Vec<PathBuf> = names.iter().map(|n| bench.store.entry_path(n)).collect();
        group.bench_function("get/std_fs_read", |b| {
            b.iter(|| {
                i += 1;
                FileBench::plain_get(&store_files[i as usize % keys])
            })
        });
        group.finish();
    }
}

/// The file store / `std::fs` time ratios. Both sides run in alternating
/// batches, so background writeback and the like hit both alike; the
/// median of 9 rounds.
fn ratios(_: &mut Criterion) {
    let bench = FileBench::new();
    println!();
    for (label, size, keys) in SIZES {
        let body = Bytes::from(vec![3u8; size]);
        let names: Vec<String> = (0..keys).map(|i| format!("ratio/{label}/{i}")).collect();
        let name = |i: u64| &names[i as usize % keys];
        let files: Vec<PathBuf> = names.iter().map(|n| bench.store.entry_path(n)).collect();
        for name in &names {
            bench.runtime.block_on(bench.store_set(name, &body));
            bench.plain_set(name, &body);
        }
        let batch = if size > 65536 { 10 } else { 200 };
        let round = |store_op: &dyn Fn(u64) -> Duration, plain_op: &dyn Fn(u64)| {
            let (mut store, mut plain) = (Duration::ZERO, Duration::ZERO);
            for _ in 0..10 {
                store += store_op(batch);
                let start = Instant::now();
                for i in 0..batch {
                    plain_op(i);
                }
                plain += start.elapsed();
            }
            store.as_secs_f64() / plain.as_secs_f64()
        };
        let mut set: Vec<f64> = (0..9)
            .map(|_| {
                round(
                    &|n| bench.time_async(n, |i| bench.store_set(name(i), &body)),
                    &|i| bench.plain_set(name(i), &body),
                )
            })
            .collect();
        let mut get: Vec<f64> = (0..9)
            .map(|_| {
                round(
                    &|n| bench.time_async(n, |i| bench.store_get(name(i))),
                    &|i| {
                        FileBench::plain_get(&files[i as usize % keys]);
                    },
                )
            })
            .collect();
        set.sort_by(f64::total_cmp);
        get.sort_by(f64::total_cmp);
        println!(
            "ratio file store / std::fs, {label}: set {:.2}x, get {:.2}x \
             (median of 9; range set {:.2}-{:.2}, get {:.2}-{:.2})",
            set[4], get[4], set[0], set[8], get[0], get[8]
        );
    }
}

criterion_group!(benches, memory, file, ratios);
criterion_main!(benches);
