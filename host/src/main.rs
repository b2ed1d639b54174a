//! The `daramjwee` command line.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use daramjwee::{Cache, Error, FetchResult, Fetcher, MemoryStore, Metadata, Result};
use daramjwee_component::policy::{PolicyKind, simulate};

/// Small allocations per request (headers, channel slots, chunk handles)
/// are a visible part of a hot hit; mimalloc serves them from per-thread
/// pages. It is built without transparent huge pages (`no_thp`): with
/// them a few live allocations keep whole 2 MiB pages resident.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in the mimalloc of libmimalloc-sys 0.1.49
/// (pinned in `Cargo.toml`): `include/mimalloc.h`'s `mi_option_e`.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Give memory freed after a burst (a stampede's thousand bodies) back to
/// the system within 10 ms of the allocator's next use, as mimalloc 2 did,
/// rather than after its default second, which a server going quiet after
/// the burst never reaches.
fn tune_allocator() {
    // SAFETY: sets one of mimalloc's options, an atomic store; any value
    // is valid for this option.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10) }
}

/// A stream-based hybrid cache whose rules run in a WebAssembly component.
#[derive(Parser)]
#[command(name = "daramjwee", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an HTTP caching proxy in front of an origin: GET/HEAD through the
    /// tiers, PUT/DELETE with the admin token. Listens on 127.0.0.1:8080
    /// unless told otherwise; without --origin a built-in demo origin
    /// answers.
    Serve(Box<daramjwee::serve::ServeArgs>),
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
    /// Replay a trace through an eviction policy and print its miss ratio;
    /// the last line is one JSON object.
    Sim {
        /// The policy: lru, s3fifo or sieve.
        #[arg(long)]
        policy: PolicyKind,
        /// Cache size: objects when the trace has no sizes, bytes when
        /// every line is `key,size`.
        #[arg(long)]
        capacity: u64,
        /// The trace: one request per line, `key` or `key,size`.
        trace: PathBuf,
    },
}

fn sim(policy: PolicyKind, capacity: u64, trace: &Path) -> Result<()> {
    let file = std::fs::File::open(trace)
        .map_err(|e| Error::Other(format!("cannot open {}: {e}", trace.display())))?;
    let report = simulate(policy, capacity, std::io::BufReader::new(file))
        .map_err(|e| Error::Other(format!("{}: {e}", trace.display())))?;
    println!("{}", report.to_json());
    Ok(())
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
    tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "daramjwee=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Serve(args) => args
            .into_config()
            .and_then(|config| block_on(daramjwee::serve::run(config))),
        Command::Demo { key, hits } => block_on(demo(&key, hits)),
        Command::Sim {
            policy,
            capacity,
            trace,
        } => sim(policy, capacity, &trace),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("daramjwee: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Run `task` on a multi-threaded runtime.
fn block_on(task: impl Future<Output = Result<()>>) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Other(format!("cannot start the runtime: {e}")))?
        .block_on(task)
}
