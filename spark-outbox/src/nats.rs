//! The NATS JetStream publisher.

use std::str::FromStr;
use std::time::Duration;

use async_nats::{HeaderName, HeaderValue};
use async_trait::async_trait;

use crate::{Event, OutboxError, PublishError, Publisher};

/// The duplicate window of a stream created by [`NatsPublisher::connect`]:
/// it must cover a default relay's redelivery window (lease 60 s + backoff
/// cap 5 min), or the relay would warn about the very stream it made and
/// store a late redelivery twice; 10 minutes leaves room for a longer lease.
const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

/// Publishes each event to `<prefix>.<aggregate_type>.<event_type>` with
/// `Nats-Msg-Id: <event id>`, and counts it published only after the
/// JetStream ack.
///
/// JetStream drops a redelivery with the same id inside the stream's
/// duplicate window, so keep the window longer than a lease plus the longest
/// backoff, and check it with [`NatsPublisher::check_duplicate_window`].
///
/// The event's own headers are sent along, except `Nats-*` headers: those
/// are JetStream controls (`Nats-Msg-Id`, `Nats-Expected-*`, `Nats-TTL`…),
/// and letting an event set them would replace the dedupe id or change how
/// the stream stores the message. They are dropped with a warning.
///
/// ```no_run
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::time::Duration;
/// use spark_outbox::NatsPublisher;
///
/// let nats = NatsPublisher::connect("nats://127.0.0.1:4222", "orders", "ORDERS").await?;
/// let window = nats.check_duplicate_window(Duration::from_secs(300)).await?;
/// if !window.covers() {
///     eprintln!("{window}");
/// }
/// # Ok::<(), spark_outbox::OutboxError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct NatsPublisher {
    js: async_nats::jetstream::Context,
    prefix: String,
    /// The stream, when known; otherwise looked up by subject.
    stream: Option<String>,
}

/// Checks that `subject` is a literal subject JetStream accepts: no
/// whitespace, no wildcard, no empty token.
fn validate_subject(subject: &str) -> Result<(), OutboxError> {
    let invalid = |reason| Err(OutboxError::InvalidSubject { subject: subject.to_owned(), reason });
    if subject.is_empty() {
        return invalid("it is empty");
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid("it contains whitespace or a control character");
    }
    if subject.split('.').any(str::is_empty) {
        return invalid("it has an empty token (a leading, trailing or doubled '.')");
    }
    if subject.split('.').any(|token| token == "*" || token == ">") {
        return invalid("it contains a wildcard token ('*' or '>'), which matches subjects instead of naming one");
    }
    // `*` or `>` inside a token is legal to NATS, but easy to confuse with a
    // wildcard in every subscription that names the subject.
    if subject.contains(['*', '>']) {
        return invalid("it contains '*' or '>'");
    }
    Ok(())
}

impl NatsPublisher {
    /// A publisher on an existing JetStream context. A stream must capture
    /// `<prefix>.>`.
    ///
    /// # Errors
    ///
    /// [`OutboxError::InvalidSubject`] when `prefix` is not a literal
    /// subject (empty, whitespace, `*`/`>`, empty tokens like `a..b`).
    pub fn new(js: async_nats::jetstream::Context, prefix: impl Into<String>) -> Result<NatsPublisher, OutboxError> {
        let prefix = prefix.into();
        validate_subject(&prefix)?;
        Ok(NatsPublisher { js, prefix, stream: None })
    }

    /// Connects to `url` and makes sure a stream named `stream` captures
    /// `<prefix>.>` (created with a 10-minute duplicate window if missing;
    /// an existing stream is used as it is).
    ///
    /// # Errors
    ///
    /// [`OutboxError::InvalidSubject`] for a bad prefix (checked before
    /// connecting), [`OutboxError::Sink`] when the server cannot be reached
    /// or the stream cannot be created.
    pub async fn connect(url: &str, prefix: &str, stream: &str) -> Result<NatsPublisher, OutboxError> {
        validate_subject(prefix)?;
        let client = async_nats::connect(url)
            .await
            .map_err(|e| OutboxError::Sink { what: format!("cannot connect to NATS at {url}"), source: e.into() })?;
        let js = async_nats::jetstream::new(client);
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: stream.to_owned(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await
        .map_err(|e| OutboxError::Sink {
            what: format!("cannot create JetStream stream {stream}"),
            source: e.into(),
        })?;
        let mut publisher = NatsPublisher::new(js, prefix)?;
        publisher.stream = Some(stream.to_owned());
        Ok(publisher)
    }

    /// The subject an event goes to.
    #[must_use]
    pub fn subject(&self, event: &Event) -> String {
        format!("{}.{}.{}", self.prefix, event.aggregate_type, event.event_type)
    }

    /// Reads the duplicate window of the stream that captures this
    /// publisher's subjects and compares it with `needed`, which should be
    /// the relay's lease plus its longest backoff: a redelivery later than
    /// the window is stored twice. Logs a warning when the window is
    /// shorter.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Sink`] when no stream captures `<prefix>.>` or its
    /// info cannot be read.
    pub async fn check_duplicate_window(&self, needed: Duration) -> Result<DuplicateWindow, OutboxError> {
        let stream = match &self.stream {
            Some(stream) => stream.clone(),
            None => self.js.stream_by_subject(format!("{}.>", self.prefix)).await.map_err(|e| OutboxError::Sink {
                what: format!("no JetStream stream captures {}.>", self.prefix),
                source: e.into(),
            })?,
        };
        let info = self
            .js
            .get_stream_no_info(&stream)
            .await
            .map_err(|e| OutboxError::Sink {
                what: format!("cannot find JetStream stream {stream}"),
                source: e.into(),
            })?
            .get_info()
            .await
            .map_err(|e| OutboxError::Sink {
                what: format!("cannot read the info of JetStream stream {stream}"),
                source: e.into(),
            })?;
        let window = DuplicateWindow { stream, window: info.config.duplicate_window, needed };
        if !window.covers() {
            tracing::warn!(stream = %window.stream, window = ?window.window, needed = ?needed, "{window}");
        }
        Ok(window)
    }
}

/// A stream's duplicate window against the time a redelivery can take, from
/// [`NatsPublisher::check_duplicate_window`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateWindow {
    stream: String,
    window: Duration,
    needed: Duration,
}

impl DuplicateWindow {
    /// The stream checked.
    #[must_use]
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The stream's duplicate window.
    #[must_use]
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The window asked for.
    #[must_use]
    pub fn needed(&self) -> Duration {
        self.needed
    }

    /// Whether a redelivery within `needed` is still deduplicated.
    #[must_use]
    pub fn covers(&self) -> bool {
        self.window >= self.needed
    }
}

impl std::fmt::Display for DuplicateWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.covers() {
            write!(f, "JetStream stream {} dedupes for {:?}, covering {:?}", self.stream, self.window, self.needed)
        } else {
            write!(
                f,
                "JetStream stream {} dedupes for only {:?}, less than the {:?} a redelivery can take \
                 (lease + longest backoff); a late redelivery would be stored twice — raise duplicate_window",
                self.stream, self.window, self.needed
            )
        }
    }
}

/// The headers of one message: the event's own first, without `Nats-*`
/// controls, then Spark's, so neither can be overridden by the event.
fn headers(event: &Event) -> Result<async_nats::HeaderMap, PublishError> {
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in &event.headers {
        if name.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("nats-")) {
            tracing::warn!(event = %event.id, header = %name, "dropped a Nats-* header set on the event");
            continue;
        }
        // async-nats panics on an invalid name or value given as &str; parse
        // them so a bad event is a permanent failure, not a crashed relay.
        let name_ok = HeaderName::from_str(name)
            .map_err(|_| PublishError::Permanent(format!("event header name {name:?} is not a valid NATS header")))?;
        let value_ok = HeaderValue::from_str(value).map_err(|_| {
            PublishError::Permanent(format!("event header {name:?} has a value with a line break, invalid in NATS"))
        })?;
        headers.insert(name_ok, value_ok);
    }
    headers.insert(async_nats::header::NATS_MESSAGE_ID, HeaderValue::from_str(&event.id.to_string()).map_err(bad)?);
    let event_type = HeaderValue::from_str(&event.event_type).map_err(|_| {
        PublishError::Permanent(format!("event type {:?} is not a valid NATS header value", event.event_type))
    })?;
    headers.insert(HeaderName::from_static("X-Spark-Event-Type"), event_type);
    Ok(headers)
}

fn bad(e: impl std::fmt::Display) -> PublishError {
    PublishError::Permanent(format!("NATS header: {e}"))
}

#[async_trait]
impl Publisher for NatsPublisher {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        let subject = self.subject(event);
        // The prefix was checked at build; the aggregate and event types come
        // with each event, and a bad subject would fail the same way forever.
        validate_subject(&subject).map_err(|e| PublishError::Permanent(e.to_string()))?;
        let body = serde_json::to_vec(event).map_err(|e| PublishError::Permanent(format!("unencodable event: {e}")))?;
        let ack = self
            .js
            .publish_with_headers(subject, headers(event)?, bytes::Bytes::from(body))
            .await
            .map_err(|e| PublishError::Transient(format!("NATS publish: {e}")))?;
        ack.await.map_err(|e| PublishError::Transient(format!("JetStream ack: {e}")))?;
        Ok(())
    }

    async fn preflight(&self, redelivery: Duration) -> Option<String> {
        match self.check_duplicate_window(redelivery).await {
            Ok(window) if window.covers() => None,
            Ok(window) => Some(window.to_string()),
            Err(e) => Some(format!("cannot check the JetStream duplicate window: {}", crate::error::chain(&e))),
        }
    }
}
