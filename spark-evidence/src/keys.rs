//! Ed25519 key files for signing manifests.
//!
//! A private key file holds the hex of the 32-byte seed and a newline, and is
//! created with mode 0600 on unix; a public key file holds the hex of the
//! 32-byte public key and a newline. Neither is ever overwritten.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::dir::sha256_hex;
use crate::error::EvidenceError;

/// A new signing key from the operating system's random source.
///
/// # Errors
/// [`EvidenceError::Random`] when the operating system gives no random
/// bytes.
pub fn generate() -> Result<SigningKey, EvidenceError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| EvidenceError::Random { reason: e.to_string() })?;
    let key = SigningKey::from_bytes(&seed);
    // The seed is the private key: do not leave a copy on the stack.
    seed.fill(0);
    Ok(key)
}

/// The key id of a public key: the hex SHA-256 of its 32 bytes, as the DSSE
/// envelope's `keyid` carries it.
#[must_use]
pub fn key_id(key: &VerifyingKey) -> String {
    sha256_hex(key.as_bytes())
}

/// The path of the public key file that goes with private key file `path`:
/// `path` with `.pub` appended.
#[must_use]
pub fn public_key_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Writes `key` to `path` (mode 0600 on unix) and its public key to
/// [`public_key_path`]`(path)`, and returns the public key file's path.
/// Neither file may exist already; both are checked before either is written.
///
/// # Errors
/// [`EvidenceError::Exists`] when either file exists, [`EvidenceError::Io`]
/// when one cannot be written.
pub fn write_key_pair(path: &Path, key: &SigningKey) -> Result<PathBuf, EvidenceError> {
    let public = public_key_path(path);
    for p in [path, public.as_path()] {
        if p.exists() {
            return Err(EvidenceError::Exists { path: p.to_owned() });
        }
    }
    write_new(path, format!("{}\n", hex::encode(key.to_bytes())).as_bytes(), true)?;
    write_new(&public, format!("{}\n", hex::encode(key.verifying_key().as_bytes())).as_bytes(), false)?;
    Ok(public)
}

fn write_new(path: &Path, bytes: &[u8], private: bool) -> Result<(), EvidenceError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        // Set at creation, so the seed is never readable by others, not even
        // for the moment between a create and a chmod.
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            EvidenceError::Exists { path: path.to_owned() }
        } else {
            EvidenceError::Io { path: path.to_owned(), source: e }
        }
    })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| EvidenceError::Io { path: path.to_owned(), source })
}

fn read_32(path: &Path, what: &str) -> Result<[u8; 32], EvidenceError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvidenceError::Read { path: path.to_owned(), source })?;
    let bad = |reason: String| EvidenceError::Key { path: path.to_owned(), reason };
    let bytes = hex::decode(text.trim()).map_err(|e| bad(format!("is not the hex of {what} ({e})")))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| bad(format!("holds {} bytes, not the 32 of {what}", bytes.len())))
}

/// Reads a private key file written by [`write_key_pair`].
///
/// # Errors
/// [`EvidenceError::Read`] when it cannot be read, [`EvidenceError::Key`]
/// when it is not the hex of a 32-byte seed.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, EvidenceError> {
    let mut seed = read_32(path, "an ed25519 private key seed")?;
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    Ok(key)
}

/// Reads a public key file written by [`write_key_pair`].
///
/// # Errors
/// [`EvidenceError::Read`] when it cannot be read, [`EvidenceError::Key`]
/// when it is not the hex of an ed25519 public key.
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, EvidenceError> {
    let bytes = read_32(path, "an ed25519 public key")?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| EvidenceError::Key { path: path.to_owned(), reason: "is not an ed25519 public key".to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_pair_round_trips_and_is_never_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("spark.key");
        let key = generate().unwrap();
        let public = write_key_pair(&path, &key).unwrap();
        assert_eq!(public, tmp.path().join("spark.key.pub"));
        assert_eq!(load_signing_key(&path).unwrap().to_bytes(), key.to_bytes());
        assert_eq!(load_verifying_key(&public).unwrap(), key.verifying_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let err = write_key_pair(&path, &generate().unwrap()).unwrap_err();
        assert!(matches!(err, EvidenceError::Exists { .. }), "{err}");
        assert_eq!(load_signing_key(&path).unwrap().to_bytes(), key.to_bytes());
        assert_ne!(generate().unwrap().to_bytes(), key.to_bytes());
    }

    #[test]
    fn bad_key_files_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("k");
        std::fs::write(&path, "abcd\n").unwrap();
        let err = load_signing_key(&path).unwrap_err().to_string();
        assert!(err.starts_with(&format!("key file {} holds 2 bytes", path.display())), "{err}");
        std::fs::write(&path, "not hex").unwrap();
        let err = load_verifying_key(&path).unwrap_err().to_string();
        assert!(err.contains("is not the hex of an ed25519 public key"), "{err}");
        let err = load_verifying_key(&tmp.path().join("none")).unwrap_err();
        assert!(matches!(err, EvidenceError::Read { .. }), "{err}");
    }
}
