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
    /// A directory or file cannot be read.
    #[error("cannot read {}", .path.display())]
    Read {
        /// The directory or file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A key file that does not hold what it should.
    #[error("key file {} {reason}", .path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The operating system gave no random bytes for a new key.
    #[error("no random bytes for a new key: {reason}")]
    Random {
        /// The operating system's answer.
        reason: String,
    },
}
