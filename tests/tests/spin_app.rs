//! The Spin app (`examples/spin`) in a host that runs it as Spin 4.1
//! does (one instance, reused, sent concurrent requests), with stand-ins
//! for Spin's key-value store and variables, in front of a real origin.

#[path = "../support/origin.rs"]
mod origin;
#[path = "../support/spin_host.rs"]
mod spin_host;

use std::path::Path;
use std::time::Duration;

use origin::{Origin, Route, letters};
use spin_host::{KvData, SpinHost};

const SPIN_APP: &str = env!("DARAMJWEE_SPIN_WASM");

/// Start the app as `spin up --variable origin_host=ORIGIN --variable
/// ...` would: application variables (the manifest's defaults, then
/// `extra`) expanded into the component's variables by `spin.toml`.
async fn start(origin: &Origin, kv: &KvData, extra: &[(&str, &str)]) -> SpinHost {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/spin/spin.toml");
    let manifest: toml::Table = std::fs::read_to_string(path)
        .expect("examples/spin/spin.toml")
        .parse()
        .expect("valid TOML");
    let mut app: Vec<(String, String)> = manifest["variables"]
        .as_table()
        .expect("application variables")
        .iter()
        .map(|(name, v)| (name.clone(), v["default"].as_str().unwrap().to_owned()))
        .collect();
    let origin_host = origin.url();
    // As an operator would set them (`SPIN_VARIABLE_FRESH_FOR=60s`): the
    // test origin's plain answers state no lifetime, and most tests are
    // about what happens once one is kept.
    let kept = [
        ("origin_host", origin_host.as_str()),
        ("fresh_for", "60s"),
        ("negative_fresh_for", "10s"),
    ];
    for (name, value) in kept.iter().chain(extra) {
        app.retain(|(n, _)| n != name);
        app.push(((*name).to_owned(), (*value).to_owned()));
    }
    let component: Vec<(String, String)> = manifest["component"]["daramjwee"]["variables"]
        .as_table()
        .expect("component variables")
        .iter()
        .map(|(name, template)| {
            let mut value = template.as_str().unwrap().to_owned();
            for (var, text) in &app {
                value = value.replace(&format!("{{{{ {var} }}}}"), text);
            }
            assert!(!value.contains("{{"), "{name}: {value}");
            (name.clone(), value)
        })
        .collect();
    let variables: Vec<(&str, &str)> = component
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    SpinHost::start(Path::new(SPIN_APP), &variables, kv).await
}

#[tokio::test(flavor = "multi_thread")]
async fn miss_then_hit_from_the_key_value_store() {
    let origin = Origin::start().await;
    origin.route("/doc?v=1", Route::ok("v1", "hello from the origin"));
    let kv = KvData::default();
    let mut app = start(&origin, &kv, &[]).await;

    let first = app.get("/doc?v=1", &[]).await;
    assert_eq!(first.status, 200, "{:?} {:?}", first.headers, first.body);
    assert_eq!(first.body.as_deref().unwrap(), b"hello from the origin");
    assert!(
        first.header("cache-status").contains("fwd=miss"),
        "{}",
        first.header("cache-status")
    );
    assert!(first.header("cache-status").contains("stored"));
    assert_eq!(kv.len(), 1, "one value written");
    let second = app.get("/doc?v=1", &[]).await;
    assert!(second.header("cache-status").contains("hit"));
    assert_eq!(second.header("etag"), "\"v1\"");
    assert_eq!(second.body.as_deref().unwrap(), b"hello from the origin");
    assert_eq!(origin.hits("/doc?v=1"), 1);

    // A new instance over the same store (a restarted Spin) finds it.
    drop(app);
    let mut app = start(&origin, &kv, &[]).await;
    let third = app.get("/doc?v=1", &[]).await;
    assert!(third.header("cache-status").contains("hit"));
    assert_eq!(origin.hits("/doc?v=1"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_cold_requests_share_one_origin_fetch_in_one_instance() {
    let origin = Origin::start().await;
    let body = letters(200 << 10);
    origin.route(
        "/cold",
        Route::slow("c1", &body, Duration::from_millis(500)),
    );
    let kv = KvData::default();
    let mut app = start(&origin, &kv, &[]).await;

    let targets = ["/cold"; 16];
    let replies = app.get_all(&targets, &[]).await.expect("no trap");
    assert_eq!(replies.len(), 16);
    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.header("cache-status"));
        let got = reply.body.as_ref().expect("a whole body");
        assert!(got == body.as_bytes(), "a body arrived cut or changed");
    }
    assert_eq!(origin.hits("/cold"), 1, "one origin fetch for sixteen");
    let collapsed = replies
        .iter()
        .filter(|r| r.header("cache-status").contains("collapsed"))
        .count();
    assert!(collapsed > 0, "no request joined the fetch");

    // The same instance goes on serving, hits now, many at once again.
    let replies = app.get_all(&targets, &[]).await.expect("no trap");
    for reply in &replies {
        assert!(reply.header("cache-status").contains("hit"));
        assert!(reply.body.as_ref().unwrap() == body.as_bytes());
    }
    // And a new key, cold, concurrently, after the instance was reused.
    origin.route("/later", Route::ok("l1", "later"));
    let replies = app.get_all(&["/later"; 16], &[]).await.expect("no trap");
    assert!(
        replies
            .iter()
            .all(|r| r.body.as_deref().unwrap() == b"later")
    );
    assert_eq!(origin.hits("/later"), 1);
    assert_eq!(app.served(), 48);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_entry_limit_is_served_and_not_said_stored() {
    let origin = Origin::start().await;
    let big = letters(300 << 10);
    origin.route(
        "/chunked",
        Route::Chunked {
            tag: "\"ch\"".into(),
            body: big.clone().into(),
        },
    );
    origin.route("/sized", Route::ok("sz", &big));
    let kv = KvData::default();
    let mut app = start(&origin, &kv, &[("max_entry_bytes", "65536")]).await;

    for target in ["/chunked", "/sized"] {
        for _ in 0..2 {
            let reply = app.get(target, &[]).await;
            assert_eq!(reply.status, 200);
            assert!(reply.body.as_ref().unwrap() == big.as_bytes());
            let status = reply.header("cache-status");
            assert!(status.contains("fwd=miss"), "{target}: {status}");
            assert!(!status.contains("stored"), "{target}: {status}");
        }
        assert_eq!(origin.hits(target), 2, "{target} was not kept");
    }
    assert_eq!(kv.len(), 0, "nothing was stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_not_found_answers_are_remembered() {
    let origin = Origin::start().await;
    origin.route("/gone", Route::Status(404));
    let kv = KvData::default();
    let mut app = start(&origin, &kv, &[]).await;

    let replies = app.get_all(&["/gone"; 16], &[]).await.expect("no trap");
    assert!(replies.iter().all(|r| r.status == 404));
    let again = app.get("/gone", &[]).await;
    assert_eq!(again.status, 404);
    assert!(again.header("cache-status").contains("hit"));
    assert_eq!(origin.hits("/gone"), 1);
}
