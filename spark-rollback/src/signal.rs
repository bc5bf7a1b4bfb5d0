//! The sixteen signals the engine reads, their default PromQL queries, and
//! the two roles a series can play.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One measured quantity, with a fixed name shared by plans, snapshots and
/// the exported rules. Every sample is one value per timestamp per [`Role`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Signal {
    /// Requests per second (all statuses).
    HttpRequestsPerSecond,
    /// The share of responses with a 5xx status, 0–1.
    Http5xxRatio,
    /// The 95th percentile of API latency, seconds.
    ApiLatencyP95Seconds,
    /// Seconds since a WebSocket client last got an update.
    WsStalenessSeconds,
    /// Seconds since the last BIST market-data tick.
    FeedStalenessSeconds,
    /// Orders blocked by risk rules, per minute.
    RiskBlocksPerMinute,
    /// Idempotency claims refused as a conflict (in flight or another body),
    /// as a share of all claims, 0–1.
    IdempotencyConflictRatio,
    /// Idempotency keys past their TTL and not yet collected, as a share of
    /// all keys, 0–1.
    IdempotencyExpiredRatio,
    /// Content-Security-Policy violation reports, per minute.
    CspViolationsPerMinute,
    /// Busy pgBouncer server connections as a share of the pool, 0–1.
    PgbouncerSaturationRatio,
    /// CPU used as a share of the CPU limit, 0–1.
    ProcessCpuRatio,
    /// Resident memory, bytes.
    ProcessResidentMemoryBytes,
    /// Open database connections.
    DbConnections,
    /// Outbox lag, seconds.
    OutboxLagP99Seconds,
    /// WebSocket disconnects, per minute.
    WsDisconnectsPerMinute,
    /// Decimal precision errors: a counter that must never increase.
    DecimalPrecisionErrorsTotal,
}

impl Signal {
    /// Every signal, in the order plans, snapshots and reports list them.
    pub const ALL: [Signal; 16] = [
        Signal::HttpRequestsPerSecond,
        Signal::Http5xxRatio,
        Signal::ApiLatencyP95Seconds,
        Signal::WsStalenessSeconds,
        Signal::FeedStalenessSeconds,
        Signal::RiskBlocksPerMinute,
        Signal::IdempotencyConflictRatio,
        Signal::IdempotencyExpiredRatio,
        Signal::CspViolationsPerMinute,
        Signal::PgbouncerSaturationRatio,
        Signal::ProcessCpuRatio,
        Signal::ProcessResidentMemoryBytes,
        Signal::DbConnections,
        Signal::OutboxLagP99Seconds,
        Signal::WsDisconnectsPerMinute,
        Signal::DecimalPrecisionErrorsTotal,
    ];

    /// The signal's fixed name, as in snapshots and plans.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Signal::HttpRequestsPerSecond => "http_requests_per_second",
            Signal::Http5xxRatio => "http_5xx_ratio",
            Signal::ApiLatencyP95Seconds => "api_latency_p95_seconds",
            Signal::WsStalenessSeconds => "ws_staleness_seconds",
            Signal::FeedStalenessSeconds => "feed_staleness_seconds",
            Signal::RiskBlocksPerMinute => "risk_blocks_per_minute",
            Signal::IdempotencyConflictRatio => "idempotency_conflict_ratio",
            Signal::IdempotencyExpiredRatio => "idempotency_expired_ratio",
            Signal::CspViolationsPerMinute => "csp_violations_per_minute",
            Signal::PgbouncerSaturationRatio => "pgbouncer_saturation_ratio",
            Signal::ProcessCpuRatio => "process_cpu_ratio",
            Signal::ProcessResidentMemoryBytes => "process_resident_memory_bytes",
            Signal::DbConnections => "db_connections",
            Signal::OutboxLagP99Seconds => "outbox_lag_p99_seconds",
            Signal::WsDisconnectsPerMinute => "ws_disconnects_per_minute",
            Signal::DecimalPrecisionErrorsTotal => "decimal_precision_errors_total",
        }
    }

    /// The signal with this name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The position of this signal in [`Signal::ALL`].
    #[must_use]
    pub(crate) const fn index(self) -> usize {
        self as usize
    }

    /// The default PromQL query, aggregated `by (role)`: Prometheus adds the
    /// `role` label (`canary` or `baseline`) to each target in its scrape
    /// configuration. The metric names are those the order service exports.
    #[must_use]
    pub const fn default_query(self) -> &'static str {
        match self {
            Signal::HttpRequestsPerSecond => "sum by (role) (rate(http_responses_total[1m]))",
            Signal::Http5xxRatio => {
                "sum by (role) (rate(http_responses_total{class=\"5xx\"}[1m])) / sum by (role) (rate(http_responses_total[1m]))"
            }
            Signal::ApiLatencyP95Seconds => {
                "histogram_quantile(0.95, sum by (role, le) (rate(http_request_duration_seconds_bucket[1m])))"
            }
            Signal::WsStalenessSeconds => "max by (role) (ws_staleness_seconds)",
            Signal::FeedStalenessSeconds => "max by (role) (feed_staleness_seconds)",
            Signal::RiskBlocksPerMinute => "sum by (role) (rate(risk_blocks_total[1m])) * 60",
            Signal::IdempotencyConflictRatio => {
                "sum by (role) (rate(spark_idempotency_claims_total{outcome=~\"in_flight|mismatch\"}[1m])) / sum by (role) (rate(spark_idempotency_claims_total[1m]))"
            }
            Signal::IdempotencyExpiredRatio => {
                "sum by (role) (spark_idempotency_expired_keys) / (sum by (role) (spark_idempotency_live_keys) + sum by (role) (spark_idempotency_expired_keys))"
            }
            Signal::CspViolationsPerMinute => "sum by (role) (rate(csp_violations_total[1m])) * 60",
            Signal::PgbouncerSaturationRatio => {
                "max by (role) (sum by (role, database) (pgbouncer_pools_server_active_connections) / sum by (role, database) (pgbouncer_databases_pool_size))"
            }
            Signal::ProcessCpuRatio => {
                "sum by (role) (rate(process_cpu_seconds_total[1m])) / sum by (role) (process_cpu_limit_cores)"
            }
            Signal::ProcessResidentMemoryBytes => "sum by (role) (process_resident_memory_bytes)",
            Signal::DbConnections => "sum by (role) (db_pool_connections)",
            Signal::OutboxLagP99Seconds => "max by (role) (spark_outbox_oldest_pending_age_seconds)",
            Signal::WsDisconnectsPerMinute => "sum by (role) (rate(ws_disconnects_total[1m])) * 60",
            Signal::DecimalPrecisionErrorsTotal => "sum by (role) (decimal_precision_errors_total)",
        }
    }

    /// The unit values are in.
    #[must_use]
    pub const fn unit(self) -> &'static str {
        match self {
            Signal::HttpRequestsPerSecond => "req/s",
            Signal::Http5xxRatio
            | Signal::IdempotencyConflictRatio
            | Signal::IdempotencyExpiredRatio
            | Signal::PgbouncerSaturationRatio
            | Signal::ProcessCpuRatio => "ratio",
            Signal::ApiLatencyP95Seconds
            | Signal::WsStalenessSeconds
            | Signal::FeedStalenessSeconds
            | Signal::OutboxLagP99Seconds => "s",
            Signal::RiskBlocksPerMinute | Signal::CspViolationsPerMinute | Signal::WsDisconnectsPerMinute => "/min",
            Signal::ProcessResidentMemoryBytes => "bytes",
            Signal::DbConnections => "connections",
            Signal::DecimalPrecisionErrorsTotal => "count",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Signal {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Signal::from_name(&name).ok_or_else(|| serde::de::Error::custom(unknown_signal(&name)))
    }
}

/// The message for a name that is not a signal, listing the names that are.
pub(crate) fn unknown_signal(name: &str) -> String {
    let known: Vec<&str> = Signal::ALL.iter().map(|s| s.name()).collect();
    format!("unknown signal {name:?}; the signals are {}", known.join(", "))
}

/// Which deployment a series measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The new release, receiving the stage's share of traffic.
    Canary,
    /// The current release beside it, receiving the rest.
    Baseline,
}

impl Role {
    /// Both roles.
    pub const ALL: [Role; 2] = [Role::Canary, Role::Baseline];

    /// The `role` label value.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Role::Canary => "canary",
            Role::Baseline => "baseline",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for (i, s) in Signal::ALL.into_iter().enumerate() {
            assert_eq!(Signal::from_name(s.name()), Some(s));
            assert_eq!(s.index(), i);
            assert!(s.default_query().contains("role"), "{s}: the default query must keep the role label");
        }
        assert_eq!(Signal::from_name("http_5xx"), None);
    }
}
