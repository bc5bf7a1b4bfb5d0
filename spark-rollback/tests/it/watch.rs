//! `watch`: a first night evaluated from history after a restart (the
//! journal resumed, a torn last line cut off), the GO-time baseline making
//! a shared degradation `platform`, a live night that fires, tells a Slack
//! receiver on loopback and rolls back, quick checks that degrade the
//! verdict, and a blind watch. The accelerated end-to-end run against a
//! real Prometheus is `spark watch`'s test in spark-cli.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use spark_db::{Clock as _, ManualClock, SharedClock, SystemClock};
use spark_evidence::EvidenceDir;
use spark_rollback::{
    CheckResult, CheckStatus, Engine, GoBaseline, IntervalRecord, JOURNAL_FORMAT, JournalLine, MemorySource,
    MetricSource, Plan, QuickChecks, Range, Role, RollbackEnv, RollbackError, Signal, Snapshot, SourceError,
    TriggerStatus, Verdict, WatchContext, WatchOptions, WatchStart, WatchSummary, watch,
};

/// The first night's start in the history tests.
const T0: i64 = 1_795_712_400_000;

/// p95 above 400 ms for `held_for` fires; everything else as the default
/// plan.
fn plan(held_for: &str, extra: &str) -> Plan {
    Plan::from_toml(&format!("[triggers.api_p95]\nthreshold = 0.4\nfor = \"{held_for}\"\n{extra}")).unwrap()
}

/// The release from `from_s` to `to_s` every `step` seconds: 50 requests
/// a second, 0.05 % of them 5xx, and the p95 `p95(t)`.
fn release(from_s: i64, to_s: i64, step: usize, p95: impl Fn(i64) -> f64) -> Snapshot {
    let mut s = Snapshot::new(u32::try_from(step).unwrap());
    for t in (from_s..=to_s).step_by(step) {
        s.push(Signal::HttpRequestsPerSecond, Role::Canary, t, 50.0);
        s.push(Signal::Http5xxRatio, Role::Canary, t, 0.0005);
        s.push(Signal::ApiLatencyP95Seconds, Role::Canary, t, p95(t));
    }
    s
}

/// An hour at GO time with the given p95.
fn go_baseline(p95: f64) -> GoBaseline {
    let mut s = Snapshot::new(15);
    for i in 0..240 {
        let t = T0 / 1000 - 7200 + i * 15;
        s.push(Signal::HttpRequestsPerSecond, Role::Baseline, t, 50.0);
        s.push(Signal::Http5xxRatio, Role::Baseline, t, 0.0005);
        s.push(Signal::ApiLatencyP95Seconds, Role::Baseline, t, p95);
    }
    GoBaseline::from_snapshot(&s, "go.json").unwrap()
}

/// A journal holding only the start line of a watch begun at `T0` that
/// then went down: what a crash right after starting leaves.
fn crashed_at_start(dir: &Path, release: &str, baseline: Option<&GoBaseline>) {
    crashed_at_start_of(dir, release, baseline, 60);
}

/// The same for a night of `duration_seconds`.
fn crashed_at_start_of(dir: &Path, release: &str, baseline: Option<&GoBaseline>, duration_seconds: u64) {
    let start = JournalLine::Start(WatchStart {
        format: JOURNAL_FORMAT.to_owned(),
        release: release.to_owned(),
        started_at: spark_rollback::rfc3339(T0),
        started_at_ms: T0,
        duration_seconds,
        interval_seconds: 10,
        step_seconds: 5,
        slo_objective: 0.999,
        baseline: baseline.map(|b| b.reference().clone()),
        baseline_medians: std::collections::BTreeMap::new(),
    });
    let line = serde_json::to_string(&start).unwrap() + "\n";
    std::fs::write(dir.join(format!("first_night_{release}.jsonl")), line).unwrap();
}

/// A watch that is never stopped.
async fn run(
    engine: &Engine,
    source: &dyn MetricSource,
    checks: Option<&dyn QuickChecks>,
    options: &WatchOptions,
    env: &RollbackEnv,
    evidence: &EvidenceDir,
    on_interval: impl FnMut(&IntervalRecord) + Send,
) -> Result<WatchSummary, RollbackError> {
    let cx = WatchContext { engine, source, checks, env, evidence };
    Ok(watch(cx, options, on_interval, std::future::pending()).await?.expect("never stopped"))
}

fn env_at(now: i64) -> RollbackEnv {
    let clock: SharedClock = Arc::new(ManualClock::new(now));
    RollbackEnv::new(clock).unwrap().env(|_| None)
}

fn options(release: &str, baseline: Option<GoBaseline>) -> WatchOptions {
    let o =
        WatchOptions::new(release, Duration::from_secs(60), Duration::from_secs(10)).unwrap().step_seconds(5).unwrap();
    match baseline {
        Some(b) => o.baseline(b),
        None => o,
    }
}

/// Counts how often it ran; answers `status` for `backup`.
struct Checks {
    runs: AtomicUsize,
    status: CheckStatus,
}

#[async_trait]
impl QuickChecks for Checks {
    async fn run(&self) -> Vec<CheckResult> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        vec![
            CheckResult { id: "clock".to_owned(), status: CheckStatus::Pass, summary: "offset 2 ms".to_owned() },
            CheckResult { id: "backup".to_owned(), status: self.status, summary: "last backup 30 h ago".to_owned() },
        ]
    }
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn a_night_missed_while_down_is_caught_up_from_history_and_the_p95_jump_is_an_incident() {
    let dir = tempfile::tempdir().unwrap();
    let evidence = EvidenceDir::create(dir.path()).unwrap();
    let go = go_baseline(0.1);
    crashed_at_start(dir.path(), "v9", Some(&go));
    // The p95 jumps 35 s into the night.
    let source =
        MemorySource::new(release(
            T0 / 1000 - 7200,
            T0 / 1000 + 120,
            5,
            |t| {
                if t >= T0 / 1000 + 35 { 0.9 } else { 0.1 }
            },
        ));
    let checks = Checks { runs: AtomicUsize::new(0), status: CheckStatus::Pass };
    let engine = Engine::new(plan("10s", "")).unwrap();
    let mut seen = Vec::new();
    let summary = run(
        &engine,
        &source,
        Some(&checks as &dyn QuickChecks),
        &options("v9", Some(go)),
        &env_at(T0 + 100_000),
        &evidence,
        |r| {
            seen.push(r.n);
        },
    )
    .await
    .unwrap();

    assert_eq!(seen, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(checks.runs.load(Ordering::SeqCst), 0, "quick checks measure the present, never history");
    assert_eq!(summary.verdict, Verdict::Incident);
    assert_eq!(summary.incidents.len(), 1, "{:?}", summary.incidents);
    let incident = &summary.incidents[0];
    assert_eq!(incident.trigger, "api_p95");
    assert_eq!(incident.first_at, spark_rollback::rfc3339(T0 + 40_000), "held above 400 ms for 10 s at +40 s");
    assert_eq!(incident.intervals, 3);
    assert_eq!(incident.notified, "not_configured");
    // 50 requests a second, 0.05 % failing, against a 0.1 % budget: half of
    // it is spent, whatever the length of the night.
    assert!((summary.requests - 50.0 * 60.0).abs() < 1e-6, "{}", summary.requests);
    assert!((summary.budget_consumed.unwrap() - 0.5).abs() < 1e-9, "{:?}", summary.budget_consumed);

    let journal = lines(&dir.path().join("first_night_v9.jsonl"));
    assert_eq!(journal.len(), 8, "start, six intervals, end");
    let fourth = &journal[4];
    assert_eq!(fourth["caught_up"], true);
    assert_eq!(fourth["triggers"]["api_p95"], "firing");
    assert_eq!(journal[3]["triggers"]["api_p95"], "ok");
    assert!((fourth["burn_1h"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    assert_eq!(fourth["values"]["api_latency_p95_seconds"], 0.9);
    assert_eq!(fourth["values"]["feed_staleness_seconds"], serde_json::Value::Null, "missing, never zero");
    // The snapshot the firing evaluation read is kept, and replays.
    let kept = fourth["snapshot"]["name"].as_str().unwrap();
    let snapshot = Snapshot::load(&dir.path().join(kept)).unwrap();
    assert!(snapshot.signals.contains_key("api_latency_p95_seconds"));

    let report = std::fs::read_to_string(dir.path().join("first_night_v9.md")).unwrap();
    assert!(report.starts_with("# First night of v9\n"), "{report}");
    assert_eq!(report.matches("\n## Interval ").count(), 6, "{report}");
    assert!(report.contains("trigger api_p95 ok → firing"), "{report}");
    assert!(report.contains("| api_latency_p95_seconds | 0.9 | +0.8 (from 0.1) | missing |"), "{report}");
    assert!(report.contains("Error budget left: **50 %**"), "{report}");
    assert!(report.contains("- verdict: **incident**"), "{report}");

    // The last line written whole but its newline lost: kept, and the
    // newline restored.
    let path = dir.path().join("first_night_v9.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.trim_end()).unwrap();
    // Run again: the journal has ended, so the same summary comes back and
    // nothing is appended.
    let again =
        run(&engine, &source, None, &options("v9", Some(go_baseline(0.1))), &env_at(T0 + 500_000), &evidence, |_| {
            panic!("no interval after the end")
        })
        .await
        .unwrap();
    assert_eq!(
        (again.intervals, again.verdict, &again.incidents),
        (summary.intervals, summary.verdict, &summary.incidents)
    );
    assert_eq!(lines(&path).len(), 8);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "the newline is back, nothing else changed");
}

#[tokio::test]
async fn a_restart_resumes_after_the_last_whole_line_and_cuts_off_a_torn_one() {
    let dir = tempfile::tempdir().unwrap();
    let evidence = EvidenceDir::create(dir.path()).unwrap();
    crashed_at_start(dir.path(), "v9", None);
    let source = MemorySource::new(release(T0 / 1000 - 7200, T0 / 1000 + 120, 5, |_| 0.1));
    let engine = Engine::new(plan("10s", "")).unwrap();
    let opts = options("v9", None);
    // The first run is stopped after three intervals: its clock stands at
    // +30 s, so it evaluates two from history, the third live, and sleeps
    // towards the fourth.
    let first = tokio::time::timeout(
        Duration::from_millis(500),
        run(&engine, &source, None, &opts, &env_at(T0 + 30_000), &evidence, |_| {}),
    )
    .await;
    assert!(first.is_err(), "the first run was waiting for the fourth interval");
    let path = dir.path().join("first_night_v9.jsonl");
    let before = std::fs::read_to_string(&path).unwrap();
    assert_eq!(before.lines().count(), 4, "start and three intervals (the third live, at its instant)\n{before}");
    // Torn inside a multi-byte character (the first byte of "×").
    let mut torn = format!("{before}{{\"kind\":\"interval\",\"n\":4,\"detail\":\"burning 2.0").into_bytes();
    torn.push(0xC3);
    std::fs::write(&path, torn).unwrap();

    let mut seen = Vec::new();
    let summary =
        run(&engine, &source, None, &opts, &env_at(T0 + 100_000), &evidence, |r| seen.push(r.n)).await.unwrap();
    assert_eq!(seen, vec![4, 5, 6]);
    assert_eq!(summary.intervals, 6);
    assert_eq!(summary.verdict, Verdict::Clean);
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(after.starts_with(&before), "the lines before the restart are kept byte for byte");
    let numbers: Vec<u64> = lines(&path).iter().filter_map(|l| l["n"].as_u64()).collect();
    assert_eq!(numbers, vec![1, 2, 3, 4, 5, 6]);

    // Resuming with another baseline than the journal's is refused.
    std::fs::remove_file(&path).unwrap();
    crashed_at_start(dir.path(), "v9", None);
    let err =
        run(&engine, &source, None, &options("v9", Some(go_baseline(0.1))), &env_at(T0 + 100_000), &evidence, |_| {})
            .await
            .unwrap_err()
            .to_string();
    assert!(err.contains("was started with no baseline") && err.contains("pass the same --baseline"), "{err}");

    // A damaged line in the middle is an error, not a guess.
    std::fs::write(&path, format!("{before}not json\n")).unwrap();
    let err =
        run(&engine, &source, None, &opts, &env_at(T0 + 100_000), &evidence, |_| {}).await.unwrap_err().to_string();
    assert!(err.contains("line 5 is not a journal line"), "{err}");
}

#[tokio::test]
async fn a_degradation_the_go_time_baseline_shared_is_platform_not_an_incident() {
    let dir = tempfile::tempdir().unwrap();
    let evidence = EvidenceDir::create(dir.path()).unwrap();
    let go = go_baseline(0.9);
    crashed_at_start(dir.path(), "v9", Some(&go));
    let source = MemorySource::new(release(T0 / 1000 - 7200, T0 / 1000 + 120, 5, |_| 0.9));
    let engine = Engine::new(plan("10s", "")).unwrap();
    let summary = run(&engine, &source, None, &options("v9", Some(go)), &env_at(T0 + 100_000), &evidence, |r| {
        assert_eq!(r.triggers["api_p95"], TriggerStatus::Platform, "at interval {}", r.n);
    })
    .await
    .unwrap();
    assert!(summary.incidents.is_empty());
    assert_eq!(summary.verdict, Verdict::Clean);
}

/// Always fails, like a Prometheus that is down.
struct Down;

#[async_trait]
impl MetricSource for Down {
    async fn fetch(&self, _plan: &Plan, _range: Range) -> Result<spark_rollback::Snapshot, SourceError> {
        Err(SourceError::new("cannot reach http://127.0.0.1:9/api/v1/query_range: connection refused"))
    }

    fn describe(&self) -> String {
        "down".to_owned()
    }
}

#[tokio::test]
async fn a_watch_that_cannot_read_its_metrics_says_it_is_blind_and_is_never_clean() {
    let dir = tempfile::tempdir().unwrap();
    let evidence = EvidenceDir::create(dir.path()).unwrap();
    crashed_at_start(dir.path(), "v9", None);
    let engine = Engine::new(plan("10s", "")).unwrap();
    let mut records = Vec::new();
    let summary = run(&engine, &Down, None, &options("v9", None), &env_at(T0 + 100_000), &evidence, |r| {
        records.push(r.clone());
    })
    .await
    .unwrap();
    assert_eq!(summary.source_errors, 6);
    assert_eq!(summary.verdict, Verdict::Degraded);
    let blind: Vec<u32> =
        records.iter().filter(|r| r.notifications.iter().any(|s| s.about == "blind")).map(|r| r.n).collect();
    assert_eq!(blind, vec![2], "told once, at the second error in a row");
    assert!(records.iter().all(|r| r.triggers.is_empty() && r.budget_left.is_none()));
    let report = std::fs::read_to_string(dir.path().join("first_night_v9.md")).unwrap();
    assert!(report.contains("**The metrics could not be read**: cannot reach"), "{report}");
}

/// A Slack incoming webhook on loopback; the first post fails with 500
/// when `fail_first`. The URL and the posts.
async fn slack(fail_first: bool) -> (String, Arc<Mutex<Vec<String>>>) {
    let posts: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = posts.clone();
    let router = axum::Router::new().route(
        "/services/T000/B000/SECRETTOKEN",
        post(move |body: Bytes| {
            let seen = seen.clone();
            async move {
                let mut seen = seen.lock().unwrap();
                seen.push(String::from_utf8_lossy(&body).into_owned());
                if fail_first && seen.len() == 1 { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/services/T000/B000/SECRETTOKEN", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, posts)
}

fn now_s() -> i64 {
    SystemClock.now_ms() / 1000
}

#[tokio::test]
async fn a_live_night_that_fires_tells_slack_at_once_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let evidence = EvidenceDir::create(dir.path()).unwrap();
    let (url, posts) = slack(true).await;
    let marker = dir.path().join("rolled-back");
    let action = format!(
        "[[rollback.actions]]\nkind = \"command\"\ncommand = [\"touch\", {:?}]\n",
        marker.display().to_string()
    );
    let engine = Engine::new(plan("2s", &action)).unwrap();
    let source = MemorySource::new(release(now_s() - 900, now_s() + 60, 1, |_| 0.9));
    let vars = HashMap::from([("SLACK_WEBHOOK_URL".to_owned(), url.clone())]);
    let clock: SharedClock = Arc::new(SystemClock);
    let env = RollbackEnv::new(clock)
        .unwrap()
        .env(move |name| vars.get(name).cloned())
        .slack_retry(3, Duration::from_millis(20));
    let opts = WatchOptions::new("v10", Duration::from_secs(3), Duration::from_secs(1))
        .unwrap()
        .step_seconds(1)
        .unwrap()
        .baseline(go_baseline(0.1))
        .slack_env("SLACK_WEBHOOK_URL")
        .rollback(true);
    let mut records = Vec::new();
    let summary = run(&engine, &source, None, &opts, &env, &evidence, |r| records.push(r.clone())).await.unwrap();

    assert_eq!(summary.verdict, Verdict::RolledBack);
    assert_eq!(records.len(), 1, "the rollback ends the watch");
    let r = &records[0];
    assert!(!r.caught_up);
    assert_eq!(r.firing[0].trigger, "api_p95");
    let sent = &r.notifications[0];
    assert_eq!((sent.about.as_str(), sent.outcome.as_str(), sent.attempts), ("fired", "delivered", 2), "{sent:?}");
    let posts = posts.lock().unwrap().clone();
    assert_eq!(posts.len(), 2);
    assert!(posts[1].contains("api_p95") && posts[1].contains("Rolling back now"), "{}", posts[1]);
    let rollback = r.rollback.as_ref().unwrap();
    assert!(rollback.succeeded);
    assert!(marker.exists(), "the plan's command ran");
    assert!(Path::new(&rollback.bundle).join("manifest.json").exists());
    assert_eq!(summary.incidents[0].rollback.as_ref(), Some(rollback));
    for name in ["first_night_v10.md", "first_night_v10.jsonl"] {
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert!(!text.contains("SECRETTOKEN"), "{name} holds the Slack URL:\n{text}");
    }
}

#[tokio::test]
async fn quick_checks_run_at_every_live_interval_and_a_failing_one_degrades_the_night() {
    let dir = tempfile::tempdir().unwrap();
    let evidence = EvidenceDir::create(dir.path()).unwrap();
    let source = MemorySource::new(release(now_s() - 900, now_s() + 60, 1, |_| 0.1));
    let checks = Checks { runs: AtomicUsize::new(0), status: CheckStatus::Fail };
    let engine = Engine::new(plan("10s", "")).unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let env = RollbackEnv::new(clock).unwrap().env(|_| None);
    let opts =
        WatchOptions::new("v11", Duration::from_secs(2), Duration::from_secs(1)).unwrap().step_seconds(1).unwrap();
    let summary =
        run(&engine, &source, Some(&checks as &dyn QuickChecks), &opts, &env, &evidence, |_| {}).await.unwrap();
    assert_eq!(checks.runs.load(Ordering::SeqCst), 2);
    assert_eq!(summary.check_failures, 2);
    assert_eq!(summary.verdict, Verdict::Degraded);
    let report = std::fs::read_to_string(dir.path().join("first_night_v11.md")).unwrap();
    assert!(report.contains("backup FAIL (last backup 30 h ago)"), "{report}");
}

fn env_with_slack(now: i64, url: String) -> RollbackEnv {
    let clock: SharedClock = Arc::new(ManualClock::new(now));
    RollbackEnv::new(clock)
        .unwrap()
        .env(move |name| (name == "SLACK_WEBHOOK_URL").then(|| url.clone()))
        .slack_retry(2, Duration::from_millis(10))
}

/// The p95 jumps 35 s into the night (firing from +40 s).
fn jumping() -> MemorySource {
    MemorySource::new(release(T0 / 1000 - 7200, T0 / 1000 + 120, 5, |t| if t >= T0 / 1000 + 35 { 0.9 } else { 0.1 }))
}

#[tokio::test]
async fn a_stopped_watch_resumed_while_a_trigger_fires_pages_once_and_the_night_ends_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let evidence = EvidenceDir::create(dir.path()).unwrap();
    // A 45 s night at 10 s: +10, +20, +30, +40 and a short last one at +45.
    crashed_at_start_of(dir.path(), "v9", None, 45);
    let (url, posts) = slack(false).await;
    let engine = Engine::new(plan("10s", "")).unwrap();
    let source = jumping();
    let opts = options("v9", None).slack_env("SLACK_WEBHOOK_URL");
    // Its clock at +40 s: three intervals from history, the fourth live,
    // which fires and pages; stopped while it waits for the fifth.
    let env = env_with_slack(T0 + 40_000, url.clone());
    let cx = WatchContext { engine: &engine, source: &source, checks: None, env: &env, evidence: &evidence };
    let (tell, told) = tokio::sync::oneshot::channel::<()>();
    let mut tell = Some(tell);
    let on_interval = |r: &IntervalRecord| {
        if r.n == 4 {
            let _ = tell.take().map(|t| t.send(()));
        }
    };
    let stop = async move {
        let _ = told.await;
    };
    let stopped = watch(cx, &opts, on_interval, stop).await.unwrap();
    assert!(stopped.is_none(), "stopped, not finished");
    assert_eq!(posts.lock().unwrap().len(), 1);

    let env = env_with_slack(T0 + 100_000, url);
    let mut seen = Vec::new();
    let summary =
        run(&engine, &source, None, &opts, &env, &evidence, |r| seen.push((r.n, r.at_ms - T0))).await.unwrap();
    assert_eq!(seen, vec![(5, 45_000)], "the short last interval ends the night at its end");
    assert_eq!(posts.lock().unwrap().len(), 1, "still firing after the restart: not paged again");
    assert_eq!(summary.incidents.len(), 1);
    assert_eq!(summary.incidents[0].intervals, 2, "+40 s and +45 s");
    assert_eq!(summary.incidents[0].notified, "delivered");
}

#[tokio::test]
async fn a_slack_that_cannot_be_reached_is_recorded_without_its_url() {
    let dir = tempfile::tempdir().unwrap();
    let evidence = EvidenceDir::create(dir.path()).unwrap();
    crashed_at_start(dir.path(), "v9", None);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let env = env_with_slack(T0 + 100_000, format!("http://127.0.0.1:{closed}/services/T000/B000/SECRETTOKEN"));
    let engine = Engine::new(plan("10s", "")).unwrap();
    let opts = options("v9", None).slack_env("SLACK_WEBHOOK_URL");
    let summary = run(&engine, &jumping(), None, &opts, &env, &evidence, |_| {}).await.unwrap();
    assert_eq!(summary.incidents[0].notified, "failed");
    for name in ["first_night_v9.md", "first_night_v9.jsonl"] {
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert!(text.contains("cannot reach Slack") || name.ends_with(".jsonl"), "{text}");
        assert!(!text.contains("SECRETTOKEN"), "{name} holds the Slack URL:\n{text}");
    }
}

#[tokio::test]
async fn a_rollback_the_watch_was_stopped_during_is_never_started_again() {
    let dir = tempfile::tempdir().unwrap();
    let evidence = EvidenceDir::create(dir.path()).unwrap();
    crashed_at_start(dir.path(), "v9", None);
    let started = JournalLine::RollbackStarted(spark_rollback::RollbackStarted {
        n: 4,
        at: spark_rollback::rfc3339(T0 + 40_000),
        trigger: "api_p95".to_owned(),
    });
    let path = dir.path().join("first_night_v9.jsonl");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&(serde_json::to_string(&started).unwrap() + "\n"));
    std::fs::write(&path, text).unwrap();
    let marker = dir.path().join("rolled-back-again");
    let action = format!(
        "[[rollback.actions]]\nkind = \"command\"\ncommand = [\"touch\", {:?}]\n",
        marker.display().to_string()
    );
    let engine = Engine::new(plan("10s", &action)).unwrap();
    // At +45 s the fourth interval (+40 s, firing) is the newest missed one:
    // live, so it would roll back if the journal's rollback were forgotten.
    let env = env_at(T0 + 45_000);
    let opts = options("v9", None).rollback(true);
    let summary = run(&engine, &jumping(), None, &opts, &env, &evidence, |_| panic!("no interval after a rollback"))
        .await
        .unwrap();
    assert!(!marker.exists(), "the rollback ran a second time");
    assert_eq!(summary.verdict, Verdict::RolledBack);
    let rollback = summary.incidents[0].rollback.as_ref().unwrap();
    assert!(rollback.error.as_deref().unwrap().contains("unknown"), "{rollback:?}");
}

#[tokio::test]
async fn a_second_watch_on_the_same_journal_is_refused_while_the_first_runs() {
    let dir = tempfile::tempdir().unwrap();
    let evidence = EvidenceDir::create(dir.path()).unwrap();
    crashed_at_start(dir.path(), "v9", None);
    let engine = Engine::new(plan("10s", "")).unwrap();
    let source = jumping();
    let opts = options("v9", None);
    // The first waits for its first interval (its clock stands at the start).
    let env = env_at(T0);
    let cx = WatchContext { engine: &engine, source: &source, checks: None, env: &env, evidence: &evidence };
    let (release, stop) = tokio::sync::oneshot::channel::<()>();
    let first = watch(cx, &opts, |_| {}, async move {
        let _ = stop.await;
    });
    let second = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let err = run(&engine, &source, None, &opts, &env_at(T0 + 100_000), &evidence, |_| {}).await.unwrap_err();
        release.send(()).unwrap();
        err.to_string()
    };
    let (first, err) = tokio::join!(first, second);
    assert!(first.unwrap().is_none(), "the first was stopped, not finished");
    assert!(err.contains("another watch of v9 is running"), "{err}");
    // Stopped, it let go: the next run goes on.
    let summary = run(&engine, &source, None, &opts, &env_at(T0 + 100_000), &evidence, |_| {}).await.unwrap();
    assert_eq!(summary.intervals, 6);
}

#[tokio::test]
async fn the_newest_interval_missed_while_down_is_live_and_rolls_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let evidence = EvidenceDir::create(dir.path()).unwrap();
    crashed_at_start(dir.path(), "v9", None);
    let marker = dir.path().join("rolled-back");
    let action = format!(
        "[[rollback.actions]]\nkind = \"command\"\ncommand = [\"touch\", {:?}]\n",
        marker.display().to_string()
    );
    let engine = Engine::new(plan("10s", &action)).unwrap();
    let opts = options("v9", None).rollback(true);
    // Restarted 5 s after the fourth interval (+40 s, firing) was due.
    let mut seen = Vec::new();
    let summary =
        run(&engine, &jumping(), None, &opts, &env_at(T0 + 45_000), &evidence, |r| seen.push((r.n, r.caught_up)))
            .await
            .unwrap();
    assert_eq!(seen, vec![(1, true), (2, true), (3, true), (4, false)]);
    assert!(marker.exists(), "the restart did not delay the rollback by an interval");
    assert_eq!(summary.verdict, Verdict::RolledBack);
}

/// Records the ranges it is asked for.
struct Recording(MemorySource, Mutex<Vec<Range>>);

#[async_trait]
impl MetricSource for Recording {
    async fn fetch(&self, plan: &Plan, range: Range) -> Result<spark_rollback::Snapshot, SourceError> {
        self.1.lock().unwrap().push(range);
        self.0.fetch(plan, range).await
    }

    fn describe(&self) -> String {
        "recording".to_owned()
    }
}

#[tokio::test]
async fn a_long_night_reads_the_triggers_lookback_not_the_whole_night_on_the_watch_grid() {
    let dir = tempfile::tempdir().unwrap();
    let evidence = EvidenceDir::create(dir.path()).unwrap();
    // Eight hours, hourly, at a 60 s step; the default plan looks back 6 h
    // (the slow burn) and two of its intervals.
    let start = JournalLine::Start(WatchStart {
        format: JOURNAL_FORMAT.to_owned(),
        release: "v9".to_owned(),
        started_at: spark_rollback::rfc3339(T0),
        started_at_ms: T0,
        duration_seconds: 8 * 3600,
        interval_seconds: 3600,
        step_seconds: 60,
        slo_objective: 0.999,
        baseline: None,
        baseline_medians: std::collections::BTreeMap::new(),
    });
    std::fs::write(dir.path().join("first_night_v9.jsonl"), serde_json::to_string(&start).unwrap() + "\n").unwrap();
    let source =
        Recording(MemorySource::new(release(T0 / 1000 - 600, T0 / 1000 + 9 * 3600, 60, |_| 0.1)), Mutex::default());
    let engine = Engine::new(Plan::default()).unwrap();
    let opts = WatchOptions::new("v9", Duration::from_secs(8 * 3600), Duration::from_secs(3600))
        .unwrap()
        .step_seconds(60)
        .unwrap();
    let summary = run(&engine, &source, None, &opts, &env_at(T0 + 10 * 3600 * 1000), &evidence, |_| {}).await.unwrap();
    assert_eq!(summary.intervals, 8);
    let ranges = source.1.lock().unwrap().clone();
    let lookback = 6 * 3600 * 1000 + 2 * 30_000;
    for (i, r) in ranges.iter().enumerate() {
        let at = T0 + i64::try_from(i + 1).unwrap() * 3_600_000;
        assert_eq!(r.end_ms, at);
        assert_eq!((r.start_ms - T0).rem_euclid(60_000), 0, "on the watch's grid: {r:?}");
        let earliest = (at - lookback).min(if i == 0 { T0 } else { at - 3_600_000 });
        assert!(r.start_ms < earliest && r.start_ms >= earliest - 60_000, "interval {}: {r:?}", i + 1);
    }
    // Every request of the night was counted once, the first hour's with its
    // base before the start: 50 a second for 8 hours.
    assert!((summary.requests - 50.0 * 8.0 * 3600.0).abs() < 1e-6, "{}", summary.requests);
}
