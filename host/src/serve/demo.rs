//! The built-in demo origin that `serve` starts when no `--origin` is
//! given, so that a bare `daramjwee serve` shows misses turning into hits.

use std::hash::{DefaultHasher, Hash, Hasher};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;

/// The demo origin's answer: a small text page per path, with an ETag, a
/// one-minute `max-age`, and 304 for a matching `If-None-Match`.
pub(super) fn answer<B>(request: &Request<B>) -> Response<Full<Bytes>> {
    let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let mut hasher = DefaultHasher::new();
    target.hash(&mut hasher);
    let tag = format!("\"{:016x}\"", hasher.finish());
    let matched = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == tag.as_bytes());
    tracing::info!(target, revalidation = matched, "demo origin: request");
    let body = if matched {
        Bytes::new()
    } else {
        Bytes::from(format!(
            "Hello from the demo origin! You asked for {target}\n"
        ))
    };
    let mut response = Response::new(Full::new(body));
    if matched {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let headers = response.headers_mut();
    if let Ok(tag) = HeaderValue::from_str(&tag) {
        headers.insert(header::ETAG, tag);
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=60, stale-while-revalidate=600"),
    );
    response
}

/// `200` with `body`, or `404` without one.
pub(super) fn plain(body: Option<String>) -> Response<Full<Bytes>> {
    match body {
        Some(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        None => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        }
    }
}
