//! Webhook deliveries carry the event id and a verifiable signature.

use std::time::Duration;

use spark_outbox::webhook::{signature, verify};
use spark_outbox::{Event, Publisher, WebhookPublisher};

use crate::common::receiver;

fn event() -> Event {
    Event {
        id: uuid::Uuid::now_v7(),
        seq: 1,
        aggregate_type: "order".into(),
        aggregate_id: "o-1".into(),
        event_type: "order.accepted".into(),
        payload: serde_json::json!({ "n": 1, "price": "101.30" }),
        headers: Default::default(),
        created_at_ms: 0,
        attempts: 1,
    }
}

#[tokio::test]
async fn deliveries_are_signed_and_keyed() {
    let hook = receiver().await;
    let sink = WebhookPublisher::new(&hook.url, Duration::from_secs(5)).unwrap().with_secret("s3cret");
    let e = event();
    sink.publish(&e).await.unwrap();
    let delivered = hook.delivered.lock().unwrap().clone();
    let (headers, json, body) = &delivered[0];
    assert_eq!(headers["idempotency-key"], e.id.to_string());
    assert_eq!(headers["x-spark-event-type"], "order.accepted");
    assert_eq!(json["payload"]["price"], "101.30");
    let sig = headers["x-spark-signature"].to_str().unwrap();
    let now =
        i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()).unwrap();
    assert!(verify(b"s3cret", sig, body, now, 300));
    assert!(!verify(b"wrong", sig, body, now, 300), "another secret fails");
    assert!(!verify(b"s3cret", sig, b"tampered", now, 300), "another body fails");
    assert!(!verify(b"s3cret", sig, body, now + 3600, 300), "an old signature fails");
}

#[tokio::test]
async fn statuses_map_to_retry_or_permanent() {
    let hook = receiver().await;
    let sink = WebhookPublisher::new(&hook.url, Duration::from_secs(5)).unwrap();
    for (status, transient) in
        [(500, true), (503, true), (408, true), (429, true), (400, false), (404, false), (422, false)]
    {
        hook.status.store(status, std::sync::atomic::Ordering::SeqCst);
        let err = sink.publish(&event()).await.unwrap_err();
        assert_eq!(matches!(err, spark_outbox::PublishError::Transient(_)), transient, "{status}: {err}");
    }
    // Nothing listening: a transient transport error.
    let dead = WebhookPublisher::new("http://127.0.0.1:9/hook", Duration::from_secs(1)).unwrap();
    assert!(matches!(dead.publish(&event()).await, Err(spark_outbox::PublishError::Transient(_))));
    assert!(WebhookPublisher::new("not a url", Duration::from_secs(1)).is_err());
}

#[test]
fn signature_format() {
    let s = signature(b"k", 1_700_000_000, b"{}");
    assert!(s.starts_with("t=1700000000,v1=") && s.len() == "t=1700000000,v1=".len() + 64, "{s}");
}
