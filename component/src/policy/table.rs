//! The storage every policy shares: a slab of nodes, found by key through a
//! hash index, and linked into intrusive queues by index.
//!
//! Freed slots are reused, so once warm nothing allocates. Each node keeps
//! its key's hash, and the index holds only node numbers (4 bytes a slot,
//! so it stays small enough for the CPU caches longer): dropping a victim
//! never hashes its key again. Each node also keeps the index bucket it was
//! put in, so dropping it reads that bucket's control byte and slot side by
//! side instead of one after the other, as a lookup by hash must (a node
//! the index has moved since, by growing, is looked up). The hash defaults
//! to [`KeyHasher`], keyed at random, so clients choosing keys cannot force
//! collisions.

use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;

use super::KeyHasher;

/// The end of a queue, or no node.
pub(super) const NIL: u32 = u32::MAX;

/// One tracked key.
pub(super) struct Node<K> {
    /// `None` while the slot is free, or once the key was taken.
    key: Option<K>,
    hash: u64,
    /// Bytes the key accounts for.
    pub size: u64,
    /// Towards the head of its queue (inserted later).
    pub newer: u32,
    /// Towards the tail of its queue (inserted earlier). S3-FIFO's main
    /// queue, a ring rather than a linked queue, keeps here the position
    /// the node was pushed at.
    pub older: u32,
    /// In a live node, the index bucket that held it when it was indexed
    /// (a resize may have moved it since); in a free slot, the next free
    /// slot.
    link: u32,
    /// Policy data: an access counter or a visited bit.
    pub freq: u8,
    /// Which of the policy's queues holds the node.
    pub queue: u8,
}

/// Asks the CPU to start loading the cache line `value` starts in. Only a
/// hint: it changes nothing the program sees.
#[inline]
fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program sees and cannot fault;
    // the address is that of a live reference besides.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(value).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Nodes addressed by `u32` index, with a free list and a hash index.
pub(super) struct Table<K, S = KeyHasher> {
    nodes: Vec<Node<K>>,
    free: u32,
    live: usize,
    /// Node numbers, placed by their node's hash.
    index: HashTable<u32>,
    hasher: S,
}

#[cfg(test)]
impl<K: Hash + Eq> Table<K> {
    pub fn new() -> Self {
        Table::with_hasher(KeyHasher::new())
    }
}

impl<K: Hash + Eq, S: BuildHasher> Table<K, S> {
    pub fn with_hasher(hasher: S) -> Self {
        Table {
            nodes: Vec::new(),
            free: NIL,
            live: 0,
            index: HashTable::new(),
            hasher,
        }
    }

    pub fn hash(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The node holding `key`, whose hash is `hash`; failing that, a node
    /// whose key was taken ([`Table::take_key`]) that had the same hash.
    pub fn find(&self, hash: u64, key: &K) -> Option<u32> {
        // One probe: note a keyless node on the way, keep looking for the key.
        let mut keyless = None;
        let exact = self.index.find(hash, |&i| {
            let node = &self.nodes[i as usize];
            if node.hash != hash {
                return false;
            }
            match &node.key {
                Some(k) => k == key,
                None => {
                    keyless.get_or_insert(i);
                    false
                }
            }
        });
        exact.copied().or(keyless)
    }

    /// The node holding `key`, whose hash is `hash`.
    pub fn find_exact(&self, hash: u64, key: &K) -> Option<u32> {
        self.index
            .find(hash, |&i| {
                let node = &self.nodes[i as usize];
                node.hash == hash && node.key.as_ref() == Some(key)
            })
            .copied()
    }

    pub fn get(&self, key: &K) -> Option<u32> {
        self.find(self.hash(key), key)
    }

    /// The node holding `key` itself (never a keyless one).
    pub fn get_exact(&self, key: &K) -> Option<u32> {
        self.find_exact(self.hash(key), key)
    }

    /// Stores a key that is not in the table, unlinked, and returns its index.
    pub fn insert(&mut self, hash: u64, key: K, size: u64, queue: u8) -> u32 {
        let node = Node {
            key: Some(key),
            hash,
            size,
            newer: NIL,
            older: NIL,
            link: NIL,
            freq: 0,
            queue,
        };
        let idx = if self.free != NIL {
            let idx = self.free;
            let slot = &mut self.nodes[idx as usize];
            self.free = slot.link;
            *slot = node;
            idx
        } else {
            let idx = u32::try_from(self.nodes.len())
                .ok()
                .filter(|&i| i != NIL)
                .expect("a policy tracks fewer than 2^32 - 1 keys");
            self.nodes.push(node);
            idx
        };
        let nodes = &self.nodes;
        let bucket = self
            .index
            .insert_unique(hash, idx, |&i| nodes[i as usize].hash)
            .bucket_index();
        // Bucket numbers fit in 32 bits: the index holds node numbers,
        // fewer than 2^32, and keeps at least one bucket in eight free.
        self.nodes[idx as usize].link = bucket as u32;
        self.live += 1;
        idx
    }

    /// Forgets an unlinked node, freeing its slot, and hands back its key.
    pub fn remove(&mut self, idx: u32) -> K {
        self.unindex(idx).expect("live nodes hold a key")
    }

    /// Forgets an unlinked node, with or without its key.
    pub fn discard(&mut self, idx: u32) {
        self.unindex(idx);
    }

    /// Takes the key out of a node that stays indexed by its key's hash:
    /// from then on [`Table::find`] matches it for any key with that hash
    /// (a 64-bit hash: another key matching it by chance is as likely as
    /// guessing the hasher's random key). The node keeps its queue links.
    pub fn take_key(&mut self, idx: u32) -> K {
        self.nodes[idx as usize]
            .key
            .take()
            .expect("live nodes hold a key")
    }

    /// Gives a node whose key was taken the key it stands for now; `key`
    /// must hash to the node's hash.
    pub fn restore_key(&mut self, idx: u32, key: K) {
        let node = &mut self.nodes[idx as usize];
        debug_assert!(node.key.is_none());
        node.key = Some(key);
    }

    fn unindex(&mut self, idx: u32) -> Option<K> {
        let node = &self.nodes[idx as usize];
        let (hash, bucket) = (node.hash, node.link as usize);
        // The bucket the node was put in: its control byte and its slot
        // are read side by side, where a lookup by hash reads the one to
        // find the other. If the index has grown or been rehashed since,
        // the node has moved: look it up.
        match self.index.get_bucket_entry(bucket) {
            Ok(entry) if *entry.get() == idx => {
                entry.remove();
            }
            _ => {
                self.index
                    .find_entry(hash, |&i| i == idx)
                    .expect("live nodes are indexed")
                    .remove();
            }
        }
        let free = self.free;
        let slot = &mut self.nodes[idx as usize];
        slot.link = free;
        self.free = idx;
        self.live -= 1;
        slot.key.take()
    }

    /// Number of keys stored.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.live
    }
}

impl<K, S> Table<K, S> {
    #[cfg(test)]
    pub fn key(&self, idx: u32) -> &K {
        self.nodes[idx as usize]
            .key
            .as_ref()
            .expect("live nodes hold a key")
    }

    pub fn node(&self, idx: u32) -> &Node<K> {
        &self.nodes[idx as usize]
    }

    pub fn node_mut(&mut self, idx: u32) -> &mut Node<K> {
        &mut self.nodes[idx as usize]
    }

    /// Asks the CPU to start loading node `idx`, so that code reading it
    /// later does not wait for memory. Only a hint: it changes nothing.
    #[inline]
    pub fn prefetch(&self, idx: u32) {
        if let Some(node) = self.nodes.get(idx as usize) {
            prefetch(node);
        }
    }
}

/// A FIFO/recency queue threaded through table nodes: head is the newest
/// node, tail the oldest.
#[derive(Clone, Copy)]
pub(super) struct List {
    pub head: u32,
    pub tail: u32,
    /// Sum of the sizes of the linked nodes.
    pub bytes: u64,
    pub len: usize,
}

impl List {
    pub const fn new() -> Self {
        List {
            head: NIL,
            tail: NIL,
            bytes: 0,
            len: 0,
        }
    }

    /// Links an unlinked node in as the newest.
    pub fn push_head<K, S>(&mut self, table: &mut Table<K, S>, idx: u32) {
        let head = self.head;
        let node = table.node_mut(idx);
        node.newer = NIL;
        node.older = head;
        self.bytes += node.size;
        if head == NIL {
            self.tail = idx;
        } else {
            table.node_mut(head).newer = idx;
        }
        self.head = idx;
        self.len += 1;
    }

    /// Takes a linked node out of the queue; the node stays in the table.
    pub fn unlink<K, S>(&mut self, table: &mut Table<K, S>, idx: u32) {
        let node = table.node(idx);
        let (newer, older) = (node.newer, node.older);
        self.bytes -= node.size;
        if newer == NIL {
            self.head = older;
        } else {
            table.node_mut(newer).older = older;
        }
        if older == NIL {
            self.tail = newer;
        } else {
            table.node_mut(older).newer = newer;
        }
        self.len -= 1;
    }

    /// Changes the size of a linked node in place.
    pub fn resize<K, S>(&mut self, table: &mut Table<K, S>, idx: u32, size: u64) {
        let node = table.node_mut(idx);
        self.bytes = self.bytes - node.size + size;
        node.size = size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key hashes alike.
    #[derive(Default)]
    struct Colliding;

    struct Seven;

    impl std::hash::Hasher for Seven {
        fn write(&mut self, _: &[u8]) {}

        fn finish(&self) -> u64 {
            7
        }
    }

    impl BuildHasher for Colliding {
        type Hasher = Seven;

        fn build_hasher(&self) -> Seven {
            Seven
        }
    }

    fn order(list: &List, table: &Table<u32>) -> Vec<u32> {
        let mut out = Vec::new();
        let mut at = list.tail;
        while at != NIL {
            out.push(*table.key(at));
            at = table.node(at).newer;
        }
        out
    }

    #[test]
    fn queue_keeps_insertion_order_and_bytes() {
        let mut table = Table::new();
        let mut list = List::new();
        let ids: Vec<u32> = (0..4u32)
            .map(|k| table.insert(table.hash(&k), k, 10 + u64::from(k), 0))
            .collect();
        for &i in &ids {
            list.push_head(&mut table, i);
        }
        assert_eq!(order(&list, &table), [0, 1, 2, 3]);
        assert_eq!(list.bytes, 10 + 11 + 12 + 13);
        list.unlink(&mut table, ids[0]);
        list.unlink(&mut table, ids[2]);
        list.unlink(&mut table, ids[3]);
        assert_eq!(order(&list, &table), [1]);
        assert_eq!((list.head, list.tail, list.len), (ids[1], ids[1], 1));
        list.resize(&mut table, ids[1], 100);
        assert_eq!(list.bytes, 100);
    }

    #[test]
    fn removed_slots_are_reused() {
        let mut table = Table::new();
        let a = table.insert(table.hash(&1), 1u32, 1, 0);
        let b = table.insert(table.hash(&2), 2, 1, 0);
        assert_eq!(table.remove(a), 1);
        assert_eq!(table.remove(b), 2);
        assert_eq!(table.get(&1), None);
        assert_eq!(table.insert(table.hash(&3), 3, 1, 0), b);
        assert_eq!(table.insert(table.hash(&4), 4, 1, 0), a);
        assert_eq!(table.nodes.len(), 2);
        assert_eq!(
            (table.get(&3), table.get(&4), table.len()),
            (Some(b), Some(a), 2)
        );
    }

    #[test]
    fn nodes_indexed_before_the_index_grew_are_still_removed() {
        let mut table = Table::new();
        let ids: Vec<u32> = (0..5_000u32)
            .map(|k| table.insert(table.hash(&k), k, 1, 0))
            .collect();
        // The newest node knows its bucket; the first ones were indexed
        // before the index grew and moved them.
        let newest = table.node(ids[4_999]);
        let bucket = table
            .index
            .find_bucket_index(newest.hash, |&i| i == ids[4_999]);
        assert_eq!(bucket, Some(newest.link as usize));
        let moved = ids[..10].iter().filter(|&&id| {
            let node = table.node(id);
            table.index.find_bucket_index(node.hash, |&i| i == id) != Some(node.link as usize)
        });
        assert!(moved.count() > 0);
        // Evens first, then odds: every removal takes its own node only.
        for k in (0..5_000u32).step_by(2).chain((1..5_000).step_by(2)) {
            assert_eq!(table.remove(ids[k as usize]), k);
            assert_eq!(table.get(&k), None);
            if k + 1 < 5_000 && k % 2 == 0 {
                assert_eq!(table.get(&(k + 1)), Some(ids[k as usize + 1]));
            }
        }
        assert!(table.index.is_empty());
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn keys_with_colliding_hashes_are_told_apart() {
        let mut table = Table::with_hasher(Colliding);
        let ids: Vec<u32> = (0..5u32)
            .map(|k| table.insert(table.hash(&k), k, 1, 0))
            .collect();
        for k in 0..5 {
            assert_eq!(table.get(&k), Some(ids[k as usize]));
        }
        assert_eq!(table.get(&9), None);
        // Remove from the middle of the ones sharing the hash, the first
        // and the last.
        assert_eq!(table.remove(ids[2]), 2);
        assert_eq!(table.remove(ids[4]), 4);
        assert_eq!(table.remove(ids[0]), 0);
        assert_eq!((table.get(&1), table.get(&3)), (Some(ids[1]), Some(ids[3])));
        assert_eq!([0, 2, 4].map(|k| table.get(&k)), [None; 3]);
        table.remove(ids[1]);
        table.remove(ids[3]);
        assert!(table.index.is_empty());
        assert_eq!(table.len(), 0);
    }
}
