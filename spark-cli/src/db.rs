//! `--database-url` handling and `spark db migrate`.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};

use crate::output::{CmdResult, Output};

/// The embedded default: a SQLite file in the working directory.
pub(crate) const DEFAULT_DATABASE_URL: &str = "sqlite://spark.db";

/// Where Spark's tables live.
#[derive(Debug, Clone, Args)]
pub(crate) struct DatabaseArgs {
    /// `postgres://…` or `sqlite://PATH` [default: an embedded SQLite file
    /// spark.db in the working directory].
    #[arg(long, env = "SPARK_DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub(crate) database_url: String,
}

/// A connected database of either kind.
#[derive(Debug, Clone)]
pub(crate) enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Db {
    /// Connects with a pool of up to `max_connections`.
    pub(crate) async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Db> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).context("invalid PostgreSQL URL")?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await
                .with_context(|| format!("cannot connect to {}", redact(url)))?;
            Ok(Db::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .context("invalid SQLite URL")?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10));
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections)
                .connect_with(options)
                .await
                .with_context(|| format!("cannot open {url}"))?;
            Ok(Db::Sqlite(pool))
        } else {
            anyhow::bail!("unsupported database URL {:?}: use postgres://… or sqlite://PATH", redact(url))
        }
    }

    pub(crate) fn backend(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "postgres",
            Db::Sqlite(_) => "sqlite",
        }
    }

    /// Applies the migrations of every Spark crate that has them; returns
    /// what each applied.
    pub(crate) async fn migrate(&self) -> anyhow::Result<Vec<(&'static str, usize)>> {
        let migrators = match self {
            Db::Postgres(_) => vec![
                ("spark-idempotency", spark_idempotency::postgres::migrator()),
                ("spark-positions", spark_positions::postgres::migrator()),
                ("spark-outbox", spark_outbox::postgres::migrator()),
            ],
            Db::Sqlite(_) => vec![
                ("spark-idempotency", spark_idempotency::sqlite::migrator()),
                ("spark-positions", spark_positions::sqlite::migrator()),
                ("spark-outbox", spark_outbox::sqlite::migrator()),
            ],
        };
        let mut applied = Vec::new();
        for (name, migrator) in migrators {
            let before = self.applied_versions().await?;
            match self {
                Db::Postgres(pool) => migrator.run(pool).await,
                Db::Sqlite(pool) => migrator.run(pool).await,
            }
            .with_context(|| format!("migrating {name}"))?;
            let after = self.applied_versions().await?;
            applied.push((name, after.saturating_sub(before)));
        }
        Ok(applied)
    }

    async fn applied_versions(&self) -> anyhow::Result<usize> {
        // The table does not exist before the first migration.
        let sql = "SELECT COUNT(*) FROM _sqlx_migrations";
        let count: Result<i64, _> = match self {
            Db::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
            Db::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        };
        Ok(count.map_or(0, |c| usize::try_from(c).unwrap_or(0)))
    }
}

/// The URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum DbCommand {
    /// Apply the migrations of every Spark crate.
    Migrate(DatabaseArgs),
}

pub(crate) async fn run(cmd: DbCommand, out: &Output) -> CmdResult {
    match cmd {
        DbCommand::Migrate(args) => {
            let db = Db::connect(&args.database_url, 2).await?;
            let applied = db.migrate().await?;
            let total: usize = applied.iter().map(|(_, n)| n).sum();
            let crates: serde_json::Map<String, serde_json::Value> =
                applied.iter().map(|(name, n)| ((*name).to_owned(), json!(n))).collect();
            out.emit(
                &json!({ "database": redact(&args.database_url), "backend": db.backend(), "applied": total, "crates": crates }),
                || format!("{}: {total} migration(s) applied, schema up to date", redact(&args.database_url)),
            )
        }
    }
}
