//! `spark`: the command-line face of the Spark crates.
//!
//! Exit codes: 0 ok; 1 a check or decision said no (an unaligned price under
//! `--mode reject`, a rule violation, a canary rollback); 2 bad usage or
//! input, with a one-line message on stderr; 3 a canary decision held
//! (inconclusive).

mod bench;
mod bench_http;
mod bench_outbox;
mod canary;
mod chaos;
mod check;
mod db;
mod demo;
mod demo_ritual;
mod evidence;
mod idempotency;
mod incident;
mod loopback;
mod money;
mod outbox;
mod output;
mod positions;
mod progress;
mod release;
mod restore;
mod rollback;
mod rules;
mod supply_chain;
mod watch;

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
    /// Every guarantee in one run: an order service on embedded SQLite, a
    /// burst of orders with retries and refusals, a relay, and the checks.
    Demo(demo::DemoArgs),
    /// Decimal rounding, tick alignment and order validation.
    #[command(subcommand)]
    Money(money::MoneyCommand),
    /// Database schema.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Idempotency keys: stats and garbage collection.
    #[command(subcommand)]
    Idempotency(idempotency::IdempotencyCommand),
    /// Positions per account and instrument.
    #[command(subcommand)]
    Positions(positions::PositionsCommand),
    /// The transactional outbox: relay, stats, dead letters.
    #[command(subcommand)]
    Outbox(outbox::OutboxCommand),
    /// The pre-deployment blind-spot scan: clock, migrations, pgBouncer,
    /// decimal columns, backup, headers, observability, SLO alerts, supply
    /// chain (exit 0
    /// nothing failed, 1 a check failed, 2 a configuration error); `spark
    /// check contract` runs the idempotency contract battery against a
    /// running service.
    #[command(args_conflicts_with_subcommands = true)]
    Check(check::CheckArgs),
    /// The canary engine: print a plan, decide one instant of a stage, or
    /// replay a recorded stage (exit 0 continue or promote, 1 rollback, 3
    /// hold, 2 bad input).
    #[command(subcommand)]
    Canary(canary::CanaryCommand),
    /// Record the canary signals from Prometheus into a replayable snapshot.
    #[command(subcommand)]
    Metrics(canary::MetricsCommand),
    /// Prometheus rules, promtool tests and a Grafana dashboard generated
    /// from the canary plan's triggers.
    #[command(subcommand)]
    Rules(rules::RulesCommand),
    /// Roll a canary back: the plan's commands and signed webhooks in order,
    /// then Slack, then the evidence files (exit 0 every action succeeded,
    /// 1 one failed, 2 bad input).
    Rollback(rollback::RollbackArgs),
    /// Throughput benchmarks against your own database.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Write a CycloneDX 1.5 JSON SBOM of a Cargo workspace: every
    /// Cargo.lock package with its purl, version, licence and checksum.
    Sbom(supply_chain::SbomArgs),
    /// Write an in-toto Statement v1 with an SLSA provenance v1 predicate
    /// for a built artifact: its SHA-256, the builder, the git commit and the
    /// build parameters.
    Provenance(supply_chain::ProvenanceArgs),
    /// Make an ed25519 key pair for signing evidence manifests: the private
    /// key at `--out` (mode 0600), the public key beside it as `.pub`;
    /// refuses to overwrite either (exit 2).
    Keygen(evidence::KeygenArgs),
    /// Seal an evidence directory with a signed manifest, or verify one.
    #[command(subcommand)]
    Evidence(evidence::EvidenceCommand),
    /// GO/NO-GO from ten measured items and the sign-offs; writes
    /// `go_nogo_signed_RELEASE.txt` and `.json` (exit 0 GO, 1 NO-GO, 2 bad
    /// input).
    #[command(name = "go-nogo")]
    GoNoGo(release::GoNoGoArgs),
    /// The green button: scan, SBOM, provenance, baseline metrics, canary
    /// plan and GO/NO-GO in one run, written as seven evidence files sealed
    /// by a signed manifest (exit 0 GO, 1 NO-GO, 2 bad input).
    Ritual(release::RitualArgs),
    /// A one-page Markdown release note from the evidence: canary stages,
    /// gate values, rollbacks, remaining risks.
    #[command(name = "release-notes")]
    ReleaseNotes(release::ReleaseNotesArgs),
    /// Base backups and the point-in-time restore drill (exit 0 the restore
    /// held, 1 it did not, 2 bad input).
    #[command(subcommand)]
    Restore(restore::RestoreCommand),
    /// Fault experiments against a deployment on loopback, with invariants
    /// measured (exit 0 the hypothesis held, 1 it did not, 2 bad input).
    #[command(subcommand)]
    Chaos(chaos::ChaosCommand),
    /// Incident reports written from the evidence.
    #[command(subcommand)]
    Incident(incident::IncidentCommand),
    /// The first night after a release reached 100 %: every trigger and the
    /// 1 h and 6 h burn rates at each interval against the GO-time
    /// baseline, quick checks, Slack at once on a firing trigger, an
    /// optional rollback; resumes from its journal (exit 0 a clean night, 1
    /// not, 3 interrupted, 2 bad input).
    Watch(watch::WatchArgs),
}

/// Library warnings and errors (a relay's sink check, a dropped LISTEN) go
/// to stderr; `SPARK_LOG=info|debug|trace|off` changes the level.
fn init_logs(default: tracing_subscriber::filter::LevelFilter) {
    let level = std::env::var("SPARK_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(default);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        // Colours on a terminal only: logs sent to a file stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Runs an async command on a fresh runtime.
fn block_on(fut: impl std::future::Future<Output = output::CmdResult>) -> output::CmdResult {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(fut)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return output::usage_error(&err),
    };
    let out = Output::new(cli.json);
    init_logs(tracing_subscriber::filter::LevelFilter::WARN);
    let result = match cli.command {
        Command::Money(cmd) => money::run(cmd, &out),
        Command::Demo(args) => block_on(demo::run(args, &out)),
        Command::Db(cmd) => block_on(db::run(cmd, &out)),
        Command::Idempotency(cmd) => block_on(idempotency::run(cmd, &out)),
        Command::Positions(cmd) => block_on(positions::run(cmd, &out)),
        Command::Outbox(cmd) => block_on(outbox::run(cmd, &out)),
        Command::Bench(cmd) => block_on(bench::run(cmd, &out)),
        Command::Check(args) => block_on(check::run(args, &out)),
        Command::Canary(cmd) => block_on(canary::run(cmd, &out)),
        Command::Metrics(cmd) => block_on(canary::run_metrics(cmd, &out)),
        Command::Rules(cmd) => rules::run(cmd, &out),
        Command::Rollback(args) => block_on(rollback::run(args, &out)),
        Command::Sbom(args) => supply_chain::run_sbom(args, &out),
        Command::Provenance(args) => supply_chain::run_provenance(args, &out),
        Command::Keygen(args) => evidence::run_keygen(args, &out),
        Command::Evidence(cmd) => evidence::run(cmd, &out),
        Command::GoNoGo(args) => block_on(release::run_go_nogo(args, &out)),
        Command::Ritual(args) => block_on(release::run_ritual(args, &out)),
        Command::ReleaseNotes(args) => release::run_release_notes(args, &out),
        Command::Restore(cmd) => block_on(restore::run(cmd, &out)),
        Command::Chaos(cmd) => block_on(chaos::run(cmd, &out)),
        Command::Incident(cmd) => block_on(incident::run(cmd, &out)),
        Command::Watch(args) => block_on(watch::run(args, &out)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::No) => ExitCode::from(1),
        Err(Failure::Hold) => ExitCode::from(3),
        Err(Failure::Input(err)) => {
            eprintln!("error: {}", output::one_line(&format!("{err:#}")));
            ExitCode::from(2)
        }
    }
}
