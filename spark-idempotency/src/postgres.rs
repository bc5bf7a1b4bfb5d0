//! The PostgreSQL backend: its statements, in PostgreSQL's `$n` syntax.

use sqlx::migrate::MigrateError;
use sqlx::{PgConnection, PgPool, Postgres, Row as _};

use crate::sql_store::SqlStore;
use crate::sql_store::sealed::{Backend, NewRecord, Record, StatsRow};

/// The PostgreSQL store: the production backend.
///
/// Claims are one `INSERT … ON CONFLICT … DO UPDATE … WHERE … RETURNING`
/// statement; a duplicate costs one more `SELECT`. It works behind
/// pgBouncer in transaction mode (no session state, no advisory locks).
///
/// Transactional mode, where the business write and the stored response
/// commit together:
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// use spark_idempotency::{Claim, Config, Fingerprint, IdempotencyKey, PgStore, StoredResponse};
///
/// let store = PgStore::new(pool.clone(), Config::default())?;
/// store.migrate().await?;
/// let key: IdempotencyKey = "order-42".parse()?;
/// let fp = Fingerprint::of_request("POST", "/v1/orders", b"{\"qty\":\"1\"}");
///
/// let mut tx = pool.begin().await?;
/// match store.claim_in(&mut tx, "client-a", &key, &fp).await? {
///     Claim::Acquired(lease) => {
///         sqlx::query("INSERT INTO orders (id) VALUES ('42')").execute(&mut *tx).await?;
///         store.complete_in(&mut tx, &lease, &StoredResponse::new(201, "{\"id\":\"42\"}")).await?;
///         tx.commit().await?;
///     }
///     Claim::Replay(stored) => println!("replay {}", stored.status),
///     Claim::InFlight { retry_after } => println!("409, retry after {retry_after:?}"),
///     Claim::Mismatch => println!("422"),
/// }
/// # Ok(())
/// # }
/// ```
pub type PgStore = SqlStore<Postgres>;

/// The migrations that create this crate's tables; run them beside an
/// application's own (they ignore migrations they do not know).
#[must_use]
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("./migrations/postgres");
    m.set_ignore_missing(true);
    m
}

/// Claim: insert the record, or take over one past its TTL or one whose
/// lease expired with the same fingerprint. No fencing back means the key
/// is held, completed or mismatched, and a read tells which.
///
/// A takeover keeps the record's expiry but never lets it fall before the
/// new lease ends, so GC cannot delete a record while its holder still runs.
/// The record is written in flight, or with its outcome already in it when
/// the claim carries the response (`claim_and_complete_in`).
///
/// The wait bound rides in this statement, so it costs no round trip: as
/// two statements of their own around the claim it made a transactional
/// request 7 round trips instead of 5, and round trips are what an
/// idempotent write costs beside a plain one (`spark bench idempotency`:
/// ratio 0.44 with them, 0.54 without, on a shared 2-core machine).
/// `previous` reads the connection's `lock_timeout`; `bound` sets it to
/// `$11` (or to itself when `$11` is NULL) and feeds the INSERT, so it runs
/// before the INSERT can wait on a transaction holding the key — PostgreSQL
/// reads `lock_timeout` when a lock wait starts. The final SELECT sets the
/// old value back after `claimed` has run, on every path that returns (the
/// LEFT JOIN gives one row whether or not the claim took the key). A wait
/// that times out fails the statement and aborts the transaction, whose
/// rollback restores the setting. Both CTEs are `MATERIALIZED` so each runs
/// exactly once.
///
/// `$1` scope, `$2` key, `$3` fingerprint, `$4` lease end, `$5` now, `$6`
/// expiry, `$7` state, `$8` status, `$9` headers, `$10` body, `$11` the wait
/// bound in milliseconds (NULL: the connection's own).
const CLAIM: &str = "WITH previous AS MATERIALIZED (
        SELECT current_setting('lock_timeout') AS lock_timeout
    ), bound AS MATERIALIZED (
        SELECT set_config('lock_timeout', COALESCE($11::text, lock_timeout), true) FROM previous
    ), claimed AS (
        INSERT INTO spark_idempotency_keys
            (scope, key, fingerprint, state, fencing, first_fencing, lease_until_ms, created_at_ms, expires_at_ms,
             response_status, response_headers, response_body)
        SELECT $1, $2, $3, $7, 1, 1, $4, $5, $6, $8, $9, $10 FROM bound
        ON CONFLICT (scope, key) DO UPDATE SET
            fingerprint = excluded.fingerprint,
            state = excluded.state,
            fencing = spark_idempotency_keys.fencing + 1,
            first_fencing = CASE WHEN spark_idempotency_keys.expires_at_ms <= $5
                THEN spark_idempotency_keys.fencing + 1 ELSE spark_idempotency_keys.first_fencing END,
            lease_until_ms = excluded.lease_until_ms,
            created_at_ms = CASE WHEN spark_idempotency_keys.expires_at_ms <= $5
                THEN excluded.created_at_ms ELSE spark_idempotency_keys.created_at_ms END,
            expires_at_ms = CASE WHEN spark_idempotency_keys.expires_at_ms <= $5
                THEN excluded.expires_at_ms
                ELSE GREATEST(spark_idempotency_keys.expires_at_ms, excluded.lease_until_ms) END,
            response_status = excluded.response_status,
            response_headers = excluded.response_headers,
            response_body = excluded.response_body
        WHERE spark_idempotency_keys.expires_at_ms <= $5
           OR (spark_idempotency_keys.state = 'in_flight'
               AND spark_idempotency_keys.lease_until_ms <= $5
               AND spark_idempotency_keys.fingerprint = excluded.fingerprint)
        RETURNING fencing, first_fencing
    )
    SELECT claimed.fencing, claimed.first_fencing, set_config('lock_timeout', previous.lock_timeout, true)
    FROM previous LEFT JOIN claimed ON true";

/// `$1` scope, `$2` key, `$3` now.
const READ: &str = "SELECT fingerprint, state, lease_until_ms, response_status, response_headers, response_body
    FROM spark_idempotency_keys
    WHERE scope = $1 AND key = $2 AND expires_at_ms > $3";

/// `$1` scope, `$2` key, `$3` fencing, `$4` status, `$5` headers, `$6` body.
const COMPLETE: &str = "UPDATE spark_idempotency_keys
    SET state = 'completed', response_status = $4, response_headers = $5, response_body = $6
    WHERE scope = $1 AND key = $2 AND fencing = $3 AND state = 'in_flight'";

/// Release ends the lease instead of deleting the record: the retry then
/// takes over with a higher fencing number, so the holder that released (or
/// any earlier one) can never complete the retry's record. Deleting would let
/// the fencing number start again at 1.
///
/// `$1` scope, `$2` key, `$3` fencing.
const RELEASE: &str = "UPDATE spark_idempotency_keys SET lease_until_ms = 0
    WHERE scope = $1 AND key = $2 AND fencing = $3 AND state = 'in_flight' AND lease_until_ms <> 0";

/// A bounded batch; SKIP LOCKED so that GC never waits on (or blocks) a
/// request that is touching an expired key right now. A record in flight
/// under a live lease is never deleted, whatever its expiry says.
///
/// `$1` now, `$2` batch size.
const GC: &str = "DELETE FROM spark_idempotency_keys WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM spark_idempotency_keys
    WHERE expires_at_ms <= $1 AND NOT (state = 'in_flight' AND lease_until_ms > $1)
    LIMIT $2 FOR UPDATE SKIP LOCKED))";

/// `$1` now.
const STATS: &str = "SELECT
        COUNT(*) FILTER (WHERE expires_at_ms > $1),
        COUNT(*) FILTER (WHERE expires_at_ms <= $1),
        COUNT(*) FILTER (WHERE expires_at_ms > $1 AND state = 'in_flight'),
        MIN(created_at_ms)
    FROM spark_idempotency_keys";

impl Backend for Postgres {
    async fn claim(
        conn: &mut PgConnection,
        record: &NewRecord<'_>,
        lock_wait_ms: Option<i64>,
    ) -> Result<Option<(i64, i64)>, sqlx::Error> {
        let (fencing, first_fencing, _): (Option<i64>, Option<i64>, String) = sqlx::query_as(CLAIM)
            .bind(record.scope)
            .bind(record.key)
            .bind(record.fingerprint)
            .bind(record.lease_until_ms)
            .bind(record.now_ms)
            .bind(record.expires_at_ms)
            .bind(record.state)
            .bind(record.status)
            .bind(record.headers.as_deref())
            .bind(record.body)
            .bind(lock_wait_ms.map(|ms| ms.to_string()))
            .fetch_one(conn)
            .await?;
        Ok(fencing.zip(first_fencing))
    }

    async fn read(conn: &mut PgConnection, scope: &str, key: &str, now_ms: i64) -> Result<Option<Record>, sqlx::Error> {
        let Some(row) = sqlx::query(READ).bind(scope).bind(key).bind(now_ms).fetch_optional(conn).await? else {
            return Ok(None);
        };
        Ok(Some(Record {
            fingerprint: row.try_get(0)?,
            state: row.try_get(1)?,
            lease_until_ms: row.try_get(2)?,
            status: row.try_get(3)?,
            headers: row.try_get(4)?,
            body: row.try_get(5)?,
        }))
    }

    async fn complete(
        conn: &mut PgConnection,
        scope: &str,
        key: &str,
        fencing: i64,
        status: i32,
        headers: String,
        body: &[u8],
    ) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(COMPLETE)
            .bind(scope)
            .bind(key)
            .bind(fencing)
            .bind(status)
            .bind(headers)
            .bind(body)
            .execute(conn)
            .await?;
        Ok(done.rows_affected())
    }

    async fn release(conn: &mut PgConnection, scope: &str, key: &str, fencing: i64) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(RELEASE).bind(scope).bind(key).bind(fencing).execute(conn).await?.rows_affected())
    }

    async fn gc_batch(conn: &mut PgConnection, now_ms: i64, batch: i64) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(GC).bind(now_ms).bind(batch).execute(conn).await?.rows_affected())
    }

    async fn stats(conn: &mut PgConnection, now_ms: i64) -> Result<StatsRow, sqlx::Error> {
        sqlx::query_as(STATS).bind(now_ms).fetch_one(conn).await
    }

    /// `lock_timeout` expired while waiting for a transaction holding the key.
    fn is_busy(err: &sqlx::Error) -> bool {
        matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
    }

    async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
        migrator().run(pool).await
    }
}
