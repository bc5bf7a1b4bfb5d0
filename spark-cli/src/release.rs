//! `spark go-nogo`, `spark ritual` and `spark release-notes`: parse, call
//! spark-release, print.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;
use spark_release::{Acceptance, RitualOptions, RitualReport, Settings, SignOff};

use crate::db::SPARK_MIGRATIONS;
use crate::output::{CmdResult, Failure, Output};
use crate::progress::StepBar;

/// Where the configuration is when `--config` is not given.
const DEFAULT_CONFIG: &str = "spark.toml";

/// What GO/NO-GO and the ritual share.
#[derive(Debug, Args)]
pub(crate) struct SignArgs {
    /// The configuration (the scan's sections and `[release]`) [default:
    /// spark.toml in the working directory, when present].
    #[arg(long)]
    config: Option<PathBuf>,
    /// The directory the evidence goes to, new or empty [default:
    /// `evidence/RELEASE` for the ritual, `evidence/go-nogo_RELEASE_UTC-STAMP`
    /// for go-nogo on its own].
    #[arg(long)]
    evidence_dir: Option<PathBuf>,
    /// A sign-off, `ROLE=NAME` (repeatable): every role in `[release]
    /// roles` must sign (default roles: DevOps lead, CTO, product owner).
    #[arg(long = "sign", value_name = "ROLE=NAME")]
    signers: Vec<SignOff>,
    /// Accept one item's warning, `ITEM=NAME` (repeatable); NAME must have
    /// signed. Items: scan, backup, migrations, rollback-rehearsed,
    /// canary-plan, burn-rate-alerts, baseline, supply-chain, flags,
    /// sign-offs. A failure cannot be accepted.
    #[arg(long = "accept-warning", value_name = "ITEM=NAME")]
    acceptances: Vec<Acceptance>,
}

#[derive(Debug, Args)]
pub(crate) struct GoNoGoArgs {
    /// The release.
    #[arg(long)]
    release: String,
    #[command(flatten)]
    sign: SignArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RitualArgs {
    /// The release.
    release: String,
    #[command(flatten)]
    sign: SignArgs,
    /// The ed25519 private key that signs `manifest.json` (`spark keygen`).
    #[arg(long)]
    sign_key: Option<PathBuf>,
    /// The artifact being released [default: `supply_chain.artifact`].
    #[arg(long)]
    artifact: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ReleaseNotesArgs {
    /// The release.
    release: String,
    /// The evidence: the canary run's trail and rollback records (also one
    /// directory down).
    #[arg(long)]
    evidence_dir: PathBuf,
    /// The remaining risks, a TOML file of `[[risk]]` tables (description,
    /// owner, due, mitigation, status).
    #[arg(long)]
    risks: Option<PathBuf>,
    /// Write the Markdown here instead of printing it; never overwrites.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub(crate) fn options(release: String, sign: SignArgs, ritual: bool) -> anyhow::Result<RitualOptions> {
    let settings = match &sign.config {
        Some(path) => Settings::load(path, true)?,
        None => Settings::load(DEFAULT_CONFIG.as_ref(), false)?,
    };
    let dir = sign.evidence_dir.unwrap_or_else(|| {
        let name = if ritual {
            release.clone()
        } else {
            // Beside the ritual's bundle, never in it; one per decision.
            format!("go-nogo_{release}_{}", spark_evidence::utc_stamp(spark_db::system_clock().now_ms()))
        };
        PathBuf::from("evidence").join(name)
    });
    let mut options = RitualOptions::new(release, settings, dir);
    options.signers = sign.signers;
    options.acceptances = sign.acceptances;
    options.migrations = SPARK_MIGRATIONS.to_vec();
    Ok(options)
}

/// Prints the report; exit 0 on GO, 1 on NO-GO.
pub(crate) fn verdict(report: &RitualReport, out: &Output) -> CmdResult {
    out.emit(report, || report.table())?;
    if report.go_nogo.is_go() { Ok(()) } else { Err(Failure::No) }
}

pub(crate) async fn run_go_nogo(args: GoNoGoArgs, out: &Output) -> CmdResult {
    let options = options(args.release, args.sign, false)?;
    let bar = StepBar::new(4, out.is_json());
    let report = spark_release::run_go_nogo(options, &bar).await;
    bar.finish();
    verdict(&report?, out)
}

pub(crate) async fn run_ritual(args: RitualArgs, out: &Output) -> CmdResult {
    let mut options = options(args.release, args.sign, true)?;
    if let Some(path) = &args.sign_key {
        options.sign_key = Some(spark_evidence::keys::load_signing_key(path)?);
    }
    options.artifact = args.artifact;
    let bar = StepBar::new(spark_release::Step::ALL.len(), out.is_json());
    let report = spark_release::run_ritual(options, &bar).await;
    bar.finish();
    verdict(&report?, out)
}

pub(crate) fn run_release_notes(args: ReleaseNotesArgs, out: &Output) -> CmdResult {
    let risks = args.risks.as_deref().map(spark_release::load_risks).transpose()?.unwrap_or_default();
    let now = spark_db::Clock::now_ms(&spark_db::SystemClock);
    let notes = spark_release::release_notes(&args.release, &args.evidence_dir, risks, &spark_release_time(now))?;
    match &args.out {
        Some(path) => {
            crate::output::write_new(path, notes.markdown.as_bytes())?;
            let summary = json!({"out": path, "stages": notes.trail.as_ref().map_or(0, |t| t.stages.len()),
                "rollbacks": notes.rollbacks.len(), "risks": notes.risks.len()});
            out.emit(&summary, || format!("wrote {}", path.display()))
        }
        None => out.emit(&notes, || notes.markdown.clone()),
    }
}

fn spark_release_time(ms: i64) -> String {
    spark_rollback::rfc3339(ms)
}
