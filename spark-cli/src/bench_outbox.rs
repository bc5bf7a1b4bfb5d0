//! `spark bench outbox`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use clap::Args;
use serde::Serialize;
use spark_outbox::{Event, OutboxConnection, OutboxEvent, PublishError, Publisher, Relay};

use crate::db::Db;
use crate::outbox::{Sink, SinkArgs, store};
use crate::output::{CmdResult, Output};

const AGGREGATE_TYPE: &str = "spark-bench";
/// Writers in the enqueue and yardstick phases (pgbench `-c 8`).
const WRITERS: u32 = 8;
/// Bare inserts in the yardstick phase: enough for a steady rate.
const BARE_INSERTS: u64 = 20_000;

#[derive(Debug, Args)]
#[allow(clippy::struct_field_names, reason = "field names are the CLI flags")]
pub(crate) struct OutboxBench {
    /// `postgres://…` or `sqlite://PATH`.
    #[arg(long, env = "SPARK_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// null (measure the relay alone) or nats.
    #[arg(long, value_enum, default_value = "null")]
    sink: Sink,
    /// NATS server URL (--sink nats).
    #[arg(long, env = "NATS_URL", required_if_eq("sink", "nats"))]
    nats_url: Option<String>,
    /// Events in the backlog phase.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    events: u64,
    /// Distinct aggregates the events are spread over (per-aggregate order
    /// allows one event of an aggregate in flight at a time; in the example
    /// order service every order is its own aggregate).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    aggregates: u64,
    /// Relays draining it.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    relays: u32,
    /// Events per second in the steady phase (lag).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    rate: u32,
    /// Seconds of the steady phase.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    steady_seconds: u64,
}

/// Wraps the sink, counts acknowledgements, and records enqueue-to-ack lag
/// while `recording`.
struct Lag {
    inner: Arc<dyn Publisher>,
    recording: AtomicBool,
    lags: Mutex<Vec<i64>>,
    /// Events the sink acknowledged: the drain phase reads this counter
    /// instead of scanning the table.
    acked: AtomicU64,
}

#[async_trait]
impl Publisher for Lag {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        self.inner.publish(event).await?;
        self.acked.fetch_add(1, Ordering::Relaxed);
        if self.recording.load(Ordering::Relaxed) {
            let now = spark_db::Clock::now_ms(&spark_db::SystemClock);
            self.lags.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(now - event.created_at_ms);
        }
        Ok(())
    }
}

#[derive(Debug, Serialize)]
struct Report {
    backend: &'static str,
    sink: &'static str,
    events: u64,
    aggregates: u64,
    relays: u32,
    /// pgbench's bare single-row insert on the same database, same run.
    bare_insert_tx_per_sec: f64,
    enqueue_events_per_sec: f64,
    /// `enqueue_events_per_sec / bare_insert_tx_per_sec`.
    enqueue_over_bare: f64,
    publish_events_per_sec: f64,
    steady_rate: u32,
    steady_events: usize,
    lag_p50_ms: i64,
    lag_p99_ms: i64,
}

async fn enqueue_one(db: &Db, n: u64, aggregates: u64) -> anyhow::Result<()> {
    let event = OutboxEvent::new(
        AGGREGATE_TYPE,
        format!("agg-{}", n % aggregates),
        "bench.event",
        serde_json::json!({ "n": n }),
    );
    match db {
        Db::Postgres(pool) => enqueue_in(pool, &event).await,
        Db::Sqlite(pool) => enqueue_in(pool, &event).await,
    }
}

/// One event, one transaction: the enqueue statement on its own (autocommit),
/// as pgbench's yardstick and pgmq's `send` run theirs. Inside a service's
/// own transaction the statement is the same; the transaction's BEGIN and
/// COMMIT are the service's (see `spark bench http`).
async fn enqueue_in<DB: sqlx::Database>(pool: &sqlx::Pool<DB>, event: &OutboxEvent) -> anyhow::Result<()>
where
    DB::Connection: OutboxConnection,
{
    let mut conn = pool.acquire().await?;
    spark_outbox::enqueue(&mut *conn, event).await?;
    Ok(())
}

/// The yardstick: pgbench's bare single-row insert (one autocommit INSERT
/// of a small JSON payload per transaction, into a table with only a primary
/// key), on the same database, from the same process and pool.
const BARE_TABLE_PG: &str = "CREATE TABLE IF NOT EXISTS spark_bench_bare
    (id BIGSERIAL PRIMARY KEY, payload JSONB NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())";
const BARE_TABLE_SQLITE: &str = "CREATE TABLE IF NOT EXISTS spark_bench_bare
    (id INTEGER PRIMARY KEY AUTOINCREMENT, payload TEXT NOT NULL, created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)";

async fn bare_insert(db: &Db, n: u64) -> anyhow::Result<()> {
    let payload = format!("{{\"n\":{n}}}");
    match db {
        Db::Postgres(pool) => {
            sqlx::query("INSERT INTO spark_bench_bare (payload) VALUES ($1::jsonb)")
                .bind(payload)
                .execute(pool)
                .await?;
        }
        Db::Sqlite(pool) => {
            sqlx::query("INSERT INTO spark_bench_bare (payload) VALUES (?1)").bind(payload).execute(pool).await?;
        }
    }
    Ok(())
}

async fn exec(db: &Db, sql: &'static str) -> anyhow::Result<()> {
    match db {
        Db::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(drop)?,
        Db::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(drop)?,
    }
    Ok(())
}

/// Runs `total` operations on `writers` tasks; returns operations per second.
async fn writers<F, Fut>(db: &Db, writers: u32, total: u64, op: F) -> anyhow::Result<f64>
where
    F: Fn(Db, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (db, next, op) = (db.clone(), next.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return anyhow::Ok(());
                }
                op(db.clone(), n).await?;
            }
        }));
    }
    for t in tasks {
        t.await.context("writer panicked")??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

pub(crate) async fn run(args: OutboxBench, out: &Output) -> CmdResult {
    let db = Db::connect(&args.database_url, args.relays + WRITERS + 2).await?;
    db.migrate(&crate::db::SPARK_MIGRATIONS).await?;
    let relays = if matches!(db, Db::Sqlite(_)) { 1 } else { args.relays };
    let sink_args = SinkArgs {
        sink: args.sink,
        url: None,
        secret_env: None,
        nats_url: args.nats_url.clone(),
        subject_prefix: "sparkbench".to_owned(),
        stream: "SPARK_BENCH".to_owned(),
    };
    let lag = Arc::new(Lag {
        inner: sink_args.publisher().await?,
        recording: AtomicBool::new(false),
        lags: Mutex::default(),
        acked: AtomicU64::new(0),
    });
    let progress = |msg: &str| {
        if !out.is_json() {
            eprintln!("{msg}");
        }
    };

    // Phase 0: the yardstick, on the same database and pool.
    let bare_total = args.events.min(BARE_INSERTS);
    progress(&format!("phase 0/3: {bare_total} bare single-row inserts (pgbench's yardstick)"));
    exec(
        &db,
        match &db {
            Db::Postgres(_) => BARE_TABLE_PG,
            Db::Sqlite(_) => BARE_TABLE_SQLITE,
        },
    )
    .await?;
    let bare_tps = writers(&db, WRITERS, bare_total, |db, n| async move { bare_insert(&db, n).await }).await;
    exec(&db, "DROP TABLE IF EXISTS spark_bench_bare").await?;
    let bare_tps = bare_tps?;

    // Phase 1: enqueue the backlog, one event per transaction, 8 writers.
    progress(&format!("phase 1/3: enqueue {} events", args.events));
    let aggregates = args.aggregates;
    let enqueue_eps =
        writers(&db, WRITERS, args.events, move |db, n| async move { enqueue_one(&db, n, aggregates).await }).await?;

    // Phase 2: drain it.
    progress(&format!("phase 2/3: drain with {relays} relay(s)"));
    let outbox = store(&db);
    let started = Instant::now();
    let mut builder =
        Relay::builder(outbox.clone()).relays(usize::try_from(relays)?).poll_interval(Duration::from_millis(200));
    if let Db::Postgres(_) = &db {
        builder = builder.listen(args.database_url.clone());
    }
    let handle = builder.spawn(lag.clone())?;
    // Wait on the sink's acknowledgements: polling a full-table COUNT while
    // the relays drain would compete with them for the database (and, on
    // this 2-core machine, for the CPU). Only once every event is acked does
    // the table get checked, until the last batch's deletes have committed.
    let (mut seen, mut since) = (0, Instant::now());
    loop {
        let acked = lag.acked.load(Ordering::Relaxed);
        if acked >= args.events {
            break;
        }
        if acked != seen {
            (seen, since) = (acked, Instant::now());
        } else if since.elapsed() >= Duration::from_secs(1) {
            // A second without an ack: events went to dead letters rather
            // than the sink, so the table is the judge after all.
            if outbox.stats().await?.pending == 0 {
                break;
            }
            since = Instant::now();
        }
        // A counter read every 5 ms: waking this task on every ack (a
        // Notify per event) cost the relays a third of their rate on this
        // 2-core machine (14-18k against 26k ev/s for `spark outbox relay`
        // alone, 100 hot aggregates).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while outbox.stats().await?.pending > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let publish_eps = args.events as f64 / started.elapsed().as_secs_f64();

    // Phase 3: a steady rate, relays idle between events, woken by NOTIFY.
    progress(&format!("phase 3/3: {} events/s for {} s, measuring enqueue-to-ack lag", args.rate, args.steady_seconds));
    lag.recording.store(true, Ordering::Relaxed);
    let total = u64::from(args.rate) * args.steady_seconds;
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut writes = tokio::task::JoinSet::new();
    for n in 0..total {
        ticker.tick().await;
        let (db, aggregates) = (db.clone(), args.aggregates);
        writes.spawn(async move { enqueue_one(&db, 1_000_000_000 + n, aggregates).await });
    }
    while let Some(r) = writes.join_next().await {
        r.context("writer panicked")??;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while lag.lags.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
        < usize::try_from(total).unwrap_or(usize::MAX)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.shutdown().await?;
    let mut lags = lag.lags.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    lags.sort_unstable();
    let pct = |p: f64| {
        let i = ((lags.len() as f64 - 1.0) * p).round() as usize;
        lags.get(i).copied().unwrap_or(0)
    };
    let report = Report {
        backend: db.backend().as_str(),
        sink: match args.sink {
            Sink::Null => "null",
            Sink::Nats => "nats",
            Sink::Webhook => "webhook",
        },
        events: args.events,
        aggregates: args.aggregates,
        relays,
        bare_insert_tx_per_sec: bare_tps,
        enqueue_events_per_sec: enqueue_eps,
        enqueue_over_bare: enqueue_eps / bare_tps,
        publish_events_per_sec: publish_eps,
        steady_rate: args.rate,
        steady_events: lags.len(),
        lag_p50_ms: pct(0.50),
        lag_p99_ms: pct(0.99),
    };
    out.emit(&report, || {
        format!(
            "backend {} · sink {} · {} events over {} aggregates · {} relay(s)\n\
             bare:     {:>9.0} tx/s (pgbench-style bare single-row insert, 8 writers)\n\
             enqueue:  {:>9.0} events/s (one event per transaction, autocommit, 8 writers) = {:.2} x bare\n\
             publish:  {:>9.0} events/s (backlog drain)\n\
             lag at {} events/s: p50 {} ms, p99 {} ms ({} events){}",
            report.backend,
            report.sink,
            report.events,
            report.aggregates,
            report.relays,
            report.bare_insert_tx_per_sec,
            report.enqueue_events_per_sec,
            report.enqueue_over_bare,
            report.publish_events_per_sec,
            report.steady_rate,
            report.lag_p50_ms,
            report.lag_p99_ms,
            report.steady_events,
            if report.backend == "postgres" {
                "\nthe yardstick as a pgbench run (spark_bench_bare as created by this command):\n  \
                 pgbench -n -c 8 -j 2 -T 10 -f FILE DATABASE_URL, FILE holding \
                 INSERT INTO spark_bench_bare (payload) VALUES ('{\"n\":1}');"
            } else {
                ""
            }
        )
    })
}
