//! The `wasi:http` middleware (`examples/wasi-http`) in the stock
//! `wasmtime serve`, between a real HTTP client and a real origin; and
//! the Spin app's imports checked against what a Spin 4.1 runtime offers.

#[path = "../support/origin.rs"]
mod origin;
#[path = "../support/stock_wasmtime.rs"]
mod stock_wasmtime;

use std::path::Path;
use std::time::{Duration, Instant};

use origin::{Origin, Route, letters};
use stock_wasmtime::{Instances, Serve};
use wasmparser::{Parser, Payload};

const MIDDLEWARE: &str = env!("DARAMJWEE_WASI_HTTP_WASM");
const SPIN_APP: &str = env!("DARAMJWEE_SPIN_WASM");

/// Serve the middleware in front of `origin` with extra settings. The
/// test origin's plain answers state no lifetime: unless a test says
/// otherwise, they are kept for 60 s, as most tests are about what
/// happens once one is kept.
fn serve(instances: Instances, origin: &Origin, dir: &Path, extra: &[(&str, &str)]) -> Serve {
    let mut env = vec![("DARAMJWEE_ORIGIN", origin.url())];
    if !extra.iter().any(|(k, _)| *k == "DARAMJWEE_FRESH_FOR") {
        env.push(("DARAMJWEE_FRESH_FOR", "60s".to_owned()));
    }
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    Serve::start_with(instances, Path::new(MIDDLEWARE), dir, &env)
}

/// A scenario run twice: with an instance per request (the stock
/// `wasmtime serve`'s default), and with instances reused and sent
/// concurrent requests, as Spin runs apps.
macro_rules! both_ways {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn instance_per_request() {
                super::$name(super::Instances::PerRequest).await
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn instances_reused() {
                super::$name(super::Instances::Reused).await
            }
        }
    };
}

struct Answer {
    status: u16,
    cache_status: String,
    etag: Option<String>,
    body: String,
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    let client = reqwest::Client::new();
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("the middleware answers");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let cache_status = header("cache-status").unwrap_or_default();
    let etag = header("etag");
    let status = response.status().as_u16();
    let body = response.text().await.expect("a whole body");
    Answer {
        status,
        cache_status,
        etag,
        body,
    }
}

/// Poll `check` for up to ten seconds; background work has no deadline
/// the test could wait for exactly.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within ten seconds");
}

both_ways!(miss_then_hit_contacts_the_origin_once);
async fn miss_then_hit_contacts_the_origin_once(instances: Instances) {
    let origin = Origin::start().await;
    origin.route("/doc?v=1", Route::ok("v1", "hello from the origin"));
    let dir = tempfile::tempdir().unwrap();
    let server = serve(instances, &origin, dir.path(), &[]);
    let url = format!("{}/doc?v=1", server.url());

    let first = get(&url, &[]).await;
    assert_eq!(first.status, 200, "{}", server.log());
    assert_eq!(first.body, "hello from the origin");
    assert!(
        first.cache_status.contains("fwd=miss"),
        "{}",
        first.cache_status
    );
    let second = get(&url, &[]).await;
    assert_eq!(second.body, "hello from the origin");
    assert!(
        second.cache_status.contains("hit"),
        "{}",
        second.cache_status
    );
    assert_eq!(second.etag.as_deref(), Some("\"v1\""));
    assert_eq!(origin.hits("/doc?v=1"), 1);
}

both_ways!(large_bodies_arrive_whole_on_miss_and_hit);
async fn large_bodies_arrive_whole_on_miss_and_hit(instances: Instances) {
    let body = letters(4 << 20);
    let origin = Origin::start().await;
    origin.route("/big", Route::ok("big", &body));
    let dir = tempfile::tempdir().unwrap();
    let server = serve(instances, &origin, dir.path(), &[]);
    let url = format!("{}/big", server.url());

    for expected in ["fwd=miss", "hit"] {
        let answer = get(&url, &[]).await;
        assert_eq!(answer.status, 200);
        assert!(
            answer.cache_status.contains(expected),
            "{}",
            answer.cache_status
        );
        assert_eq!(answer.body.len(), body.len());
        assert!(answer.body == body, "the body differs");
    }
    assert_eq!(origin.hits("/big"), 1);
}

both_ways!(if_none_match_gets_not_modified);
async fn if_none_match_gets_not_modified(instances: Instances) {
    let origin = Origin::start().await;
    origin.route("/tagged", Route::ok("v7", "tagged body"));
    let dir = tempfile::tempdir().unwrap();
    let server = serve(instances, &origin, dir.path(), &[]);
    let url = format!("{}/tagged", server.url());

    assert_eq!(get(&url, &[]).await.status, 200);
    let matched = get(&url, &[("if-none-match", "\"v7\"")]).await;
    assert_eq!(matched.status, 304);
    assert_eq!(matched.body, "");
    let other = get(&url, &[("if-none-match", "\"v6\"")]).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.body, "tagged body");
    assert_eq!(origin.hits("/tagged"), 1);
}

both_ways!(origin_not_found_is_cached_for_the_negative_window);
async fn origin_not_found_is_cached_for_the_negative_window(instances: Instances) {
    let origin = Origin::start().await;
    origin.route("/gone", Route::Status(404));
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        instances,
        &origin,
        dir.path(),
        &[("DARAMJWEE_NEGATIVE_FRESH_FOR", "1s")],
    );
    let url = format!("{}/gone", server.url());

    let first = get(&url, &[]).await;
    assert_eq!(first.status, 404);
    let second = get(&url, &[]).await;
    assert_eq!(second.status, 404);
    assert!(
        second.cache_status.contains("hit"),
        "{}",
        second.cache_status
    );
    assert_eq!(origin.hits("/gone"), 1, "served from the negative entry");

    // Past the window the origin is asked again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    origin.route("/gone", Route::ok("back", "it is back"));
    eventually("a refetch after the negative window", async || {
        get(&url, &[]).await.body == "it is back"
    })
    .await;
    assert!(origin.hits("/gone") >= 2);
}

both_ways!(origin_errors_are_not_cached);
async fn origin_errors_are_not_cached(instances: Instances) {
    let origin = Origin::start().await;
    origin.route("/broken", Route::Status(500));
    let dir = tempfile::tempdir().unwrap();
    let server = serve(instances, &origin, dir.path(), &[]);
    let url = format!("{}/broken", server.url());

    for _ in 0..2 {
        let answer = get(&url, &[]).await;
        assert_eq!(answer.status, 500, "passed as it came");
        assert!(
            answer.cache_status.contains("fwd-status=500")
                && !answer.cache_status.contains("stored"),
            "{}",
            answer.cache_status
        );
    }
    assert_eq!(
        origin.hits("/broken"),
        2,
        "every request went to the origin"
    );
    let entries = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(entries, 0, "nothing was stored");
}

both_ways!(entries_survive_a_restart_of_the_host);
async fn entries_survive_a_restart_of_the_host(instances: Instances) {
    let origin = Origin::start().await;
    origin.route("/kept", Route::ok("k1", "kept across restarts"));
    let dir = tempfile::tempdir().unwrap();
    let first = serve(instances, &origin, dir.path(), &[]);
    assert_eq!(get(&format!("{}/kept", first.url()), &[]).await.status, 200);
    first.stop();

    let second = serve(instances, &origin, dir.path(), &[]);
    let answer = get(&format!("{}/kept", second.url()), &[]).await;
    assert_eq!(answer.body, "kept across restarts");
    assert!(
        answer.cache_status.contains("hit"),
        "{}",
        answer.cache_status
    );
    assert_eq!(origin.hits("/kept"), 1);
}

both_ways!(stale_while_revalidate_serves_stale_then_the_new_version);
async fn stale_while_revalidate_serves_stale_then_the_new_version(instances: Instances) {
    let origin = Origin::start().await;
    origin.route(
        "/swr",
        Route::controlled("s1", "first", "max-age=1, stale-while-revalidate=60"),
    );
    let dir = tempfile::tempdir().unwrap();
    let server = serve(instances, &origin, dir.path(), &[]);
    let url = format!("{}/swr", server.url());

    assert_eq!(get(&url, &[]).await.body, "first");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    origin.route(
        "/swr",
        Route::controlled("s2", "second", "max-age=60, stale-while-revalidate=60"),
    );
    let stale = get(&url, &[]).await;
    assert_eq!(stale.body, "first", "the stale copy is served at once");
    assert!(
        stale.cache_status.contains("fwd=stale"),
        "{}",
        stale.cache_status
    );
    eventually("the refreshed version", async || {
        get(&url, &[]).await.body == "second"
    })
    .await;
    assert_eq!(
        origin.conditional(),
        vec!["\"s1\"".to_owned()],
        "revalidated with the tag held"
    );
}

both_ways!(a_missing_origin_setting_is_a_clear_error);
async fn a_missing_origin_setting_is_a_clear_error(instances: Instances) {
    let dir = tempfile::tempdir().unwrap();
    let server = Serve::start_with(instances, Path::new(MIDDLEWARE), dir.path(), &[]);
    let answer = get(&format!("{}/x", server.url()), &[]).await;
    assert_eq!(answer.status, 500);
    assert!(answer.body.contains("origin: not set"), "{}", answer.body);
}

both_ways!(concurrent_cold_requests_share_one_origin_fetch);
async fn concurrent_cold_requests_share_one_origin_fetch(instances: Instances) {
    let origin = Origin::start().await;
    let body = letters(64 << 10);
    origin.route(
        "/cold",
        Route::slow("c1", &body, Duration::from_millis(500)),
    );
    let dir = tempfile::tempdir().unwrap();
    let server = serve(instances, &origin, dir.path(), &[]);
    let url = format!("{}/cold", server.url());

    let answers = futures::future::join_all((0..16).map(|_| get(&url, &[]))).await;
    for answer in &answers {
        assert_eq!(answer.status, 200, "{}\n{}", answer.body, server.log());
        assert!(answer.body == body, "a body arrived cut or changed");
    }
    if let Instances::Reused = instances {
        // Requests that share an instance share its fetch. The host may
        // still spread sixteen over a few instances (each fetches once),
        // so the count is bounded, not one; `tests/tests/spin_app.rs`
        // holds one instance to exactly one fetch.
        assert!(origin.hits("/cold") < 16, "{}", server.log());
        let joined = answers
            .iter()
            .filter(|a| a.cache_status.contains("collapsed"))
            .count();
        assert!(joined > 0, "no request joined the fetch");
    }
    // And the instance keeps serving: the entry is a hit for everyone.
    let again = futures::future::join_all((0..16).map(|_| get(&url, &[]))).await;
    for answer in &again {
        assert_eq!(answer.status, 200, "{}", server.log());
        assert!(
            answer.cache_status.contains("hit"),
            "{}",
            answer.cache_status
        );
        assert!(answer.body == body);
    }
}

/// The component-level imports and exports of a component file.
fn interfaces(path: &str) -> (Vec<String>, Vec<String>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(&bytes) {
        match payload.expect("a valid component") {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    imports.push(import.unwrap().name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    exports.push(export.unwrap().name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    (imports, exports)
}

/// Whether a Spin 4.1 runtime provides `import`: WASI 0.2 (what Rust's
/// std imports), the WASI 0.3.0 interfaces and Spin's own interfaces of
/// spin-sdk 7's platform (`spin:key-value@3.0.0`, `spin:variables@3.0.0`).
fn spin_provides(import: &str) -> bool {
    let Some((name, version)) = import.split_once('@') else {
        return false;
    };
    let wasi_02 = [
        "wasi:cli/",
        "wasi:clocks/",
        "wasi:filesystem/",
        "wasi:io/",
        "wasi:random/",
        "wasi:sockets/",
    ];
    let wasi_03 = [
        "wasi:cli/",
        "wasi:clocks/",
        "wasi:filesystem/",
        "wasi:random/",
        "wasi:sockets/",
        "wasi:http/types",
        "wasi:http/client",
    ];
    // Wasmtime (Spin's runtime) links an import to any semver-compatible
    // version it defines: every released 0.2.x, none of the pre-releases.
    let in_02 = version.starts_with("0.2.") && !version.contains('-');
    (in_02 && wasi_02.iter().any(|p| name.starts_with(p)))
        || (version == "0.3.0" && wasi_03.iter().any(|p| name.starts_with(p)))
        || (version == "3.0.0"
            && ["spin:key-value/key-value", "spin:variables/variables"].contains(&name))
}

#[test]
fn the_spin_app_imports_only_what_spin_provides() {
    let (imports, exports) = interfaces(SPIN_APP);
    let foreign: Vec<_> = imports.iter().filter(|i| !spin_provides(i)).collect();
    assert!(foreign.is_empty(), "not provided by Spin 4.1: {foreign:?}");
    for needed in [
        "spin:key-value/key-value@3.0.0",
        "spin:variables/variables@3.0.0",
        "wasi:http/client@0.3.0",
    ] {
        assert!(
            imports.iter().any(|i| i == needed),
            "{needed} missing from {imports:?}"
        );
    }
    assert_eq!(exports, vec!["wasi:http/handler@0.3.0".to_owned()]);
    assert!(!spin_provides("wasi:keyvalue/store@0.2.0-draft2"));
    assert!(!spin_provides("daramjwee:cache/store@0.1.0"));
}

#[test]
fn the_middleware_is_a_wasi_http_handler() {
    let (imports, exports) = interfaces(MIDDLEWARE);
    assert_eq!(exports, vec!["wasi:http/handler@0.3.0".to_owned()]);
    assert!(
        imports.iter().any(|i| i == "wasi:http/client@0.3.0"),
        "{imports:?}"
    );
    assert!(
        !imports.iter().any(|i| i.starts_with("daramjwee:")),
        "the engine is linked in, not imported: {imports:?}"
    );
}

#[test]
fn the_spin_manifest_passes_every_setting_and_allows_only_the_origin() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/spin/spin.toml");
    let manifest: toml::Table = std::fs::read_to_string(path)
        .expect("examples/spin/spin.toml")
        .parse()
        .expect("valid TOML");
    let component = &manifest["component"]["daramjwee"];
    let passed = component["variables"]
        .as_table()
        .expect("component variables");
    let mut expected: Vec<&str> = daramjwee_http_cache::Settings::NAMES.to_vec();
    expected.push("max_entry_bytes");
    let mut names: Vec<&str> = passed.keys().map(String::as_str).collect();
    names.sort_unstable();
    expected.sort_unstable();
    assert_eq!(names, expected);
    let app_vars = manifest["variables"]
        .as_table()
        .expect("application variables");
    for value in passed.values() {
        let value = value.as_str().expect("a template");
        for var in value.split("{{").skip(1) {
            let var = var.split("}}").next().unwrap().trim();
            assert!(
                app_vars.contains_key(var),
                "{var} is not an application variable"
            );
        }
    }
    assert_eq!(
        component["allowed_outbound_hosts"].as_array().unwrap(),
        &vec![toml::Value::from("{{ origin_host }}")]
    );
    assert_eq!(
        component["key_value_stores"].as_array().unwrap(),
        &vec![toml::Value::from("default")]
    );
}

both_ways!(by_default_nothing_is_reused_beyond_what_the_origin_allows);
async fn by_default_nothing_is_reused_beyond_what_the_origin_allows(instances: Instances) {
    let origin = Origin::start().await;
    origin.route("/plain", Route::ok("p", "no lifetime"));
    origin.route("/kept", Route::controlled("k", "kept", "max-age=600"));
    origin.route("/gone", Route::Status(404));
    let dir = tempfile::tempdir().unwrap();
    let env = [("DARAMJWEE_ORIGIN", origin.url())];
    let server = Serve::start_with(instances, Path::new(MIDDLEWARE), dir.path(), &env);
    for _ in 0..2 {
        let plain = get(&format!("{}/plain", server.url()), &[]).await;
        assert_eq!(plain.body, "no lifetime");
        assert!(
            !plain.cache_status.contains("hit"),
            "{}",
            plain.cache_status
        );
        assert_eq!(
            get(&format!("{}/gone", server.url()), &[]).await.status,
            404
        );
    }
    assert_eq!(
        origin.hits("/gone"),
        2,
        "a 404 without a lifetime is not kept"
    );
    // Validated each time it is asked (it has a validator): revalidated,
    // not refetched, and never served without asking.
    assert_eq!(origin.hits("/plain"), 2);
    assert_eq!(
        get(&format!("{}/kept", server.url()), &[]).await.body,
        "kept"
    );
    let kept = get(&format!("{}/kept", server.url()), &[]).await;
    assert!(kept.cache_status.contains("hit"), "{}", kept.cache_status);
}

both_ways!(other_methods_and_statuses_pass_through_and_invalidate);
async fn other_methods_and_statuses_pass_through_and_invalidate(instances: Instances) {
    let origin = Origin::start().await;
    origin.route("/doc", Route::controlled("d", "stored", "max-age=600"));
    origin.route("/broken", Route::Status(500));
    origin.route("/moved", Route::fields(301, &[("location", "/doc")], b""));
    let dir = tempfile::tempdir().unwrap();
    let server = serve(instances, &origin, dir.path(), &[]);
    let url = |target: &str| format!("{}{target}", server.url());
    assert_eq!(get(&url("/doc"), &[]).await.body, "stored");
    assert!(get(&url("/doc"), &[]).await.cache_status.contains("hit"));
    // A POST reaches the origin with its body and fields; its success
    // invalidates the stored GET.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let posted = client
        .post(url("/doc"))
        .header("x-client", "1")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status().as_u16(), 200);
    let seen = origin.seen();
    let post = seen
        .iter()
        .find(|s| s.method == "POST")
        .expect("the POST reached the origin");
    assert_eq!(&post.body[..], b"payload");
    assert_eq!(post.headers["x-client"], "1");
    assert!(post.headers["via"].to_str().unwrap().contains("daramjwee"));
    let after = get(&url("/doc"), &[]).await;
    assert!(
        after.cache_status.contains("fwd=miss"),
        "{}",
        after.cache_status
    );
    // Statuses pass as they came and redirects are never followed (a 301
    // is kept for the lifetime the operator gives, and answered as a 301).
    for _ in 0..2 {
        assert_eq!(get(&url("/broken"), &[]).await.status, 500);
        let moved = client.get(url("/moved")).send().await.unwrap();
        assert_eq!(moved.status().as_u16(), 301);
        assert_eq!(moved.headers()["location"], "/doc");
    }
    assert_eq!(origin.hits("/broken"), 2);
    // GET, POST, GET after the invalidation: the redirect to it was not
    // followed.
    assert_eq!(origin.hits("/doc"), 3, "the redirect was not followed");
    // The client's fields reach the origin on a fill too.
    let fields_seen = origin.seen();
    let fill = fields_seen
        .iter()
        .rev()
        .find(|s| s.target == "/moved")
        .unwrap();
    assert!(fill.headers.contains_key("via"));
}

both_ways!(variants_of_a_response_that_varies_are_kept_side_by_side);
async fn variants_of_a_response_that_varies_are_kept_side_by_side(instances: Instances) {
    let origin = Origin::start().await;
    origin.route(
        "/varied",
        Route::Negotiated {
            field: "accept-language".into(),
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let server = serve(instances, &origin, dir.path(), &[]);
    let url = format!("{}/varied", server.url());
    let ask = async |language: Option<&str>| match language {
        Some(language) => get(&url, &[("accept-language", language)]).await,
        None => get(&url, &[]).await,
    };
    for round in 0..2 {
        for language in [Some("fr"), Some("en"), None] {
            let got = ask(language).await;
            assert_eq!(got.body, language.unwrap_or("-"), "{}", server.log());
            assert_eq!(
                got.cache_status.contains("hit"),
                round == 1,
                "{language:?} round {round}: {}",
                got.cache_status
            );
        }
    }
    assert_eq!(origin.hits("/varied"), 3, "one fetch a variant");
    // A successful unsafe request invalidates every variant.
    let posted = reqwest::Client::new().post(&url).send().await.unwrap();
    assert_eq!(posted.status().as_u16(), 200);
    for language in [Some("en"), Some("fr"), None] {
        let got = ask(language).await;
        assert!(
            got.cache_status.contains("fwd=miss"),
            "{language:?} after POST: {}",
            got.cache_status
        );
        assert_eq!(got.body, language.unwrap_or("-"));
    }
}
