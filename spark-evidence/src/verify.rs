//! Checking an evidence directory against its manifest.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Deserialize;

use crate::error::EvidenceError;
use crate::keys::key_id;
use crate::manifest::{MANIFEST, PAYLOAD_TYPE, PREDICATE_TYPE, STATEMENT_TYPE, digest_files, pae};

/// One thing wrong with an evidence directory, naming the file or key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Problem {
    /// There is no `manifest.json`.
    NoManifest,
    /// `manifest.json` is not a DSSE envelope around a Spark evidence
    /// statement.
    Malformed {
        /// What is wrong with it.
        why: String,
    },
    /// A listed file whose SHA-256 differs from the manifest's.
    Modified {
        /// The file name.
        name: String,
    },
    /// A listed file that is not in the directory.
    Missing {
        /// The file name.
        name: String,
    },
    /// A file in the directory that the manifest does not list.
    Added {
        /// The file name.
        name: String,
    },
    /// A key was given but the manifest carries no signature.
    Unsigned,
    /// No signature in the manifest verifies with the key given.
    BadSignature {
        /// The key id of the key given (hex SHA-256 of its bytes).
        keyid: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NoManifest => write!(f, "no manifest: {MANIFEST} is missing"),
            Problem::Malformed { why } => write!(f, "malformed manifest: {why}"),
            Problem::Modified { name } => write!(f, "modified: {name} (its sha256 differs from the manifest's)"),
            Problem::Missing { name } => write!(f, "missing: {name} (listed in the manifest, not in the directory)"),
            Problem::Added { name } => write!(f, "added: {name} (in the directory, not listed in the manifest)"),
            Problem::Unsigned => write!(f, "unsigned: the manifest carries no signature"),
            Problem::BadSignature { keyid } => write!(f, "bad signature: no signature verifies with key {keyid}"),
        }
    }
}

/// What [`verify`] found: the problems, and whether the manifest is signed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    intact: bool,
    files: usize,
    signatures: usize,
    signature_checked: bool,
    problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether nothing is wrong. An unsigned bundle verified without a key
    /// is intact: only its digests were checked.
    #[must_use]
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }

    /// The problems, in order: the manifest's own, then files by name, then
    /// the signature.
    #[must_use]
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// How many files the manifest lists.
    #[must_use]
    pub fn files(&self) -> usize {
        self.files
    }

    /// Whether the manifest carries at least one signature.
    #[must_use]
    pub fn is_signed(&self) -> bool {
        self.signatures > 0
    }

    /// Whether a key was given and a signature verified with it.
    #[must_use]
    pub fn signature_checked(&self) -> bool {
        self.signature_checked
    }

    /// A note that is not a problem: an unsigned manifest checked without a
    /// key, whose digests prove nothing about who wrote them.
    #[must_use]
    pub fn note(&self) -> Option<&'static str> {
        (self.signatures == 0 && !self.signature_checked && !self.problems.iter().any(is_manifest_problem))
            .then_some("note: the manifest is unsigned; its digests were checked, its origin cannot be")
    }
}

fn is_manifest_problem(p: &Problem) -> bool {
    matches!(p, Problem::NoManifest | Problem::Malformed { .. } | Problem::Unsigned)
}

/// One line per problem, then the note, if any.
impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines: Vec<String> = self.problems.iter().map(ToString::to_string).collect();
        lines.extend(self.note().map(str::to_owned));
        f.write_str(&lines.join("\n"))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload_type: String,
    payload: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Deserialize)]
struct EnvelopeSignature {
    sig: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Statement {
    #[serde(rename = "_type")]
    type_: String,
    subject: Vec<Subject>,
    predicate_type: String,
}

#[derive(Deserialize)]
struct Subject {
    name: String,
    digest: Digest,
}

#[derive(Deserialize)]
struct Digest {
    sha256: String,
}

/// Checks `dir` against its `manifest.json`: every listed file present with
/// the listed SHA-256, no file unlisted, and, when `key` is given, a
/// signature that verifies with it over the DSSE pre-authentication
/// encoding. Without a key, signatures are not checked; an unsigned
/// manifest is then only a [`VerifyReport::note`], not a problem.
///
/// Like [`seal`](crate::seal), only regular files directly in `dir` count:
/// subdirectories and symbolic links are neither listed nor reported.
///
/// # Errors
/// [`EvidenceError::Read`] when the directory, the manifest or a file
/// cannot be read, [`EvidenceError::Name`] for a file name that is not
/// UTF-8. Everything wrong with the bundle itself is a [`Problem`] in the
/// report.
pub fn verify(dir: &Path, key: Option<&VerifyingKey>) -> Result<VerifyReport, EvidenceError> {
    let present = digest_files(dir)?;
    let mut report =
        VerifyReport { intact: false, files: 0, signatures: 0, signature_checked: false, problems: Vec::new() };
    let path = dir.join(MANIFEST);
    match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => report.problems.push(Problem::NoManifest),
        Err(source) => return Err(EvidenceError::Read { path, source }),
        Ok(bytes) => match parse(&bytes) {
            Err(why) => report.problems.push(Problem::Malformed { why }),
            Ok((envelope, payload, listed)) => {
                report.files = listed.len();
                report.signatures = envelope.signatures.len();
                compare(&listed, &present, &mut report.problems);
                if let Some(key) = key {
                    check_signature(&envelope, &payload, key, &mut report);
                }
            }
        },
    }
    report.intact = report.problems.is_empty();
    Ok(report)
}

type Parsed = (Envelope, Vec<u8>, BTreeMap<String, String>);

fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    let envelope: Envelope = serde_json::from_slice(bytes).map_err(|e| format!("not a DSSE envelope ({e})"))?;
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(format!("payloadType is {:?}, not {PAYLOAD_TYPE:?}", envelope.payload_type));
    }
    let payload = BASE64.decode(&envelope.payload).map_err(|e| format!("payload is not base64 ({e})"))?;
    let statement: Statement =
        serde_json::from_slice(&payload).map_err(|e| format!("payload is not an in-toto statement ({e})"))?;
    if statement.type_ != STATEMENT_TYPE {
        return Err(format!("_type is {:?}, not {STATEMENT_TYPE:?}", statement.type_));
    }
    if statement.predicate_type != PREDICATE_TYPE {
        return Err(format!("predicateType is {:?}, not {PREDICATE_TYPE:?}", statement.predicate_type));
    }
    let mut listed = BTreeMap::new();
    for subject in statement.subject {
        // A listed name is only ever compared with names read from the
        // directory, never opened, so it cannot lead outside it.
        if listed.insert(subject.name.clone(), subject.digest.sha256).is_some() {
            return Err(format!("subject {:?} is listed twice", subject.name));
        }
    }
    Ok((envelope, payload, listed))
}

fn compare(listed: &BTreeMap<String, String>, present: &BTreeMap<String, String>, problems: &mut Vec<Problem>) {
    let names: BTreeSet<&String> = listed.keys().chain(present.keys()).collect();
    for name in names {
        let name_owned = || name.clone();
        match (listed.get(name), present.get(name)) {
            (Some(want), Some(got)) if !want.eq_ignore_ascii_case(got) => {
                problems.push(Problem::Modified { name: name_owned() });
            }
            (Some(_), None) => problems.push(Problem::Missing { name: name_owned() }),
            (None, Some(_)) => problems.push(Problem::Added { name: name_owned() }),
            _ => {}
        }
    }
}

fn check_signature(envelope: &Envelope, payload: &[u8], key: &VerifyingKey, report: &mut VerifyReport) {
    if envelope.signatures.is_empty() {
        report.problems.push(Problem::Unsigned);
        return;
    }
    let message = pae(&envelope.payload_type, payload);
    // The keyid is only a hint (DSSE): every signature is tried against the
    // key, and one that verifies is enough.
    let verifies = envelope.signatures.iter().any(|s| {
        BASE64
            .decode(&s.sig)
            .ok()
            .and_then(|bytes| Signature::from_slice(&bytes).ok())
            .is_some_and(|sig| key.verify_strict(&message, &sig).is_ok())
    });
    if verifies {
        report.signature_checked = true;
    } else {
        report.problems.push(Problem::BadSignature { keyid: key_id(key) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EvidenceDir, keys, seal};

    const FILES: [&str; 3] = ["release_tag.txt", "sbom_v1.json", "canary_plan_v1.txt"];

    fn bundle(key: Option<&ed25519_dalek::SigningKey>) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let dir = EvidenceDir::create(tmp.path()).unwrap();
        for name in FILES {
            dir.write(name, format!("contents of {name}").as_bytes()).unwrap();
        }
        seal(tmp.path(), key, 1_795_712_400_000).unwrap();
        tmp
    }

    #[test]
    fn a_sealed_bundle_verifies() {
        let key = keys::generate().unwrap();
        let tmp = bundle(Some(&key));
        let report = verify(tmp.path(), Some(&key.verifying_key())).unwrap();
        assert!(report.is_intact(), "{report}");
        assert!(report.is_signed() && report.signature_checked());
        assert_eq!(report.files(), 3);
        assert_eq!(report.to_string(), "");
        // Without a key a signed bundle is intact and has no note.
        let report = verify(tmp.path(), None).unwrap();
        assert!(report.is_intact() && report.note().is_none(), "{report}");
    }

    #[test]
    fn flipping_one_byte_of_any_file_names_it() {
        let key = keys::generate().unwrap();
        for name in FILES {
            let tmp = bundle(Some(&key));
            let path = tmp.path().join(name);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[3] ^= 1;
            std::fs::write(&path, bytes).unwrap();
            let report = verify(tmp.path(), Some(&key.verifying_key())).unwrap();
            assert_eq!(report.problems(), [Problem::Modified { name: name.to_owned() }]);
            assert!(!report.is_intact());
            assert!(report.to_string().starts_with(&format!("modified: {name} ")), "{report}");
        }
    }

    #[test]
    fn deleted_and_added_files_are_named() {
        let tmp = bundle(None);
        std::fs::remove_file(tmp.path().join("sbom_v1.json")).unwrap();
        std::fs::write(tmp.path().join("extra.txt"), b"x").unwrap();
        let report = verify(tmp.path(), None).unwrap();
        assert_eq!(
            report.problems(),
            [Problem::Added { name: "extra.txt".into() }, Problem::Missing { name: "sbom_v1.json".into() }]
        );
        let lines: Vec<_> = report.to_string().lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 3, "{report}");
        assert!(lines[2].starts_with("note: the manifest is unsigned"), "{report}");
    }

    #[test]
    fn a_wrong_key_is_a_bad_signature() {
        let key = keys::generate().unwrap();
        let other = keys::generate().unwrap().verifying_key();
        let tmp = bundle(Some(&key));
        let report = verify(tmp.path(), Some(&other)).unwrap();
        assert_eq!(report.problems(), [Problem::BadSignature { keyid: keys::key_id(&other) }]);
    }

    #[test]
    fn a_tampered_payload_is_a_bad_signature() {
        let key = keys::generate().unwrap();
        let tmp = bundle(Some(&key));
        let path = tmp.path().join(MANIFEST);
        let mut envelope: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let payload = BASE64.decode(envelope["payload"].as_str().unwrap()).unwrap();
        // Swap the created time: still a valid statement listing the same
        // files, so only the signature can tell.
        let tampered = String::from_utf8(payload).unwrap().replace("2026-11-26", "2026-11-25");
        envelope["payload"] = BASE64.encode(tampered).into();
        std::fs::write(&path, envelope.to_string()).unwrap();
        let report = verify(tmp.path(), Some(&key.verifying_key())).unwrap();
        assert_eq!(report.problems(), [Problem::BadSignature { keyid: keys::key_id(&key.verifying_key()) }]);
    }

    #[test]
    fn an_unsigned_bundle_with_a_key_is_unsigned_and_without_one_a_note() {
        let tmp = bundle(None);
        let key = keys::generate().unwrap().verifying_key();
        let report = verify(tmp.path(), Some(&key)).unwrap();
        assert_eq!(report.problems(), [Problem::Unsigned]);
        let report = verify(tmp.path(), None).unwrap();
        assert!(report.is_intact(), "{report}");
        assert!(report.note().is_some());
    }

    #[test]
    fn no_or_a_malformed_manifest_is_a_problem() {
        let tmp = tempfile::tempdir().unwrap();
        let report = verify(tmp.path(), None).unwrap();
        assert_eq!(report.problems(), [Problem::NoManifest]);
        std::fs::write(tmp.path().join(MANIFEST), b"{}").unwrap();
        let report = verify(tmp.path(), None).unwrap();
        assert!(matches!(report.problems(), [Problem::Malformed { .. }]), "{report}");
        assert!(verify(&tmp.path().join("none"), None).is_err());
    }
}
