//! `spark demo`: the README's main job, checked through its summary.

use crate::spark_with;

#[test]
fn demo_holds_every_guarantee_and_writes_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let run = spark_with(&["demo", "--json"], Some(dir.path()), &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let printed = run.json();
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("spark-demo-summary.json")).unwrap()).unwrap();
    assert_eq!(printed, written);
    assert_eq!(written["ok"], true);
    for check in [
        "replays_identical",
        "every_refusal_refused",
        "one_order_per_key",
        "one_open_position_per_account_and_instrument",
        "positions_match_accepted_orders",
        "every_event_published",
        "only_authorised_clients_served",
        "evidence_bundles_verify",
    ] {
        assert_eq!(written["checks"][check], true, "{check}");
    }
    assert_eq!(written["orders_accepted"], 200);
    assert_eq!(written["events_published"], 200);
    assert_eq!(written["rejected_422"], 30);
    // The authentication probes: no token and a wrong token, another
    // client's account, another client's order.
    assert_eq!(written["unauthenticated_401"], 2);
    assert_eq!(written["forbidden_403"], 1);
    assert_eq!(written["hidden_404"], 1);
    // Every request is counted: 200 orders, 20 keys raced 5 times and
    // retried once, 30 refusals, 5 authentication probes.
    assert_eq!(written["requests"], 200 + 20 * 5 + 20 + 30 + 5);
    assert!(written["replays"].as_u64().unwrap() >= 20);
    assert_eq!(written["open_positions"], 15);
    // The release half: the ritual's sealed seven files plus the manifest,
    // a NO-GO on the embedded default that says which items it could not
    // measure (no WAL archive, no baseline from a Prometheus), and release
    // notes, all under the evidence directory.
    let release = &written["release"];
    let bundle = dir.path().join(release["bundle"].as_str().unwrap());
    assert!(bundle.starts_with(dir.path().join("spark-demo-evidence")), "{}", bundle.display());
    let mut files: Vec<String> =
        std::fs::read_dir(&bundle).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    assert_eq!(
        files,
        [
            "baseline_metrics_demo.txt",
            "blind_spots_scan_demo.txt",
            "build_provenance_demo.json",
            "canary_plan_demo.txt",
            "go_nogo_signed_demo.txt",
            "manifest.json",
            "release_tag.txt",
            "sbom_demo.json",
        ]
    );
    assert_eq!(release["verdict"], "NO-GO", "{release}");
    let reasons = release["reasons"].to_string();
    assert!(reasons.contains("backup") && reasons.contains("baseline"), "{reasons}");
    for measured in ["sign-offs", "rollback-rehearsed", "migrations", "supply-chain"] {
        assert!(!reasons.contains(measured), "{measured} did not count on the embedded default: {reasons}");
    }
    let public_key = dir.path().join(release["public_key"].as_str().unwrap());
    let verify =
        spark_with(&["evidence", "verify", bundle.to_str().unwrap(), "--key", public_key.to_str().unwrap()], None, &[]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
    let notes = std::fs::read_to_string(dir.path().join(release["release_notes"].as_str().unwrap())).unwrap();
    assert!(notes.starts_with("# Release demo"), "{notes}");
    // Measured and reported; how long it may take is for benchmarks, not
    // for an assertion on a shared machine.
    assert!(written["duration_ms"].as_u64().unwrap() > 0);
    // The demo's API tokens (64 hex digits) and their SHA-256 digests (64
    // hex digits) appear nowhere in what it prints or writes.
    let summary = std::fs::read_to_string(dir.path().join("spark-demo-summary.json")).unwrap();
    for text in [&run.stdout, &run.stderr, &summary] {
        let longest_hex_run = text.split(|c: char| !c.is_ascii_hexdigit()).map(str::len).max().unwrap_or(0);
        assert!(longest_hex_run < 32, "a token or digest was printed:\n{text}");
    }
}

/// A service on loopback that knows one bench client, allowed on
/// `bench-acc-*`; returns its URL and the client's token.
async fn service_with_bench_client() -> (String, String, spark_testkit::SqliteTestDb) {
    let db = spark_testkit::sqlite().await;
    let database = order_service::Database::connect(&db.url, 8).await.unwrap();
    order_service::migrate(&database).await.unwrap();
    let token = order_service::auth::new_token();
    let clients = order_service::Clients::from_toml(&format!(
        "[[client]]\nid = \"bench\"\ntoken_sha256 = \"{}\"\naccounts = [\"bench-acc-*\"]\n",
        order_service::auth::token_sha256(&token)
    ))
    .unwrap();
    let app = order_service::app(order_service::AppState::new(
        database,
        order_service::Instruments::default_set(),
        order_service::Auth::bearer(clients),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await.unwrap()
    });
    (url, token, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_http_drives_a_running_service() {
    let (url, token, _db) = service_with_bench_client().await;
    let run = tokio::task::spawn_blocking(move || {
        crate::spark_with(
            &["bench", "http", "--url", &url, "--seconds", "2", "--rate", "100", "--concurrency", "8", "--json"],
            None,
            &[("SPARK_BENCH_TOKEN", &token)],
        )
    })
    .await
    .unwrap();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v = run.json();
    assert!(v["created_201"].as_u64().unwrap() > 50, "{v}");
    assert!(v["replayed_201"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["unauthenticated_401"], 0, "{v}");
    assert_eq!(v["server_5xx"], 0, "{v}");
    assert_eq!(v["transport_errors"], 0, "{v}");
    assert!(v["p95_ms"].as_f64().unwrap() > 0.0);

    let refused = crate::spark(&["bench", "http", "--url", "http://192.0.2.1:8080", "--seconds", "1"]);
    assert_eq!(refused.code, 2, "only loopback targets");
}

/// The loopback rule is decided on the parsed address: a host name that
/// merely starts like 127.x, or an address outside 127/8 and ::1, is
/// refused before any request; loopback in another spelling is not.
#[test]
fn bench_http_targets_loopback_addresses_only() {
    for url in [
        "http://127.0.0.1.example.com:8080",
        "http://127.attacker.test:8080",
        "http://[::2]:8080",
        "http://[::ffff:192.0.2.1]:8080",
        "http://localhost.example.com:8080",
    ] {
        let run = crate::spark(&["bench", "http", "--url", url, "--seconds", "1"]);
        assert_eq!(run.code, 2, "{url}: {}", run.stderr);
        assert!(run.stderr.contains("must be a loopback address"), "{url}: {}", run.stderr);
    }
}

/// A bench the service does not authorise says so and exits 1, rather
/// than reporting the speed of 401s as the service's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_http_without_a_valid_token_is_a_no() {
    let (url, _token, _db) = service_with_bench_client().await;
    let run = tokio::task::spawn_blocking(move || {
        crate::spark_with(
            &["bench", "http", "--url", &url, "--seconds", "1", "--rate", "20", "--json"],
            None,
            &[("SPARK_BENCH_TOKEN", "wrong")],
        )
    })
    .await
    .unwrap();
    assert_eq!(run.code, 1, "{}", run.stderr);
    let v = run.json();
    assert!(v["unauthenticated_401"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["created_201"], 0, "{v}");
}

/// A redirect from the service is counted, never followed: the loopback
/// rule holds for --url, and a Location header may name any host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_http_does_not_follow_redirects() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    // Where the redirect points (loopback here, so following it would be
    // seen, not sent anywhere): it counts what reaches it.
    let followed = Arc::new(AtomicU64::new(0));
    let hits = followed.clone();
    let elsewhere = axum::Router::new().fallback(move || {
        hits.fetch_add(1, Ordering::SeqCst);
        async { axum::http::StatusCode::CREATED }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("http://{}/v1/orders", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, elsewhere).await.unwrap() });
    let redirecting = axum::Router::new().fallback(move || {
        let target = target.clone();
        async move { (axum::http::StatusCode::TEMPORARY_REDIRECT, [("location", target)]) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, redirecting).await.unwrap() });

    let run = tokio::task::spawn_blocking(move || {
        crate::spark(&["bench", "http", "--url", &url, "--seconds", "1", "--rate", "20", "--json"])
    })
    .await
    .unwrap();
    let v = run.json();
    assert!(v["redirect_3xx"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["created_201"], 0, "{v}");
    assert_eq!(v["server_5xx"], 0, "{v}");
    assert_eq!(followed.load(Ordering::SeqCst), 0, "the bench followed a redirect: {v}");
}
