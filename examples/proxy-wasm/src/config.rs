//! The plugin configuration: JSON handed over by Envoy's
//! `plugin_config.configuration`, read and validated once per
//! `on_configure`.
//!
//! Keys are kebab-case like the rest of daramjwee's configuration. Sizes
//! are a number of bytes or a string with a unit (`"64MiB"`, `"1 MB"`);
//! durations are a number of milliseconds or a string (`"30s"`, `"1m 30s"`,
//! `"250ms"`). Unknown keys are refused, so a typo is not silently ignored.

use std::time::Duration;

use daramjwee_component::policy::PolicyKind;
use serde::Deserialize;
use serde_json::Value;

use crate::{Error, Result};

/// Validated plugin settings. Durations are in ms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Bytes the in-plugin tier may hold (keys, bodies and metadata).
    /// Default: 64 MiB.
    pub capacity: u64,
    /// Eviction policy of the in-plugin tier. Default: S3-FIFO.
    pub policy: PolicyKind,
    /// Largest body stored; larger responses pass through uncached.
    /// Default: 1 MiB.
    pub max_body: u64,
    /// Freshness of entries whose origin sent no `max-age`/`s-maxage`.
    /// Default: 60 s.
    pub fresh_for: u64,
    /// How long a 404/410 is answered locally. Default: 10 s.
    pub negative_fresh_for: u64,
    /// How long past freshness an entry is served stale while it is
    /// refreshed, when its origin sent no `stale-while-revalidate`.
    /// Default: 0 (stale entries go to the origin).
    pub stale_while_revalidate: u64,
    /// Envoy cluster for background refreshes (`dispatch_http_call`).
    /// Without it a stale entry is fetched in the request, like a miss.
    pub upstream: Option<String>,
    /// Timeout of one background refresh. Default: 5 s.
    pub upstream_timeout: u64,
    /// Period of the root context's tick that sends queued refreshes.
    /// Default: 100 ms.
    pub refresh_tick: u64,
    /// Whether `:authority` is part of the key. Default: true.
    pub key_authority: bool,
    /// Longest key cached, in bytes; longer requests pass through.
    /// Default: 2048.
    pub max_key: usize,
    /// The optional second tier in Envoy shared data.
    pub shared_data: Option<SharedData>,
}

/// Settings of the shared-data tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedData {
    /// Prefix of every shared-data key this filter writes.
    /// Default: `"daramjwee:"`.
    pub prefix: String,
    /// Largest encoded entry written to shared data. Default: 64 KiB.
    pub max_entry: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            capacity: 64 << 20,
            policy: PolicyKind::S3Fifo,
            max_body: 1 << 20,
            fresh_for: 60_000,
            negative_fresh_for: 10_000,
            stale_while_revalidate: 0,
            upstream: None,
            upstream_timeout: 5_000,
            refresh_tick: 100,
            key_authority: true,
            max_key: 2048,
            shared_data: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Raw {
    capacity: Option<Value>,
    policy: Option<Value>,
    max_body: Option<Value>,
    fresh_for: Option<Value>,
    negative_fresh_for: Option<Value>,
    stale_while_revalidate: Option<Value>,
    upstream: Option<Value>,
    upstream_timeout: Option<Value>,
    refresh_tick: Option<Value>,
    key_authority: Option<Value>,
    max_key: Option<Value>,
    shared_data: Option<Value>,
}

impl Settings {
    /// Read the plugin configuration. Empty input (no configuration)
    /// gives the defaults.
    pub fn from_json(bytes: &[u8]) -> Result<Settings> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Settings::default());
        }
        let raw: Raw =
            serde_json::from_slice(bytes).map_err(|e| Error::InvalidConfig(e.to_string()))?;
        let mut s = Settings::default();
        if let Some(v) = raw.capacity {
            s.capacity = size("capacity", &v)?;
        }
        if let Some(v) = raw.policy {
            s.policy = text("policy", &v)?.parse().map_err(|e| match e {
                daramjwee_component::Error::InvalidConfig(why) => bad(format!("policy: {why}")),
                other => bad(format!("policy: {other}")),
            })?;
        }
        if let Some(v) = raw.max_body {
            s.max_body = size("max-body", &v)?;
        }
        if let Some(v) = raw.fresh_for {
            s.fresh_for = millis("fresh-for", &v)?;
        }
        if let Some(v) = raw.negative_fresh_for {
            s.negative_fresh_for = millis("negative-fresh-for", &v)?;
        }
        if let Some(v) = raw.stale_while_revalidate {
            s.stale_while_revalidate = millis("stale-while-revalidate", &v)?;
        }
        if let Some(v) = raw.upstream {
            let u = text("upstream", &v)?;
            if u.trim().is_empty() {
                return Err(bad("upstream: must name an Envoy cluster".into()));
            }
            s.upstream = Some(u.to_owned());
        }
        if let Some(v) = raw.upstream_timeout {
            s.upstream_timeout = millis("upstream-timeout", &v)?;
        }
        if let Some(v) = raw.refresh_tick {
            s.refresh_tick = millis("refresh-tick", &v)?;
        }
        if let Some(v) = raw.key_authority {
            s.key_authority = v
                .as_bool()
                .ok_or_else(|| bad(format!("key-authority: expected true or false, got {v}")))?;
        }
        if let Some(v) = raw.max_key {
            let n = v
                .as_u64()
                .ok_or_else(|| bad(format!("max-key: expected a number of bytes, got {v}")))?;
            s.max_key = usize::try_from(n).map_err(|_| bad("max-key: too large".into()))?;
        }
        s.shared_data = match raw.shared_data {
            None | Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => Some(SharedData::default()),
            Some(Value::Object(table)) => {
                let mut d = SharedData::default();
                for (k, v) in &table {
                    match k.as_str() {
                        "prefix" => d.prefix = text("shared-data.prefix", v)?.to_owned(),
                        "max-entry" => d.max_entry = size("shared-data.max-entry", v)?,
                        other => {
                            return Err(bad(format!(
                                "shared-data: unknown key `{other}` (expected prefix or max-entry)"
                            )));
                        }
                    }
                }
                Some(d)
            }
            Some(v) => {
                return Err(bad(format!(
                    "shared-data: expected true, false or an object, got {v}"
                )));
            }
        };
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(Error::InvalidConfig(why.into()));
        if self.capacity == 0 {
            return bad("capacity: must be positive");
        }
        if self.max_body == 0 || self.max_body > self.capacity {
            return bad("max-body: must be positive and at most capacity");
        }
        if self.upstream_timeout == 0 || self.upstream_timeout > u64::from(u32::MAX) {
            return bad("upstream-timeout: must be between 1 ms and about 49 days");
        }
        if self.refresh_tick == 0 || self.refresh_tick > u64::from(u32::MAX) {
            return bad("refresh-tick: must be between 1 ms and about 49 days");
        }
        if self.max_key == 0 {
            return bad("max-key: must be positive");
        }
        if self.shared_data.as_ref().is_some_and(|d| d.max_entry == 0) {
            return bad("shared-data.max-entry: must be positive");
        }
        Ok(())
    }

    /// The refresh tick as a `Duration`.
    pub fn refresh_tick(&self) -> Duration {
        Duration::from_millis(self.refresh_tick)
    }
}

fn bad(why: String) -> Error {
    Error::InvalidConfig(why)
}

fn text<'v>(key: &str, v: &'v Value) -> Result<&'v str> {
    v.as_str()
        .ok_or_else(|| bad(format!("{key}: expected a string, got {v}")))
}

impl Default for SharedData {
    fn default() -> Self {
        SharedData {
            prefix: "daramjwee:".into(),
            max_entry: 64 << 10,
        }
    }
}

fn millis(key: &str, v: &Value) -> Result<u64> {
    if let Some(ms) = v.as_u64() {
        return Ok(ms);
    }
    let Some(text) = v.as_str() else {
        return Err(bad(format!(
            "{key}: expected milliseconds or a duration such as \"30s\", got {v}"
        )));
    };
    let text = text.trim();
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let d = humantime::parse_duration(text)
        .map_err(|e| bad(format!("{key}: `{text}` is not a duration ({e})")))?;
    u64::try_from(d.as_millis()).map_err(|_| bad(format!("{key}: `{text}` is too long")))
}

fn size(key: &str, v: &Value) -> Result<u64> {
    if let Some(n) = v.as_u64() {
        return Ok(n);
    }
    let Some(text) = v.as_str() else {
        return Err(bad(format!(
            "{key}: expected bytes or a size such as \"64MiB\", got {v}"
        )));
    };
    let not_a_size = || bad(format!("{key}: `{text}` is not a size"));
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| not_a_size())?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(not_a_size()),
    };
    n.checked_mul(factor).ok_or_else(not_a_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        Settings::from_json(json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn empty_configuration_gives_defaults() {
        assert_eq!(Settings::from_json(b"").unwrap(), Settings::default());
        assert_eq!(Settings::from_json(b" \n").unwrap(), Settings::default());
        assert_eq!(Settings::from_json(b"{}").unwrap(), Settings::default());
    }

    #[test]
    fn every_key_is_read() {
        let s = Settings::from_json(
            br#"{"capacity": "8MiB", "policy": "sieve", "max-body": 4096,
                "fresh-for": "2m", "negative-fresh-for": 1500,
                "stale-while-revalidate": "30s", "upstream": "origin",
                "upstream-timeout": "2s", "refresh-tick": "250ms",
                "key-authority": false, "max-key": 512,
                "shared-data": {"prefix": "c:", "max-entry": "32KiB"}}"#,
        )
        .unwrap();
        assert_eq!(
            s,
            Settings {
                capacity: 8 << 20,
                policy: PolicyKind::Sieve,
                max_body: 4096,
                fresh_for: 120_000,
                negative_fresh_for: 1500,
                stale_while_revalidate: 30_000,
                upstream: Some("origin".into()),
                upstream_timeout: 2_000,
                refresh_tick: 250,
                key_authority: false,
                max_key: 512,
                shared_data: Some(SharedData {
                    prefix: "c:".into(),
                    max_entry: 32 << 10,
                }),
            }
        );
        let on = Settings::from_json(br#"{"shared-data": true}"#).unwrap();
        assert_eq!(on.shared_data, Some(SharedData::default()));
        let off = Settings::from_json(br#"{"shared-data": false}"#).unwrap();
        assert_eq!(off.shared_data, None);
    }

    #[test]
    fn sizes_take_decimal_and_binary_units() {
        let cap = |t: &str| {
            Settings::from_json(format!(r#"{{"capacity": "{t}", "max-body": 1}}"#).as_bytes())
                .map(|s| s.capacity)
        };
        assert_eq!(cap("10"), Ok(10));
        assert_eq!(cap("1 KB"), Ok(1000));
        assert_eq!(cap("2KiB"), Ok(2048));
        assert_eq!(cap("3mb"), Ok(3_000_000));
        assert_eq!(cap("1GiB"), Ok(1 << 30));
        assert!(cap("12 parsecs").is_err());
        assert!(cap("99999999999999GiB").is_err());
    }

    #[test]
    fn bad_configuration_names_the_key() {
        assert_eq!(
            err(r#"{"policy": "lfu"}"#),
            "invalid plugin configuration: policy: eviction policy `lfu` is unknown \
             (expected lru, s3fifo or sieve)"
        );
        assert!(err(r#"{"capacity": 0}"#).contains("capacity"));
        assert!(err(r#"{"capacity": 10, "max-body": 11}"#).contains("max-body"));
        assert!(err(r#"{"fresh-for": "soon"}"#).contains("fresh-for"));
        assert!(err(r#"{"fresh_for": "1s"}"#).contains("fresh_for"));
        assert!(err(r#"{"upstream": " "}"#).contains("upstream"));
        assert!(err(r#"{"refresh-tick": 0}"#).contains("refresh-tick"));
        assert!(err(r#"{"shared-data": {"max-entry": 0}}"#).contains("max-entry"));
        assert!(err(r#"{"shared-data": {"bogus": 1}}"#).contains("shared-data"));
        assert!(err("not json").contains("invalid plugin configuration"));
        assert!(err(r#"{"capacity": -1}"#).contains("capacity"));
        assert!(err("\u{0}\u{ff}").contains("invalid"));
        assert!(err(r#"{"policy": 3}"#).contains("policy: expected a string"));
        assert!(err(r#"{"key-authority": "yes"}"#).contains("key-authority"));
        assert!(err(r#"{"max-key": -3}"#).contains("max-key"));
        assert!(err(r#"{"shared-data": 1}"#).contains("shared-data"));
        assert!(err(r#"{"shared-data": {"prefix": 1}}"#).contains("shared-data.prefix"));
    }

    #[test]
    fn the_shipped_envoy_configuration_is_valid() {
        let yaml = include_str!("../envoy.yaml");
        let start = yaml.find("value: |").expect("a configuration block");
        let indent = yaml[..start].rsplit('\n').next().unwrap_or_default().len();
        let json: String = yaml[start..]
            .lines()
            .skip(1)
            .take_while(|l| l.len() - l.trim_start().len() > indent)
            .collect();
        let s = Settings::from_json(json.as_bytes()).unwrap();
        assert_eq!(s.upstream.as_deref(), Some("origin"));
        assert_eq!(s.capacity, 256 << 20);
        assert!(s.shared_data.is_some());
    }
}
