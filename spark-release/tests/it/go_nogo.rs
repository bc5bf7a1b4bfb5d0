//! GO/NO-GO's judgement: what counts, what a signer may accept, what they
//! may not.

use spark_checks::Status;
use spark_release::{
    Acceptance, Baseline, EvidenceRef, ItemId, ItemStatus, Measurements, Rehearsal, ReleaseError, SignOff, decide,
    find_rehearsal,
};

use crate::{all_signers, report, roles};

const NOW: i64 = 1_796_000_000_000;

async fn measurements(statuses: &[(&'static str, Status)]) -> Measurements {
    Measurements {
        scan: report(statuses).await,
        scan_evidence: Some(EvidenceRef { file: "blind_spots_scan_v1.txt".into(), sha256: "ab".repeat(32) }),
        supply_chain_evidence: Vec::new(),
        rehearsal: Rehearsal::Found {
            evidence: EvidenceRef { file: "rollback_x.json".into(), sha256: "cd".repeat(32) },
            age_hours: 2.0,
            bundle_problems: Vec::new(),
            sealed: true,
        },
        rehearsal_max_age_hours: 24,
        plan: Ok(()),
        plan_evidence: None,
        baseline: Baseline::Taken { empty_signals: Vec::new() },
        baseline_evidence: None,
        supply_chain_not_written: None,
    }
}

fn accept(item: &str) -> Acceptance {
    item.parse().unwrap()
}

#[tokio::test]
async fn ten_passing_items_and_every_role_signed_is_go() {
    let m = measurements(&[]).await;
    let v = decide("v1.4.0", &m, &roles(), &all_signers(), &[], NOW).unwrap();
    assert!(v.is_go(), "{}", v.to_text());
    assert_eq!(v.passed, 10);
    assert_eq!(v.items.iter().map(|i| i.id).collect::<Vec<_>>(), ItemId::ALL);
    let text = v.to_text();
    assert!(text.contains("verdict:    GO (10/10)"), "{text}");
    assert!(text.contains(&format!("evidence: blind_spots_scan_v1.txt sha256:{}", "ab".repeat(32))), "{text}");
    assert!(text.contains("CTO: Ayşe at "), "{text}");
}

#[tokio::test]
async fn a_warning_counts_only_when_a_signer_accepts_it() {
    let m = measurements(&[("backup", Status::Skip)]).await;
    let v = decide("v1", &m, &roles(), &all_signers(), &[], NOW).unwrap();
    assert!(!v.is_go());
    assert_eq!(v.passed, 8, "the scan and the backup items both warn");
    let backup = v.items.iter().find(|i| i.id == ItemId::Backup).unwrap();
    assert_eq!(backup.status, ItemStatus::Warn);
    assert!(backup.summary.starts_with("not measured: "), "{backup:?}");
    assert!(v.reasons().iter().any(|r| r.contains("--accept-warning backup=NAME")), "{:?}", v.reasons());

    let v = decide("v1", &m, &roles(), &all_signers(), &[accept("backup=Ayşe"), accept("scan=Can")], NOW).unwrap();
    assert!(v.is_go(), "{}", v.to_text());
    let backup = v.items.iter().find(|i| i.id == ItemId::Backup).unwrap();
    assert_eq!(backup.accepted_by.as_deref(), Some("Ayşe"));
    assert!(v.to_text().contains("[WARN accepted] backup fresh (PITR)"), "{}", v.to_text());
}

#[tokio::test]
async fn a_failure_cannot_be_accepted() {
    let m = measurements(&[("decimal", Status::Fail)]).await;
    let v = decide("v1", &m, &roles(), &all_signers(), &[accept("scan=Deniz")], NOW).unwrap();
    assert!(!v.is_go());
    let scan = &v.items[0];
    assert_eq!(scan.status, ItemStatus::Fail);
    assert!(scan.summary.contains("decimal"), "{scan:?}");
    assert!(v.notes.iter().any(|n| n.contains("a failure cannot be accepted")), "{:?}", v.notes);
    assert!(v.reasons()[0].starts_with("scan: 1 of 7 checks failed: decimal"), "{:?}", v.reasons());
}

#[tokio::test]
async fn a_missing_sign_off_is_no_go_and_names_the_role() {
    let m = measurements(&[]).await;
    let signers = &all_signers()[..2];
    let v = decide("v1", &m, &roles(), signers, &[], NOW).unwrap();
    assert!(!v.is_go());
    let item = v.items.iter().find(|i| i.id == ItemId::SignOffs).unwrap();
    assert_eq!(item.status, ItemStatus::Fail);
    assert!(item.summary.contains("product owner"), "{item:?}");
}

#[tokio::test]
async fn a_typo_is_an_error_never_a_signature() {
    let m = measurements(&[]).await;
    let mut signers = all_signers();
    signers.push("CFO=Ece".parse().unwrap());
    let e = decide("v1", &m, &roles(), &signers, &[], NOW).unwrap_err();
    assert!(matches!(&e, ReleaseError::SignOff(msg) if msg.contains("\"CFO\" is not a required role")), "{e}");
    let mut twice = all_signers();
    twice.push("cto=Ece".parse().unwrap());
    let e = decide("v1", &m, &roles(), &twice, &[], NOW).unwrap_err();
    assert!(e.to_string().contains("signed twice"), "{e}");
    let e = decide("v1", &m, &roles(), &all_signers(), &[accept("backup=Mallory")], NOW).unwrap_err();
    assert!(e.to_string().contains("Mallory accepts the backup warning but did not sign off"), "{e}");
    assert!("bakup=Ayşe".parse::<Acceptance>().unwrap_err().to_string().contains("not a GO/NO-GO item"));
    let e = decide("../v1", &m, &roles(), &all_signers(), &[], NOW).unwrap_err();
    assert!(matches!(e, ReleaseError::ReleaseName(_)), "{e}");
}

#[tokio::test]
async fn a_stale_missing_or_tampered_rehearsal_fails() {
    let mut m = measurements(&[]).await;
    let found = |age_hours: f64, problems: Vec<String>| Rehearsal::Found {
        evidence: EvidenceRef { file: "r.json".into(), sha256: "00".repeat(32) },
        age_hours,
        bundle_problems: problems,
        sealed: true,
    };
    for (rehearsal, want) in [
        (found(30.0, vec![]), "30.0 h old (limit 24 h)"),
        (found(1.0, vec!["modified: rollback_x.txt".into()]), "does not verify: modified: rollback_x.txt"),
        (Rehearsal::None { searched: "evidence".into() }, "no dry-run rollback record in evidence"),
    ] {
        m.rehearsal = rehearsal;
        let v = decide("v1", &m, &roles(), &all_signers(), &[], NOW).unwrap();
        let item = v.items.iter().find(|i| i.id == ItemId::RollbackRehearsed).unwrap();
        assert_eq!(item.status, ItemStatus::Fail, "{item:?}");
        assert!(item.summary.contains(want), "{item:?}");
        assert!(!v.is_go());
    }
}

#[tokio::test]
async fn an_invalid_plan_and_a_failed_baseline_fail() {
    let mut m = measurements(&[]).await;
    m.plan = Err("stages[1].weight: must rise".into());
    m.baseline = Baseline::Failed("connection refused".into());
    let v = decide("v1", &m, &roles(), &all_signers(), &[], NOW).unwrap();
    let reasons = v.reasons();
    assert!(
        reasons.iter().any(|r| r == "canary-plan: the plan is invalid: stages[1].weight: must rise"),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r == "baseline: the snapshot failed: connection refused"), "{reasons:?}");
    m.baseline = Baseline::NotConfigured;
    let v = decide("v1", &m, &roles(), &all_signers(), &[], NOW).unwrap();
    let item = v.items.iter().find(|i| i.id == ItemId::Baseline).unwrap();
    assert_eq!(item.status, ItemStatus::Warn, "not measured is a warning, never a pass");
}

#[tokio::test]
async fn one_person_for_two_roles_is_an_error_and_bad_release_names_are_refused() {
    let m = measurements(&[]).await;
    let signers: Vec<SignOff> =
        ["DevOps lead=Deniz", "CTO=deniz ", "product owner=Can"].iter().map(|s| s.parse().unwrap()).collect();
    let e = decide("v1", &m, &roles(), &signers, &[], NOW).unwrap_err();
    assert!(e.to_string().contains("signs as CTO and as DevOps lead already"), "{e}");
    for name in ["v1.", ".", ".v1", "-", "v1..2", ""] {
        let e = decide(name, &m, &roles(), &all_signers(), &[], NOW).unwrap_err();
        assert!(matches!(e, ReleaseError::ReleaseName(_)), "{name:?}: {e}");
    }
    assert!(decide("v1.4.0-rc.1+b7", &m, &roles(), &all_signers(), &[], NOW).is_ok());
}

#[tokio::test]
async fn an_unsealed_rehearsal_warns_and_unwritten_supply_chain_files_fail() {
    let mut m = measurements(&[]).await;
    m.rehearsal = Rehearsal::Found {
        evidence: EvidenceRef { file: "rollback_x.json".into(), sha256: "cd".repeat(32) },
        age_hours: 1.0,
        bundle_problems: Vec::new(),
        sealed: false,
    };
    let v = decide("v1", &m, &roles(), &all_signers(), &[], NOW).unwrap();
    let item = v.items.iter().find(|i| i.id == ItemId::RollbackRehearsed).unwrap();
    assert_eq!(item.status, ItemStatus::Warn, "{item:?}");
    assert!(item.summary.contains("not sealed"), "{item:?}");

    let mut m = measurements(&[("supply-chain", Status::Skip)]).await;
    m.supply_chain_not_written = Some("the ritual could not write the SBOM and provenance (sbom: failed)".into());
    let v = decide("v1", &m, &roles(), &all_signers(), &[accept("supply-chain=Can"), accept("scan=Can")], NOW).unwrap();
    let item = v.items.iter().find(|i| i.id == ItemId::SupplyChain).unwrap();
    assert_eq!(item.status, ItemStatus::Fail, "a supply chain never written is no warning to accept: {item:?}");
    assert!(!v.is_go());
}

/// Writes a dry-run record as `rollback_<name>/rollback_<name>.json`,
/// sealed or not.
fn rehearsal_record(dir: &std::path::Path, name: &str, decided_at_ms: i64, seal: bool) {
    let bundle = dir.join(format!("rollback_{name}"));
    std::fs::create_dir_all(&bundle).unwrap();
    let record = serde_json::json!({
        "format": spark_rollback::RECORD_FORMAT, "dry_run": true, "decided_at_ms": decided_at_ms,
    });
    std::fs::write(bundle.join(format!("rollback_{name}.json")), record.to_string()).unwrap();
    if seal {
        spark_evidence::seal(&bundle, None, decided_at_ms).unwrap();
    }
}

#[tokio::test]
async fn a_record_dated_in_the_future_does_not_hide_the_newest_real_one() {
    let tmp = tempfile::tempdir().unwrap();
    rehearsal_record(tmp.path(), "real", NOW - 2 * 3_600_000, true);
    rehearsal_record(tmp.path(), "forged", i64::MAX, true);
    rehearsal_record(tmp.path(), "ancient", i64::MIN, false);
    let Rehearsal::Found { evidence, age_hours, sealed, bundle_problems } = find_rehearsal(tmp.path(), NOW) else {
        panic!("no rehearsal found");
    };
    assert!(evidence.file.ends_with("rollback_real.json"), "{evidence:?}");
    assert!((age_hours - 2.0).abs() < 1e-9 && sealed && bundle_problems.is_empty());

    // Only a future one: it is found, and GO/NO-GO fails it.
    let only_future = tempfile::tempdir().unwrap();
    rehearsal_record(only_future.path(), "forged", NOW + 3_600_000, true);
    let mut m = measurements(&[]).await;
    m.rehearsal = find_rehearsal(only_future.path(), NOW);
    let v = decide("v1", &m, &roles(), &all_signers(), &[], NOW).unwrap();
    let item = v.items.iter().find(|i| i.id == ItemId::RollbackRehearsed).unwrap();
    assert!(item.summary.contains("in the future"), "{item:?}");
}
