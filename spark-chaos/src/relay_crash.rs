//! `relay-crash`: SIGKILL the outbox relay again and again while it drains,
//! and prove that nothing is lost, each aggregate stays in order, and the
//! inbox turns at-least-once duplicates into one effect per event.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use spark_db::SharedClock;

use crate::delivery::{self, Event, Relays, Sink, delivery_invariants};
use crate::error::ChaosError;
use crate::experiment::{ExperimentReport, Invariant, elapsed_ms};
use crate::scenario::duration;

/// The built-in scenario, as shipped in `scenarios/relay-crash.toml`.
pub const RELAY_CRASH_TOML: &str = include_str!("../scenarios/relay-crash.toml");

/// The `relay-crash` scenario: data, so a user can write their own.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayCrash {
    /// Always `relay-crash`.
    pub scenario: String,
    /// What it sets out to show.
    pub hypothesis: String,
    /// Events to drain (1 to 100,000).
    pub events: u32,
    /// Aggregates they are spread over (1 to `events`).
    pub aggregates: u32,
    /// How long each relay runs before its SIGKILL (50 ms to 10 s).
    #[serde(deserialize_with = "duration")]
    pub kill_every: Duration,
    /// How many SIGKILLs (1 to 100).
    pub rounds: u32,
    /// How long the last relay may take to drain the rest (at most 10 min).
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
}

impl RelayCrash {
    /// The built-in scenario.
    ///
    /// ```
    /// let s = spark_chaos::RelayCrash::builtin();
    /// assert_eq!((s.events, s.rounds, s.kill_every.as_millis()), (2000, 10, 500));
    /// ```
    #[must_use]
    pub fn builtin() -> RelayCrash {
        // The file is part of the crate and tested; a parse failure is a
        // build defect, caught by the test of this function.
        RelayCrash::from_toml(RELAY_CRASH_TOML).unwrap_or_else(|e| unreachable!("the built-in scenario: {e}"))
    }

    /// Parses and bounds-checks a scenario file's text.
    ///
    /// # Errors
    /// [`ChaosError::Input`] naming the field that is unknown, missing or
    /// out of bounds.
    pub fn from_toml(text: &str) -> Result<RelayCrash, ChaosError> {
        let s: RelayCrash =
            toml::from_str(text).map_err(|e| ChaosError::Input(format!("relay-crash scenario: {e}")))?;
        let bad = |field: &str, rule: &str| Err(ChaosError::Input(format!("relay-crash scenario: {field} {rule}")));
        if s.scenario != "relay-crash" {
            return bad("scenario", "must be \"relay-crash\"");
        }
        if !(1..=100_000).contains(&s.events) {
            return bad("events", "must be 1 to 100000");
        }
        if !(1..=s.events).contains(&s.aggregates) {
            return bad("aggregates", "must be 1 to events");
        }
        if !(Duration::from_millis(50)..=Duration::from_secs(10)).contains(&s.kill_every) {
            return bad("kill_every", "must be 50ms to 10s");
        }
        if !(1..=100).contains(&s.rounds) {
            return bad("rounds", "must be 1 to 100");
        }
        if s.drain_timeout.is_zero() || s.drain_timeout > Duration::from_secs(600) {
            return bad("drain_timeout", "must be above 0 and at most 10m");
        }
        Ok(s)
    }
}

/// Where the experiment runs: a PostgreSQL database on loopback whose
/// outbox is empty, and the command that starts one relay. In the command,
/// `{sink_url}` becomes the experiment's own loopback webhook sink and
/// `{database_url}` the database, e.g. `["spark", "outbox", "relay",
/// "--sink", "webhook", "--url", "{sink_url}", "--database-url",
/// "{database_url}"]`.
#[derive(Debug, Clone)]
pub struct RelayTarget {
    /// The database (PostgreSQL, on 127.0.0.1, ::1 or localhost).
    pub database_url: String,
    /// How to start one relay.
    pub relay_command: Vec<String>,
}

/// What `judge` decides on.
#[derive(Debug, Clone, Default)]
pub(crate) struct Observed {
    /// Enqueued: event id, aggregate, enqueue number.
    pub(crate) enqueued: Vec<Event>,
    /// Effects in the order applied: event id, aggregate, enqueue number.
    pub(crate) effects: Vec<Event>,
    /// Rounds whose relay died of the SIGKILL.
    pub(crate) killed: u32,
    /// Rounds planned.
    pub(crate) rounds: u32,
    /// Rounds whose relay exited before the SIGKILL, and how.
    pub(crate) exited_early: Vec<String>,
    /// Events delivered (applied) during the fault.
    pub(crate) applied_during: usize,
    /// Rows left in the outbox (not published) after the drain.
    pub(crate) left_in_outbox: i64,
    /// Whether the drain finished in time, and how long it took.
    pub(crate) drained_in_ms: Option<u64>,
    /// The drain's bound.
    pub(crate) drain_timeout: Duration,
    /// The end of the last relay's log.
    pub(crate) last_log: String,
}

/// The invariants, from what was observed: pure, so each can be shown to
/// fail.
pub(crate) fn judge(o: &Observed) -> Vec<Invariant> {
    let mut invariants = delivery_invariants(&o.enqueued, &o.effects);
    let fault = o.killed == o.rounds && o.applied_during > 0;
    let drained = o.drained_in_ms.is_some() && o.left_in_outbox == 0;
    invariants.extend([
        Invariant::new(
            "fault-injected",
            fault,
            if o.exited_early.is_empty() {
                format!(
                    "{} of {} relays died of SIGKILL; {} events applied during the fault",
                    o.killed, o.rounds, o.applied_during
                )
            } else {
                format!(
                    "{} of {} relays died of SIGKILL; exited on their own: {}",
                    o.killed,
                    o.rounds,
                    o.exited_early.join("; ")
                )
            },
        ),
        Invariant::new(
            "drained",
            drained,
            match o.drained_in_ms {
                Some(ms) if o.left_in_outbox == 0 => {
                    format!("the last relay drained the rest in {ms} ms; the outbox is empty")
                }
                Some(ms) => format!("applied in {ms} ms, but {} rows are left in the outbox", o.left_in_outbox),
                None => format!(
                    "not drained within {} s; the relay's log ends: {}",
                    o.drain_timeout.as_secs(),
                    crate::pg::tail(&o.last_log, 5)
                ),
            },
        ),
    ]);
    invariants
}

/// Runs `relay-crash` against `target`: enqueues the events, starts the
/// relay and SIGKILLs it every `kill_every` for `rounds` rounds, lets one
/// relay drain the rest until every event's effect is committed and the
/// outbox is empty, stops it with SIGTERM, and judges the invariants
/// `lost`, `per-aggregate-order`, `one-effect-per-event`, `fault-injected`
/// and `drained` (see [`RelayCrash`]). Every loop is bounded in count and
/// time; the sink listens on 127.0.0.1 only, and every URL in the relay
/// command must be on loopback. Relays run in a process group of their
/// own and are killed when the experiment ends, however it ends.
///
/// # Errors
/// [`ChaosError::Input`] for a database that is not PostgreSQL on loopback
/// or whose outbox is not empty, an empty relay command or one naming a
/// URL off loopback; [`ChaosError::Io`] when a relay cannot be started.
pub async fn run_relay_crash(
    scenario: &RelayCrash,
    target: &RelayTarget,
    clock: &SharedClock,
) -> Result<ExperimentReport, ChaosError> {
    let pool = delivery::prepare(&target.database_url, "relay-crash").await?;
    let started_ms = clock.now_ms();
    let started = Instant::now();
    let run = format!("{started_ms}-{}", std::process::id());
    let sink = Sink::start(&pool, &run).await?;
    let relays = Relays::new(&target.relay_command, sink.url(), &target.database_url)?;

    // Steady state: the events, in order per aggregate.
    let enqueue_start = Instant::now();
    let mut observed =
        Observed { rounds: scenario.rounds, drain_timeout: scenario.drain_timeout, ..Observed::default() };
    observed.enqueued = delivery::enqueue(&pool, 0..scenario.events, scenario.aggregates).await?;
    let enqueue_ms = elapsed_ms(enqueue_start);

    // The fault: a relay, SIGKILLed `rounds` times.
    for round in 0..scenario.rounds {
        let mut relay = relays.start(&format!("relay-{round}"))?;
        tokio::time::sleep(scenario.kill_every).await;
        let sent = relay.signal("KILL");
        match relay.wait(Duration::from_secs(10)).await {
            Some(status) if sent && std::os::unix::process::ExitStatusExt::signal(&status) == Some(9) => {
                observed.killed += 1
            }
            Some(status) => observed.exited_early.push(format!("round {}: {status}", round + 1)),
            None => observed.exited_early.push(format!("round {}: still running 10 s after SIGKILL", round + 1)),
        }
    }
    observed.applied_during = usize::try_from(sink.applied().await?).unwrap_or(0);
    let received_during = sink.received();

    // Recovery: one relay drains the rest; done when every effect is
    // committed and nothing is left in the outbox.
    let drain_start = Instant::now();
    let last = format!("relay-{}", scenario.rounds);
    let relay = relays.start(&last)?;
    observed.drained_in_ms = sink.wait_drained(i64::from(scenario.events), drain_start, scenario.drain_timeout).await?;
    // A graceful stop, bounded; the drop kills it if it hangs.
    relay.stop().await;
    observed.left_in_outbox = delivery::unpublished(&pool).await?;
    observed.last_log = relays.log(&last);

    // The verdict, from the effects as the consumer applied them.
    observed.effects = sink.effects().await?;
    sink.clear().await?;
    let invariants = judge(&observed);
    let received = sink.received();
    let drain_ms = observed.drained_in_ms.unwrap_or_else(|| elapsed_ms(drain_start));
    #[allow(clippy::cast_precision_loss, reason = "a rate for a report")]
    let rate = scenario.events.saturating_sub(u32::try_from(observed.applied_during).unwrap_or(u32::MAX)) as f64
        / (drain_ms.max(1) as f64 / 1000.0);
    let mut measurements = BTreeMap::new();
    measurements.insert(
        "before",
        BTreeMap::from([
            ("events_queued", json!(scenario.events)),
            ("aggregates", json!(scenario.aggregates)),
            ("enqueue_ms", json!(enqueue_ms)),
        ]),
    );
    measurements.insert(
        "during",
        BTreeMap::from([
            ("sigkills", json!(observed.killed)),
            ("deliveries", json!(received_during)),
            ("events_applied", json!(observed.applied_during)),
        ]),
    );
    measurements.insert(
        "after",
        BTreeMap::from([
            ("deliveries", json!(received)),
            ("duplicates", json!(received.saturating_sub(observed.effects.len()))),
            ("drain_ms", json!(drain_ms)),
            // What was left after the fault, over the time to drain it.
            ("drain_events_per_second", json!((rate * 10.0).round() / 10.0)),
        ]),
    );
    Ok(ExperimentReport::judged(
        &scenario.scenario,
        &scenario.hypothesis,
        invariants,
        measurements,
        started_ms,
        started,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_scenario_parses_and_bounds_are_enforced() {
        let s = RelayCrash::builtin();
        assert_eq!((s.events, s.aggregates, s.rounds), (2000, 40, 10));
        assert_eq!(s.drain_timeout, Duration::from_secs(60));
        for (from, to, field) in [
            ("rounds = 10", "rounds = 1000", "rounds must be 1 to 100"),
            ("kill_every = \"500ms\"", "kill_every = \"1ms\"", "kill_every must be 50ms to 10s"),
            ("aggregates = 40", "aggregates = 4000", "aggregates must be 1 to events"),
            ("events = 2000", "events = 2000\nextra = 1", "unknown field `extra`"),
        ] {
            let e = RelayCrash::from_toml(&RELAY_CRASH_TOML.replace(from, to)).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }

    fn e(id: &str, aggregate: &str, n: i64) -> (String, String, i64) {
        (id.to_owned(), aggregate.to_owned(), n)
    }

    /// Three events on two aggregates, each applied once in order, two
    /// rounds both killed, drained.
    fn healthy() -> Observed {
        let enqueued = vec![e("1", "a", 0), e("2", "b", 1), e("3", "a", 2)];
        Observed {
            effects: enqueued.clone(),
            enqueued,
            killed: 2,
            rounds: 2,
            applied_during: 1,
            drained_in_ms: Some(5),
            drain_timeout: Duration::from_secs(1),
            ..Observed::default()
        }
    }

    fn held(o: &Observed) -> Vec<(&'static str, bool)> {
        judge(o).into_iter().map(|i| (i.name, i.held)).collect()
    }

    #[test]
    fn each_invariant_holds_on_a_healthy_run_and_breaks_on_its_own_failure() {
        let all = |except: &str| -> Vec<(&'static str, bool)> {
            ["lost", "per-aggregate-order", "one-effect-per-event", "fault-injected", "drained"]
                .into_iter()
                .map(|n| (n, n != except))
                .collect()
        };
        assert_eq!(held(&healthy()), all(""));

        let mut lost = healthy();
        lost.effects.pop();
        assert_eq!(held(&lost), all("lost"));
        assert_eq!(judge(&lost)[0].value, "1 of 3 events never applied (first 3)");

        let mut disorder = healthy();
        disorder.effects = vec![e("3", "a", 2), e("2", "b", 1), e("1", "a", 0)];
        assert_eq!(held(&disorder), all("per-aggregate-order"));
        assert_eq!(judge(&disorder)[1].value, "a: event #0 applied after #2");

        let mut twice = healthy();
        twice.effects.push(e("2", "b", 1));
        assert_eq!(held(&twice), all("one-effect-per-event"));
        let mut stranger = healthy();
        stranger.effects.push(e("9", "c", 9));
        assert_eq!(held(&stranger), all("one-effect-per-event"));

        let mut survived = healthy();
        survived.killed = 1;
        survived.exited_early = vec!["round 2: exit status: 1".to_owned()];
        assert_eq!(held(&survived), all("fault-injected"));
        let mut idle = healthy();
        idle.applied_during = 0;
        assert_eq!(held(&idle), all("fault-injected"), "a fault during which nothing happened proves nothing");

        let mut stuck = healthy();
        stuck.left_in_outbox = 3;
        assert_eq!(held(&stuck), all("drained"));
        let mut slow = healthy();
        slow.drained_in_ms = None;
        assert_eq!(held(&slow), all("drained"));
    }
}
