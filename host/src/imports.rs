//! The host side of the engine's imports: tiers, sinks, origin fetchers,
//! the job queue and the clock, over the host's Rust traits. Also the
//! stream adapters between `ByteStream`s and component streams.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use wasmtime::component::{
    Accessor, Destination, FutureConsumer, FutureReader, HasData, Resource, ResourceTable, Source,
    StreamConsumer, StreamProducer, StreamReader, StreamResult,
};
use wasmtime::{StoreContextMut, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::{origin, scheduler, store, types};
use crate::fetcher::{FetchResult, SharedFetcher};
use crate::tier::{ByteStream, Tier, TierSink};
use crate::{Error, Metadata};

/// A tier handed to the engine.
pub struct TierRes(pub(crate) Arc<dyn Tier>);

/// A body held here while the engine decides what to answer.
pub struct HeldBodyRes(pub(crate) Bytes);

/// A write in progress, owned by the engine. Dropping it aborts.
pub struct SinkRes(Option<Box<dyn TierSink>>);

/// The fetcher of one request.
pub struct FetcherRes(pub(crate) SharedFetcher);

/// Where the engine's background jobs go.
pub struct QueueRes(
    pub(crate) Arc<dyn Fn(scheduler::Job, Option<SharedFetcher>) -> Result<(), Error> + Send + Sync>,
);

/// The data of one engine store.
pub struct HostState {
    pub(crate) table: ResourceTable,
    wasi: WasiCtx,
    pub(crate) limits: StoreLimits,
    /// Transitions between wasm and host so far (the call hook counts).
    pub(crate) transitions: u64,
    /// The watchdog's last sight of `transitions`, and the epoch tick
    /// since which it has not moved.
    pub(crate) watchdog: (u64, u64),
}

impl HostState {
    pub(crate) fn new(limits: StoreLimits) -> Self {
        HostState {
            table: ResourceTable::new(),
            wasi: WasiCtx::builder().inherit_stderr().build(),
            limits,
            transitions: 0,
            watchdog: (0, 0),
        }
    }
}

impl HostState {
    /// `get-whole` of a tier, for the engine.
    pub(crate) fn get_whole(
        &mut self,
        tier: &Resource<TierRes>,
        key: &str,
    ) -> WitResult<Option<types::WholeEntry>> {
        let found = match self.table.get(tier)?.0.get_whole(key) {
            Ok(found) => found,
            Err(e) => return Ok(Err(e.into())),
        };
        let Some((meta, body)) = found else {
            return Ok(Ok(None));
        };
        Ok(Ok(Some(types::WholeEntry {
            meta: meta.into(),
            body: self.table.push(HeldBodyRes(body))?,
        })))
    }

    /// Take back a body the engine passed through.
    pub(crate) fn take_held(&mut self, body: Resource<HeldBodyRes>) -> wasmtime::Result<Bytes> {
        Ok(self.table.delete(body)?.0)
    }
}

impl HasData for HostState {
    type Data<'a> = &'a mut HostState;
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

type Acc = Accessor<HostState, HostState>;
pub(crate) type WitResult<T> = wasmtime::Result<Result<T, types::Error>>;

impl types::Host for HostState {}

impl types::HostHeldBody for HostState {
    fn drop(&mut self, rep: Resource<HeldBodyRes>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}
impl store::Host for HostState {}
impl origin::Host for HostState {}
impl scheduler::Host for HostState {}

impl store::HostTier for HostState {
    fn name(&mut self, self_: Resource<TierRes>) -> wasmtime::Result<String> {
        Ok(self.table.get(&self_)?.0.name())
    }

    fn get_whole(
        &mut self,
        self_: Resource<TierRes>,
        key: String,
    ) -> WitResult<Option<types::WholeEntry>> {
        self.get_whole(&self_, &key)
    }

    fn admits(
        &mut self,
        self_: Resource<TierRes>,
        key: String,
        meta: types::Metadata,
        size: u64,
    ) -> wasmtime::Result<bool> {
        Ok(self.table.get(&self_)?.0.admits(&key, &meta.into(), size))
    }

    fn drop(&mut self, rep: Resource<TierRes>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl store::HostTierWithStore<HostState> for HostState {
    async fn get(
        accessor: &Acc,
        self_: Resource<TierRes>,
        key: String,
    ) -> WitResult<Option<store::Entry>> {
        let tier = accessor.with(|mut a| a.get().table.get(&self_).map(|t| Arc::clone(&t.0)))?;
        let found = tier.get(&key).await;
        let entry = match found {
            Ok(Some(entry)) => entry,
            Ok(None) => return Ok(Ok(None)),
            Err(e) => return Ok(Err(e.into())),
        };
        let body = accessor
            .with(|mut a| StreamReader::new(&mut a, BodyProducer::new(entry.body, None)))?;
        Ok(Ok(Some(store::Entry {
            meta: entry.meta.into(),
            size: entry.size,
            body,
        })))
    }

    async fn stat(
        accessor: &Acc,
        self_: Resource<TierRes>,
        key: String,
    ) -> WitResult<Option<types::Metadata>> {
        let tier = accessor.with(|mut a| a.get().table.get(&self_).map(|t| Arc::clone(&t.0)))?;
        let found = tier.stat(&key).await;
        Ok(found.map(|m| m.map(Into::into)).map_err(Into::into))
    }

    async fn begin_write(
        accessor: &Acc,
        self_: Resource<TierRes>,
        key: String,
        meta: types::Metadata,
    ) -> WitResult<Resource<SinkRes>> {
        let tier = accessor.with(|mut a| a.get().table.get(&self_).map(|t| Arc::clone(&t.0)))?;
        let sink = match tier.begin_write(&key, meta.into()).await {
            Ok(sink) => sink,
            Err(e) => return Ok(Err(e.into())),
        };
        let sink = accessor.with(|mut a| a.get().table.push(SinkRes(Some(sink))))?;
        Ok(Ok(sink))
    }

    async fn delete(accessor: &Acc, self_: Resource<TierRes>, key: String) -> WitResult<()> {
        let tier = accessor.with(|mut a| a.get().table.get(&self_).map(|t| Arc::clone(&t.0)))?;
        let result = tier.delete(&key).await;
        Ok(result.map_err(Into::into))
    }
}

impl store::HostSink for HostState {
    fn drop(&mut self, rep: Resource<SinkRes>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl store::HostSinkWithStore<HostState> for HostState {
    async fn write(accessor: &Acc, self_: Resource<SinkRes>, data: Vec<u8>) -> WitResult<()> {
        // Taken out of the table for the duration of the write.
        let sink = accessor.with(|mut a| a.get().table.get_mut(&self_).map(|s| s.0.take()))?;
        let Some(mut sink) = sink else {
            return Ok(Err(types::Error::Other(
                "a sink write is already in progress".into(),
            )));
        };
        let result = sink.write(Bytes::from(data)).await;
        accessor.with(|mut a| a.get().table.get_mut(&self_).map(|s| s.0 = Some(sink)))?;
        Ok(result.map_err(Into::into))
    }

    async fn commit(accessor: &Acc, this: Resource<SinkRes>) -> WitResult<()> {
        let sink = accessor.with(|mut a| a.get().table.delete(this))?;
        let Some(sink) = sink.0 else {
            return Ok(Err(types::Error::Other(
                "a sink write is still in progress".into(),
            )));
        };
        let result = sink.commit().await;
        Ok(result.map_err(Into::into))
    }
}

impl origin::HostFetcher for HostState {
    fn drop(&mut self, rep: Resource<FetcherRes>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl origin::HostFetcherWithStore<HostState> for HostState {
    async fn fetch(
        accessor: &Acc,
        self_: Resource<FetcherRes>,
        key: String,
        held: Option<types::Metadata>,
    ) -> WitResult<origin::FetchResult> {
        let fetcher = accessor.with(|mut a| a.get().table.get(&self_).map(|f| Arc::clone(&f.0)))?;
        // User code: a panic is the origin's failure, never the host's.
        let fetched = AssertUnwindSafe(fetcher.fetch_owned(key, held.map(Into::into)))
            .catch_unwind()
            .await;
        let fetched = match fetched {
            Err(_) => return Ok(Err(types::Error::Origin("the fetcher panicked".into()))),
            Ok(Err(e)) => return Ok(Err(e.into())),
            Ok(Ok(fetched)) => fetched,
        };
        Ok(Ok(match fetched {
            FetchResult::NotModified => origin::FetchResult::NotModified,
            FetchResult::Revalidated(meta) => origin::FetchResult::Revalidated(meta.into()),
            FetchResult::NotFound => origin::FetchResult::NotFound,
            FetchResult::Body {
                meta,
                body,
                no_store,
                size,
            } => {
                let (done_tx, done_rx) = oneshot::channel();
                let (body, complete) = accessor.with(|mut a| -> wasmtime::Result<_> {
                    let body = StreamReader::new(&mut a, BodyProducer::new(body, Some(done_tx)))?;
                    let complete = FutureReader::new(&mut a, async move {
                        let outcome = done_rx
                            .await
                            .unwrap_or(Err(types::Error::Origin("the body was abandoned".into())));
                        Ok::<_, wasmtime::Error>(outcome)
                    })?;
                    Ok((body, complete))
                })?;
                origin::FetchResult::Body(origin::Fetched {
                    meta: meta.into(),
                    body,
                    complete,
                    no_store,
                    size,
                })
            }
        }))
    }
}

impl scheduler::HostQueue for HostState {
    fn submit(
        &mut self,
        self_: Resource<QueueRes>,
        job: scheduler::Job,
        origin: Option<Resource<FetcherRes>>,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        let fetcher = match origin {
            Some(origin) => Some(self.table.delete(origin)?.0),
            None => None,
        };
        let submit = Arc::clone(&self.table.get(&self_)?.0);
        Ok(submit(job, fetcher).map_err(Into::into))
    }

    fn drop(&mut self, rep: Resource<QueueRes>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl scheduler::HostWithStore<HostState> for HostState {
    async fn sleep(_accessor: &Acc, millis: u64) -> wasmtime::Result<()> {
        tokio::time::sleep(Duration::from_millis(millis)).await;
        Ok(())
    }
}

/// Feeds a host body into a component stream. An error ends the stream
/// early; for origin bodies `done` reports it (tier bodies are checked
/// against their size instead).
struct BodyProducer {
    body: ByteStream,
    done: Option<oneshot::Sender<Result<(), types::Error>>>,
}

impl BodyProducer {
    fn new(body: ByteStream, done: Option<oneshot::Sender<Result<(), types::Error>>>) -> Self {
        BodyProducer { body, done }
    }

    fn finish(&mut self, outcome: Result<(), types::Error>) {
        if let Some(done) = self.done.take() {
            let _ = done.send(outcome);
        }
    }
}

impl<D> StreamProducer<D> for BodyProducer {
    type Item = u8;
    type Buffer = Bytes;

    fn poll_produce<'a>(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut store: StoreContextMut<'a, D>,
        mut dst: Destination<'a, u8, Bytes>,
        finish: bool,
    ) -> Poll<wasmtime::Result<StreamResult>> {
        if dst.remaining(&mut store) == Some(0) {
            return Poll::Ready(Ok(StreamResult::Completed));
        }
        loop {
            let next = std::panic::catch_unwind(AssertUnwindSafe(|| self.body.poll_next_unpin(cx)));
            return match next {
                Ok(Poll::Ready(Some(Ok(chunk)))) if chunk.is_empty() => continue,
                Ok(Poll::Ready(Some(Ok(chunk)))) => {
                    dst.set_buffer(chunk);
                    Poll::Ready(Ok(StreamResult::Completed))
                }
                Ok(Poll::Ready(Some(Err(e)))) => {
                    self.finish(Err(e.into()));
                    Poll::Ready(Ok(StreamResult::Dropped))
                }
                Ok(Poll::Ready(None)) => {
                    self.finish(Ok(()));
                    Poll::Ready(Ok(StreamResult::Dropped))
                }
                Err(_) => {
                    self.finish(Err(types::Error::Origin("the body stream panicked".into())));
                    Poll::Ready(Ok(StreamResult::Dropped))
                }
                Ok(Poll::Pending) if finish => Poll::Ready(Ok(StreamResult::Cancelled)),
                Ok(Poll::Pending) => Poll::Pending,
            };
        }
    }
}

impl Drop for BodyProducer {
    fn drop(&mut self) {
        self.finish(Err(types::Error::Other("the body was abandoned".into())));
    }
}

/// Forwards a component stream into the channel behind a [`crate::Body`],
/// reserving room first so that a slow reader slows the guest down.
pub(crate) struct ChannelConsumer {
    tx: Option<mpsc::Sender<crate::Result<Bytes>>>,
    reserve: Option<Reserve>,
}

type Reserve = Pin<
    Box<
        dyn Future<
                Output = Result<
                    mpsc::OwnedPermit<crate::Result<Bytes>>,
                    mpsc::error::SendError<()>,
                >,
            > + Send,
    >,
>;

impl ChannelConsumer {
    pub(crate) fn new(tx: mpsc::Sender<crate::Result<Bytes>>) -> Self {
        ChannelConsumer {
            tx: Some(tx),
            reserve: None,
        }
    }
}

impl<D> StreamConsumer<D> for ChannelConsumer {
    type Item = u8;

    fn poll_consume(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        store: StoreContextMut<D>,
        src: Source<'_, u8>,
        finish: bool,
    ) -> Poll<wasmtime::Result<StreamResult>> {
        let this = &mut *self;
        let Some(tx) = this.tx.as_ref() else {
            return Poll::Ready(Ok(StreamResult::Dropped));
        };
        let reserve = this
            .reserve
            .get_or_insert_with(|| Box::pin(tx.clone().reserve_owned()));
        let permit = match reserve.as_mut().poll(cx) {
            Poll::Ready(Ok(permit)) => {
                this.reserve = None;
                permit
            }
            Poll::Ready(Err(_)) => {
                // The caller dropped the body.
                this.reserve = None;
                this.tx = None;
                return Poll::Ready(Ok(StreamResult::Dropped));
            }
            Poll::Pending if finish => {
                this.reserve = None;
                return Poll::Ready(Ok(StreamResult::Cancelled));
            }
            Poll::Pending => return Poll::Pending,
        };
        let mut src = src.as_direct(store);
        let n = src.remaining().len();
        if n > 0 {
            permit.send(Ok(Bytes::copy_from_slice(src.remaining())));
            src.mark_read(n);
        }
        Poll::Ready(Ok(StreamResult::Completed))
    }
}

/// Delivers a body's completion future to the [`crate::Body`].
pub(crate) struct CompletionConsumer(pub(crate) Option<oneshot::Sender<crate::Result<()>>>);

impl<D> FutureConsumer<D> for CompletionConsumer {
    type Item = Result<(), types::Error>;

    fn poll_consume(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        store: StoreContextMut<D>,
        mut source: Source<'_, Self::Item>,
        _finish: bool,
    ) -> Poll<wasmtime::Result<()>> {
        let mut slot = None;
        source.read(store, &mut slot)?;
        if let (Some(outcome), Some(tx)) = (slot, self.get_mut().0.take()) {
            let _ = tx.send(outcome.map_err(Into::into));
        }
        Poll::Ready(Ok(()))
    }
}

impl From<types::Error> for Error {
    fn from(e: types::Error) -> Self {
        match e {
            types::Error::NotFound => Error::NotFound,
            types::Error::Closed => Error::Closed,
            types::Error::InvalidKey(s) => Error::InvalidKey(s),
            types::Error::Timeout => Error::Timeout,
            types::Error::Invalidated => Error::Invalidated,
            types::Error::Busy => Error::Busy,
            types::Error::InvalidConfig(s) => Error::InvalidConfig(s),
            types::Error::Store(s) => Error::Store(s),
            types::Error::Origin(s) => Error::Origin(s),
            types::Error::Other(s) => Error::Other(s),
        }
    }
}

impl From<Error> for types::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::NotFound => types::Error::NotFound,
            Error::Closed => types::Error::Closed,
            Error::InvalidKey(s) => types::Error::InvalidKey(s),
            Error::Timeout => types::Error::Timeout,
            Error::Invalidated => types::Error::Invalidated,
            Error::Busy => types::Error::Busy,
            Error::InvalidConfig(s) => types::Error::InvalidConfig(s),
            Error::Store(s) => types::Error::Store(s),
            Error::Origin(s) => types::Error::Origin(s),
            Error::Engine(s) | Error::Other(s) => types::Error::Other(s),
        }
    }
}

impl From<types::Metadata> for Metadata {
    fn from(m: types::Metadata) -> Self {
        Metadata::from_parts(
            m.tag,
            m.cached_at,
            m.negative,
            m.fresh_for,
            m.stale_for,
            m.stale_if_error,
            m.attributes,
        )
    }
}

impl From<Metadata> for types::Metadata {
    fn from(m: Metadata) -> Self {
        use crate::meta::{duration_millis, to_millis};
        types::Metadata {
            tag: m.tag,
            cached_at: m.cached_at.map(to_millis),
            negative: m.negative,
            fresh_for: m.fresh_for.map(duration_millis),
            stale_for: m.stale_for.map(duration_millis),
            stale_if_error: m.stale_if_error.map(duration_millis),
            attributes: m.attributes,
        }
    }
}
