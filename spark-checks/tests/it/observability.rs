//! `observability` against a real Prometheus scraping a tiny `/metrics`
//! server of the test's own, and Grafana dashboard files the test writes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use spark_checks::checks::{ObservabilityCheck, SloAlertsCheck};
use spark_checks::{Config, Context, Outcome, Status};
use spark_db::Clock as _;
use spark_testkit::prometheus::Prometheus;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{assert_status, config, has_finding, measurement, run, run_in};

/// A `/metrics` endpoint on a free loopback port: one connection at a time,
/// each closed after its answer, so stopping it leaves no keep-alive
/// connection that still answers.
pub(crate) struct MetricsTarget {
    pub(crate) port: u16,
    task: tokio::task::JoinHandle<()>,
}

/// What the target exposes: requests by status code, for burn-rate rules.
const METRICS: &str = "# TYPE spark_requests_total counter\n\
spark_requests_total{code=\"200\"} 1000\n\
spark_requests_total{code=\"500\"} 1\n";

impl MetricsTarget {
    pub(crate) async fn start() -> MetricsTarget {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{METRICS}",
                    METRICS.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            }
        });
        MetricsTarget { port, task }
    }

    /// Stops answering: the listener closes, so a scrape is refused.
    pub(crate) async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A Prometheus scraping `127.0.0.1:port` as job `orders` every second.
pub(crate) fn prometheus_yml(port: u16, extra: &str) -> String {
    format!(
        "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
         rule_files: [rules.yml]\n\
         scrape_configs:\n  - job_name: orders\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n{extra}"
    )
}

/// Runs `check` under `config` every 100 ms until `done` holds, for at most
/// `limit`; the last outcome and how long it took.
pub(crate) async fn poll(
    check: &dyn spark_checks::Check,
    config: impl Fn() -> Config,
    limit: Duration,
    done: impl Fn(&Outcome) -> bool,
) -> (Outcome, Duration) {
    let started = Instant::now();
    loop {
        let o = run(check, config()).await;
        if done(&o) || started.elapsed() > limit {
            return (o, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn targets_config(prom: &Prometheus, expected: &str) -> Config {
    config(&format!("[prometheus]\nurl = {:?}\n[observability]\nexpected_targets = {expected}\n", prom.url()))
}

#[tokio::test]
async fn a_scraped_target_passes_and_a_stopped_one_fails_within_two_intervals() {
    let target = MetricsTarget::start().await;
    let port = target.port;
    let Some(prom) = Prometheus::start(&prometheus_yml(port, ""), "groups: []\n").await else { return };
    // Prometheus reads its targets up to 5 s after start.
    let (o, first) = poll(
        &ObservabilityCheck,
        || targets_config(&prom, "{ orders = 1 }"),
        Duration::from_secs(20),
        |o| o.status == Status::Pass,
    )
    .await;
    assert_status(&o, Status::Pass);
    assert_eq!(measurement(&o, "targets (orders)").value, 1.0);
    let age = measurement(&o, "last_scrape_age_s (orders)");
    assert!(age.value < 2.0 && age.status == Status::Pass, "{age:?}");
    assert_eq!(o.summary, "1/1 targets up in 1 job(s)");
    let started = Instant::now();
    let o = run(&ObservabilityCheck, targets_config(&prom, "{ orders = 1 }")).await;
    let took = started.elapsed();

    target.stop().await;
    let (o_down, detected) = poll(
        &ObservabilityCheck,
        || targets_config(&prom, "{ orders = 1 }"),
        Duration::from_secs(5),
        |o| o.status == Status::Fail,
    )
    .await;
    eprintln!(
        "measured: first pass {first:?} after Prometheus was ready; the check took {took:?} ({}); \
         a stopped target failed after {detected:?}",
        o.summary
    );
    assert_status(&o_down, Status::Fail);
    let down = format!("target 127.0.0.1:{port} of job \"orders\" is down");
    assert!(has_finding(&o_down, Status::Fail, &down), "{o_down:#?}");
    assert!(has_finding(&o_down, Status::Fail, "connection refused"), "{o_down:#?}");
    // Two scrape intervals, and the 100 ms between polls.
    assert!(detected <= Duration::from_millis(2100), "a stopped target was seen after {detected:?}");
}

#[tokio::test]
async fn a_job_with_fewer_targets_than_expected_fails() {
    let target = MetricsTarget::start().await;
    let Some(prom) = Prometheus::start(&prometheus_yml(target.port, ""), "groups: []\n").await else { return };
    let (o, _) = poll(
        &ObservabilityCheck,
        || targets_config(&prom, "{ orders = 1 }"),
        Duration::from_secs(20),
        |o| o.status == Status::Pass,
    )
    .await;
    assert_status(&o, Status::Pass);
    let o = run(&ObservabilityCheck, targets_config(&prom, "{ orders = 2, payments = 1 }")).await;
    assert_status(&o, Status::Fail);
    assert!(has_finding(&o, Status::Fail, "job \"orders\" has 1 active targets, 2 expected"), "{o:#?}");
    assert!(has_finding(&o, Status::Fail, "job \"payments\" has 0 active targets, 1 expected"), "{o:#?}");
    // One too many fails too: a stale instance still scraped.
    let o = run(&ObservabilityCheck, targets_config(&prom, "{ orders = 0 }")).await;
    assert!(has_finding(&o, Status::Fail, "an instance too many"), "{o:#?}");
    target.stop().await;
}

#[tokio::test]
async fn a_last_scrape_older_than_two_intervals_fails() {
    let target = MetricsTarget::start().await;
    let Some(prom) = Prometheus::start(&prometheus_yml(target.port, ""), "groups: []\n").await else { return };
    let (o, _) = poll(
        &ObservabilityCheck,
        || targets_config(&prom, "{ orders = 1 }"),
        Duration::from_secs(20),
        |o| o.status == Status::Pass,
    )
    .await;
    assert_status(&o, Status::Pass);
    // Seen from 10 s later, as when Prometheus has stopped scraping: the
    // target is still "up", but its last scrape is 10 intervals old.
    let now = spark_db::system_clock().now_ms();
    let later = Context::new(targets_config(&prom, "{ orders = 1 }"))
        .with_clock(Arc::new(spark_db::ManualClock::new(now + 10_000)));
    let o = run_in(&ObservabilityCheck, later).await;
    assert_status(&o, Status::Fail);
    let age = measurement(&o, "last_scrape_age_s (orders)");
    assert!(age.value > 9.0 && age.status == Status::Fail, "{age:?}");
    assert_eq!(age.threshold.unwrap().to_string(), "fail > 2");
    assert!(o.summary.starts_with("last_scrape_age_s (orders) = "), "{o:#?}");
    target.stop().await;
}

#[tokio::test]
async fn an_unreachable_prometheus_fails() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let o = run(&ObservabilityCheck, config(&format!("[prometheus]\nurl = {url:?}\n"))).await;
    assert_status(&o, Status::Fail);
    assert!(o.summary.contains(&format!("cannot reach {url}/api/v1/targets")), "{o:#?}");
    let o = run(&SloAlertsCheck, config(&format!("[prometheus]\nurl = {url:?}\n[slo]\nnames = [\"orders\"]\n"))).await;
    assert_status(&o, Status::Fail);
    assert!(o.summary.contains("cannot reach"), "{o:#?}");
    // A password (only ever from the environment) never reaches a message.
    let secret = format!("http://spark:hunter2@127.0.0.1:{port}");
    let env = move |var: &str| (var == "SPARK_PROMETHEUS_URL").then(|| secret.clone());
    let o = run(&ObservabilityCheck, Config::from_toml_str("", env).unwrap()).await;
    assert_status(&o, Status::Fail);
    assert!(o.summary.contains(&format!("cannot reach http://spark:***@127.0.0.1:{port}/")), "{o:#?}");
    assert!(!format!("{o:?}").contains("hunter2"), "{o:#?}");
}

#[tokio::test]
async fn both_checks_skip_only_when_not_configured() {
    for check in [&ObservabilityCheck as &dyn spark_checks::Check, &SloAlertsCheck] {
        let o = run(check, config("")).await;
        assert_status(&o, Status::Skip);
        assert!(o.summary.contains("prometheus.url"), "{o:#?}");
    }
    let o = run(&SloAlertsCheck, config("[prometheus]\nurl = \"http://127.0.0.1:9\"\n")).await;
    assert_status(&o, Status::Skip);
    assert!(o.summary.contains("slo.names"), "{o:#?}");
}

const GOOD: &str = r#"{
  "title": "Orders",
  "templating": {"list": [
    {"name": "ds", "type": "datasource", "query": "prometheus", "refresh": 1},
    {"name": "instance", "type": "query", "datasource": {"type": "prometheus", "uid": "${ds}"}, "refresh": 1},
    {"name": "window", "type": "custom", "current": {"text": "5m", "value": "5m"}, "options": []}
  ]},
  "panels": [
    {"id": 1, "title": "Requests", "datasource": {"type": "prometheus", "uid": "prom-main"},
     "targets": [{"refId": "A", "expr": "rate(spark_requests_total[5m])"}]},
    {"id": 2, "title": "Errors", "datasource": "$ds"}
  ]
}"#;

const BAD: &str = r#"{
  "title": "Payments",
  "templating": {"list": [
    {"name": "env", "type": "custom", "options": [{"text": "prod", "value": "prod"}], "refresh": 0}
  ]},
  "panels": [
    {"id": 3, "title": "Latency", "datasource": {"type": "prometheus", "uid": "prom-gone"}}
  ]
}"#;

#[tokio::test]
async fn dashboards_open_with_values_and_known_datasources() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("orders.json"), GOOD).unwrap();
    let pattern = dir.path().join("*.json").display().to_string();
    let dashboards = |pattern: &str| {
        config(&format!("[observability]\ndashboards = [{pattern:?}]\ndatasources = [\"prom-main\", \"Loki\"]\n"))
    };
    // Dashboards alone are judged without a Prometheus.
    let o = run(&ObservabilityCheck, dashboards(&pattern)).await;
    assert_status(&o, Status::Pass);
    assert_eq!(o.summary, "1/1 dashboard(s) open with values and known data sources");
    assert_eq!(o.details["targets"], "not measured: prometheus.url is not set");

    std::fs::write(dir.path().join("payments.json"), BAD).unwrap();
    let o = run(&ObservabilityCheck, dashboards(&pattern)).await;
    assert_status(&o, Status::Fail);
    let payments = dir.path().join("payments.json").display().to_string();
    assert!(
        has_finding(&o, Status::Fail, &format!("dashboard {payments}: variable \"env\" has no current value")),
        "{o:#?}"
    );
    assert!(
        has_finding(&o, Status::Fail, "panel \"Latency\" (id 3): data source \"prom-gone\" is not among"),
        "{o:#?}"
    );
    assert_eq!(o.findings.len(), 2, "{o:#?}");
    assert_eq!(measurement(&o, "dashboards").value, 2.0);

    // A directory means its *.json; a pattern that matches nothing fails.
    std::fs::write(dir.path().join("broken.json"), "{").unwrap();
    let o = run(&ObservabilityCheck, dashboards(&dir.path().display().to_string())).await;
    assert!(has_finding(&o, Status::Fail, "broken.json: is not JSON"), "{o:#?}");
    let o = run(&ObservabilityCheck, dashboards(&dir.path().join("*.yaml").display().to_string())).await;
    assert!(has_finding(&o, Status::Fail, "no dashboard file matches"), "{o:#?}");
}
