//! `spark bench …`: database throughput, measured against the operator's own
//! database.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use spark_idempotency::{Claim, Config, Fingerprint, IdempotencyKey, SqlBackend, SqlStore, StoredResponse};
use sqlx::{Pool, Postgres, Sqlite};

use crate::db::Db;
use crate::output::{CmdResult, Output};

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Throughput of plain insert transactions against the same inserts with
    /// an idempotency claim and completion in the transaction.
    Idempotency(IdempotencyBench),
    /// Outbox enqueue and publish throughput, and enqueue-to-ack lag at a
    /// steady rate with LISTEN/NOTIFY.
    Outbox(crate::bench_outbox::OutboxBench),
    /// Load on POST /v1/orders of a running order service: throughput and
    /// p50/p95/p99, with unique and repeated keys.
    Http(crate::bench_http::HttpBench),
}

#[derive(Debug, Args)]
pub(crate) struct IdempotencyBench {
    /// `postgres://…` or `sqlite://PATH`.
    #[arg(long, env = "SPARK_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Concurrent transactions.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=512))]
    concurrency: u32,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
}

/// One phase's figures.
#[derive(Debug, Serialize)]
struct Phase {
    transactions: u64,
    tps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: &'static str,
    concurrency: u32,
    seconds: u64,
    plain: Phase,
    idempotent: Phase,
    /// idempotent.tps / plain.tps
    ratio: f64,
}

pub(crate) async fn run(cmd: BenchCommand, out: &Output) -> CmdResult {
    let args = match cmd {
        BenchCommand::Idempotency(args) => args,
        BenchCommand::Outbox(args) => return crate::bench_outbox::run(args, out).await,
        BenchCommand::Http(args) => return crate::bench_http::run(args, out).await,
    };
    let db = Db::connect(&args.database_url, args.concurrency + 1).await?;
    db.migrate(&crate::db::SPARK_MIGRATIONS).await?;
    let (plain, idempotent) = match &db {
        Db::Postgres(pool) => both_phases(pool, &args, out).await?,
        Db::Sqlite(pool) => both_phases(pool, &args, out).await?,
    };
    let ratio = if plain.tps > 0.0 { idempotent.tps / plain.tps } else { 0.0 };
    let report = Report {
        backend: db.backend().as_str(),
        concurrency: args.concurrency,
        seconds: args.seconds,
        plain,
        idempotent,
        ratio,
    };
    out.emit(&report, || {
        format!(
            "backend {} · concurrency {} · {} s per phase\n\
             (a) plain insert:                 {:>9.0} tx/s  p50 {:.2} ms  p99 {:.2} ms\n\
             (b) insert + claim + completion:  {:>9.0} tx/s  p50 {:.2} ms  p99 {:.2} ms\n\
             ratio b/a: {:.2}",
            report.backend,
            report.concurrency,
            report.seconds,
            report.plain.tps,
            report.plain.p50_ms,
            report.plain.p99_ms,
            report.idempotent.tps,
            report.idempotent.p50_ms,
            report.idempotent.p99_ms,
            report.ratio
        )
    })
}

/// The scope of every key the benchmark claims; teardown deletes them.
const SCOPE: &str = "spark-bench";
const PAYLOAD: &str = r#"{"account_id":"acc-1","symbol":"THYAO","side":"buy","quantity":"100","price":"101.30"}"#;

/// What the benchmark runs on one backend besides the store's own
/// statements: its business table and the insert into it, each backend's
/// statements as plain constants. The phases are written once, over this.
trait BenchBackend: SqlBackend {
    /// Creates `spark_bench_orders`.
    const CREATE_TABLE: &'static str;
    /// The business write: `client`, `payload`.
    const INSERT: &'static str;

    /// Runs `sql` (no binds) on the pool.
    fn execute(pool: &Pool<Self>, sql: &'static str) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// The business insert, in the transaction on `conn`.
    fn insert(conn: &mut Self::Connection) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

impl BenchBackend for Postgres {
    const CREATE_TABLE: &'static str =
        "CREATE TABLE spark_bench_orders (id BIGSERIAL PRIMARY KEY, client TEXT NOT NULL, payload TEXT NOT NULL)";
    const INSERT: &'static str = "INSERT INTO spark_bench_orders (client, payload) VALUES ($1, $2)";

    async fn execute(pool: &Pool<Postgres>, sql: &'static str) -> Result<(), sqlx::Error> {
        sqlx::query(sql).execute(pool).await.map(drop)
    }

    async fn insert(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(Self::INSERT).bind(SCOPE).bind(PAYLOAD).execute(conn).await.map(drop)
    }
}

impl BenchBackend for Sqlite {
    const CREATE_TABLE: &'static str = "CREATE TABLE spark_bench_orders \
        (id INTEGER PRIMARY KEY AUTOINCREMENT, client TEXT NOT NULL, payload TEXT NOT NULL)";
    const INSERT: &'static str = "INSERT INTO spark_bench_orders (client, payload) VALUES (?1, ?2)";

    async fn execute(pool: &Pool<Sqlite>, sql: &'static str) -> Result<(), sqlx::Error> {
        sqlx::query(sql).execute(pool).await.map(drop)
    }

    async fn insert(conn: &mut sqlx::SqliteConnection) -> Result<(), sqlx::Error> {
        sqlx::query(Self::INSERT).bind(SCOPE).bind(PAYLOAD).execute(conn).await.map(drop)
    }
}

/// At most this many slices per phase: a long run gets longer slices.
const MAX_SLICES: u64 = 30;

/// Sets up, runs both phases, and cleans up.
///
/// The phases alternate in slices of about a second (plain, idempotent,
/// plain, …) rather than running one after the other: on a machine whose
/// disk or CPUs are shared, what the neighbours do drifts over seconds, and
/// back-to-back phases measured that drift as much as the claim (SQLite's
/// ratio ranged 0.2–0.9 from run to run on one machine). Interleaved, both
/// phases see the same conditions.
async fn both_phases<DB: BenchBackend>(
    pool: &Pool<DB>,
    args: &IdempotencyBench,
    out: &Output,
) -> anyhow::Result<(Phase, Phase)> {
    teardown(pool).await?;
    DB::execute(pool, DB::CREATE_TABLE).await.context("creating the bench table")?;
    let slices = args.seconds.min(MAX_SLICES);
    let slice = Duration::from_secs(args.seconds) / u32::try_from(slices).unwrap_or(1);
    if !out.is_json() {
        eprintln!(
            "plain insert transactions, and insert + claim + completion in one transaction: \
             {} s each in {slices} alternating slices, concurrency {}",
            args.seconds, args.concurrency
        );
    }
    // One store for the run (a pool handle and a configuration), and one
    // sequence, so that every idempotent transaction has a fresh key.
    let store = SqlStore::new(pool.clone(), Config::default())?;
    let seq = Arc::new(AtomicU64::new(0));
    let (mut plain, mut idempotent) = (Samples::default(), Samples::default());
    for _ in 0..slices {
        plain.run(pool, &store, &seq, args.concurrency, slice, Mode::Plain).await?;
        idempotent.run(pool, &store, &seq, args.concurrency, slice, Mode::Idempotent).await?;
    }
    teardown(pool).await?;
    Ok((plain.phase(), idempotent.phase()))
}

async fn teardown<DB: BenchBackend>(pool: &Pool<DB>) -> anyhow::Result<()> {
    DB::execute(pool, "DROP TABLE IF EXISTS spark_bench_orders").await?;
    DB::execute(pool, "DELETE FROM spark_idempotency_keys WHERE scope = 'spark-bench'").await?;
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Plain,
    Idempotent,
}

/// The latencies of one phase's transactions and the time it ran.
#[derive(Debug, Default)]
struct Samples {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Samples {
    /// Runs `concurrency` workers in `mode` for `duration`.
    async fn run<DB: BenchBackend>(
        &mut self,
        pool: &Pool<DB>,
        store: &SqlStore<DB>,
        seq: &Arc<AtomicU64>,
        concurrency: u32,
        duration: Duration,
        mode: Mode,
    ) -> anyhow::Result<()> {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut workers = Vec::new();
        for worker in 0..concurrency {
            let (pool, store, stop, seq) = (pool.clone(), store.clone(), stop.clone(), seq.clone());
            workers.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    one(&pool, &store, mode, worker, n).await?;
                    latencies.push(t.elapsed());
                }
                anyhow::Ok(latencies)
            }));
        }
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            self.latencies.extend(w.await.context("bench worker panicked")??);
        }
        self.elapsed += started.elapsed();
        Ok(())
    }

    fn phase(mut self) -> Phase {
        self.latencies.sort_unstable();
        let latencies = &self.latencies;
        let pct = |p: f64| {
            let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
            latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        Phase {
            transactions: latencies.len() as u64,
            tps: latencies.len() as f64 / self.elapsed.as_secs_f64(),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
        }
    }
}

/// One transaction: a business insert, with or without the claim and the
/// completion (transactional mode, as a service would use it). The response
/// is known before the insert, so the claim carries it: one statement for
/// claim and completion.
async fn one<DB: BenchBackend>(
    pool: &Pool<DB>,
    store: &SqlStore<DB>,
    mode: Mode,
    worker: u32,
    n: u64,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    match mode {
        Mode::Plain => DB::insert(&mut tx).await?,
        Mode::Idempotent => {
            let key: IdempotencyKey = format!("bench-{worker}-{n}").parse()?;
            let fingerprint = Fingerprint::of_request("POST", "/v1/orders", PAYLOAD.as_bytes());
            let response = StoredResponse::new(201, format!("{{\"order_id\":\"{n}\",\"status\":\"accepted\"}}"))
                .with_header("content-type", "application/json");
            let claim = store.claim_and_complete_in(&mut tx, SCOPE, &key, &fingerprint, &response).await?;
            let Claim::Acquired(_) = claim else {
                anyhow::bail!("bench key {key} was not fresh");
            };
            DB::insert(&mut tx).await?;
        }
    }
    tx.commit().await?;
    Ok(())
}
