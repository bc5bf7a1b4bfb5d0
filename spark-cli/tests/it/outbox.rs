//! `spark outbox relay|stats|dead-letters|retry|skip` as a real process.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use spark_outbox::OutboxEvent;

use crate::spark;

#[derive(Clone, Default)]
struct Hook {
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    ids: Arc<Mutex<Vec<String>>>,
}

async fn hook() -> (Hook, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let h = Hook::default();
    h.status.store(200, Ordering::SeqCst);
    let app = axum::Router::new()
        .route(
            "/hook",
            post(|State(h): State<Hook>, headers: axum::http::HeaderMap| async move {
                tokio::time::sleep(Duration::from_millis(h.delay_ms.load(Ordering::SeqCst))).await;
                let status = h.status.load(Ordering::SeqCst);
                if status == 200 {
                    h.ids.lock().unwrap().push(headers["idempotency-key"].to_str().unwrap().to_owned());
                }
                StatusCode::from_u16(status).unwrap()
            }),
        )
        .with_state(h.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (h, url)
}

fn relay(db_url: &str, hook_url: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_spark"))
        .args(["outbox", "relay", "--sink", "webhook", "--url", hook_url, "--database-url", db_url, "--json"])
        .args(["--poll-interval-ms", "100", "--batch", "10", "--concurrency", "10"])
        .args(["--publish-timeout-ms", "500", "--lease-secs", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn wait_for(limit: Duration, what: &str, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn event(n: i64) -> OutboxEvent {
    OutboxEvent::new("order", format!("o{n}"), "order.accepted", serde_json::json!({ "n": n }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_survives_sigkill_and_stops_on_sigterm() {
    let Some(db) = spark_testkit::postgres().await else { return };
    assert_eq!(spark(&["db", "migrate", "--database-url", &db.url]).code, 0);
    let mut ids = Vec::new();
    for n in 0..10 {
        let mut tx = db.pool.begin().await.unwrap();
        ids.push(spark_outbox::postgres::enqueue(&mut tx, &event(n)).await.unwrap().to_string());
        tx.commit().await.unwrap();
    }
    let (h, url) = hook().await;
    // The first relay claims everything, then hangs on a slow sink and is SIGKILLed.
    h.delay_ms.store(60_000, Ordering::SeqCst);
    let mut doomed = relay(&db.url, &url);
    let pool = db.pool.clone();
    let start = Instant::now();
    loop {
        // Every event is row-locked by the first relay's claim (a row lock
        // sets the row's xmax; reading it takes no lock of our own).
        let locked: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM spark_outbox WHERE xmax::text <> '0'")
            .fetch_one(&pool)
            .await
            .unwrap();
        if locked == 10 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the first relay never claimed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    doomed.kill().unwrap(); // SIGKILL
    doomed.wait().unwrap();

    h.delay_ms.store(0, Ordering::SeqCst);
    let survivor = relay(&db.url, &url);
    wait_for(Duration::from_secs(15), "every event after the lease", || {
        let got = h.ids.lock().unwrap();
        ids.iter().all(|id| got.contains(id))
    })
    .await;
    let stats = spark(&["outbox", "stats", "--database-url", &db.url, "--json"]);
    assert_eq!(stats.json()["pending"], 0);

    // SIGTERM: a graceful stop with a report.
    Command::new("kill").args(["-TERM", &survivor.id().to_string()]).status().unwrap();
    let out = survivor.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["published"].as_u64().unwrap() >= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_and_retry_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("o.db").display());
    assert_eq!(spark(&["db", "migrate", "--database-url", &url]).code, 0);
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let id = spark_outbox::sqlite::enqueue(&mut tx, &event(1)).await.unwrap().to_string();
    tx.commit().await.unwrap();
    pool.close().await;

    let (h, hook_url) = hook().await;
    h.status.store(400, Ordering::SeqCst);
    let mut r = relay(&url, &hook_url);
    let db = url.clone();
    wait_for(Duration::from_secs(20), "a dead letter", move || {
        spark(&["outbox", "stats", "--database-url", &db, "--json"]).json()["dead"] == 1
    })
    .await;
    let dead = spark(&["outbox", "dead-letters", "--database-url", &url, "--json"]);
    let v = dead.json();
    assert_eq!(v["dead_letters"][0]["id"], id);
    assert_eq!(v["dead_letters"][0]["attempts"], 3);
    assert!(v["dead_letters"][0]["last_error"].as_str().unwrap().contains("400"));

    let missing = spark(&["outbox", "retry", &uuid::Uuid::now_v7().to_string(), "--database-url", &url]);
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert_eq!(spark(&["outbox", "retry", "--database-url", &url]).code, 2, "an id or --all is required");

    h.status.store(200, Ordering::SeqCst);
    let retried = spark(&["outbox", "retry", &id, "--database-url", &url, "--json"]);
    assert_eq!(retried.json()["requeued"], 1);
    wait_for(Duration::from_secs(10), "the replayed event", || h.ids.lock().unwrap().contains(&id)).await;
    r.kill().unwrap();
    r.wait().unwrap();
}

async fn enqueue_sqlite(url: &str, events: &[OutboxEvent]) -> Vec<String> {
    let pool = sqlx::SqlitePool::connect(url).await.unwrap();
    let mut ids = Vec::new();
    for e in events {
        let mut tx = pool.begin().await.unwrap();
        ids.push(spark_outbox::sqlite::enqueue(&mut tx, e).await.unwrap().to_string());
        tx.commit().await.unwrap();
    }
    pool.close().await;
    ids
}

fn in_aggregate(aggregate: &str, n: i64) -> OutboxEvent {
    OutboxEvent::new("order", aggregate, "order.accepted", serde_json::json!({ "n": n }))
}

/// A dead letter holds back its aggregate; `retry --all` sends it and the
/// event behind it in order; `skip` releases the aggregate and is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_block_until_retried_or_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("o.db").display());
    assert_eq!(spark(&["db", "migrate", "--database-url", &url]).code, 0);
    let a = enqueue_sqlite(&url, &[in_aggregate("a", 1), in_aggregate("a", 2)]).await;

    let (h, hook_url) = hook().await;
    h.status.store(400, Ordering::SeqCst);
    let mut r = relay(&url, &hook_url);
    let dead_count = |n: i64| {
        let url = url.clone();
        move || spark(&["outbox", "stats", "--database-url", &url, "--json"]).json()["dead"] == n
    };
    wait_for(Duration::from_secs(20), "a#1 to be a dead letter", dead_count(1)).await;
    let listed = spark(&["outbox", "dead-letters", "--database-url", &url, "--json"]).json();
    assert_eq!(listed["dead_letters"][0]["id"], a[0]);
    assert_eq!(listed["dead_letters"][0]["blocked"], 1);
    let text = spark(&["outbox", "dead-letters", "--database-url", &url]);
    assert!(text.stdout.contains("BLOCKS 1 event(s)"), "{}", text.stdout);

    // The sink is fixed, but a#2 must not overtake the dead a#1: fifteen
    // polls later it is still waiting.
    h.status.store(200, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(h.ids.lock().unwrap().is_empty(), "a#2 went out while a#1 was dead");
    let retried = spark(&["outbox", "retry", "--all", "--database-url", &url, "--json"]);
    assert_eq!(retried.json()["requeued"], 1);
    wait_for(Duration::from_secs(10), "a#1 and a#2", || h.ids.lock().unwrap().len() == 2).await;
    assert_eq!(*h.ids.lock().unwrap(), a, "in order");

    // Skip: b#2 goes on without b#1, and who did it is recorded.
    h.status.store(400, Ordering::SeqCst);
    let b = enqueue_sqlite(&url, &[in_aggregate("b", 1), in_aggregate("b", 2)]).await;
    wait_for(Duration::from_secs(20), "b#1 to be a dead letter", dead_count(1)).await;
    h.status.store(200, Ordering::SeqCst);
    let skipped =
        crate::spark_with(&["outbox", "skip", &b[0], "--database-url", &url, "--json"], None, &[("USER", "carol")]);
    assert_eq!(skipped.code, 0, "{}", skipped.stderr);
    assert_eq!(skipped.json()["by"], "carol");
    wait_for(Duration::from_secs(10), "b#2", || h.ids.lock().unwrap().contains(&b[1])).await;
    assert!(!h.ids.lock().unwrap().contains(&b[0]));
    let listed = spark(&["outbox", "dead-letters", "--database-url", &url, "--json"]).json();
    assert_eq!(listed["dead_letters"][0]["id"], b[0]);
    assert_eq!(listed["dead_letters"][0]["skipped_by"], "carol");
    assert!(listed["dead_letters"][0]["skipped_at_ms"].as_i64().is_some());
    let again = spark(&["outbox", "skip", &b[0], "--by", "dave", "--database-url", &url]);
    assert_eq!(again.code, 2, "already skipped: {}", again.stderr);
    r.kill().unwrap();
    r.wait().unwrap();
}

/// A relay task that dies takes the process down with a non-zero exit and
/// the reason, instead of leaving it running idle.
#[test]
fn relay_exits_non_zero_when_a_relay_dies() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("unmigrated.db").display());
    let run = spark(&["outbox", "relay", "--sink", "null", "--database-url", &url, "--poll-interval-ms", "50"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("died") && run.stderr.contains("no such table"), "{}", run.stderr);
}

/// `spark bench outbox` drains the whole backlog (it waits on the sink's
/// acknowledgements, then confirms the table is empty) and measures lag, on
/// the embedded backend with no server.
#[test]
fn bench_outbox_drains_every_event_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let run = spark(&[
        "bench",
        "outbox",
        "--database-url",
        &url,
        "--events",
        "300",
        "--aggregates",
        "30",
        "--relays",
        "1",
        "--rate",
        "50",
        "--steady-seconds",
        "1",
        "--json",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["events"], 300);
    assert!(report["publish_events_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(report["steady_events"], 50, "{report}");
    let stats = spark(&["outbox", "stats", "--database-url", &url, "--json"]);
    assert_eq!(stats.code, 0, "{}", stats.stderr);
    let stats: serde_json::Value = serde_json::from_str(&stats.stdout).unwrap();
    assert_eq!(stats["pending"], 0, "{stats}");
}
