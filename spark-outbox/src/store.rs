//! The storage interface relays run on.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use spark_db::SharedClock;
use uuid::Uuid;

use crate::{DeadLetter, DeadLetterPolicy, Event, OutboxStats, Result};

/// Identifies one claim. Written on the claimed rows and required by every
/// completion (published, failed, released), so a relay whose lease ran out
/// and whose events another relay claimed again changes nothing when it
/// finishes late — whatever the relays are called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClaimToken(Uuid);

impl ClaimToken {
    /// A fresh, unique token.
    #[must_use]
    pub fn new() -> ClaimToken {
        ClaimToken(Uuid::now_v7())
    }
}

impl Default for ClaimToken {
    fn default() -> Self {
        ClaimToken::new()
    }
}

impl fmt::Display for ClaimToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What one claim returned.
#[derive(Debug)]
#[non_exhaustive]
pub struct Claim {
    /// The token every completion of these events must show.
    pub token: ClaimToken,
    /// The claimed events, in `seq` order. An aggregate may have several
    /// (a run): nothing older of that aggregate is left outside the claim,
    /// and the relay publishes a run one event at a time, in order.
    pub events: Vec<Event>,
    /// Claimed rows that cannot be decoded (e.g. headers that are not a map
    /// of strings, written by hand): the relay dead-letters them with the
    /// error instead of letting them wedge the queue.
    pub unreadable: Vec<Unreadable>,
}

/// A claimed row that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unreadable {
    /// Its sequence number.
    pub seq: i64,
    /// Why it could not be read.
    pub error: String,
}

/// What to do with an event whose publish failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// Back to pending from `at_ms`, unless the event has been failing for
    /// `budget` since its first failure: then a dead letter.
    Retry {
        /// Not before this time (Unix ms, the store's clock).
        at_ms: i64,
        /// How long an event may keep failing.
        budget: Duration,
    },
    /// The sink refused the event (a permanent error): counted as a
    /// refusal, and a dead letter once it is the `max`-th; until then as
    /// [`Retry`](Self::Retry). Refusals are counted apart from transient
    /// failures, so an outage does not use up an event's refusals.
    Refused {
        /// Not before this time (Unix ms, the store's clock).
        at_ms: i64,
        /// How long an event may keep failing.
        budget: Duration,
        /// Refusals that make a dead letter.
        max: u32,
    },
    /// A dead letter now.
    Dead,
}

/// What [`OutboxStore::mark_failed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failed {
    /// Pending again, after its backoff.
    Retrying,
    /// Dead-lettered.
    Dead,
}

/// What a relay needs from the database. Implemented by
/// [`PgOutbox`](crate::PgOutbox) and [`SqliteOutbox`](crate::SqliteOutbox).
///
/// Completions take the [`ClaimToken`] of the claim and change only rows
/// that still carry it.
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// The clock the store and its relays read (backoff, retry budget,
    /// retention; leases too on SQLite — PostgreSQL leases use the
    /// database's clock).
    fn clock(&self) -> SharedClock;

    /// Claims up to `batch` events for `relay` until `lease` runs out:
    /// available events no other relay holds, each with nothing older of its
    /// aggregate left unpublished outside this claim (so an aggregate's
    /// events come as a run in `seq` order). Under
    /// [`DeadLetterPolicy::Block`] nothing behind an unskipped dead letter
    /// is claimed.
    ///
    /// Every claim that returned events must be ended with
    /// [`finish`](Self::finish) (or, if the relay is dropped half-way,
    /// [`abandon`](Self::abandon)).
    async fn claim(&self, relay: &str, batch: u32, lease: Duration, policy: DeadLetterPolicy) -> Result<Claim>;

    /// Ends claim `token`. With `commit`, everything marked on it takes
    /// effect: PostgreSQL commits the claim's transaction here, so a
    /// [`mark_published`](Self::mark_published) counts only once this
    /// returns `Ok(true)`. `Ok(false)`: the claim was lost (its lease ran
    /// out and the database ended it) and nothing marked on it happened;
    /// its events go to the next claim. Without `commit`, the claim is
    /// rolled back: every event goes back as it was (SQLite, whose marks
    /// are immediate, gives back what the claim still holds). A token that
    /// is not open (already finished, or a claim that returned nothing)
    /// returns `Ok(true)`.
    async fn finish(&self, token: ClaimToken, commit: bool) -> Result<bool> {
        let _ = (token, commit);
        Ok(true)
    }

    /// Drops claim `token` without waiting: what a relay task that is
    /// cancelled half-way does. Its events go back to the queue.
    fn abandon(&self, token: ClaimToken) {
        let _ = token;
    }

    /// Records whether `relay` is waiting for work (`idle`) or busy
    /// draining. PostgreSQL enqueues NOTIFY only while some relay waits: a
    /// NOTIFY serializes the commits of every notifying transaction.
    async fn set_idle(&self, relay: &str, idle: bool) -> Result<()> {
        let _ = (relay, idle);
        Ok(())
    }

    /// Forgets `relay` (its clean shutdown).
    async fn forget_relay(&self, relay: &str) -> Result<()> {
        let _ = relay;
        Ok(())
    }

    /// Marks events published: deleted, or kept as `published` when `keep`
    /// (retention). Returns how many were still held by `token`. On
    /// PostgreSQL this takes effect when [`finish`](Self::finish) commits.
    async fn mark_published(&self, seqs: &[i64], token: ClaimToken, keep: bool) -> Result<u64>;

    /// Records a failed attempt (counts it, keeps `error`). `None` when the
    /// claim `token` no longer holds the event.
    async fn mark_failed(&self, seq: i64, token: ClaimToken, error: &str, failure: Failure) -> Result<Option<Failed>>;

    /// Gives claimed events back (shutdown, or no time left in the lease)
    /// without counting an attempt. Returns how many were still held.
    async fn release(&self, seqs: &[i64], token: ClaimToken) -> Result<u64>;

    /// Gives claimed events back without counting an attempt, like
    /// [`release`](Self::release), but not claimable before `until_ms` (the
    /// store's clock): what a relay does with a batch that failed as a whole
    /// (the sink looks down), so that the next claim reaches other
    /// aggregates instead of the same events again. Returns how many were
    /// still held.
    async fn defer(&self, seqs: &[i64], token: ClaimToken, until_ms: i64) -> Result<u64>;

    /// Deletes published events older than `before_ms`, `batch` at a time.
    async fn cleanup(&self, before_ms: i64, batch: u32) -> Result<u64>;

    /// Makes held events pending again where nothing is in front of them
    /// any more (under `policy`); returns how many. Stores that never hold
    /// events (SQLite) have nothing to do.
    async fn unhold(&self, policy: DeadLetterPolicy) -> Result<u64> {
        let _ = policy;
        Ok(0)
    }

    /// Keeps the table healthy where the database will not (PostgreSQL
    /// with autovacuum off); called by relays every few seconds.
    async fn maintain(&self) -> Result<()> {
        Ok(())
    }

    /// Counts for operators and the lag gauge.
    async fn stats(&self) -> Result<OutboxStats>;

    /// Dead letters, oldest first, with what each one blocks.
    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>>;

    /// Puts one dead letter (or, for `None`, every dead letter not skipped)
    /// back in the queue with fresh attempts; returns how many. Requeued
    /// events keep their place, so an aggregate's order holds.
    async fn retry_dead(&self, id: Option<Uuid>) -> Result<u64>;

    /// Releases the aggregate held back by dead letter `id`, recording who
    /// did it and when; the dead letter stays listed. `false` when there is
    /// no such dead letter or it was already skipped.
    async fn skip_dead(&self, id: Uuid, by: &str) -> Result<bool>;
}

/// Counts by status and the oldest pending event; the same on both backends.
pub(crate) const STATS_SQL: &str =
    "SELECT COUNT(*) FILTER (WHERE status IN ('pending', 'held')), COUNT(*) FILTER (WHERE status = 'dead'),
        COUNT(*) FILTER (WHERE status = 'published'), MIN(created_at_ms) FILTER (WHERE status IN ('pending', 'held'))
     FROM spark_outbox";

pub(crate) fn millis(d: Duration) -> i64 {
    spark_db::duration_ms(d)
}

/// Splits claimed rows into events and rows that cannot be decoded.
pub(crate) fn claimed(token: ClaimToken, rows: Vec<crate::event::Row>) -> Claim {
    let mut events = Vec::with_capacity(rows.len());
    let mut unreadable = Vec::new();
    for row in rows {
        let seq = row.0;
        match crate::event::decode(row) {
            Ok(e) => events.push(e),
            Err(e) => unreadable.push(Unreadable { seq, error: e.to_string() }),
        }
    }
    events.sort_by_key(|e| e.seq);
    Claim { token, events, unreadable }
}

pub(crate) fn failed(status: Option<String>) -> Option<Failed> {
    status.map(|s| if s == "dead" { Failed::Dead } else { Failed::Retrying })
}

/// The values [`Failure`] binds: retry time (`None` = dead), budget ms,
/// whether it is a refusal, and the refusals that make a dead letter.
pub(crate) fn failure_binds(failure: Failure) -> (Option<i64>, i64, i64, i64) {
    match failure {
        Failure::Retry { at_ms, budget } => (Some(at_ms), millis(budget), 0, i64::MAX),
        Failure::Refused { at_ms, budget, max } => (Some(at_ms), millis(budget), 1, i64::from(max)),
        Failure::Dead => (None, 0, 0, i64::MAX),
    }
}

/// A store chosen at run time (`Arc<dyn OutboxStore>`) is a store too.
#[async_trait]
impl<T: OutboxStore + ?Sized> OutboxStore for std::sync::Arc<T> {
    fn clock(&self) -> SharedClock {
        (**self).clock()
    }
    async fn claim(&self, relay: &str, batch: u32, lease: Duration, policy: DeadLetterPolicy) -> Result<Claim> {
        (**self).claim(relay, batch, lease, policy).await
    }
    async fn finish(&self, token: ClaimToken, commit: bool) -> Result<bool> {
        (**self).finish(token, commit).await
    }
    fn abandon(&self, token: ClaimToken) {
        (**self).abandon(token);
    }
    async fn set_idle(&self, relay: &str, idle: bool) -> Result<()> {
        (**self).set_idle(relay, idle).await
    }
    async fn forget_relay(&self, relay: &str) -> Result<()> {
        (**self).forget_relay(relay).await
    }
    async fn mark_published(&self, seqs: &[i64], token: ClaimToken, keep: bool) -> Result<u64> {
        (**self).mark_published(seqs, token, keep).await
    }
    async fn mark_failed(&self, seq: i64, token: ClaimToken, error: &str, failure: Failure) -> Result<Option<Failed>> {
        (**self).mark_failed(seq, token, error, failure).await
    }
    async fn release(&self, seqs: &[i64], token: ClaimToken) -> Result<u64> {
        (**self).release(seqs, token).await
    }
    async fn defer(&self, seqs: &[i64], token: ClaimToken, until_ms: i64) -> Result<u64> {
        (**self).defer(seqs, token, until_ms).await
    }
    async fn cleanup(&self, before_ms: i64, batch: u32) -> Result<u64> {
        (**self).cleanup(before_ms, batch).await
    }
    async fn unhold(&self, policy: DeadLetterPolicy) -> Result<u64> {
        (**self).unhold(policy).await
    }
    async fn maintain(&self) -> Result<()> {
        (**self).maintain().await
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
    async fn skip_dead(&self, id: Uuid, by: &str) -> Result<bool> {
        (**self).skip_dead(id, by).await
    }
}
