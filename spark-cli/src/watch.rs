//! `spark watch`: the first night after a release reached 100 %, by
//! `spark_rollback::watch`, with the clock, pgbouncer and backup checks of
//! `spark_checks` as its quick checks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use spark_checks::{Config, Context, Status};
use spark_evidence::EvidenceDir;
use spark_rollback::{
    CheckResult, CheckStatus, Engine, GoBaseline, Plan, PrometheusSource, QuickChecks, RollbackEnv, Verdict,
    WatchContext, WatchOptions, WatchSummary,
};

use crate::canary::{parse_duration, parse_step};
use crate::db::SPARK_MIGRATIONS;
use crate::output::{CmdResult, Failure, Output};

/// The checks run at every interval.
const QUICK_CHECKS: [&str; 3] = ["clock", "pgbouncer", "backup"];

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// The release watched; names `first_night_<release>.md` and `.jsonl`.
    #[arg(long)]
    release: String,
    /// The Prometheus the release's metrics come from.
    #[arg(long)]
    prometheus: String,
    /// How long to watch.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    duration: Duration,
    /// How often to evaluate.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    interval: Duration,
    /// The query resolution; it must divide the interval [default: the
    /// largest divisor of the interval up to 15s].
    #[arg(long, value_parser = parse_step)]
    step: Option<u32>,
    /// The GO-time baseline: the ritual's `baseline_metrics_<release>.txt` or
    /// a metrics snapshot (JSON) [default: none; triggers judge the release
    /// alone].
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// The canary plan (TOML): triggers, SLO, queries and the `[rollback]`
    /// section [default: the built-in plan].
    #[arg(long)]
    plan: Option<PathBuf>,
    /// Where the report, the journal and any rollback's evidence go.
    #[arg(long, default_value = "evidence")]
    evidence_dir: PathBuf,
    /// The environment variable holding the Slack incoming-webhook URL; a
    /// trigger that starts firing is posted there at once.
    #[arg(long)]
    slack_env: Option<String>,
    /// On a firing trigger, run the plan's rollback (as `spark rollback`
    /// would) and end the watch.
    #[arg(long)]
    rollback: bool,
    /// The ed25519 key (`spark keygen`) that signs a rollback's bundle.
    #[arg(long, requires = "rollback")]
    sign_key: Option<PathBuf>,
    /// The configuration of the quick checks (clock, pgbouncer, backup)
    /// [default: spark.toml in the working directory, when present].
    #[arg(long)]
    config: Option<PathBuf>,
}

/// The clock, pgbouncer and backup checks of a `spark.toml`.
struct Checks {
    ctx: Arc<Context>,
}

#[async_trait::async_trait]
impl QuickChecks for Checks {
    async fn run(&self) -> Vec<CheckResult> {
        let only: Vec<String> = QUICK_CHECKS.iter().map(|s| (*s).to_owned()).collect();
        let Ok(checks) = spark_checks::select(spark_checks::checks::all(), &only) else { return Vec::new() };
        let report = spark_checks::scan(&self.ctx, checks).await;
        report
            .checks
            .iter()
            .map(|o| CheckResult {
                id: o.id.clone(),
                status: match o.status {
                    Status::Pass => CheckStatus::Pass,
                    Status::Skip => CheckStatus::Skip,
                    Status::Warn => CheckStatus::Warn,
                    Status::Fail => CheckStatus::Fail,
                },
                summary: o.summary.clone(),
            })
            .collect()
    }
}

/// Exit 0 for a clean night, 1 otherwise (an incident, a rollback, a failed
/// check or unreadable metrics), 3 when interrupted (run it again to
/// resume), 2 for bad input.
pub(crate) async fn run(args: WatchArgs, out: &Output) -> CmdResult {
    let command_started = spark_db::Clock::now_ms(&spark_db::SystemClock);
    let plan = match &args.plan {
        Some(path) => Plan::load(path)?,
        None => Plan::default(),
    };
    if args.rollback && plan.rollback.actions.is_empty() {
        return Err(anyhow::anyhow!(
            "--rollback needs a plan with [[rollback.actions]] (--plan FILE); the built-in plan has none"
        )
        .into());
    }
    let mut options = WatchOptions::new(args.release.clone(), args.duration, args.interval)?.rollback(args.rollback);
    if let Some(step) = args.step {
        options = options.step_seconds(step)?;
    }
    if let Some(path) = &args.baseline {
        options = options.baseline(GoBaseline::load(path)?);
    }
    if let Some(variable) = &args.slack_env {
        if std::env::var(variable).map_or(true, |v| v.trim().is_empty()) {
            return Err(anyhow::anyhow!("--slack-env {variable}: the variable is not set").into());
        }
        options = options.slack_env(variable.clone());
    }
    let config = match &args.config {
        Some(path) => Config::load(path, true)?,
        None => Config::load("spark.toml".as_ref(), false)?,
    };
    let checks = Checks { ctx: Arc::new(Context::new(config).with_migrations(&SPARK_MIGRATIONS)) };
    let engine = Engine::new(plan)?;
    let source = PrometheusSource::new(&args.prometheus)?;
    let mut env = RollbackEnv::new(spark_db::system_clock())?.metrics(
        Arc::new(PrometheusSource::new(&args.prometheus)?),
        crate::rollback::METRICS_WINDOW,
        crate::rollback::METRICS_STEP_SECONDS,
    );
    if let Some(path) = &args.sign_key {
        env = env.sign_key(spark_evidence::keys::load_signing_key(path)?);
    }
    let evidence = EvidenceDir::create(&args.evidence_dir)?;
    let json = out.is_json();
    let mut evaluated = 0_u32;
    let progress = |r: &spark_rollback::IntervalRecord| {
        evaluated += 1;
        if json {
            return;
        }
        let state = match (&r.source_error, r.firing.is_empty()) {
            (Some(e), _) => format!("metrics unreadable: {e}"),
            (None, true) => "nothing fired".to_owned(),
            (None, false) => {
                let ids: Vec<&str> = r.firing.iter().map(|f| f.trigger.as_str()).collect();
                format!("FIRING: {}", ids.join(", "))
            }
        };
        let budget = r.budget_left.map_or_else(|| "unknown".to_owned(), |b| format!("{:.1} %", b * 100.0));
        let late = if r.caught_up { " (from history)" } else { "" };
        eprintln!("interval {} at {}{late}: {state}; error budget left {budget}", r.n, r.at);
    };
    // The handler is installed now, by a task the runtime starts at once, so
    // a Ctrl-C during the first evaluation is not the default exit. The watch
    // looks at it only between intervals.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let journal = args.evidence_dir.join(options.journal_name());
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("stopping after this interval (Ctrl-C again to stop now)");
            let _ = tx.send(());
        }
        // A second Ctrl-C stops at once: a rollback cut off is journaled as
        // started, so the watch resumed never runs it twice.
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("stopped; run the same command to resume from {}", journal.display());
            std::process::exit(3);
        }
    });
    let stop = async move {
        if rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let cx = WatchContext { engine: &engine, source: &source, checks: Some(&checks), env: &env, evidence: &evidence };
    let Some(summary) = spark_rollback::watch(cx, &options, progress, stop).await? else {
        eprintln!(
            "interrupted; the journal {} keeps every interval so far: run the same command to resume",
            args.evidence_dir.join(options.journal_name()).display()
        );
        return Err(Failure::Hold);
    };
    let ended = chrono::DateTime::parse_from_rfc3339(&summary.ended_at).map(|t| t.timestamp_millis());
    if evaluated == 0 && ended.is_ok_and(|t| t < command_started) {
        eprintln!(
            "the watch of {} already ended at {}; this is its summary (move {} away to watch again)",
            summary.release,
            summary.ended_at,
            args.evidence_dir.join(options.journal_name()).display()
        );
    }
    let text = text(&summary, &args.evidence_dir);
    if summary.verdict == Verdict::Clean { out.emit(&summary, || text) } else { out.refuse(&summary, &text, true) }
}

fn text(s: &WatchSummary, dir: &std::path::Path) -> String {
    let consumed =
        s.budget_consumed.map_or_else(|| "unknown (no requests)".to_owned(), |c| format!("{:.1} %", c * 100.0));
    let mut t = format!(
        "first night of {}: {}\n{} intervals from {} to {}\nerror budget consumed: {consumed} ({:.1} failed of {:.0} requests)\n\
         quick-check failures: {}; metrics unreadable: {}",
        s.release,
        s.verdict.name(),
        s.intervals,
        s.started_at,
        s.ended_at,
        s.failed,
        s.requests,
        s.check_failures,
        s.source_errors
    );
    if s.incidents.is_empty() {
        t.push_str("\nincidents: none");
    }
    for i in &s.incidents {
        let rollback = i.rollback.as_ref().map_or_else(String::new, |rb| match &rb.error {
            Some(e) => format!("; rolled back, outcome UNKNOWN: {e}"),
            None => format!(
                "; rolled back ({}), evidence {}",
                if rb.succeeded { "succeeded" } else { "an action FAILED" },
                rb.bundle
            ),
        });
        t.push_str(&format!(
            "\nincident: {} fired from {} to {} ({} intervals); Slack {}{rollback}",
            i.trigger, i.first_at, i.last_at, i.intervals, i.notified
        ));
    }
    t.push_str(&format!("\nreport: {}", dir.join(&s.report).display()));
    t
}
