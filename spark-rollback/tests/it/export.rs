//! The exported rules against the real promtool (Debian `prometheus`):
//! `check rules` accepts them, and the generated unit tests — each
//! trigger's alert firing exactly when the engine rolls back on the same
//! series, and not one interval before — pass.

use std::process::Command;

use spark_rollback::Plan;
use spark_rollback::export::{ExportOptions, prometheus_rules, promtool_tests};

fn promtool(args: &[&str], dir: &std::path::Path) -> (bool, String) {
    let out = Command::new("promtool").args(args).current_dir(dir).output().expect("run promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn export(plan: &Plan, dir: &std::path::Path) {
    let options = ExportOptions::default();
    std::fs::write(dir.join("rules.yml"), prometheus_rules(plan, &options)).unwrap();
    std::fs::write(dir.join("rules.test.yml"), promtool_tests(plan, &options, "rules.yml").unwrap()).unwrap();
}

#[test]
fn promtool_accepts_the_rules_and_fires_every_alert_when_the_engine_rolls_back() {
    if !spark_testkit::binary_available("promtool", "promtool (Debian prometheus)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    export(&Plan::default(), dir.path());
    let (ok, text) = promtool(&["check", "rules", "rules.yml"], dir.path());
    assert!(ok, "promtool check rules:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");
    let (ok, text) = promtool(&["test", "rules", "rules.test.yml"], dir.path());
    assert!(ok, "promtool test rules:\n{text}");
}

/// Other thresholds and an evaluation every 15 s: with `for` counted as the
/// engine counts it (D − one step), alert and rollback still meet at the
/// same evaluation, now one 15 s interval apart from silence.
#[test]
fn a_plan_with_other_thresholds_exports_rules_promtool_still_proves_equal() {
    if !spark_testkit::binary_available("promtool", "promtool (Debian prometheus)") {
        return;
    }
    let plan = Plan::from_toml(
        "interval = \"15s\"\n[triggers.api_p95]\nthreshold = 0.3\nfor = \"2m\"\n[triggers.error_rate]\nthreshold = 0.02\n[triggers.memory_leak]\nenabled = false\n",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    export(&plan, dir.path());
    let rules = std::fs::read_to_string(dir.path().join("rules.yml")).unwrap();
    assert!(!rules.contains("SparkCanaryMemoryLeak"), "a disabled trigger exports no alert");
    let (ok, text) = promtool(&["test", "rules", "rules.test.yml"], dir.path());
    assert!(ok, "promtool test rules:\n{text}");
}

/// The generated test is not vacuous: an alert made to fire one interval
/// late fails it.
#[test]
fn promtool_catches_an_alert_that_drifted_from_the_engine() {
    if !spark_testkit::binary_available("promtool", "promtool (Debian prometheus)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    export(&Plan::default(), dir.path());
    let rules = std::fs::read_to_string(dir.path().join("rules.yml")).unwrap();
    let drifted = rules.replacen("for: \"285s\"", "for: \"315s\"", 1);
    assert_ne!(drifted, rules);
    std::fs::write(dir.path().join("rules.yml"), drifted).unwrap();
    let (ok, text) = promtool(&["test", "rules", "rules.test.yml"], dir.path());
    assert!(!ok, "a drifted alert passed:\n{text}");
    assert!(text.contains("SparkCanaryApiP95"), "{text}");
}
