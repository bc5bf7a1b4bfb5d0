//! Transactional mode: the claim, the business write and the stored
//! response commit or roll back together.

use std::time::{Duration, Instant};

use spark_idempotency::{Claim, Fingerprint, IdempotencyKey, PgStore, SqliteStore, StoredResponse};

use crate::harness::config;

fn fp() -> Fingerprint {
    Fingerprint::of_request("POST", "/v1/orders", b"{}")
}

fn key() -> IdempotencyKey {
    "tx-key".parse().unwrap()
}

/// The same scenario on both SQL backends (the memory store has no
/// transactions).
macro_rules! transactional_suite {
    ($store:ty, $pool:expr, $clock:expr) => {{
        let pool = $pool;
        let store = <$store>::new(pool.clone(), config(&$clock)).unwrap();
        store.migrate().await.unwrap();
        sqlx::query("CREATE TABLE orders (id TEXT PRIMARY KEY)").execute(&pool).await.unwrap();
        let count =
            || async { sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM orders").fetch_one(&pool).await.unwrap() };

        // A rollback leaves neither the order nor the claim: the key is free.
        let mut tx = pool.begin().await.unwrap();
        let Claim::Acquired(lease) = store.claim_in(&mut tx, "alice", &key(), &fp()).await.unwrap() else { panic!() };
        sqlx::query("INSERT INTO orders (id) VALUES ('1')").execute(&mut *tx).await.unwrap();
        store.complete_in(&mut tx, &lease, &StoredResponse::new(201, "one")).await.unwrap();
        tx.rollback().await.unwrap();
        assert_eq!(count().await, 0);
        assert_eq!(store.stats().await.unwrap().live_keys, 0);

        // A commit keeps both, and the retry replays without a second order.
        let mut tx = pool.begin().await.unwrap();
        let Claim::Acquired(lease) = store.claim_in(&mut tx, "alice", &key(), &fp()).await.unwrap() else { panic!() };
        assert_eq!(lease.fencing(), 1);
        sqlx::query("INSERT INTO orders (id) VALUES ('1')").execute(&mut *tx).await.unwrap();
        store.complete_in(&mut tx, &lease, &StoredResponse::new(201, "one")).await.unwrap();
        tx.commit().await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        let claim = store.claim_in(&mut tx, "alice", &key(), &fp()).await.unwrap();
        assert_eq!(claim, Claim::Replay(StoredResponse::new(201, "one")));
        tx.rollback().await.unwrap();
        assert_eq!(count().await, 1);
        store
    }};
}

use spark_idempotency::IdempotencyStore as _;

#[tokio::test]
async fn sqlite_claim_and_business_write_commit_together() {
    let db = spark_testkit::sqlite().await;
    let clock = spark_idempotency::ManualClock::new(crate::harness::START_MS);
    transactional_suite!(SqliteStore, db.pool.clone(), clock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_claim_and_business_write_commit_together() {
    let Some(db) = spark_testkit::postgres().await else { return };
    let clock = spark_idempotency::ManualClock::new(crate::harness::START_MS);
    let store = transactional_suite!(PgStore, db.pool.clone(), clock);

    // A duplicate that arrives while the first transaction is open waits at
    // most lock_timeout (300 ms here), then hears "in flight".
    let k: IdempotencyKey = "held".parse().unwrap();
    let mut first = db.pool.begin().await.unwrap();
    let Claim::Acquired(_) = store.claim_in(&mut first, "alice", &k, &fp()).await.unwrap() else { panic!() };
    let mut second = db.pool.begin().await.unwrap();
    let started = Instant::now();
    let claim = store.claim_in(&mut second, "alice", &k, &fp()).await.unwrap();
    assert!(matches!(claim, Claim::InFlight { .. }), "{claim:?}");
    assert!(started.elapsed() >= Duration::from_millis(250), "did not wait for the lock");
    second.rollback().await.unwrap();
    // The first rolls back: the duplicate may now execute.
    first.rollback().await.unwrap();
    let mut third = db.pool.begin().await.unwrap();
    assert!(matches!(store.claim_in(&mut third, "alice", &k, &fp()).await.unwrap(), Claim::Acquired(_)));
    third.commit().await.unwrap();
}

/// The claim bounds its own wait with `lock_timeout`, but the rest of the
/// caller's transaction keeps the caller's setting, whatever the claim
/// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_claim_in_leaves_the_callers_lock_timeout_alone() {
    let Some(db) = spark_testkit::postgres().await else { return };
    let clock = spark_idempotency::ManualClock::new(crate::harness::START_MS);
    // The store's lock_timeout is 300 ms (see `config`).
    let store = PgStore::new(db.pool.clone(), config(&clock)).unwrap();
    store.migrate().await.unwrap();
    async fn lock_timeout(conn: &mut sqlx::PgConnection) -> String {
        sqlx::query_scalar("SHOW lock_timeout").fetch_one(conn).await.unwrap()
    }

    // The server's default (0, no timeout), around a claim that acquires.
    let mut tx = db.pool.begin().await.unwrap();
    let before = lock_timeout(&mut tx).await;
    let Claim::Acquired(lease) = store.claim_in(&mut tx, "alice", &key(), &fp()).await.unwrap() else { panic!() };
    assert_eq!(lock_timeout(&mut tx).await, before);
    store.complete_in(&mut tx, &lease, &StoredResponse::new(201, "one")).await.unwrap();
    assert_eq!(lock_timeout(&mut tx).await, before);
    tx.commit().await.unwrap();

    // The caller's own setting, around claims that replay and mismatch.
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL lock_timeout = '7s'").execute(&mut *tx).await.unwrap();
    let claim = store.claim_in(&mut tx, "alice", &key(), &fp()).await.unwrap();
    assert_eq!(claim, Claim::Replay(StoredResponse::new(201, "one")));
    assert_eq!(lock_timeout(&mut tx).await, "7s");
    let other = Fingerprint::of_request("POST", "/v1/orders", b"{\"other\":1}");
    assert_eq!(store.claim_in(&mut tx, "alice", &key(), &other).await.unwrap(), Claim::Mismatch);
    assert_eq!(lock_timeout(&mut tx).await, "7s");
    tx.rollback().await.unwrap();
}
