//! Per-key generations: `delete` and `set` advance a key's generation, and
//! a write that began under an older generation must not commit.
//!
//! Only keys that were bumped are remembered; every other key is at the
//! `floor`. When the table grows past its limit it is cleared and the
//! floor jumps past every generation handed out, which conservatively
//! invalidates the writes then in flight (they still serve their readers).

use std::collections::HashMap;

const LIMIT: usize = 65_536;

/// The generation table.
#[derive(Debug, Default)]
pub struct Generations {
    counter: u64,
    floor: u64,
    bumped: HashMap<String, u64>,
}

impl Generations {
    /// The current generation of `key`.
    pub fn current(&self, key: &str) -> u64 {
        self.bumped.get(key).copied().unwrap_or(self.floor)
    }

    /// Advance `key`'s generation and return the new one.
    pub fn bump(&mut self, key: &str) -> u64 {
        self.counter += 1;
        if self.bumped.len() >= LIMIT && !self.bumped.contains_key(key) {
            self.bumped.clear();
            self.floor = self.counter;
            self.counter += 1;
        }
        self.bumped.insert(key.to_owned(), self.counter);
        self.counter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bump_invalidates_only_its_key() {
        let mut g = Generations::default();
        let a = g.current("a");
        let b = g.current("b");
        g.bump("a");
        assert_ne!(g.current("a"), a);
        assert_eq!(g.current("b"), b);
    }

    #[test]
    fn overflow_invalidates_conservatively() {
        let mut g = Generations::default();
        let before = g.current("x");
        for i in 0..=LIMIT {
            g.bump(&i.to_string());
        }
        assert_ne!(g.current("x"), before);
        assert!(g.bumped.len() <= LIMIT);
    }
}
