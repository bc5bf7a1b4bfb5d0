//! Where metrics come from: Prometheus's HTTP API, a snapshot file, or a
//! snapshot in memory. Every source answers with a [`Snapshot`], so a run
//! recorded from Prometheus replays from its file with the same input.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use spark_db::redact_url as redact;

use crate::error::{SourceError, chain};
use crate::plan::Plan;
use crate::signal::Signal;
use crate::snapshot::{Matrix, Snapshot};

/// The time range and resolution to fetch, unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The first sample time.
    pub start_ms: i64,
    /// The last sample time.
    pub end_ms: i64,
    /// The resolution, seconds.
    pub step_seconds: u32,
}

/// A source of the plan's signals.
#[async_trait]
pub trait MetricSource: Send + Sync {
    /// Every signal of the plan over `range`, as a snapshot. A signal with no
    /// data is an empty result, never zeros.
    async fn fetch(&self, plan: &Plan, range: Range) -> Result<Snapshot, SourceError>;

    /// Where the data comes from, for reports (credentials redacted).
    fn describe(&self) -> String;

    /// Like [`MetricSource::fetch`], but a series need not carry a `role`
    /// label: a watch at 100 % reads one fleet, whose queries may aggregate
    /// without `by (role)`. The values are still checked where they are
    /// read. By default the same as `fetch`.
    async fn fetch_any_role(&self, plan: &Plan, range: Range) -> Result<Snapshot, SourceError> {
        self.fetch(plan, range).await
    }
}

/// A snapshot held in memory (tests, or a snapshot built by a program).
#[derive(Debug, Clone)]
pub struct MemorySource {
    snapshot: Snapshot,
}

impl MemorySource {
    /// A source answering with `snapshot`.
    #[must_use]
    pub fn new(snapshot: Snapshot) -> MemorySource {
        MemorySource { snapshot }
    }
}

#[async_trait]
impl MetricSource for MemorySource {
    async fn fetch(&self, _plan: &Plan, range: Range) -> Result<Snapshot, SourceError> {
        Ok(clip(&self.snapshot, range))
    }

    fn describe(&self) -> String {
        "a snapshot in memory".to_owned()
    }
}

/// A snapshot file, read once when opened.
#[derive(Debug, Clone)]
pub struct FileSource {
    path: String,
    snapshot: Snapshot,
}

impl FileSource {
    /// Reads and validates a snapshot file.
    ///
    /// # Errors
    /// As [`Snapshot::load`].
    pub fn open(path: &Path) -> Result<FileSource, crate::RollbackError> {
        Ok(FileSource { path: path.display().to_string(), snapshot: Snapshot::load(path)? })
    }

    /// The snapshot.
    #[must_use]
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }
}

#[async_trait]
impl MetricSource for FileSource {
    async fn fetch(&self, _plan: &Plan, range: Range) -> Result<Snapshot, SourceError> {
        Ok(clip(&self.snapshot, range))
    }

    fn describe(&self) -> String {
        format!("snapshot {}", self.path)
    }
}

/// The samples of `snapshot` within `range` (its step kept).
fn clip(snapshot: &Snapshot, range: Range) -> Snapshot {
    let mut out = snapshot.clone();
    for matrix in out.signals.values_mut() {
        for series in &mut matrix.result {
            series.values.retain(|(t, _)| (range.start_ms..=range.end_ms).contains(&t.0));
        }
    }
    out
}

/// Prometheus's `/api/v1/query_range`, one query per signal, all in
/// parallel, each retried on a connection error, a timeout or a 5xx.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use spark_rollback::{MetricSource, Plan, PrometheusSource, Range};
///
/// let source = PrometheusSource::new("http://127.0.0.1:9090")?;
/// let range = Range { start_ms: 1_700_000_000_000, end_ms: 1_700_000_900_000, step_seconds: 15 };
/// let snapshot = source.fetch(&Plan::default(), range).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PrometheusSource {
    base: String,
    client: reqwest::Client,
    attempts: u32,
    backoff: Duration,
}

/// The most points Prometheus returns for one series of a range query.
const MAX_POINTS: i64 = 11_000;

/// How long one query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

impl PrometheusSource {
    /// A source for the Prometheus at `base_url` (such as
    /// `http://127.0.0.1:9090`): 10 s per query, 3 attempts, 200 ms backoff
    /// doubling.
    ///
    /// # Errors
    /// [`SourceError`] when the URL is not http(s) or the client cannot be
    /// built.
    pub fn new(base_url: &str) -> Result<PrometheusSource, SourceError> {
        let base = base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(SourceError::new(format!("{} is not an http:// or https:// URL", redact(&base))));
        }
        // reqwest is built without a default crypto provider; use ring, the
        // one sqlx already links. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(QUERY_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("spark-rollback/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SourceError::new(format!("cannot build the HTTP client: {e}")))?;
        Ok(PrometheusSource { base, client, attempts: 3, backoff: Duration::from_millis(200) })
    }

    /// How many times a query is tried (at least once).
    #[must_use]
    pub fn attempts(mut self, attempts: u32) -> PrometheusSource {
        self.attempts = attempts.max(1);
        self
    }

    /// The first pause between attempts (doubling after each).
    #[must_use]
    pub fn backoff(mut self, backoff: Duration) -> PrometheusSource {
        self.backoff = backoff;
        self
    }

    /// A range of any length: Prometheus answers at most [`MAX_POINTS`]
    /// points per series, so a longer range (six hours at 1 s, a day at
    /// 5 s) is asked for in consecutive pieces on the same step grid and
    /// each series' pieces are joined.
    async fn query_range(&self, signal: Signal, query: &str, range: Range) -> Result<Matrix, SourceError> {
        let step_ms = i64::from(range.step_seconds) * 1000;
        let piece = (MAX_POINTS - 1) * step_ms;
        let mut merged = Matrix { result_type: "matrix".to_owned(), result: Vec::new() };
        let mut start = range.start_ms;
        while start <= range.end_ms {
            let end = range.end_ms.min(start + piece);
            let part = self.query_with_retries(signal, query, Range { start_ms: start, end_ms: end, ..range }).await?;
            for series in part.result {
                match merged.result.iter_mut().find(|s| s.metric == series.metric) {
                    Some(existing) => existing.values.extend(series.values),
                    None => merged.result.push(series),
                }
            }
            start = end + step_ms;
        }
        Ok(merged)
    }

    async fn query_with_retries(&self, signal: Signal, query: &str, range: Range) -> Result<Matrix, SourceError> {
        let mut pause = self.backoff;
        let mut attempt = 1;
        loop {
            match self.query_once(signal, query, range).await {
                Ok(matrix) => return Ok(matrix),
                Err((error, retry)) if retry && attempt < self.attempts => {
                    tracing::warn!(%signal, attempt, %error, "prometheus query failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                Err((error, _)) => return Err(error),
            }
        }
    }

    /// One attempt; the flag says whether trying again could help.
    async fn query_once(&self, signal: Signal, query: &str, range: Range) -> Result<Matrix, (SourceError, bool)> {
        let url = format!("{}/api/v1/query_range", self.base);
        let shown = redact(&url);
        let seconds = |ms: i64| format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000));
        let form = [
            ("query", query.to_owned()),
            ("start", seconds(range.start_ms)),
            ("end", seconds(range.end_ms)),
            ("step", format!("{}s", range.step_seconds)),
        ];
        let fail = |message: String, retry| (SourceError::new(format!("{signal}: {message}")), retry);
        let response = self
            .client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode_form(&form))
            .send()
            .await
            .map_err(|e| fail(format!("cannot reach {shown}: {}", chain(&e.without_url())), true))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| fail(format!("{shown}: cannot read the answer: {}", chain(&e.without_url())), true))?;
        let answer: Answer = serde_json::from_str(&body).map_err(|e| {
            let start: String = body.chars().take(200).collect();
            fail(
                format!("{shown} answered {status} with something other than Prometheus JSON ({e}): {start}"),
                status.is_server_error(),
            )
        })?;
        match answer {
            Answer { status: s, data: Some(matrix), .. } if s == "success" => {
                if matrix.result_type != "matrix" {
                    return Err(fail(format!("{shown} answered a {} instead of a matrix", matrix.result_type), false));
                }
                Ok(matrix)
            }
            Answer { error, error_type, .. } => Err(fail(
                format!(
                    "{shown} answered {status}: {}: {} (query: {query})",
                    error_type.unwrap_or_else(|| "error".to_owned()),
                    error.unwrap_or_default()
                ),
                status.is_server_error(),
            )),
        }
    }
}

#[async_trait]
impl MetricSource for PrometheusSource {
    async fn fetch(&self, plan: &Plan, range: Range) -> Result<Snapshot, SourceError> {
        let snapshot = self.fetch_any_role(plan, range).await?;
        // What Prometheus sends must pass the same checks a file does.
        crate::snapshot::Metrics::from_snapshot(&snapshot).map_err(|e| SourceError::new(e.to_string()))?;
        Ok(snapshot)
    }

    async fn fetch_any_role(&self, plan: &Plan, range: Range) -> Result<Snapshot, SourceError> {
        if range.step_seconds == 0 || range.end_ms < range.start_ms {
            return Err(SourceError::new("an empty range or a step of zero"));
        }
        let queries = Signal::ALL.map(|signal| self.query_range(signal, plan.query(signal), range));
        let results = futures_util::future::join_all(queries).await;
        let mut snapshot = Snapshot::new(range.step_seconds);
        for (signal, result) in Signal::ALL.into_iter().zip(results) {
            snapshot.signals.insert(signal.name().to_owned(), result?);
        }
        Ok(snapshot)
    }

    fn describe(&self) -> String {
        format!("Prometheus at {}", redact(&self.base))
    }
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    data: Option<Matrix>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
}

/// `application/x-www-form-urlencoded`, the body Prometheus's API takes for
/// a POST (a long query does not fit every proxy's URL limit).
fn encode_form(pairs: &[(&str, String)]) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                b' ' => "+".to_owned(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_percent_encoded() {
        let body = encode_form(&[("query", "sum by (role) (rate(x{a=\"b\"}[1m]))".to_owned())]);
        assert_eq!(body, "query=sum+by+%28role%29+%28rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29%29");
    }

    #[test]
    fn a_non_http_url_is_refused() {
        let err = PrometheusSource::new("127.0.0.1:9090").unwrap_err().to_string();
        assert_eq!(err, "127.0.0.1:9090 is not an http:// or https:// URL");
    }
}
