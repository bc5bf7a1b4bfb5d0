//! `spark rules export`: the files promtool and the dashboard check accept.

use std::process::Command;

use crate::spark_with;

#[test]
fn exported_rules_pass_promtool_and_the_dashboard_passes_the_observability_check() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    let run = spark_with(
        &[
            "rules",
            "export",
            "--prometheus-rules",
            "rules.yml",
            "--promtool-tests",
            "tests/rules.test.yml",
            "--grafana",
            "dashboard.json",
            "--json",
        ],
        Some(dir.path()),
        &[],
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.json()["written"].as_array().unwrap().len(), 3);
    let tests = std::fs::read_to_string(dir.path().join("tests/rules.test.yml")).unwrap();
    assert!(tests.contains("rule_files:\n  - \"../rules.yml\""), "the tests name the rules from their own directory");

    if spark_testkit::binary_available("promtool", "promtool (Debian prometheus)") {
        let out = Command::new("promtool")
            .args(["test", "rules", "tests/rules.test.yml"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    std::fs::write(dir.path().join("spark.toml"), "[observability]\ndashboards = [\"dashboard.json\"]\n").unwrap();
    let check =
        spark_with(&["check", "--only", "observability", "--config", "spark.toml", "--json"], Some(dir.path()), &[]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    let report = check.json();
    assert_eq!(report["status"], "pass", "{report}");
}

#[test]
fn a_bad_plan_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plan.toml"), "[triggers.api_p95]\nthreshold = \"high\"\n").unwrap();
    let run =
        spark_with(&["rules", "export", "--plan", "plan.toml", "--prometheus-rules", "r.yml"], Some(dir.path()), &[]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.starts_with("error: plan: triggers.api_p95.threshold: invalid type"), "{}", run.stderr);
    assert!(!dir.path().join("r.yml").exists(), "nothing written for a bad plan");
}
