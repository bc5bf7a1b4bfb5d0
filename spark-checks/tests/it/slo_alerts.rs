//! `slo-alerts` against a real Prometheus with burn-rate rules, sending to a
//! real Alertmanager.

use std::time::{Duration, Instant};

use spark_checks::checks::{ObservabilityCheck, SloAlertsCheck};
use spark_checks::{Config, Status};
use spark_testkit::prometheus::{Alertmanager, Prometheus};

use crate::observability::{MetricsTarget, poll, prometheus_yml};
use crate::{assert_status, config, has_finding, measurement, run};

/// A rule per window: the error ratio over the window against 14.4 (1 h)
/// and 6 (6 h) times the budget of a 99.9 % SLO.
fn rule(window: &str, factor: &str) -> String {
    format!(
        "      - alert: SparkErrorBudgetBurn{window}\n\
         \x20       expr: sum(rate(spark_requests_total{{code=\"500\"}}[{window}])) / sum(rate(spark_requests_total[{window}])) > {factor} * 0.001\n\
         \x20       labels: {{slo: orders, window: {window}, severity: page}}\n"
    )
}

fn rules(windows: &[(&str, &str)]) -> String {
    let mut text = "groups:\n  - name: slo-orders\n    rules:\n".to_owned();
    for (window, factor) in windows {
        text.push_str(&rule(window, factor));
    }
    text
}

struct Setup {
    target: MetricsTarget,
    prom: Prometheus,
    am: Alertmanager,
}

impl Setup {
    async fn start() -> Option<Setup> {
        let target = MetricsTarget::start().await;
        let am = Alertmanager::start(Alertmanager::NULL_RECEIVER).await?;
        let alerting =
            format!("alerting: {{alertmanagers: [{{static_configs: [{{targets: ['127.0.0.1:{}']}}]}}]}}\n", am.port());
        let prom =
            Prometheus::start(&prometheus_yml(target.port, &alerting), &rules(&[("1h", "14.4"), ("6h", "6")])).await?;
        Some(Setup { target, prom, am })
    }

    fn config(&self) -> Config {
        config(&format!(
            "[prometheus]\nurl = {:?}\n[alertmanager]\nurl = {:?}\n[slo]\nnames = [\"orders\"]\n",
            self.prom.url(),
            self.am.url()
        ))
    }

    /// Waits until both rules have been evaluated and the check passes.
    async fn wait_for_pass(&self) -> Duration {
        let (o, took) =
            poll(&SloAlertsCheck, || self.config(), Duration::from_secs(10), |o| o.status == Status::Pass).await;
        assert_status(&o, Status::Pass);
        took
    }

    /// Adds a silence through Alertmanager's API; its id.
    async fn silence(&self, matchers: &str) -> String {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let body = format!(
            "{{\"matchers\": {matchers}, \"startsAt\": \"2020-01-01T00:00:00Z\", \"endsAt\": \"2099-01-01T00:00:00Z\", \
             \"createdBy\": \"oncall\", \"comment\": \"maintenance\"}}"
        );
        let response = reqwest::Client::new()
            .post(format!("{}/api/v2/silences", self.am.url()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
        let answer: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        answer["silenceID"].as_str().unwrap().to_owned()
    }
}

#[tokio::test]
async fn loaded_healthy_burn_rate_rules_pass() {
    let Some(s) = Setup::start().await else { return };
    let waited = s.wait_for_pass().await;
    let started = Instant::now();
    let o = run(&SloAlertsCheck, s.config()).await;
    eprintln!("measured: rules evaluated after {waited:?}; the check took {:?} ({})", started.elapsed(), o.summary);
    assert_status(&o, Status::Pass);
    assert_eq!(measurement(&o, "burn_rate_rules").value, 2.0);
    assert_eq!(measurement(&o, "silences_muting_burn_rate_alerts").value, 0.0);
    assert!(o.summary.starts_with("1 SLO(s) with 2 burn-rate rule(s) loaded; Alertmanager 0."), "{o:#?}");
    // An SLO without rules fails; without Alertmanager the silences are
    // not checked, which warns.
    let o = run(
        &SloAlertsCheck,
        config(&format!("[prometheus]\nurl = {:?}\n[slo]\nnames = [\"orders\", \"payments\"]\n", s.prom.url())),
    )
    .await;
    assert_status(&o, Status::Fail);
    assert!(has_finding(&o, Status::Fail, "SLO \"payments\" has no 1h burn-rate alert"), "{o:#?}");
    assert!(has_finding(&o, Status::Fail, "SLO \"payments\" has no 6h burn-rate alert"), "{o:#?}");
    assert!(has_finding(&o, Status::Warn, "alertmanager.url is not set"), "{o:#?}");
    s.target.stop().await;
}

#[tokio::test]
async fn a_silence_on_a_burn_rate_alert_fails_naming_it() {
    let Some(s) = Setup::start().await else { return };
    s.wait_for_pass().await;
    // A silence on another alert changes nothing.
    s.silence(r#"[{"name": "alertname", "value": "DiskFull", "isRegex": false, "isEqual": true}]"#).await;
    let o = run(&SloAlertsCheck, s.config()).await;
    assert_status(&o, Status::Pass);
    assert_eq!(measurement(&o, "live_silences").value, 1.0);

    let id = s
        .silence(r#"[{"name": "alertname", "value": "SparkErrorBudgetBurn1h", "isRegex": false, "isEqual": true}]"#)
        .await;
    let o = run(&SloAlertsCheck, s.config()).await;
    assert_status(&o, Status::Fail);
    let named = format!("silence {id} (active, by \"oncall\"");
    assert!(has_finding(&o, Status::Fail, &named), "{o:#?}");
    assert!(has_finding(&o, Status::Fail, "mutes SparkErrorBudgetBurn1h of SLO \"orders\" (1h)"), "{o:#?}");
    assert_eq!(measurement(&o, "silences_muting_burn_rate_alerts").value, 1.0);

    // A regex on a rule label mutes both windows.
    s.silence(r#"[{"name": "slo", "value": "ord.*", "isRegex": true, "isEqual": true}]"#).await;
    let o = run(&SloAlertsCheck, s.config()).await;
    assert!(has_finding(&o, Status::Fail, "mutes SparkErrorBudgetBurn6h"), "{o:#?}");
    assert_eq!(measurement(&o, "silences_muting_burn_rate_alerts").value, 3.0);
    s.target.stop().await;
}

#[tokio::test]
async fn a_removed_6h_rule_fails() {
    let Some(s) = Setup::start().await else { return };
    s.wait_for_pass().await;
    s.prom.write_rules(&rules(&[("1h", "14.4")]));
    s.prom.reload().await;
    // A reload recreates the group: its rules are unevaluated (a warning)
    // until the next evaluation, a second later at most.
    let (o, _) = poll(
        &SloAlertsCheck,
        || s.config(),
        Duration::from_secs(5),
        |o| !o.findings.iter().any(|f| f.status == Status::Warn),
    )
    .await;
    assert_status(&o, Status::Fail);
    assert!(has_finding(&o, Status::Fail, "SLO \"orders\" has no 6h burn-rate alert"), "{o:#?}");
    assert_eq!(o.findings.len(), 1, "{o:#?}");
    assert_eq!(measurement(&o, "burn_rate_rules").value, 1.0);
    s.target.stop().await;
}

#[tokio::test]
async fn a_burn_rate_rule_that_fails_to_evaluate_fails() {
    let Some(s) = Setup::start().await else { return };
    s.wait_for_pass().await;
    // The rule below fails only on data: wait for the first scrape.
    let (o, _) = poll(
        &ObservabilityCheck,
        || config(&format!("[prometheus]\nurl = {:?}\n", s.prom.url())),
        Duration::from_secs(20),
        |o| o.status == Status::Pass,
    )
    .await;
    assert_status(&o, Status::Pass);
    // label_replace gives both series of the counter the same labels:
    // Prometheus refuses such a vector at every evaluation.
    s.prom.write_rules(&format!(
        "{}      - alert: SparkErrorBudgetBurn6h\n        expr: label_replace(spark_requests_total, \"code\", \"x\", \"\", \"\") > 0\n        labels: {{slo: orders, window: 6h}}\n",
        rules(&[("1h", "14.4")])
    ));
    s.prom.reload().await;
    let (o, took) = poll(&SloAlertsCheck, || s.config(), Duration::from_secs(5), |o| o.status == Status::Fail).await;
    eprintln!("measured: the evaluation error was seen {took:?} after the reload");
    assert_status(&o, Status::Fail);
    assert!(
        has_finding(
            &o,
            Status::Fail,
            "rule SparkErrorBudgetBurn6h (group \"slo-orders\", SLO \"orders\", 6h) fails to evaluate: "
        ),
        "{o:#?}"
    );
    assert!(has_finding(&o, Status::Fail, "same labelset"), "{o:#?}");
    s.target.stop().await;
}
