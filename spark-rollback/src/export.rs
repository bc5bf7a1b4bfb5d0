//! Prometheus rules from the very triggers the engine evaluates, so the
//! alerts Prometheus fires and the rollbacks the engine decides cannot drift
//! apart.
//!
//! One rule group, evaluated at the snapshot step:
//!
//! - a recording rule `spark:<signal>` per signal, from the plan's query;
//! - `spark:http_5xx_per_second` and the four burn-rate recording rules
//!   `spark:slo_burn_rate:<window>` (errors over requests in the window,
//!   weighted by request rate exactly as the engine weighs them, over the
//!   error budget);
//! - an alert per trigger (`SparkCanary…`, labels `trigger`, `severity`,
//!   `spark="canary"`), with the engine's platform rule where PromQL can say
//!   it (`unless` the baseline's median crosses the same line);
//! - an `absent()` companion per signal the triggers read, so missing data
//!   alerts instead of passing silently.
//!
//! Where PromQL cannot say what the engine computes (Mann-Whitney U,
//! Theil–Sen, a stage's start), the alert is the closest approximation and
//! its `approximation` annotation says so.
//!
//! The file is YAML written by hand: every string is a JSON string, which is
//! a valid YAML double-quoted scalar, so no YAML library (the maintained
//! ones are in flux) is needed to write it exactly.

use std::fmt::Write as _;
use std::time::Duration;

use crate::plan::Plan;
use crate::signal::Signal;
use crate::trigger::TriggerId;

/// What the rules are exported with besides the plan.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The group's evaluation interval: the snapshot step the engine reads
    /// (requests in a window are Σ rate × this).
    pub step_seconds: u32,
    /// Where each alert's runbook lives; the trigger id is appended as an
    /// anchor (`…#api_p95`).
    pub runbook_base: String,
}

impl Default for ExportOptions {
    fn default() -> ExportOptions {
        ExportOptions { step_seconds: 15, runbook_base: "spark-rollback/README.md".to_owned() }
    }
}

/// One alerting rule.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    /// `SparkCanaryApiP95`, …
    pub alert: String,
    /// The trigger it stands for (`None` for an `absent()` companion).
    pub trigger: Option<TriggerId>,
    /// The PromQL.
    pub expr: String,
    /// Prometheus's `for`: the trigger's `for` less one step (see
    /// [`alert_rules`]).
    pub for_: Duration,
    /// `critical` (roll back) or `warning` (data missing).
    pub severity: &'static str,
    /// The description annotation.
    pub description: String,
    /// Why the PromQL only approximates the engine, when it does.
    pub approximation: Option<&'static str>,
}

/// The recorded name of a signal.
#[must_use]
pub fn recorded(signal: Signal) -> String {
    format!("spark:{}", signal.name())
}

fn canary(signal: Signal) -> String {
    format!("{}{{role=\"canary\"}}", recorded(signal))
}

fn baseline(signal: Signal) -> String {
    format!("{}{{role=\"baseline\"}}", recorded(signal))
}

/// Prometheus's duration syntax (`5m`, `1h`, `90s`).
#[must_use]
pub fn prom_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s == 0 {
        "0s".to_owned()
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// The burn-rate windows recorded: each distinct long and short window.
fn burn_windows(plan: &Plan) -> Vec<Duration> {
    let t = &plan.triggers;
    let mut windows = vec![t.slo_burn_fast.long, t.slo_burn_fast.short, t.slo_burn_slow.long, t.slo_burn_slow.short];
    windows.sort();
    windows.dedup();
    windows
}

/// The recording rules: `(record, expr)`.
#[must_use]
pub fn recording_rules(plan: &Plan) -> Vec<(String, String)> {
    let mut rules: Vec<(String, String)> =
        Signal::ALL.iter().map(|s| (recorded(*s), plan.query(*s).to_owned())).collect();
    rules.push((
        "spark:http_5xx_per_second".to_owned(),
        format!("{} * on(role) {}", recorded(Signal::Http5xxRatio), recorded(Signal::HttpRequestsPerSecond)),
    ));
    let budget = 1.0 - plan.slo.objective;
    for w in burn_windows(plan) {
        let w = prom_duration(w);
        rules.push((
            format!("spark:slo_burn_rate:{w}"),
            format!(
                "sum_over_time(spark:http_5xx_per_second[{w}]) / on(role) sum_over_time({}[{w}]) / {budget}",
                recorded(Signal::HttpRequestsPerSecond)
            ),
        ));
    }
    rules
}

/// `and` the canary served at least the plan's minimum requests in `d`.
fn enough_requests(plan: &Plan, d: Duration, step: u32) -> String {
    format!(
        " and on() (sum_over_time({}[{}]) * {step} >= {})",
        canary(Signal::HttpRequestsPerSecond),
        prom_duration(d),
        plan.min_requests
    )
}

/// The alerting rules, one or more per trigger, then the `absent()`
/// companions.
#[must_use]
pub fn alert_rules(plan: &Plan, options: &ExportOptions) -> Vec<AlertRule> {
    let t = &plan.triggers;
    let step = options.step_seconds;
    let mut rules = Vec::new();
    // The engine fires when every sample of (at − D, at] holds: D/step
    // samples, the first at at − D + step. Prometheus counts `for` from its
    // first true evaluation, so `for: D − step` fires at the same evaluation.
    let step_duration = Duration::from_secs(u64::from(step));
    let mut push = |id: TriggerId, alert: &str, expr: String, for_: Duration, approximation: Option<&'static str>| {
        rules.push(AlertRule {
            alert: alert.to_owned(),
            trigger: Some(id),
            expr,
            for_: for_.saturating_sub(step_duration),
            severity: "critical",
            description: id.description(plan),
            approximation,
        });
    };
    // A threshold held for `for`, unless the baseline's median over the same
    // window crosses it too (the engine's platform hold).
    let above = |signal: Signal, threshold: f64, d: Duration, ratio: bool| {
        let mut expr = format!(
            "{} > {threshold} unless on() (quantile_over_time(0.5, {}[{}]) > {threshold})",
            canary(signal),
            baseline(signal),
            prom_duration(d)
        );
        if ratio {
            expr.push_str(&enough_requests(plan, d, step));
        }
        expr
    };
    let enabled = |id: TriggerId| crate::trigger::enabled(plan, id);
    if enabled(TriggerId::ApiP95) {
        let a = t.api_p95;
        push(
            TriggerId::ApiP95,
            "SparkCanaryApiP95",
            above(Signal::ApiLatencyP95Seconds, a.threshold, a.for_, false),
            a.for_,
            None,
        );
    }
    if enabled(TriggerId::ErrorRate) {
        let a = t.error_rate;
        push(
            TriggerId::ErrorRate,
            "SparkCanaryErrorRate",
            above(Signal::Http5xxRatio, a.threshold, a.for_, true),
            a.for_,
            None,
        );
    }
    if enabled(TriggerId::FeedStale) {
        let a = t.feed_stale;
        push(
            TriggerId::FeedStale,
            "SparkCanaryFeedStale",
            above(Signal::FeedStalenessSeconds, a.threshold, a.for_, false),
            a.for_,
            None,
        );
    }
    if enabled(TriggerId::CspStorm) {
        let a = t.csp_storm;
        push(
            TriggerId::CspStorm,
            "SparkCanaryCspStorm",
            above(Signal::CspViolationsPerMinute, a.threshold, a.for_, false),
            a.for_,
            None,
        );
    }
    if enabled(TriggerId::IdemConflicts) {
        let a = t.idem_conflicts;
        let expr = above(Signal::IdempotencyConflictRatio, a.threshold, a.for_, true);
        push(TriggerId::IdemConflicts, "SparkCanaryIdemConflicts", expr, a.for_, None);
    }
    if enabled(TriggerId::PgbouncerSaturation) {
        let a = t.pgbouncer_saturation;
        let expr = above(Signal::PgbouncerSaturationRatio, a.threshold, a.for_, false);
        push(TriggerId::PgbouncerSaturation, "SparkCanaryPgbouncerSaturation", expr, a.for_, None);
    }
    if enabled(TriggerId::CorrelatedDegradation) {
        let c = t.correlated_degradation;
        let w = prom_duration(c.window);
        // Both sides zero is no effect (as in the engine), not 0 ≥ 0.
        let higher = |s: Signal| {
            format!(
                "avg_over_time({c}[{w}]) >= on() {} * avg_over_time({}[{w}]) and on() avg_over_time({c}[{w}]) > 0",
                1.0 + c.min_effect,
                baseline(s),
                c = canary(s),
            )
        };
        // A comparison matched `on()` keeps no labels; the canary's 5xx mean
        // in front keeps `role` on the alert, as every other alert has it.
        let expr = format!(
            "avg_over_time({}[{w}]) and on() ({}) and on() ({}){}",
            canary(Signal::Http5xxRatio),
            higher(Signal::Http5xxRatio),
            higher(Signal::RiskBlocksPerMinute),
            enough_requests(plan, c.window, step)
        );
        push(
            TriggerId::CorrelatedDegradation,
            "SparkCanaryCorrelatedDegradation",
            expr,
            Duration::ZERO,
            Some(
                "the engine also requires a one-sided Mann-Whitney U p-value below the plan's; PromQL compares the means only",
            ),
        );
    }
    if enabled(TriggerId::NonImprovingLatency) {
        let n = t.non_improving_latency;
        let slow_and_idle = |role: &str| {
            format!(
                "{p}{{role=\"{role}\"}} > {} and on(role) {c}{{role=\"{role}\"}} < {}",
                n.latency_above,
                n.cpu_below,
                p = recorded(Signal::ApiLatencyP95Seconds),
                c = recorded(Signal::ProcessCpuRatio),
            )
        };
        let expr = format!("{} unless on() ({})", slow_and_idle("canary"), slow_and_idle("baseline"));
        push(TriggerId::NonImprovingLatency, "SparkCanaryNonImprovingLatency", expr, n.for_, None);
    }
    if enabled(TriggerId::MemoryLeak) {
        let m = t.memory_leak;
        let w = prom_duration(m.min_window);
        let rss = Signal::ProcessResidentMemoryBytes;
        // As the engine: no slope before min_window of samples.
        let need = m.min_window.as_secs() / u64::from(step.max(1));
        let expr = format!(
            "deriv({c}[{w}]) * 60 > {} * min_over_time({c}[{w}]) and on() count_over_time({c}[{w}]) >= {need} and on() (deriv({c}[{w}]) / min_over_time({c}[{w}]) > on() {} * deriv({b}[{w}]) / min_over_time({b}[{w}]) or on() absent({b}))",
            m.slope_per_minute,
            m.baseline_factor,
            c = canary(rss),
            b = baseline(rss),
        );
        push(
            TriggerId::MemoryLeak,
            "SparkCanaryMemoryLeak",
            expr,
            Duration::ZERO,
            Some(
                "the engine uses a Theil–Sen slope over the stage (min_window to max_window) from the stage's starting value; PromQL uses deriv() (least squares) over min_window against its minimum",
            ),
        );
    }
    if enabled(TriggerId::DbConnectionLeak) {
        let d = t.db_connection_leak;
        let w = prom_duration(d.window);
        let secs = d.window.as_secs();
        // As the engine: 80 % of the window's samples, a scrape or two may
        // be missing.
        let need = (secs / u64::from(step.max(1)) * 4 / 5).max(2);
        let leaking = |role: &str| {
            format!(
                "deriv({c}[{w}]) > 0 and on() count_over_time({c}[{w}]) >= {need} and on() deriv({c}[{w}]) * {secs} >= {} * clamp_min(min_over_time({c}[{w}]), 1) and on() deriv({r}[{w}]) * {secs} <= {} * avg_over_time({r}[{w}])",
                d.min_rise,
                d.rate_tolerance,
                c = format!("{}{{role=\"{role}\"}}", recorded(Signal::DbConnections)),
                r = format!("{}{{role=\"{role}\"}}", recorded(Signal::HttpRequestsPerSecond)),
            )
        };
        let expr = format!("{} unless on() ({})", leaking("canary"), leaking("baseline"));
        push(
            TriggerId::DbConnectionLeak,
            "SparkCanaryDbConnectionLeak",
            expr,
            Duration::ZERO,
            Some(
                "the engine uses Theil–Sen slopes and the window's starting value; PromQL uses deriv() (least squares) and the window's minimum",
            ),
        );
    }
    if enabled(TriggerId::OutboxLagExplosion) {
        let o = t.outbox_lag_explosion;
        let lag = Signal::OutboxLagP99Seconds;
        push(
            TriggerId::OutboxLagExplosion,
            "SparkCanaryOutboxLagExplosion",
            above(lag, o.threshold, o.for_, false),
            o.for_,
            None,
        );
        let w = prom_duration(o.within);
        let tripled = |role: &str| {
            format!(
                "{c} >= {} * min_over_time({c}[{w}]) and on() min_over_time({c}[{w}]) >= {}",
                o.factor,
                o.from_at_least,
                c = format!("{}{{role=\"{role}\"}}", recorded(lag))
            )
        };
        let expr = format!("{} unless on() ({})", tripled("canary"), tripled("baseline"));
        push(TriggerId::OutboxLagExplosion, "SparkCanaryOutboxLagTripled", expr, Duration::ZERO, None);
    }
    if enabled(TriggerId::IdemKeyBuildup) {
        let a = t.idem_key_buildup;
        let expr = above(Signal::IdempotencyExpiredRatio, a.threshold, a.for_, false);
        push(TriggerId::IdemKeyBuildup, "SparkCanaryIdemKeyBuildup", expr, a.for_, None);
    }
    if enabled(TriggerId::WsDisconnectStorm) {
        let w = t.ws_disconnect_storm;
        let s = Signal::WsDisconnectsPerMinute;
        let expr = format!(
            "{c} > {} unless on() ({} * {b} >= on() {c})",
            w.threshold,
            w.baseline_factor,
            c = canary(s),
            b = baseline(s)
        );
        push(TriggerId::WsDisconnectStorm, "SparkCanaryWsDisconnectStorm", expr, w.for_, None);
    }
    if enabled(TriggerId::DecimalPrecisionErrors) {
        let (c, b) = (canary(Signal::DecimalPrecisionErrorsTotal), baseline(Signal::DecimalPrecisionErrorsTotal));
        push(
            TriggerId::DecimalPrecisionErrors,
            "SparkCanaryDecimalPrecisionErrors",
            format!("increase({c}[1h]) > 0 unless on() (increase({b}[1h]) > 0)"),
            Duration::ZERO,
            Some("the engine counts from the stage's start; PromQL looks back one hour"),
        );
    }
    for (id, b, alert) in [
        (TriggerId::SloBurnFast, t.slo_burn_fast, "SparkCanarySloBurnFast"),
        (TriggerId::SloBurnSlow, t.slo_burn_slow, "SparkCanarySloBurnSlow"),
    ] {
        if enabled(id) {
            let (long, short) = (prom_duration(b.long), prom_duration(b.short));
            let burning = |role: &str| {
                format!(
                    "spark:slo_burn_rate:{long}{{role=\"{role}\"}} > {f} and on(role) spark:slo_burn_rate:{short}{{role=\"{role}\"}} > {f}",
                    f = b.factor,
                )
            };
            let expr = format!(
                "{}{} unless on() ({})",
                burning("canary"),
                enough_requests(plan, b.short, step),
                burning("baseline")
            );
            push(id, alert, expr, Duration::ZERO, None);
        }
    }
    // Missing data alerts: every signal some enabled trigger reads.
    let mut read: Vec<Signal> =
        TriggerId::ALL.iter().filter(|id| enabled(**id)).flat_map(|id| id.signals().iter().copied()).collect();
    read.sort();
    read.dedup();
    let missing_for = plan.interval * 3;
    for signal in read {
        rules.push(AlertRule {
            alert: "SparkCanarySignalMissing".to_owned(),
            trigger: None,
            expr: format!("absent({})", canary(signal)),
            for_: missing_for,
            severity: "warning",
            description: format!(
                "no canary {signal}: the triggers that read it cannot fire, and the engine holds a stage whose gates need it"
            ),
            approximation: None,
        });
    }
    rules
}

/// JSON string quoting, which YAML reads as a double-quoted scalar.
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// The rules file (`groups:` YAML) for `plan`.
#[must_use]
pub fn prometheus_rules(plan: &Plan, options: &ExportOptions) -> String {
    let mut out = String::new();
    out.push_str("# Generated by `spark rules export` from the canary plan's triggers: the engine\n");
    out.push_str("# and Prometheus read the same thresholds. Regenerate instead of editing.\n");
    out.push_str("groups:\n");
    let _ = writeln!(out, "  - name: {}", q("spark-canary"));
    let _ = writeln!(out, "    interval: {}", q(&format!("{}s", options.step_seconds)));
    out.push_str("    rules:\n");
    for (record, expr) in recording_rules(plan) {
        let _ = writeln!(out, "      - record: {}", q(&record));
        let _ = writeln!(out, "        expr: {}", q(&expr));
    }
    for rule in alert_rules(plan, options) {
        let _ = writeln!(out, "      - alert: {}", q(&rule.alert));
        let _ = writeln!(out, "        expr: {}", q(&rule.expr));
        if !rule.for_.is_zero() {
            let _ = writeln!(out, "        for: {}", q(&prom_duration(rule.for_)));
        }
        out.push_str("        labels:\n");
        let _ = writeln!(out, "          severity: {}", q(rule.severity));
        let _ = writeln!(out, "          spark: {}", q("canary"));
        let signal = rule.expr.strip_prefix("absent(spark:").and_then(|r| r.split('{').next());
        match (rule.trigger, signal) {
            (Some(id), _) => {
                let _ = writeln!(out, "          trigger: {}", q(id.id()));
            }
            (None, Some(signal)) => {
                let _ = writeln!(out, "          signal: {}", q(signal));
            }
            (None, None) => {}
        }
        out.push_str("        annotations:\n");
        for (key, value) in annotations(&rule, options) {
            let _ = writeln!(out, "          {key}: {}", q(&value));
        }
    }
    out
}

/// promtool unit tests for `plan`'s alerts: for each enabled trigger, its
/// [`scenario`](crate::scenario::scenario) as input series (the recorded
/// `spark:<signal>` names, so they hold for any plan's queries), the alert
/// expected firing at the time the engine rolls back, and expected silent
/// one engine interval before. `rules_file` is the rules file's path as the
/// test file names it (relative to the test file's directory).
///
/// # Errors
/// [`crate::RollbackError::Range`] when a trigger does not fire on its own
/// scenario.
pub fn promtool_tests(plan: &Plan, options: &ExportOptions, rules_file: &str) -> Result<String, crate::RollbackError> {
    if i64::from(options.step_seconds) != crate::scenario::STEP_SECONDS {
        return Err(crate::RollbackError::Range(format!(
            "promtool tests are generated at the scenarios' {} s step; export them with a step of {} s (the rules at {} s would count requests and samples at another step)",
            crate::scenario::STEP_SECONDS,
            crate::scenario::STEP_SECONDS,
            options.step_seconds
        )));
    }
    let step = format!("{}s", crate::scenario::STEP_SECONDS);
    let interval = i64::try_from(plan.interval.as_secs()).unwrap_or(30);
    let rules = alert_rules(plan, options);
    let mut out = String::new();
    out.push_str("# Generated by `spark rules export`: for each trigger, a synthetic series on\n");
    out.push_str("# which the canary engine rolls back at eval_time; the alert must fire then,\n");
    out.push_str("# and not one engine interval before.\n");
    let _ = writeln!(out, "rule_files:\n  - {}", q(rules_file));
    let _ = writeln!(out, "evaluation_interval: {}", q(&step));
    out.push_str("tests:\n");
    for id in TriggerId::ALL {
        if !crate::trigger::enabled(plan, id) {
            continue;
        }
        let scenario = crate::scenario::scenario(plan, id)?;
        let Some(rule) = rules.iter().find(|r| r.trigger == Some(id)) else { continue };
        let _ = writeln!(out, "  - name: {}", q(id.id()));
        let _ = writeln!(out, "    interval: {}", q(&step));
        out.push_str("    input_series:\n");
        for (name, matrix) in &scenario.snapshot.signals {
            for series in &matrix.result {
                let role = series.metric.get("role").map_or("", String::as_str);
                let values: Vec<&str> = series.values.iter().map(|(_, v)| v.as_str()).collect();
                let _ = writeln!(out, "      - series: {}", q(&format!("spark:{name}{{role=\"{role}\"}}")));
                let _ = writeln!(out, "        values: {}", q(&values.join(" ")));
            }
        }
        out.push_str("    alert_rule_test:\n");
        let at = scenario.fires_at_seconds;
        for (eval, fires) in [(at - interval, false), (at, true)] {
            let _ = writeln!(out, "      - eval_time: {}", q(&format!("{eval}s")));
            let _ = writeln!(out, "        alertname: {}", q(&rule.alert));
            if !fires {
                out.push_str("        exp_alerts: []\n");
                continue;
            }
            out.push_str("        exp_alerts:\n");
            out.push_str("          - exp_labels:\n");
            let _ = writeln!(out, "              role: {}", q("canary"));
            let _ = writeln!(out, "              severity: {}", q(rule.severity));
            let _ = writeln!(out, "              spark: {}", q("canary"));
            let _ = writeln!(out, "              trigger: {}", q(id.id()));
            out.push_str("            exp_annotations:\n");
            for (key, value) in annotations(rule, options) {
                let _ = writeln!(out, "              {key}: {}", q(&value));
            }
        }
    }
    Ok(out)
}

/// A rule's annotations, as the rules file writes them.
fn annotations(rule: &AlertRule, options: &ExportOptions) -> Vec<(&'static str, String)> {
    let summary = match rule.trigger {
        Some(id) => format!("canary trigger {id} fired: roll back"),
        None => "a canary signal is missing".to_owned(),
    };
    let anchor = rule.trigger.map_or("signals", TriggerId::id);
    let mut out = vec![
        ("summary", summary),
        ("description", rule.description.clone()),
        ("runbook_url", format!("{}#{anchor}", options.runbook_base)),
    ];
    if let Some(why) = rule.approximation {
        out.push(("approximation", why.to_owned()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_trigger_has_an_alert_and_every_read_signal_an_absent_companion() {
        let plan = Plan::default();
        let rules = alert_rules(&plan, &ExportOptions::default());
        for id in TriggerId::ALL {
            assert!(rules.iter().any(|r| r.trigger == Some(id)), "{id} has no alert");
        }
        let absent = rules.iter().filter(|r| r.trigger.is_none()).count();
        assert_eq!(absent, 15, "every signal but ws_staleness, which only a gate reads");
        let text = prometheus_rules(&plan, &ExportOptions::default());
        assert!(text.contains("\"spark:slo_burn_rate:6h\""), "{text}");
        assert!(text.contains("for: \"285s\""), "{text}");
    }

    #[test]
    fn a_disabled_trigger_exports_no_alert() {
        let plan = Plan::from_toml("[triggers.memory_leak]\nenabled = false\n").unwrap();
        let rules = alert_rules(&plan, &ExportOptions::default());
        assert!(!rules.iter().any(|r| r.trigger == Some(TriggerId::MemoryLeak)));
    }

    #[test]
    fn durations_in_prometheus_syntax() {
        assert_eq!(prom_duration(Duration::from_secs(300)), "5m");
        assert_eq!(prom_duration(Duration::from_secs(21_600)), "6h");
        assert_eq!(prom_duration(Duration::from_secs(90)), "90s");
    }
}
