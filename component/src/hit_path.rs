//! The WIT glue of the hit path (world `hit-path`): the engine's
//! [`Engine::peek_whole`] over what the host lends each call of tier 0's
//! entry, at the time it gives, in plain synchronous calls. The body stays
//! with the host: the engine's answer says whether to send it. Nothing
//! here waits or calls out: the runtime's parts that `peek_whole` never
//! uses answer with an error or never finish.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::{Body, Engine, Entry, Error, Fetched, Job, Metadata, Origin, Result, Runtime, Sink};

#[allow(missing_docs, reason = "generated bindings")]
mod bindings {
    wit_bindgen::generate!({ path: "../wit", world: "hit-path" });
}

use crate::http::exchange;
use crate::http::rfc9111::Policy;
use bindings::daramjwee::cache::types as wit;
use bindings::exports::daramjwee::cache::{hits, http as hx};

/// What the hit path never has: a body stream, a write, an origin.
pub enum Never {}

impl Body for Never {
    async fn next(&mut self) -> Option<Result<Vec<u8>>> {
        match *self {}
    }
}

impl Sink for Never {
    async fn write(&mut self, _: Vec<u8>) -> Result<()> {
        match *self {}
    }

    async fn commit(self) -> Result<()> {
        match self {}
    }
}

impl Origin for Never {
    type Body = Never;

    async fn fetch(&self, _: &str, _: Option<&Metadata>) -> Result<Fetched<Never>> {
        match *self {}
    }
}

fn whole_only() -> Error {
    Error::Other("the hit path reads whole entries only".into())
}

/// The entry lent for the current call, taken by the engine's read. Its
/// body stays with the host, so the engine passes `()` through for it.
type Slot = Rc<RefCell<Option<(Metadata, ())>>>;

/// A tier as the hit path sees it: tier 0 holds, for one call, the entry
/// the host lent; the others hold nothing.
struct Lent {
    name: String,
    slot: Slot,
}

impl crate::Tier for Lent {
    type Body = Never;
    type Sink = Never;
    type Whole = ();

    fn name(&self) -> String {
        self.name.clone()
    }

    fn get_whole(&self, _: &str) -> Result<Option<(Metadata, ())>> {
        Ok(self.slot.borrow_mut().take())
    }

    async fn get(&self, _: &str) -> Result<Option<Entry<Never>>> {
        Err(whole_only())
    }

    async fn stat(&self, _: &str) -> Result<Option<Metadata>> {
        Err(whole_only())
    }

    async fn begin_write(&self, _: &str, _: &Metadata) -> Result<Never> {
        Err(whole_only())
    }

    async fn delete(&self, _: &str) -> Result<()> {
        Err(whole_only())
    }
}

/// The hit path's runtime: the time is the host's, given with each call.
struct HitRt {
    now: Rc<Cell<u64>>,
}

impl Runtime for HitRt {
    type Body = Never;
    type Sink = Never;
    type Tier = Lent;
    type Origin = Never;

    fn now_ms(&self) -> u64 {
        self.now.get()
    }

    fn sleep(&self, _: u64) -> impl Future<Output = ()> {
        std::future::pending()
    }

    fn submit(&self, _: Job, _: Option<Never>) -> Result<()> {
        Err(whole_only())
    }

    fn spawn(&self, _: impl Future<Output = ()> + 'static) {}
}

struct Component;

/// The hit path of the cache `open` was called for.
struct HitPath {
    engine: Engine<HitRt>,
    /// Tier 0's slot.
    lent: Slot,
    /// The runtime's clock.
    now: Rc<Cell<u64>>,
}

thread_local! {
    static OPENED: RefCell<Option<HitPath>> = const { RefCell::new(None) };
}

impl hits::Guest for Component {
    fn open(config: wit::Config, tiers: Vec<String>) -> std::result::Result<(), wit::Error> {
        #[cfg(feature = "fault-injection")]
        if tiers.first().is_some_and(|name| name == "fault:open") {
            return Err(wit::Error::Other(
                "injected: the hit path does not open".into(),
            ));
        }
        let lent = Slot::default();
        let tiers = tiers
            .into_iter()
            .enumerate()
            .map(|(i, name)| Lent {
                name,
                slot: if i == 0 {
                    Rc::clone(&lent)
                } else {
                    Slot::default()
                },
            })
            .collect();
        let now = Rc::new(Cell::new(0));
        let rt = HitRt {
            now: Rc::clone(&now),
        };
        let engine = Engine::open(config.into(), tiers, rt)?;
        OPENED.with(|opened| *opened.borrow_mut() = Some(HitPath { engine, lent, now }));
        Ok(())
    }

    fn peek_whole(
        key: String,
        if_none_match: Option<String>,
        entry: hits::LentMeta,
        now: wit::Timestamp,
    ) -> hits::Verdict {
        #[cfg(feature = "fault-injection")]
        crate::faults::inject(&key);
        OPENED.with(|opened| {
            let opened = opened.borrow();
            let Some(path) = opened.as_ref() else {
                return hits::Verdict::Refused;
            };
            path.now.set(now);
            let meta = Metadata {
                tag: entry.tag.unwrap_or_default(),
                cached_at: entry.cached_at,
                negative: entry.negative,
                fresh_for: entry.fresh_for,
                stale_for: entry.stale_for,
                stale_if_error: None,
                attributes: Vec::new(),
            };
            *path.lent.borrow_mut() = Some((meta, ()));
            let r = path.engine.peek_whole(&key, if_none_match.as_deref());
            // Whatever the engine did not take is forgotten now.
            path.lent.borrow_mut().take();
            match r {
                Ok(Some(r)) => match r.status {
                    crate::Status::Ok => hits::Verdict::Ok,
                    crate::Status::NotModified => hits::Verdict::NotModified,
                    crate::Status::NotFound => hits::Verdict::NotFound,
                },
                Ok(None) => hits::Verdict::Declined,
                Err(_) => hits::Verdict::Refused,
            }
        })
    }
}

impl From<hx::Policy> for Policy {
    fn from(p: hx::Policy) -> Self {
        Policy {
            default_ttl: p.default_ttl,
            stale_while_revalidate: p.stale_while_revalidate,
            variants: p.variants,
            remember_missing: p.remember_missing,
        }
    }
}

/// A trap on a request carrying `x-daramjwee-fault: trap` (or `loop`,
/// `oom`), in builds for the host's isolation tests: the rules' calls are
/// where client and origin bytes are read, so that is where a parser bug
/// would strike.
#[cfg(feature = "fault-injection")]
fn inject(fields: &[(String, Vec<u8>)]) {
    for (name, value) in fields {
        if name == "x-daramjwee-fault"
            && let Ok(value) = std::str::from_utf8(value)
        {
            crate::faults::inject(&format!("fault:{value}"));
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
fn inject(_: &[(String, Vec<u8>)]) {}

impl hx::Guest for Component {
    fn end_to_end(fields: Vec<hx::Field>) -> Vec<u32> {
        inject(&fields);
        exchange::end_to_end(&fields)
    }

    fn read_request(request: Vec<hx::Field>) -> hx::Reading {
        inject(&request);
        let reading = exchange::read_request(&request);
        let c = reading.conditions;
        hx::Reading {
            conditions: wit::Conditions {
                if_none_match: c.if_none_match,
                max_age: c.max_age,
                min_fresh: c.min_fresh,
                max_stale: c.max_stale,
            },
            only_if_cached: reading.only_if_cached,
        }
    }

    fn upstream(
        request: Vec<hx::Field>,
        client: Option<String>,
        scheme: String,
        fill: bool,
        held: Option<wit::Metadata>,
    ) -> hx::UpstreamHead {
        inject(&request);
        let held: Option<Metadata> = held.map(Into::into);
        let up = exchange::upstream(&request, client.as_deref(), &scheme, fill, held.as_ref());
        hx::UpstreamHead {
            kept: up.kept,
            added: up.added,
        }
    }

    fn judge(
        answer: hx::Answer,
        held: Option<wit::Metadata>,
        policy: hx::Policy,
        set: String,
    ) -> hx::Judged {
        inject(&answer.response);
        let held: Option<Metadata> = held.map(Into::into);
        let judged = exchange::judge(
            &exchange::Answer {
                request: &answer.request,
                status: answer.status,
                response: &answer.response,
                request_time: answer.request_time,
                now_ms: answer.now,
            },
            held.as_ref(),
            &policy.into(),
            || set,
        );
        hx::Judged {
            judgement: match judged.judgement {
                exchange::Judgement::Missing => hx::Judgement::Missing,
                exchange::Judgement::Body { stored } => hx::Judgement::Body(stored),
                exchange::Judgement::Passed => hx::Judgement::Passed,
                exchange::Judgement::Revalidated => hx::Judgement::Revalidated,
            },
            meta: judged.meta.into(),
            personal: judged.personal,
        }
    }

    fn variant_key(
        key: String,
        attributes: Vec<hx::TextField>,
        request: Vec<hx::Field>,
    ) -> Option<String> {
        inject(&request);
        exchange::variant(&key, &attributes, &request)
    }

    fn not_modified(attributes: Vec<hx::TextField>, request: Vec<hx::Field>) -> bool {
        inject(&request);
        exchange::not_modified(&attributes, &request)
    }

    fn invalidated(
        method: String,
        status: u16,
        origin: hx::OriginUrl,
        key: String,
        response: Vec<hx::Field>,
    ) -> Vec<String> {
        inject(&response);
        let origin = exchange::OriginUrl {
            scheme: origin.scheme,
            authority: origin.authority,
            prefix: origin.prefix,
        };
        exchange::invalidated(&method, status, &origin, &key, &response)
    }

    fn stored_head(
        fields: Vec<hx::Field>,
        policy: hx::Policy,
        now: wit::Timestamp,
    ) -> wit::Metadata {
        inject(&fields);
        exchange::stored_head(&fields, &policy.into(), now).into()
    }
}

crate::wit_types::conversions!(wit);

bindings::export!(Component with_types_in bindings);
