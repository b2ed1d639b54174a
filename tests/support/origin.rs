//! A real HTTP origin for the proxy tests: hyper on 127.0.0.1:0, with
//! scripted routes, counting its requests per path.

#![expect(dead_code, reason = "each test file uses a different part of it")]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;

type OriginBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// What the origin answers for one path.
#[derive(Clone)]
pub enum Route {
    /// 200 with this tag and body (304 for a matching `If-None-Match`),
    /// after `delay`.
    Ok {
        tag: String,
        body: Bytes,
        cache_control: Option<String>,
        delay: Duration,
    },
    /// This status, empty body.
    Status(u16),
    /// 200 whose body never ends: a chunk every few ms. `dropped` is
    /// notified when the proxy stops reading it.
    Endless { dropped: Arc<Notify> },
    /// 200 whose body is the request target as the origin saw it.
    Echo,
    /// This status with these fields and body, whatever the request.
    Fields {
        status: u16,
        fields: Vec<(String, String)>,
        body: Bytes,
    },
    /// 200 with this tag and body sent chunked: no `Content-Length`.
    Chunked { tag: String, body: Bytes },
    /// 200 with a body of `len` bytes made as it is sent, 64 KiB at a
    /// time, [`pattern`] from offset 0, and its `Content-Length`.
    Sized { len: u64 },
    /// 200 whose body is the request's value of `field` (`-` without
    /// one), with `Vary: field` and `Cache-Control: max-age=600`: content
    /// negotiation.
    Negotiated { field: String },
}

/// Length of [`pattern`]'s period: a prime, so no chunk size lines up
/// with it.
pub const PERIOD: usize = 251;
/// The chunk size of a [`Route::Sized`] body.
pub const CHUNK: usize = 64 * 1024;

/// `CHUNK + PERIOD` bytes of the repeating pattern `0, 1, ... 250`: the
/// body's bytes from offset `o` on are `pattern().slice(o % PERIOD..)`.
pub fn pattern() -> Bytes {
    (0..CHUNK + PERIOD).map(|i| (i % PERIOD) as u8).collect()
}

/// A body of `len` letters, `a` to `z` over and over.
pub fn letters(len: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect()
}

impl Route {
    /// A plain 200.
    pub fn ok(tag: &str, body: &str) -> Route {
        Route::Ok {
            tag: format!("\"{tag}\""),
            body: Bytes::from(body.to_owned()),
            cache_control: None,
            delay: Duration::ZERO,
        }
    }

    /// A plain 200 of `body` (a [`letters`] body, say) sent after `delay`.
    pub fn slow(tag: &str, body: &str, delay: Duration) -> Route {
        Route::Ok {
            tag: format!("\"{tag}\""),
            body: Bytes::from(body.to_owned()),
            cache_control: None,
            delay,
        }
    }

    /// `status` with `fields` and `body`, whatever the request.
    pub fn fields(status: u16, fields: &[(&str, &str)], body: &[u8]) -> Route {
        Route::Fields {
            status,
            fields: fields
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            body: Bytes::copy_from_slice(body),
        }
    }

    /// A 200 with a `Cache-Control` header.
    pub fn controlled(tag: &str, body: &str, cache_control: &str) -> Route {
        Route::Ok {
            tag: format!("\"{tag}\""),
            body: Bytes::from(body.to_owned()),
            cache_control: Some(cache_control.into()),
            delay: Duration::ZERO,
        }
    }
}

#[derive(Default)]
struct State {
    routes: Mutex<HashMap<String, Route>>,
    fallback: Mutex<Option<Route>>,
    hits: Mutex<HashMap<String, usize>>,
    conditional: Mutex<Vec<String>>,
    /// Method, target, fields and body of every request, in order.
    seen: Mutex<Vec<Seen>>,
    arrived: Notify,
}

/// A request as the origin received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// The origin; it runs until the test's runtime ends.
#[derive(Clone)]
pub struct Origin {
    addr: std::net::SocketAddr,
    state: Arc<State>,
}

impl Origin {
    /// Start on a free loopback port.
    pub async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(Arc::clone(&state), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Origin { addr, state }
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer `target` (path and query) with `route` from now on.
    pub fn route(&self, target: &str, route: Route) {
        self.state
            .routes
            .lock()
            .unwrap()
            .insert(target.into(), route);
    }

    /// Answer every target without a route with `route`.
    pub fn fallback(&self, route: Route) {
        *self.state.fallback.lock().unwrap() = Some(route);
    }

    /// Requests seen for `target`.
    pub fn hits(&self, target: &str) -> usize {
        self.state
            .hits
            .lock()
            .unwrap()
            .get(target)
            .copied()
            .unwrap_or(0)
    }

    /// Every request received, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests seen in all.
    pub fn total_hits(&self) -> usize {
        self.state.hits.lock().unwrap().values().sum()
    }

    /// `If-None-Match` values received, in order.
    pub fn conditional(&self) -> Vec<String> {
        self.state.conditional.lock().unwrap().clone()
    }

    /// Wait for the next request to arrive.
    pub async fn arrived(&self) {
        self.state.arrived.notified().await;
    }
}

async fn answer(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<OriginBody>, Infallible> {
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    *state
        .hits
        .lock()
        .unwrap()
        .entry(target.clone())
        .or_default() += 1;
    state.arrived.notify_one();
    let method = request.method().to_string();
    let headers = request.headers().clone();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    state.seen.lock().unwrap().push(Seen {
        method,
        target: target.clone(),
        headers: headers.clone(),
        body,
    });
    let inm = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(inm) = &inm {
        state.conditional.lock().unwrap().push(inm.clone());
    }
    let route = state
        .routes
        .lock()
        .unwrap()
        .get(&target)
        .cloned()
        .or_else(|| state.fallback.lock().unwrap().clone());
    let response = match route {
        None => status(404),
        Some(Route::Status(code)) => status(code),
        Some(Route::Negotiated { field }) => {
            let value = headers
                .get(field.as_str())
                .map_or("-".to_owned(), |v| v.to_str().unwrap_or("?").to_owned());
            let mut response = Response::new(full(Bytes::from(value)));
            let headers = response.headers_mut();
            headers.insert(header::VARY, field.parse().unwrap());
            headers.insert(header::CACHE_CONTROL, "max-age=600".parse().unwrap());
            response
        }
        Some(Route::Echo) => {
            let mut response = Response::new(full(Bytes::from(target.clone())));
            response
                .headers_mut()
                .insert(header::ETAG, "\"echo\"".parse().unwrap());
            response
        }
        Some(Route::Endless { dropped }) => {
            struct Guard(Arc<Notify>);
            impl Drop for Guard {
                fn drop(&mut self) {
                    self.0.notify_one();
                }
            }
            let guard = Guard(dropped);
            let chunks = futures::stream::unfold(guard, |guard| async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
                Some((Ok::<_, std::io::Error>(Frame::data(chunk)), guard))
            });
            Response::new(BodyExt::boxed_unsync(StreamBody::new(chunks)))
        }
        Some(Route::Fields {
            status: code,
            fields,
            body,
        }) => {
            let mut response = Response::new(full(body));
            *response.status_mut() = StatusCode::from_u16(code).unwrap();
            for (name, value) in fields {
                response.headers_mut().append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    value.parse().unwrap(),
                );
            }
            response
        }
        Some(Route::Chunked { tag, body }) => {
            let chunks: Vec<_> = body
                .chunks(16 * 1024)
                .map(|c| Ok::<_, std::io::Error>(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            let stream = StreamBody::new(futures::stream::iter(chunks));
            let mut response = Response::new(BodyExt::boxed_unsync(stream));
            response
                .headers_mut()
                .insert(header::ETAG, tag.parse().unwrap());
            response
        }
        Some(Route::Sized { len }) => {
            let pattern = pattern();
            let chunks = futures::stream::unfold(0u64, move |sent| {
                let pattern = pattern.clone();
                async move {
                    let n = (len - sent).min(CHUNK as u64) as usize;
                    let start = (sent % PERIOD as u64) as usize;
                    (n > 0).then(|| {
                        let chunk = pattern.slice(start..start + n);
                        (Ok::<_, std::io::Error>(Frame::data(chunk)), sent + n as u64)
                    })
                }
            });
            let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(chunks)));
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_LENGTH, len.into());
            headers.insert(header::ETAG, "\"sized\"".parse().unwrap());
            response
        }
        Some(Route::Ok {
            tag,
            body,
            cache_control,
            delay,
        }) => {
            tokio::time::sleep(delay).await;
            let mut response = if inm.as_deref() == Some(tag.as_str()) {
                status(304)
            } else {
                let mut response = Response::new(full(body));
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, "text/x-test".parse().unwrap());
                response
            };
            let headers = response.headers_mut();
            headers.insert(header::ETAG, tag.parse().unwrap());
            if let Some(cache_control) = cache_control {
                headers.insert(header::CACHE_CONTROL, cache_control.parse().unwrap());
            }
            response
        }
    };
    Ok(response)
}

fn full(data: Bytes) -> OriginBody {
    BodyExt::boxed_unsync(Full::new(data).map_err(|never| match never {}))
}

fn status(code: u16) -> Response<OriginBody> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::from_u16(code).unwrap();
    response
}
