//! `spark incident new`: an incident report in Markdown, written from the
//! evidence a rollback left (its record, the metrics before and after, the
//! bundle's files and digests), with the sections only people can fill —
//! owner, root cause, action items — left empty to fill.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;
use spark_rollback::{Role, Signal, Snapshot, TriggerId};

use crate::error::ReleaseError;
use crate::notes::cell;

/// The template the report fills (`.github/INCIDENT_TEMPLATE.md` holds the
/// same text; a test keeps them equal). Placeholders: `{{title}}`,
/// `{{severity}}`, `{{opened}}`, `{{release}}`, `{{summary}}`,
/// `{{impact}}`, `{{timeline}}`, `{{trigger}}`, `{{resolution}}`,
/// `{{evidence}}`.
pub const INCIDENT_TEMPLATE: &str = include_str!("incident_template.md");

/// The line before the snapshot JSON in a rollback's metrics file.
const SNAPSHOT_MARKER: &str = "replayable with spark canary replay:";

/// The triggers whose `threshold` is in the unit of their first signal, so
/// a deviation and a recovery can be read off that signal's samples.
const THRESHOLD_TRIGGERS: [TriggerId; 7] = [
    TriggerId::ApiP95,
    TriggerId::ErrorRate,
    TriggerId::FeedStale,
    TriggerId::CspStorm,
    TriggerId::IdemConflicts,
    TriggerId::PgbouncerSaturation,
    TriggerId::OutboxLagExplosion,
];

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

    /// Checks the severity and the objective, before anything is fetched
    /// or written.
    ///
    /// # Errors
    /// [`ReleaseError::Invalid`] naming the option.
    pub fn validate(&self) -> Result<(), ReleaseError> {
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

/// Line breaks as spaces, for a heading (unlike `crate::one_line`, runs of
/// spaces are kept as written).
fn join_lines(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The series of `signal` in `snapshot` for `roles`, summed per instant:
/// (ms, value), ascending.
fn series(snapshot: &Snapshot, signal: Signal, roles: &[Role]) -> Vec<(i64, f64)> {
    let Some(matrix) = snapshot.signals.get(signal.name()) else { return Vec::new() };
    let mut by: BTreeMap<i64, f64> = BTreeMap::new();
    for s in matrix
        .result
        .iter()
        .filter(|s| roles.iter().any(|r| s.metric.get("role").map(String::as_str) == Some(r.name())))
    {
        for (t, v) in &s.values {
            if let Ok(v) = v.parse::<f64>()
                && v.is_finite()
            {
                *by.entry(t.0).or_insert(0.0) += v;
            }
        }
    }
    by.into_iter().collect()
}

/// Requests, failed requests and the burn rate of `roles` over a
/// snapshot's window, described as `what`. Each request-rate sample is
/// paired with the 5xx ratio of the same role at the nearest instant within
/// half a step; a sample without one is not counted as zero failures but
/// left out of the share, and said.
fn impact(snapshot: &Snapshot, objective: f64, what: &str, roles: &[Role]) -> Option<String> {
    let step_ms = i64::from(snapshot.step_seconds.max(1)) * 1000;
    let step = f64::from(snapshot.step_seconds.max(1));
    let mut requests = 0.0;
    let (mut paired_requests, mut failed, mut unpaired) = (0.0, 0.0, 0usize);
    let mut span: Option<(i64, i64)> = None;
    for role in roles {
        let rps = series(snapshot, Signal::HttpRequestsPerSecond, &[*role]);
        let ratio = series(snapshot, Signal::Http5xxRatio, &[*role]);
        for (t, r) in rps {
            requests += r * step;
            span = Some(span.map_or((t, t), |(a, b)| (a.min(t), b.max(t))));
            let nearest = ratio.iter().min_by_key(|(u, _)| (u - t).abs()).filter(|(u, _)| (u - t).abs() * 2 <= step_ms);
            match nearest {
                Some((_, share)) => {
                    paired_requests += r * step;
                    failed += r * share * step;
                }
                None => unpaired += 1,
            }
        }
    }
    let (from, to) = span?;
    let window = format!("From {} to {} ({what})", spark_rollback::rfc3339(from), spark_rollback::rfc3339(to));
    if paired_requests <= 0.0 {
        return Some(format!("{window}: about {requests:.0} requests; their 5xx ratio was not recorded."));
    }
    let share = failed / paired_requests;
    let burn = share / (1.0 - objective);
    let gaps = if unpaired == 0 {
        String::new()
    } else {
        format!(" ({unpaired} request-rate samples had no 5xx sample and are left out of the share)")
    };
    Some(format!(
        "{window}: about {requests:.0} requests, {failed:.0} of them failed (5xx, {:.3} %){gaps}. Against an \
         objective of {} %, the error budget burned {burn:.1}× as fast as it may.",
        share * 100.0,
        objective * 100.0,
    ))
}

/// The first sample after `after` for which `pred` holds.
fn first_where(series: &[(i64, f64)], after: i64, pred: impl Fn(f64) -> bool) -> Option<(i64, f64)> {
    series.iter().copied().find(|(t, v)| *t > after && pred(*v))
}

/// A metrics file the record names: a plain file name inside the bundle,
/// not a link, whose SHA-256 is the one the record holds; its snapshot, or
/// why there is none.
fn metrics_in(bundle: &Path, entry: &Value) -> Result<Snapshot, String> {
    let Some(name) = entry["name"].as_str() else {
        return Err(
            "the rollback recorded no metrics (no metrics source: run `spark rollback` with --prometheus)".into()
        );
    };
    let mut parts = Path::new(name).components();
    if !matches!((parts.next(), parts.next()), (Some(Component::Normal(_)), None)) {
        return Err(format!("the record names {name:?}, which is not a file of its bundle"));
    }
    let path = bundle.join(name);
    if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file()) {
        return Err(format!("{name} is missing from the bundle (or not a plain file)"));
    }
    let bytes = std::fs::read(&path).map_err(|e| format!("{name}: {e}"))?;
    if entry["sha256"].as_str() != Some(spark_evidence::sha256_hex(&bytes).as_str()) {
        return Err(format!("{name} is not the file the rollback recorded (its SHA-256 differs): not used"));
    }
    let text = String::from_utf8_lossy(&bytes);
    match text.split_once(SNAPSHOT_MARKER) {
        Some((_, json)) => Snapshot::parse(json.trim()).map_err(|e| format!("{name}: {e}")),
        // The file says why it holds no snapshot (a source that failed).
        None => Err(text.lines().filter(|l| !l.trim().is_empty()).skip(1).collect::<Vec<_>>().join(" ")),
    }
}

/// A bundle as the report sees it: its files with their SHA-256, whether
/// it verifies, and the sentence that says so.
type Bundle = (Vec<(String, String)>, bool, String);

/// Every plain file of a bundle (links are not evidence: sealing skips
/// them), by name, with its SHA-256 as it is now, and whether the bundle
/// verifies against its manifest.
fn evidence(bundle: &Path) -> Result<Bundle, ReleaseError> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(bundle).map_err(|source| ReleaseError::Read { path: bundle.to_owned(), source })?;
    for entry in entries.flatten() {
        let path = entry.path();
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file()) {
            let bytes = std::fs::read(&path).map_err(|source| ReleaseError::Read { path: path.clone(), source })?;
            files.push((entry.file_name().to_string_lossy().into_owned(), spark_evidence::sha256_hex(&bytes)));
        }
    }
    files.sort();
    let (intact, verdict) = if bundle.join(spark_evidence::MANIFEST).is_file() {
        match spark_evidence::verify(bundle, None) {
            Ok(report) if report.is_intact() => {
                (true, "The bundle verifies: every file matches its manifest (its signature is checked with `spark evidence verify --key`).".to_owned())
            }
            Ok(report) => (
                false,
                format!(
                    "The bundle does NOT verify: {}.",
                    report.problems().iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
                ),
            ),
            Err(e) => (false, format!("The bundle could not be verified: {e}.")),
        }
    } else {
        (false, "The bundle has no manifest: its files are not sealed.".to_owned())
    };
    Ok((files, intact, verdict))
}

/// Writes the report of the rollback whose record is `record`
/// (`rollback_<stamp>.json` in its bundle): summary, impact from the
/// metrics before the rollback, the timeline (first deviation of the
/// trigger's signal, the trigger fired, the rollback started and completed,
/// the signal back under its threshold), the trigger and its values, the
/// actions, and every file of the bundle with its digest. Metrics are used
/// only from files of the bundle whose digest is the one the record holds,
/// and a bundle that does not verify is said to at the top.
///
/// # Errors
/// [`ReleaseError::Read`] when the record cannot be read,
/// [`ReleaseError::Invalid`] when it is not a rollback record or an option
/// is out of range.
pub fn incident_from_rollback(record: &Path, options: &IncidentOptions) -> Result<Incident, ReleaseError> {
    options.validate()?;
    let text =
        std::fs::read_to_string(record).map_err(|source| ReleaseError::Read { path: record.to_owned(), source })?;
    let r: Value = serde_json::from_str(&text).map_err(|e| invalid(&record.display().to_string(), e.to_string()))?;
    if r["format"] != spark_rollback::RECORD_FORMAT {
        return Err(invalid(
            &record.display().to_string(),
            format!("not a rollback record (format {}, expected {})", r["format"], spark_rollback::RECORD_FORMAT),
        ));
    }
    // `rollback_x.json` alone has the parent "", which is the working
    // directory.
    let bundle = record.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned();
    let (files, intact, verdict) = evidence(&bundle)?;
    let str_of = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let trigger = r["trigger"].as_str().map(str::to_owned);
    let stage = str_of(&r["stage"]);
    let decided_ms = r["decided_at_ms"].as_i64().unwrap_or(0);
    let dry_run = r["dry_run"].as_bool().unwrap_or(false);
    let before = metrics_in(&bundle, &r["metrics_before"]);
    let after = metrics_in(&bundle, &r["metrics_after"]);

    // The trigger's own result in the evaluation that decided, when the
    // engine decided (an operator may name a trigger without one).
    let fired = r["evaluation"]["triggers"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| Some(t["id"].as_str().unwrap_or("")) == trigger.as_deref()))
        .cloned();
    let threshold = fired.as_ref().and_then(|t| t["values"]["threshold"].as_f64());
    let signal = trigger
        .as_deref()
        .and_then(TriggerId::from_id)
        .filter(|t| THRESHOLD_TRIGGERS.contains(t))
        .and_then(|t| t.signals().first().copied());

    let mut timeline: Vec<(i64, String)> = Vec::new();
    if let (Some(signal), Some(threshold), Ok(before)) = (signal, threshold, &before) {
        let canary = series(before, signal, &[Role::Canary]);
        if let Some((t, v)) = first_where(&canary, i64::MIN, |v| v > threshold) {
            timeline.push((t, format!("first deviation: {} {v} above {threshold} (canary)", signal.name())));
        }
    }
    let who = match (&trigger, &fired) {
        (Some(t), Some(_)) => format!("the canary engine's trigger {t}"),
        (Some(t), None) => format!("an operator, naming {t} (no engine evaluation recorded)"),
        (None, _) => "an operator".to_owned(),
    };
    let reason = r["reason"].as_str().unwrap_or("no reason given");
    timeline.push((
        decided_ms,
        match (&trigger, &fired) {
            (Some(t), Some(_)) => format!("trigger fired: {t} decided the rollback of {stage} ({reason})"),
            _ => format!("rollback decided: by {who}, for {stage} ({reason})"),
        },
    ));
    let actions = r["actions"].as_array().cloned().unwrap_or_default();
    let dry = if dry_run { " (dry run: nothing was run)" } else { "" };
    if let Some(start) = actions.iter().filter_map(|a| a["started_at_ms"].as_i64()).min() {
        timeline.push((start, format!("rollback started: {} action(s){dry}", actions.len())));
    }
    let completed = r["timing"]["completed_at"].as_str().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
    if let Some(done) = completed {
        timeline.push((
            done.timestamp_millis(),
            format!("rollback completed: {} ms after the decision{dry}", r["timing"]["decision_to_completion_ms"]),
        ));
    }
    if let (Some(signal), Some(threshold), Ok(after)) = (signal, threshold, &after) {
        // The metrics after a rollback end at its completion: a recovery
        // is seen only between the decision and then.
        let canary = series(after, signal, &[Role::Canary]);
        let until = completed.map_or(i64::MAX, |d| d.timestamp_millis());
        let window: Vec<(i64, f64)> = canary.into_iter().filter(|(t, _)| *t < until).collect();
        match first_where(&window, decided_ms, |v| v <= threshold) {
            Some((t, v)) => timeline.push((t, format!("recovered: {} {v}, at or under {threshold}", signal.name()))),
            None => timeline.push((
                completed.map_or(decided_ms, |d| d.timestamp_millis()),
                format!(
                    "recovery not seen: the metrics recorded after the decision end at the rollback's completion; \
                     follow {} in Prometheus",
                    signal.name()
                ),
            )),
        }
    }
    timeline.sort_by_key(|(t, _)| *t);
    let timeline: Vec<(String, String)> = timeline.into_iter().map(|(t, e)| (spark_rollback::rfc3339(t), e)).collect();

    let failed =
        actions.iter().filter(|a| a["outcome"].as_str().is_some_and(|o| o != "succeeded" && o != "dry_run")).count();
    let title = join_lines(&options.title.clone().unwrap_or_else(|| {
        format!(
            "{}{} rolled back {stage}",
            if dry_run { "DRY RUN: " } else { "" },
            trigger.as_deref().unwrap_or("a manual rollback")
        )
    }));
    let mut summary = String::new();
    if !intact {
        let _ = write!(summary, "**Warning: {verdict}** What follows is read from it all the same.\n\n");
    }
    let _ = write!(
        summary,
        "{}At {} {who} rolled back stage {stage}: {}. {} action(s){}; {}.",
        if dry_run { "A DRY RUN: nothing was run. " } else { "" },
        str_of(&r["decided_at"]),
        join_lines(r["reason"].as_str().unwrap_or("no reason given")),
        actions.len(),
        if dry_run { " recorded" } else { " ran" },
        if failed == 0 { "none failed".to_owned() } else { format!("{failed} failed") }
    );
    let impact = match &before {
        Ok(s) => impact(s, options.slo_objective, "the metrics before the rollback, canary", &[Role::Canary])
            .unwrap_or_else(|| "Not measured: the metrics before the rollback hold no canary request rate.".to_owned()),
        Err(why) => format!("Not measured: {}.", why.trim_end_matches('.')),
    };
    let trigger_text = match &fired {
        Some(t) => {
            let mut s = format!("`{}` — {}\n\n| Value | |\n|---|---|\n", str_of(&t["id"]), str_of(&t["status"]));
            if let Some(values) = t["values"].as_object() {
                for (k, v) in values {
                    let _ = writeln!(s, "| {} | {} |", cell(k), cell(&v.to_string()));
                }
            }
            if let Some(detail) = t["detail"].as_str() {
                let _ = write!(s, "\n{}", join_lines(detail));
            }
            s
        }
        None => match &trigger {
            Some(t) => format!("`{}` was named by the operator; no engine evaluation was recorded.", cell(t)),
            None => "No trigger: the rollback was started by hand.".to_owned(),
        },
    };
    let mut resolution = String::from("| # | Action | Target | Outcome | Duration |\n|---|---|---|---|---|\n");
    for a in &actions {
        let _ = writeln!(
            resolution,
            "| {} | {} | {} | {} | {} ms |",
            a["index"].as_u64().map_or_else(|| "?".to_owned(), |i| (i + 1).to_string()),
            cell(&str_of(&a["kind"])),
            cell(&str_of(&a["target"])),
            cell(&str_of(&a["outcome"])),
            a["duration_ms"]
        );
    }
    if actions.is_empty() {
        resolution = "No rollback action was configured.".to_owned();
    }
    let mut evidence_text = format!("In `{}`. {verdict}\n\n", bundle.display());
    for (name, sha) in &files {
        let _ = writeln!(evidence_text, "- `{}` sha256:{sha}", cell(name));
    }
    let mut timeline_text = String::from("| Time | Event |\n|---|---|\n");
    for (t, e) in &timeline {
        let _ = writeln!(timeline_text, "| {t} | {} |", cell(e));
    }
    let values = BTreeMap::from([
        ("title", title.clone()),
        ("severity", options.severity.clone()),
        ("opened", spark_rollback::rfc3339(options.now_ms)),
        ("release", options.release.as_deref().map_or_else(|| "_(not recorded)_".to_owned(), cell)),
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
/// (taken now, named `snapshot_name` beside the report) attached when given;
/// its impact counts both roles (a release at 100 % has no canary).
///
/// # Errors
/// [`ReleaseError::Invalid`] for a missing title or an option out of range.
pub fn blank_incident(
    options: &IncidentOptions,
    snapshot: Option<(&str, &Snapshot)>,
) -> Result<Incident, ReleaseError> {
    options.validate()?;
    let title = options
        .title
        .as_deref()
        .map(join_lines)
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| invalid("title", "a blank incident needs a title (--title)".to_owned()))?;
    let impact = match snapshot {
        Some((_, s)) => impact(s, options.slo_objective, "the metrics when the incident was opened", &Role::ALL)
            .unwrap_or_else(|| "Not measured: the snapshot holds no request rate.".to_owned()),
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
            .map(|(n, d)| format!("- `{}` sha256:{d} (the metrics when the incident was opened)", cell(n)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let opened = spark_rollback::rfc3339(options.now_ms);
    let values = BTreeMap::from([
        ("title", title.clone()),
        ("severity", options.severity.clone()),
        ("opened", opened.clone()),
        ("release", options.release.as_deref().map_or_else(|| "_(not recorded)_".to_owned(), cell)),
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

    fn snapshot(ratios: &[(i64, f64)]) -> Snapshot {
        let mut s = Snapshot::new(10);
        for i in 0..3 {
            let t = 1_700_000_000 + i * 10;
            s.push(Signal::HttpRequestsPerSecond, Role::Canary, t, 100.0);
            s.push(Signal::HttpRequestsPerSecond, Role::Baseline, t, 999.0);
        }
        for (t, ratio) in ratios {
            s.push(Signal::Http5xxRatio, Role::Canary, *t, *ratio);
        }
        s
    }

    #[test]
    fn impact_counts_requests_and_failures_and_the_burn_rate() {
        let s = snapshot(&[(1_700_000_000, 0.0), (1_700_000_010, 0.01), (1_700_000_020, 0.02)]);
        let text = impact(&s, 0.999, "before", &[Role::Canary]).unwrap();
        // 3 samples × 100 rps × 10 s; failures 0 + 10 + 20.
        assert!(text.contains("about 3000 requests, 30 of them failed (5xx, 1.000 %)."), "{text}");
        assert!(text.contains("burned 10.0× as fast"), "{text}");
        assert_eq!(impact(&Snapshot::new(10), 0.999, "before", &[Role::Canary]), None);
        // Both roles: the baseline's traffic counts too.
        let both = impact(&s, 0.999, "now", &Role::ALL).unwrap();
        assert!(both.contains("about 32970 requests"), "{both}");
    }

    #[test]
    fn a_missing_5xx_sample_is_not_read_as_no_failures() {
        // The middle sample has no 5xx ratio: the share is over the two
        // paired ones, and the gap is said.
        let s = snapshot(&[(1_700_000_000, 0.02), (1_700_000_020, 0.02)]);
        let text = impact(&s, 0.999, "before", &[Role::Canary]).unwrap();
        assert!(text.contains("40 of them failed (5xx, 2.000 %) (1 request-rate samples had no 5xx sample"), "{text}");
        let none = impact(&snapshot(&[]), 0.999, "before", &[Role::Canary]).unwrap();
        assert!(none.contains("their 5xx ratio was not recorded"), "{none}");
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

    #[test]
    fn a_metrics_file_outside_the_bundle_or_changed_is_not_used() {
        let tmp = tempfile::tempdir().unwrap();
        let bundle = tmp.path().join("b");
        std::fs::create_dir(&bundle).unwrap();
        std::fs::write(tmp.path().join("outside.txt"), "x").unwrap();
        for name in ["../outside.txt", "/etc/hostname", "a/b.txt"] {
            let e = metrics_in(&bundle, &serde_json::json!({"name": name, "sha256": "0"})).unwrap_err();
            assert!(e.contains("not a file of its bundle"), "{name}: {e}");
        }
        std::fs::write(bundle.join("m.txt"), "Metrics before\n\nsource: x\n").unwrap();
        let e = metrics_in(&bundle, &serde_json::json!({"name": "m.txt", "sha256": "0"})).unwrap_err();
        assert!(e.contains("its SHA-256 differs"), "{e}");
        let sha = spark_evidence::sha256_hex(b"Metrics before\n\nsource: x\n");
        let e = metrics_in(&bundle, &serde_json::json!({"name": "m.txt", "sha256": sha})).unwrap_err();
        assert_eq!(e, "source: x");
    }
}
