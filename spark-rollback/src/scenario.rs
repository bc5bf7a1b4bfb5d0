//! One synthetic scenario per trigger: the signals it reads, healthy for ten
//! minutes and then degraded so that it fires. The engine's firing time on
//! it becomes the time the exported Prometheus alert must fire at in the
//! generated promtool test, which is how the two are proven equal.

use std::time::Duration;

use crate::engine::Engine;
use crate::error::RollbackError;
use crate::plan::{Plan, Stage};
use crate::signal::{Role, Signal};
use crate::snapshot::{Metrics, Snapshot};
use crate::trigger::TriggerId;

/// The resolution of every scenario, seconds.
pub const STEP_SECONDS: i64 = 15;
/// How many samples a scenario holds (40 minutes).
const POINTS: i64 = 160;
/// When the degradation starts, seconds from the first sample: aligned to
/// the evaluation interval, so that the engine's instants and Prometheus's
/// evaluations land on the same times.
const ONSET: i64 = 600;

/// A trigger's synthetic series and when the engine fires on them.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The trigger.
    pub trigger: TriggerId,
    /// The series, starting at unix second 0 (promtool's time origin).
    pub snapshot: Snapshot,
    /// When the engine, with only this trigger enabled, rolls back: seconds
    /// from the first sample.
    pub fires_at_seconds: i64,
}

/// The value of `signal` for `role` at second `t` of `trigger`'s scenario.
fn value(trigger: TriggerId, signal: Signal, role: Role, t: i64) -> Option<f64> {
    let after = t >= ONSET;
    let canary = role == Role::Canary;
    let bad = after && canary;
    #[allow(clippy::cast_precision_loss, reason = "seconds of a 40-minute scenario")]
    let minutes = t as f64 / 60.0;
    let v = match (trigger, signal) {
        (_, Signal::HttpRequestsPerSecond) => 50.0,
        (TriggerId::ApiP95 | TriggerId::NonImprovingLatency, Signal::ApiLatencyP95Seconds) => {
            if bad {
                if trigger == TriggerId::ApiP95 { 0.6 } else { 0.3 }
            } else {
                0.1
            }
        }
        (TriggerId::NonImprovingLatency, Signal::ProcessCpuRatio) => 0.1,
        (TriggerId::ErrorRate | TriggerId::SloBurnFast | TriggerId::SloBurnSlow, Signal::Http5xxRatio) => {
            if bad {
                0.05
            } else {
                0.001
            }
        }
        (TriggerId::FeedStale, Signal::FeedStalenessSeconds) => {
            if bad {
                200.0
            } else {
                1.0
            }
        }
        (TriggerId::CspStorm, Signal::CspViolationsPerMinute) => {
            if bad {
                100.0
            } else {
                0.0
            }
        }
        (TriggerId::IdemConflicts, Signal::IdempotencyConflictRatio) => {
            if bad {
                0.1
            } else {
                0.001
            }
        }
        (TriggerId::PgbouncerSaturation, Signal::PgbouncerSaturationRatio) => {
            if bad {
                0.95
            } else {
                0.3
            }
        }
        (TriggerId::IdemKeyBuildup, Signal::IdempotencyExpiredRatio) => {
            if bad {
                0.2
            } else {
                0.01
            }
        }
        // Both more than a quarter above the baseline's after the onset;
        // the means cross +25 % nine samples in, between two samples, so
        // that no comparison rests on float equality.
        (TriggerId::CorrelatedDegradation, Signal::Http5xxRatio) => {
            if bad {
                0.0088
            } else {
                0.004
            }
        }
        (TriggerId::CorrelatedDegradation, Signal::RiskBlocksPerMinute) => {
            if bad {
                0.44
            } else {
                0.2
            }
        }
        // The canary grows 2 % of its start per minute from the first
        // sample; the baseline is flat.
        (TriggerId::MemoryLeak, Signal::ProcessResidentMemoryBytes) => {
            if canary {
                500e6 * (1.0 + 0.02 * minutes)
            } else {
                500e6
            }
        }
        // One more connection a minute from 20, at a flat request rate.
        (TriggerId::DbConnectionLeak, Signal::DbConnections) => {
            if canary {
                20.0 + minutes
            } else {
                20.0
            }
        }
        (TriggerId::OutboxLagExplosion, Signal::OutboxLagP99Seconds) => {
            if bad {
                30.0
            } else {
                0.2
            }
        }
        (TriggerId::WsDisconnectStorm, Signal::WsDisconnectsPerMinute) => {
            if bad {
                30.0
            } else {
                1.0
            }
        }
        (TriggerId::DecimalPrecisionErrors, Signal::DecimalPrecisionErrorsTotal) => {
            if bad {
                1.0
            } else {
                0.0
            }
        }
        _ => return None,
    };
    Some(v)
}

/// The scenario of `trigger`.
///
/// # Errors
/// [`RollbackError::Range`] when the engine does not roll back on it by
/// this trigger (a defect of the scenario or of the trigger).
pub fn scenario(plan: &Plan, trigger: TriggerId) -> Result<Scenario, RollbackError> {
    let mut snapshot = Snapshot::new(u32::try_from(STEP_SECONDS).unwrap_or(15));
    for signal in trigger.signals().iter().copied().chain([Signal::HttpRequestsPerSecond]) {
        if snapshot.signals.contains_key(signal.name()) {
            continue;
        }
        for role in Role::ALL {
            for i in 0..POINTS {
                let t = i * STEP_SECONDS;
                if let Some(v) = value(trigger, signal, role, t) {
                    snapshot.push(signal, role, t, v);
                }
            }
        }
    }
    let engine = Engine::new(only(plan, trigger))?;
    let metrics = Metrics::from_snapshot(&snapshot)?;
    let stage = engine.plan().stages[0].clone();
    let replay = engine.replay(&metrics, &stage, 0, None)?;
    match replay.decision().trigger() {
        Some(fired) if fired == trigger => {
            Ok(Scenario { trigger, snapshot, fires_at_seconds: replay.last.at_ms / 1000 })
        }
        _ => Err(RollbackError::Range(format!(
            "the {trigger} scenario does not roll back by {trigger}: {} ({})",
            replay.decision().kind(),
            replay.last.reason
        ))),
    }
}

/// `plan` with only `trigger` enabled and one stage too long to promote, so
/// that a replay runs until that trigger fires (and no other trigger, such
/// as an SLO burn left by an earlier incident, decides first).
#[must_use]
pub fn only(plan: &Plan, trigger: TriggerId) -> Plan {
    let mut plan = plan.clone();
    let t = &mut plan.triggers;
    for id in TriggerId::ALL {
        let on = id == trigger;
        match id {
            TriggerId::ApiP95 => t.api_p95.enabled = on,
            TriggerId::ErrorRate => t.error_rate.enabled = on,
            TriggerId::FeedStale => t.feed_stale.enabled = on,
            TriggerId::CspStorm => t.csp_storm.enabled = on,
            TriggerId::IdemConflicts => t.idem_conflicts.enabled = on,
            TriggerId::PgbouncerSaturation => t.pgbouncer_saturation.enabled = on,
            TriggerId::CorrelatedDegradation => t.correlated_degradation.enabled = on,
            TriggerId::NonImprovingLatency => t.non_improving_latency.enabled = on,
            TriggerId::MemoryLeak => t.memory_leak.enabled = on,
            TriggerId::DbConnectionLeak => t.db_connection_leak.enabled = on,
            TriggerId::OutboxLagExplosion => t.outbox_lag_explosion.enabled = on,
            TriggerId::IdemKeyBuildup => t.idem_key_buildup.enabled = on,
            TriggerId::WsDisconnectStorm => t.ws_disconnect_storm.enabled = on,
            TriggerId::DecimalPrecisionErrors => t.decimal_precision_errors.enabled = on,
            TriggerId::SloBurnFast => t.slo_burn_fast.enabled = on,
            TriggerId::SloBurnSlow => t.slo_burn_slow.enabled = on,
        }
    }
    let weight = plan.stages[plan.stages.len() - 1].weight;
    plan.stages = vec![Stage { weight, duration: Duration::from_secs(100 * 3600) }];
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_trigger_fires_on_its_scenario() {
        let plan = Plan::default();
        for id in TriggerId::ALL {
            let s = scenario(&plan, id).unwrap_or_else(|e| panic!("{e}"));
            assert!(s.fires_at_seconds >= 15, "{id} fired at {}", s.fires_at_seconds);
            assert_eq!(s.fires_at_seconds % 30, 0, "{id}: on an evaluation instant");
        }
    }
}
