//! What every crate that writes evidence shares: a directory whose files are
//! never overwritten and whose every write returns the file's SHA-256, UTC
//! timestamps for file names, and redaction of secrets.
//!
//! Guarantees:
//!
//! - A file is written only inside its [`EvidenceDir`]: a name with a path
//!   separator or `..` is refused, and an existing file is never replaced
//!   (evidence that changes after the fact is not evidence).
//! - [`EvidenceFile::sha256`] is the digest of exactly the bytes written.
//! - [`Redactor::redact`] replaces every occurrence of every secret it was
//!   given, and the password of any `scheme://user:password@host` URL,
//!   whether or not that password was given as a secret.
//!
//! ```
//! use spark_evidence::{EvidenceDir, Redactor, utc_stamp};
//!
//! let tmp = tempfile::tempdir()?;
//! let dir = EvidenceDir::create(&tmp.path().join("evidence"))?;
//! let redactor = Redactor::new(["s3cret-token"]);
//! let text = redactor.redact("posted to https://hooks.example/s3cret-token via http://ops:hunter2@proxy:3128");
//! assert_eq!(text, "posted to https://hooks.example/*** via http://ops:***@proxy:3128");
//!
//! let name = format!("rollback_{}.txt", utc_stamp(1_795_712_400_000));
//! assert_eq!(name, "rollback_20261126T170000Z.txt");
//! let file = dir.write(&name, text.as_bytes())?;
//! assert_eq!(file.sha256, spark_evidence::sha256_hex(text.as_bytes()));
//! assert!(dir.write(&name, b"again").is_err()); // never overwritten
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Features
//! None. The in-toto manifest of a set of evidence files and its DSSE
//! signature will live here too.

mod dir;
mod error;
mod redact;
mod stamp;

pub use crate::dir::{EvidenceDir, EvidenceFile, sha256_hex};
pub use crate::error::EvidenceError;
pub use crate::redact::{MASK, Redactor};
pub use crate::stamp::utc_stamp;
