//! The PostgreSQL backend.

use crate::sql::{CLAIM_IN_TX_PG, GC_PG, sql_store};

/// PostgreSQL needs no rewriting.
const fn dialect(sql: &'static str) -> &'static str {
    sql
}

/// `lock_timeout` expired while waiting for a transaction holding the key.
fn is_busy(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

sql_store! {
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
    store: PgStore,
    db: sqlx::Postgres,
    conn: sqlx::PgConnection,
    pool: sqlx::PgPool,
    dialect: dialect,
    gc: GC_PG,
    claim_in_tx: (CLAIM_IN_TX_PG, true),
    is_busy: is_busy,
    migrator: sqlx::migrate!("./migrations/postgres"),
}
