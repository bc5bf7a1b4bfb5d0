//! Chaos for a Spark deployment: experiments that break it on purpose and
//! verify its invariants, and the point-in-time restore drill.
//!
//! Built so far: the restore drill and the first of the six fault
//! experiments, `relay-crash` ([`run_relay_crash`]: the outbox relay
//! SIGKILLed again and again while it drains, judged on `lost`,
//! `per-aggregate-order`, `one-effect-per-event`, `fault-injected` and
//! `drained`, as an [`ExperimentReport`]). Scenarios are data
//! ([`RelayCrash::from_toml`], the built-in `scenarios/relay-crash.toml`).
//!
//! - [`base_backup`] takes a plain-format base backup with `pg_basebackup`.
//! - [`restore_drill`] restores a base backup plus its WAL archive to a
//!   timestamp in a scratch PostgreSQL reachable only through a unix
//!   socket in a private directory, verifies it with
//!   `spark_checks::schema` (every migration applied, every sequence ahead
//!   of its column, money columns exact, the one-open-position index valid),
//!   checks the archive for gaps, counts the rows, measures the time to a
//!   usable database (RTO) and the newest recovered commit against the
//!   target (RPO), and stops and removes the scratch server. A broken
//!   restore is a [`DrillReport`] with `held: false`, written as evidence
//!   with [`DrillReport::write`].
//!
//! Guarantees: the backup and the archive are only read (the scratch
//! server's `archive_mode` is off and its `archive_command`,
//! `archive_cleanup_command`, `recovery_end_command` and `primary_conninfo`
//! are cleared, whatever the copied configuration said; the archive path is
//! refused unless it is safe in a shell); the scratch server has no TCP
//! listener and trusts only its socket in the scratch directory (0700);
//! its programs must be of the backup's major version; it is stopped before
//! the drill returns, and stopped at once when the drill is dropped
//! half-way (a panic, a cancelled future). A promoted server counts as
//! recovered only when its log says where recovery stopped and the target
//! is not before the backup's start.
//!
//! ```no_run
//! # async fn example() -> Result<(), spark_chaos::ChaosError> {
//! use spark_chaos::{DrillOptions, PgBin, restore_drill};
//!
//! let target = chrono::DateTime::parse_from_rfc3339("2026-12-07T11:40:03Z").unwrap().to_utc();
//! let mut options = DrillOptions::new("/backups/base", "/backups/wal", target);
//! options.database = "orders".to_owned();
//! let report = restore_drill(&PgBin::find()?, &options, &spark_db::system_clock()).await?;
//! println!("RTO {:?} ms, RPO {:?} ms, held: {}", report.rto_ms, report.rpo_ms, report.held);
//! # Ok(()) }
//! ```
//!
//! # Features
//! None. The drill needs the PostgreSQL server programs (`pg_ctl`,
//! `pg_controldata`; `pg_basebackup` for backups) of the backup's major
//! version; when run as root it runs the server as the `postgres` user.

mod db_latency;
mod db_restart;
mod delivery;
mod deployment;
mod error;
mod experiment;
mod http;
mod load;
mod pg;
mod pool_exhaustion;
mod proxy;
mod relay_crash;
mod restore;
mod scenario;
mod sink_outage;
mod stack;

pub use crate::db_latency::DbLatency;
pub use crate::db_restart::DbRestart;
pub use crate::deployment::{
    DatabaseSection, Deployment, PgbouncerSection, PrometheusSection, ProxySection, RelaySection, ServiceSection,
};
pub use crate::error::ChaosError;
pub use crate::experiment::{ExperimentReport, Invariant};
pub use crate::pg::PgBin;
pub use crate::pool_exhaustion::PoolExhaustion;
pub use crate::proxy::{
    ConnectionCounts, FaultProxy, ProxyClient, ProxyInfo, Toxic, ToxicInfo, ToxicKind, ToxicStream,
};
pub use crate::relay_crash::{RELAY_CRASH_TOML, RelayCrash, RelayTarget, run_relay_crash};
pub use crate::restore::{
    BackupOptions, BackupReport, DRILL_FORMAT, DrillItem, DrillOptions, DrillReport, WalArchive, base_backup,
    restore_drill,
};
pub use crate::scenario::{SCENARIOS, Scenario, run};
pub use crate::sink_outage::SinkOutage;
pub use crate::stack::{CHAOS_TOML, PID_FILE, Stack, StackOptions, down, up_detached};
