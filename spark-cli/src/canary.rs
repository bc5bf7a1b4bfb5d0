//! `spark canary plan|evaluate|replay` and `spark metrics snapshot`: the
//! canary engine of spark-rollback from the command line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;
use spark_evidence::EvidenceDir;
use spark_rollback::{
    Decision, Engine, Evaluation, FileSource, GateResult, MetricSource, Metrics, Plan, PrometheusSource, Range, Replay,
    RollbackEnv, RollbackRequest, RunOptions, RunOutcome, Signal, TriggerResult, TriggerStatus, evaluate_live, rfc3339,
    run_canary,
};

use crate::output::{CmdResult, Failure, Output};

#[derive(Debug, Subcommand)]
pub(crate) enum CanaryCommand {
    /// Print the stages, gates and triggers of a plan (the built-in default
    /// without --plan); --toml prints it as a plan file to start from.
    Plan {
        /// The plan file (TOML).
        #[arg(long)]
        plan: Option<PathBuf>,
        /// Print the whole plan as TOML.
        #[arg(long, conflicts_with = "json")]
        toml: bool,
    },
    /// Decide one instant of a stage: exit 0 continue or promote, 1 rollback,
    /// 3 hold.
    Evaluate(EvaluateArgs),
    /// Evaluate every interval from the stage start and stop at the first
    /// promote or rollback: exit 0 continue or promote, 1 rollback, 3 hold.
    Replay(ReplayArgs),
    /// Drive a release through the plan against Prometheus: set each
    /// stage's weight (the plan's `[weights]`), evaluate every interval,
    /// promote, hold, or stop on a rollback; the trail goes to
    /// `canary_run_<release>.jsonl`. Exit 0 completed, 1 rolled back or a
    /// weight could not be set, 3 interrupted (Ctrl-C).
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The release (file names, SPARK_CANARY_RELEASE for the weight command).
    #[arg(long)]
    release: String,
    /// The plan file (TOML) [default: the built-in plan].
    #[arg(long)]
    plan: Option<PathBuf>,
    /// The Prometheus to evaluate against.
    #[arg(long)]
    prometheus: String,
    /// Evaluate and record without changing any weight.
    #[arg(long)]
    dry_run: bool,
    /// The stage to start at, such as 25% [default: the first].
    #[arg(long)]
    from_stage: Option<String>,
    /// The query resolution.
    #[arg(long, default_value = "15s", value_parser = parse_step)]
    step: u32,
    /// Where the trail and the final snapshot go.
    #[arg(long, default_value = "evidence")]
    evidence_dir: PathBuf,
    /// The ed25519 private key (`spark keygen`) that signs a rollback's
    /// sealed bundle [default: sealed unsigned].
    #[arg(long)]
    sign_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct EvaluateArgs {
    /// The plan file (TOML) [default: the built-in plan].
    #[arg(long)]
    plan: Option<PathBuf>,
    /// Read live from this Prometheus.
    #[arg(long, required_unless_present = "snapshot", conflicts_with = "snapshot")]
    prometheus: Option<String>,
    /// Read from a snapshot file.
    #[arg(long)]
    snapshot: Option<PathBuf>,
    /// The stage, such as 25%.
    #[arg(long)]
    stage: String,
    /// When the stage started (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    since: i64,
    /// The instant to decide (RFC 3339) [default: now].
    #[arg(long, value_parser = parse_time)]
    at: Option<i64>,
    /// The query resolution against Prometheus.
    #[arg(long, default_value = "15s", value_parser = parse_step)]
    step: u32,
}

#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// The plan file (TOML) [default: the built-in plan].
    #[arg(long)]
    plan: Option<PathBuf>,
    /// The snapshot file to replay.
    #[arg(long)]
    snapshot: PathBuf,
    /// The stage, such as 25%.
    #[arg(long)]
    stage: String,
    /// When the stage started (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    since: i64,
    /// The last instant to evaluate (RFC 3339) [default: the snapshot's end].
    #[arg(long, value_parser = parse_time)]
    until: Option<i64>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum MetricsCommand {
    /// Record the plan's signals from Prometheus into a snapshot file
    /// (spark-metrics-snapshot/v1) that `spark canary replay` reads.
    Snapshot {
        /// The Prometheus to query.
        #[arg(long)]
        prometheus: String,
        /// Where to write the snapshot.
        #[arg(long)]
        out: PathBuf,
        /// How far back from now.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        range: Duration,
        /// The resolution.
        #[arg(long, default_value = "15s", value_parser = parse_step)]
        step: u32,
        /// The plan whose queries to use [default: the built-in plan].
        #[arg(long)]
        plan: Option<PathBuf>,
    },
}

fn parse_time(s: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("{s:?} is not an RFC 3339 time such as 2026-11-26T10:00:00Z ({e})"))
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration such as 15s or 1h ({e})"))
}

pub(crate) fn parse_step(s: &str) -> Result<u32, String> {
    let d = parse_duration(s)?;
    if d.subsec_nanos() != 0 || d.is_zero() {
        return Err(format!("{s:?} is not a whole number of seconds of at least 1s"));
    }
    u32::try_from(d.as_secs()).map_err(|_| format!("{s:?} is too long"))
}

fn load_plan(path: Option<&Path>) -> anyhow::Result<Plan> {
    Ok(match path {
        Some(path) => Plan::load(path)?,
        None => Plan::default(),
    })
}

pub(crate) async fn run(cmd: CanaryCommand, out: &Output) -> CmdResult {
    match cmd {
        CanaryCommand::Plan { plan, toml } => {
            let plan = load_plan(plan.as_deref())?;
            if toml {
                crate::output::print_line(plan.to_toml().trim_end())?;
                return Ok(());
            }
            out.emit(&plan.describe(), || plan.to_text())
        }
        CanaryCommand::Evaluate(args) => evaluate(args, out).await,
        CanaryCommand::Run(args) => run_release(args, out).await,
        CanaryCommand::Replay(args) => {
            let engine = Engine::new(load_plan(args.plan.as_deref())?)?;
            let stage = engine.plan().stage(&args.stage)?.clone();
            let source = FileSource::open(&args.snapshot)?;
            let metrics = Metrics::from_snapshot(source.snapshot())?;
            let replay = engine.replay(&metrics, &stage, args.since, args.until)?;
            out.emit(&replay, || replay_text(&replay))?;
            exit_for(replay.decision())
        }
    }
}

async fn evaluate(args: EvaluateArgs, out: &Output) -> CmdResult {
    let engine = Engine::new(load_plan(args.plan.as_deref())?)?;
    let stage = engine.plan().stage(&args.stage)?.clone();
    let at = args.at.unwrap_or_else(|| spark_db::system_clock().now_ms());
    let source: Box<dyn MetricSource> = match (&args.prometheus, &args.snapshot) {
        (Some(url), _) => Box::new(PrometheusSource::new(url)?),
        (None, Some(path)) => Box::new(FileSource::open(path)?),
        (None, None) => unreachable!("clap requires one of --prometheus and --snapshot"),
    };
    let (evaluation, _) = evaluate_live(&engine, source.as_ref(), &stage, args.since, at, args.step)
        .await
        .with_context(|| format!("evaluating against {}", source.describe()))?;
    out.emit(&evaluation, || evaluation_text(&evaluation))?;
    exit_for(&evaluation.decision)
}

async fn run_release(args: RunArgs, out: &Output) -> CmdResult {
    let engine = Engine::new(load_plan(args.plan.as_deref())?)?;
    let first_stage = match &args.from_stage {
        Some(name) => {
            let wanted = engine.plan().stage(name)?.weight;
            engine.plan().stages.iter().position(|s| s.weight == wanted).unwrap_or(0)
        }
        None => 0,
    };
    let source = PrometheusSource::new(&args.prometheus)?;
    // Read the key before the run: a bad key file must stop it before any
    // weight is set, not when a rollback needs it.
    let sign_key = args.sign_key.as_deref().map(spark_evidence::keys::load_signing_key).transpose()?;
    let setter = spark_rollback::weights::setter(&engine.plan().weights, &args.release);
    let options = RunOptions {
        release: args.release.clone(),
        dry_run: args.dry_run,
        step_seconds: args.step,
        evidence_dir: args.evidence_dir.clone(),
        first_stage,
    };
    let stop = async {
        // Without a signal handler the run cannot be interrupted cleanly;
        // it then runs to its end.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let report = run_canary(&engine, &source, setter.as_deref(), spark_db::system_clock(), &options, stop).await?;
    // The engine decided to roll back: run the plan's rollback at once (in a
    // dry run, record what it would do), with the evaluation that fired.
    let rollback = match &report.outcome {
        RunOutcome::RolledBack(evaluation) => {
            let mut env = RollbackEnv::new(spark_db::system_clock())?.metrics(
                Arc::new(PrometheusSource::new(&args.prometheus)?),
                crate::rollback::METRICS_WINDOW,
                crate::rollback::METRICS_STEP_SECONDS,
            );
            if let Some(key) = sign_key {
                env = env.sign_key(key);
            }
            let evidence = EvidenceDir::create(&args.evidence_dir)?;
            let request = RollbackRequest::new(evaluation.reason.clone(), evaluation.stage.clone(), evaluation.at_ms)
                .evaluation((**evaluation).clone())
                .dry_run(args.dry_run);
            Some(spark_rollback::execute(engine.plan(), &request, &env, &evidence).await?)
        }
        _ => None,
    };
    let (kind, detail, result) = match &report.outcome {
        RunOutcome::Completed => ("completed", "every stage promoted".to_owned(), Ok(())),
        RunOutcome::RolledBack(e) => ("rollback", e.reason.clone(), Err(Failure::No)),
        RunOutcome::Interrupted { stage } => ("interrupted", format!("stopped at {stage}"), Err(Failure::Hold)),
        RunOutcome::WeightFailed { stage, error } => {
            ("weight-failed", format!("stage {stage}: {error}"), Err(Failure::No))
        }
    };
    let snapshot = report.save_final_snapshot(&engine, &source, &options).await?;
    let snapshot = snapshot.as_ref().map(|p| p.display().to_string());
    let json = json!({
        "release": args.release,
        "outcome": kind,
        "detail": detail,
        "trail": report.trail.display().to_string(),
        "snapshot": snapshot,
        "rollback": rollback,
    });
    out.emit(&json, || {
        let mut text = format!("{kind}: {detail}\ntrail: {}", report.trail.display());
        if let Some(record) = &rollback {
            text.push('\n');
            text.push_str(&crate::rollback::text(record));
        }
        text
    })?;
    result
}

pub(crate) async fn run_metrics(cmd: MetricsCommand, out: &Output) -> CmdResult {
    let MetricsCommand::Snapshot { prometheus, out: path, range, step, plan } = cmd;
    let plan = load_plan(plan.as_deref())?;
    let source = PrometheusSource::new(&prometheus)?;
    let end = spark_db::system_clock().now_ms();
    let start = end - i64::try_from(range.as_millis()).context("--range is too long")?;
    let snapshot = source.fetch(&plan, Range { start_ms: start, end_ms: end, step_seconds: step }).await?;
    snapshot.save(&path)?;
    let series: usize = snapshot.signals.values().map(|m| m.result.len()).sum();
    let empty: Vec<&str> = Signal::ALL
        .iter()
        .filter(|s| snapshot.signals.get(s.name()).is_none_or(|m| m.result.is_empty()))
        .map(|s| s.name())
        .collect();
    let report = json!({
        "out": path.display().to_string(),
        "from": rfc3339(start),
        "to": rfc3339(end),
        "step_seconds": step,
        "series": series,
        "signals_without_data": empty,
    });
    out.emit(&report, || {
        let mut text =
            format!("wrote {} ({series} series, {} to {}, step {step}s)", path.display(), rfc3339(start), rfc3339(end));
        if !empty.is_empty() {
            text.push_str(&format!("\nno data (missing, not zero): {}", empty.join(", ")));
        }
        text
    })
}

/// Exit 0 continue or promote, 1 rollback, 3 hold.
fn exit_for(decision: &Decision) -> CmdResult {
    match decision {
        Decision::Continue | Decision::Promote => Ok(()),
        Decision::Rollback { .. } => Err(Failure::No),
        Decision::Hold { .. } => Err(Failure::Hold),
    }
}

fn value(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v}"))
}

fn gate_line(g: &GateResult) -> String {
    let status = serde_json::to_value(g.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    format!("  {:<15} {:>12}  threshold {:<10} {status}", g.name, value(g.value), value(g.threshold))
}

fn trigger_line(t: &TriggerResult) -> String {
    let status = serde_json::to_value(t.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    let values: Vec<String> = t.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let detail = if t.detail.is_empty() { String::new() } else { format!(" — {}", t.detail) };
    format!("  {:<25} {:<12} {}{detail}", t.id.id(), status, values.join(" "))
}

fn evaluation_text(e: &Evaluation) -> String {
    let trigger = e.decision.trigger().map(|t| format!(" by {t}")).unwrap_or_default();
    let mut lines = vec![
        format!("{}{trigger} at {} (stage {})", e.decision.kind(), rfc3339(e.at_ms), e.stage),
        format!("reason: {}", e.reason),
        "gates:".to_owned(),
    ];
    lines.extend(e.gates.iter().map(gate_line));
    lines.push("triggers:".to_owned());
    // Quiet triggers on one line; the others one per line.
    let (quiet, loud): (Vec<&TriggerResult>, Vec<&TriggerResult>) =
        e.triggers.iter().partition(|t| t.status == TriggerStatus::Ok);
    lines.extend(loud.into_iter().map(trigger_line));
    if !quiet.is_empty() {
        let ids: Vec<&str> = quiet.iter().map(|t| t.id.id()).collect();
        lines.push(format!("  ok: {}", ids.join(", ")));
    }
    lines.join("\n")
}

fn replay_text(r: &Replay) -> String {
    let mut lines: Vec<String> = r
        .trail
        .iter()
        .map(|t| {
            let trigger = t.trigger.map(|t| format!(" ({t})")).unwrap_or_default();
            format!("{}  {}{trigger}  {}", rfc3339(t.at_ms), t.decision, t.reason)
        })
        .collect();
    lines.push(String::new());
    lines.push(evaluation_text(&r.last));
    lines.join("\n")
}
