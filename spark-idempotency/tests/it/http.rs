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
    query_string_is_part_of_the_request,
    repeated_non_ascii_and_long_keys_are_400,
    dropped_request_still_completes_and_replays,
    failed_completion_is_retried,
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
    let (r, a) = send(&app, request("POST", "/v1/orders", Some("alice"), Some("k"), "{}")).await;
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (201, "/v1/orders/1"), "{a}");
    // Bob's request with the same key and body executes on its own (run 2);
    // were keys not scoped by principal, it would replay Alice's run 1.
    let (r, b) = send(&app, request("POST", "/v1/orders", Some("bob"), Some("k"), "{}")).await;
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("idempotent-replayed").is_none(), "bob got alice's outcome: {b}");
    assert_eq!(r.headers()["location"], "/v1/orders/2");
    assert_eq!(app.runs.load(Ordering::SeqCst), 2);
    // Each principal replays its own outcome.
    let (r, again) = send(&app, request("POST", "/v1/orders", Some("bob"), Some("k"), "{}")).await;
    assert_eq!((r.headers()["idempotent-replayed"].to_str().unwrap(), again.as_str()), ("true", b.as_str()));
    assert_eq!(app.runs.load(Ordering::SeqCst), 2);
    // Past the TTL the key is new: a third execution, not a replay.
    h.clock.advance(TTL);
    let (r, _) = send(&app, request("POST", "/v1/orders", Some("alice"), Some("k"), "{}")).await;
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("idempotent-replayed").is_none());
    assert_eq!(r.headers()["location"], "/v1/orders/3");
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

async fn query_string_is_part_of_the_request(h: Harness) {
    let app = app(h.store);
    let (r, _) = send(&app, request("POST", "/v1/orders?x=1", Some("alice"), Some("q"), "{}")).await;
    assert_eq!(r.status(), 201);
    let (r, body) = send(&app, request("POST", "/v1/orders?x=2", Some("alice"), Some("q"), "{}")).await;
    assert_problem(&r, &body, 422, "idempotency-key-reused");
    let (r, body) = send(&app, request("POST", "/v1/orders", Some("alice"), Some("q"), "{}")).await;
    assert_problem(&r, &body, 422, "idempotency-key-reused");
    let (r, _) = send(&app, request("POST", "/v1/orders?x=1", Some("alice"), Some("q"), "{}")).await;
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(app.runs.load(Ordering::SeqCst), 1);
}

async fn repeated_non_ascii_and_long_keys_are_400(h: Harness) {
    let app = app(h.store);
    let detail = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap()["detail"].to_string();

    let twice = Request::post("/v1/orders")
        .header("x-client-id", "alice")
        .header("idempotency-key", "k1")
        .header("idempotency-key", "k2")
        .body(Body::from("{}"))
        .unwrap();
    let (r, body) = send(&app, twice).await;
    assert_problem(&r, &body, 400, "idempotency-key-invalid");
    assert!(detail(&body).contains("more than one"), "{body}");

    // UTF-8 in a header value is legal HTTP but not a valid key: "invalid",
    // never "missing".
    let non_ascii = Request::post("/v1/orders")
        .header("x-client-id", "alice")
        .header("idempotency-key", http::HeaderValue::from_bytes("clé-1".as_bytes()).unwrap())
        .body(Body::from("{}"))
        .unwrap();
    let (r, body) = send(&app, non_ascii).await;
    assert_problem(&r, &body, 400, "idempotency-key-invalid");
    assert!(detail(&body).contains("ASCII"), "{body}");

    let (r, body) = send(&app, request("POST", "/v1/orders", Some("alice"), Some(&"k".repeat(256)), "{}")).await;
    assert_problem(&r, &body, 400, "idempotency-key-invalid");
    assert!(detail(&body).contains("255"), "{body}");
    let quoted = format!("\"{}\"", "k".repeat(256));
    let (r, body) = send(&app, request("POST", "/v1/orders", Some("alice"), Some(&quoted), "{}")).await;
    assert_problem(&r, &body, 400, "idempotency-key-invalid");
    assert_eq!(app.runs.load(Ordering::SeqCst), 0);

    // 255 characters is the limit, not past it.
    let (r, _) = send(&app, request("POST", "/v1/orders", Some("alice"), Some(&"k".repeat(255)), "{}")).await;
    assert_eq!(r.status(), 201);
    assert_eq!(app.runs.load(Ordering::SeqCst), 1);
}

/// The client goes away (or an outer timeout fires) while the handler runs.
/// The handler must still run to the end and its outcome be stored, so that
/// the client's retry — even after the lease has long expired — replays it
/// instead of executing the transfer a second time.
async fn dropped_request_still_completes_and_replays(h: Harness) {
    let effects = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Notify::new());
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = {
        let (effects, gate) = (effects.clone(), gate.clone());
        move || {
            let (effects, gate, started_tx) = (effects.clone(), gate.clone(), started_tx.clone());
            async move {
                started_tx.send(()).ok();
                // Takes a while: until the test opens the gate.
                gate.notified().await;
                let n = effects.fetch_add(1, Ordering::SeqCst) + 1;
                (StatusCode::CREATED, format!("transfer {n}"))
            }
        }
    };
    let router = Router::new()
        .route("/v1/transfers", post(handler))
        .layer(IdempotencyLayer::new(h.store.clone(), |parts: &http::request::Parts| {
            parts.headers.get("x-client-id")?.to_str().ok().map(str::to_owned)
        }));
    let transfer = || request("POST", "/v1/transfers", Some("alice"), Some("t-1"), "{\"amount\":\"10\"}");

    let mut first = Box::pin(router.clone().oneshot(transfer()));
    tokio::select! {
        _ = &mut first => panic!("the request finished before its handler started"),
        _ = started_rx.recv() => {}
    }
    // The outer future is dropped mid-handler; then the handler finishes.
    drop(first);
    gate.notify_one();
    // Wait (bounded) until the outcome is stored.
    for _ in 0..500 {
        if h.store.stats().await.unwrap().in_flight == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.store.stats().await.unwrap().in_flight, 0, "the key stayed in flight after the handler finished");
    assert_eq!(effects.load(Ordering::SeqCst), 1);

    // Long after the lease: the retry is a replay, not a second transfer.
    h.clock.advance(LEASE * 2);
    gate.notify_one();
    let response = router.oneshot(transfer()).await.unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"transfer 1");
    assert_eq!(effects.load(Ordering::SeqCst), 1);
}

/// A real store whose first `complete` fails as if the database blipped.
struct FailFirstCompletion {
    store: Arc<dyn IdempotencyStore>,
    failed: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl IdempotencyStore for FailFirstCompletion {
    async fn claim(
        &self,
        scope: &str,
        key: &spark_idempotency::IdempotencyKey,
        fingerprint: &Fingerprint,
    ) -> spark_idempotency::Result<Claim> {
        self.store.claim(scope, key, fingerprint).await
    }

    async fn complete(
        &self,
        lease: &spark_idempotency::Lease,
        response: &spark_idempotency::StoredResponse,
    ) -> spark_idempotency::Result<()> {
        if !self.failed.swap(true, Ordering::SeqCst) {
            return Err(sqlx::Error::PoolTimedOut.into());
        }
        self.store.complete(lease, response).await
    }

    async fn release(&self, lease: &spark_idempotency::Lease) -> spark_idempotency::Result<()> {
        self.store.release(lease).await
    }

    async fn gc(&self, batch_size: u32) -> spark_idempotency::Result<u64> {
        self.store.gc(batch_size).await
    }

    async fn stats(&self) -> spark_idempotency::Result<spark_idempotency::Stats> {
        self.store.stats().await
    }

    fn config(&self) -> &spark_idempotency::Config {
        self.store.config()
    }
}

async fn failed_completion_is_retried(h: Harness) {
    let store = Arc::new(FailFirstCompletion { store: h.store.clone(), failed: false.into() });
    let app = app(store.clone());
    let (r, first) = send(&app, request("POST", "/v1/orders", Some("alice"), Some("c"), "{}")).await;
    assert_eq!(r.status(), 201);
    assert!(store.failed.load(Ordering::SeqCst), "the first completion was not attempted");
    // The retried completion stored the outcome: a replay, not a 409 (or,
    // after the lease, a second run).
    let (r, again) = send(&app, request("POST", "/v1/orders", Some("alice"), Some("c"), "{}")).await;
    assert_eq!(r.headers()["idempotent-replayed"], "true", "{again}");
    assert_eq!(again, first);
    assert_eq!(app.runs.load(Ordering::SeqCst), 1);
}
