//! `--database-url` handling and `spark db migrate`.

use clap::{Args, Subcommand};
use serde_json::json;

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

/// The workspace's one database handle.
pub(crate) use spark_db::Database as Db;
pub(crate) use spark_db::redact_url as redact;

/// Every Spark crate's migrations, in dependency order.
pub(crate) const SPARK_MIGRATIONS: [spark_db::Migrations; 3] =
    [spark_idempotency::MIGRATIONS, spark_positions::MIGRATIONS, spark_outbox::MIGRATIONS];

#[derive(Debug, Subcommand)]
pub(crate) enum DbCommand {
    /// Apply the migrations of every Spark crate.
    Migrate(DatabaseArgs),
}

pub(crate) async fn run(cmd: DbCommand, out: &Output) -> CmdResult {
    match cmd {
        DbCommand::Migrate(args) => {
            let db = Db::connect(&args.database_url, 2).await?;
            let applied = db.migrate(&SPARK_MIGRATIONS).await?;
            let total: usize = applied.iter().map(|(_, n)| n).sum();
            let crates: serde_json::Map<String, serde_json::Value> =
                applied.iter().map(|(name, n)| ((*name).to_owned(), json!(n))).collect();
            out.emit(
                &json!({ "database": redact(&args.database_url), "backend": db.backend().as_str(), "applied": total, "crates": crates }),
                || format!("{}: {total} migration(s) applied, schema up to date", redact(&args.database_url)),
            )
        }
    }
}
