//! `db-restart`: stop PostgreSQL under a steady stream of orders and start
//! it again, and prove the service answers 503 with `Retry-After` while it
//! is down (never a 500, never silence), places orders again soon after it
//! is back, and that every client retrying under its key got one order,
//! with exactly one fill and one `order.accepted` event each.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use spark_db::SharedClock;

use crate::deployment::Deployment;
use crate::error::ChaosError;
use crate::experiment::{ExperimentReport, Invariant, elapsed_ms};
use crate::load::{self, LoadPlan, LoadRun, OrderClient};
use crate::scenario::{bound, duration, within};
use crate::stack::run_argv;

/// The `db-restart` scenario.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbRestart {
    /// Always `db-restart`.
    pub scenario: String,
    /// What it sets out to show.
    pub hypothesis: String,
    /// New orders per second (1 to 1,000).
    pub rate: u32,
    /// Orders before the fault (1 s to 5 min).
    #[serde(deserialize_with = "duration")]
    pub steady: Duration,
    /// How long the database stays stopped (1 s to 5 min).
    #[serde(deserialize_with = "duration")]
    pub down_for: Duration,
    /// Orders after it is back (1 s to 5 min).
    #[serde(deserialize_with = "duration")]
    pub after: Duration,
    /// The service must place an order within this of the database being
    /// back (1 s to 5 min).
    #[serde(deserialize_with = "duration")]
    pub recover_within: Duration,
}

impl DbRestart {
    pub(crate) fn check(self) -> Result<DbRestart, ChaosError> {
        let (s, min, max) = ("db-restart", Duration::from_secs(1), Duration::from_secs(300));
        bound(s, self.scenario == s, "scenario", "must be \"db-restart\"")?;
        bound(s, (1..=1000).contains(&self.rate), "rate", "must be 1 to 1000")?;
        bound(s, within(self.steady, min, max), "steady", "must be 1s to 5m")?;
        bound(s, within(self.down_for, min, max), "down_for", "must be 1s to 5m")?;
        bound(s, within(self.after, min, max), "after", "must be 1s to 5m")?;
        bound(s, within(self.recover_within, min, max), "recover_within", "must be 1s to 5m")?;
        Ok(self)
    }
}

/// When the fault happened, in ms after the experiment's origin.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fault {
    pub(crate) stop_at: u64,
    pub(crate) down_at: u64,
    pub(crate) up_at: u64,
    /// A failed stop or start, with why.
    pub(crate) failed: Option<String>,
}

/// What the database says about the run's orders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Rows {
    pub(crate) orders: i64,
    pub(crate) fills: i64,
    pub(crate) events: i64,
}

/// Counts the orders placed for accounts `prefix*` since `since_ms`, their
/// fills and their `order.accepted` events, on the order service's tables.
pub(crate) async fn count_rows(url: &str, prefix: &str, since_ms: i64) -> Result<Rows, ChaosError> {
    let pool = sqlx::PgPool::connect(url).await.map_err(crate::delivery::sql)?;
    let like = format!("{}%", prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
    let orders = "SELECT order_id FROM order_service_orders WHERE account_id LIKE $1 AND created_at_ms >= $2";
    let count = async |sql: String| -> Result<i64, ChaosError> {
        // Built only from the constant fragments above; the values are bound.
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(&like)
            .bind(since_ms)
            .fetch_one(&pool)
            .await
            .map_err(crate::delivery::sql)
    };
    let rows = Rows {
        orders: count(format!("SELECT count(*) FROM ({orders}) o")).await?,
        fills: count(format!("SELECT count(*) FROM spark_position_fills WHERE fill_id IN ({orders})")).await?,
        events: count(format!(
            "SELECT count(*) FROM spark_outbox WHERE event_type = 'order.accepted' AND aggregate_id IN ({orders})"
        ))
        .await?,
    };
    pool.close().await;
    Ok(rows)
}

/// `name`: no answer 5xx other than 503, and every request answered.
pub(crate) fn no_server_errors(name: &'static str, load: &LoadRun) -> Invariant {
    let statuses = load.statuses(None);
    let server_errors: usize = statuses.iter().filter(|(s, _)| **s >= 500 && **s != 503).map(|(_, n)| n).sum();
    let silent = statuses.get(&0).copied().unwrap_or(0);
    Invariant::new(
        name,
        server_errors == 0 && silent == 0,
        format!("{server_errors} answers 5xx other than 503; {silent} requests without an answer"),
    )
}

/// `one-order-per-key`: every key got its order in the end (retried while
/// answered 503), and none was answered with two different orders.
pub(crate) fn one_order_per_key(load: &LoadRun) -> Invariant {
    let ids = load.order_ids();
    let twice = ids.values().filter(|ids| ids.len() > 1).count();
    let never = ids.values().filter(|ids| ids.is_empty()).count();
    Invariant::new(
        "one-order-per-key",
        twice == 0 && never == 0 && !ids.is_empty(),
        format!("{} keys, {twice} answered with two different orders, {never} never answered 201", ids.len()),
    )
}

/// `orders-fills-events`: as many orders as fills as `order.accepted`
/// events in the database, and as the orders the clients were told of.
pub(crate) fn orders_fills_events(load: &LoadRun, rows: &Rows) -> Invariant {
    let placed: usize = load.order_ids().values().map(std::collections::BTreeSet::len).sum();
    Invariant::new(
        "orders-fills-events",
        rows.orders == rows.fills && rows.fills == rows.events && usize::try_from(rows.orders) == Ok(placed),
        format!(
            "{} orders, {} fills, {} order.accepted events in the database; {placed} orders answered 201",
            rows.orders, rows.fills, rows.events
        ),
    )
}

/// The invariants: pure, so each can be shown to fail.
pub(crate) fn judge(s: &DbRestart, load: &LoadRun, fault: &Fault, rows: &Rows) -> Vec<Invariant> {
    let unavailable: Vec<_> = load.attempts.iter().filter(|a| a.status == 503).collect();
    let without_retry_after = unavailable.iter().filter(|a| a.retry_after.is_none()).count();
    let during = load.statuses(Some((fault.down_at, fault.up_at)));
    let ids = load.order_ids();
    let never = ids.values().filter(|ids| ids.is_empty()).count();
    // The first order placed that was sent after the database was back.
    let recovery_ms = load
        .attempts
        .iter()
        .filter(|a| a.status == 201 && a.at_ms >= fault.up_at)
        .map(|a| a.at_ms + a.latency_ms - fault.up_at)
        .min();
    let recover_ms = u64::try_from(s.recover_within.as_millis()).unwrap_or(u64::MAX);
    vec![
        Invariant::new(
            "fault-injected",
            fault.failed.is_none() && during.get(&503).copied().unwrap_or(0) > 0,
            match &fault.failed {
                Some(why) => why.clone(),
                None => format!(
                    "stopped for {} ms; {} requests answered 503 while it was down",
                    fault.up_at.saturating_sub(fault.down_at),
                    during.get(&503).copied().unwrap_or(0)
                ),
            },
        ),
        no_server_errors("no-500", load),
        Invariant::new(
            "503-retry-after",
            without_retry_after == 0,
            format!("{} answers 503, {without_retry_after} of them without Retry-After", unavailable.len()),
        ),
        Invariant::new(
            "recovered",
            recovery_ms.is_some_and(|ms| ms <= recover_ms) && never == 0,
            match recovery_ms {
                Some(ms) => format!(
                    "first order placed {ms} ms after the database was back (bound {recover_ms} ms); {never} of {} \
                     orders never placed",
                    ids.len()
                ),
                None => format!("no order placed after the database was back; {never} of {} never placed", ids.len()),
            },
        ),
        one_order_per_key(load),
        orders_fills_events(load, rows),
    ]
}

/// Runs `db-restart` against `deployment`: orders at `rate` for `steady`,
/// then the database stopped (`[database] stop`) for `down_for` and
/// started again (`[database] start`) while orders keep coming, then
/// `after` more; every order is retried under its key while it is
/// answered 503 (or not answered), for at most `down_for + recover_within
/// + 10 s`.
///
/// # Errors
/// [`ChaosError::Input`] without `[service]` or the database's stop and
/// start commands.
pub(crate) async fn run(
    s: &DbRestart,
    deployment: &Deployment,
    clock: &SharedClock,
) -> Result<ExperimentReport, ChaosError> {
    let service = deployment.need_service(&s.scenario)?;
    if deployment.database.stop.is_empty() || deployment.database.start.is_empty() {
        return Err(ChaosError::Input(
            "db-restart needs [database] stop and start commands in the deployment".to_owned(),
        ));
    }
    crate::deployment::require_loopback("the database", &deployment.database.url)?;
    let client = OrderClient::new(service, Duration::from_secs(5))?;
    let started_ms = clock.now_ms();
    let origin = Instant::now();
    let plan = LoadPlan {
        rate: s.rate,
        duration: s.steady + s.down_for + s.after,
        retry_for: s.down_for + s.recover_within + Duration::from_secs(10),
        timeout: Duration::from_secs(5),
        run: format!("chaos-db-restart-{started_ms}"),
    };
    let fault = async {
        tokio::time::sleep(s.steady).await;
        let mut fault = Fault { stop_at: elapsed_ms(origin), ..Fault::default() };
        match run_argv(&deployment.database.stop, "stop the database").await {
            Ok(()) => {
                fault.down_at = elapsed_ms(origin);
                tokio::time::sleep(s.down_for).await;
            }
            // A stop that failed may still be under way: start it anyway.
            Err(e) => fault.failed = Some(e.to_string()),
        }
        // Started whatever happens: the deployment must not be left down.
        if let Err(e) = run_argv(&deployment.database.start, "start the database").await {
            fault.failed.get_or_insert(e.to_string());
        }
        fault.up_at = elapsed_ms(origin);
        fault
    };
    let (load, fault) = tokio::join!(load::run(&client, &plan, origin), fault);
    let rows = count_rows(&deployment.database.url, &service.account_prefix, started_ms).await?;
    let mut invariants = judge(s, &load, &fault, &rows);
    let drained =
        crate::delivery::drain(&deployment.relay.command, &deployment.database.url, Duration::from_secs(60)).await?;
    invariants.push(crate::delivery::published(&drained));
    let end = load.duration_ms;
    let phase = |from, to| load.phase(from, to);
    let mut measurements = BTreeMap::new();
    measurements.insert("before", phase(0, fault.stop_at));
    let mut during = phase(fault.stop_at, fault.up_at);
    during.insert("stop_ms", json!(fault.down_at.saturating_sub(fault.stop_at)));
    during.insert("down_ms", json!(fault.up_at.saturating_sub(fault.down_at)));
    measurements.insert("during", during);
    let mut after = phase(fault.up_at, end);
    after.insert("orders", json!(load.orders));
    after.insert("attempts", json!(load.attempts.len()));
    measurements.insert("after", after);
    Ok(ExperimentReport::judged(&s.scenario, &s.hypothesis, invariants, measurements, started_ms, origin))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Attempt;

    fn attempt(at_ms: u64, order: usize, status: u16, id: Option<&str>) -> Attempt {
        Attempt {
            at_ms,
            order,
            status,
            latency_ms: 10,
            retry_after: (status == 503).then_some(1),
            order_id: id.map(str::to_owned),
            error: None,
        }
    }

    fn scenario() -> DbRestart {
        match crate::Scenario::builtin("db-restart").unwrap() {
            crate::Scenario::DbRestart(s) => s,
            _ => unreachable!(),
        }
    }

    /// Order 0 placed before, order 1 refused while down and placed after,
    /// order 2 placed after.
    fn healthy() -> (LoadRun, Fault, Rows) {
        let load = LoadRun {
            attempts: vec![
                attempt(100, 0, 201, Some("a")),
                attempt(1500, 1, 503, None),
                attempt(3100, 1, 201, Some("b")),
                attempt(3200, 2, 201, Some("c")),
            ],
            orders: 3,
            duration_ms: 4000,
        };
        let fault = Fault { stop_at: 1000, down_at: 1200, up_at: 3000, failed: None };
        (load, fault, Rows { orders: 3, fills: 3, events: 3 })
    }

    fn held(load: &LoadRun, fault: &Fault, rows: &Rows) -> Vec<(&'static str, bool)> {
        judge(&scenario(), load, fault, rows).into_iter().map(|i| (i.name, i.held)).collect()
    }

    #[test]
    fn each_invariant_holds_on_a_healthy_run_and_breaks_on_its_own_failure() {
        let all = |except: &str| -> Vec<(&'static str, bool)> {
            ["fault-injected", "no-500", "503-retry-after", "recovered", "one-order-per-key", "orders-fills-events"]
                .into_iter()
                .map(|n| (n, n != except))
                .collect()
        };
        let (load, fault, rows) = healthy();
        assert_eq!(held(&load, &fault, &rows), all(""));

        let mut e500 = load.clone();
        e500.attempts.push(attempt(1600, 3, 500, None));
        e500.attempts.push(attempt(3300, 3, 201, Some("d")));
        assert_eq!(held(&e500, &fault, &Rows { orders: 4, fills: 4, events: 4 }), all("no-500"));

        let mut bare = load.clone();
        bare.attempts[1].retry_after = None;
        assert_eq!(held(&bare, &fault, &rows), all("503-retry-after"));

        let mut twice = load.clone();
        twice.attempts.push(attempt(3400, 2, 201, Some("c2")));
        assert_eq!(held(&twice, &fault, &Rows { orders: 4, fills: 4, events: 4 }), all("one-order-per-key"));

        assert_eq!(held(&load, &fault, &Rows { orders: 3, fills: 2, events: 3 }), all("orders-fills-events"));
        assert_eq!(held(&load, &fault, &Rows { orders: 4, fills: 4, events: 4 }), all("orders-fills-events"));

        let mut slow = load.clone();
        for a in &mut slow.attempts[2..] {
            a.latency_ms = 20_000;
        }
        assert_eq!(held(&slow, &fault, &rows), all("recovered"));

        let mut untouched = load.clone();
        untouched.attempts[1].status = 201;
        untouched.attempts[1].order_id = Some("b".into());
        assert_eq!(held(&untouched, &fault, &rows)[0], ("fault-injected", false), "a fault nobody saw proves nothing");
        let failed = Fault { failed: Some("pg_ctl stop failed".into()), ..fault };
        assert_eq!(held(&load, &failed, &rows)[0], ("fault-injected", false));
    }

    #[test]
    fn bounds_are_enforced() {
        let text = include_str!("../scenarios/db-restart.toml");
        for (from, to, rule) in [
            ("rate = 200", "rate = 5000", "rate must be 1 to 1000"),
            ("down_for = \"5s\"", "down_for = \"1h\"", "down_for must be 1s to 5m"),
        ] {
            let e = crate::Scenario::from_toml(&text.replace(from, to)).unwrap_err().to_string();
            assert!(e.contains(rule), "{e}");
        }
    }
}
