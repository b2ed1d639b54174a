//! Requests in, responses out: the HTTP face of the engine inside a
//! `wasi:http` component, with the same rules and `Cache-Status` as
//! `daramjwee serve`.

use std::cell::RefCell;
use std::rc::Rc;

use daramjwee_component::http::exchange;
use daramjwee_component::http::rfc9111::{self, Policy};
use daramjwee_component::http::{CACHE_STATUS, Forward, Served, cache_status, failure_status};
use daramjwee_component::{
    Body, Engine, Error, Freshness, Metadata, ResponseBody, Runtime, Source, Status, Tier, classify,
};
use wasip3::http::types::{
    ErrorCode, Fields, Headers, Method, Request, Response, Scheme, Trailers,
};
use wasip3::{wit_future, wit_stream};

use crate::body::EdgeBody;
use crate::origin::{HttpOrigin, NOT_CACHED, PASSED, Passed, pass};
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

    /// Serve one request. `GET`/`HEAD` without credentials go through the
    /// cache (key = path and query); every other request passes to the
    /// origin as it came, and a success of an unsafe method invalidates
    /// its target.
    pub async fn handle(&self, request: Request) -> Result<Response, ErrorCode> {
        let method = request.get_method();
        let head = matches!(method, Method::Head);
        let key = request
            .get_path_with_query()
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "/".into());
        let fields = request.get_headers().copy_all();
        if !matches!(method, Method::Get | Method::Head)
            || fields
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        {
            return Ok(self.pass(&key, method, request).await);
        }
        drop(request);
        let reading = exchange::read_request(&fields);
        // The URL's entry, or, when what is stored there varies and was
        // fetched for other values of the fields its `Vary` names, the
        // variant this request selects, under a key of its own.
        let mut entry_key = key.clone();
        let mut hops = 0;
        let (result, origin, forward) = loop {
            let forward = Rc::new(RefCell::new(Forward::default()));
            let origin = HttpOrigin::new(
                Rc::clone(&self.origin),
                u64::try_from(self.settings.origin_timeout.as_millis()).unwrap_or(u64::MAX),
                Policy {
                    // Responses that state no lifetime are fresh for
                    // `fresh_for`, as before the RFC's rules were shared.
                    default_ttl: self.settings.engine.fresh_for / 1000,
                    stale_while_revalidate: 0,
                    variants: true,
                    remember_missing: self.settings.engine.negative_fresh_for > 0,
                },
                Rc::clone(&forward),
            )
            .for_request(&key, &fields, reading.only_if_cached);
            let result = self
                .engine
                .get_with(&entry_key, &reading.conditions, origin.clone())
                .await;
            if let Ok(found) = &result
                && found.status != Status::NotFound
                && hops < 2
                && let Some(variant) = exchange::variant(&key, &found.meta.attributes, &fields)
            {
                hops += 1;
                if variant == entry_key {
                    // The variant's own entry no longer fits (its `Vary`
                    // changed): fetch it anew.
                    let _ = self.engine.delete(&entry_key).await;
                }
                entry_key = variant;
                continue;
            }
            break (result, origin, forward);
        };
        let mut forward = forward.borrow().clone();
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                if let Some(passed) = origin.take_passed() {
                    return Ok(relay(passed, cache_status(Served::Origin, &forward), head));
                }
                if matches!(&e, Error::Origin(why) if why == NOT_CACHED) {
                    return Ok(text_response(
                        504,
                        &failure_status("not-cached", &forward),
                        &format!("{NOT_CACHED}\n"),
                    ));
                }
                if matches!(&e, Error::Origin(why) if why == PASSED) {
                    // Passed, but taken by another request's join.
                    return Ok(failure(
                        &Error::Origin("the origin's answer was not kept".into()),
                        &forward,
                    ));
                }
                return Ok(failure(&e, &forward));
            }
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
        let mut status = match response.status {
            Status::Ok => rfc9111::stored_status(&response.meta.attributes),
            Status::NotModified => 304,
            Status::NotFound => 404,
        };
        // A client's `If-Modified-Since` that the stored `Last-Modified`
        // answers.
        let mut body = response.body;
        if status == 200 && exchange::not_modified(&response.meta.attributes, &fields) {
            status = 304;
            if let Some(body) = body.take() {
                // Read anyway, so that a miss still fills the cache.
                wasip3::spawn_local(async move {
                    let mut body = Piece::Engine(body);
                    while let Some(Ok(_)) = body.next().await {}
                });
            }
        }
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
        if response.status != Status::NotFound {
            for (name, value) in rfc9111::fields_to_send(&response.meta.attributes, status == 304) {
                headers.push((name, value.to_owned()));
            }
        }
        let body = match body {
            None if response.status == Status::NotFound => Some(Piece::Text("not found\n".into())),
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

    /// Pass `request` to the origin and its answer back, as they came; a
    /// success or redirect for an unsafe method invalidates `key`.
    async fn pass(&self, key: &str, method: Method, request: Request) -> Response {
        let timeout = u64::try_from(self.settings.origin_timeout.as_millis()).unwrap_or(u64::MAX);
        let forward = Forward {
            fetched: true,
            no_store: true,
            ..Forward::default()
        };
        let passed = match pass(&self.origin, timeout, key, request).await {
            Ok(passed) => passed,
            Err(e) => return failure(&e, &forward),
        };
        let code = passed.response.get_status_code();
        let url = &self.origin;
        let origin = exchange::OriginUrl {
            scheme: match &url.scheme {
                Scheme::Http => "http",
                Scheme::Https => "https",
                Scheme::Other(other) => other.as_str(),
            }
            .to_owned(),
            authority: url.authority.clone(),
            prefix: url.path.clone(),
        };
        let fields = passed.response.get_headers().copy_all();
        for target in exchange::invalidated(method_name(&method), code, &origin, key, &fields) {
            let _ = self.engine.delete(&target).await;
        }
        let forward = Forward {
            status: Some(code),
            ..forward
        };
        relay(
            passed,
            cache_status(Served::Origin, &forward),
            matches!(method, Method::Head),
        )
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

/// A response body: the engine's, a short text of our own, or the
/// origin's passed through (with what must be held while it is read).
enum Piece<R: Runtime> {
    Engine(ResponseBody<R>),
    Text(String),
    Origin {
        body: EdgeBody,
        /// Held until the body is read: see [`Passed::received`].
        _received: Option<wasip3::wit_bindgen::FutureWriter<Result<(), ErrorCode>>>,
    },
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
            Piece::Origin { body, .. } => body.next().await,
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

/// The origin's answer to the client as it came: its status, its
/// end-to-end fields and `cache_status`, its body streamed (none to a
/// `HEAD`).
fn relay(passed: Passed, cache_status: String, head: bool) -> Response {
    let Passed {
        response,
        sent,
        received,
    } = passed;
    let status = response.get_status_code();
    let origin_fields = response.get_headers().copy_all();
    let fields = Fields::new();
    for i in exchange::end_to_end(&origin_fields) {
        let (name, value) = &origin_fields[i as usize];
        if !name.eq_ignore_ascii_case(CACHE_STATUS) {
            let _ = fields.append(name, value);
        }
    }
    let _ = fields.append(CACHE_STATUS, cache_status.as_bytes());
    let body = EdgeBody::of_response(response, sent);
    let body = (!head).then_some(Piece::Origin {
        body,
        _received: received,
    });
    respond_with::<NoRuntime>(status, fields, body)
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
    respond_with(status, fields, body)
}

/// Build a response of `status` with `fields` and `body`, its bytes
/// pumped by a task of their own.
fn respond_with<R: Runtime>(status: u16, fields: Headers, body: Option<Piece<R>>) -> Response {
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

/// The name of `method` as on the wire.
fn method_name(method: &Method) -> &str {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(name) => name,
    }
}

/// The runtime of responses that carry no engine body.
type NoRuntime = EdgeRt<crate::FileTier>;
