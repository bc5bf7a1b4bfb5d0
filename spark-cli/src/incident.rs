//! `spark incident new`: an incident report from a rollback's evidence, or
//! a blank one with the current metrics, by `spark_release`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::json;
use spark_release::IncidentOptions;
use spark_rollback::MetricSource as _;

use crate::output::{CmdResult, Output};

#[derive(Debug, Subcommand)]
pub(crate) enum IncidentCommand {
    /// Write an incident report in Markdown: from a rollback record
    /// (summary, impact, timeline, trigger, actions, every evidence file
    /// with its digest), or blank with --title.
    New(NewArgs),
}

#[derive(Debug, Args)]
pub(crate) struct NewArgs {
    /// The rollback record, `rollback_<stamp>.json` in its bundle.
    #[arg(long, conflicts_with = "prometheus")]
    from_rollback: Option<PathBuf>,
    /// The title [default with --from-rollback: the trigger and the stage].
    #[arg(long, required_unless_present = "from_rollback")]
    title: Option<String>,
    /// SEV1 (most severe) to SEV4.
    #[arg(long, default_value = "SEV2")]
    severity: String,
    /// The release, when known.
    #[arg(long)]
    release: Option<String>,
    /// The availability objective the error budget is measured against.
    #[arg(long, default_value_t = 0.999)]
    slo: f64,
    /// A blank report: take the metrics of the last 15 minutes from this
    /// Prometheus (loopback or not: it is only read) and keep them beside
    /// the report.
    #[arg(long, requires = "out")]
    prometheus: Option<String>,
    /// Write the Markdown here instead of printing it; never overwrites.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub(crate) async fn run(cmd: IncidentCommand, out: &Output) -> CmdResult {
    let IncidentCommand::New(args) = cmd;
    let now = spark_db::Clock::now_ms(&spark_db::SystemClock);
    let mut options = IncidentOptions::new(now);
    options.title = args.title;
    options.severity = args.severity;
    options.release = args.release;
    options.slo_objective = args.slo;
    // Checked before anything is fetched or written, so a refused run
    // leaves no file behind that would block the next.
    options.validate()?;
    if let Some(path) = &args.out
        && path.exists()
    {
        return Err(anyhow::anyhow!("{} exists (a report is never overwritten)", path.display()).into());
    }
    let incident = match &args.from_rollback {
        Some(record) => spark_release::incident_from_rollback(record, &options)?,
        None => {
            let snapshot = match (&args.prometheus, &args.out) {
                (Some(url), Some(report)) => Some(snapshot_now(url, report, now).await?),
                _ => None,
            };
            let attached = snapshot.as_ref().map(|(name, s)| (name.as_str(), s));
            spark_release::blank_incident(&options, attached)?
        }
    };
    match &args.out {
        Some(path) => {
            crate::output::write_new(path, incident.markdown.as_bytes())?;
            let summary = json!({"out": path, "title": incident.title, "timeline": incident.timeline, "evidence": incident.evidence});
            out.emit(&summary, || format!("wrote {}", path.display()))
        }
        None => {
            out.emit(&json!({"title": incident.title, "markdown": incident.markdown}), || incident.markdown.clone())
        }
    }
}

/// The default plan's signals over the last 15 minutes, written beside the
/// report as `<report stem>_metrics.json`.
async fn snapshot_now(url: &str, report: &Path, now: i64) -> anyhow::Result<(String, spark_rollback::Snapshot)> {
    let source = spark_rollback::PrometheusSource::new(url)?;
    let range = spark_rollback::Range { start_ms: now - 15 * 60_000, end_ms: now, step_seconds: 15 };
    let snapshot = source.fetch(&spark_rollback::Plan::default(), range).await?;
    let stem = report.file_stem().and_then(|s| s.to_str()).unwrap_or("incident");
    let name = format!("{stem}_metrics.json");
    crate::output::write_new(&report.with_file_name(&name), snapshot.to_json().as_bytes())?;
    Ok((name, snapshot))
}
