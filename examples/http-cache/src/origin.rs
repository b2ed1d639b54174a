//! The origin behind the cache: `GET origin + key` over
//! `wasi:http/client` with the client's end-to-end fields, conditional on
//! the tag we hold; and requests the cache does not answer, passed on as
//! they came.

use std::cell::RefCell;
use std::rc::Rc;

use daramjwee_component::http::Forward;
use daramjwee_component::http::exchange::{self, Judgement};
use daramjwee_component::http::rfc9111::Policy;
use daramjwee_component::{Error, Fetched, Metadata, Origin, Result};
use wasip3::http::client;
use wasip3::http::types::{ErrorCode, Fields, Request, RequestOptions, Response, Trailers};
use wasip3::wit_bindgen::{FutureReader, FutureWriter};
use wasip3::wit_future;

/// Resolves when the request was sent whole.
pub(crate) type Sent = FutureReader<Result<(), ErrorCode>>;

use crate::body::EdgeBody;
use crate::settings::OriginUrl;

/// The message of the error that tells a request its answer passes
/// through as the origin gave it (it is in [`HttpOrigin::passed`]).
pub(crate) const PASSED: &str = "the origin's answer passes through";

/// The message of the error that tells an `only-if-cached` request the
/// cache holds nothing it may answer with.
pub(crate) const NOT_CACHED: &str = "only-if-cached: nothing stored answers the request";

/// An answer of the origin that goes to the client as it came.
pub(crate) struct Passed {
    /// The origin's answer.
    pub response: Response,
    /// The transmission of the request that got it: held while the
    /// answer is read.
    pub sent: Sent,
    /// For a passed request with a body: held until the answer is read,
    /// since the host takes its completion as "done with the client's
    /// body".
    pub received: Option<FutureWriter<Result<(), ErrorCode>>>,
}

/// One request's fetcher: where the origin is, what the client sent, and
/// a record of what the trip did for that request's `Cache-Status`.
#[derive(Clone)]
pub struct HttpOrigin {
    url: Rc<OriginUrl>,
    /// Connect and first-byte timeout, in ms.
    timeout_ms: u64,
    /// The operator's choices the RFC leaves to the cache.
    policy: Policy,
    forward: Rc<RefCell<Forward>>,
    /// The client's request fields as they came, for the rules.
    request: Rc<Vec<(String, Vec<u8>)>>,
    /// The fields a fill sends: the client's that go upstream, and ours.
    upstream: Rc<Vec<(String, Vec<u8>)>>,
    /// The client said `only-if-cached`: the origin is not asked.
    cached_only: bool,
    /// The request target fetched, when the engine's key is not it (a
    /// variant's key).
    target: Option<Rc<str>>,
    /// An answer the cache does not keep, for the request to relay.
    passed: Rc<RefCell<Option<Passed>>>,
}

impl HttpOrigin {
    /// A fetcher of `url` under `policy` that records its trip in
    /// `forward`.
    pub fn new(
        url: Rc<OriginUrl>,
        timeout_ms: u64,
        policy: Policy,
        forward: Rc<RefCell<Forward>>,
    ) -> Self {
        HttpOrigin {
            url,
            timeout_ms,
            policy,
            forward,
            request: Rc::default(),
            upstream: Rc::new(upstream_of(&[], true)),
            cached_only: false,
            target: None,
            passed: Rc::default(),
        }
    }

    /// This fetcher for a client that sent `fields` (name, raw value):
    /// the end-to-end ones go to the origin with a fill, and the rules
    /// read them. `only-if-cached`: never ask the origin.
    pub(crate) fn for_request(
        mut self,
        target: &str,
        fields: &[(String, Vec<u8>)],
        cached_only: bool,
    ) -> Self {
        self.target = Some(Rc::from(target));
        self.request = Rc::new(fields.to_vec());
        self.upstream = Rc::new(upstream_of(fields, true));
        self.cached_only = cached_only;
        self
    }

    /// The answer the cache passed through, if the fetch left one.
    pub(crate) fn take_passed(&self) -> Option<Passed> {
        self.passed.borrow_mut().take()
    }

    /// Send the request; the answer comes with the request's transmission
    /// future, which must outlive the body (the host ends the exchange when
    /// it is dropped).
    async fn send(&self, key: &str, held: Option<&Metadata>) -> Result<(Response, Sent)> {
        let headers = Fields::new();
        for (name, value) in self.upstream.iter() {
            // A field the host will not send is left out, not fatal.
            let _ = headers.append(name, value);
        }
        for (name, value) in exchange::validators(held) {
            headers.set(&name, &[value.into_bytes()]).map_err(|e| {
                Error::Origin(format!("the stored {name} is not a header value: {e:?}"))
            })?;
        }
        let options = RequestOptions::new();
        let timeout_ns = self.timeout_ms.saturating_mul(1_000_000);
        // A host that does not support a timeout says so; the engine's
        // operation timeout still bounds the fetch.
        let _ = options.set_connect_timeout(Some(timeout_ns));
        let _ = options.set_first_byte_timeout(Some(timeout_ns));
        let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None::<Trailers>));
        drop(trailers_tx);
        let (request, sent) = Request::new(headers, None, trailers_rx, Some(options));
        let target = self.url.target(key);
        let bad = |what: &str| Error::Origin(format!("cannot request {target}: bad {what}"));
        request
            .set_scheme(Some(&self.url.scheme))
            .map_err(|()| bad("scheme"))?;
        request
            .set_authority(Some(&self.url.authority))
            .map_err(|()| bad("authority"))?;
        request
            .set_path_with_query(Some(&format!("{}{key}", self.url.path)))
            .map_err(|()| bad("path"))?;
        let response = client::send(request)
            .await
            .map_err(|e| Error::Origin(format!("{target}: {e:?}")))?;
        Ok((response, sent))
    }
}

impl Origin for HttpOrigin {
    type Body = EdgeBody;

    async fn fetch(&self, key: &str, held: Option<&Metadata>) -> Result<Fetched<EdgeBody>> {
        if self.cached_only {
            return Err(Error::Origin(NOT_CACHED.into()));
        }
        self.forward.borrow_mut().fetched = true;
        let request_time = (now_ms() / 1000) as i64;
        // A variant's key is not a target: the request's own is fetched.
        let target = self.target.clone();
        let key = target.as_deref().unwrap_or(key);
        let (response, sent) = self.send(key, held).await?;
        let status = response.get_status_code();
        self.forward.borrow_mut().status = Some(status);
        let headers = response.get_headers();
        let raw = headers.copy_all();
        drop(headers);
        let judged = exchange::judge(
            &exchange::Answer {
                request: &self.request,
                status,
                response: &raw,
                request_time,
                now_ms: now_ms(),
            },
            held,
            &self.policy,
            new_set,
        );
        match judged.judgement {
            // The 304's fields updated the stored ones, and the freshness
            // they give counts from now.
            Judgement::Revalidated => Ok(Fetched::Revalidated(judged.meta)),
            Judgement::Missing => Ok(Fetched::NotFound),
            Judgement::Body { stored } => {
                let no_store = !stored;
                self.forward.borrow_mut().no_store = no_store;
                let body = EdgeBody::of_response(response, sent);
                let size = body.expected();
                Ok(Fetched::Body {
                    meta: judged.meta,
                    body,
                    no_store,
                    size,
                })
            }
            // Any other status goes to the client as it came.
            Judgement::Passed => {
                self.forward.borrow_mut().no_store = true;
                *self.passed.borrow_mut() = Some(Passed {
                    response,
                    sent,
                    received: None,
                });
                Err(Error::Origin(PASSED.into()))
            }
        }
    }
}

/// The fields a request with `fields` takes to the origin, for a fill or
/// not, as the rules choose them ([`exchange::upstream`]).
fn upstream_of(fields: &[(String, Vec<u8>)], fill: bool) -> Vec<(String, Vec<u8>)> {
    let up = exchange::upstream(fields, None, "http", fill, None);
    up.kept
        .iter()
        .filter_map(|&i| fields.get(i as usize).cloned())
        .chain(up.added.into_iter().map(|(n, v)| (n, v.into_bytes())))
        .collect()
}

/// Pass `request` (for `key`) to the origin as it came: its method, its
/// end-to-end fields with ours added, its body streamed. The origin's
/// answer and the request's transmission.
pub(crate) async fn pass(
    url: &OriginUrl,
    timeout_ms: u64,
    key: &str,
    request: Request,
) -> Result<Passed> {
    let method = request.get_method();
    let fields = request.get_headers().copy_all();
    let headers = Fields::new();
    for (name, value) in upstream_of(&fields, false) {
        // A field the host will not send is left out, not fatal.
        let _ = headers.append(&name, &value);
    }
    let (received, received_rx) = wit_future::new(|| Ok::<(), ErrorCode>(()));
    let (body, trailers) = Request::consume_body(request, received_rx);
    let options = RequestOptions::new();
    let timeout_ns = timeout_ms.saturating_mul(1_000_000);
    let _ = options.set_connect_timeout(Some(timeout_ns));
    let _ = options.set_first_byte_timeout(Some(timeout_ns));
    let (out, sent) = Request::new(headers, Some(body), trailers, Some(options));
    let target = url.target(key);
    let bad = |what: &str| Error::Origin(format!("cannot request {target}: bad {what}"));
    out.set_method(&method).map_err(|()| bad("method"))?;
    out.set_scheme(Some(&url.scheme))
        .map_err(|()| bad("scheme"))?;
    out.set_authority(Some(&url.authority))
        .map_err(|()| bad("authority"))?;
    out.set_path_with_query(Some(&format!("{}{key}", url.path)))
        .map_err(|()| bad("path"))?;
    let response = client::send(out)
        .await
        .map_err(|e| Error::Origin(format!("{target}: {e:?}")))?;
    Ok(Passed {
        response,
        sent,
        received: Some(received),
    })
}

/// A name for the set of variants a response that varies heads, unique
/// to this fetch: instances may live for one request, so no counter
/// would do.
fn new_set() -> String {
    format!(
        "{:x}.{:x}",
        now_ms(),
        wasip3::random::insecure::get_insecure_random_u64()
    )
}

/// Milliseconds since the Unix epoch, by the host's wall clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
