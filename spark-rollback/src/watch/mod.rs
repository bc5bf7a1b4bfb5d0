//! `spark watch`: the first night after a release reached 100 % (see
//! [`watch`]).

mod baseline;
mod journal;
mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spark_evidence::{EvidenceDir, Redactor};

pub use self::baseline::{BaselineRef, GoBaseline};
use self::journal::Journal;
pub use self::journal::{
    FileRef, Firing, IntervalRecord, JOURNAL_FORMAT, JournalLine, RollbackRef, RollbackStarted, Sent, WatchStart,
};
use crate::engine::{Engine, rfc3339};
use crate::error::{RollbackError, chain};
use crate::live::lookback;
use crate::notify::{self, Notification, NotifyOutcome};
use crate::plan::Plan;
use crate::rollback::{RollbackEnv, RollbackRequest};
use crate::scope::{Scope, ms};
use crate::signal::{Role, Signal};
use crate::snapshot::Metrics;
use crate::source::{MetricSource, Range};
use crate::trigger::TriggerStatus;

/// A quick check's verdict, best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Measured and within bounds.
    Pass,
    /// Not configured.
    Skip,
    /// Worth a look.
    Warn,
    /// Out of bounds, or could not be measured.
    Fail,
}

impl CheckStatus {
    /// `pass`, `skip`, `warn` or `fail`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            CheckStatus::Pass => "pass",
            CheckStatus::Skip => "skip",
            CheckStatus::Warn => "warn",
            CheckStatus::Fail => "fail",
        }
    }
}

/// One quick check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The check's id (`clock`, `pgbouncer`, `backup`).
    pub id: String,
    /// Its verdict.
    pub status: CheckStatus,
    /// One line.
    pub summary: String,
}

/// The quick checks a watch runs at every interval. This crate does not
/// run checks itself: `spark-checks` does, and the caller adapts it (the
/// `spark` CLI runs its clock, pgbouncer and backup checks).
#[async_trait::async_trait]
pub trait QuickChecks: Send + Sync {
    /// Runs every check once, now.
    async fn run(&self) -> Vec<CheckResult>;
}

/// What a watch reads from and writes to: the engine (plan and triggers),
/// the metric source, the quick checks, the environment (clock, secrets,
/// HTTP client, Slack retries, the rollback's metrics and signing key) and
/// the evidence directory.
#[derive(Clone, Copy)]
pub struct WatchContext<'a> {
    /// The engine whose triggers judge the release.
    pub engine: &'a Engine,
    /// Where the release's metrics come from.
    pub source: &'a dyn MetricSource,
    /// The quick checks run at every live interval.
    pub checks: Option<&'a dyn QuickChecks>,
    /// Clock, environment, HTTP client.
    pub env: &'a RollbackEnv,
    /// Where the journal, the report, snapshots and rollbacks go.
    pub evidence: &'a EvidenceDir,
}

/// The longest watch: a month (a longer one is a monitoring system, and
/// the instants stay far from overflowing).
pub const MAX_DURATION: Duration = Duration::from_secs(31 * 24 * 3600);

/// What to watch, how long, how often, and what to do when a trigger fires.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    release: String,
    duration: Duration,
    interval: Duration,
    step_seconds: u32,
    baseline: Option<GoBaseline>,
    slack_env: Option<String>,
    rollback: bool,
}

impl WatchOptions {
    /// Watch `release` for `duration`, evaluating every `interval`; the
    /// query step is the largest divisor of the interval up to 15 s, no
    /// baseline, no Slack, no rollback.
    ///
    /// ```
    /// use std::time::Duration;
    /// use spark_rollback::WatchOptions;
    ///
    /// let o = WatchOptions::new("v1.4.2", Duration::from_secs(20), Duration::from_secs(2))?;
    /// assert_eq!(o.report_name(), "first_night_v1.4.2.md");
    /// assert!(WatchOptions::new("v1.4.2", Duration::from_secs(1), Duration::from_secs(2)).is_err());
    /// assert!(WatchOptions::new("../v1", Duration::from_secs(20), Duration::from_secs(2)).is_err());
    /// # Ok::<(), spark_rollback::RollbackError>(())
    /// ```
    ///
    /// # Errors
    /// [`RollbackError::Watch`] for a release that cannot name a file, an
    /// interval under one second or not a whole number of seconds, or a
    /// duration shorter than the interval or longer than [`MAX_DURATION`].
    pub fn new(
        release: impl Into<String>,
        duration: Duration,
        interval: Duration,
    ) -> Result<WatchOptions, RollbackError> {
        let release = release.into();
        if !spark_evidence::is_valid_release_name(&release) {
            return Err(RollbackError::Watch(format!(
                "release {release:?} cannot name a file: use letters, digits, dots, dashes and underscores, starting and ending with a letter or digit"
            )));
        }
        if interval < Duration::from_secs(1) || interval.subsec_nanos() != 0 {
            return Err(RollbackError::Watch(format!(
                "the interval {} is not a whole number of seconds of at least 1s",
                humantime::format_duration(interval)
            )));
        }
        if duration > MAX_DURATION {
            return Err(RollbackError::Watch(format!(
                "the duration {} is longer than a watch may be ({})",
                humantime::format_duration(duration),
                humantime::format_duration(MAX_DURATION)
            )));
        }
        if duration < interval || duration.subsec_nanos() != 0 {
            return Err(RollbackError::Watch(format!(
                "the duration {} is shorter than the interval {} or not whole seconds",
                humantime::format_duration(duration),
                humantime::format_duration(interval)
            )));
        }
        // The largest step up to 15 s that divides the interval, so every
        // interval covers whole steps.
        let step_seconds = (1..=15u32).rev().find(|d| interval.as_secs().is_multiple_of(u64::from(*d))).unwrap_or(1);
        Ok(WatchOptions { release, duration, interval, step_seconds, baseline: None, slack_env: None, rollback: false })
    }

    /// The query resolution: at least 1 s, and a divisor of the interval.
    ///
    /// # Errors
    /// [`RollbackError::Watch`] otherwise.
    pub fn step_seconds(mut self, step_seconds: u32) -> Result<WatchOptions, RollbackError> {
        if step_seconds == 0 || !self.interval.as_secs().is_multiple_of(u64::from(step_seconds)) {
            return Err(RollbackError::Watch(format!(
                "the step {step_seconds}s must divide the interval ({}s), so each interval covers whole steps",
                self.interval.as_secs()
            )));
        }
        self.step_seconds = step_seconds;
        Ok(self)
    }

    /// Compare with this GO-time baseline.
    #[must_use]
    pub fn baseline(mut self, baseline: GoBaseline) -> WatchOptions {
        self.baseline = Some(baseline);
        self
    }

    /// Notify the Slack incoming webhook whose URL is in this environment
    /// variable (read through the [`RollbackEnv`]).
    #[must_use]
    pub fn slack_env(mut self, variable: impl Into<String>) -> WatchOptions {
        self.slack_env = Some(variable.into());
        self
    }

    /// Whether a firing trigger starts the plan's rollback (and ends the
    /// watch).
    #[must_use]
    pub fn rollback(mut self, rollback: bool) -> WatchOptions {
        self.rollback = rollback;
        self
    }

    /// The release.
    #[must_use]
    pub fn release(&self) -> &str {
        &self.release
    }

    /// `first_night_<release>.md`.
    #[must_use]
    pub fn report_name(&self) -> String {
        format!("first_night_{}.md", self.release)
    }

    /// `first_night_<release>.jsonl`.
    #[must_use]
    pub fn journal_name(&self) -> String {
        format!("first_night_{}.jsonl", self.release)
    }
}

/// How the night went, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No trigger fired, every quick check passed or was skipped, the
    /// metrics were read at every interval.
    Clean,
    /// No trigger fired, but a quick check failed, the metrics could not be
    /// read at some interval, or there was no traffic to judge.
    Degraded,
    /// A trigger fired.
    Incident,
    /// A trigger fired and the watch rolled the release back.
    RolledBack,
}

impl Verdict {
    /// `clean`, `degraded`, `incident` or `rolled_back`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Degraded => "degraded",
            Verdict::Incident => "incident",
            Verdict::RolledBack => "rolled_back",
        }
    }
}

/// A trigger firing over consecutive intervals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// The trigger.
    pub trigger: String,
    /// The first interval it fired at, RFC 3339.
    pub first_at: String,
    /// The last.
    pub last_at: String,
    /// Intervals it fired at.
    pub intervals: u32,
    /// How the Slack notification went (`delivered`, `failed`,
    /// `not_configured`).
    pub notified: String,
    /// The rollback it started.
    pub rollback: Option<RollbackRef>,
}

/// The end of a watch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchSummary {
    /// The release.
    pub release: String,
    /// When the watch started, RFC 3339.
    pub started_at: String,
    /// When it ended.
    pub ended_at: String,
    /// Intervals evaluated.
    pub intervals: u32,
    /// Requests the release served during the watch.
    pub requests: f64,
    /// Of which failed.
    pub failed: f64,
    /// The share of the watch's error budget consumed (failed over what the
    /// SLO allows of these requests); `null` without traffic.
    pub budget_consumed: Option<f64>,
    /// Every incident.
    pub incidents: Vec<Incident>,
    /// Intervals at which a quick check failed.
    pub check_failures: u32,
    /// Intervals at which the metrics could not be read.
    pub source_errors: u32,
    /// The verdict.
    pub verdict: Verdict,
    /// The report's file name.
    pub report: String,
    /// The journal's file name.
    pub journal: String,
}

/// Watches a release through its first night after it reached 100 %
/// (`spark watch`).
///
/// At every interval the watch reads the release's signals from a
/// [`MetricSource`], lays the GO-time [`GoBaseline`] beside them, and
/// evaluates every trigger of the canary engine plus the 1 h and 6 h SLO
/// burn rates; it runs the [`QuickChecks`] (clock, pgBouncer, backup) it is
/// given; it appends one line to `first_night_<release>.jsonl` and renders
/// `first_night_<release>.md` from it (one section per interval: the
/// values, what changed since the last interval, the error budget left). A
/// trigger that starts firing notifies Slack at once (retried; the URL is
/// never written or logged) and, with [`WatchOptions::rollback`], starts the
/// plan's rollback ([`execute`](crate::execute)) and ends the watch. At the
/// end: a [`WatchSummary`] with the budget consumed, the incidents and a
/// [`Verdict`].
///
/// A restarted watch resumes from its journal: the start time, interval and
/// baseline come from the journal, and the intervals missed while it was
/// down are evaluated from Prometheus's history (marked `caught_up`: no
/// quick checks, no rollback), so the record has no hole.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use spark_evidence::EvidenceDir;
/// use spark_rollback::{Engine, GoBaseline, Plan, PrometheusSource, RollbackEnv, WatchContext, WatchOptions, watch};
///
/// let engine = Engine::new(Plan::default())?;
/// let source = PrometheusSource::new("http://127.0.0.1:9090")?;
/// let options = WatchOptions::new("v1.4.2", Duration::from_secs(24 * 3600), Duration::from_secs(3600))?
///     .baseline(GoBaseline::load("evidence/baseline_metrics_v1.4.2.txt".as_ref())?)
///     .slack_env("SLACK_WEBHOOK_URL");
/// let env = RollbackEnv::new(spark_db::system_clock())?;
/// let evidence = EvidenceDir::create("evidence".as_ref())?;
/// let cx = WatchContext { engine: &engine, source: &source, checks: None, env: &env, evidence: &evidence };
/// let stop = async { tokio::signal::ctrl_c().await.ok(); };
/// if let Some(summary) = watch(cx, &options, |_| {}, stop).await? {
///     println!("{}: {}", summary.release, summary.verdict.name());
/// }
/// # Ok(()) }
/// ```
///
/// `on_interval` sees each interval's record as it is journaled (a CLI
/// prints progress with it). `stop` (Ctrl-C in the CLI) is looked at only
/// between intervals, so an evaluation, its Slack post and its rollback are
/// never cut off half-way; the watch then returns `None` and resumes from
/// its journal when run again.
///
/// # Errors
/// [`RollbackError::Watch`] for a damaged journal, one started with
/// another baseline, or one another watch is running on; [`RollbackError::Io`] when the journal or report
/// cannot be written; [`RollbackError::Evidence`] when a snapshot cannot be
/// kept. A metric source that fails is recorded per interval, never an
/// error; after two failures in a row, or 15 minutes without a reading,
/// Slack is told the watch is blind. A rollback that fails is recorded in
/// its interval, never an error.
pub async fn watch(
    cx: WatchContext<'_>,
    options: &WatchOptions,
    mut on_interval: impl FnMut(&IntervalRecord) + Send,
    stop: impl Future<Output = ()> + Send,
) -> Result<Option<WatchSummary>, RollbackError> {
    let mut stop = std::pin::pin!(stop);
    let (engine, env) = (cx.engine, cx.env);
    let run_started = env.clock.now_ms();
    let mut journal = Journal::open(&cx.evidence.path().join(options.journal_name()), &options.release)?;
    let report_path = cx.evidence.path().join(options.report_name());
    let start = match journal.start() {
        Some(start) => resumed(start, options)?,
        None => {
            let start = WatchStart {
                format: JOURNAL_FORMAT.to_owned(),
                release: options.release.clone(),
                started_at: rfc3339(run_started),
                started_at_ms: run_started,
                duration_seconds: options.duration.as_secs(),
                interval_seconds: options.interval.as_secs(),
                step_seconds: options.step_seconds,
                slo_objective: engine.plan().slo.objective,
                baseline: options.baseline.as_ref().map(|b| b.reference().clone()),
                baseline_medians: options
                    .baseline
                    .as_ref()
                    .map(|b| Signal::ALL.iter().filter_map(|s| Some((s.name().to_owned(), b.median(*s)?))).collect())
                    .unwrap_or_default(),
            };
            journal.append(JournalLine::Start(start.clone()))?;
            tracing::info!(release = %start.release, until = %rfc3339(run_started + ms(options.duration)), "the watch started");
            start
        }
    };
    report::write(&report_path, &journal.lines, engine.plan())?;
    if let Some(end) = journal.end() {
        return Ok(Some(end.clone()));
    }
    let mut state = State::from(&journal);
    // Both are bounded by WatchOptions::new (at most MAX_DURATION).
    let interval_ms = i64::try_from(start.interval_seconds).unwrap_or(1).saturating_mul(1000);
    let end_ms = start
        .started_at_ms
        .saturating_add(i64::try_from(start.duration_seconds.min(MAX_DURATION.as_secs())).unwrap_or(0) * 1000);
    while state.rollback.is_none() && state.last_at_ms < end_ms {
        let n = state.last_n + 1;
        let due = start.started_at_ms.saturating_add(i64::from(n).saturating_mul(interval_ms)).min(end_ms);
        let wait = u64::try_from(due - env.clock.now_ms()).unwrap_or(0);
        // Stop is looked at only here, between intervals: an evaluation, its
        // Slack post and its rollback always finish and are journaled.
        tokio::select! {
            biased;
            () = &mut stop => {
                tracing::warn!(release = %start.release, next = n, "the watch was stopped; run it again to resume");
                return Ok(None);
            }
            () = tokio::time::sleep(Duration::from_millis(wait)) => {}
        }
        // Missed while no watch was running, and not the newest such
        // interval: judged from history only. The newest missed one is live
        // (its checks run, it may roll back), so a restart never delays a
        // rollback by a whole interval.
        let caught_up = due.saturating_add(interval_ms) <= run_started;
        let interval = Interval { n, at: due, since: state.last_at_ms, caught_up };
        let record = evaluate(cx, options, &start, &interval, &state, &mut journal).await?;
        state.apply(&record);
        journal.append(JournalLine::Interval(record.clone()))?;
        report::write(&report_path, &journal.lines, engine.plan())?;
        log(&record);
        on_interval(&record);
    }
    let summary = summarize(&journal, &start, options, env.clock.now_ms());
    journal.append(JournalLine::End(summary.clone()))?;
    report::write(&report_path, &journal.lines, engine.plan())?;
    Ok(Some(summary))
}

/// The journal's start, checked against how the watch was started again.
fn resumed(start: &WatchStart, options: &WatchOptions) -> Result<WatchStart, RollbackError> {
    let given = options.baseline.as_ref().map(|b| b.reference().sha256.as_str());
    let recorded = start.baseline.as_ref().map(|b| b.sha256.as_str());
    if given != recorded {
        let describe = |d: Option<&str>| d.map_or_else(|| "no baseline".to_owned(), |d| format!("baseline sha256 {d}"));
        return Err(RollbackError::Watch(format!(
            "the journal {} was started with {}, and this run has {}: pass the same --baseline to resume, or move the journal away to start afresh",
            options.journal_name(),
            describe(recorded),
            describe(given)
        )));
    }
    if start.duration_seconds != options.duration.as_secs()
        || start.interval_seconds != options.interval.as_secs()
        || start.step_seconds != options.step_seconds
    {
        tracing::warn!(
            duration_seconds = start.duration_seconds,
            interval_seconds = start.interval_seconds,
            step_seconds = start.step_seconds,
            "resuming with the journal's duration, interval and step, not this run's"
        );
    }
    tracing::info!(release = %start.release, started_at = %start.started_at, "resuming the watch from its journal");
    Ok(start.clone())
}

/// How long the metrics may be unreadable before Slack is told the watch is
/// blind (or two evaluations in a row, whichever comes first).
const BLIND_AFTER: Duration = Duration::from_secs(15 * 60);

/// What the intervals so far leave for the next one.
#[derive(Debug, Default)]
struct State {
    last_n: u32,
    /// The last interval's instant (the watch's start before the first).
    last_at_ms: i64,
    /// The triggers firing at the last interval that read the metrics: an
    /// unreadable interval neither ends nor restarts an incident.
    firing: BTreeSet<String>,
    source_errors_in_a_row: u32,
    /// The last instant the metrics were read (the start before any).
    last_read_at_ms: i64,
    blind_told: bool,
    judged: f64,
    failed: f64,
    /// A rollback the watch started (completed or not): no second one.
    rollback: Option<RollbackRef>,
}

impl State {
    /// The state the journal leaves: what a resumed watch goes on from.
    fn from(journal: &Journal) -> State {
        let start = journal.start().map_or(0, |s| s.started_at_ms);
        let mut state = State { last_at_ms: start, last_read_at_ms: start, ..State::default() };
        for line in &journal.lines {
            match line {
                JournalLine::Interval(r) => state.apply(r),
                // Started and never journaled as done: the watch stopped
                // while it ran. Never start another.
                JournalLine::RollbackStarted(s) if state.rollback.is_none() => {
                    state.rollback = Some(RollbackRef::in_doubt(&s.trigger));
                }
                _ => {}
            }
        }
        state
    }

    /// Takes in one interval's record: the one way state moves, live and
    /// when resuming.
    fn apply(&mut self, r: &IntervalRecord) {
        self.last_n = r.n;
        self.last_at_ms = r.at_ms;
        if r.source_error.is_some() {
            self.source_errors_in_a_row += 1;
            self.blind_told |= r.notifications.iter().any(|s| s.about == "blind");
        } else {
            self.firing = r.firing.iter().map(|f| f.trigger.clone()).collect();
            self.source_errors_in_a_row = 0;
            self.last_read_at_ms = r.at_ms;
            self.blind_told = false;
        }
        self.judged += r.judged;
        self.failed += r.failed;
        if let Some(rb) = &r.rollback {
            self.rollback = Some(rb.clone());
        }
    }
}

/// The share of the budget left: 1 − failed ÷ (allowed ratio × the
/// requests whose 5xx ratio was known); `None` before any.
fn budget_left(objective: f64, judged: f64, failed: f64) -> Option<f64> {
    let allowed = (1.0 - objective) * judged;
    (judged > 0.0 && allowed > 0.0).then(|| 1.0 - failed / allowed)
}

/// One interval to evaluate.
struct Interval {
    n: u32,
    at: i64,
    /// The previous interval's instant.
    since: i64,
    caught_up: bool,
}

#[allow(clippy::too_many_lines, reason = "one interval, step by step: measure, check, notify, roll back")]
async fn evaluate(
    cx: WatchContext<'_>,
    options: &WatchOptions,
    start: &WatchStart,
    interval: &Interval,
    state: &State,
    journal: &mut Journal,
) -> Result<IntervalRecord, RollbackError> {
    let plan = cx.engine.plan();
    let at = interval.at;
    let mut record = IntervalRecord {
        n: interval.n,
        at: rfc3339(at),
        at_ms: at,
        caught_up: interval.caught_up,
        source_error: None,
        values: BTreeMap::new(),
        roles: BTreeMap::new(),
        burn_1h: None,
        burn_6h: None,
        requests: 0.0,
        judged: 0.0,
        failed: 0.0,
        budget_left: None,
        triggers: BTreeMap::new(),
        firing: Vec::new(),
        checks: Vec::new(),
        ambiguous: Vec::new(),
        notifications: Vec::new(),
        rollback: None,
        snapshot: None,
    };
    let step_ms = i64::from(start.step_seconds) * 1000;
    // What the evaluation reads: the triggers' lookback, and back to the last
    // reading (its requests count now) — which before the first reading is
    // the watch's start, whose preceding sample is its counters' base. Not
    // the whole night: a day at a 1 s step would be 86,400 points per signal
    // at every interval. The range starts on the watch's step grid (the
    // interval is a multiple of the step), one step before that instant.
    let earliest = at.saturating_sub(ms(lookback(plan))).min(state.last_read_at_ms);
    let k = (earliest - start.started_at_ms).div_euclid(step_ms) - 1;
    let range = Range { start_ms: start.started_at_ms + k * step_ms, end_ms: at, step_seconds: start.step_seconds };
    let mut evaluation = None;
    let mut composed = None;
    match cx.source.fetch_any_role(plan, range).await {
        Err(e) => {
            record.source_error = Some(chain(&e));
        }
        Ok(live) => {
            // Requests served while the metrics were unreadable count now.
            let last_read = state.last_read_at_ms;
            let composition = baseline::compose(&live, options.baseline.as_ref(), range.start_ms, at);
            record.ambiguous = composition.ambiguous.iter().map(|s| s.name().to_owned()).collect();
            record.roles = composition.roles.iter().map(|(s, r)| (s.name().to_owned(), r.clone())).collect();
            let metrics = Metrics::from_snapshot(&composition.snapshot)?;
            let stage = plan.stages.last().ok_or_else(|| RollbackError::Watch("the plan has no stage".to_owned()))?;
            let e = cx.engine.evaluate(&metrics, stage, start.started_at_ms, at)?;
            measure(&mut record, &metrics, plan, start, interval, last_read);
            for t in &e.triggers {
                record.triggers.insert(t.id.id().to_owned(), t.status);
                if t.status == TriggerStatus::Firing {
                    record.firing.push(Firing {
                        trigger: t.id.id().to_owned(),
                        detail: t.detail.clone(),
                        values: t.values.iter().map(|(k, v)| ((*k).to_owned(), v.is_finite().then_some(*v))).collect(),
                    });
                }
            }
            evaluation = Some(e);
            composed = Some(composition.snapshot);
        }
    }
    record.budget_left = budget_left(start.slo_objective, state.judged + record.judged, state.failed + record.failed);
    if !interval.caught_up
        && let Some(checks) = cx.checks
    {
        record.checks = checks.run().await;
    }

    // Slack at once for each trigger that starts firing, when a rollback
    // starts, and when the watch goes blind.
    let will_roll_back = options.rollback && !interval.caught_up && !record.firing.is_empty();
    if record.source_error.is_none() {
        let new: Vec<&Firing> = record.firing.iter().filter(|f| !state.firing.contains(&f.trigger)).collect();
        if !new.is_empty() || will_roll_back {
            let text = fired_text(options, &record, &new, will_roll_back);
            record.notifications.push(slack(options, cx.env, "fired", text).await);
        }
    } else if let errors = state.source_errors_in_a_row + 1
        && !state.blind_told
        && (errors >= 2 || at - state.last_read_at_ms >= ms(BLIND_AFTER))
    {
        let text = format!(
            ":warning: spark watch of {} is blind: the metrics could not be read at {} evaluation(s) in a row, the last at {} ({}); nothing has been judged since {}.",
            options.release,
            errors,
            record.at,
            record.source_error.as_deref().unwrap_or_default(),
            rfc3339(state.last_read_at_ms)
        );
        record.notifications.push(slack(options, cx.env, "blind", text).await);
    }

    if let Some(snapshot) = composed.filter(|_| !record.firing.is_empty()) {
        let stem = format!("first_night_{}_{}", options.release, interval.n);
        record.snapshot = Some(keep(cx.evidence, &stem, snapshot.to_json().as_bytes())?);
    }
    if will_roll_back && let Some(evaluation) = evaluation {
        let trigger = record.firing[0].trigger.clone();
        // Journaled before any action runs: a watch stopped during the
        // rollback never starts a second one when it resumes.
        journal.append(JournalLine::RollbackStarted(RollbackStarted {
            n: interval.n,
            at: record.at.clone(),
            trigger: trigger.clone(),
        }))?;
        let stage = plan.stages.last().map(|s| s.weight.to_string()).unwrap_or_default();
        let reason = format!("first-night watch of {}: {trigger} fired ({})", options.release, record.firing[0].detail);
        let request = RollbackRequest::new(reason, stage, at).trigger(trigger.clone()).evaluation(evaluation);
        let outcome = match crate::rollback::execute(plan, &request, cx.env, cx.evidence).await {
            Ok(rollback) => RollbackRef {
                bundle: rollback.bundle.display().to_string(),
                succeeded: rollback.succeeded(),
                trigger,
                error: None,
            },
            // The actions may have run: recorded, and the watch ends as
            // rolled back rather than trying again.
            Err(e) => RollbackRef { bundle: String::new(), succeeded: false, trigger, error: Some(chain(&e)) },
        };
        record.rollback = Some(outcome);
    }
    Ok(record)
}

/// The values of the interval `(since, at]`, the burn rates, and the
/// requests since the last reading (`(last_read, at]`: an unreadable
/// interval's traffic counts at the next reading).
fn measure(
    record: &mut IntervalRecord,
    metrics: &Metrics,
    plan: &Plan,
    start: &WatchStart,
    interval: &Interval,
    last_read: i64,
) {
    let scope = Scope { metrics, plan, since: start.started_at_ms, at: interval.at };
    for signal in Signal::ALL {
        let last = metrics.series(signal, Role::Canary).window(interval.since, interval.at).last().map(|(_, v)| v);
        record.values.insert(signal.name().to_owned(), last.filter(|v| v.is_finite()));
    }
    let budget = 1.0 - start.slo_objective;
    let burn = |hours: i64| {
        // Only the watch's own data: the burn of the release at 100 %.
        let window = (hours * 3_600_000).min(interval.at - start.started_at_ms);
        scope.error_ratio(Role::Canary, window).map(|(ratio, _)| ratio / budget)
    };
    record.burn_1h = burn(1);
    record.burn_6h = burn(6);
    let d = interval.at - last_read;
    // Every request served counts; only those whose 5xx ratio is known are
    // judged against the budget (a missing ratio is never zero failures).
    record.requests = scope.requests(Role::Canary, d);
    if let Some((ratio, judged)) = scope.error_ratio(Role::Canary, d) {
        record.judged = judged;
        record.failed = ratio * judged;
    }
}

/// Writes `bytes` as `<stem>.json` in the evidence directory, or
/// `<stem>_2.json`… when a run before a restart already did.
fn keep(evidence: &EvidenceDir, stem: &str, bytes: &[u8]) -> Result<FileRef, RollbackError> {
    let name = (1..)
        .map(|i| if i == 1 { format!("{stem}.json") } else { format!("{stem}_{i}.json") })
        .find(|name| !evidence.contains(name))
        .unwrap_or_default();
    let file = evidence.write(&name, bytes).map_err(RollbackError::Evidence)?;
    Ok(FileRef { name: file.name, sha256: file.sha256 })
}

fn fired_text(options: &WatchOptions, record: &IntervalRecord, new: &[&Firing], rollback: bool) -> String {
    let firing: Vec<String> = if new.is_empty() {
        record.firing.iter().map(|f| format!("*{}* still firing: {}", f.trigger, f.detail)).collect()
    } else {
        new.iter().map(|f| format!("*{}*: {}", f.trigger, f.detail)).collect()
    };
    let budget = record.budget_left.map_or_else(|| "unknown".to_owned(), |b| format!("{:.1} %", b * 100.0));
    let next = if rollback {
        "Rolling back now."
    } else if record.caught_up && options.rollback {
        "Found from Prometheus's history on resuming; if it still fires at the first live interval, the watch rolls back then."
    } else if record.caught_up {
        "Found from Prometheus's history on resuming. No automatic rollback is configured: decide now (spark rollback)."
    } else {
        "No automatic rollback is configured: decide now (spark rollback)."
    };
    format!(
        ":rotating_light: spark watch of {}: {} at {}. Error budget left {budget}. {next}",
        options.release,
        firing.join("; "),
        record.at
    )
}

/// Posts `text` to the Slack webhook in `--slack-env`, retried; never
/// writes or logs the URL.
async fn slack(options: &WatchOptions, env: &RollbackEnv, about: &str, text: String) -> Sent {
    let sent = |n: Notification| Sent {
        about: about.to_owned(),
        outcome: n.outcome.name().to_owned(),
        attempts: n.attempts,
        detail: n.detail,
    };
    let Some(variable) = &options.slack_env else {
        return sent(Notification::skipped(NotifyOutcome::NotConfigured, "no --slack-env", text));
    };
    sent(notify::slack_from_env(env, variable, text, &Redactor::default()).await)
}

fn log(r: &IntervalRecord) {
    let firing: Vec<&str> = r.firing.iter().map(|f| f.trigger.as_str()).collect();
    if let Some(e) = &r.source_error {
        tracing::error!(n = r.n, at = %r.at, error = %e, "watch interval: the metrics could not be read");
    } else if firing.is_empty() {
        tracing::info!(n = r.n, at = %r.at, budget_left = ?r.budget_left, "watch interval: nothing fired");
    } else {
        tracing::error!(n = r.n, at = %r.at, firing = ?firing, "watch interval: triggers FIRING");
    }
}

/// The summary of the journal's intervals.
fn summarize(journal: &Journal, start: &WatchStart, options: &WatchOptions, now: i64) -> WatchSummary {
    let mut incidents: Vec<Incident> = Vec::new();
    let mut open: BTreeMap<String, usize> = BTreeMap::new();
    let (mut requests, mut judged, mut failed) = (0.0, 0.0, 0.0);
    let (mut check_failures, mut source_errors, mut intervals) = (0, 0, 0);
    let mut rollback_started: Option<&RollbackStarted> = None;
    let mut rolled_back = false;
    for line in &journal.lines {
        let r = match line {
            JournalLine::Interval(r) => r,
            JournalLine::RollbackStarted(s) => {
                rollback_started = Some(s);
                continue;
            }
            _ => continue,
        };
        intervals += 1;
        requests += r.requests;
        judged += r.judged;
        failed += r.failed;
        check_failures += u32::from(r.checks.iter().any(|c| c.status == CheckStatus::Fail));
        if r.source_error.is_some() {
            // Unreadable: an incident neither ends nor starts here.
            source_errors += 1;
            continue;
        }
        let notified = r.notifications.iter().find(|s| s.about == "fired").map(|s| s.outcome.clone());
        let mut still = BTreeMap::new();
        for f in &r.firing {
            let i = match open.get(&f.trigger) {
                Some(&i) => {
                    incidents[i].last_at.clone_from(&r.at);
                    incidents[i].intervals += 1;
                    i
                }
                None => {
                    incidents.push(Incident {
                        trigger: f.trigger.clone(),
                        first_at: r.at.clone(),
                        last_at: r.at.clone(),
                        intervals: 1,
                        notified: notified.clone().unwrap_or_else(|| "not_configured".to_owned()),
                        rollback: None,
                    });
                    incidents.len() - 1
                }
            };
            if let Some(rb) = r.rollback.as_ref().filter(|rb| rb.trigger == f.trigger) {
                incidents[i].rollback = Some(rb.clone());
            }
            still.insert(f.trigger.clone(), i);
        }
        open = still;
        if r.rollback.is_some() {
            rolled_back = true;
            rollback_started = None;
        }
    }
    // A rollback started and never journaled as done: the watch stopped
    // while it ran.
    if let Some(s) = rollback_started {
        rolled_back = true;
        let in_doubt = RollbackRef::in_doubt(&s.trigger);
        match open.get(&s.trigger).and_then(|&i| incidents.get_mut(i)) {
            Some(incident) => incident.rollback = Some(in_doubt),
            None => incidents.push(Incident {
                trigger: s.trigger.clone(),
                first_at: s.at.clone(),
                last_at: s.at.clone(),
                intervals: 1,
                notified: "unknown".to_owned(),
                rollback: Some(in_doubt),
            }),
        }
    }
    let allowed = (1.0 - start.slo_objective) * judged;
    let verdict = if rolled_back {
        Verdict::RolledBack
    } else if !incidents.is_empty() {
        Verdict::Incident
    } else if check_failures > 0 || source_errors > 0 || requests <= 0.0 {
        Verdict::Degraded
    } else {
        Verdict::Clean
    };
    WatchSummary {
        release: start.release.clone(),
        started_at: start.started_at.clone(),
        ended_at: rfc3339(now),
        intervals,
        requests,
        failed,
        budget_consumed: (judged > 0.0 && allowed > 0.0).then(|| failed / allowed),
        incidents,
        check_failures,
        source_errors,
        verdict,
        report: options.report_name(),
        journal: options.journal_name(),
    }
}
