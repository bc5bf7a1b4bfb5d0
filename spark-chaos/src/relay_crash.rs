//! `relay-crash`: SIGKILL the outbox relay again and again while it drains,
//! and prove that nothing is lost, each aggregate stays in order, and the
//! inbox turns at-least-once duplicates into one effect per event.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use spark_db::{Database, SharedClock};
use spark_outbox::{Inbox, OutboxEvent};
use sqlx::PgPool;

use crate::error::{ChaosError, io};
use crate::experiment::{ExperimentReport, Invariant, rfc3339};

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

/// `"500ms"`, `"60s"`: a humantime duration.
fn duration<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration such as \"500ms\": {e}")))
}

/// One delivery the sink saw.
#[derive(Debug, Clone)]
struct Delivery {
    id: String,
    aggregate: String,
    seq: i64,
}

struct Sink {
    pool: PgPool,
    run: String,
    deliveries: Mutex<Vec<Delivery>>,
}

/// The webhook sink: records every delivery, then applies it through the
/// inbox (one effect row per first delivery).
async fn receive(State(sink): State<Arc<Sink>>, body: axum::body::Bytes) -> StatusCode {
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body) else { return StatusCode::BAD_REQUEST };
    // The outbox's own seq is not part of a delivery: the experiment's
    // payload carries the enqueue order.
    let (Some(id), Some(aggregate), Some(seq)) =
        (event["id"].as_str(), event["aggregate_id"].as_str(), event["payload"]["n"].as_i64())
    else {
        return StatusCode::UNPROCESSABLE_ENTITY;
    };
    sink.deliveries.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Delivery {
        id: id.to_owned(),
        aggregate: aggregate.to_owned(),
        seq,
    });
    // In a task of its own: a relay SIGKILLed mid-request drops this
    // handler, and a transaction dropped half-way would leave its
    // connection mid-savepoint; the effect is applied (or not) as a whole.
    let (pool, run, id) = (sink.pool.clone(), sink.run.clone(), id.to_owned());
    let applied = tokio::spawn(async move {
        let mut tx = pool.begin().await?;
        let inbox = Inbox::new(format!("chaos-relay-crash-{run}"));
        inbox
            .process(&mut *tx, &id, async |conn: &mut sqlx::PgConnection| {
                sqlx::query("INSERT INTO spark_chaos_effects (run_id, event_id) VALUES ($1, $2)")
                    .bind(&run)
                    .bind(&id)
                    .execute(conn)
                    .await
            })
            .await?;
        tx.commit().await
    });
    match applied.await {
        Ok(Ok(())) => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Runs `relay-crash` against `target`: enqueues the events, starts the
/// relay and SIGKILLs it every `kill_every` for `rounds` rounds, lets one
/// relay drain the rest, and judges the invariants `lost`,
/// `per-aggregate-order`, `one-effect-per-event`, `fault-injected` and
/// `drained`. Every loop is bounded in count and time; the sink listens on
/// 127.0.0.1 only.
///
/// # Errors
/// [`ChaosError::Input`] for a database that is not PostgreSQL on loopback
/// or whose outbox is not empty, or an empty relay command;
/// [`ChaosError::Io`] when a relay cannot be started.
pub async fn run_relay_crash(
    scenario: &RelayCrash,
    target: &RelayTarget,
    clock: &SharedClock,
) -> Result<ExperimentReport, ChaosError> {
    let (program, args) =
        target.relay_command.split_first().ok_or_else(|| ChaosError::Input("the relay command is empty".to_owned()))?;
    let options: sqlx::postgres::PgConnectOptions = target
        .database_url
        .parse()
        .map_err(|e| ChaosError::Input(format!("the database URL is not a PostgreSQL URL: {e}")))?;
    if !matches!(options.get_host(), "127.0.0.1" | "localhost" | "::1") && !options.get_host().starts_with('/') {
        return Err(ChaosError::Input(format!(
            "the database is on {}: fault experiments run against loopback only",
            options.get_host()
        )));
    }
    let db = Database::connect(&target.database_url, 8).await.map_err(|e| ChaosError::Input(e.to_string()))?;
    let Database::Postgres(pool) = db.clone() else {
        return Err(ChaosError::Input("relay-crash needs PostgreSQL (relays share work through SKIP LOCKED)".into()));
    };
    db.migrate(&[spark_outbox::MIGRATIONS]).await.map_err(|e| ChaosError::Input(e.to_string()))?;
    let sql = |e: sqlx::Error| ChaosError::Input(format!("database: {e}"));
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM spark_outbox").fetch_one(&pool).await.map_err(sql)?;
    if queued != 0 {
        return Err(ChaosError::Input(format!(
            "the outbox holds {queued} events already: run relay-crash against a database of its own"
        )));
    }
    sqlx::raw_sql("CREATE TABLE IF NOT EXISTS spark_chaos_effects (run_id TEXT NOT NULL, event_id TEXT NOT NULL)")
        .execute(&pool)
        .await
        .map_err(sql)?;

    let started_ms = clock.now_ms();
    let started = Instant::now();
    let run = format!("{started_ms}-{}", std::process::id());
    let sink = Arc::new(Sink { pool: pool.clone(), run: run.clone(), deliveries: Mutex::new(Vec::new()) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(io("127.0.0.1:0"))?;
    let sink_url = format!("http://{}/hook", listener.local_addr().map_err(io("127.0.0.1:0"))?);
    let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(sink.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // Steady state: the events, in order per aggregate.
    let enqueue_start = Instant::now();
    for chunk in (0..scenario.events).collect::<Vec<_>>().chunks(200) {
        let mut tx = pool.begin().await.map_err(sql)?;
        for &n in chunk {
            let event =
                OutboxEvent::new("chaos", format!("agg-{}", n % scenario.aggregates), "chaos.tick", json!({"n": n}));
            spark_outbox::postgres::enqueue(&mut tx, &event).await.map_err(|e| ChaosError::Input(e.to_string()))?;
        }
        tx.commit().await.map_err(sql)?;
    }
    let enqueue_ms = elapsed_ms(enqueue_start);

    // The fault: a relay, SIGKILLed `rounds` times.
    let logs = tempfile::tempdir().map_err(io("temporary directory"))?;
    let start_relay = |round: u32| -> Result<tokio::process::Child, ChaosError> {
        let log = logs.path().join(format!("relay-{round}.log"));
        let file = std::fs::File::create(&log).map_err(io(&log))?;
        let err = file.try_clone().map_err(io(&log))?;
        let fill = |a: &String| a.replace("{sink_url}", &sink_url).replace("{database_url}", &target.database_url);
        tokio::process::Command::new(program)
            .args(args.iter().map(fill))
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(io(PathBuf::from(program)))
    };
    let delivered = |sink: &Sink| {
        let d = sink.deliveries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (d.len(), d.iter().map(|x| x.id.as_str()).collect::<HashSet<_>>().len())
    };
    let mut killed = 0u32;
    let mut exited_early = Vec::new();
    for round in 0..scenario.rounds {
        let mut child = start_relay(round)?;
        tokio::time::sleep(scenario.kill_every).await;
        match child.try_wait() {
            Ok(None) => {
                let _ = child.start_kill();
                killed += 1;
            }
            Ok(Some(status)) => exited_early.push(format!("round {}: {status}", round + 1)),
            Err(e) => exited_early.push(format!("round {}: {e}", round + 1)),
        }
        let _ = child.wait().await;
    }
    let (during_total, during_distinct) = delivered(&sink);

    // Recovery: one relay drains the rest.
    let drain_start = Instant::now();
    let mut child = start_relay(scenario.rounds)?;
    let drained = loop {
        if delivered(&sink).1 >= scenario.events as usize {
            break true;
        }
        if drain_start.elapsed() >= scenario.drain_timeout {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let drain_ms = elapsed_ms(drain_start);
    let _ = child.start_kill();
    let _ = child.wait().await;
    server.abort();
    let last_log =
        std::fs::read_to_string(logs.path().join(format!("relay-{}.log", scenario.rounds))).unwrap_or_default();

    // The verdict.
    let deliveries = sink.deliveries.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let distinct: HashSet<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
    let lost = (scenario.events as usize).saturating_sub(distinct.len());
    let order = first_delivery_order(&deliveries);
    let (effects, distinct_effects): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM spark_chaos_effects WHERE run_id = $1")
            .bind(&run)
            .fetch_one(&pool)
            .await
            .map_err(sql)?;
    sqlx::query("DELETE FROM spark_chaos_effects WHERE run_id = $1").bind(&run).execute(&pool).await.map_err(sql)?;
    let events = i64::from(scenario.events);
    let invariants = vec![
        Invariant::new("lost", lost == 0, format!("{lost} of {} events never delivered", scenario.events)),
        Invariant::new("per-aggregate-order", order.is_ok(), order.clone().unwrap_or_else(|e| e)),
        Invariant::new(
            "one-effect-per-event",
            effects == events && distinct_effects == events,
            format!("{effects} effects for {events} events ({distinct_effects} distinct)"),
        ),
        Invariant::new(
            "fault-injected",
            killed == scenario.rounds,
            if exited_early.is_empty() {
                format!("{killed} SIGKILLs")
            } else {
                format!("{killed} SIGKILLs; the relay exited on its own: {}", exited_early.join("; "))
            },
        ),
        Invariant::new(
            "drained",
            drained,
            if drained {
                format!("the last relay drained the rest in {drain_ms} ms")
            } else {
                format!(
                    "not drained within {} s; the relay's log ends: {}",
                    scenario.drain_timeout.as_secs(),
                    crate::pg::tail(&last_log, 5)
                )
            },
        ),
    ];
    let duplicates = deliveries.len() - distinct.len();
    #[allow(clippy::cast_precision_loss, reason = "a rate for a report")]
    let rate = distinct.len().saturating_sub(during_distinct) as f64 / (drain_ms.max(1) as f64 / 1000.0);
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
            ("sigkills", json!(killed)),
            ("deliveries", json!(during_total)),
            ("distinct_delivered", json!(during_distinct)),
        ]),
    );
    measurements.insert(
        "after",
        BTreeMap::from([
            ("deliveries", json!(deliveries.len())),
            ("duplicates", json!(duplicates)),
            ("drain_ms", json!(drain_ms)),
            // What was left after the fault, over the time to drain it.
            ("drain_events_per_second", json!((rate * 10.0).round() / 10.0)),
        ]),
    );
    let held = invariants.iter().all(|i| i.held);
    tracing::info!(held, lost, duplicates, killed, drain_ms, "relay-crash");
    Ok(ExperimentReport {
        scenario: scenario.scenario.clone(),
        hypothesis: scenario.hypothesis.clone(),
        held,
        invariants,
        measurements,
        started_at: rfc3339(started_ms),
        duration_ms: elapsed_ms(started),
    })
}

/// Whether each aggregate's first deliveries came in its enqueue order
/// (a redelivery of an earlier event is at-least-once, not disorder).
fn first_delivery_order(deliveries: &[Delivery]) -> Result<String, String> {
    let mut seen = HashSet::new();
    let mut last: HashMap<&str, i64> = HashMap::new();
    for d in deliveries {
        if !seen.insert(d.id.as_str()) {
            continue;
        }
        if let Some(&before) = last.get(d.aggregate.as_str())
            && d.seq < before
        {
            return Err(format!("{}: event #{} first delivered after #{before}", d.aggregate, d.seq));
        }
        last.insert(d.aggregate.as_str(), d.seq);
    }
    Ok(format!("{} aggregates, every first delivery in order", last.len()))
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
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

    #[test]
    fn a_redelivery_is_not_disorder_but_a_later_first_delivery_is() {
        let d = |id: &str, seq| Delivery { id: id.to_owned(), aggregate: "a".to_owned(), seq };
        assert!(first_delivery_order(&[d("1", 1), d("2", 2), d("1", 1), d("3", 3)]).is_ok());
        let e = first_delivery_order(&[d("1", 1), d("3", 3), d("2", 2)]).unwrap_err();
        assert_eq!(e, "a: event #2 first delivered after #3");
    }
}
