//! Prometheus metrics: request latency per route, responses by status
//! class, the service's own counters, and gauges read at scrape time.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use spark_idempotency::{IdempotencyStore, SqlStore};

use crate::{AppState, Database};

/// Times the service found that money lost precision inside it: a price or
/// quantity the database stored or returned other than as validated, or a
/// money computation that overflowed. A release bug, never a client error.
pub const DECIMAL_PRECISION_ERRORS: &str = "decimal_precision_errors_total";
/// Orders refused by the instrument's exchange rules (the `order-rules`
/// problem), one per refused order.
pub const RISK_BLOCKS: &str = "risk_blocks_total";
/// User and system CPU time of the process, in seconds.
pub const PROCESS_CPU_SECONDS: &str = "process_cpu_seconds_total";
/// The CPU the process may use, in cores: the cgroup v2 quota, or else the
/// available parallelism.
pub const PROCESS_CPU_LIMIT: &str = "process_cpu_limit_cores";

/// The process-wide Prometheus recorder (installed once).
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may be installed by an embedding program;
            // then this one still renders what it is given.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Describes the service's counters and exports them at zero. A canary
/// judge reads an absent series as missing data, not as zero, so a counter
/// that has not fired yet must still be there from the first scrape.
/// Idempotent: adding zero again changes nothing.
pub fn register() {
    metrics::describe_counter!(DECIMAL_PRECISION_ERRORS, "money that lost precision inside the service (a bug)");
    metrics::describe_counter!(RISK_BLOCKS, "orders refused by the instrument's exchange rules");
    metrics::counter!(DECIMAL_PRECISION_ERRORS).increment(0);
    metrics::counter!(RISK_BLOCKS).increment(0);
}

/// Counts a precision error and logs what lost precision.
pub(crate) fn precision_error(what: &str) {
    tracing::error!(what, "decimal precision error");
    metrics::counter!(DECIMAL_PRECISION_ERRORS).increment(1);
}

/// Records latency and status class per matched route.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(req.method());
    let start = Instant::now();
    let response = next.run(req).await;
    let class = format!("{}xx", response.status().as_u16() / 100);
    metrics::histogram!("http_request_duration_seconds", "route" => route.clone(), "method" => method)
        .record(start.elapsed().as_secs_f64());
    metrics::counter!("http_responses_total", "route" => route, "class" => class).increment(1);
    response
}

/// The method as a metric label: the standard methods by name, any other
/// as `other`. HTTP lets a client invent methods (`FOO1`, `FOO2`, …), and a
/// label per invented method would be a new series each, held for the life
/// of the process: memory any caller could grow without bound.
fn method_label(method: &axum::http::Method) -> &'static str {
    const KNOWN: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];
    KNOWN.into_iter().find(|m| *m == method.as_str()).unwrap_or("other")
}

/// `GET /metrics`: refreshes the gauges, then renders the text exposition.
#[allow(clippy::cast_precision_loss, reason = "gauges are f64; counts stay far below 2^52")]
pub async fn render(State(state): State<AppState>) -> Response {
    let (size, idle) = match &state.db {
        Database::Postgres(p) => (p.size(), p.num_idle()),
        Database::Sqlite(p) => (p.size(), p.num_idle()),
    };
    let idle = u32::try_from(idle).unwrap_or(u32::MAX);
    metrics::gauge!("db_pool_connections", "state" => "in_use").set(f64::from(size.saturating_sub(idle)));
    metrics::gauge!("db_pool_connections", "state" => "idle").set(f64::from(idle));
    if let Ok(stats) = state.outbox().stats().await {
        metrics::gauge!(spark_outbox::metrics::PENDING).set(stats.pending as f64);
        metrics::gauge!(spark_outbox::metrics::LAG).set(stats.oldest_pending_age_ms.unwrap_or(0) as f64 / 1000.0);
    }
    // `stats()` counts the whole key table (no index covers all three
    // counts), so a scrape costs one scan of it; the scrape interval bounds
    // how often.
    let stats = match &state.db {
        Database::Postgres(p) => idempotency_stats(p, &state).await,
        Database::Sqlite(p) => idempotency_stats(p, &state).await,
    };
    if let Err(e) = stats {
        tracing::warn!(error = %e, "idempotency stats for /metrics");
    }
    if let Some(rss) = resident_memory() {
        metrics::gauge!("process_resident_memory_bytes").set(rss as f64);
    }
    if let Some(secs) = cpu_seconds() {
        metrics::gauge!(PROCESS_CPU_SECONDS).set(secs);
    }
    if let Some(cores) = cpu_limit() {
        metrics::gauge!(PROCESS_CPU_LIMIT).set(cores);
    }
    ([("content-type", "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

/// Resident set size from /proc (Linux); `None` elsewhere.
fn resident_memory() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Refreshes the idempotency gauges (`stats()` sets them).
async fn idempotency_stats<DB: spark_idempotency::SqlBackend>(
    pool: &sqlx::Pool<DB>,
    state: &AppState,
) -> spark_idempotency::Result<()> {
    SqlStore::<DB>::new(pool.clone(), state.idempotency.clone())?.stats().await.map(drop)
}

/// User plus system CPU time from /proc (Linux); `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count fields after its closing one. utime and stime are fields 14
    // and 15, so the 12th and 13th after it.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    #[allow(clippy::cast_precision_loss, reason = "ticks stay far below 2^52")]
    Some((utime + stime) as f64 / clock_ticks() as f64)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), read from the
/// auxiliary vector's `AT_CLKTCK` because calling libc needs `unsafe`,
/// which the workspace forbids. 100 if it cannot be read: the value on
/// every mainstream Linux architecture.
fn clock_ticks() -> u64 {
    std::fs::read("/proc/self/auxv").ok().and_then(|auxv| at_clktck(&auxv)).unwrap_or(100)
}

/// `AT_CLKTCK` in an auxiliary vector: pairs of native words, type then
/// value.
fn at_clktck(auxv: &[u8]) -> Option<u64> {
    const AT_CLKTCK: usize = 17;
    const WORD: usize = std::mem::size_of::<usize>();
    let word = |b: &[u8]| b.try_into().map_or(0, usize::from_ne_bytes);
    let pair = auxv.chunks_exact(2 * WORD).find(|pair| word(&pair[..WORD]) == AT_CLKTCK)?;
    u64::try_from(word(&pair[WORD..])).ok().filter(|&hz| hz > 0)
}

/// The cores the process may use: the cgroup v2 quota over its period
/// when one is set, or else the available parallelism. `None` only when
/// neither can be read.
fn cpu_limit() -> Option<f64> {
    let quota = std::fs::read_to_string("/sys/fs/cgroup/cpu.max").ok();
    quota.as_deref().and_then(cpu_max).or_else(|| {
        let n = std::thread::available_parallelism().ok()?;
        Some(f64::from(u32::try_from(n.get()).unwrap_or(u32::MAX)))
    })
}

/// The cores a cgroup v2 `cpu.max` (`quota period`) allows; `None` for
/// `max` (no quota).
fn cpu_max(text: &str) -> Option<f64> {
    let (quota, period) = text.trim().split_once(' ')?;
    let quota: u32 = quota.parse().ok()?;
    let period: u32 = period.parse().ok().filter(|&p| p > 0)?;
    Some(f64::from(quota) / f64::from(period))
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_max_is_a_quota_or_nothing() {
        assert_eq!(super::cpu_max("max 100000\n"), None);
        assert_eq!(super::cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(super::cpu_max("50000 100000"), Some(0.5));
        assert_eq!(super::cpu_max("50000 0"), None);
    }

    #[test]
    fn clock_ticks_come_from_the_auxiliary_vector() {
        let words = |pairs: &[(usize, usize)]| -> Vec<u8> {
            pairs.iter().flat_map(|(k, v)| [k.to_ne_bytes(), v.to_ne_bytes()].concat()).collect()
        };
        assert_eq!(super::at_clktck(&words(&[(6, 4096), (17, 250), (0, 0)])), Some(250));
        assert_eq!(super::at_clktck(&words(&[(6, 4096), (0, 0)])), None);
        if cfg!(target_os = "linux") {
            let auxv = std::fs::read("/proc/self/auxv").unwrap();
            assert!(super::at_clktck(&auxv).is_some(), "no AT_CLKTCK in /proc/self/auxv");
        }
    }
}
