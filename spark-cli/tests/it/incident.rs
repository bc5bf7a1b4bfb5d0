//! `spark incident new` from the real binary: a report from the record a
//! real `spark rollback` wrote, never overwritten; bad input exits 2.

use crate::spark_with;

#[test]
fn a_report_from_a_rollback_record_then_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, "[[rollback.actions]]\nkind = \"command\"\ncommand = [\"true\"]\n").unwrap();
    let plan = plan.to_str().unwrap();
    let rollback = ["rollback", "--reason", "p95 too high", "--stage", "25%", "--trigger", "api_p95", "--plan", plan];
    let run = spark_with(&[&rollback[..], &["--evidence-dir", "evidence"]].concat(), Some(dir.path()), &[]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let bundle = std::fs::read_dir(dir.path().join("evidence")).unwrap().next().unwrap().unwrap().path();
    let record = std::fs::read_dir(&bundle)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "json")
                && p.file_name().unwrap().to_str().unwrap().starts_with("rollback_")
        })
        .unwrap();
    let record = record.to_str().unwrap();

    let args = ["incident", "new", "--from-rollback", record, "--severity", "SEV1", "--out", "incident.md"];
    let run = spark_with(&args, Some(dir.path()), &[]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let md = std::fs::read_to_string(dir.path().join("incident.md")).unwrap();
    assert!(md.starts_with("# Incident: api_p95 rolled back 25%\n"), "{md}");
    assert!(md.contains("| Severity | SEV1 |"), "{md}");
    // No metrics source: the record's own words say so.
    assert!(md.contains("Not measured: No metrics source was configured (spark rollback --prometheus URL)"), "{md}");
    // Named by the operator, not decided by the engine: said so.
    assert!(md.contains("an operator, naming api_p95 (no engine evaluation recorded)"), "{md}");
    assert!(md.contains("The bundle verifies"), "{md}");
    assert!(md.contains("## Root cause") && md.contains("## Action items"), "{md}");

    // A record named relative to the working directory (its bundle) is
    // read in place.
    let name = std::path::Path::new(record).file_name().unwrap().to_str().unwrap();
    let here = spark_with(&["incident", "new", "--from-rollback", name, "--json"], Some(&bundle), &[]);
    assert_eq!(here.code, 0, "{}{}", here.stdout, here.stderr);
    assert!(here.json()["markdown"].as_str().unwrap().contains("In `.`. The bundle verifies"), "{}", here.stdout);

    // Never overwritten.
    let again = spark_with(&args, Some(dir.path()), &[]);
    assert_eq!(again.code, 2, "{}{}", again.stdout, again.stderr);
    assert!(again.stderr.contains("never overwritten"), "{}", again.stderr);

    for (args, expected) in [
        (&["incident", "new", "--from-rollback", record, "--severity", "SEV9"][..], "SEV1 to SEV4"),
        (&["incident", "new", "--from-rollback", "missing.json"], "cannot read missing.json"),
        (&["incident", "new", "--title", "x", "--slo", "2"], "not an objective"),
    ] {
        let run = spark_with(args, Some(dir.path()), &[]);
        assert_eq!(run.code, 2, "{args:?}: {}{}", run.stdout, run.stderr);
        assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
        assert!(run.stderr.contains(expected), "{args:?}: {}", run.stderr);
    }
    let blank = spark_with(&["incident", "new", "--title", "checkout slow", "--json"], Some(dir.path()), &[]);
    assert_eq!(blank.code, 0, "{}", blank.stderr);
    assert!(blank.json()["markdown"].as_str().unwrap().starts_with("# Incident: checkout slow\n"));
}
