//! `first_night_<release>.md`, rendered from the journal after every
//! interval: a header, one section per interval (the values, what changed
//! since the interval before, the error budget left, the triggers and the
//! quick checks), and the summary at the end. Rendering the whole file
//! from the journal, written aside and renamed over the old one, keeps the
//! report equal to the record even across a crash between the two.

use std::fmt::Write as _;
use std::path::Path;

use super::journal::{IntervalRecord, JournalLine, WatchStart};
use super::{CheckResult, WatchSummary};
use crate::plan::Plan;
use crate::signal::Signal;
use crate::trigger::TriggerStatus;

/// Writes the report for `lines` to `path`, whole.
pub(crate) fn write(path: &Path, lines: &[JournalLine], plan: &Plan) -> Result<(), crate::RollbackError> {
    let text = render(lines, plan);
    let aside = path.with_extension("md.tmp");
    let io = |source| crate::RollbackError::Io { path: path.to_owned(), source };
    std::fs::write(&aside, text).map_err(io)?;
    std::fs::rename(&aside, path).map_err(io)
}

/// The report as Markdown.
pub(crate) fn render(lines: &[JournalLine], plan: &Plan) -> String {
    let mut out = String::new();
    let mut previous: Option<&IntervalRecord> = None;
    let mut go = None;
    // Rollbacks whose interval was journaled: their start line says nothing
    // more. One that never was is in doubt, and said so where it stands.
    let done: Vec<u32> = lines
        .iter()
        .filter_map(|l| match l {
            JournalLine::Interval(r) if r.rollback.is_some() => Some(r.n),
            _ => None,
        })
        .collect();
    for line in lines {
        match line {
            JournalLine::Start(start) => {
                header(&mut out, start, plan);
                go = Some(&start.baseline_medians);
            }
            JournalLine::Interval(record) => {
                section(&mut out, record, previous, go);
                // Changes are told against the last interval that could be
                // read, as incidents are counted.
                if record.source_error.is_none() {
                    previous = Some(record);
                }
            }
            JournalLine::RollbackStarted(r) if !done.contains(&r.n) => {
                let _ = writeln!(
                    out,
                    "**A rollback on {} started at {} (interval {}) and was never journaled as done**: the watch stopped while it ran, so its outcome is UNKNOWN.\n",
                    r.trigger, r.at, r.n
                );
            }
            JournalLine::RollbackStarted(_) => {}
            JournalLine::End(summary) => end(&mut out, summary),
        }
    }
    out
}

fn header(out: &mut String, s: &WatchStart, plan: &Plan) {
    let d = |secs: u64| humantime::format_duration(std::time::Duration::from_secs(secs)).to_string();
    let _ = writeln!(out, "# First night of {}\n", s.release);
    let _ = writeln!(out, "- started: {}", s.started_at);
    let _ = writeln!(
        out,
        "- duration: {}, evaluated every {} (query step {} s)",
        d(s.duration_seconds),
        d(s.interval_seconds),
        s.step_seconds
    );
    let _ = writeln!(
        out,
        "- SLO: {} of requests without a 5xx; the watch's error budget is the {} of its requests that may fail",
        percent(s.slo_objective),
        percent(1.0 - s.slo_objective)
    );
    match &s.baseline {
        Some(b) => {
            let _ = writeln!(out, "- GO-time baseline: `{}` (sha256 `{}`), {} to {}", b.source, b.sha256, b.from, b.to);
        }
        None => {
            let _ = writeln!(out, "- GO-time baseline: none given; triggers judge the release alone");
        }
    }
    let _ = writeln!(
        out,
        "- burn rates in this report read the watch's own data (at most the last 1 h and 6 h since it started); \
         the slo_burn triggers read their full windows"
    );
    let enabled = crate::trigger::TriggerId::ALL.iter().filter(|t| crate::trigger::enabled(plan, **t)).count();
    let _ = writeln!(out, "- triggers: {enabled} of {} enabled in the plan\n", crate::trigger::TriggerId::ALL.len());
}

fn section(
    out: &mut String,
    r: &IntervalRecord,
    previous: Option<&IntervalRecord>,
    go: Option<&std::collections::BTreeMap<String, f64>>,
) {
    let late = if r.caught_up { " (caught up from Prometheus's history after a restart)" } else { "" };
    let _ = writeln!(out, "## Interval {}: {}{late}\n", r.n, r.at);
    if let Some(e) = &r.source_error {
        let _ = writeln!(out, "**The metrics could not be read**: {e}. Nothing was judged at this interval.\n");
    } else {
        let budget = r.budget_left.map_or_else(|| "unknown (no requests yet)".to_owned(), percent_signed);
        let burn = |b: Option<f64>| b.map_or_else(|| "missing".to_owned(), |b| format!("{b:.2}×"));
        let _ = writeln!(
            out,
            "Error budget left: **{budget}**. Burn rate: 1 h {}, 6 h {}. Requests in the interval: {:.0}, failed: {:.1}.\n",
            burn(r.burn_1h),
            burn(r.burn_6h),
            r.requests,
            r.failed
        );
        if r.firing.is_empty() {
            let _ = writeln!(out, "Triggers: none firing.\n");
        } else {
            let _ = writeln!(out, "Triggers **FIRING**:\n");
            for f in &r.firing {
                let values: Vec<String> = f
                    .values
                    .iter()
                    .map(|(k, v)| format!("{k} {}", v.map_or_else(|| "missing".to_owned(), value)))
                    .collect();
                let _ = writeln!(out, "- **{}**: {} ({})", f.trigger, f.detail, values.join(", "));
            }
            out.push('\n');
        }
    }
    if !r.checks.is_empty() {
        let checks: Vec<String> = r.checks.iter().map(check).collect();
        let _ = writeln!(out, "Quick checks: {}.\n", checks.join("; "));
    } else if r.caught_up {
        let _ = writeln!(out, "Quick checks: not run (they measure the present).\n");
    }
    if !r.values.is_empty() {
        let _ = writeln!(out, "| signal | now | since the last interval | GO time (median) |\n|---|---|---|---|");
        for signal in Signal::ALL {
            let now = r.values.get(signal.name()).copied().flatten();
            let before = previous.and_then(|p| p.values.get(signal.name()).copied().flatten());
            let change = match (before, now) {
                (Some(b), Some(n)) if b == n => "unchanged".to_owned(),
                (Some(b), Some(n)) => format!("{} (from {})", signed(n - b), value(b)),
                (None, Some(_)) if previous.is_some() => "appeared".to_owned(),
                (Some(_), None) => "went missing".to_owned(),
                _ => String::new(),
            };
            let at_go = go.and_then(|m| m.get(signal.name())).map_or_else(|| "missing".to_owned(), |v| value(*v));
            let now = now.map_or_else(|| "missing".to_owned(), value);
            let _ = writeln!(out, "| {} | {now} | {change} | {at_go} |", signal.name());
        }
        out.push('\n');
    }
    let changes = changes(r, previous);
    let _ = writeln!(
        out,
        "Changed since the last interval: {}.\n",
        if changes.is_empty() { "nothing".to_owned() } else { changes.join("; ") }
    );
    for s in &r.notifications {
        let _ = writeln!(out, "Slack ({}): {} after {} attempt(s): {}.\n", s.about, s.outcome, s.attempts, s.detail);
    }
    if let Some(rb) = &r.rollback {
        let how = if rb.succeeded { "every action succeeded" } else { "an action FAILED" };
        match &rb.error {
            Some(e) => {
                let _ = writeln!(out, "**Rolled back** on {}, outcome UNKNOWN: {e}.\n", rb.trigger);
            }
            None => {
                let _ = writeln!(out, "**Rolled back** on {}: {how}; evidence in `{}`.\n", rb.trigger, rb.bundle);
            }
        }
    }
    if let Some(file) = &r.snapshot {
        let _ = writeln!(
            out,
            "The snapshot this evaluation read: `{}` (sha256 `{}`), replayable with `spark canary replay`.\n",
            file.name, file.sha256
        );
    }
    if !r.ambiguous.is_empty() {
        let _ = writeln!(
            out,
            "Left missing: {} answered with several series and no `role` label; aggregate the query.\n",
            r.ambiguous.join(", ")
        );
    }
}

/// Trigger and check statuses that moved since `previous`.
fn changes(r: &IntervalRecord, previous: Option<&IntervalRecord>) -> Vec<String> {
    let Some(p) = previous else { return Vec::new() };
    let mut out = Vec::new();
    for (id, now) in &r.triggers {
        let before = p.triggers.get(id).copied();
        if before != Some(*now) && !(before.is_none() && *now == TriggerStatus::Off) {
            out.push(format!("trigger {id} {} → {}", before.map_or("unevaluated", status), status(*now)));
        }
    }
    for c in &r.checks {
        let before = p.checks.iter().find(|b| b.id == c.id).map(|b| b.status);
        if before.is_some_and(|b| b != c.status) {
            out.push(format!("check {} {} → {}", c.id, before.map_or("", |b| b.name()), c.status.name()));
        }
    }
    if p.source_error.is_some() != r.source_error.is_some() {
        out.push(
            if r.source_error.is_some() { "the metrics became unreadable" } else { "the metrics are readable again" }
                .to_owned(),
        );
    }
    out
}

fn status(s: TriggerStatus) -> &'static str {
    match s {
        TriggerStatus::Ok => "ok",
        TriggerStatus::Firing => "firing",
        TriggerStatus::Platform => "platform",
        TriggerStatus::Insufficient => "insufficient",
        TriggerStatus::Missing => "missing",
        TriggerStatus::Off => "off",
    }
}

fn check(c: &CheckResult) -> String {
    let name = c.status.name();
    let name = if c.status >= super::CheckStatus::Warn { name.to_uppercase() } else { name.to_owned() };
    format!("{} {name} ({})", c.id, c.summary.replace('\n', " "))
}

fn end(out: &mut String, s: &WatchSummary) {
    let _ = writeln!(out, "## Summary\n");
    let _ = writeln!(out, "- verdict: **{}**", s.verdict.name());
    let _ = writeln!(out, "- watched {} intervals, {} to {}", s.intervals, s.started_at, s.ended_at);
    let consumed = s.budget_consumed.map_or_else(|| "unknown (no requests)".to_owned(), percent);
    let _ = writeln!(out, "- error budget consumed: {consumed} ({:.1} failed of {:.0} requests)", s.failed, s.requests);
    let _ = writeln!(
        out,
        "- quick-check failures: {} interval(s); metrics unreadable: {} interval(s)",
        s.check_failures, s.source_errors
    );
    if s.incidents.is_empty() {
        let _ = writeln!(out, "- incidents: none");
    } else {
        let _ = writeln!(out, "- incidents:");
        for i in &s.incidents {
            let rollback = i.rollback.as_ref().map_or_else(String::new, |rb| match &rb.error {
                Some(e) => format!("; rolled back, outcome UNKNOWN ({e})"),
                None => format!(
                    "; rolled back ({}), evidence `{}`",
                    if rb.succeeded { "succeeded" } else { "an action FAILED" },
                    rb.bundle
                ),
            });
            let _ = writeln!(
                out,
                "  - {} fired from {} to {} ({} interval(s)); Slack {}{rollback}",
                i.trigger, i.first_at, i.last_at, i.intervals, i.notified
            );
        }
    }
}

/// A value with at most four decimals, trailing zeros dropped.
fn value(v: f64) -> String {
    if v.abs() >= 1000.0 {
        return format!("{v:.0}");
    }
    if v != 0.0 && v.abs() < 0.001 {
        return format!("{v:.2e}");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".to_owned() } else { s.to_owned() }
}

fn signed(v: f64) -> String {
    if v >= 0.0 { format!("+{}", value(v)) } else { value(v) }
}

fn percent(share: f64) -> String {
    format!("{} %", value(share * 100.0))
}

fn percent_signed(share: f64) -> String {
    if share < 0.0 { format!("{} (overspent)", percent(share)) } else { percent(share) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_short_and_exact_enough() {
        assert_eq!(value(0.25), "0.25");
        assert_eq!(value(0.000_04), "4.00e-5");
        assert_eq!(value(0.0), "0");
        assert_eq!(value(1_234_567.8), "1234568");
        assert_eq!(signed(0.1), "+0.1");
        assert_eq!(percent(0.999), "99.9 %");
        assert_eq!(percent_signed(-0.5), "-50 % (overspent)");
    }
}
