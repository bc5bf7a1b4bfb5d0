//! Executing a rollback: the plan's actions in order, then the Slack
//! notification, then the evidence.
//!
//! A failing action is recorded and the next one still runs: a rollback
//! never stops half-way without saying so, and the record (and the exit
//! code of `spark rollback`) tells which action failed. Slack is notified
//! after every action has run, so a slow or failing Slack never delays an
//! action, and its failure is recorded without failing the rollback.
//! Database changes are never rolled back automatically: the record says
//! whether the release carried a migration and links the restore runbook.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use spark_db::SharedClock;
use spark_evidence::{EvidenceDir, Redactor, SigningKey};

use crate::action::{self, Action, ActionRecord};
use crate::engine::Evaluation;
use crate::error::{RollbackError, plan_error};
use crate::notify::{self, Notification, NotifyOutcome, Retry, SlackPlan};
use crate::plan::Plan;
use crate::record::{MetricsEvidence, RollbackRecord, Timing};
use crate::source::{MetricSource, Range};

/// The database restore runbook a plan links by default.
pub const DEFAULT_RUNBOOK: &str = "docs/runbooks/db-restore.md";

/// `[rollback]` in a plan: what a rollback does.
///
/// ```
/// use spark_rollback::Plan;
///
/// let plan = Plan::from_toml(r#"
/// [rollback]
/// runbook = "https://wiki.example/runbooks/orders-db-restore"
/// release_has_migration = true
/// [rollback.slack]
/// webhook_env = "SLACK_WEBHOOK_URL"
/// "#)?;
/// assert!(plan.rollback.release_has_migration);
/// assert_eq!(plan.rollback.slack.unwrap().webhook_env, "SLACK_WEBHOOK_URL");
/// assert!(Plan::default().rollback.actions.is_empty());
/// # Ok::<(), spark_rollback::RollbackError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackPlan {
    /// Where the database restore runbook is (a URL or a path).
    pub runbook: String,
    /// Whether the release carries a database migration (which a rollback
    /// does not undo).
    pub release_has_migration: bool,
    /// What to run, in order.
    pub actions: Vec<Action>,
    /// Where to notify, if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackPlan>,
}

impl Default for RollbackPlan {
    fn default() -> RollbackPlan {
        RollbackPlan {
            runbook: DEFAULT_RUNBOOK.to_owned(),
            release_has_migration: false,
            actions: Vec::new(),
            slack: None,
        }
    }
}

impl RollbackPlan {
    pub(crate) fn validate(&self) -> Result<(), RollbackError> {
        if self.runbook.trim().is_empty() {
            return Err(plan_error("rollback.runbook", "is empty; link the database restore runbook"));
        }
        for (i, action) in self.actions.iter().enumerate() {
            action.validate(&format!("rollback.actions[{i}]"))?;
        }
        if let Some(slack) = &self.slack {
            slack.validate()?;
        }
        Ok(())
    }
}

/// What to roll back and why.
///
/// ```
/// use spark_rollback::RollbackRequest;
///
/// let request = RollbackRequest::new("p95 above 400 ms", "25%", 1_795_712_400_000).trigger("api_p95").dry_run(true);
/// assert_eq!(request.trigger.as_deref(), Some("api_p95"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RollbackRequest {
    /// Why, in words.
    pub reason: String,
    /// The stage rolled back, such as `25%`.
    pub stage: String,
    /// The trigger that decided it, if a trigger did.
    pub trigger: Option<String>,
    /// When it was decided, milliseconds since the epoch: the start of the
    /// decision-to-action latency.
    pub decided_at_ms: i64,
    /// Record everything, run nothing.
    pub dry_run: bool,
    /// The engine's evaluation that decided it: its trail and the values
    /// that fired go into the evidence.
    pub evaluation: Option<Evaluation>,
}

impl RollbackRequest {
    /// A request decided at `decided_at_ms`.
    #[must_use]
    pub fn new(reason: impl Into<String>, stage: impl Into<String>, decided_at_ms: i64) -> RollbackRequest {
        RollbackRequest {
            reason: reason.into(),
            stage: stage.into(),
            trigger: None,
            decided_at_ms,
            dry_run: false,
            evaluation: None,
        }
    }

    /// The trigger that decided it.
    #[must_use]
    pub fn trigger(mut self, trigger: impl Into<String>) -> RollbackRequest {
        self.trigger = Some(trigger.into());
        self
    }

    /// Whether to only record.
    #[must_use]
    pub fn dry_run(mut self, dry_run: bool) -> RollbackRequest {
        self.dry_run = dry_run;
        self
    }

    /// The evaluation that decided it (its trigger becomes the request's
    /// when none was given).
    #[must_use]
    pub fn evaluation(mut self, evaluation: Evaluation) -> RollbackRequest {
        if self.trigger.is_none() {
            self.trigger = evaluation.decision.trigger().map(|t| t.id().to_owned());
        }
        self.evaluation = Some(evaluation);
        self
    }
}

/// Looks up an environment variable: the process environment by default,
/// a map in tests (which then never touch the process environment).
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Where the metrics before and after come from.
#[derive(Clone)]
struct MetricsWindow {
    source: Arc<dyn MetricSource>,
    window: Duration,
    step_seconds: u32,
}

/// How a rollback reaches the world: the clock, the environment (secrets),
/// the HTTP client, the Slack retry policy and the metric source.
///
/// ```
/// use std::time::Duration;
/// use spark_rollback::RollbackEnv;
///
/// let env = RollbackEnv::new(spark_db::system_clock())?
///     .env(|name| (name == "SLACK_WEBHOOK_URL").then(|| "http://127.0.0.1:9/hook".to_owned()))
///     .slack_retry(4, Duration::from_millis(50));
/// # Ok::<(), spark_rollback::RollbackError>(())
/// ```
#[derive(Clone)]
pub struct RollbackEnv {
    pub(crate) clock: SharedClock,
    pub(crate) env: EnvLookup,
    pub(crate) client: reqwest::Client,
    pub(crate) slack_retry: Retry,
    metrics: Option<MetricsWindow>,
    sign_key: Option<SigningKey>,
}

impl std::fmt::Debug for RollbackEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RollbackEnv")
            .field("slack_retry", &self.slack_retry)
            .field("metrics", &self.metrics.as_ref().map(|m| m.source.describe()))
            .field("signed", &self.sign_key.is_some())
            .finish_non_exhaustive()
    }
}

impl RollbackEnv {
    /// The process environment, an HTTP client that follows no redirects,
    /// Slack retried 4 times from 200 ms, no metric source.
    ///
    /// # Errors
    /// [`RollbackError::Rollback`] when the HTTP client cannot be built.
    pub fn new(clock: SharedClock) -> Result<RollbackEnv, RollbackError> {
        // reqwest is built without a default crypto provider; use ring, the
        // one sqlx already links. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            // A redirect would turn the POST into a GET without its body.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("spark-rollback/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RollbackError::Rollback(format!("cannot build the HTTP client: {e}")))?;
        Ok(RollbackEnv {
            clock,
            env: Arc::new(|name| std::env::var(name).ok()),
            client,
            slack_retry: Retry::default(),
            metrics: None,
            sign_key: None,
        })
    }

    /// Reads environment variables through `lookup` instead of the process
    /// environment.
    #[must_use]
    pub fn env(mut self, lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> RollbackEnv {
        self.env = Arc::new(lookup);
        self
    }

    /// Tries the Slack notification `attempts` times, pausing `backoff`
    /// first and doubling (default 4 from 200 ms).
    #[must_use]
    pub fn slack_retry(mut self, attempts: u32, backoff: Duration) -> RollbackEnv {
        self.slack_retry.attempts = attempts.max(1);
        self.slack_retry.backoff = backoff;
        self
    }

    /// Limits each Slack attempt to `timeout` and all of them, pauses
    /// included, to `deadline` (default 2 s and 3 s).
    #[must_use]
    pub fn slack_timeouts(mut self, timeout: Duration, deadline: Duration) -> RollbackEnv {
        self.slack_retry.timeout = timeout;
        self.slack_retry.deadline = deadline;
        self
    }

    /// Records the metrics of the `window` before the decision and before
    /// the completion from `source`, at `step_seconds`.
    #[must_use]
    pub fn metrics(mut self, source: Arc<dyn MetricSource>, window: Duration, step_seconds: u32) -> RollbackEnv {
        self.metrics = Some(MetricsWindow { source, window, step_seconds: step_seconds.max(1) });
        self
    }

    /// Signs each rollback's bundle with `key` (ed25519; `spark keygen`
    /// makes one), so `spark evidence verify --key` proves who sealed it.
    /// Without a key the bundle is sealed unsigned: its digests still
    /// detect any change.
    #[must_use]
    pub fn sign_key(mut self, key: SigningKey) -> RollbackEnv {
        self.sign_key = Some(key);
        self
    }
}

/// Executes a rollback: runs `plan.rollback.actions` in order (each
/// recorded, a failure never stopping the next), notifies Slack, then
/// records the metrics before and after and writes the evidence into a new
/// bundle directory `rollback_<stamp>/` inside `evidence`:
/// `rollback_<stamp>.txt`, `rollback_<stamp>.json`,
/// `metrics_before_rollback_<stamp>.txt`, `metrics_after_rollback_<stamp>.txt`
/// (`<stamp>` is [`spark_evidence::utc_stamp`] of the decision, with `_2`,
/// `_3`… for a second rollback in the same second), then seals the bundle
/// with `manifest.json` ([`spark_evidence::seal`], signed when the
/// environment has a [`RollbackEnv::sign_key`]), so
/// [`spark_evidence::verify`] detects any change to the record. Every
/// secret — the Slack URL, the webhook secrets — is redacted from all of
/// them and from the logs.
///
/// A dry run records what would be run and called, runs and calls nothing,
/// and still reads the metrics and writes the evidence.
///
/// # Errors
/// [`RollbackError::Rollback`] for an empty reason or stage and
/// [`RollbackError::Plan`] for an invalid `[rollback]` (nothing has run);
/// [`RollbackError::Evidence`] when the evidence cannot be written
/// (the actions have run).
pub async fn execute(
    plan: &Plan,
    request: &RollbackRequest,
    env: &RollbackEnv,
    evidence: &EvidenceDir,
) -> Result<RollbackRecord, RollbackError> {
    if request.reason.trim().is_empty() {
        return Err(RollbackError::Rollback("the reason is empty".to_owned()));
    }
    if request.stage.trim().is_empty() {
        return Err(RollbackError::Rollback("the stage is empty".to_owned()));
    }
    let rollback = &plan.rollback;
    // A plan built in code has not been through `Plan::from_toml`.
    rollback.validate()?;
    let redactor = redactor(rollback, &*env.env);
    let clock = &env.clock;
    let cx = action::Context {
        reason: &request.reason,
        stage: &request.stage,
        trigger: request.trigger.as_deref(),
        decided_at_ms: request.decided_at_ms,
        now_secs: clock.now_ms().div_euclid(1000),
        env: &*env.env,
        client: &env.client,
        redactor: &redactor,
    };
    let mut actions = Vec::with_capacity(rollback.actions.len());
    let mut first_action_at = None;
    for (index, action) in rollback.actions.iter().enumerate() {
        let started_at_ms = clock.now_ms();
        first_action_at.get_or_insert(started_at_ms);
        let record = action::run(index, action, &cx, request.dry_run, started_at_ms).await;
        log(&record);
        actions.push(record);
    }
    let notification = notify(rollback, request, &actions, env, &redactor).await;
    let completed_at_ms = clock.now_ms();
    let commands_ms: u64 = actions.iter().filter(|a| a.kind == "command").map(|a| a.duration_ms).sum();
    let timing = Timing::new(request.decided_at_ms, first_action_at, completed_at_ms, commands_ms);
    tracing::info!(
        stage = %request.stage,
        decision_to_first_action_ms = ?timing.decision_to_first_action_ms,
        decision_to_completion_ms = timing.decision_to_completion_ms,
        "rollback actions done"
    );

    let evidence_start = Instant::now();
    let before = fetch(plan, env, request.decided_at_ms).await;
    let after = fetch(plan, env, completed_at_ms).await;
    let mut record = RollbackRecord::new(request, rollback, actions, notification, timing);
    record
        .write(evidence, &redactor, &before, &after, evidence_start, env.sign_key.as_ref())
        .map_err(RollbackError::Evidence)?;
    Ok(record)
}

/// Every secret the plan reaches through the environment.
fn redactor(rollback: &RollbackPlan, env: &(dyn Fn(&str) -> Option<String> + Send + Sync)) -> Redactor {
    let mut redactor = Redactor::default();
    for action in &rollback.actions {
        if let Action::Webhook(w) = action
            && let Some(name) = &w.secret_env
            && let Some(secret) = env(name)
        {
            redactor.add(secret);
        }
    }
    if let Some(slack) = &rollback.slack
        && let Some(url) = env(&slack.webhook_env)
    {
        redactor.add(url);
    }
    redactor
}

fn log(record: &ActionRecord) {
    if record.outcome.is_failure() {
        tracing::error!(index = record.index, kind = record.kind, target = %record.target, outcome = record.outcome.name(), detail = %record.detail, "rollback action failed; going on with the next");
    } else {
        tracing::info!(index = record.index, kind = record.kind, target = %record.target, outcome = record.outcome.name(), duration_ms = record.duration_ms, "rollback action");
    }
}

async fn notify(
    rollback: &RollbackPlan,
    request: &RollbackRequest,
    actions: &[ActionRecord],
    env: &RollbackEnv,
    redactor: &Redactor,
) -> Notification {
    let text = redactor.redact(&slack_text(rollback, request, actions));
    let Some(slack) = &rollback.slack else {
        return Notification::skipped(NotifyOutcome::NotConfigured, "no [rollback.slack] in the plan", text);
    };
    let variable = &slack.webhook_env;
    if request.dry_run {
        return Notification::skipped(
            NotifyOutcome::DryRun,
            format!("would post to the Slack webhook in ${variable}"),
            text,
        );
    }
    notify::slack_from_env(env, variable, text, redactor).await
}

fn slack_text(rollback: &RollbackPlan, request: &RollbackRequest, actions: &[ActionRecord]) -> String {
    let failed = actions.iter().filter(|a| a.outcome.is_failure()).count();
    let trigger = request.trigger.as_deref().map(|t| format!(" (trigger {t})")).unwrap_or_default();
    let outcome = if actions.is_empty() {
        "No rollback actions are configured.".to_owned()
    } else if failed == 0 {
        format!("All {} rollback actions succeeded.", actions.len())
    } else {
        let names: Vec<String> =
            actions.iter().filter(|a| a.outcome.is_failure()).map(|a| format!("#{} {}", a.index + 1, a.kind)).collect();
        format!("{failed} of {} rollback actions FAILED ({}): act now.", actions.len(), names.join(", "))
    };
    let migration = if rollback.release_has_migration {
        format!(" The release carried a database migration, which is not rolled back: see {}.", rollback.runbook)
    } else {
        String::new()
    };
    format!(":rotating_light: Rollback of stage {}: {}{trigger}. {outcome}{migration}", request.stage, request.reason)
}

/// The window of metrics ending at `end_ms`, or why there is none.
async fn fetch(plan: &Plan, env: &RollbackEnv, end_ms: i64) -> MetricsEvidence {
    let Some(m) = &env.metrics else { return MetricsEvidence::NotConfigured };
    let window = i64::try_from(m.window.as_millis()).unwrap_or(i64::MAX);
    let range = Range { start_ms: end_ms.saturating_sub(window), end_ms, step_seconds: m.step_seconds };
    match m.source.fetch(plan, range).await {
        Ok(snapshot) => MetricsEvidence::Snapshot { source: m.source.describe(), range, snapshot },
        Err(error) => MetricsEvidence::Failed { source: m.source.describe(), range, error: error.to_string() },
    }
}
