//! Chaos for a Spark deployment: experiments that break it on purpose and
//! verify its invariants, the deployment to break, and the point-in-time
//! restore drill.
//!
//! - Six experiments, each a [`Scenario`] (TOML data under `scenarios/`,
//!   every field bounded) run by [`run`] against a [`Deployment`] (the
//!   `chaos.toml` model) into an [`ExperimentReport`]: `relay-crash`,
//!   `db-restart`, `db-latency`, `sink-outage`, `pool-exhaustion`,
//!   `clock-skew` ([`SCENARIOS`]). Each judges its invariants with a pure
//!   function, tested to fail on each failure; each touches loopback only
//!   and bounds every loop in time and count; [`clear_faults`] undoes what
//!   an interrupted one may have left.
//! - [`Stack::up`] starts a deployment on loopback (PostgreSQL with WAL
//!   archiving, the fault proxy, pgBouncer, the order service, Prometheus)
//!   and writes its `chaos.toml`; [`down`] stops it.
//! - [`FaultProxy`] is a Toxiproxy-compatible fault proxy, [`ProxyClient`]
//!   drives it or a real Toxiproxy.
//!
//! ```no_run
//! # async fn example() -> Result<(), spark_chaos::ChaosError> {
//! use spark_chaos::{Deployment, Scenario};
//!
//! let deployment = Deployment::load("chaos/chaos.toml".as_ref())?;
//! let report = spark_chaos::run(&Scenario::builtin("db-restart")?, &deployment, &spark_db::system_clock()).await?;
//! for i in &report.invariants {
//!     println!("{} {} {}", i.name, if i.held { "held" } else { "BROKEN" }, i.value);
//! }
//! # Ok(()) }
//! ```
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
//! None. The drill and `chaos up` need the PostgreSQL server programs
//! (`initdb`, `pg_ctl`, `pg_controldata`; `pg_basebackup` for backups);
//! when run as root the server runs as the `postgres` user. `chaos up`
//! needs pgBouncer (and uses Prometheus when installed); `clock-skew` needs
//! libfaketime's `faketime`.

mod clock_skew;
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

pub use crate::clock_skew::ClockSkew;
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
pub use crate::scenario::{SCENARIOS, Scenario, clear_faults, run};
pub use crate::sink_outage::SinkOutage;
pub use crate::stack::{CHAOS_TOML, PID_FILE, Stack, StackOptions, down, up_detached};
