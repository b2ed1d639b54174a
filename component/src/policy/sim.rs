//! The trace simulator: replays requests through a policy the way
//! libCacheSim's request loop does, so the two can be compared.
//!
//! A trace has one request per line, `key` or `key,size`. Without a size on
//! any line every object has size 1 and the capacity counts objects; with
//! sizes (then on every line) it counts bytes. Blank lines are skipped.
//!
//! Each request is a hit if its key is resident (the policy is touched; the
//! size on the line is ignored, as in libCacheSim) and otherwise a miss,
//! after which the key is inserted, evicting as needed. An object the
//! policy does not admit (larger than the cache) is a miss and stays out.

use std::collections::HashMap;
use std::io::BufRead;

use super::PolicyKind;
use crate::Error;

/// What [`simulate`] fails with: the crate's [`Error`]. A bad trace line is
/// an [`Error::Other`] naming the line number, a zero capacity an
/// [`Error::InvalidConfig`].
pub type SimError = Error;

/// The outcome of a simulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimReport {
    /// The policy simulated.
    pub policy: PolicyKind,
    /// Requests replayed (non-blank lines).
    pub requests: u64,
    /// Requests whose key was not resident.
    pub misses: u64,
}

impl SimReport {
    /// Misses per request; 0 for an empty trace.
    pub fn miss_ratio(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.misses as f64 / self.requests as f64
        }
    }

    /// One line of JSON:
    /// `{"policy":"s3fifo","requests":1000000,"misses":453700,"miss_ratio":0.4537}`.
    pub fn to_json(&self) -> String {
        // f64's Display is the shortest exact decimal and never uses an
        // exponent, so it is valid JSON as it stands.
        format!(
            r#"{{"policy":"{}","requests":{},"misses":{},"miss_ratio":{}}}"#,
            self.policy,
            self.requests,
            self.misses,
            self.miss_ratio()
        )
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sizes {
    Unknown,
    Unit,
    Bytes,
}

/// Replays the trace read from `reader` through a `kind` policy of
/// `capacity` (objects, or bytes when the trace has sizes).
pub fn simulate(
    kind: PolicyKind,
    capacity: u64,
    mut reader: impl BufRead,
) -> Result<SimReport, SimError> {
    if capacity == 0 {
        return Err(Error::InvalidConfig("capacity: must be positive".into()));
    }
    let mut policy = kind.build::<u64>(capacity);
    // Keys are interned to dense ids so a hit costs no allocation.
    let mut ids: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut evicted = Vec::new();
    let mut sizes = Sizes::Unknown;
    let mut report = SimReport {
        policy: kind,
        requests: 0,
        misses: 0,
    };
    let mut line = Vec::new();
    for number in 1u64.. {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::Other(format!("trace line {number}: cannot read: {e}")))?;
        if read == 0 {
            break;
        }
        let bad = |why: &str| Error::Other(format!("trace line {number}: {why}"));
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        let mut fields = text.split(|&b| b == b',');
        let key = fields.next().unwrap_or_default().trim_ascii();
        let size_field = fields.next();
        if fields.next().is_some() {
            return Err(bad("expected `key` or `key,size`"));
        }
        if key.is_empty() {
            return Err(bad("empty key"));
        }
        let (line_sizes, size) = match size_field {
            None => (Sizes::Unit, 1),
            Some(field) => {
                let size = std::str::from_utf8(field.trim_ascii())
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .filter(|&s| s > 0)
                    .ok_or_else(|| bad("size must be a positive integer"))?;
                (Sizes::Bytes, size)
            }
        };
        match (sizes, line_sizes) {
            (Sizes::Unknown, _) => sizes = line_sizes,
            (Sizes::Unit, Sizes::Bytes) => return Err(bad("has a size but earlier lines do not")),
            (Sizes::Bytes, Sizes::Unit) => return Err(bad("has no size but earlier lines do")),
            _ => {}
        }

        let next = ids.len() as u64;
        let id = match ids.get(key) {
            Some(&id) => id,
            None => {
                ids.insert(key.to_vec(), next);
                next
            }
        };
        report.requests += 1;
        if !policy.touch(&id) {
            report.misses += 1;
            policy.insert(id, size, &mut evicted);
            evicted.clear();
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(kind: PolicyKind, capacity: u64, trace: &str) -> Result<SimReport, SimError> {
        simulate(kind, capacity, trace.as_bytes())
    }

    fn misses(kind: PolicyKind, capacity: u64, trace: &str) -> u64 {
        run(kind, capacity, trace).unwrap().misses
    }

    /// 20 000 requests: skewed keys with a scan of 500 one-time keys every
    /// 2 500 requests; each key has a fixed size of 1 to 97 bytes.
    fn reference_trace(sized: bool) -> String {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut trace = String::new();
        for i in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = if i % 2_500 >= 2_000 {
                100_000 + i
            } else {
                (x % 1_000) * ((x >> 20) % 1_000) / 1_000
            };
            let size = 1 + key * 2_654_435_761 % 97;
            trace += &if sized {
                format!("{key},{size}\n")
            } else {
                format!("{key}\n")
            };
        }
        trace
    }

    #[test]
    fn miss_counts_match_libcachesim() {
        // Misses of libcachesim 0.3.5 (LRU, S3FIFO with small_size_ratio=0.1,
        // ghost_size_ratio=0.9, move_to_main_threshold=2, Sieve) driven with
        // `cache.get(req)` over the same requests.
        let expected = [
            (false, 50, [18_463, 17_653, 17_808]),
            (false, 300, [12_565, 10_793, 10_552]),
            (true, 2_000, [18_740, 18_012, 18_101]),
            (true, 10_000, [14_539, 12_986, 12_792]),
        ];
        for (sized, capacity, misses) in expected {
            let trace = reference_trace(sized);
            for (kind, want) in PolicyKind::ALL.into_iter().zip(misses) {
                let report = run(kind, capacity, &trace).unwrap();
                assert_eq!(report.requests, 20_000);
                assert_eq!(
                    report.misses, want,
                    "{kind}, capacity {capacity}, sized {sized}"
                );
            }
        }
    }

    #[test]
    fn report_json_has_fixed_field_order() {
        let report = SimReport {
            policy: PolicyKind::S3Fifo,
            requests: 1_000_000,
            misses: 453_700,
        };
        assert_eq!(
            report.to_json(),
            r#"{"policy":"s3fifo","requests":1000000,"misses":453700,"miss_ratio":0.4537}"#
        );
        let empty = SimReport {
            policy: PolicyKind::Lru,
            requests: 0,
            misses: 0,
        };
        assert_eq!(
            empty.to_json(),
            r#"{"policy":"lru","requests":0,"misses":0,"miss_ratio":0}"#
        );
    }

    #[test]
    fn without_sizes_capacity_counts_objects() {
        // Three keys cycling through a two-object LRU always miss; with
        // room for three they miss only the first time.
        let trace = "a\nb\nc\na\nb\nc\n";
        assert_eq!(misses(PolicyKind::Lru, 2, trace), 6);
        assert_eq!(misses(PolicyKind::Lru, 3, trace), 3);
    }

    #[test]
    fn with_sizes_capacity_counts_bytes() {
        let trace = "a,60\nb,50\na,60\nb,50\n";
        assert_eq!(misses(PolicyKind::Lru, 100, trace), 4);
        assert_eq!(misses(PolicyKind::Lru, 110, trace), 2);
    }

    #[test]
    fn object_larger_than_the_cache_always_misses() {
        let trace = "big,101\nsmall,1\nbig,101\nsmall,1\n";
        for kind in PolicyKind::ALL {
            let report = run(kind, 100, trace).unwrap();
            assert_eq!((report.requests, report.misses), (4, 3), "{kind}");
        }
    }

    #[test]
    fn blank_lines_and_surrounding_space_are_ignored() {
        let trace = "\n a , 2 \r\n\n\na,2\n   \nb,1";
        let report = run(PolicyKind::Sieve, 10, trace).unwrap();
        assert_eq!((report.requests, report.misses), (3, 2));
    }

    #[test]
    fn malformed_line_error_names_its_number() {
        for (trace, line, what) in [
            ("a,1\nb,x\n", 2, "size"),
            ("a\n\nb,1\n", 3, "has a size"),
            ("a,1\nb\n", 2, "has no size"),
            ("a\n,\n", 2, "empty key"),
            ("a\nb\nc,1,2\n", 3, "key,size"),
            ("a,0\n", 1, "positive"),
            ("a,-1\n", 1, "positive"),
        ] {
            let err = run(PolicyKind::Lru, 10, trace).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(&format!("trace line {line}:")),
                "{trace:?}: {text}"
            );
            assert!(text.contains(what), "{trace:?}: {text}");
        }
    }

    #[test]
    fn unreadable_trace_is_an_error() {
        let err = run(PolicyKind::Lru, 10, "a\n").and(simulate(
            PolicyKind::Lru,
            10,
            std::io::BufReader::new(Failing),
        ));
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("trace line 1: cannot read")
        );
    }

    struct Failing;

    impl std::io::Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk on fire"))
        }
    }

    #[test]
    fn zero_capacity_is_refused() {
        let err = run(PolicyKind::S3Fifo, 0, "a\n").unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    }
}
