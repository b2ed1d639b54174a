//! The HTTP caching rules as the reference host runs them: inside the
//! engine component (its `http` interface), in real wasmtime instances.
//! What comes out must be what the rules decide natively, and a fault
//! while reading a head costs that call alone.

use std::time::Duration;

use daramjwee::{HttpRules, Judgement, Metadata, OriginUrl, Policy};
use daramjwee_component::http::exchange;

const LIMIT: usize = 64 << 20;
const CALL: Duration = Duration::from_millis(500);
const NOW_MS: u64 = 1_765_000_000_000;

fn raw(pairs: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), v.to_vec()))
        .collect()
}

#[test]
fn the_sandboxed_rules_decide_as_the_shared_code_does() {
    let rules = HttpRules::embedded(None, LIMIT, CALL).unwrap();
    let policy = Policy {
        variants: true,
        ..Policy::default()
    };
    let request = raw(&[
        ("accept-language", b"ko"),
        ("cache-control", b"max-stale=5"),
        ("connection", b"x-hop"),
        ("x-hop", b"1"),
    ]);
    let response = raw(&[
        ("cache-control", b"max-age=60"),
        ("etag", b"\"v1\""),
        ("vary", b"accept-language"),
        ("set-cookie", b"id=1"),
        ("x-utf8", "caf\u{e9}".as_bytes()),
    ]);
    let judged = rules
        .judge(
            request.clone(),
            200,
            response.clone(),
            (NOW_MS / 1000) as i64,
            NOW_MS,
            None,
            &policy,
            "set-1",
        )
        .unwrap();
    let native = exchange::judge(
        &exchange::Answer {
            request: &request,
            status: 200,
            response: &response,
            request_time: (NOW_MS / 1000) as i64,
            now_ms: NOW_MS,
        },
        None,
        &policy,
        || "set-1".into(),
    );
    assert_eq!(judged.judgement, Judgement::Body { stored: true });
    assert_eq!(judged.judgement, native.judgement);
    assert_eq!(judged.meta, Metadata::from(native.meta));
    assert_eq!(judged.personal, [3]);
    assert!(
        judged
            .meta
            .attributes
            .contains(&("h:x-utf8".into(), "caf\u{e9}".into()))
    );

    let reading = rules.read_request(&request).unwrap();
    assert_eq!(reading, exchange::read_request(&request));
    assert_eq!(reading.conditions.max_stale, Some(5000));

    let up = rules
        .upstream(&request, Some("10.0.0.9"), "http", true, Some(&judged.meta))
        .unwrap();
    assert_eq!(up.kept, [0, 1], "hop-by-hop fields stay behind");
    assert!(
        up.added
            .contains(&("if-none-match".into(), "\"v1\"".into()))
    );

    let attributes = &judged.meta.attributes;
    assert_eq!(rules.variant_key("/a", attributes, &request).unwrap(), None);
    let other = raw(&[("accept-language", b"en")]);
    assert_eq!(
        rules.variant_key("/a", attributes, &other).unwrap(),
        Some("/a vary set-1\naccept-language:en\n".into())
    );

    let origin = OriginUrl {
        scheme: "http".into(),
        authority: "origin".into(),
        prefix: String::new(),
    };
    let moved = raw(&[("location", b"/b"), ("content-location", b"http://other/c")]);
    assert_eq!(
        rules
            .invalidated("POST", 201, &origin, "/a", &moved)
            .unwrap(),
        ["/a", "/b"]
    );
    assert_eq!(rules.end_to_end(&request).unwrap(), [0, 1]);
    assert_eq!(rules.faults(), 0);
}

#[test]
fn a_fault_while_reading_a_head_costs_that_call_alone() {
    let rules = HttpRules::faulty(LIMIT, CALL).unwrap();
    let fine = raw(&[("cache-control", b"no-cache")]);
    assert_eq!(
        rules.read_request(&fine).unwrap().conditions.max_age,
        Some(0)
    );
    for (n, fault) in [&b"trap"[..], b"loop", b"oom"].into_iter().enumerate() {
        let bad = raw(&[("x-daramjwee-fault", fault), ("cache-control", b"no-cache")]);
        let e = rules.read_request(&bad).unwrap_err();
        assert!(e.to_string().contains("HTTP rules"), "{e}");
        assert_eq!(rules.faults(), n as u64 + 1);
        // The next call gets a fresh instance and the right answer.
        assert_eq!(
            rules.read_request(&fine).unwrap().conditions.max_age,
            Some(0)
        );
    }
    let response = raw(&[("x-daramjwee-fault", b"trap")]);
    assert!(
        rules
            .judge(
                fine.clone(),
                200,
                response,
                0,
                NOW_MS,
                None,
                &Policy::default(),
                "s"
            )
            .is_err()
    );
    assert_eq!(rules.faults(), 4);
}
