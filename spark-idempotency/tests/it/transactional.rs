//! Transactional mode: the claim, the business write and the stored
//! response commit or roll back together.

use std::time::{Duration, Instant};

use spark_idempotency::{
    Claim, Fingerprint, IdempotencyError, IdempotencyKey, PgStore, SqlBackend, SqlStore, SqliteStore, StoredResponse,
};

use crate::harness::config;

fn fp() -> Fingerprint {
    Fingerprint::of_request("POST", "/v1/orders", b"{}")
}

fn key() -> IdempotencyKey {
    "tx-key".parse().unwrap()
}

/// The same scenario on both SQL backends (the memory store has no
/// transactions), written once over the backend.
async fn transactional_suite<DB: SqlBackend>(store: &SqlStore<DB>)
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let pool = store.pool().clone();
    store.migrate().await.unwrap();
    sqlx::query("CREATE TABLE orders (id TEXT PRIMARY KEY)").execute(&pool).await.unwrap();
    let count =
        || async { sqlx::query_scalar::<DB, i64>("SELECT COUNT(*) FROM orders").fetch_one(&pool).await.unwrap() };
    let insert = "INSERT INTO orders (id) VALUES ('1')";

    // A rollback leaves neither the order nor the claim: the key is free.
    let mut tx = pool.begin().await.unwrap();
    let Claim::Acquired(lease) = store.claim_in(&mut tx, "alice", &key(), &fp()).await.unwrap() else { panic!() };
    sqlx::query(insert).execute(&mut *tx).await.unwrap();
    store.complete_in(&mut tx, &lease, &StoredResponse::new(201, "one")).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(count().await, 0);
    assert_eq!(store.stats().await.unwrap().live_keys, 0);

    // A commit keeps both, and the retry replays without a second order.
    let mut tx = pool.begin().await.unwrap();
    let Claim::Acquired(lease) = store.claim_in(&mut tx, "alice", &key(), &fp()).await.unwrap() else { panic!() };
    assert_eq!(lease.fencing(), 1);
    sqlx::query(insert).execute(&mut *tx).await.unwrap();
    store.complete_in(&mut tx, &lease, &StoredResponse::new(201, "one")).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let claim = store.claim_in(&mut tx, "alice", &key(), &fp()).await.unwrap();
    assert_eq!(claim, Claim::Replay(StoredResponse::new(201, "one")));
    tx.rollback().await.unwrap();
    assert_eq!(count().await, 1);
}

use spark_idempotency::IdempotencyStore as _;

#[tokio::test]
async fn sqlite_claim_and_business_write_commit_together() {
    let db = spark_testkit::sqlite().await;
    let clock = spark_idempotency::ManualClock::new(crate::harness::START_MS);
    transactional_suite(&SqliteStore::new(db.pool.clone(), config(&clock)).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_claim_and_business_write_commit_together() {
    let Some(db) = spark_testkit::postgres().await else { return };
    let clock = spark_idempotency::ManualClock::new(crate::harness::START_MS);
    let store = PgStore::new(db.pool.clone(), config(&clock)).unwrap();
    transactional_suite(&store).await;

    // A duplicate that arrives while the first transaction is open waits at
    // most lock_timeout (300 ms here), then hears "in flight".
    let k: IdempotencyKey = "held".parse().unwrap();
    let mut first = db.pool.begin().await.unwrap();
    let Claim::Acquired(_) = store.claim_in(&mut first, "alice", &k, &fp()).await.unwrap() else { panic!() };
    let mut second = db.pool.begin().await.unwrap();
    let started = Instant::now();
    let claim = tokio::time::timeout(Duration::from_secs(5), store.claim_in(&mut second, "alice", &k, &fp()))
        .await
        .expect("the duplicate waited past lock_timeout")
        .unwrap();
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

/// `claim_and_complete_in` writes what `claim_in` + `complete_in` would
/// have written, in one statement: the same answers for the retries, the
/// same release for an outcome that is not stored, and a rollback still
/// frees the key. Written once over the backend.
async fn carried_response_suite<DB: SqlBackend>(store: SqlStore<DB>) {
    let pool = store.pool().clone();
    let created = StoredResponse::new(201, "made").with_header("location", "/v1/orders/1");

    // A rollback frees the key.
    let mut tx = pool.begin().await.unwrap();
    let claim = store.claim_and_complete_in(&mut tx, "alice", &key(), &fp(), &created).await.unwrap();
    assert!(matches!(claim, Claim::Acquired(_)), "{claim:?}");
    tx.rollback().await.unwrap();
    assert_eq!(store.stats().await.unwrap().live_keys, 0);

    // A commit stores the response: no completion needed, and a completion
    // after it is refused, as a second completion is.
    let mut tx = pool.begin().await.unwrap();
    let Claim::Acquired(lease) = store.claim_and_complete_in(&mut tx, "alice", &key(), &fp(), &created).await.unwrap()
    else {
        panic!()
    };
    assert_eq!((lease.fencing(), lease.is_takeover()), (1, false));
    let late = store.complete_in(&mut tx, &lease, &StoredResponse::new(201, "other")).await;
    assert!(matches!(late, Err(IdempotencyError::LeaseLost { .. })), "{late:?}");
    tx.commit().await.unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.live_keys, stats.in_flight), (1, 0));

    // Every way of asking replays it; another request with the key is 422.
    assert_eq!(store.claim("alice", &key(), &fp()).await.unwrap(), Claim::Replay(created.clone()));
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(store.claim_in(&mut tx, "alice", &key(), &fp()).await.unwrap(), Claim::Replay(created.clone()));
    let again = StoredResponse::new(201, "second");
    let claim = store.claim_and_complete_in(&mut tx, "alice", &key(), &fp(), &again).await.unwrap();
    assert_eq!(claim, Claim::Replay(created.clone()));
    let other = Fingerprint::of_request("POST", "/v1/orders", b"{\"other\":1}");
    assert_eq!(store.claim_and_complete_in(&mut tx, "alice", &key(), &other, &again).await.unwrap(), Claim::Mismatch);
    tx.rollback().await.unwrap();

    // An outcome the configuration does not store leaves the key released:
    // the retry executes again, as a takeover.
    let k: IdempotencyKey = "unavailable".parse().unwrap();
    let mut tx = pool.begin().await.unwrap();
    let claim = store.claim_and_complete_in(&mut tx, "alice", &k, &fp(), &StoredResponse::new(503, "later")).await;
    assert!(matches!(claim, Ok(Claim::Acquired(_))), "{claim:?}");
    tx.commit().await.unwrap();
    let Claim::Acquired(retry) = store.claim("alice", &k, &fp()).await.unwrap() else { panic!() };
    assert_eq!((retry.fencing(), retry.is_takeover()), (2, true));
}

#[tokio::test]
async fn sqlite_claim_carrying_the_response_is_claim_plus_completion() {
    let db = spark_testkit::sqlite().await;
    let clock = spark_idempotency::ManualClock::new(crate::harness::START_MS);
    let store = SqliteStore::new(db.pool.clone(), config(&clock)).unwrap();
    store.migrate().await.unwrap();
    carried_response_suite(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_claim_carrying_the_response_is_claim_plus_completion() {
    let Some(db) = spark_testkit::postgres().await else { return };
    let clock = spark_idempotency::ManualClock::new(crate::harness::START_MS);
    let store = PgStore::new(db.pool.clone(), config(&clock)).unwrap();
    store.migrate().await.unwrap();
    carried_response_suite(store).await;
}

/// The claim's wait on a transaction holding the key is bounded by the
/// store's lock_timeout (300 ms here) even when the caller's own setting
/// is longer or unset: the bound is set inside the claim statement, before
/// its wait. And the caller's setting is back afterwards, for both kinds of
/// claim. Without the bound this test would wait 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_duplicate_waits_for_the_store_bound_not_the_callers_setting() {
    let Some(db) = spark_testkit::postgres().await else { return };
    let clock = spark_idempotency::ManualClock::new(crate::harness::START_MS);
    let store = PgStore::new(db.pool.clone(), config(&clock)).unwrap();
    store.migrate().await.unwrap();
    let created = StoredResponse::new(201, "made");

    let mut first = db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL lock_timeout = '10s'").execute(&mut *first).await.unwrap();
    let claim = store.claim_and_complete_in(&mut first, "alice", &key(), &fp(), &created).await.unwrap();
    assert!(matches!(claim, Claim::Acquired(_)), "{claim:?}");
    let setting: String = sqlx::query_scalar("SHOW lock_timeout").fetch_one(&mut *first).await.unwrap();
    assert_eq!(setting, "10s");

    for carried in [false, true] {
        let mut second = db.pool.begin().await.unwrap();
        sqlx::query("SET LOCAL lock_timeout = '10s'").execute(&mut *second).await.unwrap();
        let started = Instant::now();
        let claim = tokio::time::timeout(Duration::from_secs(5), async {
            if carried {
                store.claim_and_complete_in(&mut second, "alice", &key(), &fp(), &created).await
            } else {
                store.claim_in(&mut second, "alice", &key(), &fp()).await
            }
        })
        .await
        .expect("the duplicate waited past the store's bound")
        .unwrap();
        assert!(matches!(claim, Claim::InFlight { .. }), "{claim:?}");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(3), "{waited:?}");
        second.rollback().await.unwrap();
    }

    // Once the first commits, a duplicate replays at once.
    first.commit().await.unwrap();
    let mut third = db.pool.begin().await.unwrap();
    assert_eq!(store.claim_in(&mut third, "alice", &key(), &fp()).await.unwrap(), Claim::Replay(created));
    third.rollback().await.unwrap();
}
