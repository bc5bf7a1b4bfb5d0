//! The SQL both backends run, written once in PostgreSQL's `$n` syntax
//! (SQLite takes the same text with `?n`), and the store implementation,
//! written once as a macro and expanded per backend (sqlx's generic
//! `Executor` bounds across databases cost more clarity than they save).

/// Claim: insert the record, or take over one that expired (TTL) or whose
/// lease expired with the same fingerprint. No row back means the key is
/// held, completed or mismatched, and a read tells which.
///
/// `$1` scope, `$2` key, `$3` fingerprint, `$4` lease end, `$5` now, `$6`
/// expiry. `SOURCE` is `VALUES (...)` or, in PostgreSQL transactional mode, a
/// `SELECT` that first sets `lock_timeout`.
macro_rules! claim_sql {
    ($source:literal) => {
        concat!(
            "INSERT INTO spark_idempotency_keys
                (scope, key, fingerprint, state, fencing, first_fencing, lease_until_ms, created_at_ms, expires_at_ms) ",
            $source,
            " ON CONFLICT (scope, key) DO UPDATE SET
                fingerprint = excluded.fingerprint,
                state = 'in_flight',
                fencing = spark_idempotency_keys.fencing + 1,
                first_fencing = CASE WHEN spark_idempotency_keys.expires_at_ms <= $5
                    THEN spark_idempotency_keys.fencing + 1 ELSE spark_idempotency_keys.first_fencing END,
                lease_until_ms = excluded.lease_until_ms,
                created_at_ms = CASE WHEN spark_idempotency_keys.expires_at_ms <= $5
                    THEN excluded.created_at_ms ELSE spark_idempotency_keys.created_at_ms END,
                expires_at_ms = CASE WHEN spark_idempotency_keys.expires_at_ms <= $5
                    THEN excluded.expires_at_ms ELSE spark_idempotency_keys.expires_at_ms END,
                response_status = NULL,
                response_headers = NULL,
                response_body = NULL
            WHERE spark_idempotency_keys.expires_at_ms <= $5
               OR (spark_idempotency_keys.state = 'in_flight'
                   AND spark_idempotency_keys.lease_until_ms <= $5
                   AND spark_idempotency_keys.fingerprint = excluded.fingerprint)
            RETURNING fencing, first_fencing"
        )
    };
}

pub(crate) const CLAIM: &str = claim_sql!("VALUES ($1, $2, $3, 'in_flight', 1, 1, $4, $5, $6)");

/// PostgreSQL, transactional mode: `$7` is the `lock_timeout` in ms, set for
/// the rest of the caller's transaction before the insert can wait on a
/// concurrent transaction that holds the same key.
#[cfg(feature = "postgres")]
pub(crate) const CLAIM_IN_TX_PG: &str = concat!(
    "WITH cfg AS (SELECT set_config('lock_timeout', $7, true) AS lock_timeout) ",
    claim_sql!("SELECT $1, $2, $3, 'in_flight', 1, 1, $4, $5, $6 FROM cfg")
);

pub(crate) const READ: &str =
    "SELECT fingerprint, state, lease_until_ms, response_status, response_headers, response_body
    FROM spark_idempotency_keys
    WHERE scope = $1 AND key = $2 AND expires_at_ms > $3";

pub(crate) const COMPLETE: &str = "UPDATE spark_idempotency_keys
    SET state = 'completed', response_status = $4, response_headers = $5, response_body = $6
    WHERE scope = $1 AND key = $2 AND fencing = $3 AND state = 'in_flight'";

/// Release ends the lease instead of deleting the record: the retry then
/// takes over with a higher fencing number, so the holder that released (or
/// any earlier one) can never complete the retry's record. Deleting would let
/// the fencing number start again at 1.
pub(crate) const RELEASE: &str = "UPDATE spark_idempotency_keys SET lease_until_ms = 0
    WHERE scope = $1 AND key = $2 AND fencing = $3 AND state = 'in_flight' AND lease_until_ms <> 0";

/// PostgreSQL GC: a bounded batch; SKIP LOCKED so that GC never waits on (or
/// blocks) a request that is touching an expired key right now.
#[cfg(feature = "postgres")]
pub(crate) const GC_PG: &str = "DELETE FROM spark_idempotency_keys WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM spark_idempotency_keys WHERE expires_at_ms <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED))";

#[cfg(feature = "sqlite")]
pub(crate) const GC_SQLITE: &str = "DELETE FROM spark_idempotency_keys WHERE rowid IN (
    SELECT rowid FROM spark_idempotency_keys WHERE expires_at_ms <= $1 LIMIT $2)";

pub(crate) const STATS: &str = "SELECT
        COUNT(*) FILTER (WHERE expires_at_ms > $1),
        COUNT(*) FILTER (WHERE expires_at_ms <= $1),
        COUNT(*) FILTER (WHERE expires_at_ms > $1 AND state = 'in_flight'),
        MIN(created_at_ms)
    FROM spark_idempotency_keys";

/// How many times a claim re-reads when the record changes under it (it was
/// released or collected between the insert and the read).
pub(crate) const CLAIM_ATTEMPTS: usize = 5;

/// Implements a SQL store for one backend. `$sql` is an expression turning a
/// `$n` statement into the backend's dialect; `$gc` the GC statement;
/// `$claim_in_tx` the transactional claim and whether it binds the timeout.
macro_rules! sql_store {
    (
        $(#[$meta:meta])*
        store: $name:ident,
        db: $db:ty,
        conn: $conn:ty,
        pool: $pool:ty,
        dialect: $sql:path,
        gc: $gc:expr,
        claim_in_tx: ($claim_in_tx:expr, $binds_timeout:expr),
        is_busy: $is_busy:path,
        migrator: $migrator:expr,
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        pub struct $name {
            pool: $pool,
            config: $crate::Config,
        }

        /// The migrations that create this crate's tables; run them beside an
        /// application's own (they ignore migrations they do not know).
        #[must_use]
        pub fn migrator() -> sqlx::migrate::Migrator {
            let mut m = $migrator;
            m.set_ignore_missing(true);
            m
        }

        impl $name {
            /// A store over `pool`. Run [`migrator`] first (or
            /// [`migrate`](Self::migrate)).
            ///
            /// # Errors
            ///
            /// [`IdempotencyError::Config`]($crate::IdempotencyError::Config)
            /// for a configuration that cannot work.
            pub fn new(pool: $pool, config: $crate::Config) -> $crate::Result<Self> {
                config.validate()?;
                Ok($name { pool, config })
            }

            /// Runs this crate's migrations on the store's pool.
            ///
            /// # Errors
            ///
            /// When a migration fails.
            pub async fn migrate(&self) -> $crate::Result<()> {
                migrator().run(&self.pool).await.map_err($crate::IdempotencyError::Migrate)
            }

            /// The pool.
            #[must_use]
            pub fn pool(&self) -> &$pool {
                &self.pool
            }

            /// Transactional mode: claims inside the caller's transaction, so
            /// the claim commits or rolls back with the business write (a
            /// rollback frees the key). A duplicate that arrives while the
            /// transaction is open waits at most the configured
            /// `lock_timeout`, then gets [`Claim::InFlight`]($crate::Claim);
            /// after that the duplicate's own transaction is aborted and must
            /// be rolled back.
            ///
            /// # Errors
            ///
            /// When the database fails.
            pub async fn claim_in(
                &self,
                conn: &mut $conn,
                scope: &str,
                key: &$crate::IdempotencyKey,
                fingerprint: &$crate::Fingerprint,
            ) -> $crate::Result<$crate::Claim> {
                let timeout_ms = $crate::types::duration_ms(self.config.lock_timeout()).max(1).to_string();
                let claim = self
                    .claim_on(&mut *conn, $claim_in_tx, $binds_timeout.then_some(timeout_ms), scope, key, fingerprint)
                    .await;
                match claim {
                    Err($crate::IdempotencyError::Database(e)) if $is_busy(&e) => {
                        let claim = $crate::Claim::InFlight {
                            retry_after: $crate::types::retry_after($crate::types::duration_ms(self.config.lock_timeout()), 0),
                        };
                        $crate::metrics::claim(&claim);
                        Ok(claim)
                    }
                    other => other,
                }
            }

            /// Transactional mode: stores the outcome in the caller's
            /// transaction (or, for an outcome the configuration does not
            /// store, releases the key there).
            ///
            /// # Errors
            ///
            /// [`IdempotencyError::LeaseLost`]($crate::IdempotencyError::LeaseLost)
            /// or a database error.
            pub async fn complete_in(
                &self,
                conn: &mut $conn,
                lease: &$crate::Lease,
                response: &$crate::StoredResponse,
            ) -> $crate::Result<()> {
                self.complete_on(conn, lease, response).await
            }

            async fn claim_on(
                &self,
                conn: &mut $conn,
                claim_sql: &'static str,
                timeout_ms: Option<String>,
                scope: &str,
                key: &$crate::IdempotencyKey,
                fingerprint: &$crate::Fingerprint,
            ) -> $crate::Result<$crate::Claim> {
                use sqlx::Row as _;
                for _ in 0..$crate::sql::CLAIM_ATTEMPTS {
                    let now = self.config.now_ms();
                    let lease_until = self.config.lease_until(now);
                    let mut q = sqlx::query::<$db>(claim_sql)
                        .bind(scope)
                        .bind(key.as_str())
                        .bind(&fingerprint.as_bytes()[..])
                        .bind(lease_until)
                        .bind(now)
                        .bind(self.config.expires_at(now));
                    if let Some(ms) = &timeout_ms {
                        q = q.bind(ms.as_str());
                    }
                    if let Some(row) = q.fetch_optional(&mut *conn).await? {
                        let fencing: i64 = row.try_get(0)?;
                        let first_fencing: i64 = row.try_get(1)?;
                        let claim = $crate::Claim::Acquired($crate::Lease {
                            scope: scope.to_owned(),
                            key: key.clone(),
                            fencing,
                            lease_until_ms: lease_until,
                            takeover: fencing != first_fencing,
                        });
                        $crate::metrics::claim(&claim);
                        return Ok(claim);
                    }
                    let row = sqlx::query::<$db>($sql($crate::sql::READ))
                        .bind(scope)
                        .bind(key.as_str())
                        .bind(now)
                        .fetch_optional(&mut *conn)
                        .await?;
                    // Gone between the two statements (released or
                    // collected): claim again.
                    let Some(row) = row else { continue };
                    let stored_fp: Vec<u8> = row.try_get(0)?;
                    let state: String = row.try_get(1)?;
                    let lease_until_ms: i64 = row.try_get(2)?;
                    let claim = if stored_fp != fingerprint.as_bytes() {
                        $crate::Claim::Mismatch
                    } else if state == "completed" {
                        $crate::Claim::Replay($crate::StoredResponse::from_columns(
                            key.as_str(),
                            row.try_get(3)?,
                            row.try_get(4)?,
                            row.try_get(5)?,
                        )?)
                    } else {
                        $crate::Claim::InFlight { retry_after: $crate::types::retry_after(lease_until_ms, now) }
                    };
                    $crate::metrics::claim(&claim);
                    return Ok(claim);
                }
                // Only a key released and re-claimed by others over and over
                // gets here; tell the client to come back.
                let claim = $crate::Claim::InFlight { retry_after: std::time::Duration::from_secs(1) };
                $crate::metrics::claim(&claim);
                Ok(claim)
            }

            async fn complete_on(
                &self,
                conn: &mut $conn,
                lease: &$crate::Lease,
                response: &$crate::StoredResponse,
            ) -> $crate::Result<()> {
                let (stored, result) = if self.config.stores(response.status) {
                    let r = sqlx::query::<$db>($sql($crate::sql::COMPLETE))
                        .bind(&lease.scope)
                        .bind(lease.key.as_str())
                        .bind(lease.fencing)
                        .bind(i32::from(response.status))
                        .bind(response.headers_json())
                        .bind(&response.body[..])
                        .execute(&mut *conn)
                        .await?;
                    (true, r.rows_affected())
                } else {
                    (false, self.release_on(conn, lease).await?)
                };
                if result == 1 {
                    $crate::metrics::completion(if stored { "stored" } else { "released" });
                    Ok(())
                } else {
                    $crate::metrics::completion("lease_lost");
                    tracing::warn!(scope = %lease.scope, key = %lease.key, fencing = lease.fencing, "idempotency lease lost");
                    Err(lease.lost())
                }
            }

            async fn release_on(&self, conn: &mut $conn, lease: &$crate::Lease) -> $crate::Result<u64> {
                let r = sqlx::query::<$db>($sql($crate::sql::RELEASE))
                    .bind(&lease.scope)
                    .bind(lease.key.as_str())
                    .bind(lease.fencing)
                    .execute(&mut *conn)
                    .await?;
                Ok(r.rows_affected())
            }
        }

        #[async_trait::async_trait]
        impl $crate::IdempotencyStore for $name {
            async fn claim(
                &self,
                scope: &str,
                key: &$crate::IdempotencyKey,
                fingerprint: &$crate::Fingerprint,
            ) -> $crate::Result<$crate::Claim> {
                let mut conn = self.pool.acquire().await?;
                self.claim_on(&mut conn, $sql($crate::sql::CLAIM), None, scope, key, fingerprint).await
            }

            async fn complete(&self, lease: &$crate::Lease, response: &$crate::StoredResponse) -> $crate::Result<()> {
                let mut conn = self.pool.acquire().await?;
                self.complete_on(&mut conn, lease, response).await
            }

            async fn release(&self, lease: &$crate::Lease) -> $crate::Result<()> {
                let mut conn = self.pool.acquire().await?;
                if self.release_on(&mut conn, lease).await? == 1 {
                    $crate::metrics::completion("released");
                    Ok(())
                } else {
                    $crate::metrics::completion("lease_lost");
                    Err(lease.lost())
                }
            }

            async fn gc(&self, batch_size: u32) -> $crate::Result<u64> {
                let batch = i64::from(batch_size.max(1));
                let now = self.config.now_ms();
                let mut deleted = 0;
                loop {
                    // Each batch is its own short statement, so GC never
                    // holds many locks or a long transaction.
                    let r = sqlx::query::<$db>($gc).bind(now).bind(batch).execute(&self.pool).await?;
                    deleted += r.rows_affected();
                    $crate::metrics::gc(r.rows_affected());
                    if r.rows_affected() < batch as u64 {
                        break;
                    }
                }
                tracing::info!(deleted, "idempotency gc");
                Ok(deleted)
            }

            async fn stats(&self) -> $crate::Result<$crate::Stats> {
                use sqlx::Row as _;
                let now = self.config.now_ms();
                let row = sqlx::query::<$db>($sql($crate::sql::STATS)).bind(now).fetch_one(&self.pool).await?;
                let count = |i: usize| -> $crate::Result<u64> { Ok(u64::try_from(row.try_get::<i64, _>(i)?).unwrap_or(0)) };
                let oldest: Option<i64> = row.try_get(3)?;
                let stats = $crate::Stats {
                    live_keys: count(0)?,
                    expired_awaiting_gc: count(1)?,
                    in_flight: count(2)?,
                    oldest_record_age_ms: oldest.map(|created| now - created),
                };
                $crate::metrics::stats(&stats);
                Ok(stats)
            }

            fn config(&self) -> &$crate::Config {
                &self.config
            }
        }
    };
}

pub(crate) use sql_store;
