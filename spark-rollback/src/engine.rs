//! The decisions: evaluate one instant, replay a stage, and follow a live
//! run through source errors.
//!
//! An evaluation at instant `at` of a stage that started at `since` reads
//! only samples at or before `at`, and the gates of the two instants before
//! it (`at − interval`, `at − 2·interval`), which it recomputes from the same
//! samples. So [`Engine::evaluate`] at an instant and [`Engine::replay`]'s
//! trail entry for that instant are always the same decision, live or
//! replayed.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::ser::SerializeStruct;
use spark_db::SharedClock;

use crate::error::{RollbackError, SourceError};
use crate::gate::{self, GateResult, GateStatus};
use crate::plan::{Plan, Stage};
use crate::scope::{Scope, ms};
use crate::snapshot::Metrics;
use crate::trigger::{self, TriggerId, TriggerResult, TriggerStatus};

/// What to do with the canary now.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Keep observing at this stage.
    Continue,
    /// Move to the next stage (at the last stage: the release is complete).
    Promote,
    /// Inconclusive: do not promote, do not roll back; an operator should
    /// look.
    Hold {
        /// Why.
        reason: String,
    },
    /// Roll back now.
    Rollback {
        /// The trigger that fired (the first in [`TriggerId::ALL`] order).
        trigger: TriggerId,
        /// The evaluation instant, milliseconds since the epoch.
        fired_at: i64,
        /// The values it judged.
        values: BTreeMap<&'static str, f64>,
    },
}

impl Decision {
    /// `continue`, `promote`, `hold` or `rollback`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::Continue => "continue",
            Decision::Promote => "promote",
            Decision::Hold { .. } => "hold",
            Decision::Rollback { .. } => "rollback",
        }
    }

    /// The trigger, for a rollback.
    #[must_use]
    pub fn trigger(&self) -> Option<TriggerId> {
        match self {
            Decision::Rollback { trigger, .. } => Some(*trigger),
            _ => None,
        }
    }

    /// Whether this decision ends the stage (promote or roll back).
    #[must_use]
    pub fn is_final(&self) -> bool {
        matches!(self, Decision::Promote | Decision::Rollback { .. })
    }
}

/// One evaluation: the decision, why, and every gate and trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The decision.
    pub decision: Decision,
    /// The stage.
    pub stage: String,
    /// The instant, milliseconds since the epoch.
    pub at_ms: i64,
    /// Why, in one sentence.
    pub reason: String,
    /// The six gates.
    pub gates: Vec<GateResult>,
    /// Every trigger.
    pub triggers: Vec<TriggerResult>,
}

/// Milliseconds since the epoch as RFC 3339 UTC.
#[must_use]
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

impl Serialize for Evaluation {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Evaluation", 7)?;
        s.serialize_field("decision", self.decision.kind())?;
        s.serialize_field("stage", &self.stage)?;
        s.serialize_field("at", &rfc3339(self.at_ms))?;
        s.serialize_field("trigger", &self.decision.trigger())?;
        s.serialize_field("reason", &self.reason)?;
        s.serialize_field("gates", &self.gates)?;
        s.serialize_field("triggers", &self.triggers)?;
        s.end()
    }
}

/// One line of a replay's trail.
#[derive(Debug, Clone, PartialEq)]
pub struct TrailEntry {
    /// The instant, milliseconds.
    pub at_ms: i64,
    /// The decision's kind.
    pub decision: &'static str,
    /// The trigger, for a rollback.
    pub trigger: Option<TriggerId>,
    /// Why.
    pub reason: String,
}

impl Serialize for TrailEntry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("TrailEntry", 4)?;
        s.serialize_field("at", &rfc3339(self.at_ms))?;
        s.serialize_field("decision", self.decision)?;
        s.serialize_field("trigger", &self.trigger)?;
        s.serialize_field("reason", &self.reason)?;
        s.end()
    }
}

/// A stage replayed interval by interval until it was promoted or rolled
/// back, or the data or `until` ran out.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// The last evaluation: the promote or rollback that ended the replay,
    /// or the decision at its last instant.
    pub last: Evaluation,
    /// Every instant's decision.
    pub trail: Vec<TrailEntry>,
}

impl Replay {
    /// The final decision.
    #[must_use]
    pub fn decision(&self) -> &Decision {
        &self.last.decision
    }
}

impl Serialize for Replay {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Replay", 6)?;
        s.serialize_field("decision", self.last.decision.kind())?;
        s.serialize_field("trigger", &self.last.decision.trigger())?;
        s.serialize_field("decided_at", &rfc3339(self.last.at_ms))?;
        s.serialize_field("reason", &self.last.reason)?;
        s.serialize_field("stage", &self.last.stage)?;
        s.serialize_field("trail", &self.trail)?;
        s.end()
    }
}

/// The canary engine: a validated plan and the decision rules.
///
/// ```
/// use spark_rollback::{Engine, Metrics, Plan, Role, Signal, Snapshot};
///
/// let engine = Engine::new(Plan::default())?;
/// let start = 1_700_000_000;
/// let mut snapshot = Snapshot::new(15);
/// for i in 0..=80 {
///     let t = start + i * 15;
///     for role in Role::ALL {
///         snapshot.push(Signal::HttpRequestsPerSecond, role, t, 50.0);
///         snapshot.push(Signal::Http5xxRatio, role, t, 0.001);
///         snapshot.push(Signal::ApiLatencyP95Seconds, role, t, 0.08);
///         snapshot.push(Signal::WsStalenessSeconds, role, t, 1.0);
///         snapshot.push(Signal::RiskBlocksPerMinute, role, t, 0.0);
///         snapshot.push(Signal::IdempotencyConflictRatio, role, t, 0.0);
///         snapshot.push(Signal::CspViolationsPerMinute, role, t, 0.0);
///     }
/// }
/// let metrics = Metrics::from_snapshot(&snapshot)?;
/// let stage = engine.plan().stage("1%")?;
/// let replay = engine.replay(&metrics, stage, start * 1000, None)?;
/// assert_eq!(replay.decision().kind(), "promote");
/// assert_eq!(replay.last.at_ms, (start + 15 * 60) * 1000); // at the stage minimum
/// # Ok::<(), spark_rollback::RollbackError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Engine {
    plan: Plan,
}

/// How many consecutive evaluations gates must pass (and a gate signal be
/// missing) before the engine promotes (or holds).
const STREAK: usize = 3;

/// How many consecutive source errors hold a live run.
pub const SOURCE_ERRORS_BEFORE_HOLD: u32 = 5;

impl Engine {
    /// An engine for a plan.
    ///
    /// # Errors
    /// [`RollbackError::Plan`] when the plan does not validate.
    pub fn new(plan: Plan) -> Result<Engine, RollbackError> {
        plan.validate()?;
        Ok(Engine { plan })
    }

    /// The plan.
    #[must_use]
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The decision at `at_ms` for `stage`, started at `since_ms`.
    ///
    /// # Errors
    /// [`RollbackError::Range`] when `at_ms` is not after `since_ms`.
    pub fn evaluate(
        &self,
        metrics: &Metrics,
        stage: &Stage,
        since_ms: i64,
        at_ms: i64,
    ) -> Result<Evaluation, RollbackError> {
        if at_ms <= since_ms {
            return Err(RollbackError::Range(format!(
                "the evaluation time {} is not after the stage start {}",
                rfc3339(at_ms),
                rfc3339(since_ms)
            )));
        }
        let interval = ms(self.plan.interval);
        let earlier: Vec<Vec<GateResult>> = (1..STREAK)
            .rev()
            .map(|k| at_ms - interval * i64::try_from(k).unwrap_or(0))
            .filter(|&t| t > since_ms)
            .map(|t| gate::evaluate_all(&self.scope(metrics, since_ms, t)))
            .collect();
        let earlier: Vec<&[GateResult]> = earlier.iter().map(Vec::as_slice).collect();
        Ok(self.decide(metrics, stage, since_ms, at_ms, &earlier))
    }

    /// Evaluates every interval from `since_ms` (the first instant is one
    /// interval after it) until the stage is promoted or rolled back, the
    /// data ends, or `until_ms`.
    ///
    /// # Errors
    /// [`RollbackError::Range`] when there is no instant to evaluate: no
    /// data after `since_ms`, or `until_ms` less than one interval after it.
    pub fn replay(
        &self,
        metrics: &Metrics,
        stage: &Stage,
        since_ms: i64,
        until_ms: Option<i64>,
    ) -> Result<Replay, RollbackError> {
        let interval = ms(self.plan.interval);
        let end = match until_ms {
            Some(until) => until,
            None => metrics.span_ms().map_or(since_ms, |(_, last)| last),
        };
        if end < since_ms + interval {
            return Err(RollbackError::Range(format!(
                "nothing to replay: {} is less than one interval ({}) after the stage start {}",
                rfc3339(end),
                humantime::format_duration(self.plan.interval),
                rfc3339(since_ms)
            )));
        }
        let mut trail = Vec::new();
        let mut recent: Vec<Vec<GateResult>> = Vec::with_capacity(STREAK);
        let mut at = since_ms + interval;
        loop {
            let earlier: Vec<&[GateResult]> = recent.iter().map(Vec::as_slice).collect();
            let evaluation = self.decide(metrics, stage, since_ms, at, &earlier);
            trail.push(TrailEntry {
                at_ms: at,
                decision: evaluation.decision.kind(),
                trigger: evaluation.decision.trigger(),
                reason: evaluation.reason.clone(),
            });
            if evaluation.decision.is_final() || at + interval > end {
                return Ok(Replay { last: evaluation, trail });
            }
            if recent.len() == STREAK - 1 {
                recent.remove(0);
            }
            recent.push(evaluation.gates);
            at += interval;
        }
    }

    fn scope<'a>(&'a self, metrics: &'a Metrics, since: i64, at: i64) -> Scope<'a> {
        Scope { metrics, plan: &self.plan, since, at }
    }

    /// The decision rules, in order: a firing trigger rolls back; a
    /// degradation the baseline shares holds; a gate signal missing at the
    /// last three instants holds; past the stage minimum, too few requests
    /// hold and gates passing at the last three instants promote; otherwise
    /// continue.
    fn decide(&self, metrics: &Metrics, stage: &Stage, since: i64, at: i64, earlier: &[&[GateResult]]) -> Evaluation {
        let sc = self.scope(metrics, since, at);
        let gates = gate::evaluate_all(&sc);
        let triggers = trigger::evaluate_all(&sc);
        let (decision, reason) = self.rule(&sc, stage, &gates, &triggers, earlier);
        Evaluation { decision, stage: stage.weight.to_string(), at_ms: at, reason, gates, triggers }
    }

    fn rule(
        &self,
        sc: &Scope<'_>,
        stage: &Stage,
        gates: &[GateResult],
        triggers: &[TriggerResult],
        earlier: &[&[GateResult]],
    ) -> (Decision, String) {
        if let Some(t) = triggers.iter().find(|t| t.status == TriggerStatus::Firing) {
            let values = t.values.iter().copied().collect();
            let decision = Decision::Rollback { trigger: t.id, fired_at: sc.at, values };
            return (decision, format!("{}: {}", t.id, t.detail));
        }
        if let Some(t) = triggers.iter().find(|t| t.status == TriggerStatus::Platform) {
            let reason = format!(
                "{}: {} — the canary and the baseline degrade alike: the platform, not the release",
                t.id, t.detail
            );
            return (Decision::Hold { reason: reason.clone() }, reason);
        }
        let streak = earlier.len() + 1 >= STREAK;
        let at_all = |status: GateStatus, i: usize| {
            gates[i].status == status && earlier.iter().all(|g| g.get(i).is_some_and(|g| g.status == status))
        };
        if streak && let Some(i) = (0..gates.len()).find(|&i| at_all(GateStatus::Missing, i)) {
            let reason = format!(
                "gate {}: no recent {} at the last {STREAK} evaluations; never promoted on missing data",
                gates[i].name,
                gates[i].signal()
            );
            return (Decision::Hold { reason: reason.clone() }, reason);
        }
        let elapsed = sc.at - sc.since;
        let minimum = ms(stage.duration);
        if elapsed < minimum {
            let left = std::time::Duration::from_millis(u64::try_from(minimum - elapsed).unwrap_or(0));
            return (
                Decision::Continue,
                format!("stage minimum not reached: {} left", humantime::format_duration(left)),
            );
        }
        let requests = sc.requests_since(crate::signal::Role::Canary, sc.since);
        if requests < self.plan.min_requests {
            let reason = format!(
                "too few canary requests to judge: {requests:.0} since the stage started, {} needed",
                self.plan.min_requests
            );
            return (Decision::Hold { reason: reason.clone() }, reason);
        }
        let passing = |i: usize| at_all(GateStatus::Pass, i) || at_all(GateStatus::Off, i);
        if streak && (0..gates.len()).all(passing) {
            return (
                Decision::Promote,
                format!(
                    "stage minimum {} reached and every gate passed at the last {STREAK} evaluations",
                    humantime::format_duration(stage.duration)
                ),
            );
        }
        let failing: Vec<String> = gates
            .iter()
            .filter(|g| !matches!(g.status, GateStatus::Pass | GateStatus::Off))
            .map(|g| match (g.value, g.threshold) {
                (Some(v), Some(t)) => format!("{} {} ({v} vs {t})", g.name, status_word(g.status)),
                _ => format!("{} {}", g.name, status_word(g.status)),
            })
            .collect();
        let reason = if failing.is_empty() {
            format!("waiting for {STREAK} consecutive evaluations with every gate passing")
        } else {
            format!("not promoted: {}", failing.join(", "))
        };
        (Decision::Continue, reason)
    }
}

fn status_word(status: GateStatus) -> &'static str {
    match status {
        GateStatus::Pass => "passes",
        GateStatus::Fail => "fails",
        GateStatus::Missing => "has no recent value",
        GateStatus::Insufficient => "has too few requests",
        GateStatus::Off => "is off",
    }
}

/// A live run of one stage: evaluations as metrics arrive, and source errors
/// counted so that five in a row hold the canary instead of letting it
/// drift on without data.
#[derive(Debug, Clone)]
pub struct Run {
    engine: Engine,
    stage: Stage,
    since_ms: i64,
    clock: SharedClock,
    errors: u32,
}

impl Run {
    /// A run of `stage` (by weight, such as `25%`) started at `since_ms`,
    /// reading the time from `clock`.
    ///
    /// # Errors
    /// [`RollbackError::UnknownStage`] when the plan has no such stage.
    pub fn new(engine: Engine, stage: &str, since_ms: i64, clock: SharedClock) -> Result<Run, RollbackError> {
        let stage = engine.plan().stage(stage)?.clone();
        Ok(Run { engine, stage, since_ms, clock, errors: 0 })
    }

    /// Evaluates fresh metrics now; a success resets the error count.
    ///
    /// # Errors
    /// As [`Engine::evaluate`].
    pub fn observe(&mut self, metrics: &Metrics) -> Result<Evaluation, RollbackError> {
        self.errors = 0;
        self.engine.evaluate(metrics, &self.stage, self.since_ms, self.clock.now_ms())
    }

    /// Records that the source failed now: continue below the limit, hold at
    /// [`SOURCE_ERRORS_BEFORE_HOLD`] in a row.
    pub fn source_failed(&mut self, error: &SourceError) -> Evaluation {
        let at_ms = self.clock.now_ms();
        self.errors += 1;
        let (decision, reason) = if self.errors >= SOURCE_ERRORS_BEFORE_HOLD {
            let reason = format!("{} consecutive source errors, the last: {error}", self.errors);
            (Decision::Hold { reason: reason.clone() }, reason)
        } else {
            (
                Decision::Continue,
                format!("source error {} of {SOURCE_ERRORS_BEFORE_HOLD} before holding: {error}", self.errors),
            )
        };
        Evaluation {
            decision,
            stage: self.stage.weight.to_string(),
            at_ms,
            reason,
            gates: Vec::new(),
            triggers: Vec::new(),
        }
    }
}
