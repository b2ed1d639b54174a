//! Crash safety of the file store: a child process (this test binary,
//! re-run with `CRASH_CHILD_DIR` set) writes entries in a loop and is
//! killed with SIGKILL mid-way; every entry that reads back afterwards must
//! be whole and exactly what was written, and no temporary file may
//! survive the reopen.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use daramjwee::{FileStore, Metadata, Tier, WriteMode};
use daramjwee_tests::conformance::{body, fetch};

const CHILD_DIR: &str = "CRASH_CHILD_DIR";
const CHILD_MODE: &str = "CRASH_CHILD_MODE";
const KEYS: u64 = 120;
const READY: &str = "crash-child-ready";

/// The body of `key` at `version`: derived from both, so the check needs
/// nothing from the child but the tag.
fn expected(key: u64, version: u64) -> Vec<u8> {
    let seed = key * 1_000_003 + version;
    // From empty to a few hundred KiB: small bodies commit in one write,
    // large ones spill to the temporary file first.
    let len = match seed % 4 {
        0 => (seed % 97) as usize,
        1 => 4096,
        2 => 70_000 + (seed % 5000) as usize,
        _ => 300_000 + (seed % 100_000) as usize,
    };
    body(seed, len)
}

fn mode_of(text: &str) -> WriteMode {
    if text == "copy" {
        WriteMode::Copy
    } else {
        WriteMode::Rename
    }
}

/// Runs only inside the child: writes until killed (or a bound, so an
/// orphan cannot run forever).
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let mode = mode_of(&std::env::var(CHILD_MODE).unwrap_or_default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let store: Arc<dyn Tier> = Arc::new(
            FileStore::builder(&dir)
                .write_mode(mode)
                .open("crash")
                .expect("open"),
        );
        let writers: Vec<_> = (0..4u64)
            .map(|w| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let pid = u64::from(std::process::id());
                    for i in 0..20_000u64 {
                        let key = (i * 7 + w * 31) % KEYS;
                        if i % 23 == 0 {
                            store.delete(&format!("key-{key}")).await.expect("delete");
                            continue;
                        }
                        let version = pid * 1_000_000 + i * 4 + w;
                        let data = expected(key, version);
                        let mut sink = store
                            .begin_write(
                                &format!("key-{key}"),
                                Metadata::tagged(version.to_string()),
                            )
                            .await
                            .expect("begin");
                        for part in data.chunks(40_000) {
                            sink.write(Bytes::copy_from_slice(part))
                                .await
                                .expect("write");
                        }
                        sink.commit().await.expect("commit");
                        if w == 0 && i == 40 {
                            println!("{READY}");
                        }
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("writer");
        }
    });
}

/// Kills the child if the test fails before it does.
struct Killer(Child);

impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_and_kill(dir: &Path, mode: &str, delay: Duration) {
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir)
        .env(CHILD_MODE, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child");
    let mut child = Killer(child);
    let stdout = child.0.stdout.take().expect("stdout");
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains(READY));
    assert!(ready, "the child ended before it was ready");
    std::thread::sleep(delay);
    // SIGKILL on unix: no destructor or buffered write runs.
    child.0.kill().expect("kill");
    let status = child.0.wait().expect("wait");
    assert!(!status.success(), "the child finished before the kill");
}

fn temp_files(root: &Path) -> usize {
    let mut count = 0;
    for dir in std::fs::read_dir(root).expect("read_dir") {
        let dir = dir.expect("entry").path();
        if dir.is_dir() {
            for file in std::fs::read_dir(&dir).expect("read_dir") {
                let name = file.expect("entry").file_name();
                count += usize::from(name.to_string_lossy().starts_with(".tmp."));
            }
        }
    }
    count
}

async fn check_after_crash(root: &Path) -> u64 {
    let store = FileStore::open("check", root).expect("reopen after a crash");
    assert_eq!(temp_files(root), 0, "temporary files survived the reopen");
    let mut present = 0;
    for key in 0..KEYS {
        if let Some((meta, got)) = fetch(&store, &format!("key-{key}")).await {
            let version: u64 = meta.tag.parse().expect("a version tag");
            assert!(
                got == expected(key, version),
                "key-{key} version {version}: {} bytes differ from what was written",
                got.len()
            );
            present += 1;
        }
    }
    assert_eq!(
        store.stats().entries,
        present,
        "files that read as absent remain"
    );
    present
}

async fn crash_repeatedly(mode: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let mut survived = 0;
    // Varied delays, so the kill lands in different phases of the writes.
    for delay_ms in [5u64, 40, 0, 90, 15, 60] {
        run_and_kill(&root, mode, Duration::from_millis(delay_ms));
        survived += check_after_crash(&root).await;
    }
    assert!(survived > 0, "no entry survived any crash");
}

#[tokio::test]
async fn killed_writer_leaves_only_whole_entries() {
    crash_repeatedly("rename").await;
}

#[tokio::test]
async fn killed_writer_in_copy_mode_leaves_only_whole_entries() {
    crash_repeatedly("copy").await;
}
