//! The SQL store, written once for every SQL backend.
//!
//! [`SqlStore`] holds the logic (the claim loop, completion, release, GC,
//! stats) as plain generic code. What differs between databases — the
//! statements, their placeholder syntax, how a transactional claim bounds
//! its wait — lives in each backend module (`postgres.rs`, `sqlite.rs`)
//! behind the sealed [`SqlBackend`] trait, as plain constants and plain
//! `sqlx` calls. There is no rewriting of SQL at run time and no lookup of
//! statements.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use self::sealed::NewRecord;
use crate::types::{duration_ms, retry_after};
use crate::{
    Claim, Config, Fingerprint, IdempotencyError, IdempotencyKey, IdempotencyStore, Lease, Result, Stats,
    StoredResponse, metrics,
};

/// A database the SQL store runs on: `sqlx::Postgres` (feature
/// `postgres`) or `sqlx::Sqlite` (feature `sqlite`). Sealed: the
/// statements each backend runs are this crate's business.
pub trait SqlBackend: sealed::Backend {}

impl<DB: sealed::Backend> SqlBackend for DB {}

pub(crate) mod sealed {
    use std::future::Future;

    use sqlx::migrate::MigrateError;

    /// A record as the claim's read sees it.
    #[derive(Debug)]
    pub struct Record {
        pub fingerprint: Vec<u8>,
        pub state: String,
        pub lease_until_ms: i64,
        pub status: Option<i32>,
        pub headers: Option<String>,
        pub body: Option<Vec<u8>>,
    }

    /// Live, expired and in-flight counts, and the oldest creation time.
    pub(crate) type StatsRow = (i64, i64, i64, Option<i64>);

    /// The record a claim writes: in flight, or (when the claim carries
    /// the response) already completed or released.
    #[derive(Debug)]
    pub struct NewRecord<'a> {
        pub scope: &'a str,
        pub key: &'a str,
        pub fingerprint: &'a [u8],
        /// `in_flight` or `completed`.
        pub state: &'static str,
        /// 0 for a record written released.
        pub lease_until_ms: i64,
        pub now_ms: i64,
        pub expires_at_ms: i64,
        pub status: Option<i32>,
        pub headers: Option<String>,
        pub body: Option<&'a [u8]>,
    }

    /// The statements one backend runs, each with its binds. Every method
    /// is one statement on `conn`.
    pub trait Backend: sqlx::Database {
        /// Inserts the record or takes over an expired one; the new
        /// `(fencing, first_fencing)`, or `None` if the key is held,
        /// completed or bound to another request.
        ///
        /// With `lock_wait_ms`, the statement waits at most that long for
        /// another transaction that holds the key (and fails with an error
        /// [`is_busy`](Backend::is_busy) accepts), and leaves the
        /// connection's own wait setting as it found it — all in this one
        /// statement, so the bound costs no round trip.
        fn claim(
            conn: &mut Self::Connection,
            record: &NewRecord<'_>,
            lock_wait_ms: Option<i64>,
        ) -> impl Future<Output = Result<Option<(i64, i64)>, sqlx::Error>> + Send;

        /// The live record of `(scope, key)`.
        fn read(
            conn: &mut Self::Connection,
            scope: &str,
            key: &str,
            now_ms: i64,
        ) -> impl Future<Output = Result<Option<Record>, sqlx::Error>> + Send;

        /// Stores the outcome if `fencing` still holds the key; rows
        /// affected.
        fn complete(
            conn: &mut Self::Connection,
            scope: &str,
            key: &str,
            fencing: i64,
            status: i32,
            headers: String,
            body: &[u8],
        ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

        /// Ends the lease if `fencing` still holds the key; rows affected.
        fn release(
            conn: &mut Self::Connection,
            scope: &str,
            key: &str,
            fencing: i64,
        ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

        /// Deletes at most `batch` expired records; how many it deleted.
        fn gc_batch(
            conn: &mut Self::Connection,
            now_ms: i64,
            batch: i64,
        ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

        /// Counts for [`Stats`](crate::Stats).
        fn stats(
            conn: &mut Self::Connection,
            now_ms: i64,
        ) -> impl Future<Output = Result<StatsRow, sqlx::Error>> + Send;

        /// Whether `err` says the claim gave up waiting for another
        /// transaction that holds the key.
        fn is_busy(err: &sqlx::Error) -> bool;

        /// Runs this crate's migrations for the backend on `pool`.
        fn migrate(pool: &sqlx::Pool<Self>) -> impl Future<Output = Result<(), MigrateError>> + Send;
    }
}

/// How many times a claim re-reads when the record changes under it (it was
/// released or collected between the insert and the read).
const CLAIM_ATTEMPTS: usize = 5;

/// The idempotency store on a SQL database: `PgStore`
/// (`SqlStore<sqlx::Postgres>`) or [`SqliteStore`](crate::SqliteStore)
/// (`SqlStore<sqlx::Sqlite>`). Both run the same logic; only the statements
/// differ.
///
/// Besides the leased mode of [`IdempotencyStore`], it offers the
/// transactional mode: [`claim_in`](SqlStore::claim_in) and
/// [`complete_in`](SqlStore::complete_in) run inside the caller's
/// transaction.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use spark_idempotency::{Claim, Config, Fingerprint, IdempotencyKey, IdempotencyStore, SqlStore, StoredResponse};
///
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// let store: SqlStore<sqlx::Sqlite> = SqlStore::new(pool, Config::default())?;
/// store.migrate().await?;
/// let key: IdempotencyKey = "order-7".parse()?;
/// let fp = Fingerprint::of_request("POST", "/v1/orders", b"{}");
/// let Claim::Acquired(lease) = store.claim("client-a", &key, &fp).await? else { unreachable!() };
/// store.complete(&lease, &StoredResponse::new(201, "created")).await?;
/// assert_eq!(store.claim("client-a", &key, &fp).await?, Claim::Replay(StoredResponse::new(201, "created")));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct SqlStore<DB: SqlBackend> {
    pool: sqlx::Pool<DB>,
    config: Config,
}

impl<DB: SqlBackend> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        SqlStore { pool: self.pool.clone(), config: self.config.clone() }
    }
}

impl<DB: SqlBackend> fmt::Debug for SqlStore<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStore").field("backend", &DB::NAME).field("config", &self.config).finish_non_exhaustive()
    }
}

impl<DB: SqlBackend> SqlStore<DB> {
    /// A store over `pool`. Run the backend's `migrator()` first (or
    /// [`migrate`](Self::migrate)).
    ///
    /// # Errors
    ///
    /// [`IdempotencyError::Config`] for a configuration that cannot work.
    pub fn new(pool: sqlx::Pool<DB>, config: Config) -> Result<Self> {
        config.validate()?;
        Ok(SqlStore { pool, config })
    }

    /// Runs this crate's migrations on the store's pool.
    ///
    /// # Errors
    ///
    /// When a migration fails.
    pub async fn migrate(&self) -> Result<()> {
        DB::migrate(&self.pool).await.map_err(IdempotencyError::Migrate)
    }

    /// The pool.
    #[must_use]
    pub fn pool(&self) -> &sqlx::Pool<DB> {
        &self.pool
    }

    /// Transactional mode: claims inside the caller's transaction, so the
    /// claim commits or rolls back with the business write (a rollback frees
    /// the key). A duplicate that arrives while the transaction is open
    /// waits at most the configured `lock_timeout` (PostgreSQL; SQLite waits
    /// for the pool's busy timeout), then gets [`Claim::InFlight`]; after
    /// that the duplicate's own transaction is aborted and must be rolled
    /// back. On PostgreSQL the caller's own `lock_timeout` is put back after
    /// the claim, so the rest of the transaction keeps its setting.
    ///
    /// When the response is known before the work runs, prefer
    /// [`claim_and_complete_in`](Self::claim_and_complete_in): it saves the
    /// completion's statement.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn claim_in(
        &self,
        conn: &mut DB::Connection,
        scope: &str,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
    ) -> Result<Claim> {
        self.claim_bounded(conn, scope, key, fingerprint, None).await
    }

    /// Transactional mode in one statement, for a request whose response is
    /// known before its work runs (say, an id the service generated): claims
    /// the key and stores `response` as its outcome at once, in the caller's
    /// transaction. The record it writes is the one
    /// [`claim_in`](Self::claim_in) followed by
    /// [`complete_in`](Self::complete_in) would have written (completed, or
    /// released for an outcome the configuration does not store), so replay,
    /// 409, 422, fencing, the bounded wait of a duplicate and the caller's
    /// `lock_timeout` behave exactly as there.
    ///
    /// On [`Claim::Acquired`], run the business writes and commit; do not
    /// call `complete_in` (the outcome is already stored, so it would answer
    /// [`IdempotencyError::LeaseLost`]). If the work fails or ends otherwise,
    /// roll back: that frees the key, as with `claim_in`. The other answers
    /// change nothing and are handled as with `claim_in`.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use spark_idempotency::{Claim, Config, Fingerprint, IdempotencyKey, SqliteStore, StoredResponse};
    ///
    /// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
    /// let store = SqliteStore::new(pool.clone(), Config::default())?;
    /// store.migrate().await?;
    /// sqlx::query("CREATE TABLE orders (id TEXT PRIMARY KEY)").execute(&pool).await?;
    ///
    /// let key: IdempotencyKey = "order-42".parse()?;
    /// let fp = Fingerprint::of_request("POST", "/v1/orders", b"{}");
    /// let created = StoredResponse::new(201, "{\"id\":\"42\"}");
    /// for _attempt in 0..2 {
    ///     let mut tx = pool.begin().await?;
    ///     match store.claim_and_complete_in(&mut tx, "client-a", &key, &fp, &created).await? {
    ///         Claim::Acquired(_) => {
    ///             sqlx::query("INSERT INTO orders (id) VALUES ('42')").execute(&mut *tx).await?;
    ///             tx.commit().await?;
    ///         }
    ///         Claim::Replay(stored) => assert_eq!(stored, created),
    ///         other => panic!("{other:?}"),
    ///     }
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn claim_and_complete_in(
        &self,
        conn: &mut DB::Connection,
        scope: &str,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        response: &StoredResponse,
    ) -> Result<Claim> {
        let claim = self.claim_bounded(conn, scope, key, fingerprint, Some(response)).await?;
        if matches!(claim, Claim::Acquired(_)) {
            metrics::completion(if self.config.stores(response.status) { "stored" } else { "released" });
        }
        Ok(claim)
    }

    /// Transactional mode: stores the outcome in the caller's transaction
    /// (or, for an outcome the configuration does not store, releases the
    /// key there).
    ///
    /// # Errors
    ///
    /// [`IdempotencyError::LeaseLost`] or a database error.
    pub async fn complete_in(&self, conn: &mut DB::Connection, lease: &Lease, response: &StoredResponse) -> Result<()> {
        self.complete_on(conn, lease, response).await
    }

    /// A claim whose wait on another transaction holding the key is bounded
    /// by the configured `lock_timeout`; giving up means "in flight".
    async fn claim_bounded(
        &self,
        conn: &mut DB::Connection,
        scope: &str,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        outcome: Option<&StoredResponse>,
    ) -> Result<Claim> {
        let timeout_ms = duration_ms(self.config.lock_timeout()).max(1);
        match self.claim_on(conn, scope, key, fingerprint, outcome, Some(timeout_ms)).await {
            // The transaction is aborted now: the caller must roll it back.
            Err(IdempotencyError::Database(e)) if DB::is_busy(&e) => {
                let claim = Claim::InFlight { retry_after: retry_after(timeout_ms, 0) };
                metrics::claim(&claim);
                Ok(claim)
            }
            other => other,
        }
    }

    /// The claim loop. With `outcome`, the record is written with that
    /// outcome already in it (see
    /// [`claim_and_complete_in`](Self::claim_and_complete_in)).
    async fn claim_on(
        &self,
        conn: &mut DB::Connection,
        scope: &str,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        outcome: Option<&StoredResponse>,
        lock_wait_ms: Option<i64>,
    ) -> Result<Claim> {
        let fp = &fingerprint.as_bytes()[..];
        for _ in 0..CLAIM_ATTEMPTS {
            let now = self.config.now_ms();
            let mut record = NewRecord {
                scope,
                key: key.as_str(),
                fingerprint: fp,
                state: "in_flight",
                lease_until_ms: self.config.lease_until(now),
                now_ms: now,
                expires_at_ms: self.config.expires_at(now),
                status: None,
                headers: None,
                body: None,
            };
            match outcome {
                Some(response) if self.config.stores(response.status) => {
                    record.state = "completed";
                    record.status = Some(i32::from(response.status));
                    record.headers = Some(response.headers_json());
                    record.body = Some(&response.body);
                }
                // What `release` writes: the lease is over, so a retry after
                // the commit takes the key over and executes again.
                Some(_) => record.lease_until_ms = 0,
                None => {}
            }
            if let Some((fencing, first_fencing)) = DB::claim(conn, &record, lock_wait_ms).await? {
                let claim = Claim::Acquired(Lease {
                    scope: scope.to_owned(),
                    key: key.clone(),
                    fencing,
                    lease_until_ms: record.lease_until_ms,
                    takeover: fencing != first_fencing,
                });
                metrics::claim(&claim);
                return Ok(claim);
            }
            // Gone between the two statements (released or collected):
            // claim again.
            let Some(record) = DB::read(conn, scope, key.as_str(), now).await? else { continue };
            let claim = if record.fingerprint != fp {
                Claim::Mismatch
            } else if record.state == "completed" {
                Claim::Replay(StoredResponse::from_columns(key.as_str(), record.status, record.headers, record.body)?)
            } else {
                Claim::InFlight { retry_after: retry_after(record.lease_until_ms, now) }
            };
            metrics::claim(&claim);
            return Ok(claim);
        }
        // Only a key released and re-claimed by others over and over gets
        // here; tell the client to come back.
        let claim = Claim::InFlight { retry_after: Duration::from_secs(1) };
        metrics::claim(&claim);
        Ok(claim)
    }

    async fn complete_on(&self, conn: &mut DB::Connection, lease: &Lease, response: &StoredResponse) -> Result<()> {
        let (stored, affected) = if self.config.stores(response.status) {
            let affected = DB::complete(
                conn,
                &lease.scope,
                lease.key.as_str(),
                lease.fencing,
                i32::from(response.status),
                response.headers_json(),
                &response.body,
            )
            .await?;
            (true, affected)
        } else {
            (false, DB::release(conn, &lease.scope, lease.key.as_str(), lease.fencing).await?)
        };
        if affected == 1 {
            metrics::completion(if stored { "stored" } else { "released" });
            Ok(())
        } else {
            metrics::completion("lease_lost");
            tracing::warn!(scope = %lease.scope, key = %lease.key, fencing = lease.fencing, "idempotency lease lost");
            Err(lease.lost())
        }
    }
}

#[async_trait]
impl<DB: SqlBackend> IdempotencyStore for SqlStore<DB> {
    async fn claim(&self, scope: &str, key: &IdempotencyKey, fingerprint: &Fingerprint) -> Result<Claim> {
        let mut conn = self.pool.acquire().await?;
        // Leased mode leaves the wait to the connection's own setting: it
        // has no caller's transaction to keep from hanging.
        self.claim_on(&mut conn, scope, key, fingerprint, None, None).await
    }

    async fn complete(&self, lease: &Lease, response: &StoredResponse) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        self.complete_on(&mut conn, lease, response).await
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        if DB::release(&mut conn, &lease.scope, lease.key.as_str(), lease.fencing).await? == 1 {
            metrics::completion("released");
            Ok(())
        } else {
            metrics::completion("lease_lost");
            Err(lease.lost())
        }
    }

    async fn gc(&self, batch_size: u32) -> Result<u64> {
        let batch = u64::from(batch_size.max(1));
        let now = self.config.now_ms();
        let mut conn = self.pool.acquire().await?;
        let mut deleted = 0;
        loop {
            // Each batch is its own short statement, so GC never holds many
            // locks or a long transaction.
            let n = DB::gc_batch(&mut conn, now, i64::from(batch_size.max(1))).await?;
            deleted += n;
            metrics::gc(n);
            if n < batch {
                break;
            }
        }
        tracing::info!(deleted, "idempotency gc");
        Ok(deleted)
    }

    async fn stats(&self) -> Result<Stats> {
        let now = self.config.now_ms();
        let mut conn = self.pool.acquire().await?;
        let (live, expired, in_flight, oldest) = DB::stats(&mut conn, now).await?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let stats = Stats {
            live_keys: count(live),
            expired_awaiting_gc: count(expired),
            in_flight: count(in_flight),
            oldest_record_age_ms: oldest.map(|created| now - created),
        };
        metrics::stats(&stats);
        Ok(stats)
    }

    fn config(&self) -> &Config {
        &self.config
    }
}
