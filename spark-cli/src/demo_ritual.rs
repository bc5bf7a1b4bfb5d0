//! The release half of `spark demo`: a dry-run rollback, the ritual for
//! release `demo` against the demo's own database and build, release notes
//! and `evidence verify`, all on the embedded default.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;
use spark_evidence::EvidenceDir;
use spark_release::{RitualOptions, Settings, SignOff};
use spark_rollback::{Plan, RollbackEnv, RollbackRequest};

use crate::progress::StepBar;

/// What the release half did.
#[derive(Debug, Default, Serialize)]
pub(crate) struct RitualSummary {
    /// Where everything is.
    pub(crate) evidence_dir: PathBuf,
    /// The sealed ritual bundle.
    pub(crate) bundle: PathBuf,
    /// GO or NO-GO, and the items that counted.
    pub(crate) verdict: String,
    pub(crate) items_passed: usize,
    /// Why not GO, one line per item.
    pub(crate) reasons: Vec<String>,
    /// How long the ritual took.
    pub(crate) ritual_ms: u64,
    /// The release notes.
    pub(crate) release_notes: PathBuf,
    /// `spark evidence verify` of the bundle with the demo's public key.
    pub(crate) bundle_intact: bool,
    /// The same of the rehearsal's rollback bundle.
    pub(crate) rehearsal_intact: bool,
    /// The public key that verifies the bundle.
    pub(crate) public_key: PathBuf,
}

/// The roles sign as three demo people: a real ritual needs three real
/// ones (one person may not sign two roles).
const DEMO_SIGNERS: [&str; 3] = ["DevOps lead=demo devops lead", "CTO=demo cto", "product owner=demo product owner"];

/// Runs the release half against the demo's database at `database_url` and
/// its order service at `service` (a loopback base URL), writing into
/// `root`.
pub(crate) async fn run(database_url: &str, service: &str, root: &Path, json: bool) -> anyhow::Result<RitualSummary> {
    let clock = spark_db::system_clock();
    std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    let key = spark_evidence::keys::generate()?;
    let public_key = spark_evidence::keys::write_key_pair(&root.join("demo-signing.key"), &key)?;

    // A rehearsal: the default plan's rollback as a dry run, recorded.
    let rollbacks = root.join("rollbacks");
    let env = RollbackEnv::new(clock.clone())?.env(|_| None).sign_key(key.clone());
    let request = RollbackRequest::new("spark demo: rollback rehearsal", "1%", clock.now_ms()).dry_run(true);
    let record = spark_rollback::execute(&Plan::default(), &request, &env, &EvidenceDir::create(&rollbacks)?).await?;

    // The ritual against the demo's own database and the running binary.
    let mut checks = spark_checks::Config::default();
    checks.database.url = Some(database_url.to_owned());
    checks.headers.urls = vec![format!("{service}/healthz")];
    let mut settings = Settings { checks, ..Settings::default() };
    settings.release.rollback_dir.clone_from(&rollbacks);
    // The workspace this binary was built from: here, or where it was built.
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    if !settings.release.workspace.is_file() && built_from.is_file() {
        settings.release.workspace = built_from;
    }
    let bundle = root.join("bundle");
    let mut options = RitualOptions::new("demo", settings, &bundle);
    options.artifact = Some(std::env::current_exe().context("the running binary")?);
    options.sign_key = Some(key.clone());
    options.signers = DEMO_SIGNERS.iter().map(|s| s.parse()).collect::<Result<Vec<SignOff>, _>>()?;
    options.migrations = order_service::ALL_MIGRATIONS.to_vec();
    let bar = StepBar::new(spark_release::Step::ALL.len(), json);
    let report = spark_release::run_ritual(options, &bar).await;
    bar.finish();
    let report = report?;

    let notes = spark_release::release_notes("demo", &rollbacks, Vec::new(), &spark_rollback::rfc3339(clock.now_ms()))?;
    let notes_path = root.join("RELEASE_NOTES_demo.md");
    std::fs::write(&notes_path, &notes.markdown).with_context(|| format!("cannot write {}", notes_path.display()))?;

    let verifying = key.verifying_key();
    let bundle_intact = spark_evidence::verify(&bundle, Some(&verifying))?.is_intact();
    let rehearsal_intact = spark_evidence::verify(&record.bundle, Some(&verifying))?.is_intact();
    Ok(RitualSummary {
        evidence_dir: root.to_owned(),
        bundle,
        verdict: report.go_nogo.verdict.to_owned(),
        items_passed: report.go_nogo.passed,
        reasons: report.go_nogo.reasons(),
        ritual_ms: report.millis,
        release_notes: notes_path,
        bundle_intact,
        rehearsal_intact,
        public_key,
    })
}
