//! Tiers described in one string, as on a command line or in a config
//! file: `mem:256MiB:s3fifo`, `file:./cache:10GiB:sieve`.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use daramjwee_component::policy::PolicyKind;

use crate::file::FileStore;
use crate::memory::MemoryStore;
use crate::tier::Tier;
use crate::{Error, Result};

/// The policy of a bounded tier whose spec names none.
pub const DEFAULT_POLICY: PolicyKind = PolicyKind::S3Fifo;

/// One tier, parsed from a string by [`TierSpec::from_str`]:
///
/// - `mem[:SIZE[:POLICY]]`: a [`MemoryStore`], e.g. `mem`, `mem:256MiB`,
///   `mem:256MiB:s3fifo`.
/// - `file:DIR[:SIZE[:POLICY]]`: a [`FileStore`] rooted at `DIR`, e.g.
///   `file:./cache`, `file:./cache:10GiB:sieve`. `DIR` cannot contain `:`
///   (a leading Windows drive such as `C:\` is fine).
///
/// `SIZE` is a whole number of bytes with an optional unit (see
/// [`parse_size`]); 0 or no size means unbounded. `POLICY` is `lru`,
/// `s3fifo` or `sieve`; the default is [`DEFAULT_POLICY`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TierSpec {
    /// A memory tier.
    Memory {
        /// Byte capacity; 0 for unbounded.
        capacity: u64,
        /// Eviction policy when bounded.
        policy: PolicyKind,
    },
    /// A file tier.
    File {
        /// The root directory.
        dir: PathBuf,
        /// Byte capacity; 0 for unbounded.
        capacity: u64,
        /// Eviction policy when bounded.
        policy: PolicyKind,
    },
}

impl TierSpec {
    /// Build the tier this spec describes, called `name`. A file tier's
    /// directory is created and scanned (blocking).
    pub fn open(&self, name: impl Into<String>) -> Result<Arc<dyn Tier>> {
        Ok(match self {
            TierSpec::Memory { capacity, policy } => {
                Arc::new(MemoryStore::with_capacity(name, *capacity, *policy))
            }
            TierSpec::File {
                dir,
                capacity,
                policy,
            } => Arc::new(
                FileStore::builder(dir.clone())
                    .capacity(*capacity, *policy)
                    .open(name)?,
            ),
        })
    }
}

fn invalid(spec: &str, what: impl std::fmt::Display) -> Error {
    Error::InvalidConfig(format!("tier spec `{spec}`: {what}"))
}

/// Parse `SIZE[:POLICY]` (either part may be absent).
fn bound(spec: &str, parts: &[&str]) -> Result<(u64, PolicyKind)> {
    let capacity = match parts.first() {
        None => 0,
        Some(size) => size_of(size).map_err(|e| invalid(spec, e))?,
    };
    let policy = match parts.get(1) {
        None => DEFAULT_POLICY,
        Some(name) => name.parse::<PolicyKind>().map_err(|e| match e {
            daramjwee_component::Error::InvalidConfig(why) => invalid(spec, why),
            other => invalid(spec, format!("policy `{name}`: {other}")),
        })?,
    };
    if parts.len() > 2 {
        return Err(invalid(
            spec,
            format!("unexpected `{}` after the policy", parts[2..].join(":")),
        ));
    }
    Ok((capacity, policy))
}

impl FromStr for TierSpec {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        if let Some((scheme, _)) = spec.split_once("://") {
            return match scheme {
                // Object-store tiers: these URLs are parsed and opened by
                // the object store tier, which is not part of this build yet.
                "s3" | "gs" | "az" | "file" | "memory" => {
                    Err(invalid(spec, "object store tiers are not built in"))
                }
                other => Err(invalid(spec, format!("unknown URL scheme `{other}://`"))),
            };
        }
        let (kind, rest) = match spec.split_once(':') {
            Some((kind, rest)) => (kind, Some(rest)),
            None => (spec, None),
        };
        match kind {
            "mem" | "memory" => {
                let parts: Vec<&str> = rest.map(|r| r.split(':').collect()).unwrap_or_default();
                let (capacity, policy) = bound(spec, &parts)?;
                Ok(TierSpec::Memory { capacity, policy })
            }
            "file" => {
                let rest = rest.unwrap_or("");
                // Keep a Windows drive (`C:\`, `C:/`) in the directory.
                let drive = match rest.as_bytes() {
                    [letter, b':', b'\\' | b'/', ..] if letter.is_ascii_alphabetic() => 2,
                    _ => 0,
                };
                let (dir, bounds) = match rest[drive..].split_once(':') {
                    Some((dir, bounds)) => (&rest[..drive + dir.len()], Some(bounds)),
                    None => (rest, None),
                };
                if dir.is_empty() {
                    return Err(invalid(spec, "a file tier needs a directory: `file:DIR`"));
                }
                let parts: Vec<&str> = bounds.map(|b| b.split(':').collect()).unwrap_or_default();
                let (capacity, policy) = bound(spec, &parts)?;
                Ok(TierSpec::File {
                    dir: PathBuf::from(dir),
                    capacity,
                    policy,
                })
            }
            "" => Err(invalid(spec, "empty tier kind; expected `mem` or `file`")),
            other => Err(invalid(
                spec,
                format!("unknown tier kind `{other}`; expected `mem` or `file`"),
            )),
        }
    }
}

const UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
];

fn size_of(text: &str) -> Result<u64, String> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err(format!(
            "size `{text}`: expected a whole number of bytes, e.g. 512, 64KiB, 10GiB"
        ));
    }
    let scale = UNITS
        .iter()
        .find(|(name, _)| unit.eq_ignore_ascii_case(name))
        .map(|(_, scale)| *scale)
        .ok_or_else(|| {
            format!(
                "size `{text}`: unknown unit `{unit}`; use B, KB, KiB, MB, MiB, GB, GiB, TB or TiB"
            )
        })?;
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("size `{text}`: too large"))
}

/// Parse a byte size: a whole number with an optional unit, `B`, `KB`,
/// `MB`, `GB`, `TB` (powers of 1000) or `KiB`, `MiB`, `GiB`, `TiB` (powers
/// of 1024), case-insensitive: `512`, `64KiB`, `256MiB`, `1GB`.
pub fn parse_size(text: &str) -> Result<u64> {
    size_of(text).map_err(Error::InvalidConfig)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> TierSpec {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn error(s: &str) -> String {
        match s.parse::<TierSpec>() {
            Ok(spec) => panic!("{s} parsed as {spec:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn sizes_parse_with_decimal_and_binary_units() {
        for (text, bytes) in [
            ("0", 0),
            ("512", 512),
            ("512B", 512),
            ("64KiB", 64 << 10),
            ("256MiB", 256 << 20),
            ("10GiB", 10 << 30),
            ("2TiB", 2 << 40),
            ("1GB", 1_000_000_000),
            ("3kb", 3_000),
            ("5mib", 5 << 20),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn bad_sizes_name_the_bad_part() {
        for (text, part) in [
            ("", "whole number"),
            ("MiB", "whole number"),
            ("-1", "whole number"),
            ("1.5GiB", "unknown unit `.5GiB`"),
            ("10XB", "unknown unit `XB`"),
            ("99999999999999999999", "too large"),
            ("20000000TiB", "too large"),
        ] {
            let e = parse_size(text).expect_err(text).to_string();
            assert!(
                e.contains(part) && e.contains(&format!("`{text}`")),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn memory_specs_parse() {
        assert_eq!(
            parse("mem"),
            TierSpec::Memory {
                capacity: 0,
                policy: DEFAULT_POLICY
            }
        );
        assert_eq!(
            parse("mem:256MiB"),
            TierSpec::Memory {
                capacity: 256 << 20,
                policy: DEFAULT_POLICY
            }
        );
        assert_eq!(
            parse("mem:256MiB:s3fifo"),
            TierSpec::Memory {
                capacity: 256 << 20,
                policy: PolicyKind::S3Fifo
            }
        );
        assert_eq!(
            parse("memory:1GB:lru"),
            TierSpec::Memory {
                capacity: 1_000_000_000,
                policy: PolicyKind::Lru
            }
        );
    }

    #[test]
    fn file_specs_parse() {
        assert_eq!(
            parse("file:./cache"),
            TierSpec::File {
                dir: "./cache".into(),
                capacity: 0,
                policy: DEFAULT_POLICY
            }
        );
        assert_eq!(
            parse("file:./cache:10GiB:sieve"),
            TierSpec::File {
                dir: "./cache".into(),
                capacity: 10 << 30,
                policy: PolicyKind::Sieve
            }
        );
        assert_eq!(
            parse("file:/var/cache/dj:64KiB"),
            TierSpec::File {
                dir: "/var/cache/dj".into(),
                capacity: 64 << 10,
                policy: DEFAULT_POLICY
            }
        );
        assert_eq!(
            parse(r"file:C:\cache:1GiB:lru"),
            TierSpec::File {
                dir: r"C:\cache".into(),
                capacity: 1 << 30,
                policy: PolicyKind::Lru
            }
        );
    }

    #[test]
    fn bad_specs_name_the_bad_part() {
        for (spec, part) in [
            ("", "empty tier kind"),
            ("disk:./x", "unknown tier kind `disk`"),
            ("mem:", "size ``"),
            ("mem:12XB", "unknown unit `XB`"),
            ("mem:1GiB:fifo", "policy `fifo`"),
            ("mem:1GiB:lru:extra", "unexpected `extra`"),
            ("file", "needs a directory"),
            ("file:", "needs a directory"),
            ("file::1GiB", "needs a directory"),
            ("file:./c:ten", "size `ten`"),
            ("file:./c:1GiB:mru", "policy `mru`"),
            ("ftp://host/x", "unknown URL scheme `ftp://`"),
        ] {
            let e = error(spec);
            assert!(
                e.contains(part) && e.contains(&format!("`{spec}`")),
                "{spec}: {e}"
            );
        }
    }

    #[test]
    fn object_store_urls_are_not_built_in_yet() {
        for spec in [
            "s3://bucket/prefix",
            "gs://bucket",
            "az://container",
            "file:///tmp/x",
            "memory://",
        ] {
            assert!(
                error(spec).contains("object store tiers are not built in"),
                "{spec}"
            );
        }
    }

    #[test]
    fn specs_open_their_tiers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("tier");
        let spec: TierSpec = format!("file:{}:1MiB:lru", root.display())
            .parse()
            .expect("valid");
        let tier = spec.open("disk").expect("opens");
        assert_eq!(tier.name(), "disk");
        assert!(root.is_dir());
        let tier = parse("mem:1MiB").open("ram").expect("opens");
        assert_eq!(tier.name(), "ram");
    }
}
