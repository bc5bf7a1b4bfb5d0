//! The canary engine: metrics in, decisions out.
//!
//! A release moves through stages (1 % → 5 % → 25 % → 50 % → 100 % by
//! default). At every interval the engine reads sixteen [`Signal`]s for the
//! canary and the baseline and decides to [`Decision::Continue`],
//! [`Decision::Promote`], [`Decision::Hold`] or [`Decision::Rollback`]:
//!
//! - **Gates** (six): what must hold, at the last three evaluations and past
//!   the stage minimum, before a stage is promoted. Missing data never
//!   promotes.
//! - **Triggers** (fourteen, plus two SLO burn-rate pairs): what rolls the
//!   canary back — thresholds held for a duration, canary-vs-baseline
//!   statistics (Mann-Whitney U, Theil–Sen slopes), counters that must not
//!   move. A degradation the baseline shares holds instead: the platform,
//!   not the release.
//!
//! The engine is pure and deterministic: an evaluation reads only the samples
//! at or before its instant, time comes from the caller (or an injected
//! [`spark_db::Clock`] in a live [`Run`]), and the same input always gives
//! the same decision. Metrics arrive as a [`Snapshot`] — the
//! `spark-metrics-snapshot/v1` format, each signal exactly a Prometheus
//! `query_range` matrix — from a [`PrometheusSource`], a [`FileSource`] or a
//! [`MemorySource`], so a live run recorded to a file replays to the same
//! decisions.
//!
//! ```
//! use spark_rollback::{Engine, Metrics, Plan, Role, Signal, Snapshot};
//!
//! // p95 jumps from 250 ms to 520 ms three minutes into the stage.
//! let start = 1_700_000_000;
//! let mut snapshot = Snapshot::new(15);
//! for i in 0..=60 {
//!     let t = start + i * 15;
//!     let p95 = if i > 12 { 0.52 } else { 0.25 };
//!     snapshot.push(Signal::ApiLatencyP95Seconds, Role::Canary, t, p95);
//!     snapshot.push(Signal::ApiLatencyP95Seconds, Role::Baseline, t, 0.09);
//! }
//! let engine = Engine::new(Plan::default())?;
//! let metrics = Metrics::from_snapshot(&snapshot)?;
//! let replay = engine.replay(&metrics, engine.plan().stage("25%")?, start * 1000, None)?;
//! assert_eq!(replay.decision().kind(), "rollback");
//! assert_eq!(replay.decision().trigger().map(|t| t.id()), Some("api_p95"));
//! assert_eq!(replay.last.at_ms, (start + 8 * 60) * 1000); // held above 400 ms for 5 minutes
//! # Ok::<(), spark_rollback::RollbackError>(())
//! ```
//!
//! # Rollback
//!
//! [`execute`] acts on a rollback: the plan's [`Action`]s in order (a
//! command with the reason in its environment, a webhook signed like the
//! outbox's; a failed action is recorded and the next still runs), then a
//! Slack notification that never blocks or fails it, then the evidence —
//! the [`RollbackRecord`] as text and JSON and the metrics before and
//! after — through [`spark_evidence`], every secret redacted.
//!
//! ```
//! use spark_db::Clock as _;
//! use spark_evidence::EvidenceDir;
//! use spark_rollback::{Plan, RollbackEnv, RollbackRequest, execute};
//!
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! let plan = Plan::from_toml(r#"
//! [[rollback.actions]]
//! kind = "command"
//! command = ["sh", "-c", "echo rolling back $SPARK_ROLLBACK_STAGE"]
//! "#)?;
//! let clock = spark_db::system_clock();
//! let request = RollbackRequest::new("p95 above 400 ms", "25%", clock.now_ms()).trigger("api_p95");
//! let dir = tempfile::tempdir()?;
//! let record = execute(&plan, &request, &RollbackEnv::new(clock)?, &EvidenceDir::create(dir.path())?).await?;
//! assert!(record.succeeded());
//! assert_eq!(record.actions[0].stdout, "rolling back 25%\n");
//! assert_eq!(record.files.len(), 4); // rollback_<ts>.txt/.json, metrics before and after
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Features
//! None: the crate always includes the Prometheus source (reqwest on rustls).

mod action;
mod canary_run;
pub mod dashboard;
mod engine;
mod error;
pub mod export;
mod gate;
mod live;
mod notify;
mod plan;
mod record;
mod rollback;
pub mod scenario;
mod scope;
mod signal;
mod snapshot;
mod source;
pub mod stats;
mod trigger;
mod watch;
pub mod weights;

pub use crate::action::{Action, ActionOutcome, ActionRecord, CommandAction, OUTPUT_LIMIT, WebhookAction};
pub use crate::canary_run::{RunOptions, RunOutcome, RunReport, run_canary};
pub use crate::engine::{Decision, Engine, Evaluation, Replay, Run, SOURCE_ERRORS_BEFORE_HOLD, TrailEntry, rfc3339};
pub use crate::error::{RollbackError, SourceError};
pub use crate::gate::{GateResult, GateStatus};
pub use crate::live::{evaluate_live, lookback};
pub use crate::notify::{Notification, NotifyOutcome, SlackPlan};
pub use crate::plan::{
    Above, AnyIncrease, BurnRate, ConnectionLeak, Correlated, DisconnectStorm, Gate, Gates, MemoryLeak, NonImproving,
    OutboxLag, Plan, Slo, Stage, Triggers, Weight,
};
pub use crate::record::{RECORD_FORMAT, RollbackRecord, Timing};
pub use crate::rollback::{DEFAULT_RUNBOOK, EnvLookup, RollbackEnv, RollbackPlan, RollbackRequest, execute};
pub use crate::signal::{Role, Signal};
pub use crate::snapshot::{FORMAT, Matrix, Metrics, RangeSeries, Snapshot, Timestamp, format_value};
pub use crate::source::{FileSource, MemorySource, MetricSource, PrometheusSource, Range};
pub use crate::trigger::{TriggerId, TriggerResult, TriggerStatus};
pub use crate::watch::{
    BaselineRef, CheckResult, CheckStatus, FileRef, Firing, GoBaseline, Incident, IntervalRecord, JOURNAL_FORMAT,
    JournalLine, MAX_DURATION, QuickChecks, RollbackRef, RollbackStarted, Sent, Verdict, WatchContext, WatchOptions,
    WatchStart, WatchSummary, watch,
};
