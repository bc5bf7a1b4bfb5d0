//! The `order.accepted` message verified against what the real outbox relay
//! delivers to a webhook, on SQLite and PostgreSQL; and two deliberate
//! changes (an unsigned delivery, a retyped payload field) that the
//! verification must fail.

use std::sync::Arc;
use std::time::Duration;

use order_service_contracts::message::{MessageProvider, ORDER_ACCEPTED_EVENT};
use order_service_contracts::provider::{Backend, Provider};
use order_service_contracts::webhook::{Delivery, OrderAccepted, WebhookSink, verify_signature};
use spark_outbox::{Event, PublishError, Publisher, WebhookPublisher};

use crate::examples::*;
use crate::verify::{Outcome, States, provider_info, verify};

/// The webhook's shared secret.
const SECRET: &str = "contract-webhook-secret";

/// Verifies the receiver's pact: the service on `backend` accepts the
/// order (the provider state), and the relay delivers its event through
/// the publisher `publisher(sink_url)` makes. Also returns the delivery
/// behind the message. `None` when the backend is skipped.
async fn verify_webhook(
    backend: Backend,
    publisher: impl FnOnce(&str) -> Arc<dyn Publisher>,
) -> Option<(Outcome, Option<Delivery>)> {
    let provider = Arc::new(Provider::start(backend, |app| app).await.unwrap()?);
    let sink = WebhookSink::start().await.unwrap();
    let publisher = publisher(&sink.url());
    let messages = MessageProvider::start(provider.outbox(), publisher, sink).await.unwrap();
    let info = provider_info("message", messages.port());
    let outcome = verify(WEBHOOK_PACT, info, States(provider)).await;
    Some((outcome, messages.last_delivery()))
}

fn signed(url: &str) -> Arc<dyn Publisher> {
    Arc::new(WebhookPublisher::new(url, Duration::from_secs(5)).unwrap().with_secret(SECRET))
}

fn now_secs() -> i64 {
    spark_db::Clock::now_ms(&spark_db::SystemClock).div_euclid(1000)
}

/// The contract holds, and what it cannot say holds too: the signature is
/// the HMAC of the body under the shared secret, and the `Idempotency-Key`
/// is the event's own id (what the receiver dedupes on).
fn assert_honoured(outcome: &Outcome, delivery: Option<Delivery>) {
    outcome.assert_all_passed(1);
    let delivery = delivery.expect("the message came from a delivery");
    verify_signature(SECRET.as_bytes(), &delivery, now_secs()).unwrap();
    OrderAccepted::receive(&delivery.headers, &delivery.body).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_honours_the_webhook_contract_on_sqlite() {
    let (outcome, delivery) = verify_webhook(Backend::Sqlite, signed).await.unwrap();
    assert_honoured(&outcome, delivery);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_honours_the_webhook_contract_on_postgres() {
    let Some((outcome, delivery)) = verify_webhook(Backend::Postgres, signed).await else { return };
    assert_honoured(&outcome, delivery);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_delivery_fails_the_webhook_contract() {
    let unsigned =
        |url: &str| -> Arc<dyn Publisher> { Arc::new(WebhookPublisher::new(url, Duration::from_secs(5)).unwrap()) };
    let (outcome, delivery) = verify_webhook(Backend::Sqlite, unsigned).await.unwrap();
    assert!(delivery.is_some(), "the relay delivered; only the signature is missing");
    assert_eq!(outcome.failed(), [ORDER_ACCEPTED_EVENT], "{}", outcome.report);
    let why = outcome.why(ORDER_ACCEPTED_EVENT);
    assert!(why.contains("X-Spark-Signature"), "{why}");
}

/// A publisher that sends the event's price as a JSON number.
struct PriceAsNumber(WebhookPublisher);

#[async_trait::async_trait]
impl Publisher for PriceAsNumber {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        let mut event = event.clone();
        if let Some(price) = event.payload["price"].as_str().and_then(|p| p.parse::<f64>().ok()) {
            event.payload["price"] = price.into();
        }
        self.0.publish(&event).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retyped_event_field_fails_the_webhook_contract() {
    let retyped = |url: &str| -> Arc<dyn Publisher> {
        Arc::new(PriceAsNumber(WebhookPublisher::new(url, Duration::from_secs(5)).unwrap().with_secret(SECRET)))
    };
    let (outcome, _) = verify_webhook(Backend::Sqlite, retyped).await.unwrap();
    assert_eq!(outcome.failed(), [ORDER_ACCEPTED_EVENT], "{}", outcome.report);
    let why = outcome.why(ORDER_ACCEPTED_EVENT);
    assert!(why.contains("price"), "{why}");
}
