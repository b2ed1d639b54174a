//! `daramjwee serve`: the cache as an HTTP caching proxy in front of one
//! origin.
//!
//! ```no_run
//! use daramjwee::serve::{ServeConfig, Server};
//!
//! # async fn demo() -> daramjwee::Result<()> {
//! let config = ServeConfig {
//!     listen: "127.0.0.1:0".parse().unwrap(),
//!     origin: Some("http://127.0.0.1:9000".into()),
//!     tiers: vec!["mem".into()],
//!     ..ServeConfig::default()
//! };
//! let server = Server::start(config).await?;
//! println!("listening on http://{}", server.local_addr());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

mod config;
mod demo;
mod metrics;
mod proxy;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{DEFAULT_LISTEN, ServeArgs, ServeConfig, default_tiers, parse_duration};
pub use metrics::Metrics;

use crate::rules::{HttpRules, Policy};
use crate::tier::Tier;
use crate::{Cache, Error, ObjectStoreTier, Result};

/// Memory an instance of the HTTP rules may grow to.
const RULES_MEMORY: usize = 64 << 20;

/// How long one call of the HTTP rules may run.
const RULES_CALL_TIME: Duration = Duration::from_secs(1);

/// How long shutdown waits for responses in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A running proxy. Dropping it without [`Server::shutdown`] leaves its
/// tasks running until the runtime ends.
pub struct Server {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    origin: String,
    cache: Cache,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Open the tiers and the cache, bind the listeners and start serving.
    pub async fn start(config: ServeConfig) -> Result<Server> {
        config.check_limits()?;
        let limits = Limits::of(&config);
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let origin = match &config.origin {
            Some(origin) => origin.trim_end_matches('/').to_owned(),
            None => {
                let listener =
                    bind("demo origin", "127.0.0.1:0".parse().expect("an address")).await?;
                let addr = listener.local_addr().map_err(io_error)?;
                tasks.push(spawn_server(
                    limits,
                    listener,
                    stopped.clone(),
                    |request| async move { Ok::<_, Infallible>(demo::answer(&request)) },
                    Vec::new(),
                ));
                tracing::info!("demo origin on http://{addr}");
                format!("http://{addr}")
            }
        };
        let mut builder = Cache::builder()
            .fresh_for(config.fresh_for)
            .negative_fresh_for(config.negative_fresh_for)
            .stale_if_error(config.stale_if_error)
            .operation_timeout(config.origin_timeout + Duration::from_secs(5));
        for (index, spec) in config.tiers.iter().enumerate() {
            builder = builder.shared_tier(open_tier(index, spec)?);
        }
        let cache = builder.build().await?;
        let client = reqwest::Client::builder()
            // Redirects are passed to the client, never followed.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.origin_timeout)
            .read_timeout(config.origin_timeout)
            .build()
            .map_err(|e| Error::Other(format!("cannot build the origin client: {e}")))?;
        let metrics = Arc::new(Metrics::new());
        let state = Arc::new(proxy::State {
            cache: cache.clone(),
            client,
            origin: origin.clone(),
            origin_timeout: config.origin_timeout,
            admin_token: config.admin_token.as_deref().map(proxy::token_digest),
            metrics: Arc::clone(&metrics),
            window_ms: u64::try_from(config.fresh_for.as_millis()).unwrap_or(u64::MAX),
            policy: Policy {
                default_ttl: config.fresh_for.as_secs(),
                stale_while_revalidate: config.stale_while_revalidate.as_secs(),
                variants: true,
                remember_missing: !config.negative_fresh_for.is_zero(),
            },
            rules: HttpRules::embedded(
                crate::default_compile_cache().as_deref(),
                RULES_MEMORY,
                RULES_CALL_TIME,
            )?,
            origin_url: proxy::origin_url_parts(&origin)?,
            origin_slots: Arc::new(tokio::sync::Semaphore::new(config.max_origin_connections)),
        });
        let listener = bind("listen", config.listen).await?;
        let addr = listener.local_addr().map_err(io_error)?;
        let metrics_addr = match config.metrics_listen {
            Some(metrics_listen) => {
                let listener = bind("metrics-listen", metrics_listen).await?;
                let metrics_addr = listener.local_addr().map_err(io_error)?;
                let cache = cache.clone();
                tasks.push(spawn_server(
                    limits,
                    listener,
                    stopped.clone(),
                    move |request| {
                        let body = match request.uri().path() {
                            "/metrics" => Some(metrics.render(&cache)),
                            "/healthz" => Some("ok\n".to_owned()),
                            _ => None,
                        };
                        async move { Ok::<_, Infallible>(demo::plain(body)) }
                    },
                    Vec::new(),
                ));
                tracing::info!("metrics on http://{metrics_addr}/metrics");
                Some(metrics_addr)
            }
            None => None,
        };
        let admin_addr = match config.admin_listen {
            Some(admin_listen) => {
                let listener = bind("admin-listen", admin_listen).await?;
                let admin_addr = listener.local_addr().map_err(io_error)?;
                let state = Arc::clone(&state);
                tasks.push(spawn_server(
                    limits,
                    listener,
                    stopped.clone(),
                    move |request| proxy::handle_admin(Arc::clone(&state), request),
                    Vec::new(),
                ));
                tracing::info!("admin API on http://{admin_addr}");
                Some(admin_addr)
            }
            None => None,
        };
        // Thread per core: connections are dealt round-robin to the shard
        // threads, which serve them on their own runtimes, so a request for
        // one of the thread's keys, and any fresh hit, never leaves it.
        tasks.push(spawn_server(
            limits,
            listener,
            stopped,
            move |request: Request<Incoming>| proxy::handle(Arc::clone(&state), request),
            cache.shard_runtimes(),
        ));
        tracing::info!(origin, tiers = ?config.tiers, "serving on http://{addr}");
        Ok(Server {
            addr,
            metrics_addr,
            admin_addr,
            origin,
            cache,
            stop,
            tasks,
        })
    }

    /// The address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of `/metrics` and `/healthz`, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The address of the admin API, when enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The origin's base URL (the demo origin's when none was given).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The cache behind the proxy.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Stop accepting, let responses in flight finish (up to 30 s), then
    /// close the cache.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.cache.close().await;
    }
}

/// Serve until SIGINT or SIGTERM, then shut down gracefully.
pub async fn run(config: ServeConfig) -> Result<()> {
    let server = Server::start(config).await?;
    println!(
        "daramjwee serving http://{} (origin {}); try: curl -i http://{}/hello",
        server.local_addr(),
        server.origin(),
        server.local_addr()
    );
    signal().await?;
    tracing::info!("shutting down: finishing responses in flight");
    server.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn signal() -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| Error::Other(format!("cannot watch SIGTERM: {e}")))?;
        tokio::select! {
            _ = term.recv() => {}
            result = tokio::signal::ctrl_c() => {
                result.map_err(|e| Error::Other(format!("cannot watch SIGINT: {e}")))?;
            }
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| Error::Other(format!("cannot watch Ctrl-C: {e}")))?;
    Ok(())
}

/// Open tier `index` from its spec: an object-store URL or a
/// [`crate::TierSpec`] (`mem:...`, `file:...`).
pub fn open_tier(index: usize, spec: &str) -> Result<Arc<dyn Tier>> {
    let name = format!("tier{index}");
    if spec.contains("://") {
        return Ok(Arc::new(ObjectStoreTier::from_url(name, spec)?));
    }
    let spec: crate::TierSpec = spec.parse().map_err(|e: Error| match e {
        Error::InvalidConfig(why) => Error::InvalidConfig(format!("tier: {why}")),
        other => other,
    })?;
    spec.open(name)
}

async fn bind(option: &str, addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::InvalidConfig(format!("{option}: cannot listen on {addr}: {e}")))
}

fn io_error(e: std::io::Error) -> Error {
    Error::Other(e.to_string())
}

/// What one listener allows its clients.
#[derive(Clone, Copy, Debug)]
struct Limits {
    header_timeout: Duration,
    max_connections: usize,
    max_header_size: usize,
    max_headers: usize,
}

impl Limits {
    fn of(config: &ServeConfig) -> Self {
        Limits {
            header_timeout: config.header_timeout,
            max_connections: config.max_connections,
            max_header_size: config.max_header_size,
            max_headers: config.max_headers,
        }
    }
}

/// Accept HTTP/1 connections on `listener` until `stop` says so, then let
/// the open ones finish their current response. Connections are served on
/// `runtimes` in turn, or on the current runtime when there are none.
fn spawn_server<F, Fut, B>(
    limits: Limits,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    handler: F,
    runtimes: Vec<tokio::runtime::Handle>,
) -> JoinHandle<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_header_size(limits.max_header_size)
            .max_headers(limits.max_headers);
        // A connection holds a permit until it ends: past the limit, the
        // listener stops accepting and new clients wait in its backlog.
        let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
        let mut next = 0usize;
        loop {
            let permit = tokio::select! {
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                _ = async { stop.wait_for(|stop| *stop).await.map(|_| ()) } => break,
            };
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok((stream, peer)) => {
                            // A response can leave in several writes:
                            // with Nagle on, the second waits for the
                            // client's delayed ACK (tens of ms per request).
                            if let Err(e) = stream.set_nodelay(true) {
                                tracing::debug!("TCP_NODELAY: {e}");
                            }
                            (stream, peer)
                        }
                        Err(e) => {
                            tracing::warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let handler = handler.clone();
                    let watcher = graceful.watcher();
                    let http = http.clone();
                    let serve = move |stream: tokio::net::TcpStream| async move {
                        let _permit = permit;
                        // Each request knows its client (for X-Forwarded-For).
                        let service = service_fn(move |mut request: Request<Incoming>| {
                            request.extensions_mut().insert(proxy::Peer(peer));
                            handler(request)
                        });
                        let connection = http.serve_connection(TokioIo::new(stream), service);
                        if let Err(e) = watcher.watch(connection).await {
                            tracing::debug!("connection ended: {e}");
                        }
                    };
                    if runtimes.is_empty() {
                        tokio::spawn(serve(stream));
                        continue;
                    }
                    let runtime = &runtimes[next % runtimes.len()];
                    next = next.wrapping_add(1);
                    // The socket moves to the reactor of the thread that
                    // serves it.
                    match stream.into_std() {
                        Ok(stream) => {
                            runtime.spawn(async move {
                                match tokio::net::TcpStream::from_std(stream) {
                                    Ok(stream) => serve(stream).await,
                                    Err(e) => tracing::warn!("cannot serve a connection: {e}"),
                                }
                            });
                        }
                        Err(e) => tracing::warn!("cannot hand a connection over: {e}"),
                    }
                }
                _ = async { stop.wait_for(|stop| *stop).await.map(|_| ()) } => break,
            }
        }
        drop(listener);
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("responses still in flight after {DRAIN_TIMEOUT:?}; dropping them");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tiers_are_valid_specs() {
        for spec in default_tiers() {
            spec.parse::<crate::TierSpec>()
                .unwrap_or_else(|e| panic!("{spec}: {e}"));
        }
    }

    #[test]
    fn bad_tier_specs_are_named_errors() {
        for spec in ["ram", "mem:lots", "file:", "mem:1MiB:fifo"] {
            match open_tier(0, spec) {
                Err(Error::InvalidConfig(why)) => assert!(why.contains("tier"), "{why}"),
                Err(other) => panic!("{spec}: expected invalid-config, got {other}"),
                Ok(_) => panic!("{spec}: accepted"),
            }
        }
    }
}
