//! The storage interface relays run on.

use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::{DeadLetter, Event, OutboxStats, Result};

/// What a relay needs from the database. Implemented by
/// [`PgOutbox`](crate::PgOutbox) and [`SqliteOutbox`](crate::SqliteOutbox).
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Claims up to `batch` events for `relay` until `lease` runs out: each
    /// the oldest pending event of its aggregate, available, and not claimed
    /// by another relay. At most one event per aggregate.
    async fn claim(&self, relay: &str, batch: u32, lease: Duration) -> Result<Vec<Event>>;

    /// Marks events published: deleted, or kept as `published` when
    /// `keep` (retention).
    async fn mark_published(&self, seqs: &[i64], keep: bool) -> Result<()>;

    /// Records a failed attempt: back to pending from `retry_at_ms`, or a
    /// dead letter when `retry_at_ms` is `None`. Only while `relay` holds it.
    async fn mark_failed(&self, seq: i64, relay: &str, error: &str, retry_at_ms: Option<i64>) -> Result<()>;

    /// Gives claimed events back (shutdown), without counting the attempt.
    async fn release(&self, seqs: &[i64], relay: &str) -> Result<()>;

    /// Deletes published events older than `before_ms`, `batch` at a time.
    async fn cleanup(&self, before_ms: i64, batch: u32) -> Result<u64>;

    /// Counts for operators and the lag gauge.
    async fn stats(&self) -> Result<OutboxStats>;

    /// Dead letters, oldest first.
    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>>;

    /// Puts one dead letter (or all of them, for `None`) back in the queue
    /// with fresh attempts; returns how many.
    async fn retry_dead(&self, id: Option<Uuid>) -> Result<u64>;
}

/// Counts by status and the oldest pending event; the same on both backends.
pub(crate) const STATS_SQL: &str =
    "SELECT COUNT(*) FILTER (WHERE status = 'pending'), COUNT(*) FILTER (WHERE status = 'dead'),
        COUNT(*) FILTER (WHERE status = 'published'), MIN(created_at_ms) FILTER (WHERE status = 'pending')
     FROM spark_outbox";

pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A store chosen at run time (`Arc<dyn OutboxStore>`) is a store too.
#[async_trait]
impl<T: OutboxStore + ?Sized> OutboxStore for std::sync::Arc<T> {
    async fn claim(&self, relay: &str, batch: u32, lease: Duration) -> Result<Vec<Event>> {
        (**self).claim(relay, batch, lease).await
    }
    async fn mark_published(&self, seqs: &[i64], keep: bool) -> Result<()> {
        (**self).mark_published(seqs, keep).await
    }
    async fn mark_failed(&self, seq: i64, relay: &str, error: &str, retry_at_ms: Option<i64>) -> Result<()> {
        (**self).mark_failed(seq, relay, error, retry_at_ms).await
    }
    async fn release(&self, seqs: &[i64], relay: &str) -> Result<()> {
        (**self).release(seqs, relay).await
    }
    async fn cleanup(&self, before_ms: i64, batch: u32) -> Result<u64> {
        (**self).cleanup(before_ms, batch).await
    }
    async fn stats(&self) -> Result<OutboxStats> {
        (**self).stats().await
    }
    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>> {
        (**self).dead_letters(limit).await
    }
    async fn retry_dead(&self, id: Option<Uuid>) -> Result<u64> {
        (**self).retry_dead(id).await
    }
}
