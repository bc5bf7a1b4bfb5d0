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
    // Boxed: a rare member, and it keeps `Result<_, Problem>` small.
    extra: Option<Box<(&'static str, serde_json::Value)>>,
    retry_after: Option<u64>,
    headers: Vec<(&'static str, &'static str)>,
}

impl Problem {
    /// A problem of `kind` (a short slug) with a human `detail`.
    pub fn new(status: StatusCode, kind: &'static str, title: &'static str, detail: impl Into<String>) -> Problem {
        Problem { status, kind, title, detail: detail.into(), extra: None, retry_after: None, headers: Vec::new() }
    }

    /// Adds a member, such as `violations`.
    #[must_use]
    pub fn with(mut self, name: &'static str, value: serde_json::Value) -> Problem {
        self.extra = Some(Box::new((name, value)));
        self
    }

    /// Adds `Retry-After`.
    #[must_use]
    pub fn retry_after(mut self, secs: u64) -> Problem {
        self.retry_after = Some(secs);
        self
    }

    /// Adds a response header, such as `WWW-Authenticate`.
    #[must_use]
    pub fn header(mut self, name: &'static str, value: &'static str) -> Problem {
        self.headers.push((name, value));
        self
    }

    /// The problem's kind, the slug its `type` ends with.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        self.kind
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

    /// 503 when `err` says the database is unreachable or going away
    /// ([`spark_db::is_unavailable`]: a restart, a broken connection, a
    /// pool timeout), 500 for anything else it refused.
    #[must_use]
    pub fn database(err: &sqlx::Error) -> Problem {
        if spark_db::is_unavailable(err) { Problem::unavailable(err) } else { Problem::internal(err) }
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
        if let Some((name, value)) = self.extra.map(|b| *b) {
            body[name] = value;
        }
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        for (name, value) in self.headers {
            response.headers_mut().insert(name, HeaderValue::from_static(value));
        }
        response
    }
}

/// The most of a rejection's text kept as the problem's `detail`.
const MAX_DETAIL: usize = 4096;

/// Turns every error response that is not already problem+json — the
/// router's 404 and 405, axum's rejections of a path, a query or a body
/// (400, 413, 415, 422) — into one, so a client parses every error the same
/// way. The rejection's own text (never SQL: handlers answer with
/// [`Problem`]) becomes the `detail`; other headers, such as `Allow`, stay.
pub(crate) async fn errors_as_problems(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_DETAIL).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let (kind, title) = match status {
        StatusCode::BAD_REQUEST => ("bad-request", "Bad request"),
        StatusCode::NOT_FOUND => ("not-found", "Not found"),
        StatusCode::METHOD_NOT_ALLOWED => ("method-not-allowed", "Method not allowed"),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload-too-large", "Payload too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported-media-type", "Unsupported media type"),
        StatusCode::UNPROCESSABLE_ENTITY => ("unprocessable", "Unprocessable request"),
        s if s.is_server_error() => ("internal", "Internal error"),
        _ => ("client-error", "Request refused"),
    };
    let detail = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_lowercase() } else { text };
    let mut problem = Problem::new(status, kind, title, detail).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            problem.headers_mut().insert(name.clone(), value.clone());
        }
    }
    problem
}
