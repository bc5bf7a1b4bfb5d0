//! Events as written and as published.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::{OutboxError, Result};

/// An event to write inside the business transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// The kind of aggregate, e.g. `"order"`. Part of the NATS subject.
    pub aggregate_type: String,
    /// The aggregate's id. Events of one aggregate are published in order.
    pub aggregate_id: String,
    /// What happened, e.g. `"order.accepted"`.
    pub event_type: String,
    /// The event body.
    pub payload: serde_json::Value,
    /// Extra headers passed to the sink.
    pub headers: BTreeMap<String, String>,
}

impl OutboxEvent {
    /// An event with no extra headers.
    #[must_use]
    pub fn new(
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        event_type: impl Into<String>,
        payload: serde_json::Value,
    ) -> OutboxEvent {
        OutboxEvent {
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            event_type: event_type.into(),
            payload,
            headers: BTreeMap::new(),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(OutboxError::InvalidEvent(format!("{what} must not be empty")));
        if self.aggregate_type.is_empty() {
            return bad("aggregate_type");
        }
        if self.aggregate_id.is_empty() {
            return bad("aggregate_id");
        }
        if self.event_type.is_empty() {
            return bad("event_type");
        }
        Ok(())
    }
}

/// A stored event, as a relay hands it to a [`Publisher`](crate::Publisher).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Event {
    /// The UUIDv7 id: the idempotency key / message id at the sink.
    pub id: Uuid,
    /// Insertion order (commit order within an aggregate).
    #[serde(skip)]
    pub seq: i64,
    /// The aggregate type.
    pub aggregate_type: String,
    /// The aggregate id.
    pub aggregate_id: String,
    /// The event type.
    pub event_type: String,
    /// The body.
    pub payload: serde_json::Value,
    /// Extra headers.
    pub headers: BTreeMap<String, String>,
    /// When it was enqueued (Unix ms).
    pub created_at_ms: i64,
    /// Failed delivery attempts so far. A claim that ends without a failure
    /// (a crash, a shutdown, a lease that ran out) does not count.
    #[serde(skip)]
    pub attempts: i32,
}

/// A dead letter: an event the relay gave up on.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetter {
    /// The event.
    #[serde(flatten)]
    pub event: Event,
    /// How many attempts failed.
    pub attempts: i32,
    /// The last error.
    pub last_error: Option<String>,
    /// Pending events of the same aggregate queued behind it: under
    /// [`DeadLetterPolicy::Block`](crate::DeadLetterPolicy::Block) they wait
    /// until the dead letter is retried or skipped. 0 once skipped.
    pub blocked: u64,
    /// Who released the aggregate past this dead letter (`spark outbox
    /// skip --by`), if anyone.
    pub skipped_by: Option<String>,
    /// When it was skipped (Unix ms).
    pub skipped_at_ms: Option<i64>,
}

/// The raw row of an event; decoded into [`Event`].
pub(crate) type Row = (i64, String, String, String, String, String, String, i64, i32);

pub(crate) fn decode(row: Row) -> Result<Event> {
    let (seq, id, aggregate_type, aggregate_id, event_type, payload, headers, created_at_ms, attempts) = row;
    let corrupt = |what: &str, e: &dyn std::fmt::Display| OutboxError::Corrupt(format!("event {seq}: {what}: {e}"));
    Ok(Event {
        id: Uuid::parse_str(&id).map_err(|e| corrupt("id", &e))?,
        seq,
        aggregate_type,
        aggregate_id,
        event_type,
        payload: serde_json::from_str(&payload).map_err(|e| corrupt("payload", &e))?,
        headers: serde_json::from_str(&headers).map_err(|e| corrupt("headers", &e))?,
        created_at_ms,
        attempts,
    })
}

/// Outbox counts for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct OutboxStats {
    /// Events not yet published (claimed, waiting, or backing off).
    pub pending: u64,
    /// Dead letters.
    pub dead: u64,
    /// Published events kept for retention.
    pub published: u64,
    /// Age of the oldest pending event in ms: the relay's lag.
    pub oldest_pending_age_ms: Option<i64>,
}

pub(crate) fn stats(pending: i64, dead: i64, published: i64, oldest: Option<i64>, now_ms: i64) -> OutboxStats {
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    OutboxStats {
        pending: count(pending),
        dead: count(dead),
        published: count(published),
        oldest_pending_age_ms: oldest.map(|created| (now_ms - created).max(0)),
    }
}

/// A dead letter's row: the event's [`Row`], then `last_error`, `skipped_by`,
/// `skipped_at_ms` and the count of pending events behind it.
pub(crate) type DeadRow =
    (i64, String, String, String, String, String, String, i64, i32, Option<String>, Option<String>, Option<i64>, i64);

pub(crate) fn dead_letter(row: DeadRow) -> DeadLetter {
    let (seq, id, at, aid, et, payload, headers, created, attempts, last_error, skipped_by, skipped_at_ms, blocked) =
        row;
    // A row dead-lettered because it could not be decoded must still be
    // listed: its raw payload is shown as a string, unreadable headers as
    // none (`last_error` says what was wrong).
    let event = Event {
        id: Uuid::parse_str(&id).unwrap_or_default(),
        seq,
        aggregate_type: at,
        aggregate_id: aid,
        event_type: et,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        headers: serde_json::from_str(&headers).unwrap_or_default(),
        created_at_ms: created,
        attempts,
    };
    let blocked = if skipped_at_ms.is_some() { 0 } else { u64::try_from(blocked).unwrap_or(0) };
    DeadLetter { event, attempts, last_error, blocked, skipped_by, skipped_at_ms }
}
