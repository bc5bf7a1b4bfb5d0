//! The metrics a canary is judged on, scraped from the `/metrics` of the
//! real binary: a process of its own, so its counters start at zero and no
//! other test adds to them.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

/// The order-service binary on a SQLite database of its own.
struct Running {
    child: Child,
    base: String,
    token: String,
    client: reqwest::Client,
    db: spark_testkit::SqliteTestDb,
    _clients: tempfile::TempDir,
}

impl Running {
    /// Starts the service on `db` (which a test may have prepared).
    fn start(db: spark_testkit::SqliteTestDb) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let token = order_service::auth::new_token();
        let clients = super::binary::write_clients(dir.path(), &token);
        let mut child = Command::new(env!("CARGO_BIN_EXE_order-service"))
            .args(["--listen", "127.0.0.1:0", "--database-url", &db.url, "--clients"])
            .arg(&clients)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (base, _) = super::binary::listening(&mut child);
        let _ = rustls::crypto::ring::default_provider().install_default();
        Running { child, base, token, client: reqwest::Client::new(), db, _clients: dir }
    }

    async fn fresh() -> Running {
        Running::start(spark_testkit::sqlite().await)
    }

    async fn scrape(&self) -> String {
        let r = self.client.get(format!("{}/metrics", self.base)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// The value of the unlabelled series `name` in the latest scrape.
    async fn value(&self, name: &str) -> f64 {
        let metrics = self.scrape().await;
        value(&metrics, name).unwrap_or_else(|| panic!("/metrics has no {name}:\n{metrics}"))
    }

    async fn order(&self, key: &str, price: &str) -> (u16, serde_json::Value) {
        let body = json!({ "account_id": "a", "symbol": "GARAN", "side": "buy", "quantity": "1", "price": price });
        self.post(key, &body.to_string()).await
    }

    async fn post(&self, key: &str, body: &str) -> (u16, serde_json::Value) {
        let r = self
            .client
            .post(format!("{}/v1/orders", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .header("idempotency-key", key)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, serde_json::from_str(&r.text().await.unwrap()).unwrap())
    }

    async fn get_order(&self, id: &str) -> (u16, serde_json::Value) {
        let r = self
            .client
            .get(format!("{}/v1/orders/{id}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, serde_json::from_str(&r.text().await.unwrap()).unwrap())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn value(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A price the BIST table allows (a multiple of the 2.50 tick) with more
/// significant digits than a float keeps when SQLite prints it (15).
const WIDE_PRICE: &str = "1234567890123457.50";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_scrape_exports_the_canary_counters_at_zero() {
    let s = Running::fresh().await;
    let metrics = s.scrape().await;
    for line in ["decimal_precision_errors_total 0", "risk_blocks_total 0"] {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in the first scrape:\n{metrics}");
    }
    // The idempotency gauges are read at scrape time, so they are there
    // before any order.
    assert_eq!(value(&metrics, "spark_idempotency_live_keys"), Some(0.0), "{metrics}");
    assert_eq!(value(&metrics, "spark_idempotency_expired_keys"), Some(0.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_counted_at_scrape_time() {
    let s = Running::fresh().await;
    // Read at scrape time, so there before any order.
    assert_eq!(s.value("spark_idempotency_live_keys").await, 0.0);
    assert_eq!(s.value("spark_idempotency_expired_keys").await, 0.0);
    let (status, body) = s.order("key-1", "101.30").await;
    assert_eq!(status, 201, "{body}");
    assert!(s.value("spark_idempotency_live_keys").await >= 1.0);
    assert_eq!(s.value("spark_idempotency_expired_keys").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_cpu_time_and_cpu_limit_are_exported() {
    let s = Running::fresh().await;
    // CPU time moves in clock ticks (10 ms at 100 Hz): work until it shows.
    let start = Instant::now();
    let mut n = 0;
    while s.value("process_cpu_seconds_total").await <= 0.0 {
        let (status, body) = s.order(&format!("cpu-{n}"), "101.30").await;
        assert_eq!(status, 201, "{body}");
        n += 1;
        assert!(start.elapsed() < Duration::from_secs(20), "no CPU time after {n} orders");
    }
    let limit = s.value("process_cpu_limit_cores").await;
    assert!(limit > 0.0, "{limit}");
    // A cgroup v2 quota may be a fraction of a core; without one the limit
    // is the machine's parallelism.
    let quota = std::fs::read_to_string("/sys/fs/cgroup/cpu.max").unwrap_or_default();
    if !quota.chars().next().is_some_and(|c| c.is_ascii_digit()) {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(limit, f64::from(u32::try_from(cores).unwrap()));
        assert!(limit >= 1.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_the_rules_refuse_is_one_risk_block() {
    let s = Running::fresh().await;
    assert_eq!(s.value("risk_blocks_total").await, 0.0);
    // Off the 0.10 tick of the band from 100.
    let (status, body) = s.order("risk-1", "101.37").await;
    assert_eq!((status, body["type"].as_str()), (422, Some("urn:spark:problem:order-rules")), "{body}");
    assert_eq!(s.value("risk_blocks_total").await, 1.0);
    // Client mistakes are not risk blocks: a symbol not traded here, a
    // number where a decimal string belongs.
    let unknown = json!({ "account_id": "a", "symbol": "NOPE", "side": "buy", "quantity": "1", "price": "1" });
    assert_eq!(s.post("risk-2", &unknown.to_string()).await.0, 422);
    let number = r#"{"account_id":"a","symbol":"GARAN","side":"buy","quantity":"1","price":101.3}"#;
    assert_eq!(s.post("risk-3", number).await.0, 422);
    assert_eq!(s.value("risk_blocks_total").await, 1.0);
    assert_eq!(s.value("decimal_precision_errors_total").await, 0.0, "refused input is no precision error");
}

/// An order so large that its position overflows 28 digits is the client's
/// (a 422, nothing written), not a precision error of the release: before,
/// it was a 500 and moved the canary's counter, so any client could roll a
/// good release back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_too_large_to_hold_is_refused_without_a_precision_error() {
    let s = Running::fresh().await;
    let huge = json!({
        "account_id": "a", "symbol": "GARAN", "side": "buy",
        "quantity": "1000000", "price": "10000000000000000000000000",
    });
    let (status, body) = s.post("huge-1", &huge.to_string()).await;
    assert_eq!((status, body["type"].as_str()), (422, Some("urn:spark:problem:amount-out-of-range")), "{body}");
    assert_eq!(s.value("decimal_precision_errors_total").await, 0.0);
    // Nothing was kept: a normal order still goes through.
    assert_eq!(s.order("after-huge", "101.30").await.0, 201);
}

/// A release whose orders table holds prices in a float column (here made
/// before the service's migration, which then leaves it be) stores a wide
/// price rounded: the order is refused with a 500, nothing is written, and
/// the counter moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_that_rounds_the_price_is_a_precision_error() {
    let db = spark_testkit::sqlite().await;
    sqlx::query(
        "CREATE TABLE order_service_orders (
            order_id TEXT PRIMARY KEY, client_id TEXT NOT NULL, account_id TEXT NOT NULL,
            symbol TEXT NOT NULL, side TEXT NOT NULL, quantity REAL NOT NULL, price REAL NOT NULL,
            status TEXT NOT NULL, created_at_ms INTEGER NOT NULL)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let s = Running::start(db);
    assert_eq!(s.value("decimal_precision_errors_total").await, 0.0);

    // A price a float holds to the value is no error, whatever its scale.
    let (status, body) = s.order("exact", "101.30").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(s.value("decimal_precision_errors_total").await, 0.0);

    let (status, body) = s.order("wide", WIDE_PRICE).await;
    assert_eq!((status, body["type"].as_str()), (500, Some("urn:spark:problem:internal")), "{body}");
    assert_eq!(s.value("decimal_precision_errors_total").await, 1.0);
    let orders: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM order_service_orders").fetch_one(&s.db.pool).await.unwrap();
    assert_eq!(orders, 1, "the rounded order was rolled back");
}

/// A stored price that went through a float (an edit, a migration) no
/// longer reads back as a decimal: `GET` answers 500 instead of sending it,
/// and the counter moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_price_that_went_through_a_float_is_a_precision_error() {
    let s = Running::fresh().await;
    let (status, body) = s.order("wide", WIDE_PRICE).await;
    assert_eq!(status, 201, "{body}");
    let id = body["order_id"].as_str().unwrap().to_owned();
    assert_eq!(s.get_order(&id).await.1["price"], WIDE_PRICE);
    assert_eq!(s.value("decimal_precision_errors_total").await, 0.0);

    sqlx::query("UPDATE order_service_orders SET price = CAST(price AS REAL) WHERE order_id = ?1")
        .bind(&id)
        .execute(&s.db.pool)
        .await
        .unwrap();
    let (status, body) = s.get_order(&id).await;
    assert_eq!((status, body["type"].as_str()), (500, Some("urn:spark:problem:internal")), "{body}");
    assert_eq!(s.value("decimal_precision_errors_total").await, 1.0);
}
