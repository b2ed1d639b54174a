//! `daramjwee serve` as a real process: restarts, signals and its memory.

#[path = "../../tests/support/origin.rs"]
mod origin;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use origin::{CHUNK, Origin, PERIOD, Route, pattern};

/// A running `daramjwee serve` and the address it printed.
struct Proxy {
    child: Child,
    addr: String,
}

impl Proxy {
    async fn start(origin: &Origin, cache_dir: &Path) -> Proxy {
        let mut child = Command::new(env!("CARGO_BIN_EXE_daramjwee"))
            .args(["serve", "--listen", "127.0.0.1:0", "--origin"])
            .arg(origin.url())
            .args(["--tier", "mem:64MiB:s3fifo", "--tier"])
            .arg(format!("file:{}:64MiB:lru", cache_dir.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).unwrap();
            line
        })
        .await
        .unwrap();
        // "daramjwee serving http://ADDR (origin ...); ..."
        let addr = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("http://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        Proxy { child, addr }
    }

    fn url(&self, target: &str) -> String {
        format!("http://{}{target}", self.addr)
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn wait(mut self) -> std::process::ExitStatus {
        tokio::task::spawn_blocking(move || self.child.wait().unwrap())
            .await
            .unwrap()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(url: &str) -> (u16, String, Bytes) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    let cache_status = response
        .headers()
        .get("cache-status")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    (status, cache_status, response.bytes().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_an_empty_memory_tier_serves_from_the_file_tier() {
    let origin = Origin::start().await;
    origin.route("/kept", Route::controlled("v1", "on disk", "max-age=3600"));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&origin, dir.path()).await;
    let (status, cache_status, body) = get(&proxy.url("/kept")).await;
    assert_eq!((status, &body[..]), (200, &b"on disk"[..]));
    assert!(cache_status.contains("fwd=miss"), "{cache_status}");
    // A graceful stop drains the background copy into the file tier.
    proxy.terminate();
    assert!(proxy.wait().await.success());

    let proxy = Proxy::start(&origin, dir.path()).await;
    let (status, cache_status, body) = get(&proxy.url("/kept")).await;
    assert_eq!((status, &body[..]), (200, &b"on disk"[..]));
    assert_eq!(cache_status, "daramjwee; hit; detail=tier1");
    assert_eq!(origin.hits("/kept"), 1, "the origin was not asked again");
    let (_, cache_status, _) = get(&proxy.url("/kept")).await;
    assert_eq!(cache_status, "daramjwee; hit; detail=tier0", "promoted");
    proxy.terminate();
    assert!(proxy.wait().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight() {
    let origin = Origin::start().await;
    origin.route(
        "/slow",
        Route::Ok {
            tag: "\"s\"".into(),
            body: Bytes::from_static(b"worth the wait"),
            cache_control: None,
            delay: Duration::from_millis(1500),
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&origin, dir.path()).await;
    let url = proxy.url("/slow");
    let request = tokio::spawn(async move { get(&url).await });
    origin.arrived().await;
    proxy.terminate();
    let (status, _, body) = request.await.unwrap();
    assert_eq!((status, &body[..]), (200, &b"worth the wait"[..]));
    assert!(proxy.wait().await.success());
}

/// The process's peak resident memory (`VmHWM`) since it started or since
/// `clear_refs` last reset it, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_body_streams_through_in_bounded_memory() {
    const LEN: u64 = 1 << 30;
    let origin = Origin::start().await;
    origin.route("/big", Route::Sized { len: LEN });
    let dir = tempfile::tempdir().unwrap();
    // Neither tier keeps an object this large: the body only passes through.
    let proxy = Proxy::start(&origin, dir.path()).await;
    // Count from here: starting (compiling the engine on a machine that
    // has not yet, one engine instance per core) is not the transfer.
    std::fs::write(format!("/proc/{}/clear_refs", proxy.child.id()), "5").unwrap();
    let started_mib = peak_rss_kib(proxy.child.id()) / 1024;
    let mut response = reqwest::get(proxy.url("/big")).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.content_length(), Some(LEN));
    let cache_status = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cache_status.contains("fwd=miss") && !cache_status.contains("stored"),
        "{cache_status}"
    );
    // Every byte checked against what the origin sent at its offset.
    let expected = pattern();
    let mut received = 0u64;
    while let Some(chunk) = response.chunk().await.unwrap() {
        for part in chunk.chunks(CHUNK) {
            let start = (received % PERIOD as u64) as usize;
            assert_eq!(part, &expected[start..start + part.len()], "at {received}");
            received += part.len() as u64;
        }
    }
    assert_eq!(received, LEN);
    let peak_mib = peak_rss_kib(proxy.child.id()) / 1024;
    assert!(
        peak_mib < started_mib + 32,
        "serve grew from {started_mib} to {peak_mib} MiB resident while streaming 1 GiB"
    );
    assert_eq!(origin.hits("/big"), 1);
    proxy.terminate();
    assert!(proxy.wait().await.success());
}
