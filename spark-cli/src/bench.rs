//! `spark bench …`: database throughput, measured against the operator's own
//! database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use spark_idempotency::{Claim, Config, Fingerprint, IdempotencyKey, PgStore, SqliteStore, StoredResponse};

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
    setup(&db).await?;
    let duration = Duration::from_secs(args.seconds);
    if !out.is_json() {
        eprintln!("phase 1/2: plain insert transactions ({}s, concurrency {})", args.seconds, args.concurrency);
    }
    let plain = phase(&db, args.concurrency, duration, Mode::Plain).await?;
    if !out.is_json() {
        eprintln!("phase 2/2: insert + claim + completion in one transaction");
    }
    let idempotent = phase(&db, args.concurrency, duration, Mode::Idempotent).await?;
    teardown(&db).await?;
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

const TABLE: &str = "spark_bench_orders";
const SCOPE: &str = "spark-bench";

async fn setup(db: &Db) -> anyhow::Result<()> {
    teardown(db).await?;
    let create = match db {
        Db::Postgres(_) => {
            "CREATE TABLE spark_bench_orders (id BIGSERIAL PRIMARY KEY, client TEXT NOT NULL, payload TEXT NOT NULL)"
        }
        Db::Sqlite(_) => {
            "CREATE TABLE spark_bench_orders (id INTEGER PRIMARY KEY AUTOINCREMENT, client TEXT NOT NULL, payload TEXT NOT NULL)"
        }
    };
    match db {
        Db::Postgres(pool) => sqlx::query(create).execute(pool).await.map(drop),
        Db::Sqlite(pool) => sqlx::query(create).execute(pool).await.map(drop),
    }
    .context("creating the bench table")
}

async fn teardown(db: &Db) -> anyhow::Result<()> {
    let drop_table = "DROP TABLE IF EXISTS spark_bench_orders";
    let delete_keys = "DELETE FROM spark_idempotency_keys WHERE scope = 'spark-bench'";
    match db {
        Db::Postgres(pool) => {
            sqlx::query(drop_table).execute(pool).await?;
            sqlx::query(delete_keys).execute(pool).await?;
        }
        Db::Sqlite(pool) => {
            sqlx::query(drop_table).execute(pool).await?;
            sqlx::query(delete_keys).execute(pool).await?;
        }
    }
    debug_assert!(TABLE.starts_with("spark_bench") && SCOPE == "spark-bench");
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Plain,
    Idempotent,
}

const INSERT: &str = "INSERT INTO spark_bench_orders (client, payload) VALUES ($1, $2)";
const PAYLOAD: &str = r#"{"account_id":"acc-1","symbol":"THYAO","side":"buy","quantity":"100","price":"101.30"}"#;

async fn phase(db: &Db, concurrency: u32, duration: Duration, mode: Mode) -> anyhow::Result<Phase> {
    let stop = Arc::new(AtomicBool::new(false));
    let seq = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let (db, stop, seq) = (db.clone(), stop.clone(), seq.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                one(&db, mode, worker, n).await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.context("bench worker panicked")??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Ok(Phase {
        transactions: latencies.len() as u64,
        tps: latencies.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}

/// One transaction: a business insert, with or without the claim and the
/// completion around it (transactional mode, as a service would use it).
async fn one(db: &Db, mode: Mode, worker: u32, n: u64) -> anyhow::Result<()> {
    let key: IdempotencyKey = format!("bench-{worker}-{n}").parse()?;
    let fingerprint = Fingerprint::of_request("POST", "/v1/orders", PAYLOAD.as_bytes());
    let response = StoredResponse::new(201, format!("{{\"order_id\":\"{n}\",\"status\":\"accepted\"}}"))
        .with_header("content-type", "application/json");
    macro_rules! transaction {
        ($pool:expr, $store:ty, $insert:expr) => {{
            let mut tx = $pool.begin().await?;
            match mode {
                Mode::Plain => {
                    sqlx::query($insert).bind(SCOPE).bind(PAYLOAD).execute(&mut *tx).await?;
                }
                Mode::Idempotent => {
                    // Stores are cheap handles (a pool clone and a config).
                    let store = <$store>::new($pool.clone(), Config::default())?;
                    let Claim::Acquired(lease) = store.claim_in(&mut tx, SCOPE, &key, &fingerprint).await? else {
                        anyhow::bail!("bench key {key} was not fresh");
                    };
                    sqlx::query($insert).bind(SCOPE).bind(PAYLOAD).execute(&mut *tx).await?;
                    store.complete_in(&mut tx, &lease, &response).await?;
                }
            }
            tx.commit().await?;
        }};
    }
    match db {
        Db::Postgres(pool) => transaction!(pool, PgStore, INSERT),
        Db::Sqlite(pool) => {
            transaction!(pool, SqliteStore, "INSERT INTO spark_bench_orders (client, payload) VALUES (?1, ?2)")
        }
    }
    Ok(())
}
