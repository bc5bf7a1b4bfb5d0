//! `spark rollback` from the real binary against loopback webhook and
//! Slack receivers: output, exit codes, the evidence files, no secret.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

use crate::spark_with;

const WEBHOOK_SECRET: &str = "cli-whsec-SECRET-4417";
const SLACK_PATH: &str = "/services/TCLISECRET/BCLISECRET/slackSECRET";

#[derive(Default)]
struct Seen {
    /// Whether each webhook's signature verified.
    webhooks: Vec<bool>,
    slack: usize,
}

type Shared = Arc<Mutex<Seen>>;

/// The receivers on a loopback port, served by a runtime of their own while
/// the test runs the binary.
struct Receivers {
    base: String,
    seen: Shared,
    _runtime: tokio::runtime::Runtime,
}

fn receivers() -> Receivers {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let seen: Shared = Arc::default();
    let router = axum::Router::new()
        .route(
            "/hooks/rollback",
            post(|State(seen): State<Shared>, headers: HeaderMap, body: Bytes| async move {
                let now = spark_db::Clock::now_ms(&spark_db::SystemClock).div_euclid(1000);
                let signature = headers.get("x-spark-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
                let ok = spark_outbox::webhook::verify(
                    WEBHOOK_SECRET.as_bytes(),
                    signature,
                    &body,
                    now,
                    Duration::from_secs(60),
                )
                .is_ok();
                seen.lock().unwrap().webhooks.push(ok);
                StatusCode::OK
            }),
        )
        .route(
            SLACK_PATH,
            post(|State(seen): State<Shared>| async move {
                seen.lock().unwrap().slack += 1;
                StatusCode::OK
            }),
        )
        .with_state(seen.clone());
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(async move { axum::serve(listener, router).await.unwrap() });
    Receivers { base, seen, _runtime: runtime }
}

/// A plan file with a command that records its environment in `out`, the
/// signed webhook, Slack, and `extra` actions after them.
fn plan_file(dir: &Path, base: &str, extra: &str) -> String {
    let out = dir.join("out");
    let text = format!(
        "[rollback]\nrelease_has_migration = true\n[rollback.slack]\nwebhook_env = \"SLACK_WEBHOOK_URL\"\n\
         [[rollback.actions]]\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"printenv SPARK_ROLLBACK_REASON SPARK_ROLLBACK_TRIGGER > {}\"]\n\
         [[rollback.actions]]\nkind = \"webhook\"\nurl = \"{base}/hooks/rollback\"\nsecret_env = \"HOOK_SECRET\"\n{extra}",
        out.display()
    );
    let path = dir.join("plan.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn secrets_env(base: &str) -> [(String, String); 2] {
    [
        ("HOOK_SECRET".to_owned(), WEBHOOK_SECRET.to_owned()),
        ("SLACK_WEBHOOK_URL".to_owned(), format!("{base}{SLACK_PATH}")),
    ]
}

fn run_with_secrets(args: &[&str], dir: &Path, base: &str) -> crate::Run {
    let env = secrets_env(base);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    spark_with(args, Some(dir), &env)
}

fn assert_no_secret(texts: &[&str]) {
    for text in texts {
        for secret in [WEBHOOK_SECRET, "TCLISECRET", "slackSECRET"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}

#[test]
fn a_rollback_runs_every_action_notifies_and_writes_the_evidence() {
    let r = receivers();
    let dir = tempfile::tempdir().unwrap();
    let plan = plan_file(dir.path(), &r.base, "");
    let args =
        ["rollback", "--reason", "p95 too high", "--stage", "25", "--trigger", "api_p95", "--plan", &plan, "--json"];
    let run = run_with_secrets(&args, dir.path(), &r.base);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let json = run.json();
    assert_eq!(json["stage"], "25%");
    assert_eq!(json["actions"][0]["outcome"], "succeeded");
    assert_eq!(json["actions"][1]["http_status"], 200);
    assert_eq!(json["notification"]["outcome"], "delivered");
    assert_eq!(std::fs::read_to_string(dir.path().join("out")).unwrap(), "p95 too high\napi_p95\n");
    {
        let seen = r.seen.lock().unwrap();
        assert_eq!(seen.webhooks, vec![true], "the webhook was not called once with a valid signature");
        assert_eq!(seen.slack, 1);
    }
    // The default evidence directory is ./evidence.
    let files = json["files"].as_array().unwrap();
    assert_eq!(files.len(), 4);
    let mut texts = vec![run.stdout.clone(), run.stderr.clone()];
    for file in files {
        let path = Path::new(file["path"].as_str().unwrap());
        assert!(path.starts_with("evidence"), "{}", path.display());
        let bytes = std::fs::read(dir.path().join(path)).unwrap();
        assert_eq!(spark_evidence::sha256_hex(&bytes), file["sha256"]);
        texts.push(String::from_utf8(bytes).unwrap());
    }
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    assert_no_secret(&texts);
    let metrics = std::fs::read_to_string(dir.path().join(files[2]["path"].as_str().unwrap())).unwrap();
    assert!(metrics.contains("No metrics source was configured"), "{metrics}");

    // Text output: the actions, the timing, the migration warning, the files.
    let run = spark_with(&["rollback", "--reason", "again", "--stage", "25%", "--plan", &plan], Some(dir.path()), &[]);
    assert_eq!(run.code, 1, "without the secrets the webhook fails: {}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("2 actions, 1 failed"), "{}", run.stdout);
    assert!(run.stdout.contains("the secret variable HOOK_SECRET is not set"), "{}", run.stdout);
    assert!(run.stdout.contains("slack: failed ($SLACK_WEBHOOK_URL is not set; not notified)"), "{}", run.stdout);
    assert!(run.stdout.contains("which is not rolled back: docs/runbooks/db-restore.md"), "{}", run.stdout);
    assert!(run.stdout.contains("decision to first action "), "{}", run.stdout);
}

#[test]
fn a_dry_run_calls_nothing_and_a_failed_action_exits_1() {
    let r = receivers();
    let dir = tempfile::tempdir().unwrap();
    let plan = plan_file(dir.path(), &r.base, "[[rollback.actions]]\nkind = \"command\"\ncommand = [\"false\"]\n");
    let evidence = dir.path().join("ev");
    let evidence = evidence.to_str().unwrap();
    let key = dir.path().join("signing.key");
    let key = key.to_str().unwrap();
    let keygen = spark_with(&["keygen", "--out", key], None, &[]);
    assert_eq!(keygen.code, 0, "{}", keygen.stderr);
    let args = [
        "rollback",
        "--reason",
        "r",
        "--stage",
        "5%",
        "--plan",
        &plan,
        "--evidence-dir",
        evidence,
        "--dry-run",
        "--sign-key",
        key,
    ];
    let run = run_with_secrets(&args, dir.path(), &r.base);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.starts_with("DRY RUN (nothing run or called): rollback of stage 5%: r"), "{}", run.stdout);
    assert!(!dir.path().join("out").exists());
    {
        let seen = r.seen.lock().unwrap();
        assert_eq!((seen.webhooks.len(), seen.slack), (0, 0), "a dry run called a receiver");
    }
    // One sealed, signed bundle, which `spark evidence verify` accepts with
    // the key's public half.
    let bundles: Vec<_> = std::fs::read_dir(evidence).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(bundles.len(), 1, "{bundles:?}");
    assert_eq!(std::fs::read_dir(&bundles[0]).unwrap().count(), 5);
    assert!(run.stdout.contains("(sealed and signed;"), "{}", run.stdout);
    let public = format!("{key}.pub");
    let verify = spark_with(&["evidence", "verify", bundles[0].to_str().unwrap(), "--key", &public], None, &[]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);

    let args = ["rollback", "--reason", "r", "--stage", "5%", "--plan", &plan, "--evidence-dir", evidence, "--json"];
    let run = run_with_secrets(&args, dir.path(), &r.base);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let json = run.json();
    assert_eq!(json["actions"][2]["outcome"], "failed");
    assert_eq!(json["actions"][2]["exit_code"], 1);
    assert_eq!(json["notification"]["outcome"], "delivered");
    assert_eq!(r.seen.lock().unwrap().webhooks, vec![true]);
}

#[test]
fn bad_input_exits_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad_plan = dir.path().join("bad.toml");
    std::fs::write(&bad_plan, "[[rollback.actions]]\nkind = \"command\"\ncommand = []\n").unwrap();
    let bad_plan = bad_plan.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["rollback", "--reason", "r", "--stage", "5%", "--sign-key", "missing.key"], "missing.key"),
        (&["rollback", "--stage", "5%"], "--reason"),
        (&["rollback", "--reason", "r", "--stage", "30%"], "stage \"30%\" is not in the plan"),
        (
            &["rollback", "--reason", "r", "--stage", "5%", "--trigger", "api_p99"],
            "--trigger \"api_p99\" is not a trigger",
        ),
        (
            &["rollback", "--reason", "r", "--stage", "5%", "--plan", bad_plan],
            "plan: rollback.actions[0].command: needs a program",
        ),
    ];
    for (args, expected) in cases {
        let run = spark_with(args, Some(dir.path()), &[]);
        assert_eq!(run.code, 2, "{args:?}: {}{}", run.stdout, run.stderr);
        assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
        assert!(run.stderr.contains(expected), "{args:?}: {}", run.stderr);
    }
    assert!(!dir.path().join("evidence").exists(), "bad input wrote evidence");
}
