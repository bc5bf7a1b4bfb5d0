//! `clock-skew`: two relays drain one outbox, one of them under libfaketime
//! minutes ahead of the other and of the database. A PostgreSQL claim is
//! a row lock inside a transaction the server fences by its own timer, so
//! no wall clock decides who owns an event: no event may be published
//! twice, none lost, each aggregate in order; and the `clock` check, run
//! under the same skew, must report it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use spark_db::SharedClock;

use crate::delivery::{self, Event, Relays, Sink, delivery_invariants};
use crate::deployment::Deployment;
use crate::error::ChaosError;
use crate::experiment::{ExperimentReport, Invariant, elapsed_ms};
use crate::scenario::{bound, duration, within};

/// Where Debian installs libfaketime's wrapper.
const FAKETIME: &str = "/usr/bin/faketime";

/// The `clock-skew` scenario.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockSkew {
    /// Always `clock-skew`.
    pub scenario: String,
    /// What it sets out to show.
    pub hypothesis: String,
    /// How far ahead the skewed relay's clock runs (1 s to 1 day).
    #[serde(deserialize_with = "duration")]
    pub skew: Duration,
    /// Events to drain (1 to 100,000).
    pub events: u32,
    /// Aggregates they are spread over (1 to `events`).
    pub aggregates: u32,
    /// How long the two relays may take (1 s to 10 min).
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// Appended to `[relay] command` for both relays: small batches, so
    /// the two take turns instead of one claiming every aggregate.
    #[serde(default)]
    pub relay_args: Vec<String>,
}

impl ClockSkew {
    pub(crate) fn check(self) -> Result<ClockSkew, ChaosError> {
        let s = "clock-skew";
        bound(s, self.scenario == s, "scenario", "must be \"clock-skew\"")?;
        bound(s, within(self.skew, Duration::from_secs(1), Duration::from_secs(86_400)), "skew", "must be 1s to 1d")?;
        bound(s, (1..=100_000).contains(&self.events), "events", "must be 1 to 100000")?;
        bound(s, (1..=self.events).contains(&self.aggregates), "aggregates", "must be 1 to events")?;
        bound(
            s,
            within(self.drain_timeout, Duration::from_secs(1), Duration::from_secs(600)),
            "drain_timeout",
            "must be 1s to 10m",
        )?;
        Ok(self)
    }
}

/// What `judge` decides on.
#[derive(Debug, Clone)]
pub(crate) struct Observed {
    pub(crate) enqueued: Vec<Event>,
    pub(crate) effects: Vec<Event>,
    /// Requests the sink received.
    pub(crate) deliveries: usize,
    /// Events each relay said it published: (normal, skewed).
    pub(crate) published: (Option<u64>, Option<u64>),
    /// The `clock` check under the skew: its signed offset (database minus
    /// node, ms) and the status of its `offset_ms` measurement, or why
    /// there is none.
    pub(crate) check: Result<(f64, String), String>,
    pub(crate) skew_ms: u64,
    pub(crate) drained_in_ms: Option<u64>,
    pub(crate) left_in_outbox: i64,
}

impl Default for Observed {
    fn default() -> Observed {
        Observed {
            enqueued: Vec::new(),
            effects: Vec::new(),
            deliveries: 0,
            published: (None, None),
            check: Err("not run".to_owned()),
            skew_ms: 0,
            drained_in_ms: None,
            left_in_outbox: 0,
        }
    }
}

/// The invariants: pure, so each can be shown to fail.
pub(crate) fn judge(o: &Observed) -> Vec<Invariant> {
    let events = o.enqueued.len();
    let both = matches!(o.published, (Some(a), Some(b)) if a > 0 && b > 0);
    #[allow(clippy::cast_precision_loss, reason = "milliseconds compared with a tolerance")]
    let seen = o
        .check
        .as_ref()
        .is_ok_and(|(offset, status)| (-offset - o.skew_ms as f64).abs() <= 5_000.0 && status == "fail");
    let mut invariants = vec![
        Invariant::new(
            "fault-injected",
            both,
            format!(
                "the relay on the true clock published {}, the one {} s ahead {}",
                o.published.0.map_or_else(|| "?".to_owned(), |n| n.to_string()),
                o.skew_ms / 1000,
                o.published.1.map_or_else(|| "?".to_owned(), |n| n.to_string())
            ),
        ),
        Invariant::new(
            "published-once",
            o.deliveries == events,
            format!("{} deliveries for {events} events", o.deliveries),
        ),
    ];
    invariants.extend(delivery_invariants(&o.enqueued, &o.effects));
    invariants.push(Invariant::new(
        "clock-check-reports-skew",
        seen,
        match &o.check {
            Ok((offset, status)) => format!("the clock check under the skew: offset {offset:+.0} ms ({status})"),
            Err(why) => why.clone(),
        },
    ));
    invariants.push(Invariant::new(
        "drained",
        o.drained_in_ms.is_some() && o.left_in_outbox == 0,
        match o.drained_in_ms {
            Some(ms) => format!("drained in {ms} ms; {} left in the outbox", o.left_in_outbox),
            None => format!("not drained in time; {} left in the outbox", o.left_in_outbox),
        },
    ));
    invariants
}

/// `faketime` at its Debian path, else on `PATH`.
fn faketime() -> Result<PathBuf, ChaosError> {
    crate::stack::find_program(FAKETIME, "faketime").ok_or_else(|| ChaosError::MissingProgram {
        program: "faketime".to_owned(),
        looked: format!("{FAKETIME} and PATH (Debian: apt-get install faketime)"),
    })
}

/// "stopped: 1400 published, …" from a relay's log.
fn published_count(log: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| l.split("stopped: ").nth(1)?.split(' ').next()?.parse().ok())
}

/// Runs `spark check --only clock` under `wrapper` against `database_url`:
/// the signed offset and the status of `offset_ms`.
async fn clock_check(wrapper: &[String], spark: &str, database_url: &str) -> Result<(f64, String), String> {
    // In a directory of its own with an empty configuration, and without
    // SPARK_* settings from our environment: the check's defaults judge,
    // not a spark.toml that happens to be in the working directory.
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = dir.path().join("spark.toml");
    std::fs::write(&config, "").map_err(|e| e.to_string())?;
    let mut command = tokio::process::Command::new(&wrapper[0]);
    command.args(&wrapper[1..]).args([spark, "check", "--only", "clock", "--json", "--config"]).arg(&config);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SPARK_") {
            command.env_remove(key);
        }
    }
    let output = command
        .current_dir(dir.path())
        .env("SPARK_DATABASE_URL", database_url)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .map_err(|_| "spark check did not finish within 30 s".to_owned())?
        .map_err(|e| format!("cannot run spark check: {e}"))?;
    let said = || crate::pg::tail(&String::from_utf8_lossy(&output.stderr), 2);
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|_| format!("spark check printed no report: {}", said()))?;
    let check = report["checks"].as_array().and_then(|c| c.iter().find(|c| c["id"] == "clock"));
    let offset = check.and_then(|c| c["details"]["offset_signed_ms"].as_f64());
    let status =
        check.and_then(|c| c["measurements"].as_array()?.iter().find(|m| m["name"] == "offset_ms")?["status"].as_str());
    match (offset, status) {
        (Some(offset), Some(status)) => Ok((offset, status.to_owned())),
        _ => Err(format!("the clock check measured no offset: {}", said())),
    }
}

/// Runs `clock-skew` against `deployment`: `events` enqueued, drained by
/// two relays of `[relay] command` at once, one of them under `faketime`
/// `skew` ahead; both stopped with SIGTERM; the `clock` check run under the
/// same skew. The relay command must be `spark outbox relay …`: its `spark`
/// runs the check.
///
/// # Errors
/// [`ChaosError::MissingProgram`] without `faketime`;
/// [`ChaosError::Input`] for a relay command that is not `spark outbox
/// relay`, a database off loopback or an outbox not drained.
pub(crate) async fn run(
    s: &ClockSkew,
    deployment: &Deployment,
    clock: &SharedClock,
) -> Result<ExperimentReport, ChaosError> {
    let faketime = faketime()?;
    let command = &deployment.relay.command;
    let spark = match command.as_slice() {
        [spark, outbox, relay, ..] if outbox == "outbox" && relay == "relay" => spark.clone(),
        _ => {
            return Err(ChaosError::Input(
                "clock-skew needs [relay] command to be `spark outbox relay …`: its spark runs the clock check under \
                 the same skew"
                    .to_owned(),
            ));
        }
    };
    let pool = delivery::prepare(&deployment.database.url, &s.scenario).await?;
    let started_ms = clock.now_ms();
    let origin = Instant::now();
    let run = format!("{started_ms}-{}", std::process::id());
    let sink = Sink::start(&pool, &run).await?;
    let command: Vec<String> = command.iter().chain(&s.relay_args).cloned().collect();
    let relays = Relays::new(&command, sink.url(), &deployment.database.url)?;
    let mut skewed = Relays::new(&command, sink.url(), &deployment.database.url)?;
    skewed.wrapper = vec![faketime.display().to_string(), "-f".to_owned(), format!("+{}s", s.skew.as_secs())];
    let mut o = Observed { skew_ms: u64::try_from(s.skew.as_millis()).unwrap_or(u64::MAX), ..Observed::default() };

    // Both relays up before the work arrives, so both share it.
    let normal = relays.start("relay")?;
    let ahead = skewed.start("relay-ahead")?;
    let ready = Instant::now();
    while !(relays.log("relay").contains("relaying from") && skewed.log("relay-ahead").contains("relaying from"))
        && ready.elapsed() < Duration::from_secs(15)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain_start = Instant::now();
    o.enqueued = delivery::enqueue(&pool, 0..s.events, s.aggregates).await?;
    let enqueue_ms = elapsed_ms(drain_start);
    o.drained_in_ms = sink.wait_drained(i64::from(s.events), drain_start, s.drain_timeout).await?;
    normal.stop().await;
    ahead.stop().await;
    // faketime may exit before the relay it started has said its last
    // words: wait for them, bounded.
    let said = Instant::now();
    loop {
        o.published = (published_count(&relays.log("relay")), published_count(&skewed.log("relay-ahead")));
        if (o.published.0.is_some() && o.published.1.is_some()) || said.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    o.left_in_outbox = delivery::unpublished(&pool).await?;
    o.deliveries = sink.received();
    o.check = clock_check(&skewed.wrapper, &spark, &deployment.database.url).await;
    o.effects = sink.effects().await?;
    sink.clear().await?;
    let invariants = judge(&o);
    let mut measurements = BTreeMap::new();
    measurements
        .insert("before", BTreeMap::from([("events_queued", json!(s.events)), ("enqueue_ms", json!(enqueue_ms))]));
    measurements.insert(
        "during",
        BTreeMap::from([
            ("skew_seconds", json!(s.skew.as_secs())),
            ("published_by_true_clock", json!(o.published.0)),
            ("published_by_skewed_clock", json!(o.published.1)),
            ("deliveries", json!(o.deliveries)),
        ]),
    );
    measurements.insert(
        "after",
        BTreeMap::from([
            ("drain_ms", json!(o.drained_in_ms)),
            ("clock_check_offset_ms", json!(o.check.as_ref().ok().map(|c| c.0))),
        ]),
    );
    Ok(ExperimentReport::judged(&s.scenario, &s.hypothesis, invariants, measurements, started_ms, origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Observed {
        let enqueued: Vec<Event> = (0..4).map(|n| (n.to_string(), format!("agg-{}", n % 2), n)).collect();
        Observed {
            effects: enqueued.clone(),
            deliveries: enqueued.len(),
            enqueued,
            published: (Some(2), Some(2)),
            check: Ok((-300_000.0, "fail".to_owned())),
            skew_ms: 300_000,
            drained_in_ms: Some(10),
            left_in_outbox: 0,
        }
    }

    #[test]
    fn each_invariant_holds_on_a_healthy_run_and_breaks_on_its_own_failure() {
        let names = [
            "fault-injected",
            "published-once",
            "lost",
            "per-aggregate-order",
            "one-effect-per-event",
            "clock-check-reports-skew",
            "drained",
        ];
        let all = |except: &str| names.iter().map(|n| (*n, *n != except)).collect::<Vec<_>>();
        let held = |o: &Observed| judge(o).into_iter().map(|i| (i.name, i.held)).collect::<Vec<_>>();
        assert_eq!(held(&healthy()), all(""));

        let mut idle = healthy();
        idle.published = (Some(4), Some(0));
        assert_eq!(held(&idle), all("fault-injected"), "a skewed relay that did nothing proves nothing");
        let mut twice = healthy();
        twice.deliveries = 5;
        assert_eq!(held(&twice), all("published-once"));
        let mut blind = healthy();
        blind.check = Ok((-3.0, "pass".to_owned()));
        assert_eq!(held(&blind), all("clock-check-reports-skew"));
        let mut stuck = healthy();
        stuck.left_in_outbox = 1;
        assert_eq!(held(&stuck), all("drained"));
    }

    #[test]
    fn the_published_count_is_read_from_the_relays_last_words() {
        assert_eq!(published_count("x\nstopped: 1400 published, 140 failed attempts, 0 dead-lettered\n"), Some(1400));
        assert_eq!(published_count("no such line"), None);
    }
}
