//! `supply-chain`: this workspace's own SBOM against its Cargo.lock and the
//! CycloneDX 1.5 schema, provenance against a real file, and the licence
//! policy on planted SBOMs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{Value, json};
use spark_checks::checks::SupplyChainCheck;
use spark_checks::provenance::{self, ProvenanceOptions};
use spark_checks::{Status, sbom};

use crate::{assert_status, config, has_finding, run};

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
const LOCKFILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock");

/// This workspace's SBOM, generated once for all tests (`cargo metadata`
/// takes a while).
fn workspace_sbom() -> &'static str {
    static SBOM: OnceLock<String> = OnceLock::new();
    SBOM.get_or_init(|| sbom::generate(Path::new(MANIFEST)).unwrap_or_else(|e| panic!("spark sbom: {e:#?}")))
}

/// A `[supply_chain]` section naming these files (TOML-escaped).
fn section(sbom: &Path, provenance: &Path, artifact: &Path, lockfile: &Path) -> String {
    format!(
        "[supply_chain]\nsbom = {:?}\nprovenance = {:?}\nartifact = {:?}\nlockfile = {:?}\n",
        sbom.display().to_string(),
        provenance.display().to_string(),
        artifact.display().to_string(),
        lockfile.display().to_string()
    )
}

/// A provenance statement for `artifact`, written beside it.
fn provenance_for(artifact: &Path) -> PathBuf {
    let mut options = ProvenanceOptions::new(artifact);
    options.source_revision = Some("0123456789abcdef0123456789abcdef01234567".to_owned());
    let statement = provenance::generate(&options).unwrap();
    let path = artifact.with_extension("intoto.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&statement).unwrap()).unwrap();
    path
}

#[test]
fn this_workspaces_sbom_is_valid_cyclonedx_1_5_and_lists_exactly_its_lockfile() {
    let started = std::time::Instant::now();
    let doc: Value = serde_json::from_str(workspace_sbom()).unwrap();
    eprintln!("sbom generated in {:?}", started.elapsed());
    assert_eq!(doc["bomFormat"], "CycloneDX");
    assert_eq!(doc["specVersion"], "1.5");
    assert_eq!(sbom::validate(&doc), Vec::<String>::new());

    let locked = sbom::lockfile_packages(Path::new(LOCKFILE)).unwrap();
    let components = sbom::components(&doc).unwrap();
    let lock_set: BTreeSet<&String> = locked.keys().collect();
    let sbom_set: BTreeSet<&String> = components.keys().collect();
    assert_eq!(sbom_set, lock_set);
    assert!(components.contains_key("spark-checks@0.1.0"));

    for (key, lock) in &locked {
        let c = &components[key];
        assert_eq!(c.purl.as_deref(), Some(format!("pkg:cargo/{}@{}", lock.name, lock.version).as_str()), "{key}");
        assert_eq!(c.sha256, lock.checksum, "{key}: the lockfile's checksum");
    }
    let serde = components.keys().find(|k| k.starts_with("serde@")).unwrap();
    assert_eq!(components[serde].licenses, vec!["MIT OR Apache-2.0"]);
}

#[tokio::test]
async fn a_true_sbom_and_provenance_pass_and_a_package_removed_fails() {
    let dir = tempfile::tempdir().unwrap();
    let sbom_path = dir.path().join("sbom.cdx.json");
    std::fs::write(&sbom_path, workspace_sbom()).unwrap();
    let artifact = dir.path().join("app.bin");
    std::fs::write(&artifact, b"the deployed binary").unwrap();
    let prov = provenance_for(&artifact);
    let toml = section(&sbom_path, &prov, &artifact, Path::new(LOCKFILE));

    let started = std::time::Instant::now();
    let o = run(&SupplyChainCheck, config(&toml)).await;
    eprintln!("supply-chain check in {:?}", started.elapsed());
    // Every licence in this workspace is known and allowed.
    assert_status(&o, Status::Pass);
    assert!(o.summary.contains("SBOM lists the") && o.summary.contains("provenance matches"), "{}", o.summary);

    // Remove one package: the SBOM no longer tells the truth.
    let mut doc: Value = serde_json::from_str(workspace_sbom()).unwrap();
    let list = doc["components"].as_array_mut().unwrap();
    let at = list.iter().position(|c| c["name"] == "serde_json").unwrap();
    let removed = list.remove(at);
    std::fs::write(&sbom_path, serde_json::to_vec(&doc).unwrap()).unwrap();
    let o = run(&SupplyChainCheck, config(&toml)).await;
    assert_status(&o, Status::Fail);
    let name = format!("serde_json@{}", removed["version"].as_str().unwrap());
    assert!(has_finding(&o, Status::Fail, "missing from the SBOM"), "{o:#?}");
    assert!(has_finding(&o, Status::Fail, &name), "{o:#?}");
}

#[tokio::test]
async fn provenance_of_another_file_fails_and_a_bad_statement_fails() {
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir.path().join("app.bin");
    std::fs::write(&artifact, b"build 1").unwrap();
    let prov = provenance_for(&artifact);
    let statement: Value = serde_json::from_slice(&std::fs::read(&prov).unwrap()).unwrap();
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(statement["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(statement["subject"][0]["name"], "app.bin");
    assert_eq!(statement["subject"][0]["digest"]["sha256"], provenance::sha256_file(&artifact).unwrap());
    assert_eq!(
        statement["predicate"]["buildDefinition"]["resolvedDependencies"][0]["digest"]["gitCommit"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    assert_eq!(statement["predicate"]["runDetails"]["builder"]["id"], provenance::DEFAULT_BUILDER_ID);

    // Only the provenance half: a planted SBOM that passes.
    let (sbom_path, lockfile) = planted(dir.path(), &[("a", "MIT")]);
    let toml = section(&sbom_path, &prov, &artifact, &lockfile);
    assert_status(&run(&SupplyChainCheck, config(&toml)).await, Status::Pass);

    // The artifact changes after its provenance was written.
    std::fs::write(&artifact, b"build 2").unwrap();
    let o = run(&SupplyChainCheck, config(&toml)).await;
    assert_status(&o, Status::Fail);
    assert!(has_finding(&o, Status::Fail, "is not about the deployed artifact"), "{o:#?}");

    // Not an in-toto statement at all.
    std::fs::write(&prov, json!({"_type": "something else", "subject": []}).to_string()).unwrap();
    let o = run(&SupplyChainCheck, config(&toml)).await;
    assert!(has_finding(&o, Status::Fail, "_type"), "{o:#?}");
}

/// A lockfile and a matching, schema-valid SBOM of packages `(name,
/// licence)`, each at version 1.0.0, in `dir`.
fn planted(dir: &Path, packages: &[(&str, &str)]) -> (PathBuf, PathBuf) {
    let mut lock = String::from("version = 4\n");
    let mut components = Vec::new();
    for (name, license) in packages {
        lock.push_str(&format!("\n[[package]]\nname = \"{name}\"\nversion = \"1.0.0\"\n"));
        components.push(json!({
            "type": "library",
            "bom-ref": format!("pkg:cargo/{name}@1.0.0"),
            "name": name,
            "version": "1.0.0",
            "purl": format!("pkg:cargo/{name}@1.0.0"),
            "licenses": [{"expression": license}],
        }));
    }
    let doc = json!({"bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1, "components": components});
    assert_eq!(sbom::validate(&doc), Vec::<String>::new());
    let sbom_path = dir.join("planted.cdx.json");
    let lockfile = dir.join("Cargo.lock");
    std::fs::write(&sbom_path, doc.to_string()).unwrap();
    std::fs::write(&lockfile, lock).unwrap();
    (sbom_path, lockfile)
}

#[tokio::test]
async fn a_gpl_package_fails_naming_it_and_an_or_alternative_passes() {
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir.path().join("app.bin");
    std::fs::write(&artifact, b"bin").unwrap();
    let prov = provenance_for(&artifact);

    let (sbom_path, lockfile) = planted(
        dir.path(),
        &[("copyleft", "GPL-3.0"), ("network-copyleft", "AGPL-3.0-only"), ("dual", "MIT OR GPL-3.0"), ("plain", "MIT")],
    );
    let o = run(&SupplyChainCheck, config(&section(&sbom_path, &prov, &artifact, &lockfile))).await;
    assert_status(&o, Status::Fail);
    assert!(has_finding(&o, Status::Fail, "copyleft@1.0.0 is licensed GPL-3.0"), "{o:#?}");
    assert!(has_finding(&o, Status::Fail, "network-copyleft@1.0.0 is licensed AGPL-3.0-only"), "{o:#?}");
    assert!(!o.findings.iter().any(|f| f.message.contains("dual@")), "{o:#?}");
    assert_eq!(o.details["denied_licenses"], json!(["copyleft@1.0.0", "network-copyleft@1.0.0"]));

    // The policy is the configuration's: an empty deny list allows them.
    let toml = format!("{}deny_licenses = []\n", section(&sbom_path, &prov, &artifact, &lockfile));
    assert_status(&run(&SupplyChainCheck, config(&toml)).await, Status::Pass);
}

#[tokio::test]
async fn an_unknown_licence_warns_unless_told_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir.path().join("app.bin");
    std::fs::write(&artifact, b"bin").unwrap();
    let prov = provenance_for(&artifact);
    let (sbom_path, lockfile) = planted(dir.path(), &[("dual", "MIT OR GPL-3.0"), ("odd", "Acme-Licence-1")]);
    let toml = section(&sbom_path, &prov, &artifact, &lockfile);
    let o = run(&SupplyChainCheck, config(&toml)).await;
    assert_status(&o, Status::Warn);
    assert!(has_finding(&o, Status::Warn, "odd@1.0.0"), "{o:#?}");

    let o = run(&SupplyChainCheck, config(&format!("{toml}warn_unknown = false\n"))).await;
    assert_status(&o, Status::Pass);
}

#[tokio::test]
async fn nothing_configured_skips_and_a_missing_file_fails_naming_it() {
    let o = run(&SupplyChainCheck, config("")).await;
    assert_status(&o, Status::Skip);
    assert!(o.summary.contains("supply_chain.sbom"), "{}", o.summary);

    let o = run(&SupplyChainCheck, config("[supply_chain]\nsbom = \"/nonexistent/sbom.json\"\n")).await;
    assert_status(&o, Status::Fail);
    assert!(has_finding(&o, Status::Fail, "/nonexistent/sbom.json cannot be read"), "{o:#?}");
    assert!(has_finding(&o, Status::Fail, "supply_chain.provenance"), "{o:#?}");
}
