//! The one HTTP client constructor of the crate (the service's load, the
//! proxy's API, readiness probes), on the workspace's reqwest with rustls.

use std::time::Duration;

use crate::error::ChaosError;

/// A client with `timeout` per request; plain HTTP to loopback needs no
/// TLS, but reqwest's rustls build wants a crypto provider installed.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, ChaosError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Loopback only: no proxy from the environment, no redirect followed
    // (a 3xx could point anywhere).
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(2)))
        .build()
        .map_err(|e| ChaosError::Input(format!("cannot build an HTTP client: {e}")))
}
