//! The webhook receiver's contract: the `order.accepted` message, its body
//! and the headers the receiver relies on (as Pact message metadata), fed
//! to the receiver's own code ([`OrderAccepted::receive`]); written as the
//! pact `order-webhook-receiver-order-service.json`.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use order_service_contracts::message::ORDER_ACCEPTED_EVENT;
use order_service_contracts::provider::ORDER_ACCEPTED;
use order_service_contracts::webhook::{EVENT_TYPE, OrderAccepted};
use pact_consumer::builders::{MessageInteractionBuilder, PactBuilder};
use pact_consumer::prelude::*;
use pact_models::matchingrules::{MatchingRule, RuleLogic};
use pact_models::path_exp::DocPath;

use crate::examples::*;

/// The message: the outbox event as the relay posts it, and the headers
/// as metadata. The builder takes metadata as plain values only, so the
/// matchers for the values that change with every delivery (the event id,
/// the signature) are added to the built interaction.
fn pact() -> PactBuilder {
    let mut message = MessageInteractionBuilder::new(ORDER_ACCEPTED_EVENT);
    message
        .with_key("order-accepted")
        .given_with_params(ORDER_ACCEPTED, &accepted("webhook-1"))
        .json_body(json_pattern!({
            "id": term!(UUID, EVENT_ID),
            "aggregate_type": "order",
            "aggregate_id": term!(UUID, ORDER_ID),
            "event_type": "order.accepted",
            "payload": {
                "order_id": term!(UUID, ORDER_ID),
                "status": "accepted",
                "account_id": like!("acc-1"),
                "symbol": like!("THYAO"),
                "side": term!("^(buy|sell)$", "buy"),
                "price": decimal("101.30"),
                "quantity": decimal("100"),
                "created_at": term!(RFC3339_MS, CREATED_AT),
            },
            "created_at_ms": like!(CREATED_AT_MS),
        }))
        .metadata("contentType", "application/json")
        .metadata("Idempotency-Key", EVENT_ID)
        .metadata("X-Spark-Event-Type", EVENT_TYPE)
        .metadata("X-Spark-Signature", SIGNATURE_EXAMPLE);
    let mut message = message.build();
    let rules = message.contents.matching_rules.add_category("metadata");
    for (key, regex) in [("Idempotency-Key", UUID), ("X-Spark-Signature", SIGNATURE)] {
        rules.add_rule(DocPath::root().join(key), MatchingRule::Regex(regex.to_owned()), RuleLogic::And);
    }
    let mut pact = PactBuilder::new_v4(WEBHOOK_RECEIVER, PROVIDER);
    pact.push_interaction(&message);
    pact
}

/// A plain `#[test]`: outside a Tokio runtime `messages()` reports no usage
/// metrics (Pact sends them from a runtime task when it finds one).
#[test]
fn the_webhook_receiver_contract() {
    let dir = tempfile::tempdir().unwrap();
    let mut pact = pact();
    pact.with_output_dir(dir.path());
    let mut received = 0;
    // The iterator writes the pact when it is dropped, at the end of the loop.
    for message in pact.messages() {
        let mut headers = HeaderMap::new();
        for (key, value) in &message.contents.metadata {
            let value = value.as_str().unwrap_or_else(|| panic!("metadata {key} is not a string"));
            headers.insert(HeaderName::try_from(key.as_str()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        let body = message.contents.contents.value().expect("the message has a body");
        let order = OrderAccepted::receive(&headers, &body).unwrap();
        assert_eq!(order.event_id.to_string(), EVENT_ID, "the receiver dedupes on the event id");
        assert_eq!(order.order_id.to_string(), ORDER_ID);
        assert_eq!((order.price.to_string(), order.quantity.to_string()), ("101.30".into(), "100".into()));
        received += 1;
    }
    assert_eq!(received, 1);
    crate::pact_file::check(&dir.path().join(WEBHOOK_PACT), WEBHOOK_PACT);
}
