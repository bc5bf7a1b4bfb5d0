//! The relay scenarios of the first outbox issue, on both backends (with
//! NATS JetStream and a webhook on loopback as sinks). Scenarios 4 (commits
//! out of id order) and 7 (the LISTEN connection) are about PostgreSQL
//! mechanisms: see `postgres.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use spark_outbox::{
    DeadLetterPolicy, Event, NatsPublisher, OutboxEvent, OutboxStore, PublishError, Publisher, Relay, RelayBuilder,
    WebhookPublisher,
};

use crate::common::{Recorder, eventually, receiver};
use crate::suite::{Backend, Pg, Sqlite, event};

fn fast<S: OutboxStore>(relay: RelayBuilder<S>) -> RelayBuilder<S> {
    relay.poll_interval(Duration::from_millis(50)).backoff(Duration::from_millis(10), Duration::from_millis(80))
}

/// Scenario 1: a transaction that rolls back emits nothing (and its business change
/// is gone with it); one that commits, exactly one row.
async fn rollback_emits_nothing_commit_emits_one<B: Backend>(b: B) {
    let orders = "CREATE TABLE orders (id TEXT PRIMARY KEY)";
    b.write(orders, &[event("a", 1)], false).await.unwrap();
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_outbox").await, 0);

    // The table can be created again: the first one rolled back too.
    let ids = b.write(orders, &[event("a", 1)], true).await.unwrap();
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_outbox").await, 1);
    assert_eq!(ids[0].get_version_num(), 7);
    let bad = OutboxEvent::new("", "a", "x", serde_json::json!({}));
    assert!(b.write("SELECT 1", &[bad], true).await.is_err());
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_outbox").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_emits_nothing_commit_emits_one_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    rollback_emits_nothing_commit_emits_one(b).await;
}

#[tokio::test]
async fn rollback_emits_nothing_commit_emits_one_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    rollback_emits_nothing_commit_emits_one(b).await;
}

/// Scenario 2: crash after publish, before mark: published again with the same id
/// once the lease lapses; the JetStream stream still holds one copy.
async fn crash_after_publish_republishes_and_jetstream_dedupes<B: Backend>(b: B, nats_url: &str) {
    let tag = format!("sparktest{}", fastrand::u32(..));
    let nats = NatsPublisher::connect(nats_url, &tag, &tag).await.unwrap();
    let ids = b.emit(&[event("a", 1)]).await;

    // The first relay claims and publishes, then dies before marking.
    let store = b.store();
    let claimed = store.claim("doomed", 10, Duration::from_millis(300), DeadLetterPolicy::Block).await.unwrap();
    assert_eq!(claimed.events.len(), 1);
    nats.publish(&claimed.events[0]).await.unwrap();

    // After the lease (and, on PostgreSQL, the quarter the server's fence
    // adds), another relay publishes it again.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let relay = Relay::builder(b.store()).id("survivor").build().unwrap();
    let report = relay.run_once(&nats).await.unwrap();
    assert_eq!(report.published, 1);
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_outbox").await, 0);

    let client = async_nats::connect(nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(&tag).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.state.messages, 1, "JetStream kept one copy of {}", ids[0]);
    js.delete_stream(&tag).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_publish_republishes_and_jetstream_dedupes_on_postgres() {
    let Some(nats_url) = spark_testkit::service_url("NATS_URL", "NATS JetStream") else { return };
    let Some(b) = Pg::open().await else { return };
    crash_after_publish_republishes_and_jetstream_dedupes(b, &nats_url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_publish_republishes_and_jetstream_dedupes_on_sqlite() {
    let Some(nats_url) = spark_testkit::service_url("NATS_URL", "NATS JetStream") else { return };
    let Some(b) = Sqlite::open().await else { return };
    crash_after_publish_republishes_and_jetstream_dedupes(b, &nats_url).await;
}

/// A sink that counts the publishes it starts and never finishes one.
#[derive(Clone, Default)]
struct Stuck(Arc<AtomicUsize>);

#[async_trait]
impl Publisher for Stuck {
    async fn publish(&self, _: &Event) -> Result<(), PublishError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(())
    }
}

/// Scenario 3: a relay killed while holding a batch loses nothing: another finishes.
async fn killed_relay_loses_nothing<B: Backend>(b: B) {
    let events: Vec<_> = (0..20).map(|i| event(&format!("agg{i}"), 0)).collect();
    let ids = b.emit(&events).await;

    let stuck = Stuck::default();
    let doomed = Relay::builder(b.store())
        .id("doomed")
        .batch_size(20)
        .concurrency(20)
        .publish_timeout(Duration::from_millis(300))
        .lease(Duration::from_millis(500))
        .build()
        .unwrap();
    let started = stuck.0.clone();
    let task = tokio::spawn(async move { doomed.run(stuck, std::future::pending()).await });
    // Every event is claimed and in the doomed relay's hands.
    eventually(Duration::from_secs(5), "the doomed relay to start every publish", || async {
        started.load(Ordering::SeqCst) == 20
    })
    .await;
    task.abort();

    let rec = Recorder::default();
    let survivor = fast(Relay::builder(b.store())).id("survivor").spawn(rec.clone()).unwrap();
    eventually(Duration::from_secs(10), "the survivor to publish everything", || async { rec.len() == 20 }).await;
    survivor.shutdown().await.unwrap();
    let mut got = rec.ids();
    got.sort();
    let mut want = ids;
    want.sort();
    assert_eq!(got, want);
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_outbox").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_relay_loses_nothing_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    killed_relay_loses_nothing(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_relay_loses_nothing_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    killed_relay_loses_nothing(b).await;
}

/// Scenario 5: a poison event: capped, jittered retries, then a dead letter that
/// holds back the rest of its aggregate; other aggregates keep flowing; the
/// dead letter replays by its id, in order, once the sink is fixed.
async fn poison_event_is_dead_lettered_and_replayed<B: Backend>(b: B) {
    let hook = receiver().await;
    hook.per_aggregate.lock().unwrap().insert("poison".into(), 400);
    let sink = WebhookPublisher::new(&hook.url, Duration::from_secs(5)).unwrap().with_secret("s3cret");
    let mut events = vec![event("poison", 1), event("poison", 2)];
    events.extend((0..5).map(|i| event(&format!("healthy{i}"), 1)));
    b.emit(&events).await;

    let store = b.store();
    let relay = fast(Relay::builder(store.clone())).max_permanent_attempts(3).spawn(sink).unwrap();
    eventually(Duration::from_secs(10), "the first poison event to be a dead letter", || async {
        store.stats().await.unwrap().dead == 1
    })
    .await;
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event.payload["n"], 1);
    assert_eq!(dead[0].blocked, 1, "poison#2 waits behind it");
    assert!(dead[0].attempts == 3 && dead[0].last_error.as_deref().is_some_and(|e| e.contains("400")), "{dead:?}");
    for i in 0..5 {
        assert_eq!(hook.sequence(&format!("healthy{i}")), [1], "other aggregates flow");
    }
    assert!(hook.sequence("poison").is_empty());

    // Fix the sink and replay.
    hook.per_aggregate.lock().unwrap().clear();
    assert_eq!(store.retry_dead(Some(dead[0].event.id)).await.unwrap(), 1);
    relay.wake();
    eventually(Duration::from_secs(10), "the replayed events", || async { hook.sequence("poison") == [1, 2] }).await;
    relay.shutdown().await.unwrap();
    assert_eq!(store.stats().await.unwrap().pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_event_is_dead_lettered_and_replayed_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    poison_event_is_dead_lettered_and_replayed(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_event_is_dead_lettered_and_replayed_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    poison_event_is_dead_lettered_and_replayed(b).await;
}

/// Scenario 6: sink outage: back off without spinning, lag rises, the backlog drains
/// in per-aggregate order after recovery.
async fn sink_outage_backs_off_and_drains_in_order<B: Backend>(b: B) {
    let hook = receiver().await;
    hook.status.store(503, Ordering::SeqCst);
    let sink = WebhookPublisher::new(&hook.url, Duration::from_secs(5)).unwrap();
    let events: Vec<_> = (0..3).flat_map(|a| (1..=5).map(move |n| event(&format!("agg{a}"), n))).collect();
    b.emit(&events).await;

    let store = b.store();
    let relay = Relay::builder(store.clone())
        .poll_interval(Duration::from_millis(50))
        .backoff(Duration::from_millis(100), Duration::from_millis(400))
        .spawn(sink)
        .unwrap();

    tokio::time::sleep(Duration::from_millis(2000)).await;
    let hits = hook.hits.load(Ordering::SeqCst);
    // Three aggregate heads, each waiting up to 100..400 ms between tries:
    // a hot loop would make thousands of requests in two seconds.
    assert!((3..=90).contains(&hits), "{hits} attempts during a 2 s outage");
    let lag = store.stats().await.unwrap().oldest_pending_age_ms.unwrap();
    assert!(lag >= 1500, "lag {lag} ms should rise during the outage");

    hook.status.store(200, Ordering::SeqCst);
    eventually(Duration::from_secs(15), "the backlog to drain", || async { store.stats().await.unwrap().pending == 0 })
        .await;
    for a in 0..3 {
        assert_eq!(hook.sequence(&format!("agg{a}")), [1, 2, 3, 4, 5]);
    }
    let report = relay.shutdown().await.unwrap();
    assert_eq!(report.dead, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_outage_backs_off_and_drains_in_order_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    sink_outage_backs_off_and_drains_in_order(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_outage_backs_off_and_drains_in_order_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    sink_outage_backs_off_and_drains_in_order(b).await;
}

/// Scenario 8: relays on a 100,000-event backlog (four on PostgreSQL, SQLite's one):
/// every event published once, per-aggregate order holds.
async fn relays_drain_a_large_backlog_in_order<B: Backend>(b: B) {
    // 1,000 aggregates, 100 events each, `n` in order.
    b.backlog("agg", 1000, 100_000).await;
    let rec = Recorder::default();
    let relays = Relay::builder(b.store())
        .id("r")
        .relays(B::relays(4))
        .poll_interval(Duration::from_millis(20))
        .spawn(rec.clone())
        .unwrap();
    if B::SHARES_WORK {
        assert_eq!(relays.ids(), ["r-0", "r-1", "r-2", "r-3"]);
    }
    eventually(Duration::from_secs(240), "100,000 events", || async { rec.len() >= 100_000 }).await;
    let published = relays.shutdown().await.unwrap().published;
    assert_eq!(published, 100_000);
    assert_eq!(rec.len(), 100_000, "no duplicates without crashes");
    let mut ids = rec.ids();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 100_000);
    for a in (0..1000).step_by(37) {
        let seq = rec.sequence(&format!("agg{a}"));
        assert_eq!(seq, (0..100).collect::<Vec<i64>>(), "aggregate agg{a} out of order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relays_drain_a_large_backlog_in_order_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    relays_drain_a_large_backlog_in_order(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_drain_a_large_backlog_in_order_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    relays_drain_a_large_backlog_in_order(b).await;
}

/// Published events are kept, counted as published, for the retention,
/// and the cleanup deletes them in bounded batches.
async fn published_events_are_kept_for_the_retention<B: Backend>(b: B) {
    b.emit(&[event("a", 1), event("b", 1), event("a", 2), event("a", 3), event("b", 2)]).await;
    let store = b.store();
    let rec = Recorder::default();
    let relay = Relay::builder(store.clone()).retention(Duration::from_secs(3600)).build().unwrap();
    for _ in 0..4 {
        relay.run_once(&rec).await.unwrap();
    }
    assert_eq!(rec.sequence("a"), [1, 2, 3]);
    assert_eq!(rec.sequence("b"), [1, 2]);
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.published), (0, 5), "kept for retention");
    assert_eq!(store.cleanup(0, 2).await.unwrap(), 0, "younger than the cut-off");
    assert_eq!(store.cleanup(i64::MAX, 2).await.unwrap(), 5);
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_outbox").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_are_kept_for_the_retention_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    published_events_are_kept_for_the_retention(b).await;
}

#[tokio::test]
async fn published_events_are_kept_for_the_retention_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    published_events_are_kept_for_the_retention(b).await;
}
