//! The crate's error.

use crate::database::Backend;

/// What went wrong connecting or migrating.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The URL's scheme is neither PostgreSQL nor SQLite.
    #[error("unsupported database URL {url:?}: use postgres://USER@HOST/DB or sqlite://PATH")]
    UnsupportedUrl {
        /// The URL, password redacted.
        url: String,
    },
    /// The URL could not be parsed.
    #[error("invalid database URL {url:?}")]
    InvalidUrl {
        /// The URL, password redacted.
        url: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// This build has no support for the backend the URL names.
    #[error("this build has no {backend} support: enable spark-db's `{backend}` feature")]
    BackendNotBuilt {
        /// The backend.
        backend: Backend,
    },
    /// A crate was built without the backend's migrations.
    #[error("{name} was built without its {backend} backend: enable its `{backend}` feature")]
    MigrationsNotBuilt {
        /// The crate.
        name: &'static str,
        /// The backend.
        backend: Backend,
    },
    /// The database did not answer.
    #[error("cannot connect to {url}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// A crate's migration failed.
    #[error("migrating {name} failed")]
    Migrate {
        /// The crate.
        name: &'static str,
        /// Why.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A query failed.
    #[error("database query failed")]
    Query(#[source] sqlx::Error),
}

/// An error and its causes on one line, joined by `: ` (what anyhow's `{:#}`
/// prints), for the crates that do not use anyhow. A reqwest or sqlx
/// error's own message rarely says why ("error sending request"); its
/// causes do (refused, timed out, a TLS failure).
///
/// ```
/// let io = std::io::Error::other("connection refused");
/// let err = spark_db::DbError::InvalidUrl { url: "postgres://db/x".into(), source: sqlx::Error::Io(io) };
/// assert!(spark_db::error_chain(&err).starts_with("invalid database URL \"postgres://db/x\": "));
/// assert!(spark_db::error_chain(&err).ends_with(": connection refused"), "{}", spark_db::error_chain(&err));
/// ```
#[must_use]
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether `err` says the database could not be reached or ended the
/// session — a connection that failed, broke or timed out waiting in the
/// pool, a server shutting down, restarting or out of connections, a
/// pooler that cannot log in — so the same request may succeed later
/// (HTTP 503 with `Retry-After`, not a 500). A statement the database
/// refused (a constraint, a syntax error) is not.
///
/// ```
/// assert!(spark_db::is_unavailable(&sqlx::Error::PoolTimedOut));
/// assert!(spark_db::is_unavailable(&sqlx::Error::Io(std::io::Error::other("connection reset"))));
/// assert!(!spark_db::is_unavailable(&sqlx::Error::RowNotFound));
/// ```
#[must_use]
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_unavailable_sqlstate(&code)),
        _ => false,
    }
}

/// SQLSTATEs of an unreachable or departing server: class 08 (connection
/// exception; pgBouncer's "server login has been failing" is 08P01),
/// 57P01–57P03 (admin shutdown, crash shutdown, cannot connect now), 53300
/// (too many connections) and 25P03 (idle-in-transaction timeout: the
/// session is gone).
fn is_unavailable_sqlstate(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300" | "25P03")
}

#[cfg(test)]
mod tests {
    use super::is_unavailable_sqlstate;

    #[test]
    fn connection_and_shutdown_states_are_unavailable_and_statement_errors_are_not() {
        for code in ["08006", "08P01", "57P01", "57P03", "53300", "25P03"] {
            assert!(is_unavailable_sqlstate(code), "{code}");
        }
        for code in ["23505", "42601", "40001", "22003"] {
            assert!(!is_unavailable_sqlstate(code), "{code}");
        }
    }
}
