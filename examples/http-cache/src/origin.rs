//! The origin behind the cache: `GET origin + key` over
//! `wasi:http/client`, conditional on the tag we hold.

use std::cell::RefCell;
use std::rc::Rc;

use daramjwee_component::http::Forward;
use daramjwee_component::http::rfc9111::{self, Policy};
use daramjwee_component::{Error, Fetched, Metadata, Origin, Result};
use wasip3::http::client;
use wasip3::http::types::{ErrorCode, Fields, Request, RequestOptions, Response, Trailers};
use wasip3::wit_bindgen::FutureReader;
use wasip3::wit_future;

/// Resolves when the request was sent whole.
pub(crate) type Sent = FutureReader<Result<(), ErrorCode>>;

use crate::body::EdgeBody;
use crate::settings::OriginUrl;

/// One request's fetcher: where the origin is, and a record of what the
/// trip did for that request's `Cache-Status`.
#[derive(Clone)]
pub struct HttpOrigin {
    url: Rc<OriginUrl>,
    /// Connect and first-byte timeout, in ms.
    timeout_ms: u64,
    /// The operator's choices the RFC leaves to the cache.
    policy: Policy,
    forward: Rc<RefCell<Forward>>,
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
        }
    }

    /// Send the request; the answer comes with the request's transmission
    /// future, which must outlive the body (the host ends the exchange when
    /// it is dropped).
    async fn send(&self, key: &str, tag: Option<&str>) -> Result<(Response, Sent)> {
        let headers = Fields::new();
        if let Some(tag) = tag {
            headers
                .set("if-none-match", &[tag.as_bytes().to_vec()])
                .map_err(|e| {
                    Error::Origin(format!("the tag {tag:?} is not a header value: {e:?}"))
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
        self.forward.borrow_mut().fetched = true;
        let held = held.filter(|m| !m.negative && !m.tag.is_empty());
        let request_time = (now_ms() / 1000) as i64;
        let (response, sent) = self.send(key, held.map(|m| m.tag.as_str())).await?;
        let status = response.get_status_code();
        self.forward.borrow_mut().status = Some(status);
        match status {
            304 if held.is_some() => Ok(Fetched::NotModified),
            404 | 410 => Ok(Fetched::NotFound),
            200 => {
                let headers = response.get_headers();
                let fields: Vec<(String, String)> = headers
                    .copy_all()
                    .into_iter()
                    .filter_map(|(name, value)| String::from_utf8(value).ok().map(|v| (name, v)))
                    .collect();
                let now_ms = now_ms();
                let decision = rfc9111::decide(
                    &rfc9111::Exchange {
                        method: "GET",
                        request: &[],
                        status,
                        response: &fields,
                        request_time,
                        response_time: (now_ms / 1000) as i64,
                    },
                    &self.policy,
                );
                let meta = rfc9111::entry_meta(&fields, &decision, now_ms);
                let no_store = decision.store.is_err();
                self.forward.borrow_mut().no_store = no_store;
                let text = |name: &str| -> Vec<String> {
                    headers
                        .get(name)
                        .into_iter()
                        .filter_map(|v| String::from_utf8(v).ok())
                        .collect()
                };
                let expected = text("content-length")
                    .into_iter()
                    .next()
                    .and_then(|v| v.trim().parse().ok());
                drop(headers);
                let (done, result_rx) = wit_future::new(|| Ok::<(), ErrorCode>(()));
                let (stream, trailers) = Response::consume_body(response, result_rx);
                Ok(Fetched::Body {
                    meta,
                    body: EdgeBody::Http {
                        stream,
                        trailers: Some(trailers),
                        done: Some(done),
                        sent: Some(sent),
                        expected,
                        read: 0,
                    },
                    no_store,
                    size: expected,
                })
            }
            other => Err(Error::Origin(format!(
                "{} answered {other}",
                self.url.target(key)
            ))),
        }
    }
}

/// Milliseconds since the Unix epoch, by the host's wall clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
