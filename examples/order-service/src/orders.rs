//! The order endpoints.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use spark_idempotency::{Claim, Fingerprint, IdempotencyError, IdempotencyKey, PgStore, SqliteStore, StoredResponse};
use spark_money::{Price, Quantity, Side};
use spark_positions::{Fill, PgPositions, PositionFilter, PositionsError, SqlitePositions};

use crate::problem::Problem;
use crate::{AppState, Database};

/// The request body. Decimals are JSON strings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderRequest {
    account_id: String,
    symbol: String,
    side: Side,
    quantity: Quantity,
    price: Price,
}

/// The order as the API returns it.
#[derive(Debug, Serialize, Deserialize)]
struct Order {
    order_id: String,
    status: String,
    account_id: String,
    symbol: String,
    side: String,
    price: String,
    quantity: String,
    created_at: String,
}

enum Placed {
    Created(StoredResponse),
    Replay(StoredResponse),
    InFlight(u64),
    Mismatch,
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// RFC 3339 UTC with milliseconds, from Unix ms (no date crate needed for
/// one format).
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms.rem_euclid(1000))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `POST /v1/orders`.
pub(crate) async fn create(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    match place(&state, &headers, &body).await {
        Ok(Placed::Created(stored)) => stored_response(stored, false),
        Ok(Placed::Replay(stored)) => stored_response(stored, true),
        Ok(Placed::InFlight(secs)) => Problem::new(
            StatusCode::CONFLICT,
            "idempotency-key-in-flight",
            "Request in flight",
            "an order with this Idempotency-Key is still being processed; retry after Retry-After",
        )
        .retry_after(secs)
        .into_response(),
        Ok(Placed::Mismatch) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key reused with a different request",
            "this Idempotency-Key was first used with a different order; use a new key for a new order",
        )
        .into_response(),
        Err(problem) => problem.into_response(),
    }
}

async fn place(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<Placed, Problem> {
    let client = header(headers, "x-client-id").filter(|c| !c.is_empty()).ok_or_else(|| {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", "Unauthenticated", "send X-Client-Id")
    })?;
    let key = header(headers, "idempotency-key").ok_or_else(|| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "idempotency-key-missing",
            "Idempotency-Key required",
            "send an Idempotency-Key header (a UUID) and reuse it when you retry",
        )
    })?;
    let key = IdempotencyKey::new(key).map_err(|e| {
        Problem::new(StatusCode::BAD_REQUEST, "idempotency-key-invalid", "Invalid Idempotency-Key", e.to_string())
    })?;
    let req: OrderRequest = serde_json::from_slice(body).map_err(|e| {
        let status = if e.is_data() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::BAD_REQUEST };
        Problem::new(status, "invalid-order", "Invalid order", e.to_string())
    })?;
    let rules = state.instruments.get(&req.symbol).ok_or_else(|| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-symbol",
            "Unknown symbol",
            format!("{:?} is not traded here", req.symbol),
        )
    })?;
    rules.validate(req.side, req.price, req.quantity).map_err(|violations| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "order-rules",
            "Order breaks exchange rules",
            violations.to_string(),
        )
        .with("violations", serde_json::to_value(violations).unwrap_or_default())
    })?;

    let fingerprint = Fingerprint::of_request("POST", "/v1/orders", body);
    let order_id = uuid::Uuid::now_v7().to_string();
    let created_at_ms = now_ms();
    let order = Order {
        order_id: order_id.clone(),
        status: "accepted".into(),
        account_id: req.account_id.clone(),
        symbol: req.symbol.clone(),
        side: req.side.to_string(),
        price: req.price.to_string(),
        quantity: req.quantity.to_string(),
        created_at: rfc3339(created_at_ms),
    };
    let stored = StoredResponse::new(201, serde_json::to_vec(&order).map_err(|e| Problem::internal(&e))?)
        .with_header("content-type", "application/json")
        .with_header("location", format!("/v1/orders/{order_id}"));
    let fill = Fill {
        fill_id: order_id.clone(),
        account_id: req.account_id.clone(),
        instrument: req.symbol.clone(),
        side: req.side,
        quantity: req.quantity,
        price: req.price,
        currency: rules.currency(),
        price_scale: rules.tick_table().price_scale(),
    };
    let event = spark_outbox::OutboxEvent::new(
        "order",
        order_id.clone(),
        "order.accepted",
        serde_json::to_value(&order).map_err(|e| Problem::internal(&e))?,
    );

    // Claim, order, fill, event and stored response: one transaction.
    macro_rules! transaction {
        ($pool:expr, $begin:expr, $store:ty, $book:ty, $enqueue:path, $insert:literal) => {{
            let store = <$store>::new($pool.clone(), state.idempotency.clone()).map_err(|e| Problem::internal(&e))?;
            let mut tx = $begin.await.map_err(|e| Problem::unavailable(&e))?;
            match store.claim_in(&mut tx, client, &key, &fingerprint).await.map_err(idempotency_problem)? {
                Claim::Acquired(lease) => {
                    sqlx::query($insert)
                        .bind(&order.order_id)
                        .bind(client)
                        .bind(&order.account_id)
                        .bind(&order.symbol)
                        .bind(&order.side)
                        .bind(&order.quantity)
                        .bind(&order.price)
                        .bind(created_at_ms)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| Problem::internal(&e))?;
                    <$book>::new().apply_fill(&mut tx, &fill).await.map_err(positions_problem)?;
                    $enqueue(&mut tx, &event).await.map_err(|e| Problem::internal(&e))?;
                    store.complete_in(&mut tx, &lease, &stored).await.map_err(idempotency_problem)?;
                    tx.commit().await.map_err(|e| Problem::unavailable(&e))?;
                    Placed::Created(stored)
                }
                Claim::Replay(previous) => Placed::Replay(previous),
                Claim::InFlight { retry_after } => Placed::InFlight(retry_after.as_secs().max(1)),
                Claim::Mismatch => Placed::Mismatch,
            }
        }};
    }
    let placed = match &state.db {
        Database::Postgres(pool) => transaction!(
            pool,
            pool.begin(),
            PgStore,
            PgPositions,
            spark_outbox::postgres::enqueue,
            "INSERT INTO order_service_orders
                (order_id, client_id, account_id, symbol, side, quantity, price, status, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'accepted', $8)"
        ),
        // SQLite: take the write lock up front, so concurrent orders queue
        // instead of failing to upgrade a read lock.
        Database::Sqlite(pool) => transaction!(
            pool,
            pool.begin_with("BEGIN IMMEDIATE"),
            SqliteStore,
            SqlitePositions,
            spark_outbox::sqlite::enqueue,
            "INSERT INTO order_service_orders
                (order_id, client_id, account_id, symbol, side, quantity, price, status, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'accepted', ?8)"
        ),
    };
    if matches!(placed, Placed::Created(_)) {
        metrics::counter!("orders_accepted_total").increment(1);
    }
    Ok(placed)
}

fn idempotency_problem(e: IdempotencyError) -> Problem {
    match e {
        IdempotencyError::Database(e) => Problem::unavailable(&e),
        other => Problem::internal(&other),
    }
}

fn positions_problem(e: PositionsError) -> Problem {
    match e {
        PositionsError::CurrencyMismatch { .. } => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "currency-mismatch", "Currency mismatch", e.to_string())
        }
        PositionsError::Contention { .. } | PositionsError::DuplicateOpenPosition { .. } => Problem::new(
            StatusCode::CONFLICT,
            "position-contention",
            "Position busy",
            "the position changed concurrently; retry with the same Idempotency-Key",
        )
        .retry_after(1),
        PositionsError::Database(e) => Problem::unavailable(&e),
        other => Problem::internal(&other),
    }
}

fn stored_response(stored: StoredResponse, replayed: bool) -> Response {
    let mut response = (StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK), stored.body).into_response();
    for (name, value) in stored.headers {
        if let (Ok(name), Ok(value)) = (header::HeaderName::try_from(name), HeaderValue::try_from(value)) {
            response.headers_mut().insert(name, value);
        }
    }
    if replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// `GET /v1/orders/{id}`.
pub(crate) async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    type Row = (String, String, String, String, String, String, String, i64);
    let row: Result<Option<Row>, sqlx::Error> = match &state.db {
        Database::Postgres(p) => {
            sqlx::query_as(
                "SELECT order_id, status, account_id, symbol, side, price, quantity, created_at_ms
                 FROM order_service_orders WHERE order_id = $1",
            )
            .bind(&id)
            .fetch_optional(p)
            .await
        }
        Database::Sqlite(p) => {
            sqlx::query_as(
                "SELECT order_id, status, account_id, symbol, side, price, quantity, created_at_ms
                 FROM order_service_orders WHERE order_id = ?1",
            )
            .bind(&id)
            .fetch_optional(p)
            .await
        }
    };
    match row {
        Ok(Some((order_id, status, account_id, symbol, side, price, quantity, created))) => {
            Json(Order { order_id, status, account_id, symbol, side, price, quantity, created_at: rfc3339(created) })
                .into_response()
        }
        Ok(None) => {
            Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", format!("no order {id:?}")).into_response()
        }
        Err(e) => Problem::unavailable(&e).into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct PositionsQuery {
    account_id: Option<String>,
}

/// `GET /v1/positions?account_id=…`: open positions.
pub(crate) async fn positions(State(state): State<AppState>, Query(q): Query<PositionsQuery>) -> Response {
    let Some(account) = q.account_id.filter(|a| !a.is_empty()) else {
        return Problem::new(StatusCode::BAD_REQUEST, "account-required", "account_id required", "add ?account_id=…")
            .into_response();
    };
    let positions = match &state.db {
        Database::Postgres(p) => PgPositions::new().positions(p, &account, PositionFilter::Open).await,
        Database::Sqlite(p) => SqlitePositions::new().positions(p, &account, PositionFilter::Open).await,
    };
    match positions {
        Ok(list) => {
            let rows: Vec<serde_json::Value> = list
                .iter()
                .map(|p| {
                    let mut v = serde_json::to_value(p).unwrap_or_default();
                    v["average_price"] = serde_json::json!(p.average_price().ok().flatten().map(|a| a.to_string()));
                    v
                })
                .collect();
            Json(serde_json::json!({ "account_id": account, "positions": rows })).into_response()
        }
        Err(e) => Problem::internal(&e).into_response(),
    }
}

/// `GET /healthz`: the database answers.
pub(crate) async fn health(State(state): State<AppState>) -> Response {
    let ok = match &state.db {
        Database::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.is_ok(),
        Database::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.is_ok(),
    };
    if ok {
        Json(serde_json::json!({ "status": "ok" })).into_response()
    } else {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unhealthy", "Unhealthy", "the database does not answer")
            .into_response()
    }
}

/// Unknown routes: problem+json 404 (with the security headers).
pub(crate) async fn not_found() -> Response {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", "no such endpoint").into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(1_764_110_096_123), "2025-11-25T22:34:56.123Z");
        assert_eq!(super::rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
