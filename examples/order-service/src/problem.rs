//! RFC 9457 problem+json responses. SQL text never reaches a client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A problem to answer with.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
    extra: Option<(&'static str, serde_json::Value)>,
    retry_after: Option<u64>,
}

impl Problem {
    /// A problem of `kind` (a short slug) with a human `detail`.
    pub fn new(status: StatusCode, kind: &'static str, title: &'static str, detail: impl Into<String>) -> Problem {
        Problem { status, kind, title, detail: detail.into(), extra: None, retry_after: None }
    }

    /// Adds a member, such as `violations`.
    #[must_use]
    pub fn with(mut self, name: &'static str, value: serde_json::Value) -> Problem {
        self.extra = Some((name, value));
        self
    }

    /// Adds `Retry-After`.
    #[must_use]
    pub fn retry_after(mut self, secs: u64) -> Problem {
        self.retry_after = Some(secs);
        self
    }

    /// 500 for anything unexpected; the cause is logged, not sent.
    pub fn internal(err: &dyn std::fmt::Display) -> Problem {
        tracing::error!(error = %err, "internal error");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the request failed; it is safe to retry with the same Idempotency-Key",
        )
    }

    /// 503 when the database is unreachable.
    pub fn unavailable(err: &dyn std::fmt::Display) -> Problem {
        tracing::error!(error = %err, "database unavailable");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            "the database is unavailable; retry with the same Idempotency-Key",
        )
        .retry_after(1)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "type": format!("urn:spark:problem:{}", self.kind),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some((name, value)) = self.extra {
            body[name] = value;
        }
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
