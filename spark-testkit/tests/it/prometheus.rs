use spark_testkit::prometheus::{Alertmanager, Prometheus};

#[tokio::test]
async fn prometheus_and_alertmanager_start_and_prometheus_reloads_its_rules() {
    let Some(am) = Alertmanager::start(Alertmanager::NULL_RECEIVER).await else { return };
    assert!(am.url().ends_with(&format!(":{}", am.port())));
    let config = format!(
        "global: {{evaluation_interval: 1s}}\nrule_files: [rules.yml]\n\
         alerting: {{alertmanagers: [{{static_configs: [{{targets: ['127.0.0.1:{}']}}]}}]}}\n",
        am.port()
    );
    let Some(prom) = Prometheus::start(&config, "groups: []\n").await else { return };
    assert!(prom.dir().join("prometheus.yml").is_file());
    prom.write_rules("groups:\n  - name: g\n    rules:\n      - alert: Always\n        expr: vector(1)\n");
    prom.reload().await;
    assert!(prom.log().contains("Completed loading of configuration file"), "{}", prom.log());
}

#[tokio::test]
async fn a_reload_of_rules_that_do_not_parse_panics_with_prometheus_answer() {
    let Some(prom) = Prometheus::start("rule_files: [rules.yml]\n", "groups: []\n").await else { return };
    prom.write_rules("groups: [this is not a group]\n");
    let failed = tokio::spawn(async move { prom.reload().await }).await.unwrap_err();
    let message = failed.into_panic();
    let message = message.downcast_ref::<String>().unwrap();
    assert!(message.contains("Prometheus refused the reload"), "{message}");
}

#[tokio::test]
async fn a_prometheus_that_cannot_start_panics_with_its_log() {
    let Some(_) = Prometheus::start("", "").await else { return };
    let failed = tokio::spawn(async { Prometheus::start("scrape_configs: [1]\n", "").await }).await.unwrap_err();
    let message = failed.into_panic();
    let message = message.downcast_ref::<String>().unwrap();
    assert!(message.contains("Prometheus did not start"), "{message}");
    assert!(message.contains("prometheus.yml"), "the log tail names the file: {message}");
}
