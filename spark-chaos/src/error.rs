//! What can go wrong before an experiment or a drill has a result.

use std::path::PathBuf;

/// Why a drill or a backup could not run. A drill that ran and found the
/// restore broken is not an error: its [`DrillReport`](crate::DrillReport)
/// says so.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChaosError {
    /// Bad input: the message says what and what to do.
    #[error("{0}")]
    Input(String),
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PostgreSQL program is not installed where it was looked for.
    #[error(
        "{program} is not installed (looked in {looked}); install the PostgreSQL server package (Debian: postgresql)"
    )]
    MissingProgram {
        /// The program, such as `pg_basebackup`.
        program: String,
        /// Where it was looked for.
        looked: String,
    },
    /// A program ran and failed.
    #[error("{program} failed ({status}): {output}")]
    Program {
        /// The program.
        program: String,
        /// Its exit status.
        status: String,
        /// The end of what it printed.
        output: String,
    },
    /// The fault proxy failed: a listener could not be bound, or its HTTP
    /// API (this crate's or a real Toxiproxy's) answered with an error or
    /// could not be reached.
    #[error("fault proxy: {what}")]
    Proxy {
        /// The HTTP status the API answered with, when it answered.
        status: Option<u16>,
        /// What failed, with the API's own message.
        what: String,
    },
    /// Writing the evidence failed.
    #[error("evidence: {0}")]
    Evidence(#[from] spark_evidence::EvidenceError),
}

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ChaosError {
    let path = path.into();
    move |source| ChaosError::Io { path, source }
}
