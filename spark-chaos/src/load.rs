//! Order traffic for the experiments: a bounded, paced stream of `POST
//! /v1/orders` against the service on loopback, every order under an
//! `Idempotency-Key` of its own and retried under the same key as a careful
//! client does, every attempt recorded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Mutex;

use crate::deployment::{ServiceSection, require_loopback};
use crate::error::ChaosError;

/// The most requests one run may send, retries included: every loop is
/// bounded in count as well as in time.
pub(crate) const MAX_ATTEMPTS: usize = 200_000;

/// The most orders in flight at once: past it, new orders wait (the run
/// sends fewer than planned, and `orders` says how many), so a slow
/// service cannot make the client run out of sockets and blame it.
const MAX_IN_FLIGHT: usize = 2_000;

/// One request and its answer.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    /// When it was sent, milliseconds after the run started.
    pub(crate) at_ms: u64,
    /// The order it is for.
    pub(crate) order: usize,
    /// The HTTP status; 0 when no answer came (refused, reset, timeout).
    pub(crate) status: u16,
    /// How long the answer took, milliseconds.
    pub(crate) latency_ms: u64,
    /// The `Retry-After` an answer carried, in seconds.
    pub(crate) retry_after: Option<u64>,
    /// The `order_id` of a 201 (a replay answers the first one's).
    pub(crate) order_id: Option<String>,
    /// The problem's `type` of an error answer, or the transport error.
    pub(crate) error: Option<String>,
}

/// What a run sent and got.
#[derive(Debug, Clone, Default)]
pub(crate) struct LoadRun {
    /// Every attempt, in the order they finished.
    pub(crate) attempts: Vec<Attempt>,
    /// Orders sent (distinct keys).
    pub(crate) orders: usize,
    /// How long the run took, milliseconds.
    pub(crate) duration_ms: u64,
}

/// How to send.
#[derive(Debug, Clone)]
pub(crate) struct LoadPlan {
    /// New orders per second.
    pub(crate) rate: u32,
    /// How long new orders are sent.
    pub(crate) duration: Duration,
    /// How long an order is retried (same key) after its first attempt.
    pub(crate) retry_for: Duration,
    /// The longest one attempt may take.
    pub(crate) timeout: Duration,
    /// The key prefix, unique per run.
    pub(crate) run: String,
}

/// A client of the order service.
#[derive(Debug, Clone)]
pub(crate) struct OrderClient {
    http: reqwest::Client,
    orders_url: String,
    headers: reqwest::header::HeaderMap,
    account_prefix: String,
}

impl OrderClient {
    /// A client of `service`, which must be on loopback.
    pub(crate) fn new(service: &ServiceSection, timeout: Duration) -> Result<OrderClient, ChaosError> {
        require_loopback("the service", &service.url)?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &service.headers {
            let bad = |e: &dyn std::fmt::Display| ChaosError::Input(format!("[service] header {name}: {e}"));
            headers.insert(
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(&e))?,
                reqwest::header::HeaderValue::from_str(value).map_err(|e| bad(&e))?,
            );
        }
        Ok(OrderClient {
            http: crate::http::client(timeout)?,
            orders_url: format!("{}/v1/orders", service.url.trim_end_matches('/')),
            headers,
            account_prefix: service.account_prefix.clone(),
        })
    }

    /// Places order `order` of run `run` once: one attempt.
    pub(crate) async fn place(&self, run: &str, order: usize, started: Instant) -> Attempt {
        let body = json!({
            "account_id": format!("{}{}", self.account_prefix, order % 20),
            "symbol": "THYAO",
            "side": "buy",
            "quantity": "10",
            "price": "101.30",
        });
        let at_ms = crate::experiment::elapsed_ms(started);
        let sent = Instant::now();
        let answer = self
            .http
            .post(&self.orders_url)
            .headers(self.headers.clone())
            .header("idempotency-key", format!("{run}-{order}"))
            .json(&body)
            .send()
            .await;
        let mut attempt =
            Attempt { at_ms, order, status: 0, latency_ms: 0, retry_after: None, order_id: None, error: None };
        match answer {
            Ok(response) => {
                attempt.status = response.status().as_u16();
                attempt.retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .map(|v| v.to_str().ok().and_then(|v| v.trim().parse().ok()).unwrap_or(1));
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                attempt.order_id = body["order_id"].as_str().map(str::to_owned);
                attempt.error = body["type"].as_str().map(str::to_owned);
            }
            Err(e) => attempt.error = Some(transport_error(&e)),
        }
        attempt.latency_ms = crate::experiment::elapsed_ms(sent);
        attempt
    }
}

/// A transport error's kind, without the URL.
fn transport_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".to_owned()
    } else if e.is_connect() {
        "connect".to_owned()
    } else {
        "transport".to_owned()
    }
}

/// Whether an answer asks the client to try again with the same key: a
/// 503 or 409 (the first attempt still in flight), a 429, or no answer.
fn retryable(status: u16) -> bool {
    matches!(status, 0 | 409 | 429 | 503)
}

/// From `started` (the experiment's time origin), sends `plan.rate` new orders a second for `plan.duration`, each retried
/// with its key while retryable and younger than `plan.retry_for`, as a
/// careful client does: after the answer's `Retry-After`, else after an
/// exponential backoff from 200 ms to 2 s, each with ±20 % jitter so the
/// retries of one outage do not arrive as one wave. Bounded in time
/// (`duration + retry_for + timeout`) and in count ([`MAX_ATTEMPTS`]).
pub(crate) async fn run(client: &OrderClient, plan: &LoadPlan, started: Instant) -> LoadRun {
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let orders = usize::try_from(u64::from(plan.rate) * plan.duration.as_secs().max(1)).unwrap_or(usize::MAX);
    let gap = Duration::from_secs(1) / plan.rate.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = tokio::time::Instant::now();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let end = tokio::time::Instant::now() + plan.duration;
    let mut sent_orders = 0;
    for order in 0..orders {
        tokio::time::sleep_until(next).await;
        next += gap;
        let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
        let now = tokio::time::Instant::now();
        if now >= end {
            break;
        }
        // Slots missed while waiting for a permit are dropped, not sent
        // later in a burst.
        next = next.max(now + gap);
        sent_orders += 1;
        let (client, run, attempts, sent) = (client.clone(), plan.run.clone(), attempts.clone(), sent.clone());
        let retry_for = plan.retry_for;
        tasks.spawn(async move {
            let _permit = permit;
            let first = Instant::now();
            for tries in 0u32.. {
                if sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= MAX_ATTEMPTS {
                    return;
                }
                let attempt = client.place(&run, order, started).await;
                let again = retryable(attempt.status) && first.elapsed() < retry_for;
                let wait = backoff(attempt.retry_after, tries);
                attempts.lock().await.push(attempt);
                if !again {
                    return;
                }
                tokio::time::sleep(wait).await;
            }
        });
        // Reap finished tasks as we go, so a long run does not hold them all.
        while tasks.try_join_next().is_some() {}
    }
    let deadline = plan.retry_for + plan.timeout + Duration::from_secs(5);
    let _ = tokio::time::timeout(deadline, async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
    let attempts = std::mem::take(&mut *attempts.lock().await);
    LoadRun { attempts, orders: sent_orders, duration_ms: crate::experiment::elapsed_ms(started) }
}

impl LoadRun {
    /// Attempts answered with each status (0: no answer).
    pub(crate) fn statuses(&self, window: Option<(u64, u64)>) -> BTreeMap<u16, usize> {
        let mut by = BTreeMap::new();
        for a in self.in_window(window) {
            *by.entry(a.status).or_insert(0) += 1;
        }
        by
    }

    fn in_window(&self, window: Option<(u64, u64)>) -> impl Iterator<Item = &Attempt> {
        self.attempts.iter().filter(move |a| window.is_none_or(|(from, to)| a.at_ms >= from && a.at_ms < to))
    }

    /// The 95th percentile latency of the answered attempts sent in
    /// `window` (ms after the start), or `None` without any.
    pub(crate) fn p95_ms(&self, window: Option<(u64, u64)>) -> Option<u64> {
        let mut latencies: Vec<u64> = self.in_window(window).filter(|a| a.status != 0).map(|a| a.latency_ms).collect();
        percentile(&mut latencies, 95)
    }

    /// Answered attempts per second in `window`.
    pub(crate) fn throughput(&self, window: (u64, u64)) -> f64 {
        let n = self.in_window(Some(window)).filter(|a| a.status == 201).count();
        #[allow(clippy::cast_precision_loss, reason = "a rate for a report")]
        let rate = n as f64 / ((window.1.saturating_sub(window.0)).max(1) as f64 / 1000.0);
        (rate * 10.0).round() / 10.0
    }

    /// Orders per second, p95 and statuses of the attempts sent in
    /// `from..to`, for a report's phase.
    pub(crate) fn phase(&self, from: u64, to: u64) -> BTreeMap<&'static str, serde_json::Value> {
        BTreeMap::from([
            ("orders_per_second", json!(self.throughput((from, to)))),
            ("p95_ms", json!(self.p95_ms(Some((from, to))))),
            ("statuses", json!(self.statuses(Some((from, to))))),
        ])
    }

    /// For each order, the distinct `order_id`s its 201s carried.
    pub(crate) fn order_ids(&self) -> BTreeMap<usize, std::collections::BTreeSet<String>> {
        let mut by: BTreeMap<usize, std::collections::BTreeSet<String>> = BTreeMap::new();
        for a in &self.attempts {
            let ids = by.entry(a.order).or_default();
            if let Some(id) = &a.order_id {
                ids.insert(id.clone());
            }
        }
        by
    }
}

/// How long to wait before try `tries + 1`: `Retry-After` when the answer
/// gave one, else 200 ms doubling up to 2 s; ±20 % jitter either way.
fn backoff(retry_after: Option<u64>, tries: u32) -> Duration {
    let base = match retry_after {
        Some(secs) => Duration::from_secs(secs.min(30)),
        None => Duration::from_millis(200u64.saturating_mul(1 << tries.min(4)).min(2000)),
    };
    base.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// The `p`th percentile (nearest rank) of `values`, sorting them.
pub(crate) fn percentile(values: &mut [u64], p: usize) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = (values.len() * p).div_ceil(100).max(1);
    values.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(percentile(&mut [], 95), None);
        assert_eq!(percentile(&mut [7], 95), Some(7));
        let mut hundred: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(percentile(&mut hundred, 95), Some(95));
        assert_eq!(percentile(&mut hundred, 100), Some(100));
    }

    #[test]
    fn retries_wait_for_retry_after_or_back_off_with_jitter() {
        for _ in 0..100 {
            let w = backoff(Some(1), 0);
            assert!(w >= Duration::from_millis(800) && w <= Duration::from_millis(1200), "{w:?}");
            let w = backoff(None, 0);
            assert!(w >= Duration::from_millis(160) && w <= Duration::from_millis(240), "{w:?}");
            let w = backoff(None, 30);
            assert!(w >= Duration::from_millis(1600) && w <= Duration::from_millis(2400), "{w:?}");
        }
    }

    #[test]
    fn only_unanswered_conflicting_or_unavailable_attempts_are_retried() {
        for s in [0, 409, 429, 503] {
            assert!(retryable(s), "{s}");
        }
        for s in [201, 400, 422, 500] {
            assert!(!retryable(s), "{s}: a 500 is a defect, not something to retry away");
        }
    }
}
