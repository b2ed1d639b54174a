//! The store conformance suite against every store, and the tests
//! particular to the memory and file stores.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use daramjwee::{FileStore, MemoryStore, Metadata, PolicyKind, Tier, WriteMode};
use daramjwee_tests::conformance::{body, fetch, guarded, put, read_all, rich_meta};
use futures::StreamExt;

const POLICIES: [PolicyKind; 3] = [PolicyKind::Lru, PolicyKind::S3Fifo, PolicyKind::Sieve];

fn file_tier(mode: WriteMode) -> Arc<dyn Tier> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::builder(dir.path().join("root"))
        .write_mode(mode)
        .open("file")
        .expect("open");
    guarded(Arc::new(store), dir)
}

mod memory_unbounded {
    use super::*;
    daramjwee_tests::conformance_suite!(
        || Arc::new(MemoryStore::new("memory")) as Arc<dyn Tier>,
        atomic_replace: true
    );
}

mod memory_bounded {
    use super::*;
    daramjwee_tests::conformance_suite!(
        || Arc::new(MemoryStore::with_capacity("memory", 256 << 20, PolicyKind::S3Fifo))
            as Arc<dyn Tier>,
        atomic_replace: true
    );
}

mod file_rename {
    use super::*;
    daramjwee_tests::conformance_suite!(|| file_tier(WriteMode::Rename), atomic_replace: true);
}

mod file_copy {
    use super::*;
    daramjwee_tests::conformance_suite!(|| file_tier(WriteMode::Copy), atomic_replace: false);
}

mod file_bounded_synced {
    use super::*;
    daramjwee_tests::conformance_suite!(
        || {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = FileStore::builder(dir.path().join("root"))
                .capacity(256 << 20, PolicyKind::Sieve)
                .sync(true)
                .open("file")
                .expect("open");
            guarded(Arc::new(store), dir)
        },
        atomic_replace: true
    );
}

// ---------------------------------------------------------------------------
// Memory store

#[tokio::test]
async fn memory_hits_share_the_stored_bytes() {
    let store = MemoryStore::new("m");
    let data = Bytes::from(body(1, 100_000));
    let mut sink = store
        .begin_write("k", Metadata::default())
        .await
        .expect("begin");
    sink.write(data.clone()).await.expect("write");
    sink.commit().await.expect("commit");
    let mut pointers = Vec::new();
    for _ in 0..3 {
        let entry = store.get("k").await.expect("get").expect("hit");
        let mut chunks: Vec<Bytes> = entry.body.map(|c| c.expect("chunk")).collect().await;
        assert_eq!(chunks.len(), 1);
        let chunk = chunks.pop().expect("one chunk");
        assert_eq!(chunk, data);
        pointers.push(chunk.as_ptr());
    }
    // A body written in one chunk is kept as handed in, and every hit
    // hands out that same allocation.
    assert!(pointers.iter().all(|p| *p == data.as_ptr()));
}

#[tokio::test]
async fn memory_stats_count_entries_and_charged_bytes() {
    let store = MemoryStore::new("m");
    let meta = rich_meta("tag");
    put(&store, "a", meta.clone(), &body(1, 1000), 300).await;
    put(&store, "bb", Metadata::default(), &body(2, 500), 300).await;
    put(&store, "a", Metadata::default(), &body(3, 10), 3).await;
    let stats = store.stats();
    assert_eq!(stats.entries, 2);
    assert_eq!(
        stats.bytes,
        MemoryStore::charge("a", &Metadata::default(), 10)
            + MemoryStore::charge("bb", &Metadata::default(), 500)
    );
    store.delete("a").await.expect("delete");
    assert_eq!(store.stats().entries, 1);
    assert_eq!(store.len(), 1);
    assert_eq!(store.stats().evictions, 0);
}

#[tokio::test]
async fn unbounded_memory_store_never_evicts() {
    let store = MemoryStore::new("m");
    for i in 0..500u64 {
        put(
            &store,
            &format!("k{i}"),
            Metadata::default(),
            &body(i, 10_000),
            4096,
        )
        .await;
    }
    assert_eq!(store.stats().entries, 500);
    assert_eq!(store.stats().evictions, 0);
    assert_eq!(store.capacity(), 0);
}

const ENTRY: usize = 1000;
/// Capacities in these tests hold this many entries: S3-FIFO's small queue
/// (a tenth) must take more than one, or it admits nothing.
const SLOTS: u64 = 20;

fn charge(key: &str) -> u64 {
    MemoryStore::charge(key, &Metadata::default(), ENTRY as u64)
}

#[tokio::test]
async fn memory_capacity_evicts_by_policy() {
    for policy in POLICIES {
        let capacity = SLOTS * charge("k00");
        let store = MemoryStore::with_capacity("m", capacity, policy);
        assert_eq!(store.capacity(), capacity, "{policy:?}");
        for i in 0..4 * SLOTS {
            put(
                &store,
                &format!("k{i:02}"),
                Metadata::default(),
                &body(i, ENTRY),
                300,
            )
            .await;
            let stats = store.stats();
            assert!(stats.bytes <= capacity, "{policy:?}: {stats:?}");
        }
        let stats = store.stats();
        let mut present = 0;
        for i in 0..4 * SLOTS {
            if let Some((_, got)) = fetch(&store, &format!("k{i:02}")).await {
                assert_eq!(got, body(i, ENTRY));
                present += 1;
            }
        }
        assert_eq!(present, stats.entries, "{policy:?}");
        assert!((1..=SLOTS).contains(&present), "{policy:?}: {present}");
        assert_eq!(stats.evictions, 4 * SLOTS - present, "{policy:?}");
        assert_eq!(stats.bytes, present * charge("k00"), "{policy:?}");
    }
}

/// Hits reach the policy: an entry read between the writes of a long scan
/// of one-time entries stays, under every policy.
async fn hot_entry_survives_a_scan(tier: &dyn Tier, policy: PolicyKind) {
    let hot = body(999, ENTRY);
    put(tier, "hot", Metadata::default(), &hot, ENTRY).await;
    for i in 0..10 * SLOTS {
        assert_eq!(
            fetch(tier, "hot").await.map(|(_, b)| b).as_ref(),
            Some(&hot),
            "{policy:?}: the hot entry was evicted after {i} one-time writes"
        );
        put(
            tier,
            &format!("s{i:03}"),
            Metadata::default(),
            &body(i, ENTRY),
            ENTRY,
        )
        .await;
    }
}

#[tokio::test]
async fn memory_whole_reads_hand_over_the_stored_bytes_and_count_as_hits() {
    let store = MemoryStore::new("m");
    let meta = rich_meta("tag");
    let data = Bytes::from(body(1, 300_000));
    let mut sink = store.begin_write("k", meta.clone()).await.expect("begin");
    sink.write(data.clone()).await.expect("write");
    sink.commit().await.expect("commit");
    for _ in 0..2 {
        let (got_meta, got) = store
            .get_whole("k")
            .expect("get_whole")
            .expect("an entry in memory is handed over");
        assert_eq!((&got_meta, &got), (&meta, &data));
        assert_eq!(got.as_ptr(), data.as_ptr(), "the stored bytes, not a copy");
    }
    assert!(store.get_whole("absent").expect("get_whole").is_none());

    // A whole read is a hit for the policy, as a `get` is.
    for policy in POLICIES {
        let store = MemoryStore::with_capacity("m", SLOTS * charge("s000"), policy);
        let hot = body(999, ENTRY);
        put(&store, "hot", Metadata::default(), &hot, ENTRY).await;
        for i in 0..10 * SLOTS {
            let found = store.get_whole("hot").expect("get_whole");
            assert_eq!(
                found.map(|(_, b)| b.to_vec()).as_ref(),
                Some(&hot),
                "{policy:?}: the hot entry was evicted after {i} one-time writes"
            );
            let key = format!("s{i:03}");
            put(&store, &key, Metadata::default(), &body(i, ENTRY), ENTRY).await;
        }
    }
}

#[tokio::test]
async fn memory_hot_entry_survives_a_scan() {
    for policy in POLICIES {
        let store = MemoryStore::with_capacity("m", SLOTS * charge("s000"), policy);
        hot_entry_survives_a_scan(&store, policy).await;
        assert!(store.stats().evictions >= 8 * SLOTS, "{policy:?}");
    }
}

#[tokio::test]
async fn memory_entry_larger_than_the_capacity_is_not_kept() {
    for policy in POLICIES {
        let store = MemoryStore::with_capacity("m", 10_000, policy);
        put(&store, "big", Metadata::tagged("old"), &body(1, 100), 100).await;
        put(&store, "small", Metadata::default(), &body(2, 100), 100).await;
        put(
            &store,
            "big",
            Metadata::tagged("new"),
            &body(3, 20_000),
            1000,
        )
        .await;
        assert!(store.get("big").await.expect("get").is_none(), "{policy:?}");
        assert!(
            store.get("small").await.expect("get").is_some(),
            "{policy:?}"
        );
        assert!(store.stats().bytes <= 10_000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_memory_store_stays_within_capacity_under_concurrency() {
    let capacity = 64 << 20;
    let store = Arc::new(MemoryStore::with_capacity(
        "m",
        capacity,
        PolicyKind::S3Fifo,
    ));
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..400u64 {
                    let key = format!("{t}/{i}");
                    put(&*store, &key, Metadata::default(), &body(i, 50_000), 16_384).await;
                    if let Some((_, got)) = fetch(&*store, &format!("{t}/{}", i / 2)).await {
                        assert_eq!(got, body(i / 2, 50_000));
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let stats = store.stats();
    assert!(stats.bytes <= capacity, "{stats:?}");
    assert!(stats.evictions > 0);
    let mut present = 0;
    for t in 0..8u64 {
        for i in 0..400u64 {
            present += u64::from(store.get(&format!("{t}/{i}")).await.expect("get").is_some());
        }
    }
    assert_eq!(present, stats.entries);
}

// ---------------------------------------------------------------------------
// File store

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn entry_files(root: &Path) -> Vec<PathBuf> {
    files_under(root)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n != ".lock"))
        .collect()
}

fn is_entry_name(root: &Path, path: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(root) else {
        return false;
    };
    let parts: Vec<_> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match parts.as_slice() {
        [name] => name == ".lock",
        [dir, name] => {
            dir.len() == 2 && hex(dir) && name.len() == 32 && hex(name) && name.starts_with(dir)
        }
        _ => false,
    }
}

#[tokio::test]
async fn hostile_keys_round_trip_and_stay_under_the_root() {
    let outer = tempfile::tempdir().expect("tempdir");
    let root = outer.path().join("root");
    let store = FileStore::open("file", &root).expect("open");
    let long = "k".repeat(64 * 1024);
    let long_unicode = "키".repeat(30_000);
    let keys: Vec<&str> = vec![
        "../x",
        "../../../../../../tmp/escaped",
        "/etc/passwd",
        "/",
        ".",
        "..",
        "",
        "a\0b",
        "\0",
        &long,
        &long_unicode,
        "다람쥐/캐시",
        "emoji 🐿️",
        "C:\\Windows\\System32",
        ".tmp.0123",
        ".lock",
        "00/00000000000000000000000000000000",
        "a/b/c/d/../../../..",
        "\n\r\t",
    ];
    for (i, key) in keys.iter().enumerate() {
        put(
            &store,
            key,
            rich_meta(&i.to_string()),
            &body(i as u64, 5000),
            999,
        )
        .await;
    }
    for (i, key) in keys.iter().enumerate() {
        let (meta, got) = fetch(&store, key)
            .await
            .unwrap_or_else(|| panic!("{key:?} missing"));
        assert_eq!(meta, rich_meta(&i.to_string()), "{key:?}");
        assert_eq!(got, body(i as u64, 5000), "{key:?}");
        assert_eq!(
            store.entry_path(key).parent().and_then(Path::parent),
            Some(root.as_path())
        );
    }
    // Nothing beside the root, and nothing but entry files inside it.
    let beside: Vec<_> = fs::read_dir(outer.path()).expect("read_dir").collect();
    assert_eq!(beside.len(), 1);
    let files = files_under(&root);
    assert_eq!(files.len(), keys.len() + 1, "{files:?}");
    for file in &files {
        assert!(
            is_entry_name(&root, file),
            "unexpected file {}",
            file.display()
        );
    }
    for key in &keys {
        store.delete(key).await.expect("delete");
        assert!(store.get(key).await.expect("get").is_none(), "{key:?}");
    }
    assert!(entry_files(&root).is_empty());
}

/// A way a file can be damaged, applied to a sound entry file.
type Damage = (&'static str, fn(&mut Vec<u8>));

fn damages() -> Vec<Damage> {
    vec![
        ("emptied", |f| f.clear()),
        ("cut inside the fixed header", |f| f.truncate(10)),
        ("cut after the key", |f| f.truncate(40)),
        ("cut inside the body", |f| {
            f.pop();
        }),
        ("a byte too long", |f| f.push(0)),
        ("bad magic", |f| f[0] ^= 0xff),
        ("unknown version", |f| f[8] = 99),
        ("body length changed", |f| f[20] ^= 1),
        ("key byte flipped", |f| f[33] ^= 0x20),
        ("metadata byte flipped", |f| {
            // The metadata ends right before the 5000-byte body.
            let at = f.len() - 5000 - 2;
            f[at] ^= 0x01;
        }),
        ("garbage", |f| {
            let len = f.len();
            *f = body(77, len);
        }),
    ]
}

#[tokio::test]
async fn damaged_files_read_as_not_found_and_are_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open("file", dir.path()).expect("open");
    for (what, damage) in damages() {
        let key = "some/key";
        put(&store, key, rich_meta("v"), &body(1, 5000), 1000).await;
        let path = store.entry_path(key);
        let mut bytes = fs::read(&path).expect("read");
        damage(&mut bytes);
        fs::write(&path, &bytes).expect("write");
        assert!(
            store.stat(key).await.expect("stat").is_none(),
            "{what}: stat"
        );
        assert!(store.get(key).await.expect("get").is_none(), "{what}: get");
        assert!(!path.exists(), "{what}: the damaged file was kept");
        assert_eq!(store.stats().entries, 0, "{what}");
    }
}

#[tokio::test]
async fn a_file_of_another_key_at_the_same_path_reads_as_not_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open("file", dir.path()).expect("open");
    put(&store, "a", Metadata::tagged("a"), &body(1, 100), 100).await;
    // Stand-in for a hash collision: key a's file where key b's belongs.
    let b_path = store.entry_path("b");
    fs::create_dir_all(b_path.parent().expect("parent")).expect("mkdir");
    fs::copy(store.entry_path("a"), &b_path).expect("copy");
    assert!(store.get("b").await.expect("get").is_none());
    assert!(store.stat("b").await.expect("stat").is_none());
    put(&store, "b", Metadata::tagged("b"), &body(2, 100), 100).await;
    assert_eq!(fetch(&store, "b").await.expect("b").1, body(2, 100));
    assert_eq!(fetch(&store, "a").await.expect("a").1, body(1, 100));
}

#[tokio::test]
async fn file_bodies_stream_in_bounded_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open("file", dir.path()).expect("open");
    let data = body(5, 5 << 20);
    put(&store, "big", Metadata::default(), &data, 1 << 20).await;
    let entry = store.get("big").await.expect("get").expect("hit");
    assert_eq!(entry.size, data.len() as u64);
    let chunks: Vec<Bytes> = entry.body.map(|c| c.expect("chunk")).collect().await;
    assert!(chunks.len() >= 5, "{} chunks", chunks.len());
    assert!(chunks.iter().all(|c| c.len() <= 1 << 20));
    assert_eq!(chunks.concat(), data);
}

#[tokio::test]
async fn reopen_rebuilds_sizes_and_removes_temp_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let store = FileStore::open("file", &root).expect("open");
    for i in 0..30u64 {
        put(
            &store,
            &format!("k{i}"),
            rich_meta(&i.to_string()),
            &body(i, 1000 * i as usize),
            4096,
        )
        .await;
    }
    store.delete("k3").await.expect("delete");
    let before = store.stats();
    assert_eq!(before.entries, 29);
    drop(store);
    // What a crash leaves: temporary files, a file too short to be an
    // entry; and unrelated files that are not the store's to judge.
    let fan_out = root.join("ab");
    fs::create_dir_all(&fan_out).expect("mkdir");
    fs::write(fan_out.join(".tmp.abcdef.1.2"), b"partial").expect("write");
    fs::write(fan_out.join(".tmp.abcdef.1.3"), body(1, 1 << 20)).expect("write");
    fs::write(fan_out.join(format!("ab{}", "0".repeat(30))), b"short").expect("write");
    fs::write(root.join("README"), b"not an entry").expect("write");
    let temps = |root: &Path| {
        files_under(root)
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".tmp."))
            })
            .count()
    };
    assert_eq!(temps(&root), 2);

    let store = FileStore::open("file", &root).expect("reopen");
    assert_eq!(temps(&root), 0);
    let stats = store.stats();
    assert_eq!(stats.entries, 29);
    let on_disk: u64 = entry_files(&root)
        .iter()
        .filter(|p| is_entry_name(&root, p))
        .map(|p| fs::metadata(p).expect("stat").len())
        .sum();
    assert_eq!(stats.bytes, on_disk);
    assert_eq!(stats.bytes, before.bytes);
    assert!(root.join("README").exists());
    for i in 0..30u64 {
        let found = fetch(&store, &format!("k{i}")).await;
        if i == 3 {
            assert!(found.is_none());
        } else {
            let (meta, got) = found.expect("kept across reopen");
            assert_eq!(
                (meta, got),
                (rich_meta(&i.to_string()), body(i, 1000 * i as usize))
            );
        }
    }
}

#[tokio::test]
async fn a_directory_in_use_cannot_be_opened_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open("file", dir.path()).expect("open");
    let e = FileStore::open("again", dir.path()).err().expect("refused");
    assert!(e.to_string().contains("in use"), "{e}");
    assert!(
        e.to_string().contains(&dir.path().display().to_string()),
        "{e}"
    );
    drop(store);
    FileStore::open("again", dir.path()).expect("free again");
}

/// A memory store and a file store (under `dir`) of 100 000 bytes each.
fn bounded_stores(dir: &Path, policy: PolicyKind) -> Vec<Arc<dyn Tier>> {
    vec![
        Arc::new(MemoryStore::with_capacity("m", 100_000, policy)),
        Arc::new(
            FileStore::builder(dir)
                .capacity(100_000, policy)
                .open("f")
                .expect("open"),
        ),
    ]
}

#[tokio::test]
async fn stores_say_which_sizes_they_would_keep() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unbounded: Vec<Arc<dyn Tier>> = vec![
        Arc::new(MemoryStore::new("m")),
        Arc::new(FileStore::open("f", dir.path().join("unbounded")).expect("open")),
    ];
    for store in &unbounded {
        assert!(
            store.admits("k", &Metadata::default(), u64::MAX / 2),
            "{}",
            store.name()
        );
    }
    for policy in POLICIES {
        let bounded = bounded_stores(&dir.path().join(format!("{policy:?}")), policy);
        for store in &bounded {
            let name = store.name();
            assert!(
                store.admits("k", &Metadata::default(), 1_000),
                "{name} {policy:?}"
            );
            assert!(
                !store.admits("k", &Metadata::default(), 200_000),
                "{name} {policy:?}"
            );
            // What the store says it would not keep, it does not keep.
            put(
                store.as_ref(),
                "big",
                Metadata::default(),
                &body(1, 200_000),
                1000,
            )
            .await;
            assert!(store.get("big").await.expect("get").is_none(), "{name}");
        }
    }
}

/// At the edge of what a bounded store keeps, the metadata decides: the
/// largest body it admits with no metadata is refused with a large
/// attribute, and either way the store keeps exactly what it admitted.
#[tokio::test]
async fn stores_count_the_metadata_when_saying_what_they_would_keep() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = Metadata::default();
    let rich = Metadata {
        attributes: vec![("x-note".into(), "n".repeat(2_000))],
        ..Metadata::default()
    };
    for policy in POLICIES {
        let bounded = bounded_stores(&dir.path().join(format!("edge-{policy:?}")), policy);
        for store in &bounded {
            let name = store.name();
            // The largest body admitted without metadata.
            let (mut yes, mut no) = (0u64, 200_000u64);
            while no - yes > 1 {
                let mid = (yes + no) / 2;
                if store.admits("edge", &plain, mid) {
                    yes = mid;
                } else {
                    no = mid;
                }
            }
            assert!(yes > 2_000, "{name} {policy:?} admits {yes}");
            assert!(
                !store.admits("edge", &rich, yes),
                "{name} {policy:?}: {yes} bytes with 2 KB of metadata"
            );
            let len = usize::try_from(yes).expect("small");
            put(store.as_ref(), "edge", rich.clone(), &body(2, len), 4096).await;
            assert!(
                store.get("edge").await.expect("get").is_none(),
                "{name} {policy:?} kept what it refused"
            );
            put(store.as_ref(), "edge", plain.clone(), &body(3, len), 4096).await;
            let kept = store.get("edge").await.expect("get");
            assert!(kept.is_some(), "{name} {policy:?} refused what it admitted");
            assert_eq!(read_all(kept.expect("kept")).await, body(3, len));
        }
    }
}

fn file_size(key: &str, body_len: usize) -> u64 {
    // Header, key, metadata (`Metadata::default()` encodes to 13 bytes), body.
    (32 + key.len() + 13 + body_len) as u64
}

#[tokio::test]
async fn file_capacity_evicts_by_policy() {
    for policy in POLICIES {
        let dir = tempfile::tempdir().expect("tempdir");
        let capacity = SLOTS * file_size("k00", ENTRY);
        let store = FileStore::builder(dir.path())
            .capacity(capacity, policy)
            .open("file")
            .expect("open");
        for i in 0..4 * SLOTS {
            put(
                &store,
                &format!("k{i:02}"),
                Metadata::default(),
                &body(i, ENTRY),
                300,
            )
            .await;
            assert!(store.stats().bytes <= capacity, "{policy:?}");
        }
        let stats = store.stats();
        assert_eq!(
            stats.bytes,
            stats.entries * file_size("k00", ENTRY),
            "{policy:?}"
        );
        assert!(
            (1..=SLOTS).contains(&stats.entries),
            "{policy:?}: {stats:?}"
        );
        assert_eq!(stats.evictions, 4 * SLOTS - stats.entries, "{policy:?}");
        assert_eq!(
            entry_files(dir.path()).len() as u64,
            stats.entries,
            "{policy:?}"
        );
        let mut present = 0;
        for i in 0..4 * SLOTS {
            if let Some((_, got)) = fetch(&store, &format!("k{i:02}")).await {
                assert_eq!(got, body(i, ENTRY));
                present += 1;
            }
        }
        assert_eq!(present, stats.entries, "{policy:?}");
    }
}

#[tokio::test]
async fn file_hot_entry_survives_a_scan() {
    for policy in POLICIES {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::builder(dir.path())
            .capacity(SLOTS * file_size("s000", ENTRY), policy)
            .open("file")
            .expect("open");
        hot_entry_survives_a_scan(&store, policy).await;
        assert!(store.stats().evictions >= 8 * SLOTS, "{policy:?}");
        assert!(entry_files(dir.path()).len() as u64 <= SLOTS, "{policy:?}");
    }
}

#[tokio::test]
async fn file_entry_larger_than_the_capacity_is_not_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::builder(dir.path())
        .capacity(10_000, PolicyKind::Lru)
        .open("file")
        .expect("open");
    put(&store, "big", Metadata::tagged("old"), &body(1, 100), 100).await;
    put(
        &store,
        "big",
        Metadata::tagged("new"),
        &body(2, 20_000),
        1000,
    )
    .await;
    assert!(store.get("big").await.expect("get").is_none());
    assert!(entry_files(dir.path()).is_empty());
    assert_eq!(store.stats().bytes, 0);
}

#[tokio::test]
async fn reopen_with_a_smaller_capacity_evicts_down_to_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open("file", dir.path()).expect("open");
    for i in 0..20u64 {
        put(
            &store,
            &format!("k{i:02}"),
            Metadata::default(),
            &body(i, ENTRY),
            ENTRY,
        )
        .await;
    }
    drop(store);
    let capacity = 5 * file_size("k00", ENTRY);
    let store = FileStore::builder(dir.path())
        .capacity(capacity, PolicyKind::Lru)
        .open("file")
        .expect("reopen");
    let stats = store.stats();
    assert!(stats.bytes <= capacity && stats.entries > 0, "{stats:?}");
    assert_eq!(entry_files(dir.path()).len() as u64, stats.entries);
}

#[tokio::test]
async fn a_reader_keeps_its_entry_across_eviction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::builder(dir.path())
        .capacity(3 << 20, PolicyKind::Lru)
        .open("file")
        .expect("open");
    let data = body(1, 2 << 20);
    put(&store, "a", Metadata::default(), &data, 1 << 16).await;
    let reader = store.get("a").await.expect("get").expect("hit");
    put(&store, "b", Metadata::default(), &body(2, 2 << 20), 1 << 16).await;
    assert!(
        store.get("a").await.expect("get").is_none(),
        "a was evicted"
    );
    assert_eq!(read_all(reader).await, data);
}

#[tokio::test]
async fn file_store_errors_name_the_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("a-file");
    fs::write(&blocker, b"x").expect("write");
    let e = FileStore::open("file", blocker.join("root"))
        .err()
        .expect("cannot open");
    let text = e.to_string();
    assert!(text.starts_with("store error: file store "), "{text}");
    assert!(
        text.contains(&blocker.join("root").display().to_string()),
        "{text}"
    );
}

/// Entries whose pages are not in memory are read on the blocking pool;
/// dropping a file's pages makes the inline read give way to it.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn cold_entries_read_whole() {
    use rustix::fs::{Advice, fadvise};

    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open("file", dir.path()).expect("open");
    let data = body(8, (3 << 20) + 5);
    put(&store, "cold", rich_meta("c"), &data, 1 << 16).await;
    let evict = || {
        let file = fs::File::open(store.entry_path("cold")).expect("open");
        // Only clean pages can be dropped.
        file.sync_all().expect("sync");
        fadvise(&file, 0, None, Advice::DontNeed).expect("fadvise");
    };
    evict();
    assert_eq!(
        store.stat("cold").await.expect("stat"),
        Some(rich_meta("c"))
    );
    evict();
    let (meta, got) = fetch(&store, "cold").await.expect("present");
    assert_eq!((meta, got), (rich_meta("c"), data.clone()));
    // Cold in the middle of the body: the first chunk comes from memory.
    let entry = store.get("cold").await.expect("get").expect("present");
    evict();
    assert_eq!(read_all(entry).await, data);
}

#[tokio::test]
async fn a_failed_write_fails_the_rest_of_the_sink() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open("file", dir.path()).expect("open");
    put(&store, "k", Metadata::tagged("old"), &body(1, 100), 100).await;
    // Make the temporary file impossible to create: a plain file where the
    // key's directory was.
    let fan_out = store
        .entry_path("k")
        .parent()
        .expect("parent")
        .to_path_buf();
    fs::remove_dir_all(&fan_out).expect("rmdir");
    fs::write(&fan_out, b"in the way").expect("write");
    let mut sink = store
        .begin_write("k", Metadata::tagged("new"))
        .await
        .expect("begin");
    let mut failed = None;
    for i in 0..8 {
        if let Err(e) = sink.write(Bytes::from(body(i, 128 * 1024))).await {
            failed = Some(e);
            break;
        }
    }
    let failed = failed.expect("a write failed");
    assert!(failed.to_string().contains("file store"), "{failed}");
    assert!(sink.write(Bytes::from_static(b"more")).await.is_err());
    assert!(sink.commit().await.is_err());
    // Once the way is clear, the directory is made again.
    fs::remove_file(&fan_out).expect("rm");
    assert!(store.get("k").await.expect("get").is_none());
    put(
        &store,
        "k",
        Metadata::tagged("again"),
        &body(2, 300_000),
        65536,
    )
    .await;
    assert_eq!(
        fetch(&store, "k").await.expect("present").1,
        body(2, 300_000)
    );
}

#[test]
fn file_store_works_outside_a_tokio_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open("file", dir.path()).expect("open");
    futures::executor::block_on(async {
        let data = body(3, 1 << 20);
        put(&store, "k", rich_meta("v"), &data, 100_000).await;
        assert_eq!(fetch(&store, "k").await, Some((rich_meta("v"), data)));
        let sink = store
            .begin_write("k", Metadata::default())
            .await
            .expect("begin");
        drop(sink);
        store.delete("k").await.expect("delete");
        assert!(store.stat("k").await.expect("stat").is_none());
    });
}
