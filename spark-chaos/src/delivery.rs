//! What the outbox experiments share: events enqueued in a known order, a
//! webhook sink that applies each delivery through the inbox and records
//! the effects in the order it applied them, relays started from the
//! deployment's command in process groups of their own, and the three
//! delivery invariants (`lost`, `per-aggregate-order`,
//! `one-effect-per-event`) judged on the recorded effects.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;
use spark_outbox::{Inbox, OutboxEvent};
use sqlx::PgPool;

use crate::error::{ChaosError, io};
use crate::experiment::Invariant;

/// One row per effect the sink applied, in the order applied (`pos`), with
/// the event's aggregate and its enqueue number `n`, so order is judged on
/// what the consumer did.
const EFFECTS_TABLE: &str = "CREATE TABLE IF NOT EXISTS spark_chaos_relay_effects (
    pos BIGSERIAL PRIMARY KEY, run_id TEXT NOT NULL, event_id TEXT NOT NULL, aggregate TEXT NOT NULL, n BIGINT NOT NULL)";

/// Events not yet published.
const UNPUBLISHED: &str = "SELECT count(*) FROM spark_outbox WHERE status <> 'published'";

/// How many events in the outbox are not published (pending, held or dead).
pub(crate) async fn unpublished(pool: &PgPool) -> Result<i64, ChaosError> {
    sqlx::query_scalar(UNPUBLISHED).fetch_one(pool).await.map_err(sql)
}

/// An enqueued event or an applied effect: event id, aggregate, enqueue
/// number.
pub(crate) type Event = (String, String, i64);

pub(crate) fn sql(e: sqlx::Error) -> ChaosError {
    ChaosError::Input(format!("database: {e}"))
}

/// Prepares `pool` for an outbox experiment: Spark's outbox migrations, the
/// effects table, and an outbox with nothing waiting (another run's events
/// would be counted as this one's).
pub(crate) async fn prepare(url: &str, scenario: &str) -> Result<PgPool, ChaosError> {
    crate::deployment::require_loopback("the database", url)?;
    let db = spark_db::Database::connect(url, 8).await.map_err(|e| ChaosError::Input(e.to_string()))?;
    let spark_db::Database::Postgres(pool) = db.clone() else {
        return Err(ChaosError::Input(format!("{scenario} needs PostgreSQL (relays share work through SKIP LOCKED)")));
    };
    db.migrate(&[spark_outbox::MIGRATIONS]).await.map_err(|e| ChaosError::Input(e.to_string()))?;
    let queued = unpublished(&pool).await?;
    if queued != 0 {
        return Err(ChaosError::Input(format!(
            "the outbox holds {queued} unpublished events already: run {scenario} against a database whose outbox is \
             drained"
        )));
    }
    sqlx::raw_sql(EFFECTS_TABLE).execute(&pool).await.map_err(sql)?;
    Ok(pool)
}

/// Enqueues events number `numbers` spread over `aggregates` aggregates
/// (event `n` on `agg-{n % aggregates}`), in transactions of 200; what was
/// enqueued, in order.
pub(crate) async fn enqueue(
    pool: &PgPool,
    numbers: std::ops::Range<u32>,
    aggregates: u32,
) -> Result<Vec<Event>, ChaosError> {
    let mut enqueued = Vec::new();
    for chunk in numbers.collect::<Vec<_>>().chunks(200) {
        let mut tx = pool.begin().await.map_err(sql)?;
        for &n in chunk {
            let aggregate = format!("agg-{}", n % aggregates.max(1));
            let event = OutboxEvent::new("chaos", aggregate.clone(), "chaos.tick", json!({"n": n}));
            let id =
                spark_outbox::postgres::enqueue(&mut tx, &event).await.map_err(|e| ChaosError::Input(e.to_string()))?;
            enqueued.push((id.to_string(), aggregate, i64::from(n)));
        }
        tx.commit().await.map_err(sql)?;
    }
    Ok(enqueued)
}

/// The sink's state.
struct SinkState {
    pool: PgPool,
    run: String,
    /// Every request, answered or not.
    received: AtomicUsize,
}

/// A loopback webhook sink applying each delivery through the inbox (one
/// effect per event) and answering 200 only once that committed. Stopped
/// on drop; the run's effects and inbox rows are removed by
/// [`Sink::clear`].
pub(crate) struct Sink {
    state: Arc<SinkState>,
    url: String,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Sink {
    /// Starts a sink on 127.0.0.1 for run `run`.
    pub(crate) async fn start(pool: &PgPool, run: &str) -> Result<Sink, ChaosError> {
        let state = Arc::new(SinkState { pool: pool.clone(), run: run.to_owned(), received: AtomicUsize::new(0) });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(io("127.0.0.1:0"))?;
        let url = format!("http://{}/hook", listener.local_addr().map_err(io("127.0.0.1:0"))?);
        let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(state.clone());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Sink { state, url, server })
    }

    /// `http://127.0.0.1:PORT/hook`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The address it listens on, `127.0.0.1:PORT`.
    pub(crate) fn addr(&self) -> &str {
        self.url.trim_start_matches("http://").trim_end_matches("/hook")
    }

    /// Requests received so far.
    pub(crate) fn received(&self) -> usize {
        self.state.received.load(Ordering::Relaxed)
    }

    /// Distinct events applied so far.
    pub(crate) async fn applied(&self) -> Result<i64, ChaosError> {
        sqlx::query_scalar("SELECT count(DISTINCT event_id) FROM spark_chaos_relay_effects WHERE run_id = $1")
            .bind(&self.state.run)
            .fetch_one(&self.state.pool)
            .await
            .map_err(sql)
    }

    /// Waits until `events` distinct events are applied and nothing is left
    /// unpublished in the outbox, at most `timeout` from `since`: the
    /// milliseconds since `since` when drained, `None` when not in time.
    pub(crate) async fn wait_drained(
        &self,
        events: i64,
        since: std::time::Instant,
        timeout: Duration,
    ) -> Result<Option<u64>, ChaosError> {
        loop {
            let left = unpublished(&self.state.pool).await?;
            if left == 0 && self.applied().await? >= events {
                return Ok(Some(crate::experiment::elapsed_ms(since)));
            }
            if since.elapsed() >= timeout {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The effects in the order applied.
    pub(crate) async fn effects(&self) -> Result<Vec<Event>, ChaosError> {
        sqlx::query_as("SELECT event_id, aggregate, n FROM spark_chaos_relay_effects WHERE run_id = $1 ORDER BY pos")
            .bind(&self.state.run)
            .fetch_all(&self.state.pool)
            .await
            .map_err(sql)
    }

    /// Removes the run's effects and inbox rows.
    pub(crate) async fn clear(&self) -> Result<(), ChaosError> {
        let pool = &self.state.pool;
        sqlx::query("DELETE FROM spark_chaos_relay_effects WHERE run_id = $1")
            .bind(&self.state.run)
            .execute(pool)
            .await
            .map_err(sql)?;
        sqlx::query("DELETE FROM spark_inbox WHERE consumer = $1")
            .bind(consumer(&self.state.run))
            .execute(pool)
            .await
            .map_err(sql)?;
        Ok(())
    }
}

/// The webhook: applies the delivery through the inbox.
async fn receive(State(sink): State<Arc<SinkState>>, body: axum::body::Bytes) -> StatusCode {
    sink.received.fetch_add(1, Ordering::Relaxed);
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

/// Publishes everything waiting in the outbox of `database_url` through a
/// relay of `command` to a sink that accepts every event, so an experiment
/// that placed orders leaves the outbox as it found it; the milliseconds it
/// took and what was left (0 when it drained within `timeout`).
pub(crate) async fn drain(command: &[String], database_url: &str, timeout: Duration) -> Result<(u64, i64), ChaosError> {
    let pool = sqlx::PgPool::connect(database_url).await.map_err(sql)?;
    // Pending only: a dead letter is not the drain's to wait for.
    let waiting = async || -> Result<i64, ChaosError> {
        sqlx::query_scalar("SELECT count(*) FROM spark_outbox WHERE status = 'pending'")
            .fetch_one(&pool)
            .await
            .map_err(sql)
    };
    let started = std::time::Instant::now();
    if waiting().await? == 0 {
        return Ok((0, 0));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(io("127.0.0.1:0"))?;
    let url = format!("http://{}/hook", listener.local_addr().map_err(io("127.0.0.1:0"))?);
    let app = axum::Router::new().route("/hook", axum::routing::post(async || StatusCode::OK));
    let server = Server(tokio::spawn(async move { axum::serve(listener, app).await }));
    let relays = Relays::new(command, &url, database_url)?;
    let relay = relays.start("drain")?;
    let mut left = waiting().await?;
    while left > 0 && started.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = waiting().await?;
    }
    relay.stop().await;
    drop(server);
    pool.close().await;
    Ok((crate::experiment::elapsed_ms(started), left))
}

/// A server task, aborted on drop: however a run ends, its sink stops.
struct Server(tokio::task::JoinHandle<std::io::Result<()>>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `events-published`: what the experiment left in the outbox was published
/// afterwards.
pub(crate) fn published(drained: &(u64, i64)) -> Invariant {
    Invariant::new(
        "events-published",
        drained.1 == 0,
        format!(
            "the run's events published by a relay in {} ms afterwards; {} left in the outbox",
            drained.0, drained.1
        ),
    )
}

/// Whether every URL in a relay's argv is on loopback (or a placeholder
/// the experiment fills with one).
pub(crate) fn loopback_only(args: &[String]) -> Result<(), ChaosError> {
    for arg in args.iter().filter(|a| a.contains("://") && !a.contains('{')) {
        // `--database-url=postgres://…`: the URL is after the `=`.
        let url = match arg.split_once('=') {
            Some((flag, url)) if flag.starts_with('-') && !flag.contains("://") => url,
            _ => arg.as_str(),
        };
        crate::deployment::require_loopback("the relay command names", url)?;
    }
    Ok(())
}

/// Starts relays from the deployment's command, each in a process group of
/// its own, its log in a directory of the experiment's.
pub(crate) struct Relays {
    program: String,
    args: Vec<String>,
    sink_url: String,
    database_url: String,
    logs: tempfile::TempDir,
    /// Set when a relay should run under a wrapper (`faketime`).
    pub(crate) wrapper: Vec<String>,
    started: AtomicBool,
}

impl Relays {
    /// Relays of `command` publishing to `sink_url` from `database_url`.
    pub(crate) fn new(command: &[String], sink_url: &str, database_url: &str) -> Result<Relays, ChaosError> {
        let (program, args) =
            command.split_first().ok_or_else(|| ChaosError::Input("the relay command is empty".to_owned()))?;
        loopback_only(args)?;
        crate::deployment::require_loopback("the relay's sink", sink_url)?;
        crate::deployment::require_loopback("the relay's database", database_url)?;
        Ok(Relays {
            program: program.clone(),
            args: args.to_vec(),
            sink_url: sink_url.to_owned(),
            database_url: database_url.to_owned(),
            logs: tempfile::tempdir().map_err(io("temporary directory"))?,
            wrapper: Vec::new(),
            started: AtomicBool::new(false),
        })
    }

    /// Starts relay `name` (its log is `<name>.log`).
    pub(crate) fn start(&self, name: &str) -> Result<Relay, ChaosError> {
        self.started.store(true, Ordering::Relaxed);
        let log = self.log_path(name);
        let file = std::fs::File::create(&log).map_err(io(&log))?;
        let err = file.try_clone().map_err(io(&log))?;
        let fill = |a: &String| a.replace("{sink_url}", &self.sink_url).replace("{database_url}", &self.database_url);
        let argv: Vec<String> = self
            .wrapper
            .iter()
            .cloned()
            .chain(std::iter::once(self.program.clone()))
            .chain(self.args.iter().map(fill))
            .collect();
        // With the placeholders filled, every URL is checked again.
        loopback_only(&argv[1..])?;
        let child = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            // Plain logs: they end up in reports.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(io(PathBuf::from(&argv[0])))?;
        Ok(Relay { child })
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.logs.path().join(format!("{name}.log"))
    }

    /// The log of relay `name` so far.
    pub(crate) fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }
}

/// A relay process in a process group of its own, so a signal reaches it
/// even behind a wrapper (`sh -c`, `cargo run`, `faketime`); killed on drop.
pub(crate) struct Relay {
    child: tokio::process::Child,
}

impl Relay {
    /// Sends `signal` (`KILL`, `TERM`) to the relay's process group.
    pub(crate) fn signal(&self, signal: &str) -> bool {
        self.child.id().is_some_and(|pid| crate::stack::signal_group(pid, signal))
    }

    /// Waits at most `timeout` for it to exit; its status, or `None`.
    pub(crate) async fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait()).await.ok().and_then(Result::ok)
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub(crate) async fn stop(mut self) {
        self.signal("TERM");
        let _ = self.wait(Duration::from_secs(10)).await;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal("KILL");
        }
    }
}

/// `lost`, `per-aggregate-order` and `one-effect-per-event`, from what was
/// enqueued and the effects in the order applied. Pure, so each can be
/// shown to fail.
pub(crate) fn delivery_invariants(enqueued: &[Event], effects: &[Event]) -> Vec<Invariant> {
    let applied: HashSet<&str> = effects.iter().map(|e| e.0.as_str()).collect();
    let lost: Vec<&str> = enqueued.iter().map(|e| e.0.as_str()).filter(|id| !applied.contains(id)).collect();
    let events = enqueued.len();
    let extra = effects.len().saturating_sub(applied.len());
    let strangers = applied.len().saturating_sub(events - lost.len());
    let mut order = Ok(());
    let mut last: HashMap<&str, i64> = HashMap::new();
    for (_, aggregate, n) in effects {
        if let Some(&before) = last.get(aggregate.as_str())
            && *n < before
        {
            order = Err(format!("{aggregate}: event #{n} applied after #{before}"));
            break;
        }
        last.insert(aggregate.as_str(), *n);
    }
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
                effects.len()
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls_may_be_in_the_relay_command() {
        let ok = |args: &[&str]| loopback_only(&args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>());
        assert!(ok(&["--url", "{sink_url}", "--database-url", "{database_url}"]).is_ok());
        assert!(ok(&["--url", "http://127.0.0.1:9/hook", "--nats-url", "nats://localhost:4222"]).is_ok());
        assert!(ok(&["postgres://u:p@[::1]:5432/x"]).is_ok());
        assert!(ok(&["--database-url=postgres://postgres@127.0.0.1:5432/test", "--url=http://[::1]:9/hook"]).is_ok());
        assert!(ok(&["--url=http://127.0.0.1:{port}/hook"]).is_ok(), "placeholders are checked once filled");
        assert!(ok(&["--database-url=postgres://u@10.0.0.5/x"]).is_err());
        let e = ok(&["--url", "https://hooks.example.com/x"]).unwrap_err().to_string();
        assert!(e.contains("loopback only"), "{e}");
        assert!(ok(&["postgres://u@10.0.0.5/x"]).is_err());
    }
}
