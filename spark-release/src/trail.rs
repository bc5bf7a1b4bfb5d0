//! Reading a canary run's decision trail (`canary_run_<release>.jsonl`,
//! written by [`spark_rollback::run_canary`]) back into stages.

use std::path::Path;

use serde::Serialize;

use crate::error::ReleaseError;

/// The six gates, in the plan's order.
pub const GATES: [&str; 6] = ["api_p95", "error_rate", "ws_staleness", "risk_blocks", "idem_conflicts", "csp"];

/// One gate at a stage's last evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateValue {
    /// The gate (`api_p95`).
    pub name: String,
    /// The canary's value, if there was a recent one.
    pub value: Option<f64>,
    /// The bound.
    pub threshold: Option<f64>,
    /// `pass`, `fail`, `missing`, `insufficient` or `off`.
    pub status: String,
}

/// One stage as the trail tells it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageRecord {
    /// The traffic weight (`5%`).
    pub weight: String,
    /// When its weight was set, milliseconds.
    pub started_ms: i64,
    /// When the next stage started or the run ended, milliseconds.
    pub ended_ms: Option<i64>,
    /// `promoted`, `rolled back`, `interrupted`, `weight failed`,
    /// `error` or `running`.
    pub status: String,
    /// The trigger, when it rolled back.
    pub trigger: Option<String>,
    /// Evaluations in the stage.
    pub evaluations: usize,
    /// The gates at its last evaluation that carried them.
    pub gates: Vec<GateValue>,
}

impl StageRecord {
    /// A stage that started at `at` and has not ended.
    fn running(weight: String, at: Option<i64>) -> StageRecord {
        StageRecord {
            weight,
            started_ms: at.unwrap_or(0),
            ended_ms: None,
            status: "running".to_owned(),
            trigger: None,
            evaluations: 0,
            gates: Vec::new(),
        }
    }

    /// Gates passed at the last evaluation, of six.
    #[must_use]
    pub fn gates_passed(&self) -> usize {
        self.gates.iter().filter(|g| g.status == "pass").count()
    }
}

/// A run's stages and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trail {
    /// The stages, in order.
    pub stages: Vec<StageRecord>,
    /// `completed`, `rollback`, `interrupted`, `weight-failed`, `error`, or
    /// `running` when the trail has no end.
    pub outcome: String,
    /// Whether any run in it was a dry run.
    pub dry_run: bool,
    /// The first event's time, milliseconds.
    pub first_ms: Option<i64>,
    /// The last event's time, milliseconds.
    pub last_ms: Option<i64>,
}

fn at_ms(line: &serde_json::Value) -> Option<i64> {
    let at = line["at"].as_str()?;
    chrono::DateTime::parse_from_rfc3339(at).ok().map(|t| t.timestamp_millis())
}

/// Reads a trail. Runs appended to one file (a resumed release) read as
/// one sequence of stages.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("canary_run_v1.jsonl");
/// std::fs::write(&path, concat!(
///     r#"{"event":"start","at":"2026-12-07T10:00:00Z","release":"v1","dry_run":false}"#, "\n",
///     r#"{"event":"weight","at":"2026-12-07T10:00:00Z","stage":"1%","status":"set"}"#, "\n",
///     r#"{"event":"evaluation","at":"2026-12-07T10:15:00Z","stage":"1%","decision":"promote","trigger":null,"reason":"ok","gates":[{"name":"api_p95","value":0.1,"threshold":0.25,"status":"pass"}]}"#, "\n",
///     r#"{"event":"end","at":"2026-12-07T10:15:00Z","outcome":"completed"}"#, "\n",
/// ))?;
/// let trail = spark_release::read_trail(&path)?;
/// assert_eq!(trail.stages[0].status, "promoted");
/// assert_eq!(trail.stages[0].ended_ms.unwrap() - trail.stages[0].started_ms, 15 * 60_000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`ReleaseError::Read`] when it cannot be read, [`ReleaseError::Invalid`]
/// naming the line that is not a trail event.
pub fn read_trail(path: &Path) -> Result<Trail, ReleaseError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReleaseError::Read { path: path.to_owned(), source })?;
    let invalid = |n: usize, message: String| ReleaseError::Invalid {
        path: path.to_owned(),
        message: format!("line {n}: {message}"),
    };
    let mut stages: Vec<StageRecord> = Vec::new();
    let mut outcome = "running".to_owned();
    let mut dry_run = false;
    let (mut first_ms, mut last_ms) = (None, None);
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let line: serde_json::Value = serde_json::from_str(raw).map_err(|e| invalid(n, format!("not JSON: {e}")))?;
        let event = line["event"].as_str().ok_or_else(|| invalid(n, "no \"event\"".to_owned()))?;
        let at = at_ms(&line);
        if let Some(at) = at {
            first_ms = Some(first_ms.map_or(at, |f: i64| f.min(at)));
            last_ms = Some(last_ms.map_or(at, |l: i64| l.max(at)));
        }
        match event {
            "start" => {
                dry_run |= line["dry_run"] == true;
                outcome = "running".to_owned();
                // A new run: the stage it starts is a new row even when the
                // weight repeats.
                if let Some(last) = stages.last_mut() {
                    last.ended_ms = last.ended_ms.or(at);
                }
                stages.push(StageRecord::running(String::new(), at));
            }
            "weight" => {
                let weight =
                    line["stage"].as_str().ok_or_else(|| invalid(n, "a weight event without \"stage\"".to_owned()))?;
                match stages.last_mut() {
                    Some(last) if last.weight.is_empty() => {
                        last.weight = weight.to_owned();
                        if let Some(at) = at {
                            last.started_ms = at;
                        }
                    }
                    Some(last) if last.weight == weight => {}
                    _ => {
                        if let Some(last) = stages.last_mut() {
                            last.ended_ms = last.ended_ms.or(at);
                        }
                        stages.push(StageRecord::running(weight.to_owned(), at));
                    }
                }
                if line["status"] == "failed"
                    && let Some(last) = stages.last_mut()
                {
                    last.status = "weight failed".to_owned();
                }
            }
            "evaluation" => {
                let Some(last) = stages.last_mut() else {
                    return Err(invalid(n, "an evaluation before any stage".to_owned()));
                };
                last.evaluations += 1;
                let gates: Vec<GateValue> = line["gates"]
                    .as_array()
                    .map(|gates| {
                        gates
                            .iter()
                            .map(|g| GateValue {
                                name: g["name"].as_str().unwrap_or_default().to_owned(),
                                value: g["value"].as_f64(),
                                threshold: g["threshold"].as_f64(),
                                status: g["status"].as_str().unwrap_or_default().to_owned(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if !gates.is_empty() {
                    last.gates = gates;
                }
                match line["decision"].as_str() {
                    Some("promote") => {
                        last.status = "promoted".to_owned();
                        last.ended_ms = at;
                    }
                    Some("rollback") => {
                        last.status = "rolled back".to_owned();
                        last.trigger = line["trigger"].as_str().map(str::to_owned);
                        last.ended_ms = at;
                    }
                    _ => {}
                }
            }
            "interrupted" => {
                if let Some(last) = stages.last_mut() {
                    last.status = "interrupted".to_owned();
                    last.ended_ms = at;
                }
            }
            "end" => {
                outcome = line["outcome"].as_str().unwrap_or("unknown").to_owned();
                if let Some(last) = stages.last_mut() {
                    last.ended_ms = last.ended_ms.or(at);
                    if outcome == "error" && last.status == "running" {
                        last.status = "error".to_owned();
                    }
                }
            }
            // Snapshot notes and events of later versions are not stages.
            _ => {}
        }
    }
    // A start with no weight after it names no stage.
    stages.retain(|s| !s.weight.is_empty());
    Ok(Trail { stages, outcome, dry_run, first_ms, last_ms })
}
