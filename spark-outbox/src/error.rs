//! Errors.

use std::time::Duration;

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
    /// A lease too short for the batch: a relay could still be publishing
    /// when its claim runs out and another relay claims the same events.
    #[error(
        "lease {lease:?} is shorter than ceil(batch {batch} / concurrency {concurrency}) x publish timeout \
         {publish_timeout:?} x 1.5 = {minimum:?}"
    )]
    LeaseTooShort {
        /// The lease asked for.
        lease: Duration,
        /// Events claimed per batch.
        batch: u32,
        /// Publishes in flight at once.
        concurrency: usize,
        /// The longest one publish may take.
        publish_timeout: Duration,
        /// The shortest lease that fits the batch.
        minimum: Duration,
    },
    /// A stored row that cannot be read back.
    #[error("stored outbox event is unreadable: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("outbox store")]
    Database(#[source] sqlx::Error),
    /// Running migrations failed.
    #[error("outbox migrations")]
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
    /// A relay task stopped before it was told to: a fatal store error (the
    /// schema is missing) or a panic.
    #[error("outbox relay {relay} died: {reason}")]
    RelayDied {
        /// The relay's name.
        relay: String,
        /// What stopped it.
        reason: String,
    },
}

impl From<sqlx::Error> for OutboxError {
    fn from(err: sqlx::Error) -> Self {
        OutboxError::Database(err)
    }
}

impl OutboxError {
    /// Whether retrying cannot help: the outbox table or one of its columns
    /// is missing (the schema is not migrated). A relay stops on these
    /// instead of logging them forever.
    #[must_use]
    pub fn is_fatal(&self) -> bool {
        let OutboxError::Database(sqlx::Error::Database(e)) = self else { return false };
        // PostgreSQL: undefined_table, undefined_column. SQLite reports both
        // as a generic error, recognisable only by its message.
        matches!(e.code().as_deref(), Some("42P01" | "42703"))
            || e.message().contains("no such table")
            || e.message().contains("no such column")
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

/// An error and its causes on one line (`{:#}` without anyhow).
pub(crate) use spark_db::error_chain as chain;

#[cfg(test)]
mod tests {
    use super::*;

    /// `{:#}` (anyhow) prints the chain; the outer message must not repeat
    /// the cause.
    #[test]
    fn a_cause_is_printed_once() {
        let err = OutboxError::Database(sqlx::Error::RowNotFound);
        assert_eq!(err.to_string(), "outbox store");
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert_eq!(chain.matches("no rows returned").count(), 1, "{chain}");
    }
}
