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

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;

pub use crate::instruments::Instruments;
pub use crate::security::CSP;

pub use spark_db::Database;

/// The service's own tables (orders), for [`spark_db::Database::migrate`].
pub const MIGRATIONS: spark_db::Migrations =
    spark_db::Migrations { name: "order-service", postgres: Some(postgres_migrator), sqlite: Some(sqlite_migrator) };

fn postgres_migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("./migrations/postgres");
    m.set_ignore_missing(true);
    m
}

fn sqlite_migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("./migrations/sqlite");
    m.set_ignore_missing(true);
    m
}

/// Spark's migrations and the service's own, in order.
pub const ALL_MIGRATIONS: [spark_db::Migrations; 4] =
    [spark_idempotency::MIGRATIONS, spark_positions::MIGRATIONS, spark_outbox::MIGRATIONS, MIGRATIONS];

/// Runs Spark's migrations and the service's own.
///
/// # Errors
///
/// When a migration fails; the error names the crate.
pub async fn migrate(db: &Database) -> Result<(), spark_db::DbError> {
    db.migrate(&ALL_MIGRATIONS).await.map(drop)
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
