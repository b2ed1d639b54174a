//! The engine's runtime inside a `wasi:http` component: time from the
//! host's clocks, background jobs as tasks of the instance.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::marker::PhantomData;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use daramjwee_component::{Engine, Error, Job, Result, Runtime, Tier};

use crate::body::EdgeBody;
use crate::origin::HttpOrigin;

/// Background jobs allowed to run at once; more are refused (`busy`), as
/// the engine expects of a bounded queue.
const MAX_JOBS: usize = 16;

/// Where a runtime finds the engine it runs jobs on.
pub(crate) type EngineSlot<T> = Rc<RefCell<Option<Engine<EdgeRt<T>>>>>;

/// The runtime over tier type `T`.
pub struct EdgeRt<T: Tier<Body = EdgeBody>> {
    /// The engine the jobs run on, set right after it is opened. The
    /// engine holds this runtime, so this is a cycle: the engine lives as
    /// long as the instance, which is what the homes want anyway.
    engine: EngineSlot<T>,
    running: Rc<Cell<usize>>,
    _tier: PhantomData<T>,
}

impl<T: Tier<Body = EdgeBody>> EdgeRt<T> {
    pub(crate) fn new() -> (Self, EngineSlot<T>) {
        let engine = Rc::new(RefCell::new(None));
        (
            EdgeRt {
                engine: Rc::clone(&engine),
                running: Rc::default(),
                _tier: PhantomData,
            },
            engine,
        )
    }
}

impl<T: Tier<Body = EdgeBody>> Runtime for EdgeRt<T> {
    type Body = EdgeBody;
    type Sink = T::Sink;
    type Tier = T;
    type Origin = HttpOrigin;

    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    async fn sleep(&self, ms: u64) {
        wasip3::clocks::monotonic_clock::wait_for(ms.saturating_mul(1_000_000)).await;
    }

    fn submit(&self, job: Job, origin: Option<HttpOrigin>) -> Result<()> {
        let Some(engine) = self.engine.borrow().clone() else {
            return Err(Error::Other("the cache is not open yet".into()));
        };
        if self.running.get() >= MAX_JOBS {
            return Err(Error::Busy);
        }
        self.running.set(self.running.get() + 1);
        let running = Rc::clone(&self.running);
        wasip3::spawn_local(async move {
            // A failed refresh keeps the old entry; nothing to report to.
            let _ = engine.run_job(job, origin).await;
            running.set(running.get() - 1);
        });
        Ok(())
    }

    fn spawn(&self, task: impl Future<Output = ()> + 'static) {
        wasip3::spawn_local(task);
    }
}
