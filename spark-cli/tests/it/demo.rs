//! `spark demo`: the README's main job, checked through its summary.

use crate::spark_with;

#[test]
fn demo_holds_every_guarantee_and_writes_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let run = spark_with(&["demo", "--json"], Some(dir.path()), &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let printed = run.json();
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("spark-demo-summary.json")).unwrap()).unwrap();
    assert_eq!(printed, written);
    assert_eq!(written["ok"], true);
    for check in [
        "replays_identical",
        "every_refusal_refused",
        "one_order_per_key",
        "one_open_position_per_account_and_instrument",
        "positions_match_accepted_orders",
        "every_event_published",
    ] {
        assert_eq!(written["checks"][check], true, "{check}");
    }
    assert_eq!(written["orders_accepted"], 200);
    assert_eq!(written["events_published"], 200);
    assert_eq!(written["rejected_422"], 30);
    assert!(written["replays"].as_u64().unwrap() >= 20);
    assert_eq!(written["open_positions"], 15);
    assert!(written["duration_ms"].as_u64().unwrap() < 30_000);
}
