//! `spark canary plan|evaluate|replay`: decisions, JSON and exit codes from
//! the real binary over snapshot files.

use spark_rollback::{Plan, Role, Signal, Snapshot};

use crate::{spark, spark_with};

const START: i64 = 1_790_000_000;
const SINCE: &str = "2026-09-21T14:13:20Z";

/// A healthy stage for every gate signal, with the canary's p95 rising from
/// 250 ms to 520 ms after three minutes when `p95_jumps`, and canary traffic
/// of `canary_rps`.
fn stage(minutes: i64, p95_jumps: bool, canary_rps: f64) -> Snapshot {
    let mut s = Snapshot::new(15);
    for i in 0..=minutes * 4 {
        let t = START + i * 15;
        for role in Role::ALL {
            let rps = if role == Role::Canary { canary_rps } else { 100.0 };
            let p95 = match role {
                Role::Canary if p95_jumps && i > 12 => 0.52,
                Role::Canary if p95_jumps => 0.25,
                _ => 0.08,
            };
            s.push(Signal::HttpRequestsPerSecond, role, t, rps);
            // A ratio over no requests is 0/0: Prometheus answers NaN.
            s.push(Signal::Http5xxRatio, role, t, if rps > 0.0 { 0.001 } else { f64::NAN });
            s.push(Signal::ApiLatencyP95Seconds, role, t, if rps > 0.0 { p95 } else { f64::NAN });
            s.push(Signal::WsStalenessSeconds, role, t, 1.0);
            s.push(Signal::RiskBlocksPerMinute, role, t, 0.0);
            s.push(Signal::IdempotencyConflictRatio, role, t, if rps > 0.0 { 0.0 } else { f64::NAN });
            s.push(Signal::CspViolationsPerMinute, role, t, 0.0);
            s.push(Signal::DecimalPrecisionErrorsTotal, role, t, 0.0);
        }
    }
    s
}

fn write(dir: &tempfile::TempDir, name: &str, snapshot: &Snapshot) -> String {
    let path = dir.path().join(name);
    snapshot.save(&path).unwrap();
    path.display().to_string()
}

#[test]
fn replay_rolls_back_on_api_p95_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "slow.json", &stage(20, true, 50.0));
    let run = spark(&["canary", "replay", "--snapshot", &file, "--stage", "25%", "--since", SINCE, "--json"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let json = run.json();
    assert_eq!(json["decision"], "rollback");
    assert_eq!(json["trigger"], "api_p95");
    // 520 ms from the sample at 3 m 15 s: every sample of (3 m, 8 m] is above
    // 400 ms at the instant 8 m.
    assert_eq!(json["decided_at"], "2026-09-21T14:21:20Z");
    let trail = json["trail"].as_array().unwrap();
    assert_eq!(trail.len(), 16);
    assert!(trail[..15].iter().all(|t| t["decision"] == "continue"), "{trail:?}");

    let text = spark(&["canary", "replay", "--snapshot", &file, "--stage", "25%", "--since", SINCE]);
    assert_eq!(text.code, 1);
    assert!(text.stdout.contains("rollback by api_p95 at 2026-09-21T14:21:20Z (stage 25%)"), "{}", text.stdout);
}

#[test]
fn evaluate_decides_one_instant_with_gates_and_triggers() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "slow.json", &stage(20, true, 50.0));
    let at = |t: &str| {
        spark(&["canary", "evaluate", "--snapshot", &file, "--stage", "25", "--since", SINCE, "--at", t, "--json"])
    };

    let early = at("2026-09-21T14:15:20Z");
    assert_eq!(early.code, 0, "{}{}", early.stdout, early.stderr);
    let json = early.json();
    assert_eq!(json["decision"], "continue");
    assert_eq!(json["trigger"], serde_json::Value::Null);
    assert_eq!(json["stage"], "25%");
    assert_eq!(json["at"], "2026-09-21T14:15:20Z");
    let gates = json["gates"].as_array().unwrap();
    assert_eq!(gates.len(), 6);
    let p95 = gates.iter().find(|g| g["name"] == "api_p95").unwrap();
    assert_eq!(
        (p95["value"].as_f64(), p95["threshold"].as_f64(), p95["status"].as_str()),
        (Some(0.25), Some(0.2), Some("fail"))
    );
    assert_eq!(json["triggers"].as_array().unwrap().len(), 16);

    let late = at("2026-09-21T14:21:20Z");
    assert_eq!(late.code, 1, "{}", late.stdout);
    let json = late.json();
    assert_eq!(json["decision"], "rollback");
    assert_eq!(json["trigger"], "api_p95");
    let fired = json["triggers"].as_array().unwrap().iter().find(|t| t["id"] == "api_p95").unwrap();
    assert_eq!(fired["status"], "firing");
    assert_eq!(fired["values"]["canary"], 0.52);
    assert_eq!(fired["values"]["threshold"], 0.4);
}

#[test]
fn zero_canary_traffic_holds_with_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "idle.json", &stage(20, false, 0.0));
    let run = spark(&["canary", "replay", "--snapshot", &file, "--stage", "1%", "--since", SINCE, "--json"]);
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    let json = run.json();
    assert_eq!(json["decision"], "hold");
    assert!(json["reason"].as_str().unwrap().contains("never promoted on missing data"), "{json}");
}

#[test]
fn a_healthy_stage_promotes_at_its_minimum() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "healthy.json", &stage(20, false, 50.0));
    let run = spark(&["canary", "replay", "--snapshot", &file, "--stage", "5%", "--since", SINCE, "--json"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let json = run.json();
    assert_eq!(json["decision"], "promote");
    assert_eq!(json["decided_at"], "2026-09-21T14:28:20Z");
}

#[test]
fn plan_prints_the_default_and_a_file_to_start_from() {
    let toml = spark(&["canary", "plan", "--toml"]);
    assert_eq!(toml.code, 0);
    assert_eq!(Plan::from_toml(&toml.stdout).unwrap(), Plan::default());

    let json = spark(&["canary", "plan", "--json"]).json();
    assert_eq!(json["stages"].as_array().unwrap().len(), 5);
    assert_eq!(json["stages"][2], serde_json::json!({"weight": "25%", "duration": "15m"}));
    assert_eq!(json["triggers"].as_array().unwrap().len(), 16);
    assert_eq!(json["queries"].as_object().unwrap().len(), 16);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plan.toml"), "[gates.ws_staleness]\nenabled = false\n").unwrap();
    let text = spark_with(&["canary", "plan", "--plan", "plan.toml"], Some(dir.path()), &[]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(text.stdout.contains("ws_staleness    ws_staleness_seconds below 30.0  (off)"), "{}", text.stdout);
}

#[test]
fn bad_plans_snapshots_and_stages_exit_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(&dir, "good.json", &stage(5, false, 50.0));
    let bad_value = dir.path().join("bad.json");
    std::fs::write(&bad_value, std::fs::read_to_string(&good).unwrap().replacen("\"0.001\"", "\"0,001\"", 1)).unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, "[triggers.api_p95]\nfor = 300\n").unwrap();
    let bad_value = bad_value.display().to_string();
    let plan = plan.display().to_string();
    let cases: [(&[&str], &str); 5] = [
        (
            &["--snapshot", &bad_value, "--stage", "25%", "--since", SINCE],
            "error: snapshot: signals.http_5xx_ratio.result[0].values[0]: \"0,001\" is not a decimal number",
        ),
        (
            &["--snapshot", &good, "--plan", &plan, "--stage", "25%", "--since", SINCE],
            "error: plan: triggers.api_p95.for: invalid type: integer `300`",
        ),
        (
            &["--snapshot", &good, "--stage", "30%", "--since", SINCE],
            "error: stage \"30%\" is not in the plan; its stages are 1%, 5%, 25%, 50%, 100%",
        ),
        (
            &["--snapshot", "missing.json", "--stage", "25%", "--since", SINCE],
            "error: missing.json: No such file or directory",
        ),
        (
            &["--snapshot", &good, "--stage", "25%", "--since", "2026-09-21 12:53"],
            "error: invalid value '2026-09-21 12:53' for '--since <SINCE>'",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["canary", "replay"];
        all.extend_from_slice(args);
        let run = spark_with(&all, Some(dir.path()), &[]);
        assert_eq!(run.code, 2, "{args:?}: {}{}", run.stdout, run.stderr);
        assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
        assert!(run.stderr.starts_with(expected), "{args:?}: {} lacks {expected}", run.stderr);
    }
}

/// A PromQL literal (TOML single-quoted) that answers `canary` for the
/// canary and `baseline` for the baseline at every time: a plan query that
/// needs no scrape.
pub(crate) fn both_roles(canary: f64, baseline: f64) -> String {
    format!(
        "'label_replace(vector({canary}), \"role\", \"canary\", \"\", \"\") or label_replace(vector({baseline}), \"role\", \"baseline\", \"\", \"\")'"
    )
}

/// A real Prometheus that scrapes nothing: the tests' queries are constant
/// vectors, answered at once. `None` after a skip line when it is not
/// installed.
pub(crate) async fn query_only_prometheus() -> Option<spark_testkit::prometheus::Prometheus> {
    spark_testkit::prometheus::Prometheus::start("global: {scrape_interval: 1m}\n", "groups: []\n").await
}

/// Runs `spark` in `dir` on a blocking thread, off the runtime that hosts
/// the test's Prometheus handle.
pub(crate) async fn spark_off_runtime(dir: &std::path::Path, args: &[&str]) -> crate::Run {
    let (dir, args): (std::path::PathBuf, Vec<String>) =
        (dir.to_owned(), args.iter().map(|a| (*a).to_owned()).collect());
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        spark_with(&args, Some(&dir), &[])
    })
    .await
    .unwrap()
}

/// `spark metrics snapshot` against a real Prometheus writes a file that
/// `spark canary replay` reads: the plan's queries are constant vectors
/// labelled by role (nothing to wait for), every other signal comes back
/// empty and is reported as missing, never as zero.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_snapshot_from_a_real_prometheus_replays() {
    let Some(prom) = crate::canary::query_only_prometheus().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let plan = format!(
        "[queries]\nhttp_requests_per_second = {}\napi_latency_p95_seconds = {}\n",
        both_roles(50.0, 60.0),
        both_roles(0.12, 0.1)
    );
    std::fs::write(dir.path().join("plan.toml"), plan).unwrap();
    let run = spark_off_runtime(
        dir.path(),
        &[
            "metrics",
            "snapshot",
            "--prometheus",
            &prom.url(),
            "--out",
            "run.json",
            "--range",
            "5m",
            "--step",
            "15s",
            "--plan",
            "plan.toml",
            "--json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["series"], 4, "{report}");
    assert_eq!(report["signals_without_data"].as_array().unwrap().len(), 14, "{report}");

    let snapshot = Snapshot::load(&dir.path().join("run.json")).unwrap();
    let rps = &snapshot.signals["http_requests_per_second"].result;
    let canary = rps.iter().find(|s| s.metric["role"] == "canary").unwrap();
    assert_eq!(canary.values.len(), 21, "5 minutes at 15 s, both ends included");
    assert!(canary.values.iter().all(|(_, v)| v == "50"));
    assert!(snapshot.signals["http_5xx_ratio"].result.is_empty());

    // The gates without data hold the canary; the file replays.
    let since = spark_rollback::rfc3339(canary.values[0].0.0);
    let replay = spark_with(
        &[
            "canary",
            "replay",
            "--snapshot",
            "run.json",
            "--plan",
            "plan.toml",
            "--stage",
            "1%",
            "--since",
            &since,
            "--json",
        ],
        Some(dir.path()),
        &[],
    );
    assert_eq!(replay.code, 3, "{}{}", replay.stdout, replay.stderr);
    let json = replay.json();
    assert_eq!(json["decision"], "hold");
    assert!(json["reason"].as_str().unwrap().contains("gate error_rate: no recent http_5xx_ratio"), "{json}");
}

/// `spark canary run` against a real Prometheus answering a healthy canary
/// (constant vectors per role): each stage's weight is set through the
/// plan's command, in order, each stage is promoted at its minimum, and the
/// trail records every weight before and after it is set.
#[tokio::test(flavor = "multi_thread")]
async fn canary_run_sets_each_weight_and_completes() {
    let Some(prom) = crate::canary::query_only_prometheus().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("weights.log");
    let plan = format!(
        "interval = \"1s\"\nmin_requests = 10\n\
         [[stages]]\nweight = \"10%\"\nduration = \"3s\"\n[[stages]]\nweight = \"100%\"\nduration = \"3s\"\n\
         [weights]\ncommand = [\"sh\", \"-c\", \"echo $SPARK_CANARY_WEIGHT $SPARK_CANARY_RELEASE >> {}\"]\n\
         [queries]\nhttp_requests_per_second = {}\nhttp_5xx_ratio = {}\napi_latency_p95_seconds = {}\n\
         ws_staleness_seconds = {}\nrisk_blocks_per_minute = {}\nidempotency_conflict_ratio = {}\ncsp_violations_per_minute = {}\n",
        weights.display(),
        both_roles(50.0, 50.0),
        both_roles(0.0, 0.0),
        both_roles(0.1, 0.1),
        both_roles(1.0, 1.0),
        both_roles(0.0, 0.0),
        both_roles(0.0, 0.0),
        both_roles(0.0, 0.0),
    );
    std::fs::write(dir.path().join("plan.toml"), plan).unwrap();
    let run = spark_off_runtime(
        dir.path(),
        &[
            "canary",
            "run",
            "--release",
            "v9",
            "--plan",
            "plan.toml",
            "--prometheus",
            &prom.url(),
            "--step",
            "1s",
            "--json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let json = run.json();
    assert_eq!(json["outcome"], "completed", "{json}");
    assert_eq!(std::fs::read_to_string(&weights).unwrap(), "10 v9\n100 v9\n");
    let trail = std::fs::read_to_string(dir.path().join("evidence/canary_run_v9.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = trail.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let weight_events: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["event"] == "weight")
        .map(|e| (e["stage"].as_str().unwrap(), e["status"].as_str().unwrap()))
        .collect();
    assert_eq!(weight_events, [("10%", "setting"), ("10%", "set"), ("100%", "setting"), ("100%", "set")]);
    let promotes = events.iter().filter(|e| e["decision"] == "promote").count();
    assert_eq!(promotes, 2, "{trail}");
    // Each evaluation carries the six gates with their values: release
    // notes are written from these lines.
    for e in events.iter().filter(|e| e["event"] == "evaluation") {
        let gates: Vec<&str> = e["gates"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
        assert_eq!(gates, ["api_p95", "error_rate", "ws_staleness", "risk_blocks", "idem_conflicts", "csp"], "{e}");
        let p95 = &e["gates"][0];
        assert_eq!((p95["value"].as_f64(), p95["status"].as_str()), (Some(0.1), Some("pass")), "{e}");
    }
    assert_eq!(events.last().unwrap()["outcome"], "completed");
    assert!(dir.path().join("evidence/canary_run_v9_final_snapshot.json").exists());
}

/// Ctrl-C stops a run cleanly: exit 3, and the trail says where it stopped
/// after recording the weight it had set.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_interrupts_a_run_and_the_trail_says_so() {
    let Some(prom) = crate::canary::query_only_prometheus().await else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("plan.toml"),
        "interval = \"1s\"\n[[stages]]\nweight = \"10%\"\nduration = \"1h\"\n[weights]\ncommand = [\"true\"]\n",
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_spark"))
        .args(["canary", "run", "--release", "v9", "--plan", "plan.toml", "--prometheus", &prom.url(), "--step", "1s"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let trail = dir.path().join("evidence/canary_run_v9.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string(&trail).unwrap_or_default().contains("\"evaluation\"") {
        assert!(std::time::Instant::now() < deadline, "the run never evaluated");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let kill = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&trail).unwrap();
    let events: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(events.iter().any(|e| e["event"] == "weight" && e["status"] == "set"), "{text}");
    assert!(events.iter().any(|e| e["event"] == "interrupted" && e["stage"] == "10%"), "{text}");
    assert_eq!(events.last().unwrap()["outcome"], "interrupted", "{text}");
}

/// A canary whose p95 is above `api_p95`'s line: `spark canary run` rolls
/// back on that trigger and runs the plan's rollback at once — the command
/// gets the trigger and stage, the evidence is written — and reports how
/// long the decision took to reach the first action.
#[tokio::test(flavor = "multi_thread")]
async fn canary_run_rolls_back_and_runs_the_rollback() {
    let Some(prom) = crate::canary::query_only_prometheus().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("rollback.env");
    let plan = format!(
        "interval = \"1s\"\nmin_requests = 10\n[[stages]]\nweight = \"10%\"\nduration = \"1h\"\n\
         [triggers.api_p95]\nfor = \"3s\"\n\
         [[rollback.actions]]\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"echo $SPARK_ROLLBACK_TRIGGER $SPARK_ROLLBACK_STAGE > {}\"]\n\
         [queries]\nhttp_requests_per_second = {}\napi_latency_p95_seconds = {}\n",
        ran.display(),
        both_roles(50.0, 50.0),
        both_roles(0.6, 0.1),
    );
    std::fs::write(dir.path().join("plan.toml"), plan).unwrap();
    let run = spark_off_runtime(
        dir.path(),
        &[
            "canary",
            "run",
            "--release",
            "v9",
            "--plan",
            "plan.toml",
            "--prometheus",
            &prom.url(),
            "--step",
            "1s",
            "--json",
        ],
    )
    .await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let json = run.json();
    assert_eq!(json["outcome"], "rollback", "{json}");
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "api_p95 10%\n");
    let record = &json["rollback"];
    assert_eq!(record["trigger"], "api_p95", "{record}");
    let first = record["timing"]["decision_to_first_action_ms"].as_i64().unwrap();
    assert!(first < 1000, "decision to first action took {first} ms");
    let files = record["files"].as_array().unwrap();
    assert!(files.len() >= 3, "{record}");
    for f in files {
        assert!(dir.path().join(f["path"].as_str().unwrap()).exists(), "{f}");
    }
    // The rollback's evidence is a sealed bundle of its own.
    let bundle = dir.path().join(record["bundle"].as_str().unwrap());
    assert!(spark_evidence::verify(&bundle, None).unwrap().is_intact(), "{}", bundle.display());
    eprintln!("canary run: decision to first action {first} ms, timing {}", record["timing"]);
}

/// The release names the trail file: one that would climb out of the
/// evidence directory is refused before anything is set or written.
#[test]
fn a_release_that_is_not_a_file_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = spark_with(
        &["canary", "run", "--release", "../escape", "--prometheus", "http://127.0.0.1:9", "--dry-run"],
        Some(dir.path()),
        &[],
    );
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.starts_with("error: release \"../escape\" cannot name a file"), "{}", run.stderr);
    assert!(!dir.path().join("escape.jsonl").exists() && !dir.path().join("evidence").exists());
}
