//! Finding the rollback rehearsal: the newest dry-run rollback record.

use std::path::{Path, PathBuf};

use crate::go_nogo::{EvidenceRef, Rehearsal};

/// How far in the future a record may be dated and still be the newest: a
/// minute of clock difference between the machine that rehearsed and this
/// one.
const FUTURE_TOLERANCE_MS: i64 = 60_000;

/// Looks for `rollback_*.json` records in `dir` and in its subdirectories
/// one level deep (each rollback's sealed bundle, `rollback_<stamp>/`),
/// and returns the newest dry run by decision time (one dated more than a
/// minute in the future only when there is no other). A bundle with a
/// manifest is verified (without a key: the digests, not the signature).
/// Records that are not `spark-rollback-record/v1` JSON are ignored: a
/// directory may hold other evidence.
#[must_use]
pub fn find_rehearsal(dir: &Path, now_ms: i64) -> Rehearsal {
    let mut best: Option<(i64, PathBuf, Vec<u8>)> = None;
    for path in candidates(dir) {
        let Ok(bytes) = std::fs::read(&path) else { continue };
        let Ok(record) = serde_json::from_slice::<serde_json::Value>(&bytes) else { continue };
        if record["format"] != spark_rollback::RECORD_FORMAT || record["dry_run"] != true {
            continue;
        }
        let Some(at) = record["decided_at_ms"].as_i64() else { continue };
        // A record dated in the future (a skewed clock, or a forgery) never
        // hides the real newest one: it is chosen only when nothing else is.
        let rank = |t: i64| (t <= now_ms.saturating_add(FUTURE_TOLERANCE_MS), t);
        if best.as_ref().is_none_or(|(t, _, _)| rank(at) > rank(*t)) {
            best = Some((at, path, bytes));
        }
    }
    let Some((at, path, bytes)) = best else {
        return Rehearsal::None { searched: dir.display().to_string() };
    };
    let bundle = path.parent().unwrap_or(dir);
    let sealed = bundle.join(spark_evidence::MANIFEST).is_file();
    let bundle_problems = if sealed {
        match spark_evidence::verify(bundle, None) {
            Ok(report) => report.problems().iter().map(ToString::to_string).collect(),
            Err(e) => vec![e.to_string()],
        }
    } else {
        Vec::new()
    };
    #[allow(clippy::cast_precision_loss, reason = "an age in milliseconds is far below 2^52")]
    let age_hours = now_ms.saturating_sub(at) as f64 / 3_600_000.0;
    Rehearsal::Found {
        evidence: EvidenceRef { file: path.display().to_string(), sha256: spark_evidence::sha256_hex(&bytes) },
        age_hours,
        bundle_problems,
        sealed,
    }
}

/// `rollback_*.json` in `dir` and in its direct subdirectories.
fn candidates(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> =
        crate::notes::files_one_deep(dir).into_iter().filter(|p| crate::notes::is_rollback_record(p)).collect();
    out.sort();
    out
}
