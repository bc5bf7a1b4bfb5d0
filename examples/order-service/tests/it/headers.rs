//! The service's security headers, judged over real HTTP by the same check
//! an operator runs (`spark check`, id `headers`).

use std::sync::Arc;

use spark_checks::checks::HeadersCheck;
use spark_checks::{Check, Config, Context, Status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_passes_the_headers_check() {
    let s = crate::sqlite().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = s.router.clone();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>()).await;
    });
    // A success and an error response: both carry the headers.
    let toml = format!("[headers]\nurls = [\"{base}/healthz\", \"{base}/v1/orders/nope\"]\n");
    let config = Config::from_toml_str(&toml, |_| None).unwrap();
    let o = HeadersCheck.run(&Arc::new(Context::new(config))).await;
    let failures: Vec<&str> =
        o.findings.iter().filter(|f| f.status == Status::Fail).map(|f| f.message.as_str()).collect();
    assert!(failures.is_empty(), "{failures:#?}");
    // Chromium measures the page isolated (spark-checks' `browser` feature,
    // on in the workspace through spark-cli); without it the only warning
    // is the isolation inferred from the headers (COOP same-origin, COEP
    // require-corp, a loopback origin), which must be true.
    let measured: Vec<f64> =
        o.measurements.iter().filter(|m| m.name.starts_with("cross_origin_isolated")).map(|m| m.value).collect();
    if measured.is_empty() {
        assert_eq!(o.status, Status::Warn, "{o:#?}");
        assert!(
            o.findings.iter().all(|f| f.message.contains("crossOriginIsolated inferred from the headers as true")),
            "{o:#?}"
        );
    } else {
        assert_eq!(measured, [1.0, 1.0], "{o:#?}");
        assert_eq!(o.status, Status::Pass, "{o:#?}");
    }
    server.abort();
}
