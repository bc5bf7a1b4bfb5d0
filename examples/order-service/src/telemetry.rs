//! Prometheus metrics: request latency per route, responses by status
//! class, and gauges read at scrape time.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::{AppState, Database};

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
    if let Some(rss) = resident_memory() {
        metrics::gauge!("process_resident_memory_bytes").set(rss as f64);
    }
    ([("content-type", "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

/// Resident set size from /proc (Linux); `None` elsewhere.
fn resident_memory() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
