//! The claim (issue 10), on both backends: an aggregate's events are
//! published in order and stop at their first failure; events queued behind
//! a stuck event do not keep the other aggregates waiting; hot aggregates
//! keep their order. PostgreSQL claims each aggregate's whole run and sets
//! what is queued behind a stuck event aside (`held`); SQLite claims one
//! event per aggregate and never reaches the queue. Enqueues NOTIFY only
//! while a relay waits (PostgreSQL).

use std::time::Duration;

use spark_db::{Clock, ManualClock, SystemClock};
use spark_outbox::{DeadLetterPolicy, Event, OutboxStore, PublishError, Relay};

use crate::common::{Recorder, Scripted, eventually, n};
use crate::suite::{Backend, Pg, Sqlite, drain, drain_all, event};

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

/// A claim takes an aggregate's events in order (on PostgreSQL its whole
/// run, on SQLite its head); a claim ended without a commit gives them back
/// at once. The relay publishes them in order and stops at the first
/// failure: what follows is given back untouched and published, in order,
/// after the failed event.
async fn a_run_is_published_in_order_and_stops_at_its_first_failure<B: Backend>(b: B) {
    let clock = ManualClock::new(SystemClock.now_ms());
    let store = b.store_with_clock(&clock);
    b.emit(&[event("a", 1), event("a", 2), event("b", 1), event("a", 3), event("a", 4), event("a", 5)]).await;
    clock.set(SystemClock.now_ms() + 1);

    let claim = store.claim("r", 10, Duration::from_secs(30), DeadLetterPolicy::Block).await.unwrap();
    let got: Vec<(String, i64)> = claim.events.iter().map(|e| (e.aggregate_id.clone(), n(e))).collect();
    let want: &[(&str, i64)] = if B::CLAIMS_RUNS {
        &[("a", 1), ("a", 2), ("b", 1), ("a", 3), ("a", 4), ("a", 5)]
    } else {
        &[("a", 1), ("b", 1)]
    };
    assert_eq!(got, want.iter().map(|&(a, k)| (a.to_owned(), k)).collect::<Vec<_>>());
    assert!(store.finish(claim.token, false).await.unwrap());

    let sink = Scripted::new(fails("a", 3, false));
    let relay = Relay::builder(store.clone()).build().unwrap();
    let batch = relay.run_once(&sink).await.unwrap();
    if B::CLAIMS_RUNS {
        assert_eq!((batch.published, batch.failed, batch.released), (3, 1, 2), "{batch:?}");
    } else {
        assert_eq!(batch.published, 2, "the claim given back is claimable at once: {batch:?}");
    }
    drain_all(&relay, &sink).await;
    assert_eq!(sink.rec.sequence("a"), [1, 2]);
    assert_eq!(sink.rec.sequence("b"), [1]);

    sink.set(accept);
    clock.advance(Duration::from_secs(600)); // past a#3's backoff
    drain_all(&relay, &sink).await;
    assert_eq!(sink.rec.sequence("a"), [1, 2, 3, 4, 5]);
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_outbox").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_published_in_order_and_stops_at_its_first_failure_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    a_run_is_published_in_order_and_stops_at_its_first_failure(b).await;
}

#[tokio::test]
async fn a_run_is_published_in_order_and_stops_at_its_first_failure_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    a_run_is_published_in_order_and_stops_at_its_first_failure(b).await;
}

/// Events queued behind an event that backs off do not fill every claim,
/// so the aggregates behind them are reached, and they go, in order, once
/// the event in front of them is published. (PostgreSQL holds them aside:
/// without the hold, every claim of 10 would return x#2..x#11 again and y
/// would starve. SQLite claims only heads.)
async fn a_backing_off_aggregate_does_not_starve_the_others<B: Backend>(b: B) {
    let clock = ManualClock::new(SystemClock.now_ms());
    let store = b.store_with_clock(&clock);
    let mut events: Vec<_> = (1..=30).map(|k| event("x", k)).collect();
    events.extend((1..=3).map(|k| event("y", k)));
    b.emit(&events).await;
    clock.set(SystemClock.now_ms() + 1);

    let sink = Scripted::new(fails("x", 1, false));
    let relay = Relay::builder(store.clone()).batch_size(10).build().unwrap();
    drain(&relay, &sink, 6).await;
    assert_eq!(sink.rec.sequence("y"), [1, 2, 3], "y must get past x's queue");
    assert!(sink.rec.sequence("x").is_empty());
    if let Some(held) = b.held().await {
        assert_eq!(held, 29, "x#2..x#30 held behind x#1");
    }

    sink.set(accept);
    clock.advance(Duration::from_secs(600));
    drain_all(&relay, &sink).await;
    assert_eq!(sink.rec.sequence("x"), (1..=30).collect::<Vec<_>>());
    assert_eq!(b.held().await.unwrap_or(0), 0);
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_outbox").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backing_off_aggregate_does_not_starve_the_others_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    a_backing_off_aggregate_does_not_starve_the_others(b).await;
}

#[tokio::test]
async fn a_backing_off_aggregate_does_not_starve_the_others_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    a_backing_off_aggregate_does_not_starve_the_others(b).await;
}

/// The same behind a dead letter (blocking policy): the queue waits until
/// the dead letter is skipped, counted as blocked and pending, then drains
/// in order.
async fn a_dead_letter_holds_its_queue_aside_until_skipped<B: Backend>(b: B) {
    let store = b.store();
    let mut events: Vec<_> = (1..=25).map(|k| event("x", k)).collect();
    events.extend((1..=2).map(|k| event("y", k)));
    b.emit(&events).await;

    let sink = Scripted::new(fails("x", 1, true));
    let relay = Relay::builder(store.clone()).batch_size(10).max_permanent_attempts(1).build().unwrap();
    drain(&relay, &sink, 5).await;
    assert_eq!(sink.rec.sequence("y"), [1, 2]);
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!((dead.len(), dead[0].blocked), (1, 24), "the held events count as blocked");
    assert_eq!(store.stats().await.unwrap().pending, 24, "held events are pending to operators");

    assert!(store.skip_dead(dead[0].event.id, "ops").await.unwrap());
    drain_all(&relay, &sink).await;
    assert_eq!(sink.rec.sequence("x"), (2..=25).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_holds_its_queue_aside_until_skipped_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    a_dead_letter_holds_its_queue_aside_until_skipped(b).await;
}

#[tokio::test]
async fn a_dead_letter_holds_its_queue_aside_until_skipped_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    a_dead_letter_holds_its_queue_aside_until_skipped(b).await;
}

/// Held events are freed by the sweep when nothing holds them any more: a
/// relay switched to the skipping policy publishes past the dead letter.
/// PostgreSQL only: SQLite never sets events aside, so there is nothing to
/// sweep (switching policy there is `relay::skip_policy_lets_the_aggregate_go_on`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_frees_what_the_blocking_policy_held() {
    let Some(b) = Pg::open().await else { return };
    let store = b.store();
    b.emit(&(1..=15).map(|k| event("x", k)).collect::<Vec<_>>()).await;
    let sink = Scripted::new(fails("x", 1, true));
    let blocking = Relay::builder(store.clone()).batch_size(5).max_permanent_attempts(1).build().unwrap();
    drain(&blocking, &sink, 4).await;
    assert_eq!(b.held().await, Some(14));
    assert_eq!(store.unhold(DeadLetterPolicy::Block).await.unwrap(), 0, "still blocked");
    assert_eq!(store.unhold(DeadLetterPolicy::Skip).await.unwrap(), 14);
    let skipping =
        Relay::builder(store.clone()).batch_size(5).dead_letter_policy(DeadLetterPolicy::Skip).build().unwrap();
    drain(&skipping, &sink, 4).await;
    assert_eq!(sink.rec.sequence("x"), (2..=15).collect::<Vec<_>>());
}

/// Hot aggregates: ten aggregates of 300 events each (two relays on
/// PostgreSQL, SQLite's one). Every event once, each aggregate in order.
async fn relays_on_hot_aggregates_keep_order<B: Backend>(b: B) {
    b.backlog("hot", 10, 3000).await;
    let rec = Recorder::default();
    let relays = Relay::builder(b.store())
        .relays(B::relays(2))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_on_hot_aggregates_keep_order_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    relays_on_hot_aggregates_keep_order(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_on_hot_aggregates_keep_order_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    relays_on_hot_aggregates_keep_order(b).await;
}

/// Enqueues NOTIFY while some relay says it waits, and not while every
/// relay is busy (a NOTIFY serializes commits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_notifies_only_while_a_relay_waits() {
    let Some(b) = Pg::open().await else { return };
    let store = b.store();
    let mut listener = sqlx::postgres::PgListener::connect_with(b.pool()).await.unwrap();
    listener.listen(spark_outbox::postgres::CHANNEL).await.unwrap();
    let notified = async |listener: &mut sqlx::postgres::PgListener| {
        tokio::time::timeout(Duration::from_millis(500), listener.recv()).await.is_ok()
    };

    store.set_idle("r1", false).await.unwrap();
    b.emit(&[event("a", 1)]).await;
    assert!(!notified(&mut listener).await, "a busy relay needs no NOTIFY");

    store.set_idle("r2", true).await.unwrap();
    b.emit(&[event("a", 2)]).await;
    assert!(notified(&mut listener).await, "a waiting relay is told");

    // The state is read at commit: a relay that went idle while the
    // business transaction ran is told too.
    store.set_idle("r2", false).await.unwrap();
    let mut tx = b.pool().begin().await.unwrap();
    spark_outbox::enqueue(&mut *tx, &event("a", 3)).await.unwrap();
    store.set_idle("r2", true).await.unwrap();
    tx.commit().await.unwrap();
    assert!(notified(&mut listener).await, "read at commit, not at the insert");

    store.forget_relay("r2").await.unwrap();
    b.emit(&[event("a", 4)]).await;
    assert!(!notified(&mut listener).await, "nobody waits");
}

/// The server's fence comes a quarter of the lease after the lease: a relay
/// whose last publish times out right at the end of its lease still
/// commits. With the fence at the lease itself, the server ended the
/// transaction first and the whole batch was published again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_finished_right_at_its_lease_still_commits() {
    let Some(b) = Pg::open().await else { return };
    let store = b.store();
    b.emit(&[event("a", 1)]).await;
    let claim = store.claim("r", 10, Duration::from_secs(1), DeadLetterPolicy::Block).await.unwrap();
    assert_eq!(store.mark_published(&[claim.events[0].seq], claim.token, false).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(store.finish(claim.token, true).await.unwrap(), "the server ended the claim before its fence");
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_outbox").await, 0);
}
