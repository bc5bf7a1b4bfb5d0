//! An order-entry service on every Spark guarantee.
//!
//! `POST /v1/orders` is idempotent (`Idempotency-Key`, scoped by
//! `X-Client-Id`), validated against exchange rules (BIST tick table, lot
//! step, minimum notional), and in one transaction claims the key, inserts
//! the order, applies the fill to positions, enqueues `order.accepted` and
//! stores the response. `GET /v1/orders/{id}`, `GET /v1/positions`,
//! `GET /metrics` (Prometheus), `GET /healthz`, `POST /csp-report`; security
//! headers on every response.

pub mod instruments;
mod orders;
pub mod problem;
mod security;
pub mod telemetry;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};

pub use crate::instruments::Instruments;
pub use crate::security::CSP;

/// The service's database.
#[derive(Debug, Clone)]
pub enum Database {
    /// Production.
    Postgres(PgPool),
    /// The embedded default.
    Sqlite(SqlitePool),
}

impl Database {
    /// Connects to `postgres://…` or `sqlite://PATH` (created if missing).
    ///
    /// # Errors
    ///
    /// An unsupported URL or an unreachable database.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Database> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).context("invalid PostgreSQL URL")?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options)
                .await
                .context("cannot connect to PostgreSQL")?;
            Ok(Database::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .context("invalid SQLite URL")?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10));
            let pool = SqlitePoolOptions::new().max_connections(max_connections.min(8)).connect_with(options).await?;
            Ok(Database::Sqlite(pool))
        } else {
            anyhow::bail!("unsupported database URL: use postgres://… or sqlite://PATH")
        }
    }

    /// Runs Spark's migrations and the service's own.
    ///
    /// # Errors
    ///
    /// When a migration fails.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Database::Postgres(pool) => {
                spark_idempotency::postgres::migrator().run(pool).await?;
                spark_positions::postgres::migrator().run(pool).await?;
                spark_outbox::postgres::migrator().run(pool).await?;
                let mut own = sqlx::migrate!("./migrations/postgres");
                own.set_ignore_missing(true);
                own.run(pool).await?;
            }
            Database::Sqlite(pool) => {
                spark_idempotency::sqlite::migrator().run(pool).await?;
                spark_positions::sqlite::migrator().run(pool).await?;
                spark_outbox::sqlite::migrator().run(pool).await?;
                let mut own = sqlx::migrate!("./migrations/sqlite");
                own.set_ignore_missing(true);
                own.run(pool).await?;
            }
        }
        Ok(())
    }
}

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    db: Database,
    instruments: Arc<Instruments>,
    idempotency: spark_idempotency::Config,
    metrics: PrometheusHandle,
}

impl AppState {
    /// State over a migrated database.
    #[must_use]
    pub fn new(db: Database, instruments: Instruments) -> AppState {
        AppState {
            db,
            instruments: Arc::new(instruments),
            idempotency: spark_idempotency::Config::default(),
            metrics: telemetry::handle(),
        }
    }

    /// The outbox, for relays and stats.
    #[must_use]
    pub fn outbox(&self) -> Arc<dyn spark_outbox::OutboxStore> {
        match &self.db {
            Database::Postgres(p) => Arc::new(spark_outbox::PgOutbox::new(p.clone())),
            Database::Sqlite(p) => Arc::new(spark_outbox::SqliteOutbox::new(p.clone())),
        }
    }

    /// The database.
    #[must_use]
    pub fn database(&self) -> &Database {
        &self.db
    }
}

/// The router.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/orders", post(orders::create))
        .route("/v1/orders/{id}", get(orders::get))
        .route("/v1/positions", get(orders::positions))
        .route("/healthz", get(orders::health))
        .route("/metrics", get(telemetry::render))
        .route("/csp-report", post(security::report).layer(DefaultBodyLimit::max(security::MAX_REPORT)))
        .fallback(orders::not_found)
        .layer(axum::middleware::from_fn(telemetry::track))
        .layer(axum::middleware::map_response(security::headers))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}
