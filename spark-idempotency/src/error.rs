//! The one error type of the crate.

/// Everything that can go wrong in `spark-idempotency`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdempotencyError {
    /// An `Idempotency-Key` value that is not 1–255 visible ASCII characters.
    #[error("invalid Idempotency-Key: {reason}")]
    InvalidKey {
        /// What was wrong with it.
        reason: &'static str,
    },
    /// A completion or release by a holder whose lease was taken over (or
    /// whose record is gone): the fencing number no longer matches.
    #[error("lease lost for key {key:?} in scope {scope:?} (fencing {fencing}): another holder took over")]
    LeaseLost {
        /// The scope.
        scope: String,
        /// The key.
        key: String,
        /// The fencing number the caller held.
        fencing: i64,
    },
    /// A configuration that cannot work.
    #[error("invalid idempotency configuration: {reason}")]
    Config {
        /// Why.
        reason: &'static str,
    },
    /// A stored record that cannot be read back.
    #[error("stored idempotency record for key {key:?} is unreadable: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The database failed.
    #[error("idempotency store failed")]
    Database(#[source] sqlx::Error),
    /// Running migrations failed.
    #[error("idempotency migrations failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for IdempotencyError {
    fn from(err: sqlx::Error) -> Self {
        IdempotencyError::Database(err)
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = IdempotencyError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::IdempotencyError;

    /// `{:#}` of an error chain prints each cause once: the cause lives in
    /// `source()`, not in the message too.
    #[test]
    fn causes_are_printed_once() {
        let errors = [
            (IdempotencyError::from(sqlx::Error::Protocol("bad frame".to_owned())), "bad frame"),
            (IdempotencyError::Migrate(sqlx::migrate::MigrateError::VersionMissing(20_261_125)), "20261125"),
        ];
        for (err, cause) in errors {
            let chain = format!("{:#}", anyhow::Error::from(err));
            assert_eq!(chain.matches(cause).count(), 1, "{chain}");
        }
    }
}
