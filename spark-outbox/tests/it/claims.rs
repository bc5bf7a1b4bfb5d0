//! The PostgreSQL claim (issue 10): an aggregate's events come as a run and
//! are published in order; events queued behind a stuck event are held out
//! of the way so the other aggregates keep flowing; enqueues NOTIFY only
//! while a relay waits.

use std::sync::Arc;
use std::time::Duration;

use spark_db::{Clock, ManualClock, SystemClock};
use spark_outbox::{DeadLetterPolicy, Event, OutboxStore, PgOutbox, PublishError, Relay};

use crate::common::{Recorder, Scripted, eventually, n};
use crate::postgres::{count, db, emit, event};

fn fails(
    aggregate: &'static str,
    number: i64,
    permanent: bool,
) -> impl Fn(&Event) -> Result<(), PublishError> + Send + Sync {
    move |e| match (e.aggregate_id == aggregate && n(e) == number, permanent) {
        (false, _) => Ok(()),
        (true, true) => Err(PublishError::Permanent("422 Unprocessable".into())),
        (true, false) => Err(PublishError::Transient("502 Bad Gateway".into())),
    }
}

fn accept(_: &Event) -> Result<(), PublishError> {
    Ok(())
}

async fn held(pool: &sqlx::PgPool) -> i64 {
    count(pool, "SELECT COUNT(*) FROM spark_outbox WHERE status = 'held'").await
}

/// A claim takes an aggregate's whole run; the relay publishes it in order
/// and stops at the first failure: what follows is given back untouched and
/// published, in order, after the failed event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_published_in_order_and_stops_at_its_first_failure() {
    let Some(db) = db().await else { return };
    let clock = ManualClock::new(SystemClock.now_ms());
    let store = PgOutbox::new(db.pool.clone()).with_clock(Arc::new(clock.clone()));
    emit(&db.pool, &[event("a", 1), event("a", 2), event("b", 1), event("a", 3), event("a", 4), event("a", 5)]).await;
    clock.set(SystemClock.now_ms() + 1);

    let claim = store.claim("r", 10, Duration::from_secs(30), DeadLetterPolicy::Block).await.unwrap();
    let got: Vec<(String, i64)> = claim.events.iter().map(|e| (e.aggregate_id.clone(), n(e))).collect();
    assert_eq!(got.len(), 6, "the whole run of a and b in one claim: {got:?}");
    assert!(store.finish(claim.token, false).await.unwrap());

    let sink = Scripted::new(fails("a", 3, false));
    let relay = Relay::builder(store.clone()).build().unwrap();
    let batch = relay.run_once(&sink).await.unwrap();
    assert_eq!((batch.published, batch.failed, batch.released), (3, 1, 2), "{batch:?}");
    assert_eq!(sink.rec.sequence("a"), [1, 2]);
    assert_eq!(sink.rec.sequence("b"), [1]);

    sink.set(accept);
    clock.advance(Duration::from_secs(600)); // past a#3's backoff
    for _ in 0..4 {
        relay.run_once(&sink).await.unwrap();
    }
    assert_eq!(sink.rec.sequence("a"), [1, 2, 3, 4, 5]);
    assert_eq!(count(&db.pool, "SELECT COUNT(*) FROM spark_outbox").await, 0);
}

/// Events queued behind an event that backs off do not fill every claim:
/// they are held aside, so the aggregates behind them are reached, and they
/// go, in order, once the event in front of them is published. Without the
/// hold, every claim of 10 would return x#2..x#11 again and y would starve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backing_off_aggregate_does_not_starve_the_others() {
    let Some(db) = db().await else { return };
    let clock = ManualClock::new(SystemClock.now_ms());
    let store = PgOutbox::new(db.pool.clone()).with_clock(Arc::new(clock.clone()));
    let mut events: Vec<_> = (1..=30).map(|k| event("x", k)).collect();
    events.extend((1..=3).map(|k| event("y", k)));
    emit(&db.pool, &events).await;
    clock.set(SystemClock.now_ms() + 1);

    let sink = Scripted::new(fails("x", 1, false));
    let relay = Relay::builder(store.clone()).batch_size(10).build().unwrap();
    for _ in 0..6 {
        relay.run_once(&sink).await.unwrap();
    }
    assert_eq!(sink.rec.sequence("y"), [1, 2, 3], "y must get past x's queue");
    assert!(sink.rec.sequence("x").is_empty());
    assert_eq!(held(&db.pool).await, 29, "x#2..x#30 held behind x#1");

    sink.set(accept);
    clock.advance(Duration::from_secs(600));
    for _ in 0..8 {
        relay.run_once(&sink).await.unwrap();
    }
    assert_eq!(sink.rec.sequence("x"), (1..=30).collect::<Vec<_>>());
    assert_eq!((held(&db.pool).await, count(&db.pool, "SELECT COUNT(*) FROM spark_outbox").await), (0, 0));
}

/// The same behind a dead letter (blocking policy): the queue is held until
/// the dead letter is skipped, then drains in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_holds_its_queue_aside_until_skipped() {
    let Some(db) = db().await else { return };
    let store = PgOutbox::new(db.pool.clone());
    let mut events: Vec<_> = (1..=25).map(|k| event("x", k)).collect();
    events.extend((1..=2).map(|k| event("y", k)));
    emit(&db.pool, &events).await;

    let sink = Scripted::new(fails("x", 1, true));
    let relay = Relay::builder(store.clone()).batch_size(10).max_permanent_attempts(1).build().unwrap();
    for _ in 0..5 {
        relay.run_once(&sink).await.unwrap();
    }
    assert_eq!(sink.rec.sequence("y"), [1, 2]);
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!((dead.len(), dead[0].blocked), (1, 24), "the held events count as blocked");
    assert_eq!(store.stats().await.unwrap().pending, 24, "held events are pending to operators");

    assert!(store.skip_dead(dead[0].event.id, "ops").await.unwrap());
    for _ in 0..4 {
        relay.run_once(&sink).await.unwrap();
    }
    assert_eq!(sink.rec.sequence("x"), (2..=25).collect::<Vec<_>>());
}

/// Held events are freed by the sweep when nothing holds them any more: a
/// relay switched to the skipping policy publishes past the dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_frees_what_the_blocking_policy_held() {
    let Some(db) = db().await else { return };
    let store = PgOutbox::new(db.pool.clone());
    emit(&db.pool, &(1..=15).map(|k| event("x", k)).collect::<Vec<_>>()).await;
    let sink = Scripted::new(fails("x", 1, true));
    let blocking = Relay::builder(store.clone()).batch_size(5).max_permanent_attempts(1).build().unwrap();
    for _ in 0..4 {
        blocking.run_once(&sink).await.unwrap();
    }
    assert_eq!(held(&db.pool).await, 14);
    assert_eq!(store.unhold(DeadLetterPolicy::Block).await.unwrap(), 0, "still blocked");
    assert_eq!(store.unhold(DeadLetterPolicy::Skip).await.unwrap(), 14);
    let skipping =
        Relay::builder(store.clone()).batch_size(5).dead_letter_policy(DeadLetterPolicy::Skip).build().unwrap();
    for _ in 0..4 {
        skipping.run_once(&sink).await.unwrap();
    }
    assert_eq!(sink.rec.sequence("x"), (2..=15).collect::<Vec<_>>());
}

/// Hot aggregates: two relays, ten aggregates of 300 events each. Every
/// event once, each aggregate in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_hot_aggregates_keep_order() {
    let Some(db) = db().await else { return };
    sqlx::query(
        "INSERT INTO spark_outbox (id, aggregate_type, aggregate_id, event_type, payload, headers, created_at_ms, available_at_ms)
         SELECT gen_random_uuid(), 'order', 'hot' || (i % 10), 'order.accepted',
                jsonb_build_object('n', i / 10), '{}'::jsonb, 0, 0
         FROM generate_series(0, 2999) AS i",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let rec = Recorder::default();
    let relays = Relay::builder(PgOutbox::new(db.pool.clone()))
        .relays(2)
        .batch_size(100)
        .poll_interval(Duration::from_millis(20))
        .spawn(rec.clone())
        .unwrap();
    eventually(Duration::from_secs(60), "3,000 events", || async { rec.len() >= 3000 }).await;
    assert_eq!(relays.shutdown().await.unwrap().published, 3000);
    assert_eq!(rec.len(), 3000);
    for a in 0..10 {
        assert_eq!(rec.sequence(&format!("hot{a}")), (0..300).collect::<Vec<i64>>(), "hot{a} out of order");
    }
}

/// Enqueues NOTIFY while some relay says it waits, and not while every
/// relay is busy (a NOTIFY serializes commits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_notifies_only_while_a_relay_waits() {
    let Some(db) = db().await else { return };
    let store = PgOutbox::new(db.pool.clone());
    let mut listener = sqlx::postgres::PgListener::connect_with(&db.pool).await.unwrap();
    listener.listen(spark_outbox::postgres::CHANNEL).await.unwrap();
    let notified = async |listener: &mut sqlx::postgres::PgListener| {
        tokio::time::timeout(Duration::from_millis(500), listener.recv()).await.is_ok()
    };

    store.set_idle("r1", false).await.unwrap();
    emit(&db.pool, &[event("a", 1)]).await;
    assert!(!notified(&mut listener).await, "a busy relay needs no NOTIFY");

    store.set_idle("r2", true).await.unwrap();
    emit(&db.pool, &[event("a", 2)]).await;
    assert!(notified(&mut listener).await, "a waiting relay is told");

    // The state is read at commit: a relay that went idle while the
    // business transaction ran is told too.
    store.set_idle("r2", false).await.unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    spark_outbox::enqueue(&mut *tx, &event("a", 3)).await.unwrap();
    store.set_idle("r2", true).await.unwrap();
    tx.commit().await.unwrap();
    assert!(notified(&mut listener).await, "read at commit, not at the insert");

    store.forget_relay("r2").await.unwrap();
    emit(&db.pool, &[event("a", 4)]).await;
    assert!(!notified(&mut listener).await, "nobody waits");
}
