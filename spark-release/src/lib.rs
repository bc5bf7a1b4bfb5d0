//! The green button: the pre-deployment half of a release as one command
//! that measures everything and leaves tamper-evident evidence.
//!
//! - [`run_ritual`] runs the blind-spot scan, writes the SBOM and the
//!   provenance of the artifact (which the scan then verifies), takes the
//!   baseline metrics snapshot, renders the canary plan, judges GO/NO-GO,
//!   and writes the seed's seven files — `release_tag.txt`,
//!   `sbom_<release>.json`, `build_provenance_<release>.json`,
//!   `go_nogo_signed_<release>.txt`, `blind_spots_scan_<release>.txt`,
//!   `baseline_metrics_<release>.txt`, `canary_plan_<release>.txt` — sealed
//!   by `manifest.json` (an in-toto Statement in a DSSE envelope, ed25519
//!   signed when a key is given; [`spark_evidence::verify`] checks it).
//! - [`decide`] is GO/NO-GO: ten [`ItemId`]s, each measured, never ticked
//!   by hand. GO only when all ten count; a warning (or a check that could
//!   not run here) counts only when a signer accepted it by name, a failure
//!   never.
//! - [`release_notes`] writes a one-page Markdown note from the evidence:
//!   the canary trail's stages and gate values, the rollback records, the
//!   remaining risks ([`load_risks`]), filling [`TEMPLATE`].
//!
//! Guarantees:
//! - A bundle is never overwritten: the ritual refuses a directory that
//!   holds a manifest or any of its files.
//! - A sign-off names a configured role and an acceptance names someone who
//!   signed: a typo is an error before anything runs, never a signature.
//! - A check that could not measure (no server configured) is a warning
//!   with the reason, never a pass.
//!
//! ```no_run
//! # async fn run() -> Result<(), spark_release::ReleaseError> {
//! use spark_release::{NoProgress, RitualOptions, Settings};
//!
//! let settings = Settings::load("spark.toml".as_ref(), true)?;
//! let mut options = RitualOptions::new("v1.4.0", settings, "evidence/v1.4.0");
//! options.signers = vec!["DevOps lead=Deniz".parse()?, "CTO=Ayşe".parse()?, "product owner=Can".parse()?];
//! let report = spark_release::run_ritual(options, &NoProgress).await?;
//! println!("{}", report.table());
//! assert!(report.go_nogo.is_go() || !report.go_nogo.reasons().is_empty());
//! # Ok(()) }
//! ```
//!
//! # Features
//! None.

mod config;
mod error;
mod go_nogo;
mod incident;
mod notes;
mod rehearsal;
mod risks;
mod ritual;
mod trail;

pub use crate::config::{DEFAULT_ROLES, ReleaseConfig, Settings};
pub use crate::error::ReleaseError;
pub use crate::go_nogo::{
    Acceptance, Baseline, EvidenceRef, GoNoGo, Item, ItemId, ItemStatus, Measurements, Rehearsal, SignOff, decide,
    validate_sign_offs,
};
pub use crate::incident::{INCIDENT_TEMPLATE, Incident, IncidentOptions, blank_incident, incident_from_rollback};
pub use crate::notes::{ReleaseNotes, RollbackEvent, TEMPLATE, release_notes};
pub use crate::rehearsal::find_rehearsal;
pub use crate::risks::{RISKS_ASKED, Risk, RiskStatus, load_risks, parse_risks};
pub use crate::ritual::{
    NoProgress, Progress, RitualOptions, RitualReport, Step, StepOutcome, StepStatus, bundle_files, run_go_nogo,
    run_ritual,
};
pub use crate::trail::{GATES, GateValue, StageRecord, Trail, read_trail};

pub(crate) use spark_rollback::rfc3339;

/// An error and its causes on one line.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    one_line(&spark_db::error_chain(err))
}

/// A message on one line.
pub(crate) fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}
