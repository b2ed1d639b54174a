//! A deterministic runtime for the engine's unit tests: in-memory tiers
//! with failure switches, a scripted origin whose bodies can be held at a
//! gate, a virtual clock, and a job queue the test runs by hand.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::{Future, poll_fn};
use std::rc::Rc;
use std::task::{Poll, Waker};

use futures::executor::{LocalPool, LocalSpawner};
use futures::task::LocalSpawnExt;

use crate::wait::Wakers;
use crate::*;

/// Lets chunks through one at a time, or all once opened.
#[derive(Default)]
pub struct Gate {
    permits: Cell<usize>,
    open: Cell<bool>,
    wakers: RefCell<Wakers>,
}

impl Gate {
    pub fn open(&self) {
        self.open.set(true);
        self.wakers.borrow_mut().wake_all();
    }

    pub fn permits_for_test(&self, n: usize) {
        self.permits.set(self.permits.get() + n);
        self.wakers.borrow_mut().wake_all();
    }

    async fn pass(&self) {
        poll_fn(|cx| {
            if self.open.get() {
                return Poll::Ready(());
            }
            if self.permits.get() > 0 {
                self.permits.set(self.permits.get() - 1);
                return Poll::Ready(());
            }
            self.wakers.borrow_mut().register(cx.waker());
            Poll::Pending
        })
        .await
    }
}

pub struct MockBody {
    chunks: VecDeque<Vec<u8>>,
    fail_at_end: bool,
    gate: Option<Rc<Gate>>,
}

impl MockBody {
    pub fn new(data: &[u8], chunk: usize) -> Self {
        MockBody {
            chunks: data.chunks(chunk.max(1)).map(<[u8]>::to_vec).collect(),
            fail_at_end: false,
            gate: None,
        }
    }
}

impl Body for MockBody {
    async fn next(&mut self) -> Option<Result<Vec<u8>>> {
        if let Some(gate) = &self.gate {
            gate.pass().await;
        }
        match self.chunks.pop_front() {
            Some(chunk) => Some(Ok(chunk)),
            None if self.fail_at_end => Some(Err(Error::Origin("connection reset".into()))),
            None => None,
        }
    }
}

type Entries = Rc<RefCell<HashMap<String, (Metadata, Vec<u8>)>>>;

/// Jobs the engine submitted, run by hand.
pub type Jobs = Rc<RefCell<VecDeque<(Job, Option<MockOrigin>)>>>;

#[derive(Clone)]
pub struct MockTier {
    pub name: String,
    pub entries: Entries,
    pub fail_gets: Rc<Cell<bool>>,
    pub gets: Rc<Cell<usize>>,
    /// Whether `get_whole` answers (a tier holding its entries in memory).
    pub in_memory: Rc<Cell<bool>>,
    /// The most bytes of body and tag `admits` accepts; `None` accepts any.
    pub max_entry: Rc<Cell<Option<u64>>>,
}

impl MockTier {
    pub fn new(name: &str) -> Self {
        MockTier {
            name: name.into(),
            entries: Entries::default(),
            fail_gets: Rc::default(),
            gets: Rc::default(),
            in_memory: Rc::new(Cell::new(true)),
            max_entry: Rc::default(),
        }
    }

    pub fn put(&self, key: &str, meta: Metadata, body: &[u8]) {
        self.entries
            .borrow_mut()
            .insert(key.into(), (meta, body.to_vec()));
    }

    pub fn body(&self, key: &str) -> Option<Vec<u8>> {
        self.entries.borrow().get(key).map(|(_, b)| b.clone())
    }

    pub fn meta(&self, key: &str) -> Option<Metadata> {
        self.entries.borrow().get(key).map(|(m, _)| m.clone())
    }
}

pub struct MockSink {
    entries: Entries,
    key: String,
    meta: Metadata,
    data: Vec<u8>,
}

impl Sink for MockSink {
    async fn write(&mut self, data: Vec<u8>) -> Result<()> {
        self.data.extend_from_slice(&data);
        Ok(())
    }

    async fn commit(self) -> Result<()> {
        self.entries
            .borrow_mut()
            .insert(self.key, (self.meta, self.data));
        Ok(())
    }
}

impl Tier for MockTier {
    type Body = MockBody;
    type Sink = MockSink;
    type Whole = Vec<u8>;

    fn name(&self) -> String {
        self.name.clone()
    }

    async fn get(&self, key: &str) -> Result<Option<Entry<MockBody>>> {
        self.gets.set(self.gets.get() + 1);
        if self.fail_gets.get() {
            return Err(Error::Store("disk on fire".into()));
        }
        Ok(self.entries.borrow().get(key).map(|(meta, body)| Entry {
            meta: meta.clone(),
            size: body.len() as u64,
            body: MockBody::new(body, 3),
        }))
    }

    fn get_whole(&self, key: &str) -> Result<Option<(Metadata, Vec<u8>)>> {
        self.gets.set(self.gets.get() + 1);
        if self.fail_gets.get() {
            return Err(Error::Store("disk on fire".into()));
        }
        if !self.in_memory.get() {
            return Ok(None);
        }
        Ok(self.entries.borrow().get(key).cloned())
    }

    fn admits(&self, _key: &str, meta: &Metadata, size: u64) -> bool {
        // Charged the body and the tag.
        self.max_entry
            .get()
            .is_none_or(|max| size.saturating_add(meta.tag.len() as u64) <= max)
    }

    async fn stat(&self, key: &str) -> Result<Option<Metadata>> {
        Ok(self.meta(key))
    }

    async fn begin_write(&self, key: &str, meta: &Metadata) -> Result<MockSink> {
        Ok(MockSink {
            entries: Rc::clone(&self.entries),
            key: key.into(),
            meta: meta.clone(),
            data: Vec::new(),
        })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.entries.borrow_mut().remove(key);
        Ok(())
    }
}

/// What the origin answers.
#[derive(Clone)]
pub enum Reply {
    Body {
        tag: &'static str,
        data: Vec<u8>,
        fail_at_end: bool,
    },
    /// A body the origin forbids storing.
    NoStore {
        tag: &'static str,
        data: Vec<u8>,
    },
    NotModified,
    NotFound,
    Fail,
}

#[derive(Default)]
pub struct OriginState {
    pub replies: RefCell<VecDeque<Reply>>,
    pub calls: Cell<usize>,
    pub held: RefCell<Vec<Option<Metadata>>>,
    pub gate: RefCell<Option<Rc<Gate>>>,
    /// Never answer.
    pub stall: Cell<bool>,
    /// State each body's length in advance.
    pub sized: Cell<bool>,
}

#[derive(Clone, Default)]
pub struct MockOrigin(pub Rc<OriginState>);

impl MockOrigin {
    pub fn replying(replies: impl IntoIterator<Item = Reply>) -> Self {
        let origin = MockOrigin::default();
        origin.0.replies.borrow_mut().extend(replies);
        origin
    }

    /// An origin that states each body's length in advance.
    pub fn sized(self) -> Self {
        self.0.sized.set(true);
        self
    }

    pub fn gated(self, gate: &Rc<Gate>) -> Self {
        *self.0.gate.borrow_mut() = Some(Rc::clone(gate));
        self
    }

    pub fn calls(&self) -> usize {
        self.0.calls.get()
    }
}

impl Origin for MockOrigin {
    type Body = MockBody;

    async fn fetch(&self, _key: &str, held: Option<&Metadata>) -> Result<Fetched<MockBody>> {
        self.0.calls.set(self.0.calls.get() + 1);
        self.0.held.borrow_mut().push(held.cloned());
        if self.0.stall.get() {
            std::future::pending::<()>().await;
        }
        let gate = self.0.gate.borrow().clone();
        let reply = self
            .0
            .replies
            .borrow_mut()
            .pop_front()
            .unwrap_or(Reply::Fail);
        match reply {
            Reply::Body {
                tag,
                data,
                fail_at_end,
            } => {
                let size = self.0.sized.get().then_some(data.len() as u64);
                let mut body = MockBody::new(&data, 4);
                body.fail_at_end = fail_at_end;
                body.gate = gate;
                let meta = Metadata {
                    tag: tag.into(),
                    ..Metadata::default()
                };
                Ok(Fetched::Body {
                    meta,
                    body,
                    no_store: false,
                    size,
                })
            }
            Reply::NoStore { tag, data } => {
                let mut body = MockBody::new(&data, 4);
                body.gate = gate;
                let meta = Metadata {
                    tag: tag.into(),
                    ..Metadata::default()
                };
                Ok(Fetched::Body {
                    meta,
                    body,
                    no_store: true,
                    size: None,
                })
            }
            Reply::NotModified => {
                if let Some(gate) = gate {
                    gate.pass().await;
                }
                Ok(Fetched::NotModified)
            }
            Reply::NotFound => Ok(Fetched::NotFound),
            Reply::Fail => Err(Error::Origin("origin down".into())),
        }
    }
}

#[derive(Clone)]
pub struct MockRt {
    pub clock: Rc<Cell<u64>>,
    timers: Rc<RefCell<Vec<(u64, Waker)>>>,
    pub jobs: Jobs,
    pub queue_limit: Rc<Cell<usize>>,
    spawner: LocalSpawner,
}

impl MockRt {
    pub fn advance(&self, ms: u64) {
        self.clock.set(self.clock.get() + ms);
        let now = self.clock.get();
        self.timers.borrow_mut().retain(|(at, waker)| {
            if *at <= now {
                waker.wake_by_ref();
            }
            *at > now
        });
    }
}

impl Runtime for MockRt {
    type Body = MockBody;
    type Sink = MockSink;
    type Tier = MockTier;
    type Origin = MockOrigin;

    fn now_ms(&self) -> u64 {
        self.clock.get()
    }

    async fn sleep(&self, ms: u64) {
        let at = self.clock.get() + ms;
        poll_fn(|cx| {
            if self.clock.get() >= at {
                return Poll::Ready(());
            }
            self.timers.borrow_mut().push((at, cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    fn submit(&self, job: Job, origin: Option<MockOrigin>) -> Result<()> {
        let mut jobs = self.jobs.borrow_mut();
        if jobs.len() >= self.queue_limit.get() {
            return Err(Error::Busy);
        }
        jobs.push_back((job, origin));
        Ok(())
    }

    fn spawn(&self, task: impl Future<Output = ()> + 'static) {
        self.spawner.spawn_local(task).expect("spawn");
    }
}

/// A cache over mock tiers, with the pool that runs it.
pub struct Harness {
    pub pool: LocalPool,
    pub rt: MockRt,
    pub tiers: Vec<MockTier>,
    pub engine: Engine<MockRt>,
}

impl Harness {
    pub fn new(tiers: usize) -> Self {
        Self::with_config(
            tiers,
            Config {
                fresh_for: 1_000,
                negative_fresh_for: 500,
                ..Config::default()
            },
        )
    }

    pub fn with_config(tiers: usize, config: Config) -> Self {
        let pool = LocalPool::new();
        let rt = MockRt {
            clock: Rc::new(Cell::new(1_000_000)),
            timers: Rc::default(),
            jobs: Rc::default(),
            queue_limit: Rc::new(Cell::new(100)),
            spawner: pool.spawner(),
        };
        let tiers: Vec<MockTier> = (0..tiers)
            .map(|i| MockTier::new(&format!("t{i}")))
            .collect();
        let engine = Engine::open(config, tiers.clone(), rt.clone()).expect("valid config");
        Harness {
            pool,
            rt,
            tiers,
            engine,
        }
    }

    pub fn run<T>(&mut self, fut: impl Future<Output = T>) -> T {
        self.pool.run_until(fut)
    }

    /// Spawn `fut` and return a slot its output lands in.
    pub fn spawn<T: 'static>(
        &mut self,
        fut: impl Future<Output = T> + 'static,
    ) -> Rc<RefCell<Option<T>>> {
        let slot = Rc::new(RefCell::new(None));
        let out = Rc::clone(&slot);
        self.pool
            .spawner()
            .spawn_local(async move { *out.borrow_mut() = Some(fut.await) })
            .unwrap();
        slot
    }

    pub fn settle(&mut self) {
        self.pool.run_until_stalled();
    }

    /// Run every queued job (and the jobs they queue) to completion.
    pub fn run_jobs(&mut self) -> usize {
        let mut ran = 0;
        loop {
            self.settle();
            let next = self.rt.jobs.borrow_mut().pop_front();
            let Some((job, origin)) = next else {
                return ran;
            };
            let engine = self.engine.clone();
            let _ = self.run(engine.run_job(job, origin));
            ran += 1;
        }
    }

    pub fn get(&mut self, key: &str, origin: &MockOrigin) -> Result<Response<MockRt>> {
        let engine = self.engine.clone();
        let origin = origin.clone();
        let key = key.to_owned();
        self.run(async move { engine.get(&key, None, origin).await })
    }
}

/// Read a response's body to its end (a fill reader also waits for the
/// fill to settle, as the guest glue does).
pub async fn read_body(body: Option<ResponseBody<MockRt>>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match body.expect("a body") {
        ResponseBody::Direct { mut body, size } => {
            while let Some(chunk) = body.next().await {
                out.extend_from_slice(&chunk?);
            }
            assert_eq!(out.len() as u64, size);
        }
        ResponseBody::Fill(mut reader) => {
            while let Some(chunk) = reader.next().await {
                out.extend_from_slice(&chunk?);
            }
            reader.settled().await;
        }
    }
    Ok(out)
}

pub fn body(tag: &'static str, data: &[u8]) -> Reply {
    Reply::Body {
        tag,
        data: data.to_vec(),
        fail_at_end: false,
    }
}
