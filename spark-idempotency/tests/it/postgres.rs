//! PostgreSQL under concurrency: exactly-once execution counted in real
//! side-effect rows, and GC under load.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use spark_idempotency::IdempotencyStore as _;
use spark_idempotency::{Claim, Config, Fingerprint, IdempotencyLayer, ManualClock, PgStore, StoredResponse};
use sqlx::PgPool;
use tower::ServiceExt;

use crate::harness::{START_MS, config};

/// An app whose handler inserts one side-effect row per execution.
async fn app(pool: PgPool, clock: &ManualClock) -> Router {
    let store = PgStore::new(pool.clone(), config(clock)).unwrap();
    store.migrate().await.unwrap();
    sqlx::query("CREATE TABLE side_effects (id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    Router::new()
        .route(
            "/v1/orders",
            post(|State(pool): State<PgPool>, headers: axum::http::HeaderMap| async move {
                let key = headers["idempotency-key"].to_str().unwrap().to_owned();
                sqlx::query("INSERT INTO side_effects (key) VALUES ($1)").bind(&key).execute(&pool).await.unwrap();
                (StatusCode::CREATED, key)
            }),
        )
        .with_state(pool)
        .layer(IdempotencyLayer::new(Arc::new(store), |_: &http::request::Parts| Some("client".to_owned())))
}

fn request(key: &str) -> Request<Body> {
    Request::post("/v1/orders").header("idempotency-key", key).body(Body::from("{}")).unwrap()
}

async fn rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM side_effects").fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_tasks_one_key_execute_once() {
    let Some(db) = spark_testkit::postgres().await else { return };
    let app = app(db.pool.clone(), &ManualClock::new(START_MS)).await;
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { app.oneshot(request("the-one")).await.unwrap().status() })
        })
        .collect();
    for t in tasks {
        let status = t.await.unwrap();
        assert!(status == 201 || status == 409, "{status}");
    }
    assert_eq!(rows(&db.pool).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_requests_with_duplicates_execute_once_per_key() {
    let Some(db) = spark_testkit::postgres().await else { return };
    let app = app(db.pool.clone(), &ManualClock::new(START_MS)).await;
    // 10,000 requests over 32 tasks; every fifth reuses a key sent earlier
    // by the same task (20 % duplicates).
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut keys: Vec<String> = Vec::new();
                let mut statuses = Vec::new();
                for i in 0..(10_000 / 32 + usize::from(t < 10_000 % 32)) {
                    let key = if i % 5 == 4 { keys[i / 2 % keys.len()].clone() } else { format!("t{t}-r{i}") };
                    let status = app.clone().oneshot(request(&key)).await.unwrap().status().as_u16();
                    statuses.push(status);
                    keys.push(key);
                }
                (keys, statuses)
            })
        })
        .collect();
    let (mut distinct, mut total) = (HashSet::new(), 0);
    for t in tasks {
        let (keys, statuses) = t.await.unwrap();
        total += keys.len();
        assert!(statuses.iter().all(|s| *s == 201 || *s == 409), "a request failed: {statuses:?}");
        distinct.extend(keys);
    }
    assert_eq!(total, 10_000);
    assert_eq!(rows(&db.pool).await, i64::try_from(distinct.len()).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_under_load_leaves_live_keys_alone() {
    let Some(db) = spark_testkit::postgres().await else { return };
    let now = ManualClock::new(START_MS);
    // Records written two days ago are expired by now's clock.
    let past = ManualClock::new(START_MS - 48 * 3600 * 1000);
    let old = PgStore::new(db.pool.clone(), config(&past)).unwrap();
    old.migrate().await.unwrap();
    let store = Arc::new(PgStore::new(db.pool.clone(), Config::default().with_clock(now.clone())).unwrap());
    let fp = Fingerprint::of_request("POST", "/", b"");
    for i in 0..2_000 {
        let Claim::Acquired(lease) = old.claim("c", &format!("old-{i}").parse().unwrap(), &fp).await.unwrap() else {
            panic!()
        };
        old.complete(&lease, &StoredResponse::new(201, "x")).await.unwrap();
    }
    // Live traffic while GC runs in small batches.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..1_000 {
                let key = format!("live-{i}").parse().unwrap();
                let Claim::Acquired(lease) = store.claim("c", &key, &fp).await.unwrap() else { panic!() };
                store.complete(&lease, &StoredResponse::new(201, "x")).await.unwrap();
            }
        })
    };
    let gc = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut deleted = 0;
            while deleted < 2_000 {
                deleted += store.gc(50).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            deleted
        })
    };
    writer.await.unwrap();
    assert_eq!(gc.await.unwrap(), 2_000);
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.live_keys, stats.expired_awaiting_gc), (1_000, 0));
    for i in (0..1_000).step_by(97) {
        let key = format!("live-{i}").parse().unwrap();
        assert!(matches!(store.claim("c", &key, &fp).await.unwrap(), Claim::Replay(_)));
    }
}
