//! Metric names, in one place. Exported through the `metrics` facade: install
//! any recorder (Prometheus, StatsD, ...) to collect them.

use crate::{Claim, Stats};

/// Claims by outcome: `acquired`, `takeover`, `replay`, `in_flight`,
/// `mismatch`.
pub const CLAIMS: &str = "spark_idempotency_claims_total";
/// Completions by result: `stored`, `released`, `lease_lost`.
pub const COMPLETIONS: &str = "spark_idempotency_completions_total";
/// Records deleted by GC.
pub const GC_DELETED: &str = "spark_idempotency_gc_deleted_total";
/// Live keys, as of the last `stats()`.
pub const LIVE_KEYS: &str = "spark_idempotency_live_keys";
/// Records past their TTL awaiting GC, as of the last `stats()`.
pub const EXPIRED_KEYS: &str = "spark_idempotency_expired_keys";
/// In-flight keys, as of the last `stats()`.
pub const IN_FLIGHT: &str = "spark_idempotency_in_flight_keys";

pub(crate) fn claim(claim: &Claim) {
    let outcome = match claim {
        Claim::Acquired(lease) if lease.is_takeover() => "takeover",
        Claim::Acquired(_) => "acquired",
        Claim::Replay(_) => "replay",
        Claim::InFlight { .. } => "in_flight",
        Claim::Mismatch => "mismatch",
    };
    tracing::debug!(outcome, "idempotency claim");
    metrics::counter!(CLAIMS, "outcome" => outcome).increment(1);
}

pub(crate) fn completion(result: &'static str) {
    metrics::counter!(COMPLETIONS, "result" => result).increment(1);
}

pub(crate) fn gc(deleted: u64) {
    metrics::counter!(GC_DELETED).increment(deleted);
}

#[allow(clippy::cast_precision_loss, reason = "gauges are f64 in the metrics facade; counts stay far below 2^52")]
pub(crate) fn stats(stats: &Stats) {
    metrics::gauge!(LIVE_KEYS).set(stats.live_keys as f64);
    metrics::gauge!(EXPIRED_KEYS).set(stats.expired_awaiting_gc as f64);
    metrics::gauge!(IN_FLIGHT).set(stats.in_flight as f64);
}
