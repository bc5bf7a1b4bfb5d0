//! `relay-crash`: SIGKILL the outbox relay again and again while it drains,
//! and prove that nothing is lost, each aggregate stays in order, and the
//! inbox turns at-least-once duplicates into one effect per event.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use spark_db::{Database, SharedClock};
use spark_outbox::{Inbox, OutboxEvent};
use sqlx::PgPool;

use crate::error::{ChaosError, io};
use crate::experiment::{ExperimentReport, Invariant, elapsed_ms, rfc3339};

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

/// The webhook sink's state: what it was sent, and the effects it applied.
struct Sink {
    pool: PgPool,
    run: String,
    /// Every request, answered or not.
    received: std::sync::atomic::AtomicUsize,
}

/// The effects table: one row per effect the sink applied, in the order
/// they were applied (`pos`), with the event's aggregate and its enqueue
/// number `n`, so order is judged on what the consumer did.
const EFFECTS_TABLE: &str = "CREATE TABLE IF NOT EXISTS spark_chaos_relay_effects (
    pos BIGSERIAL PRIMARY KEY, run_id TEXT NOT NULL, event_id TEXT NOT NULL, aggregate TEXT NOT NULL, n BIGINT NOT NULL)";

/// The webhook sink: applies each delivery through the inbox (one effect
/// per event) and answers 200 only once that committed.
async fn receive(State(sink): State<Arc<Sink>>, body: axum::body::Bytes) -> StatusCode {
    sink.received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body) else { return StatusCode::BAD_REQUEST };
    // The outbox's own seq is not part of a delivery: the experiment's
    // payload carries the enqueue order.
    let (Some(id), Some(aggregate), Some(n)) =
        (event["id"].as_str(), event["aggregate_id"].as_str(), event["payload"]["n"].as_i64())
    else {
        return StatusCode::UNPROCESSABLE_ENTITY;
    };
    // In a task of its own: a relay SIGKILLed mid-request drops this
    // handler, and a transaction dropped half-way would leave its
    // connection mid-savepoint; the effect is applied (or not) as a whole.
    let (pool, run, id, aggregate) = (sink.pool.clone(), sink.run.clone(), id.to_owned(), aggregate.to_owned());
    let applied = tokio::spawn(async move {
        let mut tx = pool.begin().await?;
        let inbox = Inbox::new(consumer(&run));
        inbox
            .process(&mut *tx, &id, async |conn: &mut sqlx::PgConnection| {
                sqlx::query(
                    "INSERT INTO spark_chaos_relay_effects (run_id, event_id, aggregate, n) VALUES ($1, $2, $3, $4)",
                )
                .bind(&run)
                .bind(&id)
                .bind(&aggregate)
                .bind(n)
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

fn consumer(run: &str) -> String {
    format!("chaos-relay-crash-{run}")
}

/// Aborts the sink's server task however the experiment ends.
struct AbortOnDrop(tokio::task::JoinHandle<std::io::Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A relay process in a process group of its own, so a signal reaches it
/// even behind a wrapper (`sh -c`, `cargo run`); killed on drop.
struct Relay {
    child: tokio::process::Child,
}

impl Relay {
    /// Sends `signal` (`KILL`, `TERM`) to the relay's process group.
    fn signal(&self, signal: &str) -> bool {
        let Some(pid) = self.child.id() else { return false };
        std::process::Command::new("kill")
            .args([format!("-{signal}"), "--".to_owned(), format!("-{pid}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Waits at most `timeout` for it to exit; its status, or `None`.
    async fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait()).await.ok().and_then(Result::ok)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal("KILL");
        }
    }
}

/// What `judge` decides on.
#[derive(Debug, Clone, Default)]
pub(crate) struct Observed {
    /// Enqueued: event id, aggregate, enqueue number.
    pub(crate) enqueued: Vec<(String, String, i64)>,
    /// Effects in the order applied: event id, aggregate, enqueue number.
    pub(crate) effects: Vec<(String, String, i64)>,
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
    let applied: HashSet<&str> = o.effects.iter().map(|e| e.0.as_str()).collect();
    let lost: Vec<&str> = o.enqueued.iter().map(|e| e.0.as_str()).filter(|id| !applied.contains(id)).collect();
    let events = o.enqueued.len();
    let extra = o.effects.len().saturating_sub(applied.len());
    let strangers = applied.len() - (events - lost.len());
    let mut order = Ok(());
    let mut last: HashMap<&str, i64> = HashMap::new();
    for (_, aggregate, n) in &o.effects {
        if let Some(&before) = last.get(aggregate.as_str())
            && *n < before
        {
            order = Err(format!("{aggregate}: event #{n} applied after #{before}"));
            break;
        }
        last.insert(aggregate.as_str(), *n);
    }
    let fault = o.killed == o.rounds && o.applied_during > 0;
    let drained = o.drained_in_ms.is_some() && o.left_in_outbox == 0;
    vec![
        Invariant::new(
            "lost",
            lost.is_empty(),
            match lost.first() {
                None => format!("0 of {events} events lost"),
                Some(first) => format!("{} of {events} events never applied (first {first})", lost.len()),
            },
        ),
        Invariant::new(
            "per-aggregate-order",
            order.is_ok(),
            order.map_or_else(|e| e, |()| format!("{} aggregates, every effect in enqueue order", last.len())),
        ),
        Invariant::new(
            "one-effect-per-event",
            extra == 0 && strangers == 0,
            format!(
                "{} effects for {events} events ({extra} extra, {strangers} for events not enqueued)",
                o.effects.len()
            ),
        ),
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
    ]
}

/// Whether every URL in the relay's argv is on loopback (or a
/// placeholder the experiment fills with one).
fn loopback_only(args: &[String]) -> Result<(), String> {
    for arg in args {
        let Some((_, rest)) = arg.split_once("://") else { continue };
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        // `[::1]:5432` or `host:port`, without the port.
        let host = match host.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or_default(),
            None => host.split(':').next().unwrap_or_default(),
        };
        if !spark_db::is_loopback_host(host) {
            return Err(format!("the relay command names {arg:?}: fault experiments run against loopback only"));
        }
    }
    Ok(())
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
    let (program, args) =
        target.relay_command.split_first().ok_or_else(|| ChaosError::Input("the relay command is empty".to_owned()))?;
    loopback_only(args).map_err(ChaosError::Input)?;
    let options: sqlx::postgres::PgConnectOptions = target
        .database_url
        .parse()
        .map_err(|e| ChaosError::Input(format!("the database URL is not a PostgreSQL URL: {e}")))?;
    // A unix socket (a path) is this machine too.
    if !spark_db::is_loopback_host(options.get_host()) && !options.get_host().starts_with('/') {
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
    let unpublished = "SELECT count(*) FROM spark_outbox WHERE status <> 'published'";
    let queued: i64 = sqlx::query_scalar(unpublished).fetch_one(&pool).await.map_err(sql)?;
    if queued != 0 {
        return Err(ChaosError::Input(format!(
            "the outbox holds {queued} unpublished events already: run relay-crash against a database of its own"
        )));
    }
    sqlx::raw_sql(EFFECTS_TABLE).execute(&pool).await.map_err(sql)?;

    let started_ms = clock.now_ms();
    let started = Instant::now();
    let run = format!("{started_ms}-{}", std::process::id());
    let sink = Arc::new(Sink { pool: pool.clone(), run: run.clone(), received: 0.into() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(io("127.0.0.1:0"))?;
    let sink_url = format!("http://{}/hook", listener.local_addr().map_err(io("127.0.0.1:0"))?);
    let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(sink.clone());
    let _server = AbortOnDrop(tokio::spawn(async move { axum::serve(listener, app).await }));

    // Steady state: the events, in order per aggregate.
    let enqueue_start = Instant::now();
    let mut observed =
        Observed { rounds: scenario.rounds, drain_timeout: scenario.drain_timeout, ..Observed::default() };
    for chunk in (0..scenario.events).collect::<Vec<_>>().chunks(200) {
        let mut tx = pool.begin().await.map_err(sql)?;
        for &n in chunk {
            let aggregate = format!("agg-{}", n % scenario.aggregates);
            let event = OutboxEvent::new("chaos", aggregate.clone(), "chaos.tick", json!({"n": n}));
            let id =
                spark_outbox::postgres::enqueue(&mut tx, &event).await.map_err(|e| ChaosError::Input(e.to_string()))?;
            observed.enqueued.push((id.to_string(), aggregate, i64::from(n)));
        }
        tx.commit().await.map_err(sql)?;
    }
    let enqueue_ms = elapsed_ms(enqueue_start);

    // The fault: a relay, SIGKILLed `rounds` times.
    let logs = tempfile::tempdir().map_err(io("temporary directory"))?;
    let start_relay = |round: u32| -> Result<Relay, ChaosError> {
        let log = logs.path().join(format!("relay-{round}.log"));
        let file = std::fs::File::create(&log).map_err(io(&log))?;
        let err = file.try_clone().map_err(io(&log))?;
        let fill = |a: &String| a.replace("{sink_url}", &sink_url).replace("{database_url}", &target.database_url);
        let child = tokio::process::Command::new(program)
            .args(args.iter().map(fill))
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(io(PathBuf::from(program)))?;
        Ok(Relay { child })
    };
    let applied = async |pool: &PgPool| -> Result<i64, ChaosError> {
        sqlx::query_scalar("SELECT count(DISTINCT event_id) FROM spark_chaos_relay_effects WHERE run_id = $1")
            .bind(&run)
            .fetch_one(pool)
            .await
            .map_err(sql)
    };
    for round in 0..scenario.rounds {
        let mut relay = start_relay(round)?;
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
    observed.applied_during = usize::try_from(applied(&pool).await?).unwrap_or(0);
    let received_during = sink.received.load(std::sync::atomic::Ordering::Relaxed);

    // Recovery: one relay drains the rest; done when every effect is
    // committed and nothing is left in the outbox.
    let drain_start = Instant::now();
    let mut relay = start_relay(scenario.rounds)?;
    let events = i64::from(scenario.events);
    loop {
        let left: i64 = sqlx::query_scalar(unpublished).fetch_one(&pool).await.map_err(sql)?;
        if applied(&pool).await? >= events && left == 0 {
            observed.drained_in_ms = Some(elapsed_ms(drain_start));
            break;
        }
        if drain_start.elapsed() >= scenario.drain_timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A graceful stop, bounded; the drop kills it if it hangs.
    relay.signal("TERM");
    let _ = relay.wait(Duration::from_secs(10)).await;
    drop(relay);
    observed.left_in_outbox = sqlx::query_scalar(unpublished).fetch_one(&pool).await.map_err(sql)?;
    observed.last_log =
        std::fs::read_to_string(logs.path().join(format!("relay-{}.log", scenario.rounds))).unwrap_or_default();

    // The verdict, from the effects as the consumer applied them.
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT event_id, aggregate, n FROM spark_chaos_relay_effects WHERE run_id = $1 ORDER BY pos")
            .bind(&run)
            .fetch_all(&pool)
            .await
            .map_err(sql)?;
    observed.effects = rows;
    sqlx::query("DELETE FROM spark_chaos_relay_effects WHERE run_id = $1")
        .bind(&run)
        .execute(&pool)
        .await
        .map_err(sql)?;
    sqlx::query("DELETE FROM spark_inbox WHERE consumer = $1")
        .bind(consumer(&run))
        .execute(&pool)
        .await
        .map_err(sql)?;
    let invariants = judge(&observed);
    let received = sink.received.load(std::sync::atomic::Ordering::Relaxed);
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
    let held = invariants.iter().all(|i| i.held);
    tracing::info!(held, killed = observed.killed, drain_ms, "relay-crash");
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

    #[test]
    fn only_loopback_urls_may_be_in_the_relay_command() {
        let ok = |args: &[&str]| loopback_only(&args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>());
        assert!(ok(&["--url", "{sink_url}", "--database-url", "{database_url}"]).is_ok());
        assert!(ok(&["--url", "http://127.0.0.1:9/hook", "--nats-url", "nats://localhost:4222"]).is_ok());
        assert!(ok(&["postgres://u:p@[::1]:5432/x"]).is_ok());
        let e = ok(&["--url", "https://hooks.example.com/x"]).unwrap_err();
        assert!(e.contains("loopback only"), "{e}");
        assert!(ok(&["postgres://u@10.0.0.5/x"]).is_err());
    }
}
