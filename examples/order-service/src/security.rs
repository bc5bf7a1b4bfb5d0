//! Security headers on every response, and the CSP report endpoint.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

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
/// `application/reports+json` (Reporting API). 204, and a counter.
pub(crate) async fn report(headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    if media != "application/csp-report" && media != "application/reports+json" {
        return Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send application/csp-report or application/reports+json",
        )
        .into_response();
    }
    if serde_json::from_slice::<serde_json::Value>(&body).is_err() {
        return Problem::new(StatusCode::BAD_REQUEST, "invalid-report", "Invalid report", "the report is not JSON")
            .into_response();
    }
    metrics::counter!("csp_violations_total").increment(1);
    StatusCode::NO_CONTENT.into_response()
}
