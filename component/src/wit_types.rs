//! Conversions between the engine's types and the generated WIT types,
//! for each of the component's worlds (`engine` and `hit-path`), whose
//! bindings are generated separately.

/// Implement the conversions for the WIT `types` module at `$wit`.
macro_rules! conversions {
    ($wit:ident) => {
        impl From<$wit::Error> for crate::Error {
            fn from(e: $wit::Error) -> Self {
                use crate::Error as E;
                match e {
                    $wit::Error::NotFound => E::NotFound,
                    $wit::Error::Closed => E::Closed,
                    $wit::Error::InvalidKey(s) => E::InvalidKey(s),
                    $wit::Error::Timeout => E::Timeout,
                    $wit::Error::Invalidated => E::Invalidated,
                    $wit::Error::Busy => E::Busy,
                    $wit::Error::InvalidConfig(s) => E::InvalidConfig(s),
                    $wit::Error::Store(s) => E::Store(s),
                    $wit::Error::Origin(s) => E::Origin(s),
                    $wit::Error::Other(s) => E::Other(s),
                }
            }
        }

        impl From<crate::Error> for $wit::Error {
            fn from(e: crate::Error) -> Self {
                use crate::Error as E;
                match e {
                    E::NotFound => $wit::Error::NotFound,
                    E::Closed => $wit::Error::Closed,
                    E::InvalidKey(s) => $wit::Error::InvalidKey(s),
                    E::Timeout => $wit::Error::Timeout,
                    E::Invalidated => $wit::Error::Invalidated,
                    E::Busy => $wit::Error::Busy,
                    E::InvalidConfig(s) => $wit::Error::InvalidConfig(s),
                    E::Store(s) => $wit::Error::Store(s),
                    E::Origin(s) => $wit::Error::Origin(s),
                    E::Other(s) => $wit::Error::Other(s),
                }
            }
        }

        impl From<$wit::Metadata> for crate::Metadata {
            fn from(m: $wit::Metadata) -> Self {
                crate::Metadata {
                    tag: m.tag,
                    cached_at: m.cached_at,
                    negative: m.negative,
                    fresh_for: m.fresh_for,
                    stale_for: m.stale_for,
                    stale_if_error: m.stale_if_error,
                    attributes: m.attributes,
                }
            }
        }

        impl From<crate::Metadata> for $wit::Metadata {
            fn from(m: crate::Metadata) -> Self {
                $wit::Metadata {
                    tag: m.tag,
                    cached_at: m.cached_at,
                    negative: m.negative,
                    fresh_for: m.fresh_for,
                    stale_for: m.stale_for,
                    stale_if_error: m.stale_if_error,
                    attributes: m.attributes,
                }
            }
        }

        impl From<crate::Status> for $wit::Status {
            fn from(status: crate::Status) -> Self {
                match status {
                    crate::Status::Ok => $wit::Status::Ok,
                    crate::Status::NotModified => $wit::Status::NotModified,
                    crate::Status::NotFound => $wit::Status::NotFound,
                }
            }
        }

        impl From<$wit::Config> for crate::Config {
            fn from(config: $wit::Config) -> Self {
                crate::Config {
                    fresh_for: config.fresh_for,
                    negative_fresh_for: config.negative_fresh_for,
                    tier_freshness: config
                        .tier_freshness
                        .into_iter()
                        .map(|t| crate::TierFreshness {
                            tier: t.tier,
                            fresh_for: t.fresh_for,
                            negative_fresh_for: t.negative_fresh_for,
                        })
                        .collect(),
                    operation_timeout: config.operation_timeout,
                    join_window: config.join_window,
                    stale_if_error: config.stale_if_error,
                    max_key_len: config.max_key_len,
                }
            }
        }
    };
}

pub(crate) use conversions;
