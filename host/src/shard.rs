//! One engine instance on its own thread. Requests reach it as commands;
//! inside one `run_concurrent` it runs them all as concurrent calls into
//! the component. Keys are routed to shards by hash, so every request for
//! a key meets the same instance: coalescing and generations hold.
//!
//! A guest fault (trap, runaway call, memory exhausted) poisons the store:
//! the requests in flight on that instance fail, and the shard starts a
//! fresh instance over the same tiers.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot, watch};
use wasmtime::component::{Accessor, ResourceAny};
use wasmtime::{Store, StoreLimitsBuilder, UpdateDeadline};

use crate::bindings::types::Conditions as WitConditions;
use crate::bindings::{cache, scheduler, types};
use crate::body::{Body, OpenBodies};
use crate::component::{Loaded, TICK, runtime};
use crate::fetcher::SharedFetcher;
use crate::hit_path;
use crate::imports::{
    ChannelConsumer, CompletionConsumer, FetcherRes, HostState, QueueRes, TierRes,
};
use crate::tier::Tier;
use crate::{Conditions, Error, GetResponse, Metadata, Result, Source, Status};

type Reply<T> = oneshot::Sender<Result<T>>;

thread_local! {
    /// On a shard thread: the id of its cache and the shard's index.
    static SHARD_THREAD: Cell<Option<(u64, usize)>> = const { Cell::new(None) };
}

/// The cache id and shard index of the shard thread this runs on, if any.
pub(crate) fn current() -> Option<(u64, usize)> {
    SHARD_THREAD.with(Cell::get)
}

/// A request for a shard.
pub(crate) enum Command {
    Peek {
        key: String,
        inm: Option<String>,
        /// The caller's hit path already asked tier 0 whole.
        whole_asked: bool,
        reply: Reply<Option<GetResponse>>,
    },
    Get {
        key: String,
        conditions: Conditions,
        /// The caller's hit path already asked tier 0 whole.
        whole_asked: bool,
        fetcher: SharedFetcher,
        reply: Reply<GetResponse>,
    },
    Set {
        key: String,
        meta: Metadata,
        reply: Reply<u64>,
    },
    Write {
        writer: u64,
        data: Vec<u8>,
        reply: Reply<()>,
    },
    Commit {
        writer: u64,
        reply: Reply<()>,
    },
    Abort {
        writer: u64,
    },
    Delete {
        key: String,
        reply: Reply<()>,
    },
    ScheduleRefresh {
        key: String,
        fetcher: SharedFetcher,
        reply: Reply<()>,
    },
    RunJob {
        job: scheduler::Job,
        fetcher: Option<SharedFetcher>,
        reply: Reply<()>,
    },
    Close {
        reply: Reply<()>,
    },
}

/// Everything a shard needs to (re)build its engine instance.
#[derive(Clone)]
pub(crate) struct ShardSpec {
    pub(crate) loaded: Arc<Loaded>,
    pub(crate) config: cache::Config,
    pub(crate) tiers: Vec<Arc<dyn Tier>>,
    pub(crate) queue:
        Arc<dyn Fn(scheduler::Job, Option<SharedFetcher>) -> Result<()> + Send + Sync>,
    pub(crate) memory_limit: usize,
    pub(crate) call_ticks: u64,
}

/// The caller's side of a shard.
pub(crate) struct Shard {
    tx: mpsc::Sender<Command>,
    /// The shard thread's runtime, for work that should run beside the
    /// engine instead of hopping threads to reach it.
    runtime: tokio::runtime::Handle,
    /// How many instances failed so far, and why the last one did.
    faults: watch::Receiver<(u64, String)>,
    /// What the shard thread's hit path did.
    hit_path: Arc<hit_path::Counts>,
}

impl Shard {
    /// Start a shard and wait until its engine opened the cache (which
    /// validates the configuration).
    pub(crate) async fn start(cache_id: u64, index: usize, spec: ShardSpec) -> Result<Self> {
        let (tx, rx) = mpsc::channel(1024);
        let (ready_tx, ready_rx) = oneshot::channel();
        let (fault_tx, faults) = watch::channel((0, String::new()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Other(format!("cannot start a shard: {e}")))?;
        let runtime = rt.handle().clone();
        let hit_path_counts = Arc::new(hit_path::Counts::default());
        let counts = Arc::clone(&hit_path_counts);
        std::thread::Builder::new()
            .name(format!("daramjwee-shard-{index}"))
            .spawn(move || {
                SHARD_THREAD.with(|s| s.set(Some((cache_id, index))));
                if let Some(pre) = &spec.loaded.hit_path {
                    hit_path::install(cache_id, Arc::clone(pre), spec.clone(), counts);
                }
                rt.block_on(run(index, spec, rx, ready_tx, fault_tx));
            })
            .map_err(|e| Error::Other(format!("cannot start a shard: {e}")))?;
        ready_rx
            .await
            .map_err(|_| Error::Engine("the engine failed while opening the cache".into()))??;
        Ok(Shard {
            tx,
            runtime,
            faults,
            hit_path: hit_path_counts,
        })
    }

    /// What the shard thread's hit path did so far.
    pub(crate) fn hit_path(&self) -> &hit_path::Counts {
        &self.hit_path
    }

    /// The runtime of the shard's thread.
    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// Send `command`; `Closed` when the shard is gone.
    pub(crate) async fn send(&self, command: Command) -> Result<()> {
        self.tx.send(command).await.map_err(|_| Error::Closed)
    }

    /// Send `command` without waiting (for drops); false if not sent.
    pub(crate) fn try_send(&self, command: Command) -> bool {
        self.tx.try_send(command).is_ok()
    }

    /// Instances failed so far; taken before sending a command.
    pub(crate) fn faults(&self) -> u64 {
        self.faults.borrow().0
    }

    /// The error for a request whose reply never came because its instance
    /// failed after `seen` faults: waits briefly for the reason.
    pub(crate) async fn lost(&self, seen: u64) -> Error {
        let mut faults = self.faults.clone();
        let recorded = faults.wait_for(|(n, _)| *n > seen);
        let _ = tokio::time::timeout(Duration::from_secs(1), recorded).await;
        let why = faults.borrow().1.clone();
        Error::Engine(format!(
            "the engine instance failed and was replaced: {why}"
        ))
    }
}

async fn run(
    index: usize,
    spec: ShardSpec,
    mut rx: mpsc::Receiver<Command>,
    ready: oneshot::Sender<Result<()>>,
    faults: watch::Sender<(u64, String)>,
) {
    let mut ready = Some(ready);
    let bodies = Arc::new(OpenBodies::default());
    loop {
        let result = instance(&spec, &mut rx, &mut ready, &bodies).await;
        let Err(e) = result else { return };
        let why = match e.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => trap.to_string(),
            None => e.to_string(),
        };
        tracing::error!(shard = index, "engine instance failed, replacing it: {e:?}");
        faults.send_modify(|(n, last)| {
            *n += 1;
            *last = why.clone();
        });
        if let Some(ready) = ready.take() {
            let _ = ready.send(Err(Error::Engine(why)));
            return;
        }
    }
}

fn new_store(spec: &ShardSpec) -> Result<Store<HostState>> {
    let rt = runtime()?;
    let limits = StoreLimitsBuilder::new()
        .memory_size(spec.memory_limit)
        .trap_on_grow_failure(true)
        .build();
    let mut store = Store::new(&rt.engine, HostState::new(limits));
    store.limiter(|state| &mut state.limits);
    // A runaway call is wasm that runs on with no transition between wasm
    // and host: the call hook counts transitions, and the epoch callback
    // (invoked only while wasm runs) interrupts once the count has stood
    // still for longer than the limit. The callback is itself a call into
    // the host: its entry has been counted when it runs, and its return
    // will be, so those two are left out.
    store.call_hook(|mut cx, _| {
        cx.data_mut().transitions += 1;
        Ok(())
    });
    let ticks = Arc::clone(&rt.ticks);
    let limit = spec.call_ticks;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |mut cx| {
        let now = ticks.load(std::sync::atomic::Ordering::Relaxed);
        let state = cx.data_mut();
        let before_this_call = state.transitions.wrapping_sub(1);
        let (seen, since) = state.watchdog;
        if seen == before_this_call && now.saturating_sub(since) > limit {
            return Ok(UpdateDeadline::Interrupt);
        }
        let since = if seen == before_this_call { since } else { now };
        // What the count will be once this callback has returned.
        state.watchdog = (state.transitions.wrapping_add(1), since);
        Ok(UpdateDeadline::Continue(1))
    });
    Ok(store)
}

/// Run one engine instance until the commands end and every body is read
/// (`Ok`), or until the instance fails (`Err`).
async fn instance(
    spec: &ShardSpec,
    rx: &mut mpsc::Receiver<Command>,
    ready: &mut Option<oneshot::Sender<Result<()>>>,
    bodies: &Arc<OpenBodies>,
) -> wasmtime::Result<()> {
    let mut store = new_store(spec).map_err(wasmtime::Error::msg)?;
    let engine = spec.loaded.pre.instantiate_async(&mut store).await?;
    let guest = engine.daramjwee_cache_cache().clone();
    store
        .run_concurrent(async |accessor| serve(accessor, &guest, spec, rx, ready, bodies).await)
        .await?
}

async fn serve(
    accessor: &Accessor<HostState>,
    guest: &cache::Guest,
    spec: &ShardSpec,
    rx: &mut mpsc::Receiver<Command>,
    ready: &mut Option<oneshot::Sender<Result<()>>>,
    bodies: &Arc<OpenBodies>,
) -> wasmtime::Result<()> {
    let (tiers, queue) = accessor.with(|mut a| -> wasmtime::Result<_> {
        let state = a.get();
        let tiers = spec
            .tiers
            .iter()
            .map(|t| state.table.push(TierRes(Arc::clone(t))))
            .collect::<Result<Vec<_>, _>>()?;
        let queue = state.table.push(QueueRes(Arc::clone(&spec.queue)))?;
        Ok((tiers, queue))
    })?;
    let cache = match guest
        .cache()
        .call_open(accessor, spec.config.clone(), tiers, queue)
        .await?
    {
        Ok(cache) => cache,
        Err(e) => {
            if let Some(ready) = ready.take() {
                let _ = ready.send(Err(e.into()));
            }
            return Ok(());
        }
    };
    if let Some(ready) = ready.take() {
        let _ = ready.send(Ok(()));
    }
    let calls = Calls {
        accessor,
        guest,
        cache,
        writers: RefCell::default(),
        next_writer: Cell::new(0),
        bodies,
    };
    let mut running = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            command = rx.recv(), if open => match command {
                Some(command) => running.push(calls.handle(command)),
                None => open = false,
            },
            Some(result) = running.next(), if !running.is_empty() => result?,
            () = bodies.none_open(), if !open && running.is_empty() => break,
        }
    }
    Ok(())
}

/// The calls of one instance into its cache.
struct Calls<'a> {
    accessor: &'a Accessor<HostState>,
    guest: &'a cache::Guest,
    cache: ResourceAny,
    writers: RefCell<HashMap<u64, ResourceAny>>,
    next_writer: Cell<u64>,
    bodies: &'a Arc<OpenBodies>,
}

impl Calls<'_> {
    /// Answer a `get` or `peek` of a fresh tier-0 entry held in memory
    /// with `peek-whole`, before any stream is set up; the command back
    /// when that cannot answer it, or when the caller's hit path already
    /// asked.
    async fn answer_whole(&self, command: Command) -> wasmtime::Result<Option<Command>> {
        let (key, inm) = match &command {
            Command::Get {
                key,
                conditions,
                whole_asked: false,
                ..
            } if conditions.ages_unasked() => (key, &conditions.if_none_match),
            Command::Peek {
                key,
                inm,
                whole_asked: false,
                ..
            } => (key, inm),
            _ => return Ok(Some(command)),
        };
        let answer = self
            .guest
            .cache()
            .call_peek_whole(self.accessor, self.cache, key.clone(), inm.clone())
            .await?;
        let answer = match answer {
            Ok(Some(whole)) => Ok(self.accessor.with(|mut s| whole_response(whole, s.get()))?),
            Ok(None) => return Ok(Some(command)),
            Err(e) => Err(Error::from(e)),
        };
        match command {
            Command::Get { reply, .. } => drop(reply.send(answer)),
            Command::Peek { reply, .. } => drop(reply.send(answer.map(Some))),
            _ => unreachable!("only gets and peeks are answered whole"),
        }
        Ok(None)
    }

    async fn handle(&self, command: Command) -> wasmtime::Result<()> {
        let Some(command) = self.answer_whole(command).await? else {
            return Ok(());
        };
        let (a, cache) = (self.accessor, self.cache);
        let calls = self.guest.cache();
        match command {
            Command::Peek {
                key, inm, reply, ..
            } => {
                let response = match calls.call_peek(a, cache, key, inm).await? {
                    Ok(Some(response)) => Ok(Some(self.response(response)?)),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e.into()),
                };
                let _ = reply.send(response);
            }
            Command::Get {
                key,
                conditions,
                fetcher,
                reply,
                ..
            } => {
                let fetcher = a.with(|mut s| s.get().table.push(FetcherRes(fetcher)))?;
                let conditions = WitConditions {
                    if_none_match: conditions.if_none_match,
                    max_age: conditions.max_age,
                    min_fresh: conditions.min_fresh,
                    max_stale: conditions.max_stale,
                };
                let response = match calls.call_get(a, cache, key, conditions, fetcher).await? {
                    Ok(response) => Ok(self.response(response)?),
                    Err(e) => Err(e.into()),
                };
                let _ = reply.send(response);
            }
            Command::Set { key, meta, reply } => {
                let result = calls
                    .call_set(a, cache, key, meta.into())
                    .await?
                    .map_err(Error::from)
                    .map(|writer| {
                        let id = self.next_writer.get();
                        self.next_writer.set(id + 1);
                        self.writers.borrow_mut().insert(id, writer);
                        id
                    });
                let _ = reply.send(result);
            }
            Command::Write {
                writer,
                data,
                reply,
            } => {
                let found = self.writers.borrow().get(&writer).copied();
                let result = match found {
                    Some(w) => self
                        .guest
                        .writer()
                        .call_write(a, w, data)
                        .await?
                        .map_err(Into::into),
                    None => Err(unknown_writer()),
                };
                let _ = reply.send(result);
            }
            Command::Commit { writer, reply } => {
                let found = self.writers.borrow_mut().remove(&writer);
                let result = match found {
                    Some(w) => self
                        .guest
                        .writer()
                        .call_commit(a, w)
                        .await?
                        .map_err(Into::into),
                    None => Err(unknown_writer()),
                };
                let _ = reply.send(result);
            }
            Command::Abort { writer } => {
                let found = self.writers.borrow_mut().remove(&writer);
                if let Some(w) = found {
                    self.guest.writer().call_abort(a, w).await?;
                }
            }
            Command::Delete { key, reply } => {
                let _ = reply.send(calls.call_delete(a, cache, key).await?.map_err(Into::into));
            }
            Command::ScheduleRefresh {
                key,
                fetcher,
                reply,
            } => {
                let fetcher = a.with(|mut s| s.get().table.push(FetcherRes(fetcher)))?;
                let _ = reply.send(
                    calls
                        .call_schedule_refresh(a, cache, key, fetcher)
                        .await?
                        .map_err(Into::into),
                );
            }
            Command::RunJob {
                job,
                fetcher,
                reply,
            } => {
                let fetcher = match fetcher {
                    Some(f) => Some(a.with(|mut s| s.get().table.push(FetcherRes(f)))?),
                    None => None,
                };
                let _ = reply.send(
                    calls
                        .call_run_job(a, cache, job, fetcher)
                        .await?
                        .map_err(Into::into),
                );
            }
            Command::Close { reply } => {
                calls.call_close(a, cache).await?;
                let _ = reply.send(Ok(()));
            }
        }
        Ok(())
    }

    /// Hand the response's body over to a [`Body`] the caller reads.
    fn response(&self, r: cache::Response) -> wasmtime::Result<GetResponse> {
        let body = match r.body {
            Some(stream) => {
                let (tx, rx) = mpsc::channel(4);
                let done = self.accessor.with(|mut s| -> wasmtime::Result<_> {
                    stream.pipe(&mut s, ChannelConsumer::new(tx))?;
                    Ok(match r.complete {
                        Some(complete) => {
                            let (done_tx, done_rx) = oneshot::channel();
                            complete.pipe(&mut s, CompletionConsumer(Some(done_tx)))?;
                            Some(done_rx)
                        }
                        None => None,
                    })
                })?;
                Some(Body::new(rx, r.size, done, self.bodies.open()))
            }
            None => {
                if let Some(mut complete) = r.complete {
                    complete.close_with(self.accessor)?;
                }
                None
            }
        };
        let status = status(r.status);
        let source = match r.source {
            cache::Source::Tier(i) => Source::Tier(i as usize),
            cache::Source::Origin => Source::Origin,
            cache::Source::Joined => Source::Joined,
        };
        Ok(GetResponse {
            status,
            meta: r.meta.into(),
            source,
            stale: r.stale,
            stored: r.stored,
            body,
        })
    }
}

fn status(s: types::Status) -> Status {
    match s {
        cache::Status::Ok => Status::Ok,
        cache::Status::NotModified => Status::NotModified,
        cache::Status::NotFound => Status::NotFound,
    }
}

/// A `peek-whole` answer as the caller's response: from tier 0, fresh,
/// its body taken back from `state`.
fn whole_response(r: types::WholeResponse, state: &mut HostState) -> wasmtime::Result<GetResponse> {
    let body = match r.body {
        Some(held) => Some(state.take_held(held)?),
        None => None,
    };
    Ok(tier0_response(status(r.status), r.meta.into(), body))
}

/// A fresh tier-0 answer (the engine's `peek-whole`, the hit path's
/// verdict) as the caller's response.
pub(crate) fn tier0_response(status: Status, meta: Metadata, body: Option<Bytes>) -> GetResponse {
    GetResponse {
        status,
        meta,
        source: Source::Tier(0),
        stale: false,
        stored: false,
        body: body.map(Body::whole),
    }
}

fn unknown_writer() -> Error {
    Error::Other("the writer is gone (its engine instance was replaced)".into())
}

/// Ticks in `limit`, at least one.
pub(crate) fn ticks_in(limit: std::time::Duration) -> u64 {
    (limit.as_millis() / TICK.as_millis()).max(1) as u64
}
