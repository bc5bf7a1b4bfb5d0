//! The Check API: a check measures one blind spot and returns an [`Outcome`].

use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::context::Context;

/// One blind-spot check.
///
/// A check measures, it never assumes: no data or an unreachable target is
/// [`Status::Warn`] or [`Status::Fail`], never [`Status::Pass`];
/// [`Status::Skip`] only when the check is not configured, with the reason.
/// The scan runs checks concurrently, each under the configured timeout, so
/// a check may simply await its target.
///
/// ```
/// use spark_checks::{Check, Context, Outcome, Measurement};
///
/// struct DiskFree;
///
/// #[async_trait::async_trait]
/// impl Check for DiskFree {
///     fn id(&self) -> &'static str {
///         "disk"
///     }
///     async fn run(&self, _ctx: &Context) -> Outcome {
///         let mut outcome = Outcome::new(self.id());
///         // warn below 20 % free, fail below 10 %.
///         outcome.measure(Measurement::below("free", 42.0, "%", 20.0, 10.0));
///         outcome.finish("42 % free")
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait Check: Send + Sync {
    /// The stable id (`clock`, `migrations`, …) used by `--only` and in
    /// reports.
    fn id(&self) -> &'static str;

    /// Runs the check. It never panics on a bad target: a failure to measure
    /// is a `Warn` or `Fail` outcome saying what could not be measured.
    async fn run(&self, ctx: &Context) -> Outcome;
}

/// A check's verdict, ordered from best to worst (`max` is the worst).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Measured and within thresholds.
    Pass,
    /// Not configured; the summary says what to configure.
    Skip,
    /// Measured and worth a look, or could not be measured fully.
    Warn,
    /// Measured and out of bounds, or the target could not be reached.
    Fail,
}

impl Status {
    /// `"pass"`, `"skip"`, `"warn"` or `"fail"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Skip => "skip",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which side of a threshold is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Values above the limits are bad (an offset).
    Above,
    /// Values at or above the limits are bad (a saturation that reaches
    /// 90 %, a wait of 1 s or more).
    AtLeast,
    /// Values below the limits are bad (free space, an age's remaining
    /// budget).
    Below,
}

/// The limits a measurement is judged against.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Threshold {
    /// Warn beyond this value.
    pub warn: Option<f64>,
    /// Fail beyond this value.
    pub fail: Option<f64>,
    /// Which side is bad.
    pub direction: Direction,
}

impl Threshold {
    /// Bad above `warn` (warn) or `fail` (fail); either may be absent.
    #[must_use]
    pub fn above(warn: Option<f64>, fail: Option<f64>) -> Threshold {
        Threshold { warn, fail, direction: Direction::Above }
    }

    /// Bad at or above `warn` (warn) or `fail` (fail).
    #[must_use]
    pub fn at_least(warn: Option<f64>, fail: Option<f64>) -> Threshold {
        Threshold { warn, fail, direction: Direction::AtLeast }
    }

    /// The status of `value` against these limits. A value exactly at a
    /// limit is still within it (`pass ≤ 100 ms`).
    #[must_use]
    pub fn judge(&self, value: f64) -> Status {
        let beyond = |limit: Option<f64>| {
            limit.is_some_and(|l| match self.direction {
                Direction::Above => value > l,
                Direction::AtLeast => value >= l,
                Direction::Below => value < l,
            })
        };
        // A value that is not a number was not measured: never a pass.
        if value.is_nan() || beyond(self.fail) {
            Status::Fail
        } else if beyond(self.warn) {
            Status::Warn
        } else {
            Status::Pass
        }
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match self.direction {
            Direction::Above => ">",
            Direction::AtLeast => ">=",
            Direction::Below => "<",
        };
        match (self.warn, self.fail) {
            (Some(w), Some(x)) => write!(f, "warn {op} {w}, fail {op} {x}"),
            (Some(w), None) => write!(f, "warn {op} {w}"),
            (None, Some(x)) => write!(f, "fail {op} {x}"),
            (None, None) => f.write_str("none"),
        }
    }
}

/// One measured value, its unit, the threshold it was judged against and
/// the verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measurement {
    /// What was measured (`offset_ms`, `public.orders.id`, …).
    pub name: String,
    /// The value.
    pub value: f64,
    /// Its unit (`ms`, `%`, `count`, …).
    pub unit: String,
    /// The limits, when the value is judged.
    pub threshold: Option<Threshold>,
    /// The verdict on this value alone.
    pub status: Status,
}

impl Measurement {
    /// A value that is only recorded, not judged.
    #[must_use]
    pub fn info(name: impl Into<String>, value: f64, unit: &str) -> Measurement {
        Measurement { name: name.into(), value, unit: unit.to_owned(), threshold: None, status: Status::Pass }
    }

    /// A value that is bad when above `warn` (warn) or `fail` (fail).
    #[must_use]
    pub fn above(name: impl Into<String>, value: f64, unit: &str, warn: f64, fail: f64) -> Measurement {
        Measurement::judged(
            name,
            value,
            unit,
            Threshold { warn: Some(warn), fail: Some(fail), direction: Direction::Above },
        )
    }

    /// A value that is bad when below `warn` (warn) or `fail` (fail).
    #[must_use]
    pub fn below(name: impl Into<String>, value: f64, unit: &str, warn: f64, fail: f64) -> Measurement {
        Measurement::judged(
            name,
            value,
            unit,
            Threshold { warn: Some(warn), fail: Some(fail), direction: Direction::Below },
        )
    }

    /// A value judged against `threshold`.
    #[must_use]
    pub fn judged(name: impl Into<String>, value: f64, unit: &str, threshold: Threshold) -> Measurement {
        let status = threshold.judge(value);
        Measurement { name: name.into(), value, unit: unit.to_owned(), threshold: Some(threshold), status }
    }
}

/// Something a check found that is not a number: a misconfigured pool mode,
/// a float price column, a failed migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// How bad it is.
    pub status: Status,
    /// What was found, naming the object and what to do.
    pub message: String,
}

/// What one check found.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The check's id.
    pub id: String,
    /// The worst of its measurements and findings.
    pub status: Status,
    /// One line: the worst finding, or what passed.
    pub summary: String,
    /// Every value measured, with its threshold and verdict.
    pub measurements: Vec<Measurement>,
    /// Everything found that is not a number, worst first.
    pub findings: Vec<Finding>,
    /// Check-specific evidence (redacted: never a password).
    pub details: serde_json::Value,
    /// How long the check took, in seconds in JSON.
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
}

/// A duration as seconds in JSON (the reports' unit).
pub(crate) fn seconds<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Outcome {
    /// An empty outcome for check `id`; add measurements and findings, then
    /// [`Outcome::finish`].
    #[must_use]
    pub fn new(id: &str) -> Outcome {
        Outcome {
            id: id.to_owned(),
            status: Status::Pass,
            summary: String::new(),
            measurements: Vec::new(),
            findings: Vec::new(),
            details: serde_json::Value::Object(serde_json::Map::new()),
            duration: Duration::ZERO,
        }
    }

    /// A check that is not configured: `Skip` with the reason.
    #[must_use]
    pub fn skip(id: &str, reason: impl Into<String>) -> Outcome {
        let mut outcome = Outcome::new(id);
        outcome.status = Status::Skip;
        outcome.summary = reason.into();
        outcome
    }

    /// A check that could not reach its target: `Fail` with the reason.
    #[must_use]
    pub fn unreachable(id: &str, reason: impl Into<String>) -> Outcome {
        let mut outcome = Outcome::new(id);
        outcome.found(Status::Fail, reason);
        outcome.finish("")
    }

    /// Records a measurement.
    pub fn measure(&mut self, m: Measurement) -> &mut Outcome {
        self.measurements.push(m);
        self
    }

    /// Records a finding.
    pub fn found(&mut self, status: Status, message: impl Into<String>) -> &mut Outcome {
        self.findings.push(Finding { status, message: message.into() });
        self
    }

    /// Sets `details[key] = value`.
    pub fn detail(&mut self, key: &str, value: impl Serialize) -> &mut Outcome {
        if let serde_json::Value::Object(map) = &mut self.details {
            map.insert(key.to_owned(), serde_json::to_value(value).unwrap_or(serde_json::Value::Null));
        }
        self
    }

    /// Computes the status (the worst measurement or finding) and the
    /// summary: the worst finding or failing measurement when anything is
    /// not a pass, otherwise `pass_summary`.
    #[must_use]
    pub fn finish(mut self, pass_summary: &str) -> Outcome {
        // Worst first, in the order they were found within a status.
        self.findings.sort_by_key(|f| std::cmp::Reverse(f.status));
        let worst_finding = self.findings.first().map(|f| f.status).unwrap_or(Status::Pass);
        let worst_measure = self.measurements.iter().map(|m| m.status).max().unwrap_or(Status::Pass);
        self.status = worst_finding.max(worst_measure);
        if self.status == Status::Pass {
            self.summary = pass_summary.to_owned();
            return self;
        }
        let mut problems: Vec<String> = Vec::new();
        for f in self.findings.iter().filter(|f| f.status == self.status) {
            problems.push(f.message.clone());
        }
        for m in self.measurements.iter().filter(|m| m.status == self.status) {
            let limit = m.threshold.map(|t| format!(" ({t})")).unwrap_or_default();
            problems.push(format!("{} = {}{}{limit}", m.name, format_value(m.value), unit_suffix(&m.unit)));
        }
        self.summary = match problems.len() {
            0 => pass_summary.to_owned(),
            1 => problems.remove(0),
            n => format!("{} (and {} more)", problems.remove(0), n - 1),
        };
        self
    }
}

/// A value as reports print it: integers without a fraction, others with at
/// most three decimals.
#[must_use]
pub(crate) fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

pub(crate) fn unit_suffix(unit: &str) -> String {
    match unit {
        "" | "count" => String::new(),
        "%" => "%".to_owned(),
        u => format!(" {u}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_at_the_limit_is_within_it() {
        let t = Threshold { warn: Some(100.0), fail: Some(250.0), direction: Direction::Above };
        assert_eq!(t.judge(100.0), Status::Pass);
        assert_eq!(t.judge(100.5), Status::Warn);
        assert_eq!(t.judge(250.0), Status::Warn);
        assert_eq!(t.judge(250.1), Status::Fail);
        assert_eq!(t.judge(f64::NAN), Status::Fail);
        let at_least = Threshold::at_least(Some(70.0), Some(90.0));
        assert_eq!(at_least.judge(69.9), Status::Pass);
        assert_eq!(at_least.judge(70.0), Status::Warn);
        assert_eq!(at_least.judge(90.0), Status::Fail);
        assert_eq!(at_least.to_string(), "warn >= 70, fail >= 90");
        assert_eq!(Threshold::above(None, Some(0.0)).to_string(), "fail > 0");
        let below = Threshold { warn: Some(20.0), fail: Some(10.0), direction: Direction::Below };
        assert_eq!(below.judge(15.0), Status::Warn);
        assert_eq!(below.judge(5.0), Status::Fail);
    }

    #[test]
    fn the_worst_finding_or_measurement_decides_and_is_the_summary() {
        let mut o = Outcome::new("x");
        o.measure(Measurement::above("offset_ms", 120.0, "ms", 100.0, 250.0));
        o.found(Status::Pass, "fine");
        let o = o.finish("all good");
        assert_eq!(o.status, Status::Warn);
        assert_eq!(o.summary, "offset_ms = 120 ms (warn > 100, fail > 250)");

        let mut o = Outcome::new("x");
        o.measure(Measurement::above("a", 300.0, "ms", 100.0, 250.0));
        o.found(Status::Fail, "b is broken");
        let o = o.finish("all good");
        assert_eq!(o.status, Status::Fail);
        assert_eq!(o.summary, "b is broken (and 1 more)");

        assert_eq!(Outcome::new("x").finish("all good").summary, "all good");
    }

    #[test]
    fn values_print_plainly() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(2.5), "2.5");
        assert_eq!(format_value(0.1234), "0.123");
    }
}
