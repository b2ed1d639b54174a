//! The proxy-wasm glue: reads headers and bodies through the ABI, asks
//! [`crate::rules`], and acts on the answer. No decision is made here.
//!
//! One plugin instance (one root context and its state) lives on each
//! Envoy worker thread. Stream contexts share their root's state through
//! an `Rc<RefCell<..>>`: callbacks of one instance never run concurrently
//! and never nest, so a borrow is never contended.
//!
//! Background refreshes are sent by the root context from its tick, not by
//! the stream that served stale: Envoy cancels a stream context's callouts
//! when the stream ends, and a stale answer ends it at once.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use daramjwee_component::http::{CACHE_STATUS, Forward, Served, cache_status};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::rules::{
    Capture, Head, Outcome, Plan, Refresh, Refresher, Reply, Request, Verdict, judge, plan,
    refreshed,
};
use crate::{Entry, LocalTier, Settings};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { state: None }) });
}}

/// One plugin instance's cache.
struct State {
    settings: Settings,
    tier: LocalTier,
    refresher: Refresher,
}

type Shared = Rc<RefCell<State>>;

fn log(level: LogLevel, message: &str) {
    // The host's answer to a log line is not worth failing a request over.
    let _ = proxy_wasm::hostcalls::log(level, message);
}

fn now_ms(context: &dyn Context) -> u64 {
    context
        .get_current_time()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

struct Root {
    state: Option<Shared>,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let Some(job) = state.borrow_mut().refresher.answered(token) else {
            return;
        };
        // A failed callout has no headers; reading them is not asked then.
        let pairs = if num_headers > 0 {
            self.get_http_call_response_headers_bytes()
        } else {
            Vec::new()
        };
        let head = Head::from_pairs(pairs.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
        let max_body = state.borrow().settings.max_body;
        let body = if body_size > 0 && body_size as u64 <= max_body {
            self.get_http_call_response_body(0, body_size)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let now = now_ms(self);
        let mut st = state.borrow_mut();
        let st = &mut *st;
        let old = match st.tier.get(&job.key) {
            Some(entry) => Some(entry.clone()),
            None => shared::read(&st.settings, &job.key),
        };
        match refreshed(old.as_ref(), &head, &body, body_size, now, &st.settings) {
            Outcome::Replace(entry) => {
                shared::write(&st.settings, &job.key, Some(&entry));
                st.tier.insert(job.key, entry);
            }
            Outcome::Remove => {
                shared::write(&st.settings, &job.key, None);
                st.tier.remove(&job.key);
            }
            Outcome::Keep => log(
                LogLevel::Debug,
                &format!(
                    "daramjwee: refresh of {} failed (status {:?}); keeping the stale copy",
                    job.key, head.status
                ),
            ),
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let settings = match Settings::from_json(&bytes) {
            Ok(settings) => settings,
            Err(e) => {
                log(LogLevel::Error, &format!("daramjwee: {e}"));
                return false;
            }
        };
        if settings.upstream.is_some() {
            self.set_tick_period(settings.refresh_tick());
        }
        log(
            LogLevel::Info,
            &format!(
                "daramjwee: {} bytes, {}, bodies up to {} bytes, refresh via {}, shared data {}",
                settings.capacity,
                settings.policy,
                settings.max_body,
                settings.upstream.as_deref().unwrap_or("(none)"),
                if settings.shared_data.is_some() {
                    "on"
                } else {
                    "off"
                },
            ),
        );
        self.state = Some(Rc::new(RefCell::new(State {
            tier: LocalTier::new(settings.capacity, settings.policy),
            settings,
            refresher: Refresher::default(),
        })));
        true
    }

    fn on_tick(&mut self) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let (jobs, upstream, timeout) = {
            let mut st = state.borrow_mut();
            let Some(upstream) = st.settings.upstream.clone() else {
                return;
            };
            let timeout = Duration::from_millis(st.settings.upstream_timeout);
            (st.refresher.take_queued(), upstream, timeout)
        };
        for job in jobs {
            match self.dispatch_http_call(&upstream, job.headers(), None, Vec::new(), timeout) {
                Ok(token) => state.borrow_mut().refresher.sent(token, job),
                Err(status) => {
                    log(
                        LogLevel::Warn,
                        &format!(
                            "daramjwee: cannot refresh {} through cluster {upstream}: {status:?}",
                            job.key
                        ),
                    );
                    state.borrow_mut().refresher.not_sent(&job);
                }
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            state: self.state.clone(),
            phase: Phase::Pass,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Where one request stands.
enum Phase {
    /// Nothing to do.
    Pass,
    /// Answered locally; the local reply passing back through this filter
    /// is left alone.
    Served,
    /// A miss: capture the response.
    Capture(Capture),
    /// A HEAD miss: relayed, not stored.
    Relay,
    /// An unsafe method: drop the entry once the origin accepts it.
    Invalidate(String),
}

struct Stream {
    state: Option<Shared>,
    phase: Phase,
}

impl Context for Stream {}

impl Stream {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.get_http_request_header_bytes(name)
    }

    fn reply(&mut self, reply: Reply) -> Action {
        self.phase = Phase::Served;
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        self.send_http_response(reply.status, headers, reply.body.as_deref());
        Action::Pause
    }

    fn lookup(&mut self, state: &Shared, key: String, head: bool, req: &Request<'_>) -> Action {
        let now = now_ms(self);
        let mut st = state.borrow_mut();
        let st = &mut *st;
        let can_refresh = st.settings.upstream.is_some();
        let judged = |entry: &Entry, tier| {
            let verdict = judge(
                entry,
                now,
                &st.settings,
                tier,
                req.if_none_match,
                head,
                can_refresh,
            );
            (verdict != Verdict::Miss).then_some(verdict)
        };
        // The worker's own tier first; shared data when it has nothing
        // usable (another worker may have fetched or refreshed the key).
        let mut found = st
            .tier
            .get(&key)
            .cloned()
            .and_then(|entry| Some((judged(&entry, 0)?, entry)));
        if found.is_none()
            && let Some(entry) = shared::read(&st.settings, &key)
            && let Some(verdict) = judged(&entry, 1)
        {
            // Promote: the next hit on this worker stays off shared data.
            st.tier.insert(key.clone(), entry.clone());
            found = Some((verdict, entry));
        }
        let Some((verdict, entry)) = found else {
            self.phase = Self::miss(key, head);
            return Action::Continue;
        };
        match verdict {
            Verdict::Hit(reply) => self.reply(reply),
            Verdict::Stale(reply) => {
                let upstream = st.settings.upstream.as_deref().unwrap_or_default();
                if let Some(job) = Refresh::new(&key, req, &entry, upstream) {
                    st.refresher.request(job);
                }
                self.reply(reply)
            }
            Verdict::Miss => {
                self.phase = Self::miss(key, head);
                Action::Continue
            }
        }
    }

    fn miss(key: String, head: bool) -> Phase {
        if head {
            Phase::Relay
        } else {
            Phase::Capture(Capture::new(key))
        }
    }

    fn response_head(&self) -> Head {
        let pairs = self.get_http_response_headers_bytes();
        Head::from_pairs(pairs.iter().map(|(n, v)| (n.as_str(), v.as_slice())))
    }

    fn store(&self, state: &Shared, capture: Capture) {
        let mut st = state.borrow_mut();
        let st = &mut *st;
        let key = capture.key().to_owned();
        let Some((key, entry)) = capture.finish(&st.settings) else {
            log(
                LogLevel::Debug,
                &format!("daramjwee: not storing {key} (not cacheable or over max-body)"),
            );
            return;
        };
        shared::write(&st.settings, &key, Some(&entry));
        if !st.tier.insert(key.clone(), entry) {
            log(
                LogLevel::Debug,
                &format!("daramjwee: {key} not admitted by the eviction policy"),
            );
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(state) = self.state.clone() else {
            return Action::Continue;
        };
        let method = self.header(":method").unwrap_or_default();
        let path = self.header(":path");
        let authority = self.header(":authority");
        let inm = self.header("if-none-match");
        let req = Request {
            method: &method,
            path: path.as_deref(),
            authority: authority.as_deref(),
            if_none_match: inm.as_deref(),
            authorization: self.header("authorization").is_some(),
            range: self.header("range").is_some(),
        };
        let planned = plan(&state.borrow().settings, &req);
        match planned {
            Plan::Pass => Action::Continue,
            Plan::Invalidate { key } => {
                self.phase = Phase::Invalidate(key);
                Action::Continue
            }
            Plan::Lookup { key, head } => self.lookup(&state, key, head, &req),
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(state) = self.state.clone() else {
            return Action::Continue;
        };
        match std::mem::replace(&mut self.phase, Phase::Pass) {
            Phase::Capture(mut capture) => {
                let head = self.response_head();
                let now = now_ms(self);
                let status = capture.headers(head, now, &state.borrow().settings);
                self.add_http_response_header(CACHE_STATUS, &status);
                if end_of_stream {
                    self.store(&state, capture);
                } else {
                    self.phase = Phase::Capture(capture);
                }
            }
            Phase::Relay => {
                let forward = Forward {
                    fetched: true,
                    status: self.response_head().status,
                    no_store: true,
                };
                self.add_http_response_header(
                    CACHE_STATUS,
                    &cache_status(Served::Origin, &forward),
                );
            }
            Phase::Invalidate(key) => {
                if self.response_head().status.is_some_and(|s| s < 400) {
                    let mut st = state.borrow_mut();
                    st.tier.remove(&key);
                    shared::write(&st.settings, &key, None);
                }
            }
            other => self.phase = other,
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(state) = self.state.clone() else {
            return Action::Continue;
        };
        let wants = match &mut self.phase {
            Phase::Capture(capture) => capture.wants(body_size, &state.borrow().settings),
            _ => false,
        };
        // Each chunk goes on to the client at once (the filter answers
        // Continue); only the copy kept for the cache is bounded.
        if wants
            && let Some(chunk) = self.get_http_response_body(0, body_size)
            && let Phase::Capture(capture) = &mut self.phase
        {
            capture.push(&chunk);
        }
        if end_of_stream
            && let Phase::Capture(capture) = std::mem::replace(&mut self.phase, Phase::Pass)
        {
            self.store(&state, capture);
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        if let (Some(state), Phase::Capture(capture)) = (
            self.state.clone(),
            std::mem::replace(&mut self.phase, Phase::Pass),
        ) {
            self.store(&state, capture);
        }
        Action::Continue
    }
}

/// The optional second tier in Envoy shared data.
///
/// The SDK's shared-data calls panic on any status they do not expect
/// (a host refusing a large value answers `INTERNAL_FAILURE`), and a panic
/// poisons the plugin instance, so these two calls are made here with every
/// status handled.
mod shared {
    use super::{LogLevel, log};
    use crate::{Entry, Settings};

    const OK: u32 = 0;
    const NOT_FOUND: u32 = 1;
    const CAS_MISMATCH: u32 = 8;

    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        fn proxy_get_shared_data(
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
            return_cas: *mut u32,
        ) -> u32;
        fn proxy_set_shared_data(
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
    }

    /// The value under `key` and its CAS, `Ok(None)` when absent.
    fn get(key: &str) -> Result<Option<(Vec<u8>, u32)>, u32> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        let mut cas: u32 = 0;
        // SAFETY: the out-pointers are valid locals; on OK the host wrote
        // into `data` a buffer of `size` bytes it got from this module's
        // `proxy_on_memory_allocate`, which allocates it as a `Vec<u8>` of
        // that capacity, so this module owns it now.
        let status = unsafe {
            proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
        };
        match status {
            OK if data.is_null() => Ok(Some((Vec::new(), cas))),
            // SAFETY: see above.
            OK => Ok(Some((
                unsafe { Vec::from_raw_parts(data, size, size) },
                cas,
            ))),
            NOT_FOUND => Ok(None),
            other => Err(other),
        }
    }

    fn set(key: &str, value: &[u8], cas: u32) -> u32 {
        // SAFETY: pointers and lengths come from live slices.
        unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) }
    }

    fn shared_key(prefix: &str, key: &str) -> String {
        let mut k = String::with_capacity(prefix.len() + key.len());
        k.push_str(prefix);
        k.push_str(key);
        k
    }

    /// The entry other workers left under `key`, if shared data is on.
    pub(super) fn read(settings: &Settings, key: &str) -> Option<Entry> {
        let sd = settings.shared_data.as_ref()?;
        let (value, _) = get(&shared_key(&sd.prefix, key)).ok()??;
        if value.is_empty() {
            // A tombstone: removed.
            return None;
        }
        match Entry::decode(&value) {
            Ok(entry) => Some(entry),
            Err(e) => {
                log(LogLevel::Debug, &format!("daramjwee: {key}: {e}"));
                None
            }
        }
    }

    /// Publish `entry` (or a tombstone for `None`) under `key`, unless
    /// another worker published a newer copy; a concurrent write (CAS
    /// mismatch) wins over this one. Shared data has no removal and no
    /// eviction, so a tombstone is an empty value, and an entry over
    /// `max-entry` is published as a tombstone too, so no older copy
    /// outlives it.
    pub(super) fn write(settings: &Settings, key: &str, entry: Option<&Entry>) {
        let Some(sd) = settings.shared_data.as_ref() else {
            return;
        };
        let skey = shared_key(&sd.prefix, key);
        let mut value = entry.map(Entry::encode).unwrap_or_default();
        if value.len() as u64 > sd.max_entry {
            value.clear();
        }
        let cas = match get(&skey) {
            Ok(Some((current, cas))) => {
                let newer = Entry::decode(&current).ok().and_then(|c| c.meta.cached_at)
                    > entry.and_then(|e| e.meta.cached_at);
                if newer && !value.is_empty() {
                    return;
                }
                cas
            }
            Ok(None) => 0,
            Err(status) => {
                log(
                    LogLevel::Debug,
                    &format!("daramjwee: shared data read of {key} refused ({status})"),
                );
                return;
            }
        };
        match set(&skey, &value, cas) {
            OK | CAS_MISMATCH => {}
            status => log(
                LogLevel::Debug,
                &format!("daramjwee: shared data write of {key} refused ({status})"),
            ),
        }
    }
}
