//! What the filter does with a request and with a response: the
//! decisions, with no ABI call in them. The glue reads headers into a
//! [`Request`] or a [`Head`], asks these functions, and carries out the
//! answer.
//!
//! The HTTP rules themselves are the engine's: what an answer becomes
//! (stored or not, for how long, its kept head, a 304's update) from
//! `daramjwee_component::http::exchange::judge`, as every home judges it;
//! `Cache-Status` values from `daramjwee_component::http`, freshness from
//! `classify`, validators from `if_none_match`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use daramjwee_component::http::exchange::{self, Judgement};
use daramjwee_component::http::rfc9111::{self, Policy};
use daramjwee_component::http::{Forward, Served, cache_status, failure_status};
use daramjwee_component::{Freshness, Metadata, classify, if_none_match};

use crate::{Entry, Settings};

/// Queued plus in-flight background refreshes one plugin instance keeps at
/// most; past it a stale hit is still served, its refresh is skipped and
/// asked for again by the next stale hit.
pub const MAX_REFRESHES: usize = 1024;

/// The request headers the filter reads, raw: values need not be UTF-8.
#[derive(Clone, Copy, Debug, Default)]
pub struct Request<'a> {
    /// `:method`.
    pub method: &'a [u8],
    /// `:path`, query included.
    pub path: Option<&'a [u8]>,
    /// `:authority`.
    pub authority: Option<&'a [u8]>,
    /// `if-none-match`.
    pub if_none_match: Option<&'a [u8]>,
    /// An `authorization` header is present.
    pub authorization: bool,
    /// A `range` header is present.
    pub range: bool,
}

/// What to do with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Not the cache's business: let it through untouched.
    Pass,
    /// A GET or HEAD the cache may answer.
    Lookup {
        /// The cache key.
        key: String,
        /// HEAD: answer without a body and store nothing on a miss.
        head: bool,
    },
    /// An unsafe method: once the origin accepts it, drop the key's entry
    /// (RFC 9111 section 4.4).
    Invalidate {
        /// The cache key.
        key: String,
    },
}

/// Decide what a request is. Requests with `Authorization` or `Range`, a
/// missing or non-UTF-8 `:path` or `:authority`, or a key longer than
/// `max-key` pass through.
pub fn plan(settings: &Settings, req: &Request<'_>) -> Plan {
    let Some(key) = cache_key(settings, req) else {
        return Plan::Pass;
    };
    match req.method {
        b"GET" | b"HEAD" if req.authorization || req.range => Plan::Pass,
        b"GET" => Plan::Lookup { key, head: false },
        b"HEAD" => Plan::Lookup { key, head: true },
        b"POST" | b"PUT" | b"DELETE" | b"PATCH" => Plan::Invalidate { key },
        _ => Plan::Pass,
    }
}

/// The key of a request: `:path` (query included), after the lowercased
/// `:authority` when `key-authority` is on.
pub fn cache_key(settings: &Settings, req: &Request<'_>) -> Option<String> {
    let path = std::str::from_utf8(req.path?).ok()?;
    if path.is_empty() {
        return None;
    }
    let mut key = String::new();
    if settings.key_authority {
        let authority = std::str::from_utf8(req.authority.unwrap_or_default()).ok()?;
        key.push_str(&authority.to_ascii_lowercase());
    }
    key.push_str(path);
    (key.len() <= settings.max_key).then_some(key)
}

/// A local answer: what `send_http_response` gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Status code.
    pub status: u32,
    /// Headers, lowercase names.
    pub headers: Vec<(String, String)>,
    /// Body; `None` for HEAD, 304 and negative answers.
    pub body: Option<Arc<[u8]>>,
}

impl Reply {
    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What an entry found for a request allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Fresh: answer locally.
    Hit(Reply),
    /// Past freshness but within its stale window: answer locally and
    /// refresh in the background.
    Stale(Reply),
    /// Not usable: go to the origin.
    Miss,
}

/// What the found `entry` (from tier `tier`: 0 in-plugin, 1 shared data)
/// allows at `now` (ms). `can_refresh` says whether a background refresh
/// can be sent; without one a stale entry is a miss.
pub fn judge(
    entry: &Entry,
    now: u64,
    settings: &Settings,
    tier: usize,
    inm: Option<&[u8]>,
    head: bool,
    can_refresh: bool,
) -> Verdict {
    let meta = &entry.meta;
    let window = if meta.negative {
        settings.negative_fresh_for
    } else {
        settings.fresh_for
    };
    let stale = match classify(meta, now, window) {
        Freshness::Fresh => false,
        Freshness::Stale if can_refresh && !meta.negative => true,
        // Negative entries are not served stale: a 404 is cheap to ask
        // again, and serving one stale could hide a page that appeared.
        Freshness::Stale | Freshness::Expired => return Verdict::Miss,
    };
    let served = Served::Tier {
        index: tier,
        stale,
        expired: false,
    };
    let mut headers = vec![(
        "cache-status".to_owned(),
        cache_status(served, &Forward::default()),
    )];
    let age = meta.cached_at.map_or(0, |at| now.saturating_sub(at) / 1000);
    headers.push(("age".to_owned(), age.to_string()));
    let reply = if meta.negative {
        Reply {
            status: 404,
            headers,
            body: None,
        }
    } else {
        if !meta.tag.is_empty() {
            headers.push(("etag".to_owned(), meta.tag.clone()));
        }
        // What the stored response was: a 200, or another status the
        // rules kept with a lifetime (a 301, a 404 page ...).
        let status = rfc9111::stored_status(&meta.attributes);
        // A client validator that is not UTF-8 matches nothing.
        let not_modified = status == 200
            && inm
                .and_then(|v| std::str::from_utf8(v).ok())
                .is_some_and(|v| if_none_match(v, &meta.tag));
        // The stored response's fields, as every home sends them.
        headers.extend(
            rfc9111::fields_to_send(&meta.attributes, not_modified)
                .map(|(name, value)| (name.to_owned(), value.to_owned())),
        );
        if not_modified {
            Reply {
                status: 304,
                headers,
                body: None,
            }
        } else {
            Reply {
                status: u32::from(status),
                headers,
                body: (!head).then(|| entry.body.clone()),
            }
        }
    };
    if stale {
        Verdict::Stale(reply)
    } else {
        Verdict::Hit(reply)
    }
}

/// The response headers the filter reads, from an upstream response or a
/// refresh's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// `:status`, when it is a number.
    pub status: Option<u16>,
    /// `content-length`, when it is a number.
    pub content_length: Option<u64>,
    /// Every field but the pseudo-headers, as it came, for the shared
    /// rules to read.
    pub fields: Vec<(String, Vec<u8>)>,
}

impl Head {
    /// Read the headers the filter cares about from raw pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Head {
        let mut head = Head::default();
        for (name, value) in pairs {
            let name = name.to_ascii_lowercase();
            let number = || {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|t| t.trim().parse::<u64>().ok())
            };
            match name.as_str() {
                ":status" => head.status = number().and_then(|n| u16::try_from(n).ok()),
                "content-length" => head.content_length = number(),
                _ => {}
            }
            if !name.starts_with(':') {
                head.fields.push((name, value.to_vec()));
            }
        }
        head
    }

    /// What the shared rules make of this answer at `now` (ms) to a fill
    /// made for `held`: the same judgement every home gets
    /// (`exchange::judge`).
    fn judged(&self, held: Option<&Metadata>, now: u64, settings: &Settings) -> exchange::Judged {
        exchange::judge(
            &exchange::Answer {
                request: &[],
                status: self.status.unwrap_or(0),
                response: &self.fields,
                request_time: (now / 1000) as i64,
                now_ms: now,
            },
            held,
            &Policy {
                default_ttl: settings.fresh_for / 1000,
                stale_while_revalidate: settings.stale_while_revalidate / 1000,
                // One entry a URL: a response that varies is not stored.
                variants: false,
                remember_missing: settings.negative_fresh_for > 0,
            },
            String::new,
        )
    }
}

/// What a response becomes here: the rules' judgement, and a body over
/// `max-body` (as its `Content-Length` says) keeps it out too.
fn kept(head: &Head, now: u64, settings: &Settings) -> Option<Kept> {
    let judged = head.judged(None, now, settings);
    match judged.judgement {
        Judgement::Missing => Some(Kept::Missing),
        Judgement::Body { stored: true }
            if head.content_length.is_none_or(|n| n <= settings.max_body) =>
        {
            Some(Kept::Body(judged.meta))
        }
        _ => None,
    }
}

/// What a response that is kept becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kept {
    /// A 404 or 410 without a lifetime of its own: "not found" for the
    /// filter's negative window, no body.
    Missing,
    /// Its entry metadata (the whole head the rules keep); the body is
    /// kept with it.
    Body(Metadata),
}

impl Kept {
    /// The entry this makes with `body`, received at `now`.
    fn entry(self, body: &[u8], now: u64) -> Entry {
        match self {
            Kept::Missing => Entry {
                meta: Metadata::negative_at(now),
                body: Arc::from(&[][..]),
            },
            Kept::Body(meta) => Entry {
                meta,
                body: Arc::from(body),
            },
        }
    }
}

/// One miss's response on its way through: what it will become, and its
/// body collected up to `max-body`.
#[derive(Debug)]
pub struct Capture {
    key: String,
    kept: Option<Kept>,
    cached_at: u64,
    body: Vec<u8>,
    over: bool,
}

impl Capture {
    /// Start capturing the response to the miss on `key`.
    pub fn new(key: String) -> Self {
        Capture {
            key,
            kept: None,
            cached_at: 0,
            body: Vec::new(),
            over: false,
        }
    }

    /// The cache key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The response headers arrived at `now`; returns the `Cache-Status`
    /// value to add. It says `stored` when the response qualifies here; a
    /// body without `Content-Length` that later outgrows `max-body` is
    /// still dropped (the header has left by then).
    pub fn headers(&mut self, head: Head, now: u64, settings: &Settings) -> String {
        self.kept = kept(&head, now, settings);
        self.cached_at = now;
        let forward = Forward {
            fetched: true,
            status: head.status,
            no_store: self.kept.is_none(),
        };
        match head.status {
            Some(500..=599) => failure_status("origin-error", &forward),
            _ => cache_status(Served::Origin, &forward),
        }
    }

    /// A body chunk of `len` bytes arrived: whether the glue should copy it
    /// in with [`push`](Self::push). Past `max-body` the capture gives up
    /// and frees what it held.
    pub fn wants(&mut self, len: usize, settings: &Settings) -> bool {
        if !matches!(self.kept, Some(Kept::Body(_))) || self.over || len == 0 {
            return false;
        }
        if (self.body.len() as u64).saturating_add(len as u64) > settings.max_body {
            self.over = true;
            self.body = Vec::new();
            return false;
        }
        true
    }

    /// Append a chunk the glue copied.
    pub fn push(&mut self, chunk: &[u8]) {
        self.body.extend_from_slice(chunk);
    }

    /// The response ended: the entry to store, if any.
    pub fn finish(self, settings: &Settings) -> Option<(String, Entry)> {
        let kept = self.kept?;
        if self.over
            || (matches!(kept, Kept::Body(_)) && self.body.len() as u64 > settings.max_body)
        {
            return None;
        }
        Some((self.key, kept.entry(&self.body, self.cached_at)))
    }
}

/// A background refresh of one stale entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refresh {
    /// The cache key.
    pub key: String,
    /// `:path` to ask for.
    pub path: String,
    /// `:authority` to ask with.
    pub authority: String,
    /// The entry's validators (`If-None-Match`, `If-Modified-Since`).
    pub validators: Vec<(String, String)>,
}

impl Refresh {
    /// The refresh for the stale entry under `key`, asked by `req`;
    /// `None` when `req`'s `:path` is unusable. Without `:authority` the
    /// upstream cluster's name is used, as Envoy's own callouts need one.
    pub fn new(key: &str, req: &Request<'_>, entry: &Entry, upstream: &str) -> Option<Refresh> {
        let path = std::str::from_utf8(req.path?).ok()?;
        let authority = req
            .authority
            .and_then(|a| std::str::from_utf8(a).ok())
            .filter(|a| !a.is_empty())
            .unwrap_or(upstream);
        Some(Refresh {
            key: key.to_owned(),
            path: path.to_owned(),
            authority: authority.to_owned(),
            validators: exchange::validators(Some(&entry.meta)),
        })
    }

    /// The callout's headers.
    pub fn headers(&self) -> Vec<(&str, &str)> {
        let mut headers = vec![
            (":method", "GET"),
            (":path", self.path.as_str()),
            (":authority", self.authority.as_str()),
        ];
        for (name, value) in &self.validators {
            headers.push((name.as_str(), value.as_str()));
        }
        headers
    }
}

/// What a refresh's answer does to the entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Store this entry instead.
    Replace(Entry),
    /// The origin no longer allows keeping it (or it grew past
    /// `max-body`): drop it.
    Remove,
    /// The refresh failed (no answer, 5xx, ...): keep serving the old
    /// entry until its stale window ends.
    Keep,
}

/// What the answer (`head`, and `body` of `body_len` bytes, empty when
/// the glue did not read it because it is over `max-body`) to a refresh of
/// `old` does at `now`.
pub fn refreshed(
    old: Option<&Entry>,
    head: &Head,
    body: &[u8],
    body_len: usize,
    now: u64,
    settings: &Settings,
) -> Outcome {
    if head.status == Some(304) {
        let Some(old) = old.filter(|old| !old.meta.negative) else {
            return Outcome::Keep;
        };
        // The origin confirmed the copy: its stored fields updated by the
        // 304's, fresh again as they say (RFC 9111 §4.3.4).
        let judged = head.judged(Some(&old.meta), now, settings);
        return match judged.judgement {
            Judgement::Revalidated => Outcome::Replace(Entry {
                meta: judged.meta,
                body: old.body.clone(),
            }),
            _ => Outcome::Keep,
        };
    }
    match head.status {
        Some(500..=599) | None => Outcome::Keep,
        Some(_) => match kept(head, now, settings) {
            Some(Kept::Body(_)) if body_len as u64 > settings.max_body => Outcome::Remove,
            Some(kept) => Outcome::Replace(kept.entry(body, now)),
            None => Outcome::Remove,
        },
    }
}

/// Background refreshes of one plugin instance: queued by stream contexts
/// that served stale, sent by the root context, answered to it. One per
/// key at a time.
#[derive(Debug, Default)]
pub struct Refresher {
    queued: VecDeque<Refresh>,
    in_flight: HashMap<u32, Refresh>,
    keys: HashSet<String>,
}

impl Refresher {
    /// Queue `job`; false when its key is already queued or in flight, or
    /// the refresher holds [`MAX_REFRESHES`] jobs.
    pub fn request(&mut self, job: Refresh) -> bool {
        if self.keys.len() >= MAX_REFRESHES || !self.keys.insert(job.key.clone()) {
            return false;
        }
        self.queued.push_back(job);
        true
    }

    /// Take the queued jobs to send.
    pub fn take_queued(&mut self) -> Vec<Refresh> {
        self.queued.drain(..).collect()
    }

    /// `job` went out as callout `token`.
    pub fn sent(&mut self, token: u32, job: Refresh) {
        if let Some(old) = self.in_flight.insert(token, job) {
            // A host reusing a live token: forget the older job's key so it
            // can be asked for again.
            self.keys.remove(&old.key);
        }
    }

    /// `job` could not be sent; its key may be asked for again.
    pub fn not_sent(&mut self, job: &Refresh) {
        self.keys.remove(&job.key);
    }

    /// Callout `token` was answered: its job, if it is one of ours.
    pub fn answered(&mut self, token: u32) -> Option<Refresh> {
        let job = self.in_flight.remove(&token)?;
        self.keys.remove(&job.key);
        Some(job)
    }

    /// Jobs queued or in flight.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no job is queued or in flight.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            max_body: 100,
            fresh_for: 10_000,
            negative_fresh_for: 2_000,
            stale_while_revalidate: 5_000,
            upstream: Some("origin".into()),
            ..Settings::default()
        }
    }

    fn get<'a>(path: &'a [u8]) -> Request<'a> {
        Request {
            method: b"GET",
            path: Some(path),
            authority: Some(b"Example.COM"),
            ..Request::default()
        }
    }

    fn head(pairs: &[(&str, &str)]) -> Head {
        Head::from_pairs(pairs.iter().map(|(n, v)| (*n, v.as_bytes())))
    }

    fn stored(pairs: &[(&str, &str)], body: &[u8], now: u64) -> Entry {
        let s = settings();
        let mut c = Capture::new("k".into());
        c.headers(head(pairs), now, &s);
        if c.wants(body.len(), &s) {
            c.push(body);
        }
        c.finish(&s).expect("stored").1
    }

    #[test]
    fn key_is_authority_and_path() {
        let s = settings();
        assert_eq!(
            plan(&s, &get(b"/a?b=1")),
            Plan::Lookup {
                key: "example.com/a?b=1".into(),
                head: false
            }
        );
        let no_auth = Settings {
            key_authority: false,
            ..settings()
        };
        assert_eq!(
            cache_key(&no_auth, &get(b"/a?b=1")).as_deref(),
            Some("/a?b=1")
        );
        let head_req = Request {
            method: b"HEAD",
            ..get(b"/x")
        };
        assert!(matches!(
            plan(&s, &head_req),
            Plan::Lookup { head: true, .. }
        ));
        let post = Request {
            method: b"POST",
            ..get(b"/x")
        };
        assert_eq!(
            plan(&s, &post),
            Plan::Invalidate {
                key: "example.com/x".into()
            }
        );
    }

    #[test]
    fn odd_requests_pass_through() {
        let s = settings();
        let long = vec![b'a'; 5000];
        let cases = [
            Request {
                path: None,
                ..get(b"/")
            },
            get(b""),
            get(b"/\xff\xfe"),
            Request {
                authority: Some(b"\xc3"),
                ..get(b"/")
            },
            get(&long),
            Request {
                authorization: true,
                ..get(b"/")
            },
            Request {
                range: true,
                ..get(b"/")
            },
            Request {
                method: b"OPTIONS",
                ..get(b"/")
            },
            Request {
                method: b"\x00\xff",
                ..get(b"/")
            },
        ];
        for req in cases {
            assert_eq!(plan(&s, &req), Plan::Pass, "{req:?}");
        }
    }

    #[test]
    fn fresh_entry_is_a_hit_with_its_headers() {
        let s = settings();
        let e = stored(
            &[
                (":status", "200"),
                ("etag", "\"v1\""),
                ("content-type", "text/plain"),
                ("cache-control", "public"),
            ],
            b"hello",
            1_000,
        );
        let Verdict::Hit(r) = judge(&e, 4_500, &s, 0, None, false, true) else {
            panic!("not a hit");
        };
        assert_eq!(r.status, 200);
        assert_eq!(r.body.as_deref(), Some(&b"hello"[..]));
        assert_eq!(
            r.header("cache-status"),
            Some("daramjwee; hit; detail=tier0")
        );
        assert_eq!(r.header("age"), Some("3"));
        assert_eq!(r.header("etag"), Some("\"v1\""));
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.header("cache-control"), Some("public"));
        let Verdict::Hit(h) = judge(&e, 4_500, &s, 1, None, true, true) else {
            panic!("not a hit");
        };
        assert_eq!((h.status, h.body.is_none()), (200, true));
        assert_eq!(
            h.header("cache-status"),
            Some("daramjwee; hit; detail=tier1")
        );
    }

    #[test]
    fn matching_validator_gets_304() {
        let s = settings();
        let e = stored(&[(":status", "200"), ("etag", "W/\"v1\"")], b"x", 0);
        let Verdict::Hit(r) = judge(&e, 1, &s, 0, Some(b"\"v0\", \"v1\""), false, true) else {
            panic!("not a hit");
        };
        assert_eq!((r.status, r.body.is_none()), (304, true));
        assert_eq!(r.header("etag"), Some("W/\"v1\""));
        let Verdict::Hit(r) = judge(&e, 1, &s, 0, Some(b"\"v2\""), false, true) else {
            panic!("not a hit");
        };
        assert_eq!(r.status, 200);
        let Verdict::Hit(r) = judge(&e, 1, &s, 0, Some(b"\xff"), false, true) else {
            panic!("not a hit");
        };
        assert_eq!(r.status, 200);
    }

    #[test]
    fn windows_come_from_cache_control_then_settings() {
        let s = settings();
        let e = stored(&[(":status", "200")], b"x", 0);
        assert!(matches!(
            judge(&e, 9_999, &s, 0, None, false, true),
            Verdict::Hit(_)
        ));
        let Verdict::Stale(r) = judge(&e, 10_000, &s, 0, None, false, true) else {
            panic!("not stale");
        };
        assert_eq!(
            r.header("cache-status"),
            Some("daramjwee; fwd=stale; detail=revalidating-tier0")
        );
        assert_eq!(judge(&e, 15_000, &s, 0, None, false, true), Verdict::Miss);
        // Without a way to refresh, stale is a miss.
        assert_eq!(judge(&e, 10_000, &s, 0, None, false, false), Verdict::Miss);

        let cc = stored(
            &[
                (":status", "200"),
                ("cache-control", "max-age=2, stale-while-revalidate=1"),
            ],
            b"x",
            0,
        );
        assert!(matches!(
            judge(&cc, 1_999, &s, 0, None, false, true),
            Verdict::Hit(_)
        ));
        assert!(matches!(
            judge(&cc, 2_500, &s, 0, None, false, true),
            Verdict::Stale(_)
        ));
        assert_eq!(judge(&cc, 3_000, &s, 0, None, false, true), Verdict::Miss);
        // An explicit lifetime without stale-while-revalidate has no stale window.
        let strict = stored(
            &[(":status", "200"), ("cache-control", "s-maxage=1")],
            b"x",
            0,
        );
        assert_eq!(
            judge(&strict, 1_000, &s, 0, None, false, true),
            Verdict::Miss
        );
        // An upstream Age makes the copy older.
        let aged = stored(&[(":status", "200"), ("age", "9")], b"x", 10_000);
        assert!(matches!(
            judge(&aged, 11_000, &s, 0, None, false, true),
            Verdict::Stale(_)
        ));
    }

    #[test]
    fn not_found_is_remembered_negatively() {
        let s = settings();
        for status in ["404", "410"] {
            let e = stored(
                &[(":status", status), ("content-length", "9")],
                b"not found",
                0,
            );
            assert!(e.meta.negative);
            assert!(e.body.is_empty());
            let Verdict::Hit(r) = judge(&e, 1_999, &s, 0, None, false, true) else {
                panic!("not a hit");
            };
            assert_eq!((r.status, r.body.is_none()), (404, true));
            assert_eq!(judge(&e, 2_000, &s, 0, None, false, true), Verdict::Miss);
        }
    }

    #[test]
    fn unstorable_responses_say_so() {
        let s = settings();
        for pairs in [
            &[(":status", "500")][..],
            &[(":status", "503")],
            &[(":status", "302")],
            &[(":status", "206")],
            &[(":status", "200"), ("cache-control", "no-store")],
            &[
                (":status", "200"),
                ("cache-control", "max-age=5"),
                ("Cache-Control", "private"),
            ],
            &[(":status", "200"), ("vary", "accept-encoding")],
            &[(":status", "200"), ("content-length", "101")],
            &[(":status", "nope")],
            &[],
        ] {
            let mut c = Capture::new("k".into());
            let status = c.headers(head(pairs), 0, &s);
            assert!(!status.ends_with("stored"), "{pairs:?}: {status}");
            if pairs.first() == Some(&(":status", "503")) {
                assert_eq!(
                    status,
                    "daramjwee; fwd=miss; fwd-status=503; detail=origin-error"
                );
            }
            assert!(!c.wants(10, &s));
            assert!(c.finish(&s).is_none(), "{pairs:?}");
        }
        let mut c = Capture::new("k".into());
        let bad = Head::from_pairs([(":status", &b"200"[..]), ("etag", b"\"\xff\"")]);
        c.headers(bad, 0, &s);
        assert!(c.finish(&s).is_none());
    }

    #[test]
    fn body_over_the_bound_is_dropped_across_chunks() {
        let s = settings();
        let mut c = Capture::new("k".into());
        assert_eq!(
            c.headers(head(&[(":status", "200")]), 0, &s),
            "daramjwee; fwd=miss; fwd-status=200; stored"
        );
        for _ in 0..2 {
            assert!(c.wants(40, &s));
            c.push(&[1; 40]);
        }
        assert!(!c.wants(40, &s));
        assert!(!c.wants(1, &s));
        assert!(c.finish(&s).is_none());

        let mut c = Capture::new("k".into());
        c.headers(head(&[(":status", "200")]), 0, &s);
        for chunk in [&b"ab"[..], b"", b"cd"] {
            if c.wants(chunk.len(), &s) {
                c.push(chunk);
            }
        }
        let (key, e) = c.finish(&s).unwrap();
        assert_eq!((key.as_str(), &*e.body), ("k", &b"abcd"[..]));
    }

    #[test]
    fn a_hit_sends_the_whole_stored_head_but_a_304_leaves_out_the_body_fields() {
        let s = settings();
        let e = stored(
            &[
                (":status", "200"),
                ("etag", "\"v1\""),
                ("content-type", "a/b"),
                ("content-encoding", "gzip"),
                ("link", "</style.css>; rel=preload"),
                ("access-control-allow-origin", "*"),
                ("cache-control", "max-age=60"),
                ("connection", "x-hop"),
                ("x-hop", "1"),
                ("content-length", "3"),
            ],
            b"abc",
            0,
        );
        let Verdict::Hit(hit) = judge(&e, 1_000, &s, 0, None, false, true) else {
            panic!("a fresh hit")
        };
        for (name, value) in [
            ("content-type", "a/b"),
            ("content-encoding", "gzip"),
            ("link", "</style.css>; rel=preload"),
            ("access-control-allow-origin", "*"),
            ("cache-control", "max-age=60"),
            ("etag", "\"v1\""),
        ] {
            assert_eq!(hit.header(name), Some(value), "{name}");
        }
        assert_eq!(hit.header("x-hop"), None, "hop-by-hop fields are not kept");
        let Verdict::Hit(not_modified) = judge(&e, 1_000, &s, 0, Some(b"\"v1\""), false, true)
        else {
            panic!("a fresh hit")
        };
        assert_eq!(not_modified.status, 304);
        assert_eq!(not_modified.header("content-type"), None);
        assert_eq!(
            not_modified.header("link"),
            Some("</style.css>; rel=preload")
        );
        // A field that is not UTF-8 is never stored altered.
        let mut c = Capture::new("k".into());
        c.headers(
            Head::from_pairs([(":status", &b"200"[..]), ("x-raw", &b"\xff"[..])]),
            0,
            &s,
        );
        c.push(b"abc");
        assert!(c.finish(&s).is_none());
    }

    #[test]
    fn refresh_answers_replace_remove_or_keep() {
        let s = settings();
        let old = stored(
            &[
                (":status", "200"),
                ("etag", "\"v1\""),
                ("content-type", "a/b"),
            ],
            b"old",
            0,
        );
        let new = refreshed(
            Some(&old),
            &head(&[(":status", "200"), ("etag", "\"v2\"")]),
            b"new",
            3,
            50_000,
            &s,
        );
        let Outcome::Replace(e) = new else {
            panic!("{new:?}")
        };
        assert_eq!(
            (&*e.body, e.meta.tag.as_str(), e.meta.cached_at),
            (&b"new"[..], "\"v2\"", Some(50_000))
        );

        let same = refreshed(
            Some(&old),
            &head(&[(":status", "304"), ("x-new", "1"), ("etag", "\"v9\"")]),
            b"",
            0,
            50_000,
            &s,
        );
        let Outcome::Replace(e) = same else {
            panic!("{same:?}")
        };
        assert_eq!(
            (&*e.body, e.meta.tag.as_str(), e.meta.cached_at),
            (&b"old"[..], "\"v1\"", Some(50_000))
        );
        // The stored head is kept, and updated by the 304's fields.
        assert_eq!(e.attribute("h:content-type"), Some("a/b"));
        assert_eq!(e.attribute("h:x-new"), Some("1"));
        assert_eq!(
            refreshed(None, &head(&[(":status", "304")]), b"", 0, 1, &s),
            Outcome::Keep
        );

        let gone = refreshed(Some(&old), &head(&[(":status", "404")]), b"", 0, 1, &s);
        assert!(matches!(gone, Outcome::Replace(e) if e.meta.negative));
        for pairs in [
            &[(":status", "200"), ("cache-control", "no-store")][..],
            &[(":status", "200"), ("vary", "*")],
        ] {
            assert_eq!(
                refreshed(Some(&old), &head(pairs), b"x", 1, 1, &s),
                Outcome::Remove
            );
        }
        assert_eq!(
            refreshed(Some(&old), &head(&[(":status", "200")]), b"", 101, 1, &s),
            Outcome::Remove
        );
        for pairs in [&[(":status", "503")][..], &[]] {
            assert_eq!(
                refreshed(Some(&old), &head(pairs), b"", 0, 1, &s),
                Outcome::Keep
            );
        }
    }

    #[test]
    fn a_response_is_kept_as_every_home_keeps_it() {
        let s = settings();
        // A cookie is the requesting client's: the response is kept
        // without it (the client got it as it came).
        let e = stored(
            &[
                (":status", "200"),
                ("cache-control", "max-age=60"),
                ("set-cookie", "id=1"),
                ("content-type", "a/b"),
            ],
            b"x",
            0,
        );
        assert_eq!(e.attribute("h:set-cookie"), None);
        let Verdict::Hit(hit) = judge(&e, 1_000, &s, 0, None, false, true) else {
            panic!("a fresh hit")
        };
        assert_eq!(hit.header("set-cookie"), None);
        assert_eq!(hit.header("content-type"), Some("a/b"));
        // Any status the rules keep with a lifetime is answered as it was.
        let moved = stored(
            &[
                (":status", "301"),
                ("location", "/b"),
                ("cache-control", "max-age=60"),
            ],
            b"",
            0,
        );
        let Verdict::Hit(hit) = judge(&moved, 1_000, &s, 0, Some(b"*"), false, true) else {
            panic!("a fresh hit")
        };
        assert_eq!((hit.status, hit.header("location")), (301, Some("/b")));
        // A 404 with a lifetime of its own is its page, not "not found".
        let page = stored(
            &[(":status", "404"), ("cache-control", "max-age=60")],
            b"missing page",
            0,
        );
        assert!(!page.meta.negative);
        let Verdict::Hit(hit) = judge(&page, 1_000, &s, 0, None, false, true) else {
            panic!("a fresh hit")
        };
        assert_eq!(hit.status, 404);
        assert_eq!(hit.body.as_deref(), Some(&b"missing page"[..]));
        // A refresh validates with every validator the entry has.
        let dated = stored(
            &[
                (":status", "200"),
                ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ],
            b"x",
            0,
        );
        let job = Refresh::new("k", &get(b"/x"), &dated, "origin").unwrap();
        assert!(
            job.headers()
                .contains(&("if-modified-since", "Mon, 01 Jan 2024 00:00:00 GMT"))
        );
    }

    #[test]
    fn refresher_sends_one_refresh_per_key() {
        let e = stored(&[(":status", "200"), ("etag", "\"v1\"")], b"x", 0);
        let job = Refresh::new("k", &get(b"/p"), &e, "origin").unwrap();
        assert_eq!(
            job.headers(),
            [
                (":method", "GET"),
                (":path", "/p"),
                (":authority", "Example.COM"),
                ("if-none-match", "\"v1\"")
            ]
        );
        let bare = Request {
            authority: None,
            ..get(b"/p")
        };
        assert_eq!(
            Refresh::new("k", &bare, &e, "origin").unwrap().authority,
            "origin"
        );

        let mut r = Refresher::default();
        assert!(r.request(job.clone()));
        assert!(!r.request(job.clone()));
        let queued = r.take_queued();
        assert_eq!(queued.len(), 1);
        r.sent(7, queued[0].clone());
        assert!(!r.request(job.clone()), "in flight");
        assert_eq!(r.answered(8), None);
        assert_eq!(r.answered(7), Some(job.clone()));
        assert!(r.is_empty());
        assert!(r.request(job.clone()));
        let queued = r.take_queued();
        r.not_sent(&queued[0]);
        assert_eq!(r.len(), 0);
        for i in 0..MAX_REFRESHES + 5 {
            let mut j = job.clone();
            j.key = i.to_string();
            r.request(j);
        }
        assert_eq!(r.len(), MAX_REFRESHES);
    }
}
