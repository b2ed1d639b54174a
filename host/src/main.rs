//! The `daramjwee` command line.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use clap::{Parser, Subcommand};
use daramjwee::{Cache, FetchResult, Fetcher, MemoryStore, Metadata, Result};

/// A stream-based hybrid cache whose rules run in a WebAssembly component.
#[derive(Parser)]
#[command(name = "daramjwee", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the embedded engine over two memory tiers: a miss, then hits,
    /// with the origin called once.
    Demo {
        /// Key to read.
        #[arg(long, default_value = "greeting")]
        key: String,
        /// Number of reads after the first.
        #[arg(long, default_value_t = 2)]
        hits: usize,
    },
}

/// An origin that makes up a body and counts its calls.
struct DemoOrigin(Arc<AtomicUsize>);

impl Fetcher for DemoOrigin {
    async fn fetch(&self, key: &str, _held: Option<&Metadata>) -> Result<FetchResult> {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        println!("  origin: fetching {key:?} (call {n})");
        Ok(FetchResult::bytes(
            Metadata::tagged("\"v1\""),
            format!("Hello from the origin, {key}!"),
        ))
    }
}

async fn demo(key: &str, hits: usize) -> Result<()> {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = Cache::builder()
        .tier(MemoryStore::new("memory"))
        .tier(MemoryStore::new("warm"))
        .build()
        .await?;
    for attempt in 0..=hits {
        let started = Instant::now();
        let response = cache.get(key, DemoOrigin(Arc::clone(&calls))).await?;
        let (source, status) = (response.source, response.status);
        let body = match response.body {
            Some(body) => body.bytes().await?,
            None => Default::default(),
        };
        let kind = if attempt == 0 { "miss" } else { "hit " };
        println!(
            "{kind}: {status:?} from {source:?} in {:?}: {}",
            started.elapsed(),
            String::from_utf8_lossy(&body)
        );
    }
    println!("origin calls: {}", calls.load(Ordering::SeqCst));
    cache.close().await;
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "daramjwee=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("daramjwee: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo { key, hits } => demo(&key, hits).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("daramjwee: {e}");
            ExitCode::FAILURE
        }
    }
}
