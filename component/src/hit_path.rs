//! The WIT glue of the hit path (world `hit-path`): the engine's
//! [`Engine::peek_whole`] over tiers that only hand over whole entries,
//! in plain synchronous calls. Nothing here waits: the runtime's parts
//! that `peek_whole` never uses answer with an error or never finish.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Body, Engine, Entry, Error, Fetched, Job, Metadata, Origin, Result, Runtime, Sink};

#[allow(missing_docs, reason = "generated bindings")]
mod bindings {
    wit_bindgen::generate!({ path: "../wit", world: "hit-path" });
}

use bindings::daramjwee::cache::{types as wit, whole_store};
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

impl crate::Tier for whole_store::Tier {
    type Body = Never;
    type Sink = Never;
    type Whole = wit::HeldBody;

    fn name(&self) -> String {
        whole_store::Tier::name(self)
    }

    fn get_whole(&self, key: &str) -> Result<Option<(Metadata, wit::HeldBody)>> {
        let entry = whole_store::Tier::get_whole(self, key)?;
        Ok(entry.map(|e| (e.meta.into(), e.body)))
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

struct HitRt;

impl Runtime for HitRt {
    type Body = Never;
    type Sink = Never;
    type Tier = whole_store::Tier;
    type Origin = Never;

    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
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

impl hits::Guest for Component {
    type HitPath = HitPath;
}

struct HitPath {
    engine: Engine<HitRt>,
}

impl hits::GuestHitPath for HitPath {
    fn open(
        config: wit::Config,
        tiers: Vec<whole_store::Tier>,
    ) -> std::result::Result<hits::HitPath, wit::Error> {
        #[cfg(feature = "fault-injection")]
        if tiers.first().is_some_and(|t| t.name() == "fault:open") {
            return Err(wit::Error::Other(
                "injected: the hit path does not open".into(),
            ));
        }
        let engine = Engine::open(config.into(), tiers, HitRt)?;
        Ok(hits::HitPath::new(HitPath { engine }))
    }

    fn peek_whole(
        &self,
        key: String,
        if_none_match: Option<String>,
    ) -> std::result::Result<Option<hits::Hit>, wit::Error> {
        #[cfg(feature = "fault-injection")]
        crate::faults::inject(&key);
        let r = self.engine.peek_whole(&key, if_none_match.as_deref())?;
        // The metadata is tier 0's, unchanged: the host keeps its own.
        Ok(r.map(|r| hits::Hit {
            status: r.status.into(),
            body: r.body,
        }))
    }
}

crate::wit_types::conversions!(wit);

bindings::export!(Component with_types_in bindings);
