//! How an entry is laid out as bytes, the same in a file and in a
//! key-value value: a header (magic, metadata, the original key, body
//! length) then the body.
//!
//! ```text
//! "DJE2" | u32 rest-length | u32 meta-length | metadata | u32 key-length | key | u64 body-length | body
//! ```

use daramjwee_component::{Decoder, Metadata};
use sha2::{Digest, Sha256};

/// Identifies the layout; a new layout gets a new magic, so an entry of
/// an older one reads as a miss ("DJE1" lacked `stale-if-error`).
const MAGIC: &[u8; 4] = b"DJE2";

/// Bytes before the metadata: magic and header length.
const PREFIX: usize = 8;

/// The decoded header of a stored entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The entry's metadata.
    pub meta: Metadata,
    /// The key it was stored under, checked on every read so that a hash
    /// collision reads as a miss, never as another key's body.
    pub key: String,
    /// Length of the body that follows.
    pub body_len: u64,
    /// Bytes the header takes, where the body starts.
    pub len: usize,
}

/// The name an entry is stored under: the SHA-256 of its key in hex, so
/// any key (`../`, NUL, 64 KiB, non-ASCII) makes a short, safe name.
pub fn storage_name(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The header for `key` with `meta` and a body of `body_len` bytes.
pub fn encode_header(key: &str, meta: &Metadata, body_len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + key.len() + meta.tag.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[0; 8]);
    meta.encode(&mut out);
    let meta_len = (out.len() - PREFIX - 4) as u32;
    out[PREFIX..PREFIX + 4].copy_from_slice(&meta_len.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&body_len.to_le_bytes());
    let len = (out.len() - PREFIX) as u32;
    out[4..PREFIX].copy_from_slice(&len.to_le_bytes());
    out
}

/// The offset of the body length inside a header of `header_len` bytes,
/// for writers that learn the length at the end.
pub(crate) fn body_len_offset(header_len: usize) -> usize {
    header_len - 8
}

impl Header {
    /// Bytes to read before [`Header::header_len`] can answer.
    pub(crate) const PREFIX: usize = PREFIX;

    /// From the first [`Header::PREFIX`] bytes, the whole header's length;
    /// `None` when they are not an entry's.
    pub(crate) fn header_len(prefix: &[u8]) -> Option<usize> {
        if prefix.len() < PREFIX || &prefix[..4] != MAGIC {
            return None;
        }
        let rest = u32::from_le_bytes(prefix[4..PREFIX].try_into().ok()?) as usize;
        // The length fields alone take 16 bytes.
        (rest >= 16).then_some(PREFIX + rest)
    }

    /// Decode a whole header (exactly [`Header::header_len`] bytes, or
    /// more: the rest is ignored). `None` for anything damaged.
    pub fn decode(bytes: &[u8]) -> Option<Header> {
        let len = Self::header_len(bytes)?;
        let mut d = Decoder(bytes.get(PREFIX..len)?);
        let meta_len = d.u32()? as usize;
        let meta = Metadata::decode(d.take(meta_len)?)?;
        let key = d.string()?;
        let body_len = d.u64()?;
        d.0.is_empty().then_some(Header {
            meta,
            key,
            body_len,
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Metadata {
        Metadata {
            tag: "\"v1\"".into(),
            cached_at: Some(7),
            attributes: vec![("content-type".into(), "text/plain".into())],
            ..Metadata::default()
        }
    }

    #[test]
    fn header_round_trips() {
        for key in ["/a?b=c", "", "../../etc/passwd", "é \0 x"] {
            let bytes = encode_header(key, &meta(), 42);
            let header = Header::decode(&bytes).expect("decodes");
            assert_eq!(header.key, key);
            assert_eq!(header.meta, meta());
            assert_eq!(header.body_len, 42);
            assert_eq!(header.len, bytes.len());
            assert_eq!(Header::header_len(&bytes[..8]), Some(bytes.len()));
        }
    }

    #[test]
    fn damaged_headers_do_not_decode() {
        let bytes = encode_header("/k", &meta(), 3);
        for cut in 0..bytes.len() {
            assert_eq!(Header::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert_eq!(Header::decode(&bad), None);
    }

    #[test]
    fn storage_names_are_safe() {
        let name = storage_name("../../etc/passwd");
        assert_eq!(name.len(), 64);
        assert!(name.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(name, storage_name("../../etc/passwd "));
    }
}
