//! The shared conformance suite's harness: what a scenario needs from a
//! backend, written once per backend. Each scenario is a generic async fn
//! over [`Backend`], run by two thin tests (`…_on_postgres`, `…_on_sqlite`),
//! so the two stores are held to the same guarantees by the same code.
//!
//! The backends differ on purpose in a few documented ways, which the
//! scenarios read from the constants below instead of from the backend's
//! name: PostgreSQL relays share the work (`SKIP LOCKED`) while SQLite runs
//! one polling relay; a PostgreSQL claim takes each aggregate's whole run
//! while SQLite takes one event per aggregate per claim (so it needs more
//! rounds); PostgreSQL marks take effect when the claim's transaction
//! commits while SQLite's are immediate; PostgreSQL sets aside (`held`) the
//! events queued behind a stuck one while SQLite, claiming only heads, never
//! reaches them.

use std::sync::Arc;

use spark_db::ManualClock;
use spark_outbox::{OutboxEvent, OutboxStore, PgOutbox, Relay, SqliteOutbox};
use spark_testkit::{PgTestDb, SqliteTestDb};
use sqlx::PgPool;
use uuid::Uuid;

use crate::common::Scripted;

/// A fresh, migrated database of one backend and its store.
pub(crate) trait Backend: Sized {
    /// The store under test.
    type Store: OutboxStore + Clone;

    /// Several relays may run on one outbox at once.
    const SHARES_WORK: bool;
    /// A claim takes each aggregate's whole run, not only its head.
    const CLAIMS_RUNS: bool;
    /// Marks take effect when the claim is finished (one transaction), so a
    /// lapsed claim is refused there; otherwise each mark is immediate and
    /// fenced by itself, and `finish` has nothing to refuse.
    const MARKS_AT_FINISH: bool;

    /// A fresh database with every migration; `None` (after one visible
    /// skip line) when the backend's service is not configured.
    async fn open() -> Option<Self>;

    /// A fresh database with only the first migration: the schema before the
    /// relay hardening. [`migrate`](Self::migrate) upgrades it.
    async fn open_at_first_migration() -> Option<Self>;

    /// A fresh database with no migration at all.
    async fn open_unmigrated() -> Option<Self>;

    /// Runs every migration.
    async fn migrate(&self);

    /// The store on the system clock.
    fn store(&self) -> Self::Store;

    /// The store on `clock` (on SQLite the leases too; PostgreSQL leases
    /// are on the database's clock).
    fn store_with_clock(&self, clock: &ManualClock) -> Self::Store;

    /// Runs `business` and enqueues `events` in one transaction, then
    /// commits it or rolls it back.
    async fn write(&self, business: &str, events: &[OutboxEvent], commit: bool) -> spark_outbox::Result<Vec<Uuid>>;

    /// Runs one statement.
    async fn execute(&self, sql: &str);

    /// The single `BIGINT` that `sql` selects.
    async fn count(&self, sql: &str) -> i64;

    /// Writes `total` events in one statement (the relays are under test,
    /// not enqueue): aggregate `{prefix}{i % aggregates}`, `n = i /
    /// aggregates`, so each aggregate's `n` counts up in order.
    async fn backlog(&self, prefix: &str, aggregates: i64, total: i64);

    /// Events set aside behind a stuck event of their aggregate; `None` on a
    /// backend that never sets any aside.
    async fn held(&self) -> Option<i64>;

    /// Enqueues each event in its own committed transaction.
    async fn emit(&self, events: &[OutboxEvent]) -> Vec<Uuid> {
        let mut ids = Vec::new();
        for e in events {
            ids.extend(self.write("SELECT 1", std::slice::from_ref(e), true).await.unwrap());
        }
        ids
    }

    /// How many relays a scenario that wants `n` may run at once.
    fn relays(n: usize) -> usize {
        if Self::SHARES_WORK { n } else { 1 }
    }
}

/// PostgreSQL (`DATABASE_URL`).
pub(crate) struct Pg(pub(crate) PgTestDb);

/// SQLite, a file in a temporary directory.
pub(crate) struct Sqlite(pub(crate) SqliteTestDb);

/// The first migration alone.
fn first_migration(m: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    let mut first = m;
    first.migrations = first.migrations[..1].to_vec().into();
    first
}

impl Backend for Pg {
    type Store = PgOutbox;
    const SHARES_WORK: bool = true;
    const CLAIMS_RUNS: bool = true;
    const MARKS_AT_FINISH: bool = true;

    async fn open() -> Option<Pg> {
        let b = Pg::open_unmigrated().await?;
        b.migrate().await;
        Some(b)
    }

    async fn open_at_first_migration() -> Option<Pg> {
        let db = spark_testkit::postgres().await?;
        first_migration(spark_outbox::postgres::migrator()).run(&db.pool).await.unwrap();
        Some(Pg(db))
    }

    async fn open_unmigrated() -> Option<Pg> {
        spark_testkit::postgres().await.map(Pg)
    }

    async fn migrate(&self) {
        spark_outbox::postgres::migrator().run(&self.0.pool).await.unwrap();
    }

    fn store(&self) -> PgOutbox {
        PgOutbox::new(self.0.pool.clone())
    }

    fn store_with_clock(&self, clock: &ManualClock) -> PgOutbox {
        self.store().with_clock(Arc::new(clock.clone()))
    }

    async fn write(&self, business: &str, events: &[OutboxEvent], commit: bool) -> spark_outbox::Result<Vec<Uuid>> {
        let mut tx = self.0.pool.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(business)).execute(&mut *tx).await?;
        let mut ids = Vec::new();
        for e in events {
            ids.push(spark_outbox::enqueue(&mut *tx, e).await?);
        }
        if commit {
            tx.commit().await?
        } else {
            tx.rollback().await?
        }
        Ok(ids)
    }

    async fn execute(&self, sql: &str) {
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&self.0.pool).await.unwrap();
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&self.0.pool).await.unwrap()
    }

    async fn backlog(&self, prefix: &str, aggregates: i64, total: i64) {
        sqlx::query(
            "INSERT INTO spark_outbox (id, aggregate_type, aggregate_id, event_type, payload, headers, created_at_ms, available_at_ms)
             SELECT gen_random_uuid(), 'order', $1 || (i % $2), 'order.accepted',
                    jsonb_build_object('n', i / $2), '{}'::jsonb, 0, 0
             FROM generate_series(0, $3 - 1) AS i",
        )
        .bind(prefix)
        .bind(aggregates)
        .bind(total)
        .execute(&self.0.pool)
        .await
        .unwrap();
    }

    async fn held(&self) -> Option<i64> {
        Some(self.count("SELECT COUNT(*) FROM spark_outbox WHERE status = 'held'").await)
    }
}

impl Backend for Sqlite {
    type Store = SqliteOutbox;
    const SHARES_WORK: bool = false;
    const CLAIMS_RUNS: bool = false;
    const MARKS_AT_FINISH: bool = false;

    async fn open() -> Option<Sqlite> {
        let b = Sqlite::open_unmigrated().await?;
        b.migrate().await;
        Some(b)
    }

    async fn open_at_first_migration() -> Option<Sqlite> {
        let db = spark_testkit::sqlite().await;
        first_migration(spark_outbox::sqlite::migrator()).run(&db.pool).await.unwrap();
        Some(Sqlite(db))
    }

    async fn open_unmigrated() -> Option<Sqlite> {
        Some(Sqlite(spark_testkit::sqlite().await))
    }

    async fn migrate(&self) {
        spark_outbox::sqlite::migrator().run(&self.0.pool).await.unwrap();
    }

    fn store(&self) -> SqliteOutbox {
        SqliteOutbox::new(self.0.pool.clone())
    }

    fn store_with_clock(&self, clock: &ManualClock) -> SqliteOutbox {
        self.store().with_clock(Arc::new(clock.clone()))
    }

    async fn write(&self, business: &str, events: &[OutboxEvent], commit: bool) -> spark_outbox::Result<Vec<Uuid>> {
        let mut tx = self.0.pool.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(business)).execute(&mut *tx).await?;
        let mut ids = Vec::new();
        for e in events {
            ids.push(spark_outbox::enqueue(&mut *tx, e).await?);
        }
        if commit {
            tx.commit().await?
        } else {
            tx.rollback().await?
        }
        Ok(ids)
    }

    async fn execute(&self, sql: &str) {
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&self.0.pool).await.unwrap();
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&self.0.pool).await.unwrap()
    }

    async fn backlog(&self, prefix: &str, aggregates: i64, total: i64) {
        // SQLite makes no UUIDs: the row number, in UUID form, is as unique.
        sqlx::query(
            "INSERT INTO spark_outbox (id, aggregate_type, aggregate_id, event_type, payload, headers, created_at_ms, available_at_ms)
             WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < ?3)
             SELECT printf('00000000-0000-7000-8000-%012d', i), 'order', ?1 || (i % ?2), 'order.accepted',
                    json_object('n', i / ?2), '{}', 0, 0
             FROM s",
        )
        .bind(prefix)
        .bind(aggregates)
        .bind(total)
        .execute(&self.0.pool)
        .await
        .unwrap();
    }

    async fn held(&self) -> Option<i64> {
        None
    }
}

impl Pg {
    /// The pool, for what only PostgreSQL tests do.
    pub(crate) fn pool(&self) -> &PgPool {
        &self.0.pool
    }
}

/// Event `n` of `aggregate`.
pub(crate) fn event(aggregate: &str, n: i64) -> OutboxEvent {
    OutboxEvent::new("order", aggregate, "order.accepted", serde_json::json!({ "n": n }))
}

/// `rounds` of [`Relay::run_once`].
pub(crate) async fn drain<S: OutboxStore>(relay: &Relay<S>, sink: &Scripted, rounds: usize) {
    for _ in 0..rounds {
        relay.run_once(sink).await.unwrap();
    }
}

/// [`Relay::run_once`] until a round claims nothing: as many rounds as the
/// backend needs (SQLite takes one event per aggregate per claim).
pub(crate) async fn drain_all<S: OutboxStore>(relay: &Relay<S>, sink: &Scripted) {
    for _ in 0..1000 {
        if relay.run_once(sink).await.unwrap().claimed == 0 {
            return;
        }
    }
    panic!("still claiming after 1000 rounds");
}
