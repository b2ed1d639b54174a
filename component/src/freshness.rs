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

/// What a caller asks of an answer beyond its key, as an HTTP request's
/// `If-None-Match` and `Cache-Control` (`no-cache`, `max-age`,
/// `min-fresh`, `max-stale`) do. The default asks nothing more.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conditions {
    /// An HTTP `If-None-Match` value: a matching entry answers
    /// not-modified.
    pub if_none_match: Option<String>,
    /// Reuse an entry only while it is at most this old, in ms; `Some(0)`
    /// reuses nothing without validating it with the origin first.
    pub max_age: Option<u64>,
    /// Reuse an entry only while it stays fresh at least this much
    /// longer, in ms.
    pub min_fresh: Option<u64>,
    /// An entry at most this far past its freshness may be answered
    /// without validation (stale, refreshed behind), in ms, unless the
    /// entry forbids it (`stale_if_error` of `Some(0)`).
    pub max_stale: Option<u64>,
}

impl Conditions {
    /// Conditions of a caller that asks for `If-None-Match` alone.
    pub fn if_none_match(value: Option<&str>) -> Conditions {
        Conditions {
            if_none_match: value.map(str::to_owned),
            ..Conditions::default()
        }
    }

    /// Nothing is asked of an entry's age: an entry is reused as its own
    /// windows and the cache's allow.
    pub fn ages_unasked(&self) -> bool {
        self.max_age.is_none() && self.min_fresh.is_none() && self.max_stale.is_none()
    }
}

/// [`classify`] for a caller with `conditions`: an entry the caller finds
/// too old (`max_age`, `min_fresh`) is expired, to be validated before it
/// is used; a stale or expired one within the caller's `max_stale` is
/// stale, answered without waiting for the origin, unless the entry must
/// be revalidated.
pub fn classify_for(meta: &Metadata, now: u64, window: u64, conditions: &Conditions) -> Freshness {
    let class = classify(meta, now, window);
    if conditions.ages_unasked() {
        return class;
    }
    let Some(cached_at) = meta.cached_at else {
        return Freshness::Expired;
    };
    let window = meta.fresh_for.unwrap_or(window);
    let age = now.saturating_sub(cached_at);
    let too_old = conditions.max_age.is_some_and(|max| max == 0 || age > max)
        || conditions
            .min_fresh
            .is_some_and(|min| window.saturating_sub(age) < min.max(1));
    if too_old {
        return Freshness::Expired;
    }
    if class != Freshness::Fresh
        && meta.stale_if_error != Some(0)
        && conditions
            .max_stale
            .is_some_and(|max| age.saturating_sub(window) <= max)
    {
        return Freshness::Stale;
    }
    class
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

    #[test]
    fn a_callers_max_age_and_min_fresh_send_a_fresh_entry_to_validation() {
        let mut meta = at(0);
        meta.fresh_for = Some(100);
        let asks = |max_age, min_fresh| Conditions {
            max_age,
            min_fresh,
            ..Conditions::default()
        };
        assert_eq!(
            classify_for(&meta, 50, 0, &asks(Some(60), None)),
            Freshness::Fresh
        );
        assert_eq!(
            classify_for(&meta, 50, 0, &asks(Some(40), None)),
            Freshness::Expired
        );
        // no-cache: nothing is reused unvalidated, however young.
        assert_eq!(
            classify_for(&meta, 0, 0, &asks(Some(0), None)),
            Freshness::Expired
        );
        assert_eq!(
            classify_for(&meta, 50, 0, &asks(None, Some(40))),
            Freshness::Fresh
        );
        assert_eq!(
            classify_for(&meta, 50, 0, &asks(None, Some(60))),
            Freshness::Expired
        );
        // A stale entry in its stale window is not reused for such a caller.
        meta.stale_for = Some(100);
        assert_eq!(
            classify_for(&meta, 150, 0, &Conditions::default()),
            Freshness::Stale
        );
        assert_eq!(
            classify_for(&meta, 150, 0, &asks(Some(120), None)),
            Freshness::Expired
        );
    }

    #[test]
    fn a_callers_max_stale_allows_stale_unless_the_entry_must_be_revalidated() {
        let mut meta = at(0);
        meta.fresh_for = Some(100);
        meta.stale_for = Some(0);
        let stale_ok = |max| Conditions {
            max_stale: Some(max),
            ..Conditions::default()
        };
        assert_eq!(
            classify_for(&meta, 150, 0, &Conditions::default()),
            Freshness::Expired
        );
        assert_eq!(classify_for(&meta, 150, 0, &stale_ok(60)), Freshness::Stale);
        assert_eq!(
            classify_for(&meta, 150, 0, &stale_ok(40)),
            Freshness::Expired
        );
        assert_eq!(classify_for(&meta, 50, 0, &stale_ok(40)), Freshness::Fresh);
        meta.stale_if_error = Some(0);
        assert_eq!(
            classify_for(&meta, 150, 0, &stale_ok(u64::MAX)),
            Freshness::Expired
        );
    }
}
