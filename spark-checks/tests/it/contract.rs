//! The contract kit against deliberately broken services over real HTTP: a
//! battery that passes everything proves nothing, so each breakage must fail
//! exactly the cases it breaks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use CaseStatus::{Fail, Pass, Skip};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use spark_checks::contract::{
    self, Auth, CaseStatus, ContractOptions, ContractReport, Credential, EffectCounter, Fault, HookError,
};
use spark_checks::{ChecksError, Status};

/// A test service's state: the effects it made (one per created
/// resource), and whether its fault is on (a body with `"fail": true` is
/// then answered 500).
#[derive(Clone)]
struct Effects {
    made: Arc<AtomicU64>,
    broken: Arc<AtomicBool>,
}

impl Default for Effects {
    fn default() -> Self {
        Effects { made: Arc::default(), broken: Arc::new(AtomicBool::new(true)) }
    }
}

#[async_trait::async_trait]
impl EffectCounter for Effects {
    async fn count(&self) -> Result<u64, HookError> {
        Ok(self.made.load(Ordering::SeqCst))
    }
}

#[async_trait::async_trait]
impl Fault for Effects {
    async fn clear(&self) -> Result<(), HookError> {
        self.broken.store(false, Ordering::SeqCst);
        Ok(())
    }
}

/// Creates a resource, unless the body asks to fail while the fault is on:
/// then 500 and no effect.
fn create(effects: &Effects, body: &[u8]) -> Response {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if body["fail"] == true && effects.broken.load(Ordering::SeqCst) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "injected failure").into_response();
    }
    let id = effects.made.fetch_add(1, Ordering::SeqCst) + 1;
    let location = format!("/v1/orders/{id}");
    (StatusCode::CREATED, [(header::LOCATION, location)], Json(json!({ "id": id, "request": body }))).into_response()
}

/// Serves `router` on 127.0.0.1 on a free port; the server lives as long as
/// the test's runtime.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

/// Validates the key's presence and length, then ignores it: every request
/// makes a new effect.
fn ignores_the_key(effects: Effects) -> Router {
    Router::new().route(
        "/v1/orders",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let effects = effects.clone();
            async move {
                match headers.get("idempotency-key").map(|k| k.len()) {
                    None | Some(0) | Some(256..) => (StatusCode::BAD_REQUEST, "bad key").into_response(),
                    Some(_) => create(&effects, &body),
                }
            }
        }),
    )
}

/// spark-idempotency's own layer (keys scoped by `X-Client-Id`), except
/// that it does not require a key, and the handler answers a request
/// without one 200.
fn lets_a_missing_key_through(effects: Effects, store: spark_idempotency::Config) -> Router {
    let store = Arc::new(spark_idempotency::MemoryStore::new(store).unwrap());
    let principal =
        |parts: &axum::http::request::Parts| parts.headers.get("x-client-id")?.to_str().ok().map(str::to_owned);
    Router::new()
        .route(
            "/v1/orders",
            post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let effects = effects.clone();
                async move {
                    if headers.contains_key("idempotency-key") {
                        // A little work, so parallel duplicates overlap it.
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        create(&effects, &body)
                    } else {
                        (StatusCode::OK, "no key, no problem").into_response()
                    }
                }
            }),
        )
        .layer(
            spark_idempotency::IdempotencyLayer::new(store, principal)
                .with_config(spark_idempotency::LayerConfig::new().require_key(false)),
        )
}

fn options(effects: &Effects) -> ContractOptions {
    let auth = Auth::new(Credential::Header { name: "x-client-id".into(), value: "alice".into() })
        .with_other(Credential::Header { name: "x-client-id".into(), value: "bob".into() });
    let mut options = ContractOptions::new(auth, Arc::new(|n| json!({ "item": "widget", "quantity": n })));
    options.make_failing_request = Some(Arc::new(|n| json!({ "fail": true, "quantity": n })));
    options.fault = Some(Arc::new(effects.clone()));
    options.count_effects = Some(Arc::new(effects.clone()));
    options
}

/// Every case's status, by name.
fn statuses(report: &ContractReport) -> Vec<(&'static str, CaseStatus)> {
    report.cases.iter().map(|c| (c.name, c.status)).collect()
}

#[track_caller]
fn assert_statuses(report: &ContractReport, expected: [CaseStatus; 7]) {
    let names = contract::IDEMPOTENCY_CASES;
    let expected: Vec<_> = names.iter().copied().zip(expected).collect();
    assert_eq!(statuses(report), expected, "{}", report.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_ignores_the_key_fails_replay_reuse_and_parallel() {
    let effects = Effects::default();
    let url = serve(ignores_the_key(effects.clone())).await;
    let report = contract::idempotency(&url, options(&effects)).await.unwrap();
    println!("{}", report.table());
    assert_statuses(&report, [Pass, Pass, Fail, Fail, Pass, Fail, Pass]);
    let detail = |name| report.case(name).unwrap().detail.as_str();
    assert!(detail("replay_identical").contains("not the first answer"), "{}", detail("replay_identical"));
    assert!(detail("other_body_422").contains("not 422"), "{}", detail("other_body_422"));
    assert!(detail("parallel_one_effect").contains("40 parallel identical requests named 40 different resources"));
    assert!(!report.passed());
    let outcome = report.outcome();
    assert_eq!((outcome.id.as_str(), outcome.status), ("contract", Status::Fail));
    assert!(outcome.summary.starts_with("replay_identical: "), "{}", outcome.summary);
    assert_eq!(outcome.details["cases"].as_array().unwrap().len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_answers_200_without_a_key_fails_that_case_only() {
    let effects = Effects::default();
    let url = serve(lets_a_missing_key_through(effects.clone(), Default::default())).await;
    let report = contract::idempotency(&url, options(&effects)).await.unwrap();
    println!("{}", report.table());
    assert_statuses(&report, [Fail, Pass, Pass, Pass, Pass, Pass, Pass]);
    let missing = report.case("missing_key_400").unwrap();
    assert!(missing.detail.contains("answered 200, not 400"), "{}", missing.detail);
    assert!(report.case("parallel_one_effect").unwrap().detail.contains("1 effect(s) counted"));

    // Without a second principal and a way to fail, those cases are
    // skipped, which is not a pass: the outcome warns.
    let mut partial = options(&effects);
    partial.auth.other = None;
    partial.make_failing_request = None;
    let report = contract::idempotency(&url, partial).await.unwrap();
    assert_statuses(&report, [Fail, Pass, Pass, Pass, Skip, Pass, Skip]);
    assert!(report.case("server_error_releases_key").unwrap().detail.contains("not made to answer a 5xx"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_that_cannot_be_caused_skips_and_one_that_persists_is_retried() {
    let effects = Effects::default();
    let url = serve(lets_a_missing_key_through(effects.clone(), Default::default())).await;
    let mut o = options(&effects);
    // This service only fails on {"fail": true}.
    o.make_failing_request = Some(Arc::new(|n| json!({ "quantity": n })));
    let report = contract::idempotency(&url, o).await.unwrap();
    let case = report.case("server_error_releases_key").unwrap();
    assert_eq!(case.status, Skip, "{}", case.detail);
    assert!(case.detail.contains("answered 201, not a 5xx"), "{}", case.detail);

    // A fault the battery cannot clear: the retry fails again, and must
    // have run again rather than been replayed.
    let mut o = options(&effects);
    o.fault = None;
    let report = contract::idempotency(&url, o).await.unwrap();
    let case = report.case("server_error_releases_key").unwrap();
    assert_eq!(case.status, Pass, "{}", case.detail);
    assert!(case.detail.contains("ran again: 500"), "{}", case.detail);
    assert!(effects.broken.load(Ordering::SeqCst));
}

/// A service that keeps a 5xx as the key's outcome fails the 5xx case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_stores_a_5xx_fails_that_case() {
    let effects = Effects::default();
    let stores_everything = spark_idempotency::Config::new().with_store_policy(|_| true);
    let url = serve(lets_a_missing_key_through(effects.clone(), stores_everything)).await;
    let report = contract::idempotency(&url, options(&effects)).await.unwrap();
    let case = report.case("server_error_releases_key").unwrap();
    assert_eq!(case.status, Fail, "{}", case.detail);
    assert!(case.detail.contains("a replay: the 5xx was stored"), "{}", case.detail);
}

#[tokio::test]
async fn no_service_or_bad_options_are_typed_errors() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let effects = Effects::default();
    let err = contract::idempotency(&format!("http://127.0.0.1:{port}"), options(&effects)).await.unwrap_err();
    assert!(matches!(err, ChecksError::Unreachable { .. }), "{err:?}");
    assert_eq!(err.to_string(), format!("cannot reach the service at http://127.0.0.1:{port}/v1/orders"));
    assert!(std::error::Error::source(&err).is_some());

    for (url, tweak, needle) in [
        ("not a url", None, "base url"),
        ("ftp://127.0.0.1/", None, "not http or https"),
        ("http://127.0.0.1:1", Some(1_usize), "at least 2 requests"),
    ] {
        let mut o = options(&effects);
        if let Some(p) = tweak {
            o.parallel = p;
        }
        let err = contract::idempotency(url, o).await.unwrap_err();
        assert!(matches!(err, ChecksError::ContractOptions { .. }) && err.to_string().contains(needle), "{err}");
    }
    assert_eq!(effects.made.load(Ordering::SeqCst), 0);
}
