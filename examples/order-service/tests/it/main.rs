//! The order service over HTTP (the full axum stack, in process), against
//! SQLite and PostgreSQL; and the binary itself.

mod binary;
mod contract;
mod headers;
mod metrics;
mod pgbouncer;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use order_service::{AppState, Auth, Database, Instruments, app};
use serde_json::{Value, json};
use tower::ServiceExt;

/// Client `c1`: its own accounts and every `desk-*` account.
const T1: &str = "token-of-client-one";
/// Client `c2`: shares `acc-1` with `c1`.
const T2: &str = "token-of-client-two";

fn clients() -> order_service::Clients {
    let text = format!(
        "[[client]]\nid = \"c1\"\ntoken_sha256 = \"{}\"\naccounts = [\"acc-1\", \"acc-9\", \"desk-*\"]\n\n\
         [[client]]\nid = \"c2\"\ntoken_sha256 = \"{}\"\naccounts = [\"acc-1\", \"acc-2\"]\n",
        order_service::auth::token_sha256(T1),
        order_service::auth::token_sha256(T2),
    );
    order_service::Clients::from_toml(&text).unwrap()
}

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
    Service { router: app(state(&db)), db, sqlite: Some(t), pg: None }
}

async fn postgres() -> Option<Service> {
    let t = spark_testkit::postgres().await?;
    let db = Database::connect(&t.url, 32).await.unwrap();
    order_service::migrate(&db).await.unwrap();
    Some(Service { router: app(state(&db)), db, sqlite: None, pg: Some(t) })
}

fn state(db: &Database) -> AppState {
    AppState::new(db.clone(), Instruments::default_set(), Auth::bearer(clients()))
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
    /// The same database behind another router (another deployment).
    fn with_state(&self, state: AppState) -> Service {
        Service { router: app(state), db: self.db.clone(), sqlite: None, pg: None }
    }

    async fn send(&self, req: Request<Body>) -> Reply {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let body = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
        Reply { status: parts.status, headers: parts.headers, body }
    }

    async fn order(&self, token: Option<&str>, key: Option<&str>, body: &str) -> Reply {
        let mut r = Request::post("/v1/orders").header("content-type", "application/json");
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        if let Some(k) = key {
            r = r.header("idempotency-key", k);
        }
        self.send(r.body(Body::from(body.to_owned())).unwrap()).await
    }

    async fn get_as(&self, token: Option<&str>, path: &str) -> Reply {
        let mut r = Request::get(path);
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        self.send(r.body(Body::empty()).unwrap()).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.get_as(Some(T1), path).await
    }

    /// Rows of every table an order writes: orders, idempotency keys,
    /// outbox events, positions, position fills.
    async fn recorded(&self) -> [i64; 5] {
        [
            self.count("SELECT COUNT(*) FROM order_service_orders").await,
            self.count("SELECT COUNT(*) FROM spark_idempotency_keys").await,
            self.count("SELECT COUNT(*) FROM spark_outbox").await,
            self.count("SELECT COUNT(*) FROM spark_positions").await,
            self.count("SELECT COUNT(*) FROM spark_position_fills").await,
        ]
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
    assert_eq!(r.headers["content-type"], "application/problem+json", "{}", r.body);
    let v = r.json();
    assert_eq!(v["type"], format!("urn:spark:problem:{kind}"), "{}", r.body);
    assert_eq!(v["status"], status, "{}", r.body);
    assert!(v["title"].as_str().is_some_and(|t| !t.is_empty()), "{}", r.body);
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
    security_headers_metrics_health,
    bearer_tokens_accounts_and_ownership,
    replay_comes_before_validation_and_fingerprints_are_canonical,
    repeated_non_ascii_and_oversized_headers_are_400,
    the_schema_keeps_money_exact_and_one_open_position,
);

/// The service's own schema, asserted with the checks an operator runs
/// (`spark check`): exact money columns, the one-open-position index, and
/// every migration applied as embedded.
async fn the_schema_keeps_money_exact_and_one_open_position(s: Service) {
    use spark_checks::schema;
    let columns = schema::assert_money_columns_exact(&s.db, schema::DEFAULT_MONEY_PATTERN).await.unwrap();
    // Orders (price, quantity), positions and fills: at least these six.
    assert!(columns >= 6, "only {columns} money columns found");
    schema::assert_partial_unique_index(&s.db, "spark_positions", &["account_id", "instrument"], "status = 'open'")
        .await
        .unwrap();
    for set in order_service::ALL_MIGRATIONS {
        let migrator = set.migrator(s.db.backend()).unwrap();
        schema::assert_migrations_applied(&s.db, &migrator).await.unwrap();
    }
    // An accepted order's price reads back from the database with the
    // scale it was sent with (NUMERIC on PostgreSQL, text on SQLite).
    let r = s.order(Some(T1), Some("scale-1"), &body("acc-1", "100", "101.30")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.json()["order_id"].as_str().unwrap().to_owned();
    let read = s.get(&format!("/v1/orders/{id}")).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!((read.json()["price"].as_str(), read.json()["quantity"].as_str()), (Some("101.30"), Some("100")));
}

async fn order_lifecycle_and_every_refusal(s: Service) {
    let valid = body("acc-1", "100", "101.30");
    assert_problem(&s.order(None, Some("k1"), &valid).await, 401, "unauthenticated");
    assert_problem(&s.order(Some(T1), None, &valid).await, 400, "idempotency-key-missing");
    assert_problem(&s.order(Some(T1), Some("bad key"), &valid).await, 400, "idempotency-key-invalid");
    let number = r#"{"account_id":"acc-1","symbol":"THYAO","side":"buy","quantity":"100","price":101.3}"#;
    let r = s.order(Some(T1), Some("k0"), number).await;
    assert_problem(&r, 422, "invalid-order");
    assert!(r.json()["detail"].as_str().unwrap().contains("JSON strings"), "{}", r.body);
    assert_problem(&s.order(Some(T1), Some("k0"), "{not json").await, 400, "invalid-order");
    let r = s.order(Some(T1), Some("k0"), &body("acc-1", "100", "101.37")).await;
    assert_problem(&r, 422, "order-rules");
    assert_eq!(r.json()["violations"][0]["rule"], "price_off_tick");
    assert_eq!(r.json()["violations"][0]["below"], "101.30");
    assert_eq!(r.json()["violations"][0]["above"], "101.40");
    let r = s.order(Some(T1), Some("k0"), &body("acc-1", "10.5", "101.30")).await;
    assert_eq!(r.json()["violations"][0]["rule"], "quantity_off_step");
    let unknown =
        json!({ "account_id": "acc-1", "symbol": "NOPE", "side": "buy", "quantity": "1", "price": "1" }).to_string();
    assert_problem(&s.order(Some(T1), Some("k0"), &unknown).await, 422, "unknown-symbol");
    // Refused before and after the key was claimed alike: no row anywhere,
    // not even the key.
    assert_eq!(s.recorded().await, [0; 5]);

    let first = s.order(Some(T1), Some("k1"), &valid).await;
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

    let again = s.order(Some(T1), Some("k1"), &valid).await;
    assert_eq!((again.status, &again.body), (first.status, &first.body));
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_problem(
        &s.order(Some(T1), Some("k1"), &body("acc-1", "200", "101.30")).await,
        422,
        "idempotency-key-reused",
    );
    // The same key from another client is another order.
    assert_eq!(s.order(Some(T2), Some("k1"), &valid).await.status, 201);

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
    use spark_idempotency::{Claim, IdempotencyStore, PgStore, SqliteStore};
    let valid = body("acc-1", "100", "101.30");
    let fp = order_service::order_fingerprint(valid.as_bytes()).unwrap();
    let key = "held".parse().unwrap();
    // Another instance holds the key (leased, not completed).
    let claim = match &s.db {
        Database::Postgres(p) => PgStore::new(p.clone(), Default::default()).unwrap().claim("c1", &key, &fp).await,
        Database::Sqlite(p) => SqliteStore::new(p.clone(), Default::default()).unwrap().claim("c1", &key, &fp).await,
    };
    assert!(matches!(claim.unwrap(), Claim::Acquired(_)));
    let r = s.order(Some(T1), Some("held"), &valid).await;
    assert_problem(&r, 409, "idempotency-key-in-flight");
    assert!(r.headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
}

async fn hundred_parallel_requests_same_key_make_one_order(s: Service) {
    let s = Arc::new(s);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.order(Some(T1), Some("same"), &body("acc-1", "10", "101.30")).await })
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
                // Bounded: a key that stayed busy for good fails the test
                // instead of hanging it.
                for _ in 0..500 {
                    let r = s.order(Some(T1), Some(&format!("k{i}")), &body("acc-9", &qty, "101.30")).await;
                    match r.status.as_u16() {
                        201 => return i % 7 + 1,
                        // Busy: retry with the same key, as a client would.
                        // A 503 is a failure, not contention: it fails the test.
                        409 => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                        other => panic!("{other}: {}", r.body),
                    }
                }
                panic!("order k{i} was still refused as busy after 500 attempts")
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

async fn security_headers_metrics_health(s: Service) {
    let health = s.get_as(None, "/healthz").await;
    assert_eq!(health.status, 200);
    assert_security_headers(&health);
    assert_eq!(health.json()["auth"], "bearer");
    assert!(health.json().get("warning").is_none());

    assert_eq!(s.order(Some(T1), Some("m1"), &body("acc-1", "1", "101.30")).await.status, 201);
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
    ] {
        assert!(metrics.body.contains(needle), "/metrics lacks {needle}");
    }
}

async fn bearer_tokens_accounts_and_ownership(s: Service) {
    let valid = body("acc-1", "100", "101.30");
    // Missing, unknown and malformed credentials: 401 with a challenge.
    for auth in [
        None,
        Some("Bearer not-a-token".to_owned()),
        Some(format!("Bearer {T1}x")),
        Some(format!("Basic {T1}")),
        Some("Bearer".to_owned()),
        Some("Bearer ".to_owned()),
        Some(format!("Bearer {T1} {T1}")),
        Some(T1.to_owned()),
    ] {
        let mut r = Request::post("/v1/orders").header("idempotency-key", "a1");
        if let Some(a) = &auth {
            r = r.header("authorization", a);
        }
        let r = s.send(r.body(Body::from(valid.clone())).unwrap()).await;
        assert_problem(&r, 401, "unauthenticated");
        assert_eq!(r.headers["www-authenticate"], "Bearer", "{auth:?}");
    }
    // X-Client-Id proves nothing when tokens are configured.
    let r = Request::post("/v1/orders").header("idempotency-key", "a1").header("x-client-id", "c1");
    assert_problem(&s.send(r.body(Body::from(valid.clone())).unwrap()).await, 401, "unauthenticated");
    let r =
        Request::post("/v1/orders").header("idempotency-key", "a1").header("authorization", b"Bearer \xff".as_slice());
    assert_problem(&s.send(r.body(Body::from(valid.clone())).unwrap()).await, 401, "unauthenticated");

    // An account the client may not use: 403, and nothing written.
    assert_problem(&s.order(Some(T2), Some("a2"), &body("acc-9", "100", "101.30")).await, 403, "account-forbidden");
    assert_problem(&s.order(Some(T1), Some("a3"), &body("acc-2", "100", "101.30")).await, 403, "account-forbidden");
    // A trailing `*` is a prefix: desk-* covers desk-42, not desk.
    assert_eq!(s.order(Some(T1), Some("a4"), &body("desk-42", "100", "101.30")).await.status, 201);
    assert_problem(&s.order(Some(T1), Some("a5"), &body("desk", "100", "101.30")).await, 403, "account-forbidden");
    assert_eq!(s.count("SELECT COUNT(*) FROM order_service_orders").await, 1);

    // Orders and positions: only the caller's own.
    let mine = s.order(Some(T1), Some("a6"), &valid).await;
    assert_eq!(mine.status, 201, "{}", mine.body);
    let id = mine.json()["order_id"].as_str().unwrap().to_owned();
    assert_eq!(s.get_as(Some(T1), &format!("/v1/orders/{id}")).await.status, 200);
    assert_problem(&s.get_as(Some(T2), &format!("/v1/orders/{id}")).await, 404, "not-found");
    assert_problem(&s.get_as(None, &format!("/v1/orders/{id}")).await, 401, "unauthenticated");
    assert_problem(&s.get_as(Some("nope"), &format!("/v1/orders/{id}")).await, 401, "unauthenticated");
    assert_eq!(s.get_as(Some(T1), "/v1/positions?account_id=desk-42").await.status, 200);
    assert_problem(&s.get_as(Some(T2), "/v1/positions?account_id=desk-42").await, 404, "not-found");
    assert_problem(&s.get_as(None, "/v1/positions?account_id=acc-1").await, 401, "unauthenticated");
    let shared = s.get_as(Some(T2), "/v1/positions?account_id=acc-1").await;
    assert_eq!(shared.json()["positions"][0]["quantity"], "100", "acc-1 is both clients' account");

    // The idempotency scope is the authenticated client: the same key from
    // c2 is c2's own order, not a replay of c1's.
    let theirs = s.order(Some(T2), Some("a6"), &valid).await;
    assert_eq!(theirs.status, 201);
    assert!(theirs.headers.get("idempotent-replayed").is_none());
    assert_ne!(theirs.json()["order_id"], mine.json()["order_id"]);
}

async fn replay_comes_before_validation_and_fingerprints_are_canonical(s: Service) {
    let first = s.order(Some(T1), Some("r1"), &body("acc-1", "100", "101.30")).await;
    assert_eq!(first.status, 201, "{}", first.body);

    // Same order: keys reordered, whitespace added, a decimal written with
    // another scale.
    let reordered = "{ \"price\" : \"101.3\",\n\t\"side\":\"buy\",  \"quantity\": \"100\", \
                     \"symbol\": \"THYAO\", \"account_id\": \"acc-1\" }\n";
    let again = s.order(Some(T1), Some("r1"), reordered).await;
    assert_eq!((again.status, &again.body), (first.status, &first.body));
    assert_eq!(again.headers["idempotent-replayed"], "true");
    // A different price is a different order.
    assert_problem(
        &s.order(Some(T1), Some("r1"), &body("acc-1", "100", "101.40")).await,
        422,
        "idempotency-key-reused",
    );

    // The instrument's rules change (lots of 1000 now): the same body under
    // a new key is refused, and that refusal does not consume the key...
    let rules = order_service::instruments::DEFAULT_RULES
        .replace(r#"lot = { step = "1", min = "1", max = "1000000" }"#, r#"lot = { step = "1000", min = "1000" }"#);
    let toml = format!("[instruments.THYAO]\n{rules}");
    let changed =
        s.with_state(AppState::new(s.db.clone(), Instruments::from_toml(&toml).unwrap(), Auth::bearer(clients())));
    let after_first = s.recorded().await;
    assert_eq!(after_first, [1, 1, 1, 1, 1]);
    let refused = changed.order(Some(T1), Some("r2"), &body("acc-1", "100", "101.30")).await;
    assert_problem(&refused, 422, "order-rules");
    assert_problem(&changed.order(Some(T1), Some("r2"), &body("acc-1", "100", "101.30")).await, 422, "order-rules");
    assert_eq!(s.recorded().await, after_first, "a refusal records nothing");
    // The currency changes: the fill is refused by positions, after the
    // order row and the event were written in the transaction; all of it
    // rolls back.
    let in_usd = s.with_state(AppState::new(
        s.db.clone(),
        Instruments::from_toml(&format!("[instruments.THYAO]\n{}", DEFAULT_RULES_USD.as_str())).unwrap(),
        Auth::bearer(clients()),
    ));
    let mismatch = in_usd.order(Some(T1), Some("r2"), &body("acc-1", "100", "101.30")).await;
    assert_problem(&mismatch, 422, "currency-mismatch");
    assert_eq!(s.recorded().await, after_first, "a refusal after partial writes records nothing");
    // The key is free for any order: another one under it is accepted,
    // not a mismatch with the refused ones.
    let other = changed.order(Some(T1), Some("r2"), &body("acc-1", "1000", "101.30")).await;
    assert_eq!(other.status, 201, "{}", other.body);
    assert!(other.headers.get("idempotent-replayed").is_none());
    assert_eq!(s.recorded().await, [2, 2, 2, 1, 2]);
    // ...but the retry of the accepted order is its original 201.
    let replay = changed.order(Some(T1), Some("r1"), &body("acc-1", "100", "101.30")).await;
    assert_eq!((replay.status, &replay.body), (first.status, &first.body));
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    // Even with the symbol gone from the configuration.
    let garan_only = format!("[instruments.GARAN]\n{}", order_service::instruments::DEFAULT_RULES);
    let gone = s.with_state(AppState::new(
        s.db.clone(),
        Instruments::from_toml(&garan_only).unwrap(),
        Auth::bearer(clients()),
    ));
    let replay = gone.order(Some(T1), Some("r1"), &body("acc-1", "100", "101.30")).await;
    assert_eq!((replay.status, &replay.body), (first.status, &first.body));
    assert_eq!(s.count("SELECT COUNT(*) FROM order_service_orders").await, 2);
}

/// The default rules, quoted in US dollars.
static DEFAULT_RULES_USD: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| order_service::instruments::DEFAULT_RULES.replace("\"TRY\"", "\"USD\""));

async fn repeated_non_ascii_and_oversized_headers_are_400(s: Service) {
    let valid = body("acc-1", "100", "101.30");
    let post = || {
        Request::post("/v1/orders")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {T1}"))
    };
    for (name, first, second) in
        [("idempotency-key", "k1", "k2"), ("authorization", "Bearer a", "Bearer b"), ("x-client-id", "c1", "c1")]
    {
        let r = Request::post("/v1/orders")
            .header("authorization", format!("Bearer {T1}"))
            .header("idempotency-key", "k")
            .header(name, first)
            .header(name, second);
        let r = s.send(r.body(Body::from(valid.clone())).unwrap()).await;
        assert_problem(&r, 400, "repeated-header");
        assert!(r.json()["detail"].as_str().unwrap().contains(name), "{}", r.body);
    }
    // Present but not ASCII: invalid, not missing.
    let r = s.send(post().header("idempotency-key", "ключ".as_bytes()).body(Body::from(valid.clone())).unwrap()).await;
    assert_problem(&r, 400, "idempotency-key-invalid");
    let r = s.send(post().header("idempotency-key", "k".repeat(256)).body(Body::from(valid.clone())).unwrap()).await;
    assert_problem(&r, 400, "idempotency-key-invalid");
    assert_eq!(
        s.send(post().header("idempotency-key", "k".repeat(255)).body(Body::from(valid.clone())).unwrap()).await.status,
        201
    );
    // Account ids: at most 64 characters, in orders and in the query.
    let long = format!("desk-{}", "x".repeat(60));
    assert_problem(&s.order(Some(T1), Some("l1"), &body(&long, "100", "101.30")).await, 400, "account-invalid");
    assert_eq!(s.order(Some(T1), Some("l2"), &body(&long[..64], "100", "101.30")).await.status, 201);
    assert_problem(&s.order(Some(T1), Some("l3"), &body("", "100", "101.30")).await, 400, "account-invalid");
    assert_problem(&s.get(&format!("/v1/positions?account_id={long}")).await, 400, "account-invalid");
    // A NUL, which PostgreSQL refuses in text: a 400 or 404, never a 503.
    assert_problem(&s.order(Some(T1), Some("l4"), &body("desk-\u{0}", "100", "101.30")).await, 400, "account-invalid");
    assert_problem(&s.get("/v1/positions?account_id=desk-%00").await, 400, "account-invalid");
    assert_problem(&s.get("/v1/orders/a%00b").await, 404, "not-found");

    // Development authentication: X-Client-Id, at most 128 characters.
    let dev = s.with_state(AppState::new(s.db.clone(), Instruments::default_set(), Auth::dev_header()));
    let as_client = |id: &[u8]| {
        Request::post("/v1/orders")
            .header("x-client-id", id)
            .header("idempotency-key", "d1")
            .body(Body::from(valid.clone()))
            .unwrap()
    };
    assert_problem(&dev.send(as_client("c".repeat(129).as_bytes())).await, 400, "client-id-invalid");
    assert_problem(&dev.send(as_client("ä".as_bytes())).await, 400, "client-id-invalid");
    assert_eq!(dev.send(as_client("c".repeat(128).as_bytes())).await.status, 201);
    let r = Request::post("/v1/orders").header("idempotency-key", "d1").body(Body::from(valid.clone())).unwrap();
    assert_problem(&dev.send(r).await, 401, "unauthenticated");
}

/// Dev authentication says so in /healthz.
#[tokio::test]
async fn healthz_shows_dev_auth() {
    let s = sqlite().await;
    let dev = s.with_state(AppState::new(s.db.clone(), Instruments::default_set(), Auth::dev_header()));
    let h = dev.get_as(None, "/healthz").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["auth"], "dev-header");
    assert!(h.json()["warning"].as_str().unwrap().contains("X-Client-Id is trusted"), "{}", h.body);
    // And every client may use every account, scoped by the header.
    let r = Request::post("/v1/orders")
        .header("x-client-id", "anyone")
        .header("idempotency-key", "h1")
        .body(Body::from(body("any-account", "100", "101.30")))
        .unwrap();
    assert_eq!(dev.send(r).await.status, 201);
}

/// Every error is problem+json with the security headers: the router's 404
/// and 405, a body over the limit, and axum's path and query rejections.
#[tokio::test]
async fn every_error_is_problem_json_with_security_headers() {
    let s = sqlite().await;
    assert_problem(&s.get("/nowhere").await, 404, "not-found");
    let r = s.send(Request::put("/v1/orders").body(Body::empty()).unwrap()).await;
    assert_problem(&r, 405, "method-not-allowed");
    assert!(r.headers["allow"].to_str().unwrap().contains("POST"), "{:?}", r.headers);
    assert_problem(&s.send(Request::delete("/healthz").body(Body::empty()).unwrap()).await, 405, "method-not-allowed");
    let big = format!("{{\"account_id\":\"{}\"}}", "a".repeat(70 * 1024));
    let r = s.order(Some(T1), Some("big"), &big).await;
    assert_problem(&r, 413, "payload-too-large");
    // A path parameter that is not UTF-8, and a query axum cannot parse.
    assert_problem(&s.get("/v1/orders/%FF%FE").await, 400, "bad-request");
    assert_problem(&s.get("/v1/positions?account_id=a&account_id=b").await, 400, "bad-request");
}

fn violations(metrics: &str) -> f64 {
    metrics.lines().find_map(|l| l.strip_prefix("csp_violations_total ")).map_or(0.0, |v| v.trim().parse().unwrap())
}

/// The burst a source address gets (`security::REPORT_BURST`).
const REPORT_BURST: u32 = 20;

/// The one test that posts CSP reports (the counter is process-wide).
#[tokio::test]
async fn csp_reports_are_validated_capped_limited_and_counted() {
    use axum::extract::ConnectInfo;
    let s = sqlite().await;
    let clock = spark_db::ManualClock::new(1_000_000);
    let s = s.with_state(state(&s.db).with_clock(Arc::new(clock.clone())));
    let from = |ip: [u8; 4], ct: &str, body: String| {
        let mut r = Request::post("/csp-report").header("content-type", ct).body(Body::from(body)).unwrap();
        r.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from((ip, 40_000))));
        r
    };
    // Until the rate-limit part, time moves on a minute before each report,
    // so the bucket is always full.
    let report = |ct: &str, body: String| {
        clock.advance(std::time::Duration::from_secs(60));
        from([127, 0, 0, 1], ct, body)
    };
    let legacy =
        json!({ "csp-report": { "document-uri": "https://x", "violated-directive": "script-src" } }).to_string();
    let modern = json!([
        { "type": "csp-violation", "body": { "blockedURL": "inline" } },
        { "type": "csp-violation", "body": { "blockedURL": "eval" } },
    ])
    .to_string();
    let before = violations(&s.get("/metrics").await.body);

    // Invalid reports: refused, and not counted.
    assert_problem(&s.send(report("text/plain", legacy.clone())).await, 415, "unsupported-media-type");
    for junk in [
        "not json".to_owned(),
        "{}".to_owned(),
        json!({ "csp-report": "x" }).to_string(),
        json!({ "anything": {} }).to_string(),
        "[]".to_owned(),
        json!([{ "type": "deprecation", "body": {} }]).to_string(),
        json!([{ "type": "csp-violation", "body": {} }, 1]).to_string(),
        json!([{ "type": "csp-violation" }]).to_string(),
        "42".to_owned(),
    ] {
        assert_problem(&s.send(report("application/csp-report", junk.clone())).await, 400, "invalid-report");
        assert_problem(&s.send(report("application/reports+json", junk)).await, 400, "invalid-report");
    }
    let big = json!({ "csp-report": { "x": "a".repeat(70 * 1024) } }).to_string();
    assert_problem(&s.send(report("application/csp-report", big)).await, 413, "payload-too-large");
    assert_eq!(violations(&s.get("/metrics").await.body), before, "invalid reports are not counted");

    // Valid ones, with media types in any case and with parameters: counted
    // once per violation.
    let r = s.send(report("Application/CSP-Report; charset=utf-8", legacy.clone())).await;
    assert_eq!(r.status, 204);
    assert_security_headers(&r);
    assert_eq!(s.send(report("APPLICATION/REPORTS+JSON", modern)).await.status, 204);
    assert_eq!(violations(&s.get("/metrics").await.body), before + 3.0);

    // The rate limit, with time standing still: 127.0.0.1 gets its burst,
    // then 429; another address is not limited; a second refills one report.
    let now = |ip: [u8; 4]| from(ip, "application/csp-report", legacy.clone());
    clock.advance(std::time::Duration::from_secs(60));
    for n in 0..REPORT_BURST {
        assert_eq!(s.send(now([127, 0, 0, 1])).await.status, 204, "report {n} of the burst");
    }
    let limited = s.send(now([127, 0, 0, 1])).await;
    assert_problem(&limited, 429, "too-many-reports");
    assert!(limited.headers.contains_key("retry-after"));
    assert_eq!(s.send(now([127, 0, 0, 2])).await.status, 204);
    clock.advance(std::time::Duration::from_secs(1));
    assert_eq!(s.send(now([127, 0, 0, 1])).await.status, 204);
    assert_problem(&s.send(now([127, 0, 0, 1])).await, 429, "too-many-reports");
    // Refused reports are not counted either.
    assert_eq!(violations(&s.get("/metrics").await.body), before + 3.0 + f64::from(REPORT_BURST) + 2.0);
}

/// Invented HTTP methods are one `other` label in the metrics, not a new
/// series each: a caller cannot grow the recorder's memory at will.
#[tokio::test]
async fn invented_methods_do_not_grow_the_metrics() {
    let s = sqlite().await;
    for n in 0..5 {
        let method = axum::http::Method::from_bytes(format!("INVENTED{n}").as_bytes()).unwrap();
        let r = s.send(Request::builder().method(method).uri("/healthz").body(Body::empty()).unwrap()).await;
        assert_problem(&r, 405, "method-not-allowed");
    }
    let metrics = s.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(!metrics.body.contains("INVENTED"), "{}", metrics.body);
    assert!(
        metrics.body.lines().any(|l| l.starts_with("http_request_duration_seconds_count")
            && l.contains("route=\"/healthz\"")
            && l.contains("method=\"other\"")),
        "{}",
        metrics.body
    );
}
