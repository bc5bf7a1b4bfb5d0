//! `spark watch`, accelerated (`--interval 2s --duration 20s`), end to end:
//! a real Prometheus scrapes a synthetic exporter whose p95 the test
//! drives; the GO-time baseline is taken from the same Prometheus with
//! `spark metrics snapshot`; the watch is interrupted mid-night (Ctrl-C)
//! and started again, resumes from its journal, fires on the driven fault
//! and tells a Slack receiver on loopback. A crash mid-line is the
//! library's tests' (spark-rollback `watch`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::routing::{get, post};

use crate::canary::spark_off_runtime;

#[derive(Default)]
struct Driven {
    p95: f64,
    slack: Vec<String>,
}

type Shared = Arc<Mutex<Driven>>;

async fn metrics(State(d): State<Shared>) -> impl axum::response::IntoResponse {
    let p95 = d.lock().unwrap().p95;
    let body = format!(
        "# TYPE synthetic_requests_per_second gauge\nsynthetic_requests_per_second 50\n\
         # TYPE synthetic_5xx_ratio gauge\nsynthetic_5xx_ratio 0\n\
         # TYPE synthetic_p95_seconds gauge\nsynthetic_p95_seconds {p95}\n"
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

async fn slack(State(d): State<Shared>, body: Bytes) -> &'static str {
    d.lock().unwrap().slack.push(String::from_utf8_lossy(&body).into_owned());
    "ok"
}

fn intervals(journal: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(journal)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["kind"] == "interval")
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_accelerated_night_resumes_after_ctrl_c_and_fires_on_the_driven_fault() {
    let driven: Shared = Arc::new(Mutex::new(Driven { p95: 0.1, slack: Vec::new() }));
    let router = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/services/T1/B1/WATCHSECRET", post(slack))
        .with_state(driven.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    // One fleet: at GO time it is the baseline; after the promotion it runs
    // the release.
    let config = format!(
        "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
         scrape_configs:\n  - job_name: orders\n    \
         static_configs: [{{targets: ['127.0.0.1:{port}'], labels: {{role: baseline}}}}]\n"
    );
    let Some(prom) = spark_testkit::prometheus::Prometheus::start(&config, "groups: []\n").await else { return };
    let dir = tempfile::tempdir().unwrap();
    // The GO-time snapshot keeps the role label; the watch's plan aggregates
    // the one fleet without it, as a plan for 100 % may.
    std::fs::write(
        dir.path().join("go.toml"),
        "[queries]\nhttp_requests_per_second = 'synthetic_requests_per_second'\n\
         http_5xx_ratio = 'synthetic_5xx_ratio'\napi_latency_p95_seconds = 'synthetic_p95_seconds'\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("plan.toml"),
        "[triggers.api_p95]\nthreshold = 0.4\nfor = \"3s\"\n\
         [queries]\nhttp_requests_per_second = 'sum(synthetic_requests_per_second)'\n\
         http_5xx_ratio = 'max(synthetic_5xx_ratio)'\napi_latency_p95_seconds = 'max(synthetic_p95_seconds)'\n",
    )
    .unwrap();

    // GO time: a few healthy scrapes, then the baseline snapshot.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = spark_off_runtime(
            dir.path(),
            &[
                "metrics",
                "snapshot",
                "--prometheus",
                &prom.url(),
                "--out",
                "go.json",
                "--range",
                "1m",
                "--step",
                "1s",
                "--plan",
                "go.toml",
                "--json",
            ],
        )
        .await;
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        let go = std::fs::read_to_string(dir.path().join("go.json")).unwrap();
        let samples = go.matches("\"0.1\"").count();
        if samples >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus never scraped the exporter:\n{}", prom.log());
        std::fs::remove_file(dir.path().join("go.json")).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let url = format!("http://127.0.0.1:{port}/services/T1/B1/WATCHSECRET");
    let prom_url = prom.url();
    let watch = |dir: std::path::PathBuf| {
        std::process::Command::new(env!("CARGO_BIN_EXE_spark"))
            .args([
                "watch",
                "--release",
                "v2.0.0",
                "--prometheus",
                &prom_url,
                "--interval",
                "2s",
                "--duration",
                "20s",
                "--step",
                "1s",
                "--baseline",
                "go.json",
                "--plan",
                "plan.toml",
                "--slack-env",
                "WATCH_SLACK_URL",
                "--json",
            ])
            .env("WATCH_SLACK_URL", &url)
            .current_dir(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let journal = dir.path().join("evidence/first_night_v2.0.0.jsonl");
    let first = watch(dir.path().to_owned());
    let deadline = Instant::now() + Duration::from_secs(30);
    while intervals(&journal).len() < 3 {
        assert!(Instant::now() < deadline, "the watch never evaluated three intervals");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Ctrl-C: the watch stops between intervals, says how to resume, exits 3.
    let kill = std::process::Command::new("kill").args(["-INT", &first.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let stopped = tokio::task::spawn_blocking(move || first.wait_with_output().unwrap()).await.unwrap();
    let said = String::from_utf8_lossy(&stopped.stderr);
    assert_eq!(stopped.status.code(), Some(3), "{said}");
    assert!(said.contains("stopping after this interval") && said.contains("run the same command to resume"), "{said}");
    assert!(intervals(&journal).iter().all(|r| r["firing"].as_array().unwrap().is_empty()));
    // The fault, while the watch is down; then it comes back.
    driven.lock().unwrap().p95 = 0.9;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = watch(dir.path().to_owned());
    let out = tokio::task::spawn_blocking(move || second.wait_with_output().unwrap()).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["verdict"], "incident", "{summary}");
    assert_eq!(summary["intervals"], 10, "{summary}");
    assert_eq!(summary["incidents"].as_array().unwrap().len(), 1, "{summary}");
    assert_eq!(summary["incidents"][0]["trigger"], "api_p95", "{summary}");
    assert_eq!(summary["incidents"][0]["notified"], "delivered", "{summary}");
    assert_eq!(summary["budget_consumed"], 0.0, "no 5xx: no budget spent");

    let records = intervals(&journal);
    let numbers: Vec<u64> = records.iter().map(|r| r["n"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (1..=10).collect::<Vec<u64>>(), "every interval once, across the kill");
    let text = std::fs::read_to_string(&journal).unwrap();
    assert_eq!(text.matches("\"kind\":\"start\"").count(), 1);
    let fired = records.iter().find(|r| !r["firing"].as_array().unwrap().is_empty()).unwrap();
    assert_eq!(fired["triggers"]["api_p95"], "firing");
    assert!(fired["values"]["api_latency_p95_seconds"].as_f64().unwrap() > 0.4, "{fired}");
    let slack = driven.lock().unwrap().slack.clone();
    assert_eq!(slack.len(), 1, "once, when it started firing: {slack:?}");
    assert!(slack[0].contains("api_p95") && slack[0].contains("v2.0.0"), "{}", slack[0]);

    let report = std::fs::read_to_string(dir.path().join("evidence/first_night_v2.0.0.md")).unwrap();
    assert_eq!(report.matches("\n## Interval ").count(), 10, "{report}");
    assert!(report.contains("trigger api_p95 ok → firing"), "{report}");
    assert!(report.contains("- verdict: **incident**"), "{report}");
    assert!(report.contains("GO-time baseline: `go.json`"), "{report}");
    assert!(report.contains("| api_latency_p95_seconds | 0.9 | unchanged | 0.1 |"), "{report}");
    for file in [&report, &text, &stderr.to_string()] {
        assert!(!file.contains("WATCHSECRET"), "the Slack URL leaked:\n{file}");
    }
}

#[test]
fn bad_watch_input_exits_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for (args, expected) in [
        (&["--release", "../x", "--prometheus", "http://127.0.0.1:9"][..], "cannot name a file"),
        (
            &["--release", "v1", "--prometheus", "http://127.0.0.1:9", "--interval", "2h", "--duration", "1h"],
            "shorter than the interval",
        ),
        (&["--release", "v1", "--prometheus", "http://127.0.0.1:9", "--baseline", "missing.json"], "missing.json"),
        (
            &["--release", "v1", "--prometheus", "http://127.0.0.1:9", "--slack-env", "SPARK_TEST_UNSET_VAR"],
            "is not set",
        ),
        (&["--release", "v1", "--prometheus", "http://127.0.0.1:9", "--rollback"], "--rollback needs a plan"),
    ] {
        let mut full = vec!["watch"];
        full.extend_from_slice(args);
        let run = crate::spark_with(&full, Some(dir.path()), &[]);
        assert_eq!(run.code, 2, "{args:?}: {}{}", run.stdout, run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(expected), "{args:?}: {}", run.stderr);
    }
    assert!(!dir.path().join("evidence").exists(), "a refused watch writes nothing");
}

/// A journal whose rollback started and was never journaled as done (the
/// watch was killed while it ran): the resumed watch runs nothing, and its
/// text says the outcome is unknown, never that an action failed.
#[test]
fn a_rollback_in_doubt_is_reported_as_unknown_and_never_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let evidence = dir.path().join("evidence");
    std::fs::create_dir_all(&evidence).unwrap();
    let t0 = 1_795_712_400_000;
    let start = spark_rollback::JournalLine::Start(spark_rollback::WatchStart {
        format: spark_rollback::JOURNAL_FORMAT.to_owned(),
        release: "v9".to_owned(),
        started_at: spark_rollback::rfc3339(t0),
        started_at_ms: t0,
        duration_seconds: 60,
        interval_seconds: 10,
        step_seconds: 5,
        slo_objective: 0.999,
        baseline: None,
        baseline_medians: std::collections::BTreeMap::new(),
    });
    let started = spark_rollback::JournalLine::RollbackStarted(spark_rollback::RollbackStarted {
        n: 1,
        at: spark_rollback::rfc3339(t0 + 10_000),
        trigger: "api_p95".to_owned(),
    });
    let journal = format!("{}\n{}\n", serde_json::to_string(&start).unwrap(), serde_json::to_string(&started).unwrap());
    std::fs::write(evidence.join("first_night_v9.jsonl"), journal).unwrap();
    let marker = dir.path().join("ran-again");
    std::fs::write(
        dir.path().join("plan.toml"),
        format!(
            "[[rollback.actions]]\nkind = \"command\"\ncommand = [\"touch\", {:?}]\n",
            marker.display().to_string()
        ),
    )
    .unwrap();
    let run = crate::spark_with(
        &[
            "watch",
            "--release",
            "v9",
            "--prometheus",
            "http://127.0.0.1:9",
            "--interval",
            "10s",
            "--duration",
            "60s",
            "--step",
            "5s",
            "--plan",
            "plan.toml",
            "--rollback",
        ],
        Some(dir.path()),
        &[],
    );
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.starts_with("first night of v9: rolled_back"), "{}", run.stdout);
    assert!(run.stdout.contains("rolled back, outcome UNKNOWN"), "{}", run.stdout);
    assert!(!run.stdout.contains("an action FAILED"), "{}", run.stdout);
    assert!(!marker.exists(), "the rollback ran again");
}
