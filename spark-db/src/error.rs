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
