//! What a shared cache may do with a response (RFC 9111, with RFC 9213's
//! `CDN-Cache-Control`): read its directives, dates and `Age`, decide
//! whether it may be stored, how long it is fresh, how long it may be
//! served stale, and which of its header fields are kept and handed to
//! other clients. Plain text in, plain values out: every home converts its
//! own HTTP library's header map to [`Fields`] and calls these.

use crate::{Conditions, Metadata};

/// Header fields as text, in the order received: names in any case, one
/// pair per field line. A value that is not UTF-8 is left out by the
/// caller (a rule never reads it).
pub type Fields = [(String, String)];

/// The largest delta-seconds a cache represents (RFC 9111 §1.2.2): a
/// larger value, or one whose arithmetic overflows, counts as this.
pub const DELTA_MAX: u64 = 2_147_483_648;

/// Every value of field `name` (case-insensitive), each field line split
/// at commas outside quoted strings, trimmed, empty members dropped.
pub fn list<'a>(fields: &'a Fields, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    fields
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| split_list(v))
}

/// The first value of field `name`, trimmed.
pub fn first<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// Split a list-valued field at commas outside quoted strings.
fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts.into_iter().map(str::trim).filter(|p| !p.is_empty())
}

/// A delta-seconds directive's value as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delta {
    /// Seconds (at most [`DELTA_MAX`]).
    Secs(u64),
    /// Present but not a delta-seconds (`max-age=-1`, `max-age=1.5`,
    /// `max-age`): the response is treated as stale, as RFC 9111 §4.2.1
    /// encourages.
    Invalid,
}

impl Delta {
    fn parse(value: Option<&str>) -> Delta {
        let Some(value) = value else {
            return Delta::Invalid;
        };
        // The quoted form is not to be sent, but recipients accept it.
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Delta::Invalid;
        }
        Delta::Secs(value.parse::<u64>().map_or(DELTA_MAX, |v| v.min(DELTA_MAX)))
    }

    /// Seconds, an invalid value counting as 0.
    pub fn secs(self) -> u64 {
        match self {
            Delta::Secs(s) => s,
            Delta::Invalid => 0,
        }
    }
}

/// The directives of one `Cache-Control` (or targeted) field, request or
/// response. A directive given twice counts by its first occurrence
/// (RFC 9111 §4.2.1); unknown directives are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` without field names: revalidate before every reuse.
    pub no_cache: bool,
    /// `no-cache="a, b"`: those fields are not sent on reuse without
    /// revalidation (lower case).
    pub no_cache_fields: Vec<String>,
    /// `private` without field names: a shared cache stores nothing.
    pub private: bool,
    /// `private="a, b"`: those fields are not stored (lower case).
    pub private_fields: Vec<String>,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `max-age`.
    pub max_age: Option<Delta>,
    /// `s-maxage`.
    pub s_maxage: Option<Delta>,
    /// `stale-while-revalidate` (RFC 5861).
    pub stale_while_revalidate: Option<Delta>,
    /// `stale-if-error` (RFC 5861).
    pub stale_if_error: Option<Delta>,
    /// `max-stale` (request): `Some(None)` for any staleness.
    pub max_stale: Option<Option<Delta>>,
    /// `min-fresh` (request).
    pub min_fresh: Option<Delta>,
    /// `only-if-cached` (request).
    pub only_if_cached: bool,
    /// `must-understand`: stored only when the status is understood, and
    /// then whatever `no-store` says.
    pub must_understand: bool,
    /// At least one directive was read.
    pub present: bool,
}

impl Directives {
    /// Read every value of field `name` in `fields`.
    pub fn read(fields: &Fields, name: &str) -> Directives {
        Directives::parse(list(fields, name))
    }

    /// Read directives from list members (`max-age=60`, `no-cache="a"`).
    pub fn parse<'a>(members: impl IntoIterator<Item = &'a str>) -> Directives {
        let mut d = Directives::default();
        let mut seen: Vec<String> = Vec::new();
        for member in members {
            // `name=value` has no white space around `=`: `max-age = 5`
            // is not a `max-age` (its value reads as invalid).
            let (name, value) = match member.split_once('=') {
                Some((name, value))
                    if name.ends_with(char::is_whitespace)
                        || value.starts_with(char::is_whitespace) =>
                {
                    (name.trim(), Some(""))
                }
                Some((name, value)) => (name.trim(), Some(value.trim_end())),
                None => (member.trim(), None),
            };
            let name = name.to_ascii_lowercase();
            if name.is_empty() {
                continue;
            }
            d.present = true;
            if seen.contains(&name) {
                continue;
            }
            seen.push(name.clone());
            let fields = || {
                let value = value.unwrap_or_default();
                let value = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value);
                value
                    .split(',')
                    .map(|f| f.trim().to_ascii_lowercase())
                    .filter(|f| !f.is_empty())
                    .collect::<Vec<_>>()
            };
            match name.as_str() {
                "no-store" => d.no_store = true,
                "no-cache" => match value {
                    None => d.no_cache = true,
                    Some(_) => d.no_cache_fields = fields(),
                },
                "private" => match value {
                    None => d.private = true,
                    Some(_) => d.private_fields = fields(),
                },
                "public" => d.public = true,
                "must-revalidate" => d.must_revalidate = true,
                "proxy-revalidate" => d.proxy_revalidate = true,
                "max-age" => d.max_age = Some(Delta::parse(value)),
                "s-maxage" => d.s_maxage = Some(Delta::parse(value)),
                "stale-while-revalidate" => d.stale_while_revalidate = Some(Delta::parse(value)),
                "stale-if-error" => d.stale_if_error = Some(Delta::parse(value)),
                "max-stale" => d.max_stale = Some(value.map(|v| Delta::parse(Some(v)))),
                "min-fresh" => d.min_fresh = Some(Delta::parse(value)),
                "only-if-cached" => d.only_if_cached = true,
                "must-understand" => d.must_understand = true,
                _ => {}
            }
        }
        d
    }

    /// The directives of a response for a CDN-like shared cache: its
    /// `CDN-Cache-Control` when that holds any (RFC 9213 §2.2: then
    /// `Cache-Control` is ignored), else its `Cache-Control`.
    pub fn of_response(fields: &Fields) -> Directives {
        let targeted = Directives::read(fields, "cdn-cache-control");
        if targeted.present {
            targeted
        } else {
            Directives::read(fields, "cache-control")
        }
    }

    /// The directives of a request, `Pragma: no-cache` counting as
    /// `Cache-Control: no-cache` when the request has no `Cache-Control`
    /// (RFC 9111 §5.4).
    pub fn of_request(fields: &Fields) -> Directives {
        let mut d = Directives::read(fields, "cache-control");
        if !d.present && list(fields, "pragma").any(|p| p.eq_ignore_ascii_case("no-cache")) {
            d.no_cache = true;
            d.present = true;
        }
        d
    }
}

/// Seconds since the Unix epoch of an HTTP-date (RFC 9110 §5.6.7): the
/// IMF-fixdate, or the obsolete RFC 850 and asctime forms. `None` when it
/// is none of them.
pub fn parse_date(text: &str) -> Option<i64> {
    let text = text.trim();
    let words: Vec<&str> = text.split_ascii_whitespace().collect();
    let (day, month, year, time) = match words.as_slice() {
        // Sun, 06 Nov 1994 08:49:37 GMT
        [wd, d, m, y, t, "GMT"] if wd.ends_with(',') && wd.len() == 4 => {
            (d.parse().ok()?, *m, y.parse::<i64>().ok()?, *t)
        }
        // Sunday, 06-Nov-94 08:49:37 GMT
        [wd, dmy, t, "GMT"] if wd.ends_with(',') => {
            let mut parts = dmy.split('-');
            let d = parts.next()?.parse().ok()?;
            let m = parts.next()?;
            let y: &str = parts.next()?;
            if parts.next().is_some() || y.len() != 2 {
                return None;
            }
            // Two-digit years more than 50 years ahead are in the past.
            let y: i64 = y.parse().ok()?;
            (d, m, if y < 70 { 2000 + y } else { 1900 + y }, *t)
        }
        // Sun Nov  6 08:49:37 1994
        [wd, m, d, t, y] if wd.len() == 3 => (d.parse().ok()?, *m, y.parse().ok()?, *t),
        _ => return None,
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == month)? as i64
        + 1;
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| (p.len() == 2).then(|| p.parse().ok()).flatten().ok_or(()))
        .collect::<Result<_, _>>()
        .ok()?;
    let [h, mi, s] = hms.as_slice() else {
        return None;
    };
    let day: i64 = day;
    if !(1..=31).contains(&day) || *h > 23 || *mi > 59 || *s > 60 || !(1..=9999).contains(&year) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + mi * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The IMF-fixdate of `secs` since the Unix epoch.
pub fn format_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil_from_days
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(m - 1) as usize];
    format!(
        "{weekday}, {d:02} {month} {y:04} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Statuses a cache may give a heuristic lifetime (RFC 9110 §15.1).
pub fn heuristically_cacheable(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Hop-by-hop fields (RFC 9110 §7.6.1), never stored or forwarded:
/// `Connection` and the fields it names, and the fixed set.
pub fn hop_by_hop(fields: &Fields, name: &str) -> bool {
    const FIXED: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "trailer",
        "proxy-authenticate",
        "proxy-authorization",
    ];
    FIXED.iter().any(|f| f.eq_ignore_ascii_case(name))
        || list(fields, "connection").any(|named| named.eq_ignore_ascii_case(name))
}

/// What a cache adds to `Via` (RFC 9110 §7.6.3).
pub const VIA: &str = "1.1 daramjwee";

/// Whether request field `name` of `request` goes to the origin with it:
/// end-to-end fields but `Host` (the origin's URL sets it) and `Via`,
/// `X-Forwarded-For` and `-Proto` (made anew by [`upstream_added`]);
/// for a fill (`fill`), not the client's own conditions and ranges
/// either: a fill wants the whole representation, and the cache answers
/// those.
pub fn sent_upstream(request: &Fields, name: &str, fill: bool) -> bool {
    const MADE: [&str; 4] = ["host", "via", "x-forwarded-for", "x-forwarded-proto"];
    const CLIENTS: [&str; 6] = [
        "if-none-match",
        "if-modified-since",
        "if-match",
        "if-unmodified-since",
        "if-range",
        "range",
    ];
    let made = MADE.iter().any(|m| m.eq_ignore_ascii_case(name));
    let clients = fill && CLIENTS.iter().any(|c| c.eq_ignore_ascii_case(name));
    !(hop_by_hop(request, name) || made || clients)
}

/// The fields a proxy adds to a request it passes on (RFC 9110 §7.6.3,
/// and the de facto `X-Forwarded-*`): `Via` and `X-Forwarded-For` each
/// appended to what came, `X-Forwarded-Proto` of the client's scheme.
pub fn upstream_added(
    request: &Fields,
    client: Option<&str>,
    scheme: &str,
) -> Vec<(String, String)> {
    let joined = |name: &str| {
        let earlier: Vec<&str> = list(request, name).collect();
        (!earlier.is_empty()).then(|| earlier.join(", "))
    };
    let mut added = vec![(
        "via".to_owned(),
        joined("via").map_or(VIA.to_owned(), |e| format!("{e}, {VIA}")),
    )];
    if let Some(client) = client {
        added.push((
            "x-forwarded-for".to_owned(),
            joined("x-forwarded-for").map_or(client.to_owned(), |e| format!("{e}, {client}")),
        ));
    }
    added.push(("x-forwarded-proto".to_owned(), scheme.to_owned()));
    added
}

/// Whether the answer `status` to a request of `method` invalidates the
/// stored responses of its target (and of the same-origin `Location` and
/// `Content-Location` it names): an unsafe method answered with a success
/// or a redirect (RFC 9111 §4.4).
pub fn invalidates(method: &str, status: u16) -> bool {
    let safe = ["GET", "HEAD", "OPTIONS", "TRACE"]
        .iter()
        .any(|m| m.eq_ignore_ascii_case(method));
    !safe && (200..400).contains(&status)
}

/// The cache key (request target, without the origin's path prefix)
/// that `reference`, a response's `Location` or `Content-Location`, names
/// on the origin `scheme://authority` + `prefix` that answered the request
/// for `key`: only the same origin is invalidated (RFC 9111 §4.4).
/// `None` for another origin, and for references with dot segments or
/// outside the prefix, which are left alone rather than guessed at.
pub fn invalidated_target(
    scheme: &str,
    authority: &str,
    prefix: &str,
    key: &str,
    reference: &str,
) -> Option<String> {
    let reference = reference.trim().split('#').next()?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => "",
    };
    let same_authority = |other: &str| {
        let strip = |a: &str| {
            let lower = a.to_ascii_lowercase();
            match lower.strip_suffix(default_port) {
                Some(bare) if !default_port.is_empty() => bare.to_owned(),
                _ => lower,
            }
        };
        strip(other) == strip(authority)
    };
    let after_authority = |rest: &str| -> Option<String> {
        let at = rest.find(['/', '?']).unwrap_or(rest.len());
        let (other, path) = rest.split_at(at);
        if !same_authority(other) {
            return None;
        }
        Some(match path.chars().next() {
            None => "/".to_owned(),
            Some('?') => format!("/{path}"),
            Some(_) => path.to_owned(),
        })
    };
    let path = if let Some((other_scheme, rest)) = reference.split_once("://") {
        if !other_scheme.eq_ignore_ascii_case(scheme) {
            return None;
        }
        after_authority(rest)?
    } else if let Some(rest) = reference.strip_prefix("//") {
        after_authority(rest)?
    } else if reference.starts_with('/') {
        reference.to_owned()
    } else if reference.is_empty() || reference.contains(':') {
        return None;
    } else {
        let full = format!("{prefix}{key}");
        let path = full.split('?').next().unwrap_or_default();
        if reference.starts_with('?') {
            format!("{path}{reference}")
        } else {
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{reference}")
        }
    };
    let segments = path.split('?').next().unwrap_or_default();
    if segments.split('/').any(|s| s == "." || s == "..") {
        return None;
    }
    let target = path.strip_prefix(prefix)?;
    target.starts_with('/').then(|| target.to_owned())
}

/// The operator's choices where the RFC leaves one to the cache.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Lifetime of a response that states none and gets no heuristic one
    /// (nginx `proxy_cache_valid`), in seconds. 0: none.
    pub default_ttl: u64,
    /// How long past its lifetime a response without its own
    /// `stale-while-revalidate` may be served while it is revalidated, in
    /// seconds (nginx `proxy_cache_use_stale updating`). 0: never.
    pub stale_while_revalidate: u64,
    /// The home keeps the variants of a response with `Vary` apart
    /// ([`variant_key`], [`variant_fits`]); without it such responses are
    /// not stored.
    pub variants: bool,
    /// A 404 or 410 that states no lifetime is kept as a negative entry
    /// (the operator set a negative window); else it is passed.
    pub remember_missing: bool,
}

/// Why a response is not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotStored {
    /// The request method is not one whose responses are kept.
    Method,
    /// Not a final status the cache keeps.
    Status,
    /// `no-store`.
    NoStore,
    /// `private` (a shared cache).
    Private,
    /// The request had `Authorization` and the response did not allow
    /// sharing it (`public`, `s-maxage` or `must-revalidate`).
    Authorization,
    /// No freshness, no heuristic, no validator: it could never be reused.
    Useless,
    /// `Vary: *`, or `Vary` in a home that does not keep variants apart:
    /// not stored rather than handed to a client it does not fit.
    Vary,
}

/// What the cache does with a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// `Err` when it is not stored, with the reason.
    pub store: Result<(), NotStored>,
    /// Freshness lifetime in seconds (RFC 9111 §4.2.1).
    pub lifetime: u64,
    /// Its age when received, in seconds (RFC 9111 §4.2.3).
    pub age: u64,
    /// How long past its lifetime it may be served while revalidated.
    pub stale_while_revalidate: u64,
    /// It must be revalidated once stale, never served stale
    /// (`must-revalidate`, `proxy-revalidate`, `no-cache`, `s-maxage`).
    pub must_revalidate: bool,
    /// How long past its lifetime it may be served when the origin fails
    /// (`stale-if-error`); `Some(0)` when it must be revalidated, `None`
    /// when the response says nothing (the operator's choice then).
    pub stale_if_error: Option<u64>,
    /// The lifetime is a heuristic one.
    pub heuristic: bool,
    /// The lifetime is the policy's default: the response stated none and
    /// allowed no heuristic.
    pub defaulted: bool,
}

/// A response as the cache received it.
pub struct Exchange<'a> {
    /// The request's method.
    pub method: &'a str,
    /// The request's fields.
    pub request: &'a Fields,
    /// The response's status.
    pub status: u16,
    /// The response's fields.
    pub response: &'a Fields,
    /// When the request was sent, in seconds since the epoch.
    pub request_time: i64,
    /// When the response arrived, in seconds since the epoch.
    pub response_time: i64,
}

/// Decide whether the response of `x` is stored and for how long it is
/// fresh, as a shared cache (RFC 9111 §3, §4.2).
pub fn decide(x: &Exchange<'_>, policy: &Policy) -> Decision {
    let cc = Directives::of_response(x.response);
    let date = first(x.response, "date").and_then(parse_date);
    let age = current_age(x, date);
    let (lifetime, heuristic, defaulted) = lifetime(x, &cc, date, policy);
    let must_revalidate =
        cc.must_revalidate || cc.proxy_revalidate || cc.no_cache || cc.s_maxage.is_some();
    let stale_while_revalidate = if must_revalidate {
        0
    } else {
        cc.stale_while_revalidate
            .map_or(policy.stale_while_revalidate, Delta::secs)
    };
    let stale_if_error = if must_revalidate {
        Some(0)
    } else {
        cc.stale_if_error.map(Delta::secs)
    };
    let validator = first(x.response, "etag").is_some()
        || first(x.response, "last-modified").is_some_and(|d| parse_date(d).is_some());
    let store = if !matches!(x.method, "GET" | "HEAD") {
        Err(NotStored::Method)
    } else if !matches!(x.status, 200..=599)
        || x.status == 206
        || (cc.must_understand && !understood(x.status))
    {
        Err(NotStored::Status)
    } else if cc.no_store && !(cc.must_understand && understood(x.status)) {
        Err(NotStored::NoStore)
    } else if cc.private {
        Err(NotStored::Private)
    } else if first(x.request, "authorization").is_some()
        && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate)
    {
        Err(NotStored::Authorization)
    } else if !(cc.public
        || cc.max_age.is_some()
        || cc.s_maxage.is_some()
        || first(x.response, "expires").is_some()
        || heuristically_cacheable(x.status))
    {
        Err(NotStored::Status)
    } else if list(x.response, "vary").any(|name| name == "*")
        || (!policy.variants && list(x.response, "vary").next().is_some())
    {
        Err(NotStored::Vary)
    } else if lifetime <= age && !validator && stale_while_revalidate == 0 {
        Err(NotStored::Useless)
    } else {
        Ok(())
    };
    Decision {
        store,
        lifetime,
        age,
        stale_while_revalidate,
        must_revalidate,
        stale_if_error,
        heuristic,
        defaulted,
    }
}

/// Whether every field of a response that a cache would keep reads as
/// text (UTF-8). One that does not is passed as it came and not stored:
/// the stored head is text, and a field must not be stored altered or
/// left out. `Set-Cookie` is never kept, so it does not count.
pub fn kept_fields_are_text<'a>(raw: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> bool {
    raw.into_iter().all(|(name, value)| {
        std::str::from_utf8(value).is_ok()
            || name.eq_ignore_ascii_case("set-cookie")
            || name.eq_ignore_ascii_case("set-cookie2")
    })
}

/// What a fill does with the origin's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// A 404 or 410 stating no lifetime, with a negative window set: kept
    /// as a negative entry for that window.
    Missing,
    /// Served from the fill; stored too when `stored`.
    Body {
        /// The rules allow storing it.
        stored: bool,
    },
    /// Passed to the client as it came, not stored.
    Passed,
}

/// What a fill does with an answer of `status` the rules decided on,
/// `text` when every field it would keep reads as text
/// ([`kept_fields_are_text`]; one that does not passes as it came): a 404
/// or 410 that states no lifetime is remembered as missing when the
/// operator set a negative window (`remember_missing`) and nothing forbids
/// storing it, else passed; any status the rules store is kept with its
/// fields and status; a 200 they do not store is still served; anything
/// else passes as it came.
pub fn fill(status: u16, decision: &Decision, text: bool, remember_missing: bool) -> Fill {
    if !text {
        return Fill::Passed;
    }
    let negative = matches!(status, 404 | 410) && decision.defaulted;
    match decision.store {
        // Its lifetime is the negative window, not the default one that
        // found it useless.
        Ok(()) | Err(NotStored::Useless) if negative && remember_missing => Fill::Missing,
        _ if negative => Fill::Passed,
        Ok(()) => Fill::Body { stored: true },
        Err(_) if status == 200 => Fill::Body { stored: false },
        Err(_) => Fill::Passed,
    }
}

/// A final status whose semantics the cache knows (RFC 9110 §15): a
/// response with `must-understand` and any other is not stored (RFC 9111
/// §5.2.2.3).
pub fn understood(status: u16) -> bool {
    matches!(
        status,
        200..=206 | 300..=305 | 307 | 308 | 400..=417 | 421 | 422 | 426 | 500..=505
    )
}

/// What a request asks of a stored answer (RFC 9111 §5.2.1): its
/// `If-None-Match`; `no-cache` (or `Pragma: no-cache`) and `max-age` as an
/// age bound (0: validate first), `min-fresh`, `max-stale` (no value: any
/// staleness), in ms, from its `cc` ([`Directives::of_request`], which
/// also holds its `only-if-cached`).
pub fn request_conditions(cc: &Directives, request: &Fields) -> Conditions {
    let ms = |d: Delta| d.secs().saturating_mul(1000);
    Conditions {
        if_none_match: first(request, "if-none-match").map(str::to_owned),
        max_age: if cc.no_cache {
            Some(0)
        } else {
            cc.max_age.map(ms)
        },
        min_fresh: cc.min_fresh.map(ms),
        max_stale: cc.max_stale.map(|d| d.map_or(u64::MAX, ms)),
    }
}

/// Whether a stored response answers a request's `If-Modified-Since`
/// with 304 (RFC 9111 §4.3.2, RFC 9110 §13.1.3): the request has no
/// `If-None-Match`, and the stored `Last-Modified` (or, without one, its
/// `Date`) is no later than the date asked about.
pub fn not_modified_since(attributes: &[(String, String)], request: &Fields) -> bool {
    if first(request, "if-none-match").is_some() {
        return false;
    }
    let Some(since) = first(request, "if-modified-since").and_then(parse_date) else {
        return false;
    };
    let stored = |wanted: &str| {
        stored_fields(attributes)
            .find(|(name, _)| *name == wanted)
            .map(|(_, value)| parse_date(value))
    };
    match stored("last-modified").or_else(|| stored("date")) {
        Some(Some(modified)) => modified <= since,
        _ => false,
    }
}

/// Freshness lifetime (RFC 9111 §4.2.1), whether it is heuristic, and
/// whether it is the policy's default.
fn lifetime(
    x: &Exchange<'_>,
    cc: &Directives,
    date: Option<i64>,
    policy: &Policy,
) -> (u64, bool, bool) {
    // `no-cache`: never reused without validation, whatever else it says.
    if cc.no_cache {
        return (0, false, false);
    }
    if let Some(s) = cc.s_maxage {
        return (s.secs(), false, false);
    }
    if let Some(m) = cc.max_age {
        return (m.secs(), false, false);
    }
    let mut expires = x
        .response
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("expires"));
    if let Some((_, value)) = expires.next() {
        // An invalid date, `0` among them, is in the past (§5.3); two
        // `Expires` lines are not to be trusted.
        if expires.next().is_some() {
            return (0, false, false);
        }
        let Some(expires) = parse_date(value) else {
            return (0, false, false);
        };
        let base = date.unwrap_or(x.response_time);
        return (
            expires.saturating_sub(base).clamp(0, DELTA_MAX as i64) as u64,
            false,
            false,
        );
    }
    if heuristically_cacheable(x.status) || cc.public {
        // A tenth of the time since the last change (§4.2.2).
        if let Some(modified) = first(x.response, "last-modified").and_then(parse_date) {
            let base = date.unwrap_or(x.response_time);
            if base > modified {
                return (((base - modified) / 10) as u64, true, false);
            }
        }
    }
    (policy.default_ttl, false, true)
}

/// The response's age when received (RFC 9111 §4.2.3), in seconds.
fn current_age(x: &Exchange<'_>, date: Option<i64>) -> u64 {
    let apparent = date.map_or(0, |d| (x.response_time - d).max(0)) as u64;
    // `Age` is one delta-seconds; of a list, the first member counts (RFC
    // 9111 §5.1). A value that is not delta-seconds, or two `Age` lines,
    // is invalid freshness information: the response counts as stale.
    let mut lines = x
        .response
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("age"));
    let age_value = match (lines.next(), lines.next()) {
        (None, _) => 0,
        (Some(_), Some(_)) => DELTA_MAX,
        (Some((_, value)), None) => {
            let member = value.split(',').next().unwrap_or_default().trim();
            match Delta::parse(Some(member)) {
                Delta::Secs(s) => s,
                Delta::Invalid => DELTA_MAX,
            }
        }
    };
    let delay = (x.response_time - x.request_time).max(0) as u64;
    apparent.max(age_value.saturating_add(delay)).min(DELTA_MAX)
}

/// The fields a stored response keeps to hand to later clients: the
/// end-to-end fields but those the cache makes itself (`Age`,
/// `Cache-Status`), those a body's framing decides (`Content-Length`),
/// `Set-Cookie` (one client's, never another's) and those a `private=`
/// or `no-cache=` directive names.
pub fn kept_fields(response: &Fields) -> Vec<(String, String)> {
    let cc = Directives::of_response(response);
    response
        .iter()
        .filter(|(name, _)| {
            let lower = name.to_ascii_lowercase();
            !hop_by_hop(response, name)
                && !matches!(
                    lower.as_str(),
                    "age" | "cache-status" | "content-length" | "set-cookie" | "set-cookie2"
                )
                && !cc.private_fields.contains(&lower)
                && !cc.no_cache_fields.contains(&lower)
        })
        .cloned()
        .collect()
}

/// Prefix of the entry attributes that hold a stored response's fields,
/// one attribute per field line, in order.
pub const FIELD_ATTR: &str = "h:";

/// The entry attribute holding a stored response's status when it is not
/// 200.
pub const STATUS_ATTR: &str = ":status";

/// The status of a stored response, from its entry's attributes: its
/// [`STATUS_ATTR`], else 200.
pub fn stored_status(attributes: &[(String, String)]) -> u16 {
    attributes
        .iter()
        .find(|(k, _)| k == STATUS_ATTR)
        .and_then(|(_, v)| v.parse().ok())
        .filter(|s| (200..=599).contains(s))
        .unwrap_or(200)
}

/// The metadata of an entry for a response the cache stores, received at
/// `now_ms`: its tag, its fields, its windows as the engine counts them
/// (`cached-at` set back by the response's age, so the entry's age counts
/// from the origin's clock; fresh for its lifetime; stale window
/// `stale-while-revalidate`, 0 when it must be revalidated).
pub fn entry_meta(response: &Fields, decision: &Decision, now_ms: u64) -> Metadata {
    entry_meta_of(200, response, decision, now_ms)
}

/// [`entry_meta`] of a response of `status` (kept as [`STATUS_ATTR`] when
/// it is not 200).
pub fn entry_meta_of(status: u16, response: &Fields, decision: &Decision, now_ms: u64) -> Metadata {
    let mut meta = Metadata {
        tag: first(response, "etag").unwrap_or_default().to_owned(),
        cached_at: Some(now_ms.saturating_sub(decision.age.saturating_mul(1000))),
        fresh_for: Some(decision.lifetime.saturating_mul(1000)),
        stale_for: Some(decision.stale_while_revalidate.saturating_mul(1000)),
        stale_if_error: decision.stale_if_error.map(|s| s.saturating_mul(1000)),
        ..Metadata::default()
    };
    if status != 200 {
        meta.attributes
            .push((STATUS_ATTR.to_owned(), status.to_string()));
    }
    for (name, value) in kept_fields(response) {
        if name.eq_ignore_ascii_case("etag") {
            continue;
        }
        meta.attributes
            .push((format!("{FIELD_ATTR}{}", name.to_ascii_lowercase()), value));
    }
    meta
}

/// The fields of a stored response once a 304 confirmed it (RFC 9111
/// §4.3.4): each field the 304 carries that a stored response keeps
/// replaces the stored ones of its name; the others stay. Those that
/// describe the stored body as it is (`ETag`, `Content-Encoding`,
/// `Content-Length`, `Content-MD5`, `Content-Range`) are never replaced:
/// the body is not. The entry's tag counts as its `ETag`.
pub fn merged_fields(meta: &Metadata, not_modified: &Fields) -> Vec<(String, String)> {
    let mut update = kept_fields(not_modified);
    update.retain(|(name, _)| {
        ![
            "etag",
            "content-encoding",
            "content-length",
            "content-md5",
            "content-range",
        ]
        .iter()
        .any(|kept| name.eq_ignore_ascii_case(kept))
    });
    let mut merged: Vec<(String, String)> = Vec::new();
    if !meta.tag.is_empty() {
        merged.push(("etag".to_owned(), meta.tag.clone()));
    }
    merged.extend(stored_fields(&meta.attributes).map(|(n, v)| (n.to_owned(), v.to_owned())));
    merged.retain(|(name, _)| !update.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)));
    merged.extend(update);
    merged
}

/// The metadata of a stored response `held` once a 304 with `not_modified`
/// fields confirmed it, at `now_ms`, for a request with `request` fields
/// sent at `request_time` (s): its fields merged ([`merged_fields`]), its
/// lifetime decided anew from now, its status kept, and, when it varies,
/// its variant marks ([`mark_variant`], in the held entry's set, or
/// `new_set` when it had none).
pub fn revalidated(
    held: &Metadata,
    not_modified: &Fields,
    request: &Fields,
    request_time: i64,
    policy: &Policy,
    now_ms: u64,
    new_set: impl FnOnce() -> String,
) -> Metadata {
    let merged = merged_fields(held, not_modified);
    let status = stored_status(&held.attributes);
    let decision = decide(
        &Exchange {
            method: "GET",
            request,
            status,
            response: &merged,
            request_time,
            response_time: (now_ms / 1000) as i64,
        },
        policy,
    );
    let mut meta = entry_meta_of(status, &merged, &decision, now_ms);
    let set = variant_set(&held.attributes).map(str::to_owned);
    mark_variant(&mut meta, request, || set.unwrap_or_else(new_set));
    meta
}

/// The stored fields a response from an entry sends, from its attributes:
/// all but those the answer sets itself (`ETag`, `Age`, `Cache-Status`,
/// `Content-Length`) and, on a 304 (`not_modified`), those describing the
/// body (`Content-*`): a 304 says what the representation would, not how
/// its body is framed or encoded.
pub fn fields_to_send(
    attributes: &[(String, String)],
    not_modified: bool,
) -> impl Iterator<Item = (&str, &str)> {
    stored_fields(attributes).filter(move |(name, _)| {
        !(matches!(*name, "etag" | "age" | "cache-status" | "content-length")
            || (not_modified && name.starts_with("content-")))
    })
}

/// The entry attribute holding the request fields a stored response's
/// `Vary` names, as the request that fetched it sent them
/// ([`vary_values`]).
pub const VARY_ATTR: &str = ":vary";

/// The entry attribute naming the set of variants a stored response
/// heads: variants are kept under keys that carry it ([`variant_key`]),
/// so that a new response fetched for the URL (after an invalidation)
/// leaves every older variant unreachable. A 304 keeps it.
pub const VARIANTS_ATTR: &str = ":variants";

/// The values of the request fields that `vary` (a response's `Vary`
/// members) names, normalized (members trimmed, lines joined, white space
/// inside a member collapsed): `name:value` lines in `Vary`'s order.
pub fn vary_values<'a>(vary: impl Iterator<Item = &'a str>, request: &Fields) -> String {
    let mut out = String::new();
    for name in vary {
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() {
            continue;
        }
        out.push_str(&name);
        out.push(':');
        let mut members = list(request, &name).peekable();
        while let Some(member) = members.next() {
            out.push_str(&member.split_whitespace().collect::<Vec<_>>().join(" "));
            if members.peek().is_some() {
                out.push(',');
            }
        }
        out.push('\n');
    }
    out
}

/// The `Vary` members of a stored response, from its entry's attributes.
fn stored_vary(attributes: &[(String, String)]) -> impl Iterator<Item = &str> {
    stored_fields(attributes)
        .filter(|(name, _)| *name == "vary")
        .flat_map(|(_, value)| split_list(value))
}

/// Whether a stored response may answer `request` as far as its `Vary`
/// goes (RFC 9111 §4.1): it has none, or the fields it names have the
/// values the request that fetched it sent.
pub fn variant_fits(attributes: &[(String, String)], request: &Fields) -> bool {
    if stored_vary(attributes).next().is_none() {
        return true;
    }
    let kept = attributes
        .iter()
        .find(|(k, _)| k == VARY_ATTR)
        .map(|(_, v)| v.as_str());
    kept == Some(vary_values(stored_vary(attributes), request).as_str())
}

/// The cache key of the variant of `base` that `request` selects, when
/// the stored response at `base` (with `attributes`) varies and does not
/// fit the request; `None` when it fits.
pub fn variant_key(
    base: &str,
    attributes: &[(String, String)],
    request: &Fields,
) -> Option<String> {
    if variant_fits(attributes, request) {
        return None;
    }
    let set = attributes
        .iter()
        .find(|(k, _)| k == VARIANTS_ATTR)
        .map_or("", |(_, v)| v.as_str());
    Some(format!(
        "{base} vary {set}\n{}",
        vary_values(stored_vary(attributes), request)
    ))
}

/// Add to the metadata of a response that varies what telling its
/// variants apart needs: the request's values of the fields its `Vary`
/// names, and the set of variants it heads (`set`: the held entry's on a
/// 304, else a new one).
pub fn mark_variant(meta: &mut Metadata, request: &Fields, set: impl FnOnce() -> String) {
    if stored_vary(&meta.attributes).next().is_none() {
        return;
    }
    let values = vary_values(stored_vary(&meta.attributes), request);
    meta.attributes.push((VARY_ATTR.to_owned(), values));
    meta.attributes.push((VARIANTS_ATTR.to_owned(), set()));
}

/// The set of variants an entry heads ([`VARIANTS_ATTR`]), if it varies.
pub fn variant_set(attributes: &[(String, String)]) -> Option<&str> {
    attributes
        .iter()
        .find(|(k, _)| k == VARIANTS_ATTR)
        .map(|(_, v)| v.as_str())
}

/// The stored fields of an entry, from its attributes, as `(name, value)`.
pub fn stored_fields(attributes: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> {
    attributes
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(FIELD_ATTR).map(|name| (name, v.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    const NOW: i64 = 1_700_000_000;

    fn decide_at(status: u16, response: &[(&str, &str)], request: &[(&str, &str)]) -> Decision {
        let response = fields(response);
        let request = fields(request);
        decide(
            &Exchange {
                method: "GET",
                request: &request,
                status,
                response: &response,
                request_time: NOW,
                response_time: NOW,
            },
            &Policy::default(),
        )
    }

    fn date(offset: i64) -> String {
        format_date(NOW + offset)
    }

    #[test]
    fn dates_in_all_three_forms_are_read() {
        let t = parse_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(t, 784_111_777);
        assert_eq!(parse_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(t));
        assert_eq!(parse_date("Sun Nov  6 08:49:37 1994"), Some(t));
        assert_eq!(format_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        for bad in [
            "0",
            "",
            "yesterday",
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn directives_count_by_their_first_occurrence_and_quoted_values_are_read() {
        let d = Directives::parse(["max-age=60", "max-age=5", "S-MAXAGE=\"7\""]);
        assert_eq!(d.max_age, Some(Delta::Secs(60)));
        assert_eq!(d.s_maxage, Some(Delta::Secs(7)));
        let d = Directives::parse(split_list("private=\"set-cookie, x-a\", no-cache"));
        assert_eq!(d.private_fields, vec!["set-cookie", "x-a"]);
        assert!(d.no_cache && !d.private);
        assert_eq!(
            Directives::parse(["max-age=-1"]).max_age,
            Some(Delta::Invalid)
        );
        assert_eq!(
            Directives::parse(["max-age=1.5"]).max_age,
            Some(Delta::Invalid)
        );
        assert_eq!(
            Directives::parse(["max-age=99999999999999999999"]).max_age,
            Some(Delta::Secs(DELTA_MAX))
        );
    }

    #[test]
    fn a_response_with_no_freshness_and_no_validator_is_not_stored() {
        let d = decide_at(200, &[], &[]);
        assert_eq!((d.store, d.lifetime), (Err(NotStored::Useless), 0));
        // With a validator it is kept, to be revalidated before reuse.
        let d = decide_at(200, &[("ETag", "\"a\"")], &[]);
        assert_eq!((d.store, d.lifetime), (Ok(()), 0));
    }

    #[test]
    fn s_maxage_wins_over_max_age_wins_over_expires() {
        let expires = date(100);
        let r = [
            ("Cache-Control", "max-age=10, s-maxage=20"),
            ("Expires", expires.as_str()),
        ];
        assert_eq!(decide_at(200, &r, &[]).lifetime, 20);
        let r = [
            ("Cache-Control", "max-age=10"),
            ("Expires", expires.as_str()),
        ];
        assert_eq!(decide_at(200, &r, &[]).lifetime, 10);
        let now = date(0);
        let r = [("Expires", expires.as_str()), ("Date", now.as_str())];
        assert_eq!(decide_at(200, &r, &[]).lifetime, 100);
    }

    #[test]
    fn an_invalid_expires_is_in_the_past() {
        let d = decide_at(200, &[("Expires", "0"), ("ETag", "\"x\"")], &[]);
        assert_eq!(d.lifetime, 0);
        let d = decide_at(
            200,
            &[("Cache-Control", "max-age=oops"), ("ETag", "\"x\"")],
            &[],
        );
        assert_eq!(d.lifetime, 0);
    }

    #[test]
    fn cdn_cache_control_replaces_cache_control() {
        let r = [
            ("Cache-Control", "no-store"),
            ("CDN-Cache-Control", "max-age=30"),
        ];
        let d = decide_at(200, &r, &[]);
        assert_eq!((d.store, d.lifetime), (Ok(()), 30));
        let r = [
            ("Cache-Control", "max-age=30"),
            ("CDN-Cache-Control", "no-store"),
        ];
        assert_eq!(decide_at(200, &r, &[]).store, Err(NotStored::NoStore));
    }

    #[test]
    fn private_no_store_and_authorization_keep_a_response_out() {
        let r = [("Cache-Control", "private, max-age=60")];
        assert_eq!(decide_at(200, &r, &[]).store, Err(NotStored::Private));
        let r = [("Cache-Control", "max-age=60, no-store")];
        assert_eq!(decide_at(200, &r, &[]).store, Err(NotStored::NoStore));
        let auth = [("Authorization", "Basic eA==")];
        let r = [("Cache-Control", "max-age=60")];
        assert_eq!(
            decide_at(200, &r, &auth).store,
            Err(NotStored::Authorization)
        );
        for allowed in [
            "public, max-age=60",
            "s-maxage=60",
            "must-revalidate, max-age=60",
        ] {
            let r = [("Cache-Control", allowed)];
            assert_eq!(decide_at(200, &r, &auth).store, Ok(()), "{allowed}");
        }
    }

    #[test]
    fn heuristic_freshness_is_a_tenth_of_the_time_since_last_modified() {
        let modified = date(-1000);
        let now = date(0);
        let r = [("Last-Modified", modified.as_str()), ("Date", now.as_str())];
        let d = decide_at(200, &r, &[]);
        assert_eq!((d.store, d.lifetime, d.heuristic), (Ok(()), 100, true));
        // Not for a status that is not heuristically cacheable.
        let d = decide_at(201, &r, &[]);
        assert_eq!(d.store, Err(NotStored::Status));
    }

    #[test]
    fn age_counts_the_larger_of_apparent_age_and_age_header() {
        let past = date(-30);
        let d = decide_at(
            200,
            &[("Date", past.as_str()), ("Cache-Control", "max-age=60")],
            &[],
        );
        assert_eq!(d.age, 30);
        let d = decide_at(200, &[("Age", "45"), ("Cache-Control", "max-age=60")], &[]);
        assert_eq!(d.age, 45);
    }

    #[test]
    fn no_cache_and_must_revalidate_forbid_serving_stale() {
        let d = decide_at(
            200,
            &[("Cache-Control", "max-age=5, stale-while-revalidate=60")],
            &[],
        );
        assert_eq!((d.must_revalidate, d.stale_while_revalidate), (false, 60));
        for strict in [
            "must-revalidate",
            "proxy-revalidate",
            "no-cache",
            "s-maxage=5",
        ] {
            let cc = format!("max-age=5, stale-while-revalidate=60, {strict}");
            let d = decide_at(
                200,
                &[("Cache-Control", cc.as_str()), ("ETag", "\"e\"")],
                &[],
            );
            assert_eq!(
                (d.must_revalidate, d.stale_while_revalidate),
                (true, 0),
                "{strict}"
            );
        }
        let d = decide_at(
            200,
            &[("Cache-Control", "no-cache"), ("ETag", "\"e\"")],
            &[],
        );
        assert_eq!((d.store, d.lifetime), (Ok(()), 0));
    }

    #[test]
    fn stale_if_error_is_the_responses_own_and_forbidden_where_it_must_revalidate() {
        let d = decide_at(
            200,
            &[("Cache-Control", "max-age=5, stale-if-error=60")],
            &[],
        );
        assert_eq!(d.stale_if_error, Some(60));
        let meta = entry_meta(&fields(&[]), &d, 1_000_000);
        assert_eq!(meta.stale_if_error, Some(60_000));
        assert_eq!(
            decide_at(200, &[("Cache-Control", "max-age=5")], &[]).stale_if_error,
            None
        );
        for strict in [
            "must-revalidate",
            "proxy-revalidate",
            "no-cache",
            "s-maxage=5",
        ] {
            let cc = format!("max-age=5, stale-if-error=60, {strict}");
            let d = decide_at(
                200,
                &[("Cache-Control", cc.as_str()), ("ETag", "\"e\"")],
                &[],
            );
            assert_eq!(d.stale_if_error, Some(0), "{strict}");
        }
    }

    #[test]
    fn variants_are_told_apart_by_the_fields_vary_names() {
        let response = fields(&[("Vary", "Accept-Encoding, X-Lang"), ("ETag", "\"a\"")]);
        let decision = decide_at(200, &[("Cache-Control", "max-age=60")], &[]);
        let mut meta = entry_meta(&response, &decision, 0);
        let gzip = fields(&[("accept-encoding", "gzip,  br"), ("X-Lang", "en")]);
        mark_variant(&mut meta, &gzip, || "set1".into());
        assert!(variant_fits(&meta.attributes, &gzip));
        // Lines joined and spaces inside a member do not make a new variant.
        let same = fields(&[
            ("Accept-Encoding", "gzip"),
            ("Accept-Encoding", "br"),
            ("x-lang", "en"),
        ]);
        assert!(variant_fits(&meta.attributes, &same));
        assert_eq!(variant_key("/a", &meta.attributes, &same), None);
        let other = fields(&[("Accept-Encoding", "identity"), ("X-Lang", "en")]);
        let absent = fields(&[("X-Lang", "en")]);
        assert!(!variant_fits(&meta.attributes, &other));
        let key = variant_key("/a", &meta.attributes, &other).unwrap();
        assert!(key.starts_with("/a vary set1\n"), "{key}");
        assert_ne!(Some(key), variant_key("/a", &meta.attributes, &absent));
        // A response without Vary fits every request and gets no marks.
        let mut plain = entry_meta(&fields(&[]), &decision, 0);
        mark_variant(&mut plain, &gzip, || unreachable!());
        assert!(plain.attributes.is_empty() && variant_fits(&plain.attributes, &other));
    }

    #[test]
    fn must_understand_keeps_unknown_statuses_out_and_overrides_no_store() {
        let cc = [("Cache-Control", "max-age=60, no-store, must-understand")];
        assert_eq!(decide_at(200, &cc, &[]).store, Ok(()));
        assert_eq!(decide_at(599, &cc, &[]).store, Err(NotStored::Status));
        let cc = [("Cache-Control", "max-age=60, must-understand")];
        assert_eq!(decide_at(599, &cc, &[]).store, Err(NotStored::Status));
        assert_eq!(decide_at(404, &cc, &[]).store, Ok(()));
        assert_eq!(
            decide_at(200, &[("Cache-Control", "max-age=60, no-store")], &[]).store,
            Err(NotStored::NoStore)
        );
    }

    #[test]
    fn request_directives_become_the_callers_conditions() {
        let asks = |pairs: &[(&str, &str)]| {
            let request = fields(pairs);
            request_conditions(&Directives::of_request(&request), &request)
        };
        assert_eq!(asks(&[]), Conditions::default());
        let c = asks(&[("Cache-Control", "max-age=5, min-fresh=2, max-stale=7")]);
        assert_eq!(
            (c.max_age, c.min_fresh, c.max_stale),
            (Some(5_000), Some(2_000), Some(7_000))
        );
        assert_eq!(
            asks(&[("Cache-Control", "max-stale")]).max_stale,
            Some(u64::MAX)
        );
        assert_eq!(asks(&[("Cache-Control", "no-cache")]).max_age, Some(0));
        assert_eq!(asks(&[("Pragma", "no-cache")]).max_age, Some(0));
        // Pragma counts only without Cache-Control (RFC 9111 §5.4).
        assert_eq!(
            asks(&[("Pragma", "no-cache"), ("Cache-Control", "max-stale=1")]).max_age,
            None
        );
        assert_eq!(
            asks(&[("If-None-Match", "\"a\"")]).if_none_match.as_deref(),
            Some("\"a\"")
        );
        let d = Directives::of_request(&fields(&[("Cache-Control", "only-if-cached")]));
        assert!(d.only_if_cached);
    }

    #[test]
    fn if_modified_since_is_answered_by_last_modified_else_date() {
        let attrs = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(n, v)| (format!("{FIELD_ATTR}{n}"), (*v).to_owned()))
                .collect()
        };
        let lm = attrs(&[("last-modified", &date(-100)), ("date", &date(0))]);
        let since = |when: i64| fields(&[("If-Modified-Since", &date(when))]);
        assert!(not_modified_since(&lm, &since(-100)));
        assert!(!not_modified_since(&lm, &since(-101)));
        // If-None-Match wins: the date is not looked at.
        let both = fields(&[("If-Modified-Since", &date(0)), ("If-None-Match", "\"x\"")]);
        assert!(!not_modified_since(&lm, &both));
        let dated = attrs(&[("date", &date(-50))]);
        assert!(not_modified_since(&dated, &since(-50)));
        assert!(!not_modified_since(&dated, &since(-51)));
        assert!(!not_modified_since(&attrs(&[]), &since(0)));
        assert!(!not_modified_since(
            &lm,
            &fields(&[("If-Modified-Since", "yesterday")])
        ));
    }

    #[test]
    fn a_304_never_replaces_the_validator_or_what_describes_the_stored_body() {
        let stored = Metadata {
            tag: "\"a\"".into(),
            attributes: vec![
                ("h:content-encoding".into(), "gzip".into()),
                ("h:content-md5".into(), "old".into()),
                ("h:x-kept".into(), "1".into()),
            ],
            ..Metadata::default()
        };
        let merged = merged_fields(
            &stored,
            &fields(&[
                ("ETag", "\"b\""),
                ("Content-Encoding", "br"),
                ("Content-MD5", "new"),
                ("Content-Length", "9"),
                ("Content-Range", "bytes 0-1/2"),
                ("X-Kept", "2"),
            ]),
        );
        let value = |name: &str| {
            merged
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(value("etag"), ["\"a\""]);
        assert_eq!(value("content-encoding"), ["gzip"]);
        assert_eq!(value("content-md5"), ["old"]);
        assert!(value("content-length").is_empty() && value("content-range").is_empty());
        assert_eq!(value("x-kept"), ["2"]);
    }

    #[test]
    fn an_age_that_is_not_one_delta_seconds_makes_the_response_stale() {
        let at = |ages: &[&str]| {
            let mut r = vec![("Cache-Control", "max-age=3600")];
            r.extend(ages.iter().map(|a| ("Age", *a)));
            decide_at(200, &r, &[]).age
        };
        assert_eq!(at(&["0,7200"]), 0, "the first member counts");
        assert_eq!(at(&["7200,0"]), 7200);
        for bad in [
            &["abc"][..],
            &["-7200"],
            &["7200.0"],
            &["7200;foo=bar"],
            &["0", "0"],
        ] {
            assert_eq!(at(bad), DELTA_MAX, "{bad:?}");
        }
    }

    #[test]
    fn no_cache_wins_over_a_lifetime_and_spaces_around_equals_are_invalid() {
        let e = ("ETag", "\"e\"");
        let d = decide_at(200, &[("Cache-Control", "max-age=3600, no-cache"), e], &[]);
        assert_eq!(d.lifetime, 0);
        for spaced in ["max-age= 3600", "max-age =3600"] {
            let d = decide_at(200, &[("Cache-Control", spaced), e], &[]);
            assert_eq!(d.lifetime, 0, "{spaced}");
        }
    }

    #[test]
    fn a_stored_status_other_than_200_is_kept_with_the_entry() {
        let r = fields(&[("Cache-Control", "max-age=60"), ("Location", "/b")]);
        let d = decide_at(301, &[("Cache-Control", "max-age=60")], &[]);
        assert!(!d.defaulted);
        let meta = entry_meta_of(301, &r, &d, 0);
        assert_eq!(stored_status(&meta.attributes), 301);
        assert_eq!(stored_status(&entry_meta(&r, &d, 0).attributes), 200);
        assert!(stored_fields(&meta.attributes).all(|(n, _)| !n.starts_with(':')));
        assert!(decide_at(404, &[], &[]).defaulted);
    }

    #[test]
    fn a_304_replaces_the_stored_fields_it_carries_and_keeps_the_others() {
        let stored = fields(&[
            ("ETag", "\"a\""),
            ("Cache-Control", "max-age=1"),
            ("Content-Type", "text/plain"),
            ("X-Kept", "old"),
        ]);
        let d = decide_at(
            200,
            &[("Cache-Control", "max-age=1"), ("ETag", "\"a\"")],
            &[],
        );
        let meta = entry_meta(&stored, &d, 0);
        let not_modified = fields(&[
            ("Cache-Control", "max-age=3600"),
            ("Content-Length", "0"),
            ("Set-Cookie", "x=y"),
            ("X-New", "1"),
        ]);
        let mut merged = merged_fields(&meta, &not_modified);
        merged.sort();
        assert_eq!(
            merged,
            fields(&[
                ("Cache-Control", "max-age=3600"),
                ("X-New", "1"),
                ("content-type", "text/plain"),
                ("etag", "\"a\""),
                ("x-kept", "old"),
            ])
        );
    }

    #[test]
    fn a_response_that_varies_is_not_stored() {
        let r = [("Cache-Control", "max-age=60"), ("Vary", "Accept-Encoding")];
        assert_eq!(decide_at(200, &r, &[]).store, Err(NotStored::Vary));
        let keeps_variants = Policy {
            variants: true,
            ..Policy::default()
        };
        let x = |vary| {
            let response = fields(&[("Cache-Control", "max-age=60"), ("Vary", vary)]);
            decide(
                &Exchange {
                    method: "GET",
                    request: &[],
                    status: 200,
                    response: &response,
                    request_time: 0,
                    response_time: 0,
                },
                &keeps_variants,
            )
            .store
        };
        assert_eq!(x("Accept-Encoding"), Ok(()));
        assert_eq!(x("Accept-Encoding, *"), Err(NotStored::Vary));
    }

    #[test]
    fn what_goes_upstream_is_end_to_end_with_via_and_forwarded_added() {
        let r = fields(&[
            ("Connection", "x-secret"),
            ("X-Secret", "1"),
            ("Host", "proxy"),
            ("Accept", "*/*"),
            ("If-None-Match", "\"a\""),
            ("Via", "1.0 edge"),
            ("X-Forwarded-For", "10.0.0.1"),
        ]);
        let sent = |fill| {
            r.iter()
                .filter(|(n, _)| sent_upstream(&r, n, fill))
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(sent(false), ["Accept", "If-None-Match"]);
        assert_eq!(sent(true), ["Accept"]);
        assert_eq!(
            upstream_added(&r, Some("127.0.0.1"), "http"),
            fields(&[
                ("via", "1.0 edge, 1.1 daramjwee"),
                ("x-forwarded-for", "10.0.0.1, 127.0.0.1"),
                ("x-forwarded-proto", "http"),
            ])
        );
        assert_eq!(upstream_added(&[], None, "https")[0].1, VIA);
    }

    #[test]
    fn only_same_origin_locations_are_invalidated() {
        let at = |prefix: &str, key: &str, reference: &str| {
            invalidated_target("http", "o.test:8000", prefix, key, reference)
        };
        assert_eq!(at("", "/p", "/q?x=1").as_deref(), Some("/q?x=1"));
        assert_eq!(at("", "/a/p", "r").as_deref(), Some("/a/r"));
        assert_eq!(at("", "/a/p?z", "?y").as_deref(), Some("/a/p?y"));
        assert_eq!(
            at("", "/p", "http://O.test:8000/s#f").as_deref(),
            Some("/s")
        );
        assert_eq!(at("", "/p", "//o.test:8000").as_deref(), Some("/"));
        assert_eq!(at("", "/p", "http://elsewhere/s"), None);
        assert_eq!(at("", "/p", "https://o.test:8000/s"), None);
        assert_eq!(at("", "/p", "mailto:x@y"), None);
        assert_eq!(at("", "/p", "/a/../etc"), None);
        // The origin's path prefix is not part of a key.
        assert_eq!(at("/base", "/p", "/base/q").as_deref(), Some("/q"));
        assert_eq!(at("/base", "/p", "/basement"), None);
        assert_eq!(at("/base", "/d/p", "q").as_deref(), Some("/d/q"));
        assert_eq!(
            invalidated_target("http", "o", "", "/p", "http://o:80/s").as_deref(),
            Some("/s")
        );
    }

    #[test]
    fn a_fill_keeps_remembers_serves_or_passes_what_the_origin_answered() {
        let f = |status: u16, cc: &str, remember: bool| {
            let r = if cc.is_empty() {
                vec![]
            } else {
                vec![("Cache-Control", cc)]
            };
            fill(status, &decide_at(status, &r, &[]), true, remember)
        };
        assert_eq!(f(404, "", true), Fill::Missing);
        assert_eq!(f(410, "", false), Fill::Passed);
        assert_eq!(f(404, "no-store", true), Fill::Passed);
        assert_eq!(f(404, "max-age=60", false), Fill::Body { stored: true });
        assert_eq!(f(200, "max-age=60", false), Fill::Body { stored: true });
        assert_eq!(f(200, "no-store", false), Fill::Body { stored: false });
        assert_eq!(f(500, "", true), Fill::Passed);
        assert_eq!(f(301, "max-age=60", false), Fill::Body { stored: true });
        let unreadable = decide_at(200, &[("Cache-Control", "max-age=60")], &[]);
        assert_eq!(fill(200, &unreadable, false, true), Fill::Passed);
    }

    #[test]
    fn a_response_with_a_field_that_is_not_text_is_not_kept() {
        assert!(kept_fields_are_text([("x", &b"r\xc3\xa9sum\xc3\xa9"[..])]));
        assert!(!kept_fields_are_text([("x", &b"\xff"[..])]));
        assert!(kept_fields_are_text([("Set-Cookie", &b"\xff"[..])]));
    }

    #[test]
    fn unsafe_methods_answered_with_success_or_redirect_invalidate() {
        assert!(
            invalidates("POST", 201) && invalidates("DELETE", 204) && invalidates("M-SEARCH", 302)
        );
        assert!(!invalidates("POST", 404) && !invalidates("PUT", 500));
        assert!(
            !invalidates("GET", 200) && !invalidates("head", 200) && !invalidates("OPTIONS", 200)
        );
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_dropped() {
        let r = fields(&[
            ("Connection", "close, X-Secret"),
            ("X-Secret", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("X-Kept", "2"),
        ]);
        let kept: Vec<_> = r
            .iter()
            .filter(|(n, _)| !hop_by_hop(&r, n))
            .cloned()
            .collect();
        assert_eq!(kept, fields(&[("X-Kept", "2")]));
    }

    #[test]
    fn kept_fields_leave_out_cookies_framing_and_named_private_fields() {
        let r = fields(&[
            ("Cache-Control", "max-age=60, private=\"x-user\""),
            ("Set-Cookie", "a=b"),
            ("Content-Length", "5"),
            ("Age", "3"),
            ("X-User", "me"),
            ("Content-Type", "text/plain"),
            ("Link", "</a>; rel=preload"),
        ]);
        let kept = kept_fields(&r);
        let names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["Cache-Control", "Content-Type", "Link"]);
    }

    #[test]
    fn entry_meta_carries_tag_fields_and_windows() {
        let r = fields(&[
            ("ETag", "\"v\""),
            ("Cache-Control", "max-age=60"),
            ("Content-Type", "text/plain"),
            ("Age", "10"),
        ]);
        let d = decide_at(
            200,
            &[
                ("ETag", "\"v\""),
                ("Cache-Control", "max-age=60"),
                ("Age", "10"),
            ],
            &[],
        );
        let meta = entry_meta(&r, &d, 1_000_000);
        assert_eq!(meta.tag, "\"v\"");
        assert_eq!(meta.cached_at, Some(990_000));
        assert_eq!((meta.fresh_for, meta.stale_for), (Some(60_000), Some(0)));
        let stored: Vec<_> = stored_fields(&meta.attributes).collect();
        let sent: Vec<_> = fields_to_send(&meta.attributes, false).collect();
        assert_eq!(sent, stored);
        let on_304: Vec<_> = fields_to_send(&meta.attributes, true).collect();
        assert_eq!(on_304, vec![("cache-control", "max-age=60")]);
        assert_eq!(
            stored,
            vec![
                ("cache-control", "max-age=60"),
                ("content-type", "text/plain")
            ]
        );
    }

    #[test]
    fn a_request_with_pragma_no_cache_and_no_cache_control_means_no_cache() {
        assert!(Directives::of_request(&fields(&[("Pragma", "no-cache")])).no_cache);
        let both = fields(&[("Pragma", "no-cache"), ("Cache-Control", "max-age=5")]);
        assert!(!Directives::of_request(&both).no_cache);
        let d = Directives::of_request(&fields(&[(
            "Cache-Control",
            "max-stale, min-fresh=5, only-if-cached",
        )]));
        assert_eq!(d.max_stale, Some(None));
        assert_eq!(d.min_fresh, Some(Delta::Secs(5)));
        assert!(d.only_if_cached);
    }
}
