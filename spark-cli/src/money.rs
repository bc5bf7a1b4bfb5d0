//! `spark money …`: rounding, tick alignment and order validation.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;
use spark_money::{
    Decimal, InstrumentRules, MoneyError, Price, Quantity, Rounding, Side, TickRounding, TickTable, parse_decimal,
    round,
};

use crate::output::{CmdResult, Output};

#[derive(Debug, Subcommand)]
pub(crate) enum MoneyCommand {
    /// Round a decimal to a number of places (banker's rounding by default).
    Round(RoundArgs),
    /// Move a price onto an exchange's tick grid.
    Align(AlignArgs),
    /// Check an order against an instrument's rules; exit 1 on any violation.
    Validate(ValidateArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RoundArgs {
    /// The value, a plain decimal such as 2.345 or -2.5.
    #[arg(allow_hyphen_values = true, value_parser = parse_decimal)]
    value: Decimal,
    /// Decimal places of the result (0..=28).
    #[arg(long)]
    dp: u32,
    /// half-even | half-up | half-down | down | up | floor | ceiling.
    #[arg(long, default_value = "half-even")]
    mode: Rounding,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("grid").required(true).args(["tick", "table"])))]
pub(crate) struct AlignArgs {
    /// The price, a plain decimal greater than zero.
    #[arg(allow_hyphen_values = true)]
    price: Price,
    /// One tick size for every price.
    #[arg(long, value_parser = parse_decimal)]
    tick: Option<Decimal>,
    /// A tick table: `bist` (Borsa Istanbul equities) or a TOML file.
    #[arg(long)]
    table: Option<String>,
    /// nearest | down | up | reject (default: nearest, or passive with --side).
    #[arg(long)]
    mode: Option<TickRounding>,
    /// buy | sell. Without --mode, rounds passively: buy down, sell up.
    #[arg(long)]
    side: Option<Side>,
}

#[derive(Debug, Args)]
pub(crate) struct ValidateArgs {
    /// Instrument rules as TOML (currency, tick_table, lot, min_notional).
    #[arg(long)]
    rules: PathBuf,
    /// buy | sell.
    #[arg(long)]
    side: Side,
    /// The order price.
    #[arg(long, allow_hyphen_values = true)]
    price: Price,
    /// The order quantity.
    #[arg(long, allow_hyphen_values = true)]
    qty: Quantity,
}

pub(crate) fn run(cmd: MoneyCommand, out: &Output) -> CmdResult {
    match cmd {
        MoneyCommand::Round(args) => {
            let value = round(args.value, args.dp, args.mode)?;
            out.emit(&json!({ "value": value.to_string() }), || value.to_string())
        }
        MoneyCommand::Align(args) => align(args, out),
        MoneyCommand::Validate(args) => validate(args, out),
    }
}

fn align(args: AlignArgs, out: &Output) -> CmdResult {
    let table = match (args.tick, args.table.as_deref()) {
        (Some(tick), _) => TickTable::fixed(tick)?,
        (None, Some("bist" | "bist-equity")) => TickTable::bist_equity(),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read tick table {path}"))?;
            TickTable::from_toml(&text).with_context(|| format!("tick table {path}"))?
        }
        (None, None) => unreachable!("clap requires --tick or --table"),
    };
    let mode = match (args.mode, args.side) {
        (Some(mode), _) => mode,
        (None, Some(side)) => TickRounding::Passive(side),
        (None, None) => TickRounding::Nearest,
    };
    match table.align(args.price, mode) {
        Ok(price) => {
            let tick = table.tick_at(price)?;
            out.emit(&json!({ "price": price, "tick": tick.to_string() }), || price.to_string())
        }
        Err(err @ MoneyError::PriceNotAligned { tick, below, above, .. }) => out.refuse(
            &json!({ "ok": false, "error": err.to_string(), "tick": tick.to_string(), "below": below, "above": above }),
            &err.to_string(),
            false,
        ),
        Err(err) => Err(err.into()),
    }
}

fn validate(args: ValidateArgs, out: &Output) -> CmdResult {
    let path = args.rules.display();
    let text = std::fs::read_to_string(&args.rules).with_context(|| format!("cannot read rules {path}"))?;
    let rules = InstrumentRules::from_toml(&text).with_context(|| format!("rules {path}"))?;
    match rules.validate(args.side, args.price, args.qty) {
        Ok(()) => out.emit(&json!({ "ok": true, "violations": [] }), || "ok".to_owned()),
        Err(violations) => {
            let text = violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
            out.refuse(&json!({ "ok": false, "violations": violations }), &text, true)
        }
    }
}
