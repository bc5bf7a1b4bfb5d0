//! The manifest of an evidence directory: an in-toto Statement v1 of every
//! file's SHA-256 in a DSSE envelope, signed with ed25519 when a key is given.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::json;

use crate::dir::{EvidenceDir, EvidenceFile, sha256_hex};
use crate::error::EvidenceError;
use crate::keys::key_id;

/// The manifest's file name; it is the one file a manifest does not list.
pub const MANIFEST: &str = "manifest.json";
/// The statement's `_type`.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The statement's `predicateType`.
pub const PREDICATE_TYPE: &str = "https://spark.invalid/evidence-bundle/v1";
/// The DSSE envelope's `payloadType`.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// The DSSE pre-authentication encoding of a payload, the bytes that are
/// signed: `DSSEv1 <len(type)> <type> <len(body)> <body>`, lengths in ASCII
/// decimal, separated by single spaces.
///
/// ```
/// assert_eq!(spark_evidence::pae("t", b"body"), b"DSSEv1 1 t 4 body");
/// ```
#[must_use]
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// The SHA-256 of every regular file directly in `dir` except
/// [`MANIFEST`], by name. Subdirectories and symbolic links are not
/// evidence files and are skipped.
pub(crate) fn digest_files(dir: &Path) -> Result<BTreeMap<String, String>, EvidenceError> {
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| EvidenceError::Read { path, source }
    };
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(read_err(dir))? {
        let entry = entry.map_err(read_err(dir))?;
        let path = entry.path();
        if !entry.file_type().map_err(read_err(&path))?.is_file() {
            continue;
        }
        let Ok(name) = entry.file_name().into_string() else {
            return Err(EvidenceError::Name {
                name: entry.file_name().to_string_lossy().into_owned(),
                reason: "is not UTF-8",
            });
        };
        if name == MANIFEST {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(read_err(&path))?;
        files.insert(name, sha256_hex(&bytes));
    }
    Ok(files)
}

/// Writes `manifest.json` into `dir`: a DSSE envelope around an in-toto
/// Statement v1 whose subjects are every regular file of `dir` (names
/// sorted) with its SHA-256, and whose predicate records `created_ms` (an
/// RFC 3339 UTC time; one outside chrono's range reads as the epoch) and the
/// number of files. With `key` the envelope carries one ed25519 signature
/// over the DSSE pre-authentication encoding ([`pae`]); without, its
/// `signatures` is empty, an unsigned bundle that [`verify`](crate::verify)
/// reports.
///
/// A directory is sealed once: an existing manifest is never replaced.
///
/// ```
/// use spark_evidence::{EvidenceDir, keys, seal, verify};
///
/// let tmp = tempfile::tempdir()?;
/// let dir = EvidenceDir::create(tmp.path())?;
/// dir.write("release_tag.txt", b"v1.4.0")?;
/// let key = keys::generate()?;
/// seal(tmp.path(), Some(&key), 1_795_712_400_000)?;
/// let report = verify(tmp.path(), Some(&key.verifying_key()))?;
/// assert!(report.is_intact(), "{report}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`EvidenceError::Read`] when the directory (which must exist) or a file
/// cannot be read,
/// [`EvidenceError::Name`] for a file name that is not UTF-8,
/// [`EvidenceError::Exists`] when `manifest.json` exists,
/// [`EvidenceError::Io`] when it cannot be written.
pub fn seal(dir: &Path, key: Option<&SigningKey>, created_ms: i64) -> Result<EvidenceFile, EvidenceError> {
    // Read first: a directory that does not exist is an error, never a new
    // empty bundle (a mistyped path must not seal nothing).
    let files = digest_files(dir)?;
    let evidence = EvidenceDir::create(dir)?;
    if evidence.contains(MANIFEST) {
        return Err(EvidenceError::Exists { path: dir.join(MANIFEST) });
    }
    let created = chrono::DateTime::from_timestamp_millis(created_ms)
        .unwrap_or(chrono::DateTime::UNIX_EPOCH)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let subject: Vec<_> =
        files.iter().map(|(name, sha256)| json!({"name": name, "digest": {"sha256": sha256}})).collect();
    let statement = json!({
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": PREDICATE_TYPE,
        "predicate": {"created": created, "files": files.len()},
    });
    let payload = statement.to_string().into_bytes();
    let signatures: Vec<_> = key
        .map(|key| {
            let sig = key.sign(&pae(PAYLOAD_TYPE, &payload));
            json!({"keyid": key_id(&key.verifying_key()), "sig": BASE64.encode(sig.to_bytes())})
        })
        .into_iter()
        .collect();
    let envelope = json!({
        "payloadType": PAYLOAD_TYPE,
        "payload": BASE64.encode(&payload),
        "signatures": signatures,
    });
    let mut text = serde_json::to_string_pretty(&envelope).unwrap_or_else(|_| envelope.to_string());
    text.push('\n');
    evidence.write(MANIFEST, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_follows_the_dsse_spec() {
        // The spec's own example: DSSEv1 29 http://example.com/HelloWorld 11 hello world
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ");
    }

    #[test]
    fn the_statement_lists_every_file_but_the_manifest_sorted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = EvidenceDir::create(tmp.path()).unwrap();
        dir.write("b.txt", b"b").unwrap();
        dir.write("a.txt", b"a").unwrap();
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        let file = seal(tmp.path(), None, 1_795_712_400_000).unwrap();
        assert_eq!(file.name, MANIFEST);
        let envelope: serde_json::Value = serde_json::from_slice(&std::fs::read(&file.path).unwrap()).unwrap();
        assert_eq!(envelope["payloadType"], PAYLOAD_TYPE);
        assert_eq!(envelope["signatures"], json!([]));
        let payload = BASE64.decode(envelope["payload"].as_str().unwrap()).unwrap();
        let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            statement,
            json!({
                "_type": STATEMENT_TYPE,
                "subject": [
                    {"name": "a.txt", "digest": {"sha256": sha256_hex(b"a")}},
                    {"name": "b.txt", "digest": {"sha256": sha256_hex(b"b")}},
                ],
                "predicateType": PREDICATE_TYPE,
                "predicate": {"created": "2026-11-26T17:00:00.000Z", "files": 2},
            })
        );
        let err = seal(tmp.path(), None, 0).unwrap_err();
        assert!(matches!(err, EvidenceError::Exists { .. }), "{err}");
        let err = seal(&tmp.path().join("typo"), None, 0).unwrap_err();
        assert!(matches!(err, EvidenceError::Read { .. }), "{err}");
        assert!(!tmp.path().join("typo").exists());
    }
}
