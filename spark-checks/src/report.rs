//! A scan's [`Report`] as a table, JSON, JUnit XML and evidence files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::check::{Outcome, Status, format_value, seconds, unit_suffix};
use crate::error::ChecksError;

/// The evidence file a scan writes in human-readable form.
pub const EVIDENCE_TEXT: &str = "blind_spots_scan.txt";
/// The evidence file a scan writes as JSON.
pub const EVIDENCE_JSON: &str = "blind_spots_scan.json";

/// What a scan found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `pass`, `warn` or `fail` (see [`crate::overall`]).
    pub status: Status,
    /// When the scan started, RFC 3339 UTC.
    pub started_at: String,
    /// How long the whole scan took, in seconds in JSON.
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
    /// One outcome per check, in the order the checks were given.
    pub checks: Vec<Outcome>,
}

/// An evidence file written, with its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EvidenceFile {
    /// Where it was written.
    pub path: PathBuf,
    /// Lower-case hex SHA-256 of its bytes.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
}

impl Report {
    pub(crate) fn new(started_ms: i64, duration: Duration, checks: Vec<Outcome>) -> Report {
        Report { status: crate::scan::overall(&checks), started_at: rfc3339(started_ms), duration, checks }
    }

    /// The outcome of check `id`.
    #[must_use]
    pub fn check(&self, id: &str) -> Option<&Outcome> {
        self.checks.iter().find(|c| c.id == id)
    }

    /// Replaces every occurrence of each secret with `***`, everywhere in
    /// the report (summaries, findings, details).
    pub(crate) fn scrub(&mut self, secrets: &[String]) {
        if secrets.is_empty() {
            return;
        }
        let scrub = |s: &mut String| {
            for secret in secrets {
                if s.contains(secret.as_str()) {
                    *s = s.replace(secret.as_str(), "***");
                }
            }
        };
        for outcome in &mut self.checks {
            scrub(&mut outcome.summary);
            for f in &mut outcome.findings {
                scrub(&mut f.message);
            }
            for m in &mut outcome.measurements {
                scrub(&mut m.name);
            }
            scrub_json(&mut outcome.details, &scrub);
        }
    }

    /// One line per check: status, id, duration, summary; then the verdict.
    #[must_use]
    pub fn table(&self) -> String {
        let width = self.checks.iter().map(|c| c.id.len()).max().unwrap_or(5).max(5);
        let mut out = String::new();
        for c in &self.checks {
            let _ = writeln!(
                out,
                "{:<4}  {:<width$}  {:>7}  {}",
                c.status.as_str().to_ascii_uppercase(),
                c.id,
                format!("{:.3}s", c.duration.as_secs_f64()),
                c.summary
            );
        }
        let count = |s: Status| self.checks.iter().filter(|c| c.status == s).count();
        let _ = write!(
            out,
            "{}: {} passed, {} warned, {} failed, {} skipped in {:.3}s",
            self.status.as_str().to_ascii_uppercase(),
            count(Status::Pass),
            count(Status::Warn),
            count(Status::Fail),
            count(Status::Skip),
            self.duration.as_secs_f64()
        );
        out
    }

    /// The report as one JSON value:
    /// `{"status", "started_at", "duration", "checks": [{"id", "status",
    /// "summary", "measurements", "findings", "details", "duration"}]}`.
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// JUnit XML: one test suite `spark check`, one test case per check; a
    /// failed check is a failure, a skipped one skipped, and a warning passes
    /// with the warning in its output.
    ///
    /// # Errors
    ///
    /// Only if XML serialisation fails.
    pub fn junit(&self) -> Result<String, ChecksError> {
        use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};
        let mut suite = TestSuite::new("spark check");
        suite.set_time(self.duration);
        for c in &self.checks {
            let status = match c.status {
                Status::Pass | Status::Warn => TestCaseStatus::success(),
                Status::Skip => {
                    let mut s = TestCaseStatus::skipped();
                    s.set_message(c.summary.as_str());
                    s
                }
                Status::Fail => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    s.set_message(c.summary.as_str());
                    s.set_description(section(c));
                    s
                }
            };
            let mut case = TestCase::new(c.id.as_str(), status);
            case.set_classname("spark.check");
            case.set_time(c.duration);
            if c.status != Status::Fail {
                case.set_system_out(section(c));
            }
            suite.add_test_case(case);
        }
        let mut report = quick_junit::Report::new("spark check");
        report.set_time(self.duration);
        report.add_test_suite(suite);
        report.to_string().map_err(|e| ChecksError::Write {
            path: PathBuf::from("<junit>"),
            source: std::io::Error::other(e.to_string()),
        })
    }

    /// The human-readable evidence: a header, then one section per check
    /// with every measured value and its threshold, the findings and the
    /// details.
    #[must_use]
    pub fn evidence_text(&self) -> String {
        let mut out = format!(
            "Spark blind-spot scan\nstarted: {}\nduration: {:.3}s\nverdict: {}\n",
            self.started_at,
            self.duration.as_secs_f64(),
            self.status
        );
        for c in &self.checks {
            out.push('\n');
            out.push_str(&section(c));
        }
        out
    }

    /// Writes [`EVIDENCE_TEXT`], [`EVIDENCE_JSON`] and one
    /// `blind_spots_<id>.json` per check into `dir` (created if missing),
    /// and returns each file with its SHA-256.
    ///
    /// # Errors
    ///
    /// [`ChecksError::Write`] naming the file that could not be written.
    pub fn write_evidence(&self, dir: &Path) -> Result<Vec<EvidenceFile>, ChecksError> {
        std::fs::create_dir_all(dir).map_err(|source| ChecksError::Write { path: dir.to_owned(), source })?;
        let mut files = Vec::new();
        files.push(write_file(dir, EVIDENCE_TEXT, self.evidence_text().as_bytes())?);
        let json = serde_json::to_vec_pretty(self).unwrap_or_default();
        files.push(write_file(dir, EVIDENCE_JSON, &json)?);
        for c in &self.checks {
            let json = serde_json::to_vec_pretty(c).unwrap_or_default();
            files.push(write_file(dir, &format!("blind_spots_{}.json", c.id), &json)?);
        }
        Ok(files)
    }
}

fn section(c: &Outcome) -> String {
    let mut out = format!(
        "== {} : {} ({:.3}s)\n{}\n",
        c.id,
        c.status.as_str().to_ascii_uppercase(),
        c.duration.as_secs_f64(),
        c.summary
    );
    for m in &c.measurements {
        let threshold = m.threshold.map_or_else(|| "recorded".to_owned(), |t| t.to_string());
        let _ = writeln!(
            out,
            "  [{}] {} = {}{}  ({threshold})",
            m.status,
            m.name,
            format_value(m.value),
            unit_suffix(&m.unit)
        );
    }
    for f in &c.findings {
        let _ = writeln!(out, "  [{}] {}", f.status, f.message);
    }
    if c.details.as_object().is_some_and(|d| !d.is_empty()) {
        let _ = writeln!(out, "  details: {}", serde_json::to_string(&c.details).unwrap_or_default());
    }
    out
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<EvidenceFile, ChecksError> {
    let path = dir.join(name);
    // Written whole to a temporary name, then renamed: a reader never sees
    // half a file, and a digest always matches what is on disk.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| ChecksError::Write { path: path.clone(), source })?;
    Ok(EvidenceFile { path, sha256: hex::encode(Sha256::digest(bytes)), bytes: bytes.len() as u64 })
}

fn scrub_json(value: &mut serde_json::Value, scrub: &impl Fn(&mut String)) {
    match value {
        serde_json::Value::String(s) => scrub(s),
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| scrub_json(v, scrub)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| scrub_json(v, scrub)),
        _ => {}
    }
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds.
pub(crate) fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Measurement;

    fn report() -> Report {
        let mut a = Outcome::new("clock");
        a.measure(Measurement::above("offset_ms", 3.0, "ms", 100.0, 250.0));
        a.detail("url", "postgres://app:s3cret@db/app");
        let a = a.finish("offset 3 ms");
        let mut b = Outcome::new("backup");
        b.found(Status::Fail, "archive_mode is off");
        let b = b.finish("");
        let mut r = Report::new(
            1_795_000_000_000,
            Duration::from_millis(120),
            vec![a, b, Outcome::skip("pgbouncer", "no admin_url")],
        );
        r.scrub(&["s3cret".to_owned()]);
        r
    }

    #[test]
    fn secrets_are_scrubbed_from_details() {
        let r = report();
        assert!(!r.to_json().to_string().contains("s3cret"));
        assert!(r.evidence_text().contains("postgres://app:***@db/app"));
    }

    #[test]
    fn the_table_has_one_line_per_check_and_a_verdict() {
        let t = report().table();
        assert_eq!(t.lines().count(), 4, "{t}");
        assert!(t.lines().next().unwrap().starts_with("PASS  clock"), "{t}");
        assert!(t.ends_with("FAIL: 1 passed, 0 warned, 1 failed, 1 skipped in 0.120s"), "{t}");
    }

    #[test]
    fn junit_round_trips_through_a_parser() {
        let xml = report().junit().unwrap();
        let parsed = quick_junit::Report::deserialize_from_str(&xml).unwrap();
        let suite = &parsed.test_suites[0];
        assert_eq!(suite.test_cases.len(), 3);
        assert_eq!(suite.failures, 1);
        assert_eq!(suite.test_cases[1].name.as_str(), "backup");
    }

    #[test]
    fn evidence_files_carry_their_digests() {
        let dir = tempfile::tempdir().unwrap();
        let files = report().write_evidence(dir.path()).unwrap();
        let names: Vec<String> =
            files.iter().map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(
            names,
            [
                EVIDENCE_TEXT,
                EVIDENCE_JSON,
                "blind_spots_clock.json",
                "blind_spots_backup.json",
                "blind_spots_pgbouncer.json"
            ]
        );
        for f in &files {
            let bytes = std::fs::read(&f.path).unwrap();
            assert_eq!(f.sha256, hex::encode(Sha256::digest(&bytes)));
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}
