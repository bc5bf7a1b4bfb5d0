//! The SQLite backend: the embedded default. One relay polls; the API is
//! the same as PostgreSQL's.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{SqliteConnection, SqlitePool};
use uuid::Uuid;

use spark_db::SharedClock;

use crate::event::{DeadRow, Row};
use crate::store::{claimed, failed, failure_binds, millis};
use crate::{
    Claim, ClaimToken, DeadLetter, DeadLetterPolicy, Failed, Failure, OutboxEvent, OutboxStats, OutboxStore, Result,
};

/// The migrations (outbox and inbox tables).
#[must_use]
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("./migrations/sqlite");
    m.set_ignore_missing(true);
    m
}

/// Writes `event` inside the caller's transaction and returns its id:
/// [`crate::enqueue`] on a SQLite connection. SQLite serializes writers,
/// so insertion order is commit order.
///
/// # Errors
///
/// As [`postgres::enqueue`](crate::postgres::enqueue).
pub async fn enqueue(conn: &mut SqliteConnection, event: &OutboxEvent) -> Result<Uuid> {
    crate::enqueue(conn, event).await
}

/// The enqueue statement; its binds are the PostgreSQL one's.
pub(crate) const ENQUEUE: &str = "INSERT INTO spark_outbox
        (id, aggregate_type, aggregate_id, event_type, payload, headers, created_at_ms, available_at_ms)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)";

/// The outbox on a SQLite pool. Run one relay (it polls).
#[derive(Debug, Clone)]
pub struct SqliteOutbox {
    pool: SqlitePool,
    clock: SharedClock,
}

impl SqliteOutbox {
    /// The outbox on `pool`, on the system clock.
    #[must_use]
    pub fn new(pool: SqlitePool) -> SqliteOutbox {
        SqliteOutbox { pool, clock: spark_db::system_clock() }
    }

    /// The same outbox reading `clock` for leases, backoff, the retry budget
    /// and retention.
    #[must_use]
    pub fn with_clock(mut self, clock: SharedClock) -> SqliteOutbox {
        self.clock = clock;
        self
    }
}

/// A list of sequence numbers as a JSON array, for `json_each`.
fn seq_list(seqs: &[i64]) -> String {
    serde_json::to_string(seqs).unwrap_or_else(|_| "[]".to_owned())
}

/// The claim; see the PostgreSQL one. One writer at a time, so no locking
/// clause is needed.
fn claim_sql(policy: DeadLetterPolicy) -> &'static str {
    static SQL: std::sync::LazyLock<[String; 2]> = std::sync::LazyLock::new(|| {
        let sql = |blocking: &str| {
            format!(
                "UPDATE spark_outbox
                    SET locked_until_ms = ?1 + ?3, locked_by = ?4, claim_token = ?5
                  WHERE seq IN (
                    SELECT o.seq FROM spark_outbox o
                    WHERE o.status = 'pending' AND o.available_at_ms <= ?1 AND o.locked_until_ms <= ?1
                      AND NOT EXISTS (
                          SELECT 1 FROM spark_outbox e
                          WHERE e.aggregate_type = o.aggregate_type AND e.aggregate_id = o.aggregate_id
                            AND e.status = 'pending' AND e.seq < o.seq)
                      {blocking}
                    ORDER BY o.seq LIMIT ?2)
                 RETURNING seq, id, aggregate_type, aggregate_id, event_type, payload, headers, created_at_ms, attempts"
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
impl OutboxStore for SqliteOutbox {
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

    /// Marks are immediate, so a commit has nothing left to do. Without
    /// one, the events the claim still holds go back at once, as the trait
    /// promises, instead of only after their lease (what is already marked
    /// stays marked).
    async fn finish(&self, token: ClaimToken, commit: bool) -> Result<bool> {
        if !commit {
            sqlx::query(
                "UPDATE spark_outbox SET locked_until_ms = 0, claim_token = NULL
                 WHERE claim_token = ?1 AND status = 'pending'",
            )
            .bind(token.to_string())
            .execute(&self.pool)
            .await?;
        }
        Ok(true)
    }

    async fn mark_published(&self, seqs: &[i64], token: ClaimToken, keep: bool) -> Result<u64> {
        let sql = if keep {
            "UPDATE spark_outbox SET status = 'published', published_at_ms = ?3, locked_until_ms = 0, claim_token = NULL
             WHERE seq IN (SELECT value FROM json_each(?1)) AND claim_token = ?2 AND status = 'pending'"
        } else {
            "DELETE FROM spark_outbox
             WHERE seq IN (SELECT value FROM json_each(?1)) AND claim_token = ?2 AND status = 'pending' AND ?3 IS NOT NULL"
        };
        let done = sqlx::query(sql)
            .bind(seq_list(seqs))
            .bind(token.to_string())
            .bind(self.clock.now_ms())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn mark_failed(&self, seq: i64, token: ClaimToken, error: &str, failure: Failure) -> Result<Option<Failed>> {
        let (retry_at, budget, refusal, max_refusals) = failure_binds(failure);
        let status: Option<String> = sqlx::query_scalar(
            "UPDATE spark_outbox
                SET attempts = attempts + 1, refusals = refusals + ?7, last_error = ?3, locked_until_ms = 0,
                    claim_token = NULL, first_failed_at_ms = COALESCE(first_failed_at_ms, ?4),
                    available_at_ms = COALESCE(?5, available_at_ms),
                    status = CASE WHEN ?5 IS NULL OR COALESCE(first_failed_at_ms, ?4) + ?6 <= ?4
                                       OR refusals + ?7 >= ?8
                                  THEN 'dead' ELSE 'pending' END
              WHERE seq = ?1 AND claim_token = ?2 AND status = 'pending'
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
             WHERE seq IN (SELECT value FROM json_each(?1)) AND claim_token = ?2 AND status = 'pending'",
        )
        .bind(seq_list(seqs))
        .bind(token.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn defer(&self, seqs: &[i64], token: ClaimToken, until_ms: i64) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE spark_outbox
                SET locked_until_ms = 0, claim_token = NULL, available_at_ms = MAX(available_at_ms, ?3)
              WHERE seq IN (SELECT value FROM json_each(?1)) AND claim_token = ?2 AND status = 'pending'",
        )
        .bind(seq_list(seqs))
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
        Ok(crate::event::stats(pending, dead, published, oldest, self.clock.now_ms()))
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>> {
        let rows: Vec<DeadRow> = sqlx::query_as(
            "SELECT o.seq, o.id, o.aggregate_type, o.aggregate_id, o.event_type, o.payload, o.headers,
                    o.created_at_ms, o.attempts, o.last_error, o.skipped_by, o.skipped_at_ms,
                    (SELECT COUNT(*) FROM spark_outbox p
                      WHERE p.aggregate_type = o.aggregate_type AND p.aggregate_id = o.aggregate_id
                        AND p.status = 'pending' AND p.seq > o.seq)
             FROM spark_outbox o WHERE o.status = 'dead' ORDER BY o.seq LIMIT ?1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(crate::event::dead_letter).collect())
    }

    async fn retry_dead(&self, id: Option<Uuid>) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE spark_outbox
                SET status = 'pending', attempts = 0, refusals = 0, first_failed_at_ms = NULL, available_at_ms = ?2,
                    locked_until_ms = 0, locked_by = NULL, claim_token = NULL, skipped_by = NULL, skipped_at_ms = NULL
              WHERE status = 'dead' AND ((?1 IS NULL AND skipped_at_ms IS NULL) OR id = ?1)",
        )
        .bind(id.map(|u| u.to_string()))
        .bind(self.clock.now_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn skip_dead(&self, id: Uuid, by: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE spark_outbox SET skipped_by = ?2, skipped_at_ms = ?3
              WHERE id = ?1 AND status = 'dead' AND skipped_at_ms IS NULL",
        )
        .bind(id.to_string())
        .bind(by)
        .bind(self.clock.now_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}
