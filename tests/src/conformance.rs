//! The conformance suite every store passes (SPEC §4).
//!
//! Each check is a function taking a [`Subject`]: a factory that builds a
//! fresh, empty tier, and what the store promises. [`conformance_suite!`]
//! expands into one test per check; [`run_all`] runs them in sequence.
//!
//! What the [`TierSink`] trait rules out by its types is not checked at run
//! time: `commit` consumes the sink, so there is no abort after a commit
//! and no write after the end. The nearest cases are checked instead: a
//! new write of the key after an abort, and the entry surviving the end of
//! its sink. Writes after a failed write are checked per store.
//!
//! [`conformance_suite!`]: crate::conformance_suite

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use daramjwee::{Metadata, Tier, TierEntry, TierSink};
use futures::StreamExt;
use futures::future::BoxFuture;

/// A store under test.
pub struct Subject<'a> {
    /// Builds a fresh, empty tier.
    pub factory: &'a (dyn Fn() -> Arc<dyn Tier> + Sync),
    /// Whether a reader that opens an entry while it is being replaced
    /// always finds one version or the other (false: it may find none).
    pub atomic_replace: bool,
}

impl Subject<'_> {
    fn fresh(&self) -> Arc<dyn Tier> {
        (self.factory)()
    }
}

/// A tier that owns something that must live as long as it, such as the
/// temporary directory of a file store.
pub struct Guarded<G> {
    tier: Arc<dyn Tier>,
    _guard: G,
}

/// `tier`, keeping `guard` alive as long as the tier.
pub fn guarded<G: Any + Send + Sync>(tier: Arc<dyn Tier>, guard: G) -> Arc<dyn Tier> {
    Arc::new(Guarded {
        tier,
        _guard: guard,
    })
}

impl<G: Any + Send + Sync> Tier for Guarded<G> {
    fn name(&self) -> String {
        self.tier.name()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, daramjwee::Result<Option<TierEntry>>> {
        self.tier.get(key)
    }

    fn get_whole(&self, key: &str) -> daramjwee::Result<Option<(Metadata, bytes::Bytes)>> {
        self.tier.get_whole(key)
    }

    fn admits(&self, key: &str, meta: &Metadata, size: u64) -> bool {
        self.tier.admits(key, meta, size)
    }

    fn stat<'a>(&'a self, key: &'a str) -> BoxFuture<'a, daramjwee::Result<Option<Metadata>>> {
        self.tier.stat(key)
    }

    fn begin_write<'a>(
        &'a self,
        key: &'a str,
        meta: Metadata,
    ) -> BoxFuture<'a, daramjwee::Result<Box<dyn TierSink>>> {
        self.tier.begin_write(key, meta)
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, daramjwee::Result<()>> {
        self.tier.delete(key)
    }
}

/// A body of `len` bytes that differs with `seed` in every chunk, so
/// interleaved or shifted bytes do not go unnoticed.
pub fn body(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Metadata using every field, with sub-millisecond times.
pub fn rich_meta(tag: &str) -> Metadata {
    Metadata {
        tag: tag.into(),
        cached_at: Some(SystemTime::UNIX_EPOCH + Duration::new(1_750_000_000, 123_456_789)),
        negative: false,
        fresh_for: Some(Duration::from_millis(60_500)),
        stale_for: Some(Duration::new(3, 7)),
        stale_if_error: Some(Duration::new(9, 11)),
        attributes: vec![
            ("content-type".into(), "application/octet-stream".into()),
            ("x-ünïcode".into(), "值".into()),
        ],
    }
}

/// Write `body` under `key` in chunks of `chunk` bytes and commit.
pub async fn put(tier: &dyn Tier, key: &str, meta: Metadata, body: &[u8], chunk: usize) {
    let mut sink = tier.begin_write(key, meta).await.expect("begin_write");
    for part in body.chunks(chunk.max(1)) {
        sink.write(Bytes::copy_from_slice(part))
            .await
            .expect("write");
    }
    sink.commit().await.expect("commit");
}

/// Read a whole body, checking it has the size the entry announced.
pub async fn read_all(entry: TierEntry) -> Vec<u8> {
    let size = entry.size;
    let mut out = Vec::with_capacity(size as usize);
    let mut body = entry.body;
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk.expect("body chunk"));
    }
    assert_eq!(out.len() as u64, size, "body length differs from the size");
    out
}

/// The metadata and body of `key`, or `None`.
pub async fn fetch(tier: &dyn Tier, key: &str) -> Option<(Metadata, Vec<u8>)> {
    let entry = tier.get(key).await.expect("get")?;
    let meta = entry.meta.clone();
    Some((meta, read_all(entry).await))
}

/// A missing key is absent to `get` and `stat`; deleting it succeeds.
pub async fn missing_key_is_not_found(subject: &Subject<'_>) {
    let tier = subject.fresh();
    assert!(tier.get("missing").await.expect("get").is_none());
    assert!(tier.stat("missing").await.expect("stat").is_none());
    tier.delete("missing")
        .await
        .expect("delete of an absent key");
}

/// A committed entry reads back whole, with its metadata.
pub async fn commit_publishes(subject: &Subject<'_>) {
    let tier = subject.fresh();
    let data = body(1, 10_000);
    put(&*tier, "k", rich_meta("v1"), &data, 1000).await;
    let (meta, got) = fetch(&*tier, "k").await.expect("published");
    assert_eq!(meta, rich_meta("v1"));
    assert_eq!(got, data);
}

/// Nothing is visible before the commit.
pub async fn nothing_is_visible_before_commit(subject: &Subject<'_>) {
    let tier = subject.fresh();
    let mut sink = tier.begin_write("k", rich_meta("v1")).await.expect("begin");
    sink.write(Bytes::from(body(2, 5000))).await.expect("write");
    assert!(tier.get("k").await.expect("get").is_none());
    assert!(tier.stat("k").await.expect("stat").is_none());
    sink.commit().await.expect("commit");
    assert!(tier.get("k").await.expect("get").is_some());
}

/// An empty body (a negative entry) round-trips.
pub async fn empty_body_round_trips(subject: &Subject<'_>) {
    let tier = subject.fresh();
    let meta = Metadata {
        negative: true,
        ..Metadata::tagged("")
    };
    put(&*tier, "gone", meta.clone(), &[], 1).await;
    let entry = tier.get("gone").await.expect("get").expect("published");
    assert_eq!(entry.size, 0);
    assert_eq!(entry.meta, meta);
    assert!(read_all(entry).await.is_empty());
}

/// A sink dropped without commit leaves the previous entry untouched.
pub async fn dropped_sink_aborts(subject: &Subject<'_>) {
    let tier = subject.fresh();
    let old = body(3, 3000);
    put(&*tier, "k", Metadata::tagged("old"), &old, 700).await;
    {
        let mut sink = tier
            .begin_write("k", Metadata::tagged("new"))
            .await
            .expect("begin");
        // Enough to spill to disk in stores that buffer small bodies.
        for i in 0..8 {
            sink.write(Bytes::from(body(100 + i, 128 * 1024)))
                .await
                .expect("write");
        }
    }
    let (meta, got) = fetch(&*tier, "k").await.expect("old entry kept");
    assert_eq!(meta.tag, "old");
    assert_eq!(got, old);
    // And an aborted first write leaves nothing.
    drop(
        tier.begin_write("fresh", Metadata::default())
            .await
            .expect("begin"),
    );
    assert!(tier.get("fresh").await.expect("get").is_none());
}

/// A new write of a key after an aborted one commits normally.
pub async fn write_after_abort_commits(subject: &Subject<'_>) {
    let tier = subject.fresh();
    let mut aborted = tier
        .begin_write("k", Metadata::tagged("a"))
        .await
        .expect("begin");
    aborted
        .write(Bytes::from(body(4, 400_000)))
        .await
        .expect("write");
    drop(aborted);
    let data = body(5, 1234);
    put(&*tier, "k", Metadata::tagged("b"), &data, 100).await;
    let (meta, got) = fetch(&*tier, "k").await.expect("published");
    assert_eq!((meta.tag.as_str(), got), ("b", data));
}

/// An entry outlives its sink, and a write of the key that is then
/// abandoned does not disturb it.
pub async fn entry_survives_its_sink(subject: &Subject<'_>) {
    let tier = subject.fresh();
    let data = body(6, 300_000);
    put(&*tier, "k", Metadata::tagged("v"), &data, 64 * 1024).await;
    for _ in 0..3 {
        tokio::task::yield_now().await;
        drop(
            tier.begin_write("k", Metadata::tagged("x"))
                .await
                .expect("begin"),
        );
    }
    let (meta, got) = fetch(&*tier, "k").await.expect("still there");
    assert_eq!((meta.tag.as_str(), got), ("v", data));
}

/// Two sinks of one key are independent: aborting one does not affect
/// the other's commit.
pub async fn sinks_of_one_key_are_independent(subject: &Subject<'_>) {
    let tier = subject.fresh();
    let mut first = tier
        .begin_write("k", Metadata::tagged("1"))
        .await
        .expect("begin");
    let mut second = tier
        .begin_write("k", Metadata::tagged("2"))
        .await
        .expect("begin");
    first
        .write(Bytes::from(body(7, 300_000)))
        .await
        .expect("write");
    second
        .write(Bytes::from(body(8, 300_000)))
        .await
        .expect("write");
    drop(first);
    second.commit().await.expect("commit");
    let (meta, got) = fetch(&*tier, "k").await.expect("published");
    assert_eq!((meta.tag.as_str(), got), ("2", body(8, 300_000)));
}

/// `stat` returns the metadata alone and follows overwrites and deletes.
pub async fn stat_returns_metadata(subject: &Subject<'_>) {
    let tier = subject.fresh();
    put(&*tier, "k", rich_meta("v1"), &body(9, 100_000), 8192).await;
    assert_eq!(tier.stat("k").await.expect("stat"), Some(rich_meta("v1")));
    put(&*tier, "k", Metadata::tagged("v2"), b"x", 1).await;
    assert_eq!(
        tier.stat("k").await.expect("stat"),
        Some(Metadata::tagged("v2"))
    );
    tier.delete("k").await.expect("delete");
    assert_eq!(tier.stat("k").await.expect("stat"), None);
}

/// A reader that opened the old entry reads it whole after an overwrite
/// or a delete; new readers see the new state.
pub async fn overwrite_is_atomic(subject: &Subject<'_>) {
    let tier = subject.fresh();
    let old = body(10, 3 << 20);
    let new = body(11, (3 << 20) + 17);
    put(&*tier, "k", Metadata::tagged("old"), &old, 64 * 1024).await;
    let reader = tier.get("k").await.expect("get").expect("present");
    let mut early = tier.get("k").await.expect("get").expect("present");
    // One reader has started, one has not.
    let first = early.body.next().await.expect("a chunk").expect("chunk");
    put(&*tier, "k", Metadata::tagged("new"), &new, 64 * 1024).await;
    let deleted_reader = tier.get("k").await.expect("get").expect("present");
    tier.delete("k").await.expect("delete");
    assert_eq!(reader.meta.tag, "old");
    assert_eq!(read_all(reader).await, old);
    let mut rest = first.to_vec();
    while let Some(chunk) = early.body.next().await {
        rest.extend_from_slice(&chunk.expect("chunk"));
    }
    assert_eq!(rest, old);
    assert_eq!(deleted_reader.meta.tag, "new");
    assert_eq!(read_all(deleted_reader).await, new);
    assert!(tier.get("k").await.expect("get").is_none());
}

/// Concurrent writers of one key: the entry is always exactly one
/// writer's body (the last commit), never a mix; readers racing them see
/// a whole version.
pub async fn concurrent_writers_never_interleave(subject: &Subject<'_>) {
    const WRITERS: u64 = 6;
    let tier = subject.fresh();
    let size = |w: u64| 200_000 + w as usize * 4099;
    // A tag names the round and the writer, so the body it must carry is
    // known.
    let expected = move |tag: &str| {
        let (round, w) = tag.split_once(':').expect("round:writer");
        let (round, w): (u64, u64) = (round.parse().expect("round"), w.parse().expect("writer"));
        body(round * 100 + w, size(w))
    };
    for round in 0..4u64 {
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let tier = Arc::clone(&tier);
            tasks.push(tokio::spawn(async move {
                let data = body(round * 100 + w, size(w));
                let mut sink = tier
                    .begin_write("shared", Metadata::tagged(format!("{round}:{w}")))
                    .await
                    .expect("begin");
                for part in data.chunks(16 * 1024 + w as usize) {
                    sink.write(Bytes::copy_from_slice(part))
                        .await
                        .expect("write");
                    tokio::task::yield_now().await;
                }
                sink.commit().await.expect("commit");
            }));
        }
        let atomic = subject.atomic_replace;
        let reader = {
            let tier = Arc::clone(&tier);
            tokio::spawn(async move {
                for _ in 0..20 {
                    match tier.get("shared").await.expect("get") {
                        Some(entry) => {
                            let tag = entry.meta.tag.clone();
                            assert_eq!(read_all(entry).await, expected(&tag), "writer {tag}");
                        }
                        None => assert!(round == 0 || !atomic, "the entry vanished"),
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        for task in tasks {
            task.await.expect("writer");
        }
        reader.await.expect("reader");
        let (meta, got) = fetch(&*tier, "shared").await.expect("present");
        assert!(meta.tag.starts_with(&format!("{round}:")), "{}", meta.tag);
        assert_eq!(got, expected(&meta.tag), "round {round}");
    }
}

/// Many tasks writing, reading, overwriting and deleting their own keys,
/// while reading each other's, see consistent entries throughout.
pub async fn many_keys_stay_consistent(subject: &Subject<'_>) {
    const TASKS: u64 = 8;
    const KEYS: u64 = 25;
    let tier = subject.fresh();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let tier = Arc::clone(&tier);
        tasks.push(tokio::spawn(async move {
            for k in 0..KEYS {
                let key = format!("t{t}/k{k}");
                let seed = t * 1000 + k;
                let len = (seed as usize * 7919) % 150_000;
                let data = body(seed, len);
                put(
                    &*tier,
                    &key,
                    Metadata::tagged(seed.to_string()),
                    &data,
                    10_000,
                )
                .await;
                let (meta, got) = fetch(&*tier, &key).await.expect("own key present");
                assert_eq!((meta.tag, got), (seed.to_string(), data));
                // Someone else's key: absent, or whole.
                let other = format!("t{}/k{k}", (t + 1) % TASKS);
                if let Some((meta, got)) = fetch(&*tier, &other).await {
                    let seed: u64 = meta.tag.parse().expect("tag");
                    assert_eq!(got, body(seed, (seed as usize * 7919) % 150_000));
                }
                if k % 3 == 0 {
                    tier.delete(&key).await.expect("delete");
                    assert!(tier.get(&key).await.expect("get").is_none());
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    for t in 0..TASKS {
        for k in 0..KEYS {
            let key = format!("t{t}/k{k}");
            let found = fetch(&*tier, &key).await;
            assert_eq!(found.is_some(), k % 3 != 0, "{key}");
        }
    }
}

/// Keys that differ only slightly are distinct entries.
pub async fn similar_keys_are_distinct(subject: &Subject<'_>) {
    let tier = subject.fresh();
    let keys = ["a", "A", "a ", " a", "a/", "a\0", "ä", "a\u{301}"];
    for (i, key) in keys.iter().enumerate() {
        put(
            &*tier,
            key,
            Metadata::tagged(i.to_string()),
            &body(i as u64, 50),
            7,
        )
        .await;
    }
    for (i, key) in keys.iter().enumerate() {
        let (meta, got) = fetch(&*tier, key).await.expect("present");
        assert_eq!(
            (meta.tag, got),
            (i.to_string(), body(i as u64, 50)),
            "{key:?}"
        );
    }
}

/// The names of all checks, in order.
pub const CHECKS: &[&str] = &[
    "missing_key_is_not_found",
    "commit_publishes",
    "nothing_is_visible_before_commit",
    "empty_body_round_trips",
    "dropped_sink_aborts",
    "write_after_abort_commits",
    "entry_survives_its_sink",
    "sinks_of_one_key_are_independent",
    "stat_returns_metadata",
    "overwrite_is_atomic",
    "concurrent_writers_never_interleave",
    "many_keys_stay_consistent",
    "similar_keys_are_distinct",
];

/// Run every check in sequence (needs a multi-threaded tokio runtime).
pub async fn run_all(subject: &Subject<'_>) {
    missing_key_is_not_found(subject).await;
    commit_publishes(subject).await;
    nothing_is_visible_before_commit(subject).await;
    empty_body_round_trips(subject).await;
    dropped_sink_aborts(subject).await;
    write_after_abort_commits(subject).await;
    entry_survives_its_sink(subject).await;
    sinks_of_one_key_are_independent(subject).await;
    stat_returns_metadata(subject).await;
    overwrite_is_atomic(subject).await;
    concurrent_writers_never_interleave(subject).await;
    many_keys_stay_consistent(subject).await;
    similar_keys_are_distinct(subject).await;
}

/// One `#[tokio::test]` per conformance check, for the store built by
/// `$factory` (an `Fn() -> Arc<dyn Tier>`); `atomic_replace` as in
/// [`Subject`]. Use it inside a module per store.
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr, atomic_replace: $atomic:expr) => {
        $crate::conformance_suite!(@each $factory, $atomic;
            missing_key_is_not_found,
            commit_publishes,
            nothing_is_visible_before_commit,
            empty_body_round_trips,
            dropped_sink_aborts,
            write_after_abort_commits,
            entry_survives_its_sink,
            sinks_of_one_key_are_independent,
            stat_returns_metadata,
            overwrite_is_atomic,
            concurrent_writers_never_interleave,
            many_keys_stay_consistent,
            similar_keys_are_distinct,
        );
    };
    (@each $factory:expr, $atomic:expr; $($check:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let factory = $factory;
                let subject = $crate::conformance::Subject {
                    factory: &factory,
                    atomic_replace: $atomic,
                };
                $crate::conformance::$check(&subject).await;
            }
        )*
    };
}
