//! One request's way through an HTTP cache, step by step, over heads as
//! they came (field names and raw value bytes): what the request asks of
//! a stored answer, what goes to the origin, what the origin's answer
//! becomes, which variant a request selects, what an unsafe method
//! invalidates. Each step is one function built on [`rfc9111`], and every
//! home takes these steps through them: the reference host inside the
//! engine component (the WIT `http` interface, one call per step), the
//! wasm homes by calling them where they run.
//!
//! Values that are not UTF-8 are left out of the rules' reading (never
//! altered on the wire); a response with a kept field that is not UTF-8
//! is passed, not stored.

use super::rfc9111::{self, Exchange, Fields, Policy};
use crate::{Conditions, Metadata};

/// Header fields as they came: lower-case names, raw values, in order.
pub type RawFields = [(String, Vec<u8>)];

/// `raw` as text, for the rules: values that are not UTF-8 are left out.
pub fn text_of(raw: &RawFields) -> Vec<(String, String)> {
    raw.iter()
        .filter_map(|(name, value)| {
            std::str::from_utf8(value)
                .ok()
                .map(|v| (name.clone(), v.to_owned()))
        })
        .collect()
}

/// Indices of the end-to-end fields of `fields`, those a message passed
/// on as it came keeps: not hop-by-hop, nor named by its `Connection`
/// ([`rfc9111::hop_by_hop`]).
pub fn end_to_end(fields: &RawFields) -> Vec<u32> {
    let text = text_of(fields);
    fields
        .iter()
        .enumerate()
        .filter(|(_, (name, _))| !rfc9111::hop_by_hop(&text, name))
        .filter_map(|(i, _)| u32::try_from(i).ok())
        .collect()
}

/// What a request asks of a stored answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    /// Its `If-None-Match` and `Cache-Control`/`Pragma` bounds
    /// ([`rfc9111::request_conditions`]).
    pub conditions: Conditions,
    /// `only-if-cached`: the origin is not asked.
    pub only_if_cached: bool,
}

/// Read what a request with fields `request` asks of a stored answer.
pub fn read_request(request: &RawFields) -> Reading {
    let text = text_of(request);
    let cc = rfc9111::Directives::of_request(&text);
    Reading {
        conditions: rfc9111::request_conditions(&cc, &text),
        only_if_cached: cc.only_if_cached,
    }
}

/// A stored response a fill may validate with the origin: positive and
/// with a validator (an entity tag or a `Last-Modified`).
fn validatable(held: Option<&Metadata>) -> Option<&Metadata> {
    held.filter(|m| {
        !m.negative
            && (!m.tag.is_empty()
                || rfc9111::stored_fields(&m.attributes).any(|(n, _)| n == "last-modified"))
    })
}

/// The conditional fields a fill sends to validate `held`
/// (`If-None-Match` with its tag, `If-Modified-Since` with its
/// `Last-Modified`), none when it has no validator.
pub fn validators(held: Option<&Metadata>) -> Vec<(String, String)> {
    let Some(held) = validatable(held) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if !held.tag.is_empty() {
        out.push(("if-none-match".to_owned(), held.tag.clone()));
    }
    if let Some((_, modified)) =
        rfc9111::stored_fields(&held.attributes).find(|(n, _)| *n == "last-modified")
    {
        out.push(("if-modified-since".to_owned(), modified.to_owned()));
    }
    out
}

/// The head a request takes to the origin.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Upstream {
    /// Indices of the request's fields that go as they came.
    pub kept: Vec<u32>,
    /// Fields added after them (`Via`, `X-Forwarded-*`, and a fill's
    /// validators).
    pub added: Vec<(String, String)>,
}

/// What a request with fields `request`, from `client` over `scheme`,
/// takes to the origin: its end-to-end fields ([`rfc9111::sent_upstream`];
/// for a fill, `fill`, not the client's conditions and ranges), ours
/// ([`rfc9111::upstream_added`]) and, for a fill of a stored response
/// `held`, the validators to revalidate it with ([`validators`]).
pub fn upstream(
    request: &RawFields,
    client: Option<&str>,
    scheme: &str,
    fill: bool,
    held: Option<&Metadata>,
) -> Upstream {
    let text = text_of(request);
    let kept = request
        .iter()
        .enumerate()
        .filter(|(_, (name, _))| rfc9111::sent_upstream(&text, name, fill))
        .filter_map(|(i, _)| u32::try_from(i).ok())
        .collect();
    let mut added = rfc9111::upstream_added(&text, client, scheme);
    if fill {
        added.extend(validators(held));
    }
    Upstream { kept, added }
}

/// What a fill does with the origin's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// A 404 or 410 stating no lifetime, with a negative window set: kept
    /// as a negative entry for that window.
    Missing,
    /// Served from the fill; stored too when `stored`.
    Body {
        /// The rules allow storing it.
        stored: bool,
    },
    /// Passed to the client as it came, not stored.
    Passed,
    /// A 304 that confirmed the stored response: its metadata updated.
    Revalidated,
}

/// The origin's answer to a fill, judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged {
    /// What the fill does with it.
    pub judgement: Judgement,
    /// The entry's metadata: the stored head for `Body`, the updated one
    /// for `Revalidated`; empty otherwise.
    pub meta: Metadata,
    /// Indices of the answer's fields that go to the requesting client
    /// only, never stored (`Set-Cookie`, those `private="..."` and
    /// `no-cache="..."` name).
    pub personal: Vec<u32>,
}

/// The origin's answer to a fill, as it came.
pub struct Answer<'a> {
    /// The client request's fields.
    pub request: &'a RawFields,
    /// The answer's status.
    pub status: u16,
    /// The answer's fields.
    pub response: &'a RawFields,
    /// When the request was sent, in seconds since the epoch.
    pub request_time: i64,
    /// When the answer arrived, in milliseconds since the epoch.
    pub now_ms: u64,
}

/// Judge the origin's answer to a fill made for a stored response `held`
/// (validated with [`validators`] when it had one), under `policy`: a
/// 304 to a validated fill updates the stored head
/// ([`rfc9111::revalidated`]); anything else is decided
/// ([`rfc9111::decide`], [`rfc9111::fill`]) and, when served from the
/// fill, gets its entry's metadata ([`rfc9111::entry_meta_of`]) and, when
/// it varies, its variant marks in the set `new_set` names (a held
/// variant's own set on a 304).
pub fn judge(
    answer: &Answer<'_>,
    held: Option<&Metadata>,
    policy: &Policy,
    new_set: impl FnOnce() -> String,
) -> Judged {
    let request = text_of(answer.request);
    let response = text_of(answer.response);
    let personal = personal(answer.response, &response);
    if answer.status == 304
        && let Some(held) = validatable(held)
    {
        let meta = rfc9111::revalidated(
            held,
            &response,
            &request,
            answer.request_time,
            policy,
            answer.now_ms,
            new_set,
        );
        return Judged {
            judgement: Judgement::Revalidated,
            meta,
            personal,
        };
    }
    let decision = rfc9111::decide(
        &Exchange {
            method: "GET",
            request: &request,
            status: answer.status,
            response: &response,
            request_time: answer.request_time,
            response_time: (answer.now_ms / 1000) as i64,
        },
        policy,
    );
    let text = rfc9111::kept_fields_are_text(
        answer
            .response
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice())),
    );
    let (judgement, meta) =
        match rfc9111::fill(answer.status, &decision, text, policy.remember_missing) {
            rfc9111::Fill::Missing => (Judgement::Missing, Metadata::default()),
            rfc9111::Fill::Passed => (Judgement::Passed, Metadata::default()),
            rfc9111::Fill::Body { stored } => {
                let mut meta =
                    rfc9111::entry_meta_of(answer.status, &response, &decision, answer.now_ms);
                rfc9111::mark_variant(&mut meta, &request, new_set);
                (Judgement::Body { stored }, meta)
            }
        };
    Judged {
        judgement,
        meta,
        personal,
    }
}

/// Indices of the fields of `raw` (read as `text`) that go to the
/// requesting client only.
fn personal(raw: &RawFields, text: &Fields) -> Vec<u32> {
    let control = rfc9111::Directives::of_response(text);
    raw.iter()
        .enumerate()
        .filter(|(_, (name, _))| {
            let name = name.to_ascii_lowercase();
            matches!(name.as_str(), "set-cookie" | "set-cookie2")
                || control.private_fields.contains(&name)
                || control.no_cache_fields.contains(&name)
        })
        .filter_map(|(i, _)| u32::try_from(i).ok())
        .collect()
}

/// The key of the variant of `base` that a request with fields `request`
/// selects, when the response stored at `base` (with `attributes`)
/// varies and does not fit it ([`rfc9111::variant_key`]).
pub fn variant(base: &str, attributes: &[(String, String)], request: &RawFields) -> Option<String> {
    rfc9111::variant_key(base, attributes, &text_of(request))
}

/// Whether a stored response (its entry's `attributes`) answers a request
/// with fields `request` with 304: it was a 200, and the request's
/// `If-Modified-Since` is no earlier than its `Last-Modified`
/// ([`rfc9111::not_modified_since`]).
pub fn not_modified(attributes: &[(String, String)], request: &RawFields) -> bool {
    rfc9111::stored_status(attributes) == 200
        && rfc9111::not_modified_since(attributes, &text_of(request))
}

/// Where the cache's origin is: `scheme://authority` and the path prefix
/// its keys are fetched under.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OriginUrl {
    /// `http` or `https`.
    pub scheme: String,
    /// Host and port as the origin URL has them.
    pub authority: String,
    /// The origin URL's path, without a trailing slash.
    pub prefix: String,
}

/// The cache keys the answer `status` with fields `response` to a
/// request of `method` for `key` invalidates (RFC 9111 §4.4): for an
/// unsafe method answered with a success or redirect, `key` and the
/// same-origin `Location` and `Content-Location` it names; none
/// otherwise.
pub fn invalidated(
    method: &str,
    status: u16,
    origin: &OriginUrl,
    key: &str,
    response: &RawFields,
) -> Vec<String> {
    if !rfc9111::invalidates(method, status) {
        return Vec::new();
    }
    let text = text_of(response);
    let mut targets = vec![key.to_owned()];
    for name in ["location", "content-location"] {
        if let Some(target) = rfc9111::first(&text, name).and_then(|reference| {
            rfc9111::invalidated_target(
                &origin.scheme,
                &origin.authority,
                &origin.prefix,
                key,
                reference,
            )
        }) && !targets.contains(&target)
        {
            targets.push(target);
        }
    }
    targets
}

/// The fields of a request that describe the request itself, not a
/// response stored from its body (see [`stored_head`]).
const REQUEST_ONLY: [&str; 12] = [
    "host",
    "authorization",
    "user-agent",
    "accept",
    "accept-encoding",
    "accept-language",
    "expect",
    "cookie",
    "referer",
    "origin",
    "content-length",
    "x-forwarded-for",
];

/// The metadata of a 200 response stored directly (an operator's `PUT`)
/// with the request's `fields` as its own (`Content-Type`, `ETag`,
/// `Cache-Control`, `Expires` ...; not those describing the request),
/// fresh as they say or for the policy's default lifetime, at `now_ms`.
pub fn stored_head(fields: &RawFields, policy: &Policy, now_ms: u64) -> Metadata {
    let text: Vec<(String, String)> = text_of(fields)
        .into_iter()
        .filter(|(name, _)| !REQUEST_ONLY.iter().any(|r| r.eq_ignore_ascii_case(name)))
        .collect();
    let now = (now_ms / 1000) as i64;
    let decision = rfc9111::decide(
        &Exchange {
            method: "GET",
            request: &[],
            status: 200,
            response: &text,
            request_time: now,
            response_time: now,
        },
        policy,
    );
    rfc9111::entry_meta_of(200, &text, &decision, now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    const NOW_MS: u64 = 1_700_000_000_000;

    fn answer<'a>(request: &'a RawFields, status: u16, response: &'a RawFields) -> Answer<'a> {
        Answer {
            request,
            status,
            response,
            request_time: (NOW_MS / 1000) as i64,
            now_ms: NOW_MS,
        }
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_not_end_to_end() {
        let fields = raw(&[
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("content-type", "text/plain"),
            ("transfer-encoding", "chunked"),
            ("x-end", "2"),
        ]);
        assert_eq!(end_to_end(&fields), [3, 5]);
    }

    #[test]
    fn a_request_that_asks_nothing_reads_as_no_conditions() {
        assert_eq!(read_request(&raw(&[("accept", "*/*")])), Reading::default());
        let reading = read_request(&raw(&[
            ("cache-control", "max-age=5, only-if-cached"),
            ("if-none-match", "\"a\""),
        ]));
        assert_eq!(reading.conditions.max_age, Some(5000));
        assert_eq!(reading.conditions.if_none_match.as_deref(), Some("\"a\""));
        assert!(reading.only_if_cached);
        let pragma = read_request(&raw(&[("pragma", "no-cache")]));
        assert_eq!(pragma.conditions.max_age, Some(0));
    }

    #[test]
    fn a_fill_goes_upstream_without_hop_by_hop_fields_or_client_conditions() {
        let request = raw(&[
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("accept", "text/html"),
            ("if-none-match", "\"client\""),
            ("range", "bytes=0-1"),
            ("host", "proxy"),
        ]);
        let held = Metadata {
            tag: "\"stored\"".into(),
            attributes: vec![(
                "h:last-modified".into(),
                "Mon, 01 Jan 2024 00:00:00 GMT".into(),
            )],
            ..Metadata::default()
        };
        let up = upstream(&request, Some("10.0.0.1"), "http", true, Some(&held));
        assert_eq!(up.kept, [2]);
        let added: Vec<&str> = up.added.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            added,
            [
                "via",
                "x-forwarded-for",
                "x-forwarded-proto",
                "if-none-match",
                "if-modified-since"
            ]
        );
        assert_eq!(up.added[3].1, "\"stored\"");
        // Passed on, the client's own conditions and ranges go as they came.
        let passed = upstream(&request, None, "http", false, Some(&held));
        assert_eq!(passed.kept, [2, 3, 4]);
        assert!(!passed.added.iter().any(|(n, _)| n.starts_with("if-")));
        // A negative entry has nothing to validate.
        let negative = Metadata {
            negative: true,
            ..held
        };
        assert!(validators(Some(&negative)).is_empty());
    }

    #[test]
    fn an_answer_with_a_lifetime_is_stored_with_its_head_and_cookies_are_personal() {
        let response = raw(&[
            ("cache-control", "max-age=60"),
            ("etag", "\"v1\""),
            ("set-cookie", "a=1"),
            ("content-type", "text/plain"),
        ]);
        let judged = judge(
            &answer(&[], 200, &response),
            None,
            &Policy::default(),
            || "set".into(),
        );
        assert_eq!(judged.judgement, Judgement::Body { stored: true });
        assert_eq!(judged.meta.tag, "\"v1\"");
        assert_eq!(judged.meta.fresh_for, Some(60_000));
        assert!(
            judged
                .meta
                .attributes
                .contains(&("h:content-type".into(), "text/plain".into()))
        );
        assert!(
            !judged
                .meta
                .attributes
                .iter()
                .any(|(k, _)| k == "h:set-cookie")
        );
        assert_eq!(judged.personal, [2]);
    }

    #[test]
    fn a_304_to_a_validated_fill_updates_the_stored_head() {
        let held = Metadata {
            tag: "\"v1\"".into(),
            attributes: vec![("h:x-old".into(), "1".into())],
            ..Metadata::default()
        };
        let response = raw(&[("cache-control", "max-age=30"), ("x-new", "2")]);
        let judged = judge(
            &answer(&[], 304, &response),
            Some(&held),
            &Policy::default(),
            String::new,
        );
        assert_eq!(judged.judgement, Judgement::Revalidated);
        assert_eq!(judged.meta.fresh_for, Some(30_000));
        assert!(
            judged
                .meta
                .attributes
                .contains(&("h:x-old".into(), "1".into()))
        );
        assert!(
            judged
                .meta
                .attributes
                .contains(&("h:x-new".into(), "2".into()))
        );
        // Without a validator held, a 304 is an answer like any other.
        let unvalidated = judge(
            &answer(&[], 304, &response),
            None,
            &Policy::default(),
            String::new,
        );
        assert_ne!(unvalidated.judgement, Judgement::Revalidated);
    }

    #[test]
    fn an_answer_with_a_field_that_is_not_text_is_passed() {
        let mut response = raw(&[("cache-control", "max-age=60")]);
        response.push(("x-bin".into(), vec![0xff, 0xfe]));
        let judged = judge(
            &answer(&[], 200, &response),
            None,
            &Policy::default(),
            || "set".into(),
        );
        assert_eq!(judged.judgement, Judgement::Passed);
    }

    #[test]
    fn missing_answers_are_remembered_only_with_a_negative_window() {
        let policy = Policy {
            remember_missing: true,
            ..Policy::default()
        };
        let missing = judge(&answer(&[], 404, &[]), None, &policy, String::new);
        assert_eq!(missing.judgement, Judgement::Missing);
        let passed = judge(
            &answer(&[], 404, &[]),
            None,
            &Policy::default(),
            String::new,
        );
        assert_eq!(passed.judgement, Judgement::Passed);
    }

    #[test]
    fn a_varying_answer_is_marked_with_the_values_it_was_fetched_for() {
        let policy = Policy {
            variants: true,
            ..Policy::default()
        };
        let request = raw(&[("accept-language", "ko")]);
        let response = raw(&[("cache-control", "max-age=60"), ("vary", "Accept-Language")]);
        let judged = judge(&answer(&request, 200, &response), None, &policy, || {
            "s1".into()
        });
        assert_eq!(judged.judgement, Judgement::Body { stored: true });
        let attrs = &judged.meta.attributes;
        assert_eq!(variant("/a", attrs, &request), None);
        let other = variant("/a", attrs, &raw(&[("accept-language", "en")])).unwrap();
        assert_eq!(other, "/a vary s1\naccept-language:en\n");
    }

    #[test]
    fn if_modified_since_answers_304_for_stored_200s_only() {
        let attrs = vec![(
            "h:last-modified".to_owned(),
            "Mon, 01 Jan 2024 00:00:00 GMT".to_owned(),
        )];
        let request = raw(&[("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT")]);
        assert!(not_modified(&attrs, &request));
        let mut moved = attrs.clone();
        moved.push((rfc9111::STATUS_ATTR.into(), "301".into()));
        assert!(!not_modified(&moved, &request));
        let earlier = raw(&[("if-modified-since", "Sun, 31 Dec 2023 00:00:00 GMT")]);
        assert!(!not_modified(&attrs, &earlier));
    }

    #[test]
    fn an_unsafe_success_invalidates_its_target_and_same_origin_locations() {
        let origin = OriginUrl {
            scheme: "http".into(),
            authority: "origin:8080".into(),
            prefix: String::new(),
        };
        let response = raw(&[
            ("location", "http://origin:8080/b"),
            ("content-location", "http://elsewhere/c"),
        ]);
        assert_eq!(
            invalidated("POST", 201, &origin, "/a", &response),
            ["/a", "/b"]
        );
        assert!(invalidated("POST", 500, &origin, "/a", &response).is_empty());
        assert!(invalidated("GET", 200, &origin, "/a", &response).is_empty());
    }

    #[test]
    fn a_put_stores_its_response_fields_but_not_its_request_fields() {
        let fields = raw(&[
            ("content-type", "text/css"),
            ("cache-control", "max-age=9"),
            ("authorization", "Bearer x"),
            ("user-agent", "curl"),
        ]);
        let meta = stored_head(&fields, &Policy::default(), NOW_MS);
        assert_eq!(meta.fresh_for, Some(9000));
        let names: Vec<&str> = meta.attributes.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["h:content-type", "h:cache-control"]);
    }
}
