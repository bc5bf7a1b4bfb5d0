//! The eight relay scenarios on real PostgreSQL (and NATS JetStream).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use spark_outbox::postgres::{enqueue, migrator};
use spark_outbox::{
    DeadLetterPolicy, NatsPublisher, OutboxEvent, OutboxStore, PgOutbox, Publisher, Relay, WebhookPublisher,
};
use spark_testkit::PgTestDb;
use sqlx::PgPool;

use crate::common::{Recorder, eventually, receiver};

pub(crate) async fn db() -> Option<PgTestDb> {
    let db = spark_testkit::postgres().await?;
    migrator().run(&db.pool).await.unwrap();
    Some(db)
}

pub(crate) fn event(aggregate: &str, n: i64) -> OutboxEvent {
    OutboxEvent::new("order", aggregate, "order.accepted", serde_json::json!({ "n": n }))
}

/// Enqueues each event in its own committed transaction.
pub(crate) async fn emit(pool: &PgPool, events: &[OutboxEvent]) -> Vec<uuid::Uuid> {
    let mut ids = Vec::new();
    for e in events {
        let mut tx = pool.begin().await.unwrap();
        ids.push(enqueue(&mut tx, e).await.unwrap());
        tx.commit().await.unwrap();
    }
    ids
}

pub(crate) async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

fn fast(relay: spark_outbox::RelayBuilder<PgOutbox>) -> spark_outbox::RelayBuilder<PgOutbox> {
    relay.poll_interval(Duration::from_millis(50)).backoff(Duration::from_millis(10), Duration::from_millis(80))
}

/// 1. A transaction that rolls back emits nothing; one that commits, exactly one row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_emits_nothing_commit_emits_one() {
    let Some(db) = db().await else { return };
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("CREATE TABLE orders (id TEXT PRIMARY KEY)").execute(&mut *tx).await.unwrap();
    enqueue(&mut tx, &event("a", 1)).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(count(&db.pool, "SELECT COUNT(*) FROM spark_outbox").await, 0);

    let mut tx = db.pool.begin().await.unwrap();
    let id = enqueue(&mut tx, &event("a", 1)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count(&db.pool, "SELECT COUNT(*) FROM spark_outbox").await, 1);
    assert_eq!(id.get_version_num(), 7);
    let bad = OutboxEvent::new("", "a", "x", serde_json::json!({}));
    let mut tx = db.pool.begin().await.unwrap();
    assert!(enqueue(&mut tx, &bad).await.is_err());
}

/// 2. Crash after publish, before mark: published again with the same id;
/// the JetStream stream still holds one copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_publish_republishes_and_jetstream_dedupes() {
    let Some(nats_url) = spark_testkit::service_url("NATS_URL", "NATS JetStream") else { return };
    let Some(db) = db().await else { return };
    let tag = format!("sparktest{}", fastrand::u32(..));
    let nats = NatsPublisher::connect(&nats_url, &tag, &tag).await.unwrap();
    let ids = emit(&db.pool, &[event("a", 1)]).await;

    // The first relay claims and publishes, then dies before marking.
    let store = PgOutbox::new(db.pool.clone());
    let claimed = store.claim("doomed", 10, Duration::from_millis(300), DeadLetterPolicy::Block).await.unwrap();
    assert_eq!(claimed.events.len(), 1);
    nats.publish(&claimed.events[0]).await.unwrap();

    // After the lease, another relay publishes it again.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let relay = Relay::builder(PgOutbox::new(db.pool.clone())).id("survivor").build().unwrap();
    let report = relay.run_once(&nats).await.unwrap();
    assert_eq!(report.published, 1);
    assert_eq!(count(&db.pool, "SELECT COUNT(*) FROM spark_outbox").await, 0);

    let client = async_nats::connect(&nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(&tag).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.state.messages, 1, "JetStream kept one copy of {}", ids[0]);
    js.delete_stream(&tag).await.unwrap();
}

/// 3. A relay killed while holding a batch loses nothing: another finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_relay_loses_nothing() {
    let Some(db) = db().await else { return };
    let events: Vec<_> = (0..20).map(|i| event(&format!("agg{i}"), 0)).collect();
    let ids = emit(&db.pool, &events).await;

    let stuck = Recorder { delay: Some(Duration::from_secs(30)), ..Recorder::default() };
    let doomed = Relay::builder(PgOutbox::new(db.pool.clone()))
        .id("doomed")
        .batch_size(20)
        .concurrency(20)
        .publish_timeout(Duration::from_millis(300))
        .lease(Duration::from_millis(500))
        .build()
        .unwrap();
    let task = tokio::spawn(async move { doomed.run(stuck, std::future::pending()).await });
    // Every row is locked by the doomed relay's claim (a row lock sets the
    // row's xmax; reading it takes no lock of our own).
    eventually(Duration::from_secs(5), "the doomed relay to claim", || async {
        count(&db.pool, "SELECT COUNT(*) FROM spark_outbox WHERE xmax::text <> '0'").await == 20
    })
    .await;
    task.abort();

    let rec = Recorder::default();
    let survivor = fast(Relay::builder(PgOutbox::new(db.pool.clone()))).id("survivor").spawn(rec.clone()).unwrap();
    eventually(Duration::from_secs(10), "the survivor to publish everything", || async { rec.len() == 20 }).await;
    survivor.shutdown().await.unwrap();
    let mut got = rec.ids();
    got.sort();
    let mut want = ids;
    want.sort();
    assert_eq!(got, want);
    assert_eq!(count(&db.pool, "SELECT COUNT(*) FROM spark_outbox").await, 0);
}

/// 4. Transactions that commit out of id order: nothing is skipped and
/// per-aggregate order holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_commits_skip_nothing() {
    let Some(db) = db().await else { return };
    let relay = Relay::builder(PgOutbox::new(db.pool.clone())).build().unwrap();
    let rec = Recorder::default();

    // T1 writes A#1 and stays open; T2 writes B#1 and commits first.
    let mut t1 = db.pool.begin().await.unwrap();
    enqueue(&mut t1, &event("A", 1)).await.unwrap();
    emit(&db.pool, &[event("B", 1)]).await;
    relay.run_once(&rec).await.unwrap();
    assert_eq!(rec.sequence("B"), [1]);
    assert!(rec.sequence("A").is_empty());

    // T3 writes A#2 while T1 is open: it waits for T1 (same aggregate), so
    // A#2 commits after A#1 whatever the timing.
    let pool = db.pool.clone();
    let t3 = tokio::spawn(async move { emit(&pool, &[event("A", 2)]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!t3.is_finished(), "same-aggregate enqueue must wait for the open transaction");
    t1.commit().await.unwrap();
    t3.await.unwrap();
    for _ in 0..3 {
        relay.run_once(&rec).await.unwrap();
    }
    assert_eq!(rec.sequence("A"), [1, 2]);
    assert_eq!(rec.len(), 3);
}

/// 5. A poison event: capped, jittered retries, then a dead letter that
/// holds back the rest of its aggregate; other aggregates keep flowing; the
/// dead letter replays, in order, once the sink is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_event_is_dead_lettered_and_replayed() {
    let Some(db) = db().await else { return };
    let hook = receiver().await;
    hook.per_aggregate.lock().unwrap().insert("poison".into(), 400);
    let sink = WebhookPublisher::new(&hook.url, Duration::from_secs(5)).unwrap().with_secret("s3cret");
    let mut events = vec![event("poison", 1), event("poison", 2)];
    events.extend((0..5).map(|i| event(&format!("healthy{i}"), 1)));
    emit(&db.pool, &events).await;

    let store = PgOutbox::new(db.pool.clone());
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
    assert_eq!(store.retry_dead(None).await.unwrap(), 1);
    relay.wake();
    eventually(Duration::from_secs(10), "the replayed events", || async { hook.sequence("poison") == [1, 2] }).await;
    relay.shutdown().await.unwrap();
    assert_eq!(store.stats().await.unwrap().pending, 0);
}

/// 6. Sink outage: back off without spinning, lag rises, the backlog drains
/// in per-aggregate order after recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_outage_backs_off_and_drains_in_order() {
    let Some(db) = db().await else { return };
    let hook = receiver().await;
    hook.status.store(503, Ordering::SeqCst);
    let sink = WebhookPublisher::new(&hook.url, Duration::from_secs(5)).unwrap();
    let events: Vec<_> = (0..3).flat_map(|a| (1..=5).map(move |n| event(&format!("agg{a}"), n))).collect();
    emit(&db.pool, &events).await;

    let store = PgOutbox::new(db.pool.clone());
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

/// 7. The LISTEN connection is killed: delivery continues by polling, then
/// by NOTIFY again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_connection_killed_then_back() {
    let Some(db) = db().await else { return };
    let rec = Recorder::default();
    // Polls only every 4 s: quick delivery means NOTIFY.
    let relay = Relay::builder(PgOutbox::new(db.pool.clone()))
        .poll_interval(Duration::from_secs(4))
        .listen(db.url.clone())
        .spawn(rec.clone())
        .unwrap();
    let listening = || async {
        count(
            &db.pool,
            "SELECT COUNT(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%' AND datname = current_database()",
        )
        .await
            == 1
    };
    eventually(Duration::from_secs(5), "the listener", listening).await;
    eventually(Duration::from_secs(5), "the listener's first probe", || async { relay.listening() }).await;

    let t = Instant::now();
    emit(&db.pool, &[event("a", 1)]).await;
    eventually(Duration::from_secs(2), "delivery by NOTIFY", || async { rec.len() == 1 }).await;
    assert!(t.elapsed() < Duration::from_secs(2));

    let killed = count(
        &db.pool,
        "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%' AND datname = current_database()",
    )
    .await;
    assert_eq!(killed, 1);
    emit(&db.pool, &[event("a", 2)]).await;
    eventually(Duration::from_secs(10), "delivery while the listener is down", || async { rec.len() == 2 }).await;

    eventually(Duration::from_secs(10), "the listener to come back", listening).await;
    let t = Instant::now();
    emit(&db.pool, &[event("a", 3)]).await;
    eventually(Duration::from_secs(3), "delivery by NOTIFY again", || async { rec.len() == 3 }).await;
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(rec.sequence("a"), [1, 2, 3]);
    relay.shutdown().await.unwrap();
}

/// 8. Four relays on a 100,000-event backlog: every event published once,
/// per-aggregate order holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_relays_drain_a_large_backlog_in_order() {
    let Some(db) = db().await else { return };
    // The backlog is written in one statement (the relays are under test,
    // not enqueue): 1,000 aggregates, 100 events each, `n` in order.
    sqlx::query(
        "INSERT INTO spark_outbox (id, aggregate_type, aggregate_id, event_type, payload, headers, created_at_ms, available_at_ms)
         SELECT gen_random_uuid(), 'order', 'agg' || (i % 1000), 'order.accepted',
                jsonb_build_object('n', i / 1000), '{}'::jsonb, 0, 0
         FROM generate_series(0, 99999) AS i",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let rec = Recorder::default();
    let relays = Relay::builder(PgOutbox::new(db.pool.clone()))
        .id("r")
        .relays(4)
        .poll_interval(Duration::from_millis(20))
        .spawn(rec.clone())
        .unwrap();
    assert_eq!(relays.ids(), ["r-0", "r-1", "r-2", "r-3"]);
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
