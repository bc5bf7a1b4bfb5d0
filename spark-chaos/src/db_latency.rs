//! `db-latency`: the fault proxy slows every answer from PostgreSQL and
//! resets a share of the connections to it, under a steady stream of
//! orders; no order may take effect twice, whatever times out must end as
//! a 503, and the canary engine, fed the latencies the clients measured,
//! must say rollback on `api_p95`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use spark_db::SharedClock;
use spark_rollback::{Engine, Metrics, Role, Signal, Snapshot};

use crate::db_restart::{Rows, count_rows, no_server_errors, one_order_per_key, orders_fills_events};
use crate::deployment::Deployment;
use crate::error::ChaosError;
use crate::experiment::{ExperimentReport, Invariant, elapsed_ms};
use crate::load::{self, LoadPlan, LoadRun, OrderClient, percentile};
use crate::proxy::{ProxyClient, Toxic};
use crate::scenario::{bound, duration, within};

/// The `db-latency` scenario.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbLatency {
    /// Always `db-latency`.
    pub scenario: String,
    /// What it sets out to show.
    pub hypothesis: String,
    /// New orders per second (1 to 1,000).
    pub rate: u32,
    /// Orders before the fault (1 s to 5 min).
    #[serde(deserialize_with = "duration")]
    pub steady: Duration,
    /// How long the fault lasts (1 s to 5 min).
    #[serde(deserialize_with = "duration")]
    pub fault_for: Duration,
    /// Orders after it (1 s to 5 min).
    #[serde(deserialize_with = "duration")]
    pub after: Duration,
    /// Added to every answer from PostgreSQL (1 ms to 10 s).
    #[serde(deserialize_with = "duration")]
    pub latency: Duration,
    /// The share of connections to PostgreSQL reset (0 to 1).
    pub reset_ratio: f32,
    /// The canary plan the recorded latencies are judged by (a
    /// `spark-rollback` plan, keys replacing the defaults).
    pub plan: toml::Table,
}

impl DbLatency {
    pub(crate) fn check(self) -> Result<DbLatency, ChaosError> {
        let (s, min, max) = ("db-latency", Duration::from_secs(1), Duration::from_secs(300));
        bound(s, self.scenario == s, "scenario", "must be \"db-latency\"")?;
        bound(s, (1..=1000).contains(&self.rate), "rate", "must be 1 to 1000")?;
        bound(s, within(self.steady, min, max), "steady", "must be 1s to 5m")?;
        bound(s, within(self.fault_for, min, max), "fault_for", "must be 1s to 5m")?;
        bound(s, within(self.after, min, max), "after", "must be 1s to 5m")?;
        bound(
            s,
            within(self.latency, Duration::from_millis(1), Duration::from_secs(10)),
            "latency",
            "must be 1ms to 10s",
        )?;
        bound(s, (0.0..=1.0).contains(&self.reset_ratio), "reset_ratio", "must be 0 to 1")?;
        self.engine()?;
        Ok(self)
    }

    fn engine(&self) -> Result<Engine, ChaosError> {
        crate::scenario::engine(&self.scenario, &self.plan, spark_rollback::TriggerId::ApiP95)
    }
}

/// The fault's window, ms after the origin, and whether the toxics went in.
#[derive(Debug, Clone, Default)]
pub(crate) struct Window {
    pub(crate) from: u64,
    pub(crate) to: u64,
    pub(crate) failed: Option<String>,
}

/// The canary engine's verdict on the recorded latencies: the canary's p95
/// per second as measured by the clients, the baseline the steady state's
/// p95, replayed over the run; its decision and trigger.
pub(crate) fn canary_verdict(
    engine: &Engine,
    load: &LoadRun,
    start_s: i64,
    steady_ms: u64,
) -> Result<(String, Option<String>, u64), ChaosError> {
    let mut snapshot = Snapshot::new(1);
    let baseline = load.p95_ms(Some((0, steady_ms))).unwrap_or(0);
    let seconds = load.duration_ms / 1000;
    for second in 0..=seconds {
        let mut latencies: Vec<u64> = load
            .attempts
            .iter()
            .filter(|a| a.status != 0 && (a.at_ms + a.latency_ms) / 1000 == second)
            .map(|a| a.latency_ms)
            .collect();
        let answered = latencies.len();
        let Some(p95) = percentile(&mut latencies, 95) else { continue };
        let t = start_s + i64::try_from(second).unwrap_or(0);
        #[allow(clippy::cast_precision_loss, reason = "milliseconds to seconds for a metric")]
        let (p95, baseline, rps) = (p95 as f64 / 1000.0, baseline as f64 / 1000.0, answered as f64);
        snapshot.push(Signal::ApiLatencyP95Seconds, Role::Canary, t, p95);
        snapshot.push(Signal::ApiLatencyP95Seconds, Role::Baseline, t, baseline);
        snapshot.push(Signal::HttpRequestsPerSecond, Role::Canary, t, rps);
        snapshot.push(Signal::HttpRequestsPerSecond, Role::Baseline, t, rps);
    }
    let metrics = Metrics::from_snapshot(&snapshot).map_err(|e| ChaosError::Input(e.to_string()))?;
    let stage = engine.plan().stages.first().ok_or_else(|| ChaosError::Input("the plan has no stage".to_owned()))?;
    let replay = engine.replay(&metrics, stage, start_s * 1000, None).map_err(|e| ChaosError::Input(e.to_string()))?;
    let at = u64::try_from(replay.last.at_ms / 1000 - start_s).unwrap_or(0) * 1000;
    Ok((replay.decision().kind().to_owned(), replay.decision().trigger().map(|t| t.id().to_owned()), at))
}

/// The canary engine's verdict on what Prometheus recorded of the service
/// (its `http_request_duration_seconds`, the plan's query) from the fault's
/// start: decision, trigger, and seconds after the origin.
async fn prometheus_verdict(
    engine: &Engine,
    url: &str,
    started_ms: i64,
    from_ms: i64,
    to_ms: i64,
) -> Result<(String, Option<String>, u64), ChaosError> {
    use spark_rollback::MetricSource as _;
    let source = spark_rollback::PrometheusSource::new(url).map_err(|e| ChaosError::Input(e.to_string()))?;
    let range = spark_rollback::Range { start_ms: from_ms - 5000, end_ms: to_ms, step_seconds: 1 };
    let snapshot =
        source.fetch(engine.plan(), range).await.map_err(|e| ChaosError::Input(format!("Prometheus: {e}")))?;
    let metrics = Metrics::from_snapshot(&snapshot).map_err(|e| ChaosError::Input(e.to_string()))?;
    let stage = engine.plan().stages.first().ok_or_else(|| ChaosError::Input("the plan has no stage".to_owned()))?;
    let replay = engine.replay(&metrics, stage, from_ms, Some(to_ms)).map_err(|e| ChaosError::Input(e.to_string()))?;
    let at = u64::try_from((replay.last.at_ms - started_ms).max(0)).unwrap_or(0);
    Ok((replay.decision().kind().to_owned(), replay.decision().trigger().map(|t| t.id().to_owned()), at))
}

/// The invariants: pure, so each can be shown to fail.
pub(crate) fn judge(
    s: &DbLatency,
    load: &LoadRun,
    window: &Window,
    rows: &Rows,
    verdict: &(String, Option<String>, u64),
) -> Vec<Invariant> {
    let before = load.p95_ms(Some((0, window.from)));
    let during = load.p95_ms(Some((window.from, window.to)));
    let latency = u64::try_from(s.latency.as_millis()).unwrap_or(u64::MAX);
    let rose = matches!((before, during), (Some(b), Some(d)) if d >= b + latency);
    let (decision, trigger, at) = verdict;
    vec![
        Invariant::new(
            "fault-injected",
            window.failed.is_none(),
            window.failed.clone().unwrap_or_else(|| {
                format!(
                    "{latency} ms added and {} of connections reset for {} ms",
                    s.reset_ratio,
                    window.to - window.from
                )
            }),
        ),
        no_server_errors("timeouts-end-as-503", load),
        one_order_per_key(load),
        orders_fills_events(load, rows),
        Invariant::new("p95-rises", rose, format!("p95 {} ms before, {} ms during", fmt_ms(before), fmt_ms(during))),
        Invariant::new(
            "api-p95-rollback",
            decision == "rollback" && trigger.as_deref() == Some("api_p95"),
            format!(
                "the canary engine says {decision}{} at {:.0} s",
                trigger.as_ref().map(|t| format!(" ({t})")).unwrap_or_default(),
                Duration::from_millis(*at).as_secs_f64()
            ),
        ),
    ]
}

fn fmt_ms(ms: Option<u64>) -> String {
    ms.map_or_else(|| "–".to_owned(), |ms| ms.to_string())
}

/// Runs `db-latency` against `deployment`: orders at `rate` for `steady`,
/// then `latency` on every answer from PostgreSQL and `reset_ratio` of its
/// connections reset by the fault proxy's `postgres` proxy for
/// `fault_for`, then `after` more. The toxics are removed however the run
/// ends.
///
/// # Errors
/// [`ChaosError::Input`] without `[service]` or `[proxy]`, or when the
/// proxy cannot be reached.
pub(crate) async fn run(
    s: &DbLatency,
    deployment: &Deployment,
    clock: &SharedClock,
) -> Result<ExperimentReport, ChaosError> {
    let service = deployment.need_service(&s.scenario)?;
    let proxy = deployment.need_proxy(&s.scenario)?;
    crate::deployment::require_loopback("the database", &deployment.database.url)?;
    let proxies = ProxyClient::new(&proxy.api)?;
    proxies.proxy(&proxy.postgres).await?;
    let engine = s.engine()?;
    // Above the service's own 10 s pool timeout, so a request it gives up
    // on is seen as its 503, not as a client timeout.
    let client = OrderClient::new(service, Duration::from_secs(15))?;
    let started_ms = clock.now_ms();
    let origin = Instant::now();
    let plan = LoadPlan {
        rate: s.rate,
        duration: s.steady + s.fault_for + s.after,
        // An order refused early in the fault is retried past its end.
        retry_for: s.fault_for + s.after + Duration::from_secs(10),
        timeout: Duration::from_secs(15),
        run: format!("chaos-db-latency-{started_ms}"),
    };
    let latency =
        Toxic::latency(u64::try_from(s.latency.as_millis()).unwrap_or(u64::MAX), 0).downstream().named("spark_latency");
    let reset = Toxic::reset_peer(0).downstream().toxicity(s.reset_ratio).named("spark_reset");
    let fault = async {
        tokio::time::sleep(s.steady).await;
        let mut window = Window { from: elapsed_ms(origin), ..Window::default() };
        let added = async {
            proxies.add_toxic(&proxy.postgres, &latency).await?;
            proxies.add_toxic(&proxy.postgres, &reset).await
        }
        .await;
        if let Err(e) = added {
            window.failed = Some(e.to_string());
        }
        tokio::time::sleep(s.fault_for).await;
        window.to = elapsed_ms(origin);
        window
    };
    let (load, window) = tokio::join!(load::run(&client, &plan, origin), fault);
    // Removed whatever happened; a removal that fails is reported.
    let removed = async {
        proxies.remove_toxic(&proxy.postgres, "spark_latency").await?;
        proxies.remove_toxic(&proxy.postgres, "spark_reset").await
    }
    .await;
    let rows = count_rows(&deployment.database.url, &service.account_prefix, started_ms).await?;
    let steady_ms = u64::try_from(s.steady.as_millis()).unwrap_or(u64::MAX);
    // The service's own metrics through Prometheus when the deployment has
    // one; else the latencies the clients measured.
    let (verdict, source) = match &deployment.prometheus {
        Some(p) => {
            crate::deployment::require_loopback("Prometheus", &p.url)?;
            // One more scrape after the fault, so its last second is in.
            tokio::time::sleep(Duration::from_secs(u64::from(p.scrape_seconds.max(1)) * 2)).await;
            let from = started_ms + i64::try_from(window.from).unwrap_or(0);
            let to = started_ms + i64::try_from(window.to).unwrap_or(0);
            (prometheus_verdict(&engine, &p.url, started_ms, from, to).await?, "the service's metrics in Prometheus")
        }
        None => (canary_verdict(&engine, &load, started_ms / 1000, steady_ms)?, "the latencies the clients measured"),
    };
    let mut invariants = judge(s, &load, &window, &rows, &verdict);
    if let Some(i) = invariants.iter_mut().find(|i| i.name == "api-p95-rollback") {
        i.value = format!("{} on {source}", i.value);
    }
    let drained =
        crate::delivery::drain(&deployment.relay.command, &deployment.database.url, Duration::from_secs(60)).await?;
    invariants.push(crate::delivery::published(&drained));
    if let Err(e) = removed {
        invariants.push(Invariant::new("fault-removed", false, e.to_string()));
    }
    let resets = proxies.proxy(&proxy.postgres).await.map(|p| p.spark_connections.reset).unwrap_or(0);
    let mut measurements = BTreeMap::new();
    measurements.insert("before", load.phase(0, window.from));
    let mut during = load.phase(window.from, window.to);
    during.insert("connections_reset", json!(resets));
    measurements.insert("during", during);
    let mut after = load.phase(window.to, load.duration_ms);
    after.insert("orders", json!(load.orders));
    after.insert("canary_decision", json!(verdict.0));
    measurements.insert("after", after);
    Ok(ExperimentReport::judged(&s.scenario, &s.hypothesis, invariants, measurements, started_ms, origin))
}
