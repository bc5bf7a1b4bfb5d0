//! The contract kit: conformance batteries run over HTTP against a live
//! service, whatever it is written in.
//!
//! [`idempotency`] proves the `Idempotency-Key` contract of one endpoint
//! (the semantics of spark-idempotency's layer) with real requests:
//!
//! | case | passes when |
//! |---|---|
//! | `missing_key_400` | a request without `Idempotency-Key` is 400 |
//! | `long_key_400` | a key one character over `max_key_len` is 400, and one of exactly `max_key_len` is accepted |
//! | `replay_identical` | the same request again is the same status and body, with `Idempotent-Replayed: true` |
//! | `other_body_422` | the same key with another body is 422 |
//! | `other_principal_independent` | the same key from another principal is that principal's own new request |
//! | `parallel_one_effect` | `parallel` identical requests at once get only the success status or 409, name one resource, and make one effect |
//! | `server_error_releases_key` | after a 5xx, a retry of the same request under the same key is executed again: with the fault cleared ([`Fault`]) it succeeds as new; never a replay, 409 or 422 |
//!
//! A created resource is named by the response's `Location` header, or by
//! its body when there is none; an [`EffectCounter`] (rows in a table, a
//! `GET` on a list) additionally counts effects where the service does it.
//! A case that cannot run (no second principal, no way to make the service
//! fail) is [`CaseStatus::Skip`] with the reason, never a pass.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), spark_checks::ChecksError> {
//! use std::sync::Arc;
//! use spark_checks::contract::{self, Auth, ContractOptions, Credential};
//!
//! let auth = Auth::new(Credential::Bearer("token-1".into())).with_other(Credential::Bearer("token-2".into()));
//! let options = ContractOptions::new(
//!     auth,
//!     Arc::new(|n| {
//!         serde_json::json!({
//!             "account_id": "acc-1", "symbol": "THYAO", "side": "buy",
//!             "quantity": n.to_string(), "price": "101.30",
//!         })
//!     }),
//! );
//! let report = contract::idempotency("http://127.0.0.1:8080", options).await?;
//! println!("{}", report.table());
//! assert!(report.passed(), "{:#?}", report.cases);
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::check::{Measurement, Outcome, Status, seconds};
use crate::error::ChecksError;

/// The id of the contract outcome (see [`ContractReport::outcome`]).
pub const ID: &str = "contract";

/// The cases of [`idempotency`], in the order they run.
pub const IDEMPOTENCY_CASES: [&str; 7] = [
    "missing_key_400",
    "long_key_400",
    "replay_identical",
    "other_body_422",
    "other_principal_independent",
    "parallel_one_effect",
    "server_error_releases_key",
];

/// How a request proves who sends it.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// Any one header, such as `X-Client-Id` for a service in a
    /// development mode.
    Header {
        /// The header name.
        name: String,
        /// Its value.
        value: String,
    },
}

// By hand: a token or header value never reaches a log line.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Bearer(_) => f.write_str("Bearer(***)"),
            Credential::Header { name, .. } => write!(f, "Header({name}: ***)"),
        }
    }
}

/// The principals the battery calls as.
#[derive(Debug, Clone)]
pub struct Auth {
    /// Every case calls as this principal.
    pub principal: Credential,
    /// A second principal, for `other_principal_independent`; without it
    /// that case is skipped.
    pub other: Option<Credential>,
}

impl Auth {
    /// One principal; `other_principal_independent` is skipped.
    #[must_use]
    pub fn new(principal: Credential) -> Auth {
        Auth { principal, other: None }
    }

    /// Adds the second principal.
    #[must_use]
    pub fn with_other(mut self, other: Credential) -> Auth {
        self.other = Some(other);
        self
    }
}

/// A request body for variant `n`: a valid request, a different one for
/// each `n`, acceptable to both principals.
pub type MakeRequest = Arc<dyn Fn(u64) -> Value + Send + Sync>;

/// Why a hook ([`EffectCounter`], [`Fault`]) failed.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// Counts the effects the endpoint has made so far (rows in its table, the
/// length of a list it serves): the battery reads it before and after a
/// case and compares the difference with what the case should have made.
#[async_trait::async_trait]
pub trait EffectCounter: Send + Sync {
    /// The number of effects now.
    async fn count(&self) -> Result<u64, HookError>;
}

/// The fault that makes the service answer
/// [`ContractOptions::make_failing_request`] with a 5xx, when the test can
/// clear it: the battery clears it after the first 5xx and retries the
/// same request, which must then succeed as new. That proves the key was
/// released and the request executed again; without a fault to clear, a
/// second 5xx cannot be told from a replay the service failed to mark.
#[async_trait::async_trait]
pub trait Fault: Send + Sync {
    /// Stops the failure; the same request succeeds from now on.
    async fn clear(&self) -> Result<(), HookError>;
}

/// What [`idempotency`] sends, and how it judges.
#[derive(Clone)]
pub struct ContractOptions {
    /// The endpoint, joined to the base URL (default `/v1/orders`).
    pub path: String,
    /// Who calls.
    pub auth: Auth,
    /// A fresh valid body per case: variant `n`.
    pub make_request: MakeRequest,
    /// A body the service answers with a 5xx after claiming the key (a
    /// fault the test arranged, such as a database trigger refusing one
    /// account); without it `server_error_releases_key` is skipped.
    pub make_failing_request: Option<MakeRequest>,
    /// Clears the fault behind `make_failing_request` (see [`Fault`]).
    pub fault: Option<Arc<dyn Fault>>,
    /// Counts effects; without it effects are judged by the responses alone.
    pub count_effects: Option<Arc<dyn EffectCounter>>,
    /// The longest key the service accepts (default 255).
    pub max_key_len: usize,
    /// Identical requests sent at once in `parallel_one_effect` (default 40).
    pub parallel: usize,
    /// The status of a created resource (default 201).
    pub success_status: u16,
    /// How long one request may take (default 10 s).
    pub timeout: Duration,
}

impl ContractOptions {
    /// The defaults: `POST /v1/orders`, keys up to 255 characters, 40
    /// parallel requests, 201 for a creation, 10 s per request; no failing
    /// request and no effect counter.
    #[must_use]
    pub fn new(auth: Auth, make_request: MakeRequest) -> ContractOptions {
        ContractOptions {
            path: "/v1/orders".to_owned(),
            auth,
            make_request,
            make_failing_request: None,
            fault: None,
            count_effects: None,
            max_key_len: 255,
            parallel: 40,
            success_status: 201,
            timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for ContractOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContractOptions")
            .field("path", &self.path)
            .field("auth", &self.auth)
            .field("make_failing_request", &self.make_failing_request.is_some())
            .field("fault", &self.fault.is_some())
            .field("count_effects", &self.count_effects.is_some())
            .field("max_key_len", &self.max_key_len)
            .field("parallel", &self.parallel)
            .field("success_status", &self.success_status)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A case's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseStatus {
    /// The service kept the contract.
    Pass,
    /// It did not; the detail says what it answered instead.
    Fail,
    /// The case could not run; the detail says why.
    Skip,
}

impl CaseStatus {
    /// `"pass"`, `"fail"` or `"skip"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CaseStatus::Pass => "pass",
            CaseStatus::Fail => "fail",
            CaseStatus::Skip => "skip",
        }
    }
}

/// One case of a battery.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// Its name (one of [`IDEMPOTENCY_CASES`]).
    pub name: &'static str,
    /// Its verdict.
    pub status: CaseStatus,
    /// What was observed, or why it was skipped.
    pub detail: String,
    /// How long it took, in seconds in JSON.
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
}

/// What a battery found.
#[derive(Debug, Clone, Serialize)]
pub struct ContractReport {
    /// The endpoint tested.
    pub url: String,
    /// Every case, in the order it ran.
    pub cases: Vec<CaseResult>,
    /// How long the whole battery took, in seconds in JSON.
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
}

impl ContractReport {
    /// Whether every case passed. A skipped case is not a pass.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.cases.iter().all(|c| c.status == CaseStatus::Pass)
    }

    /// The case called `name`.
    #[must_use]
    pub fn case(&self, name: &str) -> Option<&CaseResult> {
        self.cases.iter().find(|c| c.name == name)
    }

    /// The report as a check [`Outcome`] with id `contract`: one finding
    /// per case (a skipped case warns: the contract was not proven whole),
    /// the cases in `details.cases`.
    #[must_use]
    pub fn outcome(&self) -> Outcome {
        let mut outcome = Outcome::new(ID);
        let count = |s: CaseStatus| self.cases.iter().filter(|c| c.status == s).count();
        for c in &self.cases {
            let status = match c.status {
                CaseStatus::Pass => Status::Pass,
                CaseStatus::Skip => Status::Warn,
                CaseStatus::Fail => Status::Fail,
            };
            let skipped = if c.status == CaseStatus::Skip { "skipped: " } else { "" };
            outcome.found(status, format!("{}: {skipped}{}", c.name, c.detail));
        }
        for (name, s) in [
            ("cases_passed", CaseStatus::Pass),
            ("cases_failed", CaseStatus::Fail),
            ("cases_skipped", CaseStatus::Skip),
        ] {
            outcome.measure(Measurement::info(name, count(s) as f64, "count"));
        }
        outcome.detail("url", &self.url).detail("cases", &self.cases);
        let mut outcome =
            outcome.finish(&format!("{} of {} idempotency cases passed", count(CaseStatus::Pass), self.cases.len()));
        outcome.duration = self.duration;
        outcome
    }

    /// One line per case (status, name, duration, detail), then the
    /// verdict of [`ContractReport::outcome`].
    #[must_use]
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let width = self.cases.iter().map(|c| c.name.len()).max().unwrap_or(4);
        let mut out = String::new();
        for c in &self.cases {
            let _ = writeln!(
                out,
                "{:<4}  {:<width$}  {:>7}  {}",
                c.status.as_str().to_ascii_uppercase(),
                c.name,
                format!("{:.3}s", c.duration.as_secs_f64()),
                c.detail
            );
        }
        let count = |s: CaseStatus| self.cases.iter().filter(|c| c.status == s).count();
        let _ = write!(
            out,
            "{}: {} passed, {} failed, {} skipped in {:.3}s against {}",
            self.outcome().status.as_str().to_ascii_uppercase(),
            count(CaseStatus::Pass),
            count(CaseStatus::Fail),
            count(CaseStatus::Skip),
            self.duration.as_secs_f64(),
            self.url
        );
        out
    }
}

/// Runs the idempotency battery against `base_url` joined with
/// `options.path`: every case of [`IDEMPOTENCY_CASES`], one after the
/// other, each under its own fresh keys (unique per run), so the battery
/// can run again against the same service.
///
/// # Errors
///
/// [`ChecksError::ContractOptions`] for a base URL that is not `http` or
/// `https`, or options that cannot run; [`ChecksError::Unreachable`] when
/// the service does not answer the first request. Anything the service
/// answers after that, however wrong, is a case's verdict.
pub async fn idempotency(base_url: &str, options: ContractOptions) -> Result<ContractReport, ChecksError> {
    let started = Instant::now();
    let client = Client::new(base_url, &options)?;
    let run = run_id();
    let mut cases = Vec::with_capacity(IDEMPOTENCY_CASES.len());
    // Every case has variants of its own, so no two cases send one body.
    let mut variants = 0_u64;
    let mut next = move || {
        variants += 1;
        variants
    };

    // The first request also tells whether the service is there at all.
    let t = Instant::now();
    let first = client.send(&options.auth.principal, None, &(options.make_request)(next())).await;
    let verdict = match first {
        Err(e) if e.is_connect() || e.is_timeout() => {
            return Err(ChecksError::Unreachable { url: client.url.to_string(), source: Box::new(e) });
        }
        Err(e) => Verdict::fail(format!("the request failed: {e}")),
        Ok(reply) => missing_key(&reply),
    };
    cases.push(verdict.into_case("missing_key_400", t));

    let t = Instant::now();
    let verdict = long_key(&client, &options, &run, next()).await.unwrap_or_else(|v| v);
    cases.push(verdict.into_case("long_key_400", t));

    let t = Instant::now();
    let verdict = replay(&client, &options, &format!("{run}-replay"), next()).await.unwrap_or_else(|v| v);
    cases.push(verdict.into_case("replay_identical", t));

    let t = Instant::now();
    let (a, b) = (next(), next());
    let verdict = other_body(&client, &options, &format!("{run}-body"), a, b).await.unwrap_or_else(|v| v);
    cases.push(verdict.into_case("other_body_422", t));

    let t = Instant::now();
    let verdict = other_principal(&client, &options, &format!("{run}-principal"), next()).await.unwrap_or_else(|v| v);
    cases.push(verdict.into_case("other_principal_independent", t));

    let t = Instant::now();
    let verdict = parallel(&client, &options, &format!("{run}-parallel"), next()).await.unwrap_or_else(|v| v);
    cases.push(verdict.into_case("parallel_one_effect", t));

    let t = Instant::now();
    let verdict = server_error(&client, &options, &format!("{run}-5xx"), next()).await.unwrap_or_else(|v| v);
    cases.push(verdict.into_case("server_error_releases_key", t));

    Ok(ContractReport { url: client.url.to_string(), cases, duration: started.elapsed() })
}

/// A key prefix no earlier run used: the time, the process and a counter.
fn run_id() -> String {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("spark-contract-{nanos:x}-{:x}-{}", std::process::id(), RUNS.fetch_add(1, Ordering::Relaxed))
}

/// A case's verdict before it is timed and named.
struct Verdict {
    status: CaseStatus,
    detail: String,
}

impl Verdict {
    fn pass(detail: impl Into<String>) -> Verdict {
        Verdict { status: CaseStatus::Pass, detail: detail.into() }
    }

    fn fail(detail: impl Into<String>) -> Verdict {
        Verdict { status: CaseStatus::Fail, detail: detail.into() }
    }

    fn skip(detail: impl Into<String>) -> Verdict {
        Verdict { status: CaseStatus::Skip, detail: detail.into() }
    }

    fn into_case(self, name: &'static str, started: Instant) -> CaseResult {
        CaseResult { name, status: self.status, detail: self.detail, duration: started.elapsed() }
    }
}

/// A case's steps return `Err` to end the case early with that verdict.
type Step<T> = Result<T, Verdict>;

/// The HTTP side: one client, one endpoint.
struct Client {
    http: reqwest::Client,
    url: reqwest::Url,
}

/// What the service answered.
struct Reply {
    status: u16,
    replayed: bool,
    location: Option<String>,
    body: String,
}

impl Reply {
    /// The resource this answer names: its `Location`, or else its body.
    fn resource(&self) -> &str {
        self.location.as_deref().unwrap_or(&self.body)
    }

    /// `201`, `201 (replayed)`, or `500: <the start of the body>`.
    fn describe(&self) -> String {
        let replayed = if self.replayed { " (replayed)" } else { "" };
        if self.status < 400 {
            return format!("{}{replayed}", self.status);
        }
        let body: String = self.body.chars().take(160).collect();
        let more = if body.len() < self.body.len() { "…" } else { "" };
        format!("{}{replayed}: {}{more}", self.status, body.trim())
    }
}

impl Client {
    fn new(base_url: &str, options: &ContractOptions) -> Result<Client, ChecksError> {
        let invalid = |message: String| ChecksError::ContractOptions { message };
        let base = reqwest::Url::parse(base_url).map_err(|e| invalid(format!("base url {base_url:?}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid(format!("base url {base_url:?} is not http or https")));
        }
        if !options.path.starts_with('/') {
            return Err(invalid(format!("path {:?} must start with '/'", options.path)));
        }
        if options.parallel < 2 {
            return Err(invalid(format!("parallel is {}; at least 2 requests are needed", options.parallel)));
        }
        if options.max_key_len == 0 {
            return Err(invalid("max_key_len is 0; a service must accept some key".to_owned()));
        }
        if !(200..300).contains(&options.success_status) {
            return Err(invalid(format!("success_status {} is not a 2xx status", options.success_status)));
        }
        let url = base.join(&options.path).map_err(|e| invalid(format!("path {:?}: {e}", options.path)))?;
        // reqwest is built without a default crypto provider; use ring, the
        // one the rest of the workspace builds.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Redirects are not followed: a Location may name any host, and the
        // battery judges the endpoint's own answers.
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(options.parallel)
            .build()
            .map_err(|e| invalid(format!("cannot build an HTTP client: {e}")))?;
        Ok(Client { http, url })
    }

    async fn send(&self, who: &Credential, key: Option<&str>, body: &Value) -> Result<Reply, reqwest::Error> {
        let mut request = self.http.post(self.url.clone()).header("content-type", "application/json");
        request = match who {
            Credential::Bearer(token) => request.bearer_auth(token),
            Credential::Header { name, value } => request.header(name.as_str(), value.as_str()),
        };
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let response = request.body(body.to_string()).send().await?;
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let replayed = header("idempotent-replayed").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let location = header("location");
        let body = response.text().await?;
        Ok(Reply { status, replayed, location, body })
    }

    /// [`Client::send`], with a transport failure ending the case.
    async fn step(&self, who: &Credential, key: Option<&str>, body: &Value, what: &str) -> Step<Reply> {
        self.send(who, key, body).await.map_err(|e| Verdict::fail(format!("{what}: the request failed: {e}")))
    }
}

/// Reads the effect counter, if there is one.
async fn effects(options: &ContractOptions) -> Step<Option<u64>> {
    match &options.count_effects {
        None => Ok(None),
        Some(counter) => {
            counter.count().await.map(Some).map_err(|e| Verdict::fail(format!("counting effects failed: {e}")))
        }
    }
}

/// `Err` when the counter moved by other than `expected`.
fn judge_effects(before: Option<u64>, after: Option<u64>, expected: u64, what: &str) -> Step<String> {
    match (before, after) {
        (Some(b), Some(a)) if a.checked_sub(b) == Some(expected) => Ok(format!("; {expected} effect(s) counted")),
        (Some(b), Some(a)) => Err(Verdict::fail(format!(
            "{what} made {} effect(s), counted {b} before and {a} after; expected {expected}",
            i128::from(a) - i128::from(b)
        ))),
        _ => Ok(String::new()),
    }
}

/// The first (non-replayed) success of a fresh key, or the end of the case.
fn created(reply: Reply, options: &ContractOptions, what: &str) -> Step<Reply> {
    if reply.status != options.success_status {
        return Err(Verdict::fail(format!(
            "{what} was answered {}, not {}: is make_request's body valid for this principal?",
            reply.describe(),
            options.success_status
        )));
    }
    if reply.replayed {
        return Err(Verdict::fail(format!("{what} used a fresh key and was answered as a replay")));
    }
    Ok(reply)
}

fn missing_key(reply: &Reply) -> Verdict {
    match reply.status {
        400 => Verdict::pass("400 without Idempotency-Key"),
        _ => Verdict::fail(format!("a request without Idempotency-Key was answered {}, not 400", reply.describe())),
    }
}

/// `len` characters: the run's prefix and `tag`, padded (or cut) to length.
fn key_of_len(run: &str, tag: &str, len: usize) -> String {
    let mut key: String = format!("{run}-{tag}-").chars().take(len).collect();
    while key.len() < len {
        key.push('k');
    }
    key
}

async fn long_key(client: &Client, options: &ContractOptions, run: &str, n: u64) -> Step<Verdict> {
    let max = options.max_key_len;
    let who = &options.auth.principal;
    let body = (options.make_request)(n);
    let over = client.step(who, Some(&key_of_len(run, "long", max + 1)), &body, "the over-long key").await?;
    if over.status != 400 {
        return Ok(Verdict::fail(format!("a key of {} characters was answered {}, not 400", max + 1, over.describe())));
    }
    let at = client.step(who, Some(&key_of_len(run, "max", max)), &body, "the longest key").await?;
    if at.status != options.success_status {
        return Ok(Verdict::fail(format!(
            "a key of {max} characters (the most allowed) was answered {}, not {}",
            at.describe(),
            options.success_status
        )));
    }
    Ok(Verdict::pass(format!("{} characters: 400; {max}: {}", max + 1, at.describe())))
}

async fn replay(client: &Client, options: &ContractOptions, key: &str, n: u64) -> Step<Verdict> {
    let who = &options.auth.principal;
    let body = (options.make_request)(n);
    let before = effects(options).await?;
    let first = created(client.step(who, Some(key), &body, "the first request").await?, options, "the first request")?;
    let again = client.step(who, Some(key), &body, "the retry").await?;
    let after = effects(options).await?;
    if again.status != first.status || again.body != first.body {
        return Ok(Verdict::fail(format!(
            "the retry was answered {} with another body, not the first answer {} again",
            again.describe(),
            first.describe()
        )));
    }
    if !again.replayed {
        return Ok(Verdict::fail("the retry got the first answer without Idempotent-Replayed: true"));
    }
    let counted = judge_effects(before, after, 1, "a request and its retry")?;
    Ok(Verdict::pass(format!("{} then {} with the same body{counted}", first.describe(), again.describe())))
}

async fn other_body(client: &Client, options: &ContractOptions, key: &str, a: u64, b: u64) -> Step<Verdict> {
    let who = &options.auth.principal;
    let (body_a, body_b) = ((options.make_request)(a), (options.make_request)(b));
    if body_a == body_b {
        return Ok(Verdict::fail(format!(
            "make_request gave the same body for variants {a} and {b}; the case needs two different requests"
        )));
    }
    created(client.step(who, Some(key), &body_a, "the first request").await?, options, "the first request")?;
    let other = client.step(who, Some(key), &body_b, "the other body").await?;
    match other.status {
        422 => Ok(Verdict::pass("422 for the same key with another body")),
        _ => Ok(Verdict::fail(format!("the same key with another body was answered {}, not 422", other.describe()))),
    }
}

async fn other_principal(client: &Client, options: &ContractOptions, key: &str, n: u64) -> Step<Verdict> {
    let Some(other) = &options.auth.other else {
        return Ok(Verdict::skip("no second principal configured (Auth::with_other, --other-token)"));
    };
    let body = (options.make_request)(n);
    let before = effects(options).await?;
    let mine = created(
        client.step(&options.auth.principal, Some(key), &body, "the first principal").await?,
        options,
        "the first principal's request",
    )?;
    let theirs = client.step(other, Some(key), &body, "the second principal").await?;
    let after = effects(options).await?;
    if theirs.replayed || (theirs.status == mine.status && theirs.resource() == mine.resource()) {
        return Ok(Verdict::fail(format!(
            "the second principal got the first principal's answer ({}): keys are not scoped per principal",
            theirs.describe()
        )));
    }
    if theirs.status != options.success_status {
        return Ok(Verdict::fail(format!(
            "the second principal's request under the first one's key was answered {}, not {}",
            theirs.describe(),
            options.success_status
        )));
    }
    let counted = judge_effects(before, after, 2, "two principals under one key")?;
    Ok(Verdict::pass(format!("each principal got its own {}{counted}", theirs.status)))
}

async fn parallel(client: &Client, options: &ContractOptions, key: &str, n: u64) -> Step<Verdict> {
    let who = &options.auth.principal;
    let body = (options.make_request)(n);
    let before = effects(options).await?;
    let replies =
        futures_util::future::join_all((0..options.parallel).map(|_| client.send(who, Some(key), &body))).await;
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let mut created = 0;
    let mut resources: BTreeSet<&str> = BTreeSet::new();
    let mut unexpected = Vec::new();
    for reply in &replies {
        match reply {
            Ok(r) if r.status == options.success_status => {
                resources.insert(r.resource());
                if !r.replayed {
                    created += 1;
                }
            }
            Ok(r) if r.status == 409 => {}
            Ok(r) => unexpected.push(r.describe()),
            Err(e) => unexpected.push(format!("the request failed: {e}")),
        }
        let label = match reply {
            Ok(r) if r.replayed => format!("{} replayed", r.status),
            Ok(r) => r.status.to_string(),
            Err(_) => "transport error".to_owned(),
        };
        *statuses.entry(label).or_default() += 1;
    }
    let tally = statuses.iter().map(|(s, n)| format!("{n} × {s}")).collect::<Vec<_>>().join(", ");
    let total = options.parallel;
    if let Some(first) = unexpected.first() {
        return Ok(Verdict::fail(format!(
            "{} of {total} parallel requests were answered other than {} or 409 ({tally}); first: {first}",
            unexpected.len(),
            options.success_status
        )));
    }
    if resources.len() != 1 {
        return Ok(Verdict::fail(format!(
            "{total} parallel identical requests named {} different resources ({tally})",
            resources.len()
        )));
    }
    if created != 1 {
        return Ok(Verdict::fail(format!(
            "{created} of {total} parallel identical requests were answered as new, not exactly one ({tally})"
        )));
    }
    // Once all have finished, the key holds the one outcome.
    let resource = resources.pop_first().unwrap_or_default().to_owned();
    let last = client.step(who, Some(key), &body, "the request after the burst").await?;
    let after = effects(options).await?;
    if !(last.status == options.success_status && last.replayed && last.resource() == resource) {
        return Ok(Verdict::fail(format!(
            "after the burst, the same request was answered {}, not a replay of the one resource",
            last.describe()
        )));
    }
    let counted = judge_effects(before, after, 1, &format!("{total} parallel identical requests"))?;
    Ok(Verdict::pass(format!("{total} parallel requests: {tally}; one resource{counted}")))
}

async fn server_error(client: &Client, options: &ContractOptions, key: &str, n: u64) -> Step<Verdict> {
    let Some(make_failing) = &options.make_failing_request else {
        return Ok(Verdict::skip(
            "no failing request configured (make_failing_request, --failing-body): the service was not made to \
             answer a 5xx",
        ));
    };
    let who = &options.auth.principal;
    let failing = make_failing(n);
    let failed = client.step(who, Some(key), &failing, "the failing request").await?;
    if !(500..600).contains(&failed.status) {
        return Ok(Verdict::skip(format!(
            "the failing request was answered {}, not a 5xx: the service could not be made to fail",
            failed.describe()
        )));
    }
    let code = failed.status;
    if let Some(fault) = &options.fault {
        fault.clear().await.map_err(|e| Verdict::fail(format!("clearing the fault failed: {e}")))?;
    }
    // The same request again: a 5xx is not an outcome to keep, so it must
    // run again. (Whether the key stays bound to the failed request's body
    // is the service's choice: spark-idempotency's layer keeps the
    // fingerprint until the TTL, a transaction that rolls its claim back
    // does not; the battery only retries the same request.)
    let retry = client.step(who, Some(key), &failing, "the retry of the failing request").await?;
    let refused = match retry.status {
        _ if retry.replayed => Some("a replay: the 5xx was stored"),
        409 => Some("409: the key is still held"),
        422 => Some("422: the key is bound to another request"),
        _ => None,
    };
    if let Some(why) = refused {
        return Ok(Verdict::fail(format!("the retry after a {code} was answered {}; {why}", retry.describe())));
    }
    match (options.fault.is_some(), retry.status) {
        (_, s) if s == options.success_status => {
            Ok(Verdict::pass(format!("{code}, then the retry under the same key: {}", retry.describe())))
        }
        (false, 500..=599) => Ok(Verdict::pass(format!(
            "{code}, then the retry under the same key ran again: {} (the fault persists; with a Fault to clear, \
             the retry must succeed)",
            retry.describe()
        ))),
        (true, _) => Ok(Verdict::fail(format!(
            "{code}, then with the fault cleared the retry under the same key was answered {}, not {}",
            retry.describe(),
            options.success_status
        ))),
        (false, _) => Ok(Verdict::fail(format!(
            "the retry after a {code} was answered {}, neither the request run again nor a success",
            retry.describe()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_length_asked_for() {
        assert_eq!(key_of_len("spark-contract-1", "long", 256).len(), 256);
        assert_eq!(key_of_len("spark-contract-1", "max", 255).len(), 255);
        assert_eq!(key_of_len("spark-contract-1", "max", 4), "spar");
        assert_ne!(run_id(), run_id());
    }

    #[test]
    fn credentials_never_print_their_secret() {
        let text = format!(
            "{:?}",
            Auth::new(Credential::Bearer("s3cret".into()))
                .with_other(Credential::Header { name: "x-client-id".into(), value: "hidden".into() })
        );
        assert!(!text.contains("s3cret") && !text.contains("hidden"), "{text}");
        assert!(text.contains("x-client-id"), "{text}");
    }

    #[test]
    fn a_skipped_case_is_not_a_pass_and_warns() {
        let case = |name, status| CaseResult { name, status, detail: "d".into(), duration: Duration::ZERO };
        let mut report = ContractReport {
            url: "http://127.0.0.1:1/v1/orders".into(),
            cases: vec![case("missing_key_400", CaseStatus::Pass), case("server_error_releases_key", CaseStatus::Skip)],
            duration: Duration::ZERO,
        };
        assert!(!report.passed());
        let o = report.outcome();
        assert_eq!((o.id.as_str(), o.status), (ID, Status::Warn));
        assert_eq!(o.summary, "server_error_releases_key: skipped: d");
        report.cases.push(case("replay_identical", CaseStatus::Fail));
        assert_eq!(report.outcome().status, Status::Fail);
        report.cases.retain(|c| c.status == CaseStatus::Pass);
        assert!(report.passed());
        let o = report.outcome();
        assert_eq!((o.status, o.summary.as_str()), (Status::Pass, "1 of 1 idempotency cases passed"));
        assert!(
            report
                .table()
                .ends_with("PASS: 1 passed, 0 failed, 0 skipped in 0.000s against http://127.0.0.1:1/v1/orders")
        );
    }
}
