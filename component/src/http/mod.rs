//! The HTTP caching rules every HTTP face of the engine shares (the
//! `daramjwee serve` proxy, the `wasi:http` middleware, the Spin app):
//! what a shared cache reads from `Cache-Control` (RFC 9111) and what it
//! says in `Cache-Status` (RFC 9211). Plain text in, plain text out, so
//! each face keeps its own HTTP library.

/// The `Cache-Status` header name.
pub const CACHE_STATUS: &str = "cache-status";

/// Attribute under which an entry keeps its origin's `Content-Type`.
pub const CONTENT_TYPE_ATTR: &str = "content-type";

/// The parts of `Cache-Control` a shared cache acts on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `no-store` or `private`: keep no copy.
    pub no_store: bool,
    /// `max-age`, in seconds.
    pub max_age: Option<u64>,
    /// `s-maxage`, in seconds; wins over `max-age` in a shared cache.
    pub s_maxage: Option<u64>,
    /// `stale-while-revalidate`, in seconds.
    pub stale_while_revalidate: Option<u64>,
}

impl CacheControl {
    /// Parse the values of every `Cache-Control` header of a response.
    /// Unknown or malformed directives are ignored, as RFC 9111 asks.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut control = CacheControl::default();
        for directive in values.into_iter().flat_map(|v| v.split(',')) {
            let (name, value) = match directive.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
                None => (directive.trim(), None),
            };
            let seconds = || value.and_then(|v| v.parse::<u64>().ok());
            match name.to_ascii_lowercase().as_str() {
                "no-store" | "private" => control.no_store = true,
                "max-age" => control.max_age = seconds().or(control.max_age),
                "s-maxage" => control.s_maxage = seconds().or(control.s_maxage),
                "stale-while-revalidate" => {
                    control.stale_while_revalidate = seconds().or(control.stale_while_revalidate);
                }
                _ => {}
            }
        }
        control
    }

    /// The entry's own windows in seconds, `(fresh, stale)`: `None` keeps
    /// the cache's. An explicit lifetime without `stale-while-revalidate`
    /// means "revalidate before serving once it is over", so its stale
    /// window is 0.
    pub fn windows(&self) -> (Option<u64>, Option<u64>) {
        match self.s_maxage.or(self.max_age) {
            Some(fresh) => (Some(fresh), Some(self.stale_while_revalidate.unwrap_or(0))),
            None => (None, self.stale_while_revalidate),
        }
    }
}

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
    fn cache_control_directives_are_read() {
        let c = CacheControl::parse(["public, max-age=60", "stale-while-revalidate=\"30\""]);
        assert_eq!(
            c,
            CacheControl {
                no_store: false,
                max_age: Some(60),
                s_maxage: None,
                stale_while_revalidate: Some(30),
            }
        );
        assert!(CacheControl::parse(["Private"]).no_store);
        assert!(CacheControl::parse(["max-age=5, no-store"]).no_store);
        let c = CacheControl::parse(["max-age=5, s-maxage=50, max-age=oops"]);
        assert_eq!((c.max_age, c.s_maxage), (Some(5), Some(50)));
        assert_eq!(CacheControl::parse(["max-age=-1"]).max_age, None);
    }

    #[test]
    fn explicit_lifetime_without_swr_has_no_stale_window() {
        assert_eq!(
            CacheControl::parse(["max-age=5"]).windows(),
            (Some(5), Some(0))
        );
        assert_eq!(
            CacheControl::parse(["s-maxage=9, max-age=5, stale-while-revalidate=3"]).windows(),
            (Some(9), Some(3))
        );
        assert_eq!(
            CacheControl::parse(["stale-while-revalidate=3"]).windows(),
            (None, Some(3))
        );
        assert_eq!(CacheControl::parse(["public"]).windows(), (None, None));
    }

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
