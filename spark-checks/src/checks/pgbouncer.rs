//! `pgbouncer`: the pool in front of PostgreSQL, from its admin console and
//! from `pg_stat_activity`, and the proof that LISTEN and migrations do not
//! go through a transaction pool.

use std::str::FromStr as _;
use std::time::Duration;

use spark_db::{Database, redact_url};
use sqlx::postgres::{PgConnectOptions, PgListener, PgRow};
use sqlx::{Column as _, ConnectOptions as _, Connection as _, Row as _, TypeInfo as _};

use crate::check::{Check, Measurement, Outcome, Status, Threshold};
use crate::checks::sql_error;
use crate::context::{Context, ErrorChain, one_line};

/// Through the admin console (`SHOW POOLS`, `SHOW CONFIG`, `SHOW
/// DATABASES`, simple query protocol): the application's pool is in
/// `transaction` mode, `sv_active / pool_size` below the limits, nobody
/// waiting (`cl_waiting`, `maxwait`). From `pg_stat_activity`: long active
/// queries and sessions idle in a transaction. Then a LISTEN through the
/// listen and migration URLs must receive a NOTIFY sent directly.
#[derive(Debug, Clone, Copy, Default)]
pub struct PgbouncerCheck;

/// The first pgBouncer that keeps protocol-level prepared statements apart
/// per client in transaction mode (with `max_prepared_statements` > 0).
pub const PREPARED_STATEMENTS_SINCE: (u32, u32) = (1, 21);

#[async_trait::async_trait]
impl Check for PgbouncerCheck {
    fn id(&self) -> &'static str {
        "pgbouncer"
    }

    async fn run(&self, ctx: &Context) -> Outcome {
        let cfg = &ctx.config().pgbouncer;
        if cfg.admin_url.is_none() && !ctx.has_database() {
            return Outcome::skip(self.id(), "neither pgbouncer.admin_url nor database.url is configured");
        }
        let mut o = Outcome::new(self.id());
        let mut summary = Vec::new();
        if let Some(admin) = &cfg.admin_url {
            if let Some(s) = admin_console(&mut o, ctx, admin).await {
                summary.push(s);
            }
        } else {
            o.detail("admin_console", "not configured (pgbouncer.admin_url): pool mode and saturation not measured");
        }
        if ctx.has_database() {
            match ctx.database().await {
                Ok(Database::Postgres(pool)) => {
                    activity(&mut o, ctx, &pool).await;
                    listen_probes(&mut o, ctx, &pool).await;
                    summary.push("LISTEN reaches PostgreSQL".to_owned());
                }
                Ok(Database::Sqlite(_)) => {
                    o.detail("activity", "not measured: the database is embedded SQLite");
                }
                Err(e) => {
                    o.found(Status::Fail, e);
                }
            }
        }
        o.finish(&summary.join("; "))
    }
}

/// A cell of an admin-console row as text, whatever type pgBouncer gave it.
fn cell(row: &PgRow, name: &str) -> Option<String> {
    let idx = row.columns().iter().position(|c| c.name() == name)?;
    let ty = row.columns()[idx].type_info().name().to_owned();
    match ty.as_str() {
        "INT2" => row.try_get::<Option<i16>, _>(idx).ok()?.map(|v| v.to_string()),
        "INT4" => row.try_get::<Option<i32>, _>(idx).ok()?.map(|v| v.to_string()),
        "INT8" => row.try_get::<Option<i64>, _>(idx).ok()?.map(|v| v.to_string()),
        "FLOAT4" | "FLOAT8" => row.try_get::<Option<f64>, _>(idx).ok()?.map(|v| v.to_string()),
        "BOOL" => row.try_get::<Option<bool>, _>(idx).ok()?.map(|v| v.to_string()),
        _ => row.try_get::<Option<String>, _>(idx).ok()?,
    }
}

fn num(row: &PgRow, name: &str) -> f64 {
    cell(row, name).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// `(major, minor)` from `PgBouncer 1.18.0`.
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let number = text.split_whitespace().find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    let mut parts = number.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Host and port of a URL, for comparing where two URLs point.
pub(crate) fn endpoint(url: &str) -> Option<(String, u16)> {
    let o = PgConnectOptions::from_str(url).ok()?;
    Some((o.get_host().to_owned(), o.get_port()))
}

/// The database a URL names.
fn database_of(url: &str) -> Option<String> {
    PgConnectOptions::from_str(url).ok()?.get_database().map(str::to_owned)
}

async fn admin_console(o: &mut Outcome, ctx: &Context, admin: &str) -> Option<String> {
    let cfg = &ctx.config().pgbouncer;
    let options = match PgConnectOptions::from_str(admin) {
        Ok(options) => options,
        Err(e) => {
            o.found(Status::Fail, format!("pgbouncer.admin_url {} is not a PostgreSQL URL: {e}", redact_url(admin)));
            return None;
        }
    };
    let mut conn = match options.connect().await {
        Ok(conn) => conn,
        Err(e) => {
            let hint = if e.to_string().contains("unsupported startup parameter") {
                " (add `ignore_startup_parameters = extra_float_digits` to pgbouncer.ini)"
            } else {
                ""
            };
            o.found(
                Status::Fail,
                format!(
                    "cannot reach the pgBouncer admin console at {}: {}{hint}",
                    redact_url(admin),
                    one_line(&ErrorChain(&e).to_string())
                ),
            );
            return None;
        }
    };
    // The admin console speaks only the simple query protocol: raw_sql.
    let read =
        async |sql: &str, conn: &mut sqlx::PgConnection| sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).fetch_all(conn).await;
    let version =
        read("SHOW VERSION", &mut conn).await.ok().and_then(|rows| rows.first().and_then(|r| cell(r, "version")));
    let (pools, config, databases) = match (
        read("SHOW POOLS", &mut conn).await,
        read("SHOW CONFIG", &mut conn).await,
        read("SHOW DATABASES", &mut conn).await,
    ) {
        (Ok(p), Ok(c), Ok(d)) => (p, c, d),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            sql_error(o, "the admin console (SHOW POOLS/CONFIG/DATABASES)", &e);
            return None;
        }
    };
    let _ = conn.close().await;
    let setting =
        |key: &str| config.iter().find(|r| cell(r, "key").as_deref() == Some(key)).and_then(|r| cell(r, "value"));
    let default_mode = setting("pool_mode").unwrap_or_default();
    let default_size: f64 = setting("default_pool_size").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let app_url = ctx.config().database.url.as_deref();
    let Some(name) = cfg.database.clone().or_else(|| app_url.and_then(database_of)) else {
        o.found(Status::Warn, "no pool to judge: set pgbouncer.database or database.url");
        return None;
    };
    let db_row = databases.iter().find(|r| cell(r, "name").as_deref() == Some(name.as_str()));
    let mode =
        db_row.and_then(|r| cell(r, "pool_mode")).filter(|m| !m.is_empty()).unwrap_or_else(|| default_mode.clone());
    let pool_size = db_row.map(|r| num(r, "pool_size")).filter(|s| *s > 0.0).unwrap_or(default_size);
    let ours: Vec<&PgRow> = pools.iter().filter(|r| cell(r, "database").as_deref() == Some(name.as_str())).collect();
    o.detail("pool", &name).detail("pool_mode", &mode).detail("pool_size", pool_size);
    o.detail(
        "pools",
        pools
            .iter()
            .map(|r| {
                let mut m = serde_json::Map::new();
                for c in r.columns() {
                    m.insert(
                        c.name().to_owned(),
                        cell(r, c.name()).map_or(serde_json::Value::Null, serde_json::Value::String),
                    );
                }
                serde_json::Value::Object(m)
            })
            .collect::<Vec<_>>(),
    );
    if db_row.is_none() && ours.is_empty() {
        o.found(
            Status::Fail,
            format!("pgBouncer has no database {name:?}: the application's pool is not configured there"),
        );
        return None;
    }
    match mode.as_str() {
        "transaction" => {}
        "session" => {
            o.found(
                Status::Fail,
                format!("pool {name:?} is in session mode: each client holds a server connection for its whole session; set pool_mode = transaction"),
            );
        }
        other => {
            o.found(
                Status::Fail,
                format!(
                    "pool {name:?} is in {other} mode: multi-statement transactions break; set pool_mode = transaction"
                ),
            );
        }
    }
    let sv_active: f64 = ours.iter().map(|r| num(r, "sv_active")).sum();
    let cl_waiting: f64 = ours.iter().map(|r| num(r, "cl_waiting")).sum();
    let maxwait_ms =
        ours.iter().map(|r| num(r, "maxwait") * 1000.0 + num(r, "maxwait_us") / 1000.0).fold(0.0, f64::max);
    if pool_size > 0.0 {
        let saturation = sv_active / pool_size * 100.0;
        o.measure(Measurement::judged(
            "saturation",
            saturation,
            "%",
            Threshold::at_least(
                Some(f64::from(cfg.saturation_warn_percent)),
                Some(f64::from(cfg.saturation_fail_percent)),
            ),
        ));
    } else {
        o.found(Status::Warn, format!("pool {name:?} has no pool_size: saturation not measured"));
    }
    o.measure(Measurement::info("sv_active", sv_active, "count"));
    o.measure(Measurement::judged("cl_waiting", cl_waiting, "count", Threshold::above(Some(0.0), None)));
    let wait_limit = cfg.maxwait_fail_ms as f64;
    o.measure(Measurement::judged("maxwait_ms", maxwait_ms, "ms", Threshold::at_least(None, Some(wait_limit))));
    // sqlx prepares every parameterised statement under a name
    // (`sqlx_s_N`), and that holds with its statement cache off too. A
    // transaction pool that does not track prepared statements hands them
    // to other clients' server connections: measured on pgBouncer 1.18,
    // "prepared statement sqlx_s_3 already exists" errors and, worse,
    // results of another client's statement.
    let version = version.as_deref().and_then(parse_version);
    let max_prepared: u64 = setting("max_prepared_statements").and_then(|v| v.parse().ok()).unwrap_or(0);
    let tracks_prepared = version.is_some_and(|v| v >= PREPARED_STATEMENTS_SINCE) && max_prepared > 0;
    o.detail("version", version.map(|(a, b)| format!("{a}.{b}"))).detail("max_prepared_statements", max_prepared);
    if mode == "transaction"
        && !tracks_prepared
        && let Some(app) = app_url
        && endpoint(app).is_some_and(|e| Some(e) == endpoint(admin))
    {
        o.found(
            Status::Fail,
            format!(
                "database.url {} goes through this transaction pool, which does not track prepared statements \
                 (pgBouncer {}, max_prepared_statements = {max_prepared}): sqlx's named statements reach other clients' \
                 server connections, giving errors and wrong results. Use pgBouncer >= 1.21 with \
                 max_prepared_statements > 0, or a session pool, for this URL",
                redact_url(app),
                version.map_or_else(|| "?".to_owned(), |(a, b)| format!("{a}.{b}")),
            ),
        );
    }
    Some(format!("pool {name:?} in {mode} mode, {sv_active:.0}/{pool_size:.0} server connections active"))
}

const ACTIVITY: &str = "\
SELECT pid, usename::text AS usename, datname::text AS datname, application_name, state,
       extract(epoch FROM now() - query_start)::float8 AS query_age_s,
       extract(epoch FROM now() - state_change)::float8 AS state_age_s
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND datname = current_database()
  AND state IN ('active', 'idle in transaction', 'idle in transaction (aborted)')";

/// Long queries and idle transactions of the application's database (the
/// one the direct URL names): another database's sessions on a shared
/// server are another application's business.
async fn activity(o: &mut Outcome, ctx: &Context, pool: &sqlx::PgPool) {
    let cfg = &ctx.config().pgbouncer;
    let rows = match sqlx::query(ACTIVITY).fetch_all(pool).await {
        Ok(rows) => rows,
        Err(e) => {
            sql_error(o, "reading pg_stat_activity", &e);
            return;
        }
    };
    let mut longest_active: f64 = 0.0;
    let mut longest_idle_tx: f64 = 0.0;
    let mut offenders = Vec::new();
    for r in &rows {
        let state: String = r.try_get("state").unwrap_or_default();
        let pid: i32 = r.try_get("pid").unwrap_or_default();
        let who = format!(
            "pid {pid} ({}@{}, {})",
            r.try_get::<Option<String>, _>("usename").ok().flatten().unwrap_or_default(),
            r.try_get::<Option<String>, _>("datname").ok().flatten().unwrap_or_default(),
            r.try_get::<Option<String>, _>("application_name").ok().flatten().unwrap_or_default()
        );
        if state == "active" {
            let age: f64 = r.try_get::<Option<f64>, _>("query_age_s").ok().flatten().unwrap_or(0.0);
            longest_active = longest_active.max(age);
            if age > cfg.active_query_warn_seconds as f64 {
                offenders.push(serde_json::json!({"who": who, "state": state, "seconds": age}));
            }
        } else {
            let age: f64 = r.try_get::<Option<f64>, _>("state_age_s").ok().flatten().unwrap_or(0.0);
            longest_idle_tx = longest_idle_tx.max(age);
            if age > cfg.idle_in_transaction_warn_seconds as f64 {
                offenders.push(serde_json::json!({"who": who, "state": state, "seconds": age}));
            }
        }
    }
    let active_limit = cfg.active_query_warn_seconds as f64;
    o.measure(Measurement::judged(
        "longest_active_query_s",
        longest_active,
        "s",
        Threshold::above(Some(active_limit), None),
    ));
    o.measure(Measurement::above(
        "longest_idle_in_transaction_s",
        longest_idle_tx,
        "s",
        cfg.idle_in_transaction_warn_seconds as f64,
        cfg.idle_in_transaction_fail_seconds as f64,
    ));
    // Who, never what: query text can carry customer data.
    o.detail("long_sessions", offenders);
}

/// LISTEN through each URL relays and migrations use; NOTIFY directly.
async fn listen_probes(o: &mut Outcome, ctx: &Context, direct: &sqlx::PgPool) {
    let db = &ctx.config().database;
    let Some(app) = db.url.as_deref() else { return };
    let mut probes: Vec<(&str, &str)> = vec![("listen_url", db.listen_url.as_deref().unwrap_or(app))];
    let migration = db.migration_url.as_deref().unwrap_or(app);
    if migration != probes[0].1 {
        probes.push(("migration_url", migration));
    } else {
        probes[0].0 = "listen_url and migration_url";
    }
    let timeout = Duration::from_millis(ctx.config().pgbouncer.notify_timeout_ms);
    let mut results = Vec::new();
    for (role, url) in probes {
        let started = std::time::Instant::now();
        let delivered = probe(url, direct, timeout).await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        match &delivered {
            Ok(true) => {
                o.measure(Measurement::info(format!("notify_delivered_ms ({role})"), ms, "ms"));
            }
            Ok(false) => {
                o.found(
                    Status::Fail,
                    format!(
                        "{role} {}: a LISTEN through it did not receive a NOTIFY sent directly within {} ms; it goes through a \
                         transaction pool. Point it at PostgreSQL or a session pool",
                        redact_url(url),
                        timeout.as_millis()
                    ),
                );
            }
            Err(e) => {
                o.found(Status::Fail, format!("{role} {}: the LISTEN probe failed: {e}", redact_url(url)));
            }
        }
        results.push(
            serde_json::json!({"role": role, "url": redact_url(url), "delivered": delivered.as_ref().ok(), "ms": ms}),
        );
    }
    o.detail("listen_probes", results);
}

async fn probe(url: &str, direct: &sqlx::PgPool, timeout: Duration) -> Result<bool, String> {
    let channel = format!("spark_check_probe_{}", std::process::id() ^ fastish_nonce());
    let mut listener = PgListener::connect(url).await.map_err(|e| one_line(&ErrorChain(&e).to_string()))?;
    listener.listen(&channel).await.map_err(|e| one_line(&ErrorChain(&e).to_string()))?;
    sqlx::query("SELECT pg_notify($1, 'probe')")
        .bind(&channel)
        .execute(direct)
        .await
        .map_err(|e| one_line(&ErrorChain(&e).to_string()))?;
    let received = tokio::time::timeout(timeout, async {
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) if n.channel() == channel => return true,
                Ok(Some(_)) => {}
                // The connection closed under the listener (a pool that
                // drops an idle server that received data): never delivered.
                Ok(None) | Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    let _ = listener.unlisten(&channel).await;
    Ok(received)
}

/// A per-probe number so concurrent scans do not hear each other.
fn fastish_nonce() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_parse_from_show_version() {
        assert_eq!(super::parse_version("PgBouncer 1.18.0"), Some((1, 18)));
        assert_eq!(super::parse_version("PgBouncer 1.24.1"), Some((1, 24)));
        assert_eq!(super::parse_version("nonsense"), None);
    }
}
