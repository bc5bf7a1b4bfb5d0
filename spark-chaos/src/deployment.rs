//! `chaos.toml`: the deployment an experiment breaks, written by `spark
//! chaos up` or by hand for a staging stack on loopback.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ChaosError, io};

/// A deployment: where its database, service, pgBouncer, fault proxy and
/// Prometheus are, and how to start a relay and restart the database.
/// Only `[database]` and `[relay]` are required; an experiment that needs
/// a missing section says which.
///
/// ```
/// let d = spark_chaos::Deployment::from_toml(r#"
/// [database]
/// url = "postgres://postgres@127.0.0.1:5432/chaos"
/// [relay]
/// command = ["spark", "outbox", "relay", "--sink", "webhook", "--url", "{sink_url}", "--database-url", "{database_url}"]
/// "#)?;
/// assert!(d.service.is_none());
/// # Ok::<(), spark_chaos::ChaosError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// The database.
    pub database: DatabaseSection,
    /// How to start one relay.
    pub relay: RelaySection,
    /// The order service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSection>,
    /// pgBouncer in front of the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgbouncer: Option<PgbouncerSection>,
    /// The Toxiproxy-compatible fault proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySection>,
    /// A Prometheus scraping the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSection>,
}

/// `[database]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    /// A direct PostgreSQL URL (not through pgBouncer or the proxy), for
    /// setup, relays and the verdict.
    pub url: String,
    /// Stops the database (argv), for `db-restart`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Starts it again, waiting until it accepts connections.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start: Vec<String>,
}

/// `[relay]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    /// Argv starting one relay; `{sink_url}` becomes the experiment's own
    /// webhook sink and `{database_url}` the database.
    pub command: Vec<String>,
}

/// `[service]`: the order service's HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    /// Its base URL, such as `http://127.0.0.1:8080`.
    pub url: String,
    /// Headers every request carries: `X-Client-Id` for a service run with
    /// `--dev-auth header`, or `Authorization` for a chaos client of its
    /// own.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// The accounts the experiments may trade in (prefix; a number is
    /// appended).
    #[serde(default = "default_account")]
    pub account_prefix: String,
}

fn default_account() -> String {
    "chaos-".to_owned()
}

/// `[pgbouncer]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgbouncerSection {
    /// A client URL of the service's database through pgBouncer.
    pub url: String,
    /// Its admin console (`.../pgbouncer`).
    pub admin_url: String,
    /// A second pool on the same server user, sharing the user's
    /// `max_user_connections` with the service's pool: `pool-exhaustion`
    /// holds the server connections through it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_url: Option<String>,
    /// Server connections the service's pool can have (its
    /// `default_pool_size`, and the user's `max_user_connections`).
    pub pool_size: u32,
}

/// `[proxy]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    /// The API, such as `http://127.0.0.1:8474`.
    pub api: String,
    /// The proxy between the service (its pgBouncer) and PostgreSQL.
    pub postgres: String,
}

/// `[prometheus]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusSection {
    /// Its base URL.
    pub url: String,
    /// Its scrape interval in seconds.
    pub scrape_seconds: u32,
}

impl Deployment {
    /// Parses `chaos.toml`'s text.
    ///
    /// # Errors
    /// [`ChaosError::Input`] naming the unknown or missing field.
    pub fn from_toml(text: &str) -> Result<Deployment, ChaosError> {
        toml::from_str(text).map_err(|e| ChaosError::Input(format!("chaos deployment: {e}")))
    }

    /// Reads `chaos.toml`.
    ///
    /// # Errors
    /// [`ChaosError::Io`] when it cannot be read, else as
    /// [`Deployment::from_toml`].
    pub fn load(path: &Path) -> Result<Deployment, ChaosError> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        Deployment::from_toml(&text).map_err(|e| ChaosError::Input(format!("{}: {e}", path.display())))
    }

    /// The text of `chaos.toml`, with a header saying what wrote it.
    #[must_use]
    pub fn to_toml(&self) -> String {
        let body = toml::to_string_pretty(self).unwrap_or_default();
        format!("# The deployment `spark chaos run` breaks; written by `spark chaos up`.\n\n{body}")
    }

    /// The service section, or an error naming the experiment that needs it.
    pub(crate) fn need_service(&self, scenario: &str) -> Result<&ServiceSection, ChaosError> {
        self.service.as_ref().ok_or_else(|| missing(scenario, "[service] url"))
    }

    /// The proxy section, or an error naming the experiment that needs it.
    pub(crate) fn need_proxy(&self, scenario: &str) -> Result<&ProxySection, ChaosError> {
        self.proxy.as_ref().ok_or_else(|| missing(scenario, "[proxy] api and postgres"))
    }

    /// The pgBouncer section, or an error naming the experiment that needs
    /// it.
    pub(crate) fn need_pgbouncer(&self, scenario: &str) -> Result<&PgbouncerSection, ChaosError> {
        self.pgbouncer.as_ref().ok_or_else(|| missing(scenario, "[pgbouncer] url, admin_url, hold_url and pool_size"))
    }
}

fn missing(scenario: &str, what: &str) -> ChaosError {
    ChaosError::Input(format!(
        "{scenario} needs {what} in the deployment: `spark chaos up` writes a complete chaos.toml"
    ))
}

/// Whether `url`'s host is this machine (loopback, or a unix socket path
/// for PostgreSQL). The URL is parsed the way its client will parse it —
/// PostgreSQL URLs by sqlx (so `?host=` counts), the rest as WHATWG URLs —
/// so what is checked is what would be connected to.
pub(crate) fn require_loopback(what: &str, url: &str) -> Result<(), ChaosError> {
    let off = |host: &str| {
        ChaosError::Input(format!(
            "{what} {} is on {host:?}, not loopback: fault experiments run against loopback only",
            spark_db::redact_url(url)
        ))
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let options = <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(url).map_err(|e| {
            ChaosError::Input(format!("{what} {} is not a PostgreSQL URL: {e}", spark_db::redact_url(url)))
        })?;
        let host = options.get_host();
        return if host.starts_with('/') || spark_db::is_loopback_host(host) { Ok(()) } else { Err(off(host)) };
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ChaosError::Input(format!("{what} {} is not a URL: {e}", spark_db::redact_url(url))))?;
    match parsed.host_str() {
        Some(host) if spark_db::is_loopback_host(host) => Ok(()),
        host => Err(off(host.unwrap_or(""))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_deployment_reads_back_equal() {
        let d = Deployment {
            database: DatabaseSection {
                url: "postgres://postgres@127.0.0.1:1/chaos".into(),
                stop: vec!["pg_ctl".into(), "stop".into()],
                start: vec![],
            },
            relay: RelaySection { command: vec!["spark".into(), "{sink_url}".into()] },
            service: Some(ServiceSection {
                url: "http://127.0.0.1:2".into(),
                headers: [("X-Client-Id".to_owned(), "chaos".to_owned())].into(),
                account_prefix: "chaos-".into(),
            }),
            pgbouncer: None,
            proxy: Some(ProxySection { api: "http://127.0.0.1:3".into(), postgres: "postgres".into() }),
            prometheus: None,
        };
        assert_eq!(Deployment::from_toml(&d.to_toml()).unwrap(), d);
        let e = Deployment::from_toml("[database]\nurl = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("missing field `relay`"), "{e}");
        assert!(d.need_pgbouncer("pool-exhaustion").unwrap_err().to_string().contains("pool-exhaustion needs"));
    }

    #[test]
    fn only_loopback_urls_pass() {
        for ok in [
            "http://127.0.0.1:9/x",
            "postgres://u:p@localhost/db",
            "postgres://[::1]:5/d",
            "http://127.0.0.2",
            "http://[::1]:8/hook",
            "nats://localhost:4222",
            "postgres:///db?host=/run/postgresql",
        ] {
            assert!(require_loopback("x", ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1/",
            "postgres://db.example.com/x",
            "http://0.0.0.0:80",
            // What the client connects to, not what the text starts with.
            "postgres://127.0.0.1/db?host=10.0.0.5",
            "http://evil.example#@127.0.0.1/",
            "http://evil.example\\@127.0.0.1/",
            "not a url",
        ] {
            assert!(require_loopback("x", bad).is_err(), "{bad}");
        }
    }
}
