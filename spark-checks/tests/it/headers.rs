//! `headers` against a real HTTP server that sends no security headers.

use spark_checks::Status;
use spark_checks::checks::HeadersCheck;

use crate::{assert_status, config, has_finding, run};

/// A bare server: 200 with a body, and nothing else.
async fn bare_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, task)
}

#[tokio::test]
async fn a_bare_server_fails_naming_each_missing_header() {
    let (url, task) = bare_server().await;
    let o = run(&HeadersCheck, config(&format!("[headers]\nurls = [{url:?}]\n"))).await;
    assert_status(&o, Status::Fail);
    for missing in [
        "no Content-Security-Policy",
        "no Strict-Transport-Security",
        "X-Content-Type-Options is not nosniff",
        "Referrer-Policy is missing",
        "Cross-Origin-Opener-Policy is missing",
        "Cross-Origin-Embedder-Policy is missing",
    ] {
        assert!(has_finding(&o, Status::Fail, missing), "{missing}: {o:#?}");
    }
    if cfg!(feature = "browser") && spark_testkit::binary_available("chromium", "Chromium") {
        assert!(has_finding(&o, Status::Fail, "self.crossOriginIsolated is false in Chromium"), "{o:#?}");
    } else {
        assert!(has_finding(&o, Status::Warn, "crossOriginIsolated inferred from the headers as false"), "{o:#?}");
    }
    task.abort();
}

#[tokio::test]
async fn a_report_only_policy_and_an_unlisted_origin_fail_and_an_unused_allowance_warns() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async {
            (
                [
                    ("content-security-policy-report-only", "default-src 'self'"),
                    (
                        "content-security-policy",
                        "default-src 'self' https://cdn.example.com; frame-ancestors 'none'; report-uri /r",
                    ),
                ],
                "hello",
            )
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let o = run(
        &HeadersCheck,
        config(&format!(
            "[headers]\nurls = [{url:?}]\nallowed_origins = [\"https://fonts.example.org\"]\nreport_probe = true\n"
        )),
    )
    .await;
    assert!(has_finding(&o, Status::Fail, "the CSP allows https://cdn.example.com"), "{o:#?}");
    assert!(has_finding(&o, Status::Warn, "lists https://fonts.example.org, which no CSP uses"), "{o:#?}");
    // The report endpoint /r does not exist on this server: 404, not 204.
    assert!(has_finding(&o, Status::Fail, "answered 404 Not Found to application/csp-report"), "{o:#?}");
    task.abort();

    let (url, task) = bare_server().await;
    let report_only = axum::Router::new().route(
        "/",
        axum::routing::get(|| async { ([("content-security-policy-report-only", "default-src 'none'")], "x") }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let only = format!("http://{}/", listener.local_addr().unwrap());
    let task2 = tokio::spawn(async move {
        let _ = axum::serve(listener, report_only).await;
    });
    let o = run(&HeadersCheck, config(&format!("[headers]\nurls = [{only:?}, {url:?}]\n"))).await;
    assert!(has_finding(&o, Status::Fail, "a report-only CSP only: nothing is enforced"), "{o:#?}");
    task.abort();
    task2.abort();
}

#[tokio::test]
async fn nothing_configured_skips_and_an_unreachable_url_fails() {
    let o = run(&HeadersCheck, config("")).await;
    assert_status(&o, Status::Skip);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let o = run(&HeadersCheck, config(&format!("[headers]\nurls = [\"http://127.0.0.1:{closed}/\"]\n"))).await;
    assert_status(&o, Status::Fail);
    assert!(has_finding(&o, Status::Fail, "no answer"), "{o:#?}");
}

/// With the `browser` feature, a real headless Chromium measures
/// `self.crossOriginIsolated`: true behind COOP same-origin and COEP
/// require-corp on a loopback (secure) origin, false on a bare server.
#[cfg(feature = "browser")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_measures_cross_origin_isolation() {
    if !spark_testkit::binary_available("chromium", "Chromium") {
        return;
    }
    let (bare, task) = bare_server().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let isolated = format!("http://{}/", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async {
            (
                [("cross-origin-opener-policy", "same-origin"), ("cross-origin-embedder-policy", "require-corp")],
                axum::response::Html("<p>isolated</p>"),
            )
        }),
    );
    let task2 = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let o = run(&HeadersCheck, config(&format!("[headers]\nurls = [{isolated:?}, {bare:?}]\nreport_probe = false\n")))
        .await;
    assert_eq!(crate::measurement(&o, &format!("cross_origin_isolated ({isolated})")).value, 1.0, "{o:#?}");
    assert_eq!(crate::measurement(&o, &format!("cross_origin_isolated ({bare})")).value, 0.0, "{o:#?}");
    assert!(has_finding(&o, Status::Fail, &format!("{bare}: self.crossOriginIsolated is false in Chromium")), "{o:#?}");
    assert!(!o.findings.iter().any(|f| f.message.contains("inferred")), "{o:#?}");
    task.abort();
    task2.abort();
}
