//! The PostgreSQL backend: enqueue with NOTIFY, SKIP LOCKED claims, LISTEN.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::event::{Row, decode, now_ms};
use crate::store::millis;
use crate::{DeadLetter, Event, OutboxEvent, OutboxStats, OutboxStore, Result};

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
}

impl PgOutbox {
    /// The outbox on `pool`. Relays share work through `SKIP LOCKED`, so any
    /// number of processes may run one each.
    #[must_use]
    pub fn new(pool: PgPool) -> PgOutbox {
        PgOutbox { pool }
    }

    /// The pool.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

const COLUMNS: &str =
    "seq, id::text, aggregate_type, aggregate_id, event_type, payload::text, headers::text, created_at_ms, attempts";

#[async_trait]
impl OutboxStore for PgOutbox {
    async fn claim(&self, relay: &str, batch: u32, lease: Duration) -> Result<Vec<Event>> {
        let now = now_ms();
        // One statement: the CTE picks each aggregate's oldest pending event
        // (nothing older of the same aggregate pending, in flight or backing
        // off), skips rows other relays are claiming right now, and the
        // UPDATE leases what it picked.
        let rows: Vec<Row> = sqlx::query_as(
            "WITH picked AS (
                SELECT o.seq FROM spark_outbox o
                WHERE o.status = 'pending' AND o.available_at_ms <= $1 AND o.locked_until_ms <= $1
                  AND NOT EXISTS (
                      SELECT 1 FROM spark_outbox e
                      WHERE e.aggregate_type = o.aggregate_type AND e.aggregate_id = o.aggregate_id
                        AND e.status = 'pending' AND e.seq < o.seq)
                ORDER BY o.seq
                LIMIT $2
                FOR UPDATE SKIP LOCKED)
             UPDATE spark_outbox o
                SET locked_until_ms = $1 + $3, locked_by = $4, attempts = o.attempts + 1
               FROM picked WHERE o.seq = picked.seq
             RETURNING o.seq, o.id::text, o.aggregate_type, o.aggregate_id, o.event_type, o.payload::text,
                       o.headers::text, o.created_at_ms, o.attempts",
        )
        .bind(now)
        .bind(i64::from(batch))
        .bind(millis(lease))
        .bind(relay)
        .fetch_all(&self.pool)
        .await?;
        let mut events = rows.into_iter().map(decode).collect::<Result<Vec<_>>>()?;
        events.sort_by_key(|e| e.seq);
        Ok(events)
    }

    async fn mark_published(&self, seqs: &[i64], keep: bool) -> Result<()> {
        if keep {
            sqlx::query(
                "UPDATE spark_outbox SET status = 'published', published_at_ms = $2, locked_until_ms = 0
                 WHERE seq = ANY($1)",
            )
            .bind(seqs)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        } else {
            sqlx::query("DELETE FROM spark_outbox WHERE seq = ANY($1)").bind(seqs).execute(&self.pool).await?;
        }
        Ok(())
    }

    async fn mark_failed(&self, seq: i64, relay: &str, error: &str, retry_at_ms: Option<i64>) -> Result<()> {
        sqlx::query(
            "UPDATE spark_outbox
                SET available_at_ms = COALESCE($3, available_at_ms), locked_until_ms = 0, last_error = $4,
                    status = CASE WHEN $3::bigint IS NULL THEN 'dead' ELSE 'pending' END
              WHERE seq = $1 AND locked_by = $2 AND status = 'pending'",
        )
        .bind(seq)
        .bind(relay)
        .bind(retry_at_ms)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn release(&self, seqs: &[i64], relay: &str) -> Result<()> {
        sqlx::query(
            "UPDATE spark_outbox SET locked_until_ms = 0, attempts = GREATEST(attempts - 1, 0)
             WHERE seq = ANY($1) AND locked_by = $2 AND status = 'pending'",
        )
        .bind(seqs)
        .bind(relay)
        .execute(&self.pool)
        .await?;
        Ok(())
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
        Ok(crate::event::stats(pending, dead, published, oldest))
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>> {
        let sql = format!("SELECT {COLUMNS}, last_error FROM spark_outbox WHERE status = 'dead' ORDER BY seq LIMIT $1");
        let rows: Vec<crate::event::DeadRow> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(i64::from(limit)).fetch_all(&self.pool).await?;
        rows.into_iter().map(crate::event::dead_letter).collect()
    }

    async fn retry_dead(&self, id: Option<Uuid>) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE spark_outbox
                SET status = 'pending', attempts = 0, available_at_ms = $2, locked_until_ms = 0, locked_by = NULL
              WHERE status = 'dead' AND ($1::uuid IS NULL OR id = $1::uuid)",
        )
        .bind(id.map(|u| u.to_string()))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }
}

/// Keeps a dedicated LISTEN connection on `listen_url` and wakes `relays`
/// whenever an enqueueing transaction commits.
///
/// Give it its own URL: pgBouncer in transaction mode breaks LISTEN, so
/// point it straight at PostgreSQL while the pool goes through pgBouncer.
/// When the connection drops, relays keep polling; the listener reconnects,
/// LISTENs again, and wakes every relay once so nothing sent meanwhile
/// waits for a poll. Runs until the task is aborted.
#[must_use = "the listener stops when the handle is aborted; keep it"]
pub fn listen(listen_url: String, relays: Vec<std::sync::Arc<tokio::sync::Notify>>) -> tokio::task::JoinHandle<()> {
    let wake_all = move || relays.iter().for_each(|r| r.notify_one());
    tokio::spawn(async move {
        loop {
            let listener = async {
                let mut listener = sqlx::postgres::PgListener::connect(&listen_url).await?;
                listener.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            let mut listener = match listener.await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox LISTEN connection failed; relays poll meanwhile");
                    metrics::gauge!(crate::metrics::LISTENING).set(0.0);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            tracing::info!("outbox listening for {CHANNEL}");
            metrics::gauge!(crate::metrics::LISTENING).set(1.0);
            wake_all();
            // `try_recv` reports a lost connection as `Ok(None)` instead of
            // reconnecting silently, so the gauge and the catch-up wake stay
            // honest.
            loop {
                match listener.try_recv().await {
                    Ok(Some(_)) => wake_all(),
                    Ok(None) | Err(_) => {
                        tracing::warn!("outbox LISTEN connection lost; relays poll until it is back");
                        metrics::gauge!(crate::metrics::LISTENING).set(0.0);
                        break;
                    }
                }
            }
        }
    })
}
