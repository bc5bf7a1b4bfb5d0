//! The HTTP client the Prometheus and Alertmanager checks share, and a GET
//! that reads their JSON answers.

use std::time::Duration;

use serde::de::DeserializeOwned;
use spark_db::redact_url;

use crate::context::{ErrorChain, one_line};

/// How long a connection may take: a port that never answers fails fast
/// instead of using up the whole check timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A client without redirects (an API that redirects is misconfigured, and
/// following it would hide where the answer came from).
pub(crate) fn client() -> Result<reqwest::Client, String> {
    // reqwest is built without a default crypto provider; use ring, the one
    // sqlx already links. Installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("spark-checks/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", ErrorChain(&e)))
}

/// `GET base + path` decoded as `T`; an error names the redacted URL and
/// says what went wrong (unreachable, a status other than 200 with the
/// start of the body, or JSON of another shape).
pub(crate) async fn get_json<T: DeserializeOwned>(
    client: &reqwest::Client,
    base: &str,
    path: &str,
) -> Result<T, String> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let shown = redact_url(&url);
    // reqwest's errors print the URL as given, password and all: drop it,
    // the message names the redacted one.
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("cannot reach {shown}: {}", one_line(&ErrorChain(&e.without_url()).to_string())))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| format!("{shown}: cannot read the answer: {}", ErrorChain(&e.without_url())))?;
    if !status.is_success() {
        let start: String = body.chars().take(200).collect();
        return Err(format!("{shown} answered {status}: {}", one_line(&start)));
    }
    serde_json::from_str(&body).map_err(|e| format!("{shown} answered JSON of another shape: {e}"))
}
