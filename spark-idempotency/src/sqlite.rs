//! The SQLite backend.

use std::sync::LazyLock;

use crate::sql::{CLAIM, COMPLETE, GC_SQLITE, READ, RELEASE, STATS, sql_store};

/// The shared statements in SQLite's syntax: `$n` becomes `?n`, which SQLite
/// binds by number, so a parameter may appear several times. Every shared
/// statement is rewritten once, on first use; a lookup is then a pointer
/// comparison over five entries, with no lock on the query path.
fn dialect(sql: &'static str) -> &'static str {
    static REWRITTEN: LazyLock<Vec<(&'static str, String)>> = LazyLock::new(|| {
        [CLAIM, READ, COMPLETE, RELEASE, STATS].into_iter().map(|s| (s, s.replace('$', "?"))).collect()
    });
    REWRITTEN.iter().find(|(original, _)| std::ptr::eq(*original, sql)).map_or_else(
        || unreachable!("every statement the store runs is in the table"),
        |(_, rewritten)| rewritten.as_str(),
    )
}

/// SQLITE_BUSY (5) and its extended codes: another connection holds the
/// write lock past the busy timeout.
fn is_busy(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().is_some_and(|c| c == "5" || c == "517" || c == "261"))
}

static CLAIM_SQLITE: LazyLock<&'static str> = LazyLock::new(|| dialect(CLAIM));
static GC: LazyLock<String> = LazyLock::new(|| GC_SQLITE.replace('$', "?"));

sql_store! {
    /// The SQLite store: the embedded default, for one machine.
    ///
    /// SQLite serialises writers, so a duplicate in transactional mode waits
    /// for the first transaction (up to the pool's busy timeout) and then
    /// sees its outcome.
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
    store: SqliteStore,
    db: sqlx::Sqlite,
    conn: sqlx::SqliteConnection,
    pool: sqlx::SqlitePool,
    dialect: dialect,
    gc: GC.as_str(),
    claim_in_tx: (*CLAIM_SQLITE, false),
    is_busy: is_busy,
    migrator: sqlx::migrate!("./migrations/sqlite"),
}
