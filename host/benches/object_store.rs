//! Object store tier against moto's S3 API: peak memory while streaming a
//! large object up, then upload and read throughput.
//!
//! `cargo bench -p daramjwee --bench object_store`. `BENCH_STREAM_MIB`
//! (default 1024) sets the size of the streamed object, `BENCH_MIB`
//! (default 64) the size of the throughput runs.

#[path = "../../tests/support/moto.rs"]
mod moto;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use daramjwee::{Metadata, ObjectStoreTier, Tier};
use futures::StreamExt;

const MIB: usize = 1024 * 1024;
/// Size of one write: what an origin body typically hands over.
const CHUNK: usize = 64 * 1024;
const RUNS: usize = 3;

fn env_mib(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A field of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A fresh allocation per chunk, as an origin would hand them over: a sink
/// that kept every chunk would grow with the object.
fn generated_chunk(i: usize) -> Bytes {
    let mut chunk = vec![0u8; CHUNK];
    for (j, b) in chunk.iter_mut().enumerate() {
        *b = (i.wrapping_mul(31) ^ j) as u8;
    }
    Bytes::from(chunk)
}

async fn upload(tier: &ObjectStoreTier, key: &str, chunks: impl Iterator<Item = Bytes>) {
    let mut sink = tier
        .begin_write(key, Metadata::tagged("bench"))
        .await
        .expect("begin_write");
    for chunk in chunks {
        sink.write(chunk).await.expect("write");
    }
    sink.commit().await.expect("commit");
}

async fn read_all(tier: &ObjectStoreTier, key: &str) -> u64 {
    let mut entry = tier.get(key).await.expect("get").expect("entry");
    let mut read = 0;
    while let Some(chunk) = entry.body.next().await {
        read += chunk.expect("chunk").len() as u64;
    }
    assert_eq!(read, entry.size);
    read
}

fn mib_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / MIB as f64 / took.as_secs_f64()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let stream_mib = env_mib("BENCH_STREAM_MIB", 1024);
    let mib = env_mib("BENCH_MIB", 64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let moto = moto::Moto::start();
    moto.create_bucket("bench");
    let tier = ObjectStoreTier::from_url_with_options("s3", "s3://bench/cache", moto.s3_options())
        .expect("tier");
    let part_mib = ObjectStoreTier::DEFAULT_PART_SIZE / MIB;
    let in_flight = ObjectStoreTier::DEFAULT_MAX_IN_FLIGHT_PARTS;
    println!(
        "object store tier on moto {}: parts of {part_mib} MiB, {in_flight} in flight, writes of {} KiB",
        moto.endpoint(),
        CHUNK / 1024
    );

    // Peak memory first, while the process is still small: VmHWM is a
    // high-water mark for the process's whole life.
    runtime.block_on(async {
        // Warm the connection pool and allocator.
        upload(&tier, "warm", (0..4).map(generated_chunk)).await;
        let base_rss = status_kib("VmRSS");
        let base_hwm = status_kib("VmHWM");
        let peak = Arc::new(AtomicU64::new(base_rss));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    peak.fetch_max(status_kib("VmRSS"), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let chunks = stream_mib * MIB / CHUNK;
        let started = Instant::now();
        upload(&tier, "streamed", (0..chunks).map(generated_chunk)).await;
        let took = started.elapsed();
        done.store(true, Ordering::Relaxed);
        sampler.join().expect("sampler");
        let hwm = status_kib("VmHWM");
        println!(
            "stream {stream_mib} MiB up: {:.1} s, {:.0} MiB/s; RSS before {:.1} MiB, \
             peak sampled RSS {:.1} MiB (+{:.1}), VmHWM {:.1} MiB (+{:.1} over the earlier mark); \
             bound (in-flight + 1) x part = {} MiB",
            took.as_secs_f64(),
            mib_per_s(stream_mib * MIB, took),
            base_rss as f64 / 1024.0,
            peak.load(Ordering::Relaxed) as f64 / 1024.0,
            (peak.load(Ordering::Relaxed) - base_rss) as f64 / 1024.0,
            hwm as f64 / 1024.0,
            hwm.saturating_sub(base_hwm) as f64 / 1024.0,
            (in_flight + 1) * part_mib,
        );
        let started = Instant::now();
        let read = read_all(&tier, "streamed").await;
        println!(
            "stream {stream_mib} MiB down: {:.0} MiB/s",
            mib_per_s(read as usize, started.elapsed())
        );
        tier.delete("streamed").await.expect("delete");
    });

    runtime.block_on(async {
        let body: Vec<Bytes> = (0..mib * MIB / CHUNK).map(generated_chunk).collect();
        let mut up = Vec::new();
        let mut down = Vec::new();
        for run in 0..RUNS {
            let key = format!("object-{run}");
            let started = Instant::now();
            upload(&tier, &key, body.iter().cloned()).await;
            up.push(mib_per_s(mib * MIB, started.elapsed()));
            let started = Instant::now();
            let read = read_all(&tier, &key).await;
            down.push(mib_per_s(read as usize, started.elapsed()));
        }
        println!(
            "{mib} MiB upload: median {:.0} MiB/s over {RUNS} runs ({})",
            median(up.clone()),
            up.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "{mib} MiB read: median {:.0} MiB/s over {RUNS} runs ({})",
            median(down.clone()),
            down.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );

        // Small objects: a single PUT and a GET each.
        let small = Bytes::from(vec![7u8; 4096]);
        let n = 200;
        let started = Instant::now();
        for i in 0..n {
            upload(&tier, &format!("small-{i}"), std::iter::once(small.clone())).await;
        }
        let put = started.elapsed() / n;
        let started = Instant::now();
        for i in 0..n {
            read_all(&tier, &format!("small-{i}")).await;
        }
        let get = started.elapsed() / n;
        let started = Instant::now();
        for i in 0..n {
            tier.stat(&format!("small-{i}"))
                .await
                .expect("stat")
                .expect("entry");
        }
        let stat = started.elapsed() / n;
        println!("4 KiB objects: put {put:?}, get {get:?}, stat {stat:?} (mean of {n})");
    });
}
