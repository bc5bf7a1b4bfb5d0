//! Metric names, exported through the `metrics` facade.

/// Fills applied, by transition: `open`, `increase`, `reduce`, `close`, `flip`.
pub const FILLS_APPLIED: &str = "spark_positions_fills_applied_total";
/// Fills ignored because their id was applied before.
pub const DUPLICATES_IGNORED: &str = "spark_positions_duplicate_fills_total";
/// Re-reads after a concurrent writer changed the position.
pub const CONFLICTS_RETRIED: &str = "spark_positions_conflicts_retried_total";

pub(crate) fn duplicate() {
    metrics::counter!(DUPLICATES_IGNORED).increment(1);
}

pub(crate) fn conflict_retried() {
    metrics::counter!(CONFLICTS_RETRIED).increment(1);
}
