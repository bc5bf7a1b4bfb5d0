//! The six gates a stage must pass to be promoted.

use serde::Serialize;

use crate::plan::Gate;
use crate::scope::Scope;
use crate::signal::{Role, Signal};

/// A gate's state at one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GateStatus {
    /// The value is within the bound.
    Pass,
    /// It is not.
    Fail,
    /// No recent sample of the signal (or of the baseline, for `csp`).
    Missing,
    /// Fewer requests since the stage started than the plan's minimum.
    Insufficient,
    /// Turned off in the plan.
    Off,
}

/// One gate's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateResult {
    /// `api_p95`, `error_rate`, `ws_staleness`, `risk_blocks`,
    /// `idem_conflicts` or `csp`.
    pub name: &'static str,
    /// The canary's latest value, if there is a recent one.
    pub value: Option<f64>,
    /// The bound it is held to (for `csp`, the baseline's value plus the
    /// allowed share).
    pub threshold: Option<f64>,
    /// The verdict.
    pub status: GateStatus,
}

impl GateResult {
    /// The signal the gate reads.
    #[must_use]
    pub fn signal(&self) -> Signal {
        match self.name {
            "api_p95" => Signal::ApiLatencyP95Seconds,
            "error_rate" => Signal::Http5xxRatio,
            "ws_staleness" => Signal::WsStalenessSeconds,
            "risk_blocks" => Signal::RiskBlocksPerMinute,
            "idem_conflicts" => Signal::IdempotencyConflictRatio,
            _ => Signal::CspViolationsPerMinute,
        }
    }
}

/// Evaluates the six gates at one instant. A value counts when its sample is
/// no older than two steps or one interval, whichever is longer.
pub(crate) fn evaluate_all(sc: &Scope<'_>) -> Vec<GateResult> {
    let g = &sc.plan.gates;
    let fresh = (2 * sc.metrics.step_ms()).max(crate::scope::ms(sc.plan.interval));
    let latest = |signal, role| sc.window(signal, role, fresh).last().map(|(_, v)| v);
    let requests = sc.requests_since(Role::Canary, sc.since);
    let enough = requests >= sc.plan.min_requests;
    let below = |name, gate: Gate, signal, ratio: bool| {
        let value = latest(signal, Role::Canary);
        let status = match (gate.enabled, value) {
            (false, _) => GateStatus::Off,
            (true, None) => GateStatus::Missing,
            (true, Some(_)) if ratio && !enough => GateStatus::Insufficient,
            (true, Some(v)) if v < gate.threshold => GateStatus::Pass,
            (true, Some(_)) => GateStatus::Fail,
        };
        GateResult { name, value, threshold: Some(gate.threshold), status }
    };
    let csp = {
        let value = latest(Signal::CspViolationsPerMinute, Role::Canary);
        let bound = latest(Signal::CspViolationsPerMinute, Role::Baseline).map(|b| b * (1.0 + g.csp.threshold));
        // At most the baseline plus the allowance: zero violations on both
        // sides passes.
        let status = match (g.csp.enabled, value, bound) {
            (false, _, _) => GateStatus::Off,
            (true, Some(v), Some(b)) if v <= b => GateStatus::Pass,
            (true, Some(_), Some(_)) => GateStatus::Fail,
            (true, _, _) => GateStatus::Missing,
        };
        GateResult { name: "csp", value, threshold: bound, status }
    };
    vec![
        below("api_p95", g.api_p95, Signal::ApiLatencyP95Seconds, false),
        below("error_rate", g.error_rate, Signal::Http5xxRatio, true),
        below("ws_staleness", g.ws_staleness, Signal::WsStalenessSeconds, false),
        below("risk_blocks", g.risk_blocks, Signal::RiskBlocksPerMinute, false),
        below("idem_conflicts", g.idem_conflicts, Signal::IdempotencyConflictRatio, true),
        csp,
    ]
}
