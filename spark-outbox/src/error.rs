//! Errors.

/// Everything that can go wrong in `spark-outbox`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// An event that cannot be stored (empty type or aggregate, unencodable
    /// payload).
    #[error("invalid outbox event: {0}")]
    InvalidEvent(String),
    /// A relay configuration that cannot work.
    #[error("invalid relay configuration: {0}")]
    Config(&'static str),
    /// A stored row that cannot be read back.
    #[error("stored outbox event is unreadable: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("outbox store: {0}")]
    Database(#[source] sqlx::Error),
    /// Running migrations failed.
    #[error("outbox migrations: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for OutboxError {
    fn from(err: sqlx::Error) -> Self {
        OutboxError::Database(err)
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = OutboxError> = std::result::Result<T, E>;

/// Why a publish failed, which decides what the relay does next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// Worth retrying with backoff: a timeout, 5xx, 408, 429, a broker that
    /// is down.
    #[error("transient: {0}")]
    Transient(String),
    /// The sink refused the event itself (e.g. a 4xx). Retried a few times
    /// (the receiver may be mid-deploy), then dead-lettered.
    #[error("permanent: {0}")]
    Permanent(String),
}
