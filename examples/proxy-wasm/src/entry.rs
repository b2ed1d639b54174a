//! A cached answer and its shared-data encoding.

use std::sync::Arc;

use daramjwee_component::Metadata;

use crate::{Error, Result};

/// Bytes charged for an entry beyond its key, body, tag and attributes:
/// the map slot and the metadata, so a tier full of empty negative entries
/// still has a bound.
pub const ENTRY_OVERHEAD: u64 = 64;

/// What the filter keeps for one key: the engine's metadata and the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Tag, `cached-at`, windows, negative flag, attributes (content type,
    /// cache control).
    pub meta: Metadata,
    /// The body, shared so serving a hit does not copy it.
    pub body: Arc<[u8]>,
}

/// A new layout gets a new magic, so a value of an older one reads as
/// absent ("DJW1" lacked `stale-if-error`).
const MAGIC: &[u8; 4] = b"DJW2";
const NEGATIVE: u8 = 1;
const CACHED_AT: u8 = 2;
const FRESH_FOR: u8 = 4;
const STALE_FOR: u8 = 8;
const STALE_IF_ERROR: u8 = 16;

impl Entry {
    /// Bytes this entry costs a tier under `key`.
    pub fn charge(&self, key: &str) -> u64 {
        let attrs: usize = self
            .meta
            .attributes
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum();
        (key.len() + self.body.len() + self.meta.tag.len() + attrs) as u64 + ENTRY_OVERHEAD
    }

    /// The first attribute named `name`.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.meta
            .attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The shared-data form: a magic, flags, the optional times,
    /// length-prefixed tag, attributes and body, all little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let m = &self.meta;
        let mut out = Vec::with_capacity(64 + self.body.len() + m.tag.len());
        out.extend_from_slice(MAGIC);
        let mut flags = 0;
        for (bit, on) in [
            (NEGATIVE, m.negative),
            (CACHED_AT, m.cached_at.is_some()),
            (FRESH_FOR, m.fresh_for.is_some()),
            (STALE_FOR, m.stale_for.is_some()),
            (STALE_IF_ERROR, m.stale_if_error.is_some()),
        ] {
            if on {
                flags |= bit;
            }
        }
        out.push(flags);
        for v in [m.cached_at, m.fresh_for, m.stale_for, m.stale_if_error]
            .into_iter()
            .flatten()
        {
            out.extend_from_slice(&v.to_le_bytes());
        }
        put(&mut out, m.tag.as_bytes());
        out.extend_from_slice(&(m.attributes.len() as u32).to_le_bytes());
        for (n, v) in &m.attributes {
            put(&mut out, n.as_bytes());
            put(&mut out, v.as_bytes());
        }
        put(&mut out, &self.body);
        out
    }

    /// Read the shared-data form; anything else (another writer's value,
    /// a truncated or empty value) is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Entry> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(Error::Decode("not a daramjwee entry"));
        }
        let flags = r.take(1)?[0];
        if flags & !(NEGATIVE | CACHED_AT | FRESH_FOR | STALE_FOR | STALE_IF_ERROR) != 0 {
            return Err(Error::Decode("unknown flags"));
        }
        let mut time = |bit| -> Result<Option<u64>> {
            if flags & bit == 0 {
                return Ok(None);
            }
            Ok(Some(u64::from_le_bytes(r.array()?)))
        };
        let cached_at = time(CACHED_AT)?;
        let fresh_for = time(FRESH_FOR)?;
        let stale_for = time(STALE_FOR)?;
        let stale_if_error = time(STALE_IF_ERROR)?;
        let tag = r.text()?;
        let count = u32::from_le_bytes(r.array()?);
        let mut attributes = Vec::new();
        for _ in 0..count {
            // Each attribute takes at least 8 bytes, so a forged count
            // fails here instead of reserving memory.
            let name = r.text()?;
            let value = r.text()?;
            attributes.push((name, value));
        }
        let body = r.bytes()?;
        if !r.0.is_empty() {
            return Err(Error::Decode("trailing bytes"));
        }
        Ok(Entry {
            meta: Metadata {
                tag,
                cached_at,
                negative: flags & NEGATIVE != 0,
                fresh_for,
                stale_for,
                stale_if_error,
                attributes,
            },
            body: body.into(),
        })
    }
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(Error::Decode("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = u32::from_le_bytes(self.array()?) as usize;
        self.take(n)
    }

    fn text(&mut self) -> Result<String> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| Error::Decode("text is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        Entry {
            meta: Metadata {
                tag: "\"v1\"".into(),
                cached_at: Some(1_700_000_000_000),
                negative: false,
                fresh_for: Some(5_000),
                stale_for: None,
                stale_if_error: Some(0),
                attributes: vec![("content-type".into(), "text/plain".into())],
            },
            body: Arc::from(&b"hello"[..]),
        }
    }

    #[test]
    fn encoding_round_trips() {
        let e = sample();
        assert_eq!(Entry::decode(&e.encode()), Ok(e));
        let neg = Entry {
            meta: Metadata::negative_at(7),
            body: Arc::from(&[][..]),
        };
        assert_eq!(Entry::decode(&neg.encode()), Ok(neg));
    }

    #[test]
    fn garbage_never_decodes_and_never_panics() {
        let good = sample().encode();
        for cut in 0..good.len() {
            assert!(
                Entry::decode(&good[..cut]).is_err(),
                "prefix of {cut} bytes"
            );
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(Entry::decode(&long), Err(Error::Decode("trailing bytes")));
        let mut forged = good.clone();
        forged[4] = 0xff;
        assert!(Entry::decode(&forged).is_err());
        // A forged huge attribute count runs out of input, it allocates nothing.
        let mut count = MAGIC.to_vec();
        count.extend([0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(Entry::decode(&count), Err(Error::Decode("truncated")));
        // Every single-byte corruption either decodes or errors.
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0xa5;
            let _ = Entry::decode(&b);
        }
    }

    #[test]
    fn charge_counts_key_body_and_metadata() {
        let e = sample();
        assert_eq!(
            e.charge("/k"),
            2 + 5 + 4 + ("content-type".len() + "text/plain".len()) as u64 + ENTRY_OVERHEAD
        );
        assert_eq!(e.attribute("content-type"), Some("text/plain"));
        assert_eq!(e.attribute("etag"), None);
    }
}
