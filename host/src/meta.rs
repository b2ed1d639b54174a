//! Entry metadata as the host sees it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Everything the cache keeps about an entry besides its body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The origin's entity tag, opaque; empty when there is none.
    pub tag: String,
    /// When the entry was fetched or written.
    pub cached_at: Option<SystemTime>,
    /// The entry records "not found at the origin"; its body is empty.
    pub negative: bool,
    /// Freshness window of this entry, overriding the cache's.
    pub fresh_for: Option<Duration>,
    /// How long past freshness the entry may be served stale.
    pub stale_for: Option<Duration>,
    /// How long past freshness the entry may be served when the origin
    /// fails; `Some(ZERO)` forbids serving it stale without validation at
    /// all, even to a caller that accepts stale answers; `None` leaves it
    /// to the cache's `stale_if_error`.
    pub stale_if_error: Option<Duration>,
    /// Opaque name/value pairs kept with the entry.
    pub attributes: Vec<(String, String)>,
}

impl Metadata {
    /// Metadata with just a tag.
    pub fn tagged(tag: impl Into<String>) -> Self {
        Metadata {
            tag: tag.into(),
            ..Metadata::default()
        }
    }
}

pub(crate) fn to_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

pub(crate) fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Metadata {
    /// Metadata from its parts in the engine's units (times in ms).
    pub(crate) fn from_parts(
        tag: String,
        cached_at: Option<u64>,
        negative: bool,
        fresh_for: Option<u64>,
        stale_for: Option<u64>,
        stale_if_error: Option<u64>,
        attributes: Vec<(String, String)>,
    ) -> Metadata {
        Metadata {
            tag,
            cached_at: cached_at.map(from_millis),
            negative,
            fresh_for: fresh_for.map(Duration::from_millis),
            stale_for: stale_for.map(Duration::from_millis),
            stale_if_error: stale_if_error.map(Duration::from_millis),
            attributes,
        }
    }
}

impl From<daramjwee_component::Metadata> for Metadata {
    fn from(m: daramjwee_component::Metadata) -> Self {
        Metadata::from_parts(
            m.tag,
            m.cached_at,
            m.negative,
            m.fresh_for,
            m.stale_for,
            m.stale_if_error,
            m.attributes,
        )
    }
}

impl From<&Metadata> for daramjwee_component::Metadata {
    fn from(m: &Metadata) -> Self {
        daramjwee_component::Metadata {
            tag: m.tag.clone(),
            cached_at: m.cached_at.map(to_millis),
            negative: m.negative,
            fresh_for: m.fresh_for.map(duration_millis),
            stale_for: m.stale_for.map(duration_millis),
            stale_if_error: m.stale_if_error.map(duration_millis),
            attributes: m.attributes.clone(),
        }
    }
}
