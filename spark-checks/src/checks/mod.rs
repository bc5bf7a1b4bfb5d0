//! The checks of the blind-spot scan, one module each.

use std::sync::Arc;

use crate::check::{Check, Outcome, Status};
use crate::context::Context;

mod backup;
#[cfg(feature = "browser")]
mod browser;
mod clock;
mod decimal;
mod flags;
mod grafana;
mod headers;
mod http;
mod migrations;
mod ntp;
mod observability;
mod pgbouncer;
mod slo_alerts;
mod supply_chain;

pub use self::backup::BackupCheck;
pub use self::clock::ClockCheck;
pub(crate) use self::clock::sequence_rows;
pub use self::decimal::DecimalCheck;
pub(crate) use self::decimal::{Exactness, exactness, money_columns};
pub use self::flags::FlagsCheck;
pub use self::headers::{HeadersCheck, PRIVATE_REFERRER_POLICIES};
pub use self::migrations::MigrationsCheck;
pub(crate) use self::migrations::{compare, read_applied};
pub use self::observability::ObservabilityCheck;
pub(crate) use self::pgbouncer::endpoint;
pub use self::pgbouncer::{PREPARED_STATEMENTS_SINCE, PgbouncerCheck};
pub use self::slo_alerts::SloAlertsCheck;

pub use self::supply_chain::SupplyChainCheck;

/// Every check of this crate, in report order: `clock`, `migrations`,
/// `pgbouncer`, `decimal`, `backup`, `headers`, `observability`, `flags`,
/// `slo-alerts`, `supply-chain`.
#[must_use]
pub fn all() -> Vec<Arc<dyn Check>> {
    vec![
        Arc::new(ClockCheck),
        Arc::new(MigrationsCheck),
        Arc::new(PgbouncerCheck),
        Arc::new(DecimalCheck),
        Arc::new(BackupCheck),
        Arc::new(HeadersCheck),
        Arc::new(ObservabilityCheck),
        Arc::new(FlagsCheck),
        Arc::new(SloAlertsCheck),
        Arc::new(SupplyChainCheck),
    ]
}

/// The scan's database for a check, or `None` after recording why there is
/// none on `o`: a skip when no database is configured, a failure when it
/// cannot be reached.
pub(crate) async fn database(ctx: &Context, o: &mut Outcome) -> Option<spark_db::Database> {
    if !ctx.has_database() {
        o.found(Status::Skip, "no database configured: set database.url in spark.toml or SPARK_DATABASE_URL");
        return None;
    }
    match ctx.database().await {
        Ok(db) => Some(db),
        Err(e) => {
            o.found(Status::Fail, e);
            None
        }
    }
}

/// A PostgreSQL identifier, quoted.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Records a failed query as a failure naming what was being read. The
/// database's message is kept (it names the missing privilege or relation);
/// it never carries a password.
pub(crate) fn sql_error(o: &mut Outcome, what: &str, e: &sqlx::Error) {
    o.found(Status::Fail, format!("{what} failed: {}", crate::context::one_line(&e.to_string())));
}
