//! The WIT glue: exports the engine as the `cache` interface, over the
//! imported tiers, origin fetchers and scheduler. Thin on purpose: every
//! rule lives in the engine.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use wit_bindgen::{FutureReader, StreamReader, StreamResult};

use crate::{Body, Engine, Entry, Fetched, Job, JobKind, ResponseBody, Runtime};

#[allow(missing_docs, reason = "generated bindings")]
mod bindings {
    wit_bindgen::generate!({ path: "../wit", world: "engine" });
}

use bindings::daramjwee::cache::{origin, scheduler, store, types as wit};
use bindings::exports::daramjwee::cache::cache as cx;

/// Read size for bodies coming from the host.
const CHUNK: usize = 64 * 1024;

/// The engine's runtime inside the component.
struct GuestRt {
    queue: scheduler::Queue,
}

/// A body stream from a tier (`size` known) or the origin (`complete` says
/// how it ended, and `size` is known when the origin stated it).
pub struct GuestBody {
    stream: StreamReader<u8>,
    size: Option<u64>,
    /// The error for a body whose length is not the one stated.
    mismatch: fn(String) -> crate::Error,
    complete: Option<FutureReader<Result<(), wit::Error>>>,
    read: u64,
    ended: bool,
}

impl GuestBody {
    /// A tier's body of `size` bytes.
    fn stored(stream: StreamReader<u8>, size: u64) -> Self {
        GuestBody::new(stream, Some(size), None, crate::Error::Store)
    }

    /// The origin's body, of `size` bytes when it said so.
    fn fetched(
        stream: StreamReader<u8>,
        size: Option<u64>,
        complete: FutureReader<Result<(), wit::Error>>,
    ) -> Self {
        GuestBody::new(stream, size, Some(complete), crate::Error::Origin)
    }

    fn new(
        stream: StreamReader<u8>,
        size: Option<u64>,
        complete: Option<FutureReader<Result<(), wit::Error>>>,
        mismatch: fn(String) -> crate::Error,
    ) -> Self {
        GuestBody {
            stream,
            size,
            mismatch,
            complete,
            read: 0,
            ended: false,
        }
    }

    async fn finish(&mut self) -> Option<crate::Result<Vec<u8>>> {
        self.ended = true;
        if let Some(complete) = self.complete.take()
            && let Err(e) = complete.await
        {
            return Some(Err(e.into()));
        }
        match self.size {
            Some(size) if size != self.read => Some(Err((self.mismatch)(format!(
                "body ended after {} of {size} bytes",
                self.read
            )))),
            _ => None,
        }
    }
}

impl Body for GuestBody {
    async fn next(&mut self) -> Option<crate::Result<Vec<u8>>> {
        if self.ended {
            return None;
        }
        loop {
            let (result, mut buf) = self.stream.read(Vec::with_capacity(CHUNK)).await;
            match result {
                StreamResult::Complete(_) if buf.is_empty() => continue,
                StreamResult::Complete(_) => {
                    self.read += buf.len() as u64;
                    if let Some(size) = self.size
                        && self.read > size
                    {
                        // Not one byte past the stated length goes on.
                        self.ended = true;
                        return Some(Err((self.mismatch)(format!(
                            "body runs past its {size} bytes"
                        ))));
                    }
                    if buf.len() < buf.capacity() / 2 {
                        buf.shrink_to_fit();
                    }
                    return Some(Ok(buf));
                }
                StreamResult::Dropped | StreamResult::Cancelled => return self.finish().await,
            }
        }
    }
}

impl crate::Sink for store::Sink {
    async fn write(&mut self, data: Vec<u8>) -> crate::Result<()> {
        store::Sink::write(self, data).await.map_err(Into::into)
    }

    async fn commit(self) -> crate::Result<()> {
        store::Sink::commit(self).await.map_err(Into::into)
    }
}

impl crate::Tier for store::Tier {
    type Body = GuestBody;
    type Sink = store::Sink;
    type Whole = wit::HeldBody;

    fn name(&self) -> String {
        store::Tier::name(self)
    }

    async fn get(&self, key: &str) -> crate::Result<Option<Entry<GuestBody>>> {
        let entry = store::Tier::get(self, key.to_owned()).await?;
        Ok(entry.map(|e| Entry {
            meta: e.meta.into(),
            size: e.size,
            body: GuestBody::stored(e.body, e.size),
        }))
    }

    fn get_whole(&self, key: &str) -> crate::Result<Option<(crate::Metadata, wit::HeldBody)>> {
        let entry = store::Tier::get_whole(self, key)?;
        Ok(entry.map(|e| (e.meta.into(), e.body)))
    }

    fn admits(&self, key: &str, meta: &crate::Metadata, size: u64) -> bool {
        store::Tier::admits(self, key, &meta.clone().into(), size)
    }

    async fn stat(&self, key: &str) -> crate::Result<Option<crate::Metadata>> {
        Ok(store::Tier::stat(self, key.to_owned())
            .await?
            .map(Into::into))
    }

    async fn begin_write(&self, key: &str, meta: &crate::Metadata) -> crate::Result<store::Sink> {
        Ok(store::Tier::begin_write(self, key.to_owned(), meta.clone().into()).await?)
    }

    async fn delete(&self, key: &str) -> crate::Result<()> {
        Ok(store::Tier::delete(self, key.to_owned()).await?)
    }
}

impl crate::Origin for origin::Fetcher {
    type Body = GuestBody;

    async fn fetch(
        &self,
        key: &str,
        held: Option<&crate::Metadata>,
    ) -> crate::Result<Fetched<GuestBody>> {
        let held = held.cloned().map(Into::into);
        Ok(
            match origin::Fetcher::fetch(self, key.to_owned(), held).await? {
                origin::FetchResult::Body(f) => Fetched::Body {
                    meta: f.meta.into(),
                    body: GuestBody::fetched(f.body, f.size, f.complete),
                    no_store: f.no_store,
                    size: f.size,
                },
                origin::FetchResult::NotModified => Fetched::NotModified,
                origin::FetchResult::Revalidated(meta) => Fetched::Revalidated(meta.into()),
                origin::FetchResult::NotFound => Fetched::NotFound,
            },
        )
    }
}

impl Runtime for GuestRt {
    type Body = GuestBody;
    type Sink = store::Sink;
    type Tier = store::Tier;
    type Origin = origin::Fetcher;

    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    async fn sleep(&self, ms: u64) {
        scheduler::sleep(ms).await
    }

    fn submit(&self, job: Job, origin: Option<origin::Fetcher>) -> crate::Result<()> {
        let kind = match job.kind {
            JobKind::Refresh => scheduler::JobKind::Refresh,
            JobKind::Copy { source, targets } => {
                scheduler::JobKind::Copy(scheduler::CopyJob { source, targets })
            }
        };
        let job = scheduler::Job {
            key: job.key,
            generation: job.generation,
            kind,
        };
        Ok(self.queue.submit(&job, origin)?)
    }

    fn spawn(&self, task: impl Future<Output = ()> + 'static) {
        drop(wit_bindgen::spawn_local(task));
    }
}

struct Component;

impl cx::Guest for Component {
    type Cache = CacheImpl;
    type Writer = WriterImpl;
}

struct CacheImpl {
    engine: Engine<GuestRt>,
}

struct WriterImpl {
    writer: RefCell<Option<crate::Writer<GuestRt>>>,
}

impl cx::GuestCache for CacheImpl {
    fn open(
        config: cx::Config,
        tiers: Vec<store::Tier>,
        jobs: scheduler::Queue,
    ) -> Result<cx::Cache, wit::Error> {
        let engine = Engine::open(config.into(), tiers, GuestRt { queue: jobs })?;
        Ok(cx::Cache::new(CacheImpl { engine }))
    }

    async fn get(
        &self,
        key: String,
        conditions: wit::Conditions,
        origin: origin::Fetcher,
    ) -> Result<cx::Response, wit::Error> {
        #[cfg(feature = "fault-injection")]
        crate::faults::inject(&key);
        let conditions = crate::Conditions {
            if_none_match: conditions.if_none_match,
            max_age: conditions.max_age,
            min_fresh: conditions.min_fresh,
            max_stale: conditions.max_stale,
        };
        let r = self.engine.get_with(&key, &conditions, origin).await?;
        Ok(wit_response(r))
    }

    async fn peek(
        &self,
        key: String,
        if_none_match: Option<String>,
    ) -> Result<Option<cx::Response>, wit::Error> {
        let r = self.engine.peek(&key, if_none_match.as_deref()).await?;
        Ok(r.map(wit_response))
    }

    fn peek_whole(
        &self,
        key: String,
        if_none_match: Option<String>,
    ) -> Result<Option<cx::WholeResponse>, wit::Error> {
        #[cfg(feature = "fault-injection")]
        crate::faults::inject(&key);
        let r = self.engine.peek_whole(&key, if_none_match.as_deref())?;
        Ok(r.map(|r| cx::WholeResponse {
            status: r.status.into(),
            meta: r.meta.into(),
            body: r.body,
        }))
    }

    async fn set(&self, key: String, meta: wit::Metadata) -> Result<cx::Writer, wit::Error> {
        let writer = self.engine.set(&key, meta.into()).await?;
        Ok(cx::Writer::new(WriterImpl {
            writer: RefCell::new(Some(writer)),
        }))
    }

    async fn delete(&self, key: String) -> Result<(), wit::Error> {
        Ok(self.engine.delete(&key).await?)
    }

    fn schedule_refresh(&self, key: String, origin: origin::Fetcher) -> Result<(), wit::Error> {
        Ok(self.engine.schedule_refresh(&key, origin)?)
    }

    async fn run_job(
        &self,
        job: scheduler::Job,
        origin: Option<origin::Fetcher>,
    ) -> Result<(), wit::Error> {
        let kind = match job.kind {
            scheduler::JobKind::Refresh => JobKind::Refresh,
            scheduler::JobKind::Copy(c) => JobKind::Copy {
                source: c.source,
                targets: c.targets,
            },
        };
        let job = Job {
            key: job.key,
            generation: job.generation,
            kind,
        };
        Ok(self.engine.run_job(job, origin).await?)
    }

    fn close(&self) {
        self.engine.close();
    }
}

impl cx::GuestWriter for WriterImpl {
    async fn write(&self, data: Vec<u8>) -> Result<(), wit::Error> {
        // Taken out for the await: no RefCell borrow may span it.
        let mut writer = self.writer.borrow_mut().take().ok_or_else(busy_writer)?;
        let result = writer.write(data).await;
        *self.writer.borrow_mut() = Some(writer);
        Ok(result?)
    }

    async fn commit(this: cx::Writer) -> Result<(), wit::Error> {
        let writer = this
            .into_inner::<WriterImpl>()
            .writer
            .into_inner()
            .ok_or_else(busy_writer)?;
        Ok(writer.commit().await?)
    }

    fn abort(this: cx::Writer) {
        drop(this.into_inner::<WriterImpl>());
    }
}

/// An engine response as the WIT record, its body as a stream.
fn wit_response(r: crate::Response<GuestRt>) -> cx::Response {
    let (body, size, complete) = match r.body {
        None => (None, None, None),
        Some(ResponseBody::Direct { body, size }) => (Some(body.stream), Some(size), None),
        Some(ResponseBody::Fill(reader)) => {
            let size = reader.size();
            let (stream, complete) = stream_fill(reader);
            (Some(stream), size, Some(complete))
        }
    };
    let status = r.status.into();
    let source = match r.source {
        crate::Source::Tier(i) => cx::Source::Tier(i),
        crate::Source::Origin => cx::Source::Origin,
        crate::Source::Joined => cx::Source::Joined,
    };
    cx::Response {
        status,
        meta: r.meta.into(),
        source,
        stale: r.stale,
        stored: r.stored,
        body,
        size,
        complete,
    }
}

fn busy_writer() -> wit::Error {
    wit::Error::Other("the writer is busy with another call".into())
}

/// Pump a fill reader into a new stream; the future says how it ended,
/// once the fill has settled (so a body read to its end is published).
fn stream_fill(
    mut reader: crate::FillReader,
) -> (StreamReader<u8>, FutureReader<Result<(), wit::Error>>) {
    let (mut tx, rx) = bindings::wit_stream::new::<u8>();
    let (done_tx, done_rx) = bindings::wit_future::new::<Result<(), wit::Error>>(|| {
        Err(wit::Error::Other("the body was abandoned".into()))
    });
    wit_bindgen::spawn_local(async move {
        let result = loop {
            match reader.next().await {
                Some(Ok(chunk)) => {
                    let mut rest: &[u8] = &chunk;
                    let mut closed = false;
                    while !rest.is_empty() && !closed {
                        let at = rest.len().min(reader.copy_slice());
                        let (slice, after) = rest.split_at(at);
                        rest = after;
                        closed = !tx.write_all(slice.to_vec()).await.is_empty();
                    }
                    if closed {
                        break Err(crate::Error::Other("the reader closed the body".into()));
                    }
                }
                Some(Err(e)) => break Err(e),
                None => {
                    reader.settled().await;
                    break Ok(());
                }
            }
        };
        drop(reader);
        drop(tx);
        let _ = done_tx.write(result.map_err(Into::into)).await;
    });
    (rx, done_rx)
}

crate::wit_types::conversions!(wit);

bindings::export!(Component with_types_in bindings);
