//! A fill: one source body read once and handed, chunk by chunk, to any
//! number of readers, while the engine writes it to tier sinks.
//!
//! Readers that arrive while the fill still holds its first byte (its body
//! so far fits in the join window) join it and read from the start; later
//! arrivals wait for the fill to settle and then read the tier it filled.
//! Past the join window only the chunks some reader still needs are kept,
//! and the source is paused while the slowest reader is more than
//! `LAG_LIMIT` bytes behind, so memory stays bounded by
//! `join window + LAG_LIMIT` whatever the body's size.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use crate::wait::Wakers;
use crate::{Error, Metadata, Result};

/// A shared piece of a body.
pub type Chunk = Rc<Vec<u8>>;

/// How far the slowest reader may fall behind the source before the
/// source is paused.
pub const LAG_LIMIT: u64 = 1 << 20;

/// Bytes all readers of one fill should hold copied out at once (see
/// [`FillReader::copy_slice`]).
pub const COPY_BUDGET: usize = 8 << 20;
/// The smallest slice a reader copies out, however many readers there are.
pub const COPY_SLICE_MIN: usize = 4 << 10;
/// The largest slice a reader copies out.
pub const COPY_SLICE_MAX: usize = 64 << 10;

/// One in-flight fill, shared by its pump and its readers.
pub struct Fill {
    meta: Metadata,
    /// The body's length, when its source declared it.
    size: Option<u64>,
    state: RefCell<State>,
}

struct State {
    /// Retained chunks; `chunks[0]` has absolute index `first`.
    chunks: VecDeque<Chunk>,
    /// Absolute byte offset of each retained chunk.
    starts: VecDeque<u64>,
    first: usize,
    bytes: u64,
    join_window: u64,
    /// Chunks were dropped: nobody can join from the start any more.
    trimmed: bool,
    /// Per reader: absolute index of the next chunk it reads.
    cursors: Vec<Option<usize>>,
    active: usize,
    /// A reader read the whole body.
    finished: bool,
    /// How the source ended, once it has.
    end: Option<Result<()>>,
    /// The pump is done: written and committed, or aborted.
    settled: bool,
    readers: Wakers,
    pump: Option<Waker>,
}

impl State {
    fn next_index(&self) -> usize {
        self.first + self.chunks.len()
    }

    fn slowest(&self) -> usize {
        self.cursors
            .iter()
            .flatten()
            .copied()
            .min()
            .unwrap_or(self.next_index())
    }

    fn offset_of(&self, index: usize) -> u64 {
        self.starts
            .get(index - self.first)
            .copied()
            .unwrap_or(self.bytes)
    }

    fn trim(&mut self) {
        if self.bytes > self.join_window {
            self.trimmed = true;
        }
        if !self.trimmed {
            return;
        }
        let keep_from = self.slowest();
        while self.first < keep_from {
            self.chunks.pop_front();
            self.starts.pop_front();
            self.first += 1;
        }
    }

    fn wake_pump(&mut self) {
        if let Some(waker) = self.pump.take() {
            waker.wake();
        }
    }
}

impl Fill {
    /// A new fill of an entry with `meta` whose body is `size` bytes long
    /// when its source said so. Readers may join while the body so far is
    /// at most `join_window` bytes (0: only the first reader).
    pub fn new(meta: Metadata, size: Option<u64>, join_window: u64) -> Rc<Self> {
        Rc::new(Fill {
            meta,
            size,
            state: RefCell::new(State {
                chunks: VecDeque::new(),
                starts: VecDeque::new(),
                first: 0,
                bytes: 0,
                join_window,
                trimmed: false,
                cursors: Vec::new(),
                active: 0,
                finished: false,
                end: None,
                settled: false,
                readers: Wakers::default(),
                pump: None,
            }),
        })
    }

    /// The metadata of the entry being filled.
    pub fn meta(&self) -> &Metadata {
        &self.meta
    }

    /// A reader from the first byte, unless that byte is gone or the
    /// source failed.
    pub fn join(self: &Rc<Self>) -> Option<FillReader> {
        let mut s = self.state.borrow_mut();
        if s.trimmed || s.first != 0 || matches!(s.end, Some(Err(_))) {
            return None;
        }
        s.cursors.push(Some(0));
        s.active += 1;
        Some(FillReader {
            fill: Rc::clone(self),
            id: s.cursors.len() - 1,
        })
    }

    /// Number of readers still reading.
    pub fn readers(&self) -> usize {
        self.state.borrow().active
    }

    /// Whether a reader has read the whole body.
    pub fn finished(&self) -> bool {
        self.state.borrow().finished
    }

    /// Wait until the source may be read again: no reader lags more than
    /// `LAG_LIMIT` bytes (or there is no reader at all).
    pub async fn room(&self) {
        poll_fn(|cx| {
            let mut s = self.state.borrow_mut();
            let slowest = s.slowest();
            if s.active == 0 || s.bytes - s.offset_of(slowest) <= LAG_LIMIT {
                Poll::Ready(())
            } else {
                s.pump = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Append a chunk read from the source.
    pub fn push(&self, chunk: Vec<u8>) {
        let mut s = self.state.borrow_mut();
        let start = s.bytes;
        s.bytes += chunk.len() as u64;
        s.starts.push_back(start);
        s.chunks.push_back(Rc::new(chunk));
        s.trim();
        s.readers.wake_all();
    }

    /// Record how the source ended (an abandoned fill ends with an error).
    pub fn end(&self, result: Result<()>) {
        let mut s = self.state.borrow_mut();
        if s.end.is_none() {
            s.end = Some(result);
        }
        s.readers.wake_all();
    }

    /// Wait until some reader has read everything or every reader left.
    /// True when the body was read to its end.
    pub async fn read_to_end(&self) -> bool {
        poll_fn(|cx| {
            let mut s = self.state.borrow_mut();
            if s.finished {
                Poll::Ready(true)
            } else if s.active == 0 {
                Poll::Ready(false)
            } else {
                s.pump = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// The pump is done; wake everyone waiting for that.
    pub fn settle(&self) {
        let mut s = self.state.borrow_mut();
        if s.end.is_none() {
            s.end = Some(Err(Error::Other("the fill stopped before its end".into())));
        }
        s.settled = true;
        s.readers.wake_all();
    }

    /// Wait until the pump is done.
    pub async fn settled(&self) {
        poll_fn(|cx| {
            let mut s = self.state.borrow_mut();
            if s.settled {
                Poll::Ready(())
            } else {
                s.readers.register(cx.waker());
                Poll::Pending
            }
        })
        .await
    }
}

/// One reader of a fill. Dropping it leaves the fill.
pub struct FillReader {
    fill: Rc<Fill>,
    id: usize,
}

impl FillReader {
    /// The metadata of the entry being read.
    pub fn meta(&self) -> &Metadata {
        self.fill.meta()
    }

    /// The body's length, when its source declared it. A body that ends
    /// short of it ends with the source's error.
    pub fn size(&self) -> Option<u64> {
        self.fill.size
    }

    /// The next chunk, `None` at a complete end, or the source's error.
    pub async fn next(&mut self) -> Option<Result<Chunk>> {
        poll_fn(|cx| {
            let mut s = self.fill.state.borrow_mut();
            let Some(cursor) = s.cursors[self.id] else {
                return Poll::Ready(None);
            };
            if cursor < s.next_index() {
                let chunk = Rc::clone(&s.chunks[cursor - s.first]);
                s.cursors[self.id] = Some(cursor + 1);
                s.trim();
                s.wake_pump();
                return Poll::Ready(Some(Ok(chunk)));
            }
            match &s.end {
                Some(Ok(())) => {
                    s.finished = true;
                    s.wake_pump();
                    Poll::Ready(None)
                }
                Some(Err(e)) => Poll::Ready(Some(Err(e.clone()))),
                None => {
                    s.readers.register(cx.waker());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// How many bytes of a chunk this reader should copy out at a time:
    /// [`COPY_BUDGET`] shared among the fill's readers, within
    /// [`COPY_SLICE_MIN`] and [`COPY_SLICE_MAX`]. A reader that copies a
    /// chunk out (to a stream of its own) holds that copy until its
    /// consumer takes it, so a thousand readers of one fill, woken by one
    /// chunk, would otherwise hold a thousand copies of it at once (and
    /// linear memory, once grown, stays grown).
    pub fn copy_slice(&self) -> usize {
        (COPY_BUDGET / self.fill.readers().max(1)).clamp(COPY_SLICE_MIN, COPY_SLICE_MAX)
    }

    /// After `next` returned `None`: wait until the fill is settled (its
    /// entry committed or dropped), so that a caller who read a body to
    /// its end finds the entry published.
    pub async fn settled(&self) {
        self.fill.settled().await
    }
}

impl Drop for FillReader {
    fn drop(&mut self) {
        let mut s = self.fill.state.borrow_mut();
        if s.cursors[self.id].take().is_some() {
            s.active -= 1;
            s.trim();
            s.wake_pump();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_of_one_fill_share_a_copy_budget() {
        let fill = Fill::new(Metadata::default(), None, 1 << 20);
        let many = 2 * COPY_BUDGET / COPY_SLICE_MIN;
        let mut readers: Vec<FillReader> = (0..many).map(|_| fill.join().unwrap()).collect();
        assert_eq!(readers[0].copy_slice(), COPY_SLICE_MIN);
        readers.truncate(1000);
        assert_eq!(readers[0].copy_slice(), COPY_BUDGET / 1000);
        assert!(readers[0].copy_slice() > COPY_SLICE_MIN);
        readers.truncate(128);
        assert_eq!(readers[0].copy_slice(), COPY_SLICE_MAX);
        readers.truncate(1);
        assert_eq!(readers[0].copy_slice(), COPY_SLICE_MAX);
    }
}
