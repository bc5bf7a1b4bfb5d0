//! The JetStream sink against the real NATS server: the dedupe id is always
//! the event id, subjects are checked when the publisher is built, and a
//! duplicate window too short for redeliveries is reported.

use std::collections::BTreeMap;
use std::time::Duration;

use spark_outbox::{Event, NatsPublisher, OutboxError, PublishError, Publisher};

fn event(headers: &[(&str, &str)]) -> Event {
    Event {
        id: uuid::Uuid::now_v7(),
        seq: 1,
        aggregate_type: "order".into(),
        aggregate_id: "o-1".into(),
        event_type: "accepted".into(),
        payload: serde_json::json!({ "n": 1 }),
        headers: headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>(),
        created_at_ms: 0,
        attempts: 1,
    }
}

fn tag() -> String {
    format!("sparknats{}", fastrand::u32(..))
}

async fn jetstream(url: &str) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(async_nats::connect(url).await.unwrap())
}

/// A `Nats-Msg-Id` (or any `Nats-*` control) on the event cannot replace
/// the event id as the dedupe id: two events that carry the same user
/// `Nats-Msg-Id` both land, each stored under its own id.
#[tokio::test]
async fn user_headers_cannot_override_the_dedupe_id() {
    let Some(url) = spark_testkit::service_url("NATS_URL", "NATS JetStream") else { return };
    let tag = tag();
    let nats = NatsPublisher::connect(&url, &tag, &tag).await.unwrap();
    let headers = [("Nats-Msg-Id", "x"), ("nats-expected-stream", "another-stream"), ("traceparent", "00-abc-01")];
    let (first, second) = (event(&headers), event(&headers));
    nats.publish(&first).await.unwrap();
    nats.publish(&second).await.unwrap();
    // A redelivery of the first is still dropped by JetStream.
    nats.publish(&first).await.unwrap();

    let js = jetstream(&url).await;
    let stream = js.get_stream(&tag).await.unwrap();
    let info = stream.get_info().await.unwrap();
    assert_eq!(info.state.messages, 2, "both events landed, the redelivery did not");
    for (seq, e) in [(1, &first), (2, &second)] {
        let message = stream.get_raw_message(seq).await.unwrap();
        let headers = message.headers;
        assert_eq!(headers.get("Nats-Msg-Id").map(|v| v.as_str()), Some(e.id.to_string().as_str()));
        assert_eq!(headers.get("traceparent").map(|v| v.as_str()), Some("00-abc-01"), "other headers pass");
        assert_eq!(headers.get("X-Spark-Event-Type").map(|v| v.as_str()), Some("accepted"));
    }
    js.delete_stream(&tag).await.unwrap();
}

/// A header async-nats cannot encode is a permanent failure, not a panic
/// that takes the relay down.
#[tokio::test]
async fn unencodable_headers_and_subjects_are_permanent_failures() {
    let Some(url) = spark_testkit::service_url("NATS_URL", "NATS JetStream") else { return };
    let tag = tag();
    let nats = NatsPublisher::connect(&url, &tag, &tag).await.unwrap();
    for bad in [event(&[("bad name", "v")]), event(&[("a:b", "v")]), event(&[("ok", "line\r\nbreak")])] {
        let err = nats.publish(&bad).await.expect_err("an unencodable header");
        assert!(matches!(err, PublishError::Permanent(_)), "{err}");
    }
    let mut wildcard = event(&[]);
    wildcard.event_type = "*".into();
    assert!(matches!(nats.publish(&wildcard).await, Err(PublishError::Permanent(_))));
    jetstream(&url).await.delete_stream(&tag).await.unwrap();
}

/// Bad subject prefixes fail when the publisher is built, with a typed
/// error, before any connection is made.
#[tokio::test]
async fn bad_subjects_fail_at_build() {
    let bad = ["", " ", "orders events", "orders.*", "orders.>", ">", "a..b", ".orders", "orders.", "or*ders", "tab\t"];
    for prefix in bad {
        // Port 9 on loopback: nothing listens, so only validation can answer.
        let err = NatsPublisher::connect("nats://127.0.0.1:9", prefix, "S").await.expect_err(prefix);
        assert!(matches!(&err, OutboxError::InvalidSubject { subject, .. } if subject == prefix), "{prefix:?}: {err}");
    }
    let unreachable = NatsPublisher::connect("nats://127.0.0.1:9", "orders", "S").await.expect_err("no server");
    assert!(matches!(unreachable, OutboxError::Sink { .. }), "{unreachable}");

    let Some(url) = spark_testkit::service_url("NATS_URL", "NATS JetStream") else { return };
    let js = jetstream(&url).await;
    for prefix in bad {
        assert!(
            matches!(NatsPublisher::new(js.clone(), prefix), Err(OutboxError::InvalidSubject { .. })),
            "{prefix:?}"
        );
    }
    assert!(NatsPublisher::new(js, "orders.v1").is_ok());
}

/// A stream that dedupes for 1 s is reported too short for 5 minutes; the
/// stream is found by subject when the publisher did not create it.
#[tokio::test]
async fn a_short_duplicate_window_is_reported() {
    let Some(url) = spark_testkit::service_url("NATS_URL", "NATS JetStream") else { return };
    let tag = tag();
    let js = jetstream(&url).await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: tag.clone(),
        subjects: vec![format!("{tag}.>")],
        duplicate_window: Duration::from_secs(1),
        ..Default::default()
    })
    .await
    .unwrap();
    let nats = NatsPublisher::new(js.clone(), tag.as_str()).unwrap();
    let window = nats.check_duplicate_window(Duration::from_secs(300)).await.unwrap();
    assert!(!window.covers(), "{window}");
    assert_eq!(
        (window.stream(), window.window(), window.needed()),
        (tag.as_str(), Duration::from_secs(1), Duration::from_secs(300))
    );
    assert!(window.to_string().contains("raise duplicate_window"), "{window}");
    assert!(nats.check_duplicate_window(Duration::from_millis(500)).await.unwrap().covers());
    // What a relay calls before its first claim.
    let warning = nats.preflight(Duration::from_secs(300)).await.expect("a 1 s window cannot cover 5 min");
    assert!(warning.contains("raise duplicate_window"), "{warning}");
    assert_eq!(nats.preflight(Duration::from_millis(500)).await, None);
    js.delete_stream(&tag).await.unwrap();

    // The stream `connect` creates dedupes for 10 minutes: enough for a
    // relay with the defaults, which then has nothing to warn about.
    let created = NatsPublisher::connect(&url, &tag, &tag).await.unwrap();
    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    let relay = spark_outbox::Relay::builder(spark_outbox::SqliteOutbox::new(pool)).build().unwrap();
    let window = created.check_duplicate_window(relay.redelivery_window()).await.unwrap();
    assert!(window.covers(), "{window}");
    assert_eq!(created.preflight(relay.redelivery_window()).await, None);
    assert!(!created.check_duplicate_window(Duration::from_secs(601)).await.unwrap().covers());
    js.delete_stream(&tag).await.unwrap();

    // No stream captures the subjects: an error, not a silent pass.
    let orphan = NatsPublisher::new(js, format!("{tag}none")).unwrap();
    assert!(matches!(orphan.check_duplicate_window(Duration::from_secs(1)).await, Err(OutboxError::Sink { .. })));
    let warning = orphan.preflight(Duration::from_secs(1)).await.expect("no stream is a warning, not a pass");
    assert!(warning.contains("cannot check"), "{warning}");
}
