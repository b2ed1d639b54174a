//! Helpers shared by the end-to-end tests: scripted origins and caches.

#![allow(
    dead_code,
    missing_docs,
    reason = "test helpers; each test binary uses a different part"
)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use daramjwee::{
    Cache, CacheBuilder, Error, FetchResult, Fetcher, MemoryStore, Metadata, Result, Tier,
    WorkerStrategy,
};
use tokio::sync::mpsc;

/// What the scripted origin answers, in order.
pub enum Reply {
    Body(&'static str, Bytes),
    /// A body whose chunks the test sends through the channel it gets.
    Streamed(&'static str, mpsc::Receiver<Result<Bytes>>),
    /// A body said to be of the given length, whatever its own.
    Stated(&'static str, Bytes, u64),
    NotModified,
    NotFound,
    Fail,
    Panic,
}

/// An origin that answers from a script and counts its calls.
#[derive(Clone, Default)]
pub struct Origin {
    pub calls: Arc<AtomicUsize>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    delay: Duration,
    pub held: Arc<Mutex<Vec<Option<Metadata>>>>,
    before_answer: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl Origin {
    pub fn new(replies: impl IntoIterator<Item = Reply>) -> Self {
        Origin {
            script: Arc::new(Mutex::new(replies.into_iter().collect())),
            ..Origin::default()
        }
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn before_answer(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.before_answer = Some(Arc::new(hook));
        self
    }

    pub fn push(&self, reply: Reply) {
        self.script.lock().unwrap().push_back(reply);
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Fetcher for Origin {
    async fn fetch(&self, _key: &str, held: Option<&Metadata>) -> Result<FetchResult> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.held.lock().unwrap().push(held.cloned());
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if let Some(hook) = &self.before_answer {
            hook();
        }
        let reply = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Reply::Fail);
        match reply {
            Reply::Body(tag, body) => Ok(FetchResult::bytes(Metadata::tagged(tag), body)),
            Reply::Streamed(tag, rx) => Ok(FetchResult::Body {
                meta: Metadata::tagged(tag),
                body: Box::pin(tokio_stream(rx)),
                no_store: false,
                size: None,
            }),
            Reply::Stated(tag, body, size) => Ok(FetchResult::Body {
                meta: Metadata::tagged(tag),
                body: Box::pin(futures::stream::iter([Ok(body)])),
                no_store: false,
                size: Some(size),
            }),
            Reply::NotModified => Ok(FetchResult::NotModified),
            Reply::NotFound => Ok(FetchResult::NotFound),
            Reply::Fail => Err(Error::Origin("origin is down".into())),
            Reply::Panic => panic!("a bug in the fetcher"),
        }
    }
}

fn tokio_stream(
    mut rx: mpsc::Receiver<Result<Bytes>>,
) -> impl futures::Stream<Item = Result<Bytes>> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A cache over fresh memory tiers, with handles on the tiers.
pub async fn cache_with(
    tiers: usize,
    configure: impl FnOnce(CacheBuilder) -> CacheBuilder,
) -> (Cache, Vec<MemoryStore>) {
    let stores: Vec<MemoryStore> = (0..tiers)
        .map(|i| MemoryStore::new(format!("tier{i}")))
        .collect();
    let mut builder = Cache::builder().workers(WorkerStrategy::Pool {
        workers: 2,
        queue: 100,
    });
    for store in &stores {
        builder = builder.tier(store.clone());
    }
    let cache = configure(builder).build().await.expect("cache builds");
    (cache, stores)
}

pub async fn read(response: daramjwee::GetResponse) -> Result<Bytes> {
    response.body.expect("a body").bytes().await
}

/// Put an entry straight into a tier.
pub async fn put(tier: &MemoryStore, key: &str, meta: Metadata, body: &[u8]) {
    let mut sink = tier.begin_write(key, meta).await.unwrap();
    sink.write(Bytes::copy_from_slice(body)).await.unwrap();
    sink.commit().await.unwrap();
}

pub async fn stat(tier: &MemoryStore, key: &str) -> Option<Metadata> {
    tier.stat(key).await.unwrap()
}

/// Wait (up to 10 s) until `check` holds.
pub async fn eventually(mut check: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..1000 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
