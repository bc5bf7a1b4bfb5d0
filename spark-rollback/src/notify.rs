//! The Slack notification after a rollback: one incoming-webhook POST,
//! retried with backoff, whose failure is recorded and never fails or
//! delays the rollback's actions (they have run by then).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use spark_evidence::Redactor;

use crate::error::chain;
use crate::error::{RollbackError, plan_error};
use crate::rollback::RollbackEnv;

/// `[rollback.slack]`: where the incoming-webhook URL is. The URL is a
/// secret (anyone holding it can post), so a plan names only the
/// environment variable that holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackPlan {
    /// The environment variable holding the webhook URL, such as
    /// `SLACK_WEBHOOK_URL`.
    pub webhook_env: String,
}

impl SlackPlan {
    pub(crate) fn validate(&self) -> Result<(), RollbackError> {
        if self.webhook_env.trim().is_empty() {
            return Err(plan_error("rollback.slack.webhook_env", "is empty; name the variable holding the URL"));
        }
        Ok(())
    }
}

/// How the notification is retried: `attempts` tries, the first pause
/// `backoff`, doubling; each try under `timeout`, and all of them within
/// `deadline`. The default — 4 attempts from 200 ms, 2 s each, 3 s in all —
/// keeps a hanging Slack from taking the rollback past its 5 s target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retry {
    /// Tries in all (at least one).
    pub(crate) attempts: u32,
    /// The first pause, doubling after each.
    pub(crate) backoff: Duration,
    /// Each try's limit.
    pub(crate) timeout: Duration,
    /// The limit of all tries and pauses together.
    pub(crate) deadline: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            attempts: 4,
            backoff: Duration::from_millis(200),
            timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(3),
        }
    }
}

/// How the notification ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyOutcome {
    /// Slack answered 2xx.
    Delivered,
    /// Every attempt failed, or the URL variable is not set.
    Failed,
    /// The plan has no `[rollback.slack]`.
    NotConfigured,
    /// A dry run: not sent.
    DryRun,
}

impl NotifyOutcome {
    /// `delivered`, `failed`, `not_configured` or `dry_run`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            NotifyOutcome::Delivered => "delivered",
            NotifyOutcome::Failed => "failed",
            NotifyOutcome::NotConfigured => "not_configured",
            NotifyOutcome::DryRun => "dry_run",
        }
    }
}

/// What the notification did. Never holds the URL.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    /// How it ended.
    pub outcome: NotifyOutcome,
    /// Tries made.
    pub attempts: u32,
    /// The last HTTP status, if Slack answered.
    pub http_status: Option<u16>,
    /// What happened, in words.
    pub detail: String,
    /// The message posted (or that would be).
    pub text: String,
    /// How long it took, retries included, milliseconds.
    pub duration_ms: u64,
}

impl Notification {
    pub(crate) fn skipped(outcome: NotifyOutcome, detail: impl Into<String>, text: String) -> Notification {
        Notification { outcome, attempts: 0, http_status: None, detail: detail.into(), text, duration_ms: 0 }
    }
}

/// POSTs `{"text": …}` to `url` until a 2xx or `retry.attempts` tries. A
/// transport error, a timeout, 408, 429 and 5xx are retried; any other
/// status is final (Slack answers 4xx for a revoked or wrong URL). Error
/// messages never carry the URL.
pub(crate) async fn slack(client: &reqwest::Client, url: &str, text: String, retry: Retry) -> Notification {
    let start = Instant::now();
    let body = serde_json::to_vec(&serde_json::json!({ "text": text })).unwrap_or_default();
    let mut pause = retry.backoff;
    let mut attempt = 0;
    let mut http_status = None;
    let attempts = retry.attempts.max(1);
    let (outcome, detail) = loop {
        attempt += 1;
        let left = retry.deadline.saturating_sub(start.elapsed());
        let result = client
            .post(url)
            .timeout(retry.timeout.min(left).max(Duration::from_millis(1)))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        let (detail, again) = match result {
            Ok(response) => {
                let status = response.status();
                http_status = Some(status.as_u16());
                if status.is_success() {
                    break (NotifyOutcome::Delivered, format!("Slack answered {status}"));
                }
                let again = status.is_server_error() || matches!(status.as_u16(), 408 | 429);
                (format!("Slack answered {status}"), again)
            }
            Err(e) => (format!("cannot reach Slack: {}", chain(&e.without_url())), true),
        };
        if !again || attempt >= attempts {
            break (NotifyOutcome::Failed, format!("{detail} (attempt {attempt} of {attempts}); given up"));
        }
        // No pause that would leave no time for another try.
        if start.elapsed() + pause >= retry.deadline {
            let deadline = humantime::format_duration(retry.deadline);
            break (
                NotifyOutcome::Failed,
                format!("{detail} (attempt {attempt} of {attempts}); given up at the {deadline} deadline"),
            );
        }
        tracing::warn!(attempt, %detail, "the Slack notification failed; retrying");
        tokio::time::sleep(pause).await;
        pause = pause.saturating_mul(2);
    };
    Notification {
        outcome,
        attempts: attempt,
        http_status,
        detail,
        text,
        duration_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

/// Posts `text` to the incoming webhook whose URL is in the environment
/// variable `variable` (read through `env`), with `env`'s retries. A
/// variable that is not set is a failed notification. The detail never holds
/// the URL nor anything `redactor` knows, and a failure is logged.
pub(crate) async fn slack_from_env(
    env: &RollbackEnv,
    variable: &str,
    text: String,
    redactor: &Redactor,
) -> Notification {
    let Some(url) = (env.env)(variable).filter(|u| !u.trim().is_empty()) else {
        tracing::error!(%variable, "the Slack webhook variable is not set; not notified");
        return Notification::skipped(NotifyOutcome::Failed, format!("${variable} is not set; not notified"), text);
    };
    let mut n = slack(&env.client, &url, text, env.slack_retry).await;
    n.detail = redactor.redact(&Redactor::new([url]).redact(&n.detail));
    if n.outcome == NotifyOutcome::Failed {
        tracing::error!(detail = %n.detail, "the Slack notification failed");
    }
    n
}
