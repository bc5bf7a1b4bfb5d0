//! The Prometheus source against a real Prometheus scraping a synthetic
//! exporter the test drives, and against stubs of its HTTP API for the
//! failures a real one will not produce on demand.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::routing::{get, post};
use spark_rollback::{
    Decision, Engine, MetricSource, Metrics, Plan, PrometheusSource, Range, Replay, Signal, Snapshot, TriggerId,
    TriggerStatus,
};
use spark_testkit::prometheus::Prometheus;

/// Wall-clock milliseconds: Prometheus stamps its samples with the same
/// clock.
fn now_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("a clock after 1970");
    i64::try_from(since_epoch.as_millis()).expect("milliseconds fit an i64")
}

/// Serves `router` on a free loopback port; the base URL.
async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("a local address"));
    tokio::spawn(async move { axum::serve(listener, router).await.expect("the stub serves") });
    url
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The p95 the exporter reports, `[canary, baseline]`.
type P95 = Arc<Mutex<[f64; 2]>>;

/// `/canary/metrics` and `/baseline/metrics`: a healthy service, except for
/// the p95 the test sets. No `synthetic_feed_staleness_seconds`: that signal
/// must come back missing.
async fn exporter(
    State(p95): State<P95>,
    Path(role): Path<String>,
) -> Result<impl axum::response::IntoResponse, StatusCode> {
    let index = match role.as_str() {
        "canary" => 0,
        "baseline" => 1,
        _ => return Err(StatusCode::NOT_FOUND),
    };
    let p95 = p95.lock().unwrap()[index];
    let body = format!(
        "# TYPE synthetic_requests_per_second gauge\nsynthetic_requests_per_second 50\n\
         # TYPE synthetic_5xx_ratio gauge\nsynthetic_5xx_ratio 0\n\
         # TYPE synthetic_p95_seconds gauge\nsynthetic_p95_seconds {p95}\n\
         # TYPE synthetic_ws_staleness_seconds gauge\nsynthetic_ws_staleness_seconds 1\n\
         # TYPE synthetic_risk_blocks_per_minute gauge\nsynthetic_risk_blocks_per_minute 0\n\
         # TYPE synthetic_idempotency_conflict_ratio gauge\nsynthetic_idempotency_conflict_ratio 0\n\
         # TYPE synthetic_csp_violations_per_minute gauge\nsynthetic_csp_violations_per_minute 0\n"
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body))
}

/// Both roles scraped every second from the exporter at `port`, the `role`
/// label added per target.
fn prometheus_yml(port: u16) -> String {
    let job = |role: &str| {
        format!(
            "  - job_name: {role}\n    metrics_path: /{role}/metrics\n    \
             static_configs: [{{targets: ['127.0.0.1:{port}'], labels: {{role: {role}}}}}]\n"
        )
    };
    format!(
        "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\nscrape_configs:\n{}{}",
        job("canary"),
        job("baseline")
    )
}

/// A short plan over the exporter's gauges: p95 above 0.4 s for 6 s rolls
/// back, evaluated every 2 s of a 20 s stage.
const PLAN: &str = r#"
interval = "2s"
min_requests = 10

[[stages]]
weight = "5%"
duration = "20s"

[[stages]]
weight = "100%"
duration = "20s"

[triggers.api_p95]
threshold = 0.4
for = "6s"

[queries]
http_requests_per_second = "sum by (role) (synthetic_requests_per_second)"
http_5xx_ratio = "sum by (role) (synthetic_5xx_ratio)"
api_latency_p95_seconds = "sum by (role) (synthetic_p95_seconds)"
ws_staleness_seconds = "max by (role) (synthetic_ws_staleness_seconds)"
risk_blocks_per_minute = "sum by (role) (synthetic_risk_blocks_per_minute)"
idempotency_conflict_ratio = "sum by (role) (synthetic_idempotency_conflict_ratio)"
csp_violations_per_minute = "sum by (role) (synthetic_csp_violations_per_minute)"
feed_staleness_seconds = "max by (role) (synthetic_feed_staleness_seconds)"
"#;

/// The values of one role's series of one signal.
fn values(snapshot: &Snapshot, signal: Signal, role: &str) -> Vec<(i64, String)> {
    snapshot.signals[signal.name()]
        .result
        .iter()
        .find(|s| s.metric.get("role").map(String::as_str) == Some(role))
        .map(|s| s.values.iter().map(|(t, v)| (t.0, v.clone())).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_real_prometheus_gives_the_decision_its_snapshot_replays() {
    let begun = Instant::now();
    let p95: P95 = Arc::new(Mutex::new([0.1, 0.1]));
    let router = axum::Router::new().route("/{role}/metrics", get(exporter)).with_state(p95.clone());
    let exporter_url = serve(router).await;
    let port: u16 = exporter_url.rsplit(':').next().unwrap().parse().unwrap();
    let Some(prom) = Prometheus::start(&prometheus_yml(port), "groups: []\n").await else { return };
    let ready = begun.elapsed();

    let engine = Engine::new(Plan::from_toml(PLAN).unwrap()).unwrap();
    let stage = engine.plan().stage("5%").unwrap().clone();
    let source = PrometheusSource::new(&prom.url()).unwrap();
    let fetch = |start_ms: i64| {
        let (plan, source, prom) = (engine.plan(), &source, &prom);
        async move {
            let range = Range { start_ms, end_ms: now_ms(), step_seconds: 1 };
            source.fetch(plan, range).await.unwrap_or_else(|e| panic!("{e}\n{}", prom.log()))
        }
    };

    // Prometheus reads its targets up to 5 s after start-up: wait for both
    // roles' first scrape rather than assume it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = fetch(now_ms() - 5_000).await;
        let p95 = Signal::ApiLatencyP95Seconds;
        if !values(&s, p95, "canary").is_empty() && !values(&s, p95, "baseline").is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no scrape of both roles within 15 s:\n{}", prom.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let scraped = begun.elapsed();

    // The stage starts now, at whatever millisecond: the evaluation instants
    // and the query steps are both aligned to it, not to whole seconds.
    let since_ms = now_ms();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let changed_ms = now_ms();
    p95.lock().unwrap()[0] = 0.6;

    // Fetch and replay as a live run would, until the stage is decided.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (fetched, live) = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let fetched = fetch(since_ms).await;
        let replay = engine.replay(&Metrics::from_snapshot(&fetched).unwrap(), &stage, since_ms, None).unwrap();
        if replay.decision().is_final() || Instant::now() > deadline {
            break (fetched, replay);
        }
    };
    let decided = begun.elapsed();

    // What Prometheus gave: the exporter's values, and nothing for a metric
    // it does not expose (missing, never zeros).
    let canary = values(&fetched, Signal::ApiLatencyP95Seconds, "canary");
    assert!(canary.first().is_some_and(|(_, v)| v == "0.1"), "{canary:?}");
    assert!(canary.last().is_some_and(|(_, v)| v == "0.6"), "{canary:?}");
    assert!(canary.iter().all(|(t, _)| (t - since_ms) % 1000 == 0), "steps from the stage start: {canary:?}");
    let baseline = values(&fetched, Signal::ApiLatencyP95Seconds, "baseline");
    assert!(!baseline.is_empty() && baseline.iter().all(|(_, v)| v == "0.1"), "{baseline:?}");
    assert_eq!(fetched.signals.len(), Signal::ALL.len());
    for signal in [Signal::FeedStalenessSeconds, Signal::DbConnections] {
        let matrix = &fetched.signals[signal.name()];
        assert_eq!(matrix.result_type, "matrix");
        assert!(matrix.result.is_empty(), "{signal}: {:?}", matrix.result);
    }

    // The decision: api_p95, once 6 s of samples above 0.4 follow the
    // change. The first scrape to see it comes up to a scrape interval
    // later (plus any delay of a loaded machine), and the evaluation lands on
    // the next 2 s instant.
    let replayed = engine.replay(&Metrics::from_snapshot(&fetched).unwrap(), &stage, since_ms, None).unwrap();
    assert_eq!(replayed, live, "a replay of the same snapshot decides the same");
    let Decision::Rollback { trigger, fired_at, values } = replayed.decision() else {
        panic!("no rollback within 20 s of the change: {:#?}", replayed.trail)
    };
    assert_eq!(*trigger, TriggerId::ApiP95, "{:#?}", replayed.trail);
    assert_eq!(*fired_at, replayed.last.at_ms);
    assert_eq!((values["canary"], values["baseline_median"], values["threshold"]), (0.6, 0.1, 0.4));
    let after = Duration::from_millis(u64::try_from(fired_at - changed_ms).unwrap_or(0));
    assert!(
        (Duration::from_secs(4)..=Duration::from_secs(12)).contains(&after),
        "rolled back {after:?} after the change: {:#?}",
        replayed.trail
    );
    assert!((fired_at - since_ms) % 2000 == 0, "an evaluation instant of the plan's 2 s interval");
    // Before it: observing, short of the stage minimum.
    let (last, earlier) = replayed.trail.split_last().unwrap();
    assert_eq!((last.decision, last.trigger), ("rollback", Some(TriggerId::ApiP95)));
    assert!(earlier.len() >= 2 && earlier.iter().all(|e| e.decision == "continue"), "{:#?}", replayed.trail);
    // And the engine reads the unexposed feed staleness as missing, not as a
    // fresh feed at 0 s.
    let feed = replayed.last.triggers.iter().find(|t| t.id == TriggerId::FeedStale).unwrap();
    assert_eq!(feed.status, TriggerStatus::Missing, "{feed:?}");

    // The snapshot saved and loaded is the same input, so the same decision.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapshot.json");
    fetched.save(&path).unwrap();
    let loaded = Snapshot::load(&path).unwrap();
    assert!(loaded == fetched, "{} reads back other than it was fetched", path.display());
    let from_file: Replay = engine.replay(&Metrics::from_snapshot(&loaded).unwrap(), &stage, since_ms, None).unwrap();
    assert_eq!(from_file, replayed);
    assert_eq!(from_file.trail, replayed.trail);

    eprintln!(
        "measured: Prometheus ready after {ready:?}, both roles scraped after {scraped:?}, \
         rolled back {after:?} after the change, decided after {decided:?}, test took {:?}",
        begun.elapsed()
    );
}

#[tokio::test]
async fn prometheus_errors_are_named() {
    // Unreachable: every attempt refused, the error names the URL.
    let url = format!("http://127.0.0.1:{}", closed_port());
    let source = PrometheusSource::new(&url).unwrap().attempts(2).backoff(Duration::from_millis(10));
    let range = Range { start_ms: now_ms() - 60_000, end_ms: now_ms(), step_seconds: 15 };
    let started = Instant::now();
    let err = source.fetch(&Plan::default(), range).await.unwrap_err().to_string();
    assert!(err.starts_with(&format!("http_requests_per_second: cannot reach {url}/api/v1/query_range: ")), "{err}");
    // Why, not only that: reqwest's "error sending request" alone would not
    // tell a refused connection from a timeout.
    assert!(err.contains("Connection refused"), "{err}");
    // One pause of 10 ms between the two attempts.
    assert!(started.elapsed() >= Duration::from_millis(10), "{:?}", started.elapsed());

    // Bad PromQL: Prometheus's own words, and no retry (a retry would wait
    // 5 s first).
    let Some(prom) = Prometheus::start("global: {scrape_interval: 1m}\n", "groups: []\n").await else { return };
    let plan = Plan::from_toml("[queries]\napi_latency_p95_seconds = \"sum by (role) (rate(x[1m])\"\n").unwrap();
    let source = PrometheusSource::new(&prom.url()).unwrap().attempts(3).backoff(Duration::from_secs(5));
    let started = Instant::now();
    let err = source.fetch(&plan, range).await.unwrap_err().to_string();
    let took = started.elapsed();
    let expected =
        format!("api_latency_p95_seconds: {}/api/v1/query_range answered 400 Bad Request: bad_data: ", prom.url());
    assert!(err.starts_with(&expected), "{err}");
    assert!(err.contains("parse error"), "{err}");
    assert!(err.ends_with("(query: sum by (role) (rate(x[1m]))"), "{err}");
    assert!(took < Duration::from_secs(4), "a 400 was retried: {took:?}");
}

/// A stub of `/api/v1/query_range`: `answer(n)` for the `n`th call (from 1)
/// with the same form body, so each signal's query counts on its own.
struct Stub {
    url: String,
    calls: Arc<Mutex<HashMap<String, u32>>>,
}

impl Stub {
    async fn start(answer: fn(u32) -> (StatusCode, &'static str)) -> Stub {
        let calls = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
        let counted = calls.clone();
        let handler = move |body: String| async move {
            let n = {
                let mut calls = counted.lock().unwrap();
                let n = calls.entry(body).or_insert(0);
                *n += 1;
                *n
            };
            let (status, json) = answer(n);
            (status, [(header::CONTENT_TYPE, "application/json")], json)
        };
        let url = serve(axum::Router::new().route("/api/v1/query_range", post(handler))).await;
        Stub { url, calls }
    }

    /// How many times each query was asked, sorted.
    fn counts(&self) -> Vec<u32> {
        let mut counts: Vec<u32> = self.calls.lock().unwrap().values().copied().collect();
        counts.sort_unstable();
        counts
    }
}

const MATRIX: &str = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"role":"canary"},"values":[[1700000000,"1"],[1700000015,"2"]]}]}}"#;
const UNAVAILABLE: &str = r#"{"status":"error","errorType":"unavailable","error":"too many queries"}"#;
const BAD_DATA: &str = r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\""}"#;

#[tokio::test]
async fn a_503_is_retried_and_a_400_is_not() {
    let once = |n: u32| if n == 1 { (StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE) } else { (StatusCode::OK, MATRIX) };
    let range = Range { start_ms: 1_700_000_000_000, end_ms: 1_700_000_015_000, step_seconds: 15 };
    let plan = Plan::default();

    // A 503 then an answer: two attempts suffice, every query asked twice.
    let stub = Stub::start(once).await;
    let source = PrometheusSource::new(&stub.url).unwrap().attempts(2).backoff(Duration::from_millis(10));
    let snapshot = source.fetch(&plan, range).await.unwrap();
    assert_eq!(stub.counts(), vec![2; Signal::ALL.len()]);
    assert_eq!(
        values(&snapshot, Signal::DbConnections, "canary"),
        [(1_700_000_000_000, "1".to_owned()), (1_700_000_015_000, "2".to_owned())]
    );
    Metrics::from_snapshot(&snapshot).unwrap();

    // One attempt: the 503 is the answer, Prometheus's words in it.
    let stub = Stub::start(once).await;
    let source = PrometheusSource::new(&stub.url).unwrap().attempts(1);
    let err = source.fetch(&plan, range).await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "http_requests_per_second: {}/api/v1/query_range answered 503 Service Unavailable: unavailable: too many \
             queries (query: {})",
            stub.url,
            Signal::HttpRequestsPerSecond.default_query()
        )
    );
    assert_eq!(stub.counts(), vec![1; Signal::ALL.len()]);

    // Always 503: the configured attempts, then the error.
    let stub = Stub::start(|_| (StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE)).await;
    let source = PrometheusSource::new(&stub.url).unwrap().attempts(3).backoff(Duration::from_millis(10));
    source.fetch(&plan, range).await.unwrap_err();
    assert_eq!(stub.counts(), vec![3; Signal::ALL.len()]);

    // A 400 is the query's fault: asked once.
    let stub = Stub::start(|_| (StatusCode::BAD_REQUEST, BAD_DATA)).await;
    let source = PrometheusSource::new(&stub.url).unwrap().attempts(3).backoff(Duration::from_millis(10));
    let err = source.fetch(&plan, range).await.unwrap_err().to_string();
    assert!(err.contains("answered 400 Bad Request: bad_data: invalid parameter \"query\""), "{err}");
    assert_eq!(stub.counts(), vec![1; Signal::ALL.len()]);
}

/// The alert rules exported from the plan, loaded into a real Prometheus
/// scraping the exporter, fire on the canary's p95 when `run_canary` (what
/// `spark canary run --dry-run` runs) rolls back on the same trigger.
#[tokio::test]
async fn exported_rules_fire_in_prometheus_when_a_dry_run_rolls_back() {
    let p95: P95 = Arc::new(Mutex::new([0.1, 0.1]));
    let router = axum::Router::new().route("/{role}/metrics", get(exporter)).with_state(p95.clone());
    let exporter_url = serve(router).await;
    let port: u16 = exporter_url.rsplit(':').next().unwrap().parse().unwrap();
    let plan = Plan::from_toml(PLAN).unwrap();
    let options = spark_rollback::export::ExportOptions { step_seconds: 1, ..Default::default() };
    let rules = spark_rollback::export::prometheus_rules(&plan, &options);
    let config = format!("{}rule_files: [rules.yml]\n", prometheus_yml(port));
    let Some(prom) = Prometheus::start(&config, &rules).await else { return };
    let engine = Engine::new(plan).unwrap();
    let source = PrometheusSource::new(&prom.url()).unwrap();

    // Both roles scraped and recorded before the run starts.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let range = Range { start_ms: now_ms() - 5_000, end_ms: now_ms(), step_seconds: 1 };
        let s = source.fetch(engine.plan(), range).await.unwrap();
        let p = Signal::ApiLatencyP95Seconds;
        if !values(&s, p, "canary").is_empty() && !values(&s, p, "baseline").is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no scrape of both roles within 15 s:\n{}", prom.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let degrade = {
        let p95 = p95.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            p95.lock().unwrap()[0] = 0.6;
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let options = spark_rollback::RunOptions {
        release: "v-test".to_owned(),
        dry_run: true,
        step_seconds: 1,
        evidence_dir: dir.path().to_owned(),
        first_stage: 0,
    };
    let clock = spark_db::system_clock();
    let stop = tokio::time::sleep(Duration::from_secs(40));
    let report = spark_rollback::run_canary(&engine, &source, None, clock, &options, stop).await.unwrap();
    degrade.await.unwrap();
    let spark_rollback::RunOutcome::RolledBack(evaluation) = &report.outcome else {
        panic!("no rollback: {:?}\n{}", report.outcome, std::fs::read_to_string(&report.trail).unwrap())
    };
    assert_eq!(evaluation.decision.trigger(), Some(TriggerId::ApiP95));
    let trail = std::fs::read_to_string(&report.trail).unwrap();
    assert!(trail.contains("\"status\":\"dry-run: not set\""), "{trail}");
    assert!(trail.lines().last().unwrap().contains("\"outcome\":\"rollback\""), "{trail}");
    let snapshot = report.save_final_snapshot(&engine, &source, &options).await.unwrap();
    assert!(snapshot.as_ref().is_some_and(|p| Snapshot::load(p).is_ok()));

    // Prometheus, from the same trigger definition, fires the alert.
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = client.get(format!("{}/api/v1/alerts", prom.url())).send().await.unwrap().text().await.unwrap();
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        let firing = body["data"]["alerts"].as_array().unwrap().iter().any(|a| {
            a["labels"]["alertname"] == "SparkCanaryApiP95"
                && a["labels"]["trigger"] == "api_p95"
                && a["labels"]["role"] == "canary"
                && a["state"] == "firing"
        });
        if firing {
            break;
        }
        assert!(Instant::now() < deadline, "SparkCanaryApiP95 never fired: {body}\n{}", prom.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
