//! The tower layer: `Idempotency-Key` for any tower HTTP stack, axum included.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, LOCATION, RETRY_AFTER};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower_layer::Layer;
use tower_service::Service;

use crate::{Claim, Fingerprint, IdempotencyKey, IdempotencyStore, Lease, StoredResponse};

/// The request header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on every replayed response.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// What the layer guards and how.
#[derive(Debug, Clone)]
pub struct LayerConfig {
    methods: Vec<Method>,
    require_key: bool,
    max_body: usize,
    replay_headers: Vec<HeaderName>,
}

impl Default for LayerConfig {
    fn default() -> Self {
        LayerConfig {
            methods: vec![Method::POST, Method::PATCH],
            require_key: true,
            max_body: 1024 * 1024,
            replay_headers: vec![CONTENT_TYPE, LOCATION],
        }
    }
}

impl LayerConfig {
    /// Guards POST and PATCH, requires a key on them, fingerprints bodies up
    /// to 1 MiB, replays `content-type` and `location`.
    #[must_use]
    pub fn new() -> Self {
        LayerConfig::default()
    }

    /// The methods to guard; others pass through untouched.
    #[must_use]
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// Whether a guarded request without a key is refused with 400 (the
    /// default) or passes through without idempotency.
    #[must_use]
    pub fn require_key(mut self, require: bool) -> Self {
        self.require_key = require;
        self
    }

    /// The largest request body fingerprinted; larger ones get 413.
    #[must_use]
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Response headers stored and replayed besides the body and status.
    #[must_use]
    pub fn replay_headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.replay_headers = headers.into_iter().collect();
        self
    }
}

/// A tower [`Layer`] that makes guarded requests idempotent.
///
/// The scope of each key comes from `principal`, a function of the request
/// head that returns the authenticated principal (a request for which it
/// returns `None` is answered 401), so the same key from two clients is two
/// keys. The layer uses the store's leased mode: the claim commits first,
/// the handler runs, then the outcome is stored.
///
/// The fingerprint covers the method, the path with its query string, and
/// the body. Once the claim is acquired, the handler and the completion run
/// in a task of their own: a client that disconnects, or an outer timeout,
/// cannot stop them halfway and leave the key in flight with the work done.
/// A completion that fails on a store error is retried a few times with
/// backoff.
///
/// Answers of the layer itself (problem+json): 400 for a missing, repeated,
/// non-ASCII, empty or over-long (more than 255 characters) key; 401 without
/// a principal; 409 while the first request runs; 413 for a body over
/// [`LayerConfig::max_body`]; 422 for a key reused with another request; 503
/// when the store fails before the handler ran.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::Arc;
/// use axum::{Router, routing::post};
/// use spark_idempotency::{IdempotencyLayer, MemoryStore};
/// use tower::ServiceExt;
///
/// let store = Arc::new(MemoryStore::new(Default::default())?);
/// let app = Router::new()
///     .route("/v1/orders", post(|| async { (axum::http::StatusCode::CREATED, "order 1") }))
///     .layer(IdempotencyLayer::new(store, |parts: &http::request::Parts| {
///         parts.headers.get("x-client-id")?.to_str().ok().map(str::to_owned)
///     }));
///
/// let request = || {
///     http::Request::post("/v1/orders")
///         .header("x-client-id", "alice")
///         .header("idempotency-key", "k1")
///         .body(axum::body::Body::from("{}"))
///         .unwrap()
/// };
/// let first = app.clone().oneshot(request()).await?;
/// assert_eq!(first.status(), 201);
/// let again = app.oneshot(request()).await?;
/// assert_eq!(again.status(), 201);
/// assert_eq!(again.headers()["idempotent-replayed"], "true");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct IdempotencyLayer<S: ?Sized, P> {
    store: Arc<S>,
    principal: P,
    config: Arc<LayerConfig>,
}

impl<S: ?Sized, P: Clone> Clone for IdempotencyLayer<S, P> {
    fn clone(&self) -> Self {
        IdempotencyLayer { store: self.store.clone(), principal: self.principal.clone(), config: self.config.clone() }
    }
}

impl<S: ?Sized, P> fmt::Debug for IdempotencyLayer<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer").field("config", &self.config).finish_non_exhaustive()
    }
}

impl<S, P> IdempotencyLayer<S, P>
where
    S: IdempotencyStore + ?Sized,
    P: Fn(&Parts) -> Option<String> + Clone + Send + Sync + 'static,
{
    /// A layer over `store`, scoping keys by `principal`. `store` may be a
    /// concrete store or an `Arc<dyn IdempotencyStore>` chosen at run time.
    pub fn new(store: Arc<S>, principal: P) -> Self {
        IdempotencyLayer { store, principal, config: Arc::new(LayerConfig::default()) }
    }

    /// Replaces the defaults of [`LayerConfig`].
    #[must_use]
    pub fn with_config(mut self, config: LayerConfig) -> Self {
        self.config = Arc::new(config);
        self
    }
}

impl<Inner, S: ?Sized, P: Clone> Layer<Inner> for IdempotencyLayer<S, P> {
    type Service = IdempotencyService<Inner, S, P>;

    fn layer(&self, inner: Inner) -> Self::Service {
        IdempotencyService {
            inner,
            store: self.store.clone(),
            principal: self.principal.clone(),
            config: self.config.clone(),
        }
    }
}

/// The service [`IdempotencyLayer`] wraps around a handler.
pub struct IdempotencyService<Inner, S: ?Sized, P> {
    inner: Inner,
    store: Arc<S>,
    principal: P,
    config: Arc<LayerConfig>,
}

impl<Inner: Clone, S: ?Sized, P: Clone> Clone for IdempotencyService<Inner, S, P> {
    fn clone(&self) -> Self {
        IdempotencyService {
            inner: self.inner.clone(),
            store: self.store.clone(),
            principal: self.principal.clone(),
            config: self.config.clone(),
        }
    }
}

impl<Inner, S: ?Sized, P> fmt::Debug for IdempotencyService<Inner, S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyService").field("config", &self.config).finish_non_exhaustive()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<Inner, S, P, ReqBody, ResBody> Service<Request<ReqBody>> for IdempotencyService<Inner, S, P>
where
    Inner: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    Inner::Future: Send,
    Inner::Error: Send + 'static,
    S: IdempotencyStore + ?Sized,
    P: Fn(&Parts) -> Option<String> + Clone + Send + Sync + 'static,
    ReqBody: Body + From<Bytes> + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: std::error::Error + Send + Sync + 'static,
    ResBody: Body + From<Bytes> + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: fmt::Display,
{
    type Response = Response<ResBody>;
    type Error = Inner::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The ready inner service goes into the future; a fresh clone stays
        // (the usual tower pattern, so poll_ready's readiness is not lost).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (store, principal, config) = (self.store.clone(), self.principal.clone(), self.config.clone());
        Box::pin(async move {
            if !config.methods.contains(req.method()) {
                let mut inner = inner;
                return inner.call(req).await;
            }
            match guard(req, inner, store, &principal, config).await {
                Ok(response) => response,
                Err(problem) => Ok(problem.into_response()),
            }
        })
    }
}

/// The guarded path. `Err` is an answer the layer gives itself.
async fn guard<Inner, S, P, ReqBody, ResBody>(
    req: Request<ReqBody>,
    mut inner: Inner,
    store: Arc<S>,
    principal: &P,
    config: Arc<LayerConfig>,
) -> Result<Result<Response<ResBody>, Inner::Error>, Problem>
where
    Inner: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    Inner::Future: Send,
    Inner::Error: Send + 'static,
    S: IdempotencyStore + ?Sized,
    P: Fn(&Parts) -> Option<String>,
    ReqBody: Body + From<Bytes> + Send + 'static,
    ReqBody::Error: std::error::Error + Send + Sync + 'static,
    ResBody: Body + From<Bytes> + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: fmt::Display,
{
    let (parts, body) = req.into_parts();
    let scope = principal(&parts).ok_or(Problem::UNAUTHENTICATED)?;
    let mut values = parts.headers.get_all(IDEMPOTENCY_KEY).iter();
    let key = match (values.next(), values.next()) {
        (None, _) if config.require_key => return Err(Problem::MISSING_KEY),
        (None, _) => return Ok(inner.call(Request::from_parts(parts, body)).await),
        (Some(_), Some(_)) => return Err(Problem::invalid_key("more than one Idempotency-Key header")),
        (Some(value), None) => {
            let value =
                value.to_str().map_err(|_| Problem::invalid_key("only visible ASCII characters are allowed"))?;
            IdempotencyKey::new(value).map_err(|e| match e {
                crate::IdempotencyError::InvalidKey { reason } => Problem::invalid_key(reason),
                _ => Problem::STORE_UNAVAILABLE,
            })?
        }
    };

    let bytes = match Limited::new(body, config.max_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(Problem::TOO_LARGE),
        Err(_) => return Err(Problem::UNREADABLE_BODY),
    };
    // The query string is part of the request: `?x=1` and `?x=2` under one
    // key are two different requests.
    let target = parts.uri.path_and_query().map_or_else(|| parts.uri.path(), |pq| pq.as_str());
    let fingerprint = Fingerprint::of_request(parts.method.as_str(), target, &bytes);

    let lease = match store.claim(&scope, &key, &fingerprint).await {
        Ok(Claim::Acquired(lease)) => lease,
        Ok(Claim::Replay(stored)) => return Ok(Ok(replay(stored))),
        Ok(Claim::InFlight { retry_after }) => return Err(Problem::in_flight(retry_after.as_secs().max(1))),
        Ok(Claim::Mismatch) => return Err(Problem::MISMATCH),
        Err(e) => {
            tracing::error!(error = %e, "idempotency claim failed");
            return Err(Problem::STORE_UNAVAILABLE);
        }
    };

    // From here the handler may cause side effects. It and the bookkeeping
    // after it run in a task of their own, so that both reach the end even
    // when this future is dropped (the client went away, an outer timeout
    // fired): otherwise the key would stay in flight with the work done, and
    // a retry after the lease would run the work a second time.
    let request = Request::from_parts(parts, ReqBody::from(bytes));
    match tokio::spawn(execute(inner, request, store, lease, config)).await {
        Ok(outcome) => outcome,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: the runtime is shutting down.
        Err(_) => Err(Problem::STORE_UNAVAILABLE),
    }
}

/// Runs the handler under `lease` and stores (or releases) its outcome.
async fn execute<Inner, S, ReqBody, ResBody>(
    mut inner: Inner,
    request: Request<ReqBody>,
    store: Arc<S>,
    lease: Lease,
    config: Arc<LayerConfig>,
) -> Result<Result<Response<ResBody>, Inner::Error>, Problem>
where
    Inner: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S: IdempotencyStore + ?Sized,
    ResBody: Body + From<Bytes>,
    ResBody::Error: fmt::Display,
{
    let response = match inner.call(request).await {
        Ok(response) => response,
        Err(e) => {
            // The handler failed without an answer: free the key for a retry.
            bookkeeping("release", || store.release(&lease)).await;
            return Ok(Err(e));
        }
    };
    let (head, body) = response.into_parts();
    // The body error is turned into text at once: it need not be Send, and
    // the release below awaits.
    let body = match body.collect().await.map_err(|e| e.to_string()) {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            tracing::error!(error = %e, "response body failed; releasing the idempotency key");
            bookkeeping("release", || store.release(&lease)).await;
            return Err(Problem::UNREADABLE_RESPONSE);
        }
    };
    let stored = StoredResponse {
        status: head.status.as_u16(),
        headers: config
            .replay_headers
            .iter()
            .filter_map(|name| {
                let value = head.headers.get(name)?.to_str().ok()?;
                Some((name.as_str().to_owned(), value.to_owned()))
            })
            .collect(),
        body: body.to_vec(),
    };
    // The client gets its answer whatever happens to the bookkeeping; a lost
    // lease means a takeover already ran (or is running) the same request.
    bookkeeping("completion", || store.complete(&lease, &stored)).await;
    Ok(Ok(Response::from_parts(head, ResBody::from(body))))
}

/// How many times a completion or release is tried before the layer gives
/// up (the lease then expires and a retry takes over), and the first pause
/// between tries; each pause doubles, 50 ms to 400 ms.
const BOOKKEEPING_ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// Runs `op` until it succeeds, the lease turns out lost (no retry can help
/// then), or the attempts run out. A transient store failure after the work
/// ran would otherwise leave the key in flight until its lease expired.
async fn bookkeeping<F, Fut>(what: &'static str, mut op: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = crate::Result<()>>,
{
    let mut pause = FIRST_BACKOFF;
    for attempt in 1..=BOOKKEEPING_ATTEMPTS {
        match op().await {
            Ok(()) => return,
            Err(e @ crate::IdempotencyError::LeaseLost { .. }) => {
                tracing::warn!(error = %e, what, "idempotency {what} refused");
                return;
            }
            Err(e) if attempt == BOOKKEEPING_ATTEMPTS => {
                tracing::error!(error = %e, what, attempt, "idempotency {what} failed; giving up");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, what, attempt, "idempotency {what} failed; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
}

fn replay<B: From<Bytes>>(stored: StoredResponse) -> Response<B> {
    let mut response = Response::new(B::from(Bytes::from(stored.body)));
    *response.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    for (name, value) in stored.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            response.headers_mut().append(name, value);
        }
    }
    response.headers_mut().insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    response
}

/// An RFC 9457 problem the layer answers with.
#[derive(Debug, Clone)]
struct Problem {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: std::borrow::Cow<'static, str>,
    retry_after: Option<u64>,
}

impl Problem {
    const fn new(status: StatusCode, kind: &'static str, title: &'static str, detail: &'static str) -> Problem {
        Problem { status, kind, title, detail: std::borrow::Cow::Borrowed(detail), retry_after: None }
    }

    const UNAUTHENTICATED: Problem = Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "Unauthenticated",
        "the request carries no principal to scope its Idempotency-Key",
    );
    const MISSING_KEY: Problem = Problem::new(
        StatusCode::BAD_REQUEST,
        "idempotency-key-missing",
        "Idempotency-Key required",
        "this endpoint requires an Idempotency-Key header; send a unique value (a UUID) and reuse it on retries",
    );
    const MISMATCH: Problem = Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency-key-reused",
        "Idempotency-Key reused with a different request",
        "this Idempotency-Key was first used with a different method, path or body; use a new key for a new request",
    );
    const TOO_LARGE: Problem = Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request-too-large",
        "Request body too large",
        "the request body exceeds the limit for idempotent requests",
    );
    const UNREADABLE_BODY: Problem = Problem::new(
        StatusCode::BAD_REQUEST,
        "request-body-unreadable",
        "Request body unreadable",
        "the request body could not be read",
    );
    const UNREADABLE_RESPONSE: Problem = Problem::new(
        StatusCode::BAD_GATEWAY,
        "response-unreadable",
        "Response unreadable",
        "the handler's response body failed; the request may be retried with the same key",
    );
    const STORE_UNAVAILABLE: Problem = Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "idempotency-store-unavailable",
        "Idempotency store unavailable",
        "the request was not executed; retry with the same Idempotency-Key",
    );

    fn invalid_key(reason: &'static str) -> Problem {
        Problem {
            detail: std::borrow::Cow::Owned(format!(
                "invalid Idempotency-Key: {reason}; use 1-255 visible ASCII characters"
            )),
            ..Problem::new(StatusCode::BAD_REQUEST, "idempotency-key-invalid", "Invalid Idempotency-Key", "")
        }
    }

    fn in_flight(retry_after: u64) -> Problem {
        Problem {
            retry_after: Some(retry_after),
            ..Problem::new(
                StatusCode::CONFLICT,
                "idempotency-key-in-flight",
                "Request in flight",
                "a request with this Idempotency-Key is still being processed; retry after the Retry-After delay",
            )
        }
    }

    fn into_response<B: From<Bytes>>(self) -> Response<B> {
        let body = serde_json::json!({
            "type": format!("urn:spark:problem:{}", self.kind),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut response = Response::new(B::from(Bytes::from(body.to_string())));
        *response.status_mut() = self.status;
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
