//! Driving a release through the plan: set each stage's weight, evaluate
//! every interval against a live source, promote, hold or stop on a
//! rollback, and write the decision trail as it goes.
//!
//! The trail (`canary_run_<release>.jsonl`) gets a line before and after
//! every weight change, so a run stopped between the two (Ctrl-C, a crash)
//! never leaves a weight set that the trail does not show, and one line per
//! evaluation with the decision and the six gates (name, value, bound,
//! status): what release notes are written from.

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::time::Duration;

use serde_json::json;
use spark_db::SharedClock;

use crate::engine::{Decision, Engine, Evaluation, rfc3339};
use crate::error::RollbackError;
use crate::live::evaluate_live;
use crate::snapshot::Snapshot;
use crate::source::{MetricSource, Range};
use crate::weights::WeightSetter;

/// What a run is told besides the plan.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The release, for file names and the weight command.
    pub release: String,
    /// Evaluate and record, but never change a weight.
    pub dry_run: bool,
    /// The query resolution, seconds.
    pub step_seconds: u32,
    /// Where the trail and the final snapshot go.
    pub evidence_dir: PathBuf,
    /// The stage to start at (by position in the plan).
    pub first_stage: usize,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// Every stage was promoted.
    Completed,
    /// The engine decided to roll back: the evaluation that did.
    RolledBack(Box<Evaluation>),
    /// Stopped from outside (Ctrl-C) at this stage.
    Interrupted {
        /// The stage it was at.
        stage: String,
    },
    /// A stage's weight could not be set: the stage and why.
    WeightFailed {
        /// The stage.
        stage: String,
        /// Why.
        error: String,
    },
}

/// What a run wrote.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// How it ended.
    pub outcome: RunOutcome,
    /// The decision trail.
    pub trail: PathBuf,
    /// When the run started, milliseconds.
    pub started_ms: i64,
    /// When it ended, milliseconds.
    pub ended_ms: i64,
}

struct Trail {
    path: PathBuf,
    file: std::fs::File,
}

impl Trail {
    fn open(dir: &Path, release: &str) -> Result<Trail, RollbackError> {
        std::fs::create_dir_all(dir).map_err(|source| RollbackError::Io { path: dir.to_owned(), source })?;
        let path = dir.join(format!("canary_run_{release}.jsonl"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| RollbackError::Io { path: path.clone(), source })?;
        Ok(Trail { path, file })
    }

    /// One JSON line, flushed and synced: the trail must survive the
    /// process.
    fn line(&mut self, value: &serde_json::Value) -> Result<(), RollbackError> {
        let io = |source| RollbackError::Io { path: self.path.clone(), source };
        writeln!(self.file, "{value}").map_err(io)?;
        self.file.sync_data().map_err(|source| RollbackError::Io { path: self.path.clone(), source })
    }
}

/// Runs the release through the plan's stages from `options.first_stage`,
/// until every stage is promoted, the engine rolls back, a weight cannot be
/// set, or `stop` completes (Ctrl-C). Weights are set through `weights`
/// (not in a dry run); time comes from `clock`, and the run sleeps on tokio's
/// timer between evaluations.
///
/// # Errors
/// [`RollbackError::Io`] when the trail cannot be written, and
/// [`RollbackError::UnknownStage`] for a first stage past the plan's end.
pub async fn run_canary(
    engine: &Engine,
    source: &dyn MetricSource,
    weights: Option<&dyn WeightSetter>,
    clock: SharedClock,
    options: &RunOptions,
    stop: impl Future<Output = ()>,
) -> Result<RunReport, RollbackError> {
    let plan = engine.plan();
    let stages = plan.stages.get(options.first_stage..).filter(|s| !s.is_empty()).ok_or_else(|| {
        RollbackError::UnknownStage {
            given: format!("stage #{}", options.first_stage + 1),
            known: plan.stages.iter().map(|s| s.weight.to_string()).collect(),
        }
    })?;
    // The release names files: it must not climb out of the evidence dir.
    if options.release.is_empty() || options.release.contains(['/', '\\', '\0']) || options.release.contains("..") {
        return Err(RollbackError::Range(format!(
            "release {:?} cannot name a file: use letters, digits, dots, dashes and underscores",
            options.release
        )));
    }
    let mut trail = Trail::open(&options.evidence_dir, &options.release)?;
    let interval = plan.interval;
    let mut stop = pin!(stop);
    let run_start = clock.now_ms();
    trail.line(&json!({
        "event": "start", "at": rfc3339(run_start), "release": options.release, "dry_run": options.dry_run,
        "source": source.describe(), "weights": weights.map(WeightSetter::describe),
    }))?;
    let mut outcome = RunOutcome::Completed;
    'stages: for stage in stages {
        let name = stage.weight.to_string();
        if options.dry_run {
            trail.line(
                &json!({"event": "weight", "at": rfc3339(clock.now_ms()), "stage": name, "status": "dry-run: not set"}),
            )?;
        } else if let Some(setter) = weights {
            trail
                .line(&json!({"event": "weight", "at": rfc3339(clock.now_ms()), "stage": name, "status": "setting"}))?;
            let result = setter.set(stage.weight).await;
            let status = if result.is_ok() { "set" } else { "failed" };
            trail.line(&json!({
                "event": "weight", "at": rfc3339(clock.now_ms()), "stage": name, "status": status,
                "error": result.as_ref().err(),
            }))?;
            if let Err(error) = result {
                outcome = RunOutcome::WeightFailed { stage: name, error };
                break 'stages;
            }
        } else {
            trail.line(&json!({"event": "weight", "at": rfc3339(clock.now_ms()), "stage": name, "status": "no [weights] configured: not set"}))?;
        }
        let since = clock.now_ms();
        let mut errors = 0u32;
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = &mut stop => {
                    trail.line(&json!({"event": "interrupted", "at": rfc3339(clock.now_ms()), "stage": name}))?;
                    outcome = RunOutcome::Interrupted { stage: name };
                    break 'stages;
                }
            }
            let at = clock.now_ms();
            let evaluation = match evaluate_live(engine, source, stage, since, at, options.step_seconds).await {
                Ok((evaluation, _)) => {
                    errors = 0;
                    evaluation
                }
                Err(RollbackError::Source(error)) => {
                    errors += 1;
                    let reason = format!("source error {errors}: {error}");
                    let decision = if errors >= crate::engine::SOURCE_ERRORS_BEFORE_HOLD { "hold" } else { "continue" };
                    trail.line(&json!({"event": "evaluation", "at": rfc3339(at), "stage": name, "decision": decision, "trigger": null, "reason": reason}))?;
                    continue;
                }
                Err(other) => {
                    // Not the source: the run cannot go on. Say so in the
                    // trail before returning, with the weight left as set.
                    let at = clock.now_ms();
                    trail.line(&json!({"event": "end", "at": rfc3339(at), "outcome": "error", "stage": name, "error": other.to_string()}))?;
                    return Err(other);
                }
            };
            trail.line(&json!({
                "event": "evaluation", "at": rfc3339(at), "stage": name,
                "decision": evaluation.decision.kind(), "trigger": evaluation.decision.trigger(),
                "reason": evaluation.reason, "gates": evaluation.gates,
            }))?;
            match evaluation.decision {
                Decision::Promote => continue 'stages,
                Decision::Rollback { .. } => {
                    outcome = RunOutcome::RolledBack(Box::new(evaluation));
                    break 'stages;
                }
                Decision::Continue | Decision::Hold { .. } => {}
            }
        }
    }
    let end = clock.now_ms();
    let kind = match &outcome {
        RunOutcome::Completed => "completed",
        RunOutcome::RolledBack(_) => "rollback",
        RunOutcome::Interrupted { .. } => "interrupted",
        RunOutcome::WeightFailed { .. } => "weight-failed",
    };
    trail.line(&json!({"event": "end", "at": rfc3339(end), "outcome": kind, "seconds": Duration::from_millis(u64::try_from(end - run_start).unwrap_or(0)).as_secs_f64()}))?;
    Ok(RunReport { outcome, trail: trail.path, started_ms: run_start, ended_ms: end })
}

impl RunReport {
    /// Fetches everything the run saw (from its start to its end) and saves
    /// it as `canary_run_<release>_final_snapshot.json`, for replay and
    /// evidence; a source error is recorded in the trail instead. Called
    /// after the rollback, so that fetching never delays it.
    ///
    /// # Errors
    /// [`RollbackError::Io`] when the snapshot or the trail cannot be
    /// written.
    pub async fn save_final_snapshot(
        &self,
        engine: &Engine,
        source: &dyn MetricSource,
        options: &RunOptions,
    ) -> Result<Option<PathBuf>, RollbackError> {
        let range = Range { start_ms: self.started_ms, end_ms: self.ended_ms, step_seconds: options.step_seconds };
        match source.fetch(engine.plan(), range).await {
            Ok(snapshot) => Ok(Some(save_snapshot(&snapshot, &options.evidence_dir, &options.release)?)),
            Err(error) => {
                // The release names files: it must not climb out of the evidence dir.
                if options.release.is_empty()
                    || options.release.contains(['/', '\\', '\0'])
                    || options.release.contains("..")
                {
                    return Err(RollbackError::Range(format!(
                        "release {:?} cannot name a file: use letters, digits, dots, dashes and underscores",
                        options.release
                    )));
                }
                let mut trail = Trail::open(&options.evidence_dir, &options.release)?;
                trail.line(&json!({"event": "snapshot", "error": error.to_string()}))?;
                Ok(None)
            }
        }
    }
}

fn save_snapshot(snapshot: &Snapshot, dir: &Path, release: &str) -> Result<PathBuf, RollbackError> {
    let path = dir.join(format!("canary_run_{release}_final_snapshot.json"));
    snapshot.save(&path)?;
    Ok(path)
}
