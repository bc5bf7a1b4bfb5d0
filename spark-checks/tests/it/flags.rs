//! `flags` on flagd files good and bad, and against a flag service over
//! OFREP.

use spark_checks::Status;
use spark_checks::checks::FlagsCheck;

use crate::{assert_status, config, has_finding, measurement, run};

const GOOD: &str = r#"{
  "$schema": "https://flagd.dev/schema/v0/flags.json",
  "flags": {
    "new-checkout": {
      "state": "ENABLED",
      "variants": {"on": true, "off": false},
      "defaultVariant": "off",
      "targeting": {"fractional": [["on", 5], ["off", 95]]},
      "metadata": {"safeVariant": "off"}
    },
    "price-source": {
      "state": "ENABLED",
      "variants": {"bist": "bist", "backup": "backup"},
      "defaultVariant": "bist",
      "targeting": {"if": [{"==": [{"var": "desk"}, "test"]}, "backup", null]}
    }
  }
}"#;

fn write(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("flags.json");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn flags_config(file: &str, extra: &str) -> spark_checks::Config {
    config(&format!("[flags]\nfile = {file:?}\nrequired = [\"new-checkout\", \"price-source\"]\n{extra}"))
}

#[tokio::test]
async fn a_good_file_passes_with_its_rollout_measured() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&FlagsCheck, flags_config(&write(&dir, GOOD), "")).await;
    assert_status(&o, Status::Pass);
    assert_eq!(measurement(&o, "fractional_share (new-checkout)").value, 5.0, "{o:#?}");
    let measured = measurement(&o, "fractional_share_measured (new-checkout)").value;
    assert!((2.0..9.0).contains(&measured), "the engine's split of 1000 keys: {o:#?}");
}

#[tokio::test]
async fn each_bad_file_fails_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    // A missing defaultVariant.
    let text = GOOD.replacen(r#""defaultVariant": "bist","#, "", 1);
    let o = run(&FlagsCheck, flags_config(&write(&dir, &text), "")).await;
    assert!(has_finding(&o, Status::Fail, "flag price-source has no explicit defaultVariant"), "{o:#?}");
    // A risky flag defaulting on (the configuration marks it risky too).
    let text = GOOD.replacen(r#""defaultVariant": "off","#, r#""defaultVariant": "on","#, 1);
    let o = run(&FlagsCheck, flags_config(&write(&dir, &text), "")).await;
    assert!(has_finding(&o, Status::Fail, "risky flag new-checkout defaults to \"on\""), "{o:#?}");
    let text = GOOD.replacen(r#","metadata": {"safeVariant": "off"}"#, "", 1).replacen(
        r#""defaultVariant": "bist""#,
        r#""defaultVariant": "backup""#,
        1,
    );
    let o = run(&FlagsCheck, flags_config(&write(&dir, &text), "[flags.risky]\nprice-source = \"bist\"\n")).await;
    assert!(has_finding(&o, Status::Fail, "risky flag price-source defaults to \"backup\""), "{o:#?}");
    // A 50 % fractional rollout at a 5 % canary.
    let text = GOOD.replacen(r#"[["on", 5], ["off", 95]]"#, r#"[["on", 50], ["off", 50]]"#, 1);
    let o = run(&FlagsCheck, flags_config(&write(&dir, &text), "")).await;
    assert_status(&o, Status::Fail);
    let share = measurement(&o, "fractional_share (new-checkout)");
    assert_eq!((share.value, share.status), (50.0, Status::Fail), "{o:#?}");
    assert!((40.0..60.0).contains(&measurement(&o, "fractional_share_measured (new-checkout)").value), "{o:#?}");
    // The same rollout passes once the canary carries 50 %.
    let o = run(&FlagsCheck, flags_config(&write(&dir, &text), "canary_weight_percent = 60\n")).await;
    assert_status(&o, Status::Pass);
    // A flag the application declares is missing; a DISABLED flag warns.
    let o =
        run(&FlagsCheck, config(&format!("[flags]\nfile = {:?}\nrequired = [\"kill-switch\"]\n", write(&dir, GOOD))))
            .await;
    assert!(has_finding(&o, Status::Fail, "flag kill-switch is declared by the application"), "{o:#?}");
    let text = GOOD.replacen(r#""state": "ENABLED""#, r#""state": "DISABLED""#, 1);
    let o = run(&FlagsCheck, flags_config(&write(&dir, &text), "")).await;
    assert_status(&o, Status::Warn);
    assert!(has_finding(&o, Status::Warn, "flag new-checkout is DISABLED"), "{o:#?}");
    // Targeting that names a variant the flag lacks.
    let text = GOOD.replacen(r#""backup", null"#, r#""standby", "standby""#, 1);
    let o = run(&FlagsCheck, flags_config(&write(&dir, &text), "")).await;
    assert!(has_finding(&o, Status::Fail, "flag price-source: targeting returned \"standby\""), "{o:#?}");
    // Not JSON, and no file configured.
    let o = run(&FlagsCheck, flags_config(&write(&dir, "{"), "")).await;
    assert_status(&o, Status::Fail);
    assert_status(&run(&FlagsCheck, config("")).await, Status::Skip);
}

/// A flag service answering OFREP's bulk evaluation with fixed values.
async fn ofrep_service(flags: serde_json::Value) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/ofrep/v1/evaluate/flags",
        axum::routing::post(move || {
            let flags = flags.clone();
            async move { axum::Json(serde_json::json!({ "flags": flags })) }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, task)
}

#[tokio::test]
async fn the_flag_service_must_answer_and_agree_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, GOOD);
    // For targeting key "spark-check" the file gives new-checkout the
    // variant its 5 % rollout hashes to; ask the engine-backed check by
    // serving both values and reading which one it accepts.
    let mut agreed = None;
    for value in [false, true] {
        let (url, task) = ofrep_service(serde_json::json!([
            {"key": "new-checkout", "value": value, "variant": if value { "on" } else { "off" }, "reason": "TARGETING_MATCH"},
            {"key": "price-source", "value": "bist", "variant": "bist", "reason": "DEFAULT"}
        ]))
        .await;
        let o = run(&FlagsCheck, flags_config(&file, &format!("ofrep_url = {url:?}\n"))).await;
        task.abort();
        if o.status == Status::Pass {
            assert_eq!(measurement(&o, "ofrep_agreeing_flags").value, 2.0, "{o:#?}");
            assert!(agreed.replace(value).is_none(), "both values cannot agree with the file");
        } else {
            assert!(has_finding(&o, Status::Fail, "flag new-checkout: the flag service says"), "{o:#?}");
        }
    }
    assert!(agreed.is_some(), "one of the two values must agree");
    // A service missing a flag, and no service at all.
    let (url, task) = ofrep_service(serde_json::json!([{"key": "price-source", "value": "bist"}])).await;
    let o = run(&FlagsCheck, flags_config(&file, &format!("ofrep_url = {url:?}\n"))).await;
    assert!(has_finding(&o, Status::Fail, "does not serve flag new-checkout"), "{o:#?}");
    task.abort();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let o = run(&FlagsCheck, flags_config(&file, &format!("ofrep_url = \"http://127.0.0.1:{closed}\"\n"))).await;
    assert!(has_finding(&o, Status::Fail, "did not answer"), "{o:#?}");
}
