//! The PostgreSQL backend: enqueue with NOTIFY, SKIP LOCKED claims, LISTEN.

use std::time::Duration;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};
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
/// UUIDv7): [`crate::enqueue`] on a PostgreSQL connection. One statement,
/// which also takes a transaction-scoped advisory lock on the aggregate, so
/// that transactions writing events for the same aggregate commit one after
/// the other and insertion order is commit order (relays publish an
/// aggregate's events in that order).
///
/// At commit, a deferred trigger sends `NOTIFY spark_outbox` if some relay
/// is waiting for work (collapsed by PostgreSQL to one per transaction).
/// While every relay is busy it stays silent: a NOTIFY serializes the
/// commits of all notifying transactions. Nothing is announced if the
/// transaction rolls back.
///
/// Works behind pgBouncer in transaction mode (no session state).
///
/// # Errors
///
/// [`OutboxError::InvalidEvent`](crate::OutboxError::InvalidEvent) for an
/// empty type or aggregate; database errors.
pub async fn enqueue(conn: &mut PgConnection, event: &OutboxEvent) -> Result<Uuid> {
    crate::enqueue(conn, event).await
}

/// The enqueue statement: `$1` id, `$2` aggregate type, `$3` aggregate id,
/// `$4` event type, `$5` payload, `$6` headers, `$7` now.
pub(crate) const ENQUEUE: &str =
    "WITH lock AS (SELECT pg_advisory_xact_lock(hashtextextended($2 || chr(31) || $3, 7151)) AS l)
     INSERT INTO spark_outbox
        (id, aggregate_type, aggregate_id, event_type, payload, headers, created_at_ms, available_at_ms)
     SELECT $1::uuid, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $7 FROM lock";

/// The outbox on a PostgreSQL pool: what relays claim from.
///
/// A claim is a transaction that holds its events' row locks while the
/// relay publishes them, and deletes the published ones when it commits
/// ([`OutboxStore::finish`]):
///
/// - other relays skip locked rows (`SKIP LOCKED`) and anything queued
///   behind them in the same aggregate, so they never publish an event
///   twice at once or out of order;
/// - a relay that crashes or loses its connection rolls back, and its
///   events are claimable again at once (no lease to wait out);
/// - a relay that hangs past its lease (and a quarter: the last publish may
///   time out right at its end) is cut off by PostgreSQL
///   (`idle_in_transaction_session_timeout`): its late commit fails and
///   changes nothing — the fencing is the database's, not a token's;
/// - each event is written once (the delete) on the way out, not updated
///   and then deleted.
#[derive(Clone)]
pub struct PgOutbox {
    pool: PgPool,
    clock: SharedClock,
    open: Arc<Mutex<HashMap<ClaimToken, Open>>>,
}

/// A claim in progress: its transaction and what was published on it.
struct Open {
    tx: Transaction<'static, Postgres>,
    published: Vec<i64>,
    keep: bool,
    /// The server ended the transaction (lease idle timeout, restart):
    /// nothing done on it counts any more.
    lost: bool,
}

impl std::fmt::Debug for PgOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOutbox").field("pool", &self.pool).field("open_claims", &self.lock_open().len()).finish()
    }
}

impl PgOutbox {
    /// The outbox on `pool`, on the system clock. Relays share work through
    /// `SKIP LOCKED`, so any number of processes may run one each. Each
    /// running claim holds one pooled connection until it is finished.
    #[must_use]
    pub fn new(pool: PgPool) -> PgOutbox {
        PgOutbox { pool, clock: spark_db::system_clock(), open: Arc::default() }
    }

    /// The same outbox reading `clock` for backoff, the retry budget and
    /// retention. A claim's lease is enforced by the database
    /// (`idle_in_transaction_session_timeout`), never by a relay host's
    /// clock.
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

    fn lock_open(&self) -> std::sync::MutexGuard<'_, HashMap<ClaimToken, Open>> {
        // A panic while the map was locked cannot leave it half-changed
        // (each use is one insert or remove), so a poisoned lock is usable.
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on claim `token`'s transaction. `None` when the claim no
    /// longer holds its events: not open (finished, abandoned), or lost
    /// (the server ended its transaction).
    async fn with_claim<T>(
        &self,
        token: ClaimToken,
        f: impl AsyncFnOnce(&mut Open) -> std::result::Result<T, sqlx::Error>,
    ) -> Result<Option<T>> {
        let Some(mut open) = self.lock_open().remove(&token) else { return Ok(None) };
        let result = if open.lost { Ok(None) } else { f(&mut open).await.map(Some) };
        let result = match result {
            Err(e) if is_lost(&e) => {
                tracing::warn!(error = %e, "outbox claim lost: the database ended its transaction");
                open.lost = true;
                Ok(None)
            }
            other => other.map_err(Into::into),
        };
        // Put back even after an error: the relay ends the claim with
        // `finish`, which rolls it back.
        self.lock_open().insert(token, open);
        result
    }
}

/// The claim. `cand` locks the first available pending rows in `seq` order,
/// skipping rows other relays hold. For each aggregate in it, `stops` finds
/// the oldest event this claim cannot take although it comes before the
/// claim's last event of that aggregate: held by another relay, backing
/// off, held, or (under `Block`, `$3`) an unskipped dead letter. Only the
/// events before an aggregate's stop are returned. Events behind a stop
/// that will not move soon (backing off, dead, held) are set aside as
/// `held`, out of the index `cand` scans, so they cost later claims
/// nothing; the rest are simply not returned and their locks end with the
/// transaction. Cost: the batch, and one index probe per aggregate in it —
/// not the backlog.
const CLAIM: &str = "WITH cand AS MATERIALIZED (
        SELECT o.seq, o.agg_key FROM spark_outbox o
        WHERE o.status = 'pending' AND o.available_at_ms <= $1
        ORDER BY o.seq LIMIT $2
        FOR UPDATE SKIP LOCKED),
     last AS MATERIALIZED (SELECT agg_key, max(seq) AS last FROM cand GROUP BY agg_key),
     stops AS MATERIALIZED (
        SELECT l.agg_key, s.seq AS stop, s.status, s.available_at_ms
        FROM last l LEFT JOIN LATERAL (
            SELECT e.seq, e.status, e.available_at_ms FROM spark_outbox e
            WHERE e.agg_key = l.agg_key AND e.seq < l.last
              AND e.status IN ('pending', 'held', 'dead')
              AND (e.status <> 'dead' OR ($3 AND e.skipped_at_ms IS NULL))
              AND e.seq NOT IN (SELECT seq FROM cand)
            ORDER BY e.agg_key, e.seq LIMIT 1) s ON true),
     hold AS (
        UPDATE spark_outbox o SET status = 'held'
        FROM cand c JOIN stops s USING (agg_key)
        WHERE o.seq = c.seq AND c.seq > s.stop
          AND (s.status IN ('held', 'dead') OR s.available_at_ms > $1))
     SELECT o.seq, o.id::text, o.aggregate_type, o.aggregate_id, o.event_type, o.payload::text,
            o.headers::text, o.created_at_ms, o.attempts
     FROM cand c JOIN stops s USING (agg_key) JOIN spark_outbox o ON o.seq = c.seq
     WHERE s.stop IS NULL OR c.seq < s.stop
     ORDER BY o.seq";

/// A relay row not refreshed for this long is a dead relay's.
const STALE_RELAY_MS: i64 = 10 * 60 * 1000;

/// Dead rows after which a relay vacuums the table itself when autovacuum
/// is off.
pub const VACUUM_AFTER_DEAD: i64 = 20_000;

/// Deletes the published events and frees what was held behind them.
const DELETE_PUBLISHED: &str = "WITH done AS (DELETE FROM spark_outbox WHERE seq = ANY($1) RETURNING agg_key)
     UPDATE spark_outbox SET status = 'pending'
      WHERE status = 'held' AND agg_key IN (SELECT agg_key FROM done)";

/// Keeps the published events (retention) and frees what was held behind
/// them.
const KEEP_PUBLISHED: &str = "WITH done AS (
        UPDATE spark_outbox SET status = 'published', published_at_ms = $2, locked_until_ms = 0, claim_token = NULL
         WHERE seq = ANY($1) RETURNING agg_key)
     UPDATE spark_outbox SET status = 'pending'
      WHERE status = 'held' AND agg_key IN (SELECT agg_key FROM done)";

/// Frees held events whose aggregate has nothing in front of them any more
/// (`$1`: dead letters block). The claim and the publish free them as they
/// go; this sweep covers the rest (a relay switched to the skipping policy,
/// a crash between a hold and the publish that would have freed it).
const UNHOLD: &str = "WITH heads AS (
        SELECT agg_key, min(seq) AS first FROM spark_outbox WHERE status = 'held' GROUP BY agg_key)
     UPDATE spark_outbox o SET status = 'pending'
       FROM heads h
      WHERE o.agg_key = h.agg_key AND o.status = 'held'
        AND NOT EXISTS (
            SELECT 1 FROM spark_outbox e
             WHERE e.agg_key = h.agg_key AND e.seq < h.first
               AND (e.status = 'pending' OR ($1 AND e.status = 'dead' AND e.skipped_at_ms IS NULL)))";

/// The server-side fence of a claim with `lease`: the lease and a quarter,
/// in ms, as `idle_in_transaction_session_timeout` takes it.
fn fence_ms(lease: Duration) -> i64 {
    let lease = millis(lease);
    lease.saturating_add(lease / 4).clamp(1, i64::from(i32::MAX))
}

fn is_lost(e: &sqlx::Error) -> bool {
    // The server ended the session (the lease's idle timeout, a restart) or
    // the connection broke: the transaction is gone, nothing was committed.
    match e {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("25P03" | "57P01" | "08006" | "08003")),
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

#[async_trait]
impl OutboxStore for PgOutbox {
    fn clock(&self) -> SharedClock {
        self.clock.clone()
    }

    async fn claim(&self, _relay: &str, batch: u32, lease: Duration, policy: DeadLetterPolicy) -> Result<Claim> {
        let token = ClaimToken::new();
        // One round trip: the transaction starts with its own fence. A
        // relay that stays silent in it for longer is disconnected by the
        // server, which rolls the claim back. The fence is the lease and a
        // quarter: the relay starts no publish later than a publish timeout
        // before its lease ends, but the last one may time out right at the
        // end, and its commit must still get through (the server's timer
        // starts only after this claim's statement, which can be
        // sub-millisecond).
        //
        // The claim is fast only as an ordered index scan that stops after
        // the batch. A queue's statistics are nearly always wrong (it empties
        // and fills faster than ANALYZE runs), and with stale ones the
        // planner chose a bitmap scan of every pending entry, dead ones
        // included, and a sort: 59 ms instead of under 1 ms per claim,
        // measured after a 300k drain. Plan choice is switched off for this
        // transaction only.
        let begin = format!(
            "BEGIN; SET LOCAL idle_in_transaction_session_timeout = {}; \
             SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off",
            fence_ms(lease)
        );
        let mut tx = self.pool.begin_with(sqlx::AssertSqlSafe(begin)).await?;
        let rows: Vec<Row> = sqlx::query_as(CLAIM)
            .bind(self.clock.now_ms())
            .bind(i64::from(batch))
            .bind(policy == DeadLetterPolicy::Block)
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            // Holds made by this claim still count.
            tx.commit().await?;
            return Ok(claimed(token, rows));
        }
        self.lock_open().insert(token, Open { tx, published: Vec::new(), keep: false, lost: false });
        Ok(claimed(token, rows))
    }

    async fn finish(&self, token: ClaimToken, commit: bool) -> Result<bool> {
        let Some(mut open) = self.lock_open().remove(&token) else { return Ok(true) };
        if open.lost {
            return Ok(false);
        }
        if !commit {
            // A rollback that fails leaves the connection broken, which
            // rolls back too; the pool replaces it.
            if let Err(e) = open.tx.rollback().await {
                tracing::debug!(error = %e, "outbox claim rollback failed; the connection is dropped");
            }
            return Ok(true);
        }
        let done = async {
            if !open.published.is_empty() {
                if open.keep {
                    sqlx::query(KEEP_PUBLISHED)
                        .bind(&open.published)
                        .bind(self.clock.now_ms())
                        .execute(&mut *open.tx)
                        .await?;
                } else {
                    sqlx::query(DELETE_PUBLISHED).bind(&open.published).execute(&mut *open.tx).await?;
                }
            }
            open.tx.commit().await
        };
        match done.await {
            Ok(()) => Ok(true),
            Err(e) if is_lost(&e) => {
                tracing::warn!(error = %e, "outbox claim lost before it was committed; its events will be claimed again");
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn abandon(&self, token: ClaimToken) {
        // Dropping the transaction rolls it back when its connection is
        // next used or returned to the pool.
        drop(self.lock_open().remove(&token));
    }

    async fn set_idle(&self, relay: &str, idle: bool) -> Result<()> {
        sqlx::query(
            "INSERT INTO spark_outbox_relays (relay, idle, seen_at_ms) VALUES ($1, $2, $3)
             ON CONFLICT (relay) DO UPDATE SET idle = excluded.idle, seen_at_ms = excluded.seen_at_ms",
        )
        .bind(relay)
        .bind(idle)
        .bind(self.clock.now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn forget_relay(&self, relay: &str) -> Result<()> {
        sqlx::query("DELETE FROM spark_outbox_relays WHERE relay = $1").bind(relay).execute(&self.pool).await?;
        Ok(())
    }

    /// Recorded on the claim; the events are deleted (or, with `keep`,
    /// marked published) when [`finish`](OutboxStore::finish) commits it.
    async fn mark_published(&self, seqs: &[i64], token: ClaimToken, keep: bool) -> Result<u64> {
        let marked = self
            .with_claim(token, async |open: &mut Open| {
                open.published.extend_from_slice(seqs);
                open.keep = keep;
                Ok(seqs.len() as u64)
            })
            .await?;
        Ok(marked.unwrap_or(0))
    }

    async fn mark_failed(&self, seq: i64, token: ClaimToken, error: &str, failure: Failure) -> Result<Option<Failed>> {
        let (retry_at, budget, refusal, max_refusals) = failure_binds(failure);
        let now = self.clock.now_ms();
        let status = self
            .with_claim(token, async |open: &mut Open| {
                let status: Option<String> = sqlx::query_scalar(
                    "UPDATE spark_outbox
                        SET attempts = attempts + 1, refusals = refusals + $6, last_error = $2,
                            first_failed_at_ms = COALESCE(first_failed_at_ms, $3),
                            available_at_ms = COALESCE($4, available_at_ms),
                            status = CASE WHEN $4::bigint IS NULL OR COALESCE(first_failed_at_ms, $3) + $5 <= $3
                                               OR refusals + $6 >= $7
                                          THEN 'dead' ELSE 'pending' END
                      WHERE seq = $1 AND status = 'pending'
                     RETURNING status",
                )
                .bind(seq)
                .bind(error)
                .bind(now)
                .bind(retry_at)
                .bind(budget)
                .bind(refusal)
                .bind(max_refusals)
                .fetch_optional(&mut *open.tx)
                .await?;
                Ok(status)
            })
            .await?;
        Ok(failed(status.flatten()))
    }

    /// Nothing to write: the events' locks end with the claim.
    async fn release(&self, seqs: &[i64], token: ClaimToken) -> Result<u64> {
        let held = self.with_claim(token, async |_: &mut Open| Ok(seqs.len() as u64)).await?;
        Ok(held.unwrap_or(0))
    }

    async fn defer(&self, seqs: &[i64], token: ClaimToken, until_ms: i64) -> Result<u64> {
        let done = self
            .with_claim(token, async |open: &mut Open| {
                let r = sqlx::query(
                    "UPDATE spark_outbox SET available_at_ms = GREATEST(available_at_ms, $2)
                      WHERE seq = ANY($1) AND status = 'pending'",
                )
                .bind(seqs)
                .bind(until_ms)
                .execute(&mut *open.tx)
                .await?;
                Ok(r.rows_affected())
            })
            .await?;
        Ok(done.unwrap_or(0))
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

    /// Clears the rows of relays that died, and vacuums the table when the
    /// server will not: with autovacuum off
    /// (as on some managed and test servers), every deleted event stays in
    /// the indexes the claim scans, and a drain slows down with every event
    /// it has ever published. Runs only when autovacuum is off for the
    /// table and more than [`VACUUM_AFTER_DEAD`] dead rows have piled up;
    /// `SKIP_LOCKED`, so relays never queue behind each other's vacuum.
    async fn maintain(&self) -> Result<()> {
        // Relays refresh their row every few seconds; a row unseen for ten
        // minutes belongs to a relay that died without saying goodbye.
        sqlx::query("DELETE FROM spark_outbox_relays WHERE seen_at_ms < $1")
            .bind(self.clock.now_ms() - STALE_RELAY_MS)
            .execute(&self.pool)
            .await?;
        let (autovacuum_off, dead): (bool, i64) = sqlx::query_as(
            "SELECT current_setting('autovacuum') = 'off'
                    OR coalesce('autovacuum_enabled=false' = ANY(c.reloptions), false),
                    coalesce(s.n_dead_tup, 0)
               FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
              WHERE c.oid = to_regclass('spark_outbox')",
        )
        .fetch_optional(&self.pool)
        .await?
        .unwrap_or((false, 0));
        if autovacuum_off && dead > VACUUM_AFTER_DEAD {
            let started = std::time::Instant::now();
            sqlx::query("VACUUM (SKIP_LOCKED, ANALYZE) spark_outbox").execute(&self.pool).await?;
            ::metrics::counter!(crate::metrics::VACUUMS).increment(1);
            tracing::info!(dead, took = ?started.elapsed(), "outbox table vacuumed by the relay (autovacuum is off)");
        }
        Ok(())
    }

    async fn unhold(&self, policy: DeadLetterPolicy) -> Result<u64> {
        let r = sqlx::query(UNHOLD).bind(policy == DeadLetterPolicy::Block).execute(&self.pool).await?;
        Ok(r.rows_affected())
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
                      WHERE p.agg_key = o.agg_key AND p.status IN ('pending', 'held') AND p.seq > o.seq)
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
        let skipped = sqlx::query(
            "UPDATE spark_outbox SET skipped_by = $2, skipped_at_ms = $3
              WHERE id = $1::uuid AND status = 'dead' AND skipped_at_ms IS NULL",
        )
        .bind(id.to_string())
        .bind(by)
        .bind(self.clock.now_ms())
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        // Frees what was held behind the dead letter, unless something older
        // of its aggregate still holds it.
        if skipped {
            self.unhold(DeadLetterPolicy::Block).await?;
        }
        Ok(skipped)
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
    fn the_fence_is_the_lease_and_a_quarter_within_the_server_limits() {
        assert_eq!(fence_ms(Duration::from_secs(60)), 75_000);
        assert_eq!(fence_ms(Duration::from_millis(200)), 250);
        assert_eq!(fence_ms(Duration::ZERO), 1);
        assert_eq!(fence_ms(Duration::from_secs(10_000_000)), i64::from(i32::MAX));
    }

    #[test]
    fn zero_probe_settings_are_raised_to_the_minimum() {
        let listen = Listen::new("postgres://x").probe_every(Duration::ZERO).probe_timeout(Duration::ZERO);
        assert_eq!((listen.probe_every, listen.probe_timeout), (MIN_PROBE, MIN_PROBE));
    }
}
