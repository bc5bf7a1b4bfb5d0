//! The `order-service` binary: flags, the in-process relay, graceful
//! shutdown on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_relays_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("svc.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_order-service"))
        .args(["--listen", "127.0.0.1:0", "--database-url", &url, "--relay", "log"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let base = line.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{line}");

    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/v1/orders"))
        .header("x-client-id", "c")
        .header("idempotency-key", "k")
        .body(r#"{"account_id":"a","symbol":"GARAN","side":"buy","quantity":"10","price":"101.30"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // The in-process relay publishes the event: the outbox drains.
    let start = Instant::now();
    loop {
        let metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        if metrics.lines().any(|l| l.starts_with("spark_outbox_pending ") && l.ends_with(" 0")) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the relay never published:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");

    let bad = Command::new(env!("CARGO_BIN_EXE_order-service")).args(["--database-url", "mysql://x"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&bad.stderr).lines().count(), 1);
}
