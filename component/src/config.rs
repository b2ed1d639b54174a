//! Engine configuration, validated once when the cache is opened.

use crate::{Error, Metadata, Result};

/// Freshness windows that replace the cache-wide ones for one tier.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TierFreshness {
    /// Index of the tier, 0 being the fastest.
    pub tier: u32,
    /// Window for positive entries, in ms.
    pub fresh_for: Option<u64>,
    /// Window for negative entries, in ms.
    pub negative_fresh_for: Option<u64>,
}

/// How the engine behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Freshness of positive entries in ms. Default: 60 000 (one minute).
    /// 0 makes every hit stale (served, then refreshed).
    pub fresh_for: u64,
    /// Freshness of negative entries in ms. Default: 10 000.
    pub negative_fresh_for: u64,
    /// Per-tier windows. Default: none.
    pub tier_freshness: Vec<TierFreshness>,
    /// Bound on an operation's setup in ms. Default: 30 000.
    pub operation_timeout: u64,
    /// Bytes of an in-flight fill kept for joining readers. Default: 4 MiB.
    pub join_window: u64,
    /// Longest key accepted, in bytes. Default: 65 536.
    pub max_key_len: u32,
    /// When the origin fails, serve an expired positive entry that is at
    /// most this many ms past its freshness window instead of the error.
    /// Default: 0 (off).
    pub stale_if_error: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            fresh_for: 60_000,
            negative_fresh_for: 10_000,
            tier_freshness: Vec::new(),
            operation_timeout: 30_000,
            join_window: 4 << 20,
            max_key_len: 65_536,
            stale_if_error: 0,
        }
    }
}

impl Config {
    /// Check every option against a cache of `tiers` tiers named `names`.
    pub fn validate(&self, names: &[String]) -> Result<()> {
        let bad = |why: String| Err(Error::InvalidConfig(why));
        if names.is_empty() {
            return bad("tiers: at least one tier is required".into());
        }
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                return bad(format!("tiers: tier `{name}` is listed twice"));
            }
        }
        if self.operation_timeout == 0 {
            return bad("operation-timeout: must be positive".into());
        }
        if self.max_key_len == 0 {
            return bad("max-key-len: must be positive".into());
        }
        for (i, o) in self.tier_freshness.iter().enumerate() {
            if o.tier as usize >= names.len() {
                return bad(format!(
                    "tier-freshness: tier index {} is out of range (the cache has {} tiers)",
                    o.tier,
                    names.len()
                ));
            }
            if self.tier_freshness[..i].iter().any(|p| p.tier == o.tier) {
                return bad(format!(
                    "tier-freshness: tier index {} is listed twice",
                    o.tier
                ));
            }
        }
        Ok(())
    }

    /// The (positive, negative) freshness windows of tier `tier`.
    pub fn windows(&self, tier: usize) -> (u64, u64) {
        let o = self.tier_freshness.iter().find(|o| o.tier as usize == tier);
        (
            o.and_then(|o| o.fresh_for).unwrap_or(self.fresh_for),
            o.and_then(|o| o.negative_fresh_for)
                .unwrap_or(self.negative_fresh_for),
        )
    }

    /// The window that `meta` is judged by in tier `tier`: the tier's
    /// negative window for a negative entry, its positive one otherwise.
    pub fn window(&self, tier: usize, meta: &Metadata) -> u64 {
        let (positive, negative) = self.windows(tier);
        if meta.negative { negative } else { positive }
    }

    /// Check a key: not empty, not longer than `max-key-len`.
    pub fn check_key(&self, key: &str) -> Result<()> {
        if key.is_empty() {
            return Err(Error::InvalidKey("the key is empty".into()));
        }
        if key.len() > self.max_key_len as usize {
            return Err(Error::InvalidKey(format!(
                "the key is {} bytes, longer than max-key-len {}",
                key.len(),
                self.max_key_len
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("t{i}")).collect()
    }

    fn rejects(config: &Config, names: &[String], option: &str) {
        match config.validate(names) {
            Err(Error::InvalidConfig(why)) => assert!(why.starts_with(option), "{why}"),
            other => panic!("expected invalid-config naming {option}, got {other:?}"),
        }
    }

    #[test]
    fn every_bad_option_is_named() {
        let ok = Config::default();
        ok.validate(&names(2)).unwrap();
        rejects(&ok, &[], "tiers");
        rejects(&ok, &["a".into(), "a".into()], "tiers");
        rejects(
            &Config {
                operation_timeout: 0,
                ..ok.clone()
            },
            &names(1),
            "operation-timeout",
        );
        rejects(
            &Config {
                max_key_len: 0,
                ..ok.clone()
            },
            &names(1),
            "max-key-len",
        );
        let out_of_range = TierFreshness {
            tier: 2,
            ..TierFreshness::default()
        };
        rejects(
            &Config {
                tier_freshness: vec![out_of_range],
                ..ok.clone()
            },
            &names(2),
            "tier-freshness",
        );
        let twice = vec![TierFreshness::default(), TierFreshness::default()];
        rejects(
            &Config {
                tier_freshness: twice,
                ..ok
            },
            &names(2),
            "tier-freshness",
        );
    }

    #[test]
    fn tier_windows_override() {
        let config = Config {
            tier_freshness: vec![TierFreshness {
                tier: 1,
                fresh_for: Some(5),
                negative_fresh_for: None,
            }],
            ..Config::default()
        };
        assert_eq!(config.windows(0), (60_000, 10_000));
        assert_eq!(config.windows(1), (5, 10_000));
    }
}
