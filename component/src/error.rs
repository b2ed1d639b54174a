//! The engine's one error type.

/// Why an operation failed. Mirrors the WIT `error` variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The entry does not exist (from operations that need one).
    NotFound,
    /// The cache was closed.
    Closed,
    /// The key is empty, too long, or cannot be held by a store.
    InvalidKey(String),
    /// The setup of the operation did not finish within the timeout.
    Timeout,
    /// A `set` was overtaken by a later `set` or `delete` of its key.
    Invalidated,
    /// The background queue is full.
    Busy,
    /// A configuration value is invalid; the text names the option.
    InvalidConfig(String),
    /// A store failed.
    Store(String),
    /// The origin failed.
    Origin(String),
    /// Anything else.
    Other(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotFound => f.write_str("not found"),
            Error::Closed => f.write_str("cache closed"),
            Error::InvalidKey(why) => write!(f, "invalid key: {why}"),
            Error::Timeout => f.write_str("operation timed out"),
            Error::Invalidated => f.write_str("invalidated by a later set or delete of the key"),
            Error::Busy => f.write_str("background queue full"),
            Error::InvalidConfig(why) => write!(f, "invalid configuration: {why}"),
            Error::Store(why) => write!(f, "store error: {why}"),
            Error::Origin(why) => write!(f, "origin error: {why}"),
            Error::Other(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Error {}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
