//! The middleware's settings, read by name from whatever the home offers
//! (environment variables, Spin variables), checked once, with errors that
//! name the setting.

use std::time::Duration;

use daramjwee_component::Config;
use wasip3::http::types::Scheme;

/// Where the origin is: requests for `key` go to
/// `scheme://authority` + `path` + `key`.
#[derive(Clone, Debug)]
pub struct OriginUrl {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host and port.
    pub authority: String,
    /// Path prefix without a trailing slash (may be empty).
    pub path: String,
}

impl OriginUrl {
    /// Parse `http[s]://host[:port][/prefix]`.
    pub fn parse(text: &str) -> Result<OriginUrl, String> {
        let bad = |why: &str| Err(format!("origin: {text:?} {why}"));
        let (scheme, rest) = match text.split_once("://") {
            Some(("http", rest)) => (Scheme::Http, rest),
            Some(("https", rest)) => (Scheme::Https, rest),
            Some(_) => return bad("must start with http:// or https://"),
            None => return bad("is not a URL (expected http://host[:port][/prefix])"),
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return bad("has no host");
        }
        if authority.contains(['@', '?', '#', ' ']) || path.contains(['?', '#']) {
            return bad("must be a plain base URL, without user, query or fragment");
        }
        Ok(OriginUrl {
            scheme,
            authority: authority.to_owned(),
            path: path.trim_end_matches('/').to_owned(),
        })
    }

    /// The URL of `key`, for messages.
    pub fn target(&self, key: &str) -> String {
        let scheme = match &self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Other(s) => s,
        };
        format!("{scheme}://{}{}{key}", self.authority, self.path)
    }
}

/// Everything the middleware is configured with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The origin (`origin`, required).
    pub origin: OriginUrl,
    /// The engine's configuration: `fresh_for`, `negative_fresh_for`,
    /// `stale_if_error`.
    pub engine: Config,
    /// Connect and first-byte timeout of origin requests
    /// (`origin_timeout`, default 10s).
    pub origin_timeout: Duration,
}

impl Settings {
    /// Names every setting can have, for homes that must declare them.
    pub const NAMES: [&str; 5] = [
        "origin",
        "fresh_for",
        "negative_fresh_for",
        "stale_if_error",
        "origin_timeout",
    ];

    /// Read the settings through `get`, which answers a setting's name
    /// (from [`Settings::NAMES`]) with its value, `None` when unset.
    /// Durations are written like `150ms`, `30s`, `5m`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
        let origin = get("origin")
            .filter(|v| !v.trim().is_empty())
            .ok_or("origin: not set (the base URL of the origin, e.g. http://127.0.0.1:8080)")?;
        let duration = |name: &str, default: Duration| -> Result<Duration, String> {
            match get(name) {
                None => Ok(default),
                Some(text) => humantime::parse_duration(text.trim())
                    .map_err(|e| format!("{name}: {text:?} is not a duration like 30s: {e}")),
            }
        };
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        // Nothing is reused beyond what the origin's fields and the RFC's
        // heuristics allow unless the operator says so, as in `serve`.
        let engine = Config {
            fresh_for: ms(duration("fresh_for", Duration::ZERO)?),
            negative_fresh_for: ms(duration("negative_fresh_for", Duration::ZERO)?),
            stale_if_error: ms(duration("stale_if_error", Duration::ZERO)?),
            ..Config::default()
        };
        let origin_timeout = duration("origin_timeout", Duration::from_secs(10))?;
        if origin_timeout.is_zero() {
            return Err("origin_timeout: must be positive".into());
        }
        Ok(Settings {
            origin: OriginUrl::parse(origin.trim())?,
            engine,
            origin_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn settings_are_read_with_defaults() {
        let s = Settings::from_lookup(lookup(&[
            ("origin", "http://127.0.0.1:9000/api/"),
            ("fresh_for", "5s"),
        ]))
        .expect("valid");
        assert_eq!(s.origin.authority, "127.0.0.1:9000");
        assert_eq!(s.origin.path, "/api");
        assert_eq!(s.origin.target("/x?y"), "http://127.0.0.1:9000/api/x?y");
        assert_eq!(s.engine.fresh_for, 5000);
        // Nothing kept beyond what the origin allows unless asked.
        assert_eq!(s.engine.negative_fresh_for, 0);
        let unset = Settings::from_lookup(lookup(&[("origin", "http://o")])).expect("valid");
        assert_eq!(
            (unset.engine.fresh_for, unset.engine.negative_fresh_for),
            (0, 0)
        );
        assert_eq!(s.origin_timeout, Duration::from_secs(10));
    }

    #[test]
    fn bad_settings_name_the_setting() {
        let err = |pairs: &[(&str, &str)]| Settings::from_lookup(lookup(pairs)).unwrap_err();
        assert!(err(&[]).starts_with("origin:"));
        assert!(err(&[("origin", "ftp://x")]).starts_with("origin:"));
        assert!(err(&[("origin", "http://")]).starts_with("origin:"));
        assert!(err(&[("origin", "http://a?b")]).starts_with("origin:"));
        assert!(err(&[("origin", "http://a"), ("fresh_for", "soon")]).starts_with("fresh_for:"));
        assert!(
            err(&[("origin", "http://a"), ("origin_timeout", "0s")]).starts_with("origin_timeout:")
        );
    }
}
