//! The relay: claim, publish, mark; back off on failure; dead-letter.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::Notify;

use crate::event::now_ms;
use crate::store::millis;
use crate::{Event, OutboxError, OutboxStore, PublishError, Publisher, Result, metrics};

/// Builds a [`Relay`]; every knob has a default.
#[derive(Debug, Clone)]
pub struct RelayBuilder<S> {
    store: Arc<S>,
    id: Option<String>,
    batch_size: u32,
    concurrency: usize,
    lease: Duration,
    poll_interval: Duration,
    retention: Option<Duration>,
    max_attempts: u32,
    max_permanent_attempts: u32,
    backoff_base: Duration,
    backoff_cap: Duration,
}

impl<S: OutboxStore> RelayBuilder<S> {
    /// A name for this relay in `locked_by` and logs (default: a random one).
    #[must_use]
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
    /// Events claimed per statement (default 500).
    #[must_use]
    pub fn batch_size(mut self, n: u32) -> Self {
        self.batch_size = n;
        self
    }
    /// Publishes in flight at once within a batch (default 64). A batch
    /// holds at most one event per aggregate, so this never reorders an
    /// aggregate.
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }
    /// How long a claim lasts (default 30 s). A relay killed while holding
    /// a batch loses nothing: its events return after the lease.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
    /// How often to poll when no NOTIFY arrives (default 1 s).
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }
    /// Keep published events this long (cleaned in bounded batches), instead
    /// of deleting them at once (the default).
    #[must_use]
    pub fn retention(mut self, keep: Duration) -> Self {
        self.retention = Some(keep);
        self
    }
    /// Attempts before a transiently failing event becomes a dead letter
    /// (default 10).
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }
    /// Attempts before an event the sink refused (a permanent error) becomes
    /// a dead letter (default 3).
    #[must_use]
    pub fn max_permanent_attempts(mut self, n: u32) -> Self {
        self.max_permanent_attempts = n;
        self
    }
    /// Exponential backoff with full jitter: attempt `n` waits a random time
    /// up to `min(cap, base * 2^(n-1))` (defaults 500 ms and 60 s).
    #[must_use]
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_cap = cap;
        self
    }

    /// The relay.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Config`] for a zero batch, concurrency, lease or
    /// attempts, or a cap below the base.
    pub fn build(self) -> Result<Relay<S>> {
        if self.batch_size == 0 || self.concurrency == 0 {
            return Err(OutboxError::Config("batch size and concurrency must be at least 1"));
        }
        if self.lease.is_zero() || self.poll_interval.is_zero() {
            return Err(OutboxError::Config("lease and poll interval must be longer than zero"));
        }
        if self.max_attempts == 0 || self.max_permanent_attempts == 0 {
            return Err(OutboxError::Config("attempts must be at least 1"));
        }
        if self.backoff_cap < self.backoff_base {
            return Err(OutboxError::Config("the backoff cap must not be below its base"));
        }
        let id = self.id.clone().unwrap_or_else(|| format!("relay-{:08x}", fastrand::u32(..)));
        Ok(Relay { cfg: self, id, wake: Arc::new(Notify::new()) })
    }
}

/// Publishes outbox events at least once, in order per aggregate.
///
/// Any number of relays (tasks, processes, hosts) may run on one PostgreSQL
/// outbox: they share the work through `FOR UPDATE SKIP LOCKED` with no other
/// coordination.
#[derive(Debug)]
pub struct Relay<S> {
    cfg: RelayBuilder<S>,
    id: String,
    wake: Arc<Notify>,
}

/// What a relay did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RelayReport {
    /// Events the sink acknowledged.
    pub published: u64,
    /// Failed attempts (each retried or dead-lettered).
    pub failed: u64,
    /// Events dead-lettered.
    pub dead: u64,
}

impl<S: OutboxStore> Relay<S> {
    /// A builder over `store`.
    #[must_use]
    pub fn builder(store: S) -> RelayBuilder<S> {
        RelayBuilder {
            store: Arc::new(store),
            id: None,
            batch_size: 500,
            concurrency: 64,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            retention: None,
            max_attempts: 10,
            max_permanent_attempts: 3,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(60),
        }
    }

    /// The relay's name.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The handle a listener notifies to wake this relay at once (see
    /// [`postgres::listen`](crate::postgres::listen)).
    #[must_use]
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Runs until `shutdown` completes, then finishes the batch in hand and
    /// returns. Database errors are logged and retried after the poll
    /// interval, so a database restart does not stop the relay.
    ///
    /// # Errors
    ///
    /// None today; the `Result` leaves room for fatal errors.
    pub async fn run<P: Publisher>(&self, publisher: P, shutdown: impl Future<Output = ()>) -> Result<RelayReport> {
        let mut report = RelayReport::default();
        let mut shutdown = std::pin::pin!(shutdown);
        // `None` until the first pass (subtracting from `Instant::now()`
        // could underflow on a freshly booted machine).
        let mut last_housekeeping: Option<Instant> = None;
        tracing::info!(relay = %self.id, "outbox relay started");
        loop {
            // Gauges and cleanup scan the table: every few seconds is
            // plenty, and several relays should not each do it every loop.
            if last_housekeeping.is_none_or(|t| t.elapsed() >= HOUSEKEEPING_EVERY) {
                last_housekeeping = Some(Instant::now());
                self.housekeeping().await;
            }
            let claimed = match self.run_once(&publisher).await {
                Ok(batch) => {
                    report.published += batch.published;
                    report.failed += batch.failed;
                    report.dead += batch.dead;
                    batch.claimed
                }
                Err(e) => {
                    tracing::warn!(relay = %self.id, error = %e, "outbox relay: claim failed; retrying");
                    0
                }
            };
            if claimed > 0 {
                // More may be waiting; only stop between batches.
                if futures_util::FutureExt::now_or_never(shutdown.as_mut()).is_some() {
                    break;
                }
                continue;
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.cfg.poll_interval) => {}
            }
        }
        tracing::info!(relay = %self.id, ?report, "outbox relay stopped");
        Ok(report)
    }

    /// Claims one batch, publishes it and records the outcomes.
    ///
    /// # Errors
    ///
    /// When the database fails; events already published stay published.
    pub async fn run_once<P: Publisher>(&self, publisher: &P) -> Result<BatchReport> {
        let events = self.cfg.store.claim(&self.id, self.cfg.batch_size, self.cfg.lease).await?;
        let mut report = BatchReport { claimed: events.len() as u64, ..BatchReport::default() };
        if events.is_empty() {
            return Ok(report);
        }
        let results: Vec<(Event, Result<(), PublishError>)> = futures_util::stream::iter(events)
            .map(|event| async move {
                let result = publisher.publish(&event).await;
                (event, result)
            })
            .buffer_unordered(self.cfg.concurrency)
            .collect()
            .await;
        let mut published = Vec::new();
        let now = now_ms();
        for (event, result) in results {
            match result {
                Ok(()) => {
                    metrics::latency(now - event.created_at_ms);
                    ::metrics::counter!(metrics::ATTEMPTS, "result" => "ok").increment(1);
                    published.push(event.seq);
                }
                Err(err) => {
                    report.failed += 1;
                    let (kind, limit) = match &err {
                        PublishError::Transient(_) => ("transient", self.cfg.max_attempts),
                        PublishError::Permanent(_) => ("permanent", self.cfg.max_permanent_attempts),
                    };
                    ::metrics::counter!(metrics::ATTEMPTS, "result" => kind).increment(1);
                    let attempts = u32::try_from(event.attempts).unwrap_or(u32::MAX);
                    let retry_at = (attempts < limit).then(|| now + millis(self.backoff(attempts)));
                    if retry_at.is_none() {
                        report.dead += 1;
                        ::metrics::counter!(metrics::DEAD_LETTERS).increment(1);
                        tracing::error!(relay = %self.id, event = %event.id, attempts, error = %err, "outbox event dead-lettered");
                    } else {
                        tracing::warn!(relay = %self.id, event = %event.id, attempts, error = %err, "outbox publish failed; backing off");
                    }
                    self.cfg.store.mark_failed(event.seq, &self.id, &err.to_string(), retry_at).await?;
                }
            }
        }
        if !published.is_empty() {
            self.cfg.store.mark_published(&published, self.cfg.retention.is_some()).await?;
            report.published = published.len() as u64;
            ::metrics::counter!(metrics::PUBLISHED).increment(report.published);
        }
        Ok(report)
    }

    /// Full jitter: uniform in `[0, min(cap, base * 2^(attempt-1))]`.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.cfg.backoff_base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let ceiling = exp.min(self.cfg.backoff_cap);
        Duration::from_millis(fastrand::u64(0..=u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX)))
    }

    /// Gauges, and retention cleanup.
    async fn housekeeping(&self) {
        match self.cfg.store.stats().await {
            Ok(stats) => metrics::gauges(&stats),
            Err(e) => tracing::warn!(error = %e, "outbox stats failed"),
        }
        let Some(keep) = self.cfg.retention else { return };
        if let Err(e) = self.cfg.store.cleanup(now_ms() - millis(keep), 1000).await {
            tracing::warn!(error = %e, "outbox cleanup failed");
        }
    }
}

/// How often a running relay refreshes the gauges and cleans up.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);

/// What one [`Relay::run_once`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Events claimed.
    pub claimed: u64,
    /// Events published.
    pub published: u64,
    /// Failed attempts.
    pub failed: u64,
    /// Events dead-lettered.
    pub dead: u64,
}
