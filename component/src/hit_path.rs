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

use bindings::daramjwee::cache::types as wit;
use bindings::exports::daramjwee::cache::hits;

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

crate::wit_types::conversions!(wit);

bindings::export!(Component with_types_in bindings);
