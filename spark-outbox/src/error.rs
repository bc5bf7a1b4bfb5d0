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
    /// A NATS subject (or subject prefix) that JetStream would reject or
    /// read as a wildcard: empty, with whitespace, `*` or `>`, or an empty
    /// token (`a..b`).
    #[error("invalid NATS subject {subject:?}: {reason}")]
    InvalidSubject {
        /// The subject as given.
        subject: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A sink that cannot be configured (a webhook URL that does not parse).
    #[error("invalid sink configuration: {0}")]
    SinkConfig(String),
    /// A sink that cannot be reached or prepared (NATS connect, stream
    /// lookup, HTTP client).
    #[error("{what}")]
    Sink {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A webhook signature header that does not verify: malformed, outside
    /// the timestamp tolerance, or no `v1=` signature matches.
    #[error("webhook signature rejected: {0}")]
    Signature(String),
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
