//! The `[release]` section of `spark.toml`, beside the scan's sections.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ReleaseError;

/// The roles that must sign off by default.
pub const DEFAULT_ROLES: [&str; 3] = ["DevOps lead", "CTO", "product owner"];

/// `[release]`: who signs, where the canary plan and the workspace are, and
/// how old evidence may be.
///
/// ```
/// let release: spark_release::ReleaseConfig = toml::from_str("roles = [\"CTO\"]\n").unwrap();
/// assert_eq!(release.roles, ["CTO"]);
/// assert_eq!(release.rollback_max_age_hours, 24);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReleaseConfig {
    /// The roles that must each sign off (`--sign ROLE=NAME`).
    pub roles: Vec<String>,
    /// The canary plan (TOML); none: the built-in plan.
    pub plan: Option<PathBuf>,
    /// The Cargo workspace whose SBOM and provenance the ritual writes.
    pub workspace: PathBuf,
    /// Where dry-run rollback records are looked for (`spark rollback
    /// --dry-run --evidence-dir DIR`), searched one level deep.
    pub rollback_dir: PathBuf,
    /// A rollback rehearsal older than this does not count.
    pub rollback_max_age_hours: u64,
    /// How far back the baseline metrics snapshot reaches.
    pub baseline_minutes: u64,
    /// The baseline snapshot's resolution.
    pub baseline_step_seconds: u32,
    /// The builder id written into the provenance.
    pub builder_id: String,
}

impl Default for ReleaseConfig {
    fn default() -> Self {
        ReleaseConfig {
            roles: DEFAULT_ROLES.iter().map(|&r| r.to_owned()).collect(),
            plan: None,
            workspace: PathBuf::from("Cargo.toml"),
            rollback_dir: PathBuf::from("evidence"),
            rollback_max_age_hours: 24,
            baseline_minutes: 60,
            baseline_step_seconds: 15,
            builder_id: spark_checks::provenance::DEFAULT_BUILDER_ID.to_owned(),
        }
    }
}

/// Everything a release step reads from `spark.toml`: the scan's
/// configuration and `[release]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// The scan's sections.
    pub checks: spark_checks::Config,
    /// `[release]`.
    pub release: ReleaseConfig,
}

impl Settings {
    /// Reads `path` (a missing file is the defaults unless `required`); the
    /// environment overrides the scan's keys as [`spark_checks::Config::load`]
    /// says.
    ///
    /// # Errors
    /// [`ReleaseError::Config`] for the scan's sections,
    /// [`ReleaseError::ReleaseSection`] naming a bad `[release]` key.
    pub fn load(path: &Path, required: bool) -> Result<Settings, ReleaseError> {
        let (checks, mut foreign) =
            spark_checks::Config::load_with_foreign(path, required, &["release"]).map_err(ReleaseError::Config)?;
        let release = match foreign.remove("release") {
            None => ReleaseConfig::default(),
            Some(value) => value.try_into().map_err(|e: toml::de::Error| ReleaseError::ReleaseSection {
                source_name: path.display().to_string(),
                message: e.message().to_owned(),
            })?,
        };
        let settings = Settings { checks, release };
        settings.validate(path)?;
        Ok(settings)
    }

    fn validate(&self, path: &Path) -> Result<(), ReleaseError> {
        let err = |message: &str| ReleaseError::ReleaseSection {
            source_name: path.display().to_string(),
            message: message.to_owned(),
        };
        if self.release.roles.iter().any(|r| r.trim().is_empty() || r.contains('=')) {
            return Err(err("roles: a role must be non-empty and cannot contain '='"));
        }
        if self.release.baseline_step_seconds == 0 || self.release.baseline_minutes == 0 {
            return Err(err("baseline_minutes and baseline_step_seconds must be at least 1"));
        }
        Ok(())
    }
}
