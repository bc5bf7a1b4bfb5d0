//! `spark positions list`.

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;
use spark_positions::{PgPositions, Position, PositionFilter, SqlitePositions};

use crate::db::{DatabaseArgs, Db};
use crate::output::{CmdResult, Output};

#[derive(Debug, Subcommand)]
pub(crate) enum PositionsCommand {
    /// An account's open positions (or all of them with --all), newest first.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// The account.
    #[arg(long)]
    account: String,
    /// Closed positions too.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    db: DatabaseArgs,
}

pub(crate) async fn run(cmd: PositionsCommand, out: &Output) -> CmdResult {
    let PositionsCommand::List(args) = cmd;
    let filter = if args.all { PositionFilter::All } else { PositionFilter::Open };
    let db = Db::connect(&args.db.database_url, 2).await?;
    let positions = match &db {
        Db::Postgres(pool) => PgPositions::new().positions(pool, &args.account, filter).await,
        Db::Sqlite(pool) => SqlitePositions::new().positions(pool, &args.account, filter).await,
    }
    .context("is the schema migrated? run `spark db migrate`")?;
    let rows = positions.iter().map(row).collect::<anyhow::Result<Vec<_>>>()?;
    out.emit(&json!({ "account_id": args.account, "positions": rows }), || table(&args.account, &positions))
}

fn row(p: &Position) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(p)?;
    v["average_price"] = json!(p.average_price()?.map(|a| a.to_string()));
    Ok(v)
}

fn table(account: &str, positions: &[Position]) -> String {
    if positions.is_empty() {
        return format!("no positions for account {account}");
    }
    let mut out = format!(
        "{:<12} {:<7} {:>14} {:>12} {:>18}  {}\n",
        "instrument", "status", "quantity", "avg price", "realized pnl", "id"
    );
    for p in positions {
        let avg = p.average_price().ok().flatten().map_or("-".to_owned(), |a| a.to_string());
        out.push_str(&format!(
            "{:<12} {:<7} {:>14} {:>12} {:>18}  {}\n",
            p.instrument(),
            p.status(),
            p.quantity().to_string(),
            avg,
            p.realized_pnl().to_string(),
            p.id()
        ));
    }
    out.trim_end().to_owned()
}
