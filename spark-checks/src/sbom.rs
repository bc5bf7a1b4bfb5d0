//! CycloneDX 1.5 JSON SBOMs of a Cargo workspace: generation from `cargo
//! metadata` and `Cargo.lock`, reading back, and validation against the
//! official JSON schema.
//!
//! The document is built with `cyclonedx-bom`, CycloneDX's own Rust model
//! (maintained by the CycloneDX project, writes spec 1.5 JSON, and costs
//! twelve small crates, `spdx` among them, which the licence policy needs
//! anyway), rather than assembled by hand: its serialiser knows the 1.5
//! field names and its model refuses malformed purls and hashes.
//!
//! Every package of `Cargo.lock` becomes one `library` component (the
//! workspace's own members included) with a `pkg:cargo/NAME@VERSION` purl,
//! the SHA-256 checksum the lockfile pins (registry packages; path and git
//! packages have none) and the licence expression from the package's
//! manifest, canonicalised to SPDX syntax (`MIT/Apache-2.0` becomes
//! `MIT OR Apache-2.0`).
//!
//! ```no_run
//! # fn main() -> Result<(), spark_checks::ChecksError> {
//! let json = spark_checks::sbom::generate("Cargo.toml".as_ref())?;
//! let value: serde_json::Value = serde_json::from_str(&json).unwrap();
//! assert!(spark_checks::sbom::validate(&value).is_empty());
//! let lock = spark_checks::sbom::lockfile_packages("Cargo.lock".as_ref())?;
//! assert_eq!(spark_checks::sbom::components(&value)?.len(), lock.len());
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::LazyLock;

use cyclonedx_bom::external_models::normalized_string::NormalizedString;
use cyclonedx_bom::external_models::uri::Purl;
use cyclonedx_bom::models::bom::{Bom, SpecVersion};
use cyclonedx_bom::models::component::{Classification, Component, Components};
use cyclonedx_bom::models::dependency::{Dependencies, Dependency};
use cyclonedx_bom::models::hash::{Hash, HashAlgorithm, HashValue, Hashes};
use cyclonedx_bom::models::license::{LicenseChoice, Licenses};
use cyclonedx_bom::models::metadata::Metadata;
use serde::Deserialize;

use crate::error::ChecksError;

/// One `[[package]]` of `Cargo.lock`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LockedPackage {
    /// The crate name.
    pub name: String,
    /// Its exact version.
    pub version: String,
    /// Where it comes from (`registry+https://…`, `git+…`); `None` for a
    /// path package such as a workspace member.
    pub source: Option<String>,
    /// The SHA-256 of the `.crate` file, for registry packages.
    pub checksum: Option<String>,
}

impl LockedPackage {
    /// `name@version`, the key SBOM components are compared by.
    #[must_use]
    pub fn key(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

#[derive(Deserialize)]
struct Lockfile {
    #[serde(default)]
    package: Vec<LockedPackage>,
}

/// Every package of a `Cargo.lock`, by `name@version`. Should one
/// `name@version` come from two sources, the key of the second carries its
/// source after a space.
///
/// # Errors
///
/// [`ChecksError::Read`] when the file cannot be read,
/// [`ChecksError::Lockfile`] when it is not a lockfile.
pub fn lockfile_packages(path: &Path) -> Result<BTreeMap<String, LockedPackage>, ChecksError> {
    let text = std::fs::read_to_string(path).map_err(|source| ChecksError::Read { path: path.to_owned(), source })?;
    let lock: Lockfile = toml::from_str(&text).map_err(|e| ChecksError::Lockfile {
        path: path.to_owned(),
        message: crate::context::one_line(&e.to_string()),
    })?;
    let mut out = BTreeMap::new();
    for p in lock.package {
        let mut key = p.key();
        if out.contains_key(&key) {
            key = format!("{key} {}", p.source.as_deref().unwrap_or("path"));
        }
        out.insert(key, p);
    }
    Ok(out)
}

/// The CycloneDX 1.5 JSON SBOM of the workspace whose manifest is
/// `manifest_path`: one component per `Cargo.lock` package, the dependency
/// graph of `cargo metadata --all-features`, the workspace as the
/// document's subject. Runs `cargo metadata --locked`, so a lockfile that
/// is out of date is an error, never silently rewritten.
///
/// # Errors
///
/// [`ChecksError::CargoMetadata`] when `cargo metadata` fails, the errors
/// of [`lockfile_packages`], [`ChecksError::Sbom`] when a package cannot be
/// expressed (a name no purl can carry).
pub fn generate(manifest_path: &Path) -> Result<String, ChecksError> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .manifest_path(manifest_path)
        .features(cargo_metadata::CargoOpt::AllFeatures)
        .other_options(vec!["--locked".to_owned()])
        .exec()
        .map_err(|source| ChecksError::CargoMetadata { manifest: manifest_path.to_owned(), source })?;
    let lockfile = metadata.workspace_root.join("Cargo.lock");
    let locked = lockfile_packages(lockfile.as_std_path())?;

    // Licences and package ids from cargo metadata, by name, version and
    // source (the lockfile writes sources exactly as package ids do).
    let source_of = |s: &Option<cargo_metadata::Source>| s.as_ref().map(|s| s.repr.clone());
    let by_lock_entry: HashMap<(String, String, Option<String>), &cargo_metadata::Package> = metadata
        .packages
        .iter()
        .map(|p| ((p.name.to_string(), p.version.to_string(), source_of(&p.source)), p))
        .collect();

    let mut components = Vec::with_capacity(locked.len());
    let mut bom_ref_of_id: HashMap<&cargo_metadata::PackageId, String> = HashMap::new();
    for (key, p) in &locked {
        let purl = Purl::new("cargo", &p.name, &p.version)
            .map_err(|e| ChecksError::Sbom { message: format!("{key} has no valid purl: {e}") })?;
        // The purl names the package; only a name@version from two sources
        // needs the rest of the key to stay unique.
        let bom_ref = if key.contains(' ') {
            format!("{purl}#{}", p.source.as_deref().unwrap_or("path"))
        } else {
            purl.to_string()
        };
        let mut c = Component::new(Classification::Library, &p.name, &p.version, Some(bom_ref.clone()));
        c.purl = Some(purl);
        if let Some(sum) = &p.checksum {
            c.hashes = Some(Hashes(vec![Hash { alg: HashAlgorithm::SHA_256, content: HashValue(sum.clone()) }]));
        }
        let package = by_lock_entry.get(&(p.name.clone(), p.version.clone(), p.source.clone()));
        if let Some(package) = package {
            bom_ref_of_id.insert(&package.id, bom_ref);
            if let Some(description) = &package.description {
                c.description = Some(NormalizedString::new(description));
            }
            if let Some(license) = &package.license {
                c.licenses = Some(Licenses(vec![LicenseChoice::expression(&canonical_license(license))]));
            }
        }
        components.push(c);
    }

    let dependencies = metadata.resolve.as_ref().map(|resolve| {
        let mut deps: Vec<Dependency> = resolve
            .nodes
            .iter()
            .filter_map(|node| {
                let from = bom_ref_of_id.get(&node.id)?;
                let mut to: Vec<String> = node.deps.iter().filter_map(|d| bom_ref_of_id.get(&d.pkg).cloned()).collect();
                to.sort();
                to.dedup();
                Some(Dependency { dependency_ref: from.clone(), dependencies: to })
            })
            .collect();
        deps.sort_by(|a, b| a.dependency_ref.cmp(&b.dependency_ref));
        Dependencies(deps)
    });

    // The document's subject is the workspace, named after its folder.
    let root_name = metadata.workspace_root.file_name().unwrap_or("workspace");
    let mut subject = Component::new(Classification::Application, root_name, "", None);
    subject.version = metadata.root_package().map(|p| NormalizedString::new(&p.version.to_string()));
    let bom = Bom {
        spec_version: SpecVersion::V1_5,
        metadata: Some(Metadata {
            timestamp: cyclonedx_bom::external_models::date_time::DateTime::now().ok(),
            component: Some(subject),
            ..Metadata::default()
        }),
        components: Some(Components(components)),
        dependencies,
        ..Bom::default()
    };
    let mut out = Vec::new();
    bom.output_as_json_v1_5(&mut out).map_err(|e| ChecksError::Sbom { message: e.to_string() })?;
    String::from_utf8(out).map_err(|e| ChecksError::Sbom { message: e.to_string() })
}

/// A manifest's `license` in SPDX syntax: crates.io's lax forms
/// (`MIT/Apache-2.0`, `GPL-2.0+`) canonicalised, anything unparsable kept as
/// written (the policy then calls it unknown).
fn canonical_license(license: &str) -> String {
    match spdx::Expression::canonicalize(license) {
        Ok(Some(canonical)) => canonical,
        _ => license.to_owned(),
    }
}

/// One component as read back from an SBOM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SbomComponent {
    /// `name@version`.
    pub key: String,
    /// The purl, if any.
    pub purl: Option<String>,
    /// The SHA-256 hash, if any (lower-case hex).
    pub sha256: Option<String>,
    /// The licence expressions: each `expression`, and each `license.id` or
    /// `license.name`.
    pub licenses: Vec<String>,
}

/// The components of an SBOM (a parsed CycloneDX JSON document), by
/// `name@version`.
///
/// # Errors
///
/// [`ChecksError::Sbom`] when the document has no `components` array or a
/// component lacks a name.
pub fn components(sbom: &serde_json::Value) -> Result<BTreeMap<String, SbomComponent>, ChecksError> {
    let list = sbom
        .get("components")
        .and_then(|c| c.as_array())
        .ok_or_else(|| ChecksError::Sbom { message: "the SBOM has no components array".to_owned() })?;
    let mut out = BTreeMap::new();
    for c in list {
        let name = c
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| ChecksError::Sbom { message: format!("a component has no name: {c}") })?;
        let version = c.get("version").and_then(|v| v.as_str()).unwrap_or("");
        let sha256 = c.get("hashes").and_then(|h| h.as_array()).and_then(|hashes| {
            hashes
                .iter()
                .find(|h| h.get("alg").and_then(|a| a.as_str()) == Some("SHA-256"))
                .and_then(|h| h.get("content").and_then(|v| v.as_str()).map(str::to_ascii_lowercase))
        });
        let mut licenses = Vec::new();
        for choice in c.get("licenses").and_then(|l| l.as_array()).into_iter().flatten() {
            if let Some(e) = choice.get("expression").and_then(|e| e.as_str()) {
                licenses.push(e.to_owned());
            } else if let Some(l) = choice.get("license")
                && let Some(id) = l.get("id").or_else(|| l.get("name")).and_then(|v| v.as_str())
            {
                licenses.push(id.to_owned());
            }
        }
        let mut key = format!("{name}@{version}");
        if out.contains_key(&key) {
            key = format!("{key} {}", c.get("bom-ref").and_then(|r| r.as_str()).unwrap_or("duplicate"));
        }
        let purl = c.get("purl").and_then(|p| p.as_str()).map(str::to_owned);
        out.insert(key.clone(), SbomComponent { key, purl, sha256, licenses });
    }
    Ok(out)
}

/// The vendored CycloneDX 1.5 JSON schema and the two it references (see
/// `schema/cyclonedx/README.md` for their origin and licence).
const BOM_SCHEMA: &str = include_str!("../schema/cyclonedx/bom-1.5.SNAPSHOT.schema.json");
const SPDX_SCHEMA: &str = include_str!("../schema/cyclonedx/spdx.SNAPSHOT.schema.json");
const JSF_SCHEMA: &str = include_str!("../schema/cyclonedx/jsf-0.82.SNAPSHOT.schema.json");

fn parse_schema(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// The two referenced schemas, under the URIs the bom schema's relative
/// `$ref`s resolve to (its `$id` is
/// `http://cyclonedx.org/schema/bom-1.5.schema.json`). Nothing is fetched:
/// jsonschema is built without its HTTP and file resolvers.
static REGISTRY: LazyLock<Result<jsonschema::Registry<'static>, String>> = LazyLock::new(|| {
    let (spdx, jsf) = (parse_schema(SPDX_SCHEMA)?, parse_schema(JSF_SCHEMA)?);
    jsonschema::Registry::new()
        .add("http://cyclonedx.org/schema/spdx.SNAPSHOT.schema.json", spdx)
        .and_then(|r| r.add("http://cyclonedx.org/schema/jsf-0.82.SNAPSHOT.schema.json", jsf))
        .and_then(jsonschema::RegistryBuilder::prepare)
        .map_err(|e| e.to_string())
});

/// The compiled validator, built once: compiling the 160 kB schema costs
/// more than validating a workspace's SBOM.
static VALIDATOR: LazyLock<Result<jsonschema::Validator, String>> = LazyLock::new(|| {
    let registry = REGISTRY.as_ref().map_err(Clone::clone)?;
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .with_registry(registry)
        .build(&parse_schema(BOM_SCHEMA)?)
        .map_err(|e| e.to_string())
});

/// Validates a parsed SBOM against the CycloneDX 1.5 JSON schema and
/// checks that it declares `bomFormat: CycloneDX` and `specVersion: 1.5`.
/// Returns every violation (`/components/3/purl: … is not of type
/// "string"`); empty means valid.
#[must_use]
pub fn validate(sbom: &serde_json::Value) -> Vec<String> {
    let mut problems = Vec::new();
    if sbom.get("specVersion").and_then(|v| v.as_str()) != Some("1.5") {
        problems.push(format!(
            "/specVersion: {} is not \"1.5\"",
            sbom.get("specVersion").map_or("missing".to_owned(), ToString::to_string)
        ));
    }
    match &*VALIDATOR {
        Ok(validator) => {
            for e in validator.iter_errors(sbom) {
                problems.push(format!("{}: {}", e.instance_path(), e));
            }
        }
        Err(e) => problems.push(format!("the vendored CycloneDX 1.5 schema does not compile: {e}")),
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lax_licences_are_canonicalised() {
        assert_eq!(canonical_license("MIT/Apache-2.0"), "MIT OR Apache-2.0");
        assert_eq!(canonical_license("MIT OR Apache-2.0"), "MIT OR Apache-2.0");
        assert_eq!(canonical_license("not a licence ("), "not a licence (");
    }

    #[test]
    fn the_vendored_schema_compiles_and_rejects_a_bad_document() {
        assert!(VALIDATOR.is_ok(), "{:?}", VALIDATOR.as_ref().err());
        let ok = serde_json::json!({"bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1, "components": []});
        assert_eq!(validate(&ok), Vec::<String>::new());
        let bad = serde_json::json!({"bomFormat": "CycloneDX", "specVersion": "1.5", "components": [{"name": 1}]});
        assert!(!validate(&bad).is_empty());
        let old = serde_json::json!({"bomFormat": "CycloneDX", "specVersion": "1.4"});
        assert!(validate(&old).iter().any(|p| p.contains("specVersion")), "{:?}", validate(&old));
    }
}
