//! Scenarios as data: the six built-in experiments as TOML files, each
//! parsed and bounds-checked, and [`run`], which runs one against a
//! [`Deployment`].

use std::time::Duration;

use serde::Deserialize;
use spark_db::SharedClock;

use crate::clock_skew::ClockSkew;
use crate::db_latency::DbLatency;
use crate::db_restart::DbRestart;
use crate::deployment::Deployment;
use crate::error::ChaosError;
use crate::experiment::ExperimentReport;
use crate::pool_exhaustion::PoolExhaustion;
use crate::relay_crash::{RelayCrash, RelayTarget};
use crate::sink_outage::SinkOutage;

/// The built-in scenarios, in the order `--all` runs them, with their
/// files.
pub const SCENARIOS: [(&str, &str); 6] = [
    ("relay-crash", include_str!("../scenarios/relay-crash.toml")),
    ("db-restart", include_str!("../scenarios/db-restart.toml")),
    ("db-latency", include_str!("../scenarios/db-latency.toml")),
    ("sink-outage", include_str!("../scenarios/sink-outage.toml")),
    ("pool-exhaustion", include_str!("../scenarios/pool-exhaustion.toml")),
    ("clock-skew", include_str!("../scenarios/clock-skew.toml")),
];

/// A parsed scenario.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Scenario {
    /// `relay-crash`.
    RelayCrash(RelayCrash),
    /// `db-restart`.
    DbRestart(DbRestart),
    /// `db-latency`.
    DbLatency(DbLatency),
    /// `sink-outage`.
    SinkOutage(SinkOutage),
    /// `pool-exhaustion`.
    PoolExhaustion(PoolExhaustion),
    /// `clock-skew`.
    ClockSkew(ClockSkew),
}

impl Scenario {
    /// The built-in scenario `name`.
    ///
    /// ```
    /// let s = spark_chaos::Scenario::builtin("db-restart")?;
    /// assert_eq!(s.name(), "db-restart");
    /// assert!(spark_chaos::Scenario::builtin("meteor").is_err());
    /// # Ok::<(), spark_chaos::ChaosError>(())
    /// ```
    ///
    /// # Errors
    /// [`ChaosError::Input`] listing the built-in names.
    pub fn builtin(name: &str) -> Result<Scenario, ChaosError> {
        let (_, text) = SCENARIOS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            ChaosError::Input(format!(
                "no built-in scenario {name:?}; the scenarios are {}",
                SCENARIOS.map(|(n, _)| n).join(", ")
            ))
        })?;
        Scenario::from_toml(text)
    }

    /// Parses a scenario file: its `scenario` field says which experiment.
    ///
    /// # Errors
    /// [`ChaosError::Input`] naming the field that is unknown, missing or
    /// out of bounds.
    pub fn from_toml(text: &str) -> Result<Scenario, ChaosError> {
        #[derive(Deserialize)]
        struct Head {
            scenario: String,
        }
        let head: Head = toml::from_str::<toml::Table>(text)
            .ok()
            .and_then(|t| t.try_into().ok())
            .ok_or_else(|| ChaosError::Input("a scenario file needs `scenario = \"NAME\"`".to_owned()))?;
        Ok(match head.scenario.as_str() {
            "relay-crash" => Scenario::RelayCrash(RelayCrash::from_toml(text)?),
            "db-restart" => Scenario::DbRestart(parse::<DbRestart>(text)?.check()?),
            "db-latency" => Scenario::DbLatency(parse::<DbLatency>(text)?.check()?),
            "sink-outage" => Scenario::SinkOutage(parse::<SinkOutage>(text)?.check()?),
            "pool-exhaustion" => Scenario::PoolExhaustion(parse::<PoolExhaustion>(text)?.check()?),
            "clock-skew" => Scenario::ClockSkew(parse::<ClockSkew>(text)?.check()?),
            other => {
                return Err(ChaosError::Input(format!(
                    "scenario {other:?} is not an experiment Spark runs; the scenarios are {}",
                    SCENARIOS.map(|(n, _)| n).join(", ")
                )));
            }
        })
    }

    /// Its name.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            Scenario::RelayCrash(s) => &s.scenario,
            Scenario::DbRestart(s) => &s.scenario,
            Scenario::DbLatency(s) => &s.scenario,
            Scenario::SinkOutage(s) => &s.scenario,
            Scenario::PoolExhaustion(s) => &s.scenario,
            Scenario::ClockSkew(s) => &s.scenario,
        }
    }
}

/// Runs `scenario` against `deployment`. Every loop is bounded in time and
/// count, and every target must be on loopback.
///
/// # Errors
/// [`ChaosError::Input`] when the deployment lacks what the scenario
/// needs or names a target off loopback; other variants when a part could
/// not be started. An experiment that ran and found an invariant broken is
/// an [`ExperimentReport`] with `held: false`.
pub async fn run(
    scenario: &Scenario,
    deployment: &Deployment,
    clock: &SharedClock,
) -> Result<ExperimentReport, ChaosError> {
    // Before anything connects: every target named in the deployment.
    crate::delivery::loopback_only(deployment.relay.command.get(1..).unwrap_or_default())?;
    crate::deployment::require_loopback("the database", &deployment.database.url)?;
    match scenario {
        Scenario::RelayCrash(s) => {
            let target = RelayTarget {
                database_url: deployment.database.url.clone(),
                relay_command: deployment.relay.command.clone(),
            };
            crate::relay_crash::run_relay_crash(s, &target, clock).await
        }
        Scenario::DbRestart(s) => crate::db_restart::run(s, deployment, clock).await,
        Scenario::DbLatency(s) => crate::db_latency::run(s, deployment, clock).await,
        Scenario::SinkOutage(s) => crate::sink_outage::run(s, deployment, clock).await,
        Scenario::PoolExhaustion(s) => crate::pool_exhaustion::run(s, deployment, clock).await,
        Scenario::ClockSkew(s) => crate::clock_skew::run(s, deployment, clock).await,
    }
}

/// Undoes whatever fault an interrupted experiment may have left in
/// `deployment`: every toxic removed and every proxy enabled on the fault
/// proxy (`POST /reset`), the service's database resumed on pgBouncer, and
/// the database started again when it does not answer. What it did, one
/// line each; it never fails (each step says why it could not act).
pub async fn clear_faults(deployment: &Deployment) -> Vec<String> {
    // Each step bounded: a cleanup that hangs would keep a signalled run
    // from ending.
    let bounded = Duration::from_secs(10);
    let mut done = Vec::new();
    if let Some(proxy) = &deployment.proxy {
        let reset = async { crate::proxy::ProxyClient::new(&proxy.api)?.reset().await };
        done.push(match tokio::time::timeout(bounded, reset).await {
            Ok(Ok(())) => "fault proxy reset: no toxics, every proxy enabled".to_owned(),
            Ok(Err(e)) => format!("fault proxy not reset: {e}"),
            Err(_) => "fault proxy not reset: no answer within 10 s".to_owned(),
        });
    }
    if let Some(bouncer) = &deployment.pgbouncer {
        done.push(match crate::deployment::require_loopback("pgBouncer's admin console", &bouncer.admin_url) {
            Err(e) => format!("pgBouncer left alone: {e}"),
            Ok(()) => tokio::time::timeout(bounded, crate::pool_exhaustion::resume(bouncer))
                .await
                .unwrap_or_else(|_| "pgBouncer: no answer within 10 s".to_owned()),
        });
    }
    if crate::deployment::require_loopback("the database", &deployment.database.url).is_ok()
        && !deployment.database.start.is_empty()
    {
        let answers = async || {
            tokio::time::timeout(Duration::from_secs(5), async {
                let pool = sqlx::PgPool::connect(&deployment.database.url).await.ok()?;
                sqlx::raw_sql("SELECT 1").execute(&pool).await.ok()
            })
            .await
            .ok()
            .flatten()
            .is_some()
        };
        if !answers().await {
            // A stop that was interrupted may still be shutting the server
            // down, and a start fails until it has: try for 30 s.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let last = match crate::stack::run_argv(&deployment.database.start, "start the database").await {
                    Ok(()) if answers().await => {
                        done.push("the database did not answer: started it".to_owned());
                        break;
                    }
                    Ok(()) => "started, but it does not answer".to_owned(),
                    Err(e) => e.to_string(),
                };
                if std::time::Instant::now() > deadline {
                    done.push(format!("the database does not answer and would not start: {last}"));
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    done
}

/// Deserializes a scenario with the scenario's name in the error.
fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ChaosError> {
    toml::from_str(text).map_err(|e| ChaosError::Input(format!("scenario: {e}")))
}

/// `"500ms"`, `"60s"`: a humantime duration.
pub(crate) fn duration<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration such as \"500ms\": {e}")))
}

/// The canary engine an experiment judges its trigger with: the scenario's
/// `[plan]` (a spark-rollback plan, keys replacing the defaults) with only
/// `trigger` enabled, so no other trigger — an SLO burn left by an earlier
/// experiment's 503s — decides first.
pub(crate) fn engine(
    scenario: &str,
    plan: &toml::Table,
    trigger: spark_rollback::TriggerId,
) -> Result<spark_rollback::Engine, ChaosError> {
    let text = toml::to_string(plan).unwrap_or_default();
    let bad = |e: spark_rollback::RollbackError| ChaosError::Input(format!("{scenario} scenario: plan: {e}"));
    let plan = spark_rollback::Plan::from_toml(&text).map_err(bad)?;
    spark_rollback::Engine::new(spark_rollback::scenario::only(&plan, trigger)).map_err(bad)
}

/// A bounds check of a scenario field: `Ok` when `ok`, else the error
/// naming the field and its rule.
pub(crate) fn bound(scenario: &str, ok: bool, field: &str, rule: &str) -> Result<(), ChaosError> {
    if ok { Ok(()) } else { Err(ChaosError::Input(format!("{scenario} scenario: {field} {rule}"))) }
}

/// Whether `d` lies in `lo..=hi`.
pub(crate) fn within(d: Duration, lo: Duration, hi: Duration) -> bool {
    (lo..=hi).contains(&d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_scenario_parses_under_its_own_name() {
        for (name, _) in SCENARIOS {
            assert_eq!(Scenario::builtin(name).unwrap().name(), name);
        }
        let e = Scenario::from_toml("scenario = \"meteor\"").unwrap_err().to_string();
        assert!(e.contains("not an experiment Spark runs"), "{e}");
        assert!(Scenario::from_toml("hypothesis = \"x\"").unwrap_err().to_string().contains("scenario = "));
    }
}
