//! The ritual on the embedded default: SQLite, the test binary as the
//! artifact, this workspace's SBOM, a real dry-run rollback as the
//! rehearsal, and the bundle verified and tampered with.

use std::path::{Path, PathBuf};

use spark_evidence::{Problem, keys, verify};
use spark_release::{ItemId, ItemStatus, NoProgress, ReleaseError, RitualOptions, Settings, StepStatus, bundle_files};
use spark_rollback::{Plan, RollbackEnv, RollbackRequest};

use crate::all_signers;

/// A migrated SQLite database, a dry-run rollback record, and settings for
/// both; the temporary directory holds all of it.
async fn setup() -> (tempfile::TempDir, Settings) {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", tmp.path().join("app.db").display());
    let db = order_service::Database::connect(&url, 2).await.unwrap();
    order_service::migrate(&db).await.unwrap();
    let rollbacks = tmp.path().join("rollbacks");
    let clock = spark_db::system_clock();
    let env = RollbackEnv::new(clock.clone()).unwrap().env(|_| None);
    let request = RollbackRequest::new("rehearsal", "1%", clock.now_ms()).dry_run(true);
    spark_rollback::execute(
        &Plan::default(),
        &request,
        &env,
        &spark_evidence::EvidenceDir::create(&rollbacks).unwrap(),
    )
    .await
    .unwrap();
    let mut settings = Settings::default();
    settings.checks.database.url = Some(url);
    settings.release.rollback_dir = rollbacks;
    settings.release.workspace = PathBuf::from("../Cargo.toml");
    (tmp, settings)
}

fn options(settings: Settings, dir: &Path) -> RitualOptions {
    let mut options = RitualOptions::new("v1.4.0", settings, dir);
    options.artifact = Some(std::env::current_exe().unwrap());
    options.signers = all_signers();
    options.migrations = order_service::ALL_MIGRATIONS.to_vec();
    options
}

fn flip_one_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ritual_writes_seven_files_and_a_signed_manifest_that_catches_any_change() {
    let (tmp, settings) = setup().await;
    let bundle = tmp.path().join("evidence/v1.4.0");
    let key = keys::generate().unwrap();
    let mut options = options(settings.clone(), &bundle);
    options.sign_key = Some(key.clone());
    // On SQLite with no Prometheus, no flag file and no pgBouncer, these
    // could not be measured: the signers accept them by name.
    options.acceptances = ["scan=Deniz", "backup=Deniz", "burn-rate-alerts=Ayşe", "baseline=Ayşe", "flags=Can"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let report = spark_release::run_ritual(options, &NoProgress).await.unwrap();
    eprintln!("{}", report.table());
    eprintln!("measured: the ritual on SQLite took {} ms", report.millis);

    // Exactly the seven files and the manifest.
    let mut names: Vec<String> =
        std::fs::read_dir(&bundle).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    let mut want: Vec<String> = bundle_files("v1.4.0").to_vec();
    want.push("manifest.json".to_owned());
    want.sort();
    assert_eq!(names, want);

    // What could be measured here passed; nothing was ticked by hand.
    let status = |id: ItemId| report.go_nogo.items.iter().find(|i| i.id == id).unwrap().status;
    for id in [ItemId::Migrations, ItemId::RollbackRehearsed, ItemId::CanaryPlan, ItemId::SupplyChain, ItemId::SignOffs]
    {
        assert_eq!(status(id), ItemStatus::Pass, "{id:?}: {}", report.go_nogo.to_text());
    }
    assert_eq!(status(ItemId::Baseline), ItemStatus::Warn);
    assert!(report.go_nogo.is_go(), "{}", report.table());
    assert!(report.steps.iter().all(|s| s.status != StepStatus::Failed), "{}", report.table());

    // The SBOM is valid CycloneDX 1.5 and the tag names the artifact.
    let sbom: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("sbom_v1.4.0.json")).unwrap()).unwrap();
    assert_eq!(spark_checks::sbom::validate(&sbom), Vec::<String>::new());
    let tag = std::fs::read_to_string(bundle.join("release_tag.txt")).unwrap();
    let sha = spark_checks::provenance::sha256_file(&std::env::current_exe().unwrap()).unwrap();
    assert!(tag.contains(&format!("artifact sha256: {sha}")), "{tag}");
    let go = std::fs::read_to_string(bundle.join("go_nogo_signed_v1.4.0.txt")).unwrap();
    assert!(go.contains("verdict:    GO (10/10)"), "{go}");
    assert!(go.contains("warning accepted by Ayşe"), "{go}");

    // Intact with the right key; a wrong key is a bad signature.
    let right = verify(&bundle, Some(&key.verifying_key())).unwrap();
    assert!(right.is_intact() && right.is_signed(), "{right}");
    let wrong = verify(&bundle, Some(&keys::generate().unwrap().verifying_key())).unwrap();
    assert!(wrong.problems().iter().any(|p| matches!(p, Problem::BadSignature { .. })), "{wrong}");

    // One flipped byte in any of the seven files is named.
    for name in bundle_files("v1.4.0") {
        let copy = tmp.path().join(format!("flip-{name}"));
        copy_dir(&bundle, &copy);
        flip_one_byte(&copy.join(&name));
        let r = verify(&copy, Some(&key.verifying_key())).unwrap();
        assert_eq!(r.problems(), [Problem::Modified { name: name.clone() }], "{name}");
    }
    // A flipped byte in the manifest breaks its signature or its shape.
    let copy = tmp.path().join("flip-manifest");
    copy_dir(&bundle, &copy);
    flip_one_byte(&copy.join("manifest.json"));
    assert!(!verify(&copy, Some(&key.verifying_key())).unwrap().is_intact());
    // A deleted file and an added one are named.
    let copy = tmp.path().join("deleted");
    copy_dir(&bundle, &copy);
    std::fs::remove_file(copy.join("canary_plan_v1.4.0.txt")).unwrap();
    std::fs::write(copy.join("extra.txt"), b"planted").unwrap();
    let r = verify(&copy, Some(&key.verifying_key())).unwrap();
    assert!(r.problems().contains(&Problem::Missing { name: "canary_plan_v1.4.0.txt".into() }), "{r}");
    assert!(r.problems().contains(&Problem::Added { name: "extra.txt".into() }), "{r}");

    // A bundle is never written twice.
    let again = spark_release::run_ritual(options_for_again(settings, &bundle), &NoProgress).await.unwrap_err();
    assert!(matches!(again, ReleaseError::BundleExists(_)), "{again}");
}

fn options_for_again(settings: Settings, dir: &Path) -> RitualOptions {
    options(settings, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn without_sign_offs_and_acceptances_the_ritual_is_no_go_and_says_why() {
    let (tmp, settings) = setup().await;
    let bundle = tmp.path().join("bundle");
    let mut options = options(settings, &bundle);
    options.signers.clear();
    let report = spark_release::run_ritual(options, &NoProgress).await.unwrap();
    assert!(!report.go_nogo.is_go());
    let reasons = report.go_nogo.reasons();
    assert!(
        reasons.iter().any(|r| r.starts_with("sign-offs: not signed: DevOps lead, CTO, product owner")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.starts_with("baseline: warning not accepted (not measured")), "{reasons:?}");
    // Still a complete, verifiable record of the NO-GO.
    assert!(verify(&bundle, None).unwrap().is_intact());
    assert!(report.table().contains("NO-GO: sign-offs"), "{}", report.table());
}

#[tokio::test(flavor = "multi_thread")]
async fn go_nogo_on_its_own_writes_its_json_and_finds_no_rehearsal_in_an_empty_dir() {
    let (tmp, mut settings) = setup().await;
    settings.release.rollback_dir = tmp.path().join("no-rehearsals-here");
    let dir = tmp.path().join("gonogo");
    let report = spark_release::run_go_nogo(options(settings, &dir), &NoProgress).await.unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("go_nogo_signed_v1.4.0.json")).unwrap()).unwrap();
    assert_eq!(json["verdict"], "NO-GO");
    let item = &json["items"][3];
    assert_eq!(item["id"], "rollback-rehearsed");
    assert_eq!(item["status"], "fail");
    assert!(dir.join("go_nogo_signed_v1.4.0.txt").exists());
    assert!(!dir.join("manifest.json").exists(), "GO/NO-GO on its own seals nothing");
    assert_eq!(report.steps.len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_narrowed_scan_a_cluttered_directory_and_a_missing_artifact_never_pass() {
    let (tmp, mut settings) = setup().await;
    // `[check] only` narrows `spark check`, never GO/NO-GO: every check runs.
    settings.checks.check.only = vec!["migrations".to_owned()];
    let dir = tmp.path().join("narrowed");
    let report = spark_release::run_go_nogo(options(settings.clone(), &dir), &NoProgress).await.unwrap();
    let scan = std::fs::read_to_string(dir.join("blind_spots_scan_v1.4.0.txt")).unwrap();
    for id in ["clock", "decimal", "pgbouncer", "headers", "supply-chain"] {
        assert!(scan.contains(id), "the ritual's scan left out {id}: {scan}");
    }
    assert!(report.go_nogo.items[0].summary.contains("checks"), "{:?}", report.go_nogo.items[0]);

    // A directory holding anything is refused before anything is written.
    let cluttered = tmp.path().join("cluttered");
    std::fs::create_dir_all(&cluttered).unwrap();
    std::fs::write(cluttered.join("canary_run_v1.4.0.jsonl"), "{}\n").unwrap();
    let e = spark_release::run_ritual(options(settings.clone(), &cluttered), &NoProgress).await.unwrap_err();
    assert!(matches!(&e, ReleaseError::DirNotEmpty { .. }), "{e}");
    assert!(e.to_string().contains("canary_run_v1.4.0.jsonl"), "{e}");
    assert_eq!(std::fs::read_dir(&cluttered).unwrap().count(), 1, "the refused ritual wrote into the directory");

    // No artifact: the SBOM is written, the provenance cannot be, and the
    // supply-chain item fails even when a signer would accept it.
    let bare = tmp.path().join("no-artifact");
    let mut o = options(settings, &bare);
    o.artifact = None;
    o.acceptances = vec!["supply-chain=Can".parse().unwrap()];
    let report = spark_release::run_ritual(o, &NoProgress).await.unwrap();
    let item = report.go_nogo.items.iter().find(|i| i.id == ItemId::SupplyChain).unwrap();
    assert_eq!(item.status, ItemStatus::Fail, "{item:?}");
    assert!(item.summary.contains("provenance"), "{item:?}");
    assert!(!report.go_nogo.is_go());
}
