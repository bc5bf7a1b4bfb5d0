//! The message provider: a loopback HTTP endpoint the Pact verifier asks
//! for a message by its description, answered with what the real outbox
//! relay delivered to a webhook.
//!
//! The verifier first sets up the interaction's provider states (for
//! `order.accepted`: an order accepted by the service, which wrote the
//! event in its transaction), then POSTs `{"description": …}` here. The
//! endpoint runs a [`Relay`] over the service's outbox with the
//! publisher it was given (the real [`WebhookPublisher`], signing with a
//! secret) to a [`WebhookSink`], and answers with the one delivery the sink
//! received: its body as the message, its headers as the message metadata
//! (the base64 JSON `Pact-Message-Metadata` header the verifier reads).
//! Header names are given in their canonical capitalisation
//! (`idempotency-key` as `Idempotency-Key`): HTTP names are
//! case-insensitive, Pact metadata keys are not.
//!
//! [`WebhookPublisher`]: spark_outbox::WebhookPublisher

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use spark_outbox::{OutboxStore, Publisher, Relay};

use crate::webhook::{Delivery, WebhookSink};

/// The description of the `order.accepted` message interaction.
pub const ORDER_ACCEPTED_EVENT: &str = "an order.accepted event delivered to a webhook";

/// How many relay passes a message may take: one is enough when the event
/// is there; the rest only cover a claim that found nothing ready.
const RELAY_PASSES: usize = 5;

struct Shared {
    outbox: Arc<dyn OutboxStore>,
    publisher: Arc<dyn Publisher>,
    sink: WebhookSink,
    last: Mutex<Option<Delivery>>,
}

/// The message provider on a loopback port.
pub struct MessageProvider {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for MessageProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageProvider").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Drop for MessageProvider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(serde::Deserialize)]
struct MessageRequest {
    description: String,
}

fn refuse(status: StatusCode, text: String) -> Response {
    (status, text).into_response()
}

async fn message(State(shared): State<Arc<Shared>>, Json(request): Json<MessageRequest>) -> Response {
    if request.description != ORDER_ACCEPTED_EVENT {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no message is described as {:?}; this provider has {ORDER_ACCEPTED_EVENT:?}", request.description),
        );
    }
    match relay_one(&shared).await {
        Ok(delivery) => {
            let answer = as_message(&delivery);
            *shared.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(delivery);
            answer
        }
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

/// Relays the outbox to the sink until it received something, and returns
/// the one delivery.
async fn relay_one(shared: &Shared) -> anyhow::Result<Delivery> {
    let relay = Relay::builder(shared.outbox.clone()).build()?;
    let mut received = Vec::new();
    for _ in 0..RELAY_PASSES {
        let batch = relay.run_once(shared.publisher.as_ref()).await?;
        received.extend(shared.sink.take());
        if !received.is_empty() || batch.published > 0 {
            break;
        }
    }
    match received.len() {
        1 => Ok(received.remove(0)),
        0 => anyhow::bail!("the relay delivered nothing: no event is pending (was the provider state set up?)"),
        n => anyhow::bail!("the relay delivered {n} events; one message needs exactly one"),
    }
}

/// `content-type` → `Content-Type`.
fn canonical(name: &str) -> String {
    name.split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or_else(String::new, |c| c.to_ascii_uppercase().to_string() + chars.as_str())
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// The delivery as the verifier reads a message: the body, with every
/// header in the `Pact-Message-Metadata` header.
fn as_message(delivery: &Delivery) -> Response {
    let metadata: serde_json::Map<String, serde_json::Value> = delivery
        .headers
        .iter()
        .map(|(name, value)| (canonical(name.as_str()), String::from_utf8_lossy(value.as_bytes()).into_owned().into()))
        .collect();
    let encoded = base64::engine::general_purpose::STANDARD.encode(serde_json::Value::Object(metadata).to_string());
    let mut response = (StatusCode::OK, delivery.body.clone()).into_response();
    let headers = response.headers_mut();
    if let Some(content_type) = delivery.headers.get(header::CONTENT_TYPE) {
        headers.insert(header::CONTENT_TYPE, content_type.clone());
    }
    if let Ok(value) = HeaderValue::from_str(&encoded) {
        headers.insert("pact-message-metadata", value);
    }
    response
}

impl MessageProvider {
    /// Starts the endpoint (`POST /`) on a free loopback port: each message
    /// relays `outbox` through `publisher`, which must deliver to `sink`.
    ///
    /// # Errors
    ///
    /// When no port can be bound.
    pub async fn start(
        outbox: Arc<dyn OutboxStore>,
        publisher: Arc<dyn Publisher>,
        sink: WebhookSink,
    ) -> std::io::Result<MessageProvider> {
        let shared = Arc::new(Shared { outbox, publisher, sink, last: Mutex::new(None) });
        let app = axum::Router::new().route("/", post(message)).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("message provider on {addr} stopped: {e}");
            }
        });
        Ok(MessageProvider { addr, shared, server })
    }

    /// The port it listens on.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:<port>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The delivery behind the last message it answered with.
    #[must_use]
    pub fn last_delivery(&self) -> Option<Delivery> {
        self.shared.last.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::provider::{ACCOUNT, Backend, ORDER_ACCEPTED, Provider};
    use crate::webhook::OrderAccepted;

    #[test]
    fn header_names_are_capitalised_word_by_word() {
        assert_eq!(canonical("idempotency-key"), "Idempotency-Key");
        assert_eq!(canonical("x-spark-event-type"), "X-Spark-Event-Type");
        assert_eq!(canonical("content-type"), "Content-Type");
        assert_eq!(canonical("host"), "Host");
    }

    async fn ask(url: &str, description: &str) -> reqwest::Response {
        reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(serde_json::json!({ "description": description }).to_string())
            .send()
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_is_what_the_relay_delivered_with_its_headers_as_metadata() {
        let p = Provider::start(Backend::Sqlite, |app| app).await.unwrap().unwrap();
        let sink = WebhookSink::start().await.unwrap();
        let publisher =
            spark_outbox::WebhookPublisher::new(&sink.url(), Duration::from_secs(5)).unwrap().with_secret("s");
        let m = MessageProvider::start(p.outbox(), Arc::new(publisher), sink).await.unwrap();

        // Nothing pending: the provider says so instead of inventing one.
        let r = ask(&m.url(), ORDER_ACCEPTED_EVENT).await;
        assert_eq!(r.status(), 500);
        assert!(r.text().await.unwrap().contains("delivered nothing"));
        let r = ask(&m.url(), "a pony").await;
        assert_eq!(r.status(), 404);

        let params: HashMap<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
            "idempotency_key": "m-1", "account_id": ACCOUNT, "symbol": "THYAO",
            "side": "sell", "quantity": "5", "price": "101.40",
        }))
        .unwrap();
        let made = p.given(ORDER_ACCEPTED, &params).await.unwrap();
        let r = ask(&m.url(), ORDER_ACCEPTED_EVENT).await;
        assert_eq!(r.status(), 200);
        let metadata = r.headers()["pact-message-metadata"].to_str().unwrap().to_owned();
        let metadata: HashMap<String, String> =
            serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(metadata).unwrap()).unwrap();
        let body = r.bytes().await.unwrap();
        let last = m.last_delivery().unwrap();
        assert_eq!(body, last.body);
        assert_eq!(metadata["X-Spark-Event-Type"], "order.accepted");
        assert_eq!(metadata["Idempotency-Key"], last.headers["idempotency-key"].to_str().unwrap());
        assert!(metadata["X-Spark-Signature"].starts_with("t="));
        let got = OrderAccepted::receive(&last.headers, &last.body).unwrap();
        assert_eq!(got.order_id.to_string(), made["order_id"].as_str().unwrap());
        assert_eq!((got.side, got.price.to_string()), (spark_money::Side::Sell, "101.40".into()));
        crate::webhook::verify_signature(b"s", &last, spark_db::Clock::now_ms(&spark_db::SystemClock) / 1000).unwrap();
        // Published once: asking again finds nothing pending.
        assert_eq!(ask(&m.url(), ORDER_ACCEPTED_EVENT).await.status(), 500);
    }
}
