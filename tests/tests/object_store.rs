//! The object store tier against a real S3 API (moto), a local directory
//! and memory. Every scenario runs on all three backends.

#[path = "../support/moto.rs"]
mod moto;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use daramjwee::{Error, Metadata, ObjectStoreTier, Tier};
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::Barrier;

use moto::Moto;

const MIB: usize = 1024 * 1024;

/// One moto server for the whole test binary; each test has its own
/// bucket. Its wrapper stops it when this process exits.
fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(Moto::start)
}

enum Kind {
    S3 { bucket: String },
    File { dir: tempfile::TempDir },
    Memory { store: Arc<InMemory> },
}

/// Where a scenario's tiers keep their objects. Every tier made by one
/// backend shares its storage, as cache nodes sharing a bucket do.
struct Backend {
    kind: Kind,
}

impl Backend {
    fn s3() -> Backend {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let bucket = format!("bucket-{}", NEXT.fetch_add(1, Ordering::SeqCst));
        moto().create_bucket(&bucket);
        Backend {
            kind: Kind::S3 { bucket },
        }
    }

    fn file() -> Backend {
        Backend {
            kind: Kind::File {
                dir: tempfile::tempdir().expect("tempdir"),
            },
        }
    }

    fn memory() -> Backend {
        Backend {
            kind: Kind::Memory {
                store: Arc::new(InMemory::new()),
            },
        }
    }

    /// A new tier instance on this backend's storage.
    fn tier(&self) -> ObjectStoreTier {
        match &self.kind {
            Kind::S3 { bucket } => ObjectStoreTier::from_url_with_options(
                "s3",
                &format!("s3://{bucket}/cache/objects"),
                moto().s3_options(),
            )
            .expect("S3 tier"),
            Kind::File { dir } => {
                let url = format!("file://{}/objects", dir.path().display());
                ObjectStoreTier::from_url("file", &url).expect("file tier")
            }
            Kind::Memory { store } => {
                ObjectStoreTier::new("memory", Arc::clone(store) as _, "cache/objects")
                    .expect("memory tier")
            }
        }
    }

    fn small_part_tier(&self) -> ObjectStoreTier {
        self.tier()
            .with_part_size(ObjectStoreTier::MIN_PART_SIZE)
            .expect("part size")
    }

    /// Multipart uploads neither completed nor aborted, where the backend
    /// can show them: moto lists them; the local backend keeps each in a
    /// staging file named `<object>#<n>`. Memory uploads live in their
    /// handle only.
    fn pending_uploads(&self) -> Option<usize> {
        match &self.kind {
            Kind::S3 { bucket } => Some(moto().pending_uploads(bucket)),
            Kind::File { dir } => Some(
                files_under(dir.path())
                    .iter()
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().contains('#'))
                    })
                    .count(),
            ),
            Kind::Memory { .. } => None,
        }
    }
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                todo.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// Every object in the tier's store, under any prefix.
async fn all_objects(tier: &ObjectStoreTier) -> Vec<Path> {
    tier.store()
        .list(None)
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
        .expect("list")
}

fn meta(tag: &str) -> Metadata {
    Metadata {
        tag: tag.into(),
        cached_at: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_000_000_123)),
        negative: false,
        fresh_for: Some(Duration::from_secs(300)),
        stale_for: Some(Duration::from_secs(30)),
        stale_if_error: None,
        attributes: vec![
            ("content-type".into(), "text/plain; charset=utf-8".into()),
            ("x-note".into(), "naïve: 다람쥐".into()),
        ],
    }
}

/// Bytes that differ at every offset, so a misplaced part shows.
fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed as u32 % 32) as u8
                ^ seed
        })
        .collect::<Vec<u8>>()
        .into()
}

async fn write(tier: &ObjectStoreTier, key: &str, meta: Metadata, body: &[u8], chunk: usize) {
    let mut sink = tier.begin_write(key, meta).await.expect("begin_write");
    for piece in body.chunks(chunk.max(1)) {
        sink.write(Bytes::copy_from_slice(piece))
            .await
            .expect("write");
    }
    sink.commit().await.expect("commit");
}

async fn read(tier: &ObjectStoreTier, key: &str) -> Option<(Metadata, u64, Bytes)> {
    let entry = tier.get(key).await.expect("get")?;
    let body: Vec<Bytes> = entry.body.try_collect().await.expect("body");
    Some((entry.meta, entry.size, body.concat().into()))
}

async fn missing_key_reads_as_none(backend: Backend) {
    let tier = backend.tier();
    assert!(tier.get("absent").await.expect("get").is_none());
    assert!(tier.stat("absent").await.expect("stat").is_none());
    tier.delete("absent").await.expect("deleting an absent key");
}

async fn commit_publishes(backend: Backend) {
    let tier = backend.tier();
    let sink = tier
        .begin_write("k", meta("v1"))
        .await
        .expect("begin_write");
    assert!(
        tier.get("k").await.expect("get").is_none(),
        "visible before commit"
    );
    drop(sink);

    write(&tier, "k", meta("v1"), b"hello, object store", 4).await;
    let (got, size, body) = read(&tier, "k").await.expect("published");
    assert_eq!(got, meta("v1"));
    assert_eq!(size, 19);
    assert_eq!(&body[..], b"hello, object store");

    let negative = Metadata {
        negative: true,
        ..meta("")
    };
    write(&tier, "gone", negative.clone(), b"", 1).await;
    let (got, size, body) = read(&tier, "gone").await.expect("negative entry");
    assert_eq!((got, size, body.len()), (negative, 0, 0));

    tier.delete("k").await.expect("delete");
    assert!(tier.get("k").await.expect("get").is_none());
}

async fn stat_returns_metadata_without_body(backend: Backend) {
    let tier = backend.tier();
    write(&tier, "k", meta("v1"), &pattern(100_000, 1), 10_000).await;
    assert_eq!(tier.stat("k").await.expect("stat"), Some(meta("v1")));
}

async fn dropped_sink_discards(backend: Backend) {
    let tier = backend.small_part_tier();
    write(&tier, "kept", meta("old"), b"old body", 8).await;

    // A small body never reaches the store; a large one is a multipart
    // upload in progress when the sink is dropped.
    for (key, len) in [("small", 1000), ("large", 12 * MIB), ("kept", 12 * MIB)] {
        let mut sink = tier
            .begin_write(key, meta("new"))
            .await
            .expect("begin_write");
        for piece in pattern(len, 7).chunks(MIB) {
            sink.write(Bytes::copy_from_slice(piece))
                .await
                .expect("write");
        }
        if len > MIB
            && let Some(pending) = backend.pending_uploads()
        {
            assert_eq!(pending, 1, "no multipart upload under way");
        }
        drop(sink);
        tier.settle().await;
    }

    assert!(tier.get("small").await.expect("get").is_none());
    assert!(tier.get("large").await.expect("get").is_none());
    let (got, _, body) = read(&tier, "kept").await.expect("old entry survives");
    assert_eq!((got, &body[..]), (meta("old"), &b"old body"[..]));
    assert_eq!(all_objects(&tier).await.len(), 1);
    if let Some(pending) = backend.pending_uploads() {
        assert_eq!(pending, 0, "multipart uploads left pending");
    }
}

async fn overwrite_replaces(backend: Backend) {
    let tier = backend.tier();
    write(&tier, "k", meta("v1"), b"first version, longer", 5).await;
    write(&tier, "k", meta("v2"), b"second", 5).await;
    let (got, size, body) = read(&tier, "k").await.expect("entry");
    assert_eq!((got, size, &body[..]), (meta("v2"), 6, &b"second"[..]));
    assert_eq!(all_objects(&tier).await.len(), 1);
}

async fn multipart_body_round_trips(backend: Backend) {
    let tier = backend.small_part_tier();
    let body = pattern(20 * MIB + 12_345, 3);
    // Odd-sized writes, so parts never line up with them.
    write(&tier, "big", meta("big"), &body, 777_777).await;
    assert!(
        backend.pending_uploads().unwrap_or(0) == 0,
        "the completed upload is still listed"
    );

    let (got, size, read_back) = read(&tier, "big").await.expect("entry");
    assert_eq!(got, meta("big"));
    assert_eq!(size, body.len() as u64);
    assert!(
        read_back == body,
        "body differs after a multipart round trip"
    );
    assert_eq!(tier.stat("big").await.expect("stat"), Some(meta("big")));
}

/// S3 and memory keep the metadata as an attribute, so the object is the
/// body alone; the local backend puts a header before it.
async fn metadata_layout_matches_the_backend(backend: Backend) {
    let tier = backend.tier();
    write(&tier, "k", meta("v1"), b"0123456789", 3).await;
    let object = tier
        .store()
        .head(&tier.object_path("k"))
        .await
        .expect("head");
    match backend.kind {
        Kind::S3 { .. } | Kind::Memory { .. } => assert_eq!(object.size, 10),
        Kind::File { .. } => assert!(object.size > 10, "no header in a local object"),
    }
}

/// Metadata too large for an S3 attribute moves into a header.
async fn long_key_and_metadata_round_trip(backend: Backend) {
    let tier = backend.tier();
    let key = "k/".repeat(20_000);
    let mut big = meta("v1");
    big.attributes.push(("x-big".into(), "v".repeat(5000)));
    write(&tier, &key, big.clone(), b"body", 2).await;
    let (got, size, body) = read(&tier, &key).await.expect("entry");
    assert_eq!((got, size, &body[..]), (big.clone(), 4, &b"body"[..]));
    assert_eq!(tier.stat(&key).await.expect("stat"), Some(big));
}

async fn hostile_keys_are_safe(backend: Backend) {
    let tier = backend.tier();
    let long = "x".repeat(64 * 1024);
    let keys = [
        "../../../../etc/passwd",
        "..",
        ".",
        "/absolute/path",
        "a/b/../c",
        "nul\0byte",
        "back\\slash",
        "trailing/",
        "%2e%2e%2f",
        "space and\nnewline",
        "다람쥐 🐿️",
        "#1",
        long.as_str(),
    ];
    for (i, key) in keys.iter().enumerate() {
        write(
            &tier,
            key,
            meta(&i.to_string()),
            format!("body {i}").as_bytes(),
            3,
        )
        .await;
    }
    for (i, key) in keys.iter().enumerate() {
        let (got, _, body) = read(&tier, key).await.expect("hostile key reads back");
        assert_eq!(got.tag, i.to_string());
        assert_eq!(body, format!("body {i}").as_bytes());
    }

    let objects = all_objects(&tier).await;
    assert_eq!(objects.len(), keys.len());
    let prefix = match backend.kind {
        Kind::File { .. } => Path::default(),
        _ => Path::from("cache/objects"),
    };
    for object in &objects {
        assert!(object.prefix_matches(&prefix), "{object} outside {prefix}");
    }
    if let Kind::File { dir } = &backend.kind {
        let root = dir.path().join("objects");
        let files = files_under(dir.path());
        assert_eq!(files.len(), keys.len());
        assert!(files.iter().all(|f| f.starts_with(&root)));
    }

    for key in keys {
        tier.delete(key).await.expect("delete");
        assert!(tier.get(key).await.expect("get").is_none());
    }
}

/// An object at a key's path that was written for another key (a copy, or
/// a hash collision) is not served; nor is an object without our metadata.
async fn foreign_objects_read_as_none(backend: Backend) {
    let tier = backend.tier();
    write(&tier, "a", meta("a"), b"body of a", 4).await;
    let store = tier.store();
    store
        .copy(&tier.object_path("a"), &tier.object_path("b"))
        .await
        .expect("copy");
    assert!(tier.get("b").await.expect("get").is_none());
    assert!(tier.stat("b").await.expect("stat").is_none());

    store
        .put(
            &tier.object_path("c"),
            Bytes::from_static(b"not ours").into(),
        )
        .await
        .expect("put");
    assert!(tier.get("c").await.expect("get").is_none());
    assert!(tier.stat("c").await.expect("stat").is_none());
    store
        .put(&tier.object_path("d"), Bytes::new().into())
        .await
        .expect("put");
    assert!(tier.get("d").await.expect("get").is_none());
    assert!(tier.stat("d").await.expect("stat").is_none());
}

async fn tiers_sharing_a_bucket_see_each_other(backend: Backend) {
    let (a, b) = (backend.tier(), backend.tier());
    write(&a, "shared", meta("from a"), b"written by a", 4).await;
    let (got, _, body) = read(&b, "shared").await.expect("b sees a's commit");
    assert_eq!(
        (got.tag.as_str(), &body[..]),
        ("from a", &b"written by a"[..])
    );

    write(&b, "shared", meta("from b"), b"written by b", 4).await;
    assert_eq!(
        a.stat("shared").await.expect("stat").expect("entry").tag,
        "from b"
    );

    b.delete("shared").await.expect("delete");
    assert!(a.get("shared").await.expect("get").is_none());
}

async fn concurrent_writers_never_interleave(backend: Backend) {
    const WRITERS: usize = 4;
    let tier = backend.small_part_tier();
    let len = 6 * MIB + 1000;

    // All writers write their chunks in lockstep, then commit in turn:
    // the last commit wins, whole.
    let barrier = Arc::new(Barrier::new(WRITERS));
    let turn = Arc::new(tokio::sync::Mutex::new(0usize));
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (tier, barrier, turn) = (tier.clone(), Arc::clone(&barrier), Arc::clone(&turn));
            tokio::spawn(async move {
                let mut sink = tier
                    .begin_write("k", meta(&w.to_string()))
                    .await
                    .expect("begin");
                for piece in vec![w as u8; len].chunks(MIB) {
                    barrier.wait().await;
                    sink.write(Bytes::copy_from_slice(piece))
                        .await
                        .expect("write");
                }
                loop {
                    let mut next = turn.lock().await;
                    if *next == w {
                        sink.commit().await.expect("commit");
                        *next += 1;
                        return;
                    }
                    drop(next);
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
    let (got, size, body) = read(&tier, "k").await.expect("entry");
    assert_eq!(got.tag, (WRITERS - 1).to_string());
    assert_eq!(size, len as u64);
    assert!(
        body.iter().all(|&b| b as usize == WRITERS - 1),
        "bytes of several writers"
    );

    // Commits racing each other: one of them wins, whole.
    let barrier = Arc::new(Barrier::new(WRITERS));
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (tier, barrier) = (tier.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                let mut sink = tier
                    .begin_write("k", meta(&format!("race {w}")))
                    .await
                    .expect("begin");
                sink.write(Bytes::from(vec![0x10 + w as u8; len]))
                    .await
                    .expect("write");
                barrier.wait().await;
                sink.commit().await.expect("commit");
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
    let (got, _, body) = read(&tier, "k").await.expect("entry");
    let winner: usize = got
        .tag
        .strip_prefix("race ")
        .expect("a racer's tag")
        .parse()
        .expect("index");
    assert!(
        body.iter().all(|&b| b as usize == 0x10 + winner),
        "bytes of several writers"
    );
    assert_eq!(backend.pending_uploads().unwrap_or(0), 0);
}

async fn distinct_keys_stay_distinct(backend: Backend) {
    let tier = backend.tier();
    let keys: BTreeSet<String> = (0..50).map(|i| format!("key-{i}")).collect();
    for key in &keys {
        write(&tier, key, meta(key), key.as_bytes(), 100).await;
    }
    for key in &keys {
        let (got, _, body) = read(&tier, key).await.expect("entry");
        assert_eq!(
            (got.tag.as_str(), &body[..]),
            (key.as_str(), key.as_bytes())
        );
    }
    assert_eq!(all_objects(&tier).await.len(), keys.len());
}

/// Each scenario, once per backend.
macro_rules! on_every_backend {
    ($($scenario:ident),* $(,)?) => {
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Backend::s3()).await;
                }
            )*
        }
        mod file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Backend::file()).await;
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Backend::memory()).await;
                }
            )*
        }
    };
}

on_every_backend!(
    missing_key_reads_as_none,
    commit_publishes,
    stat_returns_metadata_without_body,
    dropped_sink_discards,
    overwrite_replaces,
    multipart_body_round_trips,
    metadata_layout_matches_the_backend,
    long_key_and_metadata_round_trip,
    hostile_keys_are_safe,
    foreign_objects_read_as_none,
    tiers_sharing_a_bucket_see_each_other,
    concurrent_writers_never_interleave,
    distinct_keys_stay_distinct,
);

#[test]
fn bad_url_is_invalid_config_naming_it() {
    for url in [
        "not a url",
        "ftp://example.com/x",
        "file://relative/dir",
        "http://example.com/x",
        "s3://",
    ] {
        match ObjectStoreTier::from_url("t", url) {
            Err(Error::InvalidConfig(why)) => assert!(why.contains(url), "{url}: {why}"),
            Err(other) => panic!("{url}: {other:?}"),
            Ok(_) => panic!("{url}: accepted"),
        }
    }
    let unknown =
        ObjectStoreTier::from_url_with_options("t", "s3://bucket/x", [("aws_no_such", "1")]);
    assert!(matches!(unknown, Err(Error::InvalidConfig(why)) if why.contains("aws_no_such")));
}

/// A store that keeps no attributes, given without saying so, is detected
/// on the first write: small and multipart bodies land with a header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_without_attributes_falls_back_to_a_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("store");
    let tier = ObjectStoreTier::new("local", Arc::new(store), "cache")
        .expect("tier")
        .with_part_size(ObjectStoreTier::MIN_PART_SIZE)
        .expect("part size");
    let big = pattern(11 * MIB, 5);
    write(&tier, "small", meta("small"), b"tiny", 2).await;
    write(&tier, "big", meta("big"), &big, MIB).await;
    let fresh = ObjectStoreTier::new(
        "local",
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("store")),
        "cache",
    )
    .expect("tier");
    write(&fresh, "big2", meta("big2"), &big, MIB).await;

    for (key, body) in [
        ("small", &b"tiny"[..]),
        ("big", &big[..]),
        ("big2", &big[..]),
    ] {
        let (got, size, read_back) = read(&tier, key).await.expect("entry");
        assert_eq!(got, meta(key));
        assert_eq!(size, body.len() as u64);
        assert!(read_back == body, "{key}: body differs");
        assert_eq!(tier.stat(key).await.expect("stat"), Some(meta(key)));
    }
}

/// The shared store conformance suite, over each object-store backend.
mod conformance {
    use super::*;
    use daramjwee::Tier;
    use daramjwee_tests::conformance::guarded;

    fn tier_of(backend: Backend) -> Arc<dyn Tier> {
        let tier = backend.tier();
        guarded(Arc::new(tier), backend)
    }

    mod s3 {
        use super::*;
        daramjwee_tests::conformance_suite!(|| tier_of(Backend::s3()), atomic_replace: true);
    }

    mod file {
        use super::*;
        daramjwee_tests::conformance_suite!(|| tier_of(Backend::file()), atomic_replace: true);
    }

    mod memory {
        use super::*;
        daramjwee_tests::conformance_suite!(|| tier_of(Backend::memory()), atomic_replace: true);
    }
}
