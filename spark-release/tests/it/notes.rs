//! Release notes from a trail and a real rollback record.

use std::path::Path;

use spark_release::{RISKS_ASKED, parse_risks, release_notes};
use spark_rollback::{Plan, RollbackEnv, RollbackRequest};

/// A run's trail: 5 % promoted after 15 minutes with every gate passing,
/// 25 % rolled back by `api_p95` two minutes in.
fn trail(dir: &Path) {
    let gates = |p95: f64, status: &str| {
        serde_json::json!([
            {"name": "api_p95", "value": p95, "threshold": 0.25, "status": status},
            {"name": "error_rate", "value": 0.001, "threshold": 0.005, "status": "pass"},
            {"name": "ws_staleness", "value": 1.2, "threshold": 3.0, "status": "pass"},
            {"name": "risk_blocks", "value": 0.0, "threshold": 5.0, "status": "pass"},
            {"name": "idem_conflicts", "value": 0.0, "threshold": 0.01, "status": "pass"},
            {"name": "csp", "value": null, "threshold": null, "status": "missing"},
        ])
    };
    let lines = [
        serde_json::json!({"event": "start", "at": "2026-12-07T10:00:00Z", "release": "v1.4.0", "dry_run": false}),
        serde_json::json!({"event": "weight", "at": "2026-12-07T10:00:00Z", "stage": "5%", "status": "setting"}),
        serde_json::json!({"event": "weight", "at": "2026-12-07T10:00:01Z", "stage": "5%", "status": "set"}),
        serde_json::json!({"event": "evaluation", "at": "2026-12-07T10:07:30Z", "stage": "5%", "decision": "continue", "trigger": null, "reason": "r", "gates": gates(0.2, "pass")}),
        serde_json::json!({"event": "evaluation", "at": "2026-12-07T10:15:00Z", "stage": "5%", "decision": "promote", "trigger": null, "reason": "r", "gates": gates(0.11, "pass")}),
        serde_json::json!({"event": "weight", "at": "2026-12-07T10:15:00Z", "stage": "25%", "status": "setting"}),
        serde_json::json!({"event": "weight", "at": "2026-12-07T10:15:01Z", "stage": "25%", "status": "set"}),
        serde_json::json!({"event": "evaluation", "at": "2026-12-07T10:17:00Z", "stage": "25%", "decision": "rollback", "trigger": "api_p95", "reason": "r", "gates": gates(0.61, "fail")}),
        serde_json::json!({"event": "end", "at": "2026-12-07T10:17:00Z", "outcome": "rollback", "seconds": 1020.0}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("canary_run_v1.4.0.jsonl"), text).unwrap();
}

const RISKS: &str = r#"
[[risk]]
description = "pgBouncer 1.18 | transaction mode with prepared statements"
owner = "DevOps lead"
due = 2026-12-20
mitigation = "statement cache off on the pooled URL"
status = "mitigating"

[[risk]]
description = "webhook actions get one attempt"
owner = "CTO"
due = "2027-01-15"
mitigation = "Slack is retried; the runbook says to retry by hand"
status = "accepted"
"#;

#[tokio::test]
async fn notes_carry_the_stage_table_the_gate_values_the_rollback_and_the_risks() {
    let tmp = tempfile::tempdir().unwrap();
    trail(tmp.path());
    // A real rollback record of that decision, on a clock at its time.
    let decided = chrono::DateTime::parse_from_rfc3339("2026-12-07T10:17:00Z").unwrap().timestamp_millis();
    let clock = std::sync::Arc::new(spark_db::ManualClock::new(decided));
    let env = RollbackEnv::new(clock.clone()).unwrap().env(|_| None);
    let evidence = spark_evidence::EvidenceDir::create(tmp.path()).unwrap();
    let request = RollbackRequest::new("api_p95 above 0.25 s", "25%", decided).trigger("api_p95");
    let record = spark_rollback::execute(&Plan::default(), &request, &env, &evidence).await.unwrap();
    // Another release's real rollback, twelve hours before this run, is
    // not this one's; this release's rehearsal at the same time is.
    let earlier = decided - 12 * 3_600_000;
    clock.set(earlier);
    let request = RollbackRequest::new("an older release", "50%", earlier).trigger("error_rate");
    spark_rollback::execute(&Plan::default(), &request, &env, &evidence).await.unwrap();
    let request = RollbackRequest::new("rehearsal", "5%", earlier).trigger("ws_staleness").dry_run(true);
    spark_rollback::execute(&Plan::default(), &request, &env, &evidence).await.unwrap();
    let risks = parse_risks(RISKS, "risks.toml".as_ref()).unwrap();
    let notes = release_notes("v1.4.0", tmp.path(), risks, "2026-12-07T12:00:00Z").unwrap();
    let md = &notes.markdown;
    eprintln!("{md}");
    assert!(md.starts_with("# Release v1.4.0\n"), "{md}");
    assert!(md.contains("| 1 | 5% | 15m 00s | promoted | 5/6 |"), "{md}");
    assert!(md.contains("| 2 | 25% | 2m 00s | rolled back (api_p95) | 4/6 |"), "{md}");
    assert!(md.contains("| 5% | 0.11 (≤ 0.25) | 0.001 (≤ 0.005) |"), "{md}");
    assert!(md.contains("| 25% | 0.61 ✗ (≤ 0.25) |"), "{md}");
    let five = md.lines().find(|l| l.starts_with("| 5% | 0.11")).unwrap();
    assert!(five.ends_with("| 0 (≤ 0.01) | – |"), "a missing value is a dash, never a zero: {five}");
    // The row names the file its digest is of: the JSON record.
    let json_record = record.files.iter().find(|f| f.name.ends_with(".json")).unwrap();
    let rel = json_record.path.strip_prefix(tmp.path()).unwrap_or(&json_record.path).display().to_string();
    assert!(md.contains(&format!("`{rel}` sha256:{}", json_record.sha256)), "{md}");
    let row = md.lines().find(|l| l.starts_with("| api_p95 |")).unwrap_or_else(|| panic!("no rollback row: {md}"));
    assert!(row.contains("| 25% |") && row.contains("| rollback |") && row.contains(&format!("`{rel}`")), "{row}");
    assert!(md.contains("- Canary: rolled back at 25% by api_p95, 2 stages."), "{md}");
    assert!(!md.lines().any(|l| l.starts_with("| error_rate |")), "another release's rollback is left out: {md}");
    let rehearsal = md.lines().find(|l| l.starts_with("| ws_staleness |")).unwrap_or_else(|| panic!("{md}"));
    assert!(rehearsal.contains("| 5% |") && rehearsal.contains("rehearsal"), "{rehearsal}");
    assert!(row.contains("| 0.00 s |"), "recovery measured on the record's clock: {row}");
    assert!(md.contains("pgBouncer 1.18 \\| transaction mode"), "a pipe in a cell is escaped: {md}");
    assert!(md.contains("| 2027-01-15 |") && md.contains("| 2026-12-20 |"), "{md}");
    assert!(md.contains(&format!("asks for {RISKS_ASKED} remaining risks; 2 given")), "{md}");
    assert!(md.contains("`canary_run_v1.4.0.jsonl` sha256:"), "{md}");
    assert!(!md.contains("{{"), "every placeholder is filled: {md}");
}

#[test]
fn notes_from_nothing_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let e = release_notes("v1", tmp.path(), Vec::new(), "now").unwrap_err();
    assert!(e.to_string().contains("nothing to write the notes from"), "{e}");
}

#[test]
fn a_bad_risk_names_what_is_wrong() {
    let e = parse_risks(
        "[[risk]]\ndescription = \"d\"\nowner = \"o\"\ndue = 2026-12-20\nmitigation = \"m\"\nstatus = \"solved\"\n",
        "r.toml".as_ref(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("r.toml") && e.contains("solved"), "{e}");
    let e = parse_risks(
        "[[risk]]\ndescription = \"d\"\nowner = \"o\"\ndue = \"next week\"\nmitigation = \"m\"\nstatus = \"open\"\n",
        "r.toml".as_ref(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("r.toml"), "{e}");
    let e = parse_risks(
        "[[risk]]\ndescription = \"d\"\nowner = \" \"\ndue = 2026-12-20\nmitigation = \"m\"\nstatus = \"open\"\n",
        "r.toml".as_ref(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("risk[0].owner is empty"), "{e}");
}

#[test]
fn the_repository_template_is_the_one_the_notes_fill() {
    let repo = std::fs::read_to_string("../.github/RELEASE_NOTES_TEMPLATE.md").unwrap();
    assert_eq!(
        repo,
        spark_release::TEMPLATE,
        ".github/RELEASE_NOTES_TEMPLATE.md and src/release_notes_template.md differ"
    );
}
