//! `order-service`: run the example service.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use order_service::{AppState, Auth, Clients, Database, Instruments, app};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RelaySink {
    /// No in-process relay (run `spark outbox relay` separately).
    None,
    /// Log each event (tracing) and count it.
    Log,
    /// POST to --relay-url.
    Webhook,
    /// NATS JetStream at --relay-url.
    Nats,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DevAuth {
    /// Trust `X-Client-Id` without proof (development only).
    Header,
}

/// An order-entry service on every Spark guarantee.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// `postgres://…` or `sqlite://PATH`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://order-service.db")]
    database_url: String,
    /// Where the relay LISTENs (PostgreSQL): a direct or session-pool URL,
    /// never a transaction pool, which drops notifications [default:
    /// --database-url]. `spark check` proves it with a LISTEN probe.
    #[arg(long, env = "ORDER_SERVICE_LISTEN_URL")]
    listen_url: Option<String>,
    /// Instruments TOML ([instruments.SYMBOL] tables); default: five BIST equities.
    #[arg(long)]
    instruments: Option<std::path::PathBuf>,
    /// The longest a request waits for a database connection before it is
    /// answered 503 with Retry-After: load is shed, not queued, when the
    /// pool or pgBouncer's is exhausted.
    #[arg(long, env = "ORDER_SERVICE_DB_ACQUIRE_TIMEOUT_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    db_acquire_timeout_ms: u64,
    /// Run the outbox relay in-process with this sink.
    #[arg(long, value_enum, default_value = "none")]
    relay: RelaySink,
    /// Webhook or NATS URL for --relay.
    #[arg(long)]
    relay_url: Option<String>,
    /// Clients TOML ([[client]] tables with id, token_sha256, accounts):
    /// requests then carry `Authorization: Bearer <token>`.
    #[arg(long, conflicts_with = "dev_auth")]
    clients: Option<std::path::PathBuf>,
    /// Without --clients: trust `X-Client-Id` instead (development only; the
    /// service warns at startup and in /healthz).
    #[arg(long, value_enum)]
    dev_auth: Option<DevAuth>,
}

struct LogSink;

#[async_trait::async_trait]
impl spark_outbox::Publisher for LogSink {
    async fn publish(&self, event: &spark_outbox::Event) -> Result<(), spark_outbox::PublishError> {
        tracing::info!(id = %event.id, event_type = %event.event_type, aggregate = %event.aggregate_id, "event");
        Ok(())
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    // Logs to stderr at `SPARK_LOG` (default info): the relay's events under
    // `--relay log`, warnings from the libraries, internal errors.
    let level = std::env::var("SPARK_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        // Colours on a terminal only: logs sent to a file stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let instruments = match &args.instruments {
        Some(path) => Instruments::from_toml(
            &std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
        )?,
        None => Instruments::default_set(),
    };
    // Refuse to start open: an order service without authentication must be
    // asked for by name.
    let auth = match (&args.clients, args.dev_auth) {
        (Some(path), _) => Auth::bearer(Clients::load(path)?),
        (None, Some(DevAuth::Header)) => {
            eprintln!("warning: {}", order_service::auth::DEV_WARNING);
            Auth::dev_header()
        }
        (None, None) => anyhow::bail!(
            "refusing to start without authentication: pass --clients FILE (bearer API keys) \
             or --dev-auth header (trusts X-Client-Id; development only)"
        ),
    };
    let db = Database::connect_with_timeout(&args.database_url, 16, Duration::from_millis(args.db_acquire_timeout_ms))
        .await?;
    order_service::migrate(&db).await?;
    let state = AppState::new(db.clone(), instruments, auth);
    let publisher: Option<std::sync::Arc<dyn spark_outbox::Publisher>> = match args.relay {
        RelaySink::None => None,
        RelaySink::Log => Some(std::sync::Arc::new(LogSink)),
        RelaySink::Webhook => {
            let url = args.relay_url.as_deref().context("--relay webhook needs --relay-url")?;
            Some(std::sync::Arc::new(
                spark_outbox::WebhookPublisher::new(url, Duration::from_secs(10)).map_err(anyhow::Error::msg)?,
            ))
        }
        RelaySink::Nats => {
            let url = args.relay_url.as_deref().context("--relay nats needs --relay-url")?;
            Some(std::sync::Arc::new(
                spark_outbox::NatsPublisher::connect(url, "orders", "ORDERS").await.map_err(anyhow::Error::msg)?,
            ))
        }
    };
    // The in-process relay, woken by LISTEN/NOTIFY on PostgreSQL (polling
    // on SQLite); shut down after the server so accepted orders drain.
    let relays = match publisher {
        Some(publisher) => {
            let mut builder = spark_outbox::Relay::builder(state.outbox());
            if let Database::Postgres(_) = &db {
                builder = builder.listen(args.listen_url.clone().unwrap_or_else(|| args.database_url.clone()));
            }
            Some(builder.spawn(publisher)?)
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!("order-service listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(state).into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown())
        .await?;
    if let Some(relays) = relays {
        let report = relays.shutdown().await?;
        eprintln!("order-service: relay published {} event(s)", report.published);
    }
    Ok(())
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
