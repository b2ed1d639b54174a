//! Policy churn on the 1M-key, Zipf 0.8 shape of `benches/policy.rs`,
//! timed by a plain loop: each policy warms up on the stream, then replays
//! it seven times, and the fastest pass counts. Fewer moving parts than
//! criterion, for comparing two builds run in turns:
//!
//! `cargo bench -p daramjwee-component --bench policy_loop [-- lru s3fifo sieve]`

use std::hint::black_box;
use std::time::Instant;

use daramjwee_component::policy::{Policy, PolicyKind};

mod workload;
use workload::{STREAM, zipf_stream};

/// Keys and cached keys.
const KEYS: usize = 1 << 20;
const CAPACITY: u64 = 1 << 17;

/// One pass: a hit touches, a miss inserts (and evicts). Returns the hits.
fn pass(policy: &mut dyn Policy<u64>, stream: &[u64], evicted: &mut Vec<u64>) -> usize {
    let mut hits = 0;
    for &key in stream {
        if policy.touch(&key) {
            hits += 1;
        } else {
            policy.insert(key, 1, evicted);
            evicted.clear();
        }
    }
    hits
}

fn main() {
    let kinds: Vec<PolicyKind> = match std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .map(|arg| arg.parse())
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(kinds) if !kinds.is_empty() => kinds,
        Ok(_) => PolicyKind::ALL.to_vec(),
        Err(err) => {
            eprintln!("{err}");
            std::process::exit(2);
        }
    };
    let stream = zipf_stream(KEYS, 0.8, 0x5EED);
    for kind in kinds {
        let mut policy = kind.build::<u64>(CAPACITY);
        let mut evicted = Vec::new();
        pass(policy.as_mut(), &stream, &mut evicted);
        let mut best = f64::MAX;
        let mut hits = 0;
        for _ in 0..7 {
            let start = Instant::now();
            hits = black_box(pass(policy.as_mut(), &stream, &mut evicted));
            best = best.min(start.elapsed().as_nanos() as f64 / STREAM as f64);
        }
        println!(
            "{kind}/large/zipf-0.8: {best:.1} ns/op (fastest of 7 passes), hit ratio {:.3}",
            hits as f64 / STREAM as f64
        );
    }
}
