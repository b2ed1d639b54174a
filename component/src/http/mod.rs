//! The HTTP caching rules every HTTP face of the engine shares (the
//! `daramjwee serve` proxy, the `wasi:http` middleware, the Spin app, the
//! proxy-wasm filter): what a shared cache may do with a response
//! ([`rfc9111`]) and what it says in `Cache-Status` (RFC 9211). Plain text
//! in, plain text out, so each face keeps its own HTTP library.

pub mod exchange;
pub mod rfc9111;

/// The `Cache-Status` header name.
pub const CACHE_STATUS: &str = "cache-status";

/// Attribute under which an entry keeps its origin's `Content-Type`.
pub const CONTENT_TYPE_ATTR: &str = "content-type";

/// What one request's trip to the origin did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Forward {
    /// The origin was asked.
    pub fetched: bool,
    /// The origin's status, when it answered.
    pub status: Option<u16>,
    /// The origin forbade storing its answer.
    pub no_store: bool,
}

/// Where the cache's answer came from, as `Cache-Status` tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// From tier `index`; `stale` when served past freshness, `expired`
    /// when also past its stale window (only an origin failure allows it).
    Tier {
        /// The tier.
        index: usize,
        /// Served stale.
        stale: bool,
        /// Served past the stale window.
        expired: bool,
    },
    /// Fetched from the origin for this request.
    Origin,
    /// Joined another request's fetch.
    Joined,
}

/// The `Cache-Status` value of an answer.
pub fn cache_status(served: Served, forward: &Forward) -> String {
    let fwd_status = forward
        .status
        .map(|s| format!("; fwd-status={s}"))
        .unwrap_or_default();
    let stored = if forward.no_store { "" } else { "; stored" };
    match served {
        Served::Origin => format!("daramjwee; fwd=miss{fwd_status}{stored}"),
        Served::Joined => "daramjwee; fwd=miss; collapsed".into(),
        Served::Tier {
            index,
            stale: true,
            expired: true,
        } => format!("daramjwee; fwd=stale{fwd_status}; detail=stale-if-error-tier{index}"),
        // Within the stale window a refresh was scheduled, whose fetch may
        // already be running, so `forward` cannot tell it apart.
        Served::Tier {
            index, stale: true, ..
        } => format!("daramjwee; fwd=stale; detail=revalidating-tier{index}"),
        // The origin confirmed an expired copy.
        Served::Tier { index, .. } if forward.fetched => {
            format!("daramjwee; fwd=stale{fwd_status}; detail=tier{index}")
        }
        Served::Tier { index, .. } => format!("daramjwee; hit; detail=tier{index}"),
    }
}

/// The `Cache-Status` value of a failure; `detail` names it
/// (`origin-error`, `timeout`, ...).
pub fn failure_status(detail: &str, forward: &Forward) -> String {
    let fwd = if forward.fetched { "; fwd=miss" } else { "" };
    let fwd_status = forward
        .status
        .map(|s| format!("; fwd-status={s}"))
        .unwrap_or_default();
    format!("daramjwee{fwd}{fwd_status}; detail={detail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_status_names_the_source() {
        let miss = Forward {
            fetched: true,
            status: Some(200),
            no_store: false,
        };
        assert_eq!(
            cache_status(Served::Origin, &miss),
            "daramjwee; fwd=miss; fwd-status=200; stored"
        );
        let hit = Served::Tier {
            index: 1,
            stale: false,
            expired: false,
        };
        assert_eq!(
            cache_status(hit, &Forward::default()),
            "daramjwee; hit; detail=tier1"
        );
        let revalidated = Forward {
            fetched: true,
            status: Some(304),
            no_store: false,
        };
        assert_eq!(
            cache_status(hit, &revalidated),
            "daramjwee; fwd=stale; fwd-status=304; detail=tier1"
        );
        assert_eq!(
            failure_status("origin-error", &miss),
            "daramjwee; fwd=miss; fwd-status=200; detail=origin-error"
        );
    }
}
