//! The crate's one error type.

/// What can go wrong outside a request: a bad plugin configuration, or a
/// shared-data value that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The plugin configuration is not valid; the text names the key.
    #[error("invalid plugin configuration: {0}")]
    InvalidConfig(String),
    /// A value read from shared data is not an entry this filter wrote.
    #[error("undecodable shared-data entry: {0}")]
    Decode(&'static str),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
