//! Entry metadata and `If-None-Match` matching.

/// Everything the cache keeps about an entry besides its body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The origin's entity tag, opaque; empty when there is none.
    pub tag: String,
    /// When the entry was fetched or written, in ms since the Unix epoch.
    pub cached_at: Option<u64>,
    /// The entry records "not found at the origin"; its body is empty.
    pub negative: bool,
    /// Per-entry freshness window in ms, overriding the cache's.
    pub fresh_for: Option<u64>,
    /// How long past freshness the entry may be served stale, in ms.
    pub stale_for: Option<u64>,
    /// Opaque name/value pairs kept with the entry.
    pub attributes: Vec<(String, String)>,
}

impl Metadata {
    /// Metadata of a negative entry written at `now`.
    pub fn negative_at(now: u64) -> Self {
        Metadata {
            negative: true,
            cached_at: Some(now),
            ..Metadata::default()
        }
    }
}

/// Whether an `If-None-Match` header value matches an entry's `tag`, with
/// HTTP's weak comparison: `W/` and quotes are ignored, the header may be a
/// comma list, `*` matches any entry, and an empty header or empty tag
/// never matches a listed tag.
pub fn if_none_match(header: &str, tag: &str) -> bool {
    let tag = opaque(tag);
    header.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || (!tag.is_empty() && !candidate.is_empty() && opaque(candidate) == tag)
    })
}

fn opaque(tag: &str) -> &str {
    let tag = tag.trim();
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    tag.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(tag)
}

#[cfg(test)]
mod tests {
    use super::if_none_match;

    #[test]
    fn matches_like_http() {
        assert!(if_none_match("\"v1\"", "v1"));
        assert!(if_none_match("W/\"v1\"", "\"v1\""));
        assert!(if_none_match("\"a\", \"v1\"", "v1"));
        assert!(if_none_match("*", "v1"));
        assert!(!if_none_match("\"v2\"", "v1"));
        assert!(!if_none_match("", "v1"));
        assert!(!if_none_match("\"\"", ""));
        assert!(!if_none_match("v1,", ""));
    }
}
