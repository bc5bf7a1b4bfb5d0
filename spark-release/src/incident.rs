//! `spark incident new`: an incident report in Markdown, written from the
//! evidence a rollback left (its record, the metrics before and after, the
//! bundle's files and digests), with the sections only people can fill —
//! owner, root cause, action items — left empty to fill.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;
use spark_rollback::{Role, Signal, Snapshot, TriggerId};

use crate::error::ReleaseError;

/// The template the report fills (`.github/INCIDENT_TEMPLATE.md` holds the
/// same text; a test keeps them equal). Placeholders: `{{title}}`,
/// `{{severity}}`, `{{opened}}`, `{{release}}`, `{{summary}}`,
/// `{{impact}}`, `{{timeline}}`, `{{trigger}}`, `{{resolution}}`,
/// `{{evidence}}`.
pub const INCIDENT_TEMPLATE: &str = include_str!("incident_template.md");

/// The line before the snapshot JSON in a rollback's metrics file.
const SNAPSHOT_MARKER: &str = "replayable with spark canary replay:";

/// What a report needs besides the evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentOptions {
    /// The title [default: from the trigger and the stage].
    pub title: Option<String>,
    /// `SEV1` to `SEV4`.
    pub severity: String,
    /// The release, when known.
    pub release: Option<String>,
    /// The availability objective the error budget is measured against,
    /// such as 0.999.
    pub slo_objective: f64,
    /// When the report is opened, milliseconds since the epoch.
    pub now_ms: i64,
}

impl IncidentOptions {
    /// `SEV2`, objective 99.9 %, opened at `now_ms`.
    #[must_use]
    pub fn new(now_ms: i64) -> IncidentOptions {
        IncidentOptions { title: None, severity: "SEV2".to_owned(), release: None, slo_objective: 0.999, now_ms }
    }

    fn check(&self) -> Result<(), ReleaseError> {
        if !matches!(self.severity.as_str(), "SEV1" | "SEV2" | "SEV3" | "SEV4") {
            return Err(invalid("severity", format!("{:?} is not a severity: use SEV1 to SEV4", self.severity)));
        }
        if !(self.slo_objective > 0.0 && self.slo_objective < 1.0) {
            return Err(invalid(
                "slo",
                format!("{} is not an objective: use a share such as 0.999", self.slo_objective),
            ));
        }
        Ok(())
    }
}

/// An incident report: what the evidence says, as Markdown.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    /// The title.
    pub title: String,
    /// The report, the template filled.
    pub markdown: String,
    /// The timeline: instant (RFC 3339) and what happened, in order.
    pub timeline: Vec<(String, String)>,
    /// Every evidence file and its SHA-256.
    pub evidence: Vec<(String, String)>,
}

fn invalid(path: &str, message: String) -> ReleaseError {
    ReleaseError::Invalid { path: PathBuf::from(path), message }
}

/// A canary series of `signal` in `snapshot`: (ms, value), ascending.
fn canary(snapshot: &Snapshot, signal: Signal) -> Vec<(i64, f64)> {
    let Some(matrix) = snapshot.signals.get(signal.name()) else { return Vec::new() };
    let mut out: Vec<(i64, f64)> = matrix
        .result
        .iter()
        .filter(|s| s.metric.get("role").map(String::as_str) == Some(Role::Canary.name()))
        .flat_map(|s| s.values.iter().filter_map(|(t, v)| Some((t.0, v.parse::<f64>().ok()?))))
        .filter(|(_, v)| v.is_finite())
        .collect();
    out.sort_by_key(|(t, _)| *t);
    out
}

/// The snapshot inside a rollback's metrics file, when one was recorded.
fn snapshot_in(path: &Path) -> Option<Snapshot> {
    let text = std::fs::read_to_string(path).ok()?;
    let json = text.split_once(SNAPSHOT_MARKER)?.1.trim();
    Snapshot::parse(json).ok()
}

/// Requests, failed requests and the burn rate over a snapshot's window.
fn impact(snapshot: &Snapshot, objective: f64) -> Option<String> {
    let step = f64::from(snapshot.step_seconds.max(1));
    let rps = canary(snapshot, Signal::HttpRequestsPerSecond);
    if rps.is_empty() {
        return None;
    }
    let ratio: BTreeMap<i64, f64> = canary(snapshot, Signal::Http5xxRatio).into_iter().collect();
    let requests: f64 = rps.iter().map(|(_, r)| r * step).sum();
    let failed: f64 = rps.iter().map(|(t, r)| r * ratio.get(t).copied().unwrap_or(0.0) * step).sum();
    let (from, to) = (rps[0].0, rps[rps.len() - 1].0);
    let share = if requests > 0.0 { failed / requests } else { 0.0 };
    let burn = share / (1.0 - objective);
    Some(format!(
        "From {} to {} (the metrics before the rollback, canary): about {:.0} requests, {:.0} of them failed (5xx, \
         {:.3} %). Against an objective of {} %, the error budget burned {:.1}× as fast as it may.",
        spark_rollback::rfc3339(from),
        spark_rollback::rfc3339(to),
        requests,
        failed,
        share * 100.0,
        objective * 100.0,
        burn
    ))
}

/// The first sample at or after `from` for which `pred` holds.
fn first_where(series: &[(i64, f64)], from: i64, pred: impl Fn(f64) -> bool) -> Option<(i64, f64)> {
    series.iter().copied().find(|(t, v)| *t >= from && pred(*v))
}

/// Every file of a sealed bundle, by name, with its SHA-256 as it is now,
/// and whether the bundle verifies.
fn evidence(bundle: &Path) -> Result<(Vec<(String, String)>, String), ReleaseError> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(bundle).map_err(|source| ReleaseError::Read { path: bundle.to_owned(), source })?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_file() {
            let bytes = std::fs::read(&path).map_err(|source| ReleaseError::Read { path: path.clone(), source })?;
            files.push((entry.file_name().to_string_lossy().into_owned(), spark_evidence::sha256_hex(&bytes)));
        }
    }
    files.sort();
    let verdict = if bundle.join(spark_evidence::MANIFEST).is_file() {
        match spark_evidence::verify(bundle, None) {
            Ok(report) if report.is_intact() => "The bundle verifies: every file matches its manifest.".to_owned(),
            Ok(report) => format!(
                "The bundle does NOT verify: {}.",
                report.problems().iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
            ),
            Err(e) => format!("The bundle could not be verified: {e}."),
        }
    } else {
        "The bundle has no manifest: its files are not sealed.".to_owned()
    };
    Ok((files, verdict))
}

/// Writes the report of the rollback whose record is `record`
/// (`rollback_<stamp>.json` in its bundle): summary, impact from the
/// metrics before the rollback, the timeline (first deviation of the
/// trigger's signal, the trigger fired, the rollback started and completed,
/// the signal back under its threshold), the trigger and its values, the
/// actions, and every file of the bundle with its digest.
///
/// # Errors
/// [`ReleaseError::Read`] when the record cannot be read,
/// [`ReleaseError::Invalid`] when it is not a rollback record or an option
/// is out of range.
pub fn incident_from_rollback(record: &Path, options: &IncidentOptions) -> Result<Incident, ReleaseError> {
    options.check()?;
    let text =
        std::fs::read_to_string(record).map_err(|source| ReleaseError::Read { path: record.to_owned(), source })?;
    let r: Value = serde_json::from_str(&text).map_err(|e| invalid(&record.display().to_string(), e.to_string()))?;
    if r["format"] != spark_rollback::RECORD_FORMAT {
        return Err(invalid(
            &record.display().to_string(),
            format!("not a rollback record (format {}, expected {})", r["format"], spark_rollback::RECORD_FORMAT),
        ));
    }
    let bundle = record.parent().unwrap_or(Path::new(".")).to_owned();
    let str_of = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let trigger = r["trigger"].as_str().map(str::to_owned);
    let stage = str_of(&r["stage"]);
    let decided_ms = r["decided_at_ms"].as_i64().unwrap_or(0);
    let dry_run = r["dry_run"].as_bool().unwrap_or(false);
    let metrics_file = |key: &str| r[key]["name"].as_str().map(|name| bundle.join(name));
    let before = metrics_file("metrics_before").and_then(|p| snapshot_in(&p));
    let after = metrics_file("metrics_after").and_then(|p| snapshot_in(&p));

    // The trigger's own result in the evaluation that decided.
    let fired = r["evaluation"]["triggers"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| Some(t["id"].as_str().unwrap_or("")) == trigger.as_deref()))
        .cloned();
    let threshold = fired.as_ref().and_then(|t| t["values"]["threshold"].as_f64());
    let signal = trigger.as_deref().and_then(TriggerId::from_id).and_then(|t| t.signals().first().copied());

    let mut timeline: Vec<(i64, String)> = Vec::new();
    if let (Some(signal), Some(threshold), Some(before)) = (signal, threshold, &before) {
        let series = canary(before, signal);
        if let Some((t, v)) = first_where(&series, i64::MIN, |v| v > threshold) {
            timeline.push((t, format!("first deviation: {} {v} above {threshold} (canary)", signal.name())));
        }
    }
    timeline.push((
        decided_ms,
        format!(
            "trigger fired: {} decided rollback of {stage}{}",
            trigger.as_deref().unwrap_or("an operator"),
            r["reason"].as_str().map(|s| format!(" ({s})")).unwrap_or_default()
        ),
    ));
    let actions = r["actions"].as_array().cloned().unwrap_or_default();
    if let Some(start) = actions.iter().filter_map(|a| a["started_at_ms"].as_i64()).min() {
        timeline.push((
            start,
            format!("rollback started: {} action(s){}", actions.len(), if dry_run { " (dry run)" } else { "" }),
        ));
    }
    let completed = r["timing"]["completed_at"].as_str().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
    if let Some(done) = completed {
        timeline.push((
            done.timestamp_millis(),
            format!("rollback completed: {} ms after the decision", r["timing"]["decision_to_completion_ms"]),
        ));
    }
    if let (Some(signal), Some(threshold), Some(after)) = (signal, threshold, &after) {
        // Recovery counts from the rollback's completion on.
        let from = completed.map_or(decided_ms, |d| d.timestamp_millis());
        let series = canary(after, signal);
        match first_where(&series, from, |v| v <= threshold) {
            Some((t, v)) => timeline.push((t, format!("recovered: {} {v}, at or under {threshold}", signal.name()))),
            None if series.iter().any(|(t, _)| *t >= from) => timeline.push((
                from,
                format!("not recovered: {} stays above {threshold} in the metrics after the rollback", signal.name()),
            )),
            None => timeline.push((
                from,
                format!(
                    "recovery not visible: the metrics after the rollback end at its completion; follow {} in \
                     Prometheus",
                    signal.name()
                ),
            )),
        }
    }
    timeline.sort_by_key(|(t, _)| *t);
    let timeline: Vec<(String, String)> = timeline.into_iter().map(|(t, e)| (spark_rollback::rfc3339(t), e)).collect();

    let (files, verdict) = evidence(&bundle)?;
    let failed =
        actions.iter().filter(|a| a["outcome"].as_str().is_some_and(|o| o != "succeeded" && o != "dry_run")).count();
    let title = options
        .title
        .clone()
        .unwrap_or_else(|| format!("{} rolled back {stage}", trigger.as_deref().unwrap_or("a manual rollback")));
    let summary = format!(
        "At {} the canary engine {} rolled back stage {stage}: {}. {} action(s) ran{}; {}.",
        str_of(&r["decided_at"]),
        trigger.as_deref().map(|t| format!("(trigger `{t}`)")).unwrap_or_else(|| "(no trigger: by hand)".to_owned()),
        str_of(&r["reason"]),
        actions.len(),
        if dry_run { " as a dry run" } else { "" },
        if failed == 0 { "every action succeeded".to_owned() } else { format!("{failed} failed") }
    );
    let impact = before.as_ref().and_then(|s| impact(s, options.slo_objective)).unwrap_or_else(|| {
        "Not measured: the rollback recorded no metrics before it (run `spark rollback` with --prometheus).".to_owned()
    });
    let trigger_text = match &fired {
        Some(t) => {
            let mut s = format!(
                "`{}` — {}\n\n| Value | |\n|---|---|\n",
                t["id"].as_str().unwrap_or(""),
                t["status"].as_str().unwrap_or("")
            );
            if let Some(values) = t["values"].as_object() {
                for (k, v) in values {
                    let _ = writeln!(s, "| {k} | {v} |");
                }
            }
            if let Some(detail) = t["detail"].as_str() {
                let _ = write!(s, "\n{detail}");
            }
            s
        }
        None => "No trigger fired: the rollback was started by hand.".to_owned(),
    };
    let mut resolution = String::from("| # | Action | Target | Outcome | Duration |\n|---|---|---|---|---|\n");
    for a in &actions {
        let _ = writeln!(
            resolution,
            "| {} | {} | `{}` | {} | {} ms |",
            a["index"],
            str_of(&a["kind"]),
            str_of(&a["target"]).replace('|', "\\|"),
            str_of(&a["outcome"]),
            a["duration_ms"]
        );
    }
    if actions.is_empty() {
        resolution = "No rollback action was configured.".to_owned();
    }
    let mut evidence_text = format!("In `{}`. {verdict}\n\n", bundle.display());
    for (name, sha) in &files {
        let _ = writeln!(evidence_text, "- `{name}` sha256:{sha}");
    }
    let mut timeline_text = String::from("| Time | Event |\n|---|---|\n");
    for (t, e) in &timeline {
        let _ = writeln!(timeline_text, "| {t} | {e} |");
    }
    let values = BTreeMap::from([
        ("title", title.clone()),
        ("severity", options.severity.clone()),
        ("opened", spark_rollback::rfc3339(options.now_ms)),
        ("release", options.release.clone().unwrap_or_else(|| "_(not recorded)_".to_owned())),
        ("summary", summary),
        ("impact", impact),
        ("timeline", timeline_text),
        ("trigger", trigger_text),
        ("resolution", resolution),
        ("evidence", evidence_text),
    ]);
    let markdown = crate::notes::fill(INCIDENT_TEMPLATE, &values).map_err(|m| invalid("incident_template.md", m))?;
    Ok(Incident { title, markdown, timeline, evidence: files })
}

/// A blank report opened by hand, with the metrics snapshot `snapshot`
/// (taken now, named `snapshot_name` beside the report) attached when given.
///
/// # Errors
/// [`ReleaseError::Invalid`] for a missing title or an option out of range.
pub fn blank_incident(
    options: &IncidentOptions,
    snapshot: Option<(&str, &Snapshot)>,
) -> Result<Incident, ReleaseError> {
    options.check()?;
    let title = options
        .title
        .clone()
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| invalid("title", "a blank incident needs a title (--title)".to_owned()))?;
    let impact = match snapshot {
        Some((_, s)) => impact(s, options.slo_objective)
            .unwrap_or_else(|| "Not measured: the snapshot holds no canary request rate.".to_owned()),
        None => "Not measured: no metrics snapshot was taken (give --prometheus).".to_owned(),
    };
    let evidence = match snapshot {
        Some((name, s)) => vec![(name.to_owned(), spark_evidence::sha256_hex(s.to_json().as_bytes()))],
        None => Vec::new(),
    };
    let evidence_text = if evidence.is_empty() {
        "_(none yet)_".to_owned()
    } else {
        evidence
            .iter()
            .map(|(n, d)| format!("- `{n}` sha256:{d} (the metrics when the incident was opened)"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let opened = spark_rollback::rfc3339(options.now_ms);
    let values = BTreeMap::from([
        ("title", title.clone()),
        ("severity", options.severity.clone()),
        ("opened", opened.clone()),
        ("release", options.release.clone().unwrap_or_else(|| "_(not recorded)_".to_owned())),
        ("summary", "_(what happened, in two sentences)_".to_owned()),
        ("impact", impact),
        ("timeline", format!("| Time | Event |\n|---|---|\n| {opened} | incident opened |")),
        ("trigger", "_(what noticed it: an alert, a customer, a person)_".to_owned()),
        ("resolution", "_(what was done to end it)_".to_owned()),
        ("evidence", evidence_text),
    ]);
    let markdown = crate::notes::fill(INCIDENT_TEMPLATE, &values).map_err(|m| invalid("incident_template.md", m))?;
    Ok(Incident { title, markdown, timeline: vec![(opened, "incident opened".to_owned())], evidence })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impact_counts_requests_and_failures_and_the_burn_rate() {
        let mut s = Snapshot::new(10);
        for (i, ratio) in [0.0, 0.01, 0.02].into_iter().enumerate() {
            let t = 1_700_000_000 + i64::try_from(i).unwrap() * 10;
            s.push(Signal::HttpRequestsPerSecond, Role::Canary, t, 100.0);
            s.push(Signal::Http5xxRatio, Role::Canary, t, ratio);
            s.push(Signal::HttpRequestsPerSecond, Role::Baseline, t, 999.0);
        }
        let text = impact(&s, 0.999).unwrap();
        // 3 samples × 100 rps × 10 s; failures 0 + 10 + 20.
        assert!(text.contains("about 3000 requests, 30 of them failed (5xx, 1.000 %)"), "{text}");
        assert!(text.contains("burned 10.0× as fast"), "{text}");
        assert_eq!(impact(&Snapshot::new(10), 0.999), None);
    }

    #[test]
    fn options_out_of_range_are_refused() {
        let mut o = IncidentOptions::new(0);
        o.severity = "SEV9".into();
        assert!(blank_incident(&o, None).unwrap_err().to_string().contains("SEV1 to SEV4"));
        let mut o = IncidentOptions::new(0);
        o.slo_objective = 1.5;
        assert!(incident_from_rollback(Path::new("x"), &o).unwrap_err().to_string().contains("objective"));
        let o = IncidentOptions::new(0);
        assert!(blank_incident(&o, None).unwrap_err().to_string().contains("needs a title"));
    }
}
