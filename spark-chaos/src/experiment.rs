//! What every fault experiment produces: a hypothesis, the measurements,
//! the invariants with their measured values, a verdict, as evidence.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat};
use serde::Serialize;
use spark_evidence::{EvidenceDir, EvidenceFile, utc_stamp};

use crate::error::ChaosError;

/// An invariant of an experiment and what was measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invariant {
    /// Its name, such as `lost`.
    pub name: &'static str,
    /// Whether it held.
    pub held: bool,
    /// What was measured.
    pub value: String,
}

impl Invariant {
    /// An invariant that held when `held`.
    #[must_use]
    pub fn new(name: &'static str, held: bool, value: impl Into<String>) -> Invariant {
        Invariant { name, held, value: value.into() }
    }
}

/// One experiment's outcome: the shape of each entry of `spark chaos run
/// --json`'s `experiments`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExperimentReport {
    /// The scenario, such as `relay-crash`.
    pub scenario: String,
    /// What it set out to show.
    pub hypothesis: String,
    /// Whether every invariant held.
    pub held: bool,
    /// The invariants.
    pub invariants: Vec<Invariant>,
    /// Measurements by phase (`before`, `during`, `after`), each a map of
    /// names to values.
    pub measurements: BTreeMap<&'static str, BTreeMap<&'static str, serde_json::Value>>,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// How long it took, milliseconds.
    pub duration_ms: u64,
}

/// Measurements by phase (`before`, `during`, `after`), each a map of names
/// to values.
pub(crate) type Measurements = BTreeMap<&'static str, BTreeMap<&'static str, serde_json::Value>>;

impl ExperimentReport {
    /// The report of a run of `scenario` that started at `started_ms` (the
    /// clock's) and `origin` (for the duration): held when every invariant
    /// held.
    pub(crate) fn judged(
        scenario: &str,
        hypothesis: &str,
        invariants: Vec<Invariant>,
        measurements: Measurements,
        started_ms: i64,
        origin: std::time::Instant,
    ) -> ExperimentReport {
        let held = invariants.iter().all(|i| i.held);
        tracing::info!(scenario, held, "chaos experiment judged");
        ExperimentReport {
            scenario: scenario.to_owned(),
            hypothesis: hypothesis.to_owned(),
            held,
            invariants,
            measurements,
            started_at: rfc3339(started_ms),
            duration_ms: elapsed_ms(origin),
        }
    }

    /// The invariant `name`.
    #[must_use]
    pub fn invariant(&self, name: &str) -> Option<&Invariant> {
        self.invariants.iter().find(|i| i.name == name)
    }

    /// The report as the text of `chaos_<scenario>_<stamp>.txt`.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "Spark chaos experiment: {}", self.scenario);
        let _ = writeln!(t, "verdict:    {}", if self.held { "HELD" } else { "FAILED" });
        let _ = writeln!(t, "hypothesis: {}", self.hypothesis);
        let _ = writeln!(t, "started at: {}", self.started_at);
        let _ = writeln!(t, "duration:   {} ms", self.duration_ms);
        let _ = writeln!(t, "\nInvariants");
        for i in &self.invariants {
            let _ = writeln!(t, "  {:<22} {}  {}", i.name, if i.held { "held" } else { "BROKEN" }, i.value);
        }
        for (phase, values) in &self.measurements {
            let _ = writeln!(t, "\nMeasurements {phase}");
            for (name, value) in values {
                let _ = writeln!(t, "  {name}: {value}");
            }
        }
        t
    }

    /// Writes `chaos_<scenario>_<stamp>.txt` and `.json` (the stamp is the
    /// start) into `dir`.
    ///
    /// # Errors
    /// [`ChaosError::Evidence`] when a file cannot be written (or exists).
    pub fn write(&self, dir: &EvidenceDir) -> Result<Vec<EvidenceFile>, ChaosError> {
        write_pair(dir, &format!("chaos_{}", self.scenario), &self.started_at, &self.to_text(), self)
    }
}

/// Writes `<prefix>_<stamp>.txt` holding `text` and `<prefix>_<stamp>.json`
/// holding `value`, the stamp being `started_at` (RFC 3339) in UTC; a
/// second report started in the same second gets `<stamp>_2` (and so on):
/// evidence is never overwritten, and never lost to a name clash.
pub(crate) fn write_pair(
    dir: &EvidenceDir,
    prefix: &str,
    started_at: &str,
    text: &str,
    value: &impl Serialize,
) -> Result<Vec<EvidenceFile>, ChaosError> {
    let ms = DateTime::parse_from_rfc3339(started_at).map_or(0, |t| t.timestamp_millis());
    let base = format!("{prefix}_{}", utc_stamp(ms));
    let json = serde_json::to_string_pretty(value).unwrap_or_default() + "\n";
    let mut last = None;
    for n in 1..=1000 {
        let name = if n == 1 { base.clone() } else { format!("{base}_{n}") };
        if dir.contains(&format!("{name}.json")) {
            continue;
        }
        // `write` creates the file atomically or fails on an existing one:
        // of two writers racing for a name, one gets it, the other moves on.
        match dir.write(&format!("{name}.txt"), text.as_bytes()) {
            Ok(text) => return Ok(vec![text, dir.write(&format!("{name}.json"), json.as_bytes())?]),
            Err(e @ spark_evidence::EvidenceError::Exists { .. }) => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.map_or_else(|| ChaosError::Input(format!("no free name for {base}")), ChaosError::from))
}

/// Milliseconds since `since`, saturating.
pub(crate) fn elapsed_ms(since: std::time::Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the epoch as RFC 3339.
pub(crate) fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_reports_started_in_one_second_are_both_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = EvidenceDir::create(tmp.path()).unwrap();
        let first = write_pair(&dir, "chaos_x", "2026-12-07T12:00:00.100Z", "one", &1).unwrap();
        let second = write_pair(&dir, "chaos_x", "2026-12-07T12:00:00.900Z", "two", &2).unwrap();
        assert_eq!(first[0].name, "chaos_x_20261207T120000Z.txt");
        assert_eq!(second[0].name, "chaos_x_20261207T120000Z_2.txt");
        assert_eq!(second[1].name, "chaos_x_20261207T120000Z_2.json");
        assert_eq!(std::fs::read_to_string(&first[0].path).unwrap(), "one");
        assert_eq!(std::fs::read_to_string(&second[0].path).unwrap(), "two");
    }
}
