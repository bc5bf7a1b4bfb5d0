//! What only SQLite does, beside the shared scenarios (`suite.rs`): a claim
//! takes aggregates' heads on the store's clock, and each event is marked
//! as soon as its publish completes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use spark_outbox::{DeadLetterPolicy, Event, OutboxStore, PublishError, Publisher, Relay};

use crate::suite::{Backend, Sqlite, event};

/// A claim holds one event per aggregate (its head) on the store's clock;
/// while it lives, another claim gets nothing, and after its lease a
/// crashed claim's events return.
#[tokio::test]
async fn a_claim_takes_each_aggregates_head_until_its_lease_lapses() {
    let Some(b) = Sqlite::open().await else { return };
    b.emit(&[event("a", 1), event("b", 1), event("a", 2), event("a", 3), event("b", 2)]).await;
    let store = b.store();
    assert_eq!(store.stats().await.unwrap().pending, 5);

    let claimed = store.claim("doomed", 10, Duration::from_millis(100), DeadLetterPolicy::Block).await.unwrap();
    assert_eq!(claimed.events.iter().map(|e| e.payload["n"].as_i64().unwrap()).collect::<Vec<_>>(), [1, 1]);
    assert!(
        store.claim("other", 10, Duration::from_secs(10), DeadLetterPolicy::Block).await.unwrap().events.is_empty()
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let again = store.claim("other", 10, Duration::from_secs(10), DeadLetterPolicy::Block).await.unwrap();
    assert_eq!(again.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [claimed.events[0].seq, claimed.events[1].seq]);
}

/// A publisher that, for aggregate `b`, waits (up to 3 s) until `a`'s event
/// has left the table, and records whether it saw that.
struct SeesEarlierMarks {
    pool: sqlx::SqlitePool,
    saw: Arc<AtomicBool>,
}

#[async_trait]
impl Publisher for SeesEarlierMarks {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        if event.aggregate_id == "b" {
            for _ in 0..150 {
                let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM spark_outbox WHERE aggregate_id = 'a'")
                    .fetch_one(&self.pool)
                    .await
                    .unwrap();
                if left == 0 {
                    self.saw.store(true, Ordering::SeqCst);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }
}

/// On SQLite an event is marked as soon as its publish completes,
/// not at the end of the batch. (On PostgreSQL a batch is one transaction:
/// see `postgres::a_batch_is_one_transaction_on_postgres`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_marked_as_each_publish_completes_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    b.emit(&[event("a", 1), event("b", 1)]).await;
    let sink = SeesEarlierMarks { pool: b.0.pool.clone(), saw: Arc::default() };
    let relay = Relay::builder(b.store()).batch_size(2).concurrency(1).build().unwrap();
    let batch = relay.run_once(&sink).await.unwrap();
    assert_eq!(batch.published, 2);
    assert!(sink.saw.load(Ordering::SeqCst), "a was still in the table while b was being published");
}
