//! `spark outbox relay|stats|dead-letters|retry|skip`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use spark_outbox::{
    DeadLetterPolicy, NatsPublisher, OutboxStore, PgOutbox, Publisher, Relay, SqliteOutbox, WebhookPublisher,
};

use crate::db::{DatabaseArgs, Db, redact};
use crate::output::{CmdResult, Output};

#[derive(Debug, Subcommand)]
pub(crate) enum OutboxCommand {
    /// Publish outbox events until SIGTERM or Ctrl-C.
    Relay(RelayArgs),
    /// Pending events, dead letters, and the lag.
    Stats(DatabaseArgs),
    /// List dead letters with their last error and the events each one
    /// holds back.
    DeadLetters(DeadLetterArgs),
    /// Put a dead letter (or all of them) back in the queue, in order.
    Retry(RetryArgs),
    /// Release the aggregate held back by a dead letter, on purpose: the
    /// events behind it go out without it. Records who and when.
    Skip(SkipArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DeadLetterMode {
    /// A dead letter holds back the rest of its aggregate until it is
    /// retried or skipped.
    Block,
    /// A dead letter drops out of its aggregate's order; the rest go on.
    Skip,
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
    /// Publishes in flight at once per relay.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
    /// The longest one publish may take, in milliseconds.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    publish_timeout_ms: u64,
    /// Claim lease in seconds; at least ceil(batch / concurrency) x publish
    /// timeout x 1.5.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    lease_secs: u64,
    /// What a dead letter does to the rest of its aggregate.
    #[arg(long, value_enum, default_value = "block")]
    dead_letters: DeadLetterMode,
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

#[derive(Debug, Args)]
pub(crate) struct SkipArgs {
    /// The dead letter's event id.
    id: uuid::Uuid,
    /// Who is releasing the aggregate [default: $USER].
    #[arg(long)]
    by: Option<String>,
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
                        let held = match (&d.skipped_by, d.blocked) {
                            (Some(by), _) => format!(
                                "skipped by {by} at {}",
                                d.skipped_at_ms.map_or_else(String::new, |ms| format!("{ms} ms"))
                            ),
                            (None, 0) => "blocks nothing".to_owned(),
                            (None, n) => format!("BLOCKS {n} event(s) of its aggregate"),
                        };
                        format!(
                            "{}  {}/{}  {}  attempts {}  {}  {}",
                            d.event.id,
                            d.event.aggregate_type,
                            d.event.aggregate_id,
                            d.event.event_type,
                            d.attempts,
                            held,
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
        OutboxCommand::Skip(args) => {
            let by = match args.by.or_else(|| std::env::var("USER").ok()).filter(|b| !b.trim().is_empty()) {
                Some(by) => by,
                None => return Err(anyhow::anyhow!("--by is required when $USER is not set").into()),
            };
            let store = store(&Db::connect(&args.db.database_url, 2).await?);
            if !store.skip_dead(args.id, &by).await.context(HINT)? {
                return Err(anyhow::anyhow!("no dead letter with id {} that is not already skipped", args.id).into());
            }
            out.emit(&json!({ "skipped": args.id, "by": by }), || {
                format!("skipped {}: its aggregate goes on (recorded as skipped by {by})", args.id)
            })
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
    let mut builder = Relay::builder(store(&db))
        .relays(usize::try_from(relays)?)
        .batch_size(args.batch)
        .concurrency(usize::try_from(args.concurrency)?)
        .publish_timeout(Duration::from_millis(args.publish_timeout_ms))
        .poll_interval(Duration::from_millis(args.poll_interval_ms))
        .lease(Duration::from_secs(args.lease_secs))
        .dead_letter_policy(match args.dead_letters {
            DeadLetterMode::Block => DeadLetterPolicy::Block,
            DeadLetterMode::Skip => DeadLetterPolicy::Skip,
        });
    if let Db::Postgres(_) = &db {
        builder = builder.listen(args.listen_url.clone().unwrap_or_else(|| args.db.database_url.clone()));
    }
    let mut handle = builder.spawn(publisher)?;
    if !out.is_json() {
        eprintln!("relaying from {} with {relays} relay(s); Ctrl-C or SIGTERM stops", redact(&args.db.database_url));
    }
    tokio::select! {
        () = shutdown_signal() => {}
        () = handle.died() => {}
    }
    let total = match handle.shutdown().await {
        Ok(total) => total,
        Err(e) => {
            // A relay that died leaves the process unable to do its one
            // job: say so and exit non-zero, so a supervisor restarts it.
            eprintln!("error: {}", crate::output::one_line(&format!("{:#}", anyhow::Error::new(e))));
            return Err(crate::output::Failure::No);
        }
    };
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
