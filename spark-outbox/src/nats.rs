//! The NATS JetStream publisher.

use async_trait::async_trait;

use crate::{Event, PublishError, Publisher};

/// Publishes each event to `<prefix>.<aggregate_type>.<event_type>` with
/// `Nats-Msg-Id: <event id>`, and counts it published only after the
/// JetStream ack. JetStream drops a redelivery with the same id inside the
/// stream's duplicate window, so keep the window longer than a lease plus
/// the longest backoff.
#[derive(Debug, Clone)]
pub struct NatsPublisher {
    js: async_nats::jetstream::Context,
    prefix: String,
}

impl NatsPublisher {
    /// A publisher on an existing JetStream context. A stream must capture
    /// `<prefix>.>`.
    #[must_use]
    pub fn new(js: async_nats::jetstream::Context, prefix: impl Into<String>) -> NatsPublisher {
        NatsPublisher { js, prefix: prefix.into() }
    }

    /// Connects to `url` and makes sure a stream named `stream` captures
    /// `<prefix>.>` (created with a 2-minute duplicate window if missing).
    ///
    /// # Errors
    ///
    /// When the server cannot be reached or the stream cannot be created.
    pub async fn connect(url: &str, prefix: &str, stream: &str) -> Result<NatsPublisher, String> {
        let client = async_nats::connect(url).await.map_err(|e| format!("cannot connect to NATS at {url}: {e}"))?;
        let js = async_nats::jetstream::new(client);
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: stream.to_owned(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window: std::time::Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot create JetStream stream {stream}: {e}"))?;
        Ok(NatsPublisher::new(js, prefix))
    }

    /// The subject an event goes to.
    #[must_use]
    pub fn subject(&self, event: &Event) -> String {
        format!("{}.{}.{}", self.prefix, event.aggregate_type, event.event_type)
    }
}

#[async_trait]
impl Publisher for NatsPublisher {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        let body = serde_json::to_vec(event).map_err(|e| PublishError::Permanent(format!("unencodable event: {e}")))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.id.to_string().as_str());
        headers.insert("X-Spark-Event-Type", event.event_type.as_str());
        for (k, v) in &event.headers {
            headers.insert(k.as_str(), v.as_str());
        }
        let ack = self
            .js
            .publish_with_headers(self.subject(event), headers, bytes::Bytes::from(body))
            .await
            .map_err(|e| PublishError::Transient(format!("NATS publish: {e}")))?;
        ack.await.map_err(|e| PublishError::Transient(format!("JetStream ack: {e}")))?;
        Ok(())
    }
}
