//! spark-checks against real servers: a fresh PostgreSQL database per test
//! on the shared server, private PostgreSQL clusters for server settings, a
//! real pgBouncer, a real Prometheus and Alertmanager, and SQLite files.

mod backup;
mod clock;
mod contract;
mod decimal;
mod flags;
mod headers;
mod migrations;
mod observability;
mod pgbouncer;
mod scan;
mod schema;
mod slo_alerts;
mod supply_chain;

use std::sync::Arc;

use spark_checks::{Check, Config, Context, Measurement, Outcome, Status};

/// A configuration from TOML text, with no environment.
pub(crate) fn config(toml: &str) -> Config {
    Config::from_toml_str(toml, |_| None).unwrap_or_else(|e| panic!("test configuration: {e}\n{toml}"))
}

/// A configuration whose `database.url` is `url`, followed by `extra` TOML
/// (which starts its own sections).
pub(crate) fn config_for(url: &str, extra: &str) -> Config {
    config(&format!("[database]\nurl = {url:?}\n{extra}"))
}

/// Runs one check under a context built from `config`.
pub(crate) async fn run(check: &dyn Check, config: Config) -> Outcome {
    run_in(check, Context::new(config)).await
}

/// Runs one check under `ctx`.
pub(crate) async fn run_in(check: &dyn Check, ctx: Context) -> Outcome {
    let ctx = Arc::new(ctx);
    check.run(&ctx).await
}

/// The measurement called `name`, or a panic showing the outcome.
pub(crate) fn measurement<'a>(o: &'a Outcome, name: &str) -> &'a Measurement {
    o.measurements.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no measurement {name:?} in {o:#?}"))
}

/// Whether a finding of `status` contains `text`.
pub(crate) fn has_finding(o: &Outcome, status: Status, text: &str) -> bool {
    o.findings.iter().any(|f| f.status == status && f.message.contains(text))
}

/// Asserts the outcome's status, showing the whole outcome when it differs.
#[track_caller]
pub(crate) fn assert_status(o: &Outcome, status: Status) {
    assert_eq!(o.status, status, "{o:#?}");
}

/// Runs SQL (several statements allowed) on either backend.
pub(crate) async fn exec(db: &spark_db::Database, sql: &str) {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match db {
        spark_db::Database::Postgres(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
        spark_db::Database::Sqlite(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
    }
    .unwrap();
}
