//! `spark sbom` and `spark provenance`: the documents the `supply-chain`
//! check verifies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use serde_json::json;
use spark_checks::provenance::{self, ProvenanceOptions};
use spark_checks::sbom;

use crate::output::{CmdResult, Output};

#[derive(Debug, Args)]
pub(crate) struct SbomArgs {
    /// The workspace's Cargo.toml; its Cargo.lock must be up to date.
    #[arg(long, default_value = "Cargo.toml")]
    manifest_path: PathBuf,
    /// Where to write the CycloneDX 1.5 JSON SBOM.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct ProvenanceArgs {
    /// The built artifact; its SHA-256 becomes the statement's subject.
    #[arg(long)]
    artifact: PathBuf,
    /// Where to write the in-toto statement (JSON).
    #[arg(long)]
    out: PathBuf,
    /// The workspace's Cargo.toml; the source commit is `git rev-parse HEAD`
    /// in its directory.
    #[arg(long, default_value = "Cargo.toml")]
    manifest_path: PathBuf,
    /// The source commit, instead of asking git.
    #[arg(long)]
    source_revision: Option<String>,
    /// The source repository URI [default: git's remote.origin.url, if any].
    #[arg(long)]
    source_uri: Option<String>,
    /// The builder's id (a URI naming the machine or CI job that built it).
    #[arg(long, default_value = provenance::DEFAULT_BUILDER_ID)]
    builder_id: String,
    /// The build type (a URI naming how externalParameters are read).
    #[arg(long, default_value = provenance::DEFAULT_BUILD_TYPE)]
    build_type: String,
    /// The subject's name [default: the artifact's file name].
    #[arg(long)]
    name: Option<String>,
    /// A build parameter for externalParameters, KEY=VALUE (repeatable):
    /// `--param profile=release --param target=x86_64-unknown-linux-gnu`.
    #[arg(long = "param", value_parser = parse_param)]
    params: Vec<(String, String)>,
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

pub(crate) fn run_sbom(args: SbomArgs, out: &Output) -> CmdResult {
    let text = sbom::generate(&args.manifest_path)?;
    write(&args.out, text.as_bytes())?;
    let components = sbom::components(&serde_json::from_str(&text)?)?.len();
    let summary = json!({"out": args.out, "spec_version": "1.5", "components": components});
    out.emit(&summary, || format!("wrote {}: CycloneDX 1.5 SBOM, {components} components", args.out.display()))
}

pub(crate) fn run_provenance(args: ProvenanceArgs, out: &Output) -> CmdResult {
    let mut options = ProvenanceOptions::new(&args.artifact);
    options.name = args.name;
    options.builder_id = args.builder_id;
    options.build_type = args.build_type;
    options.source_revision = args.source_revision;
    options.source_uri = args.source_uri;
    options.source_dir = match args.manifest_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    options.parameters = args.params.into_iter().collect::<BTreeMap<_, _>>();
    let statement = provenance::generate(&options)?;
    write(&args.out, &serde_json::to_vec_pretty(&statement)?)?;
    let (name, sha256) = provenance::subjects(&statement)?.remove(0);
    let (builder, revision) = provenance::builder_and_revision(&statement);
    let summary =
        json!({"out": args.out, "subject": name, "sha256": sha256, "source_revision": revision, "builder": builder});
    out.emit(&summary, || {
        format!(
            "wrote {}: {name} sha256:{sha256} from {} by {}",
            args.out.display(),
            revision.as_deref().unwrap_or("?"),
            builder.as_deref().unwrap_or("?")
        )
    })
}
