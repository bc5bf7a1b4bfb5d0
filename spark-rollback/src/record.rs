//! The rollback record and its evidence files: the record as text and
//! JSON, the metrics before and after, each file's SHA-256.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use spark_evidence::{EvidenceDir, EvidenceError, EvidenceFile, Redactor, SigningKey, utc_stamp};

use crate::action::ActionRecord;
use crate::engine::{Evaluation, rfc3339};
use crate::notify::{Notification, NotifyOutcome};
use crate::rollback::{RollbackPlan, RollbackRequest};
use crate::snapshot::Snapshot;
use crate::source::Range;
use crate::trigger::TriggerStatus;

/// The `format` of a rollback record.
pub const RECORD_FORMAT: &str = "spark-rollback-record/v1";

/// The targets: decision to first action, and the whole rollback
/// without the commands' own run time.
const FIRST_ACTION_TARGET_MS: i64 = 1_000;
const TOTAL_TARGET_MS: i64 = 5_000;

/// How long the rollback took, milliseconds, measured with the injected
/// clock from the decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timing {
    /// From the decision to the start of the first action (none without
    /// actions). Target: under 1 s.
    pub decision_to_first_action_ms: Option<i64>,
    /// From the decision to the end of the last action and the
    /// notification.
    pub decision_to_completion_ms: i64,
    /// How long the commands themselves ran.
    pub commands_ms: u64,
    /// `decision_to_completion_ms` without the commands' run time. Target:
    /// under 5 s.
    pub excluding_commands_ms: i64,
    /// When the actions and the notification were done.
    pub completed_at: String,
    /// Reading the metrics and writing the evidence, after completion.
    pub evidence_ms: u64,
}

impl Timing {
    pub(crate) fn new(
        decided_at_ms: i64,
        first_action_ms: Option<i64>,
        completed_at_ms: i64,
        commands_ms: u64,
    ) -> Timing {
        let total = completed_at_ms - decided_at_ms;
        Timing {
            decision_to_first_action_ms: first_action_ms.map(|t| t - decided_at_ms),
            decision_to_completion_ms: total,
            commands_ms,
            excluding_commands_ms: total - i64::try_from(commands_ms).unwrap_or(i64::MAX),
            completed_at: rfc3339(completed_at_ms),
            evidence_ms: 0,
        }
    }
}

/// What a rollback did: the request, every action, the notification, the
/// timing, the database note and the evidence files. Every text in it is
/// redacted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RollbackRecord {
    /// Always [`RECORD_FORMAT`].
    pub format: &'static str,
    /// Why.
    pub reason: String,
    /// The stage rolled back.
    pub stage: String,
    /// The trigger that decided it.
    pub trigger: Option<String>,
    /// When it was decided, RFC 3339.
    pub decided_at: String,
    /// When it was decided, milliseconds since the epoch.
    pub decided_at_ms: i64,
    /// Whether nothing was run.
    pub dry_run: bool,
    /// The engine's evaluation, when the request carried it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<Evaluation>,
    /// Every action, in order.
    pub actions: Vec<ActionRecord>,
    /// The Slack notification.
    pub notification: Notification,
    /// Whether the release carried a database migration.
    pub release_has_migration: bool,
    /// The database restore runbook.
    pub runbook: String,
    /// How long it took.
    pub timing: Timing,
    /// The metrics file before the rollback.
    pub metrics_before: Option<EvidenceFile>,
    /// The metrics file after it.
    pub metrics_after: Option<EvidenceFile>,
    /// The bundle directory the files are in, `rollback_<stamp>/` inside
    /// the evidence directory.
    pub bundle: PathBuf,
    /// Every evidence file written, the record's own two included (so not
    /// in the record's JSON file, which cannot hold its own digest).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<EvidenceFile>,
    /// The bundle's `manifest.json`, written last (so not in the record's
    /// JSON file either).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<EvidenceFile>,
    /// Whether the manifest is signed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub signed: bool,
}

/// The metrics at one end of the rollback.
#[derive(Debug, Clone)]
pub(crate) enum MetricsEvidence {
    NotConfigured,
    Snapshot { source: String, range: Range, snapshot: Snapshot },
    Failed { source: String, range: Range, error: String },
}

impl RollbackRecord {
    pub(crate) fn new(
        request: &RollbackRequest,
        rollback: &RollbackPlan,
        actions: Vec<ActionRecord>,
        notification: Notification,
        timing: Timing,
    ) -> RollbackRecord {
        RollbackRecord {
            format: RECORD_FORMAT,
            reason: request.reason.clone(),
            stage: request.stage.clone(),
            trigger: request.trigger.clone(),
            decided_at: rfc3339(request.decided_at_ms),
            decided_at_ms: request.decided_at_ms,
            dry_run: request.dry_run,
            evaluation: request.evaluation.clone(),
            actions,
            notification,
            release_has_migration: rollback.release_has_migration,
            runbook: rollback.runbook.clone(),
            timing,
            metrics_before: None,
            metrics_after: None,
            bundle: PathBuf::new(),
            files: Vec::new(),
            manifest: None,
            signed: false,
        }
    }

    /// Whether every action succeeded (a dry run's recorded actions count
    /// as succeeded; the notification never counts).
    #[must_use]
    pub fn succeeded(&self) -> bool {
        !self.actions.iter().any(|a| a.outcome.is_failure())
    }

    /// The first evidence file written whose name starts with `prefix`
    /// (`rollback_` is the text record).
    #[must_use]
    pub fn file(&self, prefix: &str) -> Option<&EvidenceFile> {
        self.files.iter().find(|f| f.name.starts_with(prefix))
    }

    /// Creates the bundle directory, writes the four files into it (the
    /// metrics first so the record carries their digests) and seals it.
    pub(crate) fn write(
        &mut self,
        evidence: &EvidenceDir,
        redactor: &Redactor,
        before: &MetricsEvidence,
        after: &MetricsEvidence,
        evidence_start: Instant,
        key: Option<&SigningKey>,
    ) -> Result<(), EvidenceError> {
        let (dir, stamp) = new_bundle(evidence.path(), &utc_stamp(self.decided_at_ms))?;
        self.bundle = dir.path().to_owned();
        let before_text = redactor.redact(&before.render("before the rollback", "the decision"));
        let before_file = dir.write(&format!("metrics_before_rollback_{stamp}.txt"), before_text.as_bytes())?;
        let after_text = redactor.redact(&after.render("after the rollback", "the completion"));
        let after_file = dir.write(&format!("metrics_after_rollback_{stamp}.txt"), after_text.as_bytes())?;
        self.metrics_before = Some(before_file.clone());
        self.metrics_after = Some(after_file.clone());
        self.timing.evidence_ms = u64::try_from(evidence_start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let text = dir.write(&format!("rollback_{stamp}.txt"), redactor.redact(&self.to_text()).as_bytes())?;
        let json = serde_json::to_string_pretty(self).unwrap_or_default() + "\n";
        let json = dir.write(&format!("rollback_{stamp}.json"), redactor.redact(&json).as_bytes())?;
        self.files = vec![text, json, before_file, after_file];
        self.manifest = Some(spark_evidence::seal(dir.path(), key, self.decided_at_ms)?);
        self.signed = key.is_some();
        Ok(())
    }

    /// The record as the text of `rollback_<stamp>.txt`.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "Spark rollback record ({RECORD_FORMAT})");
        if self.dry_run {
            let _ = writeln!(t, "DRY RUN: nothing below was run or called; it records what would have been.");
        }
        let _ = writeln!(t);
        let _ = writeln!(t, "reason:      {}", self.reason);
        let _ = writeln!(t, "stage:       {}", self.stage);
        let _ = writeln!(t, "trigger:     {}", self.trigger.as_deref().unwrap_or("(none given)"));
        let _ = writeln!(t, "decided at:  {}", self.decided_at);
        let _ = writeln!(t, "completed:   {}", self.timing.completed_at);
        let _ = writeln!(t, "\nDecision trail");
        match &self.evaluation {
            None => {
                let _ = writeln!(t, "  no engine evaluation was given: the rollback was requested directly");
            }
            Some(e) => trail(&mut t, e),
        }
        let _ = writeln!(t, "\nActions ({}, in order; a failed action does not stop the next)", self.actions.len());
        if self.actions.is_empty() {
            let _ = writeln!(t, "  none configured ([[rollback.actions]] in the plan)");
        }
        for a in &self.actions {
            let _ = writeln!(t, "  {}. {}: {}", a.index + 1, a.kind, a.target);
            let mut line = format!("     {}: {}", a.outcome.name(), a.detail);
            if let Some(code) = a.exit_code {
                let _ = write!(line, "; exit status {code}");
            }
            if let Some(status) = a.http_status {
                let _ = write!(line, "; HTTP {status}");
            }
            let _ = writeln!(t, "{line}; {} ms; started {}", a.duration_ms, rfc3339(a.started_at_ms));
            for (name, output) in [("stdout", &a.stdout), ("stderr", &a.stderr)] {
                if !output.is_empty() {
                    let _ = writeln!(t, "     {name}:");
                    for l in output.lines() {
                        let _ = writeln!(t, "       | {l}");
                    }
                }
            }
        }
        let n = &self.notification;
        let _ = writeln!(t, "\nSlack notification");
        let _ = writeln!(t, "  {}: {}", n.outcome.name(), n.detail);
        if n.outcome != NotifyOutcome::NotConfigured {
            let _ = writeln!(t, "  attempts: {}; {} ms", n.attempts, n.duration_ms);
            let _ = writeln!(t, "  text: {}", n.text);
        }
        let tm = &self.timing;
        let _ = writeln!(t, "\nTiming");
        match tm.decision_to_first_action_ms {
            Some(ms) => {
                let _ =
                    writeln!(t, "  decision to first action:      {ms} ms ({})", verdict(ms, FIRST_ACTION_TARGET_MS));
            }
            None => {
                let _ = writeln!(t, "  decision to first action:      (no action)");
            }
        }
        let _ = writeln!(t, "  decision to completion:        {} ms", tm.decision_to_completion_ms);
        let _ = writeln!(t, "  commands' own run time:        {} ms", tm.commands_ms);
        let _ = writeln!(
            t,
            "  rollback without the commands: {} ms ({})",
            tm.excluding_commands_ms,
            verdict(tm.excluding_commands_ms, TOTAL_TARGET_MS)
        );
        let _ = writeln!(t, "  metrics and evidence after:    {} ms", tm.evidence_ms);
        let _ = writeln!(t, "\nDatabase");
        let _ =
            writeln!(t, "  the release carried a migration: {}", if self.release_has_migration { "YES" } else { "no" });
        let _ =
            writeln!(t, "  database changes are never rolled back automatically; restore runbook: {}", self.runbook);
        let _ = writeln!(t, "\nMetrics (SHA-256)");
        for file in [&self.metrics_before, &self.metrics_after].into_iter().flatten() {
            let _ = writeln!(t, "  {}  {}", file.sha256, file.name);
        }
        t
    }
}

/// A new directory `rollback_<base>` (or `rollback_<base>_2`, `_3`… when
/// taken) inside `parent`, and the stamp its files carry. `create_dir` fails
/// atomically on an existing directory, so two rollbacks decided within one
/// second, even in two processes, never share (or overwrite) a bundle.
fn new_bundle(parent: &Path, base: &str) -> Result<(EvidenceDir, String), EvidenceError> {
    let mut stamp = base.to_owned();
    for n in 2..=10_000 {
        let path = parent.join(format!("rollback_{stamp}"));
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok((EvidenceDir::create(&path)?, stamp)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => stamp = format!("{base}_{n}"),
            Err(source) => return Err(EvidenceError::Io { path, source }),
        }
    }
    // Ten thousand rollbacks in one second is a loop gone wrong, not a
    // release: refuse rather than spin.
    Err(EvidenceError::Exists { path: parent.join(format!("rollback_{stamp}")) })
}

fn verdict(ms: i64, target_ms: i64) -> String {
    if ms < target_ms {
        format!("target < {} s: met", target_ms / 1000)
    } else {
        format!("target < {} s: MISSED", target_ms / 1000)
    }
}

/// The decision, the triggers that fired or held, with their values, and
/// the gates.
fn trail(t: &mut String, e: &Evaluation) {
    let _ = writeln!(t, "  {} at {} (stage {}): {}", e.decision.kind(), rfc3339(e.at_ms), e.stage, e.reason);
    for tr in &e.triggers {
        if matches!(tr.status, TriggerStatus::Firing | TriggerStatus::Platform) {
            let values: Vec<String> = tr.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let status = if tr.status == TriggerStatus::Firing { "FIRING" } else { "platform" };
            let _ = writeln!(t, "  trigger {} {status}: {} [{}]", tr.id, tr.detail, values.join(", "));
        }
    }
    for g in &e.gates {
        let value = g.value.map_or_else(|| "no recent value".to_owned(), |v| v.to_string());
        let threshold = g.threshold.map(|v| format!(" (bound {v})")).unwrap_or_default();
        let _ = writeln!(t, "  gate {}: {:?}, {value}{threshold}", g.name, g.status);
    }
}

impl MetricsEvidence {
    /// A summary per signal, then the snapshot JSON; or why there is none.
    fn render(&self, when: &str, end: &str) -> String {
        let mut t = format!("Metrics {when}\n");
        match self {
            MetricsEvidence::NotConfigured => {
                let _ = writeln!(
                    t,
                    "\nNo metrics source was configured (spark rollback --prometheus URL), so no metrics were recorded {when}."
                );
            }
            MetricsEvidence::Failed { source, range, error } => {
                source_and_range(&mut t, source, range, end);
                let _ = writeln!(t, "\nThe metrics source failed, so no snapshot was recorded: {error}");
            }
            MetricsEvidence::Snapshot { source, range, snapshot } => {
                source_and_range(&mut t, source, range, end);
                let _ = writeln!(
                    t,
                    "\nThe latest value of each signal (missing data is shown as missing, never as zero):\n"
                );
                t.push_str(&snapshot.summary());
                let _ =
                    writeln!(t, "\nThe snapshot ({}), replayable with spark canary replay:\n", crate::snapshot::FORMAT);
                t.push_str(&snapshot.to_json());
                t.push('\n');
            }
        }
        t
    }
}

/// The `source:` and `range:` lines both recorded outcomes start with.
fn source_and_range(t: &mut String, source: &str, range: &Range, end: &str) {
    let _ = writeln!(t, "source: {source}");
    let _ = writeln!(
        t,
        "range:  {} to {} ({end}), step {}s",
        rfc3339(range.start_ms),
        rfc3339(range.end_ms),
        range.step_seconds
    );
}
