//! The proxy server: its HTTP API and its proxies' configuration and
//! listeners. The connections themselves are in `link`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::ChaosError;
use crate::proxy::link::{Counters, LinkConfig, ToxicDef, accept_loop};
use crate::proxy::{ProxyInfo, Toxic, ToxicInfo, ToxicKind, ToxicStream, loopback_addrs};

/// How long a stop waits for a listener or the API to wind down before it
/// aborts them.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// A TCP fault proxy driven over Toxiproxy's HTTP API (the subset Spark's
/// chaos experiments use), so that the same experiment runs against it or
/// against a real Toxiproxy through [`ProxyClient`](crate::ProxyClient).
///
/// Each proxy forwards connections from its listen address to its
/// upstream and applies its toxics ([`ToxicKind`](crate::ToxicKind)), to
/// new connections and to those already open: connection pools (sqlx,
/// pgBouncer) keep theirs for hours, and a fault only new connections saw
/// would miss them. The API, every listen address and every upstream must
/// be on this machine (127.0.0.0/8, `::1`, `localhost`). Disabling a proxy
/// closes its listener and every connection it carries. Dropping the
/// `FaultProxy` stops the API and every proxy and closes every proxied
/// connection; [`FaultProxy::shutdown`] does so and waits until it is done.
///
/// Each proxy's JSON carries, besides Toxiproxy's fields,
/// `spark_connections` ([`ConnectionCounts`](crate::ConnectionCounts)), so
/// a test can tell that a fault reached connections.
///
/// ```
/// use spark_chaos::{FaultProxy, ProxyClient, Toxic};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # tokio::runtime::Runtime::new()?.block_on(async {
/// // An upstream that answers "pong".
/// let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let upstream_addr = upstream.local_addr()?.to_string();
/// tokio::spawn(async move {
///     while let Ok((mut conn, _)) = upstream.accept().await {
///         let _ = conn.write_all(b"pong").await;
///     }
/// });
///
/// let proxy = FaultProxy::start("127.0.0.1:0").await?;
/// let client = ProxyClient::new(&proxy.api_url())?;
/// let pg = client.create("pg", "127.0.0.1:0", &upstream_addr).await?;
/// client.add_toxic("pg", &Toxic::latency(50, 0)).await?;
///
/// let started = std::time::Instant::now();
/// let mut conn = tokio::net::TcpStream::connect(&pg.listen).await?;
/// let mut reply = [0; 4];
/// conn.read_exact(&mut reply).await?;
/// assert_eq!(&reply, b"pong");
/// assert!(started.elapsed() >= std::time::Duration::from_millis(50));
///
/// proxy.shutdown().await;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct FaultProxy {
    api_addr: SocketAddr,
    inner: Arc<Inner>,
    /// Dropping it tells the API server to stop.
    api_stop: Option<oneshot::Sender<()>>,
    api_task: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Binds the HTTP API on `api_listen` (`host:port`, port 0 for any free
    /// port) and serves it on a task of the current tokio runtime.
    ///
    /// # Errors
    /// [`ChaosError::Input`] when `api_listen` is not `host:port` on this
    /// machine; [`ChaosError::Proxy`] when it cannot be bound.
    pub async fn start(api_listen: &str) -> Result<FaultProxy, ChaosError> {
        let addrs = loopback_addrs("fault proxy API listen address", api_listen)?;
        let listener = bind(&addrs).map_err(|e| ChaosError::Proxy {
            status: None,
            what: format!("cannot listen on {api_listen} for the API: {e}"),
        })?;
        let api_addr = listener.local_addr().map_err(|e| ChaosError::Proxy {
            status: None,
            what: format!("the API listener on {api_listen} has no address: {e}"),
        })?;
        let inner = Arc::new(Inner::default());
        let app = router(Arc::clone(&inner));
        let (api_stop, stopped) = oneshot::channel::<()>();
        let api_task = tokio::spawn(async move {
            // Resolves when the sender is used or dropped, so dropping the
            // FaultProxy is enough to stop the API.
            let signal = async move {
                let _ = stopped.await;
            };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(signal).await {
                tracing::warn!(error = %e, "fault proxy API stopped");
            }
        });
        tracing::info!(api = %api_addr, "fault proxy API listening");
        Ok(FaultProxy { api_addr, inner, api_stop: Some(api_stop), api_task: Some(api_task) })
    }

    /// The API's base URL, such as `http://127.0.0.1:8474`.
    #[must_use]
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    /// The address the API is bound to.
    #[must_use]
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Stops the API and every proxy, and returns once every listener is
    /// closed and every proxied connection dropped. Dropping the
    /// `FaultProxy` does the same without waiting.
    pub async fn shutdown(mut self) {
        let proxies = self.inner.close();
        drop(self.api_stop.take());
        if let Some(mut task) = self.api_task.take()
            && tokio::time::timeout(STOP_WAIT, &mut task).await.is_err()
        {
            task.abort();
        }
        for (_, mut proxy) in proxies {
            if let Some(running) = proxy.running.take() {
                running.stop().await;
            }
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Dropping the proxies aborts their listener tasks, and with them
        // the connection tasks they own.
        drop(self.inner.close());
        drop(self.api_stop.take());
    }
}

/// The state the API handlers share.
#[derive(Debug, Default)]
struct Inner {
    /// Never held across an await: `Drop` takes it too.
    proxies: Mutex<BTreeMap<String, Proxy>>,
    /// Held for the whole of every change, awaits included, so two changes
    /// (a disable still closing its listener, an enable binding the same
    /// port) never interleave.
    changes: tokio::sync::Mutex<()>,
    /// Set once the `FaultProxy` is stopped; requests still in flight on a
    /// kept-alive API connection then change nothing.
    closed: AtomicBool,
    /// Toxic ids, so a connection can tell an updated toxic from the old
    /// one and draw its toxicity again.
    next_toxic: AtomicU64,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Proxy>> {
        // A panic while holding the lock leaves the map whole (every change
        // to it is a single insert, remove or field store), so a poisoned
        // lock is still usable.
        self.proxies.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks the server closed and takes every proxy out of it.
    fn close(&self) -> BTreeMap<String, Proxy> {
        let mut proxies = self.lock();
        self.closed.store(true, Ordering::SeqCst);
        std::mem::take(&mut *proxies)
    }

    fn check_open(&self) -> Result<(), ApiError> {
        if self.closed.load(Ordering::SeqCst) {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the fault proxy is shutting down".to_owned()))
        } else {
            Ok(())
        }
    }

    fn toxic_id(&self) -> u64 {
        self.next_toxic.fetch_add(1, Ordering::Relaxed)
    }
}

/// One proxy's configuration and, while enabled, its listener.
#[derive(Debug)]
struct Proxy {
    name: String,
    listen: String,
    listen_addrs: Vec<SocketAddr>,
    upstream: String,
    upstream_addrs: Arc<[SocketAddr]>,
    enabled: bool,
    /// The toxics, in order; connections watch it.
    toxics: watch::Sender<Arc<Vec<ToxicDef>>>,
    counters: Arc<Counters>,
    running: Option<Running>,
}

impl Proxy {
    fn info(&self) -> ProxyInfo {
        ProxyInfo {
            name: self.name.clone(),
            listen: self.listen.clone(),
            upstream: self.upstream.clone(),
            enabled: self.enabled,
            toxics: self.toxics.borrow().iter().map(|t| t.toxic.to_info()).collect(),
            spark_connections: self.counters.snapshot(),
        }
    }

    /// Binds the listen address and starts accepting. After the first
    /// bind, `listen` is the bound address, so a port 0 stays the same port
    /// across disable and enable.
    fn start(&mut self) -> Result<(), ApiError> {
        let listener = bind(&self.listen_addrs).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot listen on {}: {e}", self.listen))
        })?;
        if let Ok(bound) = listener.local_addr() {
            self.listen = bound.to_string();
            self.listen_addrs = vec![bound];
        }
        let (stop, stopped) = oneshot::channel();
        let link = LinkConfig {
            upstream: Arc::clone(&self.upstream_addrs),
            toxics: self.toxics.subscribe(),
            counters: Arc::clone(&self.counters),
        };
        let task = tokio::spawn(accept_loop(listener, link, stopped));
        self.running = Some(Running { stop: Some(stop), task });
        self.enabled = true;
        Ok(())
    }
}

/// A running listener. Dropping it aborts the listener task, which drops
/// (and so aborts) every connection task; [`Running::stop`] also waits.
#[derive(Debug)]
struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Closes the listener and every connection, and waits until they are.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(STOP_WAIT, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds a listener with `SO_REUSEADDR`, so that re-enabling a proxy gets
/// its port back while connections it closed are still in `TIME_WAIT`.
fn bind(addrs: &[SocketAddr]) -> std::io::Result<TcpListener> {
    let mut last = std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no address to bind");
    for &addr in addrs {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(1024)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = e,
        }
    }
    Err(last)
}

// ---- the API ----

/// An API error, in Toxiproxy's JSON shape: `{"error": "...", "status": n}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: String) -> ApiError {
        ApiError { status, message }
    }

    fn bad_request(message: String) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn proxy_not_found(name: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("proxy not found: {name:?}"))
    }

    fn toxic_not_found(proxy: &str, toxic: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("toxic not found: {toxic:?} on proxy {proxy:?}"))
    }
}

impl From<ChaosError> for ApiError {
    fn from(e: ChaosError) -> ApiError {
        let status =
            if matches!(e, ChaosError::Input(_)) { StatusCode::BAD_REQUEST } else { StatusCode::INTERNAL_SERVER_ERROR };
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.message, "status": self.status.as_u16()});
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;
type Shared = State<Arc<Inner>>;

fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/reset", post(reset))
        .route("/proxies", get(list_proxies).post(create_proxy))
        .route("/proxies/{proxy}", get(show_proxy).post(update_proxy).patch(update_proxy).delete(delete_proxy))
        .route("/proxies/{proxy}/toxics", get(list_toxics).post(create_toxic))
        .route(
            "/proxies/{proxy}/toxics/{toxic}",
            get(show_toxic).post(update_toxic).patch(update_toxic).delete(delete_toxic),
        )
        .with_state(inner)
}

/// Reads a JSON body by hand, so that a bad one gets Toxiproxy's error
/// shape rather than axum's plain-text rejection. An empty body is `{}`.
fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> ApiResult<T> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { bytes };
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("bad request body: {e}")))
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({"version": concat!("spark-chaos ", env!("CARGO_PKG_VERSION"))}))
}

async fn list_proxies(State(inner): Shared) -> Json<BTreeMap<String, ProxyInfo>> {
    Json(inner.lock().iter().map(|(name, p)| (name.clone(), p.info())).collect())
}

async fn show_proxy(State(inner): Shared, Path(name): Path<String>) -> ApiResult<Json<ProxyInfo>> {
    let proxies = inner.lock();
    let proxy = proxies.get(&name).ok_or_else(|| ApiError::proxy_not_found(&name))?;
    Ok(Json(proxy.info()))
}

#[derive(serde::Deserialize)]
struct CreateProxy {
    name: Option<String>,
    listen: Option<String>,
    upstream: Option<String>,
    enabled: Option<bool>,
}

async fn create_proxy(State(inner): Shared, bytes: Bytes) -> ApiResult<(StatusCode, Json<ProxyInfo>)> {
    let input: CreateProxy = body(&bytes)?;
    let _changes = inner.changes.lock().await;
    inner.check_open()?;
    let name = input
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing required field: name".to_owned()))?;
    let upstream = input
        .upstream
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing required field: upstream".to_owned()))?;
    // Toxiproxy's default listen address is every interface; this proxy's
    // is loopback.
    let listen = input.listen.filter(|l| !l.is_empty()).unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listen_addrs = loopback_addrs(&format!("proxy {name:?} listen address"), &listen)?;
    let upstream_addrs = loopback_addrs(&format!("proxy {name:?} upstream"), &upstream)?;
    if inner.lock().contains_key(&name) {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("proxy already exists: {name:?}")));
    }
    let mut proxy = Proxy {
        name: name.clone(),
        listen,
        listen_addrs,
        upstream,
        upstream_addrs: upstream_addrs.into(),
        enabled: false,
        toxics: watch::Sender::new(Arc::new(Vec::new())),
        counters: Arc::default(),
        running: None,
    };
    if input.enabled.unwrap_or(true) {
        proxy.start()?;
    }
    let info = proxy.info();
    let mut proxies = inner.lock();
    // Checked again under the lock that `close` takes, so a proxy created
    // while the server stops is dropped (and its listener aborted) here
    // rather than left running.
    inner.check_open()?;
    proxies.insert(name, proxy);
    tracing::info!(proxy = %info.name, listen = %info.listen, upstream = %info.upstream, enabled = info.enabled, "proxy created");
    Ok((StatusCode::CREATED, Json(info)))
}

#[derive(serde::Deserialize)]
struct UpdateProxy {
    listen: Option<String>,
    upstream: Option<String>,
    enabled: Option<bool>,
}

async fn update_proxy(State(inner): Shared, Path(name): Path<String>, bytes: Bytes) -> ApiResult<Json<ProxyInfo>> {
    let input: UpdateProxy = body(&bytes)?;
    let _changes = inner.changes.lock().await;
    inner.check_open()?;
    let new_listen = match input.listen.filter(|l| !l.is_empty()) {
        Some(l) => Some((loopback_addrs(&format!("proxy {name:?} listen address"), &l)?, l)),
        None => None,
    };
    let new_upstream = match input.upstream.filter(|u| !u.is_empty()) {
        Some(u) => Some((loopback_addrs(&format!("proxy {name:?} upstream"), &u)?, u)),
        None => None,
    };
    // Stop the listener first (outside the map lock: stopping awaits) when
    // the proxy is disabled or its addresses change; it is started again
    // below with the new ones.
    let (was_enabled, running) = {
        let mut proxies = inner.lock();
        let proxy = proxies.get_mut(&name).ok_or_else(|| ApiError::proxy_not_found(&name))?;
        let changed = new_listen.as_ref().is_some_and(|(_, l)| *l != proxy.listen)
            || new_upstream.as_ref().is_some_and(|(_, u)| *u != proxy.upstream);
        let keep = input.enabled.unwrap_or(proxy.enabled) && !changed;
        (proxy.enabled, if keep { None } else { proxy.running.take() })
    };
    if let Some(running) = running {
        running.stop().await;
    }
    let mut proxies = inner.lock();
    let proxy = proxies.get_mut(&name).ok_or_else(|| ApiError::proxy_not_found(&name))?;
    if let Some((addrs, listen)) = new_listen {
        proxy.listen = listen;
        proxy.listen_addrs = addrs;
    }
    if let Some((addrs, upstream)) = new_upstream {
        proxy.upstream = upstream;
        proxy.upstream_addrs = addrs.into();
    }
    // Running now only if it was kept running above.
    proxy.enabled = proxy.running.is_some();
    if input.enabled.unwrap_or(was_enabled) && !proxy.enabled {
        proxy.start()?;
    }
    match (was_enabled, proxy.enabled) {
        (false, true) => tracing::info!(proxy = %name, listen = %proxy.listen, "proxy enabled"),
        (true, false) => tracing::info!(proxy = %name, "proxy disabled: listener closed, connections closed"),
        _ => {}
    }
    Ok(Json(proxy.info()))
}

async fn delete_proxy(State(inner): Shared, Path(name): Path<String>) -> ApiResult<StatusCode> {
    let _changes = inner.changes.lock().await;
    let mut removed = inner.lock().remove(&name).ok_or_else(|| ApiError::proxy_not_found(&name))?;
    if let Some(running) = removed.running.take() {
        running.stop().await;
    }
    tracing::info!(proxy = %name, "proxy deleted");
    Ok(StatusCode::NO_CONTENT)
}

async fn reset(State(inner): Shared) -> ApiResult<StatusCode> {
    let _changes = inner.changes.lock().await;
    inner.check_open()?;
    let mut proxies = inner.lock();
    for proxy in proxies.values_mut() {
        proxy.toxics.send_replace(Arc::new(Vec::new()));
        if proxy.running.is_none() {
            proxy.start()?;
        }
    }
    tracing::info!(proxies = proxies.len(), "reset: every proxy enabled, every toxic removed");
    Ok(StatusCode::NO_CONTENT)
}

async fn list_toxics(State(inner): Shared, Path(name): Path<String>) -> ApiResult<Json<Vec<ToxicInfo>>> {
    let proxies = inner.lock();
    let proxy = proxies.get(&name).ok_or_else(|| ApiError::proxy_not_found(&name))?;
    Ok(Json(proxy.info().toxics))
}

async fn show_toxic(State(inner): Shared, Path((name, toxic)): Path<(String, String)>) -> ApiResult<Json<ToxicInfo>> {
    let proxies = inner.lock();
    let proxy = proxies.get(&name).ok_or_else(|| ApiError::proxy_not_found(&name))?;
    let found = proxy.toxics.borrow().iter().find(|t| t.toxic.name() == toxic).map(|t| t.toxic.to_info());
    found.map(Json).ok_or_else(|| ApiError::toxic_not_found(&name, &toxic))
}

#[derive(serde::Deserialize)]
struct ToxicBody {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    stream: Option<String>,
    toxicity: Option<f32>,
    #[serde(default)]
    attributes: serde_json::Map<String, serde_json::Value>,
}

fn parse_stream(stream: Option<&str>) -> ApiResult<ToxicStream> {
    match stream {
        None | Some("" | "downstream") => Ok(ToxicStream::Downstream),
        Some("upstream") => Ok(ToxicStream::Upstream),
        Some(other) => {
            Err(ApiError::bad_request(format!("stream was invalid, can be either upstream or downstream: {other:?}")))
        }
    }
}

async fn create_toxic(State(inner): Shared, Path(name): Path<String>, bytes: Bytes) -> ApiResult<Json<ToxicInfo>> {
    let input: ToxicBody = body(&bytes)?;
    let kind = input
        .kind
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing required field: type".to_owned()))?;
    let kind = ToxicKind::from_attributes(&kind, &input.attributes).map_err(ApiError::bad_request)?;
    let stream = parse_stream(input.stream.as_deref())?;
    let toxicity = Toxic::check_toxicity(input.toxicity.unwrap_or(1.0)).map_err(ApiError::bad_request)?;
    let mut toxic = Toxic::new(kind).toxicity(toxicity);
    toxic.stream = stream;
    toxic.name = Some(input.name.filter(|n| !n.is_empty()).unwrap_or_else(|| toxic.name()));

    let _changes = inner.changes.lock().await;
    inner.check_open()?;
    let proxies = inner.lock();
    let proxy = proxies.get(&name).ok_or_else(|| ApiError::proxy_not_found(&name))?;
    let toxic_name = toxic.name();
    if proxy.toxics.borrow().iter().any(|t| t.toxic.name() == toxic_name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("toxic already exists: {toxic_name:?} on proxy {name:?}"),
        ));
    }
    let info = toxic.to_info();
    let def = ToxicDef { id: inner.toxic_id(), since: Instant::now(), toxic };
    proxy.toxics.send_modify(|toxics| Arc::make_mut(toxics).push(def));
    tracing::info!(proxy = %name, toxic = %info.name, kind = %info.kind, stream = info.stream.as_str(),
        toxicity = info.toxicity, attributes = %serde_json::Value::Object(info.attributes.clone()), "toxic added");
    Ok(Json(info))
}

#[derive(serde::Deserialize)]
struct ToxicUpdate {
    toxicity: Option<f32>,
    #[serde(default)]
    attributes: serde_json::Map<String, serde_json::Value>,
}

async fn update_toxic(
    State(inner): Shared,
    Path((name, toxic_name)): Path<(String, String)>,
    bytes: Bytes,
) -> ApiResult<Json<ToxicInfo>> {
    let input: ToxicUpdate = body(&bytes)?;
    let _changes = inner.changes.lock().await;
    inner.check_open()?;
    let proxies = inner.lock();
    let proxy = proxies.get(&name).ok_or_else(|| ApiError::proxy_not_found(&name))?;
    let Some(old) = proxy.toxics.borrow().iter().find(|t| t.toxic.name() == toxic_name).cloned() else {
        return Err(ApiError::toxic_not_found(&name, &toxic_name));
    };
    // As in Toxiproxy, the attributes given replace those of the same name
    // and the others are kept.
    let mut attributes = old.toxic.kind.attributes();
    attributes.extend(input.attributes);
    let mut toxic = old.toxic.clone();
    toxic.kind = ToxicKind::from_attributes(toxic.kind.type_name(), &attributes).map_err(ApiError::bad_request)?;
    if let Some(toxicity) = input.toxicity {
        toxic.toxicity = Toxic::check_toxicity(toxicity).map_err(ApiError::bad_request)?;
    }
    let info = toxic.to_info();
    let def = ToxicDef { id: inner.toxic_id(), since: Instant::now(), toxic };
    proxy.toxics.send_modify(|toxics| {
        if let Some(slot) = Arc::make_mut(toxics).iter_mut().find(|t| t.id == old.id) {
            *slot = def;
        }
    });
    tracing::info!(proxy = %name, toxic = %toxic_name, toxicity = info.toxicity,
        attributes = %serde_json::Value::Object(info.attributes.clone()), "toxic updated");
    Ok(Json(info))
}

async fn delete_toxic(State(inner): Shared, Path((name, toxic)): Path<(String, String)>) -> ApiResult<StatusCode> {
    let _changes = inner.changes.lock().await;
    let proxies = inner.lock();
    let proxy = proxies.get(&name).ok_or_else(|| ApiError::proxy_not_found(&name))?;
    let removed = proxy.toxics.send_if_modified(|toxics| {
        let before = toxics.len();
        Arc::make_mut(toxics).retain(|t| t.toxic.name() != toxic);
        toxics.len() != before
    });
    if !removed {
        return Err(ApiError::toxic_not_found(&name, &toxic));
    }
    tracing::info!(proxy = %name, toxic = %toxic, "toxic removed");
    Ok(StatusCode::NO_CONTENT)
}
