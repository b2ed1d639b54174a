//! Policy churn on the 1M-key, Zipf 0.8 shape of `benches/policy.rs`,
//! timed by a plain loop: each policy warms up on the stream, then replays
//! it seven times, and the fastest pass counts. Fewer moving parts than
//! criterion, for comparing two builds run in turns:
//!
//! `cargo bench -p daramjwee-component --bench policy_loop [-- lru s3fifo sieve]`

use std::hint::black_box;
use std::time::Instant;

use daramjwee_component::policy::{Policy, PolicyKind};

/// Keys, cached keys and requests per pass.
const KEYS: usize = 1 << 20;
const CAPACITY: u64 = 1 << 17;
const STREAM: usize = 1 << 22;

/// The same Zipf(0.8) stream as `benches/policy.rs` (xorshift64*, seed
/// 0x5EED, ranks scattered over the key space).
fn stream() -> Vec<u64> {
    let mut cdf = Vec::with_capacity(KEYS);
    let mut total = 0.0;
    for rank in 1..=KEYS {
        total += (rank as f64).powf(-0.8);
        cdf.push(total);
    }
    let mut x = 0x5EEDu64;
    (0..STREAM)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let unit = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
            let rank = cdf.partition_point(|&c| c < unit * total) as u64;
            rank.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        })
        .collect()
}

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
    let stream = stream();
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
