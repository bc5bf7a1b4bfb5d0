//! The evidence directory and the files written into it.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::EvidenceError;

/// A directory of evidence files. Writes never replace a file and never
/// leave the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceDir {
    path: PathBuf,
}

/// One file written: its name, where it is, and the SHA-256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EvidenceFile {
    /// The file name within the directory.
    pub name: String,
    /// The full path.
    pub path: PathBuf,
    /// The SHA-256 of the contents, lower-case hex.
    pub sha256: String,
}

impl EvidenceDir {
    /// Opens `path` as an evidence directory, creating it and its parents
    /// when missing.
    ///
    /// # Errors
    /// [`EvidenceError::Io`] when it cannot be created.
    pub fn create(path: &Path) -> Result<EvidenceDir, EvidenceError> {
        std::fs::create_dir_all(path).map_err(|source| EvidenceError::Io { path: path.to_owned(), source })?;
        Ok(EvidenceDir { path: path.to_owned() })
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a file of this name exists in the directory (a bad name never
    /// does).
    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        check_name(name).is_ok() && self.path.join(name).exists()
    }

    /// Writes a new file `name` holding `bytes`, and returns its digest.
    ///
    /// # Errors
    /// [`EvidenceError::Name`] for an empty name, one with `/` or `\`, or
    /// one containing `..`; [`EvidenceError::Exists`] when the file exists;
    /// [`EvidenceError::Io`] when it cannot be written.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<EvidenceFile, EvidenceError> {
        check_name(name)?;
        let path = self.path.join(name);
        let io = |source| EvidenceError::Io { path: path.clone(), source };
        // `create_new` fails on an existing file atomically, so two writers
        // of one name cannot both believe they wrote it.
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                EvidenceError::Exists { path: path.clone() }
            } else {
                io(e)
            }
        })?;
        file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io)?;
        Ok(EvidenceFile { name: name.to_owned(), path: path.clone(), sha256: sha256_hex(bytes) })
    }
}

/// The SHA-256 of `bytes`, lower-case hex.
///
/// ```
/// assert_eq!(
///     spark_evidence::sha256_hex(b"abc"),
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// ```
#[must_use]
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn check_name(name: &str) -> Result<(), EvidenceError> {
    let refuse = |reason| Err(EvidenceError::Name { name: name.to_owned(), reason });
    if name.is_empty() {
        return refuse("is empty");
    }
    if name.contains(['/', '\\']) {
        return refuse("contains a path separator");
    }
    if name.contains("..") {
        return refuse("contains \"..\"");
    }
    if name.contains('\0') {
        return refuse("contains a NUL byte");
    }
    Ok(())
}

/// Whether `release` can name files inside an evidence directory
/// (`sbom_<release>.json`, `first_night_<release>.md`): 1 to 100 ASCII
/// letters, digits, `.`, `-`, `_` and `+`, starting and ending with a letter
/// or digit, with no `..`.
///
/// ```
/// assert!(spark_evidence::is_valid_release_name("v1.4.2+build.7"));
/// assert!(!spark_evidence::is_valid_release_name("v1."));
/// assert!(!spark_evidence::is_valid_release_name("../etc"));
/// ```
#[must_use]
pub fn is_valid_release_name(release: &str) -> bool {
    !release.is_empty()
        && release.len() <= 100
        && release.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
        // `v1.` would name `sbom_v1..json`, which the evidence directory
        // refuses half-way through; `.` would be the directory itself.
        && release.starts_with(|c: char| c.is_ascii_alphanumeric())
        && release.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !release.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_written_once_with_its_digest() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = EvidenceDir::create(&tmp.path().join("a/b")).unwrap();
        let file = dir.write("x.txt", b"hello").unwrap();
        assert_eq!(file.name, "x.txt");
        assert_eq!(file.path, tmp.path().join("a/b/x.txt"));
        assert_eq!(std::fs::read(&file.path).unwrap(), b"hello");
        assert_eq!(file.sha256, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert!(dir.contains("x.txt"));
        let err = dir.write("x.txt", b"other").unwrap_err();
        assert!(matches!(err, EvidenceError::Exists { .. }), "{err}");
        assert!(err.to_string().ends_with("exists already; evidence is never overwritten"), "{err}");
        assert_eq!(std::fs::read(&file.path).unwrap(), b"hello");
    }

    #[test]
    fn names_that_leave_the_directory_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = EvidenceDir::create(tmp.path()).unwrap();
        for (name, reason) in [
            ("", "is empty"),
            ("../x", "contains a path separator"),
            ("a/b", "contains a path separator"),
            ("a\\b", "contains a path separator"),
            ("..", "contains \"..\""),
            ("x..txt", "contains \"..\""),
            ("a\0b", "contains a NUL byte"),
        ] {
            let err = dir.write(name, b"x").unwrap_err().to_string();
            assert_eq!(err, format!("evidence file name {name:?} {reason}"));
            assert!(!dir.contains(name));
        }
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_unwritable_directory_is_an_io_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("plain-file");
        std::fs::write(&file, b"").unwrap();
        let err = EvidenceDir::create(&file.join("sub")).unwrap_err();
        assert!(matches!(err, EvidenceError::Io { .. }), "{err}");
    }
}
