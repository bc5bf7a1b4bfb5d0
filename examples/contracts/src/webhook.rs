//! The webhook side of `order.accepted`: what a receiver relies on in a
//! delivery ([`OrderAccepted::receive`], the message contract's consumer),
//! and a capturing webhook endpoint for the relay to deliver to
//! ([`WebhookSink`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde::Deserialize;
use spark_money::{Price, Quantity, Side};
use uuid::Uuid;

/// The event type of an accepted order.
pub const EVENT_TYPE: &str = "order.accepted";

/// How far a signature's timestamp may be from the receiver's clock.
pub const SIGNATURE_TOLERANCE: Duration = Duration::from_secs(300);

/// One HTTP request the relay made to the webhook.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Its headers, as received.
    pub headers: HeaderMap,
    /// Its body, as received.
    pub body: Bytes,
}

/// An accepted order, as a webhook receiver takes it from a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderAccepted {
    /// The event's id, which is also the delivery's `Idempotency-Key`: the
    /// receiver dedupes redeliveries on it.
    pub event_id: Uuid,
    /// The order.
    pub order_id: Uuid,
    /// The account.
    pub account_id: String,
    /// The instrument.
    pub symbol: String,
    /// Buy or sell.
    pub side: Side,
    /// The order's price, exactly.
    pub price: Price,
    /// The order's quantity, exactly.
    pub quantity: Quantity,
    /// When the order was accepted (RFC 3339, UTC).
    pub created_at: String,
}

/// The delivered body: the outbox event.
#[derive(Deserialize)]
struct Event {
    id: Uuid,
    aggregate_id: Uuid,
    event_type: String,
    payload: Payload,
}

#[derive(Deserialize)]
struct Payload {
    order_id: Uuid,
    status: String,
    account_id: String,
    symbol: String,
    side: Side,
    price: Price,
    quantity: Quantity,
    created_at: String,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> anyhow::Result<&'a str> {
    let value = headers.get(name).with_context(|| format!("the delivery has no {name} header"))?;
    value.to_str().with_context(|| format!("the {name} header is not visible ASCII"))
}

impl OrderAccepted {
    /// What a receiver does with a delivery before acting on it: the
    /// `X-Spark-Event-Type` says `order.accepted`, the `Idempotency-Key` is
    /// the event's id, the `X-Spark-Signature` has the shape
    /// `t=<seconds>,v1=<64 hex digits>` (its HMAC is checked with
    /// [`verify_signature`], which needs the shared secret), and the body
    /// is the event with exact decimal strings.
    ///
    /// # Errors
    ///
    /// Naming the header or field that is missing or wrong.
    pub fn receive(headers: &HeaderMap, body: &[u8]) -> anyhow::Result<OrderAccepted> {
        let event_type = header(headers, "x-spark-event-type")?;
        ensure!(event_type == EVENT_TYPE, "X-Spark-Event-Type is {event_type:?}, not {EVENT_TYPE:?}");
        let key = header(headers, "idempotency-key")?;
        let key = Uuid::parse_str(key).with_context(|| format!("Idempotency-Key {key:?} is not a UUID"))?;
        let signature = header(headers, "x-spark-signature")?;
        check_signature_shape(signature)?;
        let event: Event = serde_json::from_slice(body).context("the body is not an order.accepted event")?;
        ensure!(event.event_type == EVENT_TYPE, "the body's event_type is {:?}, not {EVENT_TYPE:?}", event.event_type);
        ensure!(event.id == key, "Idempotency-Key {key} is not the event's id {}", event.id);
        let p = event.payload;
        ensure!(p.order_id == event.aggregate_id, "order {} arrived as aggregate {}", p.order_id, event.aggregate_id);
        ensure!(p.status == "accepted", "the order's status is {:?}, not \"accepted\"", p.status);
        Ok(OrderAccepted {
            event_id: event.id,
            order_id: p.order_id,
            account_id: p.account_id,
            symbol: p.symbol,
            side: p.side,
            price: p.price,
            quantity: p.quantity,
            created_at: p.created_at,
        })
    }
}

/// `t=<digits>,v1=<64 lower-case hex digits>`, as the relay signs.
fn check_signature_shape(signature: &str) -> anyhow::Result<()> {
    let parts: Vec<&str> = signature.split(',').collect();
    let [t, v1] = parts.as_slice() else { bail!("X-Spark-Signature {signature:?} is not \"t=…,v1=…\"") };
    let t = t.strip_prefix("t=").filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()));
    let v1 =
        v1.strip_prefix("v1=").filter(|v| v.len() == 64 && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    ensure!(t.is_some() && v1.is_some(), "X-Spark-Signature {signature:?} is not \"t=<seconds>,v1=<64 hex digits>\"");
    Ok(())
}

/// Checks a delivery's `X-Spark-Signature` against its body with the
/// shared `secret` ([`spark_outbox::webhook::verify`]), at `now_secs`.
///
/// # Errors
///
/// When the header is missing, or the signature does not verify.
pub fn verify_signature(secret: &[u8], delivery: &Delivery, now_secs: i64) -> anyhow::Result<()> {
    let signature = header(&delivery.headers, "x-spark-signature")?;
    spark_outbox::webhook::verify(secret, signature, &delivery.body, now_secs, SIGNATURE_TOLERANCE)?;
    Ok(())
}

/// A webhook endpoint on `127.0.0.1` that records every delivery and
/// answers 204.
pub struct WebhookSink {
    addr: SocketAddr,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn capture(State(deliveries): State<Arc<Mutex<Vec<Delivery>>>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    deliveries.lock().unwrap_or_else(PoisonError::into_inner).push(Delivery { headers, body });
    StatusCode::NO_CONTENT
}

impl WebhookSink {
    /// Starts the endpoint (`POST /hooks/orders`) on a free loopback port.
    ///
    /// # Errors
    ///
    /// When no port can be bound.
    pub async fn start() -> std::io::Result<WebhookSink> {
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new().route("/hooks/orders", post(capture)).with_state(deliveries.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("webhook sink on {addr} stopped: {e}");
            }
        });
        Ok(WebhookSink { addr, deliveries, server })
    }

    /// The URL to deliver to.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}/hooks/orders", self.addr)
    }

    /// The deliveries received since the last call, oldest first.
    #[must_use]
    pub fn take(&self) -> Vec<Delivery> {
        std::mem::take(&mut *self.deliveries.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"contract-secret";

    fn event(id: Uuid, order: Uuid) -> serde_json::Value {
        serde_json::json!({
            "id": id, "aggregate_type": "order", "aggregate_id": order, "event_type": EVENT_TYPE,
            "payload": {
                "order_id": order, "status": "accepted", "account_id": "acc-1", "symbol": "THYAO",
                "side": "buy", "price": "101.30", "quantity": "100", "created_at": "2026-01-02T03:04:05.678Z",
            },
            "headers": {}, "created_at_ms": 1_767_323_045_678_i64,
        })
    }

    fn delivery(id: Uuid, body: &serde_json::Value, now: i64) -> Delivery {
        let body = Bytes::from(body.to_string());
        let mut headers = HeaderMap::new();
        headers.insert("idempotency-key", id.to_string().parse().unwrap());
        headers.insert("x-spark-event-type", EVENT_TYPE.parse().unwrap());
        let signature = spark_outbox::webhook::signature(SECRET, now, &body);
        headers.insert("x-spark-signature", signature.parse().unwrap());
        Delivery { headers, body }
    }

    #[test]
    fn a_delivery_is_received_with_exact_decimals_and_its_key() {
        let (id, order) = (Uuid::now_v7(), Uuid::now_v7());
        let d = delivery(id, &event(id, order), 1_700_000_000);
        let got = OrderAccepted::receive(&d.headers, &d.body).unwrap();
        assert_eq!((got.event_id, got.order_id), (id, order));
        assert_eq!((got.price.to_string(), got.quantity.to_string()), ("101.30".into(), "100".into()));
        assert_eq!(got.side, Side::Buy);
        verify_signature(SECRET, &d, 1_700_000_010).unwrap();
        assert!(verify_signature(b"another secret", &d, 1_700_000_010).is_err());
    }

    #[test]
    fn every_header_and_field_the_receiver_relies_on_is_checked() {
        let (id, order) = (Uuid::now_v7(), Uuid::now_v7());
        let good = delivery(id, &event(id, order), 1_700_000_000);
        let refused = |headers: &HeaderMap, body: &[u8]| OrderAccepted::receive(headers, body).unwrap_err().to_string();
        for name in ["idempotency-key", "x-spark-event-type", "x-spark-signature"] {
            let mut h = good.headers.clone();
            h.remove(name);
            assert!(refused(&h, &good.body).contains("no "), "{name}");
        }
        let mut h = good.headers.clone();
        h.insert("idempotency-key", Uuid::now_v7().to_string().parse().unwrap());
        assert!(refused(&h, &good.body).contains("is not the event's id"));
        let mut h = good.headers.clone();
        h.insert("x-spark-event-type", "order.cancelled".parse().unwrap());
        assert!(refused(&h, &good.body).contains("order.cancelled"));
        for bad in ["t=1", "v1=ab", "t=x,v1=00", &format!("t=1,v1={}", "A".repeat(64))] {
            let mut h = good.headers.clone();
            h.insert("x-spark-signature", bad.parse().unwrap());
            assert!(refused(&h, &good.body).contains("X-Spark-Signature"), "{bad}");
        }
        let mut number = event(id, order);
        number["payload"]["price"] = serde_json::json!(101.3);
        assert!(refused(&good.headers, number.to_string().as_bytes()).contains("not an order.accepted event"));
    }

    #[tokio::test]
    async fn the_sink_records_what_it_received() {
        let sink = WebhookSink::start().await.unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let r = reqwest::Client::new().post(sink.url()).header("idempotency-key", "k").body("{}").send().await.unwrap();
        assert_eq!(r.status(), 204);
        let got = sink.take();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].headers["idempotency-key"].to_str().unwrap(), &got[0].body[..]), ("k", &b"{}"[..]));
        assert!(sink.take().is_empty());
    }
}
