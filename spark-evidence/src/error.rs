//! The one error type of the crate.

use std::path::PathBuf;

/// Why evidence could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// A file name that would leave the evidence directory, or is empty.
    #[error("evidence file name {name:?} {reason}")]
    Name {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The file exists already: evidence is never overwritten.
    #[error("evidence file {} exists already; evidence is never overwritten", .path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The directory or a file cannot be created or written.
    #[error("cannot write {}", .path.display())]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
