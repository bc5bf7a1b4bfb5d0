//! The `spark-metrics-snapshot/v1` format and the validated series the
//! engine reads.
//!
//! A snapshot is one JSON object whose `signals` map each signal name to
//! exactly what Prometheus's `query_range` returns as `data`: a `matrix` of
//! series, each with its labels and `[unix seconds, "value"]` pairs. So a
//! snapshot is written by copying Prometheus's answers, and replaying it
//! gives the engine the same input it had live.
//!
//! Missing data stays missing: a signal absent from the file, a role with no
//! series, a gap in `values` or a `"NaN"` value is never read as zero.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{RollbackError, snapshot_error};
use crate::signal::{Role, Signal, unknown_signal};

/// The value of a snapshot's `format` field.
pub const FORMAT: &str = "spark-metrics-snapshot/v1";

/// A recorded set of signals: what `spark metrics snapshot` writes and every
/// metric source can produce.
///
/// ```
/// use spark_rollback::{Metrics, Role, Signal, Snapshot};
///
/// let mut snapshot = Snapshot::new(15);
/// snapshot.push(Signal::Http5xxRatio, Role::Canary, 1_700_000_000, 0.002);
/// let json = snapshot.to_json();
/// let back = Snapshot::parse(&json)?;
/// assert_eq!(back, snapshot);
/// let metrics = Metrics::from_snapshot(&back)?;
/// assert_eq!(metrics.step_seconds(), 15);
/// # Ok::<(), spark_rollback::RollbackError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Always [`FORMAT`].
    pub format: String,
    /// The resolution the series were queried at, seconds.
    pub step_seconds: u32,
    /// Each signal's `query_range` result, by signal name.
    pub signals: BTreeMap<String, Matrix>,
}

/// A Prometheus range-query result (`data` of `/api/v1/query_range`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Matrix {
    /// Always `matrix`.
    #[serde(rename = "resultType")]
    pub result_type: String,
    /// One entry per series.
    pub result: Vec<RangeSeries>,
}

/// One series of a range result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeSeries {
    /// Its labels; `role` says whether it is the canary or the baseline.
    pub metric: BTreeMap<String, String>,
    /// `[unix seconds, "value"]`, ascending.
    pub values: Vec<(Timestamp, String)>,
}

/// A sample time as Prometheus writes it: unix seconds, a JSON number with
/// up to millisecond precision. Held as milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0 % 1000 == 0 {
            serializer.serialize_i64(self.0 / 1000)
        } else {
            #[allow(clippy::cast_precision_loss, reason = "milliseconds since 1970 stay far below 2^53")]
            serializer.serialize_f64(self.0 as f64 / 1000.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let seconds = f64::deserialize(deserializer)?;
        if !seconds.is_finite() || !(0.0..=1e11).contains(&seconds) {
            return Err(serde::de::Error::custom(format!("{seconds} is not a unix time in seconds")));
        }
        #[allow(clippy::cast_possible_truncation, reason = "bounded to 1e14 ms just above")]
        Ok(Timestamp((seconds * 1000.0).round() as i64))
    }
}

impl Snapshot {
    /// An empty snapshot at `step_seconds` resolution.
    #[must_use]
    pub fn new(step_seconds: u32) -> Snapshot {
        Snapshot { format: FORMAT.to_owned(), step_seconds, signals: BTreeMap::new() }
    }

    /// Appends one sample (`NaN` writes Prometheus's `"NaN"`, which reads
    /// back as missing data).
    pub fn push(&mut self, signal: Signal, role: Role, unix_seconds: i64, value: f64) {
        let matrix = self
            .signals
            .entry(signal.name().to_owned())
            .or_insert_with(|| Matrix { result_type: "matrix".to_owned(), result: Vec::new() });
        let series =
            match matrix.result.iter().position(|s| s.metric.get("role").map(String::as_str) == Some(role.name())) {
                Some(i) => &mut matrix.result[i],
                None => {
                    let metric = BTreeMap::from([("role".to_owned(), role.name().to_owned())]);
                    matrix.result.push(RangeSeries { metric, values: Vec::new() });
                    matrix.result.last_mut().expect("just pushed")
                }
            };
        series.values.push((Timestamp(unix_seconds.saturating_mul(1000)), format_value(value)));
    }

    /// Parses a snapshot; an error names the JSON path of the bad field.
    ///
    /// # Errors
    /// [`RollbackError::Snapshot`] for JSON of another shape, another
    /// `format`, or a value that fails [`Metrics::from_snapshot`]'s checks.
    pub fn parse(json: &str) -> Result<Snapshot, RollbackError> {
        let de = &mut serde_json::Deserializer::from_str(json);
        let snapshot: Snapshot = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            snapshot_error(if path == "." { "(document)".to_owned() } else { path }, e.into_inner().to_string())
        })?;
        Metrics::from_snapshot(&snapshot)?;
        Ok(snapshot)
    }

    /// Reads and parses a snapshot file.
    ///
    /// # Errors
    /// [`RollbackError::Io`] when the file cannot be read, otherwise as
    /// [`Snapshot::parse`].
    pub fn load(path: &Path) -> Result<Snapshot, RollbackError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| RollbackError::Io { path: path.to_owned(), source })?;
        Snapshot::parse(&text)
    }

    /// The snapshot as pretty JSON.
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a snapshot is plain JSON")
    }

    /// One line per signal with the latest canary and baseline values (and
    /// their times), `missing` where a role has no value: the readable half
    /// of a metrics evidence file.
    ///
    /// ```
    /// use spark_rollback::{Role, Signal, Snapshot};
    ///
    /// let mut snapshot = Snapshot::new(15);
    /// snapshot.push(Signal::Http5xxRatio, Role::Canary, 1_795_712_400, 0.04);
    /// snapshot.push(Signal::Http5xxRatio, Role::Baseline, 1_795_712_400, f64::NAN);
    /// let summary = snapshot.summary();
    /// assert!(summary.contains("http_5xx_ratio"), "{summary}");
    /// assert!(summary.contains("0.04 at 2026-11-26T17:00:00Z"), "{summary}");
    /// assert!(summary.lines().any(|l| l.starts_with("http_5xx_ratio") && l.ends_with("missing")), "{summary}");
    /// ```
    #[must_use]
    pub fn summary(&self) -> String {
        let latest = |signal: Signal, role: Role| -> String {
            let series = self
                .signals
                .get(signal.name())
                .and_then(|m| m.result.iter().find(|s| s.metric.get("role").map(String::as_str) == Some(role.name())));
            let last = series
                .and_then(|s| s.values.iter().rev().find_map(|(t, v)| parse_value(v).ok().flatten().map(|v| (t.0, v))));
            last.map_or_else(
                || "missing".to_owned(),
                |(t, v)| format!("{} at {}", format_value(v), crate::engine::rfc3339(t)),
            )
        };
        let mut out = format!("{:<34} {:<40} {}\n", "signal", "canary (latest)", "baseline (latest)");
        for signal in Signal::ALL {
            out.push_str(&format!(
                "{:<34} {:<40} {}\n",
                signal.name(),
                latest(signal, Role::Canary),
                latest(signal, Role::Baseline)
            ));
        }
        out
    }

    /// Writes the snapshot as pretty JSON.
    ///
    /// # Errors
    /// [`RollbackError::Io`] when the file cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), RollbackError> {
        std::fs::write(path, self.to_json() + "\n")
            .map_err(|source| RollbackError::Io { path: path.to_owned(), source })
    }
}

/// A value the way Prometheus writes one: the shortest decimal that reads
/// back as the same `f64`, `+Inf`, `-Inf` or `NaN`.
#[must_use]
pub fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{value}")
    }
}

/// Reads a Prometheus sample value. `NaN` is missing data (`None`).
pub(crate) fn parse_value(text: &str) -> Result<Option<f64>, String> {
    let value = match text {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => return Ok(None),
        _ => {
            let ok = !text.is_empty()
                && text.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
            let parsed = if ok { text.parse::<f64>().ok() } else { None };
            parsed.ok_or_else(|| format!("{text:?} is not a decimal number, +Inf, -Inf or NaN"))?
        }
    };
    Ok(Some(value))
}

/// The samples of one signal for one role: ascending times (milliseconds),
/// missing samples left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Series {
    pub(crate) t: Vec<i64>,
    pub(crate) v: Vec<f64>,
    /// `sums[i]` is the sum of the finite values before index `i`: a window's
    /// sum in two lookups. Replay asks for the requests since the stage
    /// started at every instant, which summed afresh is quadratic in the
    /// stage's length.
    sums: Vec<f64>,
}

impl Series {
    /// Indexes the prefix sums once the samples are in.
    fn seal(&mut self) {
        self.sums.clear();
        self.sums.reserve(self.v.len() + 1);
        let mut total = 0.0;
        self.sums.push(total);
        for &v in &self.v {
            if v.is_finite() {
                total += v;
            }
            self.sums.push(total);
        }
    }

    /// The sum of the finite values with `from < t <= to`.
    pub(crate) fn sum(&self, from: i64, to: i64) -> f64 {
        let start = self.t.partition_point(|&t| t <= from);
        let end = self.t.partition_point(|&t| t <= to).max(start);
        self.sums[end] - self.sums[start]
    }

    /// The samples with `from < t <= to`.
    pub(crate) fn window(&self, from: i64, to: i64) -> Window<'_> {
        let start = self.t.partition_point(|&t| t <= from);
        let end = self.t.partition_point(|&t| t <= to);
        let end = end.max(start);
        Window { t: &self.t[start..end], v: &self.v[start..end] }
    }
}

/// A slice of a [`Series`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window<'a> {
    pub(crate) t: &'a [i64],
    pub(crate) v: &'a [f64],
}

impl Window<'_> {
    pub(crate) fn len(&self) -> usize {
        self.t.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.t.is_empty()
    }

    pub(crate) fn last(&self) -> Option<(i64, f64)> {
        Some((*self.t.last()?, *self.v.last()?))
    }
}

/// Validated series for every signal and role, as the engine reads them.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    step_ms: i64,
    series: Vec<Series>,
}

impl Metrics {
    /// Validates a snapshot and indexes its series.
    ///
    /// # Errors
    /// [`RollbackError::Snapshot`] naming the field: another `format`, a step
    /// of zero, an unknown signal, a result that is not a `matrix`, a series
    /// without a `role` of `canary` or `baseline`, two series for one role
    /// (aggregate `by (role)` in the query), a value that is not a number,
    /// or times that do not ascend.
    pub fn from_snapshot(snapshot: &Snapshot) -> Result<Metrics, RollbackError> {
        if snapshot.format != FORMAT {
            return Err(snapshot_error("format", format!("{:?} is not {FORMAT:?}", snapshot.format)));
        }
        if snapshot.step_seconds == 0 {
            return Err(snapshot_error("step_seconds", "must be at least 1"));
        }
        let mut series = vec![Series::default(); Signal::ALL.len() * 2];
        for (name, matrix) in &snapshot.signals {
            let field = format!("signals.{name}");
            let signal = Signal::from_name(name).ok_or_else(|| snapshot_error(&field, unknown_signal(name)))?;
            if matrix.result_type != "matrix" {
                return Err(snapshot_error(
                    format!("{field}.resultType"),
                    format!("{:?} is not \"matrix\" (use query_range)", matrix.result_type),
                ));
            }
            let mut seen = [false; 2];
            for (i, s) in matrix.result.iter().enumerate() {
                let field = format!("{field}.result[{i}]");
                let role = match s.metric.get("role").map(String::as_str) {
                    Some("canary") => Role::Canary,
                    Some("baseline") => Role::Baseline,
                    Some(other) => {
                        return Err(snapshot_error(
                            format!("{field}.metric.role"),
                            format!("{other:?} is neither \"canary\" nor \"baseline\""),
                        ));
                    }
                    None => {
                        return Err(snapshot_error(
                            format!("{field}.metric"),
                            "no role label: aggregate the query `by (role)` and label targets canary or baseline",
                        ));
                    }
                };
                if std::mem::replace(&mut seen[role.index()], true) {
                    return Err(snapshot_error(
                        &field,
                        format!("a second series for role {role}: aggregate the query `by (role)`"),
                    ));
                }
                let out = &mut series[slot(signal, role)];
                let mut last = i64::MIN;
                for (j, (t, text)) in s.values.iter().enumerate() {
                    let field = format!("{field}.values[{j}]");
                    if t.0 <= last {
                        return Err(snapshot_error(field, "times must ascend, each once"));
                    }
                    last = t.0;
                    if let Some(v) = parse_value(text).map_err(|m| snapshot_error(&field, m))? {
                        out.t.push(t.0);
                        out.v.push(v);
                    }
                }
            }
        }
        for s in &mut series {
            s.seal();
        }
        Ok(Metrics { step_ms: i64::from(snapshot.step_seconds) * 1000, series })
    }

    /// The resolution, seconds.
    #[must_use]
    pub fn step_seconds(&self) -> i64 {
        self.step_ms / 1000
    }

    pub(crate) fn step_ms(&self) -> i64 {
        self.step_ms
    }

    pub(crate) fn series(&self, signal: Signal, role: Role) -> &Series {
        &self.series[slot(signal, role)]
    }

    /// The first and last sample time over all series, milliseconds.
    #[must_use]
    pub fn span_ms(&self) -> Option<(i64, i64)> {
        let first = self.series.iter().filter_map(|s| s.t.first()).min()?;
        let last = self.series.iter().filter_map(|s| s.t.last()).max()?;
        Some((*first, *last))
    }
}

fn slot(signal: Signal, role: Role) -> usize {
    signal.index() * 2 + role.index()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> String {
        format!(
            r#"{{"format":"{FORMAT}","step_seconds":15,"signals":{{"http_5xx_ratio":{{"resultType":"matrix","result":[{{"metric":{{"role":"canary"}},"values":[[1700000000,"0.1"],[1700000015,{value}]]}}]}}}}}}"#
        )
    }

    #[test]
    fn a_bad_value_is_named_by_its_path() {
        let err = Snapshot::parse(&with("\"abc\"")).unwrap_err().to_string();
        assert_eq!(
            err,
            "snapshot: signals.http_5xx_ratio.result[0].values[1]: \"abc\" is not a decimal number, +Inf, -Inf or NaN"
        );
        let err = Snapshot::parse(&with("7")).unwrap_err().to_string();
        assert!(err.starts_with("snapshot: signals.http_5xx_ratio.result[0].values[1]"), "{err}");
    }

    #[test]
    fn nan_is_a_gap_and_inf_is_kept() {
        let snapshot = Snapshot::parse(&with("\"NaN\"")).unwrap();
        let m = Metrics::from_snapshot(&snapshot).unwrap();
        assert_eq!(m.series(Signal::Http5xxRatio, Role::Canary).t, vec![1_700_000_000_000]);
        let m = Metrics::from_snapshot(&Snapshot::parse(&with("\"+Inf\"")).unwrap()).unwrap();
        assert_eq!(m.series(Signal::Http5xxRatio, Role::Canary).v[1], f64::INFINITY);
    }

    #[test]
    fn structural_errors_name_the_field() {
        let cases = [
            (with("\"1\"").replace(FORMAT, "v0"), "snapshot: format: \"v0\" is not"),
            (with("\"1\"").replace("http_5xx_ratio", "http_5xx"), "snapshot: signals.http_5xx: unknown signal"),
            (with("\"1\"").replace("canary", "blue"), "snapshot: signals.http_5xx_ratio.result[0].metric.role"),
            (with("\"1\"").replace("1700000015", "1700000000"), "times must ascend"),
            (with("\"1\"").replace("\"step_seconds\":15", "\"step_seconds\":0"), "snapshot: step_seconds"),
            (with("\"1\"").replace("\"format\"", "\"fmt\""), "snapshot: fmt: unknown field"),
        ];
        for (json, expected) in cases {
            let err = Snapshot::parse(&json).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} lacks {expected}");
        }
    }

    #[test]
    fn two_series_for_one_role_are_refused() {
        let mut s = Snapshot::new(15);
        s.push(Signal::DbConnections, Role::Canary, 1, 1.0);
        let dup = s.signals["db_connections"].result[0].clone();
        s.signals.get_mut("db_connections").unwrap().result.push(dup);
        let err = Metrics::from_snapshot(&s).unwrap_err().to_string();
        assert!(err.contains("a second series for role canary"), "{err}");
    }

    #[test]
    fn fractional_timestamps_round_trip() {
        let json = with("\"2\"").replace("1700000015", "1700000015.781");
        let s = Snapshot::parse(&json).unwrap();
        assert_eq!(s.signals["http_5xx_ratio"].result[0].values[1].0, Timestamp(1_700_000_015_781));
        assert_eq!(Snapshot::parse(&s.to_json()).unwrap(), s);
    }

    #[test]
    fn windows_are_half_open() {
        let mut s = Series { t: vec![10, 20, 30, 40], v: vec![1.0, 2.0, f64::NAN, 4.0], sums: Vec::new() };
        s.seal();
        assert_eq!(s.window(10, 40).v[0], 2.0);
        assert_eq!(s.sum(10, 40), 6.0);
        assert_eq!(s.sum(0, 100), 7.0);
        assert_eq!(s.sum(40, 50), 0.0);
        assert!(s.window(40, 50).is_empty());
        assert_eq!(s.window(0, 100).len(), 4);
    }
}
