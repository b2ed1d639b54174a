//! The in-plugin tier: a map of entries bounded in bytes by one of the
//! engine's eviction policies. One per plugin instance, so one per Envoy
//! worker thread; nothing here is shared between workers.

use std::collections::HashMap;

use daramjwee_component::policy::{Policy, PolicyKind};

use crate::Entry;

/// Entries by key, kept within `capacity` bytes by `policy`.
pub struct LocalTier {
    entries: HashMap<String, Entry>,
    policy: Box<dyn Policy<String>>,
    evicted: Vec<String>,
    evictions: u64,
}

impl LocalTier {
    /// An empty tier of `capacity` bytes evicting with `kind`.
    pub fn new(capacity: u64, kind: PolicyKind) -> Self {
        LocalTier {
            entries: HashMap::new(),
            policy: kind.build(capacity),
            evicted: Vec::new(),
            evictions: 0,
        }
    }

    /// The entry under `key`, counted as a hit for the policy.
    pub fn get(&mut self, key: &str) -> Option<&Entry> {
        let entry = self.entries.get(key)?;
        self.policy.touch(&key.to_owned());
        Some(entry)
    }

    /// Store `entry` under `key`, replacing any older one, and evict what
    /// the policy drops. Returns false when the policy did not admit it
    /// (larger than the tier, or refused by S3-FIFO's small queue); the
    /// key is then absent.
    pub fn insert(&mut self, key: String, entry: Entry) -> bool {
        let charge = entry.charge(&key);
        self.entries.insert(key.clone(), entry);
        self.policy.insert(key.clone(), charge, &mut self.evicted);
        let mut admitted = true;
        for victim in self.evicted.drain(..) {
            if victim == key {
                admitted = false;
            } else {
                self.evictions += 1;
            }
            self.entries.remove(&victim);
        }
        admitted
    }

    /// Drop the entry under `key`. Returns whether there was one.
    pub fn remove(&mut self, key: &str) -> bool {
        let key = key.to_owned();
        self.policy.remove(&key);
        self.entries.remove(&key).is_some()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the tier holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes charged by the entries held.
    pub fn used(&self) -> u64 {
        self.policy.used()
    }

    /// Entries dropped to make room, since the tier was made.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use daramjwee_component::Metadata;

    use super::*;
    use crate::entry::ENTRY_OVERHEAD;

    fn entry(len: usize) -> Entry {
        Entry {
            meta: Metadata::default(),
            body: Arc::from(vec![7u8; len]),
        }
    }

    #[test]
    fn capacity_bounds_the_bytes_held() {
        for kind in PolicyKind::ALL {
            // S3-FIFO admits only entries smaller than its small queue
            // (a tenth of the capacity), so room for 20.
            let per = 100 + 3 + ENTRY_OVERHEAD;
            let mut tier = LocalTier::new(per * 20, kind);
            for i in 0..400 {
                tier.insert(format!("/{:02}", i % 40), entry(100));
                assert!(tier.used() <= per * 20, "{kind}");
                assert!(tier.len() <= 20, "{kind}");
            }
            assert!(tier.evictions() > 0, "{kind}");
            // Every key the map holds is one the policy tracks, so its
            // bytes are counted.
            assert_eq!(tier.used(), tier.len() as u64 * per, "{kind}");
        }
    }

    #[test]
    fn too_large_entry_is_not_admitted() {
        let mut tier = LocalTier::new(1_000, PolicyKind::Lru);
        assert!(tier.insert("/small".into(), entry(10)));
        assert!(!tier.insert("/big".into(), entry(5_000)));
        assert!(tier.get("/big").is_none());
        assert!(tier.get("/small").is_some());
        assert_eq!(tier.evictions(), 0);
    }

    #[test]
    fn replace_and_remove_keep_the_count_right() {
        let mut tier = LocalTier::new(10_000, PolicyKind::Sieve);
        tier.insert("/a".into(), entry(10));
        tier.insert("/a".into(), entry(20));
        assert_eq!(tier.len(), 1);
        assert_eq!(tier.get("/a").map(|e| e.body.len()), Some(20));
        assert_eq!(tier.used(), 20 + 2 + ENTRY_OVERHEAD);
        assert!(tier.remove("/a"));
        assert!(!tier.remove("/a"));
        assert!(tier.is_empty());
        assert_eq!(tier.used(), 0);
    }

    #[test]
    fn lru_evicts_the_coldest_key() {
        let per = 10 + 2 + ENTRY_OVERHEAD;
        let mut tier = LocalTier::new(per * 2, PolicyKind::Lru);
        tier.insert("/a".into(), entry(10));
        tier.insert("/b".into(), entry(10));
        tier.get("/a");
        tier.insert("/c".into(), entry(10));
        assert!(tier.get("/a").is_some());
        assert!(tier.get("/b").is_none());
        assert!(tier.get("/c").is_some());
    }
}
