//! The request streams the policy benches replay, shared by `policy` and
//! `policy_loop` so that both time the same requests.

/// Requests in each precomputed stream, replayed cyclically.
pub const STREAM: usize = 1 << 22;

/// xorshift64*: enough randomness for a key stream, and deterministic.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf(alpha) ranks over `keys` keys, scattered over the key space so
/// that popular keys are not neighbours.
pub fn zipf_stream(keys: usize, alpha: f64, seed: u64) -> Vec<u64> {
    let mut cdf = Vec::with_capacity(keys);
    let mut total = 0.0;
    for rank in 1..=keys {
        total += (rank as f64).powf(-alpha);
        cdf.push(total);
    }
    let mut rng = Rng(seed);
    (0..STREAM)
        .map(|_| {
            let u = rng.unit() * total;
            let rank = cdf.partition_point(|&c| c < u) as u64;
            rank.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        })
        .collect()
}
