//! The one body type of the middleware's runtime: bytes held in memory
//! (a key-value value), a file being read, or an HTTP body stream.

use std::fs::File;
use std::io::Read;

use daramjwee_component::{Body, Error, Result};
use wasip3::http::types::{ErrorCode, Trailers};
use wasip3::wit_bindgen::{FutureReader, FutureWriter, StreamReader, StreamResult};

/// Largest chunk handed to the engine at once.
pub(crate) const CHUNK: usize = 64 * 1024;

/// A body being read.
pub enum EdgeBody {
    /// Bytes already in memory, handed out in chunks.
    Bytes {
        /// The bytes.
        data: Vec<u8>,
        /// How far they were handed out.
        at: usize,
    },
    /// `left` more bytes of a file.
    File {
        /// The file, positioned at the next byte.
        file: File,
        /// Bytes still to come.
        left: u64,
    },
    /// An HTTP body; `trailers` tells whether it arrived whole.
    Http {
        /// The body stream.
        stream: StreamReader<u8>,
        /// Resolves after the stream ends: an error when it broke off.
        trailers: Option<FutureReader<Result<Option<Trailers>, ErrorCode>>>,
        /// Held while the body is read: the host takes its completion
        /// (dropping it) as "done with the body" and stops sending.
        done: Option<FutureWriter<Result<(), ErrorCode>>>,
        /// The request's transmission: held while the body is read.
        sent: Option<FutureReader<Result<(), ErrorCode>>>,
        /// The origin's `Content-Length`, checked at the end: a body that
        /// ends short must not pass for a whole one.
        expected: Option<u64>,
        /// Bytes read so far.
        read: u64,
    },
}

impl EdgeBody {
    /// The body of the origin's `response`, read with `sent` (the
    /// transmission of the request that got it) held; its stated length
    /// is checked at the end.
    pub(crate) fn of_response(
        response: wasip3::http::types::Response,
        sent: FutureReader<Result<(), ErrorCode>>,
    ) -> EdgeBody {
        let expected = response
            .get_headers()
            .get("content-length")
            .first()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse().ok());
        let (done, done_rx) = wasip3::wit_future::new(|| Ok::<(), ErrorCode>(()));
        let (stream, trailers) = wasip3::http::types::Response::consume_body(response, done_rx);
        EdgeBody::Http {
            stream,
            trailers: Some(trailers),
            done: Some(done),
            sent: Some(sent),
            expected,
            read: 0,
        }
    }

    /// The length the origin stated for this body, if it is one of its.
    pub(crate) fn expected(&self) -> Option<u64> {
        match self {
            EdgeBody::Http { expected, .. } => *expected,
            _ => None,
        }
    }
}

impl Body for EdgeBody {
    async fn next(&mut self) -> Option<Result<Vec<u8>>> {
        match self {
            EdgeBody::Bytes { data, at } => {
                if *at >= data.len() {
                    return None;
                }
                let end = data.len().min(*at + CHUNK);
                let chunk = data[*at..end].to_vec();
                *at = end;
                Some(Ok(chunk))
            }
            EdgeBody::File { file, left } => {
                if *left == 0 {
                    return None;
                }
                let mut buf = vec![0; (*left).min(CHUNK as u64) as usize];
                match file.read(&mut buf) {
                    Ok(0) => {
                        let short = std::mem::take(left);
                        Some(Err(Error::Store(format!(
                            "the file ended {short} bytes early"
                        ))))
                    }
                    Ok(n) => {
                        buf.truncate(n);
                        *left -= n as u64;
                        Some(Ok(buf))
                    }
                    Err(e) => {
                        *left = 0;
                        Some(Err(Error::Store(format!("reading the file: {e}"))))
                    }
                }
            }
            EdgeBody::Http {
                stream,
                trailers,
                done,
                sent,
                expected,
                read,
            } => loop {
                let (result, buf) = stream.read(Vec::with_capacity(CHUNK)).await;
                match result {
                    StreamResult::Complete(_) if buf.is_empty() => continue,
                    StreamResult::Complete(_) => {
                        *read += buf.len() as u64;
                        return Some(Ok(buf));
                    }
                    StreamResult::Dropped | StreamResult::Cancelled => {
                        let trailers = trailers.take()?;
                        let result = trailers.await;
                        drop(done.take());
                        drop(sent.take());
                        return match result {
                            Ok(_) if expected.is_some_and(|n| n != *read) => {
                                Some(Err(Error::Origin(format!(
                                    "the origin's body ended after {read} of {} bytes",
                                    expected.unwrap_or_default()
                                ))))
                            }
                            Ok(_) => None,
                            Err(e) => Some(Err(Error::Origin(format!(
                                "the origin's body broke off: {e:?}"
                            )))),
                        };
                    }
                }
            },
        }
    }
}
