//! The tower layer in an axum router, on every backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::routing::post;
use http_body_util::BodyExt;
use spark_idempotency::{Claim, Fingerprint, IdempotencyLayer, IdempotencyStore, LayerConfig};
use tower::ServiceExt;

use crate::harness::{Harness, LEASE, TTL, on_every_backend};

/// A router whose handlers count their executions.
struct App {
    router: Router,
    runs: Arc<AtomicUsize>,
}

fn app(store: Arc<dyn IdempotencyStore>) -> App {
    let runs = Arc::new(AtomicUsize::new(0));
    let (r1, r2) = (runs.clone(), runs.clone());
    let router = Router::new()
        .route(
            "/v1/orders",
            post(move |body: String| {
                let runs = r1.clone();
                async move {
                    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                    // Long enough for parallel duplicates to overlap.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    (
                        StatusCode::CREATED,
                        [("location", format!("/v1/orders/{n}"))],
                        format!("{{\"run\":{n},\"body\":{body:?}}}"),
                    )
                }
            })
            .patch(|| async { "patched" }),
        )
        .route(
            "/v1/flaky",
            post(move || {
                let runs = r2.clone();
                async move {
                    // Fails the first time, succeeds after.
                    if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                        (StatusCode::SERVICE_UNAVAILABLE, "busy".to_owned())
                    } else {
                        (StatusCode::OK, "done".to_owned())
                    }
                }
            }),
        )
        .layer(
            IdempotencyLayer::new(store, |parts: &http::request::Parts| {
                parts.headers.get("x-client-id")?.to_str().ok().map(str::to_owned)
            })
            .with_config(LayerConfig::new().max_body(1024)),
        );
    App { router, runs }
}

fn request(method: &str, path: &str, client: Option<&str>, key: Option<&str>, body: &str) -> Request<Body> {
    let mut r = Request::builder().method(method).uri(path);
    if let Some(c) = client {
        r = r.header("x-client-id", c);
    }
    if let Some(k) = key {
        r = r.header("idempotency-key", k);
    }
    r.body(Body::from(body.to_owned())).unwrap()
}

async fn send(app: &App, req: Request<Body>) -> (Response<()>, String) {
    let response = app.router.clone().oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (Response::from_parts(parts, ()), String::from_utf8(bytes.to_vec()).unwrap())
}

fn assert_problem(response: &Response<()>, body: &str, status: u16, kind: &str) {
    assert_eq!(response.status(), status, "{body}");
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["status"], status);
    assert_eq!(v["type"], format!("urn:spark:problem:{kind}"));
    assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

on_every_backend!(
    missing_and_malformed_keys_are_400,
    replay_is_identical_and_runs_once,
    same_key_other_request_is_422,
    parallel_duplicates_execute_once,
    in_flight_is_409_with_retry_after,
    server_error_releases_the_key,
    ttl_and_principals,
    unguarded_methods_and_limits,
);

async fn missing_and_malformed_keys_are_400(h: Harness) {
    let app = app(h.store);
    let (r, body) = send(&app, request("POST", "/v1/orders", Some("alice"), None, "{}")).await;
    assert_problem(&r, &body, 400, "idempotency-key-missing");
    for bad in ["", "has space", "\"unterminated", &"k".repeat(256), "\"\""] {
        let (r, body) = send(&app, request("POST", "/v1/orders", Some("alice"), Some(bad), "{}")).await;
        assert_problem(&r, &body, 400, "idempotency-key-invalid");
    }
    let (r, body) = send(&app, request("POST", "/v1/orders", None, Some("k"), "{}")).await;
    assert_problem(&r, &body, 401, "unauthenticated");
    assert_eq!(app.runs.load(Ordering::SeqCst), 0);
}

async fn replay_is_identical_and_runs_once(h: Harness) {
    let app = app(h.store);
    let (first, first_body) = send(&app, request("POST", "/v1/orders", Some("alice"), Some("k1"), "{\"q\":1}")).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    // A quoted sf-string is the same key.
    for key in ["k1", "\"k1\""] {
        let (again, again_body) =
            send(&app, request("POST", "/v1/orders", Some("alice"), Some(key), "{\"q\":1}")).await;
        assert_eq!(again.status(), 201);
        assert_eq!(again_body, first_body);
        assert_eq!(again.headers()["location"], first.headers()["location"]);
        assert_eq!(again.headers()["content-type"], first.headers()["content-type"]);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
    }
    assert_eq!(app.runs.load(Ordering::SeqCst), 1);
}

async fn same_key_other_request_is_422(h: Harness) {
    let app = app(h.store);
    let (r, _) = send(&app, request("POST", "/v1/orders", Some("alice"), Some("k"), "{\"q\":1}")).await;
    assert_eq!(r.status(), 201);
    let (r, body) = send(&app, request("POST", "/v1/orders", Some("alice"), Some("k"), "{\"q\":2}")).await;
    assert_problem(&r, &body, 422, "idempotency-key-reused");
    let (r, body) = send(&app, request("PATCH", "/v1/orders", Some("alice"), Some("k"), "{\"q\":1}")).await;
    assert_problem(&r, &body, 422, "idempotency-key-reused");
    let (r, body) = send(&app, request("POST", "/v1/flaky", Some("alice"), Some("k"), "{\"q\":1}")).await;
    assert_problem(&r, &body, 422, "idempotency-key-reused");
    assert_eq!(app.runs.load(Ordering::SeqCst), 1);
}

async fn parallel_duplicates_execute_once(h: Harness) {
    let app = Arc::new(app(h.store));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(
                async move { send(&app, request("POST", "/v1/orders", Some("alice"), Some("same"), "{}")).await },
            )
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        let (r, body) = t.await.unwrap();
        match r.status().as_u16() {
            201 => created += 1,
            409 => assert!(r.headers().contains_key("retry-after"), "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(created >= 1);
    assert_eq!(app.runs.load(Ordering::SeqCst), 1, "the handler ran more than once");
}

async fn in_flight_is_409_with_retry_after(h: Harness) {
    // Another server holds the claim (leased mode, not yet completed).
    let fingerprint = Fingerprint::of_request("POST", "/v1/orders", b"{}");
    let claim = h.store.claim("alice", &"busy".parse().unwrap(), &fingerprint).await.unwrap();
    assert!(matches!(claim, Claim::Acquired(_)));
    let app = app(h.store.clone());
    let (r, body) = send(&app, request("POST", "/v1/orders", Some("alice"), Some("busy"), "{}")).await;
    assert_problem(&r, &body, 409, "idempotency-key-in-flight");
    assert_eq!(r.headers()["retry-after"], LEASE.as_secs().to_string());
    // Once that server's lease runs out, a retry takes over and executes.
    h.clock.advance(LEASE);
    let (r, _) = send(&app, request("POST", "/v1/orders", Some("alice"), Some("busy"), "{}")).await;
    assert_eq!(r.status(), 201);
    assert_eq!(app.runs.load(Ordering::SeqCst), 1);
}

async fn server_error_releases_the_key(h: Harness) {
    let app = app(h.store);
    let (r, _) = send(&app, request("POST", "/v1/flaky", Some("alice"), Some("f"), "")).await;
    assert_eq!(r.status(), 503);
    let (r, body) = send(&app, request("POST", "/v1/flaky", Some("alice"), Some("f"), "")).await;
    assert_eq!((r.status().as_u16(), body.as_str()), (200, "done"));
    assert!(r.headers().get("idempotent-replayed").is_none());
    let (r, body) = send(&app, request("POST", "/v1/flaky", Some("alice"), Some("f"), "")).await;
    assert_eq!((r.status().as_u16(), body.as_str()), (200, "done"));
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(app.runs.load(Ordering::SeqCst), 2);
}

async fn ttl_and_principals(h: Harness) {
    let app = app(h.store.clone());
    let (_, a) = send(&app, request("POST", "/v1/orders", Some("alice"), Some("k"), "{}")).await;
    let (_, b) = send(&app, request("POST", "/v1/orders", Some("bob"), Some("k"), "{}")).await;
    assert_ne!(a, b, "another principal's key is independent");
    assert_eq!(app.runs.load(Ordering::SeqCst), 2);
    h.clock.advance(TTL);
    let (r, c) = send(&app, request("POST", "/v1/orders", Some("alice"), Some("k"), "{}")).await;
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("idempotent-replayed").is_none());
    assert_ne!(a, c);
    assert_eq!(app.runs.load(Ordering::SeqCst), 3);
}

async fn unguarded_methods_and_limits(h: Harness) {
    let app = app(h.store);
    // GET is not guarded: no key needed (405 from the router, not 400).
    let (r, _) = send(&app, request("GET", "/v1/orders", Some("alice"), None, "")).await;
    assert_eq!(r.status(), 405);
    let (r, body) = send(&app, request("POST", "/v1/orders", Some("alice"), Some("big"), &"x".repeat(2000))).await;
    assert_problem(&r, &body, 413, "request-too-large");
    assert_eq!(app.runs.load(Ordering::SeqCst), 0);
}
