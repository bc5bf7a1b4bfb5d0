//! The canary plan: stages, the evaluation interval, the six gates, every
//! trigger's thresholds and windows, the SLO, and the queries. TOML, with
//! every key optional: a file holds only what differs from the defaults.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::{RollbackError, plan_error};
use crate::rollback::RollbackPlan;
use crate::signal::Signal;
use crate::trigger::TriggerId;
use serde_json::json;

/// A canary plan. [`Plan::default()`] is the seed's plan: 1 %, 5 %, 25 %,
/// 50 % for 15 minutes each and 100 % for 30, evaluated every 30 s.
///
/// ```
/// use spark_rollback::Plan;
///
/// let plan = Plan::from_toml("interval = \"1m\"\n[triggers.api_p95]\nthreshold = 0.5\n")?;
/// assert_eq!(plan.interval.as_secs(), 60);
/// assert_eq!(plan.triggers.api_p95.threshold, 0.5);
/// assert_eq!(plan.triggers.api_p95.for_.as_secs(), 300); // the default kept
/// assert_eq!(plan.stages.len(), 5);
/// # Ok::<(), spark_rollback::RollbackError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// How often the engine evaluates.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Requests a ratio needs in its window (Σ rate × step) before it can
    /// fire a trigger or pass a gate.
    pub min_requests: f64,
    /// The traffic steps, ascending.
    pub stages: Vec<Stage>,
    /// What must hold before a stage is promoted.
    pub gates: Gates,
    /// What rolls the canary back.
    pub triggers: Triggers,
    /// The service level objective the burn rates are measured against.
    pub slo: Slo,
    /// PromQL per signal, overriding [`Signal::default_query`].
    pub queries: BTreeMap<Signal, String>,
    /// How `spark canary run` sets each stage's weight.
    pub weights: crate::weights::Weights,
    /// What a rollback does: its actions, the Slack notification, the
    /// database restore runbook.
    pub rollback: RollbackPlan,
}

/// One traffic step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// The canary's share of traffic, such as `25%`.
    pub weight: Weight,
    /// The minimum time at this weight before it can be promoted.
    #[serde(with = "duration")]
    pub duration: Duration,
}

/// A traffic share in percent, written `25%` (decimals allowed: `0.5%`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Weight(Decimal);

impl Weight {
    /// The share in percent.
    #[must_use]
    pub fn percent(self) -> Decimal {
        self.0
    }
}

impl FromStr for Weight {
    type Err = String;

    fn from_str(s: &str) -> Result<Weight, String> {
        let number = s.trim().strip_suffix('%').ok_or_else(|| format!("{s:?} is not a percentage such as \"25%\""))?;
        let value = Decimal::from_str_exact(number.trim())
            .map_err(|_| format!("{s:?} is not a percentage such as \"25%\""))?
            .normalize();
        if value <= Decimal::ZERO || value > Decimal::ONE_HUNDRED {
            return Err(format!("{s:?} is outside (0%, 100%]"));
        }
        Ok(Weight(value))
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl Serialize for Weight {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A gate: a bound on the canary's latest value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// Whether the gate counts (a service without WebSockets turns
    /// `ws_staleness` off).
    pub enabled: bool,
    /// The bound: the value must stay below it (`csp`: the canary may exceed
    /// the baseline by at most this share).
    pub threshold: f64,
}

/// The six gates every stage must pass to be promoted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// API p95 below 200 ms.
    pub api_p95: Gate,
    /// 5xx ratio below 1 % (with `min_requests`).
    pub error_rate: Gate,
    /// WebSocket staleness below 30 s.
    pub ws_staleness: Gate,
    /// Risk blocks below 0.5 per minute.
    pub risk_blocks: Gate,
    /// Idempotency conflicts below 1 % (with `min_requests`).
    pub idem_conflicts: Gate,
    /// CSP violations at most the baseline's + 10 %.
    pub csp: Gate,
}

/// A trigger that fires when a canary signal stays above a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Above {
    /// Whether the trigger is evaluated.
    pub enabled: bool,
    /// The bound the signal must exceed.
    pub threshold: f64,
    /// How long it must exceed it, at every sample.
    #[serde(rename = "for", with = "duration")]
    pub for_: Duration,
}

/// `correlated_degradation`: canary risk blocks and 5xx both significantly
/// above the baseline's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Correlated {
    /// Whether the trigger is evaluated.
    pub enabled: bool,
    /// The window both samples come from.
    #[serde(with = "duration")]
    pub window: Duration,
    /// The one-sided Mann-Whitney p-value each signal must be below.
    pub p_value: f64,
    /// The relative effect (canary mean over baseline mean, minus one) each
    /// must reach.
    pub min_effect: f64,
}

/// `non_improving_latency`: slow while idle.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NonImproving {
    /// Whether the trigger is evaluated.
    pub enabled: bool,
    /// The p95 (seconds) the canary stays above.
    pub latency_above: f64,
    /// The CPU ratio it stays below meanwhile.
    pub cpu_below: f64,
    /// For how long.
    #[serde(rename = "for", with = "duration")]
    pub for_: Duration,
}

/// `memory_leak`: resident memory trending up faster than the baseline's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryLeak {
    /// Whether the trigger is evaluated.
    pub enabled: bool,
    /// The least data (within the stage) the slope is computed on.
    #[serde(with = "duration")]
    pub min_window: Duration,
    /// The most: older samples of a long stage are left out.
    #[serde(with = "duration")]
    pub max_window: Duration,
    /// The slope, as a share of the starting value per minute, that counts as
    /// growth.
    pub slope_per_minute: f64,
    /// How many times the baseline's slope the canary's must exceed.
    pub baseline_factor: f64,
}

/// `db_connection_leak`: connections rising while traffic does not.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionLeak {
    /// Whether the trigger is evaluated.
    pub enabled: bool,
    /// The window.
    #[serde(with = "duration")]
    pub window: Duration,
    /// The least rise over the window, as a share of the starting count.
    pub min_rise: f64,
    /// The request-rate rise over the window (share of its median) still
    /// counted as flat: the noise allowance.
    pub rate_tolerance: f64,
}

/// `outbox_lag_explosion`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxLag {
    /// Whether the trigger is evaluated.
    pub enabled: bool,
    /// Lag (seconds) that fires when held for `for`.
    pub threshold: f64,
    /// How long.
    #[serde(rename = "for", with = "duration")]
    pub for_: Duration,
    /// Or: the lag multiplied by this much …
    pub factor: f64,
    /// … within this window …
    #[serde(with = "duration")]
    pub within: Duration,
    /// … from a lag of at least this many seconds.
    pub from_at_least: f64,
}

/// `ws_disconnect_storm`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectStorm {
    /// Whether the trigger is evaluated.
    pub enabled: bool,
    /// Disconnects per minute the canary stays above.
    pub threshold: f64,
    /// And above this many times the baseline's.
    pub baseline_factor: f64,
    /// For how long.
    #[serde(rename = "for", with = "duration")]
    pub for_: Duration,
}

/// `decimal_precision_errors`: any increase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnyIncrease {
    /// Whether the trigger is evaluated.
    pub enabled: bool,
}

/// A multiwindow SLO burn-rate trigger: the error budget burning more than
/// `factor` times too fast over both windows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurnRate {
    /// Whether the trigger is evaluated.
    pub enabled: bool,
    /// The burn rate both windows must exceed.
    pub factor: f64,
    /// The long window.
    #[serde(with = "duration")]
    pub long: Duration,
    /// The short window.
    #[serde(with = "duration")]
    pub short: Duration,
}

/// Every trigger, by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs, reason = "each field is documented by TriggerId::description")]
pub struct Triggers {
    pub api_p95: Above,
    pub error_rate: Above,
    pub feed_stale: Above,
    pub csp_storm: Above,
    pub idem_conflicts: Above,
    pub pgbouncer_saturation: Above,
    pub correlated_degradation: Correlated,
    pub non_improving_latency: NonImproving,
    pub memory_leak: MemoryLeak,
    pub db_connection_leak: ConnectionLeak,
    pub outbox_lag_explosion: OutboxLag,
    pub idem_key_buildup: Above,
    pub ws_disconnect_storm: DisconnectStorm,
    pub decimal_precision_errors: AnyIncrease,
    pub slo_burn_fast: BurnRate,
    pub slo_burn_slow: BurnRate,
}

/// The service level objective.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// The share of requests that must not be 5xx, such as 0.999.
    pub objective: f64,
}

const fn minutes(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

const fn above(threshold: f64, for_: Duration) -> Above {
    Above { enabled: true, threshold, for_ }
}

const fn gate(threshold: f64) -> Gate {
    Gate { enabled: true, threshold }
}

impl Default for Plan {
    fn default() -> Plan {
        let stage = |weight: i64, m: u64| Stage { weight: Weight(Decimal::from(weight)), duration: minutes(m) };
        Plan {
            interval: Duration::from_secs(30),
            min_requests: 300.0,
            stages: vec![stage(1, 15), stage(5, 15), stage(25, 15), stage(50, 15), stage(100, 30)],
            gates: Gates {
                api_p95: gate(0.2),
                error_rate: gate(0.01),
                ws_staleness: gate(30.0),
                risk_blocks: gate(0.5),
                idem_conflicts: gate(0.01),
                csp: gate(0.10),
            },
            triggers: Triggers {
                api_p95: above(0.4, minutes(5)),
                error_rate: above(0.03, minutes(5)),
                feed_stale: above(120.0, minutes(3)),
                csp_storm: above(50.0, minutes(1)),
                idem_conflicts: above(0.05, minutes(3)),
                pgbouncer_saturation: above(0.9, minutes(3)),
                correlated_degradation: Correlated {
                    enabled: true,
                    window: minutes(10),
                    p_value: 0.01,
                    min_effect: 0.25,
                },
                non_improving_latency: NonImproving {
                    enabled: true,
                    latency_above: 0.2,
                    cpu_below: 0.3,
                    for_: minutes(5),
                },
                memory_leak: MemoryLeak {
                    enabled: true,
                    min_window: minutes(10),
                    max_window: minutes(60),
                    slope_per_minute: 0.005,
                    baseline_factor: 2.0,
                },
                db_connection_leak: ConnectionLeak {
                    enabled: true,
                    window: minutes(10),
                    min_rise: 0.2,
                    rate_tolerance: 0.05,
                },
                outbox_lag_explosion: OutboxLag {
                    enabled: true,
                    threshold: 10.0,
                    for_: minutes(1),
                    factor: 3.0,
                    within: minutes(5),
                    from_at_least: 1.0,
                },
                idem_key_buildup: above(0.10, minutes(10)),
                ws_disconnect_storm: DisconnectStorm {
                    enabled: true,
                    threshold: 10.0,
                    baseline_factor: 3.0,
                    for_: minutes(2),
                },
                decimal_precision_errors: AnyIncrease { enabled: true },
                slo_burn_fast: BurnRate { enabled: true, factor: 14.4, long: minutes(60), short: minutes(5) },
                slo_burn_slow: BurnRate { enabled: true, factor: 6.0, long: minutes(360), short: minutes(30) },
            },
            slo: Slo { objective: 0.999 },
            queries: BTreeMap::new(),
            weights: crate::weights::Weights::default(),
            rollback: RollbackPlan::default(),
        }
    }
}

impl Plan {
    /// Reads a plan: the keys given replace the defaults, tables merge key by
    /// key, and `stages` replaces the default stages as a whole.
    ///
    /// # Errors
    /// [`RollbackError::Plan`] naming the key: TOML syntax, an unknown key,
    /// a value of the wrong type, or a value [`Plan::validate`] refuses.
    pub fn from_toml(text: &str) -> Result<Plan, RollbackError> {
        let given: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let field = e.span().map_or_else(|| "(file)".to_owned(), |span| position(text, span.start));
            plan_error(field, e.message().to_owned())
        })?;
        let mut merged = toml::Value::try_from(Plan::default()).expect("the default plan serialises");
        merge(&mut merged, toml::Value::Table(given));
        let plan: Plan = serde_path_to_error::deserialize(merged).map_err(|e| {
            let path = e.path().to_string();
            plan_error(path, e.into_inner().message().to_owned())
        })?;
        plan.validate()?;
        Ok(plan)
    }

    /// Reads a plan file.
    ///
    /// # Errors
    /// [`RollbackError::Io`] when it cannot be read, otherwise as
    /// [`Plan::from_toml`].
    pub fn load(path: &Path) -> Result<Plan, RollbackError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| RollbackError::Io { path: path.to_owned(), source })?;
        Plan::from_toml(&text)
    }

    /// The whole plan as TOML: every key, a file to start from.
    #[must_use]
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a plan serialises to TOML")
    }

    /// The plan as the JSON `spark canary plan --json` prints: stages,
    /// gates with their rules, triggers with their descriptions, queries.
    #[must_use]
    pub fn describe(&self) -> serde_json::Value {
        let plan = self;
        let stages: Vec<_> = plan
            .stages
            .iter()
            .map(
                |s| json!({"weight": s.weight.to_string(), "duration": humantime::format_duration(s.duration).to_string()}),
            )
            .collect();
        let g = &plan.gates;
        let gates: Vec<_> = [
            ("api_p95", g.api_p95, "api_latency_p95_seconds below"),
            ("error_rate", g.error_rate, "http_5xx_ratio below"),
            ("ws_staleness", g.ws_staleness, "ws_staleness_seconds below"),
            ("risk_blocks", g.risk_blocks, "risk_blocks_per_minute below"),
            ("idem_conflicts", g.idem_conflicts, "idempotency_conflict_ratio below"),
            ("csp", g.csp, "csp_violations_per_minute at most the baseline's plus this share"),
        ]
        .into_iter()
        .map(|(name, gate, what)| json!({"name": name, "enabled": gate.enabled, "threshold": gate.threshold, "rule": what}))
        .collect();
        let triggers: Vec<_> = TriggerId::ALL
            .into_iter()
            .map(|t| {
                json!({
                    "id": t.id(),
                    "description": t.description(plan),
                    "signals": t.signals().iter().map(|s| s.name()).collect::<Vec<_>>(),
                })
            })
            .collect();
        let queries: serde_json::Map<String, serde_json::Value> =
            Signal::ALL.iter().map(|s| (s.name().to_owned(), json!(plan.query(*s)))).collect();
        json!({
            "interval": humantime::format_duration(plan.interval).to_string(),
            "min_requests": plan.min_requests,
            "slo_objective": plan.slo.objective,
            "stages": stages,
            "gates": gates,
            "triggers": triggers,
            "queries": queries,
        })
    }

    /// The plan as readable text: the interval, the stages, the gates and
    /// the triggers with their thresholds (what `spark canary plan` prints
    /// and the ritual's `canary_plan_<release>.txt` holds).
    #[must_use]
    pub fn to_text(&self) -> String {
        let plan = self;
        let mut lines = vec![format!(
            "evaluated every {}; ratios need {} requests; SLO {}",
            humantime::format_duration(plan.interval),
            plan.min_requests,
            plan.slo.objective
        )];
        lines.push("stages:".to_owned());
        for s in &plan.stages {
            lines.push(format!("  {:>6}  at least {}", s.weight.to_string(), humantime::format_duration(s.duration)));
        }
        lines.push("gates (all must pass at the last 3 evaluations):".to_owned());
        for g in plan.describe()["gates"].as_array().into_iter().flatten() {
            let state = if g["enabled"] == json!(true) { "" } else { "  (off)" };
            lines.push(format!(
                "  {:<15} {} {}{state}",
                g["name"].as_str().unwrap_or(""),
                g["rule"].as_str().unwrap_or(""),
                g["threshold"]
            ));
        }
        lines.push("triggers (roll back):".to_owned());
        for t in TriggerId::ALL {
            let signals: Vec<&str> = t.signals().iter().map(|s| s.name()).collect();
            lines.push(format!("  {:<25} {} [{}]", t.id(), t.description(plan), signals.join(", ")));
        }
        lines.join("\n")
    }

    /// The query for a signal: the plan's, or the default.
    #[must_use]
    pub fn query(&self, signal: Signal) -> &str {
        self.queries.get(&signal).map_or(signal.default_query(), String::as_str)
    }

    /// The stage with this weight (`25%` or `25`).
    ///
    /// # Errors
    /// [`RollbackError::UnknownStage`] listing the plan's stages.
    pub fn stage(&self, weight: &str) -> Result<&Stage, RollbackError> {
        let given = if weight.trim().ends_with('%') { weight.to_owned() } else { format!("{}%", weight.trim()) };
        let unknown = || RollbackError::UnknownStage {
            given: weight.to_owned(),
            known: self.stages.iter().map(|s| s.weight.to_string()).collect(),
        };
        let wanted: Weight = given.parse().map_err(|_| unknown())?;
        self.stages.iter().find(|s| s.weight == wanted).ok_or_else(unknown)
    }

    /// Checks what the types cannot: ascending stages, durations of at least
    /// the interval, finite non-negative thresholds, ratios within 0–1.
    ///
    /// # Errors
    /// [`RollbackError::Plan`] naming the first field that is wrong.
    pub fn validate(&self) -> Result<(), RollbackError> {
        if self.interval < Duration::from_secs(1) {
            return Err(plan_error("interval", "must be at least 1s"));
        }
        if self.stages.is_empty() {
            return Err(plan_error("stages", "a plan needs at least one stage"));
        }
        for (i, pair) in self.stages.windows(2).enumerate() {
            if pair[1].weight <= pair[0].weight {
                return Err(plan_error(
                    format!("stages[{}].weight", i + 1),
                    format!("{} does not exceed the stage before it ({})", pair[1].weight, pair[0].weight),
                ));
            }
        }
        for (i, stage) in self.stages.iter().enumerate() {
            if stage.duration < self.interval {
                return Err(plan_error(format!("stages[{i}].duration"), "must be at least the interval"));
            }
        }
        non_negative("min_requests", self.min_requests)?;
        let g = &self.gates;
        for (name, gate, ratio) in [
            ("api_p95", g.api_p95, false),
            ("error_rate", g.error_rate, true),
            ("ws_staleness", g.ws_staleness, false),
            ("risk_blocks", g.risk_blocks, false),
            ("idem_conflicts", g.idem_conflicts, true),
            ("csp", g.csp, false),
        ] {
            bound(&format!("gates.{name}.threshold"), gate.threshold, ratio)?;
        }
        let t = &self.triggers;
        for (name, a, ratio) in [
            ("api_p95", t.api_p95, false),
            ("error_rate", t.error_rate, true),
            ("feed_stale", t.feed_stale, false),
            ("csp_storm", t.csp_storm, false),
            ("idem_conflicts", t.idem_conflicts, true),
            ("pgbouncer_saturation", t.pgbouncer_saturation, true),
            ("idem_key_buildup", t.idem_key_buildup, true),
        ] {
            bound(&format!("triggers.{name}.threshold"), a.threshold, ratio)?;
        }
        let c = t.correlated_degradation;
        bound("triggers.correlated_degradation.p_value", c.p_value, true)?;
        non_negative("triggers.correlated_degradation.min_effect", c.min_effect)?;
        positive("triggers.correlated_degradation.window", c.window)?;
        let n = t.non_improving_latency;
        non_negative("triggers.non_improving_latency.latency_above", n.latency_above)?;
        bound("triggers.non_improving_latency.cpu_below", n.cpu_below, true)?;
        let m = t.memory_leak;
        positive("triggers.memory_leak.min_window", m.min_window)?;
        if m.max_window < m.min_window {
            return Err(plan_error("triggers.memory_leak.max_window", "must be at least min_window"));
        }
        non_negative("triggers.memory_leak.slope_per_minute", m.slope_per_minute)?;
        non_negative("triggers.memory_leak.baseline_factor", m.baseline_factor)?;
        let d = t.db_connection_leak;
        positive("triggers.db_connection_leak.window", d.window)?;
        non_negative("triggers.db_connection_leak.min_rise", d.min_rise)?;
        non_negative("triggers.db_connection_leak.rate_tolerance", d.rate_tolerance)?;
        let o = t.outbox_lag_explosion;
        non_negative("triggers.outbox_lag_explosion.threshold", o.threshold)?;
        non_negative("triggers.outbox_lag_explosion.factor", o.factor)?;
        non_negative("triggers.outbox_lag_explosion.from_at_least", o.from_at_least)?;
        positive("triggers.outbox_lag_explosion.within", o.within)?;
        let w = t.ws_disconnect_storm;
        non_negative("triggers.ws_disconnect_storm.threshold", w.threshold)?;
        non_negative("triggers.ws_disconnect_storm.baseline_factor", w.baseline_factor)?;
        for (name, b) in [("slo_burn_fast", t.slo_burn_fast), ("slo_burn_slow", t.slo_burn_slow)] {
            non_negative(&format!("triggers.{name}.factor"), b.factor)?;
            positive(&format!("triggers.{name}.long"), b.long)?;
            positive(&format!("triggers.{name}.short"), b.short)?;
            if b.short > b.long {
                return Err(plan_error(format!("triggers.{name}.short"), "must not exceed the long window"));
            }
        }
        if !(self.slo.objective > 0.0 && self.slo.objective < 1.0) {
            return Err(plan_error("slo.objective", format!("{} is not between 0 and 1", self.slo.objective)));
        }
        if !self.weights.command.is_empty() && self.weights.flagd_file.is_some() {
            return Err(plan_error("weights", "set either command or flagd_file, not both"));
        }
        for (signal, query) in &self.queries {
            if query.trim().is_empty() {
                return Err(plan_error(format!("queries.{signal}"), "is empty"));
            }
        }
        self.rollback.validate()
    }
}

fn non_negative(field: &str, value: f64) -> Result<(), RollbackError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(plan_error(field, format!("{value} is not a finite number of at least 0")))
    }
}

fn bound(field: &str, value: f64, ratio: bool) -> Result<(), RollbackError> {
    non_negative(field, value)?;
    if ratio && value > 1.0 {
        return Err(plan_error(field, format!("{value} is a ratio and cannot exceed 1")));
    }
    Ok(())
}

fn positive(field: &str, value: Duration) -> Result<(), RollbackError> {
    if value.is_zero() { Err(plan_error(field, "must be longer than 0s")) } else { Ok(()) }
}

/// `line L, column C` of a byte offset.
fn position(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
    format!("line {line}, column {column}")
}

/// Lays `given` over `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Value, given: toml::Value) {
    match (base, given) {
        (toml::Value::Table(base), toml::Value::Table(given)) => {
            for (key, value) in given {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, given) => *base = given,
    }
}

/// Durations as humantime strings: `30s`, `15m`, `1h 30m`.
pub(crate) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*value))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration such as \"30s\" or \"15m\": {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_plan_round_trips_through_its_toml() {
        let plan = Plan::default();
        plan.validate().unwrap();
        let text = plan.to_toml();
        assert!(text.contains("interval = \"30s\""), "{text}");
        assert!(text.contains("weight = \"25%\""), "{text}");
        assert_eq!(Plan::from_toml(&text).unwrap(), plan);
        assert_eq!(Plan::from_toml("").unwrap(), plan);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("interval = 30", "plan: interval: invalid type"),
            ("intervall = \"30s\"", "plan: intervall: unknown field"),
            ("[triggers.api_p95]\nfor = \"five minutes\"", "plan: triggers.api_p95.for:"),
            ("[triggers.api_p95]\nthreshhold = 1.0", "plan: triggers.api_p95.threshhold: unknown field"),
            (
                "[[stages]]\nweight = \"5%\"\nduration = \"1m\"\n[[stages]]\nweight = \"1%\"\nduration = \"1m\"",
                "plan: stages[1].weight: 1% does not exceed",
            ),
            ("[[stages]]\nweight = \"150%\"\nduration = \"1m\"", "plan: stages[0].weight: \"150%\" is outside"),
            ("[gates.error_rate]\nthreshold = 2.0", "plan: gates.error_rate.threshold: 2 is a ratio"),
            ("[queries]\nhttp_5xx = \"up\"", "plan: queries.http_5xx: unknown signal"),
            ("interval = \"30s\"\n[[stages]\n", "plan: line 2, column"),
            ("[slo]\nobjective = 1.0", "plan: slo.objective"),
        ];
        for (text, expected) in cases {
            let err = Plan::from_toml(text).expect_err(text).to_string();
            assert!(err.starts_with(expected), "{text:?}: {err} does not start with {expected}");
        }
    }

    #[test]
    fn rollback_errors_name_the_field() {
        let action = |body: &str| format!("[[rollback.actions]]\n{body}");
        let cases = [
            (action("kind = \"command\"\ncommand = []"), "plan: rollback.actions[0].command: needs a program"),
            (
                action("kind = \"command\"\ncommand = [\"true\"]\ntimeout = \"0s\""),
                "plan: rollback.actions[0].timeout: must be longer",
            ),
            (action("kind = \"command\"\ncommand = [\"true\"]\ntimeout = \"soon\""), "plan: rollback.actions[0]"),
            (action("kind = \"command\"\ncommand = [\"true\"]\nshell = true"), "plan: rollback.actions[0]"),
            (action("kind = \"webhook\"\nurl = \"ftp://h/x\""), "plan: rollback.actions[0].url: is not an http"),
            (
                action("kind = \"webhook\"\nurl = \"http://u:pw@\""),
                "plan: rollback.actions[0].url: http://u:***@ does not parse",
            ),
            (
                action("kind = \"webhook\"\nurl = \"http://h\"\nsecret_env = \"\""),
                "plan: rollback.actions[0].secret_env: is empty",
            ),
            (action("kind = \"shell\""), "plan: rollback.actions[0]"),
            ("[rollback.slack]\nwebhook_env = \" \"".to_owned(), "plan: rollback.slack.webhook_env: is empty"),
            ("[rollback.slack]\nurl = \"http://h\"".to_owned(), "plan: rollback.slack.url: unknown field"),
            ("[rollback]\nrunbok = \"x\"".to_owned(), "plan: rollback.runbok: unknown field"),
            ("[rollback]\nrunbook = \"\"".to_owned(), "plan: rollback.runbook: is empty"),
        ];
        for (text, expected) in cases {
            let err = Plan::from_toml(&text).expect_err(&text).to_string();
            assert!(err.starts_with(expected), "{text:?}: {err} does not start with {expected}");
        }
    }

    #[test]
    fn rollback_actions_round_trip_and_keep_the_other_defaults() {
        let text = "[rollback]\nrelease_has_migration = true\n[[rollback.actions]]\nkind = \"command\"\ncommand = [\"true\"]\n\
                    [[rollback.actions]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/h\"\nsecret_env = \"S\"\ntimeout = \"2s\"\n";
        let plan = Plan::from_toml(text).unwrap();
        assert_eq!(plan.rollback.runbook, crate::rollback::DEFAULT_RUNBOOK);
        assert!(plan.rollback.release_has_migration);
        assert_eq!(plan.rollback.actions.len(), 2);
        assert_eq!(plan.rollback.actions[0].kind(), "command");
        assert_eq!(Plan::from_toml(&plan.to_toml()).unwrap(), plan);
        assert_eq!(plan.stages, Plan::default().stages);
    }

    #[test]
    fn stages_are_found_by_weight() {
        let plan = Plan::default();
        assert_eq!(plan.stage("25%").unwrap().duration, minutes(15));
        assert_eq!(plan.stage("100").unwrap().duration, minutes(30));
        let err = plan.stage("30%").unwrap_err().to_string();
        assert_eq!(err, "stage \"30%\" is not in the plan; its stages are 1%, 5%, 25%, 50%, 100%");
    }

    #[test]
    fn queries_override_one_signal() {
        let plan = Plan::from_toml("[queries]\ndb_connections = \"sum by (role) (pg_conns)\"").unwrap();
        assert_eq!(plan.query(Signal::DbConnections), "sum by (role) (pg_conns)");
        assert_eq!(plan.query(Signal::Http5xxRatio), Signal::Http5xxRatio.default_query());
    }
}
