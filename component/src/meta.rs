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
    /// How long past freshness the entry may be served when the origin
    /// fails, in ms; `Some(0)` forbids serving it stale without
    /// validation at all, even to a caller that accepts stale answers;
    /// `None` leaves it to the cache's `stale_if_error`.
    pub stale_if_error: Option<u64>,
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

impl Metadata {
    /// Append the binary form of this metadata to `out`: little-endian
    /// lengths and times in ms, for stores that keep metadata as bytes.
    /// [`Metadata::decode`] reads it back.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_str(out, &self.tag);
        out.push(u8::from(self.negative));
        for value in [
            self.cached_at,
            self.fresh_for,
            self.stale_for,
            self.stale_if_error,
        ] {
            match value {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        out.extend_from_slice(&(self.attributes.len() as u32).to_le_bytes());
        for (name, value) in &self.attributes {
            put_str(out, name);
            put_str(out, value);
        }
    }

    /// Read metadata written by [`Metadata::encode`]; `None` when `bytes`
    /// is short, long or malformed, never a guess.
    pub fn decode(bytes: &[u8]) -> Option<Metadata> {
        let mut d = Decoder(bytes);
        let tag = d.string()?;
        let negative = d.flag()?;
        let mut times = [None; 4];
        for time in &mut times {
            *time = match d.u8()? {
                0 => None,
                1 => Some(d.u64()?),
                _ => return None,
            };
        }
        let [cached_at, fresh_for, stale_for, stale_if_error] = times;
        let attributes = d.pairs()?;
        d.0.is_empty().then_some(Metadata {
            tag,
            cached_at,
            negative,
            fresh_for,
            stale_for,
            stale_if_error,
            attributes,
        })
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A reader of the little-endian fields of a binary record: each read
/// takes its bytes off the front, or answers `None` when too few are
/// left. For stores whose own formats use the same field encodings.
pub struct Decoder<'a>(pub &'a [u8]);

impl<'a> Decoder<'a> {
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    /// One byte.
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    /// A boolean byte: 0 or 1, anything else is malformed.
    pub fn flag(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    /// A `u32` count, then that many pairs of strings.
    pub fn pairs(&mut self) -> Option<Vec<(String, String)>> {
        let count = self.u32()? as usize;
        // Each pair takes at least 8 bytes: bound the allocation by the
        // input, not by a count that may be garbage.
        let mut pairs = Vec::with_capacity(count.min(self.0.len() / 8));
        for _ in 0..count {
            pairs.push((self.string()?, self.string()?));
        }
        Some(pairs)
    }

    /// A UTF-8 string after its `u32` length.
    pub fn string(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
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
    use super::{Metadata, if_none_match};

    #[test]
    fn metadata_round_trips_and_rejects_damage() {
        let meta = Metadata {
            tag: "\"v1\"".into(),
            cached_at: Some(1_700_000_000_123),
            negative: true,
            fresh_for: Some(1500),
            stale_for: None,
            stale_if_error: Some(0),
            attributes: vec![
                ("content-type".into(), "text/plain".into()),
                ("é".into(), String::new()),
            ],
        };
        for meta in [meta, Metadata::default()] {
            let mut bytes = Vec::new();
            meta.encode(&mut bytes);
            assert_eq!(Metadata::decode(&bytes), Some(meta.clone()));
            for cut in 0..bytes.len() {
                assert_eq!(Metadata::decode(&bytes[..cut]), None, "cut at {cut}");
            }
            bytes.push(0);
            assert_eq!(Metadata::decode(&bytes), None);
        }
    }

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
