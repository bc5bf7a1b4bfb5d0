//! The relay's guarantees: dead letters hold their aggregate, transient
//! failures are bounded by time, completions are fenced by the claim,
//! unreadable rows and panicking publishers do not wedge the queue, a batch
//! never outlives its lease, leases use the database's clock, and the LISTEN
//! connection checks itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use spark_db::{Clock, ManualClock, SystemClock};
use spark_outbox::postgres::Listen;
use spark_outbox::{
    DeadLetterPolicy, Event, NullPublisher, OutboxStore, PgOutbox, PublishError, Publisher, Relay, SqliteOutbox,
};

use crate::common::{Scripted, eventually, n};
use crate::postgres::{count, db, emit, event};

fn refuse(aggregate: &'static str, number: i64) -> impl Fn(&Event) -> Result<(), PublishError> + Send + Sync {
    move |e| {
        if e.aggregate_id == aggregate && n(e) == number {
            Err(PublishError::Permanent("400 Bad Request".into()))
        } else {
            Ok(())
        }
    }
}

fn accept(_: &Event) -> Result<(), PublishError> {
    Ok(())
}

async fn drain<S: OutboxStore>(relay: &Relay<S>, sink: &Scripted, rounds: usize) {
    for _ in 0..rounds {
        relay.run_once(sink).await.unwrap();
    }
}

/// Point 2: a dead letter holds back the rest of its aggregate until it is
/// retried (order holds) or skipped on purpose (recorded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_blocks_its_aggregate_until_retried_or_skipped() {
    let Some(db) = db().await else { return };
    let store = PgOutbox::new(db.pool.clone());
    emit(&db.pool, &[event("a", 1), event("a", 2), event("b", 1)]).await;
    let sink = Scripted::new(refuse("a", 1));
    let relay = Relay::builder(store.clone()).max_permanent_attempts(1).build().unwrap();
    drain(&relay, &sink, 4).await;
    assert!(sink.rec.sequence("a").is_empty(), "a#2 must not overtake the dead a#1");
    assert_eq!(sink.rec.sequence("b"), [1]);
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!((dead.len(), dead[0].blocked, dead[0].skipped_by.as_deref()), (1, 1, None));

    // Retry: a#1 then a#2.
    sink.set(accept);
    assert_eq!(store.retry_dead(None).await.unwrap(), 1);
    drain(&relay, &sink, 3).await;
    assert_eq!(sink.rec.sequence("a"), [1, 2]);

    // Skip: a#4 goes on, and who released it is recorded.
    emit(&db.pool, &[event("a", 3), event("a", 4)]).await;
    sink.set(refuse("a", 3));
    drain(&relay, &sink, 3).await;
    assert_eq!(sink.rec.sequence("a"), [1, 2]);
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead[0].blocked, 1);
    assert!(store.skip_dead(dead[0].event.id, "alice").await.unwrap());
    assert!(!store.skip_dead(dead[0].event.id, "bob").await.unwrap(), "skipped once");
    drain(&relay, &sink, 2).await;
    assert_eq!(sink.rec.sequence("a"), [1, 2, 4]);
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!((dead.len(), dead[0].blocked), (1, 0));
    assert_eq!(dead[0].skipped_by.as_deref(), Some("alice"));
    assert!(dead[0].skipped_at_ms.is_some());
    assert_eq!(store.retry_dead(None).await.unwrap(), 0, "--all leaves skipped dead letters alone");
}

/// Point 2: `DeadLetterPolicy::Skip` is the explicit opt-in to the old
/// behaviour.
#[tokio::test]
async fn skip_policy_lets_the_aggregate_go_on() {
    let db = spark_testkit::sqlite().await;
    spark_outbox::sqlite::migrator().run(&db.pool).await.unwrap();
    for k in 1..=2 {
        let mut tx = db.pool.begin().await.unwrap();
        spark_outbox::sqlite::enqueue(&mut tx, &event("c", k)).await.unwrap();
        tx.commit().await.unwrap();
    }
    let store = SqliteOutbox::new(db.pool.clone());
    let sink = Scripted::new(refuse("c", 1));
    let relay = Relay::builder(store.clone())
        .max_permanent_attempts(1)
        .dead_letter_policy(DeadLetterPolicy::Skip)
        .build()
        .unwrap();
    drain(&relay, &sink, 3).await;
    assert_eq!(sink.rec.sequence("c"), [2]);
    assert_eq!(store.stats().await.unwrap().dead, 1);
}

/// A transient failure for every event (the sink is down).
fn down(_: &Event) -> Result<(), PublishError> {
    Err(PublishError::Transient("503 Service Unavailable".into()))
}

/// Point 3: a 90-second sink outage dead-letters nothing and uses up none
/// of the events' retry budget; the backlog drains in order afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ninety_second_outage_dead_letters_nothing() {
    let Some(db) = db().await else { return };
    let events: Vec<_> = (0..20).flat_map(|a| (1..=2).map(move |k| event(&format!("agg{a}"), k))).collect();
    emit(&db.pool, &events).await;
    let clock = ManualClock::new(SystemClock.now_ms());
    let store = PgOutbox::new(db.pool.clone()).with_clock(Arc::new(clock.clone()));
    let sink = Scripted::new(down);
    let relay = Relay::builder(store.clone()).build().unwrap();
    let mut tries = 0;
    for _ in 0..90 {
        let batch = relay.run_once(&sink).await.unwrap();
        assert!(batch.claimed == 0 || batch.outage, "{batch:?}");
        if batch.outage {
            assert_eq!(batch.failed, 20, "all heads tried together");
            tries += 1;
        }
        clock.advance(Duration::from_secs(1));
    }
    // Deferred by the relay's growing backoff (0.5, 1, 2, 4 … s): tried
    // again and again, but not every second.
    assert!((5..90).contains(&tries), "{tries} tries in 90 s");
    assert_eq!(store.stats().await.unwrap().dead, 0);
    assert_eq!(count(&db.pool, "SELECT MAX(attempts)::bigint FROM spark_outbox").await, 0, "the outage is the relay's");

    sink.set(accept);
    clock.advance(Duration::from_secs(300)); // at most the backoff cap
    for _ in 0..5 {
        relay.run_once(&sink).await.unwrap();
    }
    for a in 0..20 {
        assert_eq!(sink.rec.sequence(&format!("agg{a}")), [1, 2]);
    }
}

/// Two heads that fail transiently by themselves (not the sink) look like
/// an outage. Given back as they were, they would be the next claim's oldest
/// heads again, batch after batch, and every aggregate behind them would
/// wait forever.
async fn whole_batch_failure_does_not_stall_the_others<S: OutboxStore>(store: S, clock: &ManualClock) {
    let sink = Scripted::new(|e| if e.aggregate_id == "c" { Ok(()) } else { down(e) });
    let relay = Relay::builder(store).batch_size(2).build().unwrap();
    let first = relay.run_once(&sink).await.unwrap();
    assert!(first.outage, "{first:?}");
    assert_eq!(first.failed, 2);
    drain(&relay, &sink, 3).await;
    assert_eq!(sink.rec.sequence("c"), [1], "c#1 must not wait behind a#1 and b#1");
    // Still the relay's outage, not the events' failures: they come back.
    clock.advance(Duration::from_secs(300));
    sink.set(accept);
    drain(&relay, &sink, 2).await;
    assert_eq!((sink.rec.sequence("a"), sink.rec.sequence("b")), (vec![1], vec![1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_batch_failure_does_not_stall_the_others_on_postgres() {
    let Some(db) = db().await else { return };
    emit(&db.pool, &[event("a", 1), event("b", 1), event("c", 1)]).await;
    let clock = ManualClock::new(SystemClock.now_ms());
    let store = PgOutbox::new(db.pool.clone()).with_clock(Arc::new(clock.clone()));
    whole_batch_failure_does_not_stall_the_others(store, &clock).await;
    assert_eq!(count(&db.pool, "SELECT COUNT(*) FROM spark_outbox").await, 0);
}

#[tokio::test]
async fn whole_batch_failure_does_not_stall_the_others_on_sqlite() {
    let db = spark_testkit::sqlite().await;
    spark_outbox::sqlite::migrator().run(&db.pool).await.unwrap();
    for a in ["a", "b", "c"] {
        let mut tx = db.pool.begin().await.unwrap();
        spark_outbox::sqlite::enqueue(&mut tx, &event(a, 1)).await.unwrap();
        tx.commit().await.unwrap();
    }
    let clock = ManualClock::new(SystemClock.now_ms());
    let store = SqliteOutbox::new(db.pool.clone()).with_clock(Arc::new(clock.clone()));
    whole_batch_failure_does_not_stall_the_others(store.clone(), &clock).await;
    assert_eq!(store.stats().await.unwrap().pending, 0);
}

/// Point 3: an event that keeps failing transiently is retried for the
/// 24-hour budget — far more than a small count — and then dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failure_beyond_the_budget_is_dead_lettered() {
    let Some(db) = db().await else { return };
    emit(&db.pool, &[event("flaky", 1)]).await;
    let clock = ManualClock::new(SystemClock.now_ms());
    let store = PgOutbox::new(db.pool.clone()).with_clock(Arc::new(clock.clone()));
    let sink = Scripted::new(down);
    let relay = Relay::builder(store.clone()).build().unwrap();
    let start = clock.now_ms();
    let mut dead_at = None;
    // Steps of the 5-minute backoff cap: every retry is due at each step.
    for _ in 0..400 {
        let batch = relay.run_once(&sink).await.unwrap();
        if batch.dead == 1 {
            dead_at = Some(clock.now_ms());
            break;
        }
        clock.advance(Duration::from_secs(300));
    }
    let dead_at = dead_at.expect("dead-lettered within 400 steps");
    let first_failure = start;
    assert!(dead_at - first_failure >= 24 * 3_600_000, "dead after {} ms", dead_at - first_failure);
    let dead = store.dead_letters(1).await.unwrap();
    assert!(dead[0].attempts > 100, "{} attempts", dead[0].attempts);
    assert!(dead[0].last_error.as_deref().unwrap().contains("503"));
}

/// Refusals are counted apart from transient failures: an event that failed
/// transiently through an outage still gets its three tries when the
/// receiver, mid-deploy, refuses it once — instead of becoming a dead letter
/// (which holds its aggregate) on the first refusal.
#[tokio::test]
async fn transient_failures_do_not_use_up_the_refusals() {
    let db = spark_testkit::sqlite().await;
    spark_outbox::sqlite::migrator().run(&db.pool).await.unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    spark_outbox::sqlite::enqueue(&mut tx, &event("a", 1)).await.unwrap();
    tx.commit().await.unwrap();
    let clock = ManualClock::new(SystemClock.now_ms());
    let store = SqliteOutbox::new(db.pool.clone()).with_clock(Arc::new(clock.clone()));
    let relay = Relay::builder(store.clone()).build().unwrap();
    let sink = Scripted::new(down);
    for _ in 0..5 {
        assert_eq!(relay.run_once(&sink).await.unwrap().failed, 1);
        clock.advance(Duration::from_secs(300));
    }
    sink.set(refuse("a", 1));
    for refusal in 1..=2 {
        let batch = relay.run_once(&sink).await.unwrap();
        assert_eq!((batch.failed, batch.dead), (1, 0), "refusal {refusal} of 3 after 5 transient failures");
        clock.advance(Duration::from_secs(300));
    }
    let batch = relay.run_once(&sink).await.unwrap();
    assert_eq!(batch.dead, 1, "the third refusal");
    let dead = store.dead_letters(1).await.unwrap();
    assert_eq!(dead[0].attempts, 8);

    // A retried dead letter gets its refusals back too.
    assert_eq!(store.retry_dead(None).await.unwrap(), 1);
    let batch = relay.run_once(&sink).await.unwrap();
    assert_eq!((batch.failed, batch.dead), (1, 0));
}

/// Point 3: a claim that ends without a failure (released, or its lease ran
/// out) is not an attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_without_a_failure_is_not_an_attempt() {
    let Some(db) = db().await else { return };
    let store = PgOutbox::new(db.pool.clone());
    emit(&db.pool, &[event("a", 1)]).await;
    let first = store.claim("r", 10, Duration::from_secs(30), DeadLetterPolicy::Block).await.unwrap();
    assert_eq!(store.release(&[first.events[0].seq], first.token).await.unwrap(), 1);
    assert!(store.finish(first.token, true).await.unwrap());
    let second = store.claim("r", 10, Duration::from_millis(200), DeadLetterPolicy::Block).await.unwrap();
    assert_eq!(second.events[0].attempts, 0);
    tokio::time::sleep(Duration::from_millis(400)).await; // the lease lapses
    let third = store.claim("r", 10, Duration::from_secs(30), DeadLetterPolicy::Block).await.unwrap();
    assert_eq!(third.events[0].attempts, 0);
    assert!(!store.finish(second.token, true).await.unwrap(), "the lapsed claim is lost");
    assert!(store.finish(third.token, true).await.unwrap());
}

/// Point 5: relay A claims, its lease lapses, relay B — with the same name —
/// claims again; A's late completions change nothing. On PostgreSQL the
/// database itself ends A's transaction when its lease lapses
/// (`idle_in_transaction_session_timeout`), so A's commit fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_completion_after_a_reclaim_changes_nothing() {
    let Some(db) = db().await else { return };
    let store = PgOutbox::new(db.pool.clone());
    emit(&db.pool, &[event("a", 1)]).await;
    let a = store.claim("twin", 10, Duration::from_millis(200), DeadLetterPolicy::Block).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = store.claim("twin", 10, Duration::from_secs(30), DeadLetterPolicy::Block).await.unwrap();
    let seq = a.events[0].seq;
    assert_eq!(b.events[0].seq, seq);
    assert_ne!(a.token, b.token);

    let failure = spark_outbox::Failure::Dead;
    assert_eq!(store.mark_failed(seq, a.token, "late", failure).await.unwrap(), None, "A no longer holds it");
    assert_eq!(store.mark_published(&[seq], a.token, false).await.unwrap(), 0);
    assert_eq!(store.release(&[seq], a.token).await.unwrap(), 0);
    assert!(!store.finish(a.token, true).await.unwrap(), "A's commit is refused");
    assert_eq!(count(&db.pool, "SELECT COUNT(*) FROM spark_outbox WHERE status = 'pending'").await, 1, "still B's");
    assert_eq!(store.mark_published(&[seq], b.token, false).await.unwrap(), 1);
    assert!(store.finish(b.token, true).await.unwrap());
    assert_eq!(count(&db.pool, "SELECT COUNT(*) FROM spark_outbox").await, 0);
}

/// Point 6: a row that cannot be decoded is dead-lettered with the error;
/// other aggregates go on (PostgreSQL: headers that are not a string map).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_row_is_dead_lettered_on_postgres() {
    let Some(db) = db().await else { return };
    sqlx::query(
        "INSERT INTO spark_outbox (id, aggregate_type, aggregate_id, event_type, payload, headers, created_at_ms, available_at_ms)
         VALUES (gen_random_uuid(), 'order', 'x', 'order.accepted', '{\"n\": 1}', '{\"k\": 1}', 0, 0)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    emit(&db.pool, &[event("y", 1)]).await;
    let store = PgOutbox::new(db.pool.clone());
    let sink = Scripted::new(accept);
    let relay = Relay::builder(store.clone()).build().unwrap();
    let batch = relay.run_once(&sink).await.unwrap();
    assert_eq!((batch.claimed, batch.published, batch.dead), (2, 1, 1));
    assert_eq!(sink.rec.sequence("y"), [1]);
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead[0].event.aggregate_id, "x");
    assert!(dead[0].last_error.as_deref().unwrap().contains("headers"), "{dead:?}");
}

/// Point 6 on SQLite: a payload that is not JSON.
#[tokio::test]
async fn an_unreadable_row_is_dead_lettered_on_sqlite() {
    let db = spark_testkit::sqlite().await;
    spark_outbox::sqlite::migrator().run(&db.pool).await.unwrap();
    sqlx::query(
        "INSERT INTO spark_outbox (id, aggregate_type, aggregate_id, event_type, payload, headers, created_at_ms, available_at_ms)
         VALUES ('0190a5b2-0000-7000-8000-000000000001', 'order', 'x', 'order.accepted', 'not json', '{}', 0, 0)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    spark_outbox::sqlite::enqueue(&mut tx, &event("y", 1)).await.unwrap();
    tx.commit().await.unwrap();
    let store = SqliteOutbox::new(db.pool.clone());
    let sink = Scripted::new(accept);
    let relay = Relay::builder(store.clone()).build().unwrap();
    for _ in 0..2 {
        relay.run_once(&sink).await.unwrap();
    }
    assert_eq!(sink.rec.sequence("y"), [1]);
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event.payload, "not json");
    assert!(dead[0].last_error.as_deref().unwrap().contains("payload"), "{dead:?}");
}

/// Point 6: a publisher that panics is a failed attempt; the relay goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_publisher_is_a_failure_and_the_relay_goes_on() {
    let Some(db) = db().await else { return };
    emit(&db.pool, &[event("boom", 1), event("fine", 1)]).await;
    let store = PgOutbox::new(db.pool.clone());
    let sink = Scripted::new(|e| if e.aggregate_id == "boom" { panic!("sink bug") } else { Ok(()) });
    let relay = Relay::builder(store.clone()).max_permanent_attempts(1).build().unwrap().spawn(sink.clone());
    eventually(Duration::from_secs(10), "the panic to be dead-lettered", || async {
        store.stats().await.unwrap().dead == 1
    })
    .await;
    eventually(Duration::from_secs(10), "the other event", || async { sink.rec.sequence("fine") == [1] }).await;
    let report = relay.shutdown().await.unwrap();
    assert_eq!((report.failed, report.dead), (1, 1));
    let dead = store.dead_letters(1).await.unwrap();
    assert!(dead[0].last_error.as_deref().unwrap().contains("publisher panicked: sink bug"), "{dead:?}");
}

/// Point 6/24: a relay task that dies (here: the schema is missing) is
/// reported by the runner instead of leaving the process running idle.
#[tokio::test]
async fn the_runner_reports_a_relay_that_died() {
    let db = spark_testkit::sqlite().await; // not migrated
    let mut relays = Relay::builder(SqliteOutbox::new(db.pool.clone())).id("lonely").spawn(NullPublisher).unwrap();
    tokio::time::timeout(Duration::from_secs(10), relays.died()).await.expect("the relay to die");
    let err = relays.shutdown().await.unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("outbox relay lonely died: ") && text.contains("no such table"), "{text}");
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

/// Point 4: on SQLite an event is marked as soon as its publish completes,
/// not at the end of the batch. (On PostgreSQL a batch is one transaction:
/// see `a_batch_is_one_transaction_on_postgres`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_marked_as_each_publish_completes_on_sqlite() {
    let db = spark_testkit::sqlite().await;
    spark_outbox::sqlite::migrator().run(&db.pool).await.unwrap();
    for a in ["a", "b"] {
        let mut tx = db.pool.begin().await.unwrap();
        spark_outbox::enqueue(&mut *tx, &event(a, 1)).await.unwrap();
        tx.commit().await.unwrap();
    }
    let sink = SeesEarlierMarks { pool: db.pool.clone(), saw: Arc::default() };
    let relay = Relay::builder(SqliteOutbox::new(db.pool.clone())).batch_size(2).concurrency(1).build().unwrap();
    let batch = relay.run_once(&sink).await.unwrap();
    assert_eq!(batch.published, 2);
    assert!(sink.saw.load(Ordering::SeqCst), "a was still in the table while b was being published");
}

/// On PostgreSQL a batch is one transaction: nothing is deleted until every
/// event of it was tried, and then all published events at once — so a
/// crash half-way returns the whole batch, and no other relay can take an
/// event of it meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_one_transaction_on_postgres() {
    let Some(db) = db().await else { return };
    emit(&db.pool, &[event("a", 1), event("b", 1)]).await;
    let store = PgOutbox::new(db.pool.clone());
    let claim = store.claim("r", 10, Duration::from_secs(30), DeadLetterPolicy::Block).await.unwrap();
    assert_eq!(claim.events.len(), 2);
    let seqs: Vec<i64> = claim.events.iter().map(|e| e.seq).collect();
    assert_eq!(store.mark_published(&seqs[..1], claim.token, false).await.unwrap(), 1);
    assert_eq!(count(&db.pool, "SELECT COUNT(*) FROM spark_outbox").await, 2, "not before the commit");
    let other = store.claim("other", 10, Duration::from_secs(30), DeadLetterPolicy::Block).await.unwrap();
    assert!(other.events.is_empty(), "another relay must not get a claimed event: {other:?}");
    assert!(store.finish(claim.token, true).await.unwrap());
    assert_eq!(count(&db.pool, "SELECT COUNT(*) FROM spark_outbox").await, 1, "only the published one is gone");
    let again = store.claim("other", 10, Duration::from_secs(30), DeadLetterPolicy::Block).await.unwrap();
    assert_eq!(again.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [seqs[1]]);
    assert!(store.finish(again.token, false).await.unwrap());
}

/// A publisher that blocks its thread for `block` on aggregate `slow` (a
/// misbehaving sink client the publish timeout cannot interrupt).
struct Blocking {
    block: Duration,
    rec: crate::common::Recorder,
}

#[async_trait]
impl Publisher for Blocking {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        if event.aggregate_id == "slow" {
            std::thread::sleep(self.block);
        }
        self.rec.events.lock().unwrap().push(event.clone());
        Ok(())
    }
}

/// Point 4: the builder refuses a lease that cannot cover a batch, and an
/// event whose lease is about to lapse is not started but given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_not_started_when_the_lease_is_nearly_over() {
    let Some(db) = db().await else { return };
    let store = PgOutbox::new(db.pool.clone());
    let short = Relay::builder(store.clone())
        .batch_size(4)
        .concurrency(1)
        .publish_timeout(Duration::from_millis(100))
        .lease(Duration::from_millis(599))
        .build();
    assert!(matches!(short, Err(spark_outbox::OutboxError::LeaseTooShort { batch: 4, concurrency: 1, .. })));

    emit(&db.pool, &[event("slow", 1), event("b", 1), event("c", 1), event("d", 1)]).await;
    let relay = Relay::builder(store.clone())
        .batch_size(4)
        .concurrency(1)
        .publish_timeout(Duration::from_millis(100))
        .lease(Duration::from_millis(600))
        .build()
        .unwrap();
    let sink = Blocking { block: Duration::from_millis(550), rec: crate::common::Recorder::default() };
    let batch = relay.run_once(&sink).await.unwrap();
    assert_eq!((batch.published, batch.released), (1, 3), "{batch:?}");
    assert_eq!(count(&db.pool, "SELECT COUNT(*) FROM spark_outbox WHERE locked_until_ms = 0").await, 3);
    let batch = relay.run_once(&sink).await.unwrap();
    assert_eq!(batch.published, 3);
    assert_eq!(count(&db.pool, "SELECT COUNT(*) FROM spark_outbox").await, 0);
}

/// Point 7: leases are on the database's clock: a relay whose clock is a
/// day ahead cannot take a live claim on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_clock_cannot_steal_a_live_lease_on_postgres() {
    let Some(db) = db().await else { return };
    emit(&db.pool, &[event("a", 1)]).await;
    let honest = PgOutbox::new(db.pool.clone());
    let held = honest.claim("honest", 10, Duration::from_secs(30), DeadLetterPolicy::Block).await.unwrap();
    assert_eq!(held.events.len(), 1);
    let ahead =
        PgOutbox::new(db.pool.clone()).with_clock(Arc::new(ManualClock::new(SystemClock.now_ms() + 86_400_000)));
    let stolen = ahead.claim("ahead", 10, Duration::from_secs(30), DeadLetterPolicy::Block).await.unwrap();
    assert!(stolen.events.is_empty(), "the lease is live by the database's clock");
    emit(&db.pool, &[event("b", 1)]).await;
    let fresh = ahead.claim("ahead", 10, Duration::from_secs(30), DeadLetterPolicy::Block).await.unwrap();
    assert_eq!(fresh.events.len(), 1, "free events are still claimed");
}

/// Point 8: a LISTEN whose probe never arrives (the NOTIFY goes to another
/// database, as when a transaction pool drops LISTEN) is reported down and
/// reconnected; a healthy one is up, and comes back after its backend is
/// killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listen_probe_detects_a_dead_listener_and_reconnects() {
    let Some(db) = db().await else { return };
    let Some(elsewhere) = spark_testkit::postgres().await else { return };
    let deaf = Listen::new(db.url.clone())
        .probe_url(elsewhere.url.clone())
        .probe_every(Duration::from_millis(100))
        .probe_timeout(Duration::from_millis(300))
        .spawn(Vec::new());
    let healthy = Listen::new(db.url.clone())
        .probe_every(Duration::from_millis(100))
        .probe_timeout(Duration::from_secs(3))
        .spawn(Vec::new());
    eventually(Duration::from_secs(10), "the deaf listener to reconnect twice", || async { deaf.connects() >= 3 })
        .await;
    assert!(!deaf.is_up());
    eventually(Duration::from_secs(10), "the healthy listener's probe", || async { healthy.is_up() }).await;
    assert_eq!(healthy.connects(), 1);
    deaf.stop();
    eventually(Duration::from_secs(10), "the deaf listener's connection to close", || async {
        count(
            &db.pool,
            "SELECT COUNT(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%' AND datname = current_database()",
        )
        .await
            == 1
    })
    .await;

    let killed = count(
        &db.pool,
        "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%' AND datname = current_database()",
    )
    .await;
    assert_eq!(killed, 1);
    eventually(Duration::from_secs(10), "the listener to notice", || async { !healthy.is_up() }).await;
    eventually(Duration::from_secs(10), "the listener to come back", || async {
        healthy.is_up() && healthy.connects() == 2
    })
    .await;
}

/// Point 9: each relay asks its sink, before the first claim, whether it can
/// absorb a redelivery a lease plus a backoff cap after the first delivery.
#[tokio::test]
async fn the_relay_asks_the_sink_to_cover_lease_plus_backoff_cap() {
    #[derive(Clone, Default)]
    struct Asked(Arc<std::sync::Mutex<Vec<Duration>>>);
    #[async_trait]
    impl Publisher for Asked {
        async fn publish(&self, _: &Event) -> Result<(), PublishError> {
            Ok(())
        }
        async fn preflight(&self, redelivery: Duration) -> Option<String> {
            self.0.lock().unwrap().push(redelivery);
            Some("window too short".to_owned())
        }
    }
    let db = spark_testkit::sqlite().await;
    spark_outbox::sqlite::migrator().run(&db.pool).await.unwrap();
    let asked = Asked::default();
    let relay = Relay::builder(SqliteOutbox::new(db.pool.clone()))
        .lease(Duration::from_secs(90))
        .backoff(Duration::from_millis(500), Duration::from_secs(120))
        .build()
        .unwrap();
    assert_eq!(relay.redelivery_window(), Duration::from_secs(210));
    let handle = relay.spawn(asked.clone());
    eventually(Duration::from_secs(10), "the preflight", || async { !asked.0.lock().unwrap().is_empty() }).await;
    // A warning, not a stop: the relay keeps running.
    handle.shutdown().await.unwrap();
    assert_eq!(*asked.0.lock().unwrap(), [Duration::from_secs(210)]);
}

/// A loopback TCP proxy to the database of `url` that can be frozen: it then
/// keeps its connections open and forwards nothing, like a network path that
/// died silently. Returns the URL through it and the switch.
async fn freezable_proxy(url: &str) -> (String, Arc<AtomicBool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (head, rest) = url.split_once('@').unwrap();
    let (target, path) = rest.split_once('/').unwrap();
    let target = target.to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let through = format!("{head}@{}/{path}", listener.local_addr().unwrap());
    let frozen = Arc::new(AtomicBool::new(false));
    let switch = frozen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&target).await else { continue };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut from, mut to) in [(cr, sw), (sr, cw)] {
                let frozen = frozen.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    loop {
                        let n = match from.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        // Held, not dropped, for at most a minute.
                        for _ in 0..3000 {
                            if !frozen.load(Ordering::SeqCst) {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        if to.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (through, switch)
}

/// The probe is what notices a silent failure, so it must not hang on one
/// itself: a probe connection that stops answering counts as a failed probe
/// (health down) instead of stopping the probes for good with the health
/// stuck at "up".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_connection_that_stops_answering_is_noticed() {
    let Some(db) = db().await else { return };
    let (through, frozen) = freezable_proxy(&db.url).await;
    let listener = Listen::new(db.url.clone())
        .probe_url(through)
        .probe_every(Duration::from_millis(100))
        .probe_timeout(Duration::from_millis(500))
        .spawn(Vec::new());
    eventually(Duration::from_secs(10), "the listener's first probe", || async { listener.is_up() }).await;
    frozen.store(true, Ordering::SeqCst);
    eventually(Duration::from_secs(10), "the hung probe to count as failed", || async { !listener.is_up() }).await;
    frozen.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(10), "the probe to pass again", || async { listener.is_up() }).await;
    listener.stop();
}

/// The rows of an outbox written before the upgrade: a dead letter `old#1`
/// that (back then) held nothing back, and `old#2` behind it, pending.
const BEFORE_THE_UPGRADE: [&str; 2] = [
    "INSERT INTO spark_outbox (id, aggregate_type, aggregate_id, event_type, payload, headers,
                               created_at_ms, available_at_ms, status, attempts, last_error)
     VALUES ('0190a5b2-0000-7000-8000-000000000001', 'order', 'old', 'order.accepted', '{\"n\": 1}', '{}',
             0, 0, 'dead', 5, '400 Bad Request')",
    "INSERT INTO spark_outbox (id, aggregate_type, aggregate_id, event_type, payload, headers,
                               created_at_ms, available_at_ms)
     VALUES ('0190a5b2-0000-7000-8000-000000000002', 'order', 'old', 'order.accepted', '{\"n\": 2}', '{}', 0, 0)",
];

/// The first migration alone: the schema before the relay hardening.
fn first_migration(m: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    let mut first = m;
    first.migrations = first.migrations[..1].to_vec().into();
    first
}

/// After the upgrade, a dead letter written back then (when dead letters did
/// not block) must not stop its aggregate: old#2 was flowing and goes on.
/// One written since (new#1) still blocks new#2.
async fn old_dead_letters_do_not_block<S: OutboxStore + Clone>(store: S) {
    let sink = Scripted::new(refuse("new", 1));
    let relay = Relay::builder(store.clone()).max_permanent_attempts(1).build().unwrap();
    drain(&relay, &sink, 3).await;
    assert_eq!(sink.rec.sequence("old"), [2], "old#2 was flowing before the upgrade");
    assert!(sink.rec.sequence("new").is_empty(), "new#2 waits behind the new dead letter");
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 2);
    assert!(dead[0].skipped_by.as_deref().is_some_and(|b| b.starts_with("migration")), "{dead:?}");
    assert_eq!((dead[1].skipped_by.as_deref(), dead[1].blocked), (None, 1), "{dead:?}");
}

#[tokio::test]
async fn old_dead_letters_do_not_block_after_the_upgrade_on_sqlite() {
    let db = spark_testkit::sqlite().await;
    first_migration(spark_outbox::sqlite::migrator()).run(&db.pool).await.unwrap();
    for sql in BEFORE_THE_UPGRADE {
        sqlx::query(sql).execute(&db.pool).await.unwrap();
    }
    spark_outbox::sqlite::migrator().run(&db.pool).await.unwrap();
    for k in 1..=2 {
        let mut tx = db.pool.begin().await.unwrap();
        spark_outbox::sqlite::enqueue(&mut tx, &event("new", k)).await.unwrap();
        tx.commit().await.unwrap();
    }
    old_dead_letters_do_not_block(SqliteOutbox::new(db.pool.clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_dead_letters_do_not_block_after_the_upgrade_on_postgres() {
    let Some(db) = spark_testkit::postgres().await else { return };
    first_migration(spark_outbox::postgres::migrator()).run(&db.pool).await.unwrap();
    for sql in BEFORE_THE_UPGRADE {
        sqlx::query(sql).execute(&db.pool).await.unwrap();
    }
    spark_outbox::postgres::migrator().run(&db.pool).await.unwrap();
    emit(&db.pool, &[event("new", 1), event("new", 2)]).await;
    old_dead_letters_do_not_block(PgOutbox::new(db.pool.clone())).await;
}
