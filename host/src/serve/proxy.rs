//! The HTTP face of the cache: requests in, the origin behind, RFC 9111
//! caching rules where they apply and an RFC 9211 `Cache-Status` out.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::TryStreamExt;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::metrics::Metrics;
use crate::{Cache, Error, FetchResult, Fetcher, GetResponse, Metadata, Result, Source, Status};
pub use daramjwee_component::http::CacheControl;
use daramjwee_component::http::{
    CACHE_STATUS, CONTENT_TYPE_ATTR, Forward as Outcome, Served, cache_status as status_line,
    failure_status,
};

/// Body of every response the proxy sends.
pub type ProxyBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// Bodies the cache holds up to this size are read whole before the
/// response starts.
const WHOLE_BODY: u64 = 64 * 1024;

/// Shared by every request.
pub(crate) struct State {
    pub cache: Cache,
    pub client: reqwest::Client,
    /// Origin base URL without a trailing slash.
    pub origin: String,
    pub origin_timeout: Duration,
    /// SHA-256 of the admin token, so comparing takes the same time
    /// whatever the length of the guess.
    pub admin_token: Option<[u8; 32]>,
    pub metrics: Arc<Metrics>,
    /// Freshness of entries without their own window.
    pub fresh_for: Duration,
}

/// The origin as seen by the cache: `GET ORIGIN + key`, conditional on the
/// tag we hold.
struct HttpOrigin {
    client: reqwest::Client,
    origin: String,
    timeout: Duration,
    outcome: Arc<Mutex<Outcome>>,
}

impl HttpOrigin {
    fn record(&self, f: impl FnOnce(&mut Outcome)) {
        if let Ok(mut outcome) = self.outcome.lock() {
            f(&mut outcome);
        }
    }
}

impl Fetcher for HttpOrigin {
    async fn fetch(&self, key: &str, held: Option<&Metadata>) -> Result<FetchResult> {
        self.record(|o| o.fetched = true);
        let url = format!("{}{key}", self.origin);
        let mut request = self.client.get(&url);
        let held = held.filter(|m| !m.negative && !m.tag.is_empty());
        if let Some(held) = held {
            request = request.header(header::IF_NONE_MATCH, &held.tag);
        }
        let response = match tokio::time::timeout(self.timeout, request.send()).await {
            Err(_) => {
                return Err(Error::Origin(format!(
                    "{url} did not answer within {:?}",
                    self.timeout
                )));
            }
            Ok(Err(e)) => return Err(Error::Origin(format!("{url}: {e}"))),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        self.record(|o| o.status = Some(status.as_u16()));
        match status {
            StatusCode::NOT_MODIFIED if held.is_some() => Ok(FetchResult::NotModified),
            StatusCode::NOT_FOUND | StatusCode::GONE => Ok(FetchResult::NotFound),
            StatusCode::OK => {
                let headers = response.headers();
                let text = |name| {
                    headers
                        .get(name)
                        .and_then(|v: &HeaderValue| v.to_str().ok())
                };
                let control = CacheControl::parse(
                    headers
                        .get_all(header::CACHE_CONTROL)
                        .iter()
                        .filter_map(|v| v.to_str().ok()),
                );
                let mut meta = Metadata::tagged(text(header::ETAG).unwrap_or_default());
                if let Some(content_type) = text(header::CONTENT_TYPE) {
                    meta.attributes
                        .push((CONTENT_TYPE_ATTR.into(), content_type.into()));
                }
                let (fresh, stale) = control.windows();
                meta.fresh_for = fresh.map(Duration::from_secs);
                meta.stale_for = stale.map(Duration::from_secs);
                self.record(|o| o.no_store = control.no_store);
                // The length of the bytes the body stream yields, when the
                // origin states it: the body goes to the first tier that
                // keeps entries that large.
                let size = response.content_length();
                let body = response
                    .bytes_stream()
                    .map_err(move |e| Error::Origin(format!("the body of {url} broke off: {e}")));
                Ok(FetchResult::Body {
                    meta,
                    body: Box::pin(body),
                    no_store: control.no_store,
                    size,
                })
            }
            other => Err(Error::Origin(format!("{url} answered {other}"))),
        }
    }
}

/// Serve one request. Never fails: every problem is a status code.
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
    let response = match method {
        Method::GET | Method::HEAD => get(&state, &key, &request).await,
        Method::PUT => put(&state, &key, request).await,
        Method::DELETE => delete(&state, &key, &request).await,
        _ => {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "daramjwee; detail=method");
            response.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, PUT, DELETE"),
            );
            response
        }
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

async fn get(state: &State, key: &str, request: &Request<Incoming>) -> Response<ProxyBody> {
    let inm = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let origin = HttpOrigin {
        client: state.client.clone(),
        origin: state.origin.clone(),
        timeout: state.origin_timeout,
        outcome: Arc::clone(&outcome),
    };
    let result = state.cache.get_if_none_match(key, inm, origin).await;
    let outcome = outcome.lock().map(|o| o.clone()).unwrap_or_default();
    let response = match result {
        Ok(response) => response,
        Err(e) => return failure(&e, &outcome),
    };
    let cache_status = cache_status(&response, &outcome, state.fresh_for);
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
    // A body being stored ends (and the client sees it end) only once the
    // entry is published, so that the client's next request finds it: its
    // length goes unsaid, since with a `Content-Length` the client would
    // take its last byte for the end.
    let length_said = !response.stored;
    let GetResponse {
        status, meta, body, ..
    } = response;
    let mut builder = Response::builder()
        .status(match status {
            Status::Ok => StatusCode::OK,
            Status::NotModified => StatusCode::NOT_MODIFIED,
            Status::NotFound => StatusCode::NOT_FOUND,
        })
        .header(CACHE_STATUS, cache_status)
        .header(header::AGE, age(&meta).to_string());
    if !meta.tag.is_empty()
        && !meta.negative
        && let Ok(tag) = HeaderValue::from_str(&meta.tag)
    {
        builder = builder.header(header::ETAG, tag);
    }
    if status == Status::Ok
        && let Some((_, content_type)) =
            meta.attributes.iter().find(|(k, _)| k == CONTENT_TYPE_ATTR)
        && let Ok(value) = HeaderValue::from_str(content_type)
    {
        builder = builder.header(header::CONTENT_TYPE, value);
    }
    let body = match body {
        None if status == Status::NotFound => full("not found\n"),
        None => empty(),
        Some(body) => {
            if let Some(size) = body.size().filter(|_| length_said) {
                builder = builder.header(header::CONTENT_LENGTH, size);
            }
            if request.method() == Method::HEAD {
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
fn cache_status(response: &GetResponse, outcome: &Outcome, fresh_for: Duration) -> String {
    let served = match response.source {
        Source::Origin => Served::Origin,
        Source::Joined => Served::Joined,
        // Past its stale bound, a stale answer can only be the origin
        // failing.
        Source::Tier(index) => Served::Tier {
            index,
            stale: response.stale,
            expired: response.stale && expired(&response.meta, fresh_for),
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

async fn put(state: &State, key: &str, request: Request<Incoming>) -> Response<ProxyBody> {
    if let Some(refused) = authorize(state, &request) {
        return refused;
    }
    let headers = request.headers();
    let text_of = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let mut meta = Metadata::tagged(text_of(header::ETAG).unwrap_or_default());
    if let Some(content_type) = text_of(header::CONTENT_TYPE) {
        meta.attributes
            .push((CONTENT_TYPE_ATTR.into(), content_type.into()));
    }
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

async fn delete(state: &State, key: &str, request: &Request<Incoming>) -> Response<ProxyBody> {
    if let Some(refused) = authorize(state, request) {
        return refused;
    }
    match state.cache.delete(key).await {
        Ok(()) => no_content("daramjwee; detail=deleted"),
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

/// The entry is past its freshness window and its stale bound.
fn expired(meta: &Metadata, fresh_for: Duration) -> bool {
    let Some(stale_for) = meta.stale_for else {
        return false;
    };
    let age = meta
        .cached_at
        .and_then(|at| SystemTime::now().duration_since(at).ok())
        .unwrap_or_default();
    age >= meta.fresh_for.unwrap_or(fresh_for) + stale_for
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
}
