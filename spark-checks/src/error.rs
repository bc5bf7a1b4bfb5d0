//! The one error type of the crate.

use std::path::PathBuf;

/// What went wrong outside a check's own verdict: bad configuration, a
/// schema assertion that does not hold, evidence that cannot be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChecksError {
    /// The configuration file or an environment override is invalid.
    #[error("{source_name}: {message}")]
    Config {
        /// The file (or `spark.toml` for text).
        source_name: String,
        /// What is wrong with which key.
        message: String,
    },
    /// A URL in the file carries a password.
    #[error("{key} carries a password: secrets come only from the environment; set {env} instead")]
    SecretInFile {
        /// The key.
        key: &'static str,
        /// The environment variable to use.
        env: String,
    },
    /// Money columns whose type is not exact.
    #[error("money columns are not exact: {}", .columns.join(", "))]
    InexactMoneyColumns {
        /// `schema.table.column (type)` for each.
        columns: Vec<String>,
    },
    /// No unique index with these columns and predicate.
    #[error(
        "table {table} has no partial unique index on ({}) WHERE {predicate}; its indexes: {}",
        .columns.join(", "),
        if .found.is_empty() { "none".to_owned() } else { .found.join("; ") }
    )]
    PartialUniqueIndexMissing {
        /// The table.
        table: String,
        /// The expected columns, in order.
        columns: Vec<String>,
        /// The expected predicate.
        predicate: String,
        /// The table's unique indexes as found.
        found: Vec<String>,
    },
    /// Sequences that would hand out a value their column already holds.
    #[error("sequences are behind their columns: {}", .problems.join("; "))]
    SequencesBehind {
        /// One line per sequence, with the `setval` that fixes it.
        problems: Vec<String>,
    },
    /// Embedded migrations that the database has not applied, or applied
    /// differently.
    #[error("migrations do not match this build: {}", .problems.join("; "))]
    Migrations {
        /// One line per migration: missing, failed, or another checksum.
        problems: Vec<String>,
    },
    /// A regular expression that does not compile.
    #[error("pattern {pattern:?} is not a valid regular expression: {message}")]
    InvalidPattern {
        /// The pattern.
        pattern: String,
        /// Why.
        message: String,
    },
    /// The database could not be read.
    #[error("cannot read the database schema")]
    Database(#[source] sqlx::Error),
    /// An evidence or report file could not be written.
    #[error("cannot write {}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Contract-kit options, or a base URL, that cannot run.
    #[error("contract: {message}")]
    ContractOptions {
        /// What is wrong with which option.
        message: String,
    },
    /// The service under a contract battery did not answer.
    #[error("cannot reach the service at {url}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A file (an SBOM, a provenance statement, an artifact, a lockfile)
    /// could not be read.
    #[error("cannot read {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A `Cargo.lock` that does not parse.
    #[error("{} is not a Cargo lockfile: {message}", .path.display())]
    Lockfile {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said.
        message: String,
    },
    /// `cargo metadata` failed for a manifest.
    #[error("cargo metadata failed for {}", .manifest.display())]
    CargoMetadata {
        /// The manifest.
        manifest: PathBuf,
        /// Why (cargo's own message).
        #[source]
        source: cargo_metadata::Error,
    },
    /// An SBOM that cannot be built or read back.
    #[error("sbom: {message}")]
    Sbom {
        /// What is wrong with which package or field.
        message: String,
    },
    /// The source revision of a provenance statement could not be read.
    #[error("cannot read the git commit of {}: {message}", .dir.display())]
    Git {
        /// The directory `git rev-parse HEAD` ran in.
        dir: PathBuf,
        /// What git said.
        message: String,
    },
    /// A provenance statement that is not an in-toto Statement v1 with an
    /// SLSA provenance v1 predicate.
    #[error("provenance: {message}")]
    Provenance {
        /// What is wrong with which field.
        message: String,
    },
}
