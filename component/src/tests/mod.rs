//! The engine's rules, tested natively against the mock runtime.

mod mock;

use std::rc::Rc;

use mock::*;

use crate::*;

fn fresh(tag: &str, at: u64) -> Metadata {
    Metadata {
        tag: tag.into(),
        cached_at: Some(at),
        ..Metadata::default()
    }
}

#[test]
fn miss_then_hit_calls_origin_once() {
    let mut h = Harness::new(2);
    let origin = MockOrigin::replying([body("v1", b"hello world")]);
    let r = h.get("k", &origin).unwrap();
    assert_eq!((r.status, r.source), (Status::Ok, Source::Origin));
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"hello world");
    assert_eq!(h.tiers[0].body("k").unwrap(), b"hello world");
    // Tier 1 is written in the background after tier 0 commits.
    assert!(h.tiers[1].body("k").is_none());
    assert_eq!(h.run_jobs(), 1);
    assert_eq!(h.tiers[1].body("k").unwrap(), b"hello world");
    let r = h.get("k", &origin).unwrap();
    assert_eq!(r.source, Source::Tier(0));
    assert_eq!(r.meta.tag, "v1");
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"hello world");
    assert_eq!(origin.calls(), 1);
}

#[test]
fn lower_tier_hit_promotes_while_streaming() {
    let mut h = Harness::new(3);
    let now = h.rt.now_ms();
    h.tiers[2].put("k", fresh("v", now - 10), b"from the cold tier");
    let origin = MockOrigin::default();
    let r = h.get("k", &origin).unwrap();
    assert_eq!(r.source, Source::Tier(2));
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"from the cold tier");
    let promoted = h.tiers[0].meta("k").unwrap();
    assert_eq!(
        promoted.cached_at,
        Some(now - 10),
        "promotion keeps cached-at"
    );
    assert!(h.tiers[1].body("k").is_none());
    h.run_jobs();
    assert_eq!(h.tiers[1].body("k").unwrap(), b"from the cold tier");
    assert_eq!(origin.calls(), 0);
}

#[test]
fn a_body_of_known_size_goes_to_the_first_tier_that_admits_it() {
    let mut h = Harness::new(3);
    h.tiers[0].max_entry.set(Some(8));
    let origin = MockOrigin::replying([body("v", b"larger than eight")]).sized();
    let r = h.get("k", &origin).unwrap();
    assert!(r.stored);
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"larger than eight");
    assert!(h.tiers[0].body("k").is_none(), "tier 0 does not keep it");
    assert_eq!(h.tiers[1].body("k").unwrap(), b"larger than eight");
    // The tiers below the one written are copied from it.
    assert_eq!(h.run_jobs(), 1);
    assert_eq!(h.tiers[2].body("k").unwrap(), b"larger than eight");
    let r = h.get("k", &origin).unwrap();
    assert_eq!(r.source, Source::Tier(1));
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"larger than eight");
    assert!(h.tiers[0].body("k").is_none(), "nor is it promoted there");
    assert_eq!(origin.calls(), 1);
}

#[test]
fn the_metadata_counts_towards_what_a_tier_admits() {
    let mut h = Harness::new(2);
    h.tiers[0].max_entry.set(Some(8));
    // Six bytes of body fit tier 0 with a short tag, not with a long one.
    let origin = MockOrigin::replying([body("v", b"sixsix")]).sized();
    let r = h.get("short", &origin).unwrap();
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"sixsix");
    assert_eq!(h.tiers[0].body("short").unwrap(), b"sixsix");
    let origin = MockOrigin::replying([body("a-long-tag", b"sixsix")]).sized();
    let r = h.get("long", &origin).unwrap();
    assert!(r.stored);
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"sixsix");
    assert!(
        h.tiers[0].body("long").is_none(),
        "tier 0 would not keep it"
    );
    assert_eq!(h.tiers[1].body("long").unwrap(), b"sixsix");
}

#[test]
fn a_body_no_tier_admits_is_served_and_stored_nowhere() {
    let mut h = Harness::new(2);
    for tier in &h.tiers {
        tier.max_entry.set(Some(4));
    }
    let origin = MockOrigin::replying([body("v", b"too large"), body("v", b"too large")]).sized();
    for _ in 0..2 {
        let r = h.get("k", &origin).unwrap();
        assert_eq!((r.source, r.stored), (Source::Origin, false));
        assert_eq!(h.run(read_body(r.body)).unwrap(), b"too large");
        assert_eq!(h.run_jobs(), 0);
    }
    assert!(h.tiers.iter().all(|t| t.body("k").is_none()));
    assert_eq!(origin.calls(), 2);
}

#[test]
fn a_body_of_unknown_length_is_said_stored_only_by_a_tier_that_keeps_any_length() {
    // Bounded tier 0: the body is tried there, but its answer goes before
    // the body's end shows whether it fits, so it does not say stored.
    let mut h = Harness::new(1);
    h.tiers[0].max_entry.set(Some(4));
    let origin = MockOrigin::replying([body("v", b"too large")]);
    let r = h.get("k", &origin).unwrap();
    assert_eq!((r.source, r.stored), (Source::Origin, false));
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"too large");

    // Unbounded tier 0: the same body is kept whatever its length.
    let mut h = Harness::new(1);
    let origin = MockOrigin::replying([body("v", b"too large")]);
    let r = h.get("k", &origin).unwrap();
    assert_eq!((r.source, r.stored), (Source::Origin, true));
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"too large");
    h.run_jobs();
    assert_eq!(h.tiers[0].body("k").unwrap(), b"too large");
}

#[test]
fn a_new_version_written_below_tier_0_removes_the_old_one_above() {
    let mut h = Harness::new(2);
    h.tiers[0].max_entry.set(Some(8));
    let origin = MockOrigin::replying([
        Reply::NotFound,
        body("v2", b"larger than eight"),
        body("v3", b"larger still, and so on"),
    ])
    .sized();
    let r = h.get("k", &origin).unwrap();
    assert_eq!((r.status, r.stored), (Status::NotFound, true));
    h.run_jobs();
    assert!(h.tiers.iter().all(|t| t.meta("k").unwrap().negative));
    h.rt.advance(120_000);
    // The negative entry has expired: it is served while the refresh
    // writes the new version to tier 1, and tier 0's entry goes.
    let r = h.get("k", &origin).unwrap();
    assert_eq!((r.status, r.stale), (Status::NotFound, true));
    h.run_jobs();
    assert!(h.tiers[0].meta("k").is_none());
    assert_eq!(h.tiers[1].meta("k").unwrap().tag, "v2");
    let r = h.get("k", &origin).unwrap();
    assert_eq!(r.source, Source::Tier(1));
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"larger than eight");
    assert_eq!(origin.calls(), 2);
    // When no tier keeps the next version, none keeps the old one either.
    h.tiers[1].max_entry.set(Some(8));
    h.rt.advance(120_000);
    let r = h.get("k", &origin).unwrap();
    assert!(r.stale && r.source == Source::Tier(1));
    h.run(read_body(r.body)).unwrap();
    h.run_jobs();
    assert_eq!(origin.calls(), 3);
    assert!(h.tiers.iter().all(|t| t.meta("k").is_none()));
}

#[test]
fn a_body_of_unknown_size_goes_to_tier_0_as_before() {
    let mut h = Harness::new(2);
    h.tiers[0].max_entry.set(Some(4));
    let origin = MockOrigin::replying([body("v", b"unsized")]);
    let r = h.get("k", &origin).unwrap();
    h.run(read_body(r.body)).unwrap();
    // The mock tier's sink does not enforce the limit: tier 0 was asked.
    assert_eq!(h.tiers[0].body("k").unwrap(), b"unsized");
}

#[test]
fn stale_hit_is_served_at_once_and_refreshed_once() {
    let mut h = Harness::new(1);
    let origin = MockOrigin::replying([body("v1", b"old"), body("v2", b"new")]);
    let r = h.get("k", &origin).unwrap();
    h.run(read_body(r.body)).unwrap();
    h.rt.advance(5_000);
    for _ in 0..3 {
        let r = h.get("k", &origin).unwrap();
        assert!(r.stale);
        assert_eq!(h.run(read_body(r.body)).unwrap(), b"old");
    }
    assert_eq!(
        h.rt.jobs.borrow().len(),
        1,
        "one refresh for three stale hits"
    );
    h.run_jobs();
    assert_eq!(origin.calls(), 2);
    assert_eq!(
        origin.0.held.borrow()[1].as_ref().unwrap().tag,
        "v1",
        "the refresh sends what we hold"
    );
    let r = h.get("k", &origin).unwrap();
    assert!(!r.stale);
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"new");
}

#[test]
fn negative_entry_is_served_until_its_window_expires() {
    let mut h = Harness::new(2);
    let origin = MockOrigin::replying([Reply::NotFound, body("v", b"now it exists")]);
    assert_eq!(h.get("k", &origin).unwrap().status, Status::NotFound);
    h.run_jobs();
    assert!(
        h.tiers[1].meta("k").unwrap().negative,
        "negative entries reach every tier"
    );
    let r = h.get("k", &origin).unwrap();
    assert_eq!((r.status, r.source), (Status::NotFound, Source::Tier(0)));
    assert_eq!(origin.calls(), 1);
    h.rt.advance(600);
    let r = h.get("k", &origin).unwrap();
    assert_eq!(r.status, Status::NotFound);
    assert!(r.stale);
    h.run_jobs();
    assert_eq!(origin.calls(), 2);
    let r = h.get("k", &origin).unwrap();
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"now it exists");
}

#[test]
fn lower_tier_negative_is_copied_up() {
    let mut h = Harness::new(2);
    let now = h.rt.now_ms();
    h.tiers[1].put("k", Metadata::negative_at(now), b"");
    let r = h.get("k", &MockOrigin::default()).unwrap();
    assert_eq!((r.status, r.source), (Status::NotFound, Source::Tier(1)));
    assert!(h.tiers[0].meta("k").unwrap().negative);
}

#[test]
fn if_none_match_answers_not_modified_without_a_body() {
    let mut h = Harness::new(1);
    let now = h.rt.now_ms();
    h.tiers[0].put("k", fresh("v7", now), b"body");
    let engine = h.engine.clone();
    let r = h
        .run(engine.get("k", Some("W/\"v7\""), MockOrigin::default()))
        .unwrap();
    assert_eq!(r.status, Status::NotModified);
    assert!(r.body.is_none());
    let r = h
        .run(engine.get("k", Some("\"v8\""), MockOrigin::default()))
        .unwrap();
    assert_eq!(r.status, Status::Ok);
}

#[test]
fn origin_not_modified_reserves_our_copy_with_a_new_timestamp() {
    let config = Config {
        fresh_for: 1_000,
        ..Config::default()
    };
    let mut h = Harness::with_config(2, config);
    let now = h.rt.now_ms();
    let mut meta = fresh("v1", now - 10_000);
    meta.stale_for = Some(1_000); // expired: must revalidate before serving
    h.tiers[1].put("k", meta, b"kept body");
    let origin = MockOrigin::replying([Reply::NotModified]);
    let r = h.get("k", &origin).unwrap();
    assert_eq!(origin.0.held.borrow()[0].as_ref().unwrap().tag, "v1");
    assert_eq!((r.status, r.source), (Status::Ok, Source::Tier(1)));
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"kept body");
    assert_eq!(
        h.tiers[0].meta("k").unwrap().cached_at,
        Some(now),
        "re-stamped into tier 0"
    );
}

#[test]
fn origin_not_modified_after_our_copy_vanished_is_not_found() {
    let mut h = Harness::new(1);
    let now = h.rt.now_ms();
    let mut meta = fresh("v1", now - 10_000);
    meta.stale_for = Some(0);
    h.tiers[0].put("k", meta, b"soon gone");
    let gate = Rc::new(mock::Gate::default());
    let origin = MockOrigin::replying([Reply::NotModified]).gated(&gate);
    // The origin answers only after the copy was evicted.
    let tier = h.tiers[0].clone();
    let engine = h.engine.clone();
    let o = origin.clone();
    let slot = h.spawn(async move { engine.get("k", None, o).await });
    h.settle();
    tier.entries.borrow_mut().remove("k");
    gate.open();
    h.settle();
    let r = slot.borrow_mut().take().unwrap().unwrap();
    assert_eq!(r.status, Status::NotFound);
    assert!(r.body.is_none(), "never garbage");
}

#[test]
fn origin_error_is_returned_and_not_cached() {
    let mut h = Harness::new(2);
    let origin = MockOrigin::replying([Reply::Fail, body("v", b"ok")]);
    assert!(matches!(h.get("k", &origin), Err(Error::Origin(_))));
    assert!(h.tiers[0].meta("k").is_none());
    let r = h.get("k", &origin).unwrap();
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"ok");
    assert_eq!(origin.calls(), 2);
}

#[test]
fn no_store_body_reaches_caller_and_joiners_but_no_tier() {
    let mut h = Harness::new(2);
    let gate = Rc::new(mock::Gate::default());
    let origin = MockOrigin::replying([Reply::NoStore {
        tag: "v",
        data: b"private body".to_vec(),
    }])
    .gated(&gate);
    let mut slots = Vec::new();
    for _ in 0..3 {
        let engine = h.engine.clone();
        let origin = origin.clone();
        slots.push(h.spawn(async move {
            let r = engine.get("k", None, origin).await?;
            assert!(matches!(r.source, Source::Origin | Source::Joined));
            read_body(r.body).await
        }));
    }
    h.settle();
    gate.open();
    h.settle();
    assert_eq!(origin.calls(), 1, "joiners share the one fetch");
    for slot in slots {
        assert_eq!(slot.borrow_mut().take().unwrap().unwrap(), b"private body");
    }
    assert_eq!(h.run_jobs(), 0, "no copy is scheduled");
    assert!(h.tiers[0].meta("k").is_none());
    assert!(h.tiers[1].meta("k").is_none());
    let again = MockOrigin::replying([body("v2", b"stored")]);
    let r = h.get("k", &again).unwrap();
    assert_eq!(r.source, Source::Origin, "nothing was kept");
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"stored");
}

#[test]
fn no_store_refresh_keeps_the_held_copy() {
    let mut h = Harness::new(1);
    let now = h.rt.now_ms();
    h.tiers[0].put("k", fresh("old", now - 5_000), b"old body");
    let origin = MockOrigin::replying([Reply::NoStore {
        tag: "new",
        data: b"new body".to_vec(),
    }]);
    let r = h.get("k", &origin).unwrap();
    assert!(r.stale);
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"old body");
    assert_eq!(h.run_jobs(), 1);
    assert_eq!(origin.calls(), 1);
    assert_eq!(h.tiers[0].meta("k").unwrap().tag, "old");
}

fn expired(tag: &str, at: u64) -> Metadata {
    let mut meta = fresh(tag, at);
    meta.stale_for = Some(0);
    meta
}

#[test]
fn stale_if_error_serves_an_expired_entry_within_its_window() {
    let config = Config {
        fresh_for: 1_000,
        stale_if_error: 5_000,
        ..Config::default()
    };
    let mut h = Harness::with_config(2, config);
    let now = h.rt.now_ms();
    // 4 s past its window: inside stale-if-error.
    h.tiers[1].put("k", expired("v1", now - 5_000), b"old but good");
    let origin = MockOrigin::replying([Reply::Fail, Reply::Fail]);
    let r = h.get("k", &origin).unwrap();
    assert_eq!(
        (r.status, r.source, r.stale),
        (Status::Ok, Source::Tier(1), true)
    );
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"old but good");
    assert_eq!(origin.calls(), 1);
    let engine = h.engine.clone();
    let r = h
        .run(engine.get("k", Some("\"v1\""), origin.clone()))
        .unwrap();
    assert_eq!(r.status, Status::NotModified);
    assert_eq!(h.run_jobs(), 0, "nothing is written or refreshed");
    assert!(h.tiers[0].meta("k").is_none());
    assert_eq!(h.tiers[1].meta("k").unwrap().cached_at, Some(now - 5_000));
}

#[test]
fn stale_if_error_ends_with_its_window() {
    let config = Config {
        fresh_for: 1_000,
        stale_if_error: 5_000,
        ..Config::default()
    };
    let mut h = Harness::with_config(1, config);
    let now = h.rt.now_ms();
    // 6 s past its window: too old even for an error.
    h.tiers[0].put("k", expired("v1", now - 7_000), b"too old");
    let origin = MockOrigin::replying([Reply::Fail]);
    assert!(matches!(h.get("k", &origin), Err(Error::Origin(_))));
    // Off by default: the error goes through.
    let mut h = Harness::new(1);
    let now = h.rt.now_ms();
    h.tiers[0].put("k", expired("v1", now - 1_500), b"old");
    let origin = MockOrigin::replying([Reply::Fail]);
    assert!(matches!(h.get("k", &origin), Err(Error::Origin(_))));
    // A negative entry is never served for an error.
    let config = Config {
        stale_if_error: 60_000,
        ..Config::default()
    };
    let mut h = Harness::with_config(1, config);
    let now = h.rt.now_ms();
    let mut negative = Metadata::negative_at(now - 20_000);
    negative.stale_for = Some(0);
    h.tiers[0].put("k", negative, b"");
    let origin = MockOrigin::replying([Reply::Fail]);
    assert!(matches!(h.get("k", &origin), Err(Error::Origin(_))));
}

#[test]
fn an_entry_that_must_be_revalidated_is_never_served_for_an_error() {
    let config = Config {
        fresh_for: 1_000,
        stale_if_error: 60_000,
        ..Config::default()
    };
    let mut h = Harness::with_config(1, config);
    let now = h.rt.now_ms();
    let mut meta = expired("v1", now - 5_000);
    meta.stale_if_error = Some(0);
    h.tiers[0].put("k", meta, b"must revalidate");
    let origin = MockOrigin::replying([Reply::Fail]);
    assert!(matches!(h.get("k", &origin), Err(Error::Origin(_))));
    // Its own window wins over the cache's, both ways.
    let config = Config {
        fresh_for: 1_000,
        ..Config::default()
    };
    let mut h = Harness::with_config(1, config);
    let now = h.rt.now_ms();
    let mut meta = expired("v1", now - 5_000);
    meta.stale_if_error = Some(60_000);
    h.tiers[0].put("k", meta, b"allowed");
    let origin = MockOrigin::replying([Reply::Fail]);
    let r = h.get("k", &origin).unwrap();
    assert!(r.stale);
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"allowed");
}

#[test]
fn a_caller_too_strict_for_a_fresh_entry_has_it_validated_first() {
    let mut h = Harness::new(1);
    let now = h.rt.now_ms();
    let mut meta = Metadata {
        tag: "v1".into(),
        cached_at: Some(now - 2_000),
        fresh_for: Some(60_000),
        ..Metadata::default()
    };
    h.tiers[0].put("k", meta.clone(), b"held");
    let origin = MockOrigin::replying([Reply::NotModified]);
    let engine = h.engine.clone();
    // Young enough: served, the origin not asked.
    let young = Conditions {
        max_age: Some(5_000),
        ..Conditions::default()
    };
    let r = h.run(engine.get_with("k", &young, origin.clone())).unwrap();
    assert_eq!((r.source, origin.calls()), (Source::Tier(0), 0));
    drop(r);
    // no-cache: validated, then served from the tier it was in.
    let no_cache = Conditions {
        max_age: Some(0),
        ..Conditions::default()
    };
    let r = h
        .run(engine.get_with("k", &no_cache, origin.clone()))
        .unwrap();
    assert_eq!(origin.calls(), 1);
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"held");
    // max-stale: an expired entry answered without waiting for the origin.
    meta.cached_at = Some(now - 70_000);
    meta.stale_for = Some(0);
    h.tiers[0].put("s", meta, b"old");
    let stale_ok = Conditions {
        max_stale: Some(20_000),
        ..Conditions::default()
    };
    let origin = MockOrigin::replying([Reply::Fail]);
    let r = h
        .run(engine.get_with("s", &stale_ok, origin.clone()))
        .unwrap();
    assert!(r.stale);
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"old");
}

#[test]
fn body_that_breaks_off_is_not_cached() {
    let mut h = Harness::new(1);
    let origin = MockOrigin::replying([Reply::Body {
        tag: "v",
        data: b"partial".to_vec(),
        fail_at_end: true,
    }]);
    let r = h.get("k", &origin).unwrap();
    assert!(h.run(read_body(r.body)).is_err());
    assert!(h.tiers[0].meta("k").is_none());
}

#[test]
fn partial_read_never_publishes() {
    let mut h = Harness::new(1);
    let origin = MockOrigin::replying([body("v", b"a body of several chunks")]);
    let r = h.get("k", &origin).unwrap();
    let Some(ResponseBody::Fill(mut reader)) = r.body else {
        panic!("a fill")
    };
    assert!(h.run(reader.next()).unwrap().is_ok());
    drop(reader);
    h.settle();
    assert!(h.tiers[0].meta("k").is_none());
    assert_eq!(h.engine.flights(), 0);
}

#[test]
fn reading_to_the_end_publishes_without_close() {
    let mut h = Harness::new(1);
    let origin = MockOrigin::replying([body("v", b"complete")]);
    let r = h.get("k", &origin).unwrap();
    let Some(ResponseBody::Fill(mut reader)) = r.body else {
        panic!("a fill")
    };
    while h.run(reader.next()).is_some() {}
    h.settle();
    assert_eq!(h.tiers[0].body("k").unwrap(), b"complete");
    drop(reader);
}

#[test]
fn concurrent_misses_fetch_once_and_share_the_bytes() {
    let mut h = Harness::new(1);
    let gate = Rc::new(mock::Gate::default());
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let origin = MockOrigin::replying([body("v", &data)]).gated(&gate);
    let mut slots = Vec::new();
    for _ in 0..150 {
        let engine = h.engine.clone();
        let origin = origin.clone();
        slots.push(h.spawn(async move {
            let r = engine.get("k", None, origin).await?;
            read_body(r.body).await
        }));
    }
    h.settle();
    gate.open();
    h.settle();
    assert_eq!(origin.calls(), 1);
    for slot in slots {
        assert_eq!(slot.borrow_mut().take().unwrap().unwrap(), data);
    }
    assert_eq!(h.tiers[0].body("k").unwrap(), data);
}

#[test]
fn failed_leader_hands_over_to_a_waiter() {
    let mut h = Harness::new(1);
    let gate = Rc::new(mock::Gate::default());
    let origin = MockOrigin::replying([Reply::Fail, body("v", b"second try")]).gated(&gate);
    let mut slots = Vec::new();
    for _ in 0..5 {
        let engine = h.engine.clone();
        let origin = origin.clone();
        slots.push(h.spawn(async move {
            let r = engine.get("k", None, origin).await?;
            read_body(r.body).await
        }));
    }
    h.settle();
    gate.open();
    h.settle();
    let results: Vec<_> = slots
        .iter()
        .map(|s| s.borrow_mut().take().unwrap())
        .collect();
    assert_eq!(
        results.iter().filter(|r| r.is_err()).count(),
        1,
        "only the failed leader fails"
    );
    assert!(results.iter().flatten().all(|b| b == b"second try"));
    assert_eq!(origin.calls(), 2);
}

#[test]
fn late_reader_of_a_large_fill_reads_tier_zero_afterwards() {
    let config = Config {
        join_window: 8,
        ..Config::default()
    };
    let mut h = Harness::with_config(1, config);
    let gate = Rc::new(mock::Gate::default());
    let origin = MockOrigin::replying([body("v", b"0123456789abcdefghij")]).gated(&gate);
    let engine = h.engine.clone();
    let o = origin.clone();
    let first = h.spawn(async move { read_body(engine.get("k", None, o).await?.body).await });
    // Let three chunks (12 bytes) through: past the join window.
    gate.permits_for_test(3);
    h.settle();
    let engine = h.engine.clone();
    let o = origin.clone();
    let late = h.spawn(async move {
        let r = engine.get("k", None, o).await?;
        Ok::<_, Error>((r.source, read_body(r.body).await?))
    });
    h.settle();
    assert!(
        late.borrow().is_none(),
        "the late reader waits for the fill"
    );
    gate.open();
    h.settle();
    assert_eq!(
        first.borrow_mut().take().unwrap().unwrap(),
        b"0123456789abcdefghij"
    );
    let (source, bytes) = late.borrow_mut().take().unwrap().unwrap();
    assert_eq!(source, Source::Tier(0));
    assert_eq!(bytes, b"0123456789abcdefghij");
    assert_eq!(origin.calls(), 1);
}

#[test]
fn delete_beats_inflight_fill() {
    let mut h = Harness::new(1);
    let gate = Rc::new(mock::Gate::default());
    let origin = MockOrigin::replying([body("old", b"old body")]).gated(&gate);
    let engine = h.engine.clone();
    let o = origin.clone();
    let reader = h.spawn(async move { read_body(engine.get("k", None, o).await?.body).await });
    h.settle();
    let engine = h.engine.clone();
    h.run(engine.delete("k")).unwrap();
    gate.open();
    h.settle();
    assert_eq!(
        reader.borrow_mut().take().unwrap().unwrap(),
        b"old body",
        "the reader still gets its bytes"
    );
    assert!(
        h.tiers[0].meta("k").is_none(),
        "the fill must not commit after the delete"
    );
}

#[test]
fn set_beats_inflight_fill() {
    let mut h = Harness::new(1);
    let gate = Rc::new(mock::Gate::default());
    let origin = MockOrigin::replying([body("old", b"old body")]).gated(&gate);
    let engine = h.engine.clone();
    let o = origin.clone();
    let reader = h.spawn(async move { read_body(engine.get("k", None, o).await?.body).await });
    h.settle();
    let engine = h.engine.clone();
    h.run(async move {
        let mut w = engine
            .set(
                "k",
                Metadata {
                    tag: "new".into(),
                    ..Metadata::default()
                },
            )
            .await?;
        w.write(b"new body".to_vec()).await?;
        w.commit().await
    })
    .unwrap();
    gate.open();
    h.settle();
    assert_eq!(reader.borrow_mut().take().unwrap().unwrap(), b"old body");
    assert_eq!(h.tiers[0].body("k").unwrap(), b"new body");
}

#[test]
fn set_overtaken_by_a_later_set_reports_invalidated() {
    let mut h = Harness::new(2);
    let engine = h.engine.clone();
    let result = h.run(async move {
        let mut first = engine.set("k", Metadata::default()).await?;
        first.write(b"first".to_vec()).await?;
        let mut second = engine.set("k", Metadata::default()).await?;
        second.write(b"second".to_vec()).await?;
        second.commit().await?;
        first.commit().await
    });
    assert_eq!(result, Err(Error::Invalidated));
    assert_eq!(h.tiers[0].body("k").unwrap(), b"second");
    assert!(h.tiers[0].meta("k").unwrap().cached_at.is_some());
    h.run_jobs();
    assert_eq!(h.tiers[1].body("k").unwrap(), b"second");
}

#[test]
fn dropped_writer_writes_nothing() {
    let mut h = Harness::new(1);
    let engine = h.engine.clone();
    h.run(async move {
        let mut w = engine.set("k", Metadata::default()).await.unwrap();
        w.write(b"never".to_vec()).await.unwrap();
    });
    assert!(h.tiers[0].meta("k").is_none());
}

#[test]
fn delete_removes_from_every_tier() {
    let mut h = Harness::new(3);
    for t in &h.tiers {
        t.put("k", fresh("v", 0), b"x");
    }
    let engine = h.engine.clone();
    h.run(engine.delete("k")).unwrap();
    assert!(h.tiers.iter().all(|t| t.meta("k").is_none()));
}

#[test]
fn dirty_request_is_served_but_writes_nothing() {
    let mut h = Harness::new(2);
    h.tiers[0].fail_gets.set(true);
    let origin = MockOrigin::replying([body("v", b"served anyway")]);
    let r = h.get("k", &origin).unwrap();
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"served anyway");
    h.run_jobs();
    assert!(h.tiers[0].meta("k").is_none() && h.tiers[1].meta("k").is_none());
}

#[test]
fn setup_timeout_bounds_a_slow_origin() {
    let mut h = Harness::new(1);
    let origin = MockOrigin::default();
    origin.0.stall.set(true);
    let engine = h.engine.clone();
    let slot = h.spawn(async move { engine.get("k", None, origin).await.map(|r| r.status) });
    h.settle();
    assert!(slot.borrow().is_none());
    assert_eq!(h.engine.flights(), 1);
    h.rt.advance(30_000);
    h.settle();
    assert_eq!(slot.borrow_mut().take().unwrap(), Err(Error::Timeout));
    assert_eq!(
        h.engine.flights(),
        0,
        "the timed-out leader hands its flight back"
    );
}

#[test]
fn close_refuses_new_calls_but_open_bodies_stay_readable() {
    let mut h = Harness::new(1);
    let origin = MockOrigin::replying([body("v", b"still readable")]);
    let r = h.get("k", &origin).unwrap();
    h.engine.close();
    h.engine.close();
    assert!(matches!(h.get("k", &origin), Err(Error::Closed)));
    let engine = h.engine.clone();
    assert!(matches!(h.run(engine.delete("k")), Err(Error::Closed)));
    assert_eq!(
        h.engine.schedule_refresh("k", origin.clone()),
        Err(Error::Closed)
    );
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"still readable");
}

#[test]
fn invalid_keys_are_refused() {
    let mut h = Harness::with_config(
        1,
        Config {
            max_key_len: 8,
            ..Config::default()
        },
    );
    assert!(matches!(
        h.get("", &MockOrigin::default()),
        Err(Error::InvalidKey(_))
    ));
    assert!(matches!(
        h.get("much too long", &MockOrigin::default()),
        Err(Error::InvalidKey(_))
    ));
}

#[test]
fn schedule_refresh_reports_a_full_queue_and_dedups() {
    let mut h = Harness::new(1);
    h.rt.queue_limit.set(1);
    h.engine
        .schedule_refresh("a", MockOrigin::default())
        .unwrap();
    h.engine
        .schedule_refresh("a", MockOrigin::default())
        .unwrap();
    assert_eq!(h.rt.jobs.borrow().len(), 1);
    assert_eq!(
        h.engine.schedule_refresh("b", MockOrigin::default()),
        Err(Error::Busy)
    );
    let origin = MockOrigin::replying([body("v", b"refreshed")]);
    h.rt.jobs.borrow_mut().clear();
    h.engine.schedule_refresh("b", origin).unwrap();
    h.run_jobs();
    assert_eq!(h.tiers[0].body("b").unwrap(), b"refreshed");
}

#[test]
fn open_validates_the_config() {
    let h = Harness::new(1);
    let bad = Config {
        operation_timeout: 0,
        ..Config::default()
    };
    let result = Engine::open(bad, vec![MockTier::new("a")], h.rt.clone());
    assert!(
        matches!(result, Err(Error::InvalidConfig(why)) if why.starts_with("operation-timeout"))
    );
    let result = Engine::open(
        Config::default(),
        vec![MockTier::new("a"), MockTier::new("a")],
        h.rt.clone(),
    );
    assert!(matches!(result, Err(Error::InvalidConfig(why)) if why.starts_with("tiers")));
}

#[test]
fn peek_whole_answers_fresh_tier0_entries_at_once() {
    let mut h = Harness::new(2);
    let now = h.rt.now_ms();
    let engine = h.engine.clone();
    assert_eq!(engine.peek_whole("k", None).unwrap(), None);
    h.tiers[1].put("k", fresh("v1", now), b"cold");
    assert_eq!(engine.peek_whole("k", None).unwrap(), None);
    assert!(h.tiers[0].body("k").is_none(), "it promotes nothing");
    h.tiers[0].put("k", fresh("v1", now), b"hot");
    let r = engine.peek_whole("k", None).unwrap().expect("a fresh hit");
    assert_eq!((r.status, r.body), (Status::Ok, Some(b"hot".to_vec())));
    assert_eq!(r.meta.tag, "v1");
    let r = engine.peek_whole("k", Some("\"v1\"")).unwrap().unwrap();
    assert_eq!((r.status, r.body), (Status::NotModified, None));
    h.tiers[0].put("gone", Metadata::negative_at(now), b"");
    let r = engine.peek_whole("gone", None).unwrap().unwrap();
    assert_eq!((r.status, r.body), (Status::NotFound, None));
    // A tier that cannot hand it over at once leaves it to the streams.
    h.tiers[0].in_memory.set(false);
    assert_eq!(engine.peek_whole("k", None).unwrap(), None);
    let r = h
        .run(engine.peek("k", None))
        .unwrap()
        .expect("peek streams it");
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"hot");
    h.tiers[0].in_memory.set(true);
    // A tier error leaves it to `get`, which deals with those.
    h.tiers[0].fail_gets.set(true);
    assert_eq!(engine.peek_whole("k", None).unwrap(), None);
    h.tiers[0].fail_gets.set(false);
    // Stale: left to `get`, which refreshes; nothing is scheduled.
    h.rt.advance(5_000);
    assert_eq!(engine.peek_whole("k", None).unwrap(), None);
    assert!(h.rt.jobs.borrow().is_empty());
    assert_eq!(engine.flights(), 0);
    assert!(matches!(
        engine.peek_whole("", None),
        Err(Error::InvalidKey(_))
    ));
}

#[test]
fn peek_answers_only_fresh_tier0_entries_and_does_nothing_else() {
    let mut h = Harness::new(2);
    let now = h.rt.now_ms();
    let engine = h.engine.clone();
    // Nothing anywhere, or only in a lower tier: no answer, no promotion.
    assert!(h.run(engine.peek("k", None)).unwrap().is_none());
    h.tiers[1].put("k", fresh("v1", now), b"cold");
    assert!(h.run(engine.peek("k", None)).unwrap().is_none());
    assert!(h.tiers[0].body("k").is_none(), "a peek promotes nothing");
    // Fresh in tier 0: the body, and 304 for a matching tag.
    h.tiers[0].put("k", fresh("v1", now), b"hot");
    let r = h.run(engine.peek("k", None)).unwrap().expect("a fresh hit");
    assert_eq!(
        (r.status, r.source, r.stale),
        (Status::Ok, Source::Tier(0), false)
    );
    assert_eq!(h.run(read_body(r.body)).unwrap(), b"hot");
    let r = h.run(engine.peek("k", Some("\"v1\""))).unwrap().unwrap();
    assert_eq!(r.status, Status::NotModified);
    assert!(r.body.is_none());
    // A fresh negative entry answers not-found.
    h.tiers[0].put("gone", Metadata::negative_at(now), b"");
    let r = h.run(engine.peek("gone", None)).unwrap().unwrap();
    assert_eq!(r.status, Status::NotFound);
    // Stale: left to `get`, which refreshes; a peek schedules nothing.
    h.rt.advance(5_000);
    assert!(h.run(engine.peek("k", None)).unwrap().is_none());
    assert!(h.rt.jobs.borrow().is_empty());
    assert_eq!(engine.flights(), 0);
    // Bad keys fail as they do for `get`.
    assert!(matches!(
        h.run(engine.peek("", None)),
        Err(Error::InvalidKey(_))
    ));
}
