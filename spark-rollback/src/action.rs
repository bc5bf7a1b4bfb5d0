//! Rollback actions: a command run with the rollback's reason in its
//! environment, or a signed webhook POST. Each is run once, under its
//! timeout, and recorded whatever happens.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use spark_evidence::Redactor;
use tokio::io::AsyncReadExt as _;

use crate::error::{RollbackError, chain, plan_error};

/// One configured action, `[[rollback.actions]]` in a plan, told apart by
/// `kind`.
///
/// ```
/// use spark_rollback::{Action, Plan};
///
/// let plan = Plan::from_toml(r#"
/// [[rollback.actions]]
/// kind = "command"
/// command = ["kubectl", "argo", "rollouts", "abort", "orders"]
/// timeout = "20s"
///
/// [[rollback.actions]]
/// kind = "webhook"
/// url = "https://deploy.example/hooks/rollback"
/// secret_env = "DEPLOY_HOOK_SECRET"
/// "#)?;
/// assert!(matches!(&plan.rollback.actions[0], Action::Command(c) if c.timeout.as_secs() == 20));
/// assert!(matches!(&plan.rollback.actions[1], Action::Webhook(w) if w.timeout.as_secs() == 10));
/// # Ok::<(), spark_rollback::RollbackError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Action {
    /// Run a program.
    Command(CommandAction),
    /// POST to a URL.
    Webhook(WebhookAction),
}

/// `kind = "command"`: a program and its arguments, run directly (no shell)
/// with `SPARK_ROLLBACK_REASON`, `SPARK_ROLLBACK_STAGE` and
/// `SPARK_ROLLBACK_TRIGGER` added to the environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandAction {
    /// The program and its arguments, `["prog", "arg", …]`.
    pub command: Vec<String>,
    /// How long it may run before it is killed (default 30 s).
    #[serde(with = "crate::plan::duration", default = "default_command_timeout")]
    pub timeout: Duration,
}

/// `kind = "webhook"`: a JSON POST of `{reason, stage, trigger,
/// decided_at}`, signed like the outbox webhooks (`X-Spark-Signature:
/// t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookAction {
    /// Where to POST (http or https; redirects are not followed).
    pub url: String,
    /// The environment variable holding the HMAC secret. When it is named
    /// but not set, the webhook fails instead of going out unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// How long the request may take (default 10 s).
    #[serde(with = "crate::plan::duration", default = "default_webhook_timeout")]
    pub timeout: Duration,
}

fn default_command_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Action {
    /// `command` or `webhook`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Command(_) => "command",
            Action::Webhook(_) => "webhook",
        }
    }

    /// The command line or the URL, for records (redact before writing).
    #[must_use]
    pub fn target(&self) -> String {
        match self {
            Action::Command(c) => c.command.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" "),
            Action::Webhook(w) => w.url.clone(),
        }
    }

    pub(crate) fn validate(&self, field: &str) -> Result<(), RollbackError> {
        let timeout = match self {
            Action::Command(c) => {
                if c.command.first().is_none_or(|p| p.trim().is_empty()) {
                    return Err(plan_error(format!("{field}.command"), "needs a program: [\"prog\", \"arg\", …]"));
                }
                c.timeout
            }
            Action::Webhook(w) => {
                let url = reqwest::Url::parse(&w.url).map_err(|e| {
                    plan_error(format!("{field}.url"), format!("{} does not parse ({e})", spark_db::redact_url(&w.url)))
                })?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(plan_error(format!("{field}.url"), "is not an http:// or https:// URL"));
                }
                if w.secret_env.as_ref().is_some_and(|e| e.trim().is_empty()) {
                    return Err(plan_error(format!("{field}.secret_env"), "is empty; leave it out to send unsigned"));
                }
                w.timeout
            }
        };
        if timeout.is_zero() {
            return Err(plan_error(format!("{field}.timeout"), "must be longer than 0s"));
        }
        Ok(())
    }
}

/// A word of a command line as a shell would need it, for records.
fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b':' | b'=' | b'%' | b'@' | b',')
        });
    if plain { arg.to_owned() } else { format!("'{}'", arg.replace('\'', "'\\''")) }
}

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionOutcome {
    /// Exit status 0, or a 2xx answer.
    Succeeded,
    /// Could not start, exited non-zero, or answered otherwise.
    Failed,
    /// Killed (a command) or abandoned (a request) at its timeout.
    TimedOut,
    /// A dry run: recorded, not run.
    DryRun,
}

impl ActionOutcome {
    /// `succeeded`, `failed`, `timed_out` or `dry_run`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ActionOutcome::Succeeded => "succeeded",
            ActionOutcome::Failed => "failed",
            ActionOutcome::TimedOut => "timed_out",
            ActionOutcome::DryRun => "dry_run",
        }
    }

    /// Whether this counts as a failed action (a dry run does not).
    #[must_use]
    pub fn is_failure(self) -> bool {
        matches!(self, ActionOutcome::Failed | ActionOutcome::TimedOut)
    }
}

/// What one action did. Every text in it is already redacted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionRecord {
    /// Its position in the plan, from 0.
    pub index: usize,
    /// `command` or `webhook`.
    pub kind: &'static str,
    /// The command line or the URL.
    pub target: String,
    /// How it ended.
    pub outcome: ActionOutcome,
    /// What happened, in words.
    pub detail: String,
    /// A command's exit code (none when killed by a signal or not run).
    pub exit_code: Option<i32>,
    /// A webhook's HTTP status.
    pub http_status: Option<u16>,
    /// When it started, milliseconds since the epoch.
    pub started_at_ms: i64,
    /// How long it took, milliseconds.
    pub duration_ms: u64,
    /// The command's standard output (at most [`OUTPUT_LIMIT`] bytes kept).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    /// The command's standard error (at most [`OUTPUT_LIMIT`] bytes kept).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stderr: String,
}

/// How much of a command's stdout and of its stderr is kept; the rest is
/// read and counted, so a chatty command never blocks on a full pipe.
pub const OUTPUT_LIMIT: usize = 16 * 1024;

/// What an action is told about the rollback.
pub(crate) struct Context<'a> {
    pub(crate) reason: &'a str,
    pub(crate) stage: &'a str,
    pub(crate) trigger: Option<&'a str>,
    pub(crate) decided_at_ms: i64,
    pub(crate) now_secs: i64,
    pub(crate) env: &'a (dyn Fn(&str) -> Option<String> + Send + Sync),
    pub(crate) client: &'a reqwest::Client,
    pub(crate) redactor: &'a Redactor,
}

/// The outcome fields of a record, before the common ones are added.
struct Done {
    outcome: ActionOutcome,
    detail: String,
    exit_code: Option<i32>,
    http_status: Option<u16>,
    stdout: String,
    stderr: String,
}

impl Done {
    fn new(outcome: ActionOutcome, detail: impl Into<String>) -> Done {
        Done {
            outcome,
            detail: detail.into(),
            exit_code: None,
            http_status: None,
            stdout: String::new(),
            stderr: String::new(),
        }
    }
}

/// Runs one action (or, in a dry run, records what it would do).
pub(crate) async fn run(
    index: usize,
    action: &Action,
    cx: &Context<'_>,
    dry_run: bool,
    started_at_ms: i64,
) -> ActionRecord {
    let start = Instant::now();
    let done = if dry_run {
        Done::new(
            ActionOutcome::DryRun,
            match action {
                Action::Command(c) => format!("would run with a {} timeout", humantime::format_duration(c.timeout)),
                Action::Webhook(w) => format!(
                    "would POST{} with a {} timeout",
                    if w.secret_env.is_some() { " signed" } else { "" },
                    humantime::format_duration(w.timeout)
                ),
            },
        )
    } else {
        match action {
            Action::Command(c) => command(c, cx).await,
            Action::Webhook(w) => webhook(index, w, cx).await,
        }
    };
    let r = cx.redactor;
    ActionRecord {
        index,
        kind: action.kind(),
        target: r.redact(&action.target()),
        outcome: done.outcome,
        detail: r.redact(&done.detail),
        exit_code: done.exit_code,
        http_status: done.http_status,
        started_at_ms,
        duration_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
        stdout: r.redact(&done.stdout),
        stderr: r.redact(&done.stderr),
    }
}

async fn command(spec: &CommandAction, cx: &Context<'_>) -> Done {
    // A plan built in code may skip validation; an empty command is then a
    // failed action, not a panic half-way through a rollback.
    let Some((program, args)) = spec.command.split_first() else {
        return Done::new(ActionOutcome::Failed, "no program to run: the command is empty");
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("SPARK_ROLLBACK_REASON", cx.reason)
        .env("SPARK_ROLLBACK_STAGE", cx.stage)
        .env("SPARK_ROLLBACK_TRIGGER", cx.trigger.unwrap_or(""))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return Done::new(ActionOutcome::Failed, format!("cannot start {program}: {e}")),
    };
    // Readers run as tasks so what was printed before a timeout is kept.
    let stdout = tokio::spawn(read_bounded(child.stdout.take()));
    let stderr = tokio::spawn(read_bounded(child.stderr.take()));
    let (outcome, detail, exit_code) = match tokio::time::timeout(spec.timeout, child.wait()).await {
        Ok(Ok(status)) => match status.code() {
            Some(0) => (ActionOutcome::Succeeded, "exited with status 0".to_owned(), Some(0)),
            Some(code) => (ActionOutcome::Failed, format!("exited with status {code}"), Some(code)),
            None => (ActionOutcome::Failed, format!("ended by a signal ({status})"), None),
        },
        Ok(Err(e)) => (ActionOutcome::Failed, format!("cannot wait for {program}: {e}"), None),
        Err(_) => {
            let killed = match child.kill().await {
                Ok(()) => "killed",
                Err(_) => "could not be killed",
            };
            let timeout = humantime::format_duration(spec.timeout);
            (ActionOutcome::TimedOut, format!("still running after {timeout}: {killed}"), None)
        }
    };
    // A process the command left behind may hold its pipes open; do not
    // wait for it beyond a moment.
    let collect = |task: tokio::task::JoinHandle<String>| async move {
        let abort = task.abort_handle();
        match tokio::time::timeout(Duration::from_millis(500), task).await {
            Ok(Ok(text)) => text,
            _ => {
                abort.abort();
                String::new()
            }
        }
    };
    let (stdout, stderr) = tokio::join!(collect(stdout), collect(stderr));
    Done { outcome, detail, exit_code, http_status: None, stdout, stderr }
}

/// Reads a pipe to its end, keeping the first [`OUTPUT_LIMIT`] bytes.
async fn read_bounded(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    let Some(mut pipe) = pipe else { return String::new() };
    let mut kept = Vec::new();
    let mut dropped = 0usize;
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = OUTPUT_LIMIT - kept.len();
                kept.extend_from_slice(&buf[..n.min(room)]);
                dropped += n.saturating_sub(room);
            }
        }
    }
    let mut text = String::from_utf8_lossy(&kept).into_owned();
    if dropped > 0 {
        text.push_str(&format!("\n… ({dropped} more bytes not kept)"));
    }
    text
}

async fn webhook(index: usize, spec: &WebhookAction, cx: &Context<'_>) -> Done {
    let body = serde_json::json!({
        "reason": cx.reason,
        "stage": cx.stage,
        "trigger": cx.trigger,
        "decided_at": crate::engine::rfc3339(cx.decided_at_ms),
    });
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let mut request = cx
        .client
        .post(&spec.url)
        .timeout(spec.timeout)
        .header("content-type", "application/json")
        .header("x-spark-event-type", "spark.rollback")
        // One key per decision and action: a receiver that sees the same
        // rollback twice (an operator re-running it) can tell.
        .header("idempotency-key", format!("rollback-{}-{index}", cx.decided_at_ms));
    if let Some(name) = &spec.secret_env {
        match (cx.env)(name) {
            Some(secret) if !secret.is_empty() => {
                let signature = spark_outbox::webhook::signature(secret.as_bytes(), cx.now_secs, &body);
                request = request.header("x-spark-signature", signature);
            }
            _ => {
                return Done::new(
                    ActionOutcome::Failed,
                    format!("the secret variable {name} is not set; not sent unsigned"),
                );
            }
        }
    }
    match request.body(body).send().await {
        Ok(response) => {
            let status = response.status();
            let mut done = if status.is_success() {
                Done::new(ActionOutcome::Succeeded, format!("answered {status}"))
            } else {
                Done::new(ActionOutcome::Failed, format!("answered {status}"))
            };
            done.http_status = Some(status.as_u16());
            done
        }
        Err(e) if e.is_timeout() => {
            Done::new(ActionOutcome::TimedOut, format!("no answer within {}", humantime::format_duration(spec.timeout)))
        }
        Err(e) => Done::new(ActionOutcome::Failed, format!("cannot reach it: {}", chain(&e.without_url()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_are_quoted_for_the_record() {
        let action = Action::Command(CommandAction {
            command: vec!["sh".into(), "-c".into(), "echo 'hi' > out".into()],
            timeout: Duration::from_secs(1),
        });
        assert_eq!(action.target(), "sh -c 'echo '\\''hi'\\'' > out'");
    }

    #[tokio::test]
    async fn output_beyond_the_limit_is_counted_not_kept() {
        let data = vec![b'x'; OUTPUT_LIMIT + 10];
        let text = read_bounded(Some(&data[..])).await;
        assert!(text.starts_with(&"x".repeat(OUTPUT_LIMIT)));
        assert!(text.ends_with("… (10 more bytes not kept)"), "{}", &text[OUTPUT_LIMIT..]);
    }
}
