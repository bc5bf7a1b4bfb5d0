//! Evaluating against a live source: fetch exactly the range an evaluation
//! reads, then decide, keeping the fetched snapshot as the evidence that
//! replays to the same decision.

use std::time::Duration;

use crate::engine::{Engine, Evaluation};
use crate::error::RollbackError;
use crate::plan::{Plan, Stage};
use crate::snapshot::{Metrics, Snapshot};
use crate::source::{MetricSource, Range};

/// How far back an evaluation reads: the longest window of any trigger (the
/// slow burn rate's six hours by default), plus the two earlier instants
/// whose gates it recomputes.
#[must_use]
pub fn lookback(plan: &Plan) -> Duration {
    let t = &plan.triggers;
    let windows = [
        t.api_p95.for_,
        t.error_rate.for_,
        t.feed_stale.for_,
        t.csp_storm.for_,
        t.idem_conflicts.for_,
        t.pgbouncer_saturation.for_,
        t.correlated_degradation.window,
        t.non_improving_latency.for_,
        t.memory_leak.max_window,
        t.db_connection_leak.window,
        t.outbox_lag_explosion.for_,
        t.outbox_lag_explosion.within,
        t.idem_key_buildup.for_,
        t.ws_disconnect_storm.for_,
        t.slo_burn_fast.long,
        t.slo_burn_slow.long,
    ];
    windows.into_iter().max().unwrap_or_default() + plan.interval * 2
}

/// Fetches from `source` everything an evaluation of `stage` (started at
/// `since_ms`) at `at_ms` reads, at `step_seconds` resolution, and
/// evaluates it. Returns the evaluation and the snapshot it was made from.
///
/// # Errors
/// [`RollbackError::Source`] when the source fails, otherwise as
/// [`Engine::evaluate`].
pub async fn evaluate_live(
    engine: &Engine,
    source: &dyn MetricSource,
    stage: &Stage,
    since_ms: i64,
    at_ms: i64,
    step_seconds: u32,
) -> Result<(Evaluation, Snapshot), RollbackError> {
    let back = i64::try_from(lookback(engine.plan()).as_millis()).unwrap_or(i64::MAX);
    // The last sample before the stage is the base of its counters.
    let start = since_ms.min(at_ms.saturating_sub(back)) - i64::from(step_seconds) * 1000;
    let snapshot = source.fetch(engine.plan(), Range { start_ms: start, end_ms: at_ms, step_seconds }).await?;
    let metrics = Metrics::from_snapshot(&snapshot)?;
    let evaluation = engine.evaluate(&metrics, stage, since_ms, at_ms)?;
    Ok((evaluation, snapshot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_plan_looks_back_six_hours_and_two_intervals() {
        assert_eq!(lookback(&Plan::default()), Duration::from_secs(6 * 3600 + 60));
    }
}
