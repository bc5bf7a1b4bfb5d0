//! The order service as the provider under verification.
//!
//! [`Provider::start`] runs the service's own router ([`order_service::app`])
//! on `127.0.0.1` over a fresh database, behind a clients file with one
//! client, [`CLIENT_ID`], whose token is [`TOKEN`] (the example the pact
//! carries in `Authorization`) and who may trade [`ACCOUNT`].
//!
//! Provider states ([`Provider::given`]) are set up through the service's
//! own `POST /v1/orders`, sent to the unwrapped router in process: an order
//! the service accepted has its key, its stored response, its event and its
//! position exactly as the service writes them, and a replay then answers
//! with what the service stored, not with what a test inserted by hand.
//! Between interactions [`Provider::reset`] empties the tables an order
//! writes, directly in the database, so every interaction starts from
//! nothing and the order of interactions does not matter. No test-only
//! endpoint is added to the service.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use order_service::{AppState, Auth, Clients, Database, Instruments};
use serde_json::Value;
use tower::ServiceExt;

/// The client the contract's requests authenticate as.
pub const CLIENT_ID: &str = "trading-ui";
/// The bearer token of [`CLIENT_ID`]; the pact carries it as its example
/// `Authorization` value. Not a secret: it opens a throwaway database.
pub const TOKEN: &str = "trading-ui-contract-token";
/// The account [`CLIENT_ID`] may trade.
pub const ACCOUNT: &str = "acc-1";

/// The provider state of an accepted order. Its parameters are the order
/// (`account_id`, `symbol`, `side`, `quantity`, `price`) and the
/// `idempotency_key` it was placed under; setting it up yields `order_id`,
/// which a request path can use (`/v1/orders/${order_id}`).
pub const ORDER_ACCEPTED: &str = "an order was accepted";

/// The tables an accepted order writes, children first.
const ORDER_TABLES: [&str; 5] =
    ["spark_position_fills", "spark_positions", "order_service_orders", "spark_outbox", "spark_idempotency_keys"];

/// Which database the provider runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A fresh SQLite file (always available).
    Sqlite,
    /// A fresh PostgreSQL database from `DATABASE_URL` (skipped, with one
    /// line, when it is unset; a failure under `SPARK_REQUIRE_SERVICES=1`).
    Postgres,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        })
    }
}

/// Holds the test database for as long as the provider runs.
#[derive(Debug)]
enum Guard {
    Sqlite(#[allow(dead_code, reason = "held for its Drop")] spark_testkit::SqliteTestDb),
    Postgres(#[allow(dead_code, reason = "held for its Drop")] Box<spark_testkit::PgTestDb>),
}

/// The order service on a loopback port.
pub struct Provider {
    state: AppState,
    app: Router,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
    backend: Backend,
    _guard: Guard,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").field("addr", &self.addr).field("backend", &self.backend).finish_non_exhaustive()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The clients file: [`CLIENT_ID`] with [`TOKEN`], allowed on [`ACCOUNT`].
fn clients() -> anyhow::Result<Clients> {
    Clients::from_toml(&format!(
        "[[client]]\nid = \"{CLIENT_ID}\"\ntoken_sha256 = \"{}\"\naccounts = [\"{ACCOUNT}\"]\n",
        order_service::auth::token_sha256(TOKEN)
    ))
}

impl Provider {
    /// Starts the service on a fresh database of `backend`, serving
    /// `wrap(app)` on `127.0.0.1` (pass `|app| app` for the service as it
    /// is; a test wraps it in a layer to change what clients see). Provider
    /// states always go to the unwrapped router. `None` when `backend` is
    /// PostgreSQL and `DATABASE_URL` is unset.
    ///
    /// # Errors
    ///
    /// When the database cannot be opened or migrated, or the port bound.
    pub async fn start(backend: Backend, wrap: impl FnOnce(Router) -> Router) -> anyhow::Result<Option<Provider>> {
        let (db, guard) = match backend {
            Backend::Sqlite => {
                let t = spark_testkit::sqlite().await;
                (Database::connect(&t.url, 8).await?, Guard::Sqlite(t))
            }
            Backend::Postgres => {
                let Some(t) = spark_testkit::postgres().await else { return Ok(None) };
                (Database::connect(&t.url, 16).await?, Guard::Postgres(Box::new(t)))
            }
        };
        order_service::migrate(&db).await?;
        let state = AppState::new(db, Instruments::default_set(), Auth::bearer(clients()?));
        let app = order_service::app(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let served = wrap(app.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, served).await {
                eprintln!("order service on {addr} stopped: {e}");
            }
        });
        Ok(Some(Provider { state, app, addr, server, backend, _guard: guard }))
    }

    /// `http://127.0.0.1:<port>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port the service listens on.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The database it runs on.
    #[must_use]
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The service's outbox, for a relay.
    #[must_use]
    pub fn outbox(&self) -> Arc<dyn spark_outbox::OutboxStore> {
        self.state.outbox()
    }

    /// Sets up the provider state `name` with `params` and returns the
    /// values it makes (for the verifier to put into requests). The empty
    /// name (an interaction without a state) sets up nothing.
    ///
    /// # Errors
    ///
    /// An unknown state, a missing parameter, or a service that did not
    /// accept the order.
    pub async fn given(&self, name: &str, params: &HashMap<String, Value>) -> anyhow::Result<HashMap<String, Value>> {
        match name {
            "" => Ok(HashMap::new()),
            ORDER_ACCEPTED => {
                let param = |key: &str| {
                    params
                        .get(key)
                        .and_then(Value::as_str)
                        .with_context(|| format!("provider state {name:?} needs the string parameter {key:?}"))
                };
                let key = param("idempotency_key")?;
                let order = serde_json::json!({
                    "account_id": param("account_id")?,
                    "symbol": param("symbol")?,
                    "side": param("side")?,
                    "quantity": param("quantity")?,
                    "price": param("price")?,
                });
                let accepted = self.place(key, &order).await?;
                let id = accepted.get("order_id").cloned().context("the accepted order has no order_id")?;
                Ok(HashMap::from([("order_id".to_owned(), id)]))
            }
            other => bail!("unknown provider state {other:?}; this provider knows {ORDER_ACCEPTED:?}"),
        }
    }

    /// Places `order` under `key` as [`CLIENT_ID`] through the service's
    /// own `POST /v1/orders` (in process, on the unwrapped router), and
    /// returns the accepted order.
    ///
    /// # Errors
    ///
    /// When the service does not answer 201.
    pub async fn place(&self, key: &str, order: &Value) -> anyhow::Result<Value> {
        let request = Request::post("/v1/orders")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("idempotency-key", key)
            .body(Body::from(order.to_string()))?;
        let response = self.app.clone().oneshot(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if status != StatusCode::CREATED {
            bail!("POST /v1/orders under key {key:?} answered {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// Empties every table an order writes (orders, idempotency keys,
    /// outbox events, positions and their fills).
    ///
    /// # Errors
    ///
    /// When the database refuses.
    pub async fn reset(&self) -> anyhow::Result<()> {
        for table in ORDER_TABLES {
            let sql = sqlx::AssertSqlSafe(format!("DELETE FROM {table}"));
            match self.state.database() {
                Database::Postgres(p) => sqlx::query(sql).execute(p).await.map(drop),
                Database::Sqlite(p) => sqlx::query(sql).execute(p).await.map(drop),
            }
            .with_context(|| format!("cannot empty {table}"))?;
        }
        Ok(())
    }

    /// Rows in every table an order writes: fills, positions, orders,
    /// events, keys (for tests of [`reset`](Provider::reset)).
    ///
    /// # Errors
    ///
    /// When the database refuses.
    pub async fn rows(&self) -> anyhow::Result<Vec<i64>> {
        let mut counts = Vec::with_capacity(ORDER_TABLES.len());
        for table in ORDER_TABLES {
            let sql = sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}"));
            counts.push(match self.state.database() {
                Database::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await?,
                Database::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await?,
            });
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order_params(key: &str) -> HashMap<String, Value> {
        serde_json::from_value(serde_json::json!({
            "idempotency_key": key, "account_id": ACCOUNT, "symbol": "THYAO",
            "side": "buy", "quantity": "100", "price": "101.30",
        }))
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_accepted_order_is_written_by_the_service_and_reset_empties_it() {
        let p = Provider::start(Backend::Sqlite, |app| app).await.unwrap().unwrap();
        let made = p.given(ORDER_ACCEPTED, &order_params("k-1")).await.unwrap();
        let id = made["order_id"].as_str().unwrap();
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
        // One fill, one position, one order, one event, one key.
        assert_eq!(p.rows().await.unwrap(), [1, 1, 1, 1, 1]);
        // The same state again replays: nothing new is written.
        let again = p.given(ORDER_ACCEPTED, &order_params("k-1")).await.unwrap();
        assert_eq!(again["order_id"], made["order_id"]);
        assert_eq!(p.rows().await.unwrap(), [1, 1, 1, 1, 1]);
        p.reset().await.unwrap();
        assert_eq!(p.rows().await.unwrap(), [0; 5]);
        // And the empty state sets up nothing.
        assert!(p.given("", &HashMap::new()).await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_states_and_missing_parameters_are_errors() {
        let p = Provider::start(Backend::Sqlite, |app| app).await.unwrap().unwrap();
        let err = p.given("the moon is full", &HashMap::new()).await.unwrap_err().to_string();
        assert!(err.contains("unknown provider state") && err.contains(ORDER_ACCEPTED), "{err}");
        let mut params = order_params("k-2");
        params.remove("price");
        let err = p.given(ORDER_ACCEPTED, &params).await.unwrap_err().to_string();
        assert!(err.contains("\"price\""), "{err}");
        // An order the service refuses is an error that says why.
        let mut params = order_params("k-3");
        params.insert("price".into(), "101.37".into());
        let err = p.given(ORDER_ACCEPTED, &params).await.unwrap_err().to_string();
        assert!(err.contains("422") && err.contains("order-rules"), "{err}");
        assert_eq!(p.rows().await.unwrap(), [0; 5]);
    }
}
