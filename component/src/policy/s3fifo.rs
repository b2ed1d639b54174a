//! S3-FIFO (Yang et al., SOSP '23): a small FIFO that filters one-hit
//! wonders, a main FIFO with CLOCK-style reinsertion, and a ghost FIFO that
//! remembers keys recently dropped from the small queue.
//!
//! The details follow libCacheSim's `S3FIFO` with `small_size_ratio=0.1`,
//! `ghost_size_ratio=0.9` and `move_to_main_threshold=2`, so miss ratios
//! agree with it:
//!
//! - The small queue gets 10 % of the capacity (rounded down), the main
//!   queue the rest; the ghost queue remembers the keys (and sizes) of up to
//!   90 % of the capacity in bytes. The queues' shares only steer which one
//!   is evicted from: together they hold up to the capacity.
//! - The ghost queue keeps a key's 64-bit keyed hash, not the key: a key
//!   leaving the small queue is handed to the caller as it is (no copy, and
//!   ghosts hold no key memory), and any key with that hash counts as
//!   remembered, which another key matches by chance with odds of 2^-64.
//! - A hit adds one to the key's counter, capped at 3.
//! - A miss goes to the main queue if the key is in the ghost queue, else to
//!   the small queue. Until the first eviction, keys that find the small
//!   queue full go to the main queue instead (so a cold cache fills main).
//! - When space is needed: if the main queue holds more than its share, or
//!   the small queue is empty, the main queue evicts: its oldest key, if its
//!   counter is 0, leaves; otherwise it is reinserted at the head with its
//!   counter (at most 3) minus one. Otherwise the small queue evicts: its
//!   oldest key moves to the main queue (counter reset) if it was hit at
//!   least twice, else it leaves and is remembered in the ghost queue.
//! - A new key is admitted only if it is smaller than the small queue's
//!   share (a key coming back from the ghost queue may equal it), so with
//!   S3-FIFO a cache keeps no object of 10 % of its capacity or more.
//!   libCacheSim makes room before refusing a key of exactly the small
//!   queue's size; here it is refused before anything is evicted.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash};

use super::table::{List, NIL, Table};
use super::{KeyHasher, Policy};

const SMALL: u8 = 0;
const MAIN: u8 = 1;
const GHOST: u8 = 2;

/// Counters saturate here (2 bits).
const MAX_FREQ: u8 = 3;
/// Hits in the small queue that earn a move to the main queue.
const MOVE_TO_MAIN: u8 = 2;
/// How many places behind the main queue's oldest node a pop asks the CPU
/// for a node, so that a CLOCK pass re-inserting many in a row finds
/// each loaded.
const AHEAD: usize = 8;
/// A node that has left the main queue's ring.
const GONE: u8 = u8::MAX;

/// S3-FIFO eviction over a byte capacity.
pub struct S3Fifo<K, S = KeyHasher> {
    capacity: u64,
    small_capacity: u64,
    main_capacity: u64,
    ghost_capacity: u64,
    table: Table<K, S>,
    /// Indexed by `SMALL`, `MAIN`, `GHOST`. The small and ghost queues are
    /// linked through their nodes; the main queue's entry only counts its
    /// nodes and bytes, its order is `main`.
    queues: [List; 3],
    /// The main queue, oldest first: a ring of node numbers. A main node's
    /// `older` field holds the position it was pushed at (counted since
    /// the queue began, wrapping), so an entry whose node was re-inserted
    /// later, or left, no longer matches and is skipped. Unlike a linked
    /// queue, the nodes the next pops take are known in advance.
    main: VecDeque<u32>,
    /// The position of `main[0]`.
    main_front: u32,
    has_evicted: bool,
}

impl<K: Hash + Eq + Clone> S3Fifo<K> {
    /// An empty S3-FIFO over `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        S3Fifo::with_hasher(capacity, KeyHasher::new())
    }
}

impl<K: Hash + Eq + Clone, S: BuildHasher> S3Fifo<K, S> {
    /// An empty S3-FIFO over `capacity` bytes that hashes keys with
    /// `hasher` (see [`PolicyKind::build_with_hasher`](super::PolicyKind::build_with_hasher)).
    pub fn with_hasher(capacity: u64, hasher: S) -> Self {
        // Float arithmetic as in libCacheSim, so the shares round alike.
        let small_capacity = (capacity as f64 * 0.1) as u64;
        let ghost_capacity = (capacity as f64 * 0.9) as u64;
        S3Fifo {
            capacity,
            small_capacity,
            main_capacity: capacity - small_capacity,
            ghost_capacity,
            table: Table::with_hasher(hasher),
            queues: [List::new(); 3],
            main: VecDeque::new(),
            main_front: 0,
            has_evicted: false,
        }
    }

    fn resident_bytes(&self) -> u64 {
        self.queues[SMALL as usize].bytes + self.queues[MAIN as usize].bytes
    }

    /// Puts an unlinked node at the head of queue `q`.
    fn push(&mut self, idx: u32, q: u8) {
        let node = self.table.node_mut(idx);
        node.queue = q;
        if q != MAIN {
            self.queues[q as usize].push_head(&mut self.table, idx);
            return;
        }
        node.older = self.main_front.wrapping_add(self.main.len() as u32);
        let main = &mut self.queues[MAIN as usize];
        main.bytes += node.size;
        main.len += 1;
        self.main.push_back(idx);
    }

    /// Takes a node out of its queue, wherever it is in it; a node leaving
    /// the main queue this way is about to be forgotten.
    fn unlink(&mut self, idx: u32) {
        let node = self.table.node_mut(idx);
        let q = node.queue;
        if q != MAIN {
            self.queues[q as usize].unlink(&mut self.table, idx);
            return;
        }
        node.queue = GONE;
        let main = &mut self.queues[MAIN as usize];
        main.bytes -= node.size;
        main.len -= 1;
        // Left-behind entries wait for the front, unless they come to
        // outnumber the live ones: then the ring keeps the live ones,
        // renumbered.
        if self.main.len() > 2 * main.len + 64 {
            let table = &mut self.table;
            let mut pos = self.main_front;
            self.main.retain(|&i| {
                let node = table.node(i);
                let live = node.queue == MAIN && node.older == pos;
                pos = pos.wrapping_add(1);
                live
            });
            for (at, &i) in self.main.iter().enumerate() {
                table.node_mut(i).older = self.main_front.wrapping_add(at as u32);
            }
        }
    }

    /// Takes the main queue's oldest node out, asking the CPU for the node
    /// [`AHEAD`] places behind it.
    fn pop_main(&mut self) -> Option<u32> {
        while let Some(idx) = self.main.pop_front() {
            let pos = self.main_front;
            self.main_front = self.main_front.wrapping_add(1);
            let node = self.table.node(idx);
            if node.queue == MAIN && node.older == pos {
                let main = &mut self.queues[MAIN as usize];
                main.bytes -= node.size;
                main.len -= 1;
                if let Some(&ahead) = self.main.get(AHEAD - 1) {
                    self.table.prefetch(ahead);
                }
                return Some(idx);
            }
        }
        None
    }

    /// Forgets an unlinked resident node entirely.
    fn release(&mut self, idx: u32) -> K {
        self.table.remove(idx)
    }

    /// Remembers an unlinked node just dropped from the small queue, whose
    /// key has been taken, in the ghost queue, making room there first.
    fn remember(&mut self, idx: u32) {
        let size = self.table.node(idx).size;
        if size > self.ghost_capacity {
            self.table.discard(idx);
            return;
        }
        while self.queues[GHOST as usize].bytes > self.ghost_capacity - size {
            let oldest = self.queues[GHOST as usize].tail;
            self.unlink(oldest);
            self.table.discard(oldest);
        }
        self.table.node_mut(idx).freq = 0;
        self.push(idx, GHOST);
    }

    /// One pass of the small queue: moves frequently hit keys to the main
    /// queue until one key leaves (None if the queue emptied first).
    fn evict_small(&mut self) -> Option<K> {
        loop {
            let idx = self.queues[SMALL as usize].tail;
            if idx == NIL {
                return None;
            }
            self.unlink(idx);
            let node = self.table.node_mut(idx);
            if node.freq >= MOVE_TO_MAIN {
                node.freq = 0;
                self.push(idx, MAIN);
            } else {
                let key = self.table.take_key(idx);
                self.remember(idx);
                return Some(key);
            }
        }
    }

    /// CLOCK over the main queue: reinserts keys with hits left until one
    /// with none leaves (None if the queue is empty).
    fn evict_main(&mut self) -> Option<K> {
        loop {
            let idx = self.pop_main()?;
            let node = self.table.node_mut(idx);
            if node.freq > 0 {
                node.freq = node.freq.min(MAX_FREQ) - 1;
                self.push(idx, MAIN);
            } else {
                return Some(self.release(idx));
            }
        }
    }

    /// One eviction step as libCacheSim takes it; None when it only moved
    /// keys from the small to the main queue.
    fn evict_step(&mut self) -> Option<K> {
        self.has_evicted = true;
        let small = &self.queues[SMALL as usize];
        if self.queues[MAIN as usize].bytes > self.main_capacity || small.len == 0 {
            self.evict_main()
        } else {
            self.evict_small()
        }
    }

    /// Evicts until `size` more bytes fit (`size` is at most the capacity).
    fn make_room(&mut self, size: u64, evicted: &mut Vec<K>) {
        while self.resident_bytes() > self.capacity - size {
            evicted.extend(self.evict_step());
        }
    }
}

impl<K: Hash + Eq + Clone + Send, S: BuildHasher + Send> Policy<K> for S3Fifo<K, S> {
    fn insert(&mut self, key: K, size: u64, evicted: &mut Vec<K>) {
        let hash = self.table.hash(&key);
        let found = self.table.find(hash, &key);
        if let Some(idx) = found
            && self.table.node(idx).queue != GHOST
        {
            if size > self.capacity {
                self.unlink(idx);
                self.release(idx);
                evicted.push(key);
                return;
            }
            let node = self.table.node_mut(idx);
            node.freq = (node.freq + 1).min(MAX_FREQ);
            let q = node.queue;
            self.queues[q as usize].resize(&mut self.table, idx, size);
            self.make_room(0, evicted);
            return;
        }

        // A miss. A key remembered by the ghost queue keeps its node, which
        // is unlinked so no eviction below can touch it.
        if let Some(idx) = found {
            self.unlink(idx);
        }
        let from_ghost = found.is_some();
        if size > self.small_capacity || (!from_ghost && size == self.small_capacity) {
            if let Some(idx) = found {
                self.table.discard(idx);
            }
            evicted.push(key);
            return;
        }
        self.make_room(size, evicted);
        match found {
            Some(idx) => {
                self.table.restore_key(idx, key);
                let node = self.table.node_mut(idx);
                node.size = size;
                node.freq = 0;
                self.push(idx, MAIN);
            }
            None => {
                let small = &self.queues[SMALL as usize];
                let q = if !self.has_evicted && small.bytes >= self.small_capacity {
                    MAIN
                } else {
                    SMALL
                };
                let idx = self.table.insert(hash, key, size, q);
                self.push(idx, q);
            }
        }
    }

    fn admits(&self, key: &K, size: u64) -> bool {
        match self.table.get(key).map(|idx| self.table.node(idx).queue) {
            Some(GHOST) => size <= self.small_capacity,
            Some(_) => size <= self.capacity,
            None => size < self.small_capacity,
        }
    }

    fn touch(&mut self, key: &K) -> bool {
        // Ghosts hold no key, so only a resident node matches exactly.
        let Some(idx) = self.table.get_exact(key) else {
            return false;
        };
        let node = self.table.node_mut(idx);
        if node.queue == GHOST {
            return false;
        }
        node.freq = (node.freq + 1).min(MAX_FREQ);
        true
    }

    fn remove(&mut self, key: &K) -> bool {
        let Some(idx) = self.table.get(key) else {
            return false;
        };
        // A deleted key's history goes too: if it comes back it starts over.
        let resident = self.table.node(idx).queue != GHOST;
        self.unlink(idx);
        self.table.discard(idx);
        resident
    }

    fn evict(&mut self) -> Option<K> {
        while self.len() > 0 {
            if let Some(key) = self.evict_step() {
                return Some(key);
            }
        }
        None
    }

    fn contains(&self, key: &K) -> bool {
        self.table
            .get_exact(key)
            .is_some_and(|idx| self.table.node(idx).queue != GHOST)
    }

    fn len(&self) -> usize {
        self.queues[SMALL as usize].len + self.queues[MAIN as usize].len
    }

    fn used(&self) -> u64 {
        self.resident_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_of(s3: &S3Fifo<u32>, key: u32) -> Option<u8> {
        s3.table.get(&key).map(|idx| s3.table.node(idx).queue)
    }

    /// The keys of queue `q`, oldest first.
    fn keys_of(s3: &S3Fifo<u32>, q: u8) -> Vec<u32> {
        let mut out = Vec::new();
        if q == MAIN {
            let mut pos = s3.main_front;
            for &idx in &s3.main {
                let node = s3.table.node(idx);
                if node.queue == MAIN && node.older == pos {
                    out.push(*s3.table.key(idx));
                }
                pos = pos.wrapping_add(1);
            }
        } else {
            let mut at = s3.queues[q as usize].tail;
            while at != NIL {
                out.push(*s3.table.key(at));
                at = s3.table.node(at).newer;
            }
        }
        assert_eq!(out.len(), s3.queues[q as usize].len);
        out
    }

    #[test]
    fn deleted_main_keys_leave_no_trace_in_its_ring() {
        let (mut s3, mut evicted) = filled(1_000, 1_000);
        // Keys 100.. filled the main queue while the cache was cold.
        for round in 0..100u32 {
            for k in 100..1_000 {
                if k % 20 == round % 20 {
                    assert!(s3.remove(&k));
                    s3.insert(k, 1, &mut evicted);
                }
            }
            assert!(s3.main.len() <= 2 * s3.queues[MAIN as usize].len + 65);
        }
        assert!(evicted.is_empty());
        let main = keys_of(&s3, MAIN);
        assert_eq!(main.len(), 900);
        // Evicting now walks the ring in order, skipping what was left.
        let mut order = Vec::new();
        while let Some(key) = s3.evict_main() {
            order.push(key);
        }
        assert_eq!(order, main);
        assert_eq!((s3.len(), s3.used()), (100, 100));
    }

    /// A cache of `capacity` with keys `0..keys` inserted in order, size 1
    /// each, and what inserting them evicted.
    fn filled(capacity: u64, keys: u32) -> (S3Fifo<u32>, Vec<u32>) {
        let mut s3 = S3Fifo::new(capacity);
        let mut evicted = Vec::new();
        for k in 0..keys {
            s3.insert(k, 1, &mut evicted);
        }
        (s3, evicted)
    }

    /// The simulator's request: a hit touches, a miss inserts.
    fn request(s3: &mut S3Fifo<u32>, key: u32, size: u64, evicted: &mut Vec<u32>) -> bool {
        s3.touch(&key) || {
            s3.insert(key, size, evicted);
            false
        }
    }

    #[test]
    fn queue_shares_round_like_libcachesim() {
        let s3 = S3Fifo::<u32>::new(1000);
        assert_eq!(
            (s3.small_capacity, s3.main_capacity, s3.ghost_capacity),
            (100, 900, 900)
        );
        let s3 = S3Fifo::<u32>::new(25);
        assert_eq!(
            (s3.small_capacity, s3.main_capacity, s3.ghost_capacity),
            (2, 23, 22)
        );
    }

    #[test]
    fn cold_cache_fills_main_once_small_is_full() {
        let (s3, evicted) = filled(100, 100);
        assert!(evicted.is_empty());
        assert_eq!(keys_of(&s3, SMALL), (0..10).collect::<Vec<_>>());
        assert_eq!(keys_of(&s3, MAIN), (10..100).collect::<Vec<_>>());
    }

    #[test]
    fn one_hit_wonder_leaves_through_ghost_and_returns_to_main() {
        let (mut s3, mut evicted) = filled(100, 100);
        s3.insert(100, 1, &mut evicted);
        // Key 0 was the oldest in the small queue and never hit.
        assert_eq!(evicted, [0]);
        assert_eq!(queue_of(&s3, 0), Some(GHOST));
        assert!(!s3.contains(&0) && !s3.touch(&0));
        assert_eq!((s3.len(), s3.used()), (100, 100));

        s3.insert(0, 1, &mut evicted);
        assert_eq!(queue_of(&s3, 0), Some(MAIN));
        assert!(s3.contains(&0));
        assert_eq!(s3.used(), 100);
    }

    #[test]
    fn ghosts_hold_no_key() {
        let keys: Vec<std::sync::Arc<u32>> = (0..101).map(std::sync::Arc::new).collect();
        let mut s3 = S3Fifo::new(100);
        let mut evicted = Vec::new();
        for key in &keys {
            s3.insert(std::sync::Arc::clone(key), 1, &mut evicted);
        }
        assert_eq!(evicted, [std::sync::Arc::new(0)]);
        evicted.clear();
        // Key 0 is remembered (it comes back to the main queue) but no
        // longer held by the policy.
        assert_eq!(std::sync::Arc::strong_count(&keys[0]), 1);
        assert_eq!(std::sync::Arc::strong_count(&keys[1]), 2);
        s3.insert(std::sync::Arc::clone(&keys[0]), 1, &mut evicted);
        assert_eq!(
            s3.table.get(&keys[0]).map(|idx| s3.table.node(idx).queue),
            Some(MAIN)
        );
        assert!(s3.contains(&keys[0]));
    }

    #[test]
    fn a_key_with_a_remembered_hash_counts_as_remembered() {
        /// Hashes every key to its value modulo 1000.
        #[derive(Default)]
        struct Mod1000(u64);
        impl std::hash::Hasher for Mod1000 {
            fn write(&mut self, _: &[u8]) {}
            fn write_u32(&mut self, n: u32) {
                self.0 = u64::from(n % 1000);
            }
            fn finish(&self) -> u64 {
                self.0
            }
        }
        let mut s3 = S3Fifo::with_hasher(100, std::hash::BuildHasherDefault::<Mod1000>::default());
        let mut evicted = Vec::new();
        for k in 0..101u32 {
            s3.insert(k, 1, &mut evicted);
        }
        assert_eq!(evicted, [0]);
        // 1000 was never seen, but hashes like key 0, which the ghost
        // queue remembers (making room moved key 1 there); 1050 hashes like
        // key 50, which is resident: that is no memory of 1050.
        s3.insert(1000, 1, &mut evicted);
        assert_eq!(evicted, [0, 1]);
        assert_eq!(
            s3.table.get(&1000).map(|i| s3.table.node(i).queue),
            Some(MAIN)
        );
        s3.insert(1050, 1, &mut evicted);
        assert_eq!(
            s3.table.get(&1050).map(|i| s3.table.node(i).queue),
            Some(SMALL)
        );
        assert!(s3.contains(&50) && s3.contains(&1000) && s3.contains(&1050));
        assert!(!s3.contains(&0));
    }

    #[test]
    fn small_queue_promotes_keys_hit_twice() {
        let (mut s3, mut evicted) = filled(100, 100);
        s3.touch(&0);
        s3.touch(&1);
        s3.touch(&1);
        s3.insert(100, 1, &mut evicted);
        // 0 was hit once: not enough. 1 then moves to main, 2 leaves.
        assert_eq!(evicted, [0]);
        s3.insert(101, 1, &mut evicted);
        assert_eq!(evicted, [0, 2]);
        assert_eq!(queue_of(&s3, 1), Some(MAIN));
        assert_eq!(s3.table.node(s3.table.get(&1).unwrap()).freq, 0);
        // Main now holds more than its share, so it gives up its oldest.
        s3.insert(102, 1, &mut evicted);
        assert_eq!(evicted, [0, 2, 10]);
    }

    #[test]
    fn main_queue_reinserts_hit_keys_with_capped_counter() {
        let (mut s3, _) = filled(100, 100);
        for _ in 0..10 {
            s3.touch(&10);
        }
        assert_eq!(s3.table.node(s3.table.get(&10).unwrap()).freq, MAX_FREQ);
        s3.touch(&11);
        // Drive main evictions directly: 10 and 11 (the oldest in main) go
        // round while they have hits left; the rest leave in FIFO order.
        let mut order = Vec::new();
        while let Some(key) = s3.evict_main() {
            order.push(key);
        }
        let mut expected: Vec<u32> = (12..100).collect();
        expected.extend([11, 10]);
        assert_eq!(order, expected);
        assert_eq!(s3.len(), 10);
    }

    #[test]
    fn scan_does_not_flush_hot_keys() {
        let hot = 0..40u32;
        let mut s3 = S3Fifo::new(100);
        let mut evicted = Vec::new();
        // Warm up with the hot set and some churn, so the cache has evicted.
        for round in 0..20u32 {
            for k in hot.clone() {
                request(&mut s3, k, 1, &mut evicted);
            }
            for k in 0..20 {
                request(&mut s3, 1_000 + round * 20 + k, 1, &mut evicted);
            }
        }
        assert!(hot.clone().all(|k| s3.contains(&k)));
        // A long scan of one-time keys, with the hot set still in use at a
        // low rate.
        for k in 0..10_000u32 {
            request(&mut s3, 100_000 + k, 1, &mut evicted);
            if k % 100 == 0 {
                for h in hot.clone() {
                    request(&mut s3, h, 1, &mut evicted);
                }
            }
        }
        let kept = hot.clone().filter(|k| s3.contains(k)).count();
        assert_eq!(kept, hot.len(), "hot keys lost to the scan");
        assert!(s3.used() <= 100);
    }

    #[test]
    fn objects_not_smaller_than_the_small_queue_are_refused() {
        let mut s3 = S3Fifo::new(100);
        let mut evicted = Vec::new();
        for k in 0..9 {
            s3.insert(k, 9, &mut evicted);
        }
        assert!(evicted.is_empty());
        s3.insert(100, 11, &mut evicted);
        s3.insert(101, 10, &mut evicted);
        s3.insert(102, 1_000, &mut evicted);
        // Refused without evicting anything for them.
        assert_eq!(evicted, [100, 101, 102]);
        assert_eq!((s3.len(), s3.used()), (9, 81));
        s3.insert(103, 9, &mut evicted);
        assert_eq!(evicted.len(), 3);
        assert!(s3.contains(&103));
        assert_eq!(s3.used(), 90);
    }

    #[test]
    fn resident_reinsert_updates_size_and_counts_a_hit() {
        let mut s3 = S3Fifo::new(100);
        let mut evicted = Vec::new();
        for k in 0..10 {
            s3.insert(k, 5, &mut evicted);
        }
        s3.insert(3, 40, &mut evicted);
        assert!(evicted.is_empty());
        assert_eq!(s3.used(), 85);
        assert_eq!(s3.table.node(s3.table.get(&3).unwrap()).freq, 1);
        s3.insert(3, 101, &mut evicted);
        assert_eq!(evicted, [3]);
        assert!(!s3.contains(&3));
        assert_eq!((s3.len(), s3.used()), (9, 45));
    }

    #[test]
    fn ghost_is_bounded_in_bytes() {
        let mut s3 = S3Fifo::new(100);
        let mut evicted = Vec::new();
        for k in 0..10_000 {
            request(&mut s3, k, 1, &mut evicted);
        }
        let ghost = s3.queues[GHOST as usize];
        assert_eq!(ghost.bytes, 90);
        assert_eq!(ghost.len, 90);
        assert_eq!(s3.table.len(), 190);
        // The oldest remembered keys were forgotten.
        assert_eq!(queue_of(&s3, 0), None);
        assert_eq!(queue_of(&s3, 9_899), None);
        assert_eq!(queue_of(&s3, 9_900), Some(GHOST));
    }

    #[test]
    fn remove_and_evict_keep_used_in_step() {
        let (mut s3, evicted) = filled(100, 101);
        assert_eq!(evicted, [0]);
        assert_eq!((s3.len(), s3.used()), (100, 100));
        // Resident in small, resident in main, and only remembered.
        assert!(s3.remove(&5));
        assert!(s3.remove(&50));
        assert!(!s3.remove(&0));
        assert_eq!(queue_of(&s3, 0), None);
        assert_eq!((s3.len(), s3.used()), (98, 98));
        let mut drained = 0;
        while let Some(key) = s3.evict() {
            assert!(!s3.contains(&key));
            drained += 1;
            assert_eq!(s3.used(), 98 - drained);
        }
        assert_eq!(drained, 98);
        assert_eq!((s3.len(), s3.used()), (0, 0));
    }
}
