//! The HTTP caching rules, run inside the engine component: the WIT
//! `http` interface of the engine's synchronous face (world `hit-path`),
//! called in plain calls on an instance kept beside each thread that
//! asks. Request and response heads go in as they came; decisions come
//! out. A trap, a call over the time limit or a guest that exhausts its
//! memory costs the call that met it an error and its thread's instance,
//! which is replaced on the next call: never the process.
//!
//! The steps themselves are `daramjwee_component::http::exchange`, the
//! code the wasm homes call directly.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::Store;

use crate::hit_path::{self, Pre, bindings::HitPath};
use crate::imports::HostState;
use crate::shard::ticks_in;
use crate::{Error, Metadata, Result};
use daramjwee_component::Conditions;
pub use daramjwee_component::http::exchange::{Judgement, OriginUrl, Reading, Upstream};
pub use daramjwee_component::http::rfc9111::Policy;

use hit_path::bindings::exports::daramjwee::cache::http as hx;

/// Header fields as they came: lower-case names, raw values.
pub type RawFields = [(String, Vec<u8>)];

/// The origin's answer to a fill, judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged {
    /// What the fill does with it.
    pub judgement: Judgement,
    /// The entry's metadata for `Body` and `Revalidated`.
    pub meta: Metadata,
    /// Indices of the answer's fields that go to the requesting client
    /// only, never stored.
    pub personal: Vec<u32>,
}

/// The HTTP caching rules of RFC 9111, judged in the sandbox. Cheap to
/// clone; each thread that calls gets its own instance.
#[derive(Clone)]
pub struct HttpRules {
    pre: Arc<Pre>,
    memory_limit: usize,
    call_ticks: u64,
    faults: Arc<AtomicU64>,
}

impl std::fmt::Debug for HttpRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRules")
            .field("faults", &self.faults())
            .finish_non_exhaustive()
    }
}

/// One thread's instance of the rules for one [`HttpRules`].
struct Instance {
    /// The `Pre` it came from, by address.
    of: usize,
    store: Store<HostState>,
    guest: HitPath,
}

thread_local! {
    static INSTANCES: RefCell<Vec<Instance>> = const { RefCell::new(Vec::new()) };
}

impl HttpRules {
    /// The rules of the engine carried in this binary, with each call's
    /// instance capped at `memory_limit` bytes and `call_time_limit`.
    pub fn embedded(
        compile_cache: Option<&std::path::Path>,
        memory_limit: usize,
        call_time_limit: Duration,
    ) -> Result<Self> {
        Self::of(
            &hit_path::EMBEDDED,
            compile_cache,
            memory_limit,
            call_time_limit,
        )
    }

    /// The rules of the faulty engine (fault-isolation tests): a request
    /// or response with `x-daramjwee-fault: trap` (or `loop`, `oom`)
    /// makes the call fault.
    #[cfg(feature = "fault-injection")]
    pub fn faulty(memory_limit: usize, call_time_limit: Duration) -> Result<Self> {
        Self::of(&hit_path::FAULTY, None, memory_limit, call_time_limit)
    }

    fn of(
        wasm: &'static hit_path::Wasm,
        compile_cache: Option<&std::path::Path>,
        memory_limit: usize,
        call_time_limit: Duration,
    ) -> Result<Self> {
        Ok(HttpRules {
            pre: hit_path::load(wasm, compile_cache)?,
            memory_limit,
            call_ticks: ticks_in(call_time_limit),
            faults: Arc::default(),
        })
    }

    /// Calls that faulted (trap, time limit, memory cap) so far.
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }

    /// Run `call` on this thread's instance, made when there is none.
    fn call<T>(
        &self,
        what: &str,
        call: impl FnOnce(&HitPath, &mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<T> {
        let of = Arc::as_ptr(&self.pre) as usize;
        INSTANCES.with(|instances| {
            let mut instances = instances
                .try_borrow_mut()
                .map_err(|_| Error::Engine("the HTTP rules were called from a call".into()))?;
            let at = match instances.iter().position(|i| i.of == of) {
                Some(at) => at,
                None => {
                    instances.push(self.instance(of)?);
                    instances.len() - 1
                }
            };
            let instance = &mut instances[at];
            instance.store.set_epoch_deadline(self.call_ticks);
            match call(&instance.guest, &mut instance.store) {
                Ok(value) => Ok(value),
                Err(fault) => {
                    instances.swap_remove(at);
                    self.faults.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("the HTTP rules failed ({what}), replacing them: {fault:?}");
                    Err(Error::Engine(format!("the HTTP rules failed to {what}")))
                }
            }
        })
    }

    fn instance(&self, of: usize) -> Result<Instance> {
        let mut store = hit_path::plain_store(self.memory_limit, self.call_ticks)?;
        let guest = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| Error::Engine(format!("the HTTP rules: {e:?}")))?;
        Ok(Instance { of, store, guest })
    }

    /// Indices of the end-to-end fields of `fields`, for a message passed
    /// on as it came.
    pub fn end_to_end(&self, fields: &RawFields) -> Result<Vec<u32>> {
        self.call("choose end-to-end fields", |g, s| {
            g.daramjwee_cache_http().call_end_to_end(s, fields)
        })
    }

    /// What a request with fields `request` asks of a stored answer.
    pub fn read_request(&self, request: &RawFields) -> Result<Reading> {
        let reading = self.call("read a request", |g, s| {
            g.daramjwee_cache_http().call_read_request(s, request)
        })?;
        let c = reading.conditions;
        Ok(Reading {
            conditions: Conditions {
                if_none_match: c.if_none_match,
                max_age: c.max_age,
                min_fresh: c.min_fresh,
                max_stale: c.max_stale,
            },
            only_if_cached: reading.only_if_cached,
        })
    }

    /// What a request with fields `request` from `client` over `scheme`
    /// takes to the origin; for a fill (`fill`) of `held`, with its
    /// validators.
    pub fn upstream(
        &self,
        request: &RawFields,
        client: Option<&str>,
        scheme: &str,
        fill: bool,
        held: Option<&Metadata>,
    ) -> Result<Upstream> {
        let held = held.map(|m| crate::bindings::types::Metadata::from(m.clone()));
        let up = self.call("choose what goes upstream", |g, s| {
            g.daramjwee_cache_http()
                .call_upstream(s, request, client, scheme, fill, held.as_ref())
        })?;
        Ok(Upstream {
            kept: up.kept,
            added: up.added,
        })
    }

    /// Judge the origin's answer `status` with fields `response` to a
    /// fill for a request with fields `request`, sent at `request_time`
    /// (s), received at `now_ms`, made for the stored response `held`;
    /// a response that varies heads the set `set`. The fields are moved
    /// into the call, not copied.
    #[allow(clippy::too_many_arguments, reason = "one call of the WIT")]
    pub fn judge(
        &self,
        request: Vec<(String, Vec<u8>)>,
        status: u16,
        response: Vec<(String, Vec<u8>)>,
        request_time: i64,
        now_ms: u64,
        held: Option<&Metadata>,
        policy: &Policy,
        set: &str,
    ) -> Result<Judged> {
        let held = held.map(|m| crate::bindings::types::Metadata::from(m.clone()));
        let answer = hx::Answer {
            request,
            status,
            response,
            request_time,
            now: now_ms,
        };
        let judged = self.call("judge the origin's answer", |g, s| {
            g.daramjwee_cache_http()
                .call_judge(s, &answer, held.as_ref(), wit_policy(policy), set)
        })?;
        Ok(Judged {
            judgement: match judged.judgement {
                hx::Judgement::Missing => Judgement::Missing,
                hx::Judgement::Body(stored) => Judgement::Body { stored },
                hx::Judgement::Passed => Judgement::Passed,
                hx::Judgement::Revalidated => Judgement::Revalidated,
            },
            meta: judged.meta.into(),
            personal: judged.personal,
        })
    }

    /// The key of the variant of `key` a request with fields `request`
    /// selects, when the entry there (its `attributes`) varies and does
    /// not fit it.
    pub fn variant_key(
        &self,
        key: &str,
        attributes: &[(String, String)],
        request: &RawFields,
    ) -> Result<Option<String>> {
        self.call("select a variant", |g, s| {
            g.daramjwee_cache_http()
                .call_variant_key(s, key, attributes, request)
        })
    }

    /// Whether a stored 200 (its `attributes`) answers a request with
    /// fields `request` with 304 (its `If-Modified-Since`).
    pub fn not_modified(
        &self,
        attributes: &[(String, String)],
        request: &RawFields,
    ) -> Result<bool> {
        self.call("compare dates", |g, s| {
            g.daramjwee_cache_http()
                .call_not_modified(s, attributes, request)
        })
    }

    /// The keys the answer `status` with fields `response` to a request of
    /// `method` for `key` on `origin` invalidates.
    pub fn invalidated(
        &self,
        method: &str,
        status: u16,
        origin: &OriginUrl,
        key: &str,
        response: &RawFields,
    ) -> Result<Vec<String>> {
        let origin = hx::OriginUrl {
            scheme: origin.scheme.clone(),
            authority: origin.authority.clone(),
            prefix: origin.prefix.clone(),
        };
        self.call("find what is invalidated", |g, s| {
            g.daramjwee_cache_http()
                .call_invalidated(s, method, status, &origin, key, response)
        })
    }

    /// The metadata of a 200 stored directly with the request's fields
    /// `fields` as its own, at `now_ms`.
    pub fn stored_head(
        &self,
        fields: &RawFields,
        policy: &Policy,
        now_ms: u64,
    ) -> Result<Metadata> {
        let meta = self.call("read a stored head", |g, s| {
            g.daramjwee_cache_http()
                .call_stored_head(s, fields, wit_policy(policy), now_ms)
        })?;
        Ok(meta.into())
    }
}

fn wit_policy(policy: &Policy) -> hx::Policy {
    hx::Policy {
        default_ttl: policy.default_ttl,
        stale_while_revalidate: policy.stale_while_revalidate,
        variants: policy.variants,
        remember_missing: policy.remember_missing,
    }
}
