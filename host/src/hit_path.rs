//! The hit path: the engine's `peek-whole` built alone as a component
//! whose world imports nothing (`hit-path`), instantiated in a plain
//! synchronous store beside each shard. For a request served on a shard
//! thread, the host reads tier 0 (`Tier::get_whole`) and, when it holds
//! the entry in memory, lends what the engine reads of its metadata with
//! the time to one call into the hit path, whose verdict says what to
//! send: no task, stream or thread hop, no call back, and the body never
//! crosses. Anything it cannot answer goes to the engine instance as
//! before. It holds no per-key state, so it can answer for every key, as
//! `peek` does.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::Linker;
use wasmtime::{Store, StoreLimitsBuilder};

use crate::cache::GetResponse;
use crate::component::{self, runtime};
use crate::imports::HostState;
use crate::shard::{ShardSpec, tier0_response};
use crate::tier::Tier;
use crate::{Error, Result, Status};
use bindings::exports::daramjwee::cache::hits::Verdict;

#[allow(missing_docs, reason = "generated bindings")]
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "daramjwee:cache/hit-path",
        with: {
            "daramjwee:cache/types": crate::bindings::types,
        },
    });
}

/// The hit-path component built from this repository's `component/`
/// crate (feature `hit-path`), carried inside the binary. It runs only
/// beside the embedded engine, whose rules it shares.
pub(crate) static EMBEDDED: Wasm = Wasm {
    bytes: include_bytes!(env!("DARAMJWEE_HIT_PATH_WASM")),
    digest: env!("DARAMJWEE_HIT_PATH_WASM_DIGEST"),
};

/// A hit-path component carried in the binary, and the digest `build.rs`
/// made of it.
pub(crate) struct Wasm {
    bytes: &'static [u8],
    digest: &'static str,
}

/// The hit path that traps, loops or exhausts its memory on the keys
/// `fault:trap`, `fault:loop` and `fault:oom`, beside the faulty engine.
#[cfg(feature = "fault-injection")]
pub(crate) static FAULTY: Wasm = Wasm {
    bytes: include_bytes!(env!("DARAMJWEE_FAULTY_HIT_PATH_WASM")),
    digest: env!("DARAMJWEE_FAULTY_HIT_PATH_WASM_DIGEST"),
};

/// The hit-path component, ready to instantiate.
pub(crate) type Pre = bindings::HitPathPre<HostState>;

/// Load a hit path carried in the binary, compiled at most once per
/// process (and, with `cache_dir`, once per machine).
pub(crate) fn load(wasm: &'static Wasm, cache_dir: Option<&std::path::Path>) -> Result<Arc<Pre>> {
    type Loaded = std::sync::Mutex<Vec<(usize, Arc<Pre>)>>;
    static LOADED: std::sync::OnceLock<Loaded> = std::sync::OnceLock::new();
    let mut loaded = LOADED.get_or_init(Loaded::default).lock().expect("lock");
    let id = wasm.bytes.as_ptr() as usize;
    if let Some((_, pre)) = loaded.iter().find(|(at, _)| *at == id) {
        return Ok(Arc::clone(pre));
    }
    let engine = &runtime()?.sync_engine;
    let digest = component::embedded_digest(wasm.digest);
    let component = component::compile(engine, wasm.bytes, digest, cache_dir)?;
    let mut linker = Linker::<HostState>::new(engine);
    let engine_err = |e: wasmtime::Error| Error::Engine(format!("hit path: {e:?}"));
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_err)?;
    bindings::HitPath::add_to_linker::<HostState, HostState>(&mut linker, |s| s)
        .map_err(engine_err)?;
    let pre = linker
        .instantiate_pre(&component)
        .and_then(bindings::HitPathPre::new)
        .map_err(engine_err)?;
    let pre = Arc::new(pre);
    loaded.push((id, Arc::clone(&pre)));
    Ok(pre)
}

/// A store for plain synchronous calls into the hit-path component,
/// its memory capped at `memory_limit` and each call at `call_ticks`.
/// Each call is one plain call: a deadline set before it bounds it, with
/// no need to watch the transitions.
pub(crate) fn plain_store(memory_limit: usize, call_ticks: u64) -> Result<Store<HostState>> {
    let limits = StoreLimitsBuilder::new()
        .memory_size(memory_limit)
        .trap_on_grow_failure(true)
        .build();
    let mut store = Store::new(&runtime()?.sync_engine, HostState::new(limits));
    store.limiter(|state| &mut state.limits);
    store.epoch_deadline_trap();
    store.set_epoch_deadline(call_ticks);
    Ok(store)
}

/// One instance of the hit path, opened for a cache.
struct Instance {
    store: Store<HostState>,
    guest: bindings::HitPath,
    /// Keys longer are refused by the engine, so tier 0 is not asked.
    max_key_len: usize,
    /// The longest a call may run, in epoch ticks.
    call_ticks: u64,
}

impl Instance {
    fn open(pre: &Pre, spec: &ShardSpec) -> Result<Self> {
        let engine_err = |e: wasmtime::Error| Error::Engine(format!("hit path: {e:?}"));
        if spec.tiers.is_empty() {
            return Err(Error::Engine(
                "hit path: a cache has at least one tier".into(),
            ));
        }
        let mut store = plain_store(spec.memory_limit, spec.call_ticks)?;
        let guest = pre.instantiate(&mut store).map_err(engine_err)?;
        let names: Vec<String> = spec.tiers.iter().map(|t| t.name()).collect();
        guest
            .daramjwee_cache_hits()
            .call_open(&mut store, &spec.config, &names)
            .map_err(engine_err)??;
        Ok(Instance {
            store,
            guest,
            max_key_len: spec.config.max_key_len as usize,
            call_ticks: spec.call_ticks,
        })
    }

    /// Reads `tier0` and, when it hands the entry over at once, lets the
    /// hit path judge it.
    fn peek_whole(
        &mut self,
        tier0: &dyn Tier,
        key: &str,
        inm: Option<&str>,
    ) -> wasmtime::Result<Whole> {
        // A key the engine refuses is not looked up: the engine answers it.
        if key.is_empty() || key.len() > self.max_key_len {
            return Ok(Whole::NotAsked);
        }
        // Tier 0's answers mean what they mean to the engine's own
        // `peek-whole`: a refused key is an error, a failing tier none.
        let (mut meta, body) = match tier0.get_whole(key) {
            Ok(Some(found)) => found,
            Err(e @ Error::InvalidKey(_)) => return Ok(Whole::Answered(Err(e))),
            Ok(None) | Err(_) => return Ok(Whole::Declined),
        };
        // The engine reads no attributes, and the tag only to compare it
        // with an `if-none-match`; its verdict is about this entry: lend
        // it the rest (the tag moved for the call, not copied), keep the
        // metadata and body here.
        let lent = bindings::exports::daramjwee::cache::hits::LentMeta {
            tag: inm.map(|_| std::mem::take(&mut meta.tag)),
            cached_at: meta.cached_at.map(crate::meta::to_millis),
            negative: meta.negative,
            fresh_for: meta.fresh_for.map(crate::meta::duration_millis),
            stale_for: meta.stale_for.map(crate::meta::duration_millis),
        };
        let now = crate::meta::to_millis(std::time::SystemTime::now());
        self.store.set_epoch_deadline(self.call_ticks);
        let verdict = self.guest.daramjwee_cache_hits().call_peek_whole(
            &mut self.store,
            key,
            inm,
            &lent,
            now,
        );
        if let Some(tag) = lent.tag {
            meta.tag = tag;
        }
        let verdict = verdict?;
        let answer = |status, body| Whole::Answered(Ok(tier0_response(status, meta, body)));
        Ok(match verdict {
            Verdict::Ok => answer(Status::Ok, Some(body)),
            Verdict::NotModified => answer(Status::NotModified, None),
            Verdict::NotFound => answer(Status::NotFound, None),
            Verdict::Declined => Whole::Declined,
            Verdict::Refused => Whole::NotAsked,
        })
    }
}

/// The hit path of the shard whose thread this is.
struct Local {
    cache_id: u64,
    pre: Arc<Pre>,
    /// On a shard thread, the shard's spec; off a shard, `None`: the
    /// cache's [`Source`] has it, and no thread keeps a cache's tiers or
    /// pool alive once the cache is gone.
    spec: Option<ShardSpec>,
    /// `None` after a fault, until the next request opens a fresh one,
    /// or while opening fails, until `reopen` lets it try again.
    instance: Option<Instance>,
    reopen: Reopen,
    counts: Arc<Counts>,
    /// Off a shard: the cache's source, to tell when it is gone.
    source: Option<std::sync::Weak<Source>>,
}

/// When a hit path that failed to open may be tried again: after a
/// second, then twice as long after each failure, up to a minute, so a
/// hit path that cannot open costs its thread's requests nothing.
#[derive(Default)]
struct Reopen {
    not_before: Option<Instant>,
    delay: Duration,
}

impl Reopen {
    const FIRST: Duration = Duration::from_secs(1);
    const LONGEST: Duration = Duration::from_secs(60);

    fn due(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|at| now >= at)
    }

    fn failed(&mut self, now: Instant) {
        self.delay = (self.delay * 2).clamp(Self::FIRST, Self::LONGEST);
        self.not_before = Some(now + self.delay);
    }

    fn opened(&mut self) {
        *self = Reopen::default();
    }
}

/// What one shard thread's hit path did, for the cache's counters. Each
/// is written by its own thread only: no contention.
#[derive(Default)]
pub(crate) struct Counts {
    /// Requests answered.
    pub(crate) answers: AtomicU64,
    /// Instances dropped after a fault (trap, call time limit, memory cap).
    pub(crate) faults: AtomicU64,
    /// Attempts to open an instance that failed.
    pub(crate) open_failures: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
    /// Hit paths of caches whose shard this thread is not (an
    /// application's own threads): one per cache asked here, made on the
    /// first request.
    static ELSEWHERE: RefCell<Vec<Local>> = const { RefCell::new(Vec::new()) };
}

/// What a thread that is none of a cache's shards needs to give itself a
/// hit path for that cache: shared by the cache's handles.
pub(crate) struct Source {
    pre: Arc<Pre>,
    spec: ShardSpec,
    /// The counts of each thread's hit path, for the cache's totals.
    counts: std::sync::Mutex<Vec<Arc<Counts>>>,
}

impl Source {
    pub(crate) fn new(pre: Arc<Pre>, spec: ShardSpec) -> Self {
        Source {
            pre,
            spec,
            counts: std::sync::Mutex::default(),
        }
    }

    /// The sum of `field` over the hit paths made for this cache off its
    /// shards.
    pub(crate) fn total(&self, field: impl Fn(&Counts) -> &AtomicU64) -> u64 {
        self.counts
            .lock()
            .map(|counts| {
                counts
                    .iter()
                    .map(|c| field(c).load(Ordering::Relaxed))
                    .sum()
            })
            .unwrap_or(0)
    }
}

/// Give this (shard) thread a hit path for the cache `cache_id`.
pub(crate) fn install(cache_id: u64, pre: Arc<Pre>, spec: ShardSpec, counts: Arc<Counts>) {
    let mut local = Local {
        cache_id,
        pre,
        spec: None,
        instance: None,
        reopen: Reopen::default(),
        counts,
        source: None,
    };
    local.open(&spec, Instant::now());
    local.spec = Some(spec);
    LOCAL.with(|slot| *slot.borrow_mut() = Some(local));
}

impl Local {
    /// Opens an instance for the cache of `spec`, or notes the failure and
    /// when to try again.
    fn open(&mut self, spec: &ShardSpec, now: Instant) {
        open_into(
            &self.pre,
            spec,
            &mut self.instance,
            &mut self.reopen,
            &self.counts,
            now,
        );
    }
}

/// Open an instance into `slot`, or note the failure in `reopen`.
fn open_into(
    pre: &Pre,
    spec: &ShardSpec,
    slot: &mut Option<Instance>,
    reopen: &mut Reopen,
    counts: &Counts,
    now: Instant,
) {
    {
        match Instance::open(pre, spec) {
            Ok(instance) => {
                *slot = Some(instance);
                reopen.opened();
            }
            Err(e) => {
                bump(&counts.open_failures);
                reopen.failed(now);
                tracing::warn!(
                    "the hit path did not open, requests go to the engine; next try in {:?}: {e}",
                    reopen.delay
                );
            }
        }
    }
}

/// What the hit path of this thread made of a request.
#[expect(
    clippy::large_enum_variant,
    reason = "returned straight to the caller, which moves the response on anyway"
)]
pub(crate) enum Whole {
    /// Answered: a fresh tier-0 hit, or an error the engine would give too.
    Answered(Result<GetResponse>),
    /// Asked tier 0 and had no answer: the engine's `peek-whole` would
    /// find the same, so it need not ask again.
    Declined,
    /// Not asked: no hit path for this cache on this thread, or it failed.
    NotAsked,
}

/// A fresh tier-0 hit for `key`, answered by this thread's hit path for
/// the cache `cache_id`: its shard's, on one of its shard threads; on any
/// other thread one made here from `source` the first time it is asked
/// (`None`: no hit path for this cache).
pub(crate) fn answer(
    cache_id: u64,
    source: Option<&Arc<Source>>,
    key: &str,
    inm: Option<&str>,
) -> Whole {
    let on_shard = LOCAL.with(|local| match local.try_borrow_mut() {
        Ok(mut local) => local
            .as_mut()
            .filter(|l| l.cache_id == cache_id)
            .map(|local| local.answer(None, key, inm)),
        Err(_) => Some(Whole::NotAsked),
    });
    if let Some(whole) = on_shard {
        return whole;
    }
    let Some(source) = source else {
        return Whole::NotAsked;
    };
    ELSEWHERE.with(|elsewhere| {
        let Ok(mut elsewhere) = elsewhere.try_borrow_mut() else {
            return Whole::NotAsked;
        };
        let at = match elsewhere.iter().position(|l| l.cache_id == cache_id) {
            Some(at) => at,
            None => {
                // The hit paths of caches since dropped go with them.
                elsewhere.retain(|l| l.source.as_ref().is_some_and(|s| s.strong_count() > 0));
                let counts = Arc::new(Counts::default());
                if let Ok(mut all) = source.counts.lock() {
                    all.push(Arc::clone(&counts));
                }
                let mut local = Local {
                    cache_id,
                    pre: Arc::clone(&source.pre),
                    spec: None,
                    instance: None,
                    reopen: Reopen::default(),
                    counts,
                    source: Some(Arc::downgrade(source)),
                };
                local.open(&source.spec, Instant::now());
                elsewhere.push(local);
                elsewhere.len() - 1
            }
        };
        elsewhere[at].answer(Some(&source.spec), key, inm)
    })
}

impl Local {
    /// This hit path's answer for `key`: over its own shard's spec, or
    /// off a shard over `elsewhere`, the cache's.
    fn answer(&mut self, elsewhere: Option<&ShardSpec>, key: &str, inm: Option<&str>) -> Whole {
        let Local {
            pre,
            spec,
            instance,
            reopen,
            counts,
            ..
        } = self;
        let Some(spec) = spec.as_ref().or(elsewhere) else {
            return Whole::NotAsked;
        };
        if instance.is_none() {
            let now = Instant::now();
            if !reopen.due(now) {
                return Whole::NotAsked;
            }
            open_into(pre, spec, instance, reopen, counts, now);
        }
        let (Some(live), Some(tier0)) = (instance.as_mut(), spec.tiers.first()) else {
            return Whole::NotAsked;
        };
        match live.peek_whole(tier0.as_ref(), key, inm) {
            Ok(whole) => {
                if matches!(whole, Whole::Answered(Ok(_))) {
                    bump(&counts.answers);
                }
                whole
            }
            Err(fault) => {
                tracing::error!("the hit path failed, replacing it: {fault:?}");
                bump(&counts.faults);
                *instance = None;
                Whole::NotAsked
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use wasmtime::component::types::{ComponentItem, Type};

    use super::*;

    /// Core-wasm values `ty` flattens to in the canonical ABI.
    fn flat(ty: &Type) -> usize {
        match ty {
            Type::String | Type::List(_) => 2,
            Type::Record(r) => r.fields().map(|f| flat(&f.ty)).sum(),
            Type::Tuple(t) => t.types().map(|t| flat(&t)).sum(),
            Type::Option(o) => 1 + flat(&o.ty()),
            Type::Result(r) => {
                1 + [r.ok(), r.err()]
                    .iter()
                    .flatten()
                    .map(flat)
                    .max()
                    .unwrap_or(0)
            }
            Type::Variant(v) => {
                1 + v
                    .cases()
                    .filter_map(|c| c.ty.as_ref().map(flat))
                    .max()
                    .unwrap_or(0)
            }
            Type::Flags(f) => f.names().count().div_ceil(32),
            _ => 1,
        }
    }

    #[test]
    fn the_hit_paths_call_passes_everything_flat() {
        let engine = &runtime().unwrap().sync_engine;
        let digest = component::embedded_digest(EMBEDDED.digest);
        let hit_path = component::compile(engine, EMBEDDED.bytes, digest, None).unwrap();
        let ty = hit_path.component_type();
        let Some(ComponentItem::ComponentInstance(hits)) = ty
            .get_export(engine, "daramjwee:cache/hits@0.1.0")
            .map(|e| e.ty)
        else {
            panic!("the hit path exports hits");
        };
        let Some(ComponentItem::ComponentFunc(peek)) =
            hits.get_export(engine, "peek-whole").map(|e| e.ty)
        else {
            panic!("hits exports peek-whole");
        };
        // The canonical ABI passes up to 16 arguments and one result as
        // core-wasm values; past that, through guest memory.
        let args: usize = peek.params().map(|(_, ty)| flat(&ty)).sum();
        let results: usize = peek.results().map(|ty| flat(&ty)).sum();
        assert_eq!((args, results), (16, 1));
    }

    #[test]
    fn a_hit_path_that_does_not_open_is_tried_again_ever_later() {
        let t0 = Instant::now();
        let mut reopen = Reopen::default();
        assert!(reopen.due(t0));
        let mut waits = Vec::new();
        for _ in 0..9 {
            reopen.failed(t0);
            assert!(!reopen.due(t0) && reopen.due(t0 + reopen.delay));
            waits.push(reopen.delay.as_secs());
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        reopen.opened();
        assert!(reopen.due(t0));
        reopen.failed(t0);
        assert_eq!(reopen.delay, Duration::from_secs(1));
    }
}
