//! The daramjwee proxy-wasm filter under a real proxy-wasm host
//! (`proxy-wasm-host` on wasmtime): the `.wasm` built for `wasm32-wasip1`
//! is loaded as is and driven through the ABI the way a proxy drives it.
//!
//! The proxy side is played here: an `Origin` answers the requests the
//! filter lets through, body chunk by body chunk, and counts them, so every
//! test can tell a local answer from an upstream one.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use proxy_wasm_host::abi::v0_2_1::ContextId;
use proxy_wasm_host::abi::v0_2_1::types::{Action, BufferType, LogLevel, MapType, Status};
use proxy_wasm_host::abi::v0_2_1::{
    Access, CalloutId, Callouts, Clock, Guest, GuestError, Host, HttpCall, HttpCallRefusal,
    HttpCallResponse, InMemoryStore, InMemoryStoreLimits, Invocation, LocalResponse, LogContext,
    LogSink, NoStream, PluginConfig, Started, StreamKind, StreamState, VmServices,
};
use proxy_wasm_host::{Buffer, Engine, HeaderMap, HeaderMapExt, Limits, Module, VecHeaderMap};

/// Where the filter is, unless `DARAMJWEE_PROXY_WASM` says otherwise: the
/// workspace's default target directory.
const DEFAULT_WASM: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../target/wasm32-wasip1/release/daramjwee_proxy_wasm.wasm"
);

/// One engine and one compiled module for every test: compiling takes a
/// few hundred ms.
fn compiled() -> &'static (Engine, Module) {
    static MODULE: OnceLock<(Engine, Module)> = OnceLock::new();
    MODULE.get_or_init(|| {
        let path = std::env::var("DARAMJWEE_PROXY_WASM").unwrap_or_else(|_| DEFAULT_WASM.into());
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read the filter at {path}: {e}\n\
                 build it with `cargo build --release --target wasm32-wasip1 -p daramjwee-proxy-wasm` \
                 and point DARAMJWEE_PROXY_WASM at the .wasm (examples/proxy-wasm/run-tests.sh does both)"
            )
        });
        let engine = Engine::new().expect("engine");
        let module = Module::new(&engine, &bytes).expect("the filter compiles");
        (engine, module)
    })
}

#[derive(Default)]
struct Logs(Mutex<Vec<String>>);

impl LogSink for Logs {
    fn log(&self, _: LogContext<'_>, _: LogLevel, message: &[u8]) {
        self.0
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(message).into_owned());
    }
}

impl Logs {
    fn contains(&self, needle: &str) -> bool {
        self.0.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

/// A clock the tests move by hand, so freshness windows need no sleeping.
struct TestClock(AtomicU64);

impl Clock for TestClock {
    fn realtime_nanos(&self) -> u64 {
        self.0.load(Ordering::SeqCst) * 1_000_000
    }
    fn monotonic_nanos(&self) -> u64 {
        self.realtime_nanos()
    }
}

const START_MS: u64 = 1_700_000_000_000;

/// The callouts the filter opened, kept for the test to answer.
#[derive(Default)]
struct Recorder(Mutex<Vec<(Invocation, CalloutId, HttpCall<'static>)>>);

impl Callouts for Recorder {
    fn http_call(
        &self,
        call: Invocation,
        callout: CalloutId,
        request: HttpCall<'_>,
    ) -> Result<(), HttpCallRefusal> {
        if request.upstream.as_ref() != b"origin" {
            return Err(HttpCallRefusal::UnknownUpstream);
        }
        self.0
            .lock()
            .unwrap()
            .push((call, callout, request.into_owned()));
        Ok(())
    }
}

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn pairs(list: &[(&str, &str)]) -> Pairs {
    list.iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// What an origin answers: status and headers, then the body in chunks.
#[derive(Clone)]
struct Answer {
    headers: Pairs,
    chunks: Vec<Vec<u8>>,
}

fn answer(status: u16, headers: &[(&str, &str)], chunks: &[&[u8]]) -> Answer {
    let mut all = pairs(&[(":status", &status.to_string())]);
    all.extend(pairs(headers));
    Answer {
        headers: all,
        chunks: chunks.iter().map(|c| c.to_vec()).collect(),
    }
}

/// The upstream: an answer per path, and a count of what reached it.
#[derive(Default)]
struct Origin {
    answers: HashMap<String, Answer>,
    asked: Vec<String>,
}

impl Origin {
    fn with(mut self, path: &str, a: Answer) -> Self {
        self.answers.insert(path.into(), a);
        self
    }
    fn times(&self, path: &str) -> usize {
        self.asked.iter().filter(|p| *p == path).count()
    }
}

/// One request's state lent to the guest.
struct Exchange {
    request: VecHeaderMap,
    response: VecHeaderMap,
    body: Vec<u8>,
    local: Option<LocalResponse<'static>>,
}

impl StreamState for Exchange {
    fn header_map(
        &mut self,
        _: Invocation,
        _: Access,
        map: MapType,
    ) -> Result<&mut dyn HeaderMap, Status> {
        match map {
            MapType::HttpRequestHeaders => Ok(&mut self.request),
            MapType::HttpResponseHeaders => Ok(&mut self.response),
            _ => Err(Status::NotFound),
        }
    }

    fn buffer(
        &mut self,
        _: Invocation,
        _: Access,
        buffer: BufferType,
    ) -> Result<&mut dyn Buffer, Status> {
        match buffer {
            BufferType::HttpResponseBody => Ok(&mut self.body),
            _ => Err(Status::NotFound),
        }
    }

    fn send_local_response(
        &mut self,
        _: Invocation,
        response: LocalResponse<'_>,
    ) -> Result<(), Status> {
        self.local = Some(response.into_owned());
        Ok(())
    }
}

/// What the client got.
#[derive(Debug)]
struct Got {
    status: u16,
    headers: Pairs,
    body: Vec<u8>,
    local: bool,
}

impl Got {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
    fn cache_status(&self) -> String {
        self.header("cache-status").unwrap_or_default()
    }
}

/// A plugin instance (one Envoy worker's VM) with its clock and services.
struct Plugin {
    guest: Guest,
    root: ContextId,
    clock: Arc<TestClock>,
    callouts: Arc<Recorder>,
    logs: Arc<Logs>,
}

fn start(config: &str, shared: Arc<InMemoryStore>) -> Result<Plugin, (Started, Arc<Logs>)> {
    let (engine, module) = compiled();
    let clock = Arc::new(TestClock(AtomicU64::new(START_MS)));
    let callouts = Arc::new(Recorder::default());
    let logs = Arc::new(Logs::default());
    let services = VmServices::new(logs.clone())
        .with_log_level(LogLevel::Debug)
        .with_clock(clock.clone())
        .with_shared(shared)
        .with_callouts(callouts.clone());
    let host = Host::new(engine).expect("host");
    let mut guest = Guest::new(&host, module, services, &Limits::default()).expect("guest");
    let started = guest
        .start(PluginConfig::new().with_configuration(config.as_bytes().to_vec()))
        .expect("start runs");
    match started {
        Started::Serving(root) => Ok(Plugin {
            guest,
            root,
            clock,
            callouts,
            logs,
        }),
        refused => Err((refused, logs)),
    }
}

fn plugin(config: &str) -> Plugin {
    start(config, Arc::new(InMemoryStore::new()))
        .unwrap_or_else(|(s, _)| panic!("plugin refused: {s:?}"))
}

impl Plugin {
    fn advance(&self, ms: u64) {
        self.clock.0.fetch_add(ms, Ordering::SeqCst);
    }

    fn get(&mut self, path: &str, origin: &mut Origin) -> Got {
        self.send(
            pairs(&[
                (":method", "GET"),
                (":path", path),
                (":authority", "example.com"),
            ]),
            origin,
        )
    }

    /// Run one request through the filter; what it lets through goes to
    /// `origin`, whose answer flows back through the response callbacks.
    fn send(&mut self, request: Pairs, origin: &mut Origin) -> Got {
        let root = self.root;
        let exchange = Exchange {
            request: request.into(),
            response: VecHeaderMap::default(),
            body: Vec::new(),
            local: None,
        };
        let (got, _) = self.guest.with(exchange, |scope| {
            let stream = scope.on_context_create(Some(root))?;
            scope.expect_stream_kind(stream, StreamKind::Http)?;
            let headers = scope.stream().request.len() as u32;
            let action = scope.on_request_headers(stream, headers, true)?;
            let got = if let Some(local) = scope.stream_mut().local.take() {
                assert_eq!(action, Action::Pause, "a local answer pauses the request");
                Got {
                    status: local.status_code as u16,
                    headers: local
                        .headers
                        .iter()
                        .map(|(n, v)| (n.to_vec(), v.to_vec()))
                        .collect(),
                    body: local.body.to_vec(),
                    local: true,
                }
            } else {
                assert_eq!(action, Action::Continue, "a request not answered goes on");
                let path = scope
                    .stream()
                    .request
                    .get(b":path")
                    .map(|p| String::from_utf8_lossy(&p).into_owned())
                    .unwrap_or_default();
                origin.asked.push(path.clone());
                let a = origin
                    .answers
                    .get(&path)
                    .cloned()
                    .unwrap_or_else(|| answer(404, &[], &[]));
                scope.stream_mut().response = a.headers.clone().into();
                let n = a.headers.len() as u32;
                let action = scope.on_response_headers(stream, n, a.chunks.is_empty())?;
                assert_eq!(action, Action::Continue);
                let mut body = Vec::new();
                for (i, chunk) in a.chunks.iter().enumerate() {
                    scope.stream_mut().body = chunk.clone();
                    let last = i + 1 == a.chunks.len();
                    let action = scope.on_response_body(stream, chunk.len() as u32, last)?;
                    assert_eq!(action, Action::Continue, "the body streams on");
                    body.extend_from_slice(&scope.stream().body);
                }
                let status = scope
                    .stream()
                    .response
                    .get(b":status")
                    .and_then(|s| String::from_utf8_lossy(&s).parse().ok())
                    .unwrap_or(0);
                Got {
                    status,
                    headers: scope.stream().response.pairs(),
                    body,
                    local: false,
                }
            };
            scope.on_done(stream)?;
            scope.on_log(stream)?;
            scope.on_delete(stream)?;
            Ok::<_, GuestError>(got)
        });
        got.unwrap_or_else(|e| panic!("the guest failed: {e}"))
    }

    fn tick(&mut self) {
        let root = self.root;
        let (r, _) = self.guest.with(NoStream, |s| s.on_tick(root));
        r.expect("tick");
    }

    fn take_callouts(&self) -> Vec<(Invocation, CalloutId, HttpCall<'static>)> {
        std::mem::take(&mut *self.callouts.0.lock().unwrap())
    }

    fn deliver(&mut self, call: &Invocation, callout: CalloutId, a: &Answer) {
        let headers = a
            .headers
            .iter()
            .map(|(n, v)| (Cow::Owned(n.clone()), Cow::Owned(v.clone())))
            .collect();
        let response = HttpCallResponse::received(headers).with_body(a.chunks.concat());
        let (r, _) = self.guest.with(NoStream, |s| {
            s.on_http_call_response(call.context, callout, response)
        });
        r.expect("delivery");
    }
}

fn header(call: &HttpCall<'_>, name: &str) -> Option<String> {
    call.headers
        .iter()
        .find(|(n, _)| n.as_ref() == name.as_bytes())
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

const BASE: &str = r#"{"capacity": "1MiB", "policy": "lru", "max-body": 4096,
    "fresh-for": "60s", "negative-fresh-for": "10s"}"#;

#[test]
fn miss_goes_upstream_then_the_same_bytes_are_a_local_hit() {
    let mut p = plugin(BASE);
    let body: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (a, b) = body.split_at(1234);
    let mut origin = Origin::default().with(
        "/img?size=2",
        answer(
            200,
            &[
                ("etag", "\"v1\""),
                ("content-type", "image/x-test"),
                ("link", "</a.css>; rel=preload"),
                ("access-control-allow-origin", "*"),
                ("last-modified", "Wed, 01 Jan 2020 00:00:00 GMT"),
            ],
            &[a, b],
        ),
    );

    let miss = p.get("/img?size=2", &mut origin);
    assert!(!miss.local);
    assert_eq!(miss.body, body, "the body passes through unchanged");
    assert_eq!(
        miss.cache_status(),
        "daramjwee; fwd=miss; fwd-status=200; stored"
    );

    p.advance(5_000);
    let hit = p.get("/img?size=2", &mut origin);
    assert!(hit.local, "answered by the filter");
    assert_eq!(
        origin.times("/img?size=2"),
        1,
        "the origin was not asked again"
    );
    assert_eq!(hit.status, 200);
    assert_eq!(hit.body, body);
    assert_eq!(hit.cache_status(), "daramjwee; hit; detail=tier0");
    assert_eq!(hit.header("etag").as_deref(), Some("\"v1\""));
    assert_eq!(hit.header("content-type").as_deref(), Some("image/x-test"));
    // The whole head is kept in the shared data, not just a few fields.
    assert_eq!(hit.header("link").as_deref(), Some("</a.css>; rel=preload"));
    assert_eq!(
        hit.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert_eq!(
        hit.header("last-modified").as_deref(),
        Some("Wed, 01 Jan 2020 00:00:00 GMT")
    );
    assert_eq!(hit.header("age").as_deref(), Some("5"));

    // Another authority is another key.
    let other = p.send(
        pairs(&[
            (":method", "GET"),
            (":path", "/img?size=2"),
            (":authority", "other.example"),
        ]),
        &mut origin,
    );
    assert!(!other.local);
}

#[test]
fn matching_if_none_match_gets_304_without_body() {
    let mut p = plugin(BASE);
    let mut origin = Origin::default().with(
        "/doc",
        answer(200, &[("etag", "W/\"abc\"")], &[b"document"]),
    );
    p.get("/doc", &mut origin);
    let not_modified = p.send(
        pairs(&[
            (":method", "GET"),
            (":path", "/doc"),
            (":authority", "example.com"),
            ("if-none-match", "\"zzz\", \"abc\""),
        ]),
        &mut origin,
    );
    assert!(not_modified.local);
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag").as_deref(), Some("W/\"abc\""));
    let other_tag = p.send(
        pairs(&[
            (":method", "GET"),
            (":path", "/doc"),
            (":authority", "example.com"),
            ("if-none-match", "\"old\""),
        ]),
        &mut origin,
    );
    assert_eq!(
        (other_tag.status, other_tag.body.as_slice()),
        (200, &b"document"[..])
    );
    assert_eq!(origin.times("/doc"), 1);
}

#[test]
fn not_found_is_answered_locally_within_the_negative_window() {
    let mut p = plugin(BASE);
    let mut origin = Origin::default().with("/gone", answer(404, &[], &[b"no such page"]));
    let first = p.get("/gone", &mut origin);
    assert_eq!((first.status, first.local), (404, false));
    assert!(
        first.cache_status().ends_with("stored"),
        "{}",
        first.cache_status()
    );

    p.advance(9_000);
    let second = p.get("/gone", &mut origin);
    assert_eq!((second.status, second.local), (404, true));
    assert_eq!(second.cache_status(), "daramjwee; hit; detail=tier0");
    assert_eq!(origin.times("/gone"), 1);

    p.advance(2_000);
    let third = p.get("/gone", &mut origin);
    assert!(
        !third.local,
        "past negative-fresh-for the origin is asked again"
    );
    assert_eq!(origin.times("/gone"), 2);
}

#[test]
fn server_errors_are_not_cached() {
    let mut p = plugin(BASE);
    let mut origin = Origin::default().with("/flaky", answer(500, &[], &[b"oops"]));
    let first = p.get("/flaky", &mut origin);
    assert_eq!(first.status, 500);
    assert_eq!(
        first.cache_status(),
        "daramjwee; fwd=miss; fwd-status=500; detail=origin-error"
    );
    let second = p.get("/flaky", &mut origin);
    assert!(!second.local);
    assert_eq!(origin.times("/flaky"), 2);
}

#[test]
fn bodies_over_max_body_pass_through_uncached() {
    let mut p = plugin(BASE);
    let big = vec![b'x'; 3000];
    let big2 = vec![b'y'; 3000];
    let length = (big.len() + big2.len()).to_string();
    let mut origin = Origin::default()
        // Known length: refused at the headers.
        .with(
            "/sized",
            answer(200, &[("content-length", &length)], &[&big, &big2]),
        )
        // Unknown length: the copy stops at the bound, the stream does not.
        .with("/chunked", answer(200, &[], &[&big, &big2]));

    let sized = p.get("/sized", &mut origin);
    assert_eq!(sized.body.len(), 6000);
    assert_eq!(sized.cache_status(), "daramjwee; fwd=miss; fwd-status=200");
    let chunked = p.get("/chunked", &mut origin);
    assert_eq!(chunked.body, [big.as_slice(), big2.as_slice()].concat());

    for path in ["/sized", "/chunked"] {
        assert!(!p.get(path, &mut origin).local, "{path} was cached");
        assert_eq!(origin.times(path), 2, "{path}");
    }
}

#[test]
fn no_store_and_private_are_not_cached() {
    let mut p = plugin(BASE);
    let mut origin = Origin::default()
        .with(
            "/ns",
            answer(200, &[("cache-control", "no-store")], &[b"secret"]),
        )
        .with(
            "/pv",
            answer(200, &[("cache-control", "private, max-age=60")], &[b"mine"]),
        )
        .with(
            "/vary",
            answer(200, &[("vary", "accept-language")], &[b"hallo"]),
        );
    for path in ["/ns", "/pv", "/vary"] {
        let first = p.get(path, &mut origin);
        assert_eq!(first.cache_status(), "daramjwee; fwd=miss; fwd-status=200");
        assert!(!p.get(path, &mut origin).local, "{path}");
        assert_eq!(origin.times(path), 2, "{path}");
    }
}

#[test]
fn small_capacity_evicts_the_least_recently_used() {
    // Room for three 1000-byte entries (key and metadata are charged too).
    let mut p = plugin(r#"{"capacity": 3500, "policy": "lru", "max-body": 1500}"#);
    let body = vec![b'z'; 1000];
    let mut origin = Origin::default();
    for path in ["/1", "/2", "/3", "/4"] {
        origin = origin.with(path, answer(200, &[], &[&body]));
    }
    for path in ["/1", "/2", "/3"] {
        p.get(path, &mut origin);
    }
    assert!(
        p.get("/1", &mut origin).local,
        "/1 is cached and now the hottest"
    );
    p.get("/4", &mut origin); // evicts /2, the coldest
    assert!(p.get("/4", &mut origin).local);
    assert!(p.get("/1", &mut origin).local);
    assert!(!p.get("/2", &mut origin).local, "/2 was evicted");
    assert_eq!(origin.times("/2"), 2);
    assert_eq!(origin.times("/1"), 1);
}

#[test]
fn stale_entry_is_served_while_a_callout_refreshes_it() {
    let mut p = plugin(
        r#"{"max-body": 4096, "fresh-for": "1s", "stale-while-revalidate": "30s",
            "upstream": "origin", "upstream-timeout": "3s", "refresh-tick": "50ms"}"#,
    );
    assert_eq!(
        p.guest.tick_period(p.root),
        Some(Duration::from_millis(50)),
        "the root asks for a tick to send refreshes"
    );
    let mut origin = Origin::default().with(
        "/news",
        answer(
            200,
            &[("etag", "\"v1\""), ("content-type", "text/plain")],
            &[b"old news"],
        ),
    );
    p.get("/news", &mut origin);
    p.advance(2_000);

    let stale = p.get("/news", &mut origin);
    assert!(stale.local);
    assert_eq!(stale.body, b"old news");
    assert_eq!(
        stale.cache_status(),
        "daramjwee; fwd=stale; detail=revalidating-tier0"
    );
    assert!(
        p.take_callouts().is_empty(),
        "sent from the root's tick, not the stream"
    );
    // A second stale hit does not queue a second refresh.
    assert!(p.get("/news", &mut origin).local);

    p.tick();
    let mut calls = p.take_callouts();
    assert_eq!(calls.len(), 1, "one refresh per key");
    let (call, callout, request) = calls.remove(0);
    assert_eq!(call.context, p.root, "the root context owns the refresh");
    assert_eq!(request.upstream.as_ref(), b"origin");
    assert_eq!(request.timeout, Duration::from_secs(3));
    assert_eq!(header(&request, ":method").as_deref(), Some("GET"));
    assert_eq!(header(&request, ":path").as_deref(), Some("/news"));
    assert_eq!(
        header(&request, ":authority").as_deref(),
        Some("example.com")
    );
    assert_eq!(header(&request, "if-none-match").as_deref(), Some("\"v1\""));

    p.deliver(
        &call,
        callout,
        &answer(
            200,
            &[("etag", "\"v2\""), ("content-type", "text/plain")],
            &[b"fresh news"],
        ),
    );
    let fresh = p.get("/news", &mut origin);
    assert!(fresh.local);
    assert_eq!(fresh.body, b"fresh news");
    assert_eq!(fresh.cache_status(), "daramjwee; hit; detail=tier0");
    assert_eq!(fresh.header("etag").as_deref(), Some("\"v2\""));
    assert_eq!(
        origin.times("/news"),
        1,
        "only the first miss reached the stream path"
    );

    // Stale again; this time the origin says 304: the copy is kept and is fresh.
    p.advance(2_000);
    assert!(
        p.get("/news", &mut origin)
            .cache_status()
            .contains("fwd=stale")
    );
    p.tick();
    let (call, callout, request) = p.take_callouts().remove(0);
    assert_eq!(header(&request, "if-none-match").as_deref(), Some("\"v2\""));
    p.deliver(&call, callout, &answer(304, &[], &[]));
    let confirmed = p.get("/news", &mut origin);
    assert_eq!(confirmed.cache_status(), "daramjwee; hit; detail=tier0");
    assert_eq!(confirmed.body, b"fresh news");

    // Past the stale window the entry is a miss again.
    p.advance(40_000);
    assert!(!p.get("/news", &mut origin).local);
    assert_eq!(origin.times("/news"), 2);
}

#[test]
fn failed_refresh_keeps_the_stale_copy_and_can_be_retried() {
    let mut p =
        plugin(r#"{"fresh-for": "1s", "stale-while-revalidate": "30s", "upstream": "origin"}"#);
    let mut origin = Origin::default().with("/x", answer(200, &[], &[b"v1"]));
    p.get("/x", &mut origin);
    p.advance(2_000);
    p.get("/x", &mut origin);
    p.tick();
    let (call, callout, _) = p.take_callouts().remove(0);
    let (r, _) = p.guest.with(NoStream, |s| {
        s.on_http_call_response(call.context, callout, HttpCallResponse::failed())
    });
    r.expect("delivery");
    let stale = p.get("/x", &mut origin);
    assert_eq!((stale.local, stale.body.as_slice()), (true, &b"v1"[..]));
    p.tick();
    assert_eq!(p.take_callouts().len(), 1, "the refresh is asked for again");
}

#[test]
fn shared_data_makes_one_workers_entry_visible_to_another() {
    let store = Arc::new(InMemoryStore::new());
    let config = r#"{"max-body": 8192, "shared-data": {"prefix": "t:", "max-entry": "16KiB"}}"#;
    let mut a = start(config, store.clone()).unwrap_or_else(|_| panic!("a refused"));
    let mut b = start(config, store.clone()).unwrap_or_else(|_| panic!("b refused"));
    let mut origin = Origin::default().with(
        "/shared",
        answer(
            200,
            &[("etag", "\"s\""), ("content-type", "text/html")],
            &[b"<p>shared</p>"],
        ),
    );
    a.get("/shared", &mut origin);

    let from_b = b.get("/shared", &mut origin);
    assert!(from_b.local, "worker b answered from shared data");
    assert_eq!(from_b.body, b"<p>shared</p>");
    assert_eq!(from_b.cache_status(), "daramjwee; hit; detail=tier1");
    assert_eq!(from_b.header("content-type").as_deref(), Some("text/html"));
    // Promoted into b's own tier.
    assert_eq!(
        b.get("/shared", &mut origin).cache_status(),
        "daramjwee; hit; detail=tier0"
    );
    assert_eq!(origin.times("/shared"), 1);

    // An unsafe method through a invalidates the key for b as well.
    let post = a.send(
        pairs(&[
            (":method", "POST"),
            (":path", "/shared"),
            (":authority", "example.com"),
        ]),
        &mut Origin::default().with("/shared", answer(204, &[], &[])),
    );
    assert!(!post.local);
    assert!(
        !a.get("/shared", &mut origin).local,
        "a dropped its own copy"
    );
    // b keeps its promoted copy: shared data tells no one about removals.
    assert!(b.get("/shared", &mut origin).local);
    let mut c = start(config, store).unwrap_or_else(|_| panic!("c refused"));
    let from_c = c.get("/shared", &mut origin);
    assert!(from_c.local, "a's new miss republished the entry");
}

#[test]
fn a_worker_with_an_expired_copy_takes_a_fresher_one_from_shared_data() {
    let store = Arc::new(InMemoryStore::new());
    let config = r#"{"fresh-for": "1s", "shared-data": true}"#;
    let mut a = start(config, store.clone()).unwrap_or_else(|_| panic!("a refused"));
    let mut b = start(config, store).unwrap_or_else(|_| panic!("b refused"));
    let mut origin = Origin::default().with("/v", answer(200, &[], &[b"one"]));
    a.get("/v", &mut origin);
    assert_eq!(
        b.get("/v", &mut origin).cache_status(),
        "daramjwee; hit; detail=tier1"
    );

    for p in [&a, &b] {
        p.advance(2_000);
    }
    origin = origin.with("/v", answer(200, &[], &[b"two"]));
    assert!(
        !a.get("/v", &mut origin).local,
        "a's copy expired: a fetches"
    );
    let from_b = b.get("/v", &mut origin);
    assert!(
        from_b.local,
        "b's own copy expired, a's new one is in shared data"
    );
    assert_eq!(from_b.body, b"two");
    assert_eq!(from_b.cache_status(), "daramjwee; hit; detail=tier1");
    assert_eq!(origin.times("/v"), 2);
}

#[test]
fn shared_data_refusals_do_not_break_the_filter() {
    // The host keeps values of at most 1 KiB; the filter may try larger ones.
    let store = Arc::new(
        InMemoryStore::new().with_limits(InMemoryStoreLimits::new().with_value_bytes(1024)),
    );
    let config = r#"{"max-body": 8192, "shared-data": true}"#;
    let mut a = start(config, store.clone()).unwrap_or_else(|_| panic!("a refused"));
    let mut b = start(config, store).unwrap_or_else(|_| panic!("b refused"));
    let big = vec![b'q'; 4000];
    let mut origin = Origin::default().with("/big", answer(200, &[], &[&big]));
    a.get("/big", &mut origin);
    assert!(
        a.logs
            .contains("shared data write of example.com/big refused (10)"),
        "the host answered INTERNAL_FAILURE: {:?}",
        a.logs.0.lock().unwrap()
    );
    assert!(
        a.get("/big", &mut origin).local,
        "the local tier still has it"
    );
    assert!(
        !b.get("/big", &mut origin).local,
        "the host refused it to shared data"
    );
    assert!(b.get("/big", &mut origin).local);
}

#[test]
fn head_is_answered_without_a_body_and_never_stored() {
    let mut p = plugin(BASE);
    let mut origin = Origin::default().with("/h", answer(200, &[("etag", "\"h\"")], &[b"body"]));
    let head = |p: &mut Plugin, origin: &mut Origin| {
        p.send(
            pairs(&[
                (":method", "HEAD"),
                (":path", "/h"),
                (":authority", "example.com"),
            ]),
            origin,
        )
    };
    let miss = head(&mut p, &mut origin);
    assert!(!miss.local);
    assert_eq!(miss.cache_status(), "daramjwee; fwd=miss; fwd-status=200");
    assert!(
        !head(&mut p, &mut origin).local,
        "a HEAD miss stores nothing"
    );
    p.get("/h", &mut origin);
    let hit = head(&mut p, &mut origin);
    assert!(hit.local);
    assert_eq!(hit.status, 200);
    assert!(hit.body.is_empty());
    assert_eq!(hit.header("etag").as_deref(), Some("\"h\""));
}

#[test]
fn odd_requests_pass_through_and_leave_the_plugin_working() {
    let mut p = plugin(BASE);
    let mut origin = Origin::default().with("/ok", answer(200, &[], &[b"fine"]));
    let long = format!("/{}", "a".repeat(20_000));
    let odd: Vec<Pairs> = vec![
        pairs(&[(":method", "GET"), (":authority", "example.com")]),
        pairs(&[
            (":method", "GET"),
            (":path", &long),
            (":authority", "example.com"),
        ]),
        vec![
            (b":method".to_vec(), b"GET".to_vec()),
            (b":path".to_vec(), b"/\xff\xfe?\x80".to_vec()),
            (b":authority".to_vec(), b"example.com".to_vec()),
        ],
        vec![
            (b":method".to_vec(), b"GET".to_vec()),
            (b":path".to_vec(), b"/ok".to_vec()),
            (b":authority".to_vec(), b"\xc3\x28".to_vec()),
            (b"if-none-match".to_vec(), b"\xff".to_vec()),
        ],
        vec![
            (b":method".to_vec(), b"\x00\xff".to_vec()),
            (b":path".to_vec(), b"/ok".to_vec()),
        ],
        pairs(&[
            (":method", "GET"),
            (":path", "/ok"),
            ("authorization", "Bearer x"),
        ]),
        pairs(&[(":method", "GET"), (":path", "/ok"), ("range", "bytes=0-1")]),
        Vec::new(),
    ];
    for request in odd {
        let got = p.send(request.clone(), &mut origin);
        assert!(!got.local, "{request:?}");
        assert!(
            got.header("cache-status").is_none(),
            "passed through untouched: {request:?}"
        );
    }
    // A response whose headers are not UTF-8 is relayed and not stored.
    origin = origin.with(
        "/bytes",
        Answer {
            headers: vec![
                (b":status".to_vec(), b"200".to_vec()),
                (b"content-type".to_vec(), b"text/\xff".to_vec()),
            ],
            chunks: vec![b"x".to_vec()],
        },
    );
    assert!(!p.get("/bytes", &mut origin).local);
    assert!(!p.get("/bytes", &mut origin).local);
    // The guest is not poisoned: caching still works.
    p.get("/ok", &mut origin);
    assert!(p.get("/ok", &mut origin).local);
    assert!(p.guest.is_serving());
}

#[test]
fn bad_configuration_refuses_the_plugin_with_a_clear_log() {
    for (config, needle) in [
        (r#"{"policy": "lfu"}"#, "policy"),
        (r#"{"capacity": "lots"}"#, "capacity"),
        (r#"{"capacty": 5}"#, "capacty"),
        ("{not json", "invalid plugin configuration"),
    ] {
        let Err((started, logs)) = start(config, Arc::new(InMemoryStore::new())) else {
            panic!("{config} was accepted");
        };
        assert!(
            matches!(started, Started::Refused { .. }),
            "{config}: {started:?}"
        );
        assert!(
            logs.contains(needle),
            "{config}: {:?}",
            logs.0.lock().unwrap()
        );
    }
}
