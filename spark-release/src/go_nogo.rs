//! GO/NO-GO: ten items, each measured, never ticked by hand; GO only when
//! all ten count, a warning counting only when a named signer accepted it.

use std::fmt::Write as _;
use std::str::FromStr;

use serde::Serialize;
use spark_checks::{Outcome, Report, Status};

use crate::error::ReleaseError;

/// The ten items, in the order the seed lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ItemId {
    /// 1. The blind-spot scan found no failure.
    Scan,
    /// 2. The backup is fresh (WAL archiving works, point-in-time recovery
    ///    possible).
    Backup,
    /// 3. Every migration this build embeds is applied.
    Migrations,
    /// 4. A dry-run rollback record younger than the limit exists.
    RollbackRehearsed,
    /// 5. The canary plan is valid.
    CanaryPlan,
    /// 6. The SLO burn-rate alerts are loaded and not silenced.
    BurnRateAlerts,
    /// 7. A baseline metrics snapshot was taken.
    Baseline,
    /// 8. The SBOM and provenance exist and match the artifact.
    SupplyChain,
    /// 9. The feature flags are canary-safe.
    Flags,
    /// 10. Every required role signed off.
    SignOffs,
}

impl ItemId {
    /// Every item, in order.
    pub const ALL: [ItemId; 10] = [
        ItemId::Scan,
        ItemId::Backup,
        ItemId::Migrations,
        ItemId::RollbackRehearsed,
        ItemId::CanaryPlan,
        ItemId::BurnRateAlerts,
        ItemId::Baseline,
        ItemId::SupplyChain,
        ItemId::Flags,
        ItemId::SignOffs,
    ];

    /// The id `--accept-warning` names (`rollback-rehearsed`).
    #[must_use]
    pub fn id(self) -> &'static str {
        match self {
            ItemId::Scan => "scan",
            ItemId::Backup => "backup",
            ItemId::Migrations => "migrations",
            ItemId::RollbackRehearsed => "rollback-rehearsed",
            ItemId::CanaryPlan => "canary-plan",
            ItemId::BurnRateAlerts => "burn-rate-alerts",
            ItemId::Baseline => "baseline",
            ItemId::SupplyChain => "supply-chain",
            ItemId::Flags => "flags",
            ItemId::SignOffs => "sign-offs",
        }
    }

    /// What the item asks, in the seed's words.
    #[must_use]
    pub fn title(self) -> &'static str {
        match self {
            ItemId::Scan => "blind-spot scan with no failure",
            ItemId::Backup => "backup fresh (PITR)",
            ItemId::Migrations => "migrations applied",
            ItemId::RollbackRehearsed => "rollback rehearsed (dry-run record)",
            ItemId::CanaryPlan => "canary plan valid",
            ItemId::BurnRateAlerts => "burn-rate alerts loaded and unsilenced",
            ItemId::Baseline => "baseline metrics snapshot taken",
            ItemId::SupplyChain => "SBOM and provenance match the artifact",
            ItemId::Flags => "flags canary-safe",
            ItemId::SignOffs => "sign-offs for every required role",
        }
    }
}

impl FromStr for ItemId {
    type Err = ReleaseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ItemId::ALL.into_iter().find(|i| i.id() == s.trim()).ok_or_else(|| {
            let ids: Vec<&str> = ItemId::ALL.iter().map(|i| i.id()).collect();
            ReleaseError::SignOff(format!("{s:?} is not a GO/NO-GO item (one of {})", ids.join(", ")))
        })
    }
}

/// An item's measured state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemStatus {
    /// Measured and fine.
    Pass,
    /// Measured with a warning, or not measurable here: counts only when a
    /// signer accepts it.
    Warn,
    /// Measured and wrong: NO-GO whatever anyone signs.
    Fail,
}

/// A file an item's measurement is recorded in, with its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EvidenceRef {
    /// The file, as a path relative to where the command ran or a bundle
    /// file name.
    pub file: String,
    /// Its SHA-256, lower-case hex.
    pub sha256: String,
}

impl From<&spark_evidence::EvidenceFile> for EvidenceRef {
    fn from(f: &spark_evidence::EvidenceFile) -> Self {
        EvidenceRef { file: f.name.clone(), sha256: f.sha256.clone() }
    }
}

/// One item of the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    /// Which.
    pub id: ItemId,
    /// What it asks.
    pub title: &'static str,
    /// What was measured.
    pub status: ItemStatus,
    /// The measurement in one sentence.
    pub summary: String,
    /// The files it is recorded in.
    pub evidence: Vec<EvidenceRef>,
    /// Who accepted its warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted_by: Option<String>,
}

impl Item {
    fn new(id: ItemId, status: ItemStatus, summary: impl Into<String>) -> Item {
        Item { id, title: id.title(), status, summary: summary.into(), evidence: Vec::new(), accepted_by: None }
    }

    /// Whether the item counts towards GO: it passed, or its warning was
    /// accepted by a named signer.
    #[must_use]
    pub fn counts(&self) -> bool {
        self.status == ItemStatus::Pass || (self.status == ItemStatus::Warn && self.accepted_by.is_some())
    }
}

/// `--sign ROLE=NAME`: a person signing off for a role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignOff {
    /// The role, as configured.
    pub role: String,
    /// Who.
    pub name: String,
}

impl FromStr for SignOff {
    type Err = ReleaseError;

    /// ```
    /// let s: spark_release::SignOff = "CTO=Ayşe Yılmaz".parse().unwrap();
    /// assert_eq!((s.role.as_str(), s.name.as_str()), ("CTO", "Ayşe Yılmaz"));
    /// assert!("CTO".parse::<spark_release::SignOff>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((role, name)) if !role.trim().is_empty() && !name.trim().is_empty() => {
                Ok(SignOff { role: role.trim().to_owned(), name: name.trim().to_owned() })
            }
            _ => Err(ReleaseError::SignOff(format!("{s:?} is not ROLE=NAME (e.g. --sign \"CTO=Ayşe Yılmaz\")"))),
        }
    }
}

/// `--accept-warning ITEM=NAME`: a signer accepting one item's warning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Acceptance {
    /// The item.
    pub item: ItemId,
    /// Who accepts it; must also have signed off.
    pub name: String,
}

impl FromStr for Acceptance {
    type Err = ReleaseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((item, name)) if !name.trim().is_empty() => {
                Ok(Acceptance { item: item.parse()?, name: name.trim().to_owned() })
            }
            _ => Err(ReleaseError::SignOff(format!("{s:?} is not ITEM=NAME (e.g. --accept-warning backup=Ayşe)"))),
        }
    }
}

/// The newest dry-run rollback record found, or why none counts.
#[derive(Debug, Clone, PartialEq)]
pub enum Rehearsal {
    /// A record: its file, digest, age, and whether its bundle verified.
    Found {
        /// The record file.
        evidence: EvidenceRef,
        /// Its age in hours (from its decision time).
        age_hours: f64,
        /// Problems `spark evidence verify` found in its bundle (empty: intact
        /// or not sealed).
        bundle_problems: Vec<String>,
        /// Whether it was in a sealed bundle.
        sealed: bool,
    },
    /// No dry-run record in the directory.
    None {
        /// Where it was looked for.
        searched: String,
    },
}

/// The baseline metrics snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Baseline {
    /// Taken; the gate signals that had no data.
    Taken {
        /// Gate signals without a single sample.
        empty_signals: Vec<String>,
    },
    /// No Prometheus is configured.
    NotConfigured,
    /// The fetch failed.
    Failed(String),
}

/// Every measurement GO/NO-GO judges, with where each is recorded.
#[derive(Debug, Clone)]
pub struct Measurements {
    /// The blind-spot scan.
    pub scan: Report,
    /// Its evidence file.
    pub scan_evidence: Option<EvidenceRef>,
    /// The SBOM and provenance files.
    pub supply_chain_evidence: Vec<EvidenceRef>,
    /// Why the ritual could not write both the SBOM and the provenance of
    /// the artifact, when it could not: the supply-chain item then fails
    /// (a skipped check of files that were never written is not a warning
    /// anyone may accept). `None` outside a ritual.
    pub supply_chain_not_written: Option<String>,
    /// The rollback rehearsal.
    pub rehearsal: Rehearsal,
    /// The limit on its age, hours.
    pub rehearsal_max_age_hours: u64,
    /// The canary plan: valid, or why not.
    pub plan: Result<(), String>,
    /// Its evidence file.
    pub plan_evidence: Option<EvidenceRef>,
    /// The baseline snapshot.
    pub baseline: Baseline,
    /// Its evidence file.
    pub baseline_evidence: Option<EvidenceRef>,
}

/// The verdict and everything it rests on.
#[derive(Debug, Clone, Serialize)]
pub struct GoNoGo {
    /// The release.
    pub release: String,
    /// `GO` or `NO-GO`.
    pub verdict: &'static str,
    /// Items that count (passed, or warned and accepted), of 10.
    pub passed: usize,
    /// The ten items.
    pub items: Vec<Item>,
    /// Who signed off.
    pub signers: Vec<SignOff>,
    /// The roles that had to.
    pub required_roles: Vec<String>,
    /// When it was decided, RFC 3339.
    pub decided_at: String,
    /// Acceptances that changed nothing (of an item that passed or failed).
    pub notes: Vec<String>,
}

impl GoNoGo {
    /// Whether it is GO.
    #[must_use]
    pub fn is_go(&self) -> bool {
        self.verdict == "GO"
    }

    /// Why it is NO-GO: one line per item that does not count.
    #[must_use]
    pub fn reasons(&self) -> Vec<String> {
        self.items
            .iter()
            .filter(|i| !i.counts())
            .map(|i| match i.status {
                ItemStatus::Warn => {
                    format!("{}: warning not accepted ({}); --accept-warning {}=NAME", i.id.id(), i.summary, i.id.id())
                }
                _ => format!("{}: {}", i.id.id(), i.summary),
            })
            .collect()
    }

    /// The human-readable record, `go_nogo_signed_<release>.txt`.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "Spark GO/NO-GO for release {}", self.release);
        let _ = writeln!(t, "decided at: {}", self.decided_at);
        let _ = writeln!(t, "verdict:    {} ({}/10)", self.verdict, self.passed);
        let _ = writeln!(t);
        for (n, item) in self.items.iter().enumerate() {
            let mark = match (item.status, item.counts()) {
                (ItemStatus::Pass, _) => "PASS",
                (ItemStatus::Warn, true) => "WARN accepted",
                (ItemStatus::Warn, false) => "WARN",
                (ItemStatus::Fail, _) => "FAIL",
            };
            let _ = writeln!(t, "{:>2}. [{mark}] {}", n + 1, item.title);
            let _ = writeln!(t, "    {}", item.summary);
            if let Some(name) = &item.accepted_by {
                let _ = writeln!(t, "    warning accepted by {name}");
            }
            for e in &item.evidence {
                let _ = writeln!(t, "    evidence: {} sha256:{}", e.file, e.sha256);
            }
        }
        let _ = writeln!(t, "\nSign-offs (required: {})", self.required_roles.join(", "));
        if self.signers.is_empty() {
            let _ = writeln!(t, "  none");
        }
        for s in &self.signers {
            let _ = writeln!(t, "  {}: {} at {}", s.role, s.name, self.decided_at);
        }
        for note in &self.notes {
            let _ = writeln!(t, "note: {note}");
        }
        let reasons = self.reasons();
        if !reasons.is_empty() {
            let _ = writeln!(t, "\nWhy NO-GO:");
            for r in reasons {
                let _ = writeln!(t, "  - {r}");
            }
        }
        t
    }
}

/// A scan check's outcome as an item.
fn from_check(id: ItemId, outcome: Option<&Outcome>, check: &str) -> Item {
    match outcome {
        None => Item::new(id, ItemStatus::Warn, format!("not measured: the scan did not run the {check} check")),
        Some(o) => {
            let status = match o.status {
                Status::Pass => ItemStatus::Pass,
                Status::Fail => ItemStatus::Fail,
                Status::Warn | Status::Skip => ItemStatus::Warn,
            };
            let prefix = if o.status == Status::Skip { "not measured: " } else { "" };
            Item::new(id, status, format!("{prefix}{check}: {}", o.summary))
        }
    }
}

/// The scan as one item: failed checks, then warned or skipped ones.
fn scan_item(report: &Report) -> Item {
    let list = |status: Status| -> Vec<String> {
        report.checks.iter().filter(|c| c.status == status).map(|c| format!("{} ({})", c.id, c.summary)).collect()
    };
    let (failed, warned, skipped) = (list(Status::Fail), list(Status::Warn), list(Status::Skip));
    let total = report.checks.len();
    if !failed.is_empty() {
        Item::new(
            ItemId::Scan,
            ItemStatus::Fail,
            format!("{} of {total} checks failed: {}", failed.len(), failed.join("; ")),
        )
    } else if !warned.is_empty() || !skipped.is_empty() {
        let mut parts = Vec::new();
        if !warned.is_empty() {
            parts.push(format!("warned: {}", warned.join("; ")));
        }
        if !skipped.is_empty() {
            parts.push(format!("not measured: {}", skipped.join("; ")));
        }
        Item::new(ItemId::Scan, ItemStatus::Warn, format!("no failure in {total} checks; {}", parts.join("; ")))
    } else {
        Item::new(ItemId::Scan, ItemStatus::Pass, format!("all {total} checks passed"))
    }
}

/// Checks the sign-offs against the required roles and the acceptances
/// against the signers, and returns the sign-offs with each role spelled as
/// configured.
///
/// # Errors
/// [`ReleaseError::SignOff`] when a signer names a role that is not
/// required, a role is signed twice, or a warning is accepted by someone
/// who did not sign off: a typo must not pass as a signature.
pub fn validate_sign_offs(
    roles: &[String],
    signers: &[SignOff],
    acceptances: &[Acceptance],
) -> Result<Vec<SignOff>, ReleaseError> {
    let mut signed: Vec<SignOff> = Vec::new();
    for s in signers {
        let Some(role) = roles.iter().find(|r| r.eq_ignore_ascii_case(&s.role)) else {
            return Err(ReleaseError::SignOff(format!(
                "{:?} is not a required role (the roles are {}; [release] roles in spark.toml)",
                s.role,
                roles.join(", ")
            )));
        };
        if signed.iter().any(|x| x.role == *role) {
            return Err(ReleaseError::SignOff(format!("role {role:?} is signed twice")));
        }
        // Four eyes: each role is a different person.
        if let Some(other) = signed.iter().find(|x| x.name.trim().eq_ignore_ascii_case(s.name.trim())) {
            return Err(ReleaseError::SignOff(format!(
                "{} signs as {role} and as {} already: each required role needs its own person",
                s.name, other.role
            )));
        }
        signed.push(SignOff { role: role.clone(), name: s.name.clone() });
    }
    for a in acceptances {
        if !signed.iter().any(|s| s.name == a.name) {
            return Err(ReleaseError::SignOff(format!(
                "{} accepts the {} warning but did not sign off: add --sign ROLE={}",
                a.name,
                a.item.id(),
                a.name
            )));
        }
    }

    Ok(signed)
}

/// Judges the measurements, the sign-offs and the accepted warnings.
///
/// # Errors
/// [`ReleaseError::SignOff`] when a signer names a role that is not
/// required, a role is signed twice, or a warning is accepted by someone
/// who did not sign off: a typo must not pass as a signature.
pub fn decide(
    release: &str,
    m: &Measurements,
    roles: &[String],
    signers: &[SignOff],
    acceptances: &[Acceptance],
    decided_at_ms: i64,
) -> Result<GoNoGo, ReleaseError> {
    crate::error::check_release_name(release)?;
    let signed = validate_sign_offs(roles, signers, acceptances)?;

    let mut items = Vec::with_capacity(10);
    let mut scan = scan_item(&m.scan);
    scan.evidence.extend(m.scan_evidence.clone());
    items.push(scan);
    for (id, check) in [(ItemId::Backup, "backup"), (ItemId::Migrations, "migrations")] {
        let mut item = from_check(id, m.scan.check(check), check);
        item.evidence.extend(m.scan_evidence.clone());
        items.push(item);
    }
    items.push(rehearsal_item(&m.rehearsal, m.rehearsal_max_age_hours));
    let mut plan = match &m.plan {
        Ok(()) => Item::new(ItemId::CanaryPlan, ItemStatus::Pass, "the plan parses and validates"),
        Err(e) => Item::new(ItemId::CanaryPlan, ItemStatus::Fail, format!("the plan is invalid: {e}")),
    };
    plan.evidence.extend(m.plan_evidence.clone());
    items.push(plan);
    let mut alerts = from_check(ItemId::BurnRateAlerts, m.scan.check("slo-alerts"), "slo-alerts");
    alerts.evidence.extend(m.scan_evidence.clone());
    items.push(alerts);
    let mut baseline = match &m.baseline {
        Baseline::Taken { empty_signals } if empty_signals.is_empty() => {
            Item::new(ItemId::Baseline, ItemStatus::Pass, "taken; every gate signal has data")
        }
        Baseline::Taken { empty_signals } => Item::new(
            ItemId::Baseline,
            ItemStatus::Warn,
            format!("taken, but these gate signals have no data: {}", empty_signals.join(", ")),
        ),
        Baseline::NotConfigured => Item::new(
            ItemId::Baseline,
            ItemStatus::Warn,
            "not measured: no Prometheus configured ([prometheus] url in spark.toml)",
        ),
        Baseline::Failed(e) => Item::new(ItemId::Baseline, ItemStatus::Fail, format!("the snapshot failed: {e}")),
    };
    baseline.evidence.extend(m.baseline_evidence.clone());
    items.push(baseline);
    let mut supply = match &m.supply_chain_not_written {
        Some(why) => Item::new(ItemId::SupplyChain, ItemStatus::Fail, why.clone()),
        None => from_check(ItemId::SupplyChain, m.scan.check("supply-chain"), "supply-chain"),
    };
    supply.evidence.extend(m.supply_chain_evidence.iter().cloned());
    items.push(supply);
    let mut flags = from_check(ItemId::Flags, m.scan.check("flags"), "flags");
    flags.evidence.extend(m.scan_evidence.clone());
    items.push(flags);
    let missing: Vec<&String> = roles.iter().filter(|r| !signed.iter().any(|s| s.role == **r)).collect();
    items.push(if roles.is_empty() {
        Item::new(ItemId::SignOffs, ItemStatus::Fail, "no roles are configured: [release] roles in spark.toml")
    } else if missing.is_empty() {
        Item::new(ItemId::SignOffs, ItemStatus::Pass, format!("all {} roles signed", roles.len()))
    } else {
        let missing: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        Item::new(ItemId::SignOffs, ItemStatus::Fail, format!("not signed: {} (--sign ROLE=NAME)", missing.join(", ")))
    });

    let mut notes = Vec::new();
    for a in acceptances {
        let item = items.iter_mut().find(|i| i.id == a.item).expect("every id has an item");
        match item.status {
            ItemStatus::Warn => match &item.accepted_by {
                None => item.accepted_by = Some(a.name.clone()),
                Some(first) => notes.push(format!("{} warning already accepted by {first}", a.item.id())),
            },
            ItemStatus::Pass => notes.push(format!("{} passed: {}'s acceptance was not needed", a.item.id(), a.name)),
            ItemStatus::Fail => {
                notes.push(format!("{} failed: a failure cannot be accepted ({} tried)", a.item.id(), a.name));
            }
        }
    }
    let passed = items.iter().filter(|i| i.counts()).count();
    Ok(GoNoGo {
        release: release.to_owned(),
        verdict: if passed == items.len() { "GO" } else { "NO-GO" },
        passed,
        items,
        signers: signed,
        required_roles: roles.to_vec(),
        decided_at: crate::rfc3339(decided_at_ms),
        notes,
    })
}

fn rehearsal_item(r: &Rehearsal, max_age_hours: u64) -> Item {
    match r {
        Rehearsal::None { searched } => Item::new(
            ItemId::RollbackRehearsed,
            ItemStatus::Fail,
            format!("no dry-run rollback record in {searched}: run spark rollback --dry-run --evidence-dir {searched}"),
        ),
        Rehearsal::Found { evidence, age_hours, bundle_problems, sealed } => {
            #[allow(clippy::cast_precision_loss, reason = "an age limit in hours is far below 2^52")]
            let limit = max_age_hours as f64;
            let mut item = if !bundle_problems.is_empty() {
                Item::new(
                    ItemId::RollbackRehearsed,
                    ItemStatus::Fail,
                    format!("the rehearsal's bundle does not verify: {}", bundle_problems.join("; ")),
                )
            } else if *age_hours > limit {
                Item::new(
                    ItemId::RollbackRehearsed,
                    ItemStatus::Fail,
                    format!(
                        "the newest dry-run rollback is {age_hours:.1} h old (limit {max_age_hours} h): rehearse again"
                    ),
                )
            } else if *age_hours < -0.1 {
                Item::new(
                    ItemId::RollbackRehearsed,
                    ItemStatus::Fail,
                    format!("the newest dry-run rollback is dated {:.1} h in the future: check the clocks", -age_hours),
                )
            } else if !*sealed {
                // Anyone can write a JSON file: only a sealed bundle shows
                // that the record is what spark rollback wrote.
                Item::new(
                    ItemId::RollbackRehearsed,
                    ItemStatus::Warn,
                    format!(
                        "dry-run rollback {age_hours:.1} h ago, but its record is not sealed (a record of an older spark?): rehearse again with spark rollback --dry-run"
                    ),
                )
            } else {
                Item::new(
                    ItemId::RollbackRehearsed,
                    ItemStatus::Pass,
                    format!("dry-run rollback {age_hours:.1} h ago (limit {max_age_hours} h), its bundle intact"),
                )
            };
            item.evidence.push(evidence.clone());
            item
        }
    }
}
