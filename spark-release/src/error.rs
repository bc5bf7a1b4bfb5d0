//! The crate's one error type.

use std::path::PathBuf;

/// Why a release step could not run. A step that ran and measured "no" is
/// not an error: it is a NO-GO item.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// `spark.toml` (or its `[release]` section) is wrong.
    #[error("configuration")]
    Config(#[source] spark_checks::ChecksError),
    /// The `[release]` section of `spark.toml` is wrong.
    #[error("[release] in {source_name}: {message}")]
    ReleaseSection {
        /// The file.
        source_name: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A release name that cannot name a file.
    #[error(
        "release {0:?} cannot name a file: use letters, digits, dots, dashes and underscores, starting and ending with a letter or digit"
    )]
    ReleaseName(String),
    /// A `--sign` or `--accept-warning` that is malformed or names an
    /// unknown role, item or signer.
    #[error("{0}")]
    SignOff(String),
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file's content is not what it must be (a risks file, a trail, a
    /// template).
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line or key.
        message: String,
    },
    /// Writing the evidence failed.
    #[error("evidence")]
    Evidence(#[source] spark_evidence::EvidenceError),
    /// The evidence directory already holds a bundle.
    #[error(
        "{0} already holds a sealed bundle (manifest.json): evidence is never overwritten, so choose another --evidence-dir"
    )]
    BundleExists(PathBuf),
    /// The evidence directory holds files already: they would be sealed
    /// into the bundle as if the ritual had written them.
    #[error(
        "{} is not empty ({present}): the ritual writes into a new or empty directory, so its bundle holds only what it measured; choose another --evidence-dir",
        dir.display()
    )]
    DirNotEmpty {
        /// The directory.
        dir: PathBuf,
        /// The first few names in it.
        present: String,
    },
}

impl From<spark_evidence::EvidenceError> for ReleaseError {
    fn from(e: spark_evidence::EvidenceError) -> Self {
        ReleaseError::Evidence(e)
    }
}

/// Checks that `release` can name files inside an evidence directory.
pub(crate) fn check_release_name(release: &str) -> Result<(), ReleaseError> {
    if spark_evidence::is_valid_release_name(release) {
        Ok(())
    } else {
        Err(ReleaseError::ReleaseName(release.to_owned()))
    }
}
