//! The relay's guarantees, on both backends: dead letters hold their
//! aggregate, transient failures are bounded by time, completions are
//! fenced by the claim, unreadable rows and panicking publishers do not
//! wedge the queue, a batch never outlives its lease, and the sink is asked
//! to cover redeliveries. What only one backend does is in `postgres.rs`
//! and `sqlite.rs`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use spark_db::{Clock, ManualClock, SystemClock};
use spark_outbox::{DeadLetter, DeadLetterPolicy, Event, OutboxStore, PublishError, Publisher, Relay};

use crate::common::{Scripted, eventually, n};
use crate::suite::{Backend, Pg, Sqlite, drain, event};

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

/// A transient failure for every event (the sink is down).
fn down(_: &Event) -> Result<(), PublishError> {
    Err(PublishError::Transient("503 Service Unavailable".into()))
}

/// Point 2: a dead letter holds back the rest of its aggregate until it is
/// retried (order holds) or skipped on purpose (recorded).
async fn dead_letter_blocks_its_aggregate_until_retried_or_skipped<B: Backend>(b: B) {
    let store = b.store();
    b.emit(&[event("a", 1), event("a", 2), event("b", 1)]).await;
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
    b.emit(&[event("a", 3), event("a", 4)]).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_blocks_its_aggregate_until_retried_or_skipped_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    dead_letter_blocks_its_aggregate_until_retried_or_skipped(b).await;
}

#[tokio::test]
async fn dead_letter_blocks_its_aggregate_until_retried_or_skipped_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    dead_letter_blocks_its_aggregate_until_retried_or_skipped(b).await;
}

/// Point 2: `DeadLetterPolicy::Skip` is the explicit opt-in to the old
/// behaviour.
async fn skip_policy_lets_the_aggregate_go_on<B: Backend>(b: B) {
    b.emit(&[event("c", 1), event("c", 2)]).await;
    let store = b.store();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_policy_lets_the_aggregate_go_on_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    skip_policy_lets_the_aggregate_go_on(b).await;
}

#[tokio::test]
async fn skip_policy_lets_the_aggregate_go_on_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    skip_policy_lets_the_aggregate_go_on(b).await;
}

/// Point 3: a 90-second sink outage dead-letters nothing and uses up none
/// of the events' retry budget; the backlog drains in order afterwards.
async fn ninety_second_outage_dead_letters_nothing<B: Backend>(b: B) {
    let events: Vec<_> = (0..20).flat_map(|a| (1..=2).map(move |k| event(&format!("agg{a}"), k))).collect();
    b.emit(&events).await;
    let clock = ManualClock::new(SystemClock.now_ms());
    let store = b.store_with_clock(&clock);
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
    let attempts = b.count("SELECT CAST(MAX(attempts) AS BIGINT) FROM spark_outbox").await;
    assert_eq!(attempts, 0, "the outage is the relay's");

    sink.set(accept);
    clock.advance(Duration::from_secs(300)); // at most the backoff cap
    drain(&relay, &sink, 5).await;
    for a in 0..20 {
        assert_eq!(sink.rec.sequence(&format!("agg{a}")), [1, 2]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ninety_second_outage_dead_letters_nothing_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    ninety_second_outage_dead_letters_nothing(b).await;
}

#[tokio::test]
async fn ninety_second_outage_dead_letters_nothing_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    ninety_second_outage_dead_letters_nothing(b).await;
}

/// Two heads that fail transiently by themselves (not the sink) look like
/// an outage. Given back as they were, they would be the next claim's oldest
/// heads again, batch after batch, and every aggregate behind them would
/// wait forever.
async fn whole_batch_failure_does_not_stall_the_others<B: Backend>(b: B) {
    b.emit(&[event("a", 1), event("b", 1), event("c", 1)]).await;
    let clock = ManualClock::new(SystemClock.now_ms());
    let store = b.store_with_clock(&clock);
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
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_outbox").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_batch_failure_does_not_stall_the_others_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    whole_batch_failure_does_not_stall_the_others(b).await;
}

#[tokio::test]
async fn whole_batch_failure_does_not_stall_the_others_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    whole_batch_failure_does_not_stall_the_others(b).await;
}

/// Point 3: an event that keeps failing transiently is retried for the
/// 24-hour budget — far more than a small count — and then dead-lettered.
async fn transient_failure_beyond_the_budget_is_dead_lettered<B: Backend>(b: B) {
    b.emit(&[event("flaky", 1)]).await;
    let clock = ManualClock::new(SystemClock.now_ms());
    let store = b.store_with_clock(&clock);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failure_beyond_the_budget_is_dead_lettered_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    transient_failure_beyond_the_budget_is_dead_lettered(b).await;
}

#[tokio::test]
async fn transient_failure_beyond_the_budget_is_dead_lettered_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    transient_failure_beyond_the_budget_is_dead_lettered(b).await;
}

/// Refusals are counted apart from transient failures: an event that failed
/// transiently through an outage still gets its three tries when the
/// receiver, mid-deploy, refuses it once — instead of becoming a dead letter
/// (which holds its aggregate) on the first refusal.
async fn transient_failures_do_not_use_up_the_refusals<B: Backend>(b: B) {
    b.emit(&[event("a", 1)]).await;
    let clock = ManualClock::new(SystemClock.now_ms());
    let store = b.store_with_clock(&clock);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_do_not_use_up_the_refusals_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    transient_failures_do_not_use_up_the_refusals(b).await;
}

#[tokio::test]
async fn transient_failures_do_not_use_up_the_refusals_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    transient_failures_do_not_use_up_the_refusals(b).await;
}

/// Point 3: a claim that ends without a failure (released, or its lease ran
/// out) is not an attempt.
async fn a_claim_without_a_failure_is_not_an_attempt<B: Backend>(b: B) {
    let store = b.store();
    b.emit(&[event("a", 1)]).await;
    let first = store.claim("r", 10, Duration::from_secs(30), DeadLetterPolicy::Block).await.unwrap();
    assert_eq!(store.release(&[first.events[0].seq], first.token).await.unwrap(), 1);
    assert!(store.finish(first.token, true).await.unwrap());
    let second = store.claim("r", 10, Duration::from_millis(200), DeadLetterPolicy::Block).await.unwrap();
    assert_eq!(second.events[0].attempts, 0);
    tokio::time::sleep(Duration::from_millis(400)).await; // the lease lapses
    let third = store.claim("r", 10, Duration::from_secs(30), DeadLetterPolicy::Block).await.unwrap();
    assert_eq!(third.events[0].attempts, 0);
    // Where marks wait for `finish`, that is where the lapsed claim is
    // refused; where they are immediate, each mark is fenced by itself.
    assert_eq!(store.finish(second.token, true).await.unwrap(), !B::MARKS_AT_FINISH, "the lapsed claim is lost");
    assert_eq!(store.mark_published(&[third.events[0].seq], third.token, false).await.unwrap(), 1);
    assert!(store.finish(third.token, true).await.unwrap());
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_outbox").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_without_a_failure_is_not_an_attempt_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    a_claim_without_a_failure_is_not_an_attempt(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_without_a_failure_is_not_an_attempt_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    a_claim_without_a_failure_is_not_an_attempt(b).await;
}

/// Point 5: relay A claims, its lease lapses, relay B — with the same name —
/// claims again; A's late completions change nothing. On PostgreSQL the
/// database itself ends A's transaction when its lease lapses
/// (`idle_in_transaction_session_timeout`), so A's commit fails; on SQLite
/// each of A's marks is refused by the claim token B's claim replaced.
async fn a_late_completion_after_a_reclaim_changes_nothing<B: Backend>(b: B) {
    let store = b.store();
    b.emit(&[event("a", 1)]).await;
    let a = store.claim("twin", 10, Duration::from_millis(200), DeadLetterPolicy::Block).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let bb = store.claim("twin", 10, Duration::from_secs(30), DeadLetterPolicy::Block).await.unwrap();
    let seq = a.events[0].seq;
    assert_eq!(bb.events[0].seq, seq);
    assert_ne!(a.token, bb.token);

    let failure = spark_outbox::Failure::Dead;
    assert_eq!(store.mark_failed(seq, a.token, "late", failure).await.unwrap(), None, "A no longer holds it");
    assert_eq!(store.mark_published(&[seq], a.token, false).await.unwrap(), 0);
    assert_eq!(store.release(&[seq], a.token).await.unwrap(), 0);
    assert_eq!(store.finish(a.token, true).await.unwrap(), !B::MARKS_AT_FINISH, "A's commit is refused");
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_outbox WHERE status = 'pending'").await, 1, "still B's");
    assert_eq!(store.mark_published(&[seq], bb.token, false).await.unwrap(), 1);
    assert!(store.finish(bb.token, true).await.unwrap());
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_outbox").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_completion_after_a_reclaim_changes_nothing_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    a_late_completion_after_a_reclaim_changes_nothing(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_completion_after_a_reclaim_changes_nothing_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    a_late_completion_after_a_reclaim_changes_nothing(b).await;
}

/// Point 6: a row that cannot be decoded (`bad_row`, aggregate `x`) is
/// dead-lettered with the error, which mentions `what`; other aggregates go
/// on.
async fn an_unreadable_row_is_dead_lettered<B: Backend>(b: B, bad_row: &str, what: &str) -> Vec<DeadLetter> {
    b.execute(bad_row).await;
    b.emit(&[event("y", 1)]).await;
    let store = b.store();
    let sink = Scripted::new(accept);
    let relay = Relay::builder(store.clone()).build().unwrap();
    let batch = relay.run_once(&sink).await.unwrap();
    assert_eq!((batch.claimed, batch.published, batch.dead), (2, 1, 1));
    assert_eq!(sink.rec.sequence("y"), [1]);
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event.aggregate_id, "x");
    assert!(dead[0].last_error.as_deref().unwrap().contains(what), "{dead:?}");
    dead
}

/// Headers that are not a map of strings: the one way a row can be
/// unreadable on both backends.
const BAD_HEADERS: &str = "INSERT INTO spark_outbox (id, aggregate_type, aggregate_id, event_type, payload, headers, created_at_ms, available_at_ms)
     VALUES ('0190a5b2-0000-7000-8000-000000000001', 'order', 'x', 'order.accepted', '{\"n\": 1}', '{\"k\": 1}', 0, 0)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_row_is_dead_lettered_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    an_unreadable_row_is_dead_lettered(b, BAD_HEADERS, "headers").await;
}

#[tokio::test]
async fn an_unreadable_row_is_dead_lettered_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    an_unreadable_row_is_dead_lettered(b, BAD_HEADERS, "headers").await;
}

/// A payload that is not JSON: possible only on SQLite (PostgreSQL's
/// `jsonb` column refuses it); listed with its raw text.
#[tokio::test]
async fn an_unreadable_payload_is_dead_lettered_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    let bad = BAD_HEADERS.replace("'{\"n\": 1}', '{\"k\": 1}'", "'not json', '{}'");
    let dead = an_unreadable_row_is_dead_lettered(b, &bad, "payload").await;
    assert_eq!(dead[0].event.payload, "not json");
}

/// Point 6: a publisher that panics is a failed attempt; the relay goes on.
async fn a_panicking_publisher_is_a_failure_and_the_relay_goes_on<B: Backend>(b: B) {
    b.emit(&[event("boom", 1), event("fine", 1)]).await;
    let store = b.store();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_publisher_is_a_failure_and_the_relay_goes_on_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    a_panicking_publisher_is_a_failure_and_the_relay_goes_on(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_publisher_is_a_failure_and_the_relay_goes_on_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    a_panicking_publisher_is_a_failure_and_the_relay_goes_on(b).await;
}

/// Point 6/24: a relay task that dies (here: the schema is missing) is
/// reported by the runner instead of leaving the process running idle.
async fn the_runner_reports_a_relay_that_died<B: Backend>(b: B) {
    let mut relays = Relay::builder(b.store()).id("lonely").spawn(spark_outbox::NullPublisher).unwrap();
    tokio::time::timeout(Duration::from_secs(10), relays.died()).await.expect("the relay to die");
    let err = relays.shutdown().await.unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("outbox relay lonely died: ") && text.contains("spark_outbox"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_reports_a_relay_that_died_on_postgres() {
    let Some(b) = Pg::open_unmigrated().await else { return };
    the_runner_reports_a_relay_that_died(b).await;
}

#[tokio::test]
async fn the_runner_reports_a_relay_that_died_on_sqlite() {
    let Some(b) = Sqlite::open_unmigrated().await else { return };
    the_runner_reports_a_relay_that_died(b).await;
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
/// event whose lease is about to lapse is not started but given back: the
/// next claim, before the lease would have lapsed, publishes it.
async fn an_event_is_not_started_when_the_lease_is_nearly_over<B: Backend>(b: B) {
    let store = b.store();
    let short = Relay::builder(store.clone())
        .batch_size(4)
        .concurrency(1)
        .publish_timeout(Duration::from_millis(100))
        .lease(Duration::from_millis(599))
        .build();
    assert!(matches!(short, Err(spark_outbox::OutboxError::LeaseTooShort { batch: 4, concurrency: 1, .. })));

    b.emit(&[event("slow", 1), event("b", 1), event("c", 1), event("d", 1)]).await;
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
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_outbox").await, 3);
    let batch = relay.run_once(&sink).await.unwrap();
    assert_eq!(batch.published, 3);
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_outbox").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_not_started_when_the_lease_is_nearly_over_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    an_event_is_not_started_when_the_lease_is_nearly_over(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_not_started_when_the_lease_is_nearly_over_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    an_event_is_not_started_when_the_lease_is_nearly_over(b).await;
}

/// Point 9: each relay asks its sink, before the first claim, whether it can
/// absorb a redelivery a lease plus a backoff cap after the first delivery.
async fn the_relay_asks_the_sink_to_cover_lease_plus_backoff_cap<B: Backend>(b: B) {
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
    let asked = Asked::default();
    let relay = Relay::builder(b.store())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_asks_the_sink_to_cover_lease_plus_backoff_cap_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    the_relay_asks_the_sink_to_cover_lease_plus_backoff_cap(b).await;
}

#[tokio::test]
async fn the_relay_asks_the_sink_to_cover_lease_plus_backoff_cap_on_sqlite() {
    let Some(b) = Sqlite::open().await else { return };
    the_relay_asks_the_sink_to_cover_lease_plus_backoff_cap(b).await;
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

/// After the upgrade, a dead letter written back then (when dead letters did
/// not block) must not stop its aggregate: old#2 was flowing and goes on.
/// One written since (new#1) still blocks new#2.
async fn old_dead_letters_do_not_block_after_the_upgrade<B: Backend>(b: B) {
    for sql in BEFORE_THE_UPGRADE {
        b.execute(sql).await;
    }
    b.migrate().await;
    b.emit(&[event("new", 1), event("new", 2)]).await;
    let store = b.store();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_dead_letters_do_not_block_after_the_upgrade_on_postgres() {
    let Some(b) = Pg::open_at_first_migration().await else { return };
    old_dead_letters_do_not_block_after_the_upgrade(b).await;
}

#[tokio::test]
async fn old_dead_letters_do_not_block_after_the_upgrade_on_sqlite() {
    let Some(b) = Sqlite::open_at_first_migration().await else { return };
    old_dead_letters_do_not_block_after_the_upgrade(b).await;
}
