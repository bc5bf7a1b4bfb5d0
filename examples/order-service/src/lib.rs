//! An order-entry service on every Spark guarantee.
//!
//! Every order endpoint authenticates its caller ([`auth`]: bearer API keys
//! from a clients file). `POST /v1/orders` is idempotent (`Idempotency-Key`,
//! scoped by the authenticated client), validated against exchange rules (BIST tick table, lot
//! step, minimum notional), and in one transaction claims the key, inserts
//! the order, applies the fill to positions, enqueues `order.accepted` and
//! stores the response. `GET /v1/orders/{id}`, `GET /v1/positions`,
//! `GET /metrics` (Prometheus), `GET /healthz`, `POST /csp-report`; security
//! headers on every response, and every error is problem+json.

pub mod auth;
mod backend;
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

pub use crate::auth::{Auth, Clients};
pub use crate::instruments::Instruments;
pub use crate::orders::order_fingerprint;
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
    auth: Auth,
    reports: Arc<security::ReportLimiter>,
}

impl AppState {
    /// State over a migrated database, authenticating callers with `auth`.
    #[must_use]
    pub fn new(db: Database, instruments: Instruments, auth: Auth) -> AppState {
        // The recorder first: counters registered before it would be lost.
        let metrics = telemetry::handle();
        telemetry::register();
        AppState {
            db,
            instruments: Arc::new(instruments),
            idempotency: spark_idempotency::Config::default(),
            metrics,
            auth,
            reports: Arc::new(security::ReportLimiter::new(spark_db::system_clock(), security::MAX_SOURCES)),
        }
    }

    /// Uses `clock` for the CSP report rate limit (tests drive a
    /// [`spark_db::ManualClock`] instead of sleeping).
    #[must_use]
    pub fn with_clock(mut self, clock: spark_db::SharedClock) -> AppState {
        self.reports = Arc::new(security::ReportLimiter::new(clock, security::MAX_SOURCES));
        self
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

/// The router. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()` so the CSP report
/// rate limit is per source address (without it, all senders share one
/// bucket).
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/orders", post(orders::create))
        .route("/v1/orders/{id}", get(orders::get))
        .route("/v1/positions", get(orders::positions))
        .route("/healthz", get(orders::health))
        .route("/metrics", get(telemetry::render))
        .route("/csp-report", post(security::report))
        .fallback(orders::not_found)
        .layer(axum::middleware::from_fn(telemetry::track))
        .layer(axum::middleware::map_response(problem::errors_as_problems))
        .layer(axum::middleware::map_response(security::headers))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}
