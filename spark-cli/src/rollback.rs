//! `spark rollback`: the plan's rollback actions, the Slack notification and
//! the evidence, by `spark_rollback::execute`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use spark_evidence::EvidenceDir;
use spark_rollback::{Plan, PrometheusSource, RollbackEnv, RollbackRecord, RollbackRequest, TriggerId};

use crate::output::{CmdResult, Output};

/// How much metrics history the evidence records before the decision and
/// before the completion, and at what resolution.
pub(crate) const METRICS_WINDOW: Duration = Duration::from_secs(15 * 60);
pub(crate) const METRICS_STEP_SECONDS: u32 = 15;

#[derive(Debug, Args)]
pub(crate) struct RollbackArgs {
    /// Why: recorded, and given to commands as SPARK_ROLLBACK_REASON.
    #[arg(long)]
    reason: String,
    /// The stage rolled back, such as 25% (one of the plan's).
    #[arg(long)]
    stage: String,
    /// The trigger that decided it, such as api_p95.
    #[arg(long)]
    trigger: Option<String>,
    /// The plan file (TOML) with the `[rollback]` section [default: the
    /// built-in plan, which has no actions].
    #[arg(long)]
    plan: Option<PathBuf>,
    /// Record what would be run and called; run and call nothing.
    #[arg(long)]
    dry_run: bool,
    /// Record the metrics before and after from this Prometheus.
    #[arg(long)]
    prometheus: Option<String>,
    /// Where the evidence goes: a new sealed bundle `rollback_UTC-STAMP`
    /// inside.
    #[arg(long, default_value = "evidence")]
    evidence_dir: PathBuf,
    /// The ed25519 private key (`spark keygen`) that signs the bundle's
    /// manifest [default: sealed unsigned].
    #[arg(long)]
    sign_key: Option<PathBuf>,
}

/// Exit 0 when every action succeeded (or a dry run), 1 when one failed.
pub(crate) async fn run(args: RollbackArgs, out: &Output) -> CmdResult {
    let clock = spark_db::system_clock();
    // The operator's command is the decision: its latency starts here.
    let decided_at_ms = clock.now_ms();
    let plan = match &args.plan {
        Some(path) => Plan::load(path)?,
        None => Plan::default(),
    };
    let stage = plan.stage(&args.stage)?.weight.to_string();
    if let Some(trigger) = &args.trigger
        && TriggerId::from_id(trigger).is_none()
    {
        let known: Vec<&str> = TriggerId::ALL.iter().map(|t| t.id()).collect();
        return Err(
            anyhow::anyhow!("--trigger {trigger:?} is not a trigger; the triggers are {}", known.join(", ")).into()
        );
    }
    let mut env = RollbackEnv::new(clock)?;
    if let Some(path) = &args.sign_key {
        env = env.sign_key(spark_evidence::keys::load_signing_key(path)?);
    }
    if let Some(url) = &args.prometheus {
        env = env.metrics(Arc::new(PrometheusSource::new(url)?), METRICS_WINDOW, METRICS_STEP_SECONDS);
    }
    let evidence = EvidenceDir::create(&args.evidence_dir)?;
    let mut request = RollbackRequest::new(args.reason, stage, decided_at_ms).dry_run(args.dry_run);
    if let Some(trigger) = args.trigger {
        request = request.trigger(trigger);
    }
    let record = spark_rollback::execute(&plan, &request, &env, &evidence).await?;
    let text = text(&record);
    if record.succeeded() { out.emit(&record, || text) } else { out.refuse(&record, &text, true) }
}

pub(crate) fn text(r: &RollbackRecord) -> String {
    let failed = r.actions.iter().filter(|a| a.outcome.is_failure()).count();
    let mut t = format!(
        "{}rollback of stage {}: {}{}",
        if r.dry_run { "DRY RUN (nothing run or called): " } else { "" },
        r.stage,
        r.reason,
        r.trigger.as_deref().map(|t| format!(" (trigger {t})")).unwrap_or_default()
    );
    let _ = write!(t, "\n{} actions, {failed} failed", r.actions.len());
    for a in &r.actions {
        let _ = write!(
            t,
            "\n  {}. {} {}: {} ({}; {} ms)",
            a.index + 1,
            a.kind,
            a.target,
            a.outcome.name(),
            a.detail,
            a.duration_ms
        );
    }
    let n = &r.notification;
    let _ = write!(t, "\nslack: {} ({})", n.outcome.name(), n.detail);
    let tm = &r.timing;
    let first = tm.decision_to_first_action_ms.map_or_else(|| "no action".to_owned(), |ms| format!("{ms} ms"));
    let _ = write!(
        t,
        "\ndecision to first action {first}; rollback without the commands' run time {} ms",
        tm.excluding_commands_ms
    );
    if r.release_has_migration {
        let _ = write!(t, "\nthe release carried a database migration, which is not rolled back: {}", r.runbook);
    }
    let sealed = if r.signed { "sealed and signed" } else { "sealed unsigned" };
    let _ = write!(t, "\nevidence: {} ({sealed}; spark evidence verify checks it)", r.bundle.display());
    for f in r.files.iter().chain(&r.manifest) {
        let _ = write!(t, "\n  {}  {}", f.sha256, f.path.display());
    }
    t
}
