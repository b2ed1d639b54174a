//! The cache's rules: what `get`, `set`, `delete`, `schedule_refresh`,
//! `run_job` and `close` do, over any [`Runtime`].

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;

use crate::fill::{Fill, FillReader};
use crate::freshness::{Conditions, Freshness, classify, classify_for};
use crate::generation::Generations;
use crate::meta::if_none_match;
use crate::runtime::{Body, Entry, Fetched, Job, JobKind, Origin, Runtime, Sink, Tier};
use crate::wait::{Wakers, race};
use crate::{Config, Error, Metadata, Result};

/// How often a request that joined a failed fetch tries again before it
/// gives up with that fetch's error.
const MAX_ATTEMPTS: usize = 3;

/// How long a scheduled refresh blocks another refresh of its key, in ms,
/// in case the host drops the job without running it.
const REFRESH_DEDUP_MS: u64 = 60_000;

/// Outcome of a `get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// A body follows.
    Ok,
    /// The `If-None-Match` matched.
    NotModified,
    /// The origin says the key does not exist.
    NotFound,
}

/// Where an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A tier, by index.
    Tier(u32),
    /// The origin, fetched for this request.
    Origin,
    /// Another request's fill, joined.
    Joined,
}

/// The body of an `ok` response.
pub enum ResponseBody<R: Runtime> {
    /// A tier's body, handed through untouched.
    Direct {
        /// The body.
        body: R::Body,
        /// Its length.
        size: u64,
    },
    /// A reader of a fill (a fetch or a promotion in progress).
    Fill(FillReader),
}

/// The answer of [`Engine::peek_whole`]: from tier 0, fresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WholeResponse<W> {
    /// The outcome.
    pub status: Status,
    /// The entry's metadata.
    pub meta: Metadata,
    /// The body as tier 0 handed it over, for `Status::Ok` only.
    pub body: Option<W>,
}

/// The answer to a `get`.
pub struct Response<R: Runtime> {
    /// The outcome.
    pub status: Status,
    /// The entry's metadata.
    pub meta: Metadata,
    /// Where the answer came from.
    pub source: Source,
    /// The entry was stale and a refresh was scheduled.
    pub stale: bool,
    /// The answer is being written to a tier: a fetched body or negative
    /// answer, a promoted lower-tier hit, a revalidated copy.
    pub stored: bool,
    /// The body, for `Status::Ok`.
    pub body: Option<ResponseBody<R>>,
}

impl<R: Runtime> Response<R> {
    fn without_body(status: Status, meta: Metadata, source: Source, stale: bool) -> Self {
        Response {
            status,
            meta,
            source,
            stale,
            stored: false,
            body: None,
        }
    }
}

/// The cache engine. Cheap to clone; clones share one cache.
pub struct Engine<R: Runtime> {
    inner: Rc<Inner<R>>,
}

impl<R: Runtime> Clone for Engine<R> {
    fn clone(&self) -> Self {
        Engine {
            inner: Rc::clone(&self.inner),
        }
    }
}

struct Inner<R: Runtime> {
    rt: R,
    config: Config,
    tiers: Vec<R::Tier>,
    closed: Cell<bool>,
    generations: RefCell<Generations>,
    /// In-flight fetches and promotions, for requests to join.
    flights: RefCell<HashMap<String, Rc<Flight>>>,
    /// Keys with a refresh queued or running, with when that claim lapses.
    refreshing: RefCell<HashMap<String, u64>>,
}

/// A fetch or promotion that concurrent requests for the key can join.
struct Flight {
    answer: RefCell<Option<Answer>>,
    wakers: RefCell<Wakers>,
}

#[derive(Clone)]
enum Answer {
    Fill(Rc<Fill>),
    NotFound(Metadata),
    Retry(Error),
}

impl Flight {
    fn new() -> Rc<Self> {
        Rc::new(Flight {
            answer: RefCell::new(None),
            wakers: RefCell::default(),
        })
    }

    fn answer(&self, answer: Answer) {
        *self.answer.borrow_mut() = Some(answer);
        self.wakers.borrow_mut().wake_all();
    }

    async fn wait(&self) -> Answer {
        poll_fn(|cx| match &*self.answer.borrow() {
            Some(answer) => Poll::Ready(answer.clone()),
            None => {
                self.wakers.borrow_mut().register(cx.waker());
                Poll::Pending
            }
        })
        .await
    }
}

/// The leader's hold on a flight: if the leader goes away without an
/// answer (its timeout fired, its task was cancelled), the waiters are
/// told to try again and one of them leads.
struct Lead<R: Runtime> {
    inner: Rc<Inner<R>>,
    key: String,
    flight: Rc<Flight>,
    answered: bool,
}

impl<R: Runtime> Lead<R> {
    fn answer(mut self, answer: Answer) {
        let done = !matches!(answer, Answer::Fill(_));
        self.flight.answer(answer);
        if done {
            self.inner.end_flight(&self.key, &self.flight);
        }
        self.answered = true;
    }
}

impl<R: Runtime> Drop for Lead<R> {
    fn drop(&mut self) {
        if !self.answered {
            self.flight.answer(Answer::Retry(Error::Other(
                "the request fetching this key went away".into(),
            )));
            self.inner.end_flight(&self.key, &self.flight);
        }
    }
}

/// One step of a `get`: an answer, or "look again" after a joined fetch
/// failed or finished without a joinable body.
enum Step<R: Runtime> {
    Done(Response<R>),
    Again(Error),
}

/// Which tiers a fill may be written to: the first of tiers `0..within`
/// that admits `size` bytes, or tier 0 when the size is unknown.
#[derive(Clone, Copy)]
struct Placement {
    size: Option<u64>,
    within: usize,
    /// The body is a new version of the key (from the origin): the tiers
    /// above the one it is written to (all of `0..within` when none
    /// admits it) drop their older entry once it is complete, so that
    /// none of them keeps answering with it.
    replaces: bool,
}

impl<R: Runtime> FillPlan<R> {
    /// A plan that writes nothing.
    fn unwritten(key: &str, generation: u64, needs_reader: bool) -> Self {
        FillPlan {
            key: key.to_owned(),
            generation,
            sinks: Vec::new(),
            supersede: Vec::new(),
            written: 0,
            copy_after: Vec::new(),
            needs_reader,
            flight: None,
        }
    }
}

impl Placement {
    /// A body of `size` bytes the cache already holds (promoted, or
    /// revalidated by the origin): it goes to the first of tiers
    /// `0..within` that admits it, and replaces nothing.
    fn kept(size: u64, within: usize) -> Self {
        Placement {
            size: Some(size),
            within,
            replaces: false,
        }
    }

    /// A new version from the origin, of `size` bytes when stated: it may
    /// go to any of the cache's `tiers`, and replaces the older entry of
    /// the tiers above the one it goes to.
    fn new_version(size: Option<u64>, tiers: usize) -> Self {
        Placement {
            size,
            within: tiers,
            replaces: true,
        }
    }

    /// The tiers whose entry a fill written to `top` supersedes.
    fn superseded(self, top: Option<usize>) -> Vec<u32> {
        if !self.replaces {
            return Vec::new();
        }
        (0..top.unwrap_or(self.within)).map(|t| t as u32).collect()
    }
}

/// Where a fill writes and what it does once it is complete.
struct FillPlan<R: Runtime> {
    key: String,
    generation: u64,
    /// The writes of the body, each with the tier it writes.
    sinks: Vec<(u32, R::Sink)>,
    /// Tiers whose entry of the key goes once the body is complete (and
    /// committed, when there are sinks).
    supersede: Vec<u32>,
    /// The tier the sinks write (the first: a copy writes several).
    written: u32,
    /// Tiers to copy the entry into after the commit, from `written`.
    copy_after: Vec<u32>,
    /// Abort unless some reader reads the body to its end.
    needs_reader: bool,
    flight: Option<Rc<Flight>>,
}

impl<R: Runtime> Engine<R> {
    /// Open a cache over `tiers` (tier 0 first) after validating `config`.
    pub fn open(config: Config, tiers: Vec<R::Tier>, rt: R) -> Result<Self> {
        let names: Vec<String> = tiers.iter().map(Tier::name).collect();
        config.validate(&names)?;
        Ok(Engine {
            inner: Rc::new(Inner {
                rt,
                config,
                tiers,
                closed: Cell::new(false),
                generations: RefCell::default(),
                flights: RefCell::default(),
                refreshing: RefCell::default(),
            }),
        })
    }

    /// The runtime the engine was opened with.
    pub fn runtime(&self) -> &R {
        &self.inner.rt
    }

    /// Read `key` through the tiers and then `origin`.
    pub async fn get(
        &self,
        key: &str,
        if_none_match: Option<&str>,
        origin: R::Origin,
    ) -> Result<Response<R>> {
        self.get_with(key, &Conditions::if_none_match(if_none_match), origin)
            .await
    }

    /// [`Engine::get`] for a caller with `conditions`: an entry too old
    /// for them is validated with the origin before it is used, one
    /// within their `max_stale` is answered stale.
    pub async fn get_with(
        &self,
        key: &str,
        conditions: &Conditions,
        origin: R::Origin,
    ) -> Result<Response<R>> {
        let inner = &self.inner;
        inner.check(key)?;
        let mut origin = Some(origin);
        let setup = async {
            let mut last = Error::Other("no attempt was made".into());
            for _ in 0..MAX_ATTEMPTS {
                match inner.attempt(key, conditions, &mut origin).await? {
                    Step::Done(response) => return Ok(response),
                    Step::Again(why) => last = why,
                }
            }
            Err(last)
        };
        race(setup, inner.rt.sleep(inner.config.operation_timeout))
            .await
            .unwrap_or(Err(Error::Timeout))
    }

    /// Answer `key` from tier 0 when it holds a fresh entry; `None`
    /// otherwise, and for a tier error (the full `get` deals with those).
    /// Fetches, fills and schedules nothing and touches no per-key state,
    /// so an engine may answer a peek for a key whose fills another
    /// engine over the same tiers coordinates: it is the fresh-hit branch
    /// of [`Engine::get`] alone.
    pub async fn peek(&self, key: &str, inm: Option<&str>) -> Result<Option<Response<R>>> {
        let inner = &self.inner;
        inner.check(key)?;
        let Some(tier) = inner.tiers.first() else {
            return Ok(None);
        };
        let entry = match tier.get(key).await {
            Ok(Some(entry)) => entry,
            Ok(None) => return Ok(None),
            Err(e @ Error::InvalidKey(_)) => return Err(e),
            Err(_) => return Ok(None),
        };
        let window = inner.config.window(0, &entry.meta);
        if classify(&entry.meta, inner.rt.now_ms(), window) != Freshness::Fresh {
            return Ok(None);
        }
        Ok(
            match answer_from(entry, Source::Tier(0), false, inm, true) {
                Found::Answered(response) => Some(response),
                Found::Promote(_) => None,
            },
        )
    }

    /// [`Engine::peek`] without waiting: a fresh tier-0 hit whose body
    /// tier 0 hands over at once ([`Tier::get_whole`]), passed back
    /// unread. `None` says nothing about the key: `peek` or `get` answer
    /// it.
    pub fn peek_whole(
        &self,
        key: &str,
        inm: Option<&str>,
    ) -> Result<Option<WholeResponse<<R::Tier as Tier>::Whole>>> {
        let inner = &self.inner;
        inner.check(key)?;
        let Some(tier) = inner.tiers.first() else {
            return Ok(None);
        };
        let (meta, body) = match tier.get_whole(key) {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(None),
            Err(e @ Error::InvalidKey(_)) => return Err(e),
            Err(_) => return Ok(None),
        };
        let window = inner.config.window(0, &meta);
        if classify(&meta, inner.rt.now_ms(), window) != Freshness::Fresh {
            return Ok(None);
        }
        Ok(Some(match answer_by_meta(&meta, inm) {
            Some(status) => WholeResponse {
                status,
                meta,
                body: None,
            },
            None => WholeResponse {
                status: Status::Ok,
                meta,
                body: Some(body),
            },
        }))
    }

    /// Write `key` into tier 0 directly; `cached-at` becomes now.
    pub async fn set(&self, key: &str, mut meta: Metadata) -> Result<Writer<R>> {
        let inner = &self.inner;
        inner.check(key)?;
        let generation = inner.invalidate(key);
        meta.cached_at = Some(inner.rt.now_ms());
        let sink = inner.tiers[0].begin_write(key, &meta).await?;
        Ok(Writer {
            inner: Rc::clone(inner),
            key: key.to_owned(),
            generation,
            sink,
        })
    }

    /// Remove `key` from every tier, the lowest first, so that an upper
    /// tier can never be refilled from a lower one meanwhile. Keeps going
    /// past a failing tier and reports the first error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let inner = &self.inner;
        inner.check(key)?;
        inner.invalidate(key);
        let mut first = Ok(());
        for tier in inner.tiers.iter().rev() {
            if let Err(e) = tier.delete(key).await
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }

    /// Refresh `key` from `origin` in the background. A refresh of the key
    /// already queued or running makes this a no-op.
    pub fn schedule_refresh(&self, key: &str, origin: R::Origin) -> Result<()> {
        self.inner.check(key)?;
        self.inner.schedule_refresh(key, origin)
    }

    /// Run a job this engine submitted. Runs after `close` too, so that a
    /// host draining its queue at shutdown finishes the work.
    pub async fn run_job(&self, job: Job, origin: Option<R::Origin>) -> Result<()> {
        let inner = &self.inner;
        match job.kind {
            JobKind::Refresh => {
                let result = match origin {
                    Some(origin) => inner.refresh(&job.key, job.generation, origin).await,
                    None => Err(Error::Other("a refresh job needs an origin".into())),
                };
                inner.refreshing.borrow_mut().remove(&job.key);
                result
            }
            JobKind::Copy { source, targets } => {
                inner.copy(&job.key, job.generation, source, &targets).await
            }
        }
    }

    /// Close: every later call fails with `Closed`; bodies already handed
    /// out stay readable and fills in progress finish. Idempotent.
    pub fn close(&self) {
        self.inner.closed.set(true);
    }

    /// Number of fetches and promotions that requests can join right now.
    pub fn flights(&self) -> usize {
        self.inner.flights.borrow().len()
    }
}

impl<R: Runtime> Inner<R> {
    fn check(&self, key: &str) -> Result<()> {
        if self.closed.get() {
            return Err(Error::Closed);
        }
        self.config.check_key(key)
    }

    /// Advance `key`'s generation and forget its in-flight fetch, so that
    /// writes begun before now never commit and new requests start afresh.
    fn invalidate(&self, key: &str) -> u64 {
        self.flights.borrow_mut().remove(key);
        self.generations.borrow_mut().bump(key)
    }

    fn generation(&self, key: &str) -> u64 {
        self.generations.borrow().current(key)
    }

    fn flight(&self, key: &str) -> Option<Rc<Flight>> {
        self.flights.borrow().get(key).cloned()
    }

    fn end_flight(&self, key: &str, flight: &Rc<Flight>) {
        let mut flights = self.flights.borrow_mut();
        if flights.get(key).is_some_and(|f| Rc::ptr_eq(f, flight)) {
            flights.remove(key);
        }
    }

    fn lead(self: &Rc<Self>, key: &str) -> Lead<R> {
        let flight = Flight::new();
        self.flights
            .borrow_mut()
            .insert(key.to_owned(), Rc::clone(&flight));
        Lead {
            inner: Rc::clone(self),
            key: key.to_owned(),
            flight,
            answered: false,
        }
    }

    fn lower_tiers(&self, from: usize, to: usize) -> Vec<u32> {
        (from..to).map(|i| i as u32).collect()
    }

    fn schedule_refresh(&self, key: &str, origin: R::Origin) -> Result<()> {
        let now = self.rt.now_ms();
        {
            let mut refreshing = self.refreshing.borrow_mut();
            if refreshing.get(key).is_some_and(|&until| until > now) {
                return Ok(());
            }
            refreshing.insert(key.to_owned(), now + REFRESH_DEDUP_MS);
        }
        let job = Job {
            key: key.to_owned(),
            generation: self.generation(key),
            kind: JobKind::Refresh,
        };
        self.rt.submit(job, Some(origin)).inspect_err(|_| {
            self.refreshing.borrow_mut().remove(key);
        })
    }

    /// Refresh after serving a stale entry; a full queue only costs the
    /// refresh, never the answer.
    fn refresh_behind(&self, key: &str, origin: &mut Option<R::Origin>) {
        if let Some(origin) = origin.take() {
            let _ = self.schedule_refresh(key, origin);
        }
    }

    fn submit_copy(&self, key: &str, generation: u64, source: u32, targets: Vec<u32>) {
        if targets.is_empty() {
            return;
        }
        let job = Job {
            key: key.to_owned(),
            generation,
            kind: JobKind::Copy { source, targets },
        };
        let _ = self.rt.submit(job, None);
    }

    /// One pass over the tiers, then the origin.
    async fn attempt(
        self: &Rc<Self>,
        key: &str,
        conditions: &Conditions,
        origin: &mut Option<R::Origin>,
    ) -> Result<Step<R>> {
        let inm = conditions.if_none_match.as_deref();
        let generation = self.generation(key);
        let now = self.rt.now_ms();
        let mut dirty = false;
        let mut held: Option<(usize, Metadata)> = None;
        for (i, tier) in self.tiers.iter().enumerate() {
            if i > 0
                && let Some(flight) = self.flight(key)
            {
                return self.join(&flight, inm).await;
            }
            let entry = match tier.get(key).await {
                Ok(Some(entry)) => entry,
                Ok(None) => continue,
                Err(e @ Error::InvalidKey(_)) => return Err(e),
                Err(_) => {
                    dirty = true;
                    continue;
                }
            };
            let window = self.config.window(i, &entry.meta);
            let freshness = classify_for(&entry.meta, now, window, conditions);
            let source = Source::Tier(i as u32);
            if freshness == Freshness::Expired {
                held = Some((i, entry.meta));
                break;
            }
            let stale = freshness == Freshness::Stale;
            if stale {
                self.refresh_behind(key, origin);
            }
            if entry.meta.negative && !stale && i > 0 && !dirty {
                self.write_negative(key, generation, &entry.meta, 0..i)
                    .await;
            }
            let entry = match answer_from(entry, source, stale, inm, i == 0 || stale || dirty) {
                Found::Answered(response) => return Ok(Step::Done(response)),
                Found::Promote(entry) => entry,
            };
            // A fresh lower-tier hit: stream it while promoting it to tier 0.
            if let Some(flight) = self.flight(key) {
                return self.join(&flight, inm).await;
            }
            let lead = self.lead(key);
            let place = Placement::kept(entry.size, i);
            let plan = self
                .plan(
                    key,
                    generation,
                    &entry.meta,
                    place,
                    self.lower_tiers(1, i),
                    true,
                    dirty,
                )
                .await;
            let stored = !plan.sinks.is_empty();
            let reader = self.start_fill(entry.meta, place.size, entry.body, plan, Some(lead));
            return Ok(Step::Done(fill_response(reader, source, stored)));
        }
        if let Some(flight) = self.flight(key) {
            return self.join(&flight, inm).await;
        }
        let Some(origin) = origin.take() else {
            return Err(Error::Other(
                "the origin was already handed to a refresh".into(),
            ));
        };
        let lead = self.lead(key);
        let fetched = match origin.fetch(key, held.as_ref().map(|(_, meta)| meta)).await {
            Ok(fetched) => fetched,
            Err(e) => {
                lead.answer(Answer::Retry(e.clone()));
                if let Some((i, meta)) = &held
                    && let Some(response) = self.stale_if_error(key, *i, meta, inm).await
                {
                    return Ok(Step::Done(response));
                }
                return Err(e);
            }
        };
        let all_lower = self.lower_tiers(1, self.tiers.len());
        match fetched {
            Fetched::NotFound => {
                let meta = Metadata::negative_at(self.rt.now_ms());
                if !dirty {
                    self.write_negative(key, generation, &meta, 0..1).await;
                    self.submit_copy(key, generation, 0, all_lower);
                }
                lead.answer(Answer::NotFound(meta.clone()));
                let mut response =
                    Response::without_body(Status::NotFound, meta, Source::Origin, false);
                response.stored = !dirty;
                Ok(Step::Done(response))
            }
            Fetched::NotModified | Fetched::Revalidated(_) => {
                // Serve our copy again from the tier that holds it, and
                // write it back to tier 0 with a new `cached-at` (and the
                // origin's new metadata, when it sent some).
                let renewed = match fetched {
                    Fetched::Revalidated(meta) => Some(meta),
                    _ => None,
                };
                let vanished = || {
                    Error::Other(
                        "the origin answered not-modified but the cached copy is gone".into(),
                    )
                };
                let Some((i, _)) = held else {
                    lead.answer(Answer::Retry(vanished()));
                    return Ok(Step::Done(not_found()));
                };
                let entry = match self.tiers[i].get(key).await {
                    Ok(Some(entry)) if !entry.meta.negative => entry,
                    _ => {
                        lead.answer(Answer::Retry(vanished()));
                        return Ok(Step::Done(not_found()));
                    }
                };
                let meta = confirmed(renewed, entry.meta, self.rt.now_ms());
                let place = Placement::kept(entry.size, i + 1);
                self.serve_fill(
                    key,
                    generation,
                    meta,
                    entry.body,
                    place,
                    Vec::new(),
                    dirty,
                    inm,
                    lead,
                    Source::Tier(i as u32),
                )
                .await
            }
            Fetched::Body {
                mut meta,
                body,
                no_store,
                size,
            } => {
                meta.cached_at = Some(received_at(&meta, self.rt.now_ms()));
                meta.negative = false;
                // A body the origin forbids storing is served like a dirty
                // request's: no sink, so no commit and no copy.
                let copy_after = if no_store { Vec::new() } else { all_lower };
                let place = Placement::new_version(size, self.tiers.len());
                self.serve_fill(
                    key,
                    generation,
                    meta,
                    body,
                    place,
                    copy_after,
                    dirty || no_store,
                    inm,
                    lead,
                    Source::Origin,
                )
                .await
            }
        }
    }

    /// The origin failed: answer with the expired positive entry of tier
    /// `tier` if it is at most `stale-if-error` past its freshness window.
    /// Nothing is written and no refresh is scheduled.
    async fn stale_if_error(
        &self,
        key: &str,
        tier: usize,
        held: &Metadata,
        inm: Option<&str>,
    ) -> Option<Response<R>> {
        let grace = held.stale_if_error.unwrap_or(self.config.stale_if_error);
        let cached_at = held.cached_at?;
        if grace == 0 || held.negative {
            return None;
        }
        let window = held.fresh_for.unwrap_or(self.config.windows(tier).0);
        let age = self.rt.now_ms().saturating_sub(cached_at);
        if age >= window.saturating_add(grace) {
            return None;
        }
        let Entry { meta, size, body } = match self.tiers[tier].get(key).await {
            Ok(Some(entry)) if !entry.meta.negative && entry.meta.cached_at == Some(cached_at) => {
                entry
            }
            _ => return None,
        };
        let source = Source::Tier(tier as u32);
        if inm.is_some_and(|inm| if_none_match(inm, &meta.tag)) {
            return Some(Response::without_body(
                Status::NotModified,
                meta,
                source,
                true,
            ));
        }
        Some(Response {
            status: Status::Ok,
            meta,
            source,
            stale: true,
            stored: false,
            body: Some(ResponseBody::Direct { body, size }),
        })
    }

    /// Start the fill of a leader's fetched (or revalidated) body and
    /// answer with it, or with not-modified when the caller's
    /// `If-None-Match` matches (the fill then completes unread).
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per origin answer; a struct would only rename them"
    )]
    async fn serve_fill(
        self: &Rc<Self>,
        key: &str,
        generation: u64,
        meta: Metadata,
        body: R::Body,
        place: Placement,
        copy_after: Vec<u32>,
        dirty: bool,
        inm: Option<&str>,
        lead: Lead<R>,
        source: Source,
    ) -> Result<Step<R>> {
        let matched = inm.is_some_and(|inm| if_none_match(inm, &meta.tag));
        let plan = self
            .plan(key, generation, &meta, place, copy_after, !matched, dirty)
            .await;
        let answer_meta = meta.clone();
        let stored = self.keeps_whole(&plan, key, &meta, place.size);
        let reader = self.start_fill(meta, place.size, body, plan, Some(lead));
        if matched {
            drop(reader);
            let mut response =
                Response::without_body(Status::NotModified, answer_meta, source, false);
            response.stored = stored;
            return Ok(Step::Done(response));
        }
        Ok(Step::Done(fill_response(reader, source, stored)))
    }

    /// Join another request's fetch or promotion of `key`.
    async fn join(&self, flight: &Rc<Flight>, inm: Option<&str>) -> Result<Step<R>> {
        match flight.wait().await {
            Answer::NotFound(meta) => Ok(Step::Done(Response::without_body(
                Status::NotFound,
                meta,
                Source::Joined,
                false,
            ))),
            Answer::Retry(why) => Ok(Step::Again(why)),
            Answer::Fill(fill) => {
                if inm.is_some_and(|inm| if_none_match(inm, &fill.meta().tag)) {
                    let meta = fill.meta().clone();
                    return Ok(Step::Done(Response::without_body(
                        Status::NotModified,
                        meta,
                        Source::Joined,
                        false,
                    )));
                }
                match fill.join() {
                    Some(reader) => Ok(Step::Done(fill_response(reader, Source::Joined, false))),
                    None => {
                        // Too late to read from the first byte: wait for the
                        // fill to land in its tier and look again.
                        fill.settled().await;
                        Ok(Step::Again(Error::Other("the joined fill failed".into())))
                    }
                }
            }
        }
    }

    /// Whether a fill's answer may say its body is stored: a tier's sink
    /// is open and that tier keeps the body whatever its length. A body of
    /// unknown length may outgrow a tier that bounds its entries and be
    /// dropped after its answer has gone, so that answer says nothing.
    fn keeps_whole(
        &self,
        plan: &FillPlan<R>,
        key: &str,
        meta: &Metadata,
        size: Option<u64>,
    ) -> bool {
        plan.sinks.first().is_some_and(|(tier, _)| {
            size.is_some() || self.tiers[*tier as usize].admits(key, meta, u64::MAX)
        })
    }

    /// The tier a fill is written to: the first of `place.within` that
    /// admits it, tier 0 when its size is unknown.
    fn place(&self, key: &str, meta: &Metadata, place: Placement) -> Option<usize> {
        let tiers = &self.tiers[..place.within];
        match place.size {
            None => (!tiers.is_empty()).then_some(0),
            Some(size) => tiers.iter().position(|t| t.admits(key, meta, size)),
        }
    }

    /// Open the sink of a fill in the tier `place` picks (none for dirty
    /// requests, or when no tier admits it or the tier refuses; the body
    /// is still served), copying to the tiers of `copy_after` below it.
    #[expect(
        clippy::too_many_arguments,
        reason = "each names one part of the fill's plan"
    )]
    async fn plan(
        &self,
        key: &str,
        generation: u64,
        meta: &Metadata,
        place: Placement,
        copy_after: Vec<u32>,
        needs_reader: bool,
        dirty: bool,
    ) -> FillPlan<R> {
        if dirty {
            return FillPlan::unwritten(key, generation, needs_reader);
        }
        let plan = self.place_fill(key, generation, meta, place, copy_after, needs_reader);
        plan.await
            .unwrap_or_else(|_| FillPlan::unwritten(key, generation, needs_reader))
    }

    /// The plan of a fill written to the tier `place` picks (no sink when
    /// none admits it), superseding the tiers above it and copying to the
    /// tiers of `copy_after` below it; an error when that tier refuses.
    async fn place_fill(
        &self,
        key: &str,
        generation: u64,
        meta: &Metadata,
        place: Placement,
        mut copy_after: Vec<u32>,
        needs_reader: bool,
    ) -> Result<FillPlan<R>> {
        let top = self.place(key, meta, place);
        let mut sinks = Vec::new();
        if let Some(top) = top {
            sinks.push((top as u32, self.tiers[top].begin_write(key, meta).await?));
        }
        let written = top.unwrap_or(0) as u32;
        copy_after.retain(|&t| t > written);
        Ok(FillPlan {
            key: key.to_owned(),
            generation,
            sinks,
            supersede: place.superseded(top),
            written,
            copy_after,
            needs_reader,
            flight: None,
        })
    }

    /// Spawn the pump of a fill of `size` bytes, when stated, and return
    /// its first reader.
    fn start_fill(
        self: &Rc<Self>,
        meta: Metadata,
        size: Option<u64>,
        source: R::Body,
        mut plan: FillPlan<R>,
        lead: Option<Lead<R>>,
    ) -> FillReader {
        let window = if lead.is_some() {
            self.config.join_window
        } else {
            0
        };
        let fill = Fill::new(meta, size, window);
        let reader = fill.join().expect("a new fill is joinable");
        if let Some(lead) = lead {
            plan.flight = Some(Rc::clone(&lead.flight));
            lead.answer(Answer::Fill(Rc::clone(&fill)));
        }
        let inner = Rc::clone(self);
        self.rt
            .spawn(async move { inner.pump(&fill, source, plan).await });
        reader
    }

    /// Read `source` to its end, hand each chunk to the fill's readers and
    /// the sinks, and commit only a complete body read by someone (or by
    /// nobody, for background fills) whose key kept its generation.
    async fn pump(&self, fill: &Fill, mut source: R::Body, plan: FillPlan<R>) {
        let FillPlan {
            key,
            generation,
            mut sinks,
            supersede,
            written,
            copy_after,
            needs_reader,
            flight,
        } = plan;
        let planned = !sinks.is_empty();
        let result = loop {
            fill.room().await;
            if needs_reader && fill.readers() == 0 && !fill.finished() {
                break Err(Error::Other("every reader left before the end".into()));
            }
            match source.next().await {
                Some(Ok(chunk)) => {
                    if !sinks.is_empty() && !write_all(&mut sinks, &chunk).await {
                        sinks.clear();
                    }
                    fill.push(chunk);
                }
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            }
        };
        let ok = result.is_ok();
        fill.end(result);
        let read = !needs_reader || (ok && fill.read_to_end().await);
        // A sink whose write failed was dropped: nothing is written then.
        let dropped = planned && sinks.is_empty();
        if ok && read && !dropped && self.generation(&key) == generation {
            let mut committed = true;
            let mut tiers = Vec::with_capacity(sinks.len());
            for (tier, sink) in sinks.drain(..) {
                committed &= sink.commit().await.is_ok();
                tiers.push(tier);
            }
            // A `delete` or `set` of the key may have come while a commit
            // was under way (a file tier renames on another thread), after
            // the check above: what this fill wrote is then out of date,
            // and goes rather than outlive them.
            if self.generation(&key) != generation {
                for &tier in tiers.iter().rev() {
                    let tier = &self.tiers[tier as usize];
                    // Unless what it holds now is no longer this fill's.
                    if tier.stat(&key).await.ok().flatten().as_ref() == Some(fill.meta()) {
                        let _ = tier.delete(&key).await;
                    }
                }
                committed = false;
            }
            if committed {
                // Upper tiers first gave way to a new version written
                // below them (or to none): their entry goes, lowest first.
                for &tier in supersede.iter().rev() {
                    if self.generation(&key) == generation {
                        let _ = self.tiers[tier as usize].delete(&key).await;
                    }
                }
                if planned {
                    self.submit_copy(&key, generation, written, copy_after);
                }
            }
        }
        fill.settle();
        if let Some(flight) = flight {
            self.end_flight(&key, &flight);
        }
    }

    async fn write_negative(
        &self,
        key: &str,
        generation: u64,
        meta: &Metadata,
        tiers: std::ops::Range<usize>,
    ) {
        for tier in &self.tiers[tiers] {
            if let Ok(sink) = tier.begin_write(key, meta).await
                && self.generation(key) == generation
            {
                let _ = sink.commit().await;
            }
        }
    }

    async fn refresh(self: &Rc<Self>, key: &str, generation: u64, origin: R::Origin) -> Result<()> {
        if self.generation(key) != generation {
            return Ok(());
        }
        let mut held = None;
        for (i, tier) in self.tiers.iter().enumerate() {
            if let Ok(Some(meta)) = tier.stat(key).await {
                held = Some((i, meta));
                break;
            }
        }
        let all_lower = self.lower_tiers(1, self.tiers.len());
        let fetched = origin
            .fetch(key, held.as_ref().map(|(_, meta)| meta))
            .await?;
        match fetched {
            Fetched::NotFound => {
                let meta = Metadata::negative_at(self.rt.now_ms());
                self.write_negative(key, generation, &meta, 0..1).await;
                self.submit_copy(key, generation, 0, all_lower);
                Ok(())
            }
            Fetched::NotModified | Fetched::Revalidated(_) => {
                let renewed = match fetched {
                    Fetched::Revalidated(meta) => Some(meta),
                    _ => None,
                };
                let Some((i, _)) = held else {
                    return Err(Error::NotFound);
                };
                let Some(entry) = self.tiers[i].get(key).await? else {
                    return Err(Error::NotFound);
                };
                let meta = confirmed(renewed, entry.meta, self.rt.now_ms());
                let place = Placement::kept(entry.size, i + 1);
                self.background_fill(key, generation, meta, entry.body, place, Vec::new())
                    .await
            }
            // Nothing to store; the held copy stays as it was.
            Fetched::Body { no_store: true, .. } => Ok(()),
            Fetched::Body {
                mut meta,
                body,
                no_store: false,
                size,
            } => {
                meta.cached_at = Some(received_at(&meta, self.rt.now_ms()));
                meta.negative = false;
                let place = Placement::new_version(size, self.tiers.len());
                self.background_fill(key, generation, meta, body, place, all_lower)
                    .await
            }
        }
    }

    /// Write `body` with nobody reading to the tier `place` picks (none
    /// when no tier admits it), then schedule the copy.
    async fn background_fill(
        &self,
        key: &str,
        generation: u64,
        meta: Metadata,
        body: R::Body,
        place: Placement,
        copy_after: Vec<u32>,
    ) -> Result<()> {
        let plan = self
            .place_fill(key, generation, &meta, place, copy_after, false)
            .await?;
        if plan.sinks.is_empty() && plan.supersede.is_empty() {
            return Ok(());
        }
        let fill = Fill::new(meta, place.size, 0);
        self.pump(&fill, body, plan).await;
        Ok(())
    }

    async fn copy(&self, key: &str, generation: u64, source: u32, targets: &[u32]) -> Result<()> {
        let tier = |i: u32| {
            self.tiers
                .get(i as usize)
                .ok_or_else(|| Error::Other(format!("no tier {i}")))
        };
        if self.generation(key) != generation {
            return Ok(());
        }
        let Some(entry) = tier(source)?.get(key).await? else {
            return Ok(());
        };
        let mut sinks = Vec::with_capacity(targets.len());
        for &target in targets {
            sinks.push((target, tier(target)?.begin_write(key, &entry.meta).await?));
        }
        let plan = FillPlan {
            sinks,
            written: source,
            ..FillPlan::unwritten(key, generation, false)
        };
        let fill = Fill::new(entry.meta, Some(entry.size), 0);
        self.pump(&fill, entry.body, plan).await;
        Ok(())
    }
}

/// What an entry answers without its body: not-found when it is
/// negative, not-modified when `inm` matches its tag; `None` when the
/// answer is its body.
fn answer_by_meta(meta: &Metadata, inm: Option<&str>) -> Option<Status> {
    if meta.negative {
        Some(Status::NotFound)
    } else if inm.is_some_and(|inm| if_none_match(inm, &meta.tag)) {
        Some(Status::NotModified)
    } else {
        None
    }
}

/// What an entry found in a tier comes to.
enum Found<R: Runtime> {
    /// The answer, from the entry alone.
    Answered(Response<R>),
    /// The entry back, to be promoted while it is streamed.
    Promote(Entry<R::Body>),
}

/// What `entry` answers by itself: not-found when it is negative,
/// not-modified when `inm` matches its tag, else its body when
/// `with_body`; otherwise the entry back (a fresh lower-tier hit, to be
/// promoted).
fn answer_from<R: Runtime>(
    entry: Entry<R::Body>,
    source: Source,
    stale: bool,
    inm: Option<&str>,
    with_body: bool,
) -> Found<R> {
    if let Some(status) = answer_by_meta(&entry.meta, inm) {
        return Found::Answered(Response::without_body(status, entry.meta, source, stale));
    }
    if !with_body {
        return Found::Promote(entry);
    }
    let Entry { meta, size, body } = entry;
    Found::Answered(Response {
        status: Status::Ok,
        meta,
        source,
        stale,
        stored: false,
        body: Some(ResponseBody::Direct { body, size }),
    })
}

/// When an origin body counts as cached: now, or earlier when the origin
/// said its answer was already that old (an HTTP `Age`), never later.
fn received_at(meta: &Metadata, now: u64) -> u64 {
    meta.cached_at.map_or(now, |at| at.min(now))
}

/// The metadata of a copy the origin confirmed at `now`: the metadata it
/// sent (`renewed`, cached as of its age), else the copy's own, cached now.
fn confirmed(renewed: Option<Metadata>, held: Metadata, now: u64) -> Metadata {
    let mut meta = match renewed {
        Some(meta) => Metadata {
            cached_at: Some(received_at(&meta, now)),
            ..meta
        },
        None => Metadata {
            cached_at: Some(now),
            ..held
        },
    };
    meta.negative = false;
    meta
}

/// A response reading a fill; `stored` when the fill writes a tier.
fn fill_response<R: Runtime>(reader: FillReader, source: Source, stored: bool) -> Response<R> {
    let meta = reader.meta().clone();
    Response {
        status: Status::Ok,
        meta,
        source,
        stale: false,
        stored,
        body: Some(ResponseBody::Fill(reader)),
    }
}

fn not_found<R: Runtime>() -> Response<R> {
    Response::without_body(Status::NotFound, Metadata::default(), Source::Origin, false)
}

/// Write `chunk` to every sink; false if any write failed (the fill then
/// drops them all, which aborts them).
async fn write_all<S: Sink>(sinks: &mut [(u32, S)], chunk: &[u8]) -> bool {
    for (_, sink) in sinks.iter_mut() {
        if sink.write(chunk.to_vec()).await.is_err() {
            return false;
        }
    }
    true
}

/// A direct write of one key into tier 0, from [`Engine::set`]. Dropping
/// it without `commit` aborts the write.
pub struct Writer<R: Runtime> {
    inner: Rc<Inner<R>>,
    key: String,
    generation: u64,
    sink: R::Sink,
}

impl<R: Runtime> Writer<R> {
    /// Append `data`.
    pub async fn write(&mut self, data: Vec<u8>) -> Result<()> {
        self.sink.write(data).await
    }

    /// Publish the entry, unless a later `set` or `delete` of the key came
    /// first (`Invalidated`). Lower tiers receive a copy in the background.
    pub async fn commit(self) -> Result<()> {
        let Writer {
            inner,
            key,
            generation,
            sink,
        } = self;
        if inner.generation(&key) != generation {
            return Err(Error::Invalidated);
        }
        sink.commit().await?;
        let lower = inner.lower_tiers(1, inner.tiers.len());
        if !lower.is_empty() {
            let job = Job {
                key: key.clone(),
                generation,
                kind: JobKind::Copy {
                    source: 0,
                    targets: lower,
                },
            };
            if inner.rt.submit(job, None).is_err() {
                // No copy will come: make sure no lower tier keeps the old body.
                for tier in inner.tiers[1..].iter().rev() {
                    let _ = tier.delete(&key).await;
                }
            }
        }
        Ok(())
    }
}
