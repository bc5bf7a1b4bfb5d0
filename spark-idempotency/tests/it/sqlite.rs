//! Every operation of the SQLite store, each at least once. Release builds
//! once failed on every SQLite statement while debug builds passed, so this
//! module is meant to run under `cargo test --release` as well.

use std::sync::Arc;
use std::time::Duration;

use spark_idempotency::{
    Claim, Fingerprint, IdempotencyError, IdempotencyKey, IdempotencyStore, ManualClock, SqliteStore, StoredResponse,
};

use crate::harness::{LEASE, START_MS, TTL, config};

#[tokio::test]
async fn every_sqlite_store_operation_runs() {
    let db = spark_testkit::sqlite().await;
    let clock = ManualClock::new(START_MS);
    let sqlite = SqliteStore::new(db.pool.clone(), config(&clock)).unwrap();
    sqlite.migrate().await.unwrap();
    // Migrations run twice are a no-op.
    sqlite.migrate().await.unwrap();
    let store: Arc<dyn IdempotencyStore> = Arc::new(sqlite.clone());
    let key = |s: &str| s.parse::<IdempotencyKey>().unwrap();
    let fp = |body: &[u8]| Fingerprint::of_request("POST", "/v1/orders", body);

    // Leased mode: claim (insert), duplicate (read: in flight), mismatch,
    // complete, replay.
    let Claim::Acquired(lease) = store.claim("c", &key("a"), &fp(b"1")).await.unwrap() else { panic!() };
    assert!(matches!(store.claim("c", &key("a"), &fp(b"1")).await.unwrap(), Claim::InFlight { .. }));
    assert_eq!(store.claim("c", &key("a"), &fp(b"2")).await.unwrap(), Claim::Mismatch);
    let stored = StoredResponse::new(201, "made").with_header("location", "/v1/orders/1");
    store.complete(&lease, &stored).await.unwrap();
    assert_eq!(store.claim("c", &key("a"), &fp(b"1")).await.unwrap(), Claim::Replay(stored));

    // Release, a second release refused, takeover after release.
    let Claim::Acquired(lease) = store.claim("c", &key("b"), &fp(b"1")).await.unwrap() else { panic!() };
    store.release(&lease).await.unwrap();
    assert!(matches!(store.release(&lease).await, Err(IdempotencyError::LeaseLost { .. })));
    let Claim::Acquired(again) = store.claim("c", &key("b"), &fp(b"1")).await.unwrap() else { panic!() };
    assert!(again.is_takeover());
    // A non-stored outcome releases through complete.
    store.complete(&again, &StoredResponse::new(503, "later")).await.unwrap();

    // Takeover after the lease expires.
    let Claim::Acquired(lease) = store.claim("c", &key("d"), &fp(b"1")).await.unwrap() else { panic!() };
    clock.advance(LEASE);
    let Claim::Acquired(taken) = store.claim("c", &key("d"), &fp(b"1")).await.unwrap() else { panic!() };
    assert_eq!(taken.fencing(), lease.fencing() + 1);
    store.complete(&taken, &StoredResponse::new(200, "ok")).await.unwrap();

    // Transactional mode: claim_in, complete_in, replay through claim_in.
    let mut tx = db.pool.begin().await.unwrap();
    let Claim::Acquired(lease) = sqlite.claim_in(&mut tx, "c", &key("t"), &fp(b"1")).await.unwrap() else { panic!() };
    sqlite.complete_in(&mut tx, &lease, &StoredResponse::new(201, "tx")).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let claim = sqlite.claim_in(&mut tx, "c", &key("t"), &fp(b"1")).await.unwrap();
    assert_eq!(claim, Claim::Replay(StoredResponse::new(201, "tx")));
    tx.rollback().await.unwrap();

    // Stats and GC.
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.live_keys, stats.in_flight, stats.expired_awaiting_gc), (4, 1, 0));
    clock.advance(TTL + Duration::from_secs(1));
    assert_eq!(store.gc(2).await.unwrap(), 4);
    assert_eq!(store.stats().await.unwrap().live_keys, 0);
}
