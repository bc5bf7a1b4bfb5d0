//! The PostgreSQL backend: enqueue with NOTIFY, SKIP LOCKED claims, LISTEN.

use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use uuid::Uuid;

use spark_db::SharedClock;

use crate::event::{DeadRow, Row};
use crate::store::{claimed, failed, failure_binds, millis};
use crate::{
    Claim, ClaimToken, DeadLetter, DeadLetterPolicy, Failed, Failure, OutboxEvent, OutboxStats, OutboxStore, Result,
};

/// The NOTIFY channel relays LISTEN on.
pub const CHANNEL: &str = "spark_outbox";

/// The migrations (outbox and inbox tables); they ignore migrations they do
/// not know, so they run beside an application's own.
#[must_use]
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("./migrations/postgres");
    m.set_ignore_missing(true);
    m
}

/// Writes `event` inside the caller's transaction and returns its id (a
/// UUIDv7). One statement, which also:
///
/// - takes a transaction-scoped advisory lock on the aggregate, so that
///   transactions writing events for the same aggregate commit one after the
///   other and insertion order is commit order (relays publish an aggregate's
///   events in that order);
/// - issues `NOTIFY spark_outbox`, delivered when the transaction commits and
///   collapsed by PostgreSQL to one per transaction however many events it
///   writes. Nothing is announced if the transaction rolls back.
///
/// Works behind pgBouncer in transaction mode (no session state).
///
/// # Errors
///
/// [`OutboxError::InvalidEvent`](crate::OutboxError::InvalidEvent) for an
/// empty type or aggregate; database errors.
pub async fn enqueue(conn: &mut PgConnection, event: &OutboxEvent) -> Result<Uuid> {
    crate::event::enqueue_with!(
        conn,
        event,
        "WITH lock AS (SELECT pg_advisory_xact_lock(hashtextextended($2 || chr(31) || $3, 7151)) AS l),
              wake AS (SELECT pg_notify('spark_outbox', '') AS n)
         INSERT INTO spark_outbox
            (id, aggregate_type, aggregate_id, event_type, payload, headers, created_at_ms, available_at_ms)
         SELECT $1::uuid, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $7 FROM lock, wake"
    )
}

/// The outbox on a PostgreSQL pool: what relays claim from.
#[derive(Debug, Clone)]
pub struct PgOutbox {
    pool: PgPool,
    clock: SharedClock,
}

impl PgOutbox {
    /// The outbox on `pool`, on the system clock. Relays share work through
    /// `SKIP LOCKED`, so any number of processes may run one each.
    #[must_use]
    pub fn new(pool: PgPool) -> PgOutbox {
        PgOutbox { pool, clock: spark_db::system_clock() }
    }

    /// The same outbox reading `clock` for backoff, the retry budget and
    /// retention. Leases always use the database's clock, so relays on hosts
    /// whose clocks disagree cannot take each other's claims early.
    #[must_use]
    pub fn with_clock(mut self, clock: SharedClock) -> PgOutbox {
        self.clock = clock;
        self
    }

    /// The pool.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// The claim: one statement. The CTE picks each aggregate's oldest pending
/// event (nothing older of the same aggregate pending, in flight or backing
/// off — nor, under `Block`, dead and unskipped), skips rows other relays are
/// claiming right now, and the UPDATE leases what it picked. Leases are read
/// and written on the database's clock (`now()`), never a relay host's.
fn claim_sql(policy: DeadLetterPolicy) -> &'static str {
    static SQL: std::sync::LazyLock<[String; 2]> = std::sync::LazyLock::new(|| {
        let sql = |blocking: &str| {
            format!(
                "WITH db AS (SELECT (extract(epoch FROM now()) * 1000)::bigint AS now_ms),
                 picked AS (
                    SELECT o.seq FROM spark_outbox o, db
                    WHERE o.status = 'pending' AND o.available_at_ms <= $1 AND o.locked_until_ms <= db.now_ms
                      AND NOT EXISTS (
                          SELECT 1 FROM spark_outbox e
                          WHERE e.aggregate_type = o.aggregate_type AND e.aggregate_id = o.aggregate_id
                            AND e.status = 'pending' AND e.seq < o.seq)
                      {blocking}
                    ORDER BY o.seq
                    LIMIT $2
                    FOR UPDATE OF o SKIP LOCKED)
                 UPDATE spark_outbox o
                    SET locked_until_ms = db.now_ms + $3, locked_by = $4, claim_token = $5
                   FROM picked, db WHERE o.seq = picked.seq
                 RETURNING o.seq, o.id::text, o.aggregate_type, o.aggregate_id, o.event_type, o.payload::text,
                           o.headers::text, o.created_at_ms, o.attempts"
            )
        };
        [
            sql("AND NOT EXISTS (
                    SELECT 1 FROM spark_outbox d
                    WHERE d.aggregate_type = o.aggregate_type AND d.aggregate_id = o.aggregate_id
                      AND d.status = 'dead' AND d.skipped_at_ms IS NULL AND d.seq < o.seq)"),
            sql(""),
        ]
    });
    match policy {
        DeadLetterPolicy::Block => &SQL[0],
        DeadLetterPolicy::Skip => &SQL[1],
    }
}

#[async_trait]
impl OutboxStore for PgOutbox {
    fn clock(&self) -> SharedClock {
        self.clock.clone()
    }

    async fn claim(&self, relay: &str, batch: u32, lease: Duration, policy: DeadLetterPolicy) -> Result<Claim> {
        let token = ClaimToken::new();
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(claim_sql(policy)))
            .bind(self.clock.now_ms())
            .bind(i64::from(batch))
            .bind(millis(lease))
            .bind(relay)
            .bind(token.to_string())
            .fetch_all(&self.pool)
            .await?;
        Ok(claimed(token, rows))
    }

    async fn mark_published(&self, seqs: &[i64], token: ClaimToken, keep: bool) -> Result<u64> {
        let done = if keep {
            sqlx::query(
                "UPDATE spark_outbox
                    SET status = 'published', published_at_ms = $3, locked_until_ms = 0, claim_token = NULL
                  WHERE seq = ANY($1) AND claim_token = $2 AND status = 'pending'",
            )
            .bind(seqs)
            .bind(token.to_string())
            .bind(self.clock.now_ms())
            .execute(&self.pool)
            .await?
        } else {
            sqlx::query("DELETE FROM spark_outbox WHERE seq = ANY($1) AND claim_token = $2 AND status = 'pending'")
                .bind(seqs)
                .bind(token.to_string())
                .execute(&self.pool)
                .await?
        };
        Ok(done.rows_affected())
    }

    async fn mark_failed(&self, seq: i64, token: ClaimToken, error: &str, failure: Failure) -> Result<Option<Failed>> {
        let (retry_at, budget, refusal, max_refusals) = failure_binds(failure);
        let status: Option<String> = sqlx::query_scalar(
            "UPDATE spark_outbox
                SET attempts = attempts + 1, refusals = refusals + $7, last_error = $3, locked_until_ms = 0,
                    claim_token = NULL, first_failed_at_ms = COALESCE(first_failed_at_ms, $4),
                    available_at_ms = COALESCE($5, available_at_ms),
                    status = CASE WHEN $5::bigint IS NULL OR COALESCE(first_failed_at_ms, $4) + $6 <= $4
                                       OR refusals + $7 >= $8
                                  THEN 'dead' ELSE 'pending' END
              WHERE seq = $1 AND claim_token = $2 AND status = 'pending'
             RETURNING status",
        )
        .bind(seq)
        .bind(token.to_string())
        .bind(error)
        .bind(self.clock.now_ms())
        .bind(retry_at)
        .bind(budget)
        .bind(refusal)
        .bind(max_refusals)
        .fetch_optional(&self.pool)
        .await?;
        Ok(failed(status))
    }

    async fn release(&self, seqs: &[i64], token: ClaimToken) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE spark_outbox SET locked_until_ms = 0, claim_token = NULL
             WHERE seq = ANY($1) AND claim_token = $2 AND status = 'pending'",
        )
        .bind(seqs)
        .bind(token.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn defer(&self, seqs: &[i64], token: ClaimToken, until_ms: i64) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE spark_outbox
                SET locked_until_ms = 0, claim_token = NULL, available_at_ms = GREATEST(available_at_ms, $3)
              WHERE seq = ANY($1) AND claim_token = $2 AND status = 'pending'",
        )
        .bind(seqs)
        .bind(token.to_string())
        .bind(until_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn cleanup(&self, before_ms: i64, batch: u32) -> Result<u64> {
        let mut deleted = 0;
        loop {
            let n = sqlx::query(
                "DELETE FROM spark_outbox WHERE seq = ANY(ARRAY(
                    SELECT seq FROM spark_outbox WHERE status = 'published' AND published_at_ms <= $1
                    LIMIT $2 FOR UPDATE SKIP LOCKED))",
            )
            .bind(before_ms)
            .bind(i64::from(batch.max(1)))
            .execute(&self.pool)
            .await?
            .rows_affected();
            deleted += n;
            if n < u64::from(batch.max(1)) {
                return Ok(deleted);
            }
        }
    }

    async fn stats(&self) -> Result<OutboxStats> {
        let (pending, dead, published, oldest): (i64, i64, i64, Option<i64>) =
            sqlx::query_as(crate::store::STATS_SQL).fetch_one(&self.pool).await?;
        Ok(crate::event::stats(pending, dead, published, oldest, self.clock.now_ms()))
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>> {
        let rows: Vec<DeadRow> = sqlx::query_as(
            "SELECT o.seq, o.id::text, o.aggregate_type, o.aggregate_id, o.event_type, o.payload::text,
                    o.headers::text, o.created_at_ms, o.attempts, o.last_error, o.skipped_by, o.skipped_at_ms,
                    (SELECT COUNT(*) FROM spark_outbox p
                      WHERE p.aggregate_type = o.aggregate_type AND p.aggregate_id = o.aggregate_id
                        AND p.status = 'pending' AND p.seq > o.seq)
             FROM spark_outbox o WHERE o.status = 'dead' ORDER BY o.seq LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(crate::event::dead_letter).collect())
    }

    async fn retry_dead(&self, id: Option<Uuid>) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE spark_outbox
                SET status = 'pending', attempts = 0, refusals = 0, first_failed_at_ms = NULL, available_at_ms = $2,
                    locked_until_ms = 0, locked_by = NULL, claim_token = NULL, skipped_by = NULL, skipped_at_ms = NULL
              WHERE status = 'dead' AND (($1::uuid IS NULL AND skipped_at_ms IS NULL) OR id = $1::uuid)",
        )
        .bind(id.map(|u| u.to_string()))
        .bind(self.clock.now_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn skip_dead(&self, id: Uuid, by: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE spark_outbox SET skipped_by = $2, skipped_at_ms = $3
              WHERE id = $1::uuid AND status = 'dead' AND skipped_at_ms IS NULL",
        )
        .bind(id.to_string())
        .bind(by)
        .bind(self.clock.now_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}

/// Keeps a dedicated LISTEN connection on `listen_url` and wakes `relays`
/// whenever an enqueueing transaction commits: [`Listen`] with its default
/// probe. Runs until the task is aborted.
#[must_use = "the listener stops when the handle is aborted; keep it"]
pub fn listen(listen_url: String, relays: Vec<Arc<Notify>>) -> JoinHandle<()> {
    Listen::new(listen_url).spawn(relays).task.take_task()
}

/// The shortest probe interval and timeout a [`Listen`] accepts; shorter
/// ones are raised to it.
pub const MIN_PROBE: Duration = Duration::from_millis(100);

/// A LISTEN connection that checks itself.
///
/// Give it its own URL: pgBouncer in transaction mode drops LISTEN (the
/// session that listened goes back to the pool), so point it straight at
/// PostgreSQL while the pool goes through pgBouncer. Every
/// [`probe_every`](Self::probe_every) the listener NOTIFYs itself from a
/// second connection; when the probe is not delivered within
/// [`probe_timeout`](Self::probe_timeout) (default 5 s) it sets
/// `spark_outbox_listen_up` to 0, logs that the URL probably goes through a
/// transaction pool, and reconnects. While it is down relays poll; once it
/// is back it wakes every relay, so nothing sent meanwhile waits for a poll.
///
/// sqlx exposes no client socket options, so the connection asks the server
/// for TCP keepalives (`tcp_keepalives_*`); the probe is what notices a
/// silent client-side failure.
///
/// ```no_run
/// # async fn f(relay: spark_outbox::Relay<spark_outbox::PgOutbox>) {
/// use spark_outbox::postgres::Listen;
///
/// let listener = Listen::new("postgres://postgres@db:5432/app").spawn(vec![relay.waker()]);
/// // …
/// listener.stop();
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Listen {
    url: String,
    probe_url: Option<String>,
    probe_every: Duration,
    probe_timeout: Duration,
}

/// The payload prefix of probe notifications; relays are not woken by them.
const PROBE: &str = "spark-probe:";

impl Listen {
    /// LISTEN on `url`, probing every 10 s with a 5 s timeout.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Listen {
        Listen {
            url: url.into(),
            probe_url: None,
            probe_every: Duration::from_secs(10),
            probe_timeout: Duration::from_secs(5),
        }
    }

    /// How often to probe (default 10 s).
    #[must_use]
    pub fn probe_every(mut self, every: Duration) -> Self {
        // A zero interval would probe in a busy loop.
        self.probe_every = every.max(MIN_PROBE);
        self
    }

    /// How long a probe may take to arrive before the listener counts as
    /// dead and reconnects (default 5 s).
    #[must_use]
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        // A zero timeout would call every listener dead and reconnect forever.
        self.probe_timeout = timeout.max(MIN_PROBE);
        self
    }

    /// Where the probe's NOTIFY is sent (default: the LISTEN URL). A
    /// different database never delivers it, which is how the tests make a
    /// listener look dead.
    #[must_use]
    pub fn probe_url(mut self, url: impl Into<String>) -> Self {
        self.probe_url = Some(url.into());
        self
    }

    /// Starts the listener on the tokio runtime.
    #[must_use = "the listener stops when it is dropped"]
    pub fn spawn(self, relays: Vec<Arc<Notify>>) -> Listener {
        let health = Arc::new(Health::default());
        let task = tokio::spawn(run_listener(self, relays, health.clone()));
        Listener { task: TaskSlot(Some(task)), health }
    }
}

/// A running [`Listen`]; stops when dropped.
#[derive(Debug)]
pub struct Listener {
    task: TaskSlot,
    health: Arc<Health>,
}

#[derive(Debug)]
struct TaskSlot(Option<JoinHandle<()>>);

impl TaskSlot {
    fn take_task(mut self) -> JoinHandle<()> {
        self.0.take().unwrap_or_else(|| tokio::spawn(async {}))
    }
}

impl Drop for TaskSlot {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

#[derive(Debug, Default)]
struct Health {
    up: AtomicBool,
    connects: AtomicU64,
}

impl Listener {
    /// Whether the LISTEN connection is up and its last probe arrived.
    #[must_use]
    pub fn is_up(&self) -> bool {
        self.health.up.load(Ordering::SeqCst)
    }

    /// LISTEN connections made so far (1 + reconnects).
    #[must_use]
    pub fn connects(&self) -> u64 {
        self.health.connects.load(Ordering::SeqCst)
    }

    /// Stops listening.
    pub fn stop(self) {}
}

fn set_up(health: &Health, up: bool) {
    health.up.store(up, Ordering::SeqCst);
    metrics::gauge!(crate::metrics::LISTEN_UP).set(if up { 1.0 } else { 0.0 });
}

async fn run_listener(cfg: Listen, relays: Vec<Arc<Notify>>, health: Arc<Health>) {
    let wake_all = || relays.iter().for_each(|r| r.notify_one());
    let probe_url = cfg.probe_url.clone().unwrap_or_else(|| cfg.url.clone());
    let mut probe_conn: Option<PgConnection> = None;
    loop {
        let connected = async {
            let mut listener = sqlx::postgres::PgListener::connect(&cfg.url).await?;
            // Ask the server to probe the idle connection, so a peer that
            // vanished is noticed on its side too.
            sqlx::raw_sql(
                "SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 3",
            )
            .execute(&mut listener)
            .await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = match connected.await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "outbox LISTEN connection failed; relays poll meanwhile");
                set_up(&health, false);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        health.connects.fetch_add(1, Ordering::SeqCst);
        tracing::info!("outbox listening for {CHANNEL}");
        wake_all();
        // Notifications are read in their own task and handed over a
        // channel, so waiting for them can be raced against the probe's
        // deadline without cancelling a read half-way.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
        // Aborted on drop, so stopping the listener (aborting its task)
        // also closes the LISTEN connection the reader holds.
        let reader = TaskSlot(Some(tokio::spawn(async move {
            loop {
                // `try_recv` reports a lost connection as `Ok(None)` instead
                // of reconnecting silently, so the health stays honest.
                let got = match listener.try_recv().await {
                    Ok(Some(n)) => Some(n.payload().to_owned()),
                    Ok(None) | Err(_) => None,
                };
                let lost = got.is_none();
                if tx.send(got).is_err() || lost {
                    return;
                }
            }
        })));
        let mut probe: Option<(String, tokio::time::Instant)> = None;
        let mut next_probe = tokio::time::Instant::now();
        loop {
            let until = probe.as_ref().map_or(next_probe, |p| p.1);
            tokio::select! {
                got = rx.recv() => match got.flatten() {
                    Some(payload) if probe.as_ref().is_some_and(|p| p.0 == payload) => {
                        probe = None;
                        next_probe = tokio::time::Instant::now() + cfg.probe_every;
                        if !health.up.load(Ordering::SeqCst) {
                            set_up(&health, true);
                        }
                    }
                    Some(payload) if payload.starts_with(PROBE) => {}
                    Some(_) => wake_all(),
                    None => {
                        tracing::warn!("outbox LISTEN connection lost; relays poll until it is back");
                        break;
                    }
                },
                () = tokio::time::sleep_until(until) => {
                    if probe.is_some() {
                        tracing::warn!(
                            timeout = ?cfg.probe_timeout,
                            "outbox LISTEN probe not delivered in time: the LISTEN URL probably goes through a \
                             transaction pool (pgBouncer in transaction mode drops LISTEN); give the relay a direct \
                             --listen-url. Reconnecting; relays poll meanwhile"
                        );
                        break;
                    }
                    let nonce = format!("{PROBE}{:016x}", fastrand::u64(..));
                    // Bounded like the delivery: a probe connection whose
                    // peer vanished silently would otherwise hang here for
                    // good, with no probe sent again and the health stuck
                    // at whatever it was.
                    let sent = tokio::time::timeout(cfg.probe_timeout, send_probe(&mut probe_conn, &probe_url, &nonce))
                        .await
                        .unwrap_or_else(|_| {
                            Err(sqlx::Error::Io(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                format!("probe not sent within {:?}", cfg.probe_timeout),
                            )))
                        });
                    match sent {
                        Ok(()) => probe = Some((nonce, tokio::time::Instant::now() + cfg.probe_timeout)),
                        Err(e) => {
                            tracing::warn!(error = %e, "outbox LISTEN probe could not be sent; health unknown");
                            // Unverified is not up: the gauge says "listening
                            // and passing its probe".
                            set_up(&health, false);
                            probe_conn = None;
                            next_probe = tokio::time::Instant::now() + cfg.probe_every;
                        }
                    }
                }
            }
        }
        drop(reader);
        set_up(&health, false);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn send_probe(conn: &mut Option<PgConnection>, url: &str, nonce: &str) -> Result<(), sqlx::Error> {
    if conn.is_none() {
        *conn = Some(PgConnection::connect(url).await?);
    }
    let Some(c) = conn.as_mut() else { return Ok(()) };
    sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(nonce).execute(c).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_probe_settings_are_raised_to_the_minimum() {
        let listen = Listen::new("postgres://x").probe_every(Duration::ZERO).probe_timeout(Duration::ZERO);
        assert_eq!((listen.probe_every, listen.probe_timeout), (MIN_PROBE, MIN_PROBE));
    }
}
