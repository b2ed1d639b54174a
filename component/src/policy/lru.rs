//! Least recently used: a hit moves the key to the head, victims leave from
//! the tail.

use std::hash::{BuildHasher, Hash};

use super::table::{List, NIL, Table};
use super::{KeyHasher, Policy};

/// Least-recently-used eviction over a byte capacity.
pub struct Lru<K, S = KeyHasher> {
    capacity: u64,
    table: Table<K, S>,
    queue: List,
}

impl<K: Hash + Eq + Clone> Lru<K> {
    /// An empty LRU over `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        Lru::with_hasher(capacity, KeyHasher::new())
    }
}

impl<K: Hash + Eq + Clone, S: BuildHasher> Lru<K, S> {
    /// An empty LRU over `capacity` bytes that hashes keys with
    /// `hasher` (see [`PolicyKind::build_with_hasher`](super::PolicyKind::build_with_hasher)).
    pub fn with_hasher(capacity: u64, hasher: S) -> Self {
        Lru {
            capacity,
            table: Table::with_hasher(hasher),
            queue: List::new(),
        }
    }

    /// Unlinks and forgets a tracked node.
    fn forget(&mut self, idx: u32) -> K {
        self.queue.unlink(&mut self.table, idx);
        self.table.remove(idx)
    }
}

impl<K: Hash + Eq + Clone + Send, S: BuildHasher + Send> Policy<K> for Lru<K, S> {
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
            self.queue.unlink(&mut self.table, idx);
            self.table.node_mut(idx).size = size;
            self.queue.push_head(&mut self.table, idx);
            // `key` is now the newest and fits alone, so it is never the victim.
            while self.queue.bytes > self.capacity {
                evicted.push(self.forget(self.queue.tail));
            }
            return;
        }
        while self.queue.bytes > self.capacity - size {
            evicted.push(self.forget(self.queue.tail));
        }
        let idx = self.table.insert(hash, key, size, 0);
        self.queue.push_head(&mut self.table, idx);
    }

    fn admits(&self, _key: &K, size: u64) -> bool {
        size <= self.capacity
    }

    fn touch(&mut self, key: &K) -> bool {
        let Some(idx) = self.table.get_exact(key) else {
            return false;
        };
        if self.queue.head != idx {
            self.queue.unlink(&mut self.table, idx);
            self.queue.push_head(&mut self.table, idx);
        }
        true
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
        let tail = self.queue.tail;
        (tail != NIL).then(|| self.forget(tail))
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

    fn filled(capacity: u64, keys: &[u32]) -> Lru<u32> {
        let mut lru = Lru::new(capacity);
        let mut evicted = Vec::new();
        for &k in keys {
            lru.insert(k, 1, &mut evicted);
        }
        assert!(evicted.is_empty());
        lru
    }

    #[test]
    fn least_recently_used_leaves_first() {
        let mut lru = filled(3, &[1, 2, 3]);
        assert!(lru.touch(&1));
        let mut evicted = Vec::new();
        lru.insert(4, 1, &mut evicted);
        assert_eq!(evicted, [2]);
        lru.insert(5, 1, &mut evicted);
        assert_eq!(evicted, [2, 3]);
        assert!(lru.contains(&1) && lru.contains(&4) && lru.contains(&5));
    }

    #[test]
    fn large_insert_evicts_as_many_as_needed() {
        let mut lru = filled(10, &[1, 2, 3, 4, 5]);
        let mut evicted = Vec::new();
        lru.insert(6, 8, &mut evicted);
        assert_eq!(evicted, [1, 2, 3]);
        assert_eq!((lru.len(), lru.used()), (3, 10));
    }

    #[test]
    fn oversize_object_is_not_admitted() {
        let mut lru = filled(10, &[1, 2]);
        let mut evicted = Vec::new();
        lru.insert(3, 11, &mut evicted);
        assert_eq!(evicted, [3]);
        assert!(!lru.contains(&3));
        assert_eq!((lru.len(), lru.used()), (2, 2));
        // Exactly the capacity fits.
        evicted.clear();
        lru.insert(4, 10, &mut evicted);
        assert_eq!(evicted, [1, 2]);
        assert_eq!(lru.used(), 10);
    }

    #[test]
    fn reinsert_updates_size_and_recency() {
        let mut lru = filled(10, &[1, 2, 3]);
        let mut evicted = Vec::new();
        lru.insert(1, 5, &mut evicted);
        assert!(evicted.is_empty());
        assert_eq!((lru.len(), lru.used()), (3, 7));
        lru.insert(1, 9, &mut evicted);
        assert_eq!(evicted, [2]);
        assert_eq!(lru.used(), 10);
        lru.insert(1, 20, &mut evicted);
        assert_eq!(evicted, [2, 1]);
        assert_eq!((lru.len(), lru.used()), (1, 1));
    }

    #[test]
    fn remove_and_evict_keep_used_in_step() {
        let mut lru = Lru::new(100);
        let mut evicted = Vec::new();
        for k in 1..=4u32 {
            lru.insert(k, u64::from(k) * 10, &mut evicted);
        }
        assert_eq!(lru.used(), 100);
        assert!(lru.remove(&3));
        assert!(!lru.remove(&3));
        assert_eq!((lru.len(), lru.used()), (3, 70));
        assert_eq!(lru.evict(), Some(1));
        assert_eq!((lru.len(), lru.used()), (2, 60));
        assert!(!lru.touch(&1));
        assert_eq!(lru.evict(), Some(2));
        assert_eq!(lru.evict(), Some(4));
        assert_eq!(lru.evict(), None);
        assert_eq!((lru.len(), lru.used()), (0, 0));
    }
}
