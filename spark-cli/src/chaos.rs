//! `spark chaos run`: fault experiments against a deployment described in
//! `chaos.toml`, by `spark_chaos`.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::Deserialize;
use spark_chaos::{RelayCrash, RelayTarget};
use spark_evidence::EvidenceDir;

use crate::output::{CmdResult, Output};

/// The scenarios built so far; issue 16 lists six.
const BUILT: [&str; 1] = ["relay-crash"];

#[derive(Debug, Subcommand)]
pub(crate) enum ChaosCommand {
    /// Run one experiment against the deployment in chaos.toml and write
    /// chaos_SCENARIO_UTC-STAMP.txt and .json (exit 0 the hypothesis held,
    /// 1 it did not, 2 bad input).
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The deployment: `[database] url` (PostgreSQL on loopback) and
    /// `[relay] command` (argv starting one relay; `{sink_url}` and
    /// `{database_url}` are filled in).
    #[arg(long, default_value = "chaos.toml")]
    config: PathBuf,
    /// A built-in scenario: relay-crash.
    #[arg(long, conflicts_with = "scenario_file")]
    scenario: Option<String>,
    /// A scenario file of your own (a copy of a built-in one, changed).
    #[arg(long)]
    scenario_file: Option<PathBuf>,
    /// Where the report goes.
    #[arg(long, default_value = "evidence")]
    evidence_dir: PathBuf,
}

/// `chaos.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Deployment {
    database: DatabaseSection,
    relay: RelaySection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabaseSection {
    url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelaySection {
    command: Vec<String>,
}

pub(crate) async fn run(cmd: ChaosCommand, out: &Output) -> CmdResult {
    let ChaosCommand::Run(args) = cmd;
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read the deployment {}", args.config.display()))?;
    let deployment: Deployment =
        toml::from_str(&text).with_context(|| format!("{} is not a chaos deployment", args.config.display()))?;
    let scenario = match (&args.scenario, &args.scenario_file) {
        (_, Some(path)) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            RelayCrash::from_toml(&text)?
        }
        (Some(name), None) if name == "relay-crash" => RelayCrash::builtin(),
        (Some(name), None) => {
            return Err(anyhow::anyhow!(
                "--scenario {name:?} is not built yet; the scenarios are {}",
                BUILT.join(", ")
            )
            .into());
        }
        (None, None) => {
            return Err(anyhow::anyhow!("name a --scenario ({}) or a --scenario-file", BUILT.join(", ")).into());
        }
    };
    let evidence = EvidenceDir::create(&args.evidence_dir)?;
    let target = RelayTarget { database_url: deployment.database.url, relay_command: deployment.relay.command };
    let clock = spark_db::system_clock();
    // Ctrl-C drops the experiment, which kills its relays and its sink.
    let report = tokio::select! {
        report = spark_chaos::run_relay_crash(&scenario, &target, &clock) => report?,
        _ = tokio::signal::ctrl_c() => {
            return Err(anyhow::anyhow!("interrupted: the relays were killed and nothing was judged").into());
        }
    };
    let files = report.write(&evidence)?;
    let json = serde_json::json!({"experiments": [&report], "files": files});
    let text = || {
        let mut t = report.to_text();
        for f in &files {
            let _ = write!(t, "\nwritten: {}", f.path.display());
        }
        t
    };
    if report.held { out.emit(&json, text) } else { out.refuse(&json, &text(), true) }
}
