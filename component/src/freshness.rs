//! How old is too old: the one place that classifies an entry's age.

use crate::Metadata;

/// The age class of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Inside its freshness window: serve it.
    Fresh,
    /// Past its window: serve it and refresh in the background.
    Stale,
    /// Past its window and its stale bound: fetch before serving.
    Expired,
}

/// Classify `meta` at time `now` (ms) against the cache's `window` (ms);
/// the entry's own `fresh-for` wins over `window`. An entry without
/// `cached-at` is stale; a window of 0 is stale at once.
pub fn classify(meta: &Metadata, now: u64, window: u64) -> Freshness {
    let Some(cached_at) = meta.cached_at else {
        return Freshness::Stale;
    };
    let window = meta.fresh_for.unwrap_or(window);
    let age = now.saturating_sub(cached_at);
    if age < window {
        return Freshness::Fresh;
    }
    match meta.stale_for {
        Some(stale_for) if age >= window.saturating_add(stale_for) => Freshness::Expired,
        _ => Freshness::Stale,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(cached_at: u64) -> Metadata {
        Metadata {
            cached_at: Some(cached_at),
            ..Metadata::default()
        }
    }

    #[test]
    fn window_bounds_freshness() {
        assert_eq!(classify(&at(1000), 1500, 1000), Freshness::Fresh);
        assert_eq!(classify(&at(1000), 2000, 1000), Freshness::Stale);
        assert_eq!(classify(&at(1000), 1000, 0), Freshness::Stale);
        assert_eq!(
            classify(&Metadata::default(), 0, u64::MAX),
            Freshness::Stale
        );
        // A clock that went backwards keeps the entry fresh, not expired.
        assert_eq!(classify(&at(5000), 1000, 10), Freshness::Fresh);
    }

    #[test]
    fn entry_windows_override_the_cache() {
        let mut meta = at(0);
        meta.fresh_for = Some(10);
        meta.stale_for = Some(5);
        assert_eq!(classify(&meta, 9, 1_000_000), Freshness::Fresh);
        assert_eq!(classify(&meta, 14, 1_000_000), Freshness::Stale);
        assert_eq!(classify(&meta, 15, 1_000_000), Freshness::Expired);
    }
}
