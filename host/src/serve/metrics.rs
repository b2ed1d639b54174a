//! Prometheus metrics of the proxy, and the `/metrics` + `/healthz`
//! listener.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::Cache;

/// Labels of per-tier counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabel {
    /// Tier index, 0 being the fastest.
    pub tier: String,
}

/// The proxy's counters, shared by every connection.
pub struct Metrics {
    registry: Registry,
    /// Answers from a tier without the origin, per tier.
    pub hits: Family<TierLabel, Counter>,
    /// The counters of `hits` for the first tiers, once made: a hit then
    /// costs one atomic add, not a label lookup.
    tier_hits: [OnceLock<Counter>; 8],
    /// Answers fetched from the origin for the request.
    pub misses: Counter,
    /// Stale entries served (revalidating, or for an origin error).
    pub stale: Counter,
    /// Requests that joined another request's fetch.
    pub coalesced: Counter,
    /// Requests answered with an error status (5xx).
    pub errors: Counter,
    /// Body bytes sent to clients.
    pub bytes: Counter,
    /// Background jobs waiting in the queue, read at scrape time.
    queue_depth: Gauge<i64, AtomicI64>,
    /// Background jobs dropped because the queue was full.
    dropped_jobs: Gauge<i64, AtomicI64>,
    /// Time to the response head, in seconds.
    pub latency: Histogram,
}

impl Metrics {
    /// Register every metric under the `daramjwee` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("daramjwee");
        let hits = Family::<TierLabel, Counter>::default();
        let misses = Counter::default();
        let stale = Counter::default();
        let coalesced = Counter::default();
        let errors = Counter::default();
        let bytes = Counter::default();
        let queue_depth = Gauge::<i64, AtomicI64>::default();
        let dropped_jobs = Gauge::<i64, AtomicI64>::default();
        let latency = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        registry.register("hits", "Answers served from a tier", hits.clone());
        registry.register("misses", "Answers fetched from the origin", misses.clone());
        registry.register("stale", "Stale entries served", stale.clone());
        registry.register(
            "coalesced",
            "Requests that joined another request's origin fetch",
            coalesced.clone(),
        );
        registry.register("errors", "Requests answered with a 5xx", errors.clone());
        registry.register("bytes_sent", "Body bytes sent to clients", bytes.clone());
        registry.register(
            "queue_depth",
            "Background jobs waiting in the queue",
            queue_depth.clone(),
        );
        registry.register(
            "dropped_jobs",
            "Background jobs dropped because the queue was full",
            dropped_jobs.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to response head",
            latency.clone(),
        );
        Metrics {
            registry,
            hits,
            tier_hits: Default::default(),
            misses,
            stale,
            coalesced,
            errors,
            bytes,
            queue_depth,
            dropped_jobs,
            latency,
        }
    }

    /// Count a hit in tier `tier`.
    pub fn hit(&self, tier: usize) {
        let counter = |tier: usize| {
            self.hits
                .get_or_create(&TierLabel {
                    tier: tier.to_string(),
                })
                .clone()
        };
        match self.tier_hits.get(tier) {
            Some(slot) => slot.get_or_init(|| counter(tier)).inc(),
            None => counter(tier).inc(),
        };
    }

    /// The text exposition, with the gauges read from `cache` now.
    pub fn render(&self, cache: &Cache) -> String {
        self.queue_depth
            .set(i64::try_from(cache.queued_jobs()).unwrap_or(i64::MAX));
        let dropped = cache.pool_stats().dropped.load(Ordering::Relaxed);
        self.dropped_jobs
            .set(i64::try_from(dropped).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
