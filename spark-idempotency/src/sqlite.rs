//! The SQLite backend: its statements, in SQLite's `?n` syntax (numbered,
//! so a parameter may appear several times).

use sqlx::migrate::MigrateError;
use sqlx::{Row as _, Sqlite, SqliteConnection, SqlitePool};

use crate::sql_store::SqlStore;
use crate::sql_store::sealed::{Backend, NewRecord, Record, StatsRow};

/// The SQLite store: the embedded default, for one machine.
///
/// SQLite serialises writers, so a duplicate in transactional mode waits
/// for the first transaction (up to the pool's busy timeout) and then sees
/// its outcome.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use spark_idempotency::{Claim, Config, Fingerprint, IdempotencyKey, IdempotencyStore, SqliteStore, StoredResponse};
///
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// let store = SqliteStore::new(pool, Config::default())?;
/// store.migrate().await?;
///
/// let key: IdempotencyKey = "order-42".parse()?;
/// let fp = Fingerprint::of_request("POST", "/v1/orders", b"{}");
/// // Leased mode: the claim commits on its own; the work runs; then complete.
/// let Claim::Acquired(lease) = store.claim("client-a", &key, &fp).await? else { unreachable!() };
/// store.complete(&lease, &StoredResponse::new(201, "created")).await?;
/// assert!(matches!(store.claim("client-a", &key, &fp).await?, Claim::Replay(r) if r.status == 201));
/// let other = Fingerprint::of_request("POST", "/v1/orders", b"{\"x\":1}");
/// assert_eq!(store.claim("client-a", &key, &other).await?, Claim::Mismatch);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub type SqliteStore = SqlStore<Sqlite>;

/// The migrations that create this crate's tables; run them beside an
/// application's own (they ignore migrations they do not know).
#[must_use]
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("./migrations/sqlite");
    m.set_ignore_missing(true);
    m
}

/// Claim: insert the record, or take over one past its TTL or one whose
/// lease expired with the same fingerprint. No row back means the key is
/// held, completed or mismatched, and a read tells which.
///
/// A takeover keeps the record's expiry but never lets it fall before the
/// new lease ends, so GC cannot delete a record while its holder still runs.
/// The record is written in flight, or with its outcome already in it when
/// the claim carries the response (`claim_and_complete_in`).
///
/// `?1` scope, `?2` key, `?3` fingerprint, `?4` lease end, `?5` now, `?6`
/// expiry, `?7` state, `?8` status, `?9` headers, `?10` body.
const CLAIM: &str = "INSERT INTO spark_idempotency_keys
        (scope, key, fingerprint, state, fencing, first_fencing, lease_until_ms, created_at_ms, expires_at_ms,
         response_status, response_headers, response_body)
    VALUES (?1, ?2, ?3, ?7, 1, 1, ?4, ?5, ?6, ?8, ?9, ?10)
    ON CONFLICT (scope, key) DO UPDATE SET
        fingerprint = excluded.fingerprint,
        state = excluded.state,
        fencing = spark_idempotency_keys.fencing + 1,
        first_fencing = CASE WHEN spark_idempotency_keys.expires_at_ms <= ?5
            THEN spark_idempotency_keys.fencing + 1 ELSE spark_idempotency_keys.first_fencing END,
        lease_until_ms = excluded.lease_until_ms,
        created_at_ms = CASE WHEN spark_idempotency_keys.expires_at_ms <= ?5
            THEN excluded.created_at_ms ELSE spark_idempotency_keys.created_at_ms END,
        expires_at_ms = CASE WHEN spark_idempotency_keys.expires_at_ms <= ?5
            THEN excluded.expires_at_ms
            ELSE MAX(spark_idempotency_keys.expires_at_ms, excluded.lease_until_ms) END,
        response_status = excluded.response_status,
        response_headers = excluded.response_headers,
        response_body = excluded.response_body
    WHERE spark_idempotency_keys.expires_at_ms <= ?5
       OR (spark_idempotency_keys.state = 'in_flight'
           AND spark_idempotency_keys.lease_until_ms <= ?5
           AND spark_idempotency_keys.fingerprint = excluded.fingerprint)
    RETURNING fencing, first_fencing";

/// `?1` scope, `?2` key, `?3` now.
const READ: &str = "SELECT fingerprint, state, lease_until_ms, response_status, response_headers, response_body
    FROM spark_idempotency_keys
    WHERE scope = ?1 AND key = ?2 AND expires_at_ms > ?3";

/// `?1` scope, `?2` key, `?3` fencing, `?4` status, `?5` headers, `?6` body.
const COMPLETE: &str = "UPDATE spark_idempotency_keys
    SET state = 'completed', response_status = ?4, response_headers = ?5, response_body = ?6
    WHERE scope = ?1 AND key = ?2 AND fencing = ?3 AND state = 'in_flight'";

/// Release ends the lease instead of deleting the record: the retry then
/// takes over with a higher fencing number, so the holder that released (or
/// any earlier one) can never complete the retry's record. Deleting would let
/// the fencing number start again at 1.
///
/// `?1` scope, `?2` key, `?3` fencing.
const RELEASE: &str = "UPDATE spark_idempotency_keys SET lease_until_ms = 0
    WHERE scope = ?1 AND key = ?2 AND fencing = ?3 AND state = 'in_flight' AND lease_until_ms <> 0";

/// A bounded batch (SQLite serialises writers, so there is nothing to
/// skip). A record in flight under a live lease is never deleted, whatever
/// its expiry says.
///
/// `?1` now, `?2` batch size.
const GC: &str = "DELETE FROM spark_idempotency_keys WHERE rowid IN (
    SELECT rowid FROM spark_idempotency_keys
    WHERE expires_at_ms <= ?1 AND NOT (state = 'in_flight' AND lease_until_ms > ?1)
    LIMIT ?2)";

/// `?1` now.
const STATS: &str = "SELECT
        COUNT(*) FILTER (WHERE expires_at_ms > ?1),
        COUNT(*) FILTER (WHERE expires_at_ms <= ?1),
        COUNT(*) FILTER (WHERE expires_at_ms > ?1 AND state = 'in_flight'),
        MIN(created_at_ms)
    FROM spark_idempotency_keys";

impl Backend for Sqlite {
    /// SQLite has no lock timeout to bound: a transactional claim waits for
    /// the writer ahead of it up to the pool's busy timeout.
    async fn claim(
        conn: &mut SqliteConnection,
        record: &NewRecord<'_>,
        _lock_wait_ms: Option<i64>,
    ) -> Result<Option<(i64, i64)>, sqlx::Error> {
        sqlx::query_as(CLAIM)
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
            .fetch_optional(conn)
            .await
    }

    async fn read(
        conn: &mut SqliteConnection,
        scope: &str,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<Record>, sqlx::Error> {
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
        conn: &mut SqliteConnection,
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

    async fn release(conn: &mut SqliteConnection, scope: &str, key: &str, fencing: i64) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(RELEASE).bind(scope).bind(key).bind(fencing).execute(conn).await?.rows_affected())
    }

    async fn gc_batch(conn: &mut SqliteConnection, now_ms: i64, batch: i64) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(GC).bind(now_ms).bind(batch).execute(conn).await?.rows_affected())
    }

    async fn stats(conn: &mut SqliteConnection, now_ms: i64) -> Result<StatsRow, sqlx::Error> {
        sqlx::query_as(STATS).bind(now_ms).fetch_one(conn).await
    }

    /// SQLITE_BUSY (5) and its extended codes: another connection holds the
    /// write lock past the busy timeout.
    fn is_busy(err: &sqlx::Error) -> bool {
        matches!(err, sqlx::Error::Database(db) if db.code().is_some_and(|c| c == "5" || c == "517" || c == "261"))
    }

    async fn migrate(pool: &SqlitePool) -> Result<(), MigrateError> {
        migrator().run(pool).await
    }
}
