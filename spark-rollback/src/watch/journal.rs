//! The watch's journal, `first_night_<release>.jsonl`: one JSON line when
//! the watch starts, one per interval, one at the end. It is the record:
//! the Markdown report is rendered from it, and a restarted watch resumes
//! from it.
//!
//! Each line is appended whole and synced before the watch goes on, so a
//! crash loses at most the line being written; a torn last line (no
//! newline, not JSON) is cut off when the journal is opened again. Any
//! other line that does not parse is an error naming it: a journal is
//! evidence, and the watch never guesses over a damaged one.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::baseline::BaselineRef;
use super::{CheckResult, WatchSummary};
use crate::error::RollbackError;
use crate::trigger::TriggerStatus;

/// The `format` of a journal's start line.
pub const JOURNAL_FORMAT: &str = "spark-watch/v1";

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant, reason = "lines are read once per watch, never held by the thousand")]
pub enum JournalLine {
    /// The watch started.
    Start(WatchStart),
    /// One interval's evaluation.
    Interval(IntervalRecord),
    /// A rollback is about to run (journaled before its first action).
    RollbackStarted(RollbackStarted),
    /// The watch ended.
    End(WatchSummary),
}

/// The start line: what is watched, from when, for how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchStart {
    /// Always [`JOURNAL_FORMAT`].
    pub format: String,
    /// The release.
    pub release: String,
    /// When the watch started, RFC 3339.
    pub started_at: String,
    /// The same, milliseconds since the epoch.
    pub started_at_ms: i64,
    /// How long it watches, seconds.
    pub duration_seconds: u64,
    /// How often it evaluates, seconds.
    pub interval_seconds: u64,
    /// The query resolution, seconds.
    pub step_seconds: u32,
    /// The SLO objective the budget is measured against.
    pub slo_objective: f64,
    /// The GO-time baseline, if one was given.
    pub baseline: Option<BaselineRef>,
    /// The median of each signal at GO time (signals without GO-time data
    /// are absent), shown beside each interval's values.
    #[serde(default)]
    pub baseline_medians: BTreeMap<String, f64>,
}

/// One interval: what was measured, what fired, what was done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntervalRecord {
    /// The interval's number, from 1.
    pub n: u32,
    /// The evaluation instant, RFC 3339.
    pub at: String,
    /// The same, milliseconds.
    pub at_ms: i64,
    /// Evaluated from Prometheus's history after a restart, later than its
    /// instant: its quick checks were not run (they measure the present)
    /// and it starts no rollback.
    pub caught_up: bool,
    /// Why the metrics could not be read, when they could not.
    pub source_error: Option<String>,
    /// The release's latest value of each signal in the interval; `null`
    /// when it had none.
    pub values: BTreeMap<String, Option<f64>>,
    /// Which series stood for the release, per signal: `canary`,
    /// `baseline` or `unlabelled`.
    #[serde(default)]
    pub roles: BTreeMap<String, String>,
    /// The error-budget burn rate over the last hour (the 5xx ratio over
    /// what the SLO allows).
    pub burn_1h: Option<f64>,
    /// The same over the last six hours.
    pub burn_6h: Option<f64>,
    /// Requests the release served in the interval (Σ rate × step).
    pub requests: f64,
    /// Of which those whose 5xx ratio was known: what the budget judges.
    #[serde(default)]
    pub judged: f64,
    /// Of which failed (5xx).
    pub failed: f64,
    /// The share of the watch's error budget left after this interval: 1
    /// untouched, 0 spent, negative overspent; `null` before any request.
    pub budget_left: Option<f64>,
    /// Every trigger's status.
    pub triggers: BTreeMap<String, TriggerStatus>,
    /// The triggers firing, with the values they judged.
    pub firing: Vec<Firing>,
    /// The quick checks.
    pub checks: Vec<CheckResult>,
    /// Signals whose live answer had several unlabelled series (left
    /// missing).
    pub ambiguous: Vec<String>,
    /// What was sent to Slack.
    pub notifications: Vec<Sent>,
    /// The rollback this interval started.
    pub rollback: Option<RollbackRef>,
    /// The snapshot the firing evaluation read, replayable with
    /// `spark canary replay`.
    pub snapshot: Option<FileRef>,
}

/// A firing trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Firing {
    /// The trigger's id.
    pub trigger: String,
    /// Why, in words.
    pub detail: String,
    /// The values it judged.
    pub values: BTreeMap<String, Option<f64>>,
}

/// One Slack message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sent {
    /// What it was about: `fired` or `blind`.
    pub about: String,
    /// `delivered`, `failed` or `not_configured`.
    pub outcome: String,
    /// Tries made.
    pub attempts: u32,
    /// What happened (never the URL).
    pub detail: String,
}

/// A rollback started by the watch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackRef {
    /// Its evidence bundle directory (empty when none was written).
    pub bundle: String,
    /// Whether every action succeeded.
    pub succeeded: bool,
    /// The trigger that started it.
    pub trigger: String,
    /// Why its outcome is not known: its evidence could not be written, or
    /// the watch stopped while it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RollbackRef {
    /// A rollback that started and was never journaled as done.
    pub(crate) fn in_doubt(trigger: &str) -> RollbackRef {
        RollbackRef {
            bundle: String::new(),
            succeeded: false,
            trigger: trigger.to_owned(),
            error: Some(
                "the watch stopped while this rollback ran: whether its actions completed is unknown; look for a \
                 rollback_* bundle in the evidence directory and check the deployment"
                    .to_owned(),
            ),
        }
    }
}

/// The line journaled just before a rollback's first action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackStarted {
    /// The interval that decided it.
    pub n: u32,
    /// Its instant, RFC 3339.
    pub at: String,
    /// The trigger.
    pub trigger: String,
}

/// An evidence file and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// The file name in the evidence directory.
    pub name: String,
    /// Its SHA-256.
    pub sha256: String,
}

/// The journal file and the lines it holds.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    /// Opened once, locked, and written through: the lock and the writes
    /// are on the same file even if the path is moved.
    file: std::fs::File,
    pub(crate) lines: Vec<JournalLine>,
}

impl Journal {
    /// Opens (or starts) the journal at `path` and takes its exclusive lock
    /// (one watch per journal: two would page twice and roll back twice;
    /// the kernel's `flock`, so a crashed watch leaves none behind), then
    /// reads it, cutting off a torn last line.
    pub(crate) fn open(path: &Path, release: &str) -> Result<Journal, RollbackError> {
        let io = |source| RollbackError::Io { path: path.to_owned(), source };
        let mut file = std::fs::OpenOptions::new().create(true).read(true).append(true).open(path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(RollbackError::Watch(format!(
                    "another watch of {release} is running on {}: one watch per journal (stop the other first)",
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        // Bytes, not a string: a line torn inside a multi-byte character
        // must be cut off like any other torn line.
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes).map_err(io)?;
        let mut lines = Vec::new();
        let mut offset = 0;
        let mut parts = bytes.split_inclusive(|b| *b == b'\n').peekable();
        while let Some(raw) = parts.next() {
            let number = lines.len() + 1;
            let torn = parts.peek().is_none() && !raw.ends_with(b"\n");
            let text = raw.strip_suffix(b"\n").unwrap_or(raw);
            match serde_json::from_slice::<JournalLine>(text) {
                Ok(line) if !torn => lines.push(line),
                // Written whole but the newline was lost: keep the line.
                Ok(line) => {
                    file.write_all(b"\n").and_then(|()| file.sync_data()).map_err(io)?;
                    lines.push(line);
                }
                Err(_) if torn => {
                    tracing::warn!(path = %path.display(), line = number, "cutting off the journal's torn last line");
                    file.set_len(u64::try_from(offset).unwrap_or(u64::MAX))
                        .and_then(|()| file.sync_data())
                        .map_err(io)?;
                }
                Err(e) => {
                    return Err(RollbackError::Watch(format!(
                        "{}: line {number} is not a journal line ({e}); the journal is evidence, so the watch does not guess: move it away to start afresh",
                        path.display()
                    )));
                }
            }
            offset += raw.len();
        }
        if let Some(first) = lines.first()
            && !matches!(first, JournalLine::Start(s) if s.format == JOURNAL_FORMAT)
        {
            return Err(RollbackError::Watch(format!(
                "{}: the first line is not a {JOURNAL_FORMAT} start line",
                path.display()
            )));
        }
        Ok(Journal { path: path.to_owned(), file, lines })
    }

    /// Appends `line` and syncs it to disk.
    pub(crate) fn append(&mut self, line: JournalLine) -> Result<(), RollbackError> {
        let io = |source| RollbackError::Io { path: self.path.clone(), source };
        let mut text = serde_json::to_string(&line)
            .map_err(|e| RollbackError::Watch(format!("cannot encode a journal line: {e}")))?;
        text.push('\n');
        self.file.write_all(text.as_bytes()).and_then(|()| self.file.sync_data()).map_err(io)?;
        self.lines.push(line);
        Ok(())
    }

    pub(crate) fn start(&self) -> Option<&WatchStart> {
        match self.lines.first() {
            Some(JournalLine::Start(s)) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn end(&self) -> Option<&WatchSummary> {
        self.lines.iter().find_map(|l| match l {
            JournalLine::End(s) => Some(s),
            _ => None,
        })
    }
}
