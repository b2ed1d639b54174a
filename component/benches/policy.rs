//! Policy churn: the cost of one request (a hit touches, a miss inserts and
//! evicts) against a policy at steady state, through the same
//! `Box<dyn Policy>` the stores use. Criterion's "time" is per request.
//!
//! Two shapes: a large cache (2^20 keys, 2^17 cached) whose tables outgrow
//! the CPU caches, and a small one (2^16 keys, 2^13 cached) that fits them.
//! Each runs with the default hasher (`KeyHasher`, aHash keyed at random)
//! and, suffixed `siphash`, with std's SipHash, to show what hashing costs.
//! A third group repeats the Go library's own churn benchmark shape, string
//! keys and all, with both hashers.
//!
//! `cargo bench -p daramjwee-component --bench policy`
#![expect(missing_docs, reason = "criterion_group! makes an undocumented pub fn")]

use std::hash::RandomState;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use daramjwee_component::policy::{Policy, PolicyKind};

mod workload;
use workload::{Rng, STREAM, zipf_stream};

/// One request as the stores and the simulator make it.
fn request(policy: &mut dyn Policy<u64>, key: u64, evicted: &mut Vec<u64>) -> bool {
    if policy.touch(&key) {
        return true;
    }
    policy.insert(key, 1, evicted);
    evicted.clear();
    false
}

fn churn(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy-churn");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for (shape, keys, capacity) in [("large", 1 << 20, 1 << 17), ("small", 1 << 16, 1 << 13)] {
        for alpha in [0.8, 1.0] {
            let stream = zipf_stream(keys, alpha, 0x5EED);
            for kind in PolicyKind::ALL {
                for hash in ["", "/siphash"] {
                    let mut policy = if hash.is_empty() {
                        kind.build::<u64>(capacity)
                    } else {
                        kind.build_with_hasher(capacity, RandomState::new())
                    };
                    let mut evicted = Vec::new();
                    // Warm up to steady state, then note the mix for the reader.
                    for &key in &stream {
                        request(policy.as_mut(), key, &mut evicted);
                    }
                    let hits = stream
                        .iter()
                        .filter(|&&k| request(policy.as_mut(), k, &mut evicted))
                        .count();
                    let name = format!("{kind}/{shape}/zipf-{alpha}{hash}");
                    eprintln!(
                        "{name}: {keys} keys, capacity {capacity}, hit ratio {:.3}",
                        hits as f64 / STREAM as f64
                    );
                    let mut at = 0;
                    group.bench_function(name, |b| {
                        b.iter(|| {
                            let key = stream[at];
                            at = (at + 1) % STREAM;
                            black_box(request(policy.as_mut(), key, &mut evicted))
                        })
                    });
                }
            }
        }
    }
    group.finish();
}

/// The Go library's `Benchmark*_Churn` shape, the one behind its
/// 158–180 ns/op: 1000 entries of size 1; each request either touches one
/// of the first 1000 keys (present or long evicted) or, half the time,
/// inserts a key never seen before, which evicts one. Keys are strings as
/// the stores' are (`Arc<str>`), made before timing; the Go benchmark
/// formats its key inside the loop.
fn go_shape(c: &mut Criterion) {
    const CAPACITY: u64 = 1000;
    const FRESH: usize = 1 << 20;
    let first: Vec<Arc<str>> = (0..CAPACITY)
        .map(|i| Arc::from(format!("key{i}")))
        .collect();
    let fresh: Vec<Arc<str>> = (0..FRESH as u64)
        .map(|i| Arc::from(format!("key{}", i + CAPACITY)))
        .collect();
    let mut rng = Rng(0x5EED);
    let ops: Vec<(bool, usize)> = (0..STREAM)
        .map(|_| {
            let r = rng.next();
            (r & 1 == 0, ((r >> 1) % CAPACITY) as usize)
        })
        .collect();
    let mut group = c.benchmark_group("policy-churn-go-shape");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for (kind, hash) in PolicyKind::ALL
        .into_iter()
        .flat_map(|kind| [(kind, ""), (kind, "/siphash")])
    {
        let mut policy = if hash.is_empty() {
            kind.build::<Arc<str>>(CAPACITY)
        } else {
            kind.build_with_hasher(CAPACITY, RandomState::new())
        };
        let mut evicted = Vec::new();
        for key in &first {
            policy.insert(Arc::clone(key), 1, &mut evicted);
        }
        let (mut at, mut next) = (0, 0);
        group.bench_function(format!("{kind}{hash}"), |b| {
            b.iter(|| {
                let (touch, i) = ops[at];
                at = (at + 1) % STREAM;
                if touch {
                    black_box(policy.touch(&first[i]));
                } else {
                    policy.insert(Arc::clone(&fresh[next]), 1, &mut evicted);
                    next = (next + 1) % FRESH;
                    evicted.clear();
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, churn, go_shape);
criterion_main!(benches);
