//! A miss, then a hit: the origin is called once.
//!
//! `cargo run --release --example miss_then_hit`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use daramjwee::{Cache, FetchResult, Fetcher, MemoryStore, Metadata, Result};

/// An origin that counts its calls.
struct Origin(Arc<AtomicUsize>);

impl Fetcher for Origin {
    async fn fetch(&self, key: &str, _held: Option<&Metadata>) -> Result<FetchResult> {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        println!("  origin: fetching {key:?} (call {n})");
        Ok(FetchResult::bytes(
            Metadata::tagged("v1"),
            format!("Hello from the origin, {key}!"),
        ))
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = Cache::builder()
        .tier(MemoryStore::new("memory"))
        .tier(MemoryStore::new("warm"))
        .build()
        .await?;
    for attempt in ["miss", "hit"] {
        let started = Instant::now();
        let response = cache.get("greeting", Origin(Arc::clone(&calls))).await?;
        let (source, status) = (response.source, response.status);
        let body = response.body.expect("a body").bytes().await?;
        println!(
            "{attempt}: {status:?} from {source:?} in {:?}: {}",
            started.elapsed(),
            String::from_utf8_lossy(&body)
        );
    }
    println!("origin calls: {}", calls.load(Ordering::SeqCst));
    cache.close().await;
    Ok(())
}
