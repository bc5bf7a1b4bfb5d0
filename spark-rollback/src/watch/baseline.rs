//! The GO-time baseline a watch compares the release with, and the
//! snapshot each evaluation reads: the release's live series as the
//! `canary` role, the GO-time series laid over the same instants as the
//! `baseline` role.
//!
//! At 100 % there is no baseline fleet left to compare with, so the
//! reference is what the service did at GO time: the snapshot the ritual
//! took (`baseline_metrics_<release>.txt`) or any `spark-metrics-snapshot/v1`
//! file. It is shorter than the trigger windows (an hour against the slow
//! burn rate's six), so it is repeated back from the evaluation instant,
//! its last sample aligned with the instant: the baseline says "what GO
//! time looked like", at every sample a window asks for. A trigger that
//! fires on the release while the GO-time data would fire it too is
//! `platform`, as in the canary engine.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{RollbackError, snapshot_error};
use crate::signal::{Role, Signal};
use crate::snapshot::{Matrix, RangeSeries, Snapshot, Timestamp, format_value, parse_value};
use crate::stats::median;

/// The GO-time reference of a watch.
///
/// ```
/// use spark_rollback::{GoBaseline, Role, Signal, Snapshot};
///
/// let mut go = Snapshot::new(15);
/// for i in 0..4 {
///     go.push(Signal::ApiLatencyP95Seconds, Role::Baseline, 1_700_000_000 + i * 15, 0.08);
/// }
/// let baseline = GoBaseline::from_snapshot(&go, "go.json")?;
/// assert_eq!(baseline.median(Signal::ApiLatencyP95Seconds), Some(0.08));
/// assert_eq!(baseline.median(Signal::Http5xxRatio), None); // not in the snapshot: missing, never zero
/// # Ok::<(), spark_rollback::RollbackError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct GoBaseline {
    reference: BaselineRef,
    step_ms: i64,
    /// Per signal: the chosen series, ascending, missing samples left out.
    series: BTreeMap<Signal, (Vec<i64>, Vec<f64>)>,
    /// The span the snapshot covers, first and last sample time.
    first_ms: i64,
    last_ms: i64,
    /// Each signal's median, computed once.
    medians: BTreeMap<Signal, f64>,
}

/// Signals whose GO-time reference is their median, not the repeated
/// series: a counter repeated would drop where the series starts over (read
/// as a reset, an increase), and a trend would become a sawtooth; either
/// could make the baseline look as bad as a faulty release.
const LEVEL_ONLY: [Signal; 3] =
    [Signal::DecimalPrecisionErrorsTotal, Signal::ProcessResidentMemoryBytes, Signal::DbConnections];

/// Where a watch's baseline came from, as its journal records it: a resumed
/// watch must compare with the same data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineRef {
    /// The file, as given.
    pub source: String,
    /// The SHA-256 of the file's bytes.
    pub sha256: String,
    /// The first sample, RFC 3339.
    pub from: String,
    /// The last sample, RFC 3339.
    pub to: String,
}

/// The header line before the snapshot in `baseline_metrics_<release>.txt`.
const RITUAL_MARKER: &str = "replayable with spark canary replay:";

impl GoBaseline {
    /// Reads a GO-time baseline: a `spark-metrics-snapshot/v1` JSON file, or
    /// the ritual's `baseline_metrics_<release>.txt`, whose snapshot follows
    /// its header.
    ///
    /// # Errors
    /// [`RollbackError::Io`] when the file cannot be read;
    /// [`RollbackError::Snapshot`] when it holds no valid snapshot (a
    /// ritual that could not take one says so, and that is the error), or
    /// no sample at all.
    pub fn load(path: &Path) -> Result<GoBaseline, RollbackError> {
        let bytes = std::fs::read(path).map_err(|source| RollbackError::Io { path: path.to_owned(), source })?;
        let text = String::from_utf8_lossy(&bytes);
        let json = match text.find(RITUAL_MARKER) {
            Some(i) => &text[i + RITUAL_MARKER.len()..],
            None if text.trim_start().starts_with('{') => &text,
            None => {
                let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
                let why = if text.contains("NOT TAKEN") || text.contains("FAILED") {
                    "the ritual did not take a baseline snapshot (see the file); watch without --baseline or take one"
                } else {
                    "is neither a metrics snapshot (JSON) nor the ritual's baseline_metrics_<release>.txt"
                };
                return Err(snapshot_error(path.display().to_string(), format!("{why} (it starts {first:?})")));
            }
        };
        let snapshot = Snapshot::parse(json.trim())?;
        let mut baseline = GoBaseline::from_snapshot(&snapshot, path.display().to_string())?;
        baseline.reference.sha256 = spark_evidence::sha256_hex(&bytes);
        Ok(baseline)
    }

    /// A baseline from a snapshot in memory; `source` names it in reports.
    /// Each signal's reference is its `baseline` series, or its `canary`
    /// series when it has no baseline (a snapshot of one fleet), or its only
    /// series.
    ///
    /// # Errors
    /// [`RollbackError::Snapshot`] when the snapshot holds no sample.
    pub fn from_snapshot(snapshot: &Snapshot, source: impl Into<String>) -> Result<GoBaseline, RollbackError> {
        let mut series = BTreeMap::new();
        let (mut first_ms, mut last_ms) = (i64::MAX, i64::MIN);
        for signal in Signal::ALL {
            let Some(matrix) = snapshot.signals.get(signal.name()) else { continue };
            let Some(chosen) = pick(matrix, &[Role::Baseline, Role::Canary]) else { continue };
            let (mut t, mut v) = (Vec::new(), Vec::new());
            for (time, text) in &chosen.values {
                if let Ok(Some(value)) = parse_value(text) {
                    t.push(time.0);
                    v.push(value);
                }
            }
            if let (Some(&a), Some(&b)) = (t.first(), t.last()) {
                first_ms = first_ms.min(a);
                last_ms = last_ms.max(b);
                series.insert(signal, (t, v));
            }
        }
        if series.is_empty() {
            return Err(snapshot_error("signals", "the baseline snapshot holds no sample"));
        }
        let reference = BaselineRef {
            source: source.into(),
            sha256: spark_evidence::sha256_hex(snapshot.to_json().as_bytes()),
            from: crate::engine::rfc3339(first_ms),
            to: crate::engine::rfc3339(last_ms),
        };
        let medians = series.iter().filter_map(|(s, (_, v))| Some((*s, median(&mut v.clone())?))).collect();
        Ok(GoBaseline {
            reference,
            step_ms: i64::from(snapshot.step_seconds.max(1)) * 1000,
            series,
            first_ms,
            last_ms,
            medians,
        })
    }

    /// Where it came from.
    #[must_use]
    pub fn reference(&self) -> &BaselineRef {
        &self.reference
    }

    /// The median of a signal's GO-time values; `None` when it has none.
    #[must_use]
    pub fn median(&self, signal: Signal) -> Option<f64> {
        self.medians.get(&signal).copied()
    }

    /// The GO-time value standing for instant `t` of an evaluation at `at`:
    /// the sample `(at − t) mod span` before the snapshot's last one, within
    /// half a step; `None` in a gap. For counters and trends, the median.
    fn at(&self, signal: Signal, at: i64, t: i64) -> Option<f64> {
        if LEVEL_ONLY.contains(&signal) {
            return self.median(signal);
        }
        let (times, values) = self.series.get(&signal)?;
        let span = self.last_ms - self.first_ms + self.step_ms;
        let wanted = self.last_ms - (at - t).rem_euclid(span);
        let i = times.partition_point(|&x| x < wanted);
        [i.checked_sub(1), Some(i)]
            .into_iter()
            .flatten()
            .filter_map(|j| Some((times.get(j)?, values.get(j)?)))
            .filter(|(x, _)| (*x - wanted).abs() * 2 <= self.step_ms)
            .min_by_key(|(x, _)| (*x - wanted).abs())
            .map(|(_, v)| *v)
    }
}

/// The series of `matrix` standing for the first of `roles` that has data,
/// or its only series whatever its labels.
pub(crate) fn pick<'a>(matrix: &'a Matrix, roles: &[Role]) -> Option<&'a RangeSeries> {
    let has_data = |s: &&RangeSeries| !s.values.is_empty();
    for role in roles {
        let found = matrix
            .result
            .iter()
            .filter(has_data)
            .find(|s| s.metric.get("role").map(String::as_str) == Some(role.name()));
        if found.is_some() {
            return found;
        }
    }
    match matrix.result.iter().filter(has_data).collect::<Vec<_>>().as_slice() {
        [only] => Some(only),
        _ => None,
    }
}

/// What an evaluation reads, and how it was put together.
pub(crate) struct Composition {
    /// The release as `canary`, the GO-time values as `baseline`.
    pub(crate) snapshot: Snapshot,
    /// Signals whose live answer had several unlabelled series: left
    /// missing, never summed here.
    pub(crate) ambiguous: Vec<Signal>,
    /// The role of the series that stood for the release, per signal.
    pub(crate) roles: BTreeMap<Signal, String>,
}

/// The series of a live answer standing for the release at `at`: the only
/// series with data, whatever its labels; else, of the series labelled
/// `canary` or `baseline`, the one with the newest sample at or before `at`
/// (the canary on a tie). After a promotion that moved the release onto the
/// stable deployment, the canary's series stops; its old samples must not
/// stand for the release.
fn pick_live(matrix: &Matrix, at: i64) -> Option<(&RangeSeries, &'static str)> {
    let latest = |s: &RangeSeries| s.values.iter().rev().map(|(t, _)| t.0).find(|t| *t <= at);
    let with_data: Vec<&RangeSeries> = matrix.result.iter().filter(|s| latest(s).is_some()).collect();
    if let [only] = with_data.as_slice() {
        let role = match only.metric.get("role").map(String::as_str) {
            Some("canary") => "canary",
            Some("baseline") => "baseline",
            _ => "unlabelled",
        };
        return Some((only, role));
    }
    [Role::Canary, Role::Baseline]
        .into_iter()
        .filter_map(|role| {
            let s = with_data.iter().find(|s| s.metric.get("role").map(String::as_str) == Some(role.name()))?;
            Some((*s, role.name(), latest(s)?, role == Role::Canary))
        })
        .max_by_key(|(_, _, t, canary)| (*t, *canary))
        .map(|(s, role, _, _)| (s, role))
}

/// The snapshot an evaluation at `at` reads: each signal's live series for
/// the release ([`pick_live`]) as `canary`, and the GO-time values at every
/// step from `start_ms` to `at` as `baseline`.
pub(crate) fn compose(live: &Snapshot, baseline: Option<&GoBaseline>, start_ms: i64, at: i64) -> Composition {
    let mut out = Snapshot::new(live.step_seconds);
    let mut ambiguous = Vec::new();
    let mut roles = BTreeMap::new();
    let step_ms = i64::from(live.step_seconds.max(1)) * 1000;
    for signal in Signal::ALL {
        let mut result = Vec::new();
        if let Some(matrix) = live.signals.get(signal.name()) {
            match pick_live(matrix, at) {
                Some((series, role)) => {
                    roles.insert(signal, role.to_owned());
                    result.push(RangeSeries {
                        metric: BTreeMap::from([("role".to_owned(), Role::Canary.name().to_owned())]),
                        values: series.values.iter().filter(|(t, _)| t.0 <= at).cloned().collect(),
                    });
                }
                None if matrix.result.iter().filter(|s| !s.values.is_empty()).count() > 1 => ambiguous.push(signal),
                None => {}
            }
        }
        if let Some(baseline) = baseline {
            let mut values = Vec::new();
            let mut t = start_ms;
            while t <= at {
                if let Some(v) = baseline.at(signal, at, t) {
                    values.push((Timestamp(t), format_value(v)));
                }
                t += step_ms;
            }
            if !values.is_empty() {
                result.push(RangeSeries {
                    metric: BTreeMap::from([("role".to_owned(), Role::Baseline.name().to_owned())]),
                    values,
                });
            }
        }
        if !result.is_empty() {
            out.signals.insert(signal.name().to_owned(), Matrix { result_type: "matrix".to_owned(), result });
        }
    }
    Composition { snapshot: out, ambiguous, roles }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Metrics;

    fn go() -> GoBaseline {
        let mut s = Snapshot::new(10);
        // Four samples, 10 s apart: 1, 2, 3, 4 (a ramp, so positions show).
        for i in 0..4 {
            s.push(
                Signal::ApiLatencyP95Seconds,
                Role::Baseline,
                1_000 + i * 10,
                f64::from(i32::try_from(i).unwrap() + 1),
            );
            s.push(Signal::ApiLatencyP95Seconds, Role::Canary, 1_000 + i * 10, 99.0);
        }
        s.push(Signal::Http5xxRatio, Role::Canary, 1_000, 0.5);
        GoBaseline::from_snapshot(&s, "test").unwrap()
    }

    #[test]
    fn the_baseline_role_is_preferred_and_a_canary_only_signal_still_counts() {
        let b = go();
        assert_eq!(b.median(Signal::ApiLatencyP95Seconds), Some(2.5));
        assert_eq!(b.median(Signal::Http5xxRatio), Some(0.5));
        assert_eq!(b.median(Signal::DbConnections), None);
    }

    #[test]
    fn the_go_time_series_repeats_back_from_the_instant_with_its_last_sample_at_the_instant() {
        let b = go();
        let at = 50_000_000;
        let value = |t| b.at(Signal::ApiLatencyP95Seconds, at, t);
        assert_eq!(value(at), Some(4.0));
        assert_eq!(value(at - 10_000), Some(3.0));
        assert_eq!(value(at - 30_000), Some(1.0));
        assert_eq!(value(at - 40_000), Some(4.0), "one span back it starts over");
        assert_eq!(value(at - 4_000), Some(4.0), "within half a step");
        assert_eq!(value(at - 6_000), Some(3.0));
    }

    #[test]
    fn a_gap_in_the_go_time_data_stays_a_gap() {
        let mut s = Snapshot::new(10);
        s.push(Signal::WsStalenessSeconds, Role::Baseline, 1_000, 5.0);
        s.push(Signal::WsStalenessSeconds, Role::Baseline, 1_020, 7.0); // 1_010 missing
        let b = GoBaseline::from_snapshot(&s, "test").unwrap();
        let at = 9_000_000;
        assert_eq!(b.at(Signal::WsStalenessSeconds, at, at), Some(7.0));
        assert_eq!(b.at(Signal::WsStalenessSeconds, at, at - 10_000), None);
        assert_eq!(b.at(Signal::WsStalenessSeconds, at, at - 20_000), Some(5.0));
    }

    #[test]
    fn composing_labels_the_release_canary_and_lays_the_go_time_values_over_the_window() {
        let mut live = Snapshot::new(10);
        let at_s: i64 = 2_000_000;
        for i in 0..=6 {
            // A promotion relabelled the fleet: the release reports as baseline.
            live.push(Signal::ApiLatencyP95Seconds, Role::Baseline, at_s - 60 + i * 10, 0.3);
        }
        let c = compose(&live, Some(&go()), (at_s - 60) * 1000, at_s * 1000);
        assert!(c.ambiguous.is_empty());
        assert_eq!(c.roles[&Signal::ApiLatencyP95Seconds], "baseline");
        let snapshot = c.snapshot;
        let metrics = Metrics::from_snapshot(&snapshot).unwrap();
        let canary = metrics.series(Signal::ApiLatencyP95Seconds, Role::Canary);
        assert_eq!(canary.v, vec![0.3; 7]);
        let baseline = metrics.series(Signal::ApiLatencyP95Seconds, Role::Baseline);
        assert_eq!(baseline.v, vec![2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(baseline.t, canary.t, "the GO-time values sit on the live grid");
    }

    #[test]
    fn a_canary_series_that_stopped_at_the_promotion_does_not_stand_for_the_release() {
        let mut live = Snapshot::new(10);
        // The canary deployment was removed at 1_000_030; the stable one
        // runs the release from then on.
        for t in (1_000_000..=1_000_030).step_by(10) {
            live.push(Signal::HttpRequestsPerSecond, Role::Canary, t, 5.0);
        }
        for t in (1_000_000..=1_000_120).step_by(10) {
            live.push(Signal::HttpRequestsPerSecond, Role::Baseline, t, 50.0);
        }
        let c = compose(&live, None, 1_000_000_000, 1_000_120_000);
        assert_eq!(c.roles[&Signal::HttpRequestsPerSecond], "baseline");
        let metrics = Metrics::from_snapshot(&c.snapshot).unwrap();
        assert_eq!(metrics.series(Signal::HttpRequestsPerSecond, Role::Canary).v.last(), Some(&50.0));
        // While both report, the canary wins the tie.
        let c = compose(&live, None, 1_000_000_000, 1_000_030_000);
        assert_eq!(c.roles[&Signal::HttpRequestsPerSecond], "canary");
    }

    #[test]
    fn counters_and_trends_are_compared_with_their_go_time_median_not_repeated() {
        let mut s = Snapshot::new(10);
        for (i, v) in [5.0, 6.0, 7.0].into_iter().enumerate() {
            s.push(Signal::DecimalPrecisionErrorsTotal, Role::Baseline, 1_000 + 10 * i64::try_from(i).unwrap(), v);
        }
        let b = GoBaseline::from_snapshot(&s, "test").unwrap();
        let at = 9_000_000;
        let values: Vec<Option<f64>> =
            (0..6).map(|k| b.at(Signal::DecimalPrecisionErrorsTotal, at, at - k * 10_000)).collect();
        assert!(values.iter().all(|v| *v == Some(6.0)), "{values:?}: a repeated counter would drop from 7 to 5");
    }

    #[test]
    fn several_unlabelled_live_series_are_missing_not_summed() {
        let mut live = Snapshot::new(10);
        let matrix = Matrix {
            result_type: "matrix".to_owned(),
            result: ["a", "b"]
                .iter()
                .map(|pod| RangeSeries {
                    metric: BTreeMap::from([("pod".to_owned(), (*pod).to_owned())]),
                    values: vec![(Timestamp(1_000_000), "1".to_owned())],
                })
                .collect(),
        };
        live.signals.insert(Signal::DbConnections.name().to_owned(), matrix);
        let c = compose(&live, None, 990_000, 1_000_000);
        assert_eq!(c.ambiguous, vec![Signal::DbConnections]);
        assert!(c.snapshot.signals.is_empty());
    }

    #[test]
    fn the_ritual_file_and_a_bare_snapshot_both_load_and_a_missing_baseline_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Snapshot::new(15);
        s.push(Signal::Http5xxRatio, Role::Baseline, 1_700_000_000, 0.001);
        let bare = dir.path().join("go.json");
        std::fs::write(&bare, s.to_json()).unwrap();
        let ritual = dir.path().join("baseline_metrics_v1.txt");
        std::fs::write(
            &ritual,
            format!(
                "Baseline metrics\n\nsource: x\n\nThe snapshot (spark-metrics-snapshot/v1), {RITUAL_MARKER}\n\n{}\n",
                s.to_json()
            ),
        )
        .unwrap();
        let a = GoBaseline::load(&bare).unwrap();
        let b = GoBaseline::load(&ritual).unwrap();
        assert_eq!(a.median(Signal::Http5xxRatio), b.median(Signal::Http5xxRatio));
        assert_ne!(a.reference().sha256, b.reference().sha256, "the digest is the file's");
        let none = dir.path().join("baseline_metrics_v2.txt");
        std::fs::write(&none, "Baseline metrics: NOT TAKEN\n\nNo Prometheus is configured\n").unwrap();
        let err = GoBaseline::load(&none).unwrap_err().to_string();
        assert!(err.contains("did not take a baseline"), "{err}");
    }
}
