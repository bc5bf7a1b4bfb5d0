//! A small TCP fault proxy with Toxiproxy's HTTP API, and its client.
//!
//! [`FaultProxy`] forwards TCP connections from a listen address to an
//! upstream address, both on this machine, and injects faults ("toxics")
//! into them: latency, a reset, a stall, a byte limit. It is driven over
//! the subset of [Toxiproxy] 2.x's HTTP API that Spark's chaos experiments
//! use, so an operator can point `spark chaos run` at a real Toxiproxy
//! instead. [`ProxyClient`] speaks that API, to either.
//!
//! # Why not Toxiproxy itself
//! Toxiproxy is not packaged in Debian and cannot be downloaded where Spark
//! is built and tested (only crates.io, Debian, PyPI and npm are
//! reachable). The `noxious` crate, a Rust port, does not publish its API
//! server on crates.io, and its core pulls tokio-util 0.6 (beside the
//! workspace's 0.7) and rand 0.8. The maintained Rust clients
//! (`toxiproxy_rust`) use blocking reqwest 0.11, a second reqwest beside
//! the workspace's 0.13. The proxy here is a few hundred lines on the
//! workspace's tokio and axum, and the client is on its reqwest 0.13.
//!
//! # Toxics
//! `latency`, `reset_peer`, `timeout` and `limit_data`, named and
//! parameterised as in Toxiproxy and behaving as it does ([`ToxicKind`]
//! says how). Each applies to one direction ([`ToxicStream`]) and, with
//! probability `toxicity`, to a connection: the draw is made once per
//! connection and toxic (again when the toxic is updated). Toxics apply to
//! connections already open when they are added, not only to new ones:
//! connection pools (sqlx, pgBouncer) keep their connections for hours, and
//! a fault that only new connections saw would miss them.
//!
//! # Guarantees
//! The API, every proxy's listen address and every upstream must be on this
//! machine (`127.0.0.0/8`, `::1`, `localhost`): anything else is refused,
//! by the server and by the client before it sends anything. Dropping a
//! [`FaultProxy`] stops its API and every listener and closes every
//! proxied connection.
//!
//! [Toxiproxy]: https://github.com/Shopify/toxiproxy

mod client;
mod link;
mod server;

use std::net::{SocketAddr, ToSocketAddrs};

use serde::{Deserialize, Serialize};

use crate::ChaosError;

pub use crate::proxy::client::ProxyClient;
pub use crate::proxy::server::FaultProxy;

/// Which direction of a connection a toxic applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToxicStream {
    /// From the upstream server to the client: replies, query results.
    #[default]
    Downstream,
    /// From the client to the upstream server: requests, queries.
    Upstream,
}

impl ToxicStream {
    /// The name Toxiproxy uses: `downstream` or `upstream`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ToxicStream::Downstream => "downstream",
            ToxicStream::Upstream => "upstream",
        }
    }
}

/// What a toxic does, with Toxiproxy's attributes (times in milliseconds).
/// Each acts on one direction of a connection ([`ToxicStream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ToxicKind {
    /// `latency`: every chunk is held until `latency_ms` ± `jitter_ms`
    /// after the proxy read it, so a stream is delayed rather than slowed
    /// chunk by chunk. Removing the toxic releases the chunks it holds.
    Latency {
        /// The delay.
        latency_ms: u64,
        /// The most the delay varies either way, drawn per chunk.
        jitter_ms: u64,
    },
    /// `reset_peer`: the next chunk is dropped and, `timeout_ms` later,
    /// both sides of the connection are reset (TCP RST). As in Toxiproxy,
    /// an idle connection is reset when it is next used.
    ResetPeer {
        /// The wait after the chunk that triggers the reset.
        timeout_ms: u64,
    },
    /// `timeout`: data is dropped, and the connection is closed
    /// `timeout_ms` after the toxic reached it; with 0 it is never closed
    /// and data is dropped until the toxic is removed. Dropped, not held,
    /// as Toxiproxy does: a request sent into the stall is lost, and what
    /// is tested is the client's own timeout.
    Timeout {
        /// The time until the connection is closed; 0 for never.
        timeout_ms: u64,
    },
    /// `limit_data`: the connection is closed once `bytes` bytes have
    /// passed since the toxic reached it.
    LimitData {
        /// How many bytes pass before the connection is closed.
        bytes: u64,
    },
}

impl ToxicKind {
    /// Toxiproxy's name for the type: `latency`, `reset_peer`, `timeout`,
    /// `limit_data`.
    #[must_use]
    pub fn type_name(&self) -> &'static str {
        match self {
            ToxicKind::Latency { .. } => "latency",
            ToxicKind::ResetPeer { .. } => "reset_peer",
            ToxicKind::Timeout { .. } => "timeout",
            ToxicKind::LimitData { .. } => "limit_data",
        }
    }

    /// The attributes object Toxiproxy expects and returns.
    fn attributes(&self) -> serde_json::Map<String, serde_json::Value> {
        let pairs: &[(&str, u64)] = match *self {
            ToxicKind::Latency { latency_ms, jitter_ms } => &[("latency", latency_ms), ("jitter", jitter_ms)],
            ToxicKind::ResetPeer { timeout_ms } | ToxicKind::Timeout { timeout_ms } => &[("timeout", timeout_ms)],
            ToxicKind::LimitData { bytes } => &[("bytes", bytes)],
        };
        pairs.iter().map(|&(k, v)| (k.to_owned(), serde_json::Value::from(v))).collect()
    }

    /// Reads a toxic of type `kind` from its attributes; a missing attribute
    /// is 0, as in Toxiproxy. Unknown attributes are refused rather than
    /// ignored: a misspelt `latncy` would otherwise inject no fault at all
    /// and the experiment would pass for the wrong reason.
    fn from_attributes(kind: &str, attributes: &serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        let known: &[&str] = match kind {
            "latency" => &["latency", "jitter"],
            "reset_peer" | "timeout" => &["timeout"],
            "limit_data" => &["bytes"],
            other => {
                return Err(format!(
                    "invalid toxic type: {other:?} (this proxy knows latency, reset_peer, timeout, limit_data)"
                ));
            }
        };
        if let Some(unknown) = attributes.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(format!("{kind} toxic has no attribute {unknown:?} (it has {})", known.join(", ")));
        }
        let get = |name: &str| match attributes.get(name) {
            None | Some(serde_json::Value::Null) => Ok(0),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| format!("{kind} toxic attribute {name} must be a whole number of at least 0, not {v}")),
        };
        Ok(match kind {
            "latency" => ToxicKind::Latency { latency_ms: get("latency")?, jitter_ms: get("jitter")? },
            "reset_peer" => ToxicKind::ResetPeer { timeout_ms: get("timeout")? },
            "timeout" => ToxicKind::Timeout { timeout_ms: get("timeout")? },
            _ => ToxicKind::LimitData { bytes: get("bytes")? },
        })
    }
}

/// A toxic to add to a proxy: what it does, the direction, the probability
/// it applies to a connection, its name.
///
/// ```
/// use spark_chaos::{Toxic, ToxicStream};
///
/// let slow = Toxic::latency(200, 50).upstream().toxicity(0.5);
/// assert_eq!(slow.name(), "latency_upstream");
/// assert_eq!(slow.stream(), ToxicStream::Upstream);
/// assert_eq!(Toxic::reset_peer(0).named("rst").name(), "rst");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Toxic {
    name: Option<String>,
    kind: ToxicKind,
    stream: ToxicStream,
    toxicity: f32,
}

impl Toxic {
    /// A toxic of this kind, downstream, applied to every connection.
    #[must_use]
    pub fn new(kind: ToxicKind) -> Toxic {
        Toxic { name: None, kind, stream: ToxicStream::Downstream, toxicity: 1.0 }
    }

    /// `latency`: every chunk delayed by `ms` ± `jitter_ms`.
    #[must_use]
    pub fn latency(ms: u64, jitter_ms: u64) -> Toxic {
        Toxic::new(ToxicKind::Latency { latency_ms: ms, jitter_ms })
    }

    /// `reset_peer`: the connection reset `timeout_ms` after the next chunk
    /// (at once when 0).
    #[must_use]
    pub fn reset_peer(timeout_ms: u64) -> Toxic {
        Toxic::new(ToxicKind::ResetPeer { timeout_ms })
    }

    /// `timeout`: data dropped, the connection closed after `ms` (never
    /// when 0).
    #[must_use]
    pub fn timeout(ms: u64) -> Toxic {
        Toxic::new(ToxicKind::Timeout { timeout_ms: ms })
    }

    /// `limit_data`: the connection closed after `bytes` bytes.
    #[must_use]
    pub fn limit_data(bytes: u64) -> Toxic {
        Toxic::new(ToxicKind::LimitData { bytes })
    }

    /// Applies it from the upstream server to the client (the default).
    #[must_use]
    pub fn downstream(mut self) -> Toxic {
        self.stream = ToxicStream::Downstream;
        self
    }

    /// Applies it from the client to the upstream server.
    #[must_use]
    pub fn upstream(mut self) -> Toxic {
        self.stream = ToxicStream::Upstream;
        self
    }

    /// The probability, from 0.0 to 1.0, that it applies to a connection.
    /// A value outside that range is refused when the toxic is added.
    #[must_use]
    pub fn toxicity(mut self, probability: f32) -> Toxic {
        self.toxicity = probability;
        self
    }

    /// Names it; the default name is `<type>_<stream>`, as in Toxiproxy.
    #[must_use]
    pub fn named(mut self, name: &str) -> Toxic {
        self.name = Some(name.to_owned());
        self
    }

    /// Its name: the one given with [`Toxic::named`], or `<type>_<stream>`.
    #[must_use]
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| format!("{}_{}", self.kind.type_name(), self.stream.as_str()))
    }

    /// What it does.
    #[must_use]
    pub fn kind(&self) -> ToxicKind {
        self.kind
    }

    /// The direction it applies to.
    #[must_use]
    pub fn stream(&self) -> ToxicStream {
        self.stream
    }

    /// The probability that it applies to a connection.
    #[must_use]
    pub fn probability(&self) -> f32 {
        self.toxicity
    }

    /// Refuses a toxicity outside 0.0 to 1.0 (NaN included).
    fn check_toxicity(toxicity: f32) -> Result<f32, String> {
        if (0.0..=1.0).contains(&toxicity) {
            Ok(toxicity)
        } else {
            Err(format!("toxicity {toxicity} is not a probability between 0.0 and 1.0"))
        }
    }

    /// The JSON Toxiproxy takes and returns for a toxic.
    fn to_info(&self) -> ToxicInfo {
        ToxicInfo {
            name: self.name(),
            kind: self.kind.type_name().to_owned(),
            stream: self.stream,
            toxicity: self.toxicity,
            attributes: self.kind.attributes(),
        }
    }
}

/// A toxic as the API reports it. The type and attributes are kept as
/// text and JSON so that toxics this crate does not model (Toxiproxy's
/// `bandwidth`, `slicer`, `slow_close`) still read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ToxicInfo {
    /// Its name.
    pub name: String,
    /// Its type, such as `latency`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The direction it applies to.
    pub stream: ToxicStream,
    /// The probability it applies to a connection.
    pub toxicity: f32,
    /// Its attributes, such as `{"latency": 200, "jitter": 0}`.
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// How many connections a [`FaultProxy`] proxy has seen; the
/// `spark_connections` field of its JSON, which Toxiproxy does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ConnectionCounts {
    /// Client connections accepted since the proxy was created.
    pub accepted: u64,
    /// Client connections open now.
    pub open: u64,
    /// Connections reset by a `reset_peer` toxic.
    pub reset: u64,
}

/// A proxy as the API reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProxyInfo {
    /// Its name.
    pub name: String,
    /// The address it listens on (`host:port`); once it has listened, the
    /// address it bound, so a requested port 0 reads as the real port.
    pub listen: String,
    /// The address it forwards to (`host:port`).
    pub upstream: String,
    /// Whether it accepts connections.
    pub enabled: bool,
    /// Its toxics, in the order they were added.
    #[serde(default)]
    pub toxics: Vec<ToxicInfo>,
    /// Its connection counts; zero from a real Toxiproxy, which has none.
    #[serde(default)]
    pub spark_connections: ConnectionCounts,
}

/// Checks that `addr` is `host:port` on this machine and resolves it to
/// its loopback addresses. `what` names the address in the error, such as
/// `proxy "pg" upstream`.
pub(crate) fn loopback_addrs(what: &str, addr: &str) -> Result<Vec<SocketAddr>, ChaosError> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(ChaosError::Input(format!("{what} {addr:?} is not host:port")));
    };
    let Ok(port) = port.parse::<u16>() else {
        return Err(ChaosError::Input(format!("{what} {addr:?} has no valid port (0 to 65535)")));
    };
    if host.contains(':') && !host.starts_with('[') {
        return Err(ChaosError::Input(format!("{what} {addr:?}: write an IPv6 address in brackets, as [::1]:{port}")));
    }
    // An empty host (":8474") means every interface to Toxiproxy and Go;
    // it is refused here like any other address off this machine.
    if !spark_db::is_loopback_host(host) {
        return Err(ChaosError::Input(format!(
            "{what} {addr:?} is not on this machine: the fault proxy only listens on and connects to \
             loopback addresses (127.0.0.1, [::1], localhost)"
        )));
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    // `bare` is an IP literal or `localhost`, so this reads no DNS; the
    // filter keeps a hosts file that maps localhost elsewhere from counting.
    let resolved: Vec<SocketAddr> = (bare, port)
        .to_socket_addrs()
        .map_err(|e| ChaosError::Input(format!("{what} {addr:?} does not resolve: {e}")))?
        .filter(|a| a.ip().is_loopback())
        .collect();
    if resolved.is_empty() {
        return Err(ChaosError::Input(format!("{what} {addr:?} resolves to no loopback address")));
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::{Toxic, ToxicKind, ToxicStream, loopback_addrs};
    use crate::ChaosError;

    #[test]
    fn default_names_follow_toxiproxy() {
        assert_eq!(Toxic::latency(1, 0).name(), "latency_downstream");
        assert_eq!(Toxic::reset_peer(0).upstream().name(), "reset_peer_upstream");
        assert_eq!(Toxic::timeout(0).upstream().downstream().name(), "timeout_downstream");
        assert_eq!(Toxic::limit_data(9).named("cap").name(), "cap");
    }

    #[test]
    fn attributes_round_trip() {
        for toxic in [Toxic::latency(200, 30), Toxic::reset_peer(5), Toxic::timeout(0), Toxic::limit_data(1024)] {
            let info = toxic.to_info();
            assert_eq!(ToxicKind::from_attributes(&info.kind, &info.attributes), Ok(toxic.kind()));
        }
        let json = serde_json::to_value(Toxic::latency(200, 30).upstream().toxicity(0.5).to_info()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name": "latency_upstream", "type": "latency", "stream": "upstream",
                               "toxicity": 0.5, "attributes": {"latency": 200, "jitter": 30}})
        );
    }

    #[test]
    fn bad_toxics_are_refused() {
        let attrs = |v: serde_json::Value| v.as_object().unwrap().clone();
        assert!(ToxicKind::from_attributes("bandwidth", &attrs(serde_json::json!({}))).unwrap_err().contains("type"));
        let typo = ToxicKind::from_attributes("latency", &attrs(serde_json::json!({"latncy": 5}))).unwrap_err();
        assert!(typo.contains("latncy"), "{typo}");
        let negative = ToxicKind::from_attributes("timeout", &attrs(serde_json::json!({"timeout": -1}))).unwrap_err();
        assert!(negative.contains("timeout"), "{negative}");
        assert_eq!(
            ToxicKind::from_attributes("latency", &attrs(serde_json::json!({"latency": 7}))),
            Ok(ToxicKind::Latency { latency_ms: 7, jitter_ms: 0 })
        );
        for bad in [-0.1, 1.5, f32::NAN] {
            assert!(Toxic::check_toxicity(bad).is_err(), "{bad}");
        }
        assert_eq!(ToxicStream::default(), ToxicStream::Downstream);
    }

    #[test]
    fn only_loopback_addresses_pass() {
        for ok in ["127.0.0.1:0", "127.1.2.3:5432", "[::1]:80", "localhost:6432"] {
            let addrs = loopback_addrs("listen", ok).unwrap();
            assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{ok}: {addrs:?}");
        }
        for bad in ["0.0.0.0:0", ":8474", "10.0.0.1:5432", "example.com:80", "127.0.0.1", "127.0.0.1:x", "::1:80"] {
            assert!(matches!(loopback_addrs("listen", bad), Err(ChaosError::Input(_))), "{bad}");
        }
    }
}
