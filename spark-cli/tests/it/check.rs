//! `spark check` through the real binary: exit codes, JSON, JUnit, evidence.

use crate::{spark, spark_with};

/// A URL with a password the shared server ignores (trust auth), to prove
/// no output carries it.
fn with_password(url: &str) -> String {
    url.replacen("postgres://postgres@", "postgres://postgres:hunter2pw@", 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_database_passes_and_a_fresh_one_fails_with_junit_and_evidence() {
    let Some(db) = spark_testkit::postgres().await else { return };
    let url = with_password(&db.url);
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("checks.xml");
    let evidence = dir.path().join("evidence");
    let env = [("SPARK_DATABASE_URL", url.as_str()), ("SPARK_CLOCK_NTP", "false")];

    // Nothing migrated: the migrations check fails, exit 1.
    let run = spark_with(
        &[
            "check",
            "--json",
            "--only",
            "clock,migrations,decimal",
            "--junit",
            junit.to_str().unwrap(),
            "--evidence-dir",
            evidence.to_str().unwrap(),
        ],
        Some(dir.path()),
        &env,
    );
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let v = run.json();
    assert_eq!(v["status"], "fail");
    let ids: Vec<&str> = v["checks"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["clock", "migrations", "decimal"]);
    let migrations = &v["checks"][1];
    assert_eq!(migrations["status"], "fail");
    assert!(migrations["summary"].as_str().unwrap().contains("_sqlx_migrations"), "{migrations}");
    let clock = &v["checks"][0];
    assert!(clock["measurements"].as_array().unwrap().iter().any(|m| m["name"] == "offset_ms"), "{clock}");

    let xml = std::fs::read_to_string(&junit).unwrap();
    let parsed = quick_junit::Report::deserialize_from_str(&xml).expect("the JUnit file parses");
    assert_eq!(parsed.test_suites[0].test_cases.len(), 3);
    assert_eq!(parsed.test_suites[0].failures, 1);
    for name in
        ["blind_spots_scan.txt", "blind_spots_scan.json", "blind_spots_clock.json", "blind_spots_migrations.json"]
    {
        let text = std::fs::read_to_string(evidence.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!text.contains("hunter2pw"), "{name} leaks the password");
    }
    let text = std::fs::read_to_string(evidence.join("blind_spots_scan.txt")).unwrap();
    assert!(text.contains("== clock : PASS") && text.contains("offset_ms"), "{text}");
    assert!(!run.stdout.contains("hunter2pw") && !run.stderr.contains("hunter2pw") && !xml.contains("hunter2pw"));

    // Migrated: nothing fails, exit 0, and the table has one line per check.
    let migrate = spark_with(&["db", "migrate"], Some(dir.path()), &env);
    assert_eq!(migrate.code, 0, "{}", migrate.stderr);
    let run = spark_with(&["check", "--only", "clock,migrations,decimal"], Some(dir.path()), &env);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", run.stdout);
    assert!(lines[1].starts_with("PASS  migrations"), "{}", run.stdout);
    assert!(lines[3].starts_with("PASS: 3 passed") || lines[3].starts_with("WARN:"), "{}", run.stdout);
}

#[test]
fn the_embedded_default_is_checked_too() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(spark_with(&["db", "migrate"], Some(dir.path()), &[]).code, 0);
    let url = format!("sqlite://{}", dir.path().join("spark.db").display());
    let run = spark_with(
        &["check", "--json", "--only", "migrations,decimal,backup"],
        Some(dir.path()),
        &[("SPARK_DATABASE_URL", &url)],
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let v = run.json();
    assert_eq!(v["checks"][0]["status"], "pass", "{v}");
    assert_eq!(v["checks"][1]["status"], "pass", "{v}");
    assert_eq!(v["checks"][2]["status"], "skip", "{v}");
}

#[test]
fn configuration_errors_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let unknown = write("unknown.toml", "[clock]\nofset_warn_ms = 5\n");
    let secret = write("secret.toml", "[database]\nurl = \"postgres://app:topsecret1@db/app\"\n");
    let missing = dir.path().join("missing.toml").to_str().unwrap().to_owned();
    for (args, expect) in [
        (vec!["check", "--config", unknown.as_str()], "ofset_warn_ms"),
        (vec!["check", "--config", secret.as_str()], "SPARK_DATABASE_URL"),
        (vec!["check", "--config", missing.as_str()], "missing.toml"),
        (vec!["check", "--only", "clock,bogus"], "bogus"),
    ] {
        let run = spark_with(&args, Some(dir.path()), &[]);
        assert_eq!(run.code, 2, "{args:?}: {}{}", run.stdout, run.stderr);
        assert_eq!(run.stderr.trim_end().lines().count(), 1, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(expect), "{args:?}: {}", run.stderr);
        assert!(!run.stderr.contains("topsecret1"), "{}", run.stderr);
    }
    // An environment override of the wrong type is a configuration error too.
    let run = spark_with(&["check"], Some(dir.path()), &[("SPARK_CLOCK_SAMPLES", "many")]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    // And the help names the command.
    assert!(spark(&["check", "--help"]).stdout.contains("--evidence-dir"));
}
