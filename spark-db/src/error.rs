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
