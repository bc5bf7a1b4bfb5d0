//! `sink-outage`: the webhook sink refuses connections while events keep
//! coming; they must wait in the outbox (none dead-lettered), the outbox
//! lag the service exports must make the canary engine's
//! `outbox_lag_explosion` trigger fire from Prometheus, and once the sink
//! is back everything must drain, in order per aggregate, none lost.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use spark_db::SharedClock;
use spark_rollback::{Engine, MetricSource as _, Metrics, PrometheusSource, Range};

use crate::delivery::{self, Event, Relays, Sink, delivery_invariants, sql};
use crate::deployment::Deployment;
use crate::error::ChaosError;
use crate::experiment::{ExperimentReport, Invariant, Measurements, elapsed_ms};
use crate::proxy::ProxyClient;
use crate::scenario::{bound, duration, within};

/// The `sink-outage` scenario.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkOutage {
    /// Always `sink-outage`.
    pub scenario: String,
    /// What it sets out to show.
    pub hypothesis: String,
    /// Events delivered before the outage (1 to 100,000).
    pub events_before: u32,
    /// Aggregates the events are spread over (1 to 10,000).
    pub aggregates: u32,
    /// Events enqueued per second during the outage (1 to 1,000).
    pub rate: u32,
    /// How long the sink refuses (1 s to 10 min).
    #[serde(deserialize_with = "duration")]
    pub outage: Duration,
    /// How long everything may take to drain after it (1 s to 10 min).
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// The canary plan Prometheus' metrics are judged by.
    pub plan: toml::Table,
}

impl SinkOutage {
    pub(crate) fn check(self) -> Result<SinkOutage, ChaosError> {
        let (s, min, max) = ("sink-outage", Duration::from_secs(1), Duration::from_secs(600));
        bound(s, self.scenario == s, "scenario", "must be \"sink-outage\"")?;
        bound(s, (1..=100_000).contains(&self.events_before), "events_before", "must be 1 to 100000")?;
        bound(s, (1..=10_000).contains(&self.aggregates), "aggregates", "must be 1 to 10000")?;
        bound(s, (1..=1000).contains(&self.rate), "rate", "must be 1 to 1000")?;
        bound(s, within(self.outage, min, max), "outage", "must be 1s to 10m")?;
        bound(s, within(self.drain_timeout, min, max), "drain_timeout", "must be 1s to 10m")?;
        self.engine()?;
        Ok(self)
    }

    fn engine(&self) -> Result<Engine, ChaosError> {
        crate::scenario::engine(&self.scenario, &self.plan, spark_rollback::TriggerId::OutboxLagExplosion)
    }
}

/// What `judge` decides on.
#[derive(Debug, Clone)]
pub(crate) struct Observed {
    pub(crate) enqueued: Vec<Event>,
    pub(crate) effects: Vec<Event>,
    /// Events applied when the outage began and when it ended.
    pub(crate) applied_at_outage: i64,
    pub(crate) applied_after_outage: i64,
    /// Pending events when it ended.
    pub(crate) pending_after_outage: i64,
    /// Whether the proxy refused to disable, and why.
    pub(crate) fault_failed: Option<String>,
    pub(crate) dead_letters: i64,
    pub(crate) drained_in_ms: Option<u64>,
    pub(crate) left_in_outbox: i64,
    /// The engine's decision and trigger over the outage, or why none.
    pub(crate) decision: Result<(String, Option<String>), String>,
}

impl Default for Observed {
    fn default() -> Observed {
        Observed {
            enqueued: Vec::new(),
            effects: Vec::new(),
            applied_at_outage: 0,
            applied_after_outage: 0,
            pending_after_outage: 0,
            fault_failed: None,
            dead_letters: 0,
            drained_in_ms: None,
            left_in_outbox: 0,
            decision: Err("not evaluated".to_owned()),
        }
    }
}

/// The invariants: pure, so each can be shown to fail.
pub(crate) fn judge(o: &Observed) -> Vec<Invariant> {
    let accumulated =
        o.fault_failed.is_none() && o.applied_after_outage == o.applied_at_outage && o.pending_after_outage > 0;
    let mut invariants = vec![Invariant::new(
        "events-accumulated",
        accumulated,
        match &o.fault_failed {
            Some(why) => why.clone(),
            None => format!(
                "{} events applied during the outage; {} waiting in the outbox at its end",
                o.applied_after_outage - o.applied_at_outage,
                o.pending_after_outage
            ),
        },
    )];
    invariants.push(Invariant::new(
        "outbox-lag-trigger",
        matches!(&o.decision, Ok((d, Some(t))) if d == "rollback" && t == "outbox_lag_explosion"),
        match &o.decision {
            Ok((d, t)) => format!(
                "the canary engine on Prometheus' metrics says {d}{}",
                t.as_ref().map(|t| format!(" ({t})")).unwrap_or_default()
            ),
            Err(why) => why.clone(),
        },
    ));
    invariants.extend(delivery_invariants(&o.enqueued, &o.effects));
    invariants.push(Invariant::new(
        "no-dead-letters",
        o.dead_letters == 0,
        format!("{} events dead-lettered", o.dead_letters),
    ));
    invariants.push(Invariant::new(
        "drained",
        o.drained_in_ms.is_some() && o.left_in_outbox == 0,
        match o.drained_in_ms {
            Some(ms) => format!("drained {ms} ms after the sink came back; {} left in the outbox", o.left_in_outbox),
            None => format!("not drained in time; {} left in the outbox", o.left_in_outbox),
        },
    ));
    invariants
}

/// Runs `sink-outage` against `deployment`: a relay (from `[relay]
/// command`) publishing to the experiment's sink through a proxy of its own
/// on the fault proxy; `events_before` delivered; the proxy disabled for
/// `outage` while `rate` events a second are enqueued; enabled again; the
/// drain awaited for at most `drain_timeout`. The proxy is deleted and the
/// relay stopped however the run ends.
///
/// # Errors
/// [`ChaosError::Input`] without `[proxy]` or `[prometheus]`, with an
/// outbox that is not drained, or off loopback.
pub(crate) async fn run(
    s: &SinkOutage,
    deployment: &Deployment,
    clock: &SharedClock,
) -> Result<ExperimentReport, ChaosError> {
    let proxy = deployment.need_proxy(&s.scenario)?;
    let prometheus = deployment.prometheus.as_ref().ok_or_else(|| {
        ChaosError::Input(
            "sink-outage needs [prometheus] url in the deployment (Prometheus scraping the service)".into(),
        )
    })?;
    crate::deployment::require_loopback("Prometheus", &prometheus.url)?;
    let engine = s.engine()?;
    let source = PrometheusSource::new(&prometheus.url).map_err(|e| ChaosError::Input(e.to_string()))?;
    let pool = delivery::prepare(&deployment.database.url, &s.scenario).await?;
    let started_ms = clock.now_ms();
    let origin = Instant::now();
    let run = format!("{started_ms}-{}", std::process::id());
    let sink = Sink::start(&pool, &run).await?;
    let proxies = ProxyClient::new(&proxy.api)?;
    let name = format!("spark_sink_{}", run.replace('-', "_"));
    let info = proxies.create(&name, "127.0.0.1:0", sink.addr()).await?;
    let result = outage(s, &engine, &source, &pool, &sink, &proxies, &name, &info.listen, deployment, origin).await;
    let _ = proxies.delete(&name).await;
    let (mut o, measurements) = result?;
    o.effects = sink.effects().await?;
    sink.clear().await?;
    let invariants = judge(&o);
    Ok(ExperimentReport::judged(&s.scenario, &s.hypothesis, invariants, measurements, started_ms, origin))
}

#[allow(clippy::too_many_arguments, reason = "the parts of one run, split out so the proxy is always deleted")]
async fn outage(
    s: &SinkOutage,
    engine: &Engine,
    source: &PrometheusSource,
    pool: &sqlx::PgPool,
    sink: &Sink,
    proxies: &ProxyClient,
    name: &str,
    listen: &str,
    deployment: &Deployment,
    origin: Instant,
) -> Result<(Observed, Measurements), ChaosError> {
    let relays = Relays::new(&deployment.relay.command, &format!("http://{listen}/hook"), &deployment.database.url)?;
    let relay = relays.start("relay")?;
    let mut o = Observed::default();
    let mut measurements = Measurements::new();
    let pending = async || delivery::unpublished(pool).await;

    // Steady state: events delivered.
    o.enqueued = delivery::enqueue(pool, 0..s.events_before, s.aggregates).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.applied().await? < i64::from(s.events_before) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = sink.applied().await?;
    if delivered < i64::from(s.events_before) {
        o.fault_failed =
            Some(format!("steady state not reached: {delivered} of {} events delivered in 30 s", s.events_before));
    }
    let steady_ms = elapsed_ms(origin);
    measurements.insert(
        "before",
        BTreeMap::from([("events_delivered", json!(sink.applied().await?)), ("delivery_ms", json!(steady_ms))]),
    );

    // The fault: the sink refuses while events keep coming.
    let outage_start_ms = spark_db::system_clock().now_ms();
    o.applied_at_outage = sink.applied().await?;
    if let Err(e) = proxies.set_enabled(name, false).await {
        o.fault_failed.get_or_insert(format!("the sink's proxy could not be disabled: {e}"));
    }
    let mut next = s.events_before;
    let mut max_pending = 0;
    let seconds = u32::try_from(s.outage.as_secs().max(1)).unwrap_or(u32::MAX);
    let tick = s.outage / seconds;
    for _ in 0..seconds {
        let second = Instant::now();
        o.enqueued.extend(delivery::enqueue(pool, next..next + s.rate, s.aggregates).await?);
        next += s.rate;
        max_pending = max_pending.max(pending().await?);
        tokio::time::sleep(tick.saturating_sub(second.elapsed())).await;
    }
    o.applied_after_outage = sink.applied().await?;
    o.pending_after_outage = pending().await?;
    let outage_end_ms = spark_db::system_clock().now_ms();
    measurements.insert(
        "during",
        BTreeMap::from([
            ("events_enqueued", json!(next - s.events_before)),
            ("events_applied", json!(o.applied_after_outage - o.applied_at_outage)),
            ("max_pending", json!(max_pending)),
            ("sink_requests", json!(sink.received())),
        ]),
    );

    // What the canary engine makes of Prometheus' metrics over the outage.
    let range = Range { start_ms: outage_start_ms - 5000, end_ms: outage_end_ms, step_seconds: 1 };
    o.decision = match source.fetch(engine.plan(), range).await {
        Ok(snapshot) => Metrics::from_snapshot(&snapshot).map_err(|e| e.to_string()).and_then(|metrics| {
            let stage = engine.plan().stages.first().ok_or("the plan has no stage")?;
            engine
                .replay(&metrics, stage, outage_start_ms, Some(outage_end_ms))
                .map(|r| (r.decision().kind().to_owned(), r.decision().trigger().map(|t| t.id().to_owned())))
                .map_err(|e| e.to_string())
        }),
        Err(e) => Err(format!("Prometheus: {e}")),
    };

    // Recovery: the sink back, everything drains.
    let back = Instant::now();
    proxies.set_enabled(name, true).await?;
    let total = i64::try_from(o.enqueued.len()).unwrap_or(i64::MAX);
    o.drained_in_ms = sink.wait_drained(total, back, s.drain_timeout).await?;
    relay.stop().await;
    o.left_in_outbox = pending().await?;
    o.dead_letters = sqlx::query_scalar("SELECT count(*) FROM spark_outbox WHERE status = 'dead'")
        .fetch_one(pool)
        .await
        .map_err(sql)?;
    measurements.insert(
        "after",
        BTreeMap::from([
            ("drain_ms", json!(o.drained_in_ms)),
            ("sink_requests", json!(sink.received())),
            ("relay_log_tail", json!(crate::pg::tail(&relays.log("relay"), 3))),
        ]),
    );
    Ok((o, measurements))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: &str, n: i64) -> Event {
        (id.to_owned(), "agg-0".to_owned(), n)
    }

    fn healthy() -> Observed {
        let enqueued = vec![e("1", 0), e("2", 1)];
        Observed {
            effects: enqueued.clone(),
            enqueued,
            applied_at_outage: 1,
            applied_after_outage: 1,
            pending_after_outage: 1,
            drained_in_ms: Some(10),
            decision: Ok(("rollback".to_owned(), Some("outbox_lag_explosion".to_owned()))),
            ..Observed::default()
        }
    }

    #[test]
    fn each_invariant_holds_on_a_healthy_run_and_breaks_on_its_own_failure() {
        let names = [
            "events-accumulated",
            "outbox-lag-trigger",
            "lost",
            "per-aggregate-order",
            "one-effect-per-event",
            "no-dead-letters",
            "drained",
        ];
        let all = |except: &str| names.iter().map(|n| (*n, *n != except)).collect::<Vec<_>>();
        let held = |o: &Observed| judge(o).into_iter().map(|i| (i.name, i.held)).collect::<Vec<_>>();
        assert_eq!(held(&healthy()), all(""));

        let mut leaked = healthy();
        leaked.applied_after_outage = 2;
        assert_eq!(held(&leaked), all("events-accumulated"), "a sink that still received was not out");
        let mut quiet = healthy();
        quiet.decision = Ok(("continue".to_owned(), None));
        assert_eq!(held(&quiet), all("outbox-lag-trigger"));
        let mut blind = healthy();
        blind.decision = Err("Prometheus: connection refused".to_owned());
        assert_eq!(held(&blind), all("outbox-lag-trigger"));
        let mut lost = healthy();
        lost.effects.pop();
        assert_eq!(held(&lost), all("lost"));
        let mut dead = healthy();
        dead.dead_letters = 1;
        assert_eq!(held(&dead), all("no-dead-letters"));
        let mut stuck = healthy();
        stuck.drained_in_ms = None;
        assert_eq!(held(&stuck), all("drained"));
    }
}
