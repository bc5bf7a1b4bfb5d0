//! Running checks: concurrently, each under a timeout, into a [`Report`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::check::{Check, Outcome, Status};
use crate::context::Context;
use crate::error::ChecksError;
use crate::report::Report;

/// The checks of `checks` whose ids are in `only` (all when `only` is
/// empty), in their original order.
///
/// # Errors
///
/// [`ChecksError::Config`] naming an id in `only` that no check has.
pub fn select(checks: Vec<Arc<dyn Check>>, only: &[String]) -> Result<Vec<Arc<dyn Check>>, ChecksError> {
    if only.is_empty() {
        return Ok(checks);
    }
    for id in only {
        if !checks.iter().any(|c| c.id() == id) {
            let known: Vec<&str> = checks.iter().map(|c| c.id()).collect();
            return Err(ChecksError::Config {
                source_name: "--only".to_owned(),
                message: format!("no check is called {id:?}; the checks are {}", known.join(", ")),
            });
        }
    }
    Ok(checks.into_iter().filter(|c| only.iter().any(|id| id == c.id())).collect())
}

/// Runs `checks` concurrently, each in its own task under the configured
/// timeout (`check.timeout_ms`), and collects their outcomes in order.
///
/// A check that times out fails with "timed out" and is aborted; one that
/// panics fails with the panic message. Passwords of every configured URL
/// are scrubbed from the report, whatever a target echoed back.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::sync::Arc;
/// use spark_checks::{Config, Context, Status};
///
/// // No database configured: the database checks skip and say why.
/// let ctx = Arc::new(Context::new(Config::default()));
/// let report = spark_checks::scan(&ctx, spark_checks::checks::all()).await;
/// assert!(report.checks.iter().any(|c| c.status == Status::Skip));
/// # }
/// ```
pub async fn scan(ctx: &Arc<Context>, checks: Vec<Arc<dyn Check>>) -> Report {
    let started_ms = ctx.clock().now_ms();
    let start = Instant::now();
    let timeout = Duration::from_millis(ctx.config().check.timeout_ms);
    let tasks: Vec<(&'static str, tokio::task::JoinHandle<Outcome>)> = checks
        .into_iter()
        .map(|check| {
            let ctx = Arc::clone(ctx);
            let id = check.id();
            let task = tokio::spawn(async move {
                let began = Instant::now();
                let mut outcome = match tokio::time::timeout(timeout, check.run(&ctx)).await {
                    Ok(outcome) => outcome,
                    Err(_) => Outcome::unreachable(
                        check.id(),
                        format!("timed out after {} ms: the target did not answer", timeout.as_millis()),
                    ),
                };
                outcome.duration = began.elapsed();
                tracing::debug!(check = check.id(), status = %outcome.status, "check finished");
                outcome
            });
            (id, task)
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for (id, task) in tasks {
        let outcome = match task.await {
            Ok(outcome) => outcome,
            Err(e) => {
                let why = if e.is_panic() { panic_message(e.into_panic()) } else { "was cancelled".to_owned() };
                Outcome::unreachable(id, format!("the check panicked: {why}"))
            }
        };
        outcomes.push(outcome);
    }
    let mut report = Report::new(started_ms, start.elapsed(), outcomes);
    report.scrub(&ctx.config().secrets());
    report
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// The overall verdict of outcomes: `fail` if any failed, `warn` if any
/// warned or nothing was checked at all, `pass` otherwise.
#[must_use]
pub fn overall(outcomes: &[Outcome]) -> Status {
    let worst = outcomes.iter().map(|o| o.status).filter(|s| *s != Status::Skip).max();
    match worst {
        None => Status::Warn,
        Some(Status::Fail) => Status::Fail,
        Some(Status::Warn) => Status::Warn,
        Some(_) => Status::Pass,
    }
}
