//! A one-page release note written from the evidence, never typed by hand.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{ReleaseError, check_release_name};
use crate::risks::{RISKS_ASKED, Risk};
use crate::trail::{GATES, Trail, read_trail};

/// The template the notes fill (`.github/RELEASE_NOTES_TEMPLATE.md` holds
/// the same text; a test keeps them equal). Placeholders: `{{release}}`,
/// `{{summary}}`, `{{stages}}`, `{{metrics}}`, `{{rollbacks}}`, `{{risks}}`,
/// `{{evidence}}`.
pub const TEMPLATE: &str = include_str!("release_notes_template.md");

/// How long before a run a rollback rehearsal still belongs to it.
const REHEARSAL_BEFORE_MS: i64 = 24 * 3_600_000;
/// How long after a run's last event its rollback may have been recorded.
const AFTER_RUN_MS: i64 = 3_600_000;

/// A rollback as its record tells it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RollbackEvent {
    /// The trigger, or `manual`.
    pub trigger: String,
    /// When it was decided, RFC 3339.
    pub decided_at: String,
    /// The stage rolled back.
    pub stage: String,
    /// From the decision to the last action done, milliseconds.
    pub recovery_ms: i64,
    /// Whether it was a rehearsal.
    pub dry_run: bool,
    /// The record file, relative to the evidence directory.
    pub evidence: String,
    /// Its SHA-256.
    pub sha256: String,
}

/// What the notes were written from.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseNotes {
    /// The release.
    pub release: String,
    /// The canary run's trail, when there was one.
    pub trail: Option<Trail>,
    /// Every rollback record found.
    pub rollbacks: Vec<RollbackEvent>,
    /// The remaining risks.
    pub risks: Vec<Risk>,
    /// The evidence files read, with their SHA-256 (relative paths).
    pub evidence: Vec<(String, String)>,
    /// The GO/NO-GO line of the ritual's record, when there is one.
    pub go_nogo: Option<String>,
    /// The Markdown.
    pub markdown: String,
}

/// Writes the release notes for `release` from `evidence_dir`: the canary
/// trail `canary_run_<release>.jsonl`, the rollback records
/// (`rollback_*.json`, also one directory down; with a trail, only those
/// decided from 24 h before the run to 1 h after it), the ritual's
/// `go_nogo_signed_<release>.txt` when present, and `risks`. Looks for the
/// files in `evidence_dir` and its direct subdirectories.
///
/// # Errors
/// [`ReleaseError::ReleaseName`], [`ReleaseError::Read`] and
/// [`ReleaseError::Invalid`] for an unreadable or malformed trail or
/// record; [`ReleaseError::Invalid`] when neither a trail nor a rollback
/// record is there (notes from nothing would be typed by hand after all).
pub fn release_notes(
    release: &str,
    evidence_dir: &Path,
    risks: Vec<Risk>,
    generated_at: &str,
) -> Result<ReleaseNotes, ReleaseError> {
    check_release_name(release)?;
    if !evidence_dir.is_dir() {
        return Err(ReleaseError::Invalid { path: evidence_dir.to_owned(), message: "not a directory".to_owned() });
    }
    let files = files_one_deep(evidence_dir);
    let mut evidence = Vec::new();
    let mut digest = |path: &Path| -> Result<Vec<u8>, ReleaseError> {
        let bytes = std::fs::read(path).map_err(|source| ReleaseError::Read { path: path.to_owned(), source })?;
        evidence.push((relative(evidence_dir, path), spark_evidence::sha256_hex(&bytes)));
        Ok(bytes)
    };
    let trail_name = format!("canary_run_{release}.jsonl");
    let trail = match files.iter().find(|p| p.file_name().is_some_and(|n| *n == *trail_name)) {
        Some(path) => {
            digest(path)?;
            Some(read_trail(path)?)
        }
        None => None,
    };
    let snapshot_name = format!("canary_run_{release}_final_snapshot.json");
    if let Some(path) = files.iter().find(|p| p.file_name().is_some_and(|n| *n == *snapshot_name)) {
        digest(path)?;
    }
    let go_name = format!("go_nogo_signed_{release}.txt");
    let mut go_nogo = None;
    if let Some(path) = files.iter().find(|p| p.file_name().is_some_and(|n| *n == *go_name)) {
        let text = String::from_utf8_lossy(&digest(path)?).into_owned();
        go_nogo = text.lines().find_map(|l| l.strip_prefix("verdict:").map(|v| v.trim().to_owned()));
    }
    // A directory may hold other releases' rollbacks: with a trail, only
    // real rollbacks decided during the run (or up to an hour after it), and
    // rehearsals (dry runs) from a day before it, belong to this release.
    let window = trail.as_ref().and_then(|t| Some((t.first_ms?, t.last_ms? + AFTER_RUN_MS)));
    let mut rollbacks = Vec::new();
    for path in files.iter().filter(|p| is_rollback_record(p)) {
        let bytes = std::fs::read(path).map_err(|source| ReleaseError::Read { path: path.clone(), source })?;
        let record: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ReleaseError::Invalid { path: path.clone(), message: format!("not JSON: {e}") })?;
        if record["format"] != spark_rollback::RECORD_FORMAT {
            continue;
        }
        let decided = record["decided_at_ms"].as_i64().unwrap_or(0);
        let lead = if record["dry_run"] == true { REHEARSAL_BEFORE_MS } else { 0 };
        if window.is_some_and(|(from, to)| decided < from.saturating_sub(lead) || decided > to) {
            continue;
        }
        let sha256 = spark_evidence::sha256_hex(&bytes);
        evidence.push((relative(evidence_dir, path), sha256.clone()));
        rollbacks.push(RollbackEvent {
            trigger: record["trigger"].as_str().unwrap_or("manual").to_owned(),
            decided_at: record["decided_at"].as_str().unwrap_or_default().to_owned(),
            stage: record["stage"].as_str().unwrap_or_default().to_owned(),
            recovery_ms: record["timing"]["decision_to_completion_ms"].as_i64().unwrap_or(0),
            dry_run: record["dry_run"] == true,
            // The file the digest is of (its `.txt` twin sits beside it).
            evidence: relative(evidence_dir, path),
            sha256,
        });
    }
    rollbacks.sort_by(|a, b| a.decided_at.cmp(&b.decided_at));
    if trail.is_none() && rollbacks.is_empty() {
        return Err(ReleaseError::Invalid {
            path: evidence_dir.to_owned(),
            message: format!("neither {trail_name} nor a rollback record is there: nothing to write the notes from"),
        });
    }
    let mut notes = ReleaseNotes {
        release: release.to_owned(),
        trail,
        rollbacks,
        risks,
        evidence,
        go_nogo,
        markdown: String::new(),
    };
    let values = BTreeMap::from([
        ("release", release.to_owned()),
        ("summary", summary(&notes, evidence_dir, generated_at)),
        ("stages", stages_table(notes.trail.as_ref())),
        ("metrics", metrics_table(notes.trail.as_ref())),
        ("rollbacks", rollbacks_table(&notes.rollbacks)),
        ("risks", risks_table(&notes.risks)),
        ("evidence", evidence_list(&notes.evidence)),
    ]);
    notes.markdown = fill(TEMPLATE, &values)
        .map_err(|message| ReleaseError::Invalid { path: PathBuf::from("release_notes_template.md"), message })?;
    Ok(notes)
}

/// Replaces every `{{name}}` with its value.
///
/// # Errors
/// The name of a placeholder that has no value.
pub(crate) fn fill(template: &str, values: &BTreeMap<&str, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| "an unclosed {{ in the template".to_owned())?;
        let name = after[..end].trim();
        let value = values.get(name).ok_or_else(|| format!("the template names {{{{{name}}}}}, which has no value"))?;
        out.push_str(value.trim_end());
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `path` is named as a rollback record (`rollback_*.json`).
pub(crate) fn is_rollback_record(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("rollback_") && n.ends_with(".json"))
}

/// Every file in `dir` and in its direct subdirectories (each rollback's
/// bundle is one).
pub(crate) fn files_one_deep(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Ok(inner) = std::fs::read_dir(&path) {
                out.extend(inner.flatten().map(|e| e.path()).filter(|p| p.is_file()));
            }
        } else if path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn relative(base: &Path, path: &Path) -> String {
    path.strip_prefix(base).unwrap_or(path).display().to_string()
}

/// A Markdown table cell: pipes escaped, one line.
pub(crate) fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn summary(notes: &ReleaseNotes, dir: &Path, generated_at: &str) -> String {
    let mut t = format!(
        "Written by `spark release-notes` from the evidence in `{}` at {generated_at}; nothing below was typed by hand.\n\n",
        dir.display()
    );
    match &notes.trail {
        None => t.push_str("- Canary: no canary run trail in the evidence.\n"),
        Some(trail) => {
            let last = trail.stages.last();
            let outcome = match trail.outcome.as_str() {
                "completed" => "completed: every stage promoted".to_owned(),
                "rollback" => format!(
                    "rolled back at {} by {}",
                    last.map_or("?", |s| s.weight.as_str()),
                    last.and_then(|s| s.trigger.as_deref()).unwrap_or("?")
                ),
                other => other.to_owned(),
            };
            let dry = if trail.dry_run { " (dry run: no weight was changed)" } else { "" };
            let _ = writeln!(t, "- Canary: {outcome}, {} stages{dry}.", trail.stages.len());
        }
    }
    let real = notes.rollbacks.iter().filter(|r| !r.dry_run).count();
    let _ = writeln!(t, "- Rollbacks: {real} ({} rehearsals).", notes.rollbacks.len() - real);
    if let Some(v) = &notes.go_nogo {
        let _ = writeln!(t, "- GO/NO-GO: {v}.");
    }
    let open = notes.risks.iter().filter(|r| r.status != crate::risks::RiskStatus::Closed).count();
    let _ = write!(t, "- Remaining risks: {} ({open} not closed).", notes.risks.len());
    t
}

fn stages_table(trail: Option<&Trail>) -> String {
    let Some(trail) = trail.filter(|t| !t.stages.is_empty()) else {
        return "No canary stages were recorded.".to_owned();
    };
    let mut t = "| Stage | Traffic | Duration | Status | Gates passed |\n|---|---|---|---|---|\n".to_owned();
    for (i, s) in trail.stages.iter().enumerate() {
        let duration = s.ended_ms.map_or_else(|| "running".to_owned(), |end| duration(end - s.started_ms));
        let status = match &s.trigger {
            Some(trigger) => format!("{} ({trigger})", s.status),
            None => s.status.clone(),
        };
        let gates = if s.gates.is_empty() { "–".to_owned() } else { format!("{}/6", s.gates_passed()) };
        let _ = writeln!(t, "| {} | {} | {duration} | {} | {gates} |", i + 1, cell(&s.weight), cell(&status));
    }
    t
}

fn metrics_table(trail: Option<&Trail>) -> String {
    let Some(trail) = trail.filter(|t| t.stages.iter().any(|s| !s.gates.is_empty())) else {
        return "No gate values were recorded.".to_owned();
    };
    let mut t = format!("| Traffic | {} |\n|---|{}\n", GATES.join(" | "), "---|".repeat(GATES.len()));
    for s in &trail.stages {
        let values: Vec<String> = GATES
            .iter()
            .map(|name| match s.gates.iter().find(|g| g.name == *name) {
                None => "–".to_owned(),
                Some(g) => {
                    let value = g.value.map_or_else(|| "–".to_owned(), spark_rollback::format_value);
                    let mark = if g.status == "fail" { " ✗" } else { "" };
                    let bound =
                        g.threshold.map(|b| format!(" (≤ {})", spark_rollback::format_value(b))).unwrap_or_default();
                    format!("{value}{mark}{bound}")
                }
            })
            .collect();
        let _ = writeln!(t, "| {} | {} |", cell(&s.weight), values.join(" | "));
    }
    t
}

fn rollbacks_table(rollbacks: &[RollbackEvent]) -> String {
    if rollbacks.is_empty() {
        return "None.".to_owned();
    }
    let mut t = "| Trigger | Time | Stage | Recovery time | Kind | Evidence |\n|---|---|---|---|---|---|\n".to_owned();
    for r in rollbacks {
        #[allow(clippy::cast_precision_loss, reason = "a rollback's milliseconds are far below 2^52")]
        let recovery = format!("{:.2} s", r.recovery_ms as f64 / 1000.0);
        let kind = if r.dry_run { "rehearsal (dry run)" } else { "rollback" };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {recovery} | {kind} | `{}` |",
            cell(&r.trigger),
            cell(&r.decided_at),
            cell(&r.stage),
            cell(&r.evidence)
        );
    }
    t
}

fn risks_table(risks: &[Risk]) -> String {
    let mut t = String::new();
    if risks.is_empty() {
        t.push_str("None listed (`--risks FILE`).\n");
    } else {
        t.push_str("| Risk | Owner | Due | Mitigation | Status |\n|---|---|---|---|---|\n");
        for r in risks {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} |",
                cell(&r.description),
                cell(&r.owner),
                r.due,
                cell(&r.mitigation),
                r.status.as_str()
            );
        }
    }
    if risks.len() < RISKS_ASKED {
        let _ = writeln!(t, "\nThe release checklist asks for {RISKS_ASKED} remaining risks; {} given.", risks.len());
    }
    t
}

fn evidence_list(evidence: &[(String, String)]) -> String {
    let mut t = String::new();
    for (file, sha) in evidence {
        let _ = writeln!(t, "- `{file}` sha256:{sha}");
    }
    t
}
