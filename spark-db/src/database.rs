//! The one database handle of the workspace.

use sqlx::migrate::Migrator;

use crate::error::DbError;
use crate::url::redact_url;

/// Which SQL engine a [`Database`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// PostgreSQL, the production backend.
    Postgres,
    /// Embedded SQLite, the default.
    Sqlite,
}

impl Backend {
    /// `"postgres"` or `"sqlite"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }

    /// The backend a URL names, without connecting.
    ///
    /// # Errors
    ///
    /// [`DbError::UnsupportedUrl`] for any scheme but `postgres://`,
    /// `postgresql://` and `sqlite:`.
    pub fn of_url(url: &str) -> Result<Backend, DbError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else {
            Err(DbError::UnsupportedUrl { url: redact_url(url) })
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One crate's migrations, for [`Database::migrate`].
///
/// Every Spark crate that owns tables exports one as `MIGRATIONS`, so an
/// application migrates Spark beside its own schema in one call. All of them
/// share sqlx's `_sqlx_migrations` table, so each migrator ignores versions it
/// does not know (`set_ignore_missing(true)`) and versions are distinct
/// timestamps across crates.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// The owning crate, for messages (`"spark-outbox"`).
    pub name: &'static str,
    /// The PostgreSQL migrator, `None` when the crate was built without its
    /// `postgres` feature.
    pub postgres: Option<fn() -> Migrator>,
    /// The SQLite migrator, `None` when the crate was built without its
    /// `sqlite` feature.
    pub sqlite: Option<fn() -> Migrator>,
}

impl Migrations {
    /// The migrator for `backend`, if the crate was built with it.
    #[must_use]
    pub fn migrator(&self, backend: Backend) -> Option<Migrator> {
        match backend {
            Backend::Postgres => self.postgres.map(|m| m()),
            Backend::Sqlite => self.sqlite.map(|m| m()),
        }
    }
}

/// How long a PostgreSQL connection may sit idle in the pool before it is
/// pinged when it is taken out again.
#[cfg(feature = "postgres")]
const PING_IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// A connected database: PostgreSQL in production, SQLite embedded.
///
/// The workspace has this one handle: the CLI, the example service and the
/// test kit connect through it, and every crate's migrations run through
/// [`Database::migrate`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), spark_db::DbError> {
/// let dir = tempfile::tempdir().unwrap();
/// let url = format!("sqlite://{}", dir.path().join("spark.db").display());
/// let db = spark_db::Database::connect(&url, 4).await?;
/// assert_eq!(db.backend(), spark_db::Backend::Sqlite);
/// assert!(db.server_time_ms().await? > 0);
/// # Ok(()) }
/// ```
#[cfg(any(feature = "postgres", feature = "sqlite"))]
#[derive(Debug, Clone)]
pub enum Database {
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    /// SQLite.
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
impl Database {
    /// Connects to `postgres://…` or `sqlite://PATH` with a pool of up to
    /// `max_connections` (SQLite: at most 8; it has one writer anyway).
    ///
    /// SQLite files are created when missing, in WAL mode with a 10 s busy
    /// timeout; a PostgreSQL pool waits at most 10 s for a free connection
    /// ([`Database::connect_with_timeout`] sets another bound),
    /// and pings a connection it hands out only if it sat idle for a second
    /// or more (sqlx pings each one as it is returned anyway).
    ///
    /// # Errors
    ///
    /// An unsupported or malformed URL, a backend this build lacks, or a
    /// database that cannot be reached. Messages carry the URL with its
    /// password redacted.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Database, DbError> {
        Database::connect_with_timeout(url, max_connections, std::time::Duration::from_secs(10)).await
    }

    /// As [`Database::connect`], with a PostgreSQL pool that waits at most
    /// `acquire_timeout` for a free connection. A service answering requests
    /// sheds load with it: when the pool (or a pgBouncer in front of the
    /// database) is exhausted, a request fails after `acquire_timeout` with
    /// [`sqlx::Error::PoolTimedOut`] (a 503) instead of queueing for long.
    ///
    /// # Errors
    ///
    /// As [`Database::connect`].
    pub async fn connect_with_timeout(
        url: &str,
        max_connections: u32,
        acquire_timeout: std::time::Duration,
    ) -> Result<Database, DbError> {
        let max_connections = max_connections.max(1);
        match Backend::of_url(url)? {
            #[cfg(feature = "postgres")]
            Backend::Postgres => {
                let options = <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(url)
                    .map_err(|source| DbError::InvalidUrl { url: redact_url(url), source })?;
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(acquire_timeout)
                    // sqlx pings every connection as it goes back to the
                    // pool, and by default again as it comes out: a round
                    // trip on every request's path. Only a connection that
                    // sat idle for a while is pinged on the way out; one
                    // that was healthy a moment ago is trusted.
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for >= PING_IDLE_AFTER {
                                sqlx::Connection::ping(conn).await?;
                            }
                            Ok(true)
                        })
                    })
                    .connect_with(options)
                    .await
                    .map_err(|source| DbError::Connect { url: redact_url(url), source })?;
                Ok(Database::Postgres(pool))
            }
            #[cfg(feature = "sqlite")]
            Backend::Sqlite => {
                let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(url)
                    .map_err(|source| DbError::InvalidUrl { url: redact_url(url), source })?
                    .create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                    .busy_timeout(std::time::Duration::from_secs(10));
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(max_connections.min(8))
                    .connect_with(options)
                    .await
                    .map_err(|source| DbError::Connect { url: redact_url(url), source })?;
                Ok(Database::Sqlite(pool))
            }
            #[allow(unreachable_patterns, reason = "reachable when a backend feature is off")]
            backend => Err(DbError::BackendNotBuilt { backend }),
        }
    }

    /// Which engine this is.
    #[must_use]
    pub fn backend(&self) -> Backend {
        match self {
            #[cfg(feature = "postgres")]
            Database::Postgres(_) => Backend::Postgres,
            #[cfg(feature = "sqlite")]
            Database::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Applies each crate's migrations in order; returns how many versions
    /// each applied (0 when its schema was up to date).
    ///
    /// # Errors
    ///
    /// [`DbError::BackendNotBuilt`] when a crate lacks this backend, and
    /// [`DbError::Migrate`] naming the crate whose migration failed.
    pub async fn migrate(&self, crates: &[Migrations]) -> Result<Vec<(&'static str, usize)>, DbError> {
        let mut applied = Vec::with_capacity(crates.len());
        // One count per crate: what one crate ends with, the next starts from.
        let mut before = self.applied_versions().await?;
        for set in crates {
            let migrator = set
                .migrator(self.backend())
                .ok_or(DbError::MigrationsNotBuilt { name: set.name, backend: self.backend() })?;
            let result = match self {
                #[cfg(feature = "postgres")]
                Database::Postgres(pool) => migrator.run(pool).await,
                #[cfg(feature = "sqlite")]
                Database::Sqlite(pool) => migrator.run(pool).await,
            };
            result.map_err(|source| DbError::Migrate { name: set.name, source })?;
            let after = self.applied_versions().await?;
            tracing::info!(crate_name = set.name, applied = after.saturating_sub(before), "migrated");
            applied.push((set.name, after.saturating_sub(before)));
            before = after;
        }
        Ok(applied)
    }

    /// The database server's own time in Unix milliseconds (PostgreSQL's
    /// `clock_timestamp()`; for SQLite, which runs in this process, the
    /// host's). The reference for clock-skew checks and for leases that
    /// several hosts compare.
    ///
    /// # Errors
    ///
    /// When the query fails.
    pub async fn server_time_ms(&self) -> Result<i64, DbError> {
        let result = match self {
            #[cfg(feature = "postgres")]
            Database::Postgres(pool) => {
                sqlx::query_scalar::<_, i64>("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8")
                    .fetch_one(pool)
                    .await
            }
            #[cfg(feature = "sqlite")]
            Database::Sqlite(pool) => {
                sqlx::query_scalar::<_, i64>("SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)")
                    .fetch_one(pool)
                    .await
            }
        };
        result.map_err(DbError::Query)
    }

    /// Closes the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        match self {
            #[cfg(feature = "postgres")]
            Database::Postgres(pool) => pool.close().await,
            #[cfg(feature = "sqlite")]
            Database::Sqlite(pool) => pool.close().await,
        }
    }

    async fn applied_versions(&self) -> Result<usize, DbError> {
        // The table does not exist before the first migration: count 0 then.
        let sql = "SELECT COUNT(*) FROM _sqlx_migrations";
        let count: Result<i64, _> = match self {
            #[cfg(feature = "postgres")]
            Database::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
            #[cfg(feature = "sqlite")]
            Database::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        };
        Ok(count.map_or(0, |c| usize::try_from(c).unwrap_or(0)))
    }
}

/// The [`Migrations`] of the calling crate, whose `postgres` and `sqlite`
/// modules (each behind the feature of that name) expose `migrator()`.
///
/// The `cfg`s are evaluated in the calling crate, so a backend the crate was
/// built without is `None`.
///
/// ```ignore
/// pub const MIGRATIONS: spark_db::Migrations = spark_db::crate_migrations!("spark-outbox");
/// ```
#[macro_export]
macro_rules! crate_migrations {
    ($name:expr) => {
        $crate::Migrations {
            name: $name,
            #[cfg(feature = "postgres")]
            postgres: Some(postgres::migrator),
            #[cfg(not(feature = "postgres"))]
            postgres: None,
            #[cfg(feature = "sqlite")]
            sqlite: Some(sqlite::migrator),
            #[cfg(not(feature = "sqlite"))]
            sqlite: None,
        }
    };
}
