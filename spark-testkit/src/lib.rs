//! Test helpers shared by the Spark crates.
//!
//! - [`postgres`] gives each test a fresh PostgreSQL database, created from
//!   `DATABASE_URL` and dropped afterwards, or `None` with one visible skip
//!   line when `DATABASE_URL` is not set.
//! - [`sqlite`] gives each test a fresh SQLite file in a temporary directory.
//! - Both hand out the workspace's [`spark_db::Database`] through
//!   `database()`, beside the raw pool.
//! - [`cluster::PgCluster`] starts a private PostgreSQL server for one test,
//!   with the `postgresql.conf` settings the test asks for, and
//!   [`pgbouncer::Pgbouncer`] a real pgBouncer in front of a server; both skip
//!   when the binaries are not installed.
//! - [`prometheus::Prometheus`] and [`prometheus::Alertmanager`] start the
//!   real Prometheus and Alertmanager with the configuration and rules a
//!   test writes, on free loopback ports; they skip when not installed.
//! - With `SPARK_REQUIRE_SERVICES=1` (as in CI) a missing service fails the
//!   test instead of skipping it.

pub mod cluster;
pub mod pgbouncer;
pub mod prometheus;
mod server;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool, SqlitePool};

/// Whether CI demands every service-backed test to run.
#[must_use]
pub fn services_required() -> bool {
    std::env::var("SPARK_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// The URL in `var`, or `None` after printing one skip line for it (once per
/// process). Panics when the service is required.
#[must_use]
pub fn service_url(var: &str, what: &str) -> Option<String> {
    if let Some(url) = std::env::var(var).ok().filter(|u| !u.is_empty()) {
        return Some(url);
    }
    skip(what, &format!("{var} (not set)"))
}

/// Whether the program `name` (e.g. `chromium`) is on `PATH`; when it is
/// not, prints one skip line for `what` tests and returns false (panics
/// instead under `SPARK_REQUIRE_SERVICES=1`).
#[must_use]
pub fn binary_available(name: &str, what: &str) -> bool {
    server::find_program([], name).is_some() || skip::<()>(what, &format!("{name} (not on PATH)")).is_some()
}

/// Skips a service-backed test: prints `skipped: {what} tests need {need}`
/// once per process, and returns `None`. Panics instead when the service is
/// required.
pub(crate) fn skip<T>(what: &str, need: &str) -> Option<T> {
    assert!(!services_required(), "{what} tests need {need} but SPARK_REQUIRE_SERVICES=1: they cannot be skipped");
    static SAID: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let line = format!("skipped: {what} tests need {need}");
    if SAID.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(line.clone()) {
        // Straight to the process's stderr: the test harness captures
        // `eprintln!`, and a skip must be visible.
        let _ = writeln!(std::io::stderr(), "{line}");
    }
    None
}

/// A fresh PostgreSQL database for one test, dropped when this is dropped.
#[derive(Debug)]
pub struct PgTestDb {
    /// A pool on the fresh database.
    pub pool: PgPool,
    /// Its URL, for child processes such as the `spark` binary.
    pub url: String,
    name: String,
    admin: PgConnectOptions,
}

/// Creates a fresh database from `DATABASE_URL`, or skips (see
/// [`service_url`]).
///
/// # Panics
///
/// When `DATABASE_URL` is set but the server cannot be reached: a configured
/// service that fails is a failure, never a skip.
pub async fn postgres() -> Option<PgTestDb> {
    let url = service_url("DATABASE_URL", "PostgreSQL")?;
    let admin = PgConnectOptions::from_str(&url).expect("DATABASE_URL is not a PostgreSQL URL");
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let name = format!("spark_test_{}_{}_{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed), nanos);
    let mut conn = admin.connect().await.unwrap_or_else(|e| panic!("cannot connect to DATABASE_URL: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    conn.close().await.ok();
    let options = admin.clone().database(&name);
    let pool = PgPoolOptions::new()
        .max_connections(80)
        .connect_with(options.clone())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to test database {name}: {e}"));
    let url = options.to_url_lossy().to_string();
    Some(PgTestDb { pool, url, name, admin })
}

impl PgTestDb {
    /// The workspace's database handle on this test database.
    #[must_use]
    pub fn database(&self) -> spark_db::Database {
        spark_db::Database::Postgres(self.pool.clone())
    }
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime may be single-threaded,
        // so a separate thread with its own runtime drops the database;
        // FORCE ends the pool's connections server-side.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async move {
                let mut conn = admin.connect().await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            let _ = writeln!(std::io::stderr(), "warning: could not drop test database {}", self.name);
        }
    }
}

/// A fresh SQLite database file for one test, removed with its directory.
#[derive(Debug)]
pub struct SqliteTestDb {
    /// A pool on the file, in WAL mode.
    pub pool: SqlitePool,
    /// Its URL, for child processes.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl SqliteTestDb {
    /// The workspace's database handle on this test database.
    #[must_use]
    pub fn database(&self) -> spark_db::Database {
        spark_db::Database::Sqlite(self.pool.clone())
    }
}

/// Creates a fresh SQLite database in a temporary directory.
///
/// # Panics
///
/// When the temporary directory or the database cannot be created.
pub async fn sqlite() -> SqliteTestDb {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("spark.db");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(std::time::Duration::from_secs(10));
    let pool =
        SqlitePoolOptions::new().max_connections(8).connect_with(options).await.expect("open SQLite test database");
    let url = format!("sqlite://{}", path.display());
    SqliteTestDb { pool, url, _dir: dir }
}
