//! The one error type of the crate.

use std::path::PathBuf;

/// What went wrong: a plan or snapshot that is not valid (the message names
/// the field), a stage the plan does not have, or a metric source that could
/// not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RollbackError {
    /// The canary plan is invalid.
    #[error("plan: {field}: {message}")]
    Plan {
        /// The key path, such as `stages[2].duration` or `triggers.api_p95.for`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A metrics snapshot is invalid.
    #[error("snapshot: {field}: {message}")]
    Snapshot {
        /// The JSON path, such as `signals.http_5xx_ratio.result[0].values[3]`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// `--stage` names a stage the plan does not have.
    #[error("stage {given:?} is not in the plan; its stages are {}", .known.join(", "))]
    UnknownStage {
        /// What was asked for.
        given: String,
        /// The plan's stages.
        known: Vec<String>,
    },
    /// A time range that is empty or reversed.
    #[error("{0}")]
    Range(String),
    /// A file that cannot be read or written.
    #[error("{}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A metric source failed (after its retries).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A rollback request that cannot be carried out as given (an empty
    /// reason), or an HTTP client that cannot be built.
    #[error("rollback: {0}")]
    Rollback(String),
    /// A watch that cannot go on as asked: bad options, a damaged journal,
    /// or a journal started with another baseline.
    #[error("watch: {0}")]
    Watch(String),
    /// The rollback's evidence could not be written (its actions ran).
    #[error("the rollback ran but its evidence could not be written")]
    Evidence(#[source] spark_evidence::EvidenceError),
}

/// A metric source that could not answer: unreachable, an error status, or
/// an answer of another shape. The message names the query and the redacted
/// URL, never a credential.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    pub(crate) message: String,
}

impl SourceError {
    /// A source error with this message.
    #[must_use]
    pub fn new(message: impl Into<String>) -> SourceError {
        SourceError { message: message.into() }
    }
}

pub(crate) fn plan_error(field: impl Into<String>, message: impl Into<String>) -> RollbackError {
    RollbackError::Plan { field: field.into(), message: message.into() }
}

pub(crate) fn snapshot_error(field: impl Into<String>, message: impl Into<String>) -> RollbackError {
    RollbackError::Snapshot { field: field.into(), message: message.into() }
}

/// An error and its causes on one line: reqwest's own message ("error
/// sending request") does not say whether the connection was refused, timed
/// out or failed its TLS handshake; the causes do.
pub(crate) use spark_db::error_chain as chain;
