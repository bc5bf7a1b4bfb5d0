//! Metric names, exported through the `metrics` facade.

/// Events written by `enqueue`.
pub const ENQUEUED: &str = "spark_outbox_enqueued_total";
/// Events a sink acknowledged.
pub const PUBLISHED: &str = "spark_outbox_published_total";
/// Delivery attempts, by `result`: `ok`, `transient`, `permanent`.
pub const ATTEMPTS: &str = "spark_outbox_attempts_total";
/// Events that became dead letters.
pub const DEAD_LETTERS: &str = "spark_outbox_dead_letters_total";
/// Pending events (gauge, refreshed by relays).
pub const PENDING: &str = "spark_outbox_pending";
/// Age of the oldest pending event in seconds: the lag (gauge).
pub const LAG: &str = "spark_outbox_oldest_pending_age_seconds";
/// Seconds from enqueue to the sink's acknowledgement (histogram).
pub const LATENCY: &str = "spark_outbox_enqueue_to_ack_seconds";
/// Vacuums a relay ran itself because autovacuum is off.
pub const VACUUMS: &str = "spark_outbox_vacuums_total";
/// 1 while the LISTEN connection is up, 0 while relays only poll.
pub const LISTEN_UP: &str = "spark_outbox_listen_up";

#[allow(clippy::cast_precision_loss, reason = "the metrics facade takes f64; counts and ms stay far below 2^52")]
pub(crate) fn gauges(stats: &crate::OutboxStats) {
    metrics::gauge!(PENDING).set(stats.pending as f64);
    metrics::gauge!(LAG).set(stats.oldest_pending_age_ms.unwrap_or(0) as f64 / 1000.0);
}

#[allow(clippy::cast_precision_loss, reason = "the metrics facade takes f64")]
pub(crate) fn latency(ms: i64) {
    metrics::histogram!(LATENCY).record(ms.max(0) as f64 / 1000.0);
}
