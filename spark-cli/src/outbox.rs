//! `spark outbox relay|stats|dead-letters|retry`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use spark_outbox::{NatsPublisher, OutboxStore, PgOutbox, Publisher, Relay, SqliteOutbox, WebhookPublisher};

use crate::db::{DatabaseArgs, Db, redact};
use crate::output::{CmdResult, Output};

#[derive(Debug, Subcommand)]
pub(crate) enum OutboxCommand {
    /// Publish outbox events until SIGTERM or Ctrl-C.
    Relay(RelayArgs),
    /// Pending events, dead letters, and the lag.
    Stats(DatabaseArgs),
    /// List dead letters with their last error.
    DeadLetters(DeadLetterArgs),
    /// Put a dead letter (or all of them) back in the queue.
    Retry(RetryArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Sink {
    /// POST each event to --url.
    Webhook,
    /// Publish to NATS JetStream at --nats-url.
    Nats,
    /// Accept and drop (benchmarks).
    Null,
}

/// Where events go.
#[derive(Debug, Clone, Args)]
pub(crate) struct SinkArgs {
    /// The sink.
    #[arg(long, value_enum)]
    pub(crate) sink: Sink,
    /// Webhook URL (--sink webhook).
    #[arg(long, required_if_eq("sink", "webhook"))]
    pub(crate) url: Option<String>,
    /// Environment variable holding the webhook signing secret.
    #[arg(long)]
    pub(crate) secret_env: Option<String>,
    /// NATS server URL (--sink nats).
    #[arg(long, env = "NATS_URL", required_if_eq("sink", "nats"))]
    pub(crate) nats_url: Option<String>,
    /// Subject prefix: events go to PREFIX.AGGREGATE_TYPE.EVENT_TYPE.
    #[arg(long, default_value = "spark")]
    pub(crate) subject_prefix: String,
    /// JetStream stream capturing PREFIX.> (created if missing).
    #[arg(long, default_value = "SPARK_OUTBOX")]
    pub(crate) stream: String,
}

impl SinkArgs {
    pub(crate) async fn publisher(&self) -> anyhow::Result<Arc<dyn Publisher>> {
        Ok(match self.sink {
            Sink::Webhook => {
                let url = self.url.as_deref().context("--sink webhook needs --url")?;
                let mut p = WebhookPublisher::new(url, Duration::from_secs(10)).map_err(anyhow::Error::msg)?;
                if let Some(var) = &self.secret_env {
                    let secret = std::env::var(var).with_context(|| format!("--secret-env {var}: variable not set"))?;
                    p = p.with_secret(secret);
                }
                Arc::new(p)
            }
            Sink::Nats => {
                let url = self.nats_url.as_deref().context("--sink nats needs --nats-url")?;
                Arc::new(
                    NatsPublisher::connect(url, &self.subject_prefix, &self.stream)
                        .await
                        .map_err(anyhow::Error::msg)?,
                )
            }
            Sink::Null => Arc::new(spark_outbox::NullPublisher),
        })
    }
}

#[derive(Debug, Args)]
pub(crate) struct RelayArgs {
    #[command(flatten)]
    db: DatabaseArgs,
    #[command(flatten)]
    sink: SinkArgs,
    /// A direct PostgreSQL URL for LISTEN (pgBouncer in transaction mode
    /// breaks LISTEN) [default: --database-url].
    #[arg(long)]
    listen_url: Option<String>,
    /// Events claimed per batch.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,
    /// Relays in this process (PostgreSQL; they share work through SKIP LOCKED).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    relays: u32,
    /// Poll interval in milliseconds, the fallback when no NOTIFY arrives.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    poll_interval_ms: u64,
    /// Claim lease in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    lease_secs: u64,
}

#[derive(Debug, Args)]
pub(crate) struct DeadLetterArgs {
    #[command(flatten)]
    db: DatabaseArgs,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
pub(crate) struct RetryArgs {
    /// The dead letter's event id.
    id: Option<uuid::Uuid>,
    /// Every dead letter.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    db: DatabaseArgs,
}

pub(crate) fn store(db: &Db) -> Arc<dyn OutboxStore> {
    match db {
        Db::Postgres(pool) => Arc::new(PgOutbox::new(pool.clone())),
        Db::Sqlite(pool) => Arc::new(SqliteOutbox::new(pool.clone())),
    }
}

const HINT: &str = "is the schema migrated? run `spark db migrate`";

pub(crate) async fn run(cmd: OutboxCommand, out: &Output) -> CmdResult {
    match cmd {
        OutboxCommand::Relay(args) => relay(args, out).await,
        OutboxCommand::Stats(args) => {
            let stats = store(&Db::connect(&args.database_url, 2).await?).stats().await.context(HINT)?;
            out.emit(&stats, || {
                let lag = stats.oldest_pending_age_ms.map_or("none".to_owned(), |ms| format!("{ms} ms"));
                format!(
                    "pending:   {}\ndead:      {}\npublished: {}\nlag:       {lag}",
                    stats.pending, stats.dead, stats.published
                )
            })
        }
        OutboxCommand::DeadLetters(args) => {
            let dead =
                store(&Db::connect(&args.db.database_url, 2).await?).dead_letters(args.limit).await.context(HINT)?;
            out.emit(&json!({ "dead_letters": dead }), || {
                if dead.is_empty() {
                    return "no dead letters".to_owned();
                }
                dead.iter()
                    .map(|d| {
                        format!(
                            "{}  {}/{}  {}  attempts {}  {}",
                            d.event.id,
                            d.event.aggregate_type,
                            d.event.aggregate_id,
                            d.event.event_type,
                            d.attempts,
                            d.last_error.as_deref().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        OutboxCommand::Retry(args) => {
            let store = store(&Db::connect(&args.db.database_url, 2).await?);
            let n = store.retry_dead(if args.all { None } else { args.id }).await.context(HINT)?;
            if n == 0 && !args.all {
                return Err(anyhow::anyhow!(
                    "no dead letter with id {}",
                    args.id.map(|i| i.to_string()).unwrap_or_default()
                )
                .into());
            }
            out.emit(&json!({ "requeued": n }), || format!("requeued {n} dead letter(s)"))
        }
    }
}

async fn relay(args: RelayArgs, out: &Output) -> CmdResult {
    let db = Db::connect(&args.db.database_url, args.relays + 2).await?;
    let relays = if matches!(db, Db::Sqlite(_)) && args.relays > 1 {
        eprintln!("warning: SQLite runs one relay; ignoring --relays {}", args.relays);
        1
    } else {
        args.relays
    };
    let publisher = args.sink.publisher().await?;
    let store = store(&db);
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut wakers = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..relays {
        let relay = Relay::builder(store.clone())
            .batch_size(args.batch)
            .poll_interval(Duration::from_millis(args.poll_interval_ms))
            .lease(Duration::from_secs(args.lease_secs))
            .build()?;
        wakers.push(relay.waker());
        let (publisher, mut stop) = (publisher.clone(), stop_tx.subscribe());
        tasks.push(tokio::spawn(async move {
            relay
                .run(publisher, async move {
                    stop.recv().await.ok();
                })
                .await
        }));
    }
    let listener = match &db {
        Db::Postgres(_) => {
            let url = args.listen_url.clone().unwrap_or_else(|| args.db.database_url.clone());
            Some(spark_outbox::postgres::listen(url, wakers))
        }
        Db::Sqlite(_) => None,
    };
    if !out.is_json() {
        eprintln!("relaying from {} with {relays} relay(s); Ctrl-C or SIGTERM stops", redact(&args.db.database_url));
    }
    shutdown_signal().await;
    let _ = stop_tx.send(());
    let mut total = spark_outbox::RelayReport::default();
    for t in tasks {
        let r = t.await.context("relay task failed")??;
        total.published += r.published;
        total.failed += r.failed;
        total.dead += r.dead;
    }
    if let Some(l) = listener {
        l.abort();
    }
    out.emit(&total, || {
        format!(
            "stopped: {} published, {} failed attempts, {} dead-lettered",
            total.published, total.failed, total.dead
        )
    })
}

/// Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
