//! Security headers on every response, and the CSP report endpoint.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use spark_db::SharedClock;

use crate::AppState;
use crate::problem::Problem;

/// The Content-Security-Policy: an API serves no scripts, styles or frames.
pub const CSP: &str = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'; \
                       report-uri /csp-report; report-to csp-endpoint";

/// Adds the security headers (the same on success and error responses).
pub(crate) async fn headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    let set = |h: &mut HeaderMap, name: &'static str, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(h, "content-security-policy", CSP);
    set(h, "reporting-endpoints", "csp-endpoint=\"/csp-report\"");
    set(h, "cross-origin-opener-policy", "same-origin");
    set(h, "cross-origin-embedder-policy", "require-corp");
    set(h, "cross-origin-resource-policy", "same-origin");
    set(h, "strict-transport-security", "max-age=63072000; includeSubDomains");
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "no-referrer");
    response
}

/// The largest report accepted.
pub(crate) const MAX_REPORT: usize = 64 * 1024;

/// `POST /csp-report`: `application/csp-report` (report-uri) or
/// `application/reports+json` (Reporting API), media types matched without
/// regard to case. 204 for a CSP report, 400 for anything else, 413 above
/// 64 KiB, 429 when the sending address is over its rate. Only valid
/// reports count in `csp_violations_total` (one per violation), so junk
/// posted to a public endpoint cannot inflate the metric.
pub(crate) async fn report(State(state): State<AppState>, request: Request) -> Response {
    let source = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    if !state.reports.admit(source) {
        return Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-reports",
            "Too many reports",
            "this address sent more CSP reports than the endpoint takes; retry after Retry-After",
        )
        .retry_after(1)
        .into_response();
    }
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/csp-report") && !media.eq_ignore_ascii_case("application/reports+json")
    {
        return Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send application/csp-report or application/reports+json",
        )
        .into_response();
    }
    let Ok(body) = axum::body::to_bytes(request.into_body(), MAX_REPORT).await else {
        return Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            format!("a CSP report is at most {MAX_REPORT} bytes"),
        )
        .into_response();
    };
    let Some(violations) = violations(&body) else {
        return Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-report",
            "Invalid report",
            "send {\"csp-report\": {…}} or a Reporting API array of {\"type\": \"csp-violation\", \"body\": {…}}",
        )
        .into_response();
    };
    metrics::counter!("csp_violations_total").increment(violations);
    StatusCode::NO_CONTENT.into_response()
}

/// How many violations a body reports, or `None` when it is not a CSP
/// report: a `{"csp-report": {…}}` object (report-uri), or a non-empty
/// Reporting API array whose every entry is a `csp-violation` with a body.
fn violations(body: &[u8]) -> Option<u64> {
    match serde_json::from_slice::<serde_json::Value>(body).ok()? {
        serde_json::Value::Object(report) => report.get("csp-report").is_some_and(|r| r.is_object()).then_some(1),
        serde_json::Value::Array(reports) if !reports.is_empty() => reports
            .iter()
            .all(|r| {
                r.get("type").and_then(serde_json::Value::as_str) == Some("csp-violation")
                    && r.get("body").is_some_and(serde_json::Value::is_object)
            })
            .then(|| u64::try_from(reports.len()).unwrap_or(u64::MAX)),
        _ => None,
    }
}

/// Reports a source address may send at once.
pub(crate) const REPORT_BURST: i64 = 20;
/// Reports a second each source address regains.
pub(crate) const REPORTS_PER_SECOND: i64 = 1;
/// Addresses tracked at most; beyond, new addresses share one bucket.
pub(crate) const MAX_SOURCES: usize = 10_000;

/// A token bucket per source address, in bounded memory: at most
/// `max_sources` buckets; when full, buckets that have refilled (idle
/// senders) are dropped, and if none has, new addresses share one overflow
/// bucket, so a flood from many addresses is limited as one sender instead
/// of growing the map or evicting the buckets of those already limited.
#[derive(Debug)]
pub(crate) struct ReportLimiter {
    clock: SharedClock,
    max_sources: usize,
    state: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    by_source: HashMap<Option<IpAddr>, Bucket>,
    overflow: Option<Bucket>,
    /// When idle buckets were last dropped; `None` before the first time.
    last_sweep_ms: Option<i64>,
    /// How many times they were (for the tests).
    sweeps: u64,
}

/// How often, at most, a full map is swept for idle buckets. Sweeping is a
/// pass over every bucket; done for each report from a new address, a
/// flood from many addresses would cost that pass per request.
const SWEEP_EVERY_MS: i64 = 1000;

/// The bucket a source address draws from: an IPv4 address (also when it
/// arrives IPv4-mapped, `::ffff:a.b.c.d`, on a dual-stack socket) by
/// itself, an IPv6 address by its /64. One host is routinely given a whole
/// /64, so per-address buckets there would hand one sender 2^64 of them,
/// enough to fill the map and push everyone else into the overflow bucket.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
    }
}

/// Tokens in thousandths, refilled by elapsed milliseconds: integer
/// arithmetic, no drift.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli_tokens: i64,
    at_ms: i64,
}

const FULL: i64 = REPORT_BURST * 1000;

impl Bucket {
    fn full(now: i64) -> Bucket {
        Bucket { milli_tokens: FULL, at_ms: now }
    }

    fn refill(&mut self, now: i64) {
        let elapsed = now.saturating_sub(self.at_ms).max(0);
        self.milli_tokens = self.milli_tokens.saturating_add(elapsed.saturating_mul(REPORTS_PER_SECOND)).min(FULL);
        self.at_ms = self.at_ms.max(now);
    }

    fn take(&mut self, now: i64) -> bool {
        self.refill(now);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

impl ReportLimiter {
    pub(crate) fn new(clock: SharedClock, max_sources: usize) -> ReportLimiter {
        ReportLimiter { clock, max_sources, state: Mutex::default() }
    }

    /// Whether one more report from `source` is admitted.
    pub(crate) fn admit(&self, source: Option<IpAddr>) -> bool {
        let source = source.map(source_key);
        let now = self.clock.now_ms();
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A clock that went back also allows a sweep, so a step backwards
        // cannot stop sweeps until the clock catches up again.
        let sweep_due = state.last_sweep_ms.is_none_or(|last| now < last || now.saturating_sub(last) >= SWEEP_EVERY_MS);
        if !state.by_source.contains_key(&source) && state.by_source.len() >= self.max_sources && sweep_due {
            state.by_source.retain(|_, b| {
                b.refill(now);
                b.milli_tokens < FULL
            });
            state.last_sweep_ms = Some(now);
            state.sweeps += 1;
        }
        if let Some(bucket) = state.by_source.get_mut(&source) {
            return bucket.take(now);
        }
        if state.by_source.len() < self.max_sources {
            let mut bucket = Bucket::full(now);
            let admitted = bucket.take(now);
            state.by_source.insert(source, bucket);
            return admitted;
        }
        state.overflow.get_or_insert_with(|| Bucket::full(now)).take(now)
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).by_source.len()
    }

    #[cfg(test)]
    fn sweeps(&self) -> u64 {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).sweeps
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn each_source_gets_its_burst_then_its_rate() {
        let clock = spark_db::ManualClock::new(1_000);
        let limiter = ReportLimiter::new(Arc::new(clock.clone()), 100);
        let a = Some(IpAddr::from([127, 0, 0, 1]));
        let b = Some(IpAddr::from([127, 0, 0, 2]));
        assert!((0..REPORT_BURST).all(|_| limiter.admit(a)));
        assert!(!limiter.admit(a));
        assert!(limiter.admit(b), "another address has its own bucket");
        clock.advance(std::time::Duration::from_millis(999));
        assert!(!limiter.admit(a));
        clock.advance(std::time::Duration::from_millis(1));
        assert!(limiter.admit(a));
        assert!(!limiter.admit(a));
    }

    #[test]
    fn memory_stays_bounded_and_a_flood_of_addresses_shares_one_bucket() {
        let clock = spark_db::ManualClock::new(0);
        let limiter = ReportLimiter::new(Arc::new(clock.clone()), 8);
        let mut admitted = 0;
        for i in 0..1000u32 {
            if limiter.admit(Some(IpAddr::from(i.to_be_bytes()))) {
                admitted += 1;
            }
            assert!(limiter.tracked() <= 8);
        }
        // 8 tracked addresses (one report each) and one shared overflow
        // bucket with its burst.
        assert_eq!(admitted, 8 + REPORT_BURST);
        // Once the tracked senders are idle (refilled), new addresses get
        // their own buckets again.
        clock.advance(std::time::Duration::from_secs(60));
        assert!(limiter.admit(Some(IpAddr::from([10, 0, 0, 1]))));
        assert!(limiter.tracked() <= 8);
    }

    #[test]
    fn an_ipv6_64_is_one_sender_and_mapped_ipv4_is_the_ipv4_address() {
        let limiter = ReportLimiter::new(Arc::new(spark_db::ManualClock::new(0)), 100);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert!((0..REPORT_BURST).all(|_| limiter.admit(ip("2001:db8:1:2::1"))));
        assert!(!limiter.admit(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")), "same /64, same bucket");
        assert!(limiter.admit(ip("2001:db8:1:3::1")), "another /64 has its own");
        assert!((0..REPORT_BURST).all(|_| limiter.admit(ip("192.0.2.7"))));
        assert!(!limiter.admit(ip("::ffff:192.0.2.7")), "IPv4-mapped is the IPv4 sender");
        assert!(limiter.admit(ip("192.0.2.8")));
        assert_eq!(limiter.tracked(), 4);
    }

    #[test]
    fn a_full_map_is_swept_at_most_once_a_second_and_again_after_the_clock_goes_back() {
        let clock = spark_db::ManualClock::new(10_000);
        let limiter = ReportLimiter::new(Arc::new(clock.clone()), 4);
        for i in 0..1000u32 {
            limiter.admit(Some(IpAddr::from(i.to_be_bytes())));
        }
        assert_eq!(limiter.sweeps(), 1, "one pass for a thousand new addresses within the same second");
        clock.advance(std::time::Duration::from_millis(999));
        limiter.admit(Some(IpAddr::from([10, 0, 0, 1])));
        assert_eq!(limiter.sweeps(), 1);
        clock.advance(std::time::Duration::from_millis(1));
        limiter.admit(Some(IpAddr::from([10, 0, 0, 2])));
        assert_eq!(limiter.sweeps(), 2);
        // That sweep dropped the idle buckets; fill the map again.
        for last in 4..7 {
            limiter.admit(Some(IpAddr::from([10, 0, 0, last])));
        }
        assert_eq!((limiter.tracked(), limiter.sweeps()), (4, 2));
        // Time steps back a minute: sweeping resumes rather than waiting
        // for the clock to catch up.
        clock.set(11_000 - 60_000);
        limiter.admit(Some(IpAddr::from([10, 0, 0, 3])));
        assert_eq!(limiter.sweeps(), 3);
        assert!(limiter.tracked() <= 4);
    }

    #[test]
    fn a_clock_going_back_neither_panics_nor_refills() {
        let clock = spark_db::ManualClock::new(100_000);
        let limiter = ReportLimiter::new(Arc::new(clock.clone()), 4);
        let a = Some(IpAddr::from([127, 0, 0, 1]));
        assert!((0..REPORT_BURST).all(|_| limiter.admit(a)));
        clock.set(0);
        assert!(!limiter.admit(a), "going back gives no tokens");
        clock.set(i64::MIN);
        assert!(!limiter.admit(a));
        clock.set(101_000);
        assert!(limiter.admit(a), "a second after the last report: one token");
        assert!(!limiter.admit(a));
        clock.set(i64::MAX);
        assert!((0..REPORT_BURST).all(|_| limiter.admit(a)), "a huge jump refills to the burst, no more");
        assert!(!limiter.admit(a));
    }
}
