//! SLSA provenance for a built artifact: an in-toto Statement v1 whose
//! subject is the artifact's SHA-256 and whose predicate (SLSA provenance
//! v1) names the builder, the source revision and the build parameters.
//!
//! The statement is plain JSON written with `serde_json`: in-toto and SLSA
//! publish no schema crate for Rust worth its dependencies, and the
//! statement has six fields. It is not signed here; a signer wraps it in a
//! DSSE envelope.
//!
//! ```
//! # fn main() -> Result<(), spark_checks::ChecksError> {
//! use spark_checks::provenance::{self, ProvenanceOptions};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let artifact = dir.path().join("app");
//! std::fs::write(&artifact, b"binary").unwrap();
//! let mut options = ProvenanceOptions::new(&artifact);
//! options.source_revision = Some("4e606b8".to_owned()); // else `git rev-parse HEAD`
//! let statement = provenance::generate(&options)?;
//! let subjects = provenance::subjects(&statement)?;
//! assert_eq!(subjects[0].1, provenance::sha256_file(&artifact)?);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::Digest as _;

use crate::error::ChecksError;

/// The in-toto Statement v1 type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The SLSA provenance v1 predicate type.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// The build type when none is given: a `cargo build` of this repository's
/// layout, described by the statement's `externalParameters`.
pub const DEFAULT_BUILD_TYPE: &str = concat!(env!("CARGO_PKG_REPOSITORY"), "/build-types/cargo/v1");
/// The builder when none is given: a developer's or CI's own machine,
/// which SLSA counts as build level 1 (provenance exists, nothing more).
pub const DEFAULT_BUILDER_ID: &str = concat!(env!("CARGO_PKG_REPOSITORY"), "/builders/local/v1");

/// What a provenance statement says about a build.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProvenanceOptions {
    /// The built file; its SHA-256 is the subject's digest.
    pub artifact: PathBuf,
    /// The subject's name (default: the artifact's file name).
    pub name: Option<String>,
    /// `runDetails.builder.id` (default [`DEFAULT_BUILDER_ID`]).
    pub builder_id: String,
    /// `buildDefinition.buildType` (default [`DEFAULT_BUILD_TYPE`]).
    pub build_type: String,
    /// The source commit; `None` reads `git rev-parse HEAD` in `source_dir`.
    pub source_revision: Option<String>,
    /// The source repository's URI; `None` reads `git config
    /// remote.origin.url` in `source_dir` and leaves it out when there is
    /// none.
    pub source_uri: Option<String>,
    /// The checkout the artifact was built from (default: the working
    /// directory).
    pub source_dir: PathBuf,
    /// Further build parameters for `externalParameters` (`profile =
    /// release`, `target = x86_64-unknown-linux-gnu`, `features = …`).
    pub parameters: BTreeMap<String, String>,
}

impl ProvenanceOptions {
    /// The defaults for `artifact`.
    #[must_use]
    pub fn new(artifact: impl Into<PathBuf>) -> ProvenanceOptions {
        ProvenanceOptions {
            artifact: artifact.into(),
            name: None,
            builder_id: DEFAULT_BUILDER_ID.to_owned(),
            build_type: DEFAULT_BUILD_TYPE.to_owned(),
            source_revision: None,
            source_uri: None,
            source_dir: PathBuf::from("."),
            parameters: BTreeMap::new(),
        }
    }
}

/// The SHA-256 of a file, lower-case hex, read in blocks (an artifact may be
/// large).
///
/// # Errors
///
/// [`ChecksError::Read`] when the file cannot be read.
pub fn sha256_file(path: &Path) -> Result<String, ChecksError> {
    let read_err = |source| ChecksError::Read { path: path.to_owned(), source };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// `git rev-parse HEAD` in `dir`: the commit the checkout is at.
///
/// # Errors
///
/// [`ChecksError::Git`] when git is missing, `dir` is not a checkout, or
/// it has no commit yet.
pub fn git_revision(dir: &Path) -> Result<String, ChecksError> {
    git(dir, &["rev-parse", "HEAD"]).map_err(|message| ChecksError::Git { dir: dir.to_owned(), message }).and_then(
        |rev| {
            if rev.len() >= 40 && rev.chars().all(|c| c.is_ascii_hexdigit()) {
                Ok(rev)
            } else {
                Err(ChecksError::Git { dir: dir.to_owned(), message: format!("{rev:?} is not a commit id") })
            }
        },
    )
}

fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        return Err(crate::context::one_line(&String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The in-toto Statement v1 with an SLSA provenance v1 predicate for
/// `options.artifact`.
///
/// `runDetails.metadata.finishedOn` is the artifact's modification time:
/// the moment the build wrote it, which is what SLSA means, rather than the
/// moment this statement was made.
///
/// # Errors
///
/// [`ChecksError::Read`] when the artifact cannot be read,
/// [`ChecksError::Git`] when no revision is given and git cannot tell it.
pub fn generate(options: &ProvenanceOptions) -> Result<Value, ChecksError> {
    let digest = sha256_file(&options.artifact)?;
    let revision = match &options.source_revision {
        Some(rev) => rev.clone(),
        None => git_revision(&options.source_dir)?,
    };
    let source_uri =
        options.source_uri.clone().or_else(|| git(&options.source_dir, &["config", "--get", "remote.origin.url"]).ok());
    let name = options.name.clone().unwrap_or_else(|| {
        options
            .artifact
            .file_name()
            .map_or_else(|| options.artifact.display().to_string(), |n| n.to_string_lossy().into_owned())
    });

    let mut source = json!({"digest": {"gitCommit": revision}});
    let mut source_param = json!({"revision": revision});
    if let Some(uri) = &source_uri {
        source["uri"] = json!(format!("git+{uri}"));
        source_param["uri"] = json!(uri);
    }
    let mut external = serde_json::Map::new();
    external.insert("source".to_owned(), source_param);
    for (k, v) in &options.parameters {
        external.insert(k.clone(), json!(v));
    }
    let mut metadata = json!({});
    if let Ok(modified) = std::fs::metadata(&options.artifact).and_then(|m| m.modified()) {
        let at: chrono::DateTime<chrono::Utc> = modified.into();
        metadata["finishedOn"] = json!(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
    Ok(json!({
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": digest}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": options.build_type,
                "externalParameters": external,
                "internalParameters": {"generator": concat!("spark ", env!("CARGO_PKG_VERSION"))},
                "resolvedDependencies": [source],
            },
            "runDetails": {
                "builder": {"id": options.builder_id},
                "metadata": metadata,
            },
        },
    }))
}

/// The subjects of a provenance statement as `(name, sha256)`, after
/// checking that it is an in-toto Statement v1 with an SLSA provenance v1
/// predicate.
///
/// # Errors
///
/// [`ChecksError::Provenance`] naming the field that is missing or wrong.
pub fn subjects(statement: &Value) -> Result<Vec<(String, String)>, ChecksError> {
    let err = |message: String| ChecksError::Provenance { message };
    let field = |name: &str| statement.get(name).and_then(Value::as_str);
    if field("_type") != Some(STATEMENT_TYPE) {
        return Err(err(format!("_type is {:?}, not {STATEMENT_TYPE}", field("_type").unwrap_or("missing"))));
    }
    if field("predicateType") != Some(PREDICATE_TYPE) {
        return Err(err(format!(
            "predicateType is {:?}, not {PREDICATE_TYPE}",
            field("predicateType").unwrap_or("missing")
        )));
    }
    let list = statement.get("subject").and_then(Value::as_array).filter(|s| !s.is_empty());
    let list = list.ok_or_else(|| err("the statement has no subject".to_owned()))?;
    list.iter()
        .map(|s| {
            let name = s.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
            let sha = s.pointer("/digest/sha256").and_then(Value::as_str);
            let sha = sha.ok_or_else(|| err(format!("subject {name:?} has no sha256 digest")))?;
            Ok((name, sha.to_ascii_lowercase()))
        })
        .collect()
}

/// The builder id and the source revision a statement names, for reports.
#[must_use]
pub fn builder_and_revision(statement: &Value) -> (Option<String>, Option<String>) {
    let builder = statement.pointer("/predicate/runDetails/builder/id").and_then(Value::as_str).map(str::to_owned);
    let revision = statement
        .pointer("/predicate/buildDefinition/resolvedDependencies")
        .and_then(Value::as_array)
        .and_then(|deps| deps.iter().find_map(|d| d.pointer("/digest/gitCommit").and_then(Value::as_str)))
        .map(str::to_owned);
    (builder, revision)
}
