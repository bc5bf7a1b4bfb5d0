//! The green-button ritual: every pre-deployment measurement in one run,
//! written as the seed's seven evidence files and sealed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use spark_checks::provenance::{self, ProvenanceOptions};
use spark_checks::{Context, Report, sbom};
use spark_db::{Migrations, SharedClock};
use spark_evidence::{EvidenceDir, EvidenceFile, SigningKey};
use spark_rollback::{MetricSource, Plan, PrometheusSource, Range, Signal, Snapshot};

use crate::config::Settings;
use crate::error::{ReleaseError, check_release_name};
use crate::go_nogo::{Acceptance, Baseline, EvidenceRef, GoNoGo, Measurements, SignOff, decide, validate_sign_offs};
use crate::rehearsal::find_rehearsal;
use crate::rfc3339;

/// The seven files of a ritual bundle for `release`, in the seed's order
/// (`manifest.json` seals them).
#[must_use]
pub fn bundle_files(release: &str) -> [String; 7] {
    [
        "release_tag.txt".to_owned(),
        format!("sbom_{release}.json"),
        format!("build_provenance_{release}.json"),
        format!("go_nogo_signed_{release}.txt"),
        format!("blind_spots_scan_{release}.txt"),
        format!("baseline_metrics_{release}.txt"),
        format!("canary_plan_{release}.txt"),
    ]
}

/// A step of the ritual, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// `release_tag.txt`: release, commit, artifact digest, time.
    ReleaseTag,
    /// The CycloneDX SBOM.
    Sbom,
    /// The SLSA provenance.
    Provenance,
    /// The blind-spot scan.
    Scan,
    /// The baseline metrics snapshot.
    Baseline,
    /// The canary plan.
    CanaryPlan,
    /// GO/NO-GO.
    GoNoGo,
    /// `manifest.json`.
    Seal,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 8] = [
        Step::ReleaseTag,
        Step::Sbom,
        Step::Provenance,
        Step::Scan,
        Step::Baseline,
        Step::CanaryPlan,
        Step::GoNoGo,
        Step::Seal,
    ];

    /// A short name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Step::ReleaseTag => "release tag",
            Step::Sbom => "SBOM",
            Step::Provenance => "provenance",
            Step::Scan => "blind-spot scan",
            Step::Baseline => "baseline metrics",
            Step::CanaryPlan => "canary plan",
            Step::GoNoGo => "GO/NO-GO",
            Step::Seal => "seal",
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    /// It did its work.
    Done,
    /// It could not be done here (said why); GO/NO-GO judges the gap.
    Skipped,
    /// It failed (said why); GO/NO-GO judges the failure.
    Failed,
}

/// One step's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepOutcome {
    /// Which.
    pub step: Step,
    /// How it ended.
    pub status: StepStatus,
    /// What it found or why it could not.
    pub detail: String,
    /// The file it wrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<EvidenceRef>,
    /// How long it took.
    pub millis: u64,
}

/// Told about each step as the ritual runs (the CLI draws a progress bar;
/// steps may run concurrently, so `started` can come twice in a row).
pub trait Progress: Send + Sync {
    /// A step started.
    fn started(&self, step: Step);
    /// A step ended.
    fn finished(&self, outcome: &StepOutcome);
}

/// No progress display.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn started(&self, _step: Step) {}
    fn finished(&self, _outcome: &StepOutcome) {}
}

/// What a ritual is told.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RitualOptions {
    /// The release (names the files).
    pub release: String,
    /// `spark.toml`.
    pub settings: Settings,
    /// The bundle directory; it must not hold a bundle already.
    pub evidence_dir: PathBuf,
    /// The artifact being released (default: `supply_chain.artifact`).
    pub artifact: Option<PathBuf>,
    /// Signs `manifest.json` when given.
    pub sign_key: Option<SigningKey>,
    /// The sign-offs.
    pub signers: Vec<SignOff>,
    /// Accepted warnings.
    pub acceptances: Vec<Acceptance>,
    /// The migrations the build embeds (for the `migrations` check).
    pub migrations: Vec<Migrations>,
    /// Where time comes from.
    pub clock: SharedClock,
}

impl RitualOptions {
    /// A ritual for `release` with `settings`, into `evidence_dir`, on the
    /// system clock, unsigned, with no sign-offs.
    #[must_use]
    pub fn new(release: impl Into<String>, settings: Settings, evidence_dir: impl Into<PathBuf>) -> RitualOptions {
        RitualOptions {
            release: release.into(),
            settings,
            evidence_dir: evidence_dir.into(),
            artifact: None,
            sign_key: None,
            signers: Vec::new(),
            acceptances: Vec::new(),
            migrations: Vec::new(),
            clock: spark_db::system_clock(),
        }
    }
}

/// What a ritual did.
#[derive(Debug, Clone, Serialize)]
pub struct RitualReport {
    /// The release.
    pub release: String,
    /// The bundle.
    pub dir: PathBuf,
    /// Every step, in order.
    pub steps: Vec<StepOutcome>,
    /// The verdict.
    pub go_nogo: GoNoGo,
    /// Every file written, the manifest last.
    pub files: Vec<EvidenceFile>,
    /// Whether the manifest is signed.
    pub signed: bool,
    /// How long the whole ritual took.
    pub millis: u64,
}

impl RitualReport {
    /// The summary table printed at the end.
    #[must_use]
    pub fn table(&self) -> String {
        let mut t = format!("{:<18} {:<8} {:>7}  {}\n", "step", "status", "ms", "detail");
        for s in &self.steps {
            let status = match s.status {
                StepStatus::Done => "done",
                StepStatus::Skipped => "skipped",
                StepStatus::Failed => "FAILED",
            };
            let _ = writeln!(t, "{:<18} {:<8} {:>7}  {}", s.step.name(), status, s.millis, s.detail);
        }
        let _ = writeln!(
            t,
            "\n{} ({}/10) for {} in {:.2} s; bundle {} ({} files, {})",
            self.go_nogo.verdict,
            self.go_nogo.passed,
            self.release,
            Duration::from_millis(self.millis).as_secs_f64(),
            self.dir.display(),
            self.files.len(),
            if self.signed { "signed" } else { "unsigned" }
        );
        for r in self.go_nogo.reasons() {
            let _ = writeln!(t, "  NO-GO: {r}");
        }
        t
    }
}

/// Times a step and tells `progress`.
struct Timer<'a> {
    progress: &'a dyn Progress,
    step: Step,
    start: Instant,
}

impl<'a> Timer<'a> {
    fn start(progress: &'a dyn Progress, step: Step) -> Timer<'a> {
        progress.started(step);
        Timer { progress, step, start: Instant::now() }
    }

    fn end(self, status: StepStatus, detail: impl Into<String>, file: Option<&EvidenceFile>) -> StepOutcome {
        let took = self.start.elapsed();
        self.end_after(took, status, detail, file)
    }

    /// Ends a step that ran beside another, with its own duration.
    fn end_after(
        self,
        took: std::time::Duration,
        status: StepStatus,
        detail: impl Into<String>,
        file: Option<&EvidenceFile>,
    ) -> StepOutcome {
        let outcome = StepOutcome {
            step: self.step,
            status,
            detail: detail.into(),
            file: file.map(EvidenceRef::from),
            millis: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        };
        self.progress.finished(&outcome);
        outcome
    }
}

/// Awaits `future` and says how long it took.
async fn timed<F: std::future::Future>(future: F) -> (F::Output, std::time::Duration) {
    let start = Instant::now();
    let value = future.await;
    (value, start.elapsed())
}

/// The directory a workspace manifest is in (`.` for a bare file name).
fn manifest_dir(manifest: &Path) -> PathBuf {
    match manifest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Runs the ritual: release tag, SBOM, provenance, then the scan (which
/// verifies that SBOM and provenance against the artifact) beside the
/// baseline snapshot, the canary plan, GO/NO-GO, and the seal. A step that
/// cannot be done is recorded and judged by GO/NO-GO; the ritual itself
/// fails only when the bundle cannot be written.
///
/// # Errors
/// [`ReleaseError::ReleaseName`], [`ReleaseError::SignOff`] (checked before
/// anything runs), [`ReleaseError::BundleExists`], and
/// [`ReleaseError::Evidence`] when a file cannot be written.
pub async fn run_ritual(options: RitualOptions, progress: &dyn Progress) -> Result<RitualReport, ReleaseError> {
    run(options, progress, Mode::Ritual).await
}

/// GO/NO-GO on its own: the scan (verifying the SBOM and provenance that
/// `spark.toml` names), the baseline snapshot, the canary plan and the
/// rehearsal, judged with the sign-offs; writes
/// `blind_spots_scan_<release>.txt`, `baseline_metrics_<release>.txt`,
/// `canary_plan_<release>.txt`, `go_nogo_signed_<release>.txt` and
/// `go_nogo_signed_<release>.json` into the evidence directory, and seals
/// nothing (the ritual does).
///
/// # Errors
/// As [`run_ritual`].
pub async fn run_go_nogo(options: RitualOptions, progress: &dyn Progress) -> Result<RitualReport, ReleaseError> {
    run(options, progress, Mode::GoNoGo).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ritual,
    GoNoGo,
}

async fn run(options: RitualOptions, progress: &dyn Progress, mode: Mode) -> Result<RitualReport, ReleaseError> {
    let started = Instant::now();
    let release = options.release.as_str();
    check_release_name(release)?;
    let settings = &options.settings;
    let roles = &settings.release.roles;
    // Sign-offs are checked before anything runs: a typo costs nothing.
    validate_sign_offs(roles, &options.signers, &options.acceptances)?;
    let names = bundle_files(release);
    if options.evidence_dir.join(spark_evidence::MANIFEST).exists() {
        return Err(ReleaseError::BundleExists(options.evidence_dir.clone()));
    }
    // Everything in the directory is sealed (ritual) or read as this
    // release's (go-nogo): it must start empty, so that nothing but what was
    // measured here is in it, and nothing is half-written on a clash.
    if let Ok(entries) = std::fs::read_dir(&options.evidence_dir) {
        let mut present: Vec<String> =
            entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        if !present.is_empty() {
            present.sort();
            let shown =
                if present.len() > 3 { format!("{}, …", present[..3].join(", ")) } else { present.join(", ") };
            return Err(ReleaseError::DirNotEmpty { dir: options.evidence_dir.clone(), present: shown });
        }
    }
    let dir = EvidenceDir::create(&options.evidence_dir)?;
    let [tag_name, sbom_name, provenance_name, go_name, scan_name, baseline_name, plan_name] = &names;
    let clock = &options.clock;
    let mut steps = Vec::new();
    let mut files = Vec::new();
    let workspace = &settings.release.workspace;
    let artifact = options.artifact.clone().or_else(|| settings.checks.supply_chain.artifact.clone());

    let mut sbom_file = None;
    let mut provenance_file = None;
    let mut supply_chain_not_written = None;
    let mut supply_chain_evidence = Vec::new();
    if mode == Mode::GoNoGo {
        // The files spark.toml names, as they are: the scan verifies them.
        for path in [&settings.checks.supply_chain.sbom, &settings.checks.supply_chain.provenance].into_iter().flatten()
        {
            if let Ok(bytes) = std::fs::read(path) {
                supply_chain_evidence
                    .push(EvidenceRef { file: path.display().to_string(), sha256: spark_evidence::sha256_hex(&bytes) });
            }
        }
    } else {
        // 1. The release tag.
        let timer = Timer::start(progress, Step::ReleaseTag);
        let commit = provenance::git_revision(&manifest_dir(workspace));
        let digest = artifact.as_deref().map(provenance::sha256_file);
        let mut tag = format!("release:         {release}\n");
        let _ = writeln!(
            tag,
            "git commit:      {}",
            commit.as_ref().map_or_else(|e| format!("unknown ({})", crate::chain(e)), Clone::clone)
        );
        match (&artifact, &digest) {
            (Some(path), Some(Ok(sha))) => {
                let _ = writeln!(tag, "artifact:        {}\nartifact sha256: {sha}", path.display());
            }
            (Some(path), Some(Err(e))) => {
                let _ = writeln!(
                    tag,
                    "artifact:        {}\nartifact sha256: unreadable ({})",
                    path.display(),
                    crate::chain(e)
                );
            }
            _ => {
                let _ = writeln!(tag, "artifact:        none given (--artifact or supply_chain.artifact)");
            }
        }
        let _ = writeln!(tag, "time:            {}", rfc3339(clock.now_ms()));
        let file = dir.write(tag_name, tag.as_bytes())?;
        let (status, detail) = match (&digest, &commit) {
            (Some(Ok(sha)), Ok(c)) => {
                (StepStatus::Done, format!("commit {}, artifact sha256 {}", short(c), short(sha)))
            }
            (Some(Ok(sha)), Err(_)) => {
                (StepStatus::Skipped, format!("no git commit here; artifact sha256 {}", short(sha)))
            }
            (Some(Err(e)), _) => (StepStatus::Failed, format!("artifact unreadable: {}", crate::chain(e))),
            (None, _) => (StepStatus::Skipped, "no artifact given".to_owned()),
        };
        steps.push(timer.end(status, detail, Some(&file)));
        files.push(file);

        // 2. The SBOM (cargo metadata runs a process: off the runtime's threads).
        let timer = Timer::start(progress, Step::Sbom);
        sbom_file = if workspace.is_file() {
            let manifest = workspace.clone();
            let generated = tokio::task::spawn_blocking(move || sbom::generate(&manifest)).await.unwrap_or_else(|e| {
                Err(spark_checks::ChecksError::Sbom { message: format!("the SBOM task failed: {e}") })
            });
            match generated {
                Ok(text) => {
                    let file = dir.write(sbom_name, text.as_bytes())?;
                    let components = serde_json::from_str::<serde_json::Value>(&text)
                        .ok()
                        .and_then(|v| v["components"].as_array().map(Vec::len))
                        .unwrap_or(0);
                    steps.push(timer.end(
                        StepStatus::Done,
                        format!("CycloneDX 1.5, {components} components"),
                        Some(&file),
                    ));
                    Some(file)
                }
                Err(e) => {
                    steps.push(timer.end(StepStatus::Failed, crate::chain(&e), None));
                    None
                }
            }
        } else {
            steps.push(timer.end(
                StepStatus::Skipped,
                format!("no Cargo workspace at {} ([release] workspace)", workspace.display()),
                None,
            ));
            None
        };
        files.extend(sbom_file.clone());

        // 3. The provenance.
        let timer = Timer::start(progress, Step::Provenance);
        provenance_file = match (&artifact, &digest) {
            (Some(path), Some(Ok(_))) => {
                let mut p = ProvenanceOptions::new(path);
                p.builder_id.clone_from(&settings.release.builder_id);
                p.source_dir = manifest_dir(workspace);
                if let Err(e) = &commit {
                    // Outside a git checkout the statement still names the
                    // artifact; its source is recorded as unknown.
                    tracing::debug!(error = %e, "no git revision for the provenance");
                    p.source_revision = Some("unknown".to_owned());
                }
                p.parameters.insert("release".to_owned(), release.to_owned());
                match provenance::generate(&p) {
                    Ok(statement) => {
                        let bytes = serde_json::to_vec_pretty(&statement).unwrap_or_default();
                        let file = dir.write(provenance_name, &bytes)?;
                        steps.push(timer.end(
                            StepStatus::Done,
                            "in-toto Statement v1, SLSA provenance v1",
                            Some(&file),
                        ));
                        Some(file)
                    }
                    Err(e) => {
                        steps.push(timer.end(StepStatus::Failed, crate::chain(&e), None));
                        None
                    }
                }
            }
            _ => {
                steps.push(timer.end(StepStatus::Skipped, "no readable artifact to attest", None));
                None
            }
        };
        files.extend(provenance_file.clone());
        supply_chain_evidence = sbom_file.iter().chain(provenance_file.iter()).map(EvidenceRef::from).collect();
        if sbom_file.is_none() || provenance_file.is_none() {
            let why: Vec<String> = steps
                .iter()
                .filter(|s| matches!(s.step, Step::Sbom | Step::Provenance) && s.status != StepStatus::Done)
                .map(|s| format!("{}: {}", s.step.name(), s.detail))
                .collect();
            supply_chain_not_written = Some(format!(
                "the ritual could not write the SBOM and provenance of the artifact ({})",
                why.join("; ")
            ));
        }
    }

    // 4 and 5. The scan, and beside it the baseline snapshot.
    let plan_result = match &settings.release.plan {
        Some(path) => Plan::load(path).map_err(|e| crate::chain(&e)),
        None => Ok(Plan::default()),
    };
    let plan_for_queries = plan_result.clone().unwrap_or_default();
    let mut config = settings.checks.clone();
    if mode == Mode::Ritual {
        // The scan verifies the SBOM and provenance just written.
        config.supply_chain.sbom = sbom_file.as_ref().map(|f| f.path.clone());
        config.supply_chain.provenance = provenance_file.as_ref().map(|f| f.path.clone());
        config.supply_chain.artifact.clone_from(&artifact);
        if config.supply_chain.lockfile.is_relative() {
            config.supply_chain.lockfile = manifest_dir(workspace).join(&config.supply_chain.lockfile);
        }
    }
    // Every check, whatever `[check] only` says: GO rests on the whole scan,
    // and a check left out would be a blind spot counted as passed.
    let checks = spark_checks::checks::all();
    let ctx = Arc::new(Context::new(config).with_migrations(&options.migrations).with_clock(options.clock.clone()));
    let scan_timer = Timer::start(progress, Step::Scan);
    let baseline_timer = Timer::start(progress, Step::Baseline);
    let now = clock.now_ms();
    // Each step's own duration, not the slower one's.
    let ((report, scan_took), (baseline, baseline_took)) =
        tokio::join!(timed(spark_checks::scan(&ctx, checks)), timed(baseline(settings, &plan_for_queries, now)));
    let scan_file = dir.write(scan_name, report.evidence_text().as_bytes())?;
    steps.push(scan_timer.end_after(scan_took, scan_status(&report), scan_detail(&report), Some(&scan_file)));
    let (baseline_state, baseline_text) = baseline;
    let baseline_file = dir.write(baseline_name, baseline_text.as_bytes())?;
    let (status, detail) = match &baseline_state {
        Baseline::Taken { empty_signals } if empty_signals.is_empty() => {
            (StepStatus::Done, "every gate signal has data".to_owned())
        }
        Baseline::Taken { empty_signals } => (StepStatus::Done, format!("no data for {}", empty_signals.join(", "))),
        Baseline::NotConfigured => (StepStatus::Skipped, "no Prometheus configured".to_owned()),
        Baseline::Failed(e) => (StepStatus::Failed, e.clone()),
    };
    steps.push(baseline_timer.end_after(baseline_took, status, detail, Some(&baseline_file)));
    files.push(scan_file.clone());
    files.push(baseline_file.clone());

    // 6. The canary plan.
    let timer = Timer::start(progress, Step::CanaryPlan);
    let plan_text = match &plan_result {
        Ok(plan) => format!(
            "Canary plan for {release} ({})\n\n{}\n\nThe plan as TOML (spark canary plan --toml):\n\n{}",
            settings.release.plan.as_ref().map_or_else(|| "the built-in plan".to_owned(), |p| p.display().to_string()),
            plan.to_text(),
            plan.to_toml()
        ),
        Err(e) => format!("Canary plan for {release}: INVALID\n\n{e}\n"),
    };
    let plan_file = dir.write(plan_name, plan_text.as_bytes())?;
    let (status, detail) = match &plan_result {
        Ok(plan) => (
            StepStatus::Done,
            format!("{} stages, every {}", plan.stages.len(), humantime::format_duration(plan.interval)),
        ),
        Err(e) => (StepStatus::Failed, e.clone()),
    };
    steps.push(timer.end(status, detail, Some(&plan_file)));
    files.push(plan_file.clone());

    // 7. GO/NO-GO.
    let timer = Timer::start(progress, Step::GoNoGo);
    let decided_at = clock.now_ms();
    let measurements = Measurements {
        scan: report,
        scan_evidence: Some(EvidenceRef::from(&scan_file)),
        supply_chain_evidence,
        rehearsal: find_rehearsal(&settings.release.rollback_dir, decided_at),
        rehearsal_max_age_hours: settings.release.rollback_max_age_hours,
        plan: plan_result.map(drop),
        plan_evidence: Some(EvidenceRef::from(&plan_file)),
        baseline: baseline_state,
        baseline_evidence: Some(EvidenceRef::from(&baseline_file)),
        supply_chain_not_written,
    };
    let verdict = decide(release, &measurements, roles, &options.signers, &options.acceptances, decided_at)?;
    let file = dir.write(go_name, verdict.to_text().as_bytes())?;
    let status = if verdict.is_go() { StepStatus::Done } else { StepStatus::Failed };
    steps.push(timer.end(status, format!("{} ({}/10)", verdict.verdict, verdict.passed), Some(&file)));
    files.push(file);
    if mode == Mode::GoNoGo {
        // The ritual's bundle keeps exactly the seed's seven files; on its
        // own, GO/NO-GO also leaves its JSON.
        let json = serde_json::to_string_pretty(&verdict).unwrap_or_default() + "\n";
        files.push(dir.write(&format!("go_nogo_signed_{release}.json"), json.as_bytes())?);
        return Ok(RitualReport {
            release: release.to_owned(),
            dir: dir.path().to_owned(),
            steps,
            go_nogo: verdict,
            files,
            signed: false,
            millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
    }

    // 8. The seal.
    let timer = Timer::start(progress, Step::Seal);
    let manifest = spark_evidence::seal(dir.path(), options.sign_key.as_ref(), clock.now_ms())?;
    let detail = match &options.sign_key {
        Some(key) => format!("signed, key {}", short(&spark_evidence::keys::key_id(&key.verifying_key()))),
        None => "unsigned (no --sign-key)".to_owned(),
    };
    steps.push(timer.end(StepStatus::Done, detail, Some(&manifest)));
    files.push(manifest);
    Ok(RitualReport {
        release: release.to_owned(),
        dir: dir.path().to_owned(),
        steps,
        go_nogo: verdict,
        files,
        signed: options.sign_key.is_some(),
        millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

fn short(s: &str) -> &str {
    s.get(..12).unwrap_or(s)
}

fn scan_status(report: &Report) -> StepStatus {
    if report.status == spark_checks::Status::Fail { StepStatus::Failed } else { StepStatus::Done }
}

fn scan_detail(report: &Report) -> String {
    let count = |s: spark_checks::Status| report.checks.iter().filter(|c| c.status == s).count();
    format!(
        "{} pass, {} warn, {} fail, {} skip",
        count(spark_checks::Status::Pass),
        count(spark_checks::Status::Warn),
        count(spark_checks::Status::Fail),
        count(spark_checks::Status::Skip)
    )
}

/// The six gate signals: the baseline must have data for each.
const GATE_SIGNALS: [Signal; 6] = [
    Signal::ApiLatencyP95Seconds,
    Signal::Http5xxRatio,
    Signal::WsStalenessSeconds,
    Signal::RiskBlocksPerMinute,
    Signal::IdempotencyConflictRatio,
    Signal::CspViolationsPerMinute,
];

/// Takes the baseline snapshot from `[prometheus] url` over the configured
/// window, and renders `baseline_metrics_<release>.txt`.
async fn baseline(settings: &Settings, plan: &Plan, now_ms: i64) -> (Baseline, String) {
    let minutes = settings.release.baseline_minutes;
    let step = settings.release.baseline_step_seconds;
    let Some(url) = &settings.checks.prometheus.url else {
        let text = "Baseline metrics: NOT TAKEN\n\nNo Prometheus is configured ([prometheus] url in spark.toml or \
                    SPARK_PROMETHEUS_URL), so no baseline was recorded.\n";
        return (Baseline::NotConfigured, text.to_owned());
    };
    let range = Range {
        start_ms: now_ms - i64::try_from(minutes).unwrap_or(60).saturating_mul(60_000),
        end_ms: now_ms,
        step_seconds: step,
    };
    let header = format!(
        "Baseline metrics\n\nsource: {}\nrange:  {} to {}, step {step}s\n",
        spark_db::redact_url(url),
        rfc3339(range.start_ms),
        rfc3339(range.end_ms)
    );
    let fetched = match PrometheusSource::new(url) {
        Ok(source) => source.fetch(plan, range).await,
        Err(e) => Err(e),
    };
    match fetched {
        Err(e) => {
            let e = crate::chain(&e);
            (Baseline::Failed(e.clone()), format!("{header}\nThe snapshot FAILED: {e}\n"))
        }
        Ok(snapshot) => {
            let empty_signals = empty_gate_signals(&snapshot);
            let text = format!(
                "{header}\nThe latest value of each signal (missing data is shown as missing, never as zero):\n\n{}\n\
                 The snapshot ({}), replayable with spark canary replay:\n\n{}\n",
                snapshot.summary(),
                spark_rollback::FORMAT,
                snapshot.to_json()
            );
            (Baseline::Taken { empty_signals }, text)
        }
    }
}

fn empty_gate_signals(snapshot: &Snapshot) -> Vec<String> {
    GATE_SIGNALS
        .iter()
        .filter(|s| {
            !snapshot.signals.get(s.name()).is_some_and(|m| m.result.iter().any(|series| !series.values.is_empty()))
        })
        .map(|s| s.name().to_owned())
        .collect()
}
