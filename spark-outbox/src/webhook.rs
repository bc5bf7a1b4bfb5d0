//! The HTTP webhook publisher, and [`verify`] for receivers.

use std::time::Duration;

use async_trait::async_trait;
use hmac::{KeyInit, Mac};
use spark_db::Clock;

use crate::{Event, OutboxError, PublishError, Publisher};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// How much of a response body is read before it is dropped. Reading the
/// body lets the connection go back to the pool; a receiver that answers
/// with more than this is not worth a pooled connection.
const DRAIN_LIMIT: usize = 64 * 1024;

/// POSTs each event as JSON to a URL.
///
/// Headers: `Idempotency-Key: <event id>` (receivers dedupe on it),
/// `X-Spark-Event-Type`, and, with a secret, `X-Spark-Signature:
/// t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`.
///
/// A 2xx is delivered; 408, 429, 5xx and transport errors (timeouts
/// included) are retried; every other status is permanent. Redirects are
/// never followed: a 3xx is a permanent failure, because following it would
/// turn the POST into a body-less GET whose 2xx says nothing about the event.
///
/// ```
/// use std::time::Duration;
/// use spark_outbox::WebhookPublisher;
///
/// let sink = WebhookPublisher::new("http://127.0.0.1:8080/hooks/orders", Duration::from_secs(10))?
///     .with_secret("s3cret");
/// # Ok::<(), spark_outbox::OutboxError>(())
/// ```
#[derive(Debug, Clone)]
pub struct WebhookPublisher {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: Option<Vec<u8>>,
}

impl WebhookPublisher {
    /// A publisher to `url` with a request timeout.
    ///
    /// # Errors
    ///
    /// [`OutboxError::SinkConfig`] for a URL that does not parse or is not
    /// http(s), [`OutboxError::Sink`] when the HTTP client cannot be built.
    pub fn new(url: &str, timeout: Duration) -> Result<WebhookPublisher, OutboxError> {
        // reqwest is built without a default crypto provider; use ring, the
        // one sqlx and async-nats already link. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| OutboxError::SinkConfig(format!("webhook URL {url:?} does not parse ({e})")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(OutboxError::SinkConfig(format!("webhook URL {url:?} is not http or https")));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            // A redirect would be followed as a GET without the body, and its
            // 2xx would count as a delivery of an event nobody received.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("spark-outbox/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OutboxError::Sink {
                what: "cannot build the webhook HTTP client".to_owned(),
                source: e.into(),
            })?;
        Ok(WebhookPublisher { client, url: parsed, secret: None })
    }

    /// Signs every delivery with `secret`.
    #[must_use]
    pub fn with_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.secret = Some(secret.into());
        self
    }
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// `t=<t>,v1=<hex HMAC-SHA256 of "t.body">`, as receivers recompute it.
///
/// ```
/// let header = spark_outbox::webhook::signature(b"s3cret", 1_700_000_000, b"{}");
/// assert!(header.starts_with("t=1700000000,v1="));
/// ```
#[must_use]
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let t = timestamp.to_string();
    format!("t={t},v1={}", hex::encode(mac(secret, &t, body).finalize().into_bytes()))
}

/// Checks a `X-Spark-Signature` header against `body`, for receivers.
///
/// The header is `t=<unix seconds>,v1=<hex>[,v1=<hex>…]`: it passes when
/// the timestamp is within `tolerance` of `now_secs` (replay protection) and
/// any one `v1=` signature matches, so a sender can sign with an old and a
/// new secret while a key is rotated. The comparison is constant-time. Any
/// timestamp, however large or malformed, is an error, never an overflow.
///
/// ```
/// use std::time::Duration;
/// use spark_outbox::webhook::{signature, verify};
///
/// let header = signature(b"s3cret", 1_700_000_000, b"{}");
/// assert!(verify(b"s3cret", &header, b"{}", 1_700_000_010, Duration::from_secs(300)).is_ok());
/// assert!(verify(b"other", &header, b"{}", 1_700_000_010, Duration::from_secs(300)).is_err());
/// ```
///
/// # Errors
///
/// [`OutboxError::Signature`] when the header is malformed (no or several
/// `t=`, no `v1=`), the timestamp is not an integer or is outside the
/// tolerance, or no signature matches.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now_secs: i64, tolerance: Duration) -> Result<(), OutboxError> {
    let mut t: Option<&str> = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", _)) if t.is_some() => {
                return Err(OutboxError::Signature("the header has more than one t= timestamp".to_owned()));
            }
            Some(("t", v)) => t = Some(v),
            // A signature that is not hex cannot match; skip it rather than
            // reject the header, so one bad entry does not hide a good one.
            Some(("v1", v)) => signatures.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let Some(t) = t else { return Err(OutboxError::Signature("the header has no t= timestamp".to_owned())) };
    let seconds: i64 = t.parse().map_err(|_| {
        OutboxError::Signature(format!("timestamp {:?} is not a whole number of seconds", truncated(t, 32)))
    })?;
    // `abs_diff` is exact for every pair of i64, so no timestamp overflows.
    let skew = now_secs.abs_diff(seconds);
    if skew > tolerance.as_secs() {
        return Err(OutboxError::Signature(format!(
            "timestamp {seconds} is {skew} s away from now ({now_secs}), more than the tolerance of {} s",
            tolerance.as_secs()
        )));
    }
    if signatures.is_empty() {
        return Err(OutboxError::Signature("the header has no hex v1= signature".to_owned()));
    }
    // The MAC covers the timestamp exactly as sent, so a re-spelled
    // timestamp (`+5`, `05`) does not verify.
    let expected = mac(secret, t, body);
    if signatures.iter().any(|s| expected.clone().verify_slice(s).is_ok()) {
        Ok(())
    } else {
        Err(OutboxError::Signature(format!("none of the {} v1= signatures matches the body", signatures.len())))
    }
}

/// The first `max` characters of a value quoted in an error message, so a
/// hostile header cannot fill the logs.
fn truncated(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

/// Reads and drops up to [`DRAIN_LIMIT`] bytes of a response body so the
/// connection can be reused; errors only mean it will not be.
async fn drain(mut response: reqwest::Response) {
    let mut read = 0;
    while read < DRAIN_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) | Err(_) => break,
        }
    }
}

#[async_trait]
impl Publisher for WebhookPublisher {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        let body = serde_json::to_vec(event).map_err(|e| PublishError::Permanent(format!("unencodable event: {e}")))?;
        let mut request = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header("idempotency-key", event.id.to_string())
            .header("x-spark-event-type", &event.event_type);
        if let Some(secret) = &self.secret {
            let now_secs = spark_db::SystemClock.now_ms().div_euclid(1000);
            request = request.header("x-spark-signature", signature(secret, now_secs, &body));
        }
        let response = request.body(body).send().await.map_err(|e| {
            // A request that cannot even be built (an event type that is not a
            // valid header value) fails the same way on every retry.
            if e.is_builder() {
                PublishError::Permanent(format!("webhook request: {e}"))
            } else {
                PublishError::Transient(format!("webhook: {e}"))
            }
        })?;
        let status = response.status();
        let location =
            response.headers().get("location").and_then(|l| l.to_str().ok()).map(|l| truncated(l, 200).to_owned());
        drain(response).await;
        match status.as_u16() {
            200..=299 => Ok(()),
            300..=399 => Err(PublishError::Permanent(format!(
                "webhook answered {status} (redirect to {}); redirects are not followed, configure the final URL",
                location.as_deref().unwrap_or("nowhere")
            ))),
            408 | 429 | 500..=599 => Err(PublishError::Transient(format!("webhook answered {status}"))),
            _ => Err(PublishError::Permanent(format!("webhook answered {status}"))),
        }
    }
}
