//! The SQLite backend: the embedded default. One relay polls; the API is
//! the same as PostgreSQL's.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{SqliteConnection, SqlitePool};
use uuid::Uuid;

use crate::event::{DeadRow, Row, decode, now_ms};
use crate::store::millis;
use crate::{DeadLetter, Event, OutboxEvent, OutboxStats, OutboxStore, Result};

/// The migrations (outbox and inbox tables).
#[must_use]
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("./migrations/sqlite");
    m.set_ignore_missing(true);
    m
}

/// Writes `event` inside the caller's transaction and returns its id.
/// SQLite serializes writers, so insertion order is commit order.
///
/// # Errors
///
/// As [`postgres::enqueue`](crate::postgres::enqueue).
pub async fn enqueue(conn: &mut SqliteConnection, event: &OutboxEvent) -> Result<Uuid> {
    crate::event::enqueue_with!(
        conn,
        event,
        "INSERT INTO spark_outbox
            (id, aggregate_type, aggregate_id, event_type, payload, headers, created_at_ms, available_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)"
    )
}

/// The outbox on a SQLite pool. Run one relay (it polls).
#[derive(Debug, Clone)]
pub struct SqliteOutbox {
    pool: SqlitePool,
}

impl SqliteOutbox {
    /// The outbox on `pool`.
    #[must_use]
    pub fn new(pool: SqlitePool) -> SqliteOutbox {
        SqliteOutbox { pool }
    }
}

/// A list of sequence numbers as a JSON array, for `json_each`.
fn seq_list(seqs: &[i64]) -> String {
    serde_json::to_string(seqs).unwrap_or_else(|_| "[]".to_owned())
}

#[async_trait]
impl OutboxStore for SqliteOutbox {
    async fn claim(&self, relay: &str, batch: u32, lease: Duration) -> Result<Vec<Event>> {
        let now = now_ms();
        let rows: Vec<Row> = sqlx::query_as(
            "UPDATE spark_outbox
                SET locked_until_ms = ?1 + ?3, locked_by = ?4, attempts = attempts + 1
              WHERE seq IN (
                SELECT o.seq FROM spark_outbox o
                WHERE o.status = 'pending' AND o.available_at_ms <= ?1 AND o.locked_until_ms <= ?1
                  AND NOT EXISTS (
                      SELECT 1 FROM spark_outbox e
                      WHERE e.aggregate_type = o.aggregate_type AND e.aggregate_id = o.aggregate_id
                        AND e.status = 'pending' AND e.seq < o.seq)
                ORDER BY o.seq LIMIT ?2)
             RETURNING seq, id, aggregate_type, aggregate_id, event_type, payload, headers, created_at_ms, attempts",
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
        let sql = if keep {
            "UPDATE spark_outbox SET status = 'published', published_at_ms = ?2, locked_until_ms = 0
             WHERE seq IN (SELECT value FROM json_each(?1))"
        } else {
            "DELETE FROM spark_outbox WHERE seq IN (SELECT value FROM json_each(?1)) AND ?2 IS NOT NULL"
        };
        sqlx::query(sql).bind(seq_list(seqs)).bind(now_ms()).execute(&self.pool).await?;
        Ok(())
    }

    async fn mark_failed(&self, seq: i64, relay: &str, error: &str, retry_at_ms: Option<i64>) -> Result<()> {
        sqlx::query(
            "UPDATE spark_outbox
                SET available_at_ms = COALESCE(?3, available_at_ms), locked_until_ms = 0, last_error = ?4,
                    status = CASE WHEN ?3 IS NULL THEN 'dead' ELSE 'pending' END
              WHERE seq = ?1 AND locked_by = ?2 AND status = 'pending'",
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
            "UPDATE spark_outbox SET locked_until_ms = 0, attempts = MAX(attempts - 1, 0)
             WHERE seq IN (SELECT value FROM json_each(?1)) AND locked_by = ?2 AND status = 'pending'",
        )
        .bind(seq_list(seqs))
        .bind(relay)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn cleanup(&self, before_ms: i64, batch: u32) -> Result<u64> {
        let mut deleted = 0;
        loop {
            let n = sqlx::query(
                "DELETE FROM spark_outbox WHERE seq IN (
                    SELECT seq FROM spark_outbox WHERE status = 'published' AND published_at_ms <= ?1 LIMIT ?2)",
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
        let rows: Vec<DeadRow> = sqlx::query_as(
            "SELECT seq, id, aggregate_type, aggregate_id, event_type, payload, headers, created_at_ms, attempts, last_error
             FROM spark_outbox WHERE status = 'dead' ORDER BY seq LIMIT ?1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(crate::event::dead_letter).collect()
    }

    async fn retry_dead(&self, id: Option<Uuid>) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE spark_outbox
                SET status = 'pending', attempts = 0, available_at_ms = ?2, locked_until_ms = 0, locked_by = NULL
              WHERE status = 'dead' AND (?1 IS NULL OR id = ?1)",
        )
        .bind(id.map(|u| u.to_string()))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }
}
