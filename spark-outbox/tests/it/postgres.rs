//! What only PostgreSQL does, beside the shared scenarios (`suite.rs`):
//! writers that commit out of id order (SQLite serializes writers, so its
//! insertion order is its commit order by construction), a batch that is
//! one transaction, leases on the database's clock, and the LISTEN
//! connection that checks itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use spark_db::{Clock, ManualClock, SystemClock};
use spark_outbox::postgres::Listen;
use spark_outbox::{DeadLetterPolicy, OutboxStore, Relay};

use crate::common::{Recorder, eventually};
use crate::suite::{Backend, Pg, event};

/// Scenario 4: transactions that commit out of id order: nothing is skipped and
/// per-aggregate order holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_commits_skip_nothing() {
    let Some(b) = Pg::open().await else { return };
    let relay = Relay::builder(b.store()).build().unwrap();
    let rec = Recorder::default();

    // T1 writes A#1 and stays open; T2 writes B#1 and commits first.
    let mut t1 = b.pool().begin().await.unwrap();
    spark_outbox::postgres::enqueue(&mut t1, &event("A", 1)).await.unwrap();
    b.emit(&[event("B", 1)]).await;
    relay.run_once(&rec).await.unwrap();
    assert_eq!(rec.sequence("B"), [1]);
    assert!(rec.sequence("A").is_empty());

    // T3 writes A#2 while T1 is open: it waits for T1 (same aggregate), so
    // A#2 commits after A#1 whatever the timing.
    let pool = b.pool().clone();
    let t3 = tokio::spawn(async move {
        let mut tx = pool.begin().await.unwrap();
        spark_outbox::postgres::enqueue(&mut tx, &event("A", 2)).await.unwrap();
        tx.commit().await.unwrap();
    });
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

/// Scenario 7: the LISTEN connection is killed: delivery continues by polling, then
/// by NOTIFY again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_connection_killed_then_back() {
    let Some(b) = Pg::open().await else { return };
    let rec = Recorder::default();
    // Polls only every 4 s: quick delivery means NOTIFY.
    let relay = Relay::builder(b.store())
        .poll_interval(Duration::from_secs(4))
        .listen(b.0.url.clone())
        .spawn(rec.clone())
        .unwrap();
    let listening = || async {
        b.count("SELECT COUNT(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%' AND datname = current_database()")
            .await
            == 1
    };
    eventually(Duration::from_secs(5), "the listener", listening).await;
    eventually(Duration::from_secs(5), "the listener's first probe", || async { relay.listening() }).await;

    let t = Instant::now();
    b.emit(&[event("a", 1)]).await;
    eventually(Duration::from_secs(2), "delivery by NOTIFY", || async { rec.len() == 1 }).await;
    assert!(t.elapsed() < Duration::from_secs(2));

    let killed = b.count(
        "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%' AND datname = current_database()",
    )
    .await;
    assert_eq!(killed, 1);
    b.emit(&[event("a", 2)]).await;
    eventually(Duration::from_secs(10), "delivery while the listener is down", || async { rec.len() == 2 }).await;

    eventually(Duration::from_secs(10), "the listener to come back", listening).await;
    let t = Instant::now();
    b.emit(&[event("a", 3)]).await;
    eventually(Duration::from_secs(3), "delivery by NOTIFY again", || async { rec.len() == 3 }).await;
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(rec.sequence("a"), [1, 2, 3]);
    relay.shutdown().await.unwrap();
}

/// On PostgreSQL a batch is one transaction: nothing is deleted until every
/// event of it was tried, and then all published events at once — so a
/// crash half-way returns the whole batch, and no other relay can take an
/// event of it meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_one_transaction_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    b.emit(&[event("a", 1), event("b", 1)]).await;
    let store = b.store();
    let claim = store.claim("r", 10, Duration::from_secs(30), DeadLetterPolicy::Block).await.unwrap();
    assert_eq!(claim.events.len(), 2);
    let seqs: Vec<i64> = claim.events.iter().map(|e| e.seq).collect();
    assert_eq!(store.mark_published(&seqs[..1], claim.token, false).await.unwrap(), 1);
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_outbox").await, 2, "not before the commit");
    let other = store.claim("other", 10, Duration::from_secs(30), DeadLetterPolicy::Block).await.unwrap();
    assert!(other.events.is_empty(), "another relay must not get a claimed event: {other:?}");
    assert!(store.finish(claim.token, true).await.unwrap());
    assert_eq!(b.count("SELECT COUNT(*) FROM spark_outbox").await, 1, "only the published one is gone");
    let again = store.claim("other", 10, Duration::from_secs(30), DeadLetterPolicy::Block).await.unwrap();
    assert_eq!(again.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [seqs[1]]);
    assert!(store.finish(again.token, false).await.unwrap());
}

/// Point 7: leases are on the database's clock: a relay whose clock is a
/// day ahead cannot take a live claim on PostgreSQL. SQLite's leases are on
/// the store's clock by design (it runs one relay, so there is one clock):
/// a store a day ahead would take the claim there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_clock_cannot_steal_a_live_lease_on_postgres() {
    let Some(b) = Pg::open().await else { return };
    b.emit(&[event("a", 1)]).await;
    let honest = b.store();
    let held = honest.claim("honest", 10, Duration::from_secs(30), DeadLetterPolicy::Block).await.unwrap();
    assert_eq!(held.events.len(), 1);
    let ahead = b.store_with_clock(&ManualClock::new(SystemClock.now_ms() + 86_400_000));
    let stolen = ahead.claim("ahead", 10, Duration::from_secs(30), DeadLetterPolicy::Block).await.unwrap();
    assert!(stolen.events.is_empty(), "the lease is live by the database's clock");
    b.emit(&[event("b", 1)]).await;
    let fresh = ahead.claim("ahead", 10, Duration::from_secs(30), DeadLetterPolicy::Block).await.unwrap();
    assert_eq!(fresh.events.len(), 1, "free events are still claimed");
}

/// Point 8: a LISTEN whose probe never arrives (the NOTIFY goes to another
/// database, as when a transaction pool drops LISTEN) is reported down and
/// reconnected; a healthy one is up, and comes back after its backend is
/// killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listen_probe_detects_a_dead_listener_and_reconnects() {
    let Some(b) = Pg::open().await else { return };
    let Some(elsewhere) = spark_testkit::postgres().await else { return };
    let deaf = Listen::new(b.0.url.clone())
        .probe_url(elsewhere.url.clone())
        .probe_every(Duration::from_millis(100))
        .probe_timeout(Duration::from_millis(300))
        .spawn(Vec::new());
    let healthy = Listen::new(b.0.url.clone())
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
        b.count("SELECT COUNT(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%' AND datname = current_database()")
            .await
            == 1
    })
    .await;

    let killed = b.count(
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
    let Some(b) = Pg::open().await else { return };
    let (through, frozen) = freezable_proxy(&b.0.url).await;
    let listener = Listen::new(b.0.url.clone())
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
