//! The `order-service` binary: flags, the in-process relay, graceful
//! shutdown on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_relays_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("svc.db").display());
    let token = order_service::auth::new_token();
    let clients = write_clients(dir.path(), &token);
    let mut child = Command::new(env!("CARGO_BIN_EXE_order-service"))
        .args(["--listen", "127.0.0.1:0", "--database-url", &url, "--relay", "log", "--clients"])
        .arg(&clients)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (base, _) = listening(&mut child);
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/v1/orders"))
        .header("authorization", format!("Bearer {token}"))
        .header("idempotency-key", "k")
        .body(r#"{"account_id":"a","symbol":"GARAN","side":"buy","quantity":"10","price":"101.30"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let health = client.get(format!("{base}/healthz")).send().await.unwrap().text().await.unwrap();
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["auth"], "bearer");

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

/// Without --clients the service does not start, unless --dev-auth header
/// asks for the development mode by name; that mode warns at startup and in
/// /healthz.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_start_without_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("svc.db").display());
    let open = Command::new(env!("CARGO_BIN_EXE_order-service"))
        .args(["--listen", "127.0.0.1:0", "--database-url", &url])
        .output()
        .unwrap();
    assert_eq!(open.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&open.stderr);
    assert!(stderr.contains("--clients") && stderr.contains("--dev-auth header"), "{stderr}");
    assert!(!dir.path().join("svc.db").exists(), "refused before touching the database");

    // Both modes at once is a usage error, whatever else is wrong: a valid
    // clients file (so loading it cannot be what fails) and a database URL
    // that would fail later (so a service that started anyway exits too,
    // but with another message).
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "[[client]]\nid = \"c\"\ntoken_sha256 = \"{}\"\naccounts = [\"a\"]\n",
            order_service::auth::token_sha256("t")
        ),
    )
    .unwrap();
    let both = Command::new(env!("CARGO_BIN_EXE_order-service"))
        .args(["--listen", "127.0.0.1:0", "--database-url", "mysql://x", "--dev-auth", "header", "--clients"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(both.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert!(stderr.contains("cannot be used with") && stderr.contains("--dev-auth"), "{stderr}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[client]]\nid = \"c\"\ntoken_sha256 = \"nothex\"\naccounts = []\n").unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_order-service"))
        .args(["--database-url", &url, "--clients"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("64 hex"));

    let mut child = Command::new(env!("CARGO_BIN_EXE_order-service"))
        .args(["--listen", "127.0.0.1:0", "--database-url", &url, "--dev-auth", "header"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (base, before) = listening(&mut child);
    assert!(
        before.iter().any(|l| l.starts_with("warning: ") && l.contains("X-Client-Id is trusted")),
        "no dev-auth warning before the service listened: {before:?}"
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap().text().await.unwrap();
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["auth"], "dev-header");
    assert!(health["warning"].as_str().unwrap().contains("never expose"));
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success());
}

/// Reads the child's stderr up to the "listening on" line and returns the
/// URL and the lines before it (start-up logs, warnings); the rest of stderr
/// is drained on a thread so the service never blocks on a full pipe.
pub(super) fn listening(child: &mut std::process::Child) -> (String, Vec<String>) {
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut before = Vec::new();
    loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "the service exited before listening: {before:?}");
        if line.contains("order-service listening on ") {
            std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
            return (line.trim().rsplit(' ').next().unwrap().to_owned(), before);
        }
        before.push(line);
    }
}

/// Writes `clients.toml` in `dir`: one client `c`, holding `token`, allowed
/// on account `a`.
pub(super) fn write_clients(dir: &std::path::Path, token: &str) -> std::path::PathBuf {
    let clients = dir.join("clients.toml");
    std::fs::write(
        &clients,
        format!(
            "[[client]]\nid = \"c\"\ntoken_sha256 = \"{}\"\naccounts = [\"a\"]\n",
            order_service::auth::token_sha256(token)
        ),
    )
    .unwrap();
    clients
}
