//! Requests in, responses out: the HTTP face of the engine inside a
//! `wasi:http` component, with the same rules and `Cache-Status` as
//! `daramjwee serve`.

use std::cell::RefCell;
use std::rc::Rc;

use daramjwee_component::http::rfc9111::{self, Policy};
use daramjwee_component::http::{CACHE_STATUS, Forward, Served, cache_status, failure_status};
use daramjwee_component::{
    Body, Engine, Error, Freshness, Metadata, ResponseBody, Runtime, Source, Status, Tier, classify,
};
use wasip3::http::types::{ErrorCode, Fields, Method, Request, Response, Trailers};
use wasip3::{wit_future, wit_stream};

use crate::body::EdgeBody;
use crate::origin::HttpOrigin;
use crate::runtime::EdgeRt;
use crate::settings::Settings;

/// The cache of one instance over tier `T`. Cheap to clone.
pub struct EdgeCache<T: Tier<Body = EdgeBody>> {
    engine: Engine<EdgeRt<T>>,
    settings: Rc<Settings>,
    origin: Rc<crate::OriginUrl>,
}

impl<T: Tier<Body = EdgeBody>> Clone for EdgeCache<T> {
    fn clone(&self) -> Self {
        EdgeCache {
            engine: self.engine.clone(),
            settings: Rc::clone(&self.settings),
            origin: Rc::clone(&self.origin),
        }
    }
}

impl<T: Tier<Body = EdgeBody>> EdgeCache<T> {
    /// Open the cache over `tier`; the error names the bad setting.
    pub fn open(settings: Settings, tier: T) -> Result<Self, String> {
        let (rt, slot) = EdgeRt::new();
        let engine =
            Engine::open(settings.engine.clone(), vec![tier], rt).map_err(|e| e.to_string())?;
        *slot.borrow_mut() = Some(engine.clone());
        Ok(EdgeCache {
            engine,
            origin: Rc::new(settings.origin.clone()),
            settings: Rc::new(settings),
        })
    }

    /// Serve one request. `GET`/`HEAD` go through the cache (key = path
    /// and query); other methods are refused with 405.
    pub async fn handle(&self, request: Request) -> Result<Response, ErrorCode> {
        let method = request.get_method();
        let head = matches!(method, Method::Head);
        if !matches!(method, Method::Get | Method::Head) {
            let response = text_response(405, "daramjwee; detail=method", "method not allowed\n");
            let _ = response.get_headers().append("allow", b"GET, HEAD");
            return Ok(response);
        }
        let key = request
            .get_path_with_query()
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "/".into());
        let inm = request
            .get_headers()
            .get("if-none-match")
            .into_iter()
            .filter_map(|v| String::from_utf8(v).ok())
            .collect::<Vec<_>>()
            .join(", ");
        let inm = (!inm.is_empty()).then_some(inm);
        drop(request);
        let forward = Rc::new(RefCell::new(Forward::default()));
        let origin = HttpOrigin::new(
            Rc::clone(&self.origin),
            u64::try_from(self.settings.origin_timeout.as_millis()).unwrap_or(u64::MAX),
            Policy {
                // Responses that state no lifetime are fresh for
                // `fresh_for`, as before the RFC's rules were shared.
                default_ttl: self.settings.engine.fresh_for / 1000,
                stale_while_revalidate: 0,
                // One entry a URL: a response that varies is not stored.
                variants: false,
            },
            Rc::clone(&forward),
        );
        let result = self.engine.get(&key, inm.as_deref(), origin).await;
        let mut forward = forward.borrow().clone();
        let response = match result {
            Ok(response) => response,
            Err(e) => return Ok(failure(&e, &forward)),
        };
        // `stored` only when the engine writes the body to a tier.
        forward.no_store |= !response.stored;
        let served = match response.source {
            Source::Origin => Served::Origin,
            Source::Joined => Served::Joined,
            Source::Tier(index) => Served::Tier {
                index: index as usize,
                stale: response.stale,
                expired: response.stale && self.expired(index as usize, &response.meta),
            },
        };
        let status = match response.status {
            Status::Ok => 200,
            Status::NotModified => 304,
            Status::NotFound => 404,
        };
        let mut headers = vec![
            (CACHE_STATUS, cache_status(served, &forward)),
            (
                "age",
                age(&response.meta, self.engine.runtime()).to_string(),
            ),
        ];
        if !response.meta.tag.is_empty() && !response.meta.negative {
            headers.push(("etag", response.meta.tag.clone()));
        }
        if status != 404 {
            for (name, value) in rfc9111::fields_to_send(&response.meta.attributes, status == 304) {
                headers.push((name, value.to_owned()));
            }
        }
        let body = match response.body {
            None if status == 404 => Some(Piece::Text("not found\n".into())),
            None => None,
            Some(body) => {
                let size = match &body {
                    ResponseBody::Direct { size, .. } => Some(*size),
                    // A fill's end says it was published: it goes chunked.
                    ResponseBody::Fill(_) => None,
                };
                if let Some(size) = size {
                    headers.push(("content-length", size.to_string()));
                }
                if head {
                    // Read it anyway, so that a miss still fills the cache.
                    wasip3::spawn_local(async move {
                        let mut body = Piece::Engine(body);
                        while let Some(Ok(_)) = body.next().await {}
                    });
                    None
                } else {
                    Some(Piece::Engine(body))
                }
            }
        };
        Ok(respond(status, &headers, body))
    }

    /// Past freshness and past the stale window: only an origin failure
    /// lets such an entry be served.
    fn expired(&self, tier: usize, meta: &Metadata) -> bool {
        let window = self.settings.engine.window(tier, meta);
        classify(meta, self.engine.runtime().now_ms(), window) == Freshness::Expired
    }
}

/// Seconds since the entry was fetched or written.
fn age<R: Runtime>(meta: &Metadata, rt: &R) -> u64 {
    meta.cached_at
        .map_or(0, |at| rt.now_ms().saturating_sub(at) / 1000)
}

/// A response body: the engine's, or a short text of our own.
enum Piece<R: Runtime> {
    Engine(ResponseBody<R>),
    Text(String),
}

impl<R: Runtime> Piece<R> {
    async fn next(&mut self) -> Option<Result<Vec<u8>, Error>> {
        match self {
            Piece::Engine(ResponseBody::Direct { body, .. }) => body.next().await,
            Piece::Engine(ResponseBody::Fill(reader)) => match reader.next().await? {
                Ok(chunk) => Some(Ok(chunk.to_vec())),
                Err(e) => Some(Err(e)),
            },
            Piece::Text(text) if text.is_empty() => None,
            Piece::Text(text) => Some(Ok(std::mem::take(text).into_bytes())),
        }
    }

    /// After the last chunk of a fill, wait until its tier write settled,
    /// so that the client's next request finds the entry.
    async fn settled(&self) {
        if let Piece::Engine(ResponseBody::Fill(reader)) = self {
            reader.settled().await;
        }
    }
}

/// Build a response of `status` with `headers` and `body`, its bytes
/// pumped by a task of their own.
fn respond<R: Runtime>(
    status: u16,
    headers: &[(&str, String)],
    body: Option<Piece<R>>,
) -> Response {
    let fields = Fields::new();
    for (name, value) in headers {
        // Values come from the origin's headers or from us: a value that
        // is not a valid header is dropped rather than failing the answer.
        let _ = fields.append(name, value.as_bytes());
    }
    let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None::<Trailers>));
    let (response, _sent) = match body {
        None => {
            drop(trailers_tx);
            Response::new(fields, None, trailers_rx)
        }
        Some(mut body) => {
            let (mut tx, rx) = wit_stream::new::<u8>();
            wasip3::spawn_local(async move {
                let result = loop {
                    match body.next().await {
                        Some(Ok(chunk)) => {
                            if !tx.write_all(chunk).await.is_empty() {
                                break Err("the client went away".to_owned());
                            }
                        }
                        Some(Err(e)) => break Err(e.to_string()),
                        None => {
                            body.settled().await;
                            break Ok(());
                        }
                    }
                };
                drop(body);
                drop(tx);
                // A body that broke off must not look complete: an error
                // here makes the host cut the connection.
                let _ = trailers_tx
                    .write(
                        result
                            .map(|()| None)
                            .map_err(|e| ErrorCode::InternalError(Some(e))),
                    )
                    .await;
            });
            Response::new(fields, Some(rx), trailers_rx)
        }
    };
    let _ = response.set_status_code(status);
    response
}

/// A short plain-text response with a `Cache-Status`.
pub fn text_response(status: u16, cache_status: &str, text: &str) -> Response {
    respond::<NoRuntime>(
        status,
        &[
            (CACHE_STATUS, cache_status.to_owned()),
            ("content-type", "text/plain; charset=utf-8".to_owned()),
            ("content-length", text.len().to_string()),
        ],
        Some(Piece::Text(text.to_owned())),
    )
}

fn failure(e: &Error, forward: &Forward) -> Response {
    let (status, detail) = match e {
        Error::InvalidKey(_) => (400, "invalid-key"),
        Error::Closed => (503, "closed"),
        Error::Timeout => (504, "timeout"),
        _ if forward.fetched => (502, "origin-error"),
        _ => (502, "cache-error"),
    };
    text_response(status, &failure_status(detail, forward), &format!("{e}\n"))
}

/// The runtime of responses that carry no engine body.
type NoRuntime = EdgeRt<crate::FileTier>;
