//! SIEVE (Zhang et al., NSDI '24): one FIFO queue and a visited bit per key.
//!
//! A hit only sets the bit. To evict, a hand walks from the tail (oldest)
//! towards the head, clearing set bits, and takes the first key whose bit is
//! clear; the hand stays there for the next eviction and wraps to the tail
//! after passing the head. New keys enter at the head. This follows
//! libCacheSim's `Sieve`.

use std::hash::{BuildHasher, Hash};

use super::table::{List, NIL, Table};
use super::{KeyHasher, Policy};

/// SIEVE eviction over a byte capacity.
pub struct Sieve<K, S = KeyHasher> {
    capacity: u64,
    table: Table<K, S>,
    queue: List,
    /// Where the next eviction starts looking; `NIL` means the tail.
    hand: u32,
}

impl<K: Hash + Eq + Clone> Sieve<K> {
    /// An empty SIEVE over `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        Sieve::with_hasher(capacity, KeyHasher::new())
    }
}

impl<K: Hash + Eq + Clone, S: BuildHasher> Sieve<K, S> {
    /// An empty SIEVE over `capacity` bytes that hashes keys with
    /// `hasher` (see [`PolicyKind::build_with_hasher`](super::PolicyKind::build_with_hasher)).
    pub fn with_hasher(capacity: u64, hasher: S) -> Self {
        Sieve {
            capacity,
            table: Table::with_hasher(hasher),
            queue: List::new(),
            hand: NIL,
        }
    }

    /// Unlinks and forgets a tracked node, moving the hand off it first.
    fn forget(&mut self, idx: u32) -> K {
        if self.hand == idx {
            self.hand = self.table.node(idx).newer;
        }
        self.queue.unlink(&mut self.table, idx);
        self.table.remove(idx)
    }

    /// Moves the hand to the next unvisited key and forgets it.
    fn sweep(&mut self) -> Option<K> {
        let mut at = if self.hand == NIL {
            self.queue.tail
        } else {
            self.hand
        };
        if at == NIL {
            return None;
        }
        loop {
            let node = self.table.node_mut(at);
            if node.freq == 0 {
                break;
            }
            node.freq = 0;
            at = if node.newer == NIL {
                self.queue.tail
            } else {
                node.newer
            };
        }
        self.hand = at;
        Some(self.forget(at))
    }
}

impl<K: Hash + Eq + Clone + Send, S: BuildHasher + Send> Policy<K> for Sieve<K, S> {
    fn insert(&mut self, key: K, size: u64, evicted: &mut Vec<K>) {
        let hash = self.table.hash(&key);
        let tracked = self.table.find_exact(hash, &key);
        if size > self.capacity {
            if let Some(idx) = tracked {
                self.forget(idx);
            }
            evicted.push(key);
            return;
        }
        if let Some(idx) = tracked {
            self.table.node_mut(idx).freq = 1;
            self.queue.resize(&mut self.table, idx, size);
            while self.queue.bytes > self.capacity {
                evicted.extend(self.sweep());
            }
            return;
        }
        while self.queue.bytes > self.capacity - size {
            evicted.extend(self.sweep());
        }
        let idx = self.table.insert(hash, key, size, 0);
        self.queue.push_head(&mut self.table, idx);
    }

    fn admits(&self, _key: &K, size: u64) -> bool {
        size <= self.capacity
    }

    fn touch(&mut self, key: &K) -> bool {
        match self.table.get_exact(key) {
            Some(idx) => {
                self.table.node_mut(idx).freq = 1;
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, key: &K) -> bool {
        match self.table.get_exact(key) {
            Some(idx) => {
                self.forget(idx);
                true
            }
            None => false,
        }
    }

    fn evict(&mut self) -> Option<K> {
        self.sweep()
    }

    fn contains(&self, key: &K) -> bool {
        self.table.get_exact(key).is_some()
    }

    fn len(&self) -> usize {
        self.queue.len
    }

    fn used(&self) -> u64 {
        self.queue.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(capacity: u64, keys: &[u32]) -> Sieve<u32> {
        let mut sieve = Sieve::new(capacity);
        let mut evicted = Vec::new();
        for &k in keys {
            sieve.insert(k, 1, &mut evicted);
        }
        assert!(evicted.is_empty());
        sieve
    }

    #[test]
    fn visited_keys_survive_and_unvisited_leave_oldest_first() {
        let mut sieve = filled(4, &[1, 2, 3, 4]);
        assert!(sieve.touch(&1));
        assert!(sieve.touch(&3));
        let mut evicted = Vec::new();
        sieve.insert(5, 1, &mut evicted);
        assert_eq!(evicted, [2]);
        sieve.insert(6, 1, &mut evicted);
        assert_eq!(evicted, [2, 4]);
        assert!(sieve.contains(&1) && sieve.contains(&3));
    }

    #[test]
    fn hand_resumes_where_it_stopped() {
        // 1 is visited, so the first sweep passes it and takes 2; the hand
        // then sits at 3. Visiting 1 again must not protect it from being
        // reached later, and the hand must not restart from the tail.
        let mut sieve = filled(4, &[1, 2, 3, 4]);
        sieve.touch(&1);
        assert_eq!(sieve.evict(), Some(2));
        sieve.touch(&1);
        sieve.touch(&4);
        assert_eq!(sieve.evict(), Some(3));
        // The hand passes 4 (clearing it), wraps to the tail, clears 1 and
        // comes round to 4 again.
        assert_eq!(sieve.evict(), Some(4));
        assert_eq!(sieve.evict(), Some(1));
        assert_eq!(sieve.evict(), None);
    }

    #[test]
    fn all_visited_degrades_to_fifo() {
        let mut sieve = filled(3, &[1, 2, 3]);
        for k in [3, 2, 1] {
            sieve.touch(&k);
        }
        assert_eq!(sieve.evict(), Some(1));
    }

    #[test]
    fn removing_the_key_under_the_hand_moves_the_hand() {
        let mut sieve = filled(4, &[1, 2, 3, 4]);
        sieve.touch(&1);
        assert_eq!(sieve.evict(), Some(2));
        // The hand is at 3; both 1 and 4 are unvisited, so where the hand
        // goes decides the next victim.
        assert!(sieve.remove(&3));
        assert_eq!(sieve.evict(), Some(4));
        assert_eq!((sieve.len(), sieve.used()), (1, 1));
    }

    #[test]
    fn oversize_object_is_not_admitted() {
        let mut sieve = filled(10, &[1]);
        let mut evicted = Vec::new();
        sieve.insert(2, 11, &mut evicted);
        assert_eq!(evicted, [2]);
        assert!(!sieve.contains(&2));
        sieve.insert(1, 11, &mut evicted);
        assert_eq!(evicted, [2, 1]);
        assert_eq!((sieve.len(), sieve.used()), (0, 0));
    }

    #[test]
    fn sizes_are_counted_in_bytes() {
        let mut sieve = Sieve::new(100);
        let mut evicted = Vec::new();
        sieve.insert(1, 60, &mut evicted);
        sieve.insert(2, 30, &mut evicted);
        sieve.touch(&1);
        sieve.insert(3, 20, &mut evicted);
        assert_eq!(evicted, [2]);
        assert_eq!(sieve.used(), 80);
        sieve.insert(3, 40, &mut evicted);
        assert_eq!(evicted, [2]);
        assert_eq!(sieve.used(), 100);
        assert!(sieve.remove(&1));
        assert_eq!((sieve.len(), sieve.used()), (1, 40));
    }
}
