//! Shared helpers: a recording publisher, a webhook receiver on loopback,
//! waiting with a deadline.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use spark_outbox::{Event, PublishError, Publisher};

/// Records every event it is given; fails for aggregates listed in `fail`.
#[derive(Clone, Default)]
pub(crate) struct Recorder {
    pub(crate) events: Arc<Mutex<Vec<Event>>>,
    pub(crate) delay: Option<Duration>,
}

impl Recorder {
    pub(crate) fn ids(&self) -> Vec<uuid::Uuid> {
        self.events.lock().unwrap().iter().map(|e| e.id).collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    /// Payload `n` of each event of `aggregate`, in delivery order.
    pub(crate) fn sequence(&self, aggregate: &str) -> Vec<i64> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.aggregate_id == aggregate)
            .map(|e| e.payload["n"].as_i64().unwrap())
            .collect()
    }
}

#[async_trait]
impl Publisher for Recorder {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        self.events.lock().unwrap().push(event.clone());
        Ok(())
    }
}

/// Waits until `check` holds, polling every 20 ms, for at most `limit`.
pub(crate) async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A webhook receiver on 127.0.0.1 that answers with a settable status and
/// keeps what it received.
#[derive(Clone)]
pub(crate) struct Receiver {
    pub(crate) url: String,
    pub(crate) status: Arc<AtomicU16>,
    /// Statuses per aggregate id, overriding `status`.
    pub(crate) per_aggregate: Arc<Mutex<BTreeMap<String, u16>>>,
    pub(crate) hits: Arc<AtomicU64>,
    pub(crate) delivered: Arc<Mutex<Vec<(HeaderMap, serde_json::Value, Bytes)>>>,
}

pub(crate) async fn receiver() -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let r = Receiver {
        url,
        status: Arc::new(AtomicU16::new(200)),
        per_aggregate: Arc::default(),
        hits: Arc::default(),
        delivered: Arc::default(),
    };
    let app = Router::new()
        .route(
            "/hook",
            post(|State(r): State<Receiver>, headers: HeaderMap, body: Bytes| async move {
                r.hits.fetch_add(1, Ordering::SeqCst);
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let aggregate = json["aggregate_id"].as_str().unwrap_or_default().to_owned();
                let status =
                    r.per_aggregate.lock().unwrap().get(&aggregate).copied().unwrap_or(r.status.load(Ordering::SeqCst));
                if status < 300 {
                    r.delivered.lock().unwrap().push((headers, json, body));
                }
                StatusCode::from_u16(status).unwrap()
            }),
        )
        .with_state(r.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    r
}

impl Receiver {
    /// `n` of the delivered events of `aggregate`, in order.
    pub(crate) fn sequence(&self, aggregate: &str) -> Vec<i64> {
        self.delivered
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, j, _)| j["aggregate_id"] == aggregate)
            .map(|(_, j, _)| j["payload"]["n"].as_i64().unwrap())
            .collect()
    }
}

/// What [`Scripted`] does with an event.
pub(crate) type Rule = Arc<dyn Fn(&Event) -> Result<(), PublishError> + Send + Sync>;

/// A publisher whose answer per event is a settable rule; records what it
/// accepted.
#[derive(Clone)]
pub(crate) struct Scripted {
    rule: Arc<Mutex<Rule>>,
    pub(crate) rec: Recorder,
}

impl Scripted {
    pub(crate) fn new(rule: impl Fn(&Event) -> Result<(), PublishError> + Send + Sync + 'static) -> Scripted {
        Scripted { rule: Arc::new(Mutex::new(Arc::new(rule))), rec: Recorder::default() }
    }

    pub(crate) fn set(&self, rule: impl Fn(&Event) -> Result<(), PublishError> + Send + Sync + 'static) {
        *self.rule.lock().unwrap() = Arc::new(rule);
    }
}

#[async_trait]
impl Publisher for Scripted {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        let rule = self.rule.lock().unwrap().clone();
        rule(event)?;
        self.rec.events.lock().unwrap().push(event.clone());
        Ok(())
    }
}

/// `n` of an event.
pub(crate) fn n(event: &Event) -> i64 {
    event.payload["n"].as_i64().unwrap_or(-1)
}
