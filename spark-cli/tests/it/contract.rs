//! `spark check contract` through the real binary, against a real order
//! service served on a loopback port by the test.

use crate::{Run, spark_with};

const T1: &str = "contract-token-one";
const T2: &str = "contract-token-two";

/// The order service on a fresh SQLite file, behind two bearer clients
/// allowed on `contract-*`, where orders for `contract-fail` fail inside
/// their transaction (a trigger): the way to make it answer a 5xx. Returns
/// its base URL; the database guard must outlive the test.
async fn order_service() -> (String, spark_testkit::SqliteTestDb) {
    let t = spark_testkit::sqlite().await;
    let db = order_service::Database::connect(&t.url, 8).await.unwrap();
    order_service::migrate(&db).await.unwrap();
    let order_service::Database::Sqlite(pool) = &db else { unreachable!("a SQLite URL") };
    sqlx::raw_sql(
        "CREATE TRIGGER contract_fail BEFORE INSERT ON order_service_orders \
         WHEN NEW.account_id = 'contract-fail' BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
    )
    .execute(pool)
    .await
    .unwrap();
    let clients = format!(
        "[[client]]\nid = \"one\"\ntoken_sha256 = \"{}\"\naccounts = [\"contract-*\"]\n\n\
         [[client]]\nid = \"two\"\ntoken_sha256 = \"{}\"\naccounts = [\"contract-*\"]\n",
        order_service::auth::token_sha256(T1),
        order_service::auth::token_sha256(T2),
    );
    let auth = order_service::Auth::bearer(order_service::Clients::from_toml(&clients).unwrap());
    let state = order_service::AppState::new(db, order_service::Instruments::default_set(), auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = order_service::app(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, t)
}

/// Runs `spark` off the runtime's workers, which serve the order service.
async fn spark_async(args: Vec<String>) -> Run {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        spark_with(&args, None, &[])
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_passes_against_a_running_order_service() {
    let (url, _db) = order_service().await;
    let dir = tempfile::tempdir().unwrap();
    let failing = dir.path().join("failing.json");
    std::fs::write(
        &failing,
        r#"{"account_id": "contract-fail", "symbol": "THYAO", "side": "buy", "quantity": "{{n}}", "price": "101.30"}"#,
    )
    .unwrap();

    // Every case, with JSON: the outcome a `spark check` report carries.
    let failing_arg = failing.to_str().unwrap();
    let started = std::time::Instant::now();
    let run = spark_async(args(&[
        "check",
        "contract",
        "--url",
        &url,
        "--token",
        T1,
        "--other-token",
        T2,
        "--failing-body",
        failing_arg,
        "--json",
    ]))
    .await;
    println!("the battery through the binary took {:.3}s", started.elapsed().as_secs_f64());
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let v = run.json();
    assert_eq!((v["id"].as_str(), v["status"].as_str()), (Some("contract"), Some("pass")), "{v}");
    let cases = v["details"]["cases"].as_array().unwrap();
    let names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, spark_checks::contract::IDEMPOTENCY_CASES);
    assert!(cases.iter().all(|c| c["status"] == "pass"), "{v}");
    assert!(!run.stdout.contains(T1) && !run.stdout.contains(T2));

    // One principal and no way to fail: two cases skip, which warns (exit 0).
    let run = spark_async(args(&["check", "contract", "--url", &url, "--token", T1])).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 8, "{}", run.stdout);
    assert!(lines[0].starts_with("PASS  missing_key_400"), "{}", run.stdout);
    assert!(lines[4].starts_with("SKIP  other_principal_independent"), "{}", run.stdout);
    assert!(lines[7].starts_with("WARN: 5 passed, 0 failed, 2 skipped in "), "{}", run.stdout);

    // A token the service does not know: every request is 401, so the
    // cases fail (exit 1) and say what they got.
    let run = spark_async(args(&["check", "contract", "--url", &url, "--token", "wrong", "--json"])).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let v = run.json();
    assert_eq!(v["status"], "fail");
    assert!(v["summary"].as_str().unwrap().contains("401"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_refuses_other_hosts_bad_templates_and_reports_a_dead_service() {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(&body, r#"{"quantity": "1"}"#).unwrap();
    let no_n = ["check", "contract", "--url", "http://127.0.0.1:9", "--body", body.to_str().unwrap()];
    for (list, needle) in [
        (&["check", "contract", "--url", "http://10.0.0.1:8080"][..], "loopback"),
        (&["check", "contract", "--url", "http://127.0.0.1.example.com"][..], "loopback"),
        (&no_n[..], "{{n}}"),
        (&["check", "--only", "clock", "contract", "--url", "http://127.0.0.1:9"][..], "cannot be used"),
    ] {
        let run = spark_async(args(list)).await;
        assert_eq!(run.code, 2, "{list:?}: {}{}", run.stdout, run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(run.stderr.contains(needle), "{list:?}: {}", run.stderr);
    }

    // Nothing listens there: the check fails (exit 1), it is not bad usage.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let run = spark_async(args(&["check", "contract", "--url", &url, "--json"])).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let v = run.json();
    assert_eq!(v["status"], "fail");
    assert!(v["summary"].as_str().unwrap().starts_with("cannot reach the service at"), "{v}");
}
