//! The rollback triggers: six standard thresholds, eight enhanced ones, and
//! the two SLO burn-rate pairs. Each reads named signals, fires on the
//! canary, and compares with the baseline so that a degradation the
//! baseline shares holds the canary instead of rolling it back.

use std::fmt;

use serde::Serialize;

use crate::plan::{Above, BurnRate, Plan};
use crate::scope::{Held, Scope, join, ms};
use crate::signal::{Role, Signal};
use crate::snapshot::Window;
use crate::stats::{mann_whitney_greater, median, theil_sen};

/// A trigger's fixed id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum TriggerId {
    /// `api_p95`.
    ApiP95,
    /// `error_rate`.
    ErrorRate,
    /// `feed_stale`.
    FeedStale,
    /// `csp_storm`.
    CspStorm,
    /// `idem_conflicts`.
    IdemConflicts,
    /// `pgbouncer_saturation`.
    PgbouncerSaturation,
    /// `correlated_degradation`.
    CorrelatedDegradation,
    /// `non_improving_latency`.
    NonImprovingLatency,
    /// `memory_leak`.
    MemoryLeak,
    /// `db_connection_leak`.
    DbConnectionLeak,
    /// `outbox_lag_explosion`.
    OutboxLagExplosion,
    /// `idem_key_buildup`.
    IdemKeyBuildup,
    /// `ws_disconnect_storm`.
    WsDisconnectStorm,
    /// `decimal_precision_errors`.
    DecimalPrecisionErrors,
    /// `slo_burn_fast`.
    SloBurnFast,
    /// `slo_burn_slow`.
    SloBurnSlow,
}

impl TriggerId {
    /// Every trigger, in the order they are evaluated and reported: when
    /// several fire at once the first of them names the rollback.
    pub const ALL: [TriggerId; 16] = [
        TriggerId::ApiP95,
        TriggerId::ErrorRate,
        TriggerId::FeedStale,
        TriggerId::CspStorm,
        TriggerId::IdemConflicts,
        TriggerId::PgbouncerSaturation,
        TriggerId::CorrelatedDegradation,
        TriggerId::NonImprovingLatency,
        TriggerId::MemoryLeak,
        TriggerId::DbConnectionLeak,
        TriggerId::OutboxLagExplosion,
        TriggerId::IdemKeyBuildup,
        TriggerId::WsDisconnectStorm,
        TriggerId::DecimalPrecisionErrors,
        TriggerId::SloBurnFast,
        TriggerId::SloBurnSlow,
    ];

    /// The id as in plans, reports and alert labels.
    #[must_use]
    pub const fn id(self) -> &'static str {
        match self {
            TriggerId::ApiP95 => "api_p95",
            TriggerId::ErrorRate => "error_rate",
            TriggerId::FeedStale => "feed_stale",
            TriggerId::CspStorm => "csp_storm",
            TriggerId::IdemConflicts => "idem_conflicts",
            TriggerId::PgbouncerSaturation => "pgbouncer_saturation",
            TriggerId::CorrelatedDegradation => "correlated_degradation",
            TriggerId::NonImprovingLatency => "non_improving_latency",
            TriggerId::MemoryLeak => "memory_leak",
            TriggerId::DbConnectionLeak => "db_connection_leak",
            TriggerId::OutboxLagExplosion => "outbox_lag_explosion",
            TriggerId::IdemKeyBuildup => "idem_key_buildup",
            TriggerId::WsDisconnectStorm => "ws_disconnect_storm",
            TriggerId::DecimalPrecisionErrors => "decimal_precision_errors",
            TriggerId::SloBurnFast => "slo_burn_fast",
            TriggerId::SloBurnSlow => "slo_burn_slow",
        }
    }

    /// The trigger with this id.
    #[must_use]
    pub fn from_id(id: &str) -> Option<TriggerId> {
        TriggerId::ALL.into_iter().find(|t| t.id() == id)
    }

    /// The signals it reads.
    #[must_use]
    pub const fn signals(self) -> &'static [Signal] {
        match self {
            TriggerId::ApiP95 => &[Signal::ApiLatencyP95Seconds],
            TriggerId::ErrorRate | TriggerId::SloBurnFast | TriggerId::SloBurnSlow => {
                &[Signal::Http5xxRatio, Signal::HttpRequestsPerSecond]
            }
            TriggerId::FeedStale => &[Signal::FeedStalenessSeconds],
            TriggerId::CspStorm => &[Signal::CspViolationsPerMinute],
            TriggerId::IdemConflicts => &[Signal::IdempotencyConflictRatio, Signal::HttpRequestsPerSecond],
            TriggerId::PgbouncerSaturation => &[Signal::PgbouncerSaturationRatio],
            TriggerId::CorrelatedDegradation => {
                &[Signal::RiskBlocksPerMinute, Signal::Http5xxRatio, Signal::HttpRequestsPerSecond]
            }
            TriggerId::NonImprovingLatency => &[Signal::ApiLatencyP95Seconds, Signal::ProcessCpuRatio],
            TriggerId::MemoryLeak => &[Signal::ProcessResidentMemoryBytes],
            TriggerId::DbConnectionLeak => &[Signal::DbConnections, Signal::HttpRequestsPerSecond],
            TriggerId::OutboxLagExplosion => &[Signal::OutboxLagP99Seconds],
            TriggerId::IdemKeyBuildup => &[Signal::IdempotencyExpiredRatio],
            TriggerId::WsDisconnectStorm => &[Signal::WsDisconnectsPerMinute],
            TriggerId::DecimalPrecisionErrors => &[Signal::DecimalPrecisionErrorsTotal],
        }
    }

    /// What it detects, with the plan's thresholds and windows.
    #[must_use]
    pub fn description(self, plan: &Plan) -> String {
        let t = &plan.triggers;
        let above = |what: &str, a: Above, unit: &str| {
            format!("canary {what} > {}{unit} for {}", a.threshold, humantime::format_duration(a.for_))
        };
        let d = |d| humantime::format_duration(d);
        match self {
            TriggerId::ApiP95 => above("API p95", t.api_p95, " s"),
            TriggerId::ErrorRate => {
                format!("{} (with ≥ {} requests)", above("5xx ratio", t.error_rate, ""), plan.min_requests)
            }
            TriggerId::FeedStale => above("market-data feed staleness", t.feed_stale, " s"),
            TriggerId::CspStorm => above("CSP violations", t.csp_storm, "/min"),
            TriggerId::IdemConflicts => {
                format!(
                    "{} (with ≥ {} requests)",
                    above("idempotency conflict ratio", t.idem_conflicts, ""),
                    plan.min_requests
                )
            }
            TriggerId::PgbouncerSaturation => above("pgBouncer saturation", t.pgbouncer_saturation, ""),
            TriggerId::CorrelatedDegradation => {
                let c = t.correlated_degradation;
                format!(
                    "over {}, canary risk blocks and 5xx both higher than baseline (one-sided Mann-Whitney p < {}, relative effect ≥ {})",
                    d(c.window),
                    c.p_value,
                    c.min_effect
                )
            }
            TriggerId::NonImprovingLatency => {
                let n = t.non_improving_latency;
                format!(
                    "canary p95 > {} s for {} while its CPU < {}: waiting, not working",
                    n.latency_above,
                    d(n.for_),
                    n.cpu_below
                )
            }
            TriggerId::MemoryLeak => {
                let m = t.memory_leak;
                format!(
                    "canary RSS Theil–Sen slope over the stage (≥ {} of data, at most the last {}) > {} of its starting value per minute and > {}× the baseline's",
                    d(m.min_window),
                    d(m.max_window),
                    m.slope_per_minute,
                    m.baseline_factor
                )
            }
            TriggerId::DbConnectionLeak => {
                let c = t.db_connection_leak;
                format!(
                    "canary DB connections rise (Theil–Sen slope > 0, ≥ {} over {}) while its request rate does not (rise ≤ {})",
                    c.min_rise,
                    d(c.window),
                    c.rate_tolerance
                )
            }
            TriggerId::OutboxLagExplosion => {
                let o = t.outbox_lag_explosion;
                format!(
                    "outbox lag > {} s for {}, or ×{} within {} from at least {} s",
                    o.threshold,
                    d(o.for_),
                    o.factor,
                    d(o.within),
                    o.from_at_least
                )
            }
            TriggerId::IdemKeyBuildup => {
                format!("{}: GC not keeping up", above("expired idempotency key ratio", t.idem_key_buildup, ""))
            }
            TriggerId::WsDisconnectStorm => {
                let w = t.ws_disconnect_storm;
                format!(
                    "canary WebSocket disconnects > {}/min and > {}× baseline for {}",
                    w.threshold,
                    w.baseline_factor,
                    d(w.for_)
                )
            }
            TriggerId::DecimalPrecisionErrors => {
                "any increase of the canary's decimal precision error counter during the stage".to_owned()
            }
            TriggerId::SloBurnFast | TriggerId::SloBurnSlow => {
                let b = if self == TriggerId::SloBurnFast { t.slo_burn_fast } else { t.slo_burn_slow };
                format!(
                    "error budget of the {} SLO burning > {}× over {} and over {}",
                    plan.slo.objective,
                    b.factor,
                    d(b.long),
                    d(b.short)
                )
            }
        }
    }
}

impl fmt::Display for TriggerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl Serialize for TriggerId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.id())
    }
}

/// A trigger's state at one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerStatus {
    /// Evaluated, not firing.
    Ok,
    /// Firing on the canary and not on the baseline: roll back.
    Firing,
    /// Firing on the canary and the baseline alike: the platform, not the
    /// release; the canary holds.
    Platform,
    /// Too few requests or samples to judge; it cannot fire.
    Insufficient,
    /// A signal it reads has no data.
    Missing,
    /// Turned off in the plan.
    Off,
}

/// One trigger's result: its status and the values it judged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TriggerResult {
    /// Which trigger.
    pub id: TriggerId,
    /// Its state.
    pub status: TriggerStatus,
    /// The values judged (canary, baseline, threshold, requests, …).
    #[serde(serialize_with = "values_as_map")]
    pub values: Vec<(&'static str, f64)>,
    /// Why, in words (empty when `ok`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

fn values_as_map<S: serde::Serializer>(values: &[(&'static str, f64)], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_map(values.iter().map(|(k, v)| (*k, v.is_finite().then_some(*v))))
}

/// Evaluates every trigger at one instant.
pub(crate) fn evaluate_all(sc: &Scope<'_>) -> Vec<TriggerResult> {
    TriggerId::ALL.into_iter().map(|id| evaluate(sc, id)).collect()
}

struct Out {
    status: TriggerStatus,
    values: Vec<(&'static str, f64)>,
    detail: Option<Box<dyn FnOnce() -> String>>,
}

impl Out {
    fn new(status: TriggerStatus, values: Vec<(&'static str, f64)>) -> Out {
        Out { status, values, detail: None }
    }

    fn why(mut self, detail: impl FnOnce() -> String + 'static) -> Out {
        self.detail = Some(Box::new(detail));
        self
    }
}

fn evaluate(sc: &Scope<'_>, id: TriggerId) -> TriggerResult {
    let t = &sc.plan.triggers;
    let out = match id {
        TriggerId::ApiP95 => above(sc, Signal::ApiLatencyP95Seconds, t.api_p95, false),
        TriggerId::ErrorRate => above(sc, Signal::Http5xxRatio, t.error_rate, true),
        TriggerId::FeedStale => above(sc, Signal::FeedStalenessSeconds, t.feed_stale, false),
        TriggerId::CspStorm => above(sc, Signal::CspViolationsPerMinute, t.csp_storm, false),
        TriggerId::IdemConflicts => above(sc, Signal::IdempotencyConflictRatio, t.idem_conflicts, true),
        TriggerId::PgbouncerSaturation => above(sc, Signal::PgbouncerSaturationRatio, t.pgbouncer_saturation, false),
        TriggerId::IdemKeyBuildup => above(sc, Signal::IdempotencyExpiredRatio, t.idem_key_buildup, false),
        TriggerId::CorrelatedDegradation => correlated(sc),
        TriggerId::NonImprovingLatency => non_improving(sc),
        TriggerId::MemoryLeak => memory_leak(sc),
        TriggerId::DbConnectionLeak => connection_leak(sc),
        TriggerId::OutboxLagExplosion => outbox_lag(sc),
        TriggerId::WsDisconnectStorm => disconnect_storm(sc),
        TriggerId::DecimalPrecisionErrors => decimal_errors(sc),
        TriggerId::SloBurnFast => burn(sc, t.slo_burn_fast),
        TriggerId::SloBurnSlow => burn(sc, t.slo_burn_slow),
    };
    let out = if enabled(sc.plan, id) { out } else { Out::new(TriggerStatus::Off, Vec::new()) };
    TriggerResult { id, status: out.status, values: out.values, detail: out.detail.map(|f| f()).unwrap_or_default() }
}

pub(crate) fn enabled(plan: &Plan, id: TriggerId) -> bool {
    let t = &plan.triggers;
    match id {
        TriggerId::ApiP95 => t.api_p95.enabled,
        TriggerId::ErrorRate => t.error_rate.enabled,
        TriggerId::FeedStale => t.feed_stale.enabled,
        TriggerId::CspStorm => t.csp_storm.enabled,
        TriggerId::IdemConflicts => t.idem_conflicts.enabled,
        TriggerId::PgbouncerSaturation => t.pgbouncer_saturation.enabled,
        TriggerId::CorrelatedDegradation => t.correlated_degradation.enabled,
        TriggerId::NonImprovingLatency => t.non_improving_latency.enabled,
        TriggerId::MemoryLeak => t.memory_leak.enabled,
        TriggerId::DbConnectionLeak => t.db_connection_leak.enabled,
        TriggerId::OutboxLagExplosion => t.outbox_lag_explosion.enabled,
        TriggerId::IdemKeyBuildup => t.idem_key_buildup.enabled,
        TriggerId::WsDisconnectStorm => t.ws_disconnect_storm.enabled,
        TriggerId::DecimalPrecisionErrors => t.decimal_precision_errors.enabled,
        TriggerId::SloBurnFast => t.slo_burn_fast.enabled,
        TriggerId::SloBurnSlow => t.slo_burn_slow.enabled,
    }
}

fn fmt_d(d: i64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(u64::try_from(d).unwrap_or(0))).to_string()
}

/// Firing on the canary: `Platform` when the baseline meets the same
/// condition, `Firing` otherwise.
fn fired(baseline_too: bool, values: Vec<(&'static str, f64)>, detail: String) -> Out {
    if baseline_too {
        Out::new(TriggerStatus::Platform, values).why(move || format!("{detail}; the baseline too"))
    } else {
        Out::new(TriggerStatus::Firing, values).why(move || detail)
    }
}

fn short(have: usize, need: usize, d: i64) -> impl FnOnce() -> String + 'static {
    move || format!("{have} of the {need} samples {} needs", fmt_d(d))
}

/// A canary signal above a threshold at every sample of `for`.
fn above(sc: &Scope<'_>, signal: Signal, a: Above, ratio: bool) -> Out {
    let d = ms(a.for_);
    let mut values = vec![("threshold", a.threshold)];
    if ratio {
        let requests = sc.requests(Role::Canary, d);
        values.push(("requests", requests));
        if requests < sc.plan.min_requests {
            let min = sc.plan.min_requests;
            return Out::new(TriggerStatus::Insufficient, values)
                .why(move || format!("{requests} requests in {}, fewer than {min}", fmt_d(d)));
        }
    }
    let th = a.threshold;
    let canary = sc.held(signal, Role::Canary, d, |v| v > th);
    if let Some(last) = canary.last() {
        values.push(("canary", last));
    }
    match canary {
        Held::Missing => Out::new(TriggerStatus::Missing, values).why(move || format!("no canary {signal}")),
        Held::Short { have, need } => Out::new(TriggerStatus::Insufficient, values).why(short(have, need, d)),
        Held::No { .. } => Out::new(TriggerStatus::Ok, values),
        Held::Yes { last } => {
            // The baseline shares the degradation when its typical value over
            // the same window is past the threshold too: its median, not every
            // sample, so that one baseline sample dipping just under the line
            // does not turn a platform-wide degradation into a rollback.
            let baseline = sc.window(signal, Role::Baseline, d);
            let mut b_values = baseline.v.to_vec();
            let b_median = median(&mut b_values);
            if let Some(b) = b_median {
                values.push(("baseline_median", b));
            }
            let covered = baseline.len() * 2 >= sc.need(d);
            let baseline_too = covered
                && b_median.is_some_and(|b| b > th)
                && (!ratio || sc.requests(Role::Baseline, d) >= sc.plan.min_requests);
            fired(baseline_too, values, format!("canary {signal} {last} > {th} for {}", fmt_d(d)))
        }
    }
}

fn mean(v: &[f64]) -> f64 {
    #[allow(clippy::cast_precision_loss, reason = "a window holds few samples")]
    let n = v.len() as f64;
    v.iter().sum::<f64>() / n
}

/// The canary's mean over the baseline's, minus one; infinite when only the
/// canary is above zero.
fn effect(canary: &[f64], baseline: &[f64]) -> f64 {
    let (c, b) = (mean(canary), mean(baseline));
    if b > 0.0 {
        c / b - 1.0
    } else if c > 0.0 {
        f64::INFINITY
    } else {
        0.0
    }
}

/// The fewest samples a side of a Mann-Whitney test may have.
const MIN_SAMPLES: usize = 8;

fn correlated(sc: &Scope<'_>) -> Out {
    let c = sc.plan.triggers.correlated_degradation;
    let d = ms(c.window);
    let requests = sc.requests(Role::Canary, d);
    let mut values = vec![("requests", requests)];
    if requests < sc.plan.min_requests {
        let min = sc.plan.min_requests;
        return Out::new(TriggerStatus::Insufficient, values)
            .why(move || format!("{requests} requests in {}, fewer than {min}", fmt_d(d)));
    }
    let w = |s, r| sc.window(s, r, d);
    let sides = [
        (w(Signal::Http5xxRatio, Role::Canary), w(Signal::Http5xxRatio, Role::Baseline)),
        (w(Signal::RiskBlocksPerMinute, Role::Canary), w(Signal::RiskBlocksPerMinute, Role::Baseline)),
    ];
    if sides.iter().any(|(a, b)| a.is_empty() || b.is_empty()) {
        return Out::new(TriggerStatus::Missing, values)
            .why(|| "needs http_5xx_ratio and risk_blocks_per_minute for canary and baseline".to_owned());
    }
    if let Some(fewest) = sides.iter().map(|(a, b)| a.len().min(b.len())).min().filter(|&n| n < MIN_SAMPLES) {
        return Out::new(TriggerStatus::Insufficient, values)
            .why(move || format!("{fewest} samples on a side, a test needs {MIN_SAMPLES}"));
    }
    let e5 = effect(sides[0].0.v, sides[0].1.v);
    let er = effect(sides[1].0.v, sides[1].1.v);
    values.extend([("effect_5xx", e5), ("effect_risk_blocks", er)]);
    if e5 < c.min_effect || er < c.min_effect {
        return Out::new(TriggerStatus::Ok, values);
    }
    let p5 = mann_whitney_greater(sides[0].0.v, sides[0].1.v).unwrap_or(1.0);
    let pr = mann_whitney_greater(sides[1].0.v, sides[1].1.v).unwrap_or(1.0);
    values.extend([("p_5xx", p5), ("p_risk_blocks", pr)]);
    if p5 < c.p_value && pr < c.p_value {
        let detail = format!(
            "canary 5xx +{:.0}% (p = {p5:.2e}) and risk blocks +{:.0}% (p = {pr:.2e}) over the baseline in {}",
            e5 * 100.0,
            er * 100.0,
            fmt_d(d)
        );
        fired(false, values, detail)
    } else {
        Out::new(TriggerStatus::Ok, values)
    }
}

fn non_improving(sc: &Scope<'_>) -> Out {
    let n = sc.plan.triggers.non_improving_latency;
    let d = ms(n.for_);
    let role_holds = |role| {
        let slow = sc.held(Signal::ApiLatencyP95Seconds, role, d, |v| v > n.latency_above);
        let idle = sc.held(Signal::ProcessCpuRatio, role, d, |v| v < n.cpu_below);
        (slow, idle)
    };
    let (slow, idle) = role_holds(Role::Canary);
    let mut values = vec![("latency_above", n.latency_above), ("cpu_below", n.cpu_below)];
    values.extend(slow.last().map(|v| ("canary_p95", v)));
    values.extend(idle.last().map(|v| ("canary_cpu", v)));
    match (slow, idle) {
        (Held::Missing, _) | (_, Held::Missing) => {
            Out::new(TriggerStatus::Missing, values).why(|| "needs canary p95 and CPU".to_owned())
        }
        (Held::Short { have, need }, _) | (_, Held::Short { have, need }) => {
            Out::new(TriggerStatus::Insufficient, values).why(short(have, need, d))
        }
        (Held::Yes { last: p95 }, Held::Yes { last: cpu }) => {
            let (b_slow, b_idle) = role_holds(Role::Baseline);
            let detail =
                format!("canary p95 {p95} > {} s with CPU {cpu} < {} for {}", n.latency_above, n.cpu_below, fmt_d(d));
            fired(b_slow.yes() && b_idle.yes(), values, detail)
        }
        _ => Out::new(TriggerStatus::Ok, values),
    }
}

/// The median of the values in the first minute of a window.
fn start_value(w: Window<'_>) -> f64 {
    let first = w.t[0];
    let end = w.t.partition_point(|&t| t < first + 60_000).max(1);
    let mut head = w.v[..end].to_vec();
    median(&mut head).unwrap_or(w.v[0])
}

fn memory_leak(sc: &Scope<'_>) -> Out {
    let m = sc.plan.triggers.memory_leak;
    let from = sc.since.max(sc.at.saturating_sub(ms(m.max_window)));
    let canary = sc.since(Signal::ProcessResidentMemoryBytes, Role::Canary, from);
    if canary.is_empty() {
        return Out::new(TriggerStatus::Missing, Vec::new()).why(|| "no canary RSS in the stage".to_owned());
    }
    let span = canary.t[canary.len() - 1] - canary.t[0] + sc.metrics.step_ms();
    let min = ms(m.min_window);
    if span < min || canary.len() < 2 {
        return Out::new(TriggerStatus::Insufficient, vec![("minutes", minutes(span))])
            .why(move || format!("{} of data, {} needed", fmt_d(span), fmt_d(min)));
    }
    let slope = |w: Window<'_>| theil_sen(w.t, w.v).map(|per_second| per_second * 60.0);
    let c_slope = slope(canary).unwrap_or(0.0);
    let start = start_value(canary);
    let c_rel = if start > 0.0 { c_slope / start } else { 0.0 };
    let mut values = vec![("canary_slope_per_minute", c_rel), ("threshold", m.slope_per_minute)];
    if c_rel <= m.slope_per_minute {
        return Out::new(TriggerStatus::Ok, values);
    }
    let baseline = sc.since(Signal::ProcessResidentMemoryBytes, Role::Baseline, from);
    let b = (baseline.len() >= 2).then(|| slope(baseline)).flatten();
    let b_rel = b.map(|s| {
        let start = start_value(baseline);
        if start > 0.0 { s / start } else { 0.0 }
    });
    values.extend(b_rel.map(|r| ("baseline_slope_per_minute", r)));
    let detail = format!("canary RSS +{:.2}%/min over {}", c_rel * 100.0, fmt_d(span));
    let baseline_too = b_rel.is_some_and(|b| c_rel <= m.baseline_factor * b);
    fired(baseline_too, values, detail)
}

#[allow(clippy::cast_precision_loss, reason = "minutes of a window")]
fn minutes(ms: i64) -> f64 {
    ms as f64 / 60_000.0
}

fn connection_leak(sc: &Scope<'_>) -> Out {
    let c = sc.plan.triggers.db_connection_leak;
    let d = ms(c.window);
    // 80 % of the window's samples: a scrape or two may be missing.
    let need = (sc.need(d) * 4 / 5).max(2);
    let leaking = |role| -> Result<(bool, f64, f64), (usize, bool)> {
        let conns = sc.window(Signal::DbConnections, role, d);
        let rate = sc.window(Signal::HttpRequestsPerSecond, role, d);
        if conns.is_empty() || rate.is_empty() {
            return Err((0, true));
        }
        if conns.len() < need || rate.len() < need {
            return Err((conns.len().min(rate.len()), false));
        }
        let window_s = minutes(d) * 60.0;
        let slope = theil_sen(conns.t, conns.v).unwrap_or(0.0);
        let rise = slope * window_s / start_value(conns).max(1.0);
        if slope <= 0.0 || rise < c.min_rise {
            // Not rising: the request rate's trend cannot change the answer.
            return Ok((false, rise, f64::NAN));
        }
        let mut rates = rate.v.to_vec();
        let typical = median(&mut rates).unwrap_or(0.0);
        let rate_rise = theil_sen(rate.t, rate.v).unwrap_or(0.0) * window_s / typical.max(f64::MIN_POSITIVE);
        let rate_rise = if typical > 0.0 { rate_rise } else { 0.0 };
        Ok((slope > 0.0 && rise >= c.min_rise && rate_rise <= c.rate_tolerance, rise, rate_rise))
    };
    match leaking(Role::Canary) {
        Err((_, true)) => Out::new(TriggerStatus::Missing, Vec::new())
            .why(|| "needs canary db_connections and http_requests_per_second".to_owned()),
        Err((have, false)) => Out::new(TriggerStatus::Insufficient, Vec::new()).why(short(have, need, d)),
        Ok((false, rise, rate_rise)) => {
            Out::new(TriggerStatus::Ok, vec![("rise", rise), ("rate_rise", rate_rise), ("min_rise", c.min_rise)])
        }
        Ok((true, rise, rate_rise)) => {
            let baseline_too = matches!(leaking(Role::Baseline), Ok((true, _, _)));
            let values = vec![("rise", rise), ("rate_rise", rate_rise), ("min_rise", c.min_rise)];
            let detail = format!(
                "canary DB connections +{:.0}% over {} while requests changed {:+.0}%",
                rise * 100.0,
                fmt_d(d),
                rate_rise * 100.0
            );
            fired(baseline_too, values, detail)
        }
    }
}

fn outbox_lag(sc: &Scope<'_>) -> Out {
    let o = sc.plan.triggers.outbox_lag_explosion;
    let d = ms(o.for_);
    let within = ms(o.within);
    let exploding = |role| -> Option<(bool, f64)> {
        let held = sc.held(Signal::OutboxLagP99Seconds, role, d, |v| v > o.threshold);
        let w = sc.window(Signal::OutboxLagP99Seconds, role, within);
        let (_, last) = w.last()?;
        let base = w.v.iter().copied().fold(f64::INFINITY, f64::min);
        let tripled = base >= o.from_at_least && last >= o.factor * base;
        Some((held.yes() || tripled, last))
    };
    match exploding(Role::Canary) {
        None => Out::new(TriggerStatus::Missing, Vec::new()).why(|| "no canary outbox lag".to_owned()),
        Some((false, last)) => Out::new(TriggerStatus::Ok, vec![("canary", last), ("threshold", o.threshold)]),
        Some((true, last)) => {
            let baseline_too = exploding(Role::Baseline).is_some_and(|(fires, _)| fires);
            let detail = format!(
                "outbox lag {last} s: above {} s for {} or ×{} within {}",
                o.threshold,
                fmt_d(d),
                o.factor,
                fmt_d(within)
            );
            fired(baseline_too, vec![("canary", last), ("threshold", o.threshold)], detail)
        }
    }
}

fn disconnect_storm(sc: &Scope<'_>) -> Out {
    let w = sc.plan.triggers.ws_disconnect_storm;
    let d = ms(w.for_);
    let canary = sc.held(Signal::WsDisconnectsPerMinute, Role::Canary, d, |v| v > w.threshold);
    let mut values = vec![("threshold", w.threshold)];
    values.extend(canary.last().map(|v| ("canary", v)));
    match canary {
        Held::Missing => {
            Out::new(TriggerStatus::Missing, values).why(|| "no canary ws_disconnects_per_minute".to_owned())
        }
        Held::Short { have, need } => Out::new(TriggerStatus::Insufficient, values).why(short(have, need, d)),
        Held::No { .. } => Out::new(TriggerStatus::Ok, values),
        Held::Yes { last } => {
            // Where the baseline has a sample, the canary must exceed it by
            // the factor at every one; with no baseline (the 100 % stage)
            // the threshold alone decides.
            let mut above_baseline = true;
            join(
                sc.window(Signal::WsDisconnectsPerMinute, Role::Canary, d),
                sc.window(Signal::WsDisconnectsPerMinute, Role::Baseline, d),
                |c, b| above_baseline &= c > w.baseline_factor * b,
            );
            let baseline = sc.window(Signal::WsDisconnectsPerMinute, Role::Baseline, d).last();
            values.extend(baseline.map(|(_, b)| ("baseline", b)));
            let detail = format!("canary {last} WebSocket disconnects/min > {} for {}", w.threshold, fmt_d(d));
            fired(!above_baseline, values, detail)
        }
    }
}

/// A counter's increase over a window with Prometheus's reset rule: a drop
/// means the process restarted, and the new value is all increase.
fn increase(base: Option<f64>, w: Window<'_>) -> f64 {
    let mut prev = base;
    let mut total = 0.0;
    for &v in w.v {
        total += match prev {
            Some(p) if v >= p => v - p,
            Some(_) => v,
            None => 0.0,
        };
        prev = Some(v);
    }
    total
}

fn decimal_errors(sc: &Scope<'_>) -> Out {
    let counted = |role| {
        let series = sc.metrics.series(Signal::DecimalPrecisionErrorsTotal, role);
        // The last value before the stage is the base, so an error in the
        // first interval of a stage counts.
        let base = series.window(i64::MIN, sc.since).last().map(|(_, v)| v);
        let w = sc.since(Signal::DecimalPrecisionErrorsTotal, role, sc.since);
        (!w.is_empty()).then(|| increase(base, w))
    };
    match counted(Role::Canary) {
        None => Out::new(TriggerStatus::Missing, Vec::new())
            .why(|| "no canary decimal_precision_errors_total in the stage".to_owned()),
        Some(0.0) => Out::new(TriggerStatus::Ok, vec![("increase", 0.0)]),
        Some(inc) => {
            let baseline_too = counted(Role::Baseline).is_some_and(|b| b > 0.0);
            fired(baseline_too, vec![("increase", inc)], format!("{inc} decimal precision errors in the stage"))
        }
    }
}

fn burn(sc: &Scope<'_>, b: BurnRate) -> Out {
    let budget = 1.0 - sc.plan.slo.objective;
    let (long, short_w) = (ms(b.long), ms(b.short));
    let burns = |role| -> Option<(f64, f64, f64)> {
        let (long_ratio, _) = sc.error_ratio(role, long)?;
        let (short_ratio, short_requests) = sc.error_ratio(role, short_w)?;
        Some((long_ratio / budget, short_ratio / budget, short_requests))
    };
    let Some((l, s, requests)) = burns(Role::Canary) else {
        return Out::new(TriggerStatus::Missing, Vec::new()).why(|| "no canary 5xx ratio and request rate".to_owned());
    };
    let values = vec![("burn_long", l), ("burn_short", s), ("factor", b.factor), ("requests", requests)];
    if requests < sc.plan.min_requests {
        let min = sc.plan.min_requests;
        return Out::new(TriggerStatus::Insufficient, values)
            .why(move || format!("{requests} requests in {}, fewer than {min}", fmt_d(short_w)));
    }
    if l > b.factor && s > b.factor {
        let baseline_too = burns(Role::Baseline)
            .is_some_and(|(bl, bs, breq)| bl > b.factor && bs > b.factor && breq >= sc.plan.min_requests);
        let detail = format!(
            "error budget burning {l:.1}× over {} and {s:.1}× over {} (limit {}×)",
            fmt_d(long),
            fmt_d(short_w),
            b.factor
        );
        fired(baseline_too, values, detail)
    } else {
        Out::new(TriggerStatus::Ok, values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_every_trigger_is_described() {
        let plan = Plan::default();
        for id in TriggerId::ALL {
            assert_eq!(TriggerId::from_id(id.id()), Some(id));
            assert!(!id.signals().is_empty());
            assert!(!id.description(&plan).is_empty());
        }
        assert!(TriggerId::ApiP95.description(&plan).contains("> 0.4 s for 5m"));
    }

    #[test]
    fn counter_increase_counts_resets_as_restarts() {
        let t = [1, 2, 3, 4];
        let w = |v: &'static [f64]| Window { t: &t[..v.len()], v };
        assert_eq!(increase(Some(2.0), w(&[2.0, 2.0, 3.0])), 1.0);
        assert_eq!(increase(Some(5.0), w(&[1.0, 1.0])), 1.0);
        assert_eq!(increase(None, w(&[4.0, 4.0])), 0.0);
        assert_eq!(increase(None, w(&[0.0, 1.0])), 1.0);
    }
}
