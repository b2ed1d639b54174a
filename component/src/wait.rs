//! Small single-threaded async helpers: a wake-everyone list and a race
//! between two futures.

use std::future::Future;
use std::pin::pin;
use std::task::{Poll, Waker};

/// Wakers of tasks waiting for some shared state to change.
#[derive(Default)]
pub struct Wakers(Vec<Waker>);

impl Wakers {
    /// Remember `waker` to be woken by the next [`Wakers::wake_all`].
    pub fn register(&mut self, waker: &Waker) {
        if !self.0.iter().any(|w| w.will_wake(waker)) {
            self.0.push(waker.clone());
        }
    }

    /// Wake every registered task.
    pub fn wake_all(&mut self) {
        for waker in self.0.drain(..) {
            waker.wake();
        }
    }
}

/// Run `main` unless `limit` finishes first, in which case `None`.
pub async fn race<T>(main: impl Future<Output = T>, limit: impl Future<Output = ()>) -> Option<T> {
    let mut main = pin!(main);
    let mut limit = pin!(limit);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(value) = main.as_mut().poll(cx) {
            return Poll::Ready(Some(value));
        }
        if limit.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}
