//! The SQLite backend through the same scenarios where they apply (one
//! polling relay).

use std::time::Duration;

use spark_outbox::sqlite::{enqueue, migrator};
use spark_outbox::{DeadLetterPolicy, OutboxEvent, OutboxStore, PublishError, Publisher, Relay, SqliteOutbox};

use crate::common::Recorder;

fn event(aggregate: &str, n: i64) -> OutboxEvent {
    OutboxEvent::new("order", aggregate, "order.accepted", serde_json::json!({ "n": n }))
}

#[tokio::test]
async fn rollback_commit_order_lease_and_dead_letters() {
    let db = spark_testkit::sqlite().await;
    migrator().run(&db.pool).await.unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    enqueue(&mut tx, &event("a", 0)).await.unwrap();
    tx.rollback().await.unwrap();
    for (agg, n) in [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2)] {
        let mut tx = db.pool.begin().await.unwrap();
        enqueue(&mut tx, &event(agg, n)).await.unwrap();
        tx.commit().await.unwrap();
    }
    let store = SqliteOutbox::new(db.pool.clone());
    assert_eq!(store.stats().await.unwrap().pending, 5);

    // A claim holds one event per aggregate; a crashed claim returns after its lease.
    let claimed = store.claim("doomed", 10, Duration::from_millis(100), DeadLetterPolicy::Block).await.unwrap();
    assert_eq!(claimed.events.iter().map(|e| e.payload["n"].as_i64().unwrap()).collect::<Vec<_>>(), [1, 1]);
    assert!(
        store.claim("other", 10, Duration::from_secs(10), DeadLetterPolicy::Block).await.unwrap().events.is_empty()
    );
    tokio::time::sleep(Duration::from_millis(150)).await;

    let rec = Recorder::default();
    let relay = Relay::builder(store.clone()).retention(Duration::from_secs(3600)).build().unwrap();
    for _ in 0..4 {
        relay.run_once(&rec).await.unwrap();
    }
    assert_eq!(rec.sequence("a"), [1, 2, 3]);
    assert_eq!(rec.sequence("b"), [1, 2]);
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.published), (0, 5), "kept for retention");
    assert_eq!(store.cleanup(i64::MAX, 2).await.unwrap(), 5);

    // A sink that refuses: dead letter after the permanent attempts, then replay.
    struct Refuse;
    #[async_trait::async_trait]
    impl Publisher for Refuse {
        async fn publish(&self, _: &spark_outbox::Event) -> Result<(), PublishError> {
            Err(PublishError::Permanent("400 Bad Request".into()))
        }
    }
    let mut tx = db.pool.begin().await.unwrap();
    enqueue(&mut tx, &event("p", 1)).await.unwrap();
    tx.commit().await.unwrap();
    let relay = Relay::builder(store.clone())
        .backoff(Duration::ZERO, Duration::ZERO)
        .max_permanent_attempts(2)
        .build()
        .unwrap();
    for _ in 0..3 {
        relay.run_once(&Refuse).await.unwrap();
    }
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!((dead.len(), dead[0].attempts), (1, 2));
    assert_eq!(store.retry_dead(Some(dead[0].event.id)).await.unwrap(), 1);
    relay.run_once(&rec).await.unwrap();
    assert_eq!(rec.sequence("p"), [1]);
}
