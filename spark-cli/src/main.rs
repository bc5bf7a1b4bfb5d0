//! `spark`: the command-line face of the Spark crates.
//!
//! Exit codes: 0 ok; 1 a check or decision said no (an unaligned price under
//! `--mode reject`, a rule violation); 2 bad usage or input, with a one-line
//! message on stderr.

mod money;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::output::{Failure, Output};

/// Money safety and release tooling for trading services.
#[derive(Debug, Parser)]
#[command(name = "spark", version, propagate_version = true)]
struct Cli {
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decimal rounding, tick alignment and order validation.
    #[command(subcommand)]
    Money(money::MoneyCommand),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return output::usage_error(&err),
    };
    let out = Output::new(cli.json);
    let result = match cli.command {
        Command::Money(cmd) => money::run(cmd, &out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::No) => ExitCode::from(1),
        Err(Failure::Input(err)) => {
            eprintln!("error: {}", output::one_line(&format!("{err:#}")));
            ExitCode::from(2)
        }
    }
}
