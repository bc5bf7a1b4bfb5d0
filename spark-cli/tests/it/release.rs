//! `spark ritual`, `spark go-nogo` and `spark release-notes`: the real
//! binary against a private PostgreSQL with WAL archiving, the order
//! service, Prometheus and Alertmanager.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use spark_testkit::cluster::PgCluster;
use spark_testkit::prometheus::{Alertmanager, Prometheus};

use crate::canary::{both_roles, spark_off_runtime};

/// The workspace's Cargo.toml (the tests run in spark-cli/).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml").canonicalize().unwrap()
}

/// A private cluster archiving WAL into its own directory, with the order
/// service's schema, one WAL segment already archived.
async fn archiving_cluster() -> Option<(PgCluster, sqlx::PgPool)> {
    let pg = PgCluster::start_archiving(&[]).await?;
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let db = order_service::Database::connect(&pg.url(), 4).await.unwrap();
    order_service::migrate(&db).await.unwrap();
    sqlx::raw_sql("SELECT pg_switch_wal()").execute(&pool).await.unwrap();
    let start = Instant::now();
    loop {
        let archived: i64 =
            sqlx::query_scalar("SELECT archived_count FROM pg_stat_archiver").fetch_one(&pool).await.unwrap();
        if archived > 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no WAL segment archived after 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some((pg, pool))
}

/// The order service's own migration versions: applied in the database, not
/// embedded in `spark` (which embeds the Spark crates' only).
fn order_service_versions() -> String {
    let migrator = (order_service::MIGRATIONS.postgres.unwrap())();
    let versions: Vec<String> = migrator.iter().map(|m| m.version.to_string()).collect();
    versions.join(", ")
}

const SIGNERS: [&str; 6] = ["--sign", "DevOps lead=Deniz", "--sign", "CTO=Ayşe", "--sign", "product owner=Can"];

/// What this machine cannot measure (no pgBouncer, no flag file; the
/// baseline has no WebSocket or CSP signal), accepted by name.
const ACCEPTED: [&str; 6] =
    ["--accept-warning", "scan=Deniz", "--accept-warning", "baseline=Ayşe", "--accept-warning", "flags=Can"];

#[tokio::test(flavor = "multi_thread")]
async fn a_full_ritual_is_go_its_bundle_verifies_and_a_float_money_column_makes_it_no_go() {
    let Some((pg, pool)) = archiving_cluster().await else { return };
    // The order service, scraped by Prometheus with the role label the
    // canary queries group by.
    let db = order_service::Database::connect(&pg.url(), 4).await.unwrap();
    let state =
        order_service::AppState::new(db, order_service::Instruments::default_set(), order_service::Auth::dev_header());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        axum::serve(listener, order_service::app(state).into_make_service_with_connect_info::<std::net::SocketAddr>())
            .await
    });
    let Some(am) = Alertmanager::start(Alertmanager::NULL_RECEIVER).await else { return };
    let prometheus_yml = format!(
        "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
         rule_files: [rules.yml]\n\
         alerting: {{alertmanagers: [{{static_configs: [{{targets: ['127.0.0.1:{}']}}]}}]}}\n\
         scrape_configs:\n  - job_name: order-service\n    static_configs: [{{targets: ['127.0.0.1:{port}'], labels: {{role: baseline}}}}]\n",
        am.port()
    );
    let rules = "groups:\n  - name: slo-orders\n    rules:\n\
        \x20     - alert: OrdersErrorBudgetBurn1h\n        expr: sum(rate(http_requests_total{status=~\"5..\"}[1h])) / sum(rate(http_requests_total[1h])) > 14.4 * 0.001\n        labels: {slo: orders, window: 1h}\n\
        \x20     - alert: OrdersErrorBudgetBurn6h\n        expr: sum(rate(http_requests_total{status=~\"5..\"}[6h])) / sum(rate(http_requests_total[6h])) > 6 * 0.001\n        labels: {slo: orders, window: 6h}\n";
    let Some(prom) = Prometheus::start(&prometheus_yml, rules).await else { return };
    // Some traffic, then wait for a scrape and a rule evaluation.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    for i in 0..20 {
        let body = format!(
            r#"{{"account_id": "acc-1", "symbol": "THYAO", "side": "buy", "quantity": "{}", "price": "301.50"}}"#,
            i + 1
        );
        let r = client
            .post(format!("http://127.0.0.1:{port}/v1/orders"))
            .header("content-type", "application/json")
            .header("x-client-id", "ritual-test")
            .header("idempotency-key", format!("ritual-{i}"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    }
    let start = Instant::now();
    loop {
        let get = |path: &str| {
            let request = client.get(format!("{}{path}", prom.url()));
            async move {
                serde_json::from_str::<serde_json::Value>(&request.send().await.unwrap().text().await.unwrap()).unwrap()
            }
        };
        let targets = get("/api/v1/targets").await;
        let rules = get("/api/v1/rules").await;
        let up = targets["data"]["activeTargets"].as_array().is_some_and(|t| t.iter().any(|t| t["health"] == "up"));
        let evaluated =
            rules["data"]["groups"][0]["rules"].as_array().is_some_and(|r| r.iter().all(|r| r["health"] == "ok"));
        if up && evaluated {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "Prometheus never scraped the service: {targets}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("spark.toml"),
        format!(
            "[database]\nurl = {:?}\n[migrations]\nignore_versions = [{}]\n[backup]\nfailed_count_interval_ms = 100\n\
             [prometheus]\nurl = {:?}\n[alertmanager]\nurl = {:?}\n[slo]\nnames = [\"orders\"]\n\
             [observability]\nexpected_targets = {{ order-service = 1 }}\n\
             [supply_chain]\nartifact = {:?}\n[release]\nworkspace = {:?}\n",
            pg.url(),
            order_service_versions(),
            prom.url(),
            am.url(),
            env!("CARGO_BIN_EXE_spark"),
            workspace().display().to_string(),
        ),
    )
    .unwrap();
    // The rehearsal, the key.
    let rehearsal = spark_off_runtime(
        dir.path(),
        &["rollback", "--dry-run", "--reason", "rehearsal", "--stage", "1%", "--evidence-dir", "evidence"],
    )
    .await;
    assert_eq!(rehearsal.code, 0, "{}{}", rehearsal.stdout, rehearsal.stderr);
    let keygen = spark_off_runtime(dir.path(), &["keygen", "--out", "release.key"]).await;
    assert_eq!(keygen.code, 0, "{}", keygen.stderr);

    let mut args = vec!["ritual", "v1.4.0", "--sign-key", "release.key", "--json"];
    args.extend(SIGNERS);
    // What this machine cannot measure: no pgBouncer, no pages for the
    // headers check, no flag file; the baseline has no WebSocket or CSP
    // signal. Accepted by name; everything else must pass.
    args.extend(ACCEPTED);
    let started = Instant::now();
    let run = spark_off_runtime(dir.path(), &args).await;
    let took = started.elapsed();
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let json = run.json();
    eprintln!(
        "measured: spark ritual against PostgreSQL, the order service and Prometheus took {took:?} (the ritual's own figure {} ms)",
        json["millis"]
    );
    assert_eq!(json["go_nogo"]["verdict"], "GO", "{json:#}");
    let items = json["go_nogo"]["items"].as_array().unwrap();
    for id in
        ["backup", "migrations", "rollback-rehearsed", "canary-plan", "burn-rate-alerts", "supply-chain", "sign-offs"]
    {
        let item = items.iter().find(|i| i["id"] == id).unwrap();
        assert_eq!(item["status"], "pass", "{id}: {item}");
    }
    let bundle = dir.path().join("evidence/v1.4.0");
    assert_eq!(std::fs::read_dir(&bundle).unwrap().count(), 8);
    let baseline = std::fs::read_to_string(bundle.join("baseline_metrics_v1.4.0.txt")).unwrap();
    assert!(baseline.contains("http_requests_per_second"), "{baseline}");
    let verify =
        spark_off_runtime(dir.path(), &["evidence", "verify", "evidence/v1.4.0", "--key", "release.key.pub"]).await;
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);

    // A float money column: the decimal check fails, so NO-GO with exit 1,
    // and the output says why.
    sqlx::raw_sql("CREATE TABLE legacy_fills (id bigint PRIMARY KEY, price double precision NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let mut args = vec!["ritual", "v1.4.1", "--sign-key", "release.key"];
    args.extend(SIGNERS);
    args.extend(ACCEPTED);
    let run = spark_off_runtime(dir.path(), &args).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("NO-GO (9/10)"), "{}", run.stdout);
    let why = run.stdout.lines().find(|l| l.contains("NO-GO: scan:")).unwrap_or_else(|| panic!("{}", run.stdout));
    assert!(why.contains("decimal") && why.contains("legacy_fills.price"), "{why}");
    // Progress is drawn only on a terminal: a log gets no carriage returns.
    assert!(!run.stderr.contains('\r') && !run.stdout.contains('\r'), "{:?}", run.stderr);
    // The NO-GO is evidence too, sealed like a GO.
    let verify =
        spark_off_runtime(dir.path(), &["evidence", "verify", "evidence/v1.4.1", "--key", "release.key.pub"]).await;
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);

    // GO/NO-GO on its own, after the ritual: its own directory beside the
    // bundle, and exit 1 for the same NO-GO.
    let mut args = vec!["go-nogo", "--release", "v1.4.1"];
    args.extend(SIGNERS);
    let run = spark_off_runtime(dir.path(), &args).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("legacy_fills.price"), "{}", run.stdout);
    let own: Vec<String> = std::fs::read_dir(dir.path().join("evidence"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("go-nogo_v1.4.1_"))
        .collect();
    assert_eq!(own.len(), 1, "{own:?}");
    assert!(dir.path().join("evidence").join(&own[0]).join("go_nogo_signed_v1.4.1.json").is_file());
    server.abort();
}

#[test]
fn sign_off_typos_and_bad_release_names_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["go-nogo", "--release", "v1", "--sign", "CFO=Ece"][..],
        &["go-nogo", "--release", "v1", "--sign", "CTO"],
        &["go-nogo", "--release", "v1", "--sign", "CTO=Ayşe", "--accept-warning", "backup=Mallory"],
        &["go-nogo", "--release", "v1", "--accept-warning", "bakup=Ayşe"],
        &["go-nogo", "--release", "v1", "--sign", "CTO=Ayşe", "--sign", "product owner=Ayşe"],
        &["ritual", "../v1"],
        &["ritual", "v1."],
        &["go-nogo", "--release", "."],
        &["release-notes", "v1", "--evidence-dir", "nowhere"],
    ] {
        let run = crate::spark_with(args, Some(dir.path()), &[]);
        assert_eq!(run.code, 2, "{args:?}: {}{}", run.stdout, run.stderr);
        assert_eq!(run.stderr.trim_end().lines().count(), 1, "{args:?}: {}", run.stderr);
    }
    // Nothing was written by a refused command.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A real canary run against Prometheus whose canary p95 turns bad a few
/// seconds in: 10 % is promoted, 100 % rolls back on `api_p95` and runs the
/// rollback; the release notes show both stages and the rollback.
#[tokio::test(flavor = "multi_thread")]
async fn release_notes_from_a_recorded_canary_run_with_one_rollback() {
    let Some(prom) = crate::canary::query_only_prometheus().await else { return };
    let dir = tempfile::tempdir().unwrap();
    // The canary's p95 is 0.1 s until `turn`, then 0.6 s (above the default plan's 0.2).
    let turn = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 6;
    let p95 = format!(
        "'label_replace(vector(0.1 + 0.5 * (time() > bool {turn})), \"role\", \"canary\", \"\", \"\") or label_replace(vector(0.1), \"role\", \"baseline\", \"\", \"\")'"
    );
    let plan = format!(
        "interval = \"1s\"\nmin_requests = 10\n\
         [[stages]]\nweight = \"10%\"\nduration = \"3s\"\n[[stages]]\nweight = \"100%\"\nduration = \"1h\"\n\
         [triggers.api_p95]\nfor = \"2s\"\n\
         [weights]\ncommand = [\"true\"]\n\
         [[rollback.actions]]\nkind = \"command\"\ncommand = [\"true\"]\n\
         [queries]\nhttp_requests_per_second = {}\nhttp_5xx_ratio = {}\napi_latency_p95_seconds = {p95}\n\
         ws_staleness_seconds = {}\nrisk_blocks_per_minute = {}\nidempotency_conflict_ratio = {}\ncsp_violations_per_minute = {}\n",
        both_roles(50.0, 50.0),
        both_roles(0.0, 0.0),
        both_roles(1.0, 1.0),
        both_roles(0.0, 0.0),
        both_roles(0.0, 0.0),
        both_roles(0.0, 0.0),
    );
    std::fs::write(dir.path().join("plan.toml"), plan).unwrap();
    let run = spark_off_runtime(
        dir.path(),
        &["canary", "run", "--release", "v9", "--plan", "plan.toml", "--prometheus", &prom.url(), "--step", "1s"],
    )
    .await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    std::fs::write(
        dir.path().join("risks.toml"),
        "[[risk]]\ndescription = \"p95 regression under load\"\nowner = \"CTO\"\ndue = 2026-12-20\n\
         mitigation = \"load test before the next canary\"\nstatus = \"open\"\n",
    )
    .unwrap();
    let notes = spark_off_runtime(
        dir.path(),
        &["release-notes", "v9", "--evidence-dir", "evidence", "--risks", "risks.toml", "--out", "NOTES.md"],
    )
    .await;
    assert_eq!(notes.code, 0, "{}{}", notes.stdout, notes.stderr);
    let md = std::fs::read_to_string(dir.path().join("NOTES.md")).unwrap();
    eprintln!("{md}");
    let row =
        |prefix: &str| md.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix:?} row: {md}"));
    let first = row("| 1 | 10% |");
    assert!(first.contains("| promoted | 6/6 |"), "{first}");
    let second = row("| 2 | 100% |");
    assert!(second.contains("| rolled back (api_p95) | 5/6 |"), "{second}");
    // The default plan's bounds: api_p95 0.2 s, error_rate 1 %.
    let metrics = row("| 100% | 0.6 ✗ (≤ 0.2) |");
    assert!(metrics.contains("| 0 (≤ 0.01) |"), "{metrics}");
    assert!(row("| 10% |").starts_with("| 10% | 0.1 (≤ 0.2) |"), "{md}");
    let rollback = row("| api_p95 |");
    assert!(
        rollback.contains("| 100% |") && rollback.contains("| rollback |") && rollback.contains("rollback_"),
        "{rollback}"
    );
    assert!(md.contains("| p95 regression under load | CTO | 2026-12-20 |"), "{md}");
    // Never overwritten.
    let again =
        spark_off_runtime(dir.path(), &["release-notes", "v9", "--evidence-dir", "evidence", "--out", "NOTES.md"])
            .await;
    assert_eq!(again.code, 2, "{}", again.stderr);
}
