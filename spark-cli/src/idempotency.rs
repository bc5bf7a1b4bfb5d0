//! `spark idempotency stats|gc`.

use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;
use spark_idempotency::{Config, IdempotencyStore, PgStore, SqliteStore};

use crate::db::{DatabaseArgs, Db};
use crate::output::{CmdResult, Output};

#[derive(Debug, Subcommand)]
pub(crate) enum IdempotencyCommand {
    /// Live keys, keys awaiting GC, the oldest record's age, keys in flight.
    Stats(DatabaseArgs),
    /// Delete records past their TTL, in bounded batches.
    Gc(GcArgs),
}

#[derive(Debug, Args)]
pub(crate) struct GcArgs {
    #[command(flatten)]
    db: DatabaseArgs,
    /// Records deleted per statement.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
}

pub(crate) fn store(db: &Db) -> anyhow::Result<Arc<dyn IdempotencyStore>> {
    Ok(match db {
        Db::Postgres(pool) => Arc::new(PgStore::new(pool.clone(), Config::default())?),
        Db::Sqlite(pool) => Arc::new(SqliteStore::new(pool.clone(), Config::default())?),
    })
}

const HINT: &str = "is the schema migrated? run `spark db migrate`";

pub(crate) async fn run(cmd: IdempotencyCommand, out: &Output) -> CmdResult {
    match cmd {
        IdempotencyCommand::Stats(args) => {
            let store = store(&Db::connect(&args.database_url, 2).await?)?;
            let stats = store.stats().await.context(HINT)?;
            out.emit(&stats, || {
                let oldest = stats.oldest_record_age_ms.map_or("none".to_owned(), |ms| format!("{:.1} s", ms as f64 / 1000.0));
                format!(
                    "live keys:           {}\nexpired awaiting GC: {}\nin flight:           {}\noldest record age:   {oldest}",
                    stats.live_keys, stats.expired_awaiting_gc, stats.in_flight
                )
            })
        }
        IdempotencyCommand::Gc(args) => {
            let store = store(&Db::connect(&args.db.database_url, 2).await?)?;
            let deleted = store.gc(args.batch).await.context(HINT)?;
            out.emit(&json!({ "deleted": deleted, "batch": args.batch }), || {
                format!("deleted {deleted} expired record(s)")
            })
        }
    }
}
