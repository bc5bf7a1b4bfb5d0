//! The order endpoints.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use spark_idempotency::{Claim, Fingerprint, IdempotencyError, IdempotencyKey, SqlStore, StoredResponse};
use spark_money::{Decimal, MoneyError, Price, Quantity, Side, parse_decimal};
use spark_positions::{Fill, PositionFilter, Positions, PositionsError};
use sqlx::{Postgres, Sqlite};

use crate::auth::{MAX_ACCOUNT_ID, single};
use crate::backend::{OrderBackend, OrderRow};
use crate::problem::Problem;
use crate::{AppState, Database, telemetry};

/// The problem kind of an order the instrument's exchange rules refuse.
const ORDER_RULES: &str = "order-rules";

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

/// The fingerprint of an order: its parsed fields in a fixed order, each
/// decimal normalised, so key order, whitespace and `101.3` against
/// `101.30` do not make a retry look like another order.
fn fingerprint(req: &OrderRequest) -> Fingerprint {
    let quantity = req.quantity.get().normalize().to_string();
    let price = req.price.get().normalize().to_string();
    Fingerprint::of_parts(&[
        b"POST /v1/orders",
        req.account_id.as_bytes(),
        req.symbol.as_bytes(),
        req.side.as_str().as_bytes(),
        quantity.as_bytes(),
        price.as_bytes(),
    ])
}

/// The fingerprint the service computes for an order body, so another
/// program holding a key for the same order (a test, a migration) can
/// present the same one. `None` when the body is not an order.
#[must_use]
pub fn order_fingerprint(body: &[u8]) -> Option<Fingerprint> {
    serde_json::from_slice::<OrderRequest>(body).ok().map(|r| fingerprint(&r))
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

fn invalid_key(reason: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "idempotency-key-invalid", "Invalid Idempotency-Key", reason)
}

/// Checks an account id's shape before it reaches a query: 1 to
/// [`MAX_ACCOUNT_ID`] bytes without control characters (PostgreSQL refuses
/// a NUL in text, which would surface as a database error).
fn check_account(account: &str) -> Result<(), Problem> {
    let invalid =
        |detail: String| Err(Problem::new(StatusCode::BAD_REQUEST, "account-invalid", "Invalid account_id", detail));
    if account.is_empty() || account.len() > MAX_ACCOUNT_ID {
        return invalid(format!("account_id must be 1 to {MAX_ACCOUNT_ID} bytes; got {}", account.len()));
    }
    if account.chars().any(char::is_control) {
        return invalid("account_id must not contain control characters".to_owned());
    }
    Ok(())
}

fn forbidden(account: &str) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "account-forbidden",
        "Account not allowed",
        format!("this client may not use account {account:?}"),
    )
}

/// The order, its fill, its event and its stored response, once the rules
/// allow it.
struct Prepared {
    order: Order,
    created_at_ms: i64,
    fill: Fill,
    event: spark_outbox::OutboxEvent,
    stored: StoredResponse,
}

/// Checks the order against the instrument's current rules and builds what
/// the transaction writes.
fn prepare(state: &AppState, req: &OrderRequest) -> Result<Prepared, Problem> {
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
            ORDER_RULES,
            "Order breaks exchange rules",
            violations.to_string(),
        )
        .with("violations", serde_json::to_value(violations).unwrap_or_default())
    })?;
    let order_id = uuid::Uuid::now_v7().to_string();
    let created_at_ms = spark_db::Clock::now_ms(&spark_db::SystemClock);
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
        order_id,
        "order.accepted",
        serde_json::to_value(&order).map_err(|e| Problem::internal(&e))?,
    );
    Ok(Prepared { order, created_at_ms, fill, event, stored })
}

async fn place(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<Placed, Problem> {
    let principal = state.auth.authenticate(headers)?;
    let client = principal.id();
    let key = single(headers, "idempotency-key")?.ok_or_else(|| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "idempotency-key-missing",
            "Idempotency-Key required",
            "send an Idempotency-Key header (a UUID) and reuse it when you retry",
        )
    })?;
    // A key that is there but not ASCII is invalid, not missing.
    let key = key.to_str().map_err(|_| invalid_key("only visible ASCII characters are allowed"))?;
    let key = IdempotencyKey::new(key).map_err(|e| invalid_key(e.to_string()))?;
    let req: OrderRequest = serde_json::from_slice(body).map_err(|e| {
        let status = if e.is_data() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::BAD_REQUEST };
        Problem::new(status, "invalid-order", "Invalid order", e.to_string())
    })?;
    check_account(&req.account_id)?;
    if !principal.may_use(&req.account_id) {
        return Err(forbidden(&req.account_id));
    }
    let fingerprint = fingerprint(&req);

    let placed = match &state.db {
        Database::Postgres(pool) => transact(pool, state, client, &key, &fingerprint, &req).await?,
        Database::Sqlite(pool) => transact(pool, state, client, &key, &fingerprint, &req).await?,
    };
    if matches!(placed, Placed::Created(_)) {
        metrics::counter!("orders_accepted_total").increment(1);
    }
    Ok(placed)
}

/// The order transaction, written once for every backend: claim, stored
/// response, order, event and fill commit together or not at all.
///
/// A retry of an accepted order replays its stored response even if the
/// instrument's rules have changed since, so an order the rules refuse is
/// still checked against its key, and the claim rolled back so the key stays
/// free. An order the rules allow knows its response before it is written,
/// so its key is claimed with the response in one statement.
async fn transact<DB: OrderBackend>(
    pool: &sqlx::Pool<DB>,
    state: &AppState,
    client: &str,
    key: &IdempotencyKey,
    fingerprint: &Fingerprint,
    req: &OrderRequest,
) -> Result<Placed, Problem> {
    let store = SqlStore::<DB>::new(pool.clone(), state.idempotency.clone()).map_err(|e| Problem::internal(&e))?;
    let prepared = prepare(state, req);
    let begun = match DB::BEGIN {
        Some(begin) => pool.begin_with(begin).await,
        None => pool.begin().await,
    };
    let mut tx = begun.map_err(|e| Problem::unavailable(&e))?;
    let claim = match &prepared {
        Ok(p) => store.claim_and_complete_in(&mut *tx, client, key, fingerprint, &p.stored).await,
        Err(_) => store.claim_in(&mut *tx, client, key, fingerprint).await,
    };
    match claim.map_err(idempotency_problem)? {
        Claim::Acquired(_) => {}
        Claim::Replay(previous) => return Ok(Placed::Replay(previous)),
        Claim::InFlight { retry_after } => return Ok(Placed::InFlight(retry_after.as_secs().max(1))),
        Claim::Mismatch => return Ok(Placed::Mismatch),
    }
    let written = match prepared {
        Ok(p) => write_order::<DB>(&mut tx, client, &p).await.map(|()| p),
        Err(refused) => {
            // A risk block is an order the instrument's rules refuse: off
            // the tick grid, off the lot step, outside the lot limits, below
            // the minimum notional; what a pre-trade risk check would block.
            // Not a symbol that is not traded here (the client asked for
            // nothing that exists), nor a malformed body, a reused key or a
            // forbidden account: those are the client's mistakes, not the
            // rules' decisions. Counted here, after the claim, so a retry
            // that replays an accepted order is not counted.
            if refused.kind() == ORDER_RULES {
                metrics::counter!(telemetry::RISK_BLOCKS).increment(1);
            }
            Err(refused)
        }
    };
    let p = match written {
        Ok(p) => p,
        Err(refused) => {
            // Frees the key at once (and, on SQLite, the write lock); a
            // failed rollback drops the connection, which rolls back as well.
            let _ = tx.rollback().await;
            return Err(refused);
        }
    };
    // The fill goes last: its position row is the one other orders of the
    // account wait for, so it stays locked for the commit only. A refused
    // fill rolls the whole transaction back.
    let (tx, _) = Positions::<DB::Book>::new().apply_fill_or_roll_back(tx, &p.fill).await.map_err(positions_problem)?;
    tx.commit().await.map_err(|e| Problem::unavailable(&e))?;
    Ok(Placed::Created(p.stored))
}

/// The order's row and its event, inside the transaction that claimed its
/// key (with the response already stored).
async fn write_order<DB: OrderBackend>(conn: &mut DB::Connection, client: &str, p: &Prepared) -> Result<(), Problem> {
    let row = OrderRow {
        order_id: &p.order.order_id,
        client_id: client,
        account_id: &p.order.account_id,
        symbol: &p.order.symbol,
        side: &p.order.side,
        quantity: &p.order.quantity,
        price: &p.order.price,
        created_at_ms: p.created_at_ms,
    };
    let (quantity, price) = DB::insert_order(conn, &row).await.map_err(|e| Problem::database(&e))?;
    // The response already stored says what was validated; a column that
    // rounded or converted the value (a narrower NUMERIC, a REAL) would make
    // the row say something else. That is a bug of the release, not of the
    // client: refuse the order (the transaction rolls back) and count it.
    if !same_value(&quantity, p.fill.quantity.get()) || !same_value(&price, p.fill.price.get()) {
        telemetry::precision_error("order row");
        return Err(Problem::internal(&format_args!(
            "order {} was stored as quantity {quantity} at {price}, not {} at {}",
            p.order.order_id, p.order.quantity, p.order.price
        )));
    }
    spark_outbox::enqueue(conn, &p.event).await.map_err(|e| match &e {
        spark_outbox::OutboxError::Database(db) => Problem::database(db),
        _ => Problem::internal(&e),
    })?;
    Ok(())
}

/// Whether `text`, as a database returned it, is exactly the decimal
/// `expected` (scale aside: `101.3` is `101.30`).
fn same_value(text: &str, expected: Decimal) -> bool {
    parse_decimal(text).is_ok_and(|d| d == expected)
}

/// Whether a positions error means money lost precision inside the service:
/// arithmetic that could not stay exact, a validated price the book cannot
/// hold at the instrument's scale, or a stored position that does not read
/// back as written. An overflow is not one of them: only amounts no market
/// trades reach 28 digits, so it is the order's size, answered with a 422,
/// and a client cannot move the canary's precision counter by sending one.
fn is_precision_error(e: &PositionsError) -> bool {
    matches!(
        e,
        PositionsError::Money(MoneyError::ScaleTooLarge { .. } | MoneyError::NotWholeMinorUnits { .. })
            | PositionsError::PriceScale { .. }
            | PositionsError::Corrupt(_)
    )
}

fn idempotency_problem(e: IdempotencyError) -> Problem {
    match e {
        IdempotencyError::Database(e) => Problem::unavailable(&e),
        other => Problem::internal(&other),
    }
}

fn positions_problem(e: PositionsError) -> Problem {
    if is_precision_error(&e) {
        telemetry::precision_error("position");
    }
    match e {
        PositionsError::Money(MoneyError::Overflow { .. }) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "amount-out-of-range",
            "Amount out of range",
            format!("the position this order makes is too large to hold exactly: {e}"),
        ),
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

/// `GET /v1/orders/{id}`: the caller's own orders only; another client's
/// order is 404, as if it did not exist.
pub(crate) async fn get(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let principal = match state.auth.authenticate(&headers) {
        Ok(p) => p,
        Err(problem) => return problem.into_response(),
    };
    let not_found = || Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", "no such order").into_response();
    // Order ids are UUIDs; anything longer or not visible ASCII is no order,
    // and never reaches a query.
    if id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return not_found();
    }
    let row = match &state.db {
        Database::Postgres(p) => Postgres::find_order(p, &id, principal.id()).await,
        Database::Sqlite(p) => Sqlite::find_order(p, &id, principal.id()).await,
    };
    match row {
        Ok(Some((order_id, status, account_id, symbol, side, price, quantity, created))) => {
            // Only a price and a quantity spark-money wrote and validated
            // are ever stored; one that no longer parses strictly was
            // changed on the way (a float conversion writes `1.2e+15`).
            // Sending it on would hand the client a number the service
            // cannot vouch for.
            if price.parse::<Price>().is_err() || quantity.parse::<Quantity>().is_err() {
                telemetry::precision_error("stored order");
                return Problem::internal(&format_args!(
                    "order {order_id} reads back as quantity {quantity} at {price}"
                ))
                .into_response();
            }
            Json(Order { order_id, status, account_id, symbol, side, price, quantity, created_at: rfc3339(created) })
                .into_response()
        }
        Ok(None) => not_found(),
        Err(e) => Problem::unavailable(&e).into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct PositionsQuery {
    account_id: Option<String>,
}

/// `GET /v1/positions?account_id=…`: open positions of an account the
/// caller may use; any other account is 404.
pub(crate) async fn positions(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<PositionsQuery>,
) -> Response {
    let principal = match state.auth.authenticate(&headers) {
        Ok(p) => p,
        Err(problem) => return problem.into_response(),
    };
    let Some(account) = q.account_id.filter(|a| !a.is_empty()) else {
        return Problem::new(StatusCode::BAD_REQUEST, "account-required", "account_id required", "add ?account_id=…")
            .into_response();
    };
    if let Err(problem) = check_account(&account) {
        return problem.into_response();
    }
    if !principal.may_use(&account) {
        return Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", "no such account").into_response();
    }
    let positions = match &state.db {
        Database::Postgres(p) => open_positions(p, &account).await,
        Database::Sqlite(p) => open_positions(p, &account).await,
    };
    match positions {
        Ok(list) => {
            let rows: Vec<serde_json::Value> = list
                .iter()
                .map(|p| {
                    let mut v = serde_json::to_value(p).unwrap_or_default();
                    let average = p.average_price().unwrap_or_else(|e| {
                        if is_precision_error(&e) {
                            telemetry::precision_error("average price");
                        }
                        None
                    });
                    v["average_price"] = serde_json::json!(average.map(|a| a.to_string()));
                    v
                })
                .collect();
            Json(serde_json::json!({ "account_id": account, "positions": rows })).into_response()
        }
        Err(PositionsError::Database(e)) => Problem::unavailable(&e).into_response(),
        Err(e) => {
            if is_precision_error(&e) {
                telemetry::precision_error("stored position");
            }
            Problem::internal(&e).into_response()
        }
    }
}

async fn open_positions<DB: OrderBackend>(
    pool: &sqlx::Pool<DB>,
    account: &str,
) -> Result<Vec<spark_positions::Position>, PositionsError> {
    Positions::<DB::Book>::new().positions(pool, account, PositionFilter::Open).await
}

/// `GET /healthz`: the database answers; the authentication mode, with a
/// warning when it is the development mode that trusts `X-Client-Id`.
pub(crate) async fn health(State(state): State<AppState>) -> Response {
    let ok = match &state.db {
        Database::Postgres(p) => Postgres::answers(p).await,
        Database::Sqlite(p) => Sqlite::answers(p).await,
    };
    if ok {
        let mut body = serde_json::json!({ "status": "ok", "auth": state.auth.name() });
        if state.auth.is_dev() {
            body["warning"] = crate::auth::DEV_WARNING.into();
        }
        Json(body).into_response()
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
    fn fp(account: &str, symbol: &str, side: &str, qty: &str, price: &str) -> spark_idempotency::Fingerprint {
        let body = serde_json::json!({
            "account_id": account, "symbol": symbol, "side": side, "quantity": qty, "price": price
        });
        super::order_fingerprint(body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn the_fingerprint_covers_every_field_and_only_the_value_of_decimals() {
        let base = fp("acc-1", "THYAO", "buy", "100", "101.3");
        assert_eq!(base, fp("acc-1", "THYAO", "buy", "100", "101.30"));
        assert_eq!(base, fp("acc-1", "THYAO", "buy", "100.000", "101.300"));
        for other in [
            fp("acc-1", "THYAO", "buy", "100", "101.31"),
            fp("acc-1", "THYAO", "buy", "10", "101.3"),
            fp("acc-1", "THYAO", "buy", "1000", "101.3"),
            fp("acc-1", "THYAO", "sell", "100", "101.3"),
            fp("acc-2", "THYAO", "buy", "100", "101.3"),
            fp("acc-1", "GARAN", "buy", "100", "101.3"),
            // Shifting bytes between neighbouring fields is another order.
            fp("acc-1T", "HYAO", "buy", "100", "101.3"),
            fp("acc-1", "THYAO", "buy", "1001", "01.3"),
        ] {
            assert_ne!(base, other);
        }
        // The same order in another shape (key order, whitespace).
        let reordered = br#" { "price": "101.30", "quantity": "100", "side": "buy",
            "symbol": "THYAO", "account_id": "acc-1" } "#;
        assert_eq!(super::order_fingerprint(reordered), Some(base));
        assert_eq!(super::order_fingerprint(b"{}"), None);
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(1_764_110_096_123), "2025-11-25T22:34:56.123Z");
        assert_eq!(super::rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
