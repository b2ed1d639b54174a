//! `daramjwee serve` end to end: a real origin (hyper) behind the proxy,
//! a real client (reqwest) in front of it.

#[path = "../support/origin.rs"]
mod origin;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use daramjwee::serve::{ServeConfig, Server};
use futures::StreamExt;
use origin::{Origin, Route};
use reqwest::StatusCode;
use tokio::sync::Notify;

const TOKEN: &str = "s3cret";

async fn proxy(origin: &Origin, tweak: impl FnOnce(&mut ServeConfig)) -> Server {
    let mut config = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        origin: Some(origin.url()),
        tiers: vec!["mem".into()],
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        admin_token: Some(TOKEN.into()),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        // The test origin's plain answers state no lifetime: most tests
        // are about what happens once one is kept.
        fresh_for: Duration::from_secs(60),
        negative_fresh_for: Duration::from_secs(10),
        ..ServeConfig::default()
    };
    tweak(&mut config);
    Server::start(config).await.unwrap()
}

fn url(server: &Server, target: &str) -> String {
    format!("http://{}{target}", server.local_addr())
}

fn admin_url(server: &Server, target: &str) -> String {
    format!(
        "http://{}{target}",
        server.admin_addr().expect("an admin listener")
    )
}

struct Got {
    status: StatusCode,
    cache_status: String,
    etag: Option<String>,
    content_type: Option<String>,
    age: Option<String>,
    body: Bytes,
}

async fn send(request: reqwest::RequestBuilder) -> Got {
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let cache_status = header("cache-status").expect("every response has Cache-Status");
    let (etag, content_type, age) = (header("etag"), header("content-type"), header("age"));
    let status = response.status();
    let body = response.bytes().await.unwrap();
    Got {
        status,
        cache_status,
        etag,
        content_type,
        age,
        body,
    }
}

async fn get(server: &Server, target: &str) -> Got {
    send(reqwest::Client::new().get(url(server, target))).await
}

/// Poll `target` until `done` holds; the background work it waits for has
/// no other signal the client can see.
async fn eventually(server: &Server, target: &str, done: impl Fn(&Got) -> bool) -> Got {
    for _ in 0..100 {
        let got = get(server, target).await;
        if done(&got) {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{target} never reached the expected state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_miss_then_hit_calls_the_origin_once() {
    let origin = Origin::start().await;
    origin.route("/a", Route::ok("v1", "hello"));
    let server = proxy(&origin, |_| {}).await;
    let first = get(&server, "/a").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, "hello");
    assert_eq!(
        first.cache_status,
        "daramjwee; fwd=miss; fwd-status=200; stored"
    );
    assert_eq!(first.etag.as_deref(), Some("\"v1\""));
    assert_eq!(first.content_type.as_deref(), Some("text/x-test"));
    assert_eq!(first.age.as_deref(), Some("0"));
    let second = get(&server, "/a").await;
    assert_eq!(second.body, "hello");
    assert_eq!(second.cache_status, "daramjwee; hit; detail=tier0");
    assert_eq!(second.etag.as_deref(), Some("\"v1\""));
    assert_eq!(second.content_type.as_deref(), Some("text/x-test"));
    assert!(second.age.is_some());
    assert_eq!(origin.hits("/a"), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_too_large_for_the_memory_tier_is_kept_in_the_file_tier() {
    let origin = Origin::start().await;
    let big = "large ".repeat(40_000);
    origin.route("/big", Route::ok("v1", &big));
    origin.route("/small", Route::ok("v1", "small"));
    let dir = tempfile::tempdir().unwrap();
    // S3-FIFO keeps nothing of a tenth of a shard's capacity or more.
    let file_tier = format!("file:{}", dir.path().display());
    let server = proxy(&origin, |c| {
        c.tiers = vec!["mem:1MiB:s3fifo".into(), file_tier];
    })
    .await;
    let first = get(&server, "/big").await;
    assert_eq!(first.body, big.as_str());
    assert_eq!(
        first.cache_status,
        "daramjwee; fwd=miss; fwd-status=200; stored"
    );
    let second = get(&server, "/big").await;
    assert_eq!(second.body, big.as_str());
    assert_eq!(second.cache_status, "daramjwee; hit; detail=tier1");
    assert_eq!(origin.hits("/big"), 1);
    // A small body still lands in memory first.
    get(&server, "/small").await;
    let again = get(&server, "/small").await;
    assert_eq!(again.cache_status, "daramjwee; hit; detail=tier0");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_no_tier_keeps_is_served_and_not_said_to_be_stored() {
    let origin = Origin::start().await;
    let big = "large ".repeat(40_000);
    origin.route("/big", Route::ok("v1", &big));
    let server = proxy(&origin, |c| c.tiers = vec!["mem:1MiB:s3fifo".into()]).await;
    for _ in 0..2 {
        let got = get(&server, "/big").await;
        assert_eq!(got.body, big.as_str());
        assert_eq!(got.cache_status, "daramjwee; fwd=miss; fwd-status=200");
    }
    assert_eq!(origin.hits("/big"), 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_if_none_match_gets_304_without_a_body() {
    let origin = Origin::start().await;
    origin.route("/a", Route::ok("v1", "hello"));
    let server = proxy(&origin, |_| {}).await;
    let client = reqwest::Client::new();
    // Cold: the origin's fresh answer matches the client's tag.
    let cold = send(
        client
            .get(url(&server, "/a"))
            .header("if-none-match", "\"v1\""),
    )
    .await;
    assert_eq!(cold.status, StatusCode::NOT_MODIFIED);
    assert!(cold.body.is_empty());
    // Warm: answered from the cache.
    let warm = send(
        client
            .get(url(&server, "/a"))
            .header("if-none-match", "W/\"v1\""),
    )
    .await;
    assert_eq!(warm.status, StatusCode::NOT_MODIFIED);
    assert!(warm.body.is_empty());
    assert_eq!(warm.etag.as_deref(), Some("\"v1\""));
    // A hit, or a join of the cold request's fill still landing in tier 0.
    assert!(
        !warm.cache_status.contains("fwd-status"),
        "{}",
        warm.cache_status
    );
    let other = send(
        client
            .get(url(&server, "/a"))
            .header("if-none-match", "\"v0\""),
    )
    .await;
    assert_eq!(
        (other.status, &other.body[..]),
        (StatusCode::OK, &b"hello"[..])
    );
    assert_eq!(origin.hits("/a"), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_404_is_cached_for_the_negative_window_then_fetched_again() {
    let origin = Origin::start().await;
    let server = proxy(&origin, |c| {
        c.negative_fresh_for = Duration::from_millis(300);
    })
    .await;
    let first = get(&server, "/gone").await;
    assert_eq!(first.status, StatusCode::NOT_FOUND);
    assert!(
        first.cache_status.contains("fwd=miss"),
        "{}",
        first.cache_status
    );
    let second = get(&server, "/gone").await;
    assert_eq!(second.status, StatusCode::NOT_FOUND);
    assert!(second.cache_status.starts_with("daramjwee; hit"));
    assert_eq!(origin.hits("/gone"), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    origin.route("/gone", Route::ok("v1", "back"));
    let back = eventually(&server, "/gone", |g| g.status == StatusCode::OK).await;
    assert_eq!(back.body, "back");
    assert!(origin.hits("/gone") >= 2);
    origin.route("/410", Route::Status(410));
    assert_eq!(get(&server, "/410").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&server, "/410").await.status, StatusCode::NOT_FOUND);
    assert_eq!(origin.hits("/410"), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_delete_need_the_admin_token() {
    let origin = Origin::start().await;
    let server = proxy(&origin, |_| {}).await;
    let client = reqwest::Client::new();
    let put = |auth: Option<&str>| {
        let mut request = client
            .put(admin_url(&server, "/w"))
            .header("content-type", "application/x-written")
            .body("written");
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request
    };
    assert_eq!(send(put(None)).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        send(put(Some("Bearer wrong"))).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(put(Some(&format!("Basic {TOKEN}")))).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(get(&server, "/w").await.status, StatusCode::NOT_FOUND);
    assert_eq!(origin.hits("/w"), 1);
    let stored = send(put(Some(&format!("Bearer {TOKEN}")))).await;
    assert_eq!(stored.status, StatusCode::NO_CONTENT);
    let read = get(&server, "/w").await;
    assert_eq!(
        (read.status, &read.body[..]),
        (StatusCode::OK, &b"written"[..])
    );
    assert_eq!(read.content_type.as_deref(), Some("application/x-written"));
    assert_eq!(origin.hits("/w"), 1, "served from the cache");
    let delete = |auth: Option<&str>| {
        let mut request = client.delete(admin_url(&server, "/w"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request
    };
    assert_eq!(send(delete(None)).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        send(delete(Some("Bearer nope"))).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(get(&server, "/w").await.body, "written");
    assert_eq!(
        send(delete(Some(&format!("Bearer {TOKEN}")))).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(get(&server, "/w").await.status, StatusCode::NOT_FOUND);
    assert_eq!(origin.hits("/w"), 2, "gone from the cache");
    server.shutdown().await;

    let closed = proxy(&origin, |c| c.admin_token = None).await;
    let refused = send(
        client
            .put(admin_url(&closed, "/w"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body("x"),
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(
        send(client.delete(admin_url(&closed, "/w"))).await.status,
        StatusCode::FORBIDDEN
    );
    closed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_500_is_passed_as_it_came_and_never_cached() {
    let origin = Origin::start().await;
    origin.route("/e", Route::Status(500));
    let server = proxy(&origin, |_| {}).await;
    for _ in 0..2 {
        let got = get(&server, "/e").await;
        assert_eq!(got.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            got.cache_status.contains("fwd-status=500"),
            "{}",
            got.cache_status
        );
    }
    assert_eq!(origin.hits("/e"), 2);
    origin.route("/e", Route::ok("v", "recovered"));
    assert_eq!(get(&server, "/e").await.body, "recovered");
    // An origin that is not there at all.
    let nowhere = proxy(&origin, |c| c.origin = Some("http://127.0.0.1:1".into())).await;
    assert_eq!(get(&nowhere, "/x").await.status, StatusCode::BAD_GATEWAY);
    nowhere.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_origin_is_a_502_and_never_cached() {
    let origin = Origin::start().await;
    origin.route(
        "/slow",
        Route::Ok {
            tag: "\"s\"".into(),
            body: Bytes::from_static(b"late"),
            cache_control: None,
            delay: Duration::from_secs(3),
        },
    );
    let server = proxy(&origin, |c| c.origin_timeout = Duration::from_millis(200)).await;
    let got = get(&server, "/slow").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert!(
        got.cache_status.contains("origin-error"),
        "{}",
        got.cache_status
    );
    origin.route("/slow", Route::ok("f", "fast"));
    assert_eq!(get(&server, "/slow").await.body, "fast");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_no_store_is_not_stored_and_max_age_is_honoured() {
    let origin = Origin::start().await;
    origin.route("/private", Route::controlled("p", "mine", "private"));
    origin.route("/nostore", Route::controlled("n", "fleeting", "no-store"));
    origin.route("/long", Route::controlled("l", "lasting", "max-age=3600"));
    origin.route("/short", Route::controlled("s", "brief", "max-age=1"));
    // Without its own max-age every entry would be stale at once.
    let server = proxy(&origin, |c| c.fresh_for = Duration::ZERO).await;
    for target in ["/private", "/nostore"] {
        for _ in 0..2 {
            let got = get(&server, target).await;
            assert_eq!(got.status, StatusCode::OK);
            assert!(!got.cache_status.contains("stored"), "{}", got.cache_status);
        }
        assert_eq!(origin.hits(target), 2, "{target} was stored");
    }
    get(&server, "/long").await;
    let hit = get(&server, "/long").await;
    assert_eq!(hit.cache_status, "daramjwee; hit; detail=tier0");
    assert_eq!(origin.hits("/long"), 1);
    get(&server, "/short").await;
    assert!(get(&server, "/short").await.cache_status.contains("hit"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Expired: revalidated with the origin before it is served.
    let revalidated = get(&server, "/short").await;
    assert_eq!(revalidated.body, "brief");
    assert!(
        revalidated
            .cache_status
            .contains("fwd=stale; fwd-status=304"),
        "{}",
        revalidated.cache_status
    );
    assert_eq!(origin.hits("/short"), 2);
    assert!(origin.conditional().contains(&"\"s\"".to_owned()));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_stale_then_the_new_version() {
    let origin = Origin::start().await;
    let control = "max-age=1, stale-while-revalidate=60";
    origin.route("/swr", Route::controlled("v1", "old", control));
    let server = proxy(&origin, |_| {}).await;
    assert_eq!(get(&server, "/swr").await.body, "old");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    origin.route("/swr", Route::controlled("v2", "new", control));
    let stale = get(&server, "/swr").await;
    assert_eq!(stale.body, "old", "served at once");
    assert!(
        stale.cache_status.contains("fwd=stale"),
        "{}",
        stale.cache_status
    );
    let fresh = eventually(&server, "/swr", |g| g.body == "new").await;
    assert_eq!(fresh.etag.as_deref(), Some("\"v2\""));
    assert_eq!(origin.hits("/swr"), 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_the_expired_copy_when_the_origin_fails() {
    let origin = Origin::start().await;
    origin.route("/sie", Route::controlled("v1", "kept", "max-age=1"));
    let server = proxy(&origin, |c| c.stale_if_error = Duration::from_secs(60)).await;
    assert_eq!(get(&server, "/sie").await.body, "kept");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    origin.route("/sie", Route::Status(503));
    let got = get(&server, "/sie").await;
    assert_eq!((got.status, &got.body[..]), (StatusCode::OK, &b"kept"[..]));
    assert!(
        got.cache_status.contains("fwd=stale") && got.cache_status.contains("stale-if-error"),
        "{}",
        got.cache_status
    );
    assert_eq!(origin.hits("/sie"), 2);
    // A key never fetched has nothing to fall back on.
    origin.route("/none", Route::Status(503));
    assert_eq!(
        get(&server, "/none").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leaving_mid_body_publishes_nothing() {
    let origin = Origin::start().await;
    let dropped = Arc::new(Notify::new());
    origin.route(
        "/big",
        Route::Endless {
            dropped: Arc::clone(&dropped),
        },
    );
    let server = proxy(&origin, |_| {}).await;
    {
        let client = reqwest::Client::new();
        let response = client.get(url(&server, "/big")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.bytes_stream();
        assert!(body.next().await.unwrap().is_ok());
    }
    // The proxy gives up on the origin once nobody reads.
    tokio::time::timeout(Duration::from_secs(20), dropped.notified())
        .await
        .expect("the proxy stopped reading the origin");
    origin.route("/big", Route::ok("v", "complete"));
    let got = get(&server, "/big").await;
    assert_eq!(got.body, "complete");
    assert!(
        got.cache_status.contains("fwd=miss"),
        "{}",
        got.cache_status
    );
    assert_eq!(origin.hits("/big"), 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_cold_gets_fetch_once() {
    let origin = Origin::start().await;
    let body: String = (0..64 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    origin.route(
        "/herd",
        Route::Ok {
            tag: "\"h\"".into(),
            body: Bytes::from(body.clone()),
            cache_control: None,
            delay: Duration::from_millis(300),
        },
    );
    let server = Arc::new(proxy(&origin, |_| {}).await);
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let request = client.get(url(&server, "/herd"));
        tasks.push(tokio::spawn(async move { send(request).await }));
    }
    let mut collapsed = 0;
    for task in tasks {
        let got = task.await.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body, body.as_bytes());
        collapsed += usize::from(got.cache_status.contains("collapsed"));
    }
    assert_eq!(origin.hits("/herd"), 1);
    assert!(collapsed > 0);
    Arc::try_unwrap(server)
        .ok()
        .expect("no other owner")
        .shutdown()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deletes_puts_and_gets_never_serve_a_mixed_body() {
    /// A body of `len` bytes that is `fill` throughout.
    fn body(fill: u8, len: usize) -> Bytes {
        Bytes::from(vec![fill; len])
    }
    let origin = Origin::start().await;
    // Several chunks long, so a body pieced from two versions would show.
    let from_origin = body(b'o', 300 * 1024);
    origin.route(
        "/contested",
        Route::Ok {
            tag: "\"o\"".into(),
            body: from_origin.clone(),
            cache_control: None,
            delay: Duration::ZERO,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let tiers = vec!["mem".into(), format!("file:{}", dir.path().display())];
    let server = Arc::new(proxy(&origin, |c| c.tiers = tiers).await);
    let client = reqwest::Client::new();
    let target = url(&server, "/contested");
    let admin = admin_url(&server, "/contested");
    let written: Vec<Bytes> = (0..20u8)
        .map(|i| body(b'A' + i, 200 * 1024 + usize::from(i) * 7_001))
        .collect();

    let writer = {
        let (client, admin, written) = (client.clone(), admin.clone(), written.clone());
        tokio::spawn(async move {
            for put in written {
                let auth = format!("Bearer {TOKEN}");
                let request = client.put(&admin).header("authorization", &auth).body(put);
                assert_eq!(send(request).await.status, StatusCode::NO_CONTENT);
                let request = client.delete(&admin).header("authorization", &auth);
                assert_eq!(send(request).await.status, StatusCode::NO_CONTENT);
            }
        })
    };
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (client, target) = (client.clone(), target.clone());
            tokio::spawn(async move {
                let mut bodies = Vec::new();
                for _ in 0..40 {
                    let got = send(client.get(&target)).await;
                    assert_eq!(got.status, StatusCode::OK, "{}", got.cache_status);
                    bodies.push(got.body);
                }
                bodies
            })
        })
        .collect();
    writer.await.unwrap();
    for reader in readers {
        for got in reader.await.unwrap() {
            let whole = got == from_origin || written.contains(&got);
            assert!(
                whole,
                "a body of {} bytes that no one wrote whole (starts {:?}, ends {:?})",
                got.len(),
                got.first(),
                got.last()
            );
        }
    }
    // After the last delete, the origin's version again, from every tier.
    let got = get(&server, "/contested").await;
    assert_eq!(got.body, from_origin);
    Arc::try_unwrap(server)
        .ok()
        .expect("no other owner")
        .shutdown()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_keys_round_trip() {
    let origin = Origin::start().await;
    origin.fallback(Route::Echo);
    let server = proxy(&origin, |_| {}).await;
    let client = reqwest::Client::new();
    for target in [
        "/a/b/c/",
        "/with space",
        "/pct%2Fslash%20and%25",
        "/유니코드/키",
        "/q?x=1&y=a%20b&z=한",
        "/%00nul",
    ] {
        let request_url = reqwest::Url::parse(&url(&server, target)).unwrap();
        let admin = reqwest::Url::parse(&admin_url(&server, target)).unwrap();
        let sent = match request_url.query() {
            Some(query) => format!("{}?{query}", request_url.path()),
            None => request_url.path().to_owned(),
        };
        for round in 0..2 {
            let got = send(client.get(request_url.clone())).await;
            assert_eq!(got.status, StatusCode::OK, "{target}");
            assert_eq!(
                got.body,
                sent.as_bytes(),
                "{target}: the origin saw the key"
            );
            assert_eq!(got.cache_status.contains("hit"), round == 1, "{target}");
        }
        assert_eq!(origin.hits(&sent), 1, "{target}");
        // Written and deleted under the same key.
        let put = client
            .put(admin.clone())
            .header("authorization", format!("Bearer {TOKEN}"))
            .body("put");
        assert_eq!(send(put).await.status, StatusCode::NO_CONTENT, "{target}");
        assert_eq!(send(client.get(request_url.clone())).await.body, "put");
        let delete = client
            .delete(admin)
            .header("authorization", format!("Bearer {TOKEN}"));
        assert_eq!(send(delete).await.status, StatusCode::NO_CONTENT);
        assert_eq!(send(client.get(request_url)).await.body, sent.as_bytes());
        assert_eq!(origin.hits(&sent), 2, "{target}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_fills_the_cache_and_sends_no_body() {
    let origin = Origin::start().await;
    origin.route("/h", Route::ok("v", "headless"));
    let server = proxy(&origin, |_| {}).await;
    let client = reqwest::Client::new();
    let head = client.head(url(&server, "/h")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert!(head.bytes().await.unwrap().is_empty());
    let got = eventually(&server, "/h", |g| g.cache_status.contains("hit")).await;
    assert_eq!(got.body, "headless");
    assert_eq!(origin.hits("/h"), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_hits_misses_and_errors() {
    let origin = Origin::start().await;
    origin.route("/m", Route::ok("v", "measured"));
    origin.route("/bad", Route::Status(500));
    let server = proxy(&origin, |_| {}).await;
    get(&server, "/m").await;
    get(&server, "/m").await;
    get(&server, "/bad").await;
    let metrics_addr = server.metrics_addr().unwrap();
    let text = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "daramjwee_hits_total{tier=\"0\"} 1",
        // The 500 went to the origin too, and passed through.
        "daramjwee_misses_total 2",
        "daramjwee_errors_total 1",
        "daramjwee_bytes_sent_total 16",
        "daramjwee_queue_depth ",
        "daramjwee_request_duration_seconds_count 3",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let health = reqwest::get(format!("http://{metrics_addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_origin_answers_without_an_origin() {
    let server = Server::start(ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tiers: vec!["mem".into()],
        ..ServeConfig::default()
    })
    .await
    .unwrap();
    let first = get(&server, "/hello").await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(first.cache_status.contains("fwd=miss"));
    let second = get(&server, "/hello").await;
    assert_eq!(second.cache_status, "daramjwee; hit; detail=tier0");
    assert_eq!(first.body, second.body);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_nothing_is_reused_beyond_what_the_origin_allows() {
    let origin = Origin::start().await;
    // A validator but no lifetime: kept, revalidated before every reuse.
    origin.route("/tagged", Route::ok("t1", "tagged"));
    // Neither: not kept at all.
    origin.route("/bare", Route::fields(200, &[], b"bare"));
    // A lifetime: reused for it.
    origin.route("/fresh", Route::controlled("f", "fresh", "max-age=60"));
    let server = proxy(&origin, |c| {
        *c = ServeConfig {
            listen: c.listen,
            origin: c.origin.clone(),
            tiers: c.tiers.clone(),
            ..ServeConfig::default()
        }
    })
    .await;
    assert_eq!(get(&server, "/tagged").await.body, "tagged");
    let again = get(&server, "/tagged").await;
    assert_eq!(again.body, "tagged");
    assert!(
        again.cache_status.contains("fwd=stale; fwd-status=304"),
        "{}",
        again.cache_status
    );
    assert_eq!(origin.hits("/tagged"), 2);
    for _ in 0..2 {
        let bare = get(&server, "/bare").await;
        assert_eq!(bare.body, "bare");
        assert!(
            !bare.cache_status.contains("stored"),
            "{}",
            bare.cache_status
        );
    }
    assert_eq!(origin.hits("/bare"), 2);
    get(&server, "/fresh").await;
    assert!(get(&server, "/fresh").await.cache_status.contains("hit"));
    assert_eq!(origin.hits("/fresh"), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_methods_pass_through_with_their_bodies_and_invalidate() {
    let origin = Origin::start().await;
    origin.route("/doc", Route::controlled("d1", "version 1", "max-age=600"));
    let server = proxy(&origin, |_| {}).await;
    let client = reqwest::Client::new();
    assert_eq!(get(&server, "/doc").await.body, "version 1");
    assert!(get(&server, "/doc").await.cache_status.contains("hit"));

    origin.route(
        "/doc",
        Route::fields(
            201,
            &[("location", "/doc/7"), ("x-origin", "yes")],
            b"created",
        ),
    );
    let posted = send(client.post(url(&server, "/doc")).body("a posted body")).await;
    assert_eq!(posted.status, StatusCode::CREATED);
    assert_eq!(posted.body, "created");
    let seen = origin.seen().pop().unwrap();
    assert_eq!(
        (seen.method.as_str(), &seen.body[..]),
        ("POST", &b"a posted body"[..])
    );
    // The stored GET is gone: the next one reaches the origin.
    origin.route("/doc", Route::controlled("d2", "version 2", "max-age=600"));
    assert_eq!(get(&server, "/doc").await.body, "version 2");
    for method in ["PUT", "DELETE", "PATCH", "OPTIONS"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let got = send(
            client
                .request(method.clone(), url(&server, "/doc"))
                .body("x"),
        )
        .await;
        assert_eq!(got.status, StatusCode::OK, "{method}");
        assert_eq!(origin.seen().pop().unwrap().method, method.as_str());
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_and_statuses_pass_as_they_came() {
    let origin = Origin::start().await;
    origin.route("/target", Route::ok("t", "the target"));
    origin.route(
        "/moved",
        Route::fields(301, &[("location", "/target")], b""),
    );
    origin.route(
        "/teapot",
        Route::fields(418, &[("x-brewed", "no")], b"short and stout"),
    );
    let server = proxy(&origin, |_| {}).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let moved = client.get(url(&server, "/moved")).send().await.unwrap();
    assert_eq!(moved.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(moved.headers()["location"], "/target");
    assert_eq!(origin.hits("/target"), 0, "the proxy did not follow it");
    let teapot = client.get(url(&server, "/teapot")).send().await.unwrap();
    assert_eq!(teapot.status().as_u16(), 418);
    assert_eq!(teapot.headers()["x-brewed"], "no");
    assert_eq!(teapot.text().await.unwrap(), "short and stout");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_the_origin_would_get_in_another_shape_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start().await;
    origin.fallback(Route::Echo);
    let server = proxy(&origin, |_| {}).await;
    for target in ["/sp/%2E%2E/%2E%2E/etc", "/a/../b", "/a/./b"] {
        let mut stream = tokio::net::TcpStream::connect(server.local_addr())
            .await
            .unwrap();
        let request = format!("GET {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{target}: {answer}");
    }
    assert_eq!(origin.total_hits(), 0, "nothing reached the origin");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_fields_are_kept_but_a_cookie_goes_to_its_client_only() {
    let origin = Origin::start().await;
    origin.route(
        "/page",
        Route::fields(
            200,
            &[
                ("cache-control", "max-age=600"),
                ("etag", "\"p\""),
                ("content-type", "text/html"),
                ("content-encoding", "identity"),
                ("link", "</style.css>; rel=preload"),
                ("access-control-allow-origin", "*"),
                ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ("set-cookie", "session=first-client"),
                ("set-cookie", "theme=dark"),
                ("connection", "x-hop"),
                ("x-hop", "dropped"),
            ],
            b"<p>page</p>",
        ),
    );
    let server = proxy(&origin, |_| {}).await;
    let client = reqwest::Client::new();
    let first = client
        .get(url(&server, "/page"))
        .header("connection", "x-secret")
        .header("x-secret", "1")
        .header("x-kept", "2")
        .send()
        .await
        .unwrap();
    let cookies: Vec<_> = first.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["session=first-client", "theme=dark"]);
    assert!(first.headers().get("x-hop").is_none());
    let upstream = &origin.seen()[0].headers;
    assert!(upstream.get("x-secret").is_none(), "hop-by-hop removed");
    assert_eq!(upstream["x-kept"], "2");
    assert_eq!(upstream["via"], "1.1 daramjwee");
    assert_eq!(upstream["x-forwarded-for"], "127.0.0.1");
    let second = client.get(url(&server, "/page")).send().await.unwrap();
    let headers = second.headers();
    assert!(headers["cache-status"].to_str().unwrap().contains("hit"));
    for (name, value) in [
        ("cache-control", "max-age=600"),
        ("etag", "\"p\""),
        ("content-type", "text/html"),
        ("content-encoding", "identity"),
        ("link", "</style.css>; rel=preload"),
        ("access-control-allow-origin", "*"),
        ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
    ] {
        assert_eq!(headers[name], value, "{name}");
    }
    assert!(
        headers.get("set-cookie").is_none(),
        "another client's cookie"
    );
    assert!(headers.get("x-hop").is_none());
    assert_eq!(origin.hits("/page"), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_credentials_are_not_shared() {
    let origin = Origin::start().await;
    origin.route("/mine", Route::controlled("m", "mine", "max-age=600"));
    let server = proxy(&origin, |_| {}).await;
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let got = send(
            client
                .get(url(&server, "/mine"))
                .header("authorization", "Basic dTpw"),
        )
        .await;
        assert_eq!(got.body, "mine");
        assert!(!got.cache_status.contains("hit"), "{}", got.cache_status);
    }
    assert_eq!(origin.hits("/mine"), 2);
    // A client without credentials does not get the credentialed answer.
    assert!(
        get(&server, "/mine")
            .await
            .cache_status
            .contains("fwd=miss")
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variants_of_a_response_that_varies_are_kept_side_by_side() {
    let origin = Origin::start().await;
    origin.route(
        "/varied",
        Route::Negotiated {
            field: "accept-language".into(),
        },
    );
    origin.route(
        "/star",
        Route::fields(
            200,
            &[("cache-control", "max-age=600"), ("vary", "*")],
            b"any",
        ),
    );
    for tiers in [
        vec!["mem".to_owned()],
        vec!["mem".to_owned(), "file".to_owned()],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let tiers: Vec<String> = tiers
            .iter()
            .map(|t| match t.as_str() {
                "file" => format!("file:{}", dir.path().display()),
                other => other.to_owned(),
            })
            .collect();
        let server = proxy(&origin, |c| c.tiers = tiers).await;
        let client = reqwest::Client::new();
        let ask = |language: Option<&'static str>| {
            let mut request = client.get(url(&server, "/varied"));
            if let Some(language) = language {
                request = request.header("accept-language", language);
            }
            send(request)
        };
        let before = origin.hits("/varied");
        for round in 0..2 {
            for language in [Some("fr"), Some("en"), None, Some("fr,  de")] {
                let got = ask(language).await;
                let want = language.map_or("-".to_owned(), |l| l.to_owned());
                assert_eq!(got.body, want.as_bytes(), "{language:?}");
                assert_eq!(
                    got.cache_status.contains("hit"),
                    round == 1,
                    "{language:?} round {round}: {}",
                    got.cache_status
                );
            }
        }
        assert_eq!(origin.hits("/varied") - before, 4, "one fetch a variant");
        // Spaces inside a member select the same variant.
        let got = ask(Some("fr, de")).await;
        assert!(got.cache_status.contains("hit"), "{}", got.cache_status);
        assert_eq!(got.body, "fr,  de");
        // A successful unsafe request invalidates every variant.
        let posted = client.post(url(&server, "/varied")).send().await.unwrap();
        assert_eq!(posted.status(), StatusCode::OK);
        for language in [Some("en"), Some("fr"), None] {
            let got = ask(language).await;
            assert!(
                got.cache_status.contains("fwd=miss"),
                "{language:?} after POST: {}",
                got.cache_status
            );
        }
        // `Vary: *` is never reused.
        for _ in 0..2 {
            assert!(!get(&server, "/star").await.cache_status.contains("hit"));
        }
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_asks_for_validation_staleness_or_the_cache_alone() {
    let origin = Origin::start().await;
    origin.route("/r", Route::controlled("v", "held", "max-age=1"));
    let server = proxy(&origin, |_| {}).await;
    let client = reqwest::Client::new();
    let with = |field: &'static str, value: &'static str, target: &'static str| {
        send(client.get(url(&server, target)).header(field, value))
    };
    assert_eq!(get(&server, "/r").await.body, "held");
    assert!(get(&server, "/r").await.cache_status.contains("hit"));
    assert!(origin.conditional().is_empty());
    // no-cache, Pragma: no-cache and max-age=0: validated with the origin
    // (a 304), then served from the cache.
    for (field, value) in [
        ("cache-control", "no-cache"),
        ("pragma", "no-cache"),
        ("cache-control", "max-age=0"),
    ] {
        let got = with(field, value, "/r").await;
        assert_eq!((got.status, &got.body[..]), (StatusCode::OK, &b"held"[..]));
        assert!(
            got.cache_status.contains("fwd=revalidated")
                || got.cache_status.contains("fwd-status=304"),
            "{field}: {value}: {}",
            got.cache_status
        );
    }
    assert_eq!(origin.conditional().len(), 3);
    // only-if-cached: the origin is never asked.
    let got = with("cache-control", "only-if-cached", "/never").await;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(origin.hits("/never"), 0);
    assert_eq!(
        with("cache-control", "only-if-cached", "/r").await.body,
        "held"
    );
    // Once past its lifetime: nothing for only-if-cached, and a client
    // accepting staleness gets it at once (refreshed behind); another
    // waits for the origin.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let hits = origin.hits("/r");
    let got = with("cache-control", "only-if-cached", "/r").await;
    assert_eq!(
        got.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        got.cache_status
    );
    let got = with("cache-control", "max-stale=60", "/r").await;
    assert_eq!(got.body, "held");
    assert!(
        got.cache_status.contains("fwd=stale; detail=revalidating"),
        "{}",
        got.cache_status
    );
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let got = get(&server, "/r").await;
    assert!(!got.cache_status.contains("hit"), "{}", got.cache_status);
    assert!(origin.hits("/r") > hits);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origins_stale_if_error_is_honoured_and_must_revalidate_forbids_any() {
    let origin = Origin::start().await;
    origin.route(
        "/own",
        Route::controlled("a", "own", "max-age=1, stale-if-error=60"),
    );
    origin.route(
        "/strict",
        Route::controlled("b", "strict", "max-age=1, must-revalidate"),
    );
    origin.route("/plain", Route::controlled("c", "plain", "max-age=1"));
    // The operator allows stale answers on errors; the origin decides.
    let server = proxy(&origin, |c| c.stale_if_error = Duration::from_secs(60)).await;
    for target in ["/own", "/strict", "/plain"] {
        assert_eq!(get(&server, target).await.status, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    for target in ["/own", "/strict", "/plain"] {
        origin.route(target, Route::Status(503));
    }
    let got = get(&server, "/own").await;
    assert_eq!((got.status, &got.body[..]), (StatusCode::OK, &b"own"[..]));
    let got = get(&server, "/plain").await;
    assert_eq!((got.status, &got.body[..]), (StatusCode::OK, &b"plain"[..]));
    let got = get(&server, "/strict").await;
    assert_eq!(
        got.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        got.cache_status
    );
    server.shutdown().await;
    // Without the operator's permission, the origin's own still counts.
    let origin = Origin::start().await;
    origin.route(
        "/own",
        Route::controlled("a", "own", "max-age=1, stale-if-error=60"),
    );
    origin.route("/plain", Route::controlled("c", "plain", "max-age=1"));
    let server = proxy(&origin, |_| {}).await;
    for target in ["/own", "/plain"] {
        assert_eq!(get(&server, target).await.status, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    for target in ["/own", "/plain"] {
        origin.route(target, Route::Status(503));
    }
    assert_eq!(get(&server, "/own").await.body, "own");
    assert_eq!(
        get(&server, "/plain").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_miss_states_its_length_and_is_published_before_its_end() {
    let origin = Origin::start().await;
    let server = proxy(&origin, |_| {}).await;
    let client = reqwest::Client::new();
    for i in 0..20 {
        let target = format!("/len/{i}");
        origin.route(
            &target,
            Route::controlled("t", &"x".repeat(100 + i), "max-age=600"),
        );
        let response = client.get(url(&server, &target)).send().await.unwrap();
        let length = response.headers().get("content-length").cloned();
        let cache_status = response.headers()["cache-status"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(cache_status.contains("stored"), "{cache_status}");
        assert_eq!(length.unwrap(), (100 + i).to_string().as_str());
        assert_eq!(response.bytes().await.unwrap().len(), 100 + i);
        // The body's end came after the entry was published.
        let again = get(&server, &target).await;
        assert!(
            again.cache_status.contains("hit"),
            "{i}: {}",
            again.cache_status
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_modified_since_is_answered_from_the_stored_last_modified() {
    let origin = Origin::start().await;
    origin.route(
        "/lm",
        Route::fields(
            200,
            &[
                ("cache-control", "max-age=600"),
                ("last-modified", "Wed, 01 Jan 2020 00:00:00 GMT"),
            ],
            b"dated",
        ),
    );
    let server = proxy(&origin, |_| {}).await;
    let client = reqwest::Client::new();
    assert_eq!(get(&server, "/lm").await.body, "dated");
    let since = |date: &'static str| {
        send(
            client
                .get(url(&server, "/lm"))
                .header("if-modified-since", date),
        )
    };
    let got = since("Wed, 01 Jan 2020 00:00:00 GMT").await;
    assert_eq!((got.status, got.body.len()), (StatusCode::NOT_MODIFIED, 0));
    let got = since("Tue, 31 Dec 2019 23:59:59 GMT").await;
    assert_eq!((got.status, &got.body[..]), (StatusCode::OK, &b"dated"[..]));
    let got = since("not a date").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(origin.hits("/lm"), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_past_its_expires_or_aged_upstream_is_not_fresh() {
    let origin = Origin::start().await;
    origin.route(
        "/expired",
        Route::fields(
            200,
            &[
                ("etag", "\"e\""),
                ("expires", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ],
            b"old news",
        ),
    );
    origin.route(
        "/aged",
        Route::fields(
            200,
            &[
                ("etag", "\"a\""),
                ("cache-control", "max-age=60"),
                ("age", "3600"),
            ],
            b"aged",
        ),
    );
    let server = proxy(&origin, |_| {}).await;
    for target in ["/expired", "/aged"] {
        get(&server, target).await;
        let again = get(&server, target).await;
        assert!(
            !again.cache_status.contains("hit"),
            "{target}: {}",
            again.cache_status
        );
        assert_eq!(origin.hits(target), 2, "{target}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_on_its_own_listener_and_put_on_the_proxy_goes_to_the_origin() {
    let origin = Origin::start().await;
    origin.route("/thing", Route::fields(204, &[], b""));
    let server = proxy(&origin, |_| {}).await;
    let client = reqwest::Client::new();
    let auth = format!("Bearer {TOKEN}");
    let put = client
        .put(url(&server, "/thing"))
        .header("authorization", &auth)
        .body("for the origin");
    assert_eq!(send(put).await.status, StatusCode::NO_CONTENT);
    let seen = origin.seen().pop().unwrap();
    assert_eq!(
        (seen.method.as_str(), &seen.body[..]),
        ("PUT", &b"for the origin"[..])
    );
    // The admin listener stores it, with the fields the request gave.
    let put = client
        .put(admin_url(&server, "/thing"))
        .header("authorization", &auth)
        .header("content-type", "text/x-admin")
        .header("cache-control", "max-age=600")
        .header("link", "</a>")
        .body("from the admin");
    assert_eq!(send(put).await.status, StatusCode::NO_CONTENT);
    let got = client.get(url(&server, "/thing")).send().await.unwrap();
    assert_eq!(got.headers()["content-type"], "text/x-admin");
    assert_eq!(got.headers()["link"], "</a>");
    assert!(got.headers().get("user-agent").is_none());
    assert_eq!(got.text().await.unwrap(), "from the admin");
    let seen_before = origin.seen().len();
    // Anything else on the admin listener is refused.
    let other = send(
        client
            .get(admin_url(&server, "/thing"))
            .header("authorization", &auth),
    )
    .await;
    assert_eq!(other.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(origin.seen().len(), seen_before);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_status_with_a_lifetime_is_stored_and_served_with_its_fields() {
    let origin = Origin::start().await;
    let answer = |status: u16, body: &[u8]| {
        Route::fields(
            status,
            &[("cache-control", "max-age=600"), ("location", "/elsewhere")],
            body,
        )
    };
    origin.route("/moved", answer(301, b""));
    origin.route("/missing", answer(404, b"no such page"));
    origin.route("/broken", answer(503, b"down for a while"));
    let server = proxy(&origin, |_| {}).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (target, status, body) in [
        ("/moved", 301, ""),
        ("/missing", 404, "no such page"),
        ("/broken", 503, "down for a while"),
    ] {
        for round in 0..2 {
            let got = client.get(url(&server, target)).send().await.unwrap();
            assert_eq!(got.status().as_u16(), status, "{target}");
            assert_eq!(got.headers()["location"], "/elsewhere", "{target}");
            let cache_status = got.headers()["cache-status"].to_str().unwrap().to_owned();
            assert_eq!(
                cache_status.contains("hit"),
                round == 1,
                "{target}: {cache_status}"
            );
            assert_eq!(got.text().await.unwrap(), body, "{target}");
        }
        assert_eq!(origin.hits(target), 1, "{target}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_updates_the_stored_fields_and_freshness() {
    let origin = Origin::start().await;
    origin.route("/doc", Route::controlled("v", "the body", "max-age=1"));
    let server = proxy(&origin, |c| c.fresh_for = Duration::ZERO).await;
    let client = reqwest::Client::new();
    assert_eq!(get(&server, "/doc").await.body, "the body");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The origin now says the same representation is good for an hour.
    origin.route("/doc", Route::controlled("v", "the body", "max-age=3600"));
    let revalidated = get(&server, "/doc").await;
    assert_eq!(revalidated.body, "the body");
    assert!(
        revalidated.cache_status.contains("fwd-status=304"),
        "{}",
        revalidated.cache_status
    );
    let hit = client.get(url(&server, "/doc")).send().await.unwrap();
    assert_eq!(hit.headers()["cache-control"], "max-age=3600");
    assert!(
        hit.headers()["cache-status"]
            .to_str()
            .unwrap()
            .contains("hit")
    );
    assert_eq!(
        hit.headers()["content-type"],
        "text/x-test",
        "kept from the 200"
    );
    assert_eq!(origin.hits("/doc"), 2);
    server.shutdown().await;
}

/// An origin on a raw socket that answers every request with `head`
/// (status line and fields, without the blank line) and a two-byte body;
/// the count is of requests it answered.
async fn raw_origin(head: Vec<u8>) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let answered = Arc::clone(&count);
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let head = head.clone();
            let answered = Arc::clone(&answered);
            tokio::spawn(async move {
                let mut buf = vec![0; 65536];
                let _ = stream.read(&mut buf).await;
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut response = head;
                response.extend_from_slice(b"content-length: 2\r\n\r\nok");
                let _ = stream.write_all(&response).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), count)
}

/// `serve` on its defaults (memory tier) in front of `origin`.
async fn plain_proxy(origin: String) -> Server {
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        origin: Some(origin),
        tiers: vec!["mem".into()],
        ..ServeConfig::default()
    };
    Server::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_header_block_over_the_limit_is_a_clear_502_and_nothing_is_stored() {
    let mut huge = b"HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\n".to_vec();
    huge.extend_from_slice(b"x-big: ");
    huge.extend(std::iter::repeat_n(b'a', 512 * 1024));
    huge.extend_from_slice(b"\r\n");
    let mut many = b"HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\n".to_vec();
    for i in 0..200 {
        many.extend_from_slice(format!("x-field-{i}: v\r\n").as_bytes());
    }
    for head in [huge, many] {
        let (origin_url, answered) = raw_origin(head).await;
        let server = plain_proxy(origin_url).await;
        for round in 1..=2 {
            let got = get(&server, "/h").await;
            assert_eq!(got.status, StatusCode::BAD_GATEWAY, "round {round}");
            let text = String::from_utf8_lossy(&got.body).to_string();
            assert!(
                text.contains("too large") || text.contains("too many"),
                "the reason is said: {text}"
            );
            // Nothing stored: the next request goes to the origin again.
            assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), round);
        }
        let passed = reqwest::Client::new()
            .post(url(&server, "/h"))
            .send()
            .await
            .unwrap();
        assert_eq!(passed.status(), StatusCode::BAD_GATEWAY);
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_bytes_beyond_ascii_reach_the_client_untouched() {
    let utf8 = "attachment; filename=\"r\u{e9}sum\u{e9}.pdf\"";
    let cases: [(Vec<u8>, bool); 2] = [
        // UTF-8 beyond ASCII: kept with the entry, sent on every hit.
        (
            format!("content-disposition: {utf8}\r\n").into_bytes(),
            true,
        ),
        // Not UTF-8: passed as it came, never stored (nor altered).
        (b"x-raw: caf\xe9\r\n".to_vec(), false),
    ];
    for (field, kept) in cases {
        let mut head = b"HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\n".to_vec();
        head.extend_from_slice(&field);
        let (origin_url, answered) = raw_origin(head).await;
        let server = plain_proxy(origin_url).await;
        let (name, value) = {
            let text = &field[..field.len() - 2];
            let at = text.iter().position(|b| *b == b':').unwrap();
            (
                String::from_utf8(text[..at].to_vec()).unwrap(),
                text[at + 2..].to_vec(),
            )
        };
        for round in 1..=2 {
            let response = reqwest::get(url(&server, "/f")).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                response.headers()[name.as_str()].as_bytes(),
                &value[..],
                "{name}, round {round}"
            );
            let cache_status = response.headers()["cache-status"]
                .to_str()
                .unwrap()
                .to_owned();
            assert_eq!(response.bytes().await.unwrap(), "ok");
            if kept && round == 2 {
                assert!(cache_status.contains("hit"), "{cache_status}");
            }
        }
        let fetched = answered.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(fetched, if kept { 1 } else { 2 }, "{name}");
        server.shutdown().await;
    }
}

/// Count this process's open file descriptors.
#[cfg(target_os = "linux")]
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_neither_hold_connections_nor_keep_others_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SLOW: usize = 300;
    let origin = Origin::start().await;
    origin.route("/doc", Route::controlled("d", "served", "max-age=600"));
    let server = proxy(&origin, |c| {
        c.header_timeout = Duration::from_secs(1);
        c.max_connections = 100;
    })
    .await;
    assert_eq!(get(&server, "/doc").await.body, "served");
    let baseline = open_descriptors();
    // Half a request head each, then nothing.
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        let mut stream = tokio::net::TcpStream::connect(server.local_addr())
            .await
            .unwrap();
        stream
            .write_all(b"GET /doc HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(stream);
    }
    // More than the limit wait in the backlog; a normal client is served
    // once the slow ones that hold connections run out of time.
    let normal = tokio::time::timeout(Duration::from_secs(30), get(&server, "/doc"))
        .await
        .expect("a normal client is served while slow ones wait");
    assert_eq!(normal.status, StatusCode::OK);
    // Every slow client is closed by the server, without an answer or
    // with a 408, never served.
    for mut stream in slow {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
            .await
            .expect("the server closes a connection whose head never ends");
        assert!(read.is_ok() || answer.is_empty());
        let text = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    }
    // The server's descriptors come back to where they were.
    let mut now = open_descriptors();
    for _ in 0..100 {
        if now <= baseline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        now = open_descriptors();
    }
    assert!(now <= baseline, "{now} descriptors open, {baseline} before");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_over_the_limits_are_refused_with_431() {
    let origin = Origin::start().await;
    origin.route("/doc", Route::controlled("d", "served", "max-age=600"));
    let server = proxy(&origin, |c| {
        c.max_header_size = 4 << 10;
        c.max_headers = 20;
    })
    .await;
    let client = reqwest::Client::new();
    let big = client
        .get(url(&server, "/doc"))
        .header("x-big", "a".repeat(8 << 10))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let mut many = client.get(url(&server, "/doc"));
    for i in 0..40 {
        many = many.header(format!("x-field-{i}"), "1");
    }
    let many = many.send().await.unwrap();
    assert_eq!(many.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(origin.hits("/doc"), 0, "nothing reached the origin");
    assert_eq!(get(&server, "/doc").await.body, "served");
    server.shutdown().await;
}

/// Send `raw` on a connection of its own; the answer's status line and
/// whether the server closed the connection after it.
async fn raw_exchange(server: &Server, raw: &[u8]) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    stream.write_all(raw).await.unwrap();
    let mut answer = Vec::new();
    let closed = matches!(
        tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer)).await,
        Ok(Ok(_))
    );
    let text = String::from_utf8_lossy(&answer);
    (text.lines().next().unwrap_or_default().to_owned(), closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_that_could_be_read_two_ways_are_refused_never_passed_on() {
    let origin = Origin::start().await;
    origin.fallback(Route::controlled("d", "served", "max-age=600"));
    let server = proxy(&origin, |_| {}).await;
    let refused: [(&str, &[u8]); 11] = [
        (
            "two Content-Lengths",
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd",
        ),
        (
            "obs-fold",
            b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
        ),
        (
            "NUL in a value",
            b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
        ),
        (
            "bare CR in a value",
            b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
        ),
        (
            "space before the colon",
            b"GET /a HTTP/1.1\r\nHost: x\r\nX-A : a\r\n\r\n",
        ),
        (
            "a transfer coding other than chunked",
            b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            b"POST /a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        ("no Host on HTTP/1.1", b"GET /a HTTP/1.1\r\n\r\n"),
        (
            "two Hosts",
            b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ),
        (
            "CONNECT's authority form",
            b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
        ),
        ("OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"),
    ];
    for (what, raw) in refused {
        let (status, closed) = raw_exchange(&server, raw).await;
        assert!(status.starts_with("HTTP/1.1 400"), "{what}: {status}");
        assert!(closed, "{what}: the connection is closed after a 400");
    }
    assert_eq!(origin.total_hits(), 0, "nothing refused reached the origin");
    // Both framings: read by Transfer-Encoding alone, as RFC 9112 §6.1
    // allows, passed on in that one shape, and the connection closed.
    let (status, closed) = raw_exchange(
        &server,
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(closed, "a request framed both ways ends its connection");
    let seen = origin.seen();
    let post = seen.iter().find(|s| s.method == "POST").expect("the POST");
    assert!(post.body.is_empty());
    assert!(post.headers.get("content-length").is_none_or(|v| v == "0"));
    assert_eq!(origin.hits("/smuggled"), 0, "what followed was not read");
    // An absolute-form target is its path on this origin (RFC 9112 §3.2.2).
    let (status, _) = raw_exchange(
        &server,
        b"GET http://elsewhere.example/b?c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(origin.hits("/b?c"), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_origin_connections_wait_then_give_up() {
    let origin = Origin::start().await;
    let dropped = Arc::new(Notify::new());
    origin.route(
        "/endless",
        Route::Endless {
            dropped: Arc::clone(&dropped),
        },
    );
    origin.route("/doc", Route::controlled("d", "served", "max-age=600"));
    let server = proxy(&origin, |c| {
        c.max_origin_connections = 2;
        c.origin_timeout = Duration::from_secs(1);
    })
    .await;
    let client = reqwest::Client::new();
    // Two answers whose bodies never end hold both places at the origin.
    let mut held = Vec::new();
    for _ in 0..2 {
        let response = client.post(url(&server, "/endless")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.bytes_stream();
        assert!(body.next().await.unwrap().is_ok());
        held.push(body);
    }
    // A third request waits for a place, then gets 504 without reaching
    // the origin.
    let waited = get(&server, "/doc").await;
    assert_eq!(waited.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        waited.cache_status.contains("timeout"),
        "{}",
        waited.cache_status
    );
    assert_eq!(origin.hits("/doc"), 0);
    // A client that goes away gives its place back.
    held.pop();
    dropped.notified().await;
    let mut served = get(&server, "/doc").await;
    for _ in 0..50 {
        if served.status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        served = get(&server, "/doc").await;
    }
    assert_eq!(served.body, "served");
    assert_eq!(origin.hits("/doc"), 1);
    drop(held);
    server.shutdown().await;
}
