//! `spark sbom` and `spark provenance` through the real binary.

use std::path::Path;

use serde_json::Value;
use sha2::Digest as _;

use crate::spark;

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn sbom_writes_this_workspaces_cyclonedx_1_5_sbom() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sbom.cdx.json");
    let started = std::time::Instant::now();
    let run = spark(&["sbom", "--json", "--manifest-path", MANIFEST, "--out", out.to_str().unwrap()]);
    eprintln!("measured: spark sbom of this workspace took {:?}", started.elapsed());
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let doc = read_json(&out);
    assert_eq!(doc["specVersion"], "1.5");
    assert_eq!(spark_checks::sbom::validate(&doc), Vec::<String>::new());
    let locked =
        spark_checks::sbom::lockfile_packages(Path::new(MANIFEST).with_file_name("Cargo.lock").as_path()).unwrap();
    assert_eq!(run.json()["components"], locked.len());
    assert!(run.stderr.is_empty(), "{}", run.stderr);
}

#[test]
fn provenance_of_the_spark_binary_carries_its_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("spark.intoto.json");
    let binary = env!("CARGO_BIN_EXE_spark");
    let run = spark(&[
        "provenance",
        "--artifact",
        binary,
        "--out",
        out.to_str().unwrap(),
        "--manifest-path",
        MANIFEST,
        "--param",
        "profile=dev",
    ]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let expected = hex::encode(sha2::Sha256::digest(std::fs::read(binary).unwrap()));
    let statement = read_json(&out);
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(statement["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(statement["subject"][0]["name"], "spark");
    assert_eq!(statement["subject"][0]["digest"]["sha256"], expected.as_str());
    assert!(run.stdout.contains(&expected), "{}", run.stdout);
    let predicate = &statement["predicate"];
    assert_eq!(predicate["buildDefinition"]["externalParameters"]["profile"], "dev");
    // The commit this checkout is at.
    let head = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let head = String::from_utf8(head.stdout).unwrap();
    assert_eq!(predicate["buildDefinition"]["resolvedDependencies"][0]["digest"]["gitCommit"], head.trim());
    assert!(predicate["runDetails"]["builder"]["id"].as_str().unwrap().starts_with("https://"));

    // Bad input exits 2 with one line.
    let run = spark(&["provenance", "--artifact", "/nonexistent/app", "--out", out.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.starts_with("error: cannot read /nonexistent/app"), "{}", run.stderr);
    let run = spark(&["provenance", "--artifact", binary, "--out", "x", "--param", "novalue"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
}
