//! The HTTP webhook publisher.

use std::time::Duration;

use async_trait::async_trait;
use hmac::{KeyInit, Mac};

use crate::{Event, PublishError, Publisher};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// POSTs each event as JSON to a URL.
///
/// Headers: `Idempotency-Key: <event id>` (receivers dedupe on it),
/// `X-Spark-Event-Type`, and, with a secret, `X-Spark-Signature:
/// t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`. A 2xx is delivered;
/// 408, 429, 5xx and transport errors (timeouts included) are retried;
/// other statuses are permanent.
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
    /// For a URL that does not parse or an HTTP client that cannot be built.
    pub fn new(url: &str, timeout: Duration) -> Result<WebhookPublisher, String> {
        // reqwest is built without a default crypto provider; use ring, the
        // one sqlx and async-nats already link. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = reqwest::Url::parse(url).map_err(|e| format!("invalid webhook URL {url:?}: {e}"))?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("spark-outbox/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(WebhookPublisher { client, url, secret: None })
    }

    /// Signs every delivery with `secret`.
    #[must_use]
    pub fn with_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.secret = Some(secret.into());
        self
    }
}

/// `t=<t>,v1=<hex HMAC-SHA256 of "t.body">`, as receivers recompute it.
#[must_use]
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length.
    let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a `X-Spark-Signature` header against `body`, allowing `tolerance`
/// seconds of clock difference (replay protection). For receivers.
#[must_use]
pub fn verify(secret: &[u8], header: &str, body: &[u8], now_secs: i64, tolerance: i64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    if (now_secs - t).abs() > tolerance {
        return false;
    }
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else { return false };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    // Constant-time comparison.
    mac.verify_slice(&v1).is_ok()
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
            request = request.header("x-spark-signature", signature(secret, crate::event::now_ms() / 1000, &body));
        }
        let response = request.body(body).send().await.map_err(|e| PublishError::Transient(format!("webhook: {e}")))?;
        let status = response.status();
        match status.as_u16() {
            200..=299 => Ok(()),
            408 | 429 | 500..=599 => Err(PublishError::Transient(format!("webhook answered {status}"))),
            _ => Err(PublishError::Permanent(format!("webhook answered {status}"))),
        }
    }
}
