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
//! A directory is sealed with [`seal`]: `manifest.json`, an in-toto
//! Statement v1 of every file's SHA-256 in a DSSE envelope, signed with
//! ed25519 when a key from [`keys`] is given. [`verify`] then names every
//! modified, missing or added file, and with a public key a missing or bad
//! signature. Without a key, signatures are not checked, and an unsigned
//! manifest is reported only as a note ([`VerifyReport::note`]), not a
//! problem.
//!
//! # Features
//! None.

mod dir;
mod error;
pub mod keys;
mod manifest;
mod redact;
mod stamp;
mod verify;

pub use crate::dir::{EvidenceDir, EvidenceFile, is_valid_release_name, sha256_hex};
pub use crate::error::EvidenceError;
pub use crate::manifest::{MANIFEST, PAYLOAD_TYPE, PREDICATE_TYPE, STATEMENT_TYPE, pae, seal};
pub use crate::redact::{MASK, Redactor};
pub use crate::stamp::utc_stamp;
pub use crate::verify::{Problem, VerifyReport, verify};
/// The ed25519 key types of `ed25519-dalek`, so callers need not depend on it.
pub use ed25519_dalek::{SigningKey, VerifyingKey};
