//! Names, patterns and example values the consumer tests write into the
//! pacts, and the provider tests look up.

use pact_consumer::prelude::*;
use serde_json::{Value, json};

/// The HTTP consumer.
pub(crate) const UI: &str = "trading-ui";
/// The message consumer.
pub(crate) const WEBHOOK_RECEIVER: &str = "order-webhook-receiver";
/// The provider of both contracts.
pub(crate) const PROVIDER: &str = "order-service";

/// The committed pact of the trading UI.
pub(crate) const UI_PACT: &str = "trading-ui-order-service.json";
/// The committed pact of the webhook receiver.
pub(crate) const WEBHOOK_PACT: &str = "order-webhook-receiver-order-service.json";

/// Interaction descriptions of the UI's pact.
pub(crate) const PLACE: &str = "a new order is placed";
pub(crate) const REPLAY: &str = "the same order is sent again under the same Idempotency-Key";
pub(crate) const READ_BACK: &str = "an accepted order is read back";
pub(crate) const POSITIONS: &str = "the account's open positions are read";
pub(crate) const OFF_TICK: &str = "an order priced off the tick is refused";
pub(crate) const BAD_KEY: &str = "an order with a malformed Idempotency-Key is refused";
pub(crate) const NO_TOKEN: &str = "an order without a bearer token is refused";

/// A lower-case UUID.
pub(crate) const UUID: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";
/// The text of a decimal. Use it through [`decimal`]: a regex alone also
/// passes a JSON number, by its text.
const DECIMAL: &str = r"^-?[0-9]+(\.[0-9]+)?$";
/// RFC 3339 in UTC with milliseconds, as the service writes it.
pub(crate) const RFC3339_MS: &str = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$";
/// A bearer token.
pub(crate) const BEARER: &str = "^Bearer [!-~]+$";
/// `t=<unix seconds>,v1=<hex HMAC-SHA256>`.
pub(crate) const SIGNATURE: &str = "^t=[0-9]+,v1=[0-9a-f]{64}$";

pub(crate) const ORDER_ID: &str = "01936f3e-7b2a-7c4d-9e5f-0a1b2c3d4e5f";
pub(crate) const EVENT_ID: &str = "01936f3e-7b2b-7e6f-8a9b-0c1d2e3f4a5b";
pub(crate) const CREATED_AT: &str = "2026-01-02T03:04:05.678Z";
pub(crate) const CREATED_AT_MS: i64 = 1_767_323_045_678;
pub(crate) const SIGNATURE_EXAMPLE: &str =
    "t=1767323046,v1=5f0c6c2d8f8e4a1b9c7d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b";

/// The order both consumers' examples use: 100 THYAO bought at 101.30 on
/// the UI's account.
pub(crate) fn order() -> Value {
    json!({ "account_id": "acc-1", "symbol": "THYAO", "side": "buy", "quantity": "100", "price": "101.30" })
}

/// The parameters of the provider state "an order was accepted": the order
/// and the key it was placed under.
pub(crate) fn accepted(key: &str) -> Value {
    let mut params = order();
    params["idempotency_key"] = key.into();
    params
}

/// A decimal as a JSON string, never a JSON number: a string (the type
/// matcher) of digits with an optional fraction (the regex).
pub(crate) fn decimal(example: &str) -> JsonPattern {
    like!(term!(DECIMAL, example)).into()
}
