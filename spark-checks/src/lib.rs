//! The pre-deployment blind-spot scan.
//!
//! Before a release, the expensive mistakes are small and invisible: a node
//! clock 300 ms off the database, a migration applied with another checksum,
//! pgBouncer in session mode, a float column holding prices, a sequence
//! behind its column after a restore, WAL archiving silently failing. Each
//! [`Check`] measures one of them against the real server and returns an
//! [`Outcome`]: pass, warn, fail or skip, with every measured value, its
//! threshold and the evidence.
//!
//! - [`scan`] runs checks concurrently, each under a timeout (a hung target
//!   fails "timed out", never hangs the scan), into a [`Report`]: a table,
//!   JSON, JUnit XML, and evidence files (`blind_spots_scan.txt`/`.json`).
//! - [`Config`] is `spark.toml`: every key in [`config::KEYS`] with its
//!   default, unknown keys rejected, environment overrides, passwords only
//!   from the environment, redacted everywhere.
//! - [`checks`]: `clock`, `migrations`, `pgbouncer`, `decimal`, `backup`,
//!   `headers` (security headers, cross-origin isolation in Chromium),
//!   `observability` (Prometheus targets, Grafana dashboards), `slo-alerts`
//!   (burn-rate rules in Prometheus, silences in Alertmanager),
//!   `supply-chain` (SBOM, provenance and licences of the deployed build).
//! - [`contract`]: conformance batteries over HTTP against a live service
//!   ([`contract::idempotency`]: the `Idempotency-Key` contract).
//! - [`schema`]: assertions for a service's own test suite
//!   (`assert_money_columns_exact`, `assert_partial_unique_index`,
//!   `assert_migrations_applied`, `assert_sequences_ahead`,
//!   `index_is_valid`); `spark-chaos`'s restore drill runs them on the
//!   restored database.
//! - [`sbom`] and [`provenance`]: a CycloneDX 1.5 SBOM of a Cargo workspace
//!   and an in-toto/SLSA provenance statement for a built artifact, which
//!   the `supply-chain` check verifies.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), spark_checks::ChecksError> {
//! use std::sync::Arc;
//! use spark_checks::{Config, Context, Status};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let url = format!("sqlite://{}", dir.path().join("app.db").display());
//! let config = Config::from_toml_str(&format!("[database]\nurl = \"{url}\"\n"), |_| None)?;
//! let ctx = Arc::new(Context::new(config));
//! let report = spark_checks::scan(&ctx, spark_checks::checks::all()).await;
//! // A fresh database has no migrations applied: that fails.
//! assert_eq!(report.check("migrations").unwrap().status, Status::Fail);
//! println!("{}", report.table());
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! None: PostgreSQL and SQLite are both always on (a check reads whichever
//! the URL names), and the checks need no other optional part.

mod check;
pub mod checks;
pub mod config;
mod context;
pub mod contract;
mod error;
pub mod provenance;
mod report;
pub mod sbom;
mod scan;
pub mod schema;

pub use crate::check::{Check, Direction, Finding, Measurement, Outcome, Status, Threshold};
pub use crate::config::Config;
pub use crate::context::Context;
pub use crate::error::ChecksError;
pub use crate::report::{EVIDENCE_JSON, EVIDENCE_TEXT, EvidenceFile, Report};
pub use crate::scan::{overall, scan, select};
