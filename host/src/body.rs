//! The body of a `get`: an async stream of bytes.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::{Error, Result};

/// A response body. Read it as a [`Stream`] of chunks; an `Err` item means
/// it broke off (and nothing of it was cached). Dropping it early is
/// allowed. A body read to its end was published before its end arrived,
/// so the next `get` of the key finds it in the cache.
pub struct Body {
    /// The stream from the engine; `None` for a body handed over whole.
    rx: Option<mpsc::Receiver<Result<Bytes>>>,
    /// A body handed over whole, until it is read.
    whole: Option<Bytes>,
    size: Option<u64>,
    received: u64,
    done: Option<oneshot::Receiver<Result<()>>>,
    /// The last chunk of a body of stated length, held back until the
    /// fill is done: a reader that counts bytes takes that chunk for the
    /// end, so it comes only once the entry is published.
    last: Option<Bytes>,
    ended: bool,
    _open: Option<OpenBody>,
}

impl Body {
    pub(crate) fn new(
        rx: mpsc::Receiver<Result<Bytes>>,
        size: Option<u64>,
        done: Option<oneshot::Receiver<Result<()>>>,
        open: OpenBody,
    ) -> Self {
        Body {
            rx: Some(rx),
            whole: None,
            size,
            received: 0,
            done,
            last: None,
            ended: false,
            _open: Some(open),
        }
    }

    /// A body already in hand: nothing streams it.
    pub(crate) fn whole(bytes: Bytes) -> Self {
        Body {
            rx: None,
            size: Some(bytes.len() as u64),
            whole: (!bytes.is_empty()).then_some(bytes),
            received: 0,
            done: None,
            last: None,
            ended: false,
            _open: None,
        }
    }

    /// The body's length, when known up front.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// Read the whole body into memory.
    pub async fn bytes(mut self) -> Result<Bytes> {
        if self.rx.is_none() {
            // Handed over whole: no copy.
            return Ok(self.whole.take().unwrap_or_default());
        }
        let mut out = BytesMut::new();
        while let Some(chunk) = self.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out.freeze())
    }

    fn end(&mut self, outcome: Result<()>) -> Poll<Option<Result<Bytes>>> {
        self.ended = true;
        if let Err(e) = outcome {
            return Poll::Ready(Some(Err(e)));
        }
        match self.size {
            Some(size) if size != self.received => Poll::Ready(Some(Err(Error::Store(format!(
                "body ended after {} of {size} bytes",
                self.received
            ))))),
            _ => Poll::Ready(None),
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("size", &self.size)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl Stream for Body {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(bytes) = self.whole.take() {
            self.received += bytes.len() as u64;
            return Poll::Ready(Some(Ok(bytes)));
        }
        if self.last.is_none()
            && let Some(rx) = self.rx.as_mut()
            && let Some(chunk) = ready!(rx.poll_recv(cx))
        {
            if let Ok(bytes) = &chunk {
                self.received += bytes.len() as u64;
                match self.size {
                    Some(size) if self.received > size => {
                        self.ended = true;
                        return Poll::Ready(Some(Err(Error::Store(format!(
                            "body runs past its {size} bytes"
                        )))));
                    }
                    Some(size) if self.received == size && self.done.is_some() => {
                        self.last = chunk.ok();
                        return self.poll_next(cx);
                    }
                    _ => {}
                }
            }
            return Poll::Ready(Some(chunk));
        }
        let outcome = match self.done.as_mut() {
            None => Ok(()),
            Some(done) => ready!(done.poll_unpin(cx)).unwrap_or_else(|_| {
                Err(Error::Engine("the body was abandoned by the engine".into()))
            }),
        };
        self.done = None;
        if let Some(last) = self.last.take() {
            if let Err(e) = outcome {
                self.ended = true;
                return Poll::Ready(Some(Err(e)));
            }
            // The rest (the end of the stream, or bytes past the stated
            // length) is read on the next poll.
            return Poll::Ready(Some(Ok(last)));
        }
        self.end(outcome)
    }
}

/// Counts the bodies a shard still streams, so that it keeps running for
/// them after its cache handle is gone.
#[derive(Default)]
pub(crate) struct OpenBodies {
    count: AtomicUsize,
    changed: Notify,
}

impl OpenBodies {
    pub(crate) fn open(self: &Arc<Self>) -> OpenBody {
        self.count.fetch_add(1, Ordering::SeqCst);
        OpenBody(Arc::clone(self))
    }

    /// Wait until no body is open.
    pub(crate) async fn none_open(&self) {
        loop {
            let changed = self.changed.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            changed.await;
        }
    }
}

/// Held by a [`Body`] while it is open.
pub(crate) struct OpenBody(Arc<OpenBodies>);

impl Drop for OpenBody {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}
