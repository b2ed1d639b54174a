//! The engine's behaviour end to end: every call goes through the real
//! component running in wasmtime, over real memory tiers.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::*;
use daramjwee::{
    Cache, ComponentSource, Error, MemoryStore, Metadata, Source, Status, Tier, WorkerStrategy,
};
use futures::StreamExt;
use tokio::sync::mpsc;

fn body(n: usize) -> Bytes {
    (0..n)
        .map(|i| (i * 7 % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn full_miss_then_hit_calls_the_origin_once() {
    let (cache, tiers) = cache_with(2, |b| b).await;
    let origin = Origin::new([Reply::Body("v1", body(10_000))]);
    let r = cache.get("k", origin.clone()).await.unwrap();
    assert_eq!((r.status, r.source), (Status::Ok, Source::Origin));
    assert_eq!(read(r).await.unwrap(), body(10_000));
    let r = cache.get("k", origin.clone()).await.unwrap();
    assert_eq!((r.status, r.source), (Status::Ok, Source::Tier(0)));
    assert_eq!(r.meta.tag, "v1");
    assert_eq!(read(r).await.unwrap(), body(10_000));
    assert_eq!(origin.calls(), 1);
    assert!(
        eventually(async || stat(&tiers[1], "k").await.is_some()).await,
        "tier 1 is filled in the background"
    );
}

#[tokio::test]
async fn lower_tier_hit_promotes_while_streaming() {
    let (cache, tiers) = cache_with(3, |b| b).await;
    let cached_at = SystemTime::now() - Duration::from_secs(5);
    let meta = Metadata {
        tag: "cold".into(),
        cached_at: Some(cached_at),
        ..Metadata::default()
    };
    put(&tiers[2], "k", meta, &body(300_000)).await;
    let origin = Origin::new([]);
    let r = cache.get("k", origin.clone()).await.unwrap();
    assert_eq!(r.source, Source::Tier(2));
    assert_eq!(read(r).await.unwrap(), body(300_000));
    let promoted = stat(&tiers[0], "k")
        .await
        .expect("promoted to tier 0 by the time the body ended");
    assert_eq!(promoted.tag, "cold");
    let kept = promoted
        .cached_at
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    assert_eq!(
        kept,
        cached_at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
        "cached-at is kept"
    );
    assert!(
        eventually(async || stat(&tiers[1], "k").await.is_some()).await,
        "tier 1 filled after tier 0"
    );
    let r = cache.get("k", origin.clone()).await.unwrap();
    assert_eq!(r.source, Source::Tier(0));
    assert_eq!(origin.calls(), 0);
}

#[tokio::test]
async fn stale_hit_is_served_at_once_and_refreshed_once_in_the_background() {
    let (cache, tiers) = cache_with(1, |b| b.fresh_for(Duration::from_millis(500))).await;
    let origin = Origin::new([
        Reply::Body("v1", Bytes::from("old")),
        Reply::Body("v2", Bytes::from("new")),
    ])
    .delayed(Duration::from_millis(50));
    read(cache.get("k", origin.clone()).await.unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut stale = Vec::new();
    for _ in 0..10 {
        let (cache, origin) = (cache.clone(), origin.clone());
        stale.push(tokio::spawn(async move {
            let r = cache.get("k", origin).await.unwrap();
            (r.stale, read(r).await.unwrap())
        }));
    }
    for task in stale {
        assert_eq!(
            task.await.unwrap(),
            (true, Bytes::from("old")),
            "stale served at once"
        );
    }
    assert!(eventually(async || stat(&tiers[0], "k").await.is_some_and(|m| m.tag == "v2")).await);
    assert_eq!(origin.calls(), 2, "ten stale hits, one refresh");
    assert_eq!(
        origin.held.lock().unwrap()[1].as_ref().unwrap().tag,
        "v1",
        "the refresh tells the origin what we hold"
    );
    let r = cache.get("k", origin.clone()).await.unwrap();
    assert!(!r.stale);
    assert_eq!(read(r).await.unwrap(), Bytes::from("new"));
}

#[tokio::test]
async fn negative_entry_is_served_until_its_window_expires_then_refetched() {
    let (cache, _tiers) = cache_with(1, |b| b.negative_fresh_for(Duration::from_millis(300))).await;
    let origin = Origin::new([Reply::NotFound, Reply::Body("v", Bytes::from("exists now"))]);
    assert_eq!(
        cache.get("k", origin.clone()).await.unwrap().status,
        Status::NotFound
    );
    let r = cache.get("k", origin.clone()).await.unwrap();
    assert_eq!(
        (r.status, r.source, r.stale),
        (Status::NotFound, Source::Tier(0), false)
    );
    assert!(r.meta.negative);
    assert_eq!(origin.calls(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = cache.get("k", origin.clone()).await.unwrap();
    assert_eq!(r.status, Status::NotFound);
    assert!(
        r.stale,
        "an expired negative entry is served stale and refreshed"
    );
    assert!(eventually(async || origin.calls() == 2).await);
    assert!(
        eventually(async || {
            let r = cache.get("k", origin.clone()).await.unwrap();
            r.status == Status::Ok && read(r).await.unwrap() == "exists now"
        })
        .await
    );
}

#[tokio::test]
async fn if_none_match_answers_not_modified_without_a_body() {
    let (cache, tiers) = cache_with(1, |b| b).await;
    let origin = Origin::new([Reply::Body("v7", Bytes::from("body"))]);
    // On a miss too: the fetched tag matches, the entry is still stored.
    let r = cache
        .get_if_none_match("k", Some("\"v7\""), origin.clone())
        .await
        .unwrap();
    assert_eq!(r.status, Status::NotModified);
    assert!(r.body.is_none());
    assert!(
        eventually(async || stat(&tiers[0], "k").await.is_some()).await,
        "the fill was stored"
    );
    for header in ["\"v7\"", "W/\"v7\"", "\"x\", \"v7\"", "*"] {
        let r = cache
            .get_if_none_match("k", Some(header), origin.clone())
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.source),
            (Status::NotModified, Source::Tier(0)),
            "{header}"
        );
        assert!(r.body.is_none());
    }
    let r = cache
        .get_if_none_match("k", Some("\"v8\""), origin.clone())
        .await
        .unwrap();
    assert_eq!(read(r).await.unwrap(), Bytes::from("body"));
    assert_eq!(origin.calls(), 1);
}

fn expired(tag: &str) -> Metadata {
    Metadata {
        tag: tag.into(),
        cached_at: Some(SystemTime::now() - Duration::from_secs(3600)),
        stale_for: Some(Duration::ZERO),
        ..Metadata::default()
    }
}

#[tokio::test]
async fn origin_not_modified_reserves_our_copy_with_a_new_timestamp() {
    let (cache, tiers) = cache_with(2, |b| b).await;
    put(&tiers[1], "k", expired("v1"), b"our copy").await;
    let origin = Origin::new([Reply::NotModified]);
    let r = cache.get("k", origin.clone()).await.unwrap();
    assert_eq!((r.status, r.source), (Status::Ok, Source::Tier(1)));
    assert_eq!(read(r).await.unwrap(), Bytes::from("our copy"));
    assert_eq!(origin.held.lock().unwrap()[0].as_ref().unwrap().tag, "v1");
    let restamped = stat(&tiers[0], "k").await.expect("written back to tier 0");
    assert!(restamped.cached_at.unwrap().elapsed().unwrap() < Duration::from_secs(60));
    let r = cache.get("k", origin.clone()).await.unwrap();
    assert_eq!((r.source, r.stale), (Source::Tier(0), false));
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn origin_not_modified_after_our_copy_was_evicted_is_not_found() {
    let (cache, tiers) = cache_with(1, |b| b).await;
    put(&tiers[0], "k", expired("v1"), b"about to go").await;
    let tier = tiers[0].clone();
    // The copy is evicted while the origin decides.
    let origin = Origin::new([Reply::NotModified]).before_answer(move || {
        let tier = tier.clone();
        futures::executor::block_on(async move { tier.delete("k").await.unwrap() });
    });
    let r = cache.get("k", origin).await.unwrap();
    assert_eq!(r.status, Status::NotFound);
    assert!(r.body.is_none(), "never garbage");
}

#[tokio::test]
async fn origin_error_is_returned_and_never_cached() {
    let (cache, tiers) = cache_with(2, |b| b).await;
    let origin = Origin::new([Reply::Fail, Reply::Body("v", Bytes::from("ok"))]);
    assert!(matches!(
        cache.get("k", origin.clone()).await,
        Err(Error::Origin(_))
    ));
    assert!(stat(&tiers[0], "k").await.is_none() && stat(&tiers[1], "k").await.is_none());
    assert_eq!(
        read(cache.get("k", origin.clone()).await.unwrap())
            .await
            .unwrap(),
        Bytes::from("ok")
    );
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn panicking_fetcher_is_an_origin_error_and_the_host_lives_on() {
    let (cache, _tiers) = cache_with(1, |b| b).await;
    let origin = Origin::new([Reply::Panic, Reply::Body("v", Bytes::from("fine"))]);
    assert!(matches!(
        cache.get("k", origin.clone()).await,
        Err(Error::Origin(_))
    ));
    assert_eq!(
        read(cache.get("k", origin).await.unwrap()).await.unwrap(),
        Bytes::from("fine")
    );
}

#[tokio::test]
async fn body_that_breaks_off_reports_an_error_and_is_not_cached() {
    let (cache, tiers) = cache_with(1, |b| b).await;
    let (tx, rx) = mpsc::channel(4);
    let origin = Origin::new([Reply::Streamed("v", rx)]);
    let r = cache.get("k", origin).await.unwrap();
    tx.send(Ok(Bytes::from("first part"))).await.unwrap();
    tx.send(Err(Error::Origin("connection reset".into())))
        .await
        .unwrap();
    drop(tx);
    assert!(read(r).await.is_err());
    assert!(stat(&tiers[0], "k").await.is_none());
}

#[tokio::test]
async fn reader_that_stops_half_way_publishes_nothing() {
    let (cache, tiers) = cache_with(1, |b| b).await;
    let (tx, rx) = mpsc::channel(4);
    let origin = Origin::new([
        Reply::Streamed("v", rx),
        Reply::Body("v", Bytes::from("again")),
    ]);
    let r = cache.get("k", origin.clone()).await.unwrap();
    let mut body = r.body.unwrap();
    tx.send(Ok(body_chunk())).await.unwrap();
    assert!(body.next().await.unwrap().is_ok());
    drop(body);
    // The origin finishes the body after the reader left.
    for _ in 0..3 {
        let _ = tx.send(Ok(body_chunk())).await;
    }
    drop(tx);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        stat(&tiers[0], "k").await.is_none(),
        "nothing partial, nothing unread is published"
    );
    assert_eq!(
        read(cache.get("k", origin.clone()).await.unwrap())
            .await
            .unwrap(),
        Bytes::from("again")
    );
    assert_eq!(origin.calls(), 2);
}

fn body_chunk() -> Bytes {
    Bytes::from(vec![42u8; 64 * 1024])
}

/// `n` concurrent gets of `key`, released together; their bodies.
async fn herd(cache: &Cache, key: &'static str, origin: &Origin, n: usize) -> Vec<Bytes> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let readers: Vec<_> = (0..n)
        .map(|_| {
            let (cache, origin, barrier) = (cache.clone(), origin.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                read(cache.get(key, origin).await?).await
            })
        })
        .collect();
    let mut bodies = Vec::new();
    for reader in readers {
        bodies.push(reader.await.unwrap().unwrap());
    }
    bodies
}

#[tokio::test]
async fn a_thousand_readers_of_one_fill_stay_within_a_small_guest_memory_cap() {
    // Each reader copies the fill's chunks out to a stream of its own: a
    // thousand readers, all woken by one 64 KiB chunk, would hold 64 MiB
    // of copies at once, more than this cap, unless they share a budget.
    let (cache, _) = cache_with(1, |b| b.shards(1).memory_limit(48 << 20)).await;
    let data = body(1 << 20);
    let origin = Origin::new([Reply::Body("v", data.clone())]).delayed(Duration::from_millis(300));
    for body in herd(&cache, "herd", &origin, 1000).await {
        assert_eq!(body, data);
    }
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn hundred_and_fifty_concurrent_misses_fetch_once_and_share_the_bytes() {
    let (cache, tiers) = cache_with(2, |b| b).await;
    let data = body(1 << 20);
    let origin = Origin::new([Reply::Body("v", data.clone())]).delayed(Duration::from_millis(200));
    for body in herd(&cache, "thundering-herd", &origin, 150).await {
        assert_eq!(body, data, "every reader gets the full, identical body");
    }
    assert_eq!(origin.calls(), 1);
    assert_eq!(stat(&tiers[0], "thundering-herd").await.unwrap().tag, "v");
}

#[tokio::test]
async fn delete_during_an_inflight_fill_wins() {
    let (cache, tiers) = cache_with(2, |b| b).await;
    let (tx, rx) = mpsc::channel(4);
    let origin = Origin::new([Reply::Streamed("old", rx)]);
    let r = cache.get("k", origin).await.unwrap();
    tx.send(Ok(Bytes::from("old "))).await.unwrap();
    let reader = tokio::spawn(read(r));
    cache.delete("k").await.unwrap();
    tx.send(Ok(Bytes::from("body"))).await.unwrap();
    drop(tx);
    assert_eq!(
        reader.await.unwrap().unwrap(),
        Bytes::from("old body"),
        "the reader still gets its bytes"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(stat(&tiers[0], "k").await.is_none() && stat(&tiers[1], "k").await.is_none());
}

/// `Tier` methods a test tier hands straight to the memory store it wraps
/// (its `inner`), named.
macro_rules! from_inner {
    (name) => {
        fn name(&self) -> String {
            self.inner.name()
        }
    };
    (get) => {
        fn get<'a>(
            &'a self,
            key: &'a str,
        ) -> futures::future::BoxFuture<'a, daramjwee::Result<Option<daramjwee::TierEntry>>> {
            self.inner.get(key)
        }
    };
    (stat) => {
        fn stat<'a>(
            &'a self,
            key: &'a str,
        ) -> futures::future::BoxFuture<'a, daramjwee::Result<Option<Metadata>>> {
            self.inner.stat(key)
        }
    };
    (begin_write) => {
        fn begin_write<'a>(
            &'a self,
            key: &'a str,
            meta: Metadata,
        ) -> futures::future::BoxFuture<'a, daramjwee::Result<Box<dyn daramjwee::TierSink>>> {
            self.inner.begin_write(key, meta)
        }
    };
    (delete) => {
        fn delete<'a>(
            &'a self,
            key: &'a str,
        ) -> futures::future::BoxFuture<'a, daramjwee::Result<()>> {
            self.inner.delete(key)
        }
    };
    ($($method:ident),+) => {
        $(from_inner!($method);)+
    };
}

/// A memory tier whose commits wait until the test lets them land.
#[derive(Clone)]
struct HeldCommits {
    inner: daramjwee::MemoryStore,
    /// Told when a commit starts waiting.
    waiting: Arc<tokio::sync::Notify>,
    /// One permit lets one commit land.
    land: Arc<tokio::sync::Semaphore>,
}

struct HeldSink {
    inner: Box<dyn daramjwee::TierSink>,
    tier: HeldCommits,
}

impl daramjwee::TierSink for HeldSink {
    fn write(&mut self, data: Bytes) -> futures::future::BoxFuture<'_, daramjwee::Result<()>> {
        self.inner.write(data)
    }

    fn commit(self: Box<Self>) -> futures::future::BoxFuture<'static, daramjwee::Result<()>> {
        Box::pin(async move {
            self.tier.waiting.notify_one();
            self.tier.land.acquire().await.unwrap().forget();
            self.inner.commit().await
        })
    }
}

impl Tier for HeldCommits {
    from_inner!(name, get, stat, delete);

    fn begin_write<'a>(
        &'a self,
        key: &'a str,
        meta: Metadata,
    ) -> futures::future::BoxFuture<'a, daramjwee::Result<Box<dyn daramjwee::TierSink>>> {
        Box::pin(async move {
            let inner = self.inner.begin_write(key, meta).await?;
            let held: Box<dyn daramjwee::TierSink> = Box::new(HeldSink {
                inner,
                tier: self.clone(),
            });
            Ok(held)
        })
    }
}

#[tokio::test]
async fn delete_while_a_fill_commits_wins() {
    let tier = HeldCommits {
        inner: daramjwee::MemoryStore::new("held"),
        waiting: Arc::default(),
        land: Arc::new(tokio::sync::Semaphore::new(0)),
    };
    let cache = Cache::builder().tier(tier.clone()).build().await.unwrap();
    let origin = Origin::new([
        Reply::Body("old", body(1_000)),
        Reply::Body("new", body(10)),
    ]);
    let waiting = tier.waiting.notified();
    let r = cache.get("k", origin.clone()).await.unwrap();
    let reader = tokio::spawn(read(r));
    // The fill checked the key's generation and is committing: a delete
    // comes now, finds nothing yet, and then the commit lands.
    waiting.await;
    cache.delete("k").await.unwrap();
    tier.land.add_permits(1);
    assert_eq!(reader.await.unwrap().unwrap(), body(1_000));
    assert!(
        eventually(async || tier.inner.stat("k").await.unwrap().is_none()).await,
        "the deleted version outlived the delete"
    );
    tier.land.add_permits(1);
    let r = cache.get("k", origin.clone()).await.unwrap();
    assert_eq!((r.source, r.meta.tag.as_str()), (Source::Origin, "new"));
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn set_during_an_inflight_fill_wins() {
    let (cache, tiers) = cache_with(1, |b| b).await;
    let (tx, rx) = mpsc::channel(4);
    let origin = Origin::new([Reply::Streamed("old", rx)]);
    let r = cache.get("k", origin).await.unwrap();
    tx.send(Ok(Bytes::from("old "))).await.unwrap();
    let reader = tokio::spawn(read(r));
    let mut writer = cache.set("k", Metadata::tagged("new")).await.unwrap();
    writer.write("new body").await.unwrap();
    writer.commit().await.unwrap();
    tx.send(Ok(Bytes::from("body"))).await.unwrap();
    drop(tx);
    assert_eq!(reader.await.unwrap().unwrap(), Bytes::from("old body"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(stat(&tiers[0], "k").await.unwrap().tag, "new");
    let r = cache.get("k", Origin::new([])).await.unwrap();
    assert_eq!(read(r).await.unwrap(), Bytes::from("new body"));
}

#[tokio::test]
async fn set_overtaken_by_a_later_set_reports_invalidated_and_a_dropped_writer_aborts() {
    let (cache, tiers) = cache_with(2, |b| b).await;
    let mut first = cache.set("k", Metadata::tagged("first")).await.unwrap();
    first.write("first").await.unwrap();
    let mut second = cache.set("k", Metadata::tagged("second")).await.unwrap();
    second.write("second").await.unwrap();
    second.commit().await.unwrap();
    assert_eq!(first.commit().await, Err(Error::Invalidated));
    assert_eq!(stat(&tiers[0], "k").await.unwrap().tag, "second");
    assert!(
        eventually(async || stat(&tiers[1], "k")
            .await
            .is_some_and(|m| m.tag == "second"))
        .await
    );
    let mut dropped = cache.set("other", Metadata::default()).await.unwrap();
    dropped.write("never").await.unwrap();
    drop(dropped);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(stat(&tiers[0], "other").await.is_none());
}

#[tokio::test]
async fn delete_removes_the_key_from_every_tier() {
    let (cache, tiers) = cache_with(3, |b| b).await;
    for tier in &tiers {
        put(tier, "k", Metadata::tagged("v"), b"x").await;
    }
    cache.delete("k").await.unwrap();
    for tier in &tiers {
        assert!(stat(tier, "k").await.is_none());
    }
}

#[tokio::test]
async fn close_refuses_new_calls_but_open_bodies_stay_readable() {
    let (cache, _tiers) = cache_with(1, |b| b).await;
    let (tx, rx) = mpsc::channel(4);
    let origin = Origin::new([Reply::Streamed("v", rx)]);
    let r = cache.get("k", origin.clone()).await.unwrap();
    cache.close().await;
    cache.close().await;
    assert!(matches!(
        cache.get("k", origin.clone()).await,
        Err(Error::Closed)
    ));
    assert!(matches!(
        cache.set("k", Metadata::default()).await,
        Err(Error::Closed)
    ));
    assert_eq!(cache.delete("k").await, Err(Error::Closed));
    assert_eq!(
        cache.schedule_refresh("k", origin).await,
        Err(Error::Closed)
    );
    tx.send(Ok(Bytes::from("still "))).await.unwrap();
    tx.send(Ok(Bytes::from("readable"))).await.unwrap();
    drop(tx);
    assert_eq!(read(r).await.unwrap(), Bytes::from("still readable"));
}

#[tokio::test]
async fn schedule_refresh_fills_the_cache_and_reports_a_full_queue() {
    let (cache, tiers) = cache_with(1, |b| {
        b.workers(WorkerStrategy::Pool {
            workers: 1,
            queue: 1,
        })
    })
    .await;
    let origin = Origin::new([Reply::Body("v", Bytes::from("refreshed"))]);
    cache.schedule_refresh("k", origin).await.unwrap();
    assert!(eventually(async || stat(&tiers[0], "k").await.is_some()).await);
    // A slow origin holds the one worker; the queue of one then fills.
    let slow = Origin::new([]).delayed(Duration::from_secs(2));
    let mut refused = None;
    for i in 0..5 {
        if let Err(e) = cache
            .schedule_refresh(&format!("slow{i}"), slow.clone())
            .await
        {
            refused = Some(e);
            break;
        }
    }
    assert_eq!(refused, Some(Error::Busy));
}

#[tokio::test]
async fn invalid_keys_are_refused() {
    let (cache, _tiers) = cache_with(1, |b| b.max_key_len(16)).await;
    assert!(matches!(
        cache.get("", Origin::new([])).await,
        Err(Error::InvalidKey(_))
    ));
    assert!(matches!(
        cache.get(&"x".repeat(17), Origin::new([])).await,
        Err(Error::InvalidKey(_))
    ));
    assert!(matches!(
        cache.set("", Metadata::default()).await,
        Err(Error::InvalidKey(_))
    ));
}

#[tokio::test]
async fn every_bad_setting_is_an_error_naming_it() {
    async fn rejects(builder: daramjwee::CacheBuilder, option: &str) {
        match builder.build().await {
            Err(Error::InvalidConfig(why)) => assert!(why.starts_with(option), "{option}: {why}"),
            Err(other) => panic!("{option}: expected invalid-config, got {other:?}"),
            Ok(_) => panic!("{option}: expected invalid-config, got a cache"),
        }
    }
    let mem = |name: &str| daramjwee::MemoryStore::new(name);
    rejects(Cache::builder(), "tiers").await;
    rejects(Cache::builder().tier(mem("a")).tier(mem("a")), "tiers").await;
    rejects(
        Cache::builder()
            .tier(mem("a"))
            .operation_timeout(Duration::ZERO),
        "operation-timeout",
    )
    .await;
    rejects(
        Cache::builder().tier(mem("a")).max_key_len(0),
        "max-key-len",
    )
    .await;
    rejects(
        Cache::builder()
            .tier(mem("a"))
            .tier_freshness(1, None, None),
        "tier-freshness",
    )
    .await;
    rejects(Cache::builder().tier(mem("a")).shards(0), "shards").await;
    rejects(
        Cache::builder()
            .tier(mem("a"))
            .workers(WorkerStrategy::Pool {
                workers: 0,
                queue: 1,
            }),
        "workers",
    )
    .await;
    rejects(
        Cache::builder()
            .tier(mem("a"))
            .workers(WorkerStrategy::Pool {
                workers: 1,
                queue: 0,
            }),
        "queue-size",
    )
    .await;
    rejects(
        Cache::builder().tier(mem("a")).job_timeout(Duration::ZERO),
        "job-timeout",
    )
    .await;
    rejects(
        Cache::builder()
            .tier(mem("a"))
            .shutdown_timeout(Duration::ZERO),
        "shutdown-timeout",
    )
    .await;
    rejects(
        Cache::builder().tier(mem("a")).memory_limit(1 << 20),
        "memory-limit",
    )
    .await;
    rejects(
        Cache::builder()
            .tier(mem("a"))
            .call_time_limit(Duration::ZERO),
        "call-time-limit",
    )
    .await;
    rejects(
        Cache::builder()
            .tier(mem("a"))
            .component(ComponentSource::Bytes(Arc::from(&b"not wasm"[..]))),
        "component",
    )
    .await;
}

async fn faulty_cache(
    configure: impl FnOnce(daramjwee::CacheBuilder) -> daramjwee::CacheBuilder,
) -> Cache {
    faulty_cache_over("m", configure).await
}

/// A cache of the faulty engine over one memory tier named `tier`.
async fn faulty_cache_over(
    tier: &str,
    configure: impl FnOnce(daramjwee::CacheBuilder) -> daramjwee::CacheBuilder,
) -> Cache {
    faulty_cache_with(daramjwee::MemoryStore::new(tier), configure).await
}

/// A cache of the faulty engine over `tier`.
async fn faulty_cache_with(
    tier: daramjwee::MemoryStore,
    configure: impl FnOnce(daramjwee::CacheBuilder) -> daramjwee::CacheBuilder,
) -> Cache {
    let component = ComponentSource::Bytes(Arc::from(daramjwee::FAULTY_COMPONENT));
    let builder = Cache::builder().tier(tier).shards(1).component(component);
    configure(builder).build().await.unwrap()
}

#[tokio::test]
async fn a_trapping_guest_call_fails_that_request_and_the_instance_is_replaced() {
    let cache = faulty_cache(|b| b).await;
    // Cached before the fault: tiers live in the host and survive it.
    let origin = Origin::new([Reply::Body("v", Bytes::from("survives"))]);
    read(cache.get("k", origin.clone()).await.unwrap())
        .await
        .unwrap();
    let fault = cache.get("fault:trap", Origin::new([])).await;
    assert!(
        matches!(&fault, Err(Error::Engine(why)) if why.contains("unreachable")),
        "{fault:?}"
    );
    let r = cache.get("k", origin.clone()).await.unwrap();
    assert_eq!(read(r).await.unwrap(), Bytes::from("survives"));
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn a_fault_in_the_hit_path_sends_the_request_on_and_replaces_it() {
    // The hit path is asked only about what tier 0 holds: it holds the
    // faulting keys, fresh.
    let tier = daramjwee::MemoryStore::new("m");
    for fault in ["fault:trap", "fault:loop"] {
        let meta = Metadata {
            cached_at: Some(std::time::SystemTime::now()),
            ..Metadata::tagged("f")
        };
        put(&tier, fault, meta, b"never served").await;
    }
    let cache = faulty_cache_with(tier, |b| {
        b.call_time_limit(Duration::from_millis(200))
            .fresh_for(Duration::from_secs(60))
    })
    .await;
    let origin = Origin::new([Reply::Body("v", Bytes::from("survives"))]);
    read(cache.get("k", origin.clone()).await.unwrap())
        .await
        .unwrap();
    let mut faults = 0;
    for fault in ["fault:trap", "fault:loop"] {
        let (c, o) = (cache.clone(), origin.clone());
        // The hit path faults first; the request goes on to the engine,
        // whose own fault is what the caller sees.
        let result = on_shard(&cache, async move { c.get(fault, o).await.map(|_| ()) }).await;
        assert!(
            matches!(&result, Err(Error::Engine(_))),
            "{fault}: {result:?}"
        );
        faults += 1;
        assert_eq!(
            cache.hit_path_faults(),
            faults,
            "{fault}: the hit path faulted"
        );
        let answered = cache.hit_path_answers();
        let body = read_on_shard(&cache, "k", origin.clone()).await;
        assert_eq!(body, Bytes::from("survives"));
        assert_eq!(
            cache.hit_path_answers(),
            answered + 1,
            "{fault}: a fresh hit path answered the next hit"
        );
    }
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn a_hit_path_that_does_not_open_is_not_tried_on_every_request() {
    // The faulty hit path refuses to open over a tier of this name.
    let cache = faulty_cache_over("fault:open", |b| b).await;
    let origin = Origin::new([Reply::Body("v", Bytes::from("served"))]);
    for _ in 0..50 {
        let body = read_on_shard(&cache, "k", origin.clone()).await;
        assert_eq!(body, Bytes::from("served"));
    }
    assert_eq!(origin.calls(), 1, "the engine served the hits");
    assert_eq!(cache.hit_path_answers(), 0);
    assert_eq!(cache.hit_path_faults(), 0);
    // Opened when the shard started, then at most once a second after.
    let failures = cache.hit_path_open_failures();
    assert!((1..=3).contains(&failures), "{failures} attempts to open");
}

#[tokio::test]
async fn a_looping_guest_call_is_interrupted() {
    let cache = faulty_cache(|b| b.call_time_limit(Duration::from_millis(200))).await;
    let fault = cache.get("fault:loop", Origin::new([])).await;
    assert!(
        matches!(&fault, Err(Error::Engine(why)) if why.contains("interrupt")),
        "{fault:?}"
    );
    let r = cache
        .get("k", Origin::new([Reply::Body("v", Bytes::from("alive"))]))
        .await
        .unwrap();
    assert_eq!(read(r).await.unwrap(), Bytes::from("alive"));
}

#[tokio::test]
async fn a_guest_exhausting_its_memory_is_stopped_at_the_cap() {
    let cache = faulty_cache(|b| b.memory_limit(64 << 20)).await;
    let fault = cache.get("fault:oom", Origin::new([])).await;
    assert!(matches!(fault, Err(Error::Engine(_))), "{fault:?}");
    let r = cache
        .get("k", Origin::new([Reply::Body("v", Bytes::from("alive"))]))
        .await
        .unwrap();
    assert_eq!(read(r).await.unwrap(), Bytes::from("alive"));
}

#[tokio::test]
async fn a_large_body_streams_through_in_chunks() {
    let (cache, _tiers) = cache_with(1, |b| b).await;
    let (tx, rx) = mpsc::channel(2);
    let origin = Origin::new([Reply::Streamed("big", rx)]);
    let r = cache.get("big", origin).await.unwrap();
    let producer = tokio::spawn(async move {
        for i in 0..256u32 {
            tx.send(Ok(Bytes::from(vec![(i % 256) as u8; 64 * 1024])))
                .await
                .unwrap();
        }
    });
    let mut body = r.body.unwrap();
    let (mut total, mut chunks) = (0usize, 0usize);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        total += chunk.len();
        chunks += 1;
    }
    producer.await.unwrap();
    assert_eq!(total, 16 << 20);
    assert!(
        chunks >= 256,
        "streamed in pieces, never as one buffer ({chunks} chunks)"
    );
}

/// Tier 0 that counts how it is read: whole, or opened as a stream.
#[derive(Clone)]
struct Counting {
    inner: daramjwee::MemoryStore,
    wholes: Arc<std::sync::atomic::AtomicUsize>,
    streams: Arc<std::sync::atomic::AtomicUsize>,
}

impl Counting {
    fn new() -> Self {
        Counting {
            inner: daramjwee::MemoryStore::new("counted"),
            wholes: Arc::default(),
            streams: Arc::default(),
        }
    }

    /// (whole reads, stream reads) so far.
    fn reads(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::SeqCst;
        (self.wholes.load(SeqCst), self.streams.load(SeqCst))
    }
}

impl Tier for Counting {
    from_inner!(name, stat, begin_write, delete);

    fn get_whole(&self, key: &str) -> daramjwee::Result<Option<(Metadata, Bytes)>> {
        self.wholes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.get_whole(key)
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> futures::future::BoxFuture<'a, daramjwee::Result<Option<daramjwee::TierEntry>>> {
        self.streams
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.get(key)
    }
}

/// Run `task` on the first shard's own thread, as `daramjwee serve` runs
/// its connections.
async fn on_shard<T: Send + 'static>(
    cache: &Cache,
    task: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    cache.shard_runtimes()[0].spawn(task).await.unwrap()
}

/// The body a get of `key` answers on the first shard's thread.
async fn read_on_shard(cache: &Cache, key: &'static str, origin: Origin) -> Bytes {
    let c = cache.clone();
    on_shard(cache, async move {
        read(c.get(key, origin).await.unwrap()).await
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_body_being_filled_has_its_stated_size_and_one_of_another_length_is_not_kept() {
    let (cache, tiers) = cache_with(2, |b| b).await;
    let below = Metadata {
        cached_at: Some(SystemTime::now()),
        ..Metadata::tagged("b")
    };
    put(&tiers[1], "below", below, &body(5_000)).await;
    let origin = Origin::new([
        Reply::Body("v1", body(10_000)),
        Reply::Stated("short", body(100), 1_000),
        Reply::Stated("long", body(2_000), 1_000),
    ]);
    // A miss and a promotion: the length is known before the body comes.
    for (key, len, source) in [
        ("miss", 10_000, Source::Origin),
        ("below", 5_000, Source::Tier(1)),
    ] {
        let r = cache.get(key, origin.clone()).await.unwrap();
        assert_eq!((r.source, r.stored), (source, true), "{key}");
        assert_eq!(r.body.as_ref().and_then(|b| b.size()), Some(len), "{key}");
        assert_eq!(read(r).await.unwrap(), body(len as usize), "{key}");
        assert!(eventually(async || stat(&tiers[0], key).await.is_some()).await);
    }
    // A body that ends short of what the origin said, or runs past it,
    // broke off: the reader hears so and nothing of it is kept.
    for key in ["short", "long"] {
        let r = cache.get(key, origin.clone()).await.unwrap();
        assert_eq!(r.body.as_ref().and_then(|b| b.size()), Some(1_000), "{key}");
        assert!(read(r).await.is_err(), "{key}");
        for tier in &tiers {
            assert!(stat(tier, key).await.is_none(), "{key}");
        }
    }
    assert_eq!(origin.calls(), 3);
}

#[tokio::test]
async fn hit_path_answers_carry_the_entrys_whole_metadata() {
    let cache = Cache::builder()
        .tier(daramjwee::MemoryStore::new("mem"))
        .fresh_for(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    let meta = Metadata {
        fresh_for: Some(Duration::from_secs(30)),
        attributes: vec![
            ("content-type".into(), "text/x-kept".into()),
            ("x-note".into(), "é".repeat(100)),
        ],
        ..Metadata::tagged("v1")
    };
    let mut writer = cache.set("k", meta.clone()).await.unwrap();
    writer.write("body").await.unwrap();
    writer.commit().await.unwrap();
    let answered = cache.hit_path_answers();
    let c = cache.clone();
    let (ok, not_modified) = on_shard(&cache, async move {
        let origin = Origin::new([]);
        let ok = c.get("k", origin.clone()).await.unwrap();
        let not_modified = c
            .get_if_none_match("k", Some("\"v1\""), origin)
            .await
            .unwrap();
        (ok, not_modified)
    })
    .await;
    assert_eq!(
        cache.hit_path_answers(),
        answered + 2,
        "both from the hit path"
    );
    assert_eq!(not_modified.status, Status::NotModified);
    for r in [&ok, &not_modified] {
        assert_eq!(r.meta.tag, "v1");
        assert_eq!(r.meta.attributes, meta.attributes);
        assert_eq!(r.meta.fresh_for, meta.fresh_for);
        assert!(r.meta.cached_at.is_some());
    }
    assert_eq!(read(ok).await.unwrap(), Bytes::from("body"));
}

#[tokio::test]
async fn fresh_memory_hits_are_answered_whole_on_and_off_the_shard_threads() {
    let tier = Counting::new();
    let cache = Cache::builder()
        .tier(tier.clone())
        .negative_fresh_for(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    let origin = Origin::new([
        Reply::Body("v1", body(4096)),
        Reply::Body("big", body(200_000)),
        Reply::NotFound,
        Reply::Body("v2", body(10)),
    ]);
    read(cache.get("k", origin.clone()).await.unwrap())
        .await
        .unwrap();
    let before = tier.reads();

    // On a shard thread (its shard's hit path) and off them (a hit path
    // of the asking thread's own): one whole read each, no stream opened.
    for shard_thread in [true, false] {
        let (c, o) = (cache.clone(), origin.clone());
        let hit = async move {
            let r = c.get("k", o).await.unwrap();
            assert_eq!(
                (r.status, r.source, r.stale),
                (Status::Ok, Source::Tier(0), false)
            );
            assert_eq!(r.meta.tag, "v1");
            assert_eq!(r.body.as_ref().and_then(|b| b.size()), Some(4096));
            read(r).await.unwrap()
        };
        let got = if shard_thread {
            on_shard(&cache, hit).await
        } else {
            hit.await
        };
        assert_eq!(got, body(4096), "shard thread: {shard_thread}");
    }
    assert_eq!(tier.reads(), (before.0 + 2, before.1));
    assert_eq!(cache.hit_path_answers(), 2, "both threads' hits");
    assert_eq!(cache.hit_path_faults(), 0);

    // The rest of a hit's answers, on a shard thread.
    let (c, o) = (cache.clone(), origin.clone());
    on_shard(&cache, async move {
        let r = c
            .get_if_none_match("k", Some("W/\"v1\""), o.clone())
            .await
            .unwrap();
        assert_eq!((r.status, r.source), (Status::NotModified, Source::Tier(0)));
        assert!(r.body.is_none());
        assert!(matches!(
            c.get("", o.clone()).await,
            Err(Error::InvalidKey(_))
        ));
        // Any size: the body is handed through as the tier holds it.
        read(c.get("big", o.clone()).await.unwrap()).await.unwrap();
        let r = c.get("big", o.clone()).await.unwrap();
        assert_eq!(r.source, Source::Tier(0));
        assert_eq!(read(r).await.unwrap(), body(200_000));
        // A negative entry answers not-found.
        assert_eq!(
            c.get("gone", o.clone()).await.unwrap().status,
            Status::NotFound
        );
        let r = c.get("gone", o.clone()).await.unwrap();
        assert_eq!((r.status, r.source), (Status::NotFound, Source::Tier(0)));
        // A delete is seen at once.
        c.delete("k").await.unwrap();
        let r = c.get("k", o.clone()).await.unwrap();
        assert_eq!(r.source, Source::Origin);
        assert_eq!(read(r).await.unwrap(), body(10));
    })
    .await;
    // A miss on a shard thread asks tier 0 whole once (the hit path),
    // not again in the engine instances it goes on to.
    let wholes = tier.reads().0;
    let (c, o) = (cache.clone(), origin.clone());
    origin.push(Reply::Body("v3", body(10)));
    on_shard(&cache, async move {
        read(c.get("new", o).await.unwrap()).await.unwrap();
    })
    .await;
    assert_eq!(tier.reads().0, wholes + 1);
    assert_eq!(origin.calls(), 5);
    // The not-modified, the large and the negative answer.
    assert_eq!(
        cache.hit_path_answers(),
        5,
        "every hit above was served from tier 0"
    );
}

#[test]
fn an_applications_own_threads_answer_fresh_hits_themselves() {
    let app = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    app.block_on(async {
        let tier = Counting::new();
        let cache = Cache::builder()
            .tier(tier.clone())
            .shards(1)
            .build()
            .await
            .unwrap();
        let origin = Origin::new([Reply::Body("v1", body(4096))]);
        read(cache.get("k", origin.clone()).await.unwrap())
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (c, o) = (cache.clone(), origin.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..50 {
                    let r = c.get("k", o.clone()).await.unwrap();
                    assert_eq!((r.source, r.stale), (Source::Tier(0), false));
                    assert_eq!(read(r).await.unwrap(), body(4096));
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(origin.calls(), 1);
        assert_eq!(cache.hit_path_answers(), 800, "every hit, on every thread");
        assert_eq!(cache.hit_path_faults(), 0);
        // A cache closed is closed on every thread's hit path too.
        cache.close().await;
        assert!(matches!(
            cache.get("k", origin.clone()).await,
            Err(Error::Closed)
        ));
        // A new cache on the same threads gets hit paths of its own.
        let fresh = Cache::builder()
            .tier(MemoryStore::new("m"))
            .build()
            .await
            .unwrap();
        let other = Origin::new([Reply::Body("w1", body(10))]);
        read(fresh.get("k", other.clone()).await.unwrap())
            .await
            .unwrap();
        let r = fresh.get("k", other.clone()).await.unwrap();
        assert_eq!((r.meta.tag.as_str(), r.source), ("w1", Source::Tier(0)));
        assert_eq!(fresh.hit_path_answers(), 1);
        fresh.close().await;
    });
}

#[tokio::test]
async fn a_stale_entry_is_left_to_the_engine_which_refreshes_it() {
    let (cache, tiers) = cache_with(1, |b| b.fresh_for(Duration::from_secs(60))).await;
    let old = Metadata {
        stale_for: None,
        ..expired("old")
    };
    put(&tiers[0], "k", old, b"old body").await;
    let origin = Origin::new([Reply::Body("new", Bytes::from("new body"))]);
    let (c, o) = (cache.clone(), origin.clone());
    let r = on_shard(&cache, async move { c.get("k", o).await.unwrap() }).await;
    assert!(r.stale, "served stale by the engine, not as a fresh hit");
    assert_eq!(cache.hit_path_answers(), 0);
    assert_eq!(read(r).await.unwrap(), Bytes::from("old body"));
    assert!(eventually(async || origin.calls() == 1).await);
    assert!(eventually(async || stat(&tiers[0], "k").await.is_some_and(|m| m.tag == "new")).await);
    let (c, o) = (cache.clone(), origin.clone());
    let r = on_shard(&cache, async move { c.get("k", o).await.unwrap() }).await;
    assert_eq!((r.source, r.stale), (Source::Tier(0), false));
    assert_eq!(read(r).await.unwrap(), Bytes::from("new body"));
    assert_eq!(
        cache.hit_path_answers(),
        1,
        "the refreshed entry is a fresh hit"
    );
}
