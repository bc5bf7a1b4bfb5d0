//! `pool-exhaustion`: every server connection of the service's pgBouncer
//! pool held by someone else while orders keep coming. The service must
//! shed load quickly with 503 (never a 500, never a hang), the `pgbouncer`
//! check and the canary engine's `pgbouncer_saturation` trigger must see
//! the pool full, and throughput must return once the connections are
//! released.

use std::collections::BTreeMap;
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use spark_db::SharedClock;
use spark_rollback::{Engine, Metrics, Role, Signal, Snapshot};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection as _, Row as _};

use crate::db_restart::{Rows, count_rows, no_server_errors, one_order_per_key, orders_fills_events};
use crate::deployment::{Deployment, PgbouncerSection};
use crate::error::ChaosError;
use crate::experiment::{ExperimentReport, Invariant, elapsed_ms};
use crate::load::{self, LoadPlan, LoadRun, OrderClient, percentile};
use crate::scenario::{bound, duration, within};

/// The `pool-exhaustion` scenario.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolExhaustion {
    /// Always `pool-exhaustion`.
    pub scenario: String,
    /// What it sets out to show.
    pub hypothesis: String,
    /// New orders per second (1 to 1,000).
    pub rate: u32,
    /// Orders before the fault (1 s to 5 min).
    #[serde(deserialize_with = "duration")]
    pub steady: Duration,
    /// How long the pool's server connections are held (1 s to 5 min).
    #[serde(deserialize_with = "duration")]
    pub hold: Duration,
    /// Orders after the release (1 s to 5 min).
    #[serde(deserialize_with = "duration")]
    pub after: Duration,
    /// A request refused while the pool is full must be refused within
    /// this, at the 95th percentile (100 ms to 1 min).
    #[serde(deserialize_with = "duration")]
    pub shed_within: Duration,
    /// After the release, orders must flow again at 80 % of the steady
    /// rate from this long on (1 s to 5 min, less than `after`).
    #[serde(deserialize_with = "duration")]
    pub recover_within: Duration,
    /// The canary plan the sampled saturation is judged by.
    pub plan: toml::Table,
}

impl PoolExhaustion {
    pub(crate) fn check(self) -> Result<PoolExhaustion, ChaosError> {
        let (s, min, max) = ("pool-exhaustion", Duration::from_secs(1), Duration::from_secs(300));
        bound(s, self.scenario == s, "scenario", "must be \"pool-exhaustion\"")?;
        bound(s, (1..=1000).contains(&self.rate), "rate", "must be 1 to 1000")?;
        bound(s, within(self.steady, min, max), "steady", "must be 1s to 5m")?;
        bound(s, within(self.hold, min, max), "hold", "must be 1s to 5m")?;
        bound(s, within(self.after, min, max), "after", "must be 1s to 5m")?;
        bound(
            s,
            within(self.shed_within, Duration::from_millis(100), Duration::from_secs(60)),
            "shed_within",
            "must be 100ms to 1m",
        )?;
        bound(
            s,
            within(self.recover_within, min, max) && self.recover_within < self.after,
            "recover_within",
            "must be 1s to 5m and less than after",
        )?;
        self.engine()?;
        Ok(self)
    }

    fn engine(&self) -> Result<Engine, ChaosError> {
        crate::scenario::engine(&self.scenario, &self.plan, spark_rollback::TriggerId::PgbouncerSaturation)
    }
}

/// One look at the pool from pgBouncer's admin console.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct PoolSample {
    /// Milliseconds after the origin.
    pub(crate) at_ms: u64,
    /// Server connections linked to clients over the pool size.
    pub(crate) saturation: f64,
    /// Clients waiting for a server connection.
    pub(crate) waiting: u64,
}

/// What the fault did.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hold {
    pub(crate) from: u64,
    pub(crate) to: u64,
    /// Connections that got a server connection and held it.
    pub(crate) held: usize,
    pub(crate) pool_size: u32,
    pub(crate) failed: Option<String>,
    pub(crate) samples: Vec<PoolSample>,
    /// What the `pgbouncer` check measured during the hold.
    pub(crate) check: Option<CheckSeen>,
}

/// The admin console: one connection, simple queries only (pgBouncer's
/// console speaks no extended protocol).
async fn admin(url: &str) -> Result<PgConnection, ChaosError> {
    let options =
        PgConnectOptions::from_str(url).map_err(|e| ChaosError::Input(format!("[pgbouncer] admin_url: {e}")))?;
    PgConnection::connect_with(&options).await.map_err(|e| ChaosError::Input(format!("pgBouncer's admin console: {e}")))
}

/// `RESUME`s the service's database on pgBouncer (a `KILL` pauses it), for
/// [`crate::clear_faults`]: what it did.
pub(crate) async fn resume(bouncer: &PgbouncerSection) -> String {
    let Ok(options) = PgConnectOptions::from_str(&bouncer.url) else { return "pgBouncer URL unreadable".to_owned() };
    let db = options.get_database().unwrap_or("postgres").to_owned();
    let resumed = async {
        let mut console = admin(&bouncer.admin_url).await?;
        let result = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("RESUME {db}"))).execute(&mut console).await;
        let _ = console.close().await;
        result.map_err(crate::delivery::sql)
    };
    match resumed.await {
        Ok(_) => format!("pgBouncer: {db} resumed"),
        // "database not paused" is the usual answer: nothing to undo.
        Err(e) if e.to_string().contains("not paused") => format!("pgBouncer: {db} was not paused"),
        Err(e) => format!("pgBouncer: {db} not resumed: {e}"),
    }
}

/// `SHOW POOLS`: (server connections active in the pools of `dbs`, clients
/// waiting in the first one's).
async fn pools(conn: &mut PgConnection, dbs: [&str; 2]) -> Result<(u64, u64), ChaosError> {
    let rows = sqlx::raw_sql("SHOW POOLS").fetch_all(&mut *conn).await.map_err(crate::delivery::sql)?;
    let num = |row: &sqlx::postgres::PgRow, column: &str| -> u64 {
        row.try_get::<i64, _>(column)
            .ok()
            .and_then(|v| u64::try_from(v).ok())
            .or_else(|| row.try_get::<i32, _>(column).ok().and_then(|v| u64::try_from(v).ok()))
            .or_else(|| row.try_get::<String, _>(column).ok().and_then(|v| v.parse().ok()))
            .unwrap_or(0)
    };
    let database = |r: &sqlx::postgres::PgRow| r.try_get::<String, _>("database").unwrap_or_default();
    let active = rows.iter().filter(|r| dbs.contains(&database(r).as_str())).map(|r| num(r, "sv_active")).sum();
    let waiting = rows.iter().filter(|r| database(r) == dbs[0]).map(|r| num(r, "cl_waiting")).sum();
    Ok((active, waiting))
}

/// One look at the pools of `dbs` (the service's first) as a sample.
async fn sample(console: &mut PgConnection, dbs: [&str; 2], pool_size: u32, origin: Instant) -> Option<PoolSample> {
    let (active, waiting) = pools(console, dbs).await.ok()?;
    Some(PoolSample {
        at_ms: elapsed_ms(origin),
        saturation: f64::from(u32::try_from(active).unwrap_or(u32::MAX)) / f64::from(pool_size.max(1)),
        waiting,
    })
}

/// The canary engine's verdict on the sampled saturation.
fn saturation_verdict(
    engine: &Engine,
    samples: &[PoolSample],
    start_s: i64,
) -> Result<(String, Option<String>), String> {
    let mut snapshot = Snapshot::new(1);
    let mut last = None;
    for sample in samples {
        let t = start_s + i64::try_from(sample.at_ms / 1000).unwrap_or(0);
        // One sample a second: the last of each second.
        if last == Some(t) {
            continue;
        }
        last = Some(t);
        snapshot.push(Signal::PgbouncerSaturationRatio, Role::Canary, t, sample.saturation);
    }
    let metrics = Metrics::from_snapshot(&snapshot).map_err(|e| e.to_string())?;
    let stage = engine.plan().stages.first().ok_or("the plan has no stage")?;
    let replay = engine.replay(&metrics, stage, start_s * 1000, None).map_err(|e| e.to_string())?;
    Ok((replay.decision().kind().to_owned(), replay.decision().trigger().map(|t| t.id().to_owned())))
}

/// The invariants: pure, so each can be shown to fail.
pub(crate) fn judge(
    s: &PoolExhaustion,
    load: &LoadRun,
    hold: &Hold,
    rows: &Rows,
    verdict: &Result<(String, Option<String>), String>,
) -> Vec<Invariant> {
    let full = hold.samples.iter().any(|p| p.saturation >= 1.0);
    let mut shed: Vec<u64> = load
        .attempts
        .iter()
        .filter(|a| a.status == 503 && a.at_ms >= hold.from && a.at_ms < hold.to)
        .map(|a| a.latency_ms)
        .collect();
    let refused = shed.len();
    let shed_p95 = percentile(&mut shed, 95);
    let shed_bound = u64::try_from(s.shed_within.as_millis()).unwrap_or(u64::MAX);
    let before = load.throughput((0, hold.from));
    // Up to the end of new orders: the retries after it would thin the rate.
    let sending = u64::try_from((s.steady + s.hold + s.after).as_millis()).unwrap_or(u64::MAX);
    let recovered_from = hold.to + u64::try_from(s.recover_within.as_millis()).unwrap_or(u64::MAX);
    let after = load.throughput((recovered_from, sending.max(recovered_from + 1)));
    vec![
        Invariant::new(
            "fault-injected",
            hold.failed.is_none() && full,
            hold.failed.clone().unwrap_or_else(|| {
                format!(
                    "{} of {} server connections held for {} ms; pool full: {full}",
                    hold.held,
                    hold.pool_size,
                    hold.to - hold.from
                )
            }),
        ),
        Invariant::new(
            "sheds-quickly",
            refused > 0 && shed_p95.is_some_and(|p| p <= shed_bound),
            match shed_p95 {
                Some(p) => format!(
                    "{refused} requests refused with 503 while the pool was full, p95 {p} ms (bound {shed_bound} ms)"
                ),
                None => "no request was refused while the pool was full".to_owned(),
            },
        ),
        no_server_errors("no-500", load),
        Invariant::new(
            "pgbouncer-check",
            hold.check.as_ref().is_some_and(|c| c.waiting.1 != "pass" || c.maxwait_ms.1 != "pass"),
            match &hold.check {
                Some(c) => format!(
                    "the pgbouncer check on the service's pool: {} clients waiting ({}), longest wait {:.0} ms ({})",
                    c.waiting.0, c.waiting.1, c.maxwait_ms.0, c.maxwait_ms.1
                ),
                None => "the pgbouncer check measured no waiting clients".to_owned(),
            },
        ),
        Invariant::new(
            "pgbouncer-saturation-trigger",
            matches!(verdict, Ok((d, Some(t))) if d == "rollback" && t == "pgbouncer_saturation"),
            match verdict {
                Ok((d, t)) => format!(
                    "the canary engine on the sampled saturation says {d}{}",
                    t.as_ref().map(|t| format!(" ({t})")).unwrap_or_default()
                ),
                Err(why) => why.clone(),
            },
        ),
        Invariant::new(
            "throughput-returns",
            before > 0.0 && after >= 0.8 * before,
            format!(
                "{before} orders/s before, {after} orders/s from {} s after the release",
                s.recover_within.as_secs()
            ),
        ),
        one_order_per_key(load),
        orders_fills_events(load, rows),
    ]
}

/// The `pgbouncer` check of spark-checks against the admin console, on
/// the service's pool: its `cl_waiting` and `maxwait_ms` measurements, each
/// with its status.
async fn pgbouncer_check(section: &PgbouncerSection, db: &str) -> Option<CheckSeen> {
    use spark_checks::Check as _;
    let mut config = spark_checks::Config::default();
    config.pgbouncer.admin_url = Some(section.admin_url.clone());
    config.pgbouncer.database = Some(db.to_owned());
    let outcome = spark_checks::checks::PgbouncerCheck.run(&spark_checks::Context::new(config)).await;
    let get =
        |name: &str| outcome.measurements.iter().find(|m| m.name == name).map(|m| (m.value, m.status.to_string()));
    Some(CheckSeen { waiting: get("cl_waiting")?, maxwait_ms: get("maxwait_ms")? })
}

/// What the `pgbouncer` check measured on the service's pool.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CheckSeen {
    /// Clients waiting for a server connection, and its status.
    pub(crate) waiting: (f64, String),
    /// The longest wait, and its status.
    pub(crate) maxwait_ms: (f64, String),
}

/// Runs `pool-exhaustion` against `deployment`: orders at `rate`; after
/// `steady`, pgBouncer's admin console `KILL`s the service's database (so
/// its pooled sessions let go), as many connections as the pool has
/// servers connect through pgBouncer and hold their sessions, `RESUME`;
/// released after `hold`; `after` more orders. Bounded in time and count.
///
/// # Errors
/// [`ChaosError::Input`] without `[service]` or `[pgbouncer]`, or when the
/// admin console cannot be reached.
pub(crate) async fn run(
    s: &PoolExhaustion,
    deployment: &Deployment,
    clock: &SharedClock,
) -> Result<ExperimentReport, ChaosError> {
    let service = deployment.need_service(&s.scenario)?;
    let bouncer = deployment.need_pgbouncer(&s.scenario)?;
    crate::deployment::require_loopback("the database", &deployment.database.url)?;
    crate::deployment::require_loopback("pgBouncer", &bouncer.url)?;
    crate::deployment::require_loopback("pgBouncer's admin console", &bouncer.admin_url)?;
    let hold_url = bouncer.hold_url.as_deref().ok_or_else(|| {
        ChaosError::Input(
            "pool-exhaustion needs [pgbouncer] hold_url: a second pool on the service's server user, sharing its \
             max_user_connections"
                .to_owned(),
        )
    })?;
    crate::deployment::require_loopback("pgBouncer", hold_url)?;
    let hold_db = PgConnectOptions::from_str(hold_url)
        .map_err(|e| ChaosError::Input(format!("[pgbouncer] hold_url: {e}")))?
        .get_database()
        .unwrap_or("postgres")
        .to_owned();
    let db = PgConnectOptions::from_str(&bouncer.url)
        .map_err(|e| ChaosError::Input(format!("[pgbouncer] url: {e}")))?
        .get_database()
        .unwrap_or("postgres")
        .to_owned();
    let mut console = admin(&bouncer.admin_url).await?;
    let engine = s.engine()?;
    let client = OrderClient::new(service, Duration::from_secs(15))?;
    let started_ms = clock.now_ms();
    let origin = Instant::now();
    let plan = LoadPlan {
        rate: s.rate,
        duration: s.steady + s.hold + s.after,
        // An order refused early in the hold is retried past its end.
        retry_for: s.hold + s.after + Duration::from_secs(5),
        timeout: Duration::from_secs(15),
        run: format!("chaos-pool-exhaustion-{started_ms}"),
    };
    let fault = async {
        tokio::time::sleep(s.steady).await;
        let mut hold = Hold { from: elapsed_ms(origin), pool_size: bouncer.pool_size, ..Hold::default() };
        let result: Result<Vec<PgConnection>, ChaosError> = async {
            // The holders connect through the second pool and wait for
            // servers the service's pool has; KILL drops the service's
            // sessions (pausing its database until RESUME), their servers
            // go to the waiting holders, and max_user_connections keeps
            // the service from getting any back while they are held.
            let options = PgConnectOptions::from_str(hold_url).map_err(|e| ChaosError::Input(e.to_string()))?;
            let mut hogs = tokio::task::JoinSet::new();
            for _ in 0..bouncer.pool_size {
                let options = options.clone();
                hogs.spawn(async move {
                    let mut conn = PgConnection::connect_with(&options).await?;
                    // A session pool links a server connection at the first
                    // query and keeps it until the client leaves.
                    sqlx::raw_sql("SELECT 1").execute(&mut conn).await?;
                    Ok::<_, sqlx::Error>(conn)
                });
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let console_sql = |sql: String| sqlx::raw_sql(sqlx::AssertSqlSafe(sql));
            console_sql(format!("KILL {db}")).execute(&mut console).await.map_err(crate::delivery::sql)?;
            let mut held = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(conn) = hogs.join_next().await {
                    if let Ok(Ok(conn)) = conn {
                        held.push(conn);
                    }
                }
            })
            .await;
            console_sql(format!("RESUME {db}")).execute(&mut console).await.map_err(crate::delivery::sql)?;
            Ok(held)
        }
        .await;
        let held = match result {
            Ok(held) => held,
            Err(e) => {
                hold.failed = Some(e.to_string());
                Vec::new()
            }
        };
        hold.held = held.len();
        // Sample the pool while it is held; the check once, half-way.
        let end = Instant::now() + s.hold;
        let mut checked = false;
        while Instant::now() < end {
            hold.samples.extend(sample(&mut console, [db.as_str(), hold_db.as_str()], bouncer.pool_size, origin).await);
            if !checked && end.saturating_duration_since(Instant::now()) < s.hold / 2 {
                hold.check = pgbouncer_check(bouncer, &db).await;
                checked = true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        for conn in held {
            let _ = conn.close().await;
        }
        hold.to = elapsed_ms(origin);
        // A few samples after the release, for the record.
        for _ in 0..4 {
            hold.samples.extend(sample(&mut console, [db.as_str(), hold_db.as_str()], bouncer.pool_size, origin).await);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        hold
    };
    let (load, hold) = tokio::join!(load::run(&client, &plan, origin), fault);
    let _ = console.close().await;
    let rows = count_rows(&deployment.database.url, &service.account_prefix, started_ms).await?;
    let verdict = saturation_verdict(&engine, &hold.samples, started_ms / 1000);
    let mut invariants = judge(s, &load, &hold, &rows, &verdict);
    let drained =
        crate::delivery::drain(&deployment.relay.command, &deployment.database.url, Duration::from_secs(60)).await?;
    invariants.push(crate::delivery::published(&drained));
    let mut measurements = BTreeMap::new();
    measurements.insert("before", load.phase(0, hold.from));
    let mut during = load.phase(hold.from, hold.to);
    during.insert("connections_held", json!(hold.held));
    during.insert("pool_size", json!(hold.pool_size));
    during.insert("max_saturation", json!(hold.samples.iter().map(|p| p.saturation).fold(0.0, f64::max)));
    during.insert("max_clients_waiting", json!(hold.samples.iter().map(|p| p.waiting).max()));
    measurements.insert("during", during);
    let mut after = load.phase(hold.to, load.duration_ms);
    after.insert("orders", json!(load.orders));
    measurements.insert("after", after);
    Ok(ExperimentReport::judged(&s.scenario, &s.hypothesis, invariants, measurements, started_ms, origin))
}
