//! Incident reports from a real rollback: the canary engine decides on a
//! recorded p95 regression, `spark_rollback::execute` runs a real command
//! and writes its sealed bundle with the metrics before and after, and the
//! report is written from that bundle.

use std::sync::Arc;
use std::time::Duration;

use spark_evidence::EvidenceDir;
use spark_release::{IncidentOptions, incident_from_rollback};
use spark_rollback::{Engine, MemorySource, Metrics, Plan, Role, RollbackEnv, RollbackRequest, Signal, Snapshot};

const START: i64 = 1_795_000_000;

/// p95 250 ms, jumping to 520 ms (and 2 % of requests failing) from sample
/// 13, back to 100 ms (no failures) from sample 45; 50 requests a second.
fn snapshot() -> Snapshot {
    let mut s = Snapshot::new(15);
    for i in 0..=80 {
        let t = START + i * 15;
        let bad = (13..45).contains(&i);
        let (p95, errors) = if bad {
            (0.52, 0.02)
        } else if i >= 45 {
            (0.1, 0.0)
        } else {
            (0.25, 0.0)
        };
        s.push(Signal::ApiLatencyP95Seconds, Role::Canary, t, p95);
        s.push(Signal::ApiLatencyP95Seconds, Role::Baseline, t, 0.09);
        s.push(Signal::HttpRequestsPerSecond, Role::Canary, t, 50.0);
        s.push(Signal::HttpRequestsPerSecond, Role::Baseline, t, 450.0);
        s.push(Signal::Http5xxRatio, Role::Canary, t, errors);
        s.push(Signal::Http5xxRatio, Role::Baseline, t, 0.0);
    }
    s
}

#[tokio::test]
async fn a_report_is_written_from_a_real_rollback() {
    let snapshot = snapshot();
    // Only api_p95 decides (the 2 % of failures would burn the SLO too).
    let engine =
        Engine::new(spark_rollback::scenario::only(&Plan::default(), spark_rollback::TriggerId::ApiP95)).unwrap();
    let replay = engine
        .replay(&Metrics::from_snapshot(&snapshot).unwrap(), &engine.plan().stages[0], START * 1000, None)
        .unwrap();
    assert_eq!(replay.decision().trigger().map(|t| t.id()), Some("api_p95"));
    let decided = replay.last.at_ms;

    let plan = Plan::from_toml(
        "[[rollback.actions]]\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"echo rolling back $SPARK_ROLLBACK_STAGE\"]\n",
    )
    .unwrap();
    // The rollback completes 4 minutes after the decision (the clock is
    // the test's), on a sample of the metrics, which by then show the
    // recovery (p95 back to 100 ms from sample 45).
    let clock = spark_db::ManualClock::new(decided + 240_000);
    let env = RollbackEnv::new(Arc::new(clock)).unwrap().metrics(
        Arc::new(MemorySource::new(snapshot)),
        Duration::from_secs(600),
        15,
    );
    let request =
        RollbackRequest::new("p95 above 400 ms", "25%", decided).trigger("api_p95").evaluation(replay.last.clone());
    let tmp = tempfile::tempdir().unwrap();
    let record =
        spark_rollback::execute(&plan, &request, &env, &EvidenceDir::create(tmp.path()).unwrap()).await.unwrap();
    let json = record.files.iter().find(|f| f.name.ends_with(".json")).unwrap().path.clone();

    let mut options = IncidentOptions::new(decided + 300_000);
    options.release = Some("v1.4.0".into());
    let incident = incident_from_rollback(&json, &options).unwrap();
    let md = &incident.markdown;
    eprintln!("{md}");
    assert_eq!(incident.title, "api_p95 rolled back 25%");
    assert!(md.starts_with("# Incident: api_p95 rolled back 25%\n"), "{md}");
    assert!(md.contains("| Severity | SEV2 |") && md.contains("| Release | v1.4.0 |"), "{md}");
    assert!(
        md.contains(
            "the canary engine's trigger api_p95 rolled back stage 25%: p95 above 400 ms. 1 action(s) ran; none failed."
        ),
        "{md}"
    );

    // Impact from the metrics before the decision (the 10-minute window
    // reaches back to the first sample): 50 rps, the deviating samples at
    // 2 %, every sample 15 s.
    let samples = (decided / 1000 - START) / 15 + 1;
    let bad = samples - 13;
    let (requests, failed) = (samples * 50 * 15, bad * 15);
    #[allow(clippy::cast_precision_loss, reason = "small counts")]
    let share = failed as f64 / requests as f64 * 100.0;
    let expected = format!("about {requests} requests, {failed} of them failed (5xx, {share:.3} %)");
    assert!(md.contains(&expected), "{expected} in {md}");
    assert!(md.contains(&format!("burned {:.1}× as fast", share / 100.0 / 0.001)), "{md}");

    // The timeline: deviation, trigger, recovery (seen in the metrics up to
    // the completion), rollback started and completed.
    let events: Vec<&str> = incident.timeline.iter().map(|(_, e)| e.split(':').next().unwrap()).collect();
    assert_eq!(
        events,
        ["first deviation", "trigger fired", "recovered", "rollback started", "rollback completed"],
        "{:?}",
        incident.timeline
    );
    assert_eq!(incident.timeline[0].0, spark_rollback::rfc3339((START + 13 * 15) * 1000));
    assert_eq!(incident.timeline[1].0, spark_rollback::rfc3339(decided));
    assert_eq!(incident.timeline[2].0, spark_rollback::rfc3339((START + 45 * 15) * 1000));
    assert_eq!(incident.timeline[4].0, spark_rollback::rfc3339(decided + 240_000));
    assert!(incident.timeline[0].1.contains("api_latency_p95_seconds 0.52 above 0.4"), "{:?}", incident.timeline);

    // The trigger and its values; the action; every file with its digest.
    assert!(md.contains("`api_p95` — firing"), "{md}");
    assert!(md.contains("| threshold | 0.4 |"), "{md}");
    assert!(md.contains("| 1 | command | sh -c 'echo rolling back $SPARK_ROLLBACK_STAGE' | succeeded |"), "{md}");
    assert!(md.contains("The bundle verifies"), "{md}");
    let bundle = json.parent().unwrap();
    let names: Vec<&str> = incident.evidence.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), std::fs::read_dir(bundle).unwrap().count(), "{names:?}");
    for (name, sha) in &incident.evidence {
        assert_eq!(*sha, spark_evidence::sha256_hex(&std::fs::read(bundle.join(name)).unwrap()));
        assert!(md.contains(&format!("- `{name}` sha256:{sha}")), "{name}");
    }
    // The sections only people can fill are there, empty.
    for section in ["## Root cause", "## Action items", "## Lessons learned", "| Incident owner | _(name)_ |"] {
        assert!(md.contains(section), "{section}");
    }

    // A changed metrics file is not used, and the bundle is said not to
    // verify, at the top.
    let metrics = incident.evidence.iter().find(|(n, _)| n.starts_with("metrics_before_")).unwrap();
    std::fs::write(bundle.join(&metrics.0), "changed").unwrap();
    let again = incident_from_rollback(&json, &options).unwrap();
    let md = &again.markdown;
    assert!(md.contains("**Warning: The bundle does NOT verify"), "{md}");
    assert!(md.contains("is not the file the rollback recorded (its SHA-256 differs)"), "{md}");
    assert!(!again.timeline.iter().any(|(_, e)| e.starts_with("first deviation")), "{:?}", again.timeline);
}

#[test]
fn not_a_rollback_record_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("rollback_x.json");
    std::fs::write(&path, r#"{"format": "something-else/v1"}"#).unwrap();
    let e = incident_from_rollback(&path, &IncidentOptions::new(0)).unwrap_err().to_string();
    assert!(e.contains("not a rollback record"), "{e}");
    let e = incident_from_rollback(&tmp.path().join("missing.json"), &IncidentOptions::new(0)).unwrap_err().to_string();
    assert!(e.contains("cannot read"), "{e}");
}

#[test]
fn the_repository_template_is_the_one_the_report_fills() {
    let repo = std::fs::read_to_string("../.github/INCIDENT_TEMPLATE.md").unwrap();
    assert_eq!(
        repo,
        spark_release::INCIDENT_TEMPLATE,
        ".github/INCIDENT_TEMPLATE.md and src/incident_template.md differ"
    );
}

#[test]
fn a_blank_report_carries_the_snapshot_it_was_opened_with() {
    let mut options = IncidentOptions::new(START * 1000);
    options.title = Some("checkout latency".into());
    options.severity = "SEV3".into();
    let s = snapshot();
    let incident = spark_release::blank_incident(&options, Some(("incident_metrics.json", &s))).unwrap();
    assert!(incident.markdown.starts_with("# Incident: checkout latency\n"));
    assert!(incident.markdown.contains("| Severity | SEV3 |"));
    assert_eq!(
        incident.evidence,
        [("incident_metrics.json".to_owned(), spark_evidence::sha256_hex(s.to_json().as_bytes()))]
    );
    assert!(incident.markdown.contains("about 607500 requests"), "{}", incident.markdown);
}
