//! The order service over HTTP (the full axum stack, in process), against
//! SQLite and PostgreSQL; and the binary itself.

mod binary;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use order_service::{AppState, Database, Instruments, app};
use serde_json::{Value, json};
use tower::ServiceExt;

/// The app on one backend, with its database kept alive.
#[allow(dead_code, reason = "the guards are held for their Drop")]
struct Service {
    router: Router,
    db: Database,
    sqlite: Option<spark_testkit::SqliteTestDb>,
    pg: Option<spark_testkit::PgTestDb>,
}

async fn sqlite() -> Service {
    let t = spark_testkit::sqlite().await;
    let db = Database::connect(&t.url, 8).await.unwrap();
    order_service::migrate(&db).await.unwrap();
    Service { router: app(AppState::new(db.clone(), Instruments::default_set())), db, sqlite: Some(t), pg: None }
}

async fn postgres() -> Option<Service> {
    let t = spark_testkit::postgres().await?;
    let db = Database::connect(&t.url, 32).await.unwrap();
    order_service::migrate(&db).await.unwrap();
    Some(Service { router: app(AppState::new(db.clone(), Instruments::default_set())), db, sqlite: None, pg: Some(t) })
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

impl Service {
    async fn send(&self, req: Request<Body>) -> Reply {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let body = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
        Reply { status: parts.status, headers: parts.headers, body }
    }

    async fn order(&self, client: Option<&str>, key: Option<&str>, body: &str) -> Reply {
        let mut r = Request::post("/v1/orders").header("content-type", "application/json");
        if let Some(c) = client {
            r = r.header("x-client-id", c);
        }
        if let Some(k) = key {
            r = r.header("idempotency-key", k);
        }
        self.send(r.body(Body::from(body.to_owned())).unwrap()).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Request::get(path).body(Body::empty()).unwrap()).await
    }

    async fn count(&self, sql: &'static str) -> i64 {
        match &self.db {
            Database::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
            Database::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        }
    }
}

fn body(account: &str, qty: &str, price: &str) -> String {
    json!({ "account_id": account, "symbol": "THYAO", "side": "buy", "quantity": qty, "price": price }).to_string()
}

fn assert_security_headers(r: &Reply) {
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'")
            && csp.contains("frame-ancestors 'none'")
            && csp.contains("report-uri /csp-report")
    );
    assert!(csp.contains("report-to") && !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
    assert_eq!(r.headers["cross-origin-opener-policy"], "same-origin");
    assert_eq!(r.headers["cross-origin-embedder-policy"], "require-corp");
    assert_eq!(r.headers["cross-origin-resource-policy"], "same-origin");
    assert!(r.headers["strict-transport-security"].to_str().unwrap().starts_with("max-age="));
    assert_eq!(r.headers["x-content-type-options"], "nosniff");
    assert_eq!(r.headers["referrer-policy"], "no-referrer");
}

fn assert_problem(r: &Reply, status: u16, kind: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert_eq!(r.json()["type"], format!("urn:spark:problem:{kind}"), "{}", r.body);
    assert_security_headers(r);
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(s) = super::postgres().await else { return };
                    super::$name(s).await;
                }
            )*
        }
    };
}

on_both!(
    order_lifecycle_and_every_refusal,
    in_flight_is_409,
    hundred_parallel_requests_same_key_make_one_order,
    hundred_parallel_orders_make_one_position,
    security_headers_csp_reports_metrics_health,
);

async fn order_lifecycle_and_every_refusal(s: Service) {
    let valid = body("acc-1", "100", "101.30");
    assert_problem(&s.order(None, Some("k1"), &valid).await, 401, "unauthenticated");
    assert_problem(&s.order(Some("c1"), None, &valid).await, 400, "idempotency-key-missing");
    assert_problem(&s.order(Some("c1"), Some("bad key"), &valid).await, 400, "idempotency-key-invalid");
    let number = r#"{"account_id":"acc-1","symbol":"THYAO","side":"buy","quantity":"100","price":101.3}"#;
    let r = s.order(Some("c1"), Some("k0"), number).await;
    assert_problem(&r, 422, "invalid-order");
    assert!(r.json()["detail"].as_str().unwrap().contains("JSON strings"), "{}", r.body);
    assert_problem(&s.order(Some("c1"), Some("k0"), "{not json").await, 400, "invalid-order");
    let r = s.order(Some("c1"), Some("k0"), &body("acc-1", "100", "101.37")).await;
    assert_problem(&r, 422, "order-rules");
    assert_eq!(r.json()["violations"][0]["rule"], "price_off_tick");
    assert_eq!(r.json()["violations"][0]["below"], "101.30");
    assert_eq!(r.json()["violations"][0]["above"], "101.40");
    let r = s.order(Some("c1"), Some("k0"), &body("acc-1", "10.5", "101.30")).await;
    assert_eq!(r.json()["violations"][0]["rule"], "quantity_off_step");
    let unknown =
        json!({ "account_id": "a", "symbol": "NOPE", "side": "buy", "quantity": "1", "price": "1" }).to_string();
    assert_problem(&s.order(Some("c1"), Some("k0"), &unknown).await, 422, "unknown-symbol");
    assert_eq!(s.count("SELECT COUNT(*) FROM order_service_orders").await, 0);

    let first = s.order(Some("c1"), Some("k1"), &valid).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_security_headers(&first);
    let order = first.json();
    assert_eq!(
        (order["status"].as_str(), order["price"].as_str(), order["quantity"].as_str()),
        (Some("accepted"), Some("101.30"), Some("100"))
    );
    assert!(order["created_at"].as_str().unwrap().ends_with('Z'));
    let id = order["order_id"].as_str().unwrap();
    assert_eq!(first.headers["location"], format!("/v1/orders/{id}"));
    assert!(first.headers.get("idempotent-replayed").is_none());

    let again = s.order(Some("c1"), Some("k1"), &valid).await;
    assert_eq!((again.status, &again.body), (first.status, &first.body));
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_problem(
        &s.order(Some("c1"), Some("k1"), &body("acc-1", "200", "101.30")).await,
        422,
        "idempotency-key-reused",
    );
    // The same key from another client is another order.
    assert_eq!(s.order(Some("c2"), Some("k1"), &valid).await.status, 201);

    let got = s.get(&format!("/v1/orders/{id}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json(), order);
    assert_problem(&s.get("/v1/orders/nope").await, 404, "not-found");
    let pos = s.get("/v1/positions?account_id=acc-1").await.json();
    assert_eq!(pos["positions"][0]["quantity"], "200");
    assert_eq!(pos["positions"][0]["average_price"], "101.30");
    assert_problem(&s.get("/v1/positions").await, 400, "account-required");
    assert_eq!(s.count("SELECT COUNT(*) FROM order_service_orders").await, 2);
    assert_eq!(s.count("SELECT COUNT(*) FROM spark_outbox WHERE event_type = 'order.accepted'").await, 2);
}

async fn in_flight_is_409(s: Service) {
    use spark_idempotency::{Claim, Fingerprint, IdempotencyStore, PgStore, SqliteStore};
    let valid = body("acc-1", "100", "101.30");
    let fp = Fingerprint::of_request("POST", "/v1/orders", valid.as_bytes());
    let key = "held".parse().unwrap();
    // Another instance holds the key (leased, not completed).
    let claim = match &s.db {
        Database::Postgres(p) => PgStore::new(p.clone(), Default::default()).unwrap().claim("c1", &key, &fp).await,
        Database::Sqlite(p) => SqliteStore::new(p.clone(), Default::default()).unwrap().claim("c1", &key, &fp).await,
    };
    assert!(matches!(claim.unwrap(), Claim::Acquired(_)));
    let r = s.order(Some("c1"), Some("held"), &valid).await;
    assert_problem(&r, 409, "idempotency-key-in-flight");
    assert!(r.headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
}

async fn hundred_parallel_requests_same_key_make_one_order(s: Service) {
    let s = Arc::new(s);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.order(Some("c1"), Some("same"), &body("acc-1", "10", "101.30")).await })
        })
        .collect();
    let mut bodies = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            201 => {
                bodies.insert(r.body);
            }
            409 => assert!(r.headers.contains_key("retry-after")),
            other => panic!("{other}: {}", r.body),
        }
    }
    assert_eq!(bodies.len(), 1, "every 201 is the same order");
    assert_eq!(s.count("SELECT COUNT(*) FROM order_service_orders").await, 1);
    assert_eq!(s.count("SELECT COUNT(*) FROM spark_outbox").await, 1);
}

async fn hundred_parallel_orders_make_one_position(s: Service) {
    let s = Arc::new(s);
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let qty = (i % 7 + 1).to_string();
                loop {
                    let r = s.order(Some("c1"), Some(&format!("k{i}")), &body("acc-9", &qty, "101.30")).await;
                    match r.status.as_u16() {
                        201 => return i % 7 + 1,
                        // Busy: retry with the same key, as a client would.
                        409 | 503 => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                        other => panic!("{other}: {}", r.body),
                    }
                }
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(s.count("SELECT COUNT(*) FROM spark_positions WHERE status = 'open'").await, 1);
    let pos = s.get("/v1/positions?account_id=acc-9").await.json();
    assert_eq!(pos["positions"].as_array().unwrap().len(), 1);
    assert_eq!(pos["positions"][0]["quantity"], total.to_string());
}

async fn security_headers_csp_reports_metrics_health(s: Service) {
    let health = s.get("/healthz").await;
    assert_eq!(health.status, 200);
    assert_security_headers(&health);
    assert_problem(&s.get("/nowhere").await, 404, "not-found");

    let report = |ct: &'static str, body: String| {
        Request::post("/csp-report").header("content-type", ct).body(Body::from(body)).unwrap()
    };
    let legacy =
        json!({ "csp-report": { "document-uri": "https://x", "violated-directive": "script-src" } }).to_string();
    let modern = json!([{ "type": "csp-violation", "body": { "blockedURL": "inline" } }]).to_string();
    let r = s.send(report("application/csp-report", legacy)).await;
    assert_eq!(r.status, 204);
    assert_security_headers(&r);
    assert_eq!(s.send(report("application/reports+json", modern)).await.status, 204);
    assert_problem(&s.send(report("text/plain", "{}".into())).await, 415, "unsupported-media-type");
    assert_problem(&s.send(report("application/csp-report", "not json".into())).await, 400, "invalid-report");
    let big = format!("{{\"x\":\"{}\"}}", "a".repeat(70 * 1024));
    assert_eq!(s.send(report("application/csp-report", big)).await.status, 413);

    assert_eq!(s.order(Some("c1"), Some("m1"), &body("acc-1", "1", "101.30")).await.status, 201);
    let metrics = s.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    for needle in [
        "http_request_duration_seconds_bucket{route=\"/v1/orders\"",
        "http_responses_total{route=\"/v1/orders\",class=\"2xx\"}",
        "spark_idempotency_claims_total",
        "spark_outbox_pending",
        "spark_outbox_oldest_pending_age_seconds",
        "db_pool_connections{state=\"idle\"}",
        "process_resident_memory_bytes",
        "csp_violations_total",
    ] {
        assert!(metrics.body.contains(needle), "/metrics lacks {needle}");
    }
}
