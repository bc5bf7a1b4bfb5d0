//! Rollbacks against a loopback webhook receiver that verifies the outbox
//! signature and a loopback Slack receiver that can fail on demand: what
//! runs, what is called, what the evidence says, and that no secret is
//! written down.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use spark_db::{Clock, SharedClock, SystemClock};
use spark_evidence::{EvidenceDir, sha256_hex};
use spark_rollback::{
    ActionOutcome, Engine, Evaluation, MemorySource, Metrics, NotifyOutcome, Plan, Role, RollbackEnv, RollbackRecord,
    RollbackRequest, Signal, Snapshot, execute,
};

const WEBHOOK_SECRET: &str = "whsec-9f2c1d-SECRET";
const SLACK_TOKEN: &str = "T00SECRET/B00SECRET/xoxSECRETtoken";

/// What the receivers saw.
#[derive(Default)]
struct Seen {
    /// Each webhook body and whether its signature verified.
    webhooks: Vec<(serde_json::Value, Result<(), String>, HeaderMap)>,
    /// Each Slack request body.
    slack: Vec<serde_json::Value>,
    /// Slack answers 500 to this many requests before answering 200.
    slack_failures: usize,
    /// Slack takes this long to answer.
    slack_delay: Duration,
}

type Shared = Arc<Mutex<Seen>>;

async fn webhook(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = SystemClock.now_ms().div_euclid(1000);
    let signature = headers.get("x-spark-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
    let verified =
        spark_outbox::webhook::verify(WEBHOOK_SECRET.as_bytes(), signature, &body, now, Duration::from_secs(60))
            .map_err(|e| e.to_string());
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    seen.lock().unwrap().webhooks.push((json, verified, headers));
    StatusCode::OK
}

async fn slack(State(seen): State<Shared>, body: Bytes) -> StatusCode {
    let delay = seen.lock().unwrap().slack_delay;
    tokio::time::sleep(delay).await;
    let mut seen = seen.lock().unwrap();
    seen.slack.push(serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null));
    if seen.slack.len() <= seen.slack_failures { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK }
}

/// Both receivers on one free loopback port; the base URL and what they see.
async fn receivers(slack_failures: usize) -> (String, Shared) {
    let seen: Shared = Arc::new(Mutex::new(Seen { slack_failures, ..Seen::default() }));
    let router = axum::Router::new()
        .route("/hooks/rollback", post(webhook))
        .route(&format!("/services/{SLACK_TOKEN}"), post(slack))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.expect("the receivers serve") });
    (url, seen)
}

/// A plan with the given actions (TOML `[[rollback.actions]]` tables) and
/// Slack from `SLACK_WEBHOOK_URL`.
fn plan(actions: &str) -> Plan {
    let text = format!(
        "[rollback]\nrunbook = \"https://wiki.example/runbooks/orders-db\"\nrelease_has_migration = true\n\
         [rollback.slack]\nwebhook_env = \"SLACK_WEBHOOK_URL\"\n{actions}"
    );
    Plan::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn command_action(argv: &[&str], timeout: &str) -> String {
    let argv: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
    format!("[[rollback.actions]]\nkind = \"command\"\ncommand = [{}]\ntimeout = \"{timeout}\"\n", argv.join(", "))
}

fn webhook_action(base: &str) -> String {
    format!(
        "[[rollback.actions]]\nkind = \"webhook\"\nurl = \"{base}/hooks/rollback\"\nsecret_env = \"ROLLBACK_HOOK_SECRET\"\ntimeout = \"5s\"\n"
    )
}

/// The environment the rollback sees: the two secrets, never the process's.
fn env(base: &str) -> RollbackEnv {
    let vars = HashMap::from([
        ("ROLLBACK_HOOK_SECRET".to_owned(), WEBHOOK_SECRET.to_owned()),
        ("SLACK_WEBHOOK_URL".to_owned(), format!("{base}/services/{SLACK_TOKEN}")),
    ]);
    let clock: SharedClock = Arc::new(SystemClock);
    RollbackEnv::new(clock).unwrap().env(move |name| vars.get(name).cloned()).slack_retry(4, Duration::from_millis(20))
}

/// A stage whose canary p95 jumps to 520 ms, and the engine's rollback
/// evaluation of it.
fn slow_stage() -> (Snapshot, Evaluation) {
    let start = 1_795_712_400;
    let mut snapshot = Snapshot::new(15);
    for i in 0..=40 {
        let t = start + i * 15;
        snapshot.push(Signal::ApiLatencyP95Seconds, Role::Canary, t, if i > 12 { 0.52 } else { 0.25 });
        snapshot.push(Signal::ApiLatencyP95Seconds, Role::Baseline, t, 0.09);
    }
    let engine = Engine::new(Plan::default()).unwrap();
    let metrics = Metrics::from_snapshot(&snapshot).unwrap();
    let replay = engine.replay(&metrics, engine.plan().stage("25%").unwrap(), start * 1000, None).unwrap();
    assert_eq!(replay.decision().kind(), "rollback");
    (snapshot, replay.last)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

/// `dir` holds one sealed bundle `rollback_<stamp>/` whose every file's
/// digest matches the record and the manifest, and no secret is in any.
fn assert_evidence(record: &RollbackRecord, dir: &Path) {
    assert_eq!(record.files.len(), 4, "{:?}", record.files);
    let stamp = spark_evidence::utc_stamp(record.decided_at_ms);
    assert_eq!(names(dir), vec![format!("rollback_{stamp}")]);
    assert_eq!(record.bundle, dir.join(format!("rollback_{stamp}")));
    let mut expected = vec![
        format!("metrics_after_rollback_{stamp}.txt"),
        format!("metrics_before_rollback_{stamp}.txt"),
        format!("rollback_{stamp}.json"),
        format!("rollback_{stamp}.txt"),
        spark_evidence::MANIFEST.to_owned(),
    ];
    expected.sort();
    assert_eq!(names(&record.bundle), expected);
    let manifest = record.manifest.as_ref().expect("the bundle is sealed");
    assert_eq!(manifest.path, record.bundle.join(spark_evidence::MANIFEST));
    let report = spark_evidence::verify(&record.bundle, None).unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.files(), 4);
    for file in &record.files {
        let bytes = std::fs::read(&file.path).unwrap();
        assert_eq!(sha256_hex(&bytes), file.sha256, "{}", file.name);
        let text = String::from_utf8(bytes).unwrap();
        for secret in [WEBHOOK_SECRET, SLACK_TOKEN, "T00SECRET", "xoxSECRETtoken"] {
            assert!(!text.contains(secret), "{} holds the secret {secret}", file.name);
        }
    }
    let text = read(&record.file("rollback_").unwrap().path);
    for digest in [&record.metrics_before, &record.metrics_after] {
        let digest = digest.as_ref().unwrap();
        assert!(text.contains(&format!("{}  {}", digest.sha256, digest.name)), "{text}");
    }
}

#[tokio::test]
async fn a_dry_run_records_everything_and_runs_and_calls_nothing() {
    let (base, seen) = receivers(0).await;
    let work = tempfile::tempdir().unwrap();
    let marker = work.path().join("ran");
    let script = format!("touch {}", marker.display());
    let plan = plan(&(command_action(&["sh", "-c", &script], "5s") + &webhook_action(&base)));
    let evidence = EvidenceDir::create(&work.path().join("evidence")).unwrap();
    let request =
        RollbackRequest::new("p95 above 400 ms", "25%", SystemClock.now_ms()).trigger("api_p95").dry_run(true);

    let record = execute(&plan, &request, &env(&base), &evidence).await.unwrap();

    assert!(!marker.exists(), "the command ran in a dry run");
    let seen = seen.lock().unwrap();
    assert!(seen.webhooks.is_empty() && seen.slack.is_empty(), "a dry run called a receiver");
    assert!(record.dry_run && record.succeeded());
    assert!(record.actions.iter().all(|a| a.outcome == ActionOutcome::DryRun), "{:?}", record.actions);
    assert_eq!(record.notification.outcome, NotifyOutcome::DryRun);
    assert_eq!(record.notification.detail, "would post to the Slack webhook in $SLACK_WEBHOOK_URL");
    assert_evidence(&record, evidence.path());
    let text = read(&record.file("rollback_").unwrap().path);
    assert!(text.contains("DRY RUN: nothing below was run or called"), "{text}");
    assert!(text.contains(&format!("webhook: {base}/hooks/rollback")), "{text}");
    let metrics = read(&record.metrics_before.as_ref().unwrap().path);
    assert!(metrics.contains("No metrics source was configured"), "{metrics}");
}

#[tokio::test]
async fn a_rollback_runs_the_command_calls_the_signed_webhook_and_retries_slack() {
    // Slack fails three times, then answers: the fourth attempt delivers.
    let (base, seen) = receivers(3).await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let script = format!(
        "printenv SPARK_ROLLBACK_REASON > {0}; printenv SPARK_ROLLBACK_STAGE >> {0}; printenv SPARK_ROLLBACK_TRIGGER >> {0}; echo done",
        out.display()
    );
    let plan = plan(&(command_action(&["sh", "-c", &script], "5s") + &webhook_action(&base)));
    let evidence = EvidenceDir::create(&work.path().join("evidence")).unwrap();
    let (snapshot, evaluation) = slow_stage();
    let env = env(&base).metrics(Arc::new(MemorySource::new(snapshot)), Duration::from_secs(3600 * 24 * 365 * 30), 15);
    let decided = SystemClock.now_ms();
    let request = RollbackRequest::new("p95 above 400 ms", "25%", decided).evaluation(evaluation);

    let started = Instant::now();
    let record = execute(&plan, &request, &env, &evidence).await.unwrap();
    let elapsed = started.elapsed();

    // The command ran with the rollback in its environment.
    assert_eq!(read(&out), "p95 above 400 ms\n25%\napi_p95\n");
    let command = &record.actions[0];
    assert_eq!((command.outcome, command.exit_code), (ActionOutcome::Succeeded, Some(0)), "{command:?}");
    assert_eq!(command.stdout, "done\n");
    // The webhook was called once, signed like the outbox's.
    let seen = seen.lock().unwrap();
    assert_eq!(seen.webhooks.len(), 1);
    let (body, verified, headers) = &seen.webhooks[0];
    assert_eq!(verified, &Ok(()), "the signature does not verify");
    assert_eq!(body["reason"], "p95 above 400 ms");
    assert_eq!(body["stage"], "25%");
    assert_eq!(body["trigger"], "api_p95");
    assert_eq!(body["decided_at"], spark_rollback::rfc3339(decided));
    assert_eq!(headers["x-spark-event-type"], "spark.rollback");
    assert_eq!(record.actions[1].http_status, Some(200));
    // Slack: three failures, then delivered.
    assert_eq!(seen.slack.len(), 4);
    assert_eq!(record.notification.outcome, NotifyOutcome::Delivered, "{:?}", record.notification);
    assert_eq!(record.notification.attempts, 4);
    let text = seen.slack[3]["text"].as_str().unwrap();
    assert!(text.contains("Rollback of stage 25%: p95 above 400 ms (trigger api_p95)"), "{text}");
    assert!(text.contains("All 2 rollback actions succeeded"), "{text}");
    assert!(text.contains("https://wiki.example/runbooks/orders-db"), "{text}");
    assert!(record.succeeded());

    assert_evidence(&record, evidence.path());
    let text = read(&record.file("rollback_").unwrap().path);
    for expected in [
        "reason:      p95 above 400 ms",
        "trigger:     api_p95",
        "rollback at 2026-11-26T17:08:00Z (stage 25%): api_p95:",
        "trigger api_p95 FIRING",
        "canary=0.52",
        "1. command: sh -c",
        "succeeded: exited with status 0; exit status 0",
        "2. webhook: http://127.0.0.1:",
        "HTTP 200",
        "delivered: Slack answered 200 OK",
        "attempts: 4",
        "the release carried a migration: YES",
        "never rolled back automatically; restore runbook: https://wiki.example/runbooks/orders-db",
    ] {
        assert!(text.contains(expected), "{expected:?} not in\n{text}");
    }
    let json_file = record.files.iter().find(|f| f.name.ends_with(".json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&read(&json_file.path)).unwrap();
    assert_eq!(json["format"], "spark-rollback-record/v1");
    assert_eq!(json["evaluation"]["trigger"], "api_p95");
    let before = read(&record.metrics_before.as_ref().unwrap().path);
    assert!(before.contains("source: a snapshot in memory"), "{before}");
    let p95 = before.lines().find(|l| l.starts_with("api_latency_p95_seconds ")).unwrap();
    assert!(p95.contains("0.52 at 2026-11-26T17:10:00Z") && p95.ends_with("0.09 at 2026-11-26T17:10:00Z"), "{p95}");
    assert!(before.contains("\"format\": \"spark-metrics-snapshot/v1\""), "{before}");
    let json_start = before.find("{\n").unwrap();
    Snapshot::parse(&before[json_start..]).expect("the metrics file carries a valid snapshot");

    // The targets, loosely: this machine is shared, so the bounds
    // are the targets themselves rather than tighter ones.
    let t = &record.timing;
    eprintln!(
        "measured: decision to first action {:?} ms, decision to completion {} ms (commands {} ms, without them {} ms), evidence {} ms, execute {elapsed:?}",
        t.decision_to_first_action_ms,
        t.decision_to_completion_ms,
        t.commands_ms,
        t.excluding_commands_ms,
        t.evidence_ms
    );
    assert!(t.decision_to_first_action_ms.unwrap() < 1_000, "{t:?}");
    assert!(t.excluding_commands_ms < 5_000, "{t:?}");
}

#[tokio::test]
async fn a_slack_that_always_fails_does_not_fail_the_rollback() {
    let (base, seen) = receivers(usize::MAX).await;
    let work = tempfile::tempdir().unwrap();
    let plan = plan(&webhook_action(&base));
    let evidence = EvidenceDir::create(work.path()).unwrap();
    let request = RollbackRequest::new("manual", "5%", SystemClock.now_ms());

    let record = execute(&plan, &request, &env(&base), &evidence).await.unwrap();

    assert!(record.succeeded());
    assert_eq!(record.actions[0].outcome, ActionOutcome::Succeeded);
    assert_eq!(record.notification.outcome, NotifyOutcome::Failed);
    assert_eq!(record.notification.attempts, 4);
    assert_eq!(record.notification.http_status, Some(500));
    assert_eq!(seen.lock().unwrap().slack.len(), 4);
    assert_evidence(&record, evidence.path());
    let text = read(&record.file("rollback_").unwrap().path);
    assert!(text.contains("failed: Slack answered 500 Internal Server Error (attempt 4 of 4); given up"), "{text}");
}

#[tokio::test]
async fn a_command_past_its_timeout_is_killed_and_the_next_action_still_runs() {
    let (base, seen) = receivers(0).await;
    let work = tempfile::tempdir().unwrap();
    let actions = command_action(&["sleep", "30"], "300ms")
        + &command_action(&["sh", "-c", "echo oops >&2; exit 3"], "5s")
        + &webhook_action(&base);
    let plan = plan(&actions);
    let evidence = EvidenceDir::create(work.path()).unwrap();
    let request = RollbackRequest::new("manual", "5%", SystemClock.now_ms());

    let started = Instant::now();
    let record = execute(&plan, &request, &env(&base), &evidence).await.unwrap();

    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let [sleep, exit3, hook] = &record.actions[..] else { panic!("{:?}", record.actions) };
    assert_eq!(sleep.outcome, ActionOutcome::TimedOut, "{sleep:?}");
    assert_eq!(sleep.detail, "still running after 300ms: killed");
    assert!((300..5_000).contains(&sleep.duration_ms), "{sleep:?}");
    assert_eq!((exit3.outcome, exit3.exit_code, exit3.stderr.as_str()), (ActionOutcome::Failed, Some(3), "oops\n"));
    assert_eq!(hook.outcome, ActionOutcome::Succeeded);
    assert_eq!(seen.lock().unwrap().webhooks.len(), 1);
    assert!(!record.succeeded());
    assert!(record.notification.text.contains("2 of 3 rollback actions FAILED (#1 command, #2 command)"));
    let text = read(&record.file("rollback_").unwrap().path);
    assert!(text.contains("timed_out: still running after 300ms: killed"), "{text}");
    assert!(text.contains("failed: exited with status 3; exit status 3"), "{text}");
    assert!(text.contains("       | oops"), "{text}");
}

#[tokio::test]
async fn a_webhook_whose_secret_is_not_set_is_not_sent_unsigned() {
    let (base, seen) = receivers(0).await;
    let work = tempfile::tempdir().unwrap();
    let plan = plan(&webhook_action(&base));
    let evidence = EvidenceDir::create(work.path()).unwrap();
    let env = RollbackEnv::new(Arc::new(SystemClock)).unwrap().env(|_| None);
    let request = RollbackRequest::new("manual", "5%", SystemClock.now_ms());

    let record = execute(&plan, &request, &env, &evidence).await.unwrap();

    assert_eq!(record.actions[0].outcome, ActionOutcome::Failed);
    assert_eq!(record.actions[0].detail, "the secret variable ROLLBACK_HOOK_SECRET is not set; not sent unsigned");
    assert_eq!(record.notification.outcome, NotifyOutcome::Failed);
    assert_eq!(record.notification.detail, "$SLACK_WEBHOOK_URL is not set; not notified");
    let seen = seen.lock().unwrap();
    assert!(seen.webhooks.is_empty() && seen.slack.is_empty());
}

#[tokio::test]
async fn two_rollbacks_in_one_second_keep_both_records_and_an_empty_reason_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let evidence = EvidenceDir::create(work.path()).unwrap();
    let plan = Plan::default();
    let env = RollbackEnv::new(Arc::new(SystemClock)).unwrap().env(|_| None);
    let request = RollbackRequest::new("manual", "5%", 1_795_712_400_000);
    let first = execute(&plan, &request, &env, &evidence).await.unwrap();
    let second = execute(&plan, &request, &env, &evidence).await.unwrap();
    assert_eq!(first.file("rollback_").unwrap().name, "rollback_20261126T170000Z.txt");
    assert_eq!(second.file("rollback_").unwrap().name, "rollback_20261126T170000Z_2.txt");
    assert_eq!(names(work.path()), ["rollback_20261126T170000Z", "rollback_20261126T170000Z_2"]);
    for record in [&first, &second] {
        assert_eq!(std::fs::read_dir(&record.bundle).unwrap().count(), 5);
        assert!(spark_evidence::verify(&record.bundle, None).unwrap().is_intact());
    }
    assert_eq!(first.notification.outcome, NotifyOutcome::NotConfigured);
    assert_eq!(first.timing.decision_to_first_action_ms, None);

    let err = execute(&plan, &RollbackRequest::new(" ", "5%", 0), &env, &evidence).await.unwrap_err();
    assert_eq!(err.to_string(), "rollback: the reason is empty");
}

#[tokio::test]
async fn a_signed_rollback_bundle_verifies_with_its_key_and_names_a_changed_record() {
    let work = tempfile::tempdir().unwrap();
    let evidence = EvidenceDir::create(work.path()).unwrap();
    let key = spark_evidence::keys::generate().unwrap();
    let env = RollbackEnv::new(Arc::new(SystemClock)).unwrap().env(|_| None).sign_key(key.clone());
    let request = RollbackRequest::new("rehearsal", "5%", 1_795_712_400_000).dry_run(true);
    let record = execute(&Plan::default(), &request, &env, &evidence).await.unwrap();
    assert!(record.signed);

    let report = spark_evidence::verify(&record.bundle, Some(&key.verifying_key())).unwrap();
    assert!(report.is_intact() && report.is_signed() && report.signature_checked(), "{report}");
    let other = spark_evidence::keys::generate().unwrap().verifying_key();
    let report = spark_evidence::verify(&record.bundle, Some(&other)).unwrap();
    assert!(!report.is_intact(), "another key verified the bundle");

    // One flipped byte in the JSON record: verify names that file.
    let json = &record.file("rollback_20261126T170000Z.json").unwrap().path;
    let mut bytes = std::fs::read(json).unwrap();
    bytes[10] ^= 1;
    std::fs::write(json, bytes).unwrap();
    let report = spark_evidence::verify(&record.bundle, Some(&key.verifying_key())).unwrap();
    let problems: Vec<String> = report.problems().iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("rollback_20261126T170000Z.json"), "{problems:?}");
}

#[tokio::test]
async fn a_hanging_slack_is_given_up_at_its_deadline() {
    let (base, seen) = receivers(0).await;
    seen.lock().unwrap().slack_delay = Duration::from_secs(30);
    let work = tempfile::tempdir().unwrap();
    let evidence = EvidenceDir::create(work.path()).unwrap();
    let env = env(&base).slack_timeouts(Duration::from_millis(300), Duration::from_millis(800));
    let request = RollbackRequest::new("manual", "5%", SystemClock.now_ms());

    let started = Instant::now();
    let record = execute(&plan(""), &request, &env, &evidence).await.unwrap();

    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let n = &record.notification;
    assert_eq!(n.outcome, NotifyOutcome::Failed, "{n:?}");
    assert!((2..=4).contains(&n.attempts), "{n:?}");
    assert!(n.detail.contains("cannot reach Slack") && n.detail.contains("given up"), "{n:?}");
    assert!(n.duration_ms < 1_500, "{n:?}");
    assert!(record.succeeded());
}

#[tokio::test]
async fn an_unreachable_metrics_source_is_recorded_and_does_not_fail_the_rollback() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let source = spark_rollback::PrometheusSource::new(&format!("http://127.0.0.1:{port}")).unwrap().attempts(1);
    let work = tempfile::tempdir().unwrap();
    let evidence = EvidenceDir::create(work.path()).unwrap();
    let env = RollbackEnv::new(Arc::new(SystemClock)).unwrap().env(|_| None).metrics(
        Arc::new(source),
        Duration::from_secs(600),
        15,
    );
    let request = RollbackRequest::new("manual", "5%", SystemClock.now_ms());

    let record = execute(&Plan::default(), &request, &env, &evidence).await.unwrap();

    assert!(record.succeeded());
    for file in [&record.metrics_before, &record.metrics_after] {
        let text = read(&file.as_ref().unwrap().path);
        assert!(text.contains(&format!("source: Prometheus at http://127.0.0.1:{port}")), "{text}");
        assert!(text.contains("The metrics source failed, so no snapshot was recorded:"), "{text}");
    }
}
