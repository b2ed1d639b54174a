//! The settings of `daramjwee serve`: flags, a TOML file, and how the two
//! combine (flags win).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::{Error, Result};

/// Where `serve` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Everything `serve` needs, with every default filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeConfig {
    /// Address of the proxy. Port 0 picks a free one.
    pub listen: SocketAddr,
    /// Base URL of the origin; `None` starts the built-in demo origin.
    pub origin: Option<String>,
    /// Tier specs, tier 0 first.
    pub tiers: Vec<String>,
    /// Lifetime of responses that state none and get no heuristic one
    /// (nginx `proxy_cache_valid`). Zero: they are not reused without
    /// revalidation.
    pub fresh_for: Duration,
    /// Freshness of negative (404/410) entries.
    pub negative_fresh_for: Duration,
    /// How far past its freshness an entry may be served when the origin
    /// fails. Zero turns it off.
    pub stale_if_error: Duration,
    /// How far past its freshness a response without its own
    /// `stale-while-revalidate` may be served while it is revalidated in
    /// the background. Zero turns it off.
    pub stale_while_revalidate: Duration,
    /// Address of the admin API (`PUT` and `DELETE` of entries); none by
    /// default.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token that allows the admin API; without one it refuses
    /// every write.
    pub admin_token: Option<String>,
    /// Address of the Prometheus `/metrics` and `/healthz` listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Bound on the origin's answer (status and headers).
    pub origin_timeout: Duration,
    /// How long a client has to send a request's head, counted from when
    /// the connection starts waiting for one: it also ends a keep-alive
    /// connection idle that long.
    pub header_timeout: Duration,
    /// Connections served at once per listener; more wait in the listen
    /// backlog until one ends.
    pub max_connections: usize,
    /// Largest request head (request line and fields) accepted, in bytes;
    /// a larger one is answered 431.
    pub max_header_size: usize,
    /// Most fields a request head may have; more are answered 431.
    pub max_headers: usize,
    /// Requests at the origin at once (each holds a connection until its
    /// answer's body ends); more wait up to `origin_timeout`, then 504.
    pub max_origin_connections: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: DEFAULT_LISTEN.parse().expect("a valid address"),
            origin: None,
            tiers: default_tiers(),
            fresh_for: Duration::ZERO,
            negative_fresh_for: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            admin_listen: None,
            admin_token: None,
            metrics_listen: None,
            origin_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_header_size: 32 << 10,
            max_headers: 100,
            max_origin_connections: 1024,
        }
    }
}

impl ServeConfig {
    /// The connection limits are usable: each positive, and a head large
    /// enough for a request line and a few fields.
    pub fn check_limits(&self) -> Result<()> {
        let bad = |why: &str| Err(Error::InvalidConfig(why.into()));
        if self.header_timeout.is_zero() {
            return bad("header-timeout: must be positive");
        }
        if self.max_connections == 0 {
            return bad("max-connections: must be positive");
        }
        if self.max_header_size < 1024 {
            return bad("max-header-size: must be at least 1KiB");
        }
        if self.max_headers == 0 {
            return bad("max-headers: must be positive");
        }
        if self.max_origin_connections == 0 {
            return bad("max-origin-connections: must be positive");
        }
        Ok(())
    }
}

/// A memory tier over a file tier under `./daramjwee-cache`.
pub fn default_tiers() -> Vec<String> {
    vec![
        "mem:256MiB:s3fifo".into(),
        "file:./daramjwee-cache:1GiB:s3fifo".into(),
    ]
}

/// The TOML file: the same settings as the flags, every one optional.
///
/// ```toml
/// listen = "127.0.0.1:8080"
/// origin = "http://127.0.0.1:9000"
/// tiers = ["mem:256MiB:s3fifo", "file:/var/cache/daramjwee:10GiB"]
/// fresh-for = "5m"
/// negative-fresh-for = "30s"
/// stale-if-error = "1h"
/// stale-while-revalidate = "30s"
/// admin-listen = "127.0.0.1:8081"
/// admin-token = "secret"
/// metrics-listen = "127.0.0.1:9090"
/// origin-timeout = "10s"
/// header-timeout = "30s"
/// max-connections = 4096
/// max-header-size = "32KiB"
/// max-headers = 100
/// max-origin-connections = 1024
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    listen: Option<String>,
    origin: Option<String>,
    tiers: Option<Vec<String>>,
    fresh_for: Option<String>,
    negative_fresh_for: Option<String>,
    stale_if_error: Option<String>,
    stale_while_revalidate: Option<String>,
    admin_listen: Option<String>,
    admin_token: Option<String>,
    metrics_listen: Option<String>,
    origin_timeout: Option<String>,
    header_timeout: Option<String>,
    max_connections: Option<usize>,
    max_header_size: Option<String>,
    max_headers: Option<usize>,
    max_origin_connections: Option<usize>,
}

/// The flags of `daramjwee serve`. Each overrides the same setting of
/// `--config`.
#[derive(Clone, Debug, Default, clap::Args)]
#[command(after_long_help = SERVE_HELP)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below (keys as the flags
    /// without `--`, `tiers` as a list); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on. Default: 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Base URL of the origin; a request for /p?q is fetched from
    /// ORIGIN/p?q. Default: a built-in demo origin on another loopback
    /// port.
    #[arg(long, value_name = "URL")]
    pub origin: Option<String>,
    /// A tier, fastest first; repeat for more. `mem[:SIZE[:POLICY]]`,
    /// `file:DIR[:SIZE[:POLICY]]` or an object-store URL such as
    /// `s3://bucket/prefix`. Default: `mem:256MiB:s3fifo` then
    /// `file:./daramjwee-cache:1GiB:s3fifo`.
    #[arg(long = "tier", value_name = "SPEC")]
    pub tiers: Vec<String>,
    /// Lifetime of responses that state none (no Cache-Control max-age or
    /// s-maxage, no Expires, no Last-Modified for a heuristic one), like
    /// nginx `proxy_cache_valid`, e.g. `30s`, `5m`. Default: 0 (such a
    /// response is revalidated before every reuse, as RFC 9111 asks).
    #[arg(long, value_name = "DUR")]
    pub fresh_for: Option<String>,
    /// Freshness of cached 404/410 answers. Default: 0 (not reused).
    #[arg(long, value_name = "DUR")]
    pub negative_fresh_for: Option<String>,
    /// When the origin fails (5xx, reset, timeout), serve an expired copy
    /// at most this far past its freshness instead of a 502. Default: 0
    /// (off).
    #[arg(long, value_name = "DUR")]
    pub stale_if_error: Option<String>,
    /// Serve a response this far past its freshness while it is
    /// revalidated in the background, when the origin did not say (its own
    /// stale-while-revalidate wins; must-revalidate, no-cache and s-maxage
    /// forbid it), like nginx `proxy_cache_use_stale updating`. Default: 0
    /// (off).
    #[arg(long, value_name = "DUR")]
    pub stale_while_revalidate: Option<String>,
    /// Address of the admin API: PUT and DELETE of entries. Default: none
    /// (off).
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Bearer token the admin API requires. Without it the API answers
    /// 403 to every request.
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<String>,
    /// Address for Prometheus `/metrics` and `/healthz`. Default: none.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Bound on the origin's answer (status and headers). Default: 10s.
    #[arg(long, value_name = "DUR")]
    pub origin_timeout: Option<String>,
    /// Time a client has to send a request's head, counted from when the
    /// connection waits for one (so it also closes a keep-alive connection
    /// idle that long). Default: 30s.
    #[arg(long, value_name = "DUR")]
    pub header_timeout: Option<String>,
    /// Connections served at once on each listener; more wait in the
    /// listen backlog until one ends. Default: 4096.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Largest request head (request line and fields); larger ones are
    /// answered 431. Default: 32KiB.
    #[arg(long, value_name = "SIZE")]
    pub max_header_size: Option<String>,
    /// Most fields in a request head; more are answered 431. Default: 100.
    #[arg(long, value_name = "N")]
    pub max_headers: Option<usize>,
    /// Requests at the origin at once (each holds a connection until its
    /// answer's body ends); more wait up to --origin-timeout, then 504.
    /// Default: 1024.
    #[arg(long, value_name = "N")]
    pub max_origin_connections: Option<usize>,
}

const SERVE_HELP: &str = "\
Requests on --listen:
  GET/HEAD /path?query   served from the cache, or fetched from ORIGIN/path?query
  any other method       passed to the origin as it came, body streamed; a
                         success invalidates the stored GET of the same target
Requests on --admin-listen (Authorization: Bearer TOKEN):
  PUT /path?query        store the request body, with its Content-Type, ETag,
                         Cache-Control, Expires ... as the stored response fields
  DELETE /path?query     remove from every tier

Responses are stored and reused as RFC 9111 allows a shared cache:
CDN-Cache-Control, then Cache-Control (s-maxage, max-age, no-store, private,
no-cache, must-revalidate, must-understand, stale-while-revalidate,
stale-if-error), Expires against Date, Age, and a heuristic lifetime from
Last-Modified; any status with a lifetime is kept with its end-to-end fields
(not Set-Cookie), and the variants of a response with Vary side by side.
Without any of these a response is not reused unless --fresh-for says so.
Requests are answered as their Cache-Control (no-cache, max-age, min-fresh,
max-stale, only-if-cached), Pragma, If-None-Match and If-Modified-Since ask.
Requests with Authorization and statuses the rules do not keep pass through
as they came; an origin that cannot be reached or does not answer in time is
a 502 or 504. Every response carries Cache-Status (RFC 9211) and Age.

Durations: 150ms, 30s, 5m, 1h, 2days ... Sizes: 512KiB, 256MiB, 10GiB, 1GB ...
Policies: lru, s3fifo, sieve.";

impl ServeArgs {
    /// Combine the defaults, the `--config` file and the flags.
    pub fn into_config(self) -> Result<ServeConfig> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::InvalidConfig(format!("config: cannot read {}: {e}", path.display()))
                })?;
                parse_file(&text)
                    .map_err(|e| Error::InvalidConfig(format!("config: {}: {e}", path.display())))?
            }
            None => FileConfig::default(),
        };
        let mut config = ServeConfig::default();
        let pick = |flag: Option<String>, file: Option<String>| flag.or(file);
        if let Some(listen) = pick(self.listen, file.listen) {
            config.listen = address("listen", &listen)?;
        }
        config.origin = pick(self.origin, file.origin);
        if let Some(origin) = &config.origin {
            check_origin(origin)?;
        }
        if !self.tiers.is_empty() {
            config.tiers = self.tiers;
        } else if let Some(tiers) = file.tiers {
            config.tiers = tiers;
        }
        if config.tiers.is_empty() {
            return Err(Error::InvalidConfig(
                "tier: at least one tier is required".into(),
            ));
        }
        if let Some(d) = pick(self.fresh_for, file.fresh_for) {
            config.fresh_for = duration("fresh-for", &d)?;
        }
        if let Some(d) = pick(self.negative_fresh_for, file.negative_fresh_for) {
            config.negative_fresh_for = duration("negative-fresh-for", &d)?;
        }
        if let Some(d) = pick(self.stale_if_error, file.stale_if_error) {
            config.stale_if_error = duration("stale-if-error", &d)?;
        }
        if let Some(d) = pick(self.stale_while_revalidate, file.stale_while_revalidate) {
            config.stale_while_revalidate = duration("stale-while-revalidate", &d)?;
        }
        if let Some(addr) = pick(self.admin_listen, file.admin_listen) {
            config.admin_listen = Some(address("admin-listen", &addr)?);
        }
        if let Some(d) = pick(self.origin_timeout, file.origin_timeout) {
            config.origin_timeout = duration("origin-timeout", &d)?;
            if config.origin_timeout.is_zero() {
                return Err(Error::InvalidConfig(
                    "origin-timeout: must be positive".into(),
                ));
            }
        }
        config.admin_token = pick(self.admin_token, file.admin_token);
        if config.admin_token.as_deref() == Some("") {
            return Err(Error::InvalidConfig(
                "admin-token: must not be empty".into(),
            ));
        }
        if let Some(addr) = pick(self.metrics_listen, file.metrics_listen) {
            config.metrics_listen = Some(address("metrics-listen", &addr)?);
        }
        if let Some(d) = pick(self.header_timeout, file.header_timeout) {
            config.header_timeout = duration("header-timeout", &d)?;
        }
        if let Some(n) = self.max_connections.or(file.max_connections) {
            config.max_connections = n;
        }
        if let Some(size) = pick(self.max_header_size, file.max_header_size) {
            let bytes = crate::parse_size(&size)
                .map_err(|e| Error::InvalidConfig(format!("max-header-size: {e}")))?;
            config.max_header_size = usize::try_from(bytes).unwrap_or(usize::MAX);
        }
        if let Some(n) = self.max_headers.or(file.max_headers) {
            config.max_headers = n;
        }
        if let Some(n) = self.max_origin_connections.or(file.max_origin_connections) {
            config.max_origin_connections = n;
        }
        config.check_limits()?;
        Ok(config)
    }
}

fn parse_file(text: &str) -> std::result::Result<FileConfig, toml::de::Error> {
    toml::from_str(text)
}

/// Parse a duration such as `150ms`, `30s`, `5m`; a bare `0` is zero.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text).map_err(|e| format!("`{text}` is not a duration ({e})"))
}

fn duration(option: &str, text: &str) -> Result<Duration> {
    parse_duration(text).map_err(|e| Error::InvalidConfig(format!("{option}: {e}")))
}

fn address(option: &str, text: &str) -> Result<SocketAddr> {
    text.parse().map_err(|e| {
        Error::InvalidConfig(format!(
            "{option}: `{text}` is not an address such as 127.0.0.1:8080 ({e})"
        ))
    })
}

fn check_origin(origin: &str) -> Result<()> {
    let url = url::Url::parse(origin)
        .map_err(|e| Error::InvalidConfig(format!("origin: `{origin}` is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::InvalidConfig(format!(
            "origin: `{origin}` must be an http or https URL"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::InvalidConfig(format!(
            "origin: `{origin}` must not have a query or fragment"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejects(args: ServeArgs, option: &str) {
        match args.into_config() {
            Err(Error::InvalidConfig(why)) => assert!(why.starts_with(option), "{why}"),
            other => panic!("expected an error naming {option}, got {other:?}"),
        }
    }

    #[test]
    fn defaults_listen_on_loopback_8080_with_memory_and_file_tiers() {
        let config = ServeArgs::default().into_config().unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.tiers.len(), 2);
        assert!(config.tiers[0].starts_with("mem"));
        assert!(config.tiers[1].starts_with("file:./daramjwee-cache"));
        assert_eq!(config.origin, None);
        assert_eq!(config.stale_if_error, Duration::ZERO);
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.toml");
        std::fs::write(
            &path,
            r#"
listen = "127.0.0.1:9001"
origin = "http://example.test:81"
tiers = ["mem:1MiB:lru", "file:/tmp/x"]
fresh-for = "5m"
negative-fresh-for = "150ms"
stale-if-error = "1h"
admin-token = "from-file"
metrics-listen = "127.0.0.1:9002"
"#,
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            listen: Some("127.0.0.1:7000".into()),
            tiers: vec!["mem".into()],
            fresh_for: Some("30s".into()),
            ..ServeArgs::default()
        };
        let config = args.into_config().unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(config.origin.as_deref(), Some("http://example.test:81"));
        assert_eq!(config.tiers, vec!["mem".to_owned()]);
        assert_eq!(config.fresh_for, Duration::from_secs(30));
        assert_eq!(config.negative_fresh_for, Duration::from_millis(150));
        assert_eq!(config.stale_if_error, Duration::from_secs(3600));
        assert_eq!(config.admin_token.as_deref(), Some("from-file"));
        assert_eq!(
            config.metrics_listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9002")
        );
    }

    #[test]
    fn bad_values_name_their_option() {
        let with = |f: fn(&mut ServeArgs)| {
            let mut args = ServeArgs::default();
            f(&mut args);
            args
        };
        rejects(with(|a| a.fresh_for = Some("soon".into())), "fresh-for");
        rejects(
            with(|a| a.stale_if_error = Some("5 parsecs".into())),
            "stale-if-error",
        );
        rejects(with(|a| a.listen = Some("localhost".into())), "listen");
        rejects(with(|a| a.origin = Some("ftp://x".into())), "origin");
        rejects(with(|a| a.origin = Some("not a url".into())), "origin");
        rejects(with(|a| a.admin_token = Some(String::new())), "admin-token");
        rejects(
            with(|a| a.origin_timeout = Some("0s".into())),
            "origin-timeout",
        );
        rejects(
            with(|a| a.header_timeout = Some("0s".into())),
            "header-timeout",
        );
        rejects(with(|a| a.max_connections = Some(0)), "max-connections");
        rejects(
            with(|a| a.max_header_size = Some("100".into())),
            "max-header-size",
        );
        rejects(
            with(|a| a.max_header_size = Some("lots".into())),
            "max-header-size",
        );
        rejects(with(|a| a.max_headers = Some(0)), "max-headers");
        rejects(
            with(|a| a.max_origin_connections = Some(0)),
            "max-origin-connections",
        );
        let limits = with(|a| {
            a.header_timeout = Some("5s".into());
            a.max_connections = Some(10);
            a.max_header_size = Some("8KiB".into());
            a.max_headers = Some(50);
        })
        .into_config()
        .unwrap();
        assert_eq!(
            (
                limits.header_timeout,
                limits.max_connections,
                limits.max_header_size,
                limits.max_headers
            ),
            (Duration::from_secs(5), 10, 8 << 10, 50)
        );
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:1\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        };
        rejects(args, "config");
    }
}
