//! The HTTP face of the cache: requests in, the origin behind, the shared
//! cache's rules of RFC 9111 where they apply and an RFC 9211
//! `Cache-Status` out. Every reading of a client's or the origin's head
//! is the rules' (`HttpRules`: the engine component's `http` interface,
//! judged in the sandbox); this module moves bytes and builds responses
//! from what they decide. What the cache does not keep passes through as
//! it came.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::TryStreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::metrics::Metrics;
use crate::rules::{HttpRules, Judgement, OriginUrl, Policy};
use crate::{Cache, Error, FetchResult, Fetcher, GetResponse, Metadata, Result, Source, Status};
use daramjwee_component::http::rfc9111;
use daramjwee_component::http::{
    CACHE_STATUS, Forward as Outcome, Served, cache_status as status_line, failure_status,
};
use daramjwee_component::{Conditions, Freshness, classify};

/// Body of every response the proxy sends.
pub type ProxyBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// Bodies the cache holds up to this size are read whole before the
/// response starts.
const WHOLE_BODY: u64 = 64 * 1024;

/// The address of the client of a request, put in its extensions by the
/// listener.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub SocketAddr);

/// Shared by every request.
pub(crate) struct State {
    pub cache: Cache,
    /// Never follows redirects: they are the client's to follow.
    pub client: reqwest::Client,
    /// Origin base URL without a trailing slash.
    pub origin: String,
    pub origin_timeout: Duration,
    /// SHA-256 of the admin token, so comparing takes the same time
    /// whatever the length of the guess.
    pub admin_token: Option<[u8; 32]>,
    pub metrics: Arc<Metrics>,
    /// The cache's window for entries without one of their own, in ms.
    pub window_ms: u64,
    /// The operator's choices the RFC leaves to the cache.
    pub policy: Policy,
    /// The rules, judged in the engine component.
    pub rules: HttpRules,
    /// The origin's scheme, authority and path prefix, for the rules.
    pub origin_url: OriginUrl,
    /// One permit for each request that may be at the origin at once
    /// (`--max-origin-connections`), held until its answer's body ends.
    pub origin_slots: Arc<tokio::sync::Semaphore>,
}

/// A request's place at the origin, held while its answer is read.
type Slot = tokio::sync::OwnedSemaphorePermit;

/// Wait, at most the origin timeout, for a place at the origin.
async fn origin_slot(state: &State) -> Result<Slot> {
    let slots = Arc::clone(&state.origin_slots);
    match tokio::time::timeout(state.origin_timeout, slots.acquire_owned()).await {
        Ok(Ok(slot)) => Ok(slot),
        Ok(Err(_)) => Err(Error::Closed),
        Err(_) => Err(Error::Timeout),
    }
}

/// A header map's fields as they came, for the rules.
fn raw_fields(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}

/// The fields of `headers` at `indices` (of its iteration order, as
/// [`raw_fields`] lists them).
fn picked(headers: &HeaderMap, indices: &[u32]) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(indices.len());
    let mut wanted = indices.iter().copied().peekable();
    for (i, (name, value)) in headers.iter().enumerate() {
        if wanted.peek() == Some(&(i as u32)) {
            wanted.next();
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// `headers` less the hop-by-hop fields (those `Connection` names too),
/// as the rules choose them.
fn end_to_end(rules: &HttpRules, headers: &HeaderMap) -> Result<HeaderMap> {
    let kept = rules.end_to_end(&raw_fields(headers))?;
    Ok(picked(headers, &kept))
}

/// The fields a request with `headers` (as they came, and as `raw`) takes
/// to the origin, as the rules choose them (for a fill of `held`, with
/// its validators).
fn upstream_fields(
    rules: &HttpRules,
    headers: &HeaderMap,
    raw: &[(String, Vec<u8>)],
    peer: Option<Peer>,
    fill: bool,
    held: Option<&Metadata>,
) -> Result<HeaderMap> {
    let client = peer.map(|Peer(addr)| addr.ip().to_string());
    let up = rules.upstream(raw, client.as_deref(), "http", fill, held)?;
    let mut out = picked(headers, &up.kept);
    for (name, value) in up.added {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            out.insert(name, value);
        }
    }
    Ok(out)
}

/// Where `origin` (a base URL) is, as the rules need it to tell which
/// `Location`s are its own.
pub(crate) fn origin_url_parts(origin: &str) -> Result<OriginUrl> {
    let url = reqwest::Url::parse(origin)
        .map_err(|e| Error::InvalidConfig(format!("origin: {origin}: {e}")))?;
    Ok(OriginUrl {
        scheme: url.scheme().to_owned(),
        authority: url[url::Position::BeforeHost..url::Position::AfterPort].to_owned(),
        prefix: url.path().trim_end_matches('/').to_owned(),
    })
}

/// The origin URL of request target `key` on `origin` (whose path,
/// without its trailing slash, is `prefix`: [`origin_url_parts`]), or why
/// it cannot be fetched as it came (a URL parser would rewrite it: dot
/// segments, backslashes and the like), so that what is keyed is what is
/// fetched.
fn origin_url(origin: &str, prefix: &str, key: &str) -> std::result::Result<reqwest::Url, String> {
    let text = format!("{origin}{key}");
    let url = reqwest::Url::parse(&text).map_err(|e| format!("{key}: {e}"))?;
    let fetched = &url[url::Position::BeforePath..];
    if fetched.strip_prefix(prefix) != Some(key) {
        return Err(format!(
            "the target {key:?} cannot be sent to the origin as it came"
        ));
    }
    Ok(url)
}

/// `Ok` when target `key` reaches the origin as it came. A target of
/// plain characters needs no URL parse (a hit pays for none); one with
/// `%`, `\\`, a dot segment or a character a parser would encode gets
/// [`origin_url`]'s check.
fn checked_target(origin: &str, prefix: &str, key: &str) -> std::result::Result<(), String> {
    let plain = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_~!$&'()*+,;=:@/?".contains(&b) || b == b'.')
        && !key
            .split(['/', '?'])
            .any(|segment| segment == "." || segment == "..");
    if plain {
        Ok(())
    } else {
        origin_url(origin, prefix, key).map(drop)
    }
}

/// `Ok` when a request's head can be passed on in one shape only (RFC
/// 9112): one `Host` line on HTTP/1.1 (§3.2), not both `Content-Length`
/// and `Transfer-Encoding` (§6.1: the two framings a smuggled request
/// plays against each other), and a target in origin or absolute form
/// (`CONNECT`'s authority form and `OPTIONS *` are not a reverse proxy's
/// to forward).
fn well_framed<B>(request: &Request<B>) -> std::result::Result<(), String> {
    let headers = request.headers();
    let hosts = headers.get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Err("a request has one Host field".into());
    }
    if hosts == 0 && request.version() == http::Version::HTTP_11 {
        return Err("an HTTP/1.1 request has a Host field".into());
    }
    if headers.contains_key(header::TRANSFER_ENCODING)
        && headers.contains_key(header::CONTENT_LENGTH)
    {
        return Err("a request has Content-Length or Transfer-Encoding, not both".into());
    }
    if request.method() == Method::CONNECT || request.uri().path_and_query().is_none() {
        return Err("CONNECT and authority-form targets are not forwarded".into());
    }
    if request.uri().path() == "*" {
        return Err("asterisk-form targets (OPTIONS *) are not forwarded".into());
    }
    Ok(())
}

/// Seconds since the epoch.
fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What one request's trip to the origin left for the request.
#[derive(Default)]
struct Trip {
    outcome: Outcome,
    /// An answer the cache does not keep (another status), handed back to
    /// the request to pass on as it came.
    passed: Option<(reqwest::Response, Slot)>,
    /// Fields of the answer that go to this request's client only
    /// (`Set-Cookie`, those `private="..."` names): not stored, so not in
    /// the entry the response is built from.
    personal: HeaderMap,
}

/// The origin as seen by one request. What only a fetch needs (the URL,
/// the fields to send, the rules' reading of the request) is made when
/// the origin is asked, not for every hit.
struct HttpOrigin {
    /// The client, the origin's base URL, the timeout and the policy.
    state: Arc<State>,
    /// The request target (checked by `handle`).
    key: String,
    /// The client's request fields, as they came.
    request: Arc<HeaderMap>,
    peer: Option<Peer>,
    /// The client said `only-if-cached`: the origin is not asked.
    cached_only: bool,
    trip: Arc<Mutex<Trip>>,
}

impl HttpOrigin {
    fn record(&self, f: impl FnOnce(&mut Trip)) {
        if let Ok(mut trip) = self.trip.lock() {
            f(&mut trip);
        }
    }
}

/// The message of the error that tells the request its answer passed
/// through (it is in `passed`).
const PASSED: &str = "the origin's answer passes through";

/// The message of the error that tells an `only-if-cached` request that
/// the cache holds nothing it may answer with.
const NOT_CACHED: &str = "only-if-cached: nothing stored answers the request";

impl Fetcher for HttpOrigin {
    async fn fetch(&self, _key: &str, held: Option<&Metadata>) -> Result<FetchResult> {
        if self.cached_only {
            return Err(Error::Origin(NOT_CACHED.into()));
        }
        self.record(|t| t.outcome.fetched = true);
        let state = &self.state;
        let url = origin_url(&state.origin, &state.origin_url.prefix, &self.key)
            .map_err(Error::Origin)?;
        let raw_request = raw_fields(&self.request);
        let headers = upstream_fields(
            &state.rules,
            &self.request,
            &raw_request,
            self.peer,
            true,
            held,
        )?;
        let slot = origin_slot(state).await?;
        let request_time = now_secs();
        let request = state.client.get(url.clone()).headers(headers);
        let response = match tokio::time::timeout(state.origin_timeout, request.send()).await {
            Err(_) => {
                return Err(Error::Origin(format!(
                    "{url} did not answer within {:?}",
                    state.origin_timeout
                )));
            }
            Ok(Err(e)) => return Err(Error::Origin(format!("{url}: {}", causes(&e)))),
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        self.record(|t| t.outcome.status = Some(status));
        let judged = state.rules.judge(
            raw_request,
            status,
            raw_fields(response.headers()),
            request_time,
            now_ms(),
            held,
            &state.policy,
            &new_set(),
        )?;
        if !judged.personal.is_empty() {
            let personal = picked(response.headers(), &judged.personal);
            self.record(|t| t.personal = personal);
        }
        match judged.judgement {
            // The 304's fields updated the stored ones, and the freshness
            // they give counts from now.
            Judgement::Revalidated => Ok(FetchResult::Revalidated(judged.meta)),
            Judgement::Missing => Ok(FetchResult::NotFound),
            Judgement::Body { stored } => {
                self.record(|t| t.outcome.no_store = !stored);
                Ok(FetchResult::Body {
                    meta: judged.meta,
                    size: response.content_length(),
                    body: Box::pin(response.bytes_stream().map_err(move |e| {
                        // The place at the origin goes with the body.
                        let _slot = &slot;
                        Error::Origin(format!("the body of {url} broke off: {}", causes(&e)))
                    })),
                    no_store: !stored,
                })
            }
            Judgement::Passed => {
                self.record(|t| {
                    t.outcome.no_store = true;
                    t.passed = Some((response, slot));
                });
                Err(Error::Origin(PASSED.into()))
            }
        }
    }
}

/// An error and every cause under it, `: `-separated: the client's error
/// alone says "error sending request", its causes say why (a refused
/// connection, a header block over the limit, ...).
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// Milliseconds since the epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A name for the set of variants a response that varies heads: unique
/// to this fetch.
fn new_set() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{:x}.{:x}",
        now_ms(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Serve one request on the proxy listener. Never fails: every problem
/// is a status code.
pub(crate) async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> std::result::Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let method = request.method().clone();
    let key = request
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
    let framed = well_framed(&request);
    let checked = |()| checked_target(&state.origin, &state.origin_url.prefix, &key);
    let response = match framed.and_then(checked) {
        Err(why) => {
            let mut refused = text(StatusCode::BAD_REQUEST, &format!("{why}\n"));
            // What follows a head that could be read two ways is not read.
            refused
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            refused
        }
        // A request with credentials is the origin's to answer: nothing
        // stored is handed to it and nothing it gets is stored.
        Ok(())
            if matches!(method, Method::GET | Method::HEAD)
                && !request.headers().contains_key(header::AUTHORIZATION) =>
        {
            get(&state, &key, request).await
        }
        Ok(()) => match origin_url(&state.origin, &state.origin_url.prefix, &key) {
            Ok(url) => pass(&state, &key, url, request).await,
            Err(why) => text(StatusCode::BAD_REQUEST, &format!("{why}\n")),
        },
    };
    let elapsed = started.elapsed();
    state.metrics.latency.observe(elapsed.as_secs_f64());
    if response.status().is_server_error() {
        state.metrics.errors.inc();
    }
    let cache_status = response
        .headers()
        .get(CACHE_STATUS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info!(
        method = %method,
        key,
        status = response.status().as_u16(),
        cache_status,
        ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    Ok(response)
}

/// Pass a request to the origin as it came (method, target, end-to-end
/// fields, body streamed) and its answer back the same way. A success of
/// an unsafe method invalidates the stored responses of its target and of
/// the same-origin `Location` and `Content-Location` it names (RFC 9111
/// §4.4).
async fn pass(
    state: &State,
    key: &str,
    url: reqwest::Url,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let peer = request.extensions().get::<Peer>().copied();
    let (parts, body) = request.into_parts();
    let method = parts.method.clone();
    let raw = raw_fields(&parts.headers);
    let headers = match upstream_fields(&state.rules, &parts.headers, &raw, peer, false, None) {
        Ok(headers) => headers,
        Err(e) => return failure(&e, &Outcome::default()),
    };
    let slot = match origin_slot(state).await {
        Ok(slot) => slot,
        Err(e) => return failure(&e, &Outcome::default()),
    };
    let body = reqwest::Body::wrap_stream(body.into_data_stream());
    let request = state
        .client
        .request(method.clone(), url.clone())
        .headers(headers)
        .body(body);
    let response = match tokio::time::timeout(state.origin_timeout, request.send()).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return unreachable_origin(&format!("{url}: {}", causes(&e)), false),
        Err(_) => return unreachable_origin(&format!("{url} did not answer"), true),
    };
    let outcome = Outcome {
        fetched: true,
        status: Some(response.status().as_u16()),
        no_store: true,
    };
    let targets = state.rules.invalidated(
        method.as_str(),
        response.status().as_u16(),
        &state.origin_url,
        key,
        &raw_fields(response.headers()),
    );
    let targets = match targets {
        Ok(targets) => targets,
        Err(e) => return failure(&e, &outcome),
    };
    for target in targets {
        if let Err(e) = state.cache.delete(&target).await {
            tracing::warn!(target, "cannot invalidate after {method}: {e}");
        }
    }
    state.metrics.misses.inc();
    relay(
        &state.rules,
        response,
        slot,
        status_line(Served::Origin, &outcome),
        &outcome,
    )
}

/// The origin's answer as it came, but for hop-by-hop fields, with our
/// `Cache-Status`.
fn relay(
    rules: &HttpRules,
    response: reqwest::Response,
    slot: Slot,
    cache_status: String,
    outcome: &Outcome,
) -> Response<ProxyBody> {
    let status = response.status();
    let headers = match end_to_end(rules, response.headers()) {
        Ok(headers) => headers,
        Err(e) => return failure(&e, outcome),
    };
    let body = response
        .bytes_stream()
        .map_ok(Frame::data)
        .map_err(move |e| {
            // The place at the origin goes with the body.
            let _slot = &slot;
            std::io::Error::other(e.to_string())
        });
    let mut relayed = Response::new(BodyExt::boxed_unsync(StreamBody::new(body)));
    *relayed.status_mut() = status;
    *relayed.headers_mut() = headers;
    if let Ok(value) = HeaderValue::from_str(&cache_status) {
        relayed.headers_mut().insert(CACHE_STATUS, value);
    }
    relayed
}

/// 502 (or 504 when it timed out) for an origin that did not answer.
fn unreachable_origin(why: &str, timed_out: bool) -> Response<ProxyBody> {
    let (status, detail) = if timed_out {
        (StatusCode::GATEWAY_TIMEOUT, "timeout")
    } else {
        (StatusCode::BAD_GATEWAY, "origin-error")
    };
    let outcome = Outcome {
        fetched: true,
        ..Outcome::default()
    };
    let mut response = text(status, &format!("{why}\n"));
    if let Ok(value) = HeaderValue::from_str(&failure_status(detail, &outcome)) {
        response.headers_mut().insert(CACHE_STATUS, value);
    }
    response
}

async fn get(state: &Arc<State>, key: &str, request: Request<Incoming>) -> Response<ProxyBody> {
    let (parts, _) = request.into_parts();
    let head = parts.method == Method::HEAD;
    let peer = parts.extensions.get::<Peer>().copied();
    // Moved, not copied: a hit reads it, a fetch shares it.
    let shared_headers = Arc::new(parts.headers);
    let headers = &*shared_headers;
    // What the request asks of a stored answer, read only when it asks
    // anything beyond `If-None-Match` (a hit stays a header lookup).
    let asks = headers.contains_key(header::CACHE_CONTROL)
        || headers.contains_key(header::PRAGMA)
        || headers.contains_key(header::IF_MODIFIED_SINCE);
    let mut request_fields = if asks {
        raw_fields(headers)
    } else {
        Vec::new()
    };
    let (conditions, cached_only) = if asks {
        match state.rules.read_request(&request_fields) {
            Ok(reading) => (reading.conditions, reading.only_if_cached),
            Err(e) => return failure(&e, &Outcome::default()),
        }
    } else {
        let inm = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok());
        (Conditions::if_none_match(inm), false)
    };
    // The URL's entry, or, when what is stored there varies and was
    // fetched for other values of the fields its `Vary` names, the
    // variant this request selects, under a key of its own.
    let mut entry_key = key.to_owned();
    let mut hops = 0;
    let stale_asked = conditions.max_stale.is_some();
    let (result, trip) = loop {
        let trip = Arc::new(Mutex::new(Trip::default()));
        let origin = HttpOrigin {
            state: Arc::clone(state),
            key: key.to_owned(),
            request: Arc::clone(&shared_headers),
            peer,
            cached_only,
            trip: Arc::clone(&trip),
        };
        let result = state
            .cache
            .get_with(&entry_key, conditions.clone(), origin)
            .await;
        if let Ok(found) = &result
            && found.status != Status::NotFound
            && hops < 2
            && rfc9111::stored_fields(&found.meta.attributes).any(|(name, _)| name == "vary")
        {
            if !asks && request_fields.is_empty() {
                request_fields = raw_fields(headers);
            }
            let variant =
                match state
                    .rules
                    .variant_key(key, &found.meta.attributes, &request_fields)
                {
                    Ok(variant) => variant,
                    Err(e) => break (Err(e), trip),
                };
            if let Some(variant) = variant {
                hops += 1;
                if variant == entry_key {
                    // The variant's own entry no longer fits (its `Vary`
                    // changed): fetch it anew.
                    let _ = state.cache.delete(&entry_key).await;
                }
                entry_key = variant;
                continue;
            }
        }
        break (result, trip);
    };
    let outcome = trip.lock().map(|t| t.outcome.clone()).unwrap_or_default();
    let response = match result {
        Ok(response) => response,
        Err(e) => {
            if let Some((passed, slot)) = trip.lock().ok().and_then(|mut t| t.passed.take()) {
                state.metrics.misses.inc();
                let mut response = relay(
                    &state.rules,
                    passed,
                    slot,
                    status_line(Served::Origin, &outcome),
                    &outcome,
                );
                if head {
                    *response.body_mut() = empty();
                }
                return response;
            }
            if matches!(&e, Error::Origin(why) if why == NOT_CACHED) {
                let mut response = text(StatusCode::GATEWAY_TIMEOUT, &format!("{NOT_CACHED}\n"));
                if let Ok(value) = HeaderValue::from_str(&failure_status("not-cached", &outcome)) {
                    response.headers_mut().insert(CACHE_STATUS, value);
                }
                return response;
            }
            return failure(&e, &outcome);
        }
    };
    let cache_status = cache_status(&response, &outcome, state.window_ms, stale_asked);
    let metrics = &state.metrics;
    match response.source {
        Source::Tier(i) if !outcome.fetched => metrics.hit(i),
        Source::Tier(_) | Source::Origin => {
            metrics.misses.inc();
        }
        Source::Joined => {
            metrics.coalesced.inc();
        }
    }
    if response.stale {
        metrics.stale.inc();
    }
    // Bodies the cache holds come fast; a miss's only as fast as the
    // origin sends it, so it streams whatever its size.
    let held = matches!(response.source, Source::Tier(_)) && !outcome.fetched;
    let GetResponse {
        status,
        meta,
        mut body,
        source,
        ..
    } = response;
    // A client's `If-Modified-Since` that the stored `Last-Modified`
    // answers: 304, the body (of a fill, still read to its end) not sent.
    let not_modified = if status == Status::Ok && asks {
        match state.rules.not_modified(&meta.attributes, &request_fields) {
            Ok(not_modified) => not_modified,
            Err(e) => return failure(&e, &outcome),
        }
    } else {
        false
    };
    let status = if not_modified {
        if let Some(body) = body.take() {
            tokio::spawn(async move {
                let _ = body.bytes().await;
            });
        }
        Status::NotModified
    } else {
        status
    };
    let mut builder = Response::builder().status(match status {
        Status::Ok => {
            StatusCode::from_u16(rfc9111::stored_status(&meta.attributes)).unwrap_or(StatusCode::OK)
        }
        Status::NotModified => StatusCode::NOT_MODIFIED,
        Status::NotFound => StatusCode::NOT_FOUND,
    });
    if status != Status::NotFound {
        let not_modified = status == Status::NotModified;
        for (name, value) in rfc9111::fields_to_send(&meta.attributes, not_modified) {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                builder = builder.header(name, value);
            }
        }
    }
    // This request's own fetch: what the origin said to its client only.
    if matches!(source, Source::Origin)
        && let Ok(trip) = trip.lock()
    {
        for (name, value) in trip.personal.iter() {
            builder = builder.header(name, value);
        }
    }
    builder = builder
        .header(CACHE_STATUS, cache_status)
        .header(header::AGE, age(&meta).to_string());
    if !meta.tag.is_empty()
        && !meta.negative
        && let Ok(tag) = HeaderValue::from_str(&meta.tag)
    {
        builder = builder.header(header::ETAG, tag);
    }
    let body = match body {
        None if status == Status::NotFound => full("not found\n"),
        None => empty(),
        Some(body) => {
            // A body being stored holds back its last bytes until the
            // entry is published, so that a client which reads the
            // stated length and asks again finds the entry.
            if let Some(size) = body.size() {
                builder = builder.header(header::CONTENT_LENGTH, size);
            }
            if head {
                // Read it anyway, so that a miss still fills the cache.
                tokio::spawn(async move {
                    let _ = body.bytes().await;
                });
                empty()
            } else if let Some(size) = body.size()
                && size <= WHOLE_BODY
                && held
            {
                // A small body of known size goes out with its headers in
                // one write, instead of a write for each.
                match body.bytes().await {
                    Ok(bytes) => {
                        metrics.bytes.inc_by(bytes.len() as u64);
                        full(bytes)
                    }
                    Err(e) => return failure(&e, &outcome),
                }
            } else {
                let bytes = metrics.bytes.clone();
                let stream = body
                    .inspect_ok(move |chunk| {
                        bytes.inc_by(chunk.len() as u64);
                    })
                    .map_ok(Frame::data)
                    .map_err(|e| std::io::Error::other(e.to_string()));
                BodyExt::boxed_unsync(StreamBody::new(stream))
            }
        }
    };
    builder.body(body).unwrap_or_else(|e| {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("daramjwee; detail=\"{e}\""),
        )
    })
}

/// The `Cache-Status` of an answer from the cache.
fn cache_status(
    response: &GetResponse,
    outcome: &Outcome,
    window_ms: u64,
    stale_asked: bool,
) -> String {
    let served = match response.source {
        Source::Origin => Served::Origin,
        Source::Joined => Served::Joined,
        // Past its stale bound, a stale answer is the origin failing, or
        // the client's `max-stale` (then refreshed behind).
        Source::Tier(index) => Served::Tier {
            index,
            stale: response.stale,
            expired: response.stale && !stale_asked && expired(&response.meta, window_ms),
        },
    };
    // `stored` only when the engine writes the body to a tier: not for a
    // body of a size no tier keeps, nor one the origin forbids storing.
    let forward = Outcome {
        no_store: outcome.no_store || !response.stored,
        ..outcome.clone()
    };
    status_line(served, &forward)
}

fn failure(e: &Error, outcome: &Outcome) -> Response<ProxyBody> {
    let (status, detail) = match e {
        Error::InvalidKey(_) => (StatusCode::BAD_REQUEST, "invalid-key"),
        Error::Closed => (StatusCode::SERVICE_UNAVAILABLE, "closed"),
        Error::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        _ if outcome.fetched => (StatusCode::BAD_GATEWAY, "origin-error"),
        _ => (StatusCode::BAD_GATEWAY, "cache-error"),
    };
    let mut response = text(status, &format!("{e}\n"));
    if let Ok(value) = HeaderValue::from_str(&failure_status(detail, outcome)) {
        response.headers_mut().insert(CACHE_STATUS, value);
    }
    response
}

/// Serve one request on the admin listener: `PUT` stores, `DELETE`
/// purges, with the bearer token.
pub(crate) async fn handle_admin(
    state: Arc<State>,
    request: Request<Incoming>,
) -> std::result::Result<Response<ProxyBody>, Infallible> {
    let key = request
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
    let method = request.method().clone();
    let response = if let Some(refused) = authorize(&state, &request) {
        refused
    } else {
        match method {
            Method::PUT => put(&state, &key, request).await,
            Method::DELETE => match state.cache.delete(&key).await {
                Ok(()) => no_content("daramjwee; detail=deleted"),
                Err(e) => admin_failure(&e),
            },
            _ => {
                let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use PUT or DELETE\n");
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("PUT, DELETE"));
                response
            }
        }
    };
    tracing::info!(method = %method, key, status = response.status().as_u16(), "admin");
    Ok(response)
}

/// Store the request's body under `key`, its fields (`Content-Type`,
/// `ETag`, `Cache-Control`, `Expires` ...) as the stored response's, fresh
/// as they say (or for `--fresh-for`).
async fn put(state: &State, key: &str, request: Request<Incoming>) -> Response<ProxyBody> {
    let meta =
        match state
            .rules
            .stored_head(&raw_fields(request.headers()), &state.policy, now_ms())
        {
            Ok(meta) => meta,
            Err(e) => return admin_failure(&e),
        };
    let mut writer = match state.cache.set(key, meta).await {
        Ok(writer) => writer,
        Err(e) => return admin_failure(&e),
    };
    let mut body = request.into_body();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data()
                    && let Err(e) = writer.write(data).await
                {
                    return admin_failure(&e);
                }
            }
            // The writer is dropped unpublished.
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("the request body broke off: {e}\n"),
                );
            }
        }
    }
    match writer.commit().await {
        Ok(()) => no_content("daramjwee; detail=stored"),
        Err(e) => admin_failure(&e),
    }
}

/// `None` when the request carries the admin token; else the refusal.
fn authorize<B>(state: &State, request: &Request<B>) -> Option<Response<ProxyBody>> {
    let Some(expected) = &state.admin_token else {
        return Some(text(
            StatusCode::FORBIDDEN,
            "writes are disabled: start the server with --admin-token\n",
        ));
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|token| token_digest(token.trim()));
    if given.is_some_and(|given| bool::from(given.ct_eq(expected))) {
        return None;
    }
    let mut response = text(
        StatusCode::UNAUTHORIZED,
        "a valid bearer token is required\n",
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(response)
}

/// SHA-256 of an admin token.
pub(crate) fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn admin_failure(e: &Error) -> Response<ProxyBody> {
    let status = match e {
        Error::InvalidKey(_) => StatusCode::BAD_REQUEST,
        Error::Invalidated => StatusCode::CONFLICT,
        Error::Closed => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    text(status, &format!("{e}\n"))
}

/// The entry is past its freshness window and its stale bound, as the
/// engine classifies it.
fn expired(meta: &Metadata, window_ms: u64) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    classify(&meta.into(), now, window_ms) == Freshness::Expired
}

/// Seconds since the entry was fetched or written.
fn age(meta: &Metadata) -> u64 {
    meta.cached_at
        .and_then(|at| SystemTime::now().duration_since(at).ok())
        .map_or(0, |age| age.as_secs())
}

fn empty() -> ProxyBody {
    BodyExt::boxed_unsync(Empty::new().map_err(|never| match never {}))
}

fn full(data: impl Into<Bytes>) -> ProxyBody {
    BodyExt::boxed_unsync(Full::new(data.into()).map_err(|never| match never {}))
}

fn no_content(cache_status: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
        .headers_mut()
        .insert(CACHE_STATUS, HeaderValue::from_static(cache_status));
    response
}

/// A plain-text answer that did not come from the cache.
fn text(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full(message.to_owned()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_STATUS, HeaderValue::from_static("daramjwee"));
    headers.insert(header::AGE, HeaderValue::from_static("0"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_digests_differ_for_different_tokens() {
        assert!(bool::from(token_digest("a").ct_eq(&token_digest("a"))));
        assert!(!bool::from(token_digest("a").ct_eq(&token_digest("b"))));
    }

    #[test]
    fn a_target_a_url_parser_would_rewrite_is_refused() {
        let origin = "http://127.0.0.1:9/base";
        let prefix = &origin_url_parts(origin).unwrap().prefix;
        let origin_url = |key| origin_url(origin, prefix, key);
        let checked_target = |key| checked_target(origin, prefix, key);
        assert!(origin_url("/a/b?c=d%2F").is_ok());
        for rewritten in [
            "/sp/%2E%2E/%2E%2E/etc",
            "/a/../b",
            "/a/./b",
            "/a\\b",
            "/a b",
        ] {
            assert!(origin_url(rewritten).is_err(), "{rewritten}");
        }
        for plain in ["/a/b.c?d=e&f=1", "/", "/x.y/z"] {
            assert_eq!(checked_target(plain), Ok(()), "{plain}");
        }
        for rewritten in [
            "/sp/%2E%2E/%2E%2E/etc",
            "/a/../b",
            "/a/./b",
            "/a\\b",
            "/..",
            "/a/.",
        ] {
            assert!(checked_target(rewritten).is_err(), "{rewritten}");
        }
        assert_eq!(checked_target("/pct%41"), Ok(()), "kept as it came");
        let url = origin_url("/x?y").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:9/base/x?y");
    }

    #[test]
    fn hop_by_hop_fields_stay_and_via_and_forwarded_for_are_added() {
        let rules = HttpRules::embedded(None, 64 << 20, Duration::from_secs(1)).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("x-drop"));
        headers.insert("x-drop", HeaderValue::from_static("1"));
        headers.insert("x-keep", HeaderValue::from_static("2"));
        headers.insert(header::HOST, HeaderValue::from_static("proxy"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.append("x-twice", HeaderValue::from_static("a"));
        headers.append("x-twice", HeaderValue::from_static("b"));
        let peer = Peer("10.1.2.3:5555".parse().unwrap());
        let raw = raw_fields(&headers);
        let up = upstream_fields(&rules, &headers, &raw, Some(peer), false, None).unwrap();
        assert!(up.get("x-drop").is_none() && up.get(header::CONNECTION).is_none());
        assert!(up.get(header::TE).is_none() && up.get(header::HOST).is_none());
        assert_eq!(up["x-keep"], "2");
        let twice: Vec<_> = up.get_all("x-twice").iter().collect();
        assert_eq!(twice, ["a", "b"]);
        assert_eq!(up[header::VIA], rfc9111::VIA);
        assert_eq!(up["x-forwarded-for"], "10.1.2.3");
        assert_eq!(up["x-forwarded-proto"], "http");
        let relayed = end_to_end(&rules, &headers).unwrap();
        assert!(relayed.get("x-drop").is_none() && relayed.get(header::TE).is_none());
        assert_eq!(relayed.get_all("x-twice").iter().count(), 2);
    }

    #[test]
    fn the_origins_parts_are_read_once() {
        let parts = origin_url_parts("http://Example.org:8080/base/").unwrap();
        assert_eq!(parts.scheme, "http");
        assert_eq!(parts.authority, "example.org:8080");
        assert_eq!(parts.prefix, "/base");
        assert!(origin_url_parts("not a url").is_err());
    }
}
