//! `crossOriginIsolated` measured in a real headless Chromium, driven over
//! the DevTools protocol by chromiumoxide (feature `browser`).

use std::path::Path;
use std::time::Duration;

use chromiumoxide::browser::{Browser, BrowserConfig};
use futures_util::StreamExt as _;

/// Opens each URL in one headless Chromium and evaluates
/// `self.crossOriginIsolated` on the page; one result per URL, in order.
pub(crate) async fn cross_origin_isolated(
    chromium: &Path,
    urls: &[String],
) -> Result<Vec<Result<bool, String>>, String> {
    let profile = tempfile::tempdir().map_err(|e| format!("cannot create a browser profile directory: {e}"))?;
    let config = BrowserConfig::builder()
        .chrome_executable(chromium)
        .new_headless_mode()
        // Root in a container has no user namespaces for the sandbox.
        .no_sandbox()
        .user_data_dir(profile.path())
        .launch_timeout(Duration::from_secs(10))
        .request_timeout(Duration::from_secs(5))
        .arg("--disable-gpu")
        .arg("--no-first-run")
        .build()?;
    let (mut browser, mut handler) =
        Browser::launch(config).await.map_err(|e| format!("cannot start {}: {e}", chromium.display()))?;
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
    let mut results = Vec::with_capacity(urls.len());
    for url in urls {
        let measured = async {
            let page = browser.new_page(url.as_str()).await.map_err(|e| format!("cannot open the page: {e}"))?;
            let value = page
                .evaluate("self.crossOriginIsolated")
                .await
                .map_err(|e| format!("cannot evaluate self.crossOriginIsolated: {e}"))?
                .into_value::<bool>()
                .map_err(|e| format!("self.crossOriginIsolated is not a boolean: {e}"));
            let _ = page.close().await;
            value
        }
        .await;
        results.push(measured);
    }
    let _ = browser.close().await;
    let _ = browser.wait().await;
    events.abort();
    Ok(results)
}
