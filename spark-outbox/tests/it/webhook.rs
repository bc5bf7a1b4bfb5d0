//! Webhook deliveries carry the event id and a verifiable signature, are
//! never redirected, and reuse their connection; `verify` takes several
//! signatures and any timestamp without panicking.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::{any as any_method, post};
use proptest::prelude::*;
use spark_outbox::webhook::{signature, verify};
use spark_outbox::{Event, OutboxError, PublishError, Publisher, WebhookPublisher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::receiver;

const TOLERANCE: Duration = Duration::from_secs(300);

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

fn now_secs() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()).unwrap()
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
    let now = now_secs();
    assert!(verify(b"s3cret", sig, body, now, TOLERANCE).is_ok());
    assert!(verify(b"wrong", sig, body, now, TOLERANCE).is_err(), "another secret fails");
    assert!(verify(b"s3cret", sig, b"tampered", now, TOLERANCE).is_err(), "another body fails");
    assert!(verify(b"s3cret", sig, body, now + 3600, TOLERANCE).is_err(), "an old signature fails");
}

#[tokio::test]
async fn statuses_map_to_retry_or_permanent() {
    let hook = receiver().await;
    let sink = WebhookPublisher::new(&hook.url, Duration::from_secs(5)).unwrap();
    for (status, transient) in
        [(500, true), (503, true), (408, true), (429, true), (400, false), (404, false), (422, false)]
    {
        hook.status.store(status, Ordering::SeqCst);
        let err = sink.publish(&event()).await.unwrap_err();
        assert_eq!(matches!(err, PublishError::Transient(_)), transient, "{status}: {err}");
    }
    // An event type that is not a valid header value fails the same way on
    // every retry: permanent, not retried forever as a transport error.
    hook.status.store(200, Ordering::SeqCst);
    let mut bad = event();
    bad.event_type = "order\naccepted".into();
    assert!(matches!(sink.publish(&bad).await, Err(PublishError::Permanent(_))));
    // Nothing listening: a transient transport error.
    let dead = WebhookPublisher::new("http://127.0.0.1:9/hook", Duration::from_secs(1)).unwrap();
    assert!(matches!(dead.publish(&event()).await, Err(PublishError::Transient(_))));
    assert!(matches!(WebhookPublisher::new("not a url", Duration::from_secs(1)), Err(OutboxError::SinkConfig(_))));
    assert!(matches!(
        WebhookPublisher::new("ftp://127.0.0.1/hook", Duration::from_secs(1)),
        Err(OutboxError::SinkConfig(_))
    ));
}

/// A redirect is a permanent failure and is never followed: following a 302
/// turned the POST into a body-less GET whose 200 counted as a delivery, and
/// the relay then deleted an event nobody had received.
#[tokio::test]
async fn redirects_are_permanent_failures_and_never_followed() {
    let followed = Arc::new(AtomicU64::new(0));
    let counter = followed.clone();
    let app = Router::new()
        .route(
            "/hook/{status}",
            post(|axum::extract::Path(status): axum::extract::Path<u16>| async move {
                (StatusCode::from_u16(status).unwrap(), [(header::LOCATION, "/ok")], "moved")
            }),
        )
        .route(
            "/ok",
            any_method(move || async move {
                counter.fetch_add(1, Ordering::SeqCst);
                StatusCode::OK
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    for status in [301, 302, 303, 307, 308] {
        let sink = WebhookPublisher::new(&format!("http://{addr}/hook/{status}"), Duration::from_secs(5)).unwrap();
        let err = sink.publish(&event()).await.expect_err("a redirect is not a delivery");
        assert!(matches!(err, PublishError::Permanent(_)), "{status}: {err}");
        assert!(err.to_string().contains("/ok"), "the error names the target: {err}");
    }
    assert_eq!(followed.load(Ordering::SeqCst), 0, "the redirect target was never called");
}

/// Reads one HTTP/1.1 request (headers and a Content-Length body) from
/// `stream`; `false` at end of stream.
async fn read_request(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    for _ in 0..10_000 {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + length {
                buf.drain(..end + 4 + length);
                return true;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    false
}

/// Consecutive deliveries share one connection: the publisher reads the
/// response body, which lets the client pool the connection again.
#[tokio::test]
async fn deliveries_reuse_one_connection() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicU64::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let body = "x".repeat(16 * 1024);
                while read_request(&mut stream, &mut buf).await {
                    let response = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let sink = WebhookPublisher::new(&format!("http://{addr}/hook"), Duration::from_secs(5)).unwrap();
    for _ in 0..5 {
        sink.publish(&event()).await.unwrap();
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1, "five deliveries, one connection");
}

#[test]
fn signature_format() {
    let s = signature(b"k", 1_700_000_000, b"{}");
    assert!(s.starts_with("t=1700000000,v1=") && s.len() == "t=1700000000,v1=".len() + 64, "{s}");
}

/// During a key rotation the sender signs with both secrets; a receiver
/// holding either one accepts.
#[test]
fn any_of_several_v1_signatures_verifies() {
    let (t, body) = (1_700_000_000, b"{\"n\":1}".as_slice());
    let old = signature(b"old-secret", t, body);
    let new = signature(b"new-secret", t, body);
    let v1 = |s: &str| s.split_once(",v1=").unwrap().1.to_owned();
    let header = format!("t={t},v1={},v1={}", v1(&old), v1(&new));
    assert!(verify(b"old-secret", &header, body, t, TOLERANCE).is_ok());
    assert!(verify(b"new-secret", &header, body, t, TOLERANCE).is_ok());
    assert!(verify(b"third-secret", &header, body, t, TOLERANCE).is_err());
    // A garbage entry does not hide a good one.
    let header = format!("t={t},v1=zz,v1={}", v1(&new));
    assert!(verify(b"new-secret", &header, body, t, TOLERANCE).is_ok());
    // Two timestamps are ambiguous: rejected.
    let header = format!("t={t},t={t},v1={}", v1(&new));
    assert!(matches!(verify(b"new-secret", &header, body, t, TOLERANCE), Err(OutboxError::Signature(_))));
}

/// Extreme and malformed timestamps are errors, never an overflow.
#[test]
fn extreme_timestamps_are_rejected_without_panicking() {
    let body = b"{}";
    let v1 = "0".repeat(64);
    for t in [
        i64::MAX.to_string(),
        (-i64::MAX).to_string(),
        i64::MIN.to_string(),
        "99999999999999999999".to_owned(),
        "-99999999999999999999".to_owned(),
        "1e9".to_owned(),
        "+".to_owned(),
        String::new(),
        "garbage".to_owned(),
    ] {
        for now in [0, now_secs(), i64::MAX, i64::MIN] {
            let header = format!("t={t},v1={v1}");
            assert!(verify(b"k", &header, body, now, TOLERANCE).is_err(), "t={t} now={now}");
            assert!(verify(b"k", &header, body, now, Duration::MAX).is_err(), "t={t} now={now}");
        }
    }
    // A genuine signature at the extremes of time still verifies.
    for t in [i64::MAX, i64::MIN] {
        assert!(verify(b"k", &signature(b"k", t, body), body, t, TOLERANCE).is_ok(), "{t}");
    }
}

const EMPTY: &[u8] = b"[]";

proptest! {
    /// Any header string, any clock: `verify` returns, and only a header the
    /// signer produced passes.
    #[test]
    fn verify_never_panics_on_arbitrary_headers(header in ".{0,200}", now in any::<i64>(), tol in any::<u64>()) {
        prop_assert!(verify(b"k", &header, EMPTY, now, Duration::from_secs(tol)).is_err());
    }

    #[test]
    fn verify_accepts_exactly_the_timestamps_within_tolerance(t in any::<i64>(), now in any::<i64>(), tol in 0u64..1_000_000) {
        let header = signature(b"k", t, EMPTY);
        let within = now.abs_diff(t) <= tol;
        prop_assert_eq!(verify(b"k", &header, EMPTY, now, Duration::from_secs(tol)).is_ok(), within);
    }
}
