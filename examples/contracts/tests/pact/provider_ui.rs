//! The order service verified against the trading UI's committed pact, on
//! SQLite and PostgreSQL; and two deliberate changes to a response field,
//! made by a layer around the real router, that the verification must fail.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::header;
use axum::response::Response;
use http_body_util::BodyExt;
use order_service_contracts::provider::{Backend, Provider};
use serde_json::Value;

use crate::examples::*;
use crate::verify::{Outcome, States, provider_info, verify};

/// Verifies the UI's pact against the service on `backend`, served
/// through `wrap`; `None` when the backend is skipped.
async fn verify_ui(backend: Backend, wrap: impl FnOnce(Router) -> Router) -> Option<Outcome> {
    let provider = Arc::new(Provider::start(backend, wrap).await.unwrap()?);
    let info = provider_info("http", provider.port());
    Some(verify(UI_PACT, info, States(provider)).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_honours_the_trading_ui_contract_on_sqlite() {
    verify_ui(Backend::Sqlite, |app| app).await.unwrap().assert_all_passed(7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_honours_the_trading_ui_contract_on_postgres() {
    let Some(outcome) = verify_ui(Backend::Postgres, |app| app).await else { return };
    outcome.assert_all_passed(7);
}

/// Rewrites the top-level fields of every JSON answer with `change`,
/// as a release that renamed or retyped a field would.
async fn rewrite_json(response: Response, change: fn(&mut serde_json::Map<String, Value>)) -> Response {
    let is_json = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v == "application/json");
    if !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("the service's body").to_bytes();
    let Ok(Value::Object(mut fields)) = serde_json::from_slice(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    change(&mut fields);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(Value::Object(fields).to_string()))
}

/// The three interactions whose answer is an order.
fn order_answers() -> Vec<&'static str> {
    let mut answers = vec![PLACE, REPLAY, READ_BACK];
    answers.sort_unstable();
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_a_response_field_fails_the_contract() {
    fn rename(fields: &mut serde_json::Map<String, Value>) {
        if let Some(id) = fields.remove("order_id") {
            fields.insert("id".to_owned(), id);
        }
    }
    let layer = axum::middleware::map_response(|r: Response| rewrite_json(r, rename));
    let outcome = verify_ui(Backend::Sqlite, |app| app.layer(layer)).await.unwrap();
    // Exactly the answers that carry an order fail, each naming the field;
    // the positions and the problems, which have no order_id, still pass.
    assert_eq!(outcome.failed(), order_answers(), "{}", outcome.report);
    for description in order_answers() {
        assert!(outcome.why(description).contains("order_id"), "{description}: {}", outcome.why(description));
    }
    assert_eq!(outcome.results.len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retyping_a_response_field_fails_the_contract() {
    /// Money as a JSON number (`"101.30"` becomes `101.3`), which loses the
    /// scale and invites floating point: an order's `price`, and a
    /// position's `average_price`, which the pact matches by pattern rather
    /// than by value.
    fn as_number(value: &mut Value) {
        if let Some(number) = value.as_str().and_then(|p| p.parse::<f64>().ok()) {
            *value = number.into();
        }
    }
    fn retype(fields: &mut serde_json::Map<String, Value>) {
        fields.get_mut("price").map(as_number);
        for position in fields.get_mut("positions").and_then(Value::as_array_mut).into_iter().flatten() {
            position.get_mut("average_price").map(as_number);
        }
    }
    let layer = axum::middleware::map_response(|r: Response| rewrite_json(r, retype));
    let outcome = verify_ui(Backend::Sqlite, |app| app.layer(layer)).await.unwrap();
    let mut expected = order_answers();
    expected.push(POSITIONS);
    expected.sort_unstable();
    assert_eq!(outcome.failed(), expected, "{}", outcome.report);
    for description in expected {
        assert!(outcome.why(description).contains("price"), "{description}: {}", outcome.why(description));
    }
}
