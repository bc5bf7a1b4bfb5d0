//! The client for the proxy's HTTP API, which is also Toxiproxy's: it sends
//! only fields Toxiproxy 2.x understands.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use serde::de::DeserializeOwned;

use crate::ChaosError;
use crate::proxy::{ProxyInfo, Toxic, loopback_addrs};

/// How long one API call may take, connection included. The API is on this
/// machine and answers at once; a call that takes longer is a hung proxy.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for a [`FaultProxy`](crate::FaultProxy)'s API or a real
/// Toxiproxy's, on this machine.
///
/// ```
/// use spark_chaos::{ChaosError, ProxyClient};
///
/// assert!(ProxyClient::new("http://127.0.0.1:8474").is_ok());
/// // Faults are only ever injected on this machine.
/// assert!(matches!(ProxyClient::new("http://10.0.0.7:8474"), Err(ChaosError::Input(_))));
/// ```
#[derive(Debug, Clone)]
pub struct ProxyClient {
    base: reqwest::Url,
    http: reqwest::Client,
}

impl ProxyClient {
    /// A client for the API at `api_url`, such as `http://127.0.0.1:8474`.
    ///
    /// # Errors
    /// [`ChaosError::Input`] when `api_url` is not an `http://` URL on this
    /// machine; [`ChaosError::Proxy`] when the HTTP client cannot be built.
    pub fn new(api_url: &str) -> Result<ProxyClient, ChaosError> {
        let base = reqwest::Url::parse(api_url)
            .map_err(|e| ChaosError::Input(format!("fault proxy API URL {api_url:?} is not a URL: {e}")))?;
        if base.scheme() != "http" {
            return Err(ChaosError::Input(format!(
                "fault proxy API URL {api_url:?} must start with http:// (the API is plain HTTP on this machine)"
            )));
        }
        if !base.host_str().is_some_and(spark_db::is_loopback_host) {
            return Err(ChaosError::Input(format!(
                "fault proxy API URL {api_url:?} is not on this machine: faults are only injected through a \
                 proxy on a loopback address (127.0.0.1, [::1], localhost)"
            )));
        }
        // reqwest is built without a default crypto provider; use ring, the
        // one sqlx already links. Installing twice is harmless. (Plain HTTP
        // needs no TLS, but building the client needs a provider.)
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            // An HTTP_PROXY from the environment must not carry loopback
            // calls off this machine.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("spark-chaos/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ChaosError::Proxy { status: None, what: format!("cannot build the HTTP client: {e}") })?;
        Ok(ProxyClient { base, http })
    }

    /// The server's version: Toxiproxy's number, or `spark-chaos <version>`.
    ///
    /// # Errors
    /// [`ChaosError::Proxy`] when the API cannot be reached or answers with
    /// an error.
    pub async fn version(&self) -> Result<String, ChaosError> {
        let text = self.call(Method::GET, &["version"], None).await?;
        // Toxiproxy answers `{"version": "2.9.0"}` since 2.6 and the bare
        // number before.
        let version = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("version").and_then(serde_json::Value::as_str).map(str::to_owned));
        Ok(version.unwrap_or_else(|| text.trim().to_owned()))
    }

    /// Every proxy, by name.
    ///
    /// # Errors
    /// [`ChaosError::Proxy`] when the API cannot be reached or answers with
    /// an error.
    pub async fn proxies(&self) -> Result<BTreeMap<String, ProxyInfo>, ChaosError> {
        self.json(Method::GET, &["proxies"], None).await
    }

    /// Creates an enabled proxy `name` from `listen` to `upstream` (both
    /// `host:port` on this machine; listen port 0 for any free port, the
    /// one chosen in the answer's `listen`).
    ///
    /// # Errors
    /// [`ChaosError::Input`] when an address is not on this machine, before
    /// anything is sent; [`ChaosError::Proxy`] with status 409 when the
    /// proxy exists, or another API error.
    pub async fn create(&self, name: &str, listen: &str, upstream: &str) -> Result<ProxyInfo, ChaosError> {
        if name.is_empty() {
            return Err(ChaosError::Input("a proxy needs a name".to_owned()));
        }
        loopback_addrs(&format!("proxy {name:?} listen address"), listen)?;
        loopback_addrs(&format!("proxy {name:?} upstream"), upstream)?;
        let body = serde_json::json!({"name": name, "listen": listen, "upstream": upstream, "enabled": true});
        self.json(Method::POST, &["proxies"], Some(body)).await
    }

    /// The proxy `name`, with its toxics.
    ///
    /// # Errors
    /// [`ChaosError::Proxy`] with status 404 when there is no such proxy,
    /// or another API error.
    pub async fn proxy(&self, name: &str) -> Result<ProxyInfo, ChaosError> {
        self.json(Method::GET, &["proxies", name], None).await
    }

    /// Enables or disables the proxy `name`. Disabled, it refuses new
    /// connections and has closed those it carried.
    ///
    /// # Errors
    /// [`ChaosError::Proxy`] with status 404 when there is no such proxy,
    /// or another API error.
    pub async fn set_enabled(&self, name: &str, enabled: bool) -> Result<ProxyInfo, ChaosError> {
        self.json(Method::POST, &["proxies", name], Some(serde_json::json!({"enabled": enabled}))).await
    }

    /// Deletes the proxy `name`, closing its connections.
    ///
    /// # Errors
    /// [`ChaosError::Proxy`] with status 404 when there is no such proxy,
    /// or another API error.
    pub async fn delete(&self, name: &str) -> Result<(), ChaosError> {
        self.call(Method::DELETE, &["proxies", name], None).await.map(drop)
    }

    /// Adds `toxic` to the proxy `proxy`; it acts on connections already
    /// open too. Remove it by [`Toxic::name`].
    ///
    /// # Errors
    /// [`ChaosError::Input`] when the toxicity is not between 0.0 and 1.0;
    /// [`ChaosError::Proxy`] with status 409 when the proxy has a toxic of
    /// that name, 404 when there is no such proxy, or another API error.
    pub async fn add_toxic(&self, proxy: &str, toxic: &Toxic) -> Result<(), ChaosError> {
        Toxic::check_toxicity(toxic.toxicity).map_err(|e| ChaosError::Input(format!("toxic {}: {e}", toxic.name())))?;
        let body = serde_json::to_value(toxic.to_info())
            .map_err(|e| ChaosError::Input(format!("toxic {} cannot be written as JSON: {e}", toxic.name())))?;
        self.call(Method::POST, &["proxies", proxy, "toxics"], Some(body)).await.map(drop)
    }

    /// Removes the toxic `toxic` from the proxy `proxy`.
    ///
    /// # Errors
    /// [`ChaosError::Proxy`] with status 404 when there is no such proxy or
    /// toxic, or another API error.
    pub async fn remove_toxic(&self, proxy: &str, toxic: &str) -> Result<(), ChaosError> {
        self.call(Method::DELETE, &["proxies", proxy, "toxics", toxic], None).await.map(drop)
    }

    /// Enables every proxy and removes every toxic.
    ///
    /// # Errors
    /// [`ChaosError::Proxy`] when the API cannot be reached or answers with
    /// an error.
    pub async fn reset(&self) -> Result<(), ChaosError> {
        self.call(Method::POST, &["reset"], None).await.map(drop)
    }

    /// Calls the API and reads the answer as `T`.
    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &[&str],
        body: Option<serde_json::Value>,
    ) -> Result<T, ChaosError> {
        let what = format!("{method} /{}", path.join("/"));
        let text = self.call(method, path, body).await?;
        serde_json::from_str(&text).map_err(|e| ChaosError::Proxy {
            status: None,
            what: format!("{what}: the answer is not what a Toxiproxy API sends ({e}): {}", clip(&text)),
        })
    }

    /// Calls the API and returns the body of a successful answer. Path
    /// segments are percent-encoded, so any proxy or toxic name is safe.
    async fn call(&self, method: Method, path: &[&str], body: Option<serde_json::Value>) -> Result<String, ChaosError> {
        let mut url = self.base.clone();
        // An http URL always has path segments; the error is unreachable.
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(path);
        }
        let what = format!("{method} {url}");
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|e| ChaosError::Proxy { status: None, what: format!("{what}: {}", causes(&e)) })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| ChaosError::Proxy {
            status: Some(status.as_u16()),
            what: format!("{what}: {}", causes(&e)),
        })?;
        if status.is_success() {
            return Ok(text);
        }
        // Toxiproxy's error body is {"error": ..., "status": ...} ("title"
        // before 2.1); anything else is shown as it came.
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| ["error", "title"].iter().find_map(|k| v.get(k)?.as_str().map(str::to_owned)))
            .unwrap_or_else(|| clip(&text));
        Err(ChaosError::Proxy { status: Some(status.as_u16()), what: format!("{what}: {status}: {message}") })
    }
}

/// An error and its causes on one line: reqwest's own message ("error
/// sending request") says nothing of the refused connection beneath it.
fn causes(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

/// At most 300 characters of `text`, trimmed, for an error message.
fn clip(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::{ProxyClient, clip};
    use crate::ChaosError;

    #[test]
    fn only_loopback_http_urls() {
        for ok in ["http://127.0.0.1:8474", "http://localhost:8474/", "http://[::1]:8474"] {
            assert!(ProxyClient::new(ok).is_ok(), "{ok}");
        }
        for bad in ["https://127.0.0.1:8474", "http://10.0.0.1:8474", "http://127.0.0.1.example.com", "nonsense"] {
            assert!(matches!(ProxyClient::new(bad), Err(ChaosError::Input(_))), "{bad}");
        }
    }

    #[test]
    fn clips_long_bodies() {
        assert_eq!(clip("  short \n"), "short");
        assert_eq!(clip(&"é".repeat(400)).chars().count(), 301);
    }
}
