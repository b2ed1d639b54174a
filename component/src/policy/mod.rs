//! Eviction policies: which keys a bounded store drops to stay within its
//! byte capacity.
//!
//! Three policies sit behind one small [`Policy`] trait: [`Lru`],
//! [`S3Fifo`] (Yang et al., SOSP '23) and [`Sieve`] (Zhang et al.,
//! NSDI '24). Their miss ratios agree with libCacheSim's implementations on
//! the same traces; [`simulate`] replays a trace through one of them the way
//! libCacheSim's request loop does (`benches/policy_check.py` compares the two).
//!
//! Each policy keeps its keys in a slab of nodes linked into queues by
//! index, found through a hash index, so every operation is O(1)
//! (amortised for the CLOCK-style passes of S3-FIFO and SIEVE) and nothing
//! allocates once the cache is warm. Keys are hashed with [`KeyHasher`]
//! (aHash, keyed at random per policy), so clients choosing keys cannot
//! predict, let alone force, collisions; [`PolicyKind::build_with_hasher`]
//! takes another hasher.

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::str::FromStr;

use crate::Error;

mod lru;
mod s3fifo;
mod sieve;
mod sim;
mod table;

pub use lru::Lru;
pub use s3fifo::S3Fifo;
pub use sieve::Sieve;
pub use sim::{SimError, SimReport, simulate};

/// The hasher policies use unless told otherwise: aHash, keyed from the
/// operating system's random source (drawn once per process, and made
/// different for every policy), the kind of seeded hash Go's maps use. It is several times faster than std's
/// SipHash on short keys (with SipHash, hashing was a third to a half of
/// the cost of a request, see `docs/BENCHMARKS.md`), and its outputs
/// cannot be predicted without the keys, so clients choosing cache keys
/// cannot make them collide or aim at S3-FIFO's remembered hashes.
pub type KeyHasher = ahash::RandomState;

/// A policy tracks keys with byte sizes against a byte capacity and picks
/// victims. Single-threaded core; stores wrap it in their own lock.
pub trait Policy<K: Hash + Eq + Clone>: Send {
    /// A key became resident with `size` bytes (a fill or a write
    /// committed). If the key is already tracked, this updates its size and
    /// counts as an access. Pushes onto `evicted` every key the policy drops
    /// to keep its tracked bytes within capacity — possibly `key` itself
    /// when the policy does not admit it (larger than the whole capacity,
    /// or for S3-FIFO not smaller than its small queue).
    fn insert(&mut self, key: K, size: u64, evicted: &mut Vec<K>);
    /// False when [`insert`](Self::insert)ing `key` with `size` now would
    /// drop it at once (too large for where the policy would put it); true
    /// when it may stay. A store buffering a body to insert asks this as
    /// the body grows, and stops buffering one it could never keep.
    fn admits(&self, key: &K, size: u64) -> bool;
    /// A hit on `key`. Returns false if the key is not tracked.
    fn touch(&mut self, key: &K) -> bool;
    /// The store removed `key` (delete). Returns false if it was not tracked.
    fn remove(&mut self, key: &K) -> bool;
    /// Choose one victim, stop tracking it, and return it (None when
    /// empty). For stores that must shrink for reasons of their own.
    fn evict(&mut self) -> Option<K>;
    /// Whether `key` is tracked (resident).
    fn contains(&self, key: &K) -> bool;
    /// Number of resident keys.
    fn len(&self) -> usize;
    /// Whether no key is resident.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes of resident keys.
    fn used(&self) -> u64;
}

/// Which policy; parsed from "lru", "s3fifo", "sieve".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    /// Least recently used.
    Lru,
    /// S3-FIFO: small, main and ghost FIFO queues.
    S3Fifo,
    /// SIEVE: one FIFO with a visited bit and a moving hand.
    Sieve,
}

impl PolicyKind {
    /// Every kind, in the order the documentation lists them.
    pub const ALL: [PolicyKind; 3] = [PolicyKind::Lru, PolicyKind::S3Fifo, PolicyKind::Sieve];

    /// A new policy of this kind over `capacity` bytes. The capacity should
    /// be positive (a store with no bound uses no policy); with 0 nothing of
    /// positive size is admitted.
    pub fn build<K: Hash + Eq + Clone + Send + 'static>(self, capacity: u64) -> Box<dyn Policy<K>> {
        self.build_with_hasher(capacity, KeyHasher::new())
    }

    /// Like [`build`](Self::build), hashing keys with `hasher` instead of
    /// [`KeyHasher`]. S3-FIFO's ghost queue remembers keys by
    /// their 64-bit hash alone, so a hasher whose keys collide makes it
    /// take some new keys for remembered ones (the resident keys stay
    /// exact).
    pub fn build_with_hasher<K, S>(self, capacity: u64, hasher: S) -> Box<dyn Policy<K>>
    where
        K: Hash + Eq + Clone + Send + 'static,
        S: BuildHasher + Send + 'static,
    {
        match self {
            PolicyKind::Lru => Box::new(Lru::with_hasher(capacity, hasher)),
            PolicyKind::S3Fifo => Box::new(S3Fifo::with_hasher(capacity, hasher)),
            PolicyKind::Sieve => Box::new(Sieve::with_hasher(capacity, hasher)),
        }
    }

    /// The name [`FromStr`] accepts: "lru", "s3fifo" or "sieve".
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Lru => "lru",
            PolicyKind::S3Fifo => "s3fifo",
            PolicyKind::Sieve => "sieve",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PolicyKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        PolicyKind::ALL
            .into_iter()
            .find(|kind| kind.name() == s)
            .ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "eviction policy `{s}` is unknown (expected lru, s3fifo or sieve)"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_admits_refuses_insert_drops() {
        for kind in PolicyKind::ALL {
            let mut policy = kind.build::<u32>(1000);
            let mut evicted = Vec::new();
            // Keys from a small range with varied sizes: resident updates,
            // misses and, for S3-FIFO, ghost hits all come up.
            let mut x = 7u64;
            let mut refused = 0;
            for _ in 0..5000 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let key = (x >> 33) as u32 % 40;
                let size = [1, 20, 99, 100, 101, 300, 999, 1000, 1001][(x >> 20) as usize % 9];
                let admitted = policy.admits(&key, size);
                evicted.clear();
                policy.insert(key, size, &mut evicted);
                if !admitted {
                    assert!(!policy.contains(&key), "{kind}: key {key} size {size}");
                }
                refused += usize::from(!admitted);
            }
            assert!(refused > 0, "{kind}: some sizes are too large");
        }
    }

    #[test]
    fn kinds_parse_from_their_names() {
        for kind in PolicyKind::ALL {
            assert_eq!(kind.name().parse::<PolicyKind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.name());
        }
    }

    #[test]
    fn unknown_kind_error_names_the_value() {
        let err = "LFU".parse::<PolicyKind>().unwrap_err();
        assert!(
            matches!(&err, Error::InvalidConfig(why) if why.contains("`LFU`")),
            "{err}"
        );
    }

    #[test]
    fn every_kind_keeps_used_within_capacity() {
        for kind in PolicyKind::ALL {
            let mut policy = kind.build::<u32>(100);
            let mut evicted = Vec::new();
            for k in 0..1000u32 {
                if !policy.touch(&(k % 37)) {
                    policy.insert(k % 37, u64::from(k % 7 + 1), &mut evicted);
                }
                assert!(policy.used() <= 100, "{kind}: used {}", policy.used());
            }
            let mut drained = 0;
            while let Some(key) = policy.evict() {
                assert!(!policy.contains(&key), "{kind}");
                drained += 1;
            }
            assert!(drained > 0, "{kind}");
            assert_eq!((policy.len(), policy.used()), (0, 0), "{kind}");
            assert!(policy.is_empty());
        }
    }

    /// A hasher with few distinct hashes (`finish() % modulus`, none when
    /// the modulus is 0), so keys collide often.
    #[derive(Default)]
    struct Weak<const MODULUS: u64>(u64);

    impl<const MODULUS: u64> std::hash::Hasher for Weak<MODULUS> {
        fn write(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.0 = self.0.wrapping_mul(31).wrapping_add(u64::from(b));
            }
        }
        fn finish(&self) -> u64 {
            if MODULUS == 0 {
                self.0
            } else {
                self.0 % MODULUS
            }
        }
    }

    /// Runs one request mix through the policy with std's hasher and
    /// through the same kind with `hasher`, comparing what each decides
    /// (when `same`) and checking each stays consistent.
    fn replay_with<S: std::hash::BuildHasher + Send + 'static>(
        kind: PolicyKind,
        hasher: S,
        same: bool,
    ) {
        let mut std = kind.build::<u32>(50);
        let mut other = kind.build_with_hasher::<u32, _>(50, hasher);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..5_000u32 {
            let key = (i * 7919) % 211 % (1 + i % 97);
            let hit = std.touch(&key);
            let other_hit = other.touch(&key);
            if !hit {
                std.insert(key, u64::from(key % 3 + 1), &mut a);
            }
            if !other_hit {
                other.insert(key, u64::from(key % 3 + 1), &mut b);
                assert!(other.contains(&key) != b.contains(&key), "{kind}");
            }
            if i % 101 == 0 {
                let (removed, other_removed) = (std.remove(&(i % 50)), other.remove(&(i % 50)));
                assert!(!same || other_removed == removed, "{kind}");
                assert!(!other.contains(&(i % 50)), "{kind}");
            }
            assert!(other.used() <= 50, "{kind}");
            if same {
                assert_eq!(other_hit, hit, "{kind}");
                assert_eq!(a, b, "{kind}");
                assert_eq!(
                    (std.len(), std.used()),
                    (other.len(), other.used()),
                    "{kind}"
                );
            }
            for key in b.drain(..) {
                assert!(!other.contains(&key), "{kind}: {key} evicted");
            }
            a.clear();
        }
    }

    #[test]
    fn any_hasher_without_collisions_gives_the_same_decisions() {
        for kind in PolicyKind::ALL {
            replay_with(
                kind,
                std::hash::BuildHasherDefault::<Weak<0>>::default(),
                true,
            );
        }
    }

    #[test]
    fn colliding_hashes_change_no_decision_of_lru_and_sieve() {
        for kind in [PolicyKind::Lru, PolicyKind::Sieve] {
            replay_with(
                kind,
                std::hash::BuildHasherDefault::<Weak<13>>::default(),
                true,
            );
        }
    }

    #[test]
    fn colliding_hashes_leave_s3fifo_consistent() {
        // Its ghost queue keeps hashes, so a colliding key may be taken
        // for a remembered one; the resident keys stay exact.
        replay_with(
            PolicyKind::S3Fifo,
            std::hash::BuildHasherDefault::<Weak<13>>::default(),
            false,
        );
    }

    #[test]
    fn zero_capacity_admits_nothing() {
        for kind in PolicyKind::ALL {
            let mut policy = kind.build::<&str>(0);
            let mut evicted = Vec::new();
            policy.insert("a", 1, &mut evicted);
            assert_eq!(evicted, ["a"], "{kind}");
            assert!(!policy.contains(&"a"));
            assert_eq!(policy.used(), 0);
        }
    }
}
