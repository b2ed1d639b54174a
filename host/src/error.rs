//! The host's one error type.

/// Why a cache operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The entry does not exist.
    #[error("not found")]
    NotFound,
    /// The cache was closed.
    #[error("cache closed")]
    Closed,
    /// The key is empty, too long, or cannot be held by a store.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The setup of the operation did not finish in time.
    #[error("operation timed out")]
    Timeout,
    /// A `set` was overtaken by a later `set` or `delete` of its key.
    #[error("invalidated by a later set or delete of the key")]
    Invalidated,
    /// The background queue is full; the job was dropped.
    #[error("background queue full")]
    Busy,
    /// A configuration value is invalid; the text names the option.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A store failed.
    #[error("store error: {0}")]
    Store(String),
    /// The origin failed.
    #[error("origin error: {0}")]
    Origin(String),
    /// The engine component failed (trapped, ran too long, ran out of
    /// memory); its instance was replaced and the request failed.
    #[error("engine fault: {0}")]
    Engine(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// The host's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
