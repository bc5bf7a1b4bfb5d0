//! `headers`: the browser-facing security headers of each configured URL,
//! and the CSP report endpoint they name.

use crate::check::{Check, Direction, Measurement, Outcome, Status, Threshold};
use crate::context::{Context, ErrorChain, one_line};

/// GETs each `headers.urls` entry and judges what a browser would enforce:
/// an enforced CSP without `unsafe-inline` (unless a nonce or hash is
/// present), `unsafe-eval`, or `data:`, `*`, `http:` in `script-src`,
/// `object-src` and `default-src`; `frame-ancestors`; `report-uri` or
/// `report-to`; every third-party origin in the CSP allowed by
/// `headers.allowed_origins` (an allowed origin no CSP uses warns); HSTS
/// `max-age` of at least `headers.hsts_min_age_seconds` (`preload` warns:
/// it binds every subdomain); `nosniff`; a private `Referrer-Policy`; COOP
/// `same-origin`; COEP `require-corp` or `credentialless`; and the report
/// endpoint answering 204 to both report media types. Whether the page is
/// cross-origin isolated is inferred from COOP and COEP, and says so.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeadersCheck;

/// Referrer policies that do not send a path to another origin.
pub const PRIVATE_REFERRER_POLICIES: [&str; 4] =
    ["no-referrer", "same-origin", "strict-origin", "strict-origin-when-cross-origin"];

/// Source-list keywords and schemes that are not third-party origins.
fn is_origin(token: &str) -> bool {
    let t = token.to_ascii_lowercase();
    !(t.starts_with('\'') || t == "*" || t.ends_with(':') && !t.contains('/'))
}

/// One parsed policy: directive name → source tokens.
#[derive(Debug, Default)]
struct Policy(Vec<(String, Vec<String>)>);

impl Policy {
    fn parse(text: &str) -> Policy {
        Policy(
            text.split(';')
                .filter_map(|d| {
                    let mut words = d.split_whitespace();
                    let name = words.next()?.to_ascii_lowercase();
                    Some((name, words.map(str::to_owned).collect()))
                })
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&[String]> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    /// A fetch directive, falling back to `default-src` as browsers do.
    fn effective(&self, name: &str) -> Option<&[String]> {
        self.get(name).or_else(|| self.get("default-src"))
    }
}

/// Judges one enforced policy; returns the third-party origins it names.
fn judge_policy(o: &mut Outcome, at: &str, p: &Policy) -> Vec<String> {
    let has = |list: &[String], token: &str| list.iter().any(|t| t.eq_ignore_ascii_case(token));
    if let Some(script) = p.effective("script-src") {
        let nonce_or_hash = script.iter().any(|t| {
            let t = t.to_ascii_lowercase();
            t.starts_with("'nonce-")
                || t.starts_with("'sha256-")
                || t.starts_with("'sha384-")
                || t.starts_with("'sha512-")
        });
        if has(script, "'unsafe-inline'") && !nonce_or_hash {
            o.found(Status::Fail, format!("{at}: script-src allows 'unsafe-inline' without a nonce or hash"));
        }
        if has(script, "'unsafe-eval'") {
            o.found(Status::Fail, format!("{at}: script-src allows 'unsafe-eval'"));
        }
    }
    for directive in ["script-src", "object-src", "default-src"] {
        let Some(list) = (if directive == "default-src" { p.get(directive) } else { p.effective(directive) }) else {
            if directive == "default-src" && p.get("script-src").is_none() {
                o.found(
                    Status::Fail,
                    format!("{at}: CSP has neither default-src nor script-src: scripts load from anywhere"),
                );
            }
            continue;
        };
        for bad in ["data:", "*", "http:"] {
            if has(list, bad) {
                o.found(Status::Fail, format!("{at}: {directive} allows {bad}"));
            }
        }
        for t in list.iter().filter(|t| t.to_ascii_lowercase().starts_with("http://")) {
            o.found(Status::Fail, format!("{at}: {directive} allows {t} over plain http"));
        }
    }
    if p.get("frame-ancestors").is_none() {
        o.found(Status::Fail, format!("{at}: CSP sets no frame-ancestors: the page can be framed (clickjacking)"));
    }
    if p.get("report-uri").is_none() && p.get("report-to").is_none() {
        o.found(Status::Fail, format!("{at}: CSP has neither report-uri nor report-to: violations go unseen"));
    }
    let mut origins: Vec<String> =
        p.0.iter()
            .filter(|(name, _)| !matches!(name.as_str(), "report-uri" | "report-to" | "sandbox" | "plugin-types"))
            .flat_map(|(_, list)| {
                list.iter().filter(|t| is_origin(t)).map(|t| t.trim_end_matches('/').to_ascii_lowercase())
            })
            .collect();
    origins.sort();
    origins.dedup();
    origins
}

/// Whether `origin` is covered by an allowlist entry (`*.example.com`
/// covers subdomains).
fn allowed(origin: &str, allowlist: &[String]) -> bool {
    allowlist.iter().any(|a| {
        let a = a.trim_end_matches('/').to_ascii_lowercase();
        a == origin || a.strip_prefix("*.").is_some_and(|base| origin.ends_with(&format!(".{base}")))
    })
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> Vec<&'a str> {
    h.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect()
}

/// The CSP report URL a response names: the first `report-uri`, else the
/// `Reporting-Endpoints` entry of the `report-to` group.
fn report_url(base: &reqwest::Url, p: &Policy, endpoints: &[&str]) -> Option<reqwest::Url> {
    if let Some(uri) = p.get("report-uri").and_then(|l| l.first()) {
        return base.join(uri).ok();
    }
    let group = p.get("report-to")?.first()?;
    endpoints.iter().flat_map(|h| h.split(',')).find_map(|entry| {
        let (name, url) = entry.split_once('=')?;
        (name.trim() == group).then(|| base.join(url.trim().trim_matches('"')).ok()).flatten()
    })
}

async fn probe_reports(o: &mut Outcome, client: &reqwest::Client, at: &str, url: &reqwest::Url) {
    // Synthetic reports: the endpoint counts them like real ones.
    let legacy = serde_json::json!({"csp-report": {
        "document-uri": "about:spark-check", "violated-directive": "script-src", "effective-directive": "script-src",
        "blocked-uri": "inline", "disposition": "report", "original-policy": "spark check probe"
    }});
    let modern = serde_json::json!([{
        "type": "csp-violation", "age": 0, "url": "about:spark-check", "user_agent": "spark-check",
        "body": {"documentURL": "about:spark-check", "effectiveDirective": "script-src", "blockedURL": "inline",
                 "disposition": "report", "originalPolicy": "spark check probe", "statusCode": 200}
    }]);
    for (media, body) in [("application/csp-report", legacy), ("application/reports+json", modern)] {
        let sent = client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, media)
            .body(serde_json::to_vec(&body).unwrap_or_default())
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == reqwest::StatusCode::NO_CONTENT => {}
            Ok(r) => {
                o.found(
                    Status::Fail,
                    format!("{at}: the report endpoint {url} answered {} to {media}, not 204", r.status()),
                );
            }
            Err(e) => {
                o.found(
                    Status::Fail,
                    format!(
                        "{at}: the report endpoint {url} did not answer {media}: {}",
                        one_line(&ErrorChain(&e).to_string())
                    ),
                );
            }
        }
    }
}

/// Where `command` is: itself when it names a path, else the first match on
/// `PATH`.
fn find_executable(command: &str) -> Option<std::path::PathBuf> {
    if command.contains('/') {
        let path = std::path::PathBuf::from(command);
        return path.is_file().then_some(path);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(command)).find(|p| p.is_file())
}

/// `crossOriginIsolated` per page in the Chromium at `path`, or why it was
/// not measured.
#[cfg(feature = "browser")]
async fn measure_in_chromium(path: &std::path::Path, urls: &[String]) -> Result<Vec<Result<bool, String>>, String> {
    crate::checks::browser::cross_origin_isolated(path, urls).await.map_err(|e| format!("Chromium did not start: {e}"))
}

/// Without the `browser` feature nothing is measured.
#[cfg(not(feature = "browser"))]
async fn measure_in_chromium(_: &std::path::Path, _: &[String]) -> Result<Vec<Result<bool, String>>, String> {
    Err("this build lacks the `browser` feature".to_owned())
}

/// `crossOriginIsolated` per page: measured in Chromium when this build has
/// the `browser` feature and `headers.chromium` is found, otherwise
/// inferred from the headers with a warning that says so.
async fn isolated(o: &mut Outcome, chromium: &str, pages: &[(String, bool)]) {
    if pages.is_empty() {
        return;
    }
    let measured = match find_executable(chromium) {
        None => Err(format!("{chromium} is not installed")),
        Some(path) => {
            let urls: Vec<String> = pages.iter().map(|(u, _)| u.clone()).collect();
            measure_in_chromium(&path, &urls).await.map(|results| (path, results))
        }
    };
    let why_inferred = match measured {
        Ok((path, results)) => {
            for ((url, _), measured) in pages.iter().zip(results) {
                match measured {
                    Ok(v) => {
                        o.measure(Measurement::info(
                            format!("cross_origin_isolated ({url})"),
                            f64::from(u8::from(v)),
                            "bool",
                        ));
                        if !v {
                            o.found(Status::Fail, format!("{url}: self.crossOriginIsolated is false in Chromium"));
                        }
                    }
                    Err(e) => {
                        o.found(Status::Fail, format!("{url}: Chromium could not measure crossOriginIsolated: {e}"));
                    }
                }
            }
            o.detail("browser", path.display().to_string());
            return;
        }
        Err(why) => why,
    };
    for (url, inferred) in pages {
        o.found(
            Status::Warn,
            format!("{url}: crossOriginIsolated inferred from the headers as {inferred}: no browser measured it ({why_inferred})"),
        );
    }
}

#[async_trait::async_trait]
impl Check for HeadersCheck {
    fn id(&self) -> &'static str {
        "headers"
    }

    async fn run(&self, ctx: &Context) -> Outcome {
        let cfg = &ctx.config().headers;
        if cfg.urls.is_empty() {
            return Outcome::skip(self.id(), "no URL configured (headers.urls)");
        }
        let mut o = Outcome::new(self.id());
        // The shared client follows no redirect: the headers of the URL as
        // configured are judged, and a redirect is reported.
        let client = match crate::checks::http::client() {
            Ok(c) => c,
            Err(e) => {
                o.found(Status::Fail, e);
                return o.finish("");
            }
        };
        let mut used_origins: Vec<String> = Vec::new();
        let mut isolation: Vec<(String, bool)> = Vec::new();
        let mut pages = Vec::new();
        for url in &cfg.urls {
            let at = url.as_str();
            let parsed = match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => u,
                _ => {
                    o.found(Status::Fail, format!("headers.urls entry {url:?} is not an http(s) URL"));
                    continue;
                }
            };
            let response = match client.get(parsed.clone()).send().await {
                Ok(r) => r,
                Err(e) => {
                    o.found(Status::Fail, format!("{at}: no answer: {}", one_line(&ErrorChain(&e).to_string())));
                    continue;
                }
            };
            let h = response.headers().clone();
            if response.status().is_redirection() {
                let to = header(&h, "location").first().copied().unwrap_or("?").to_owned();
                o.found(
                    Status::Warn,
                    format!("{at}: redirects ({}) to {to}: configure the final URL", response.status()),
                );
            }
            // CSP: enforced, and each enforced policy judged.
            let enforced = header(&h, "content-security-policy");
            let report_only = header(&h, "content-security-policy-report-only");
            let policies: Vec<Policy> = enforced.iter().map(|t| Policy::parse(t)).collect();
            if policies.is_empty() {
                let why = if report_only.is_empty() {
                    "no Content-Security-Policy"
                } else {
                    "a report-only CSP only: nothing is enforced"
                };
                o.found(Status::Fail, format!("{at}: {why}"));
            }
            for p in &policies {
                used_origins.extend(judge_policy(&mut o, at, p));
            }
            // HSTS.
            match header(&h, "strict-transport-security").first() {
                None => {
                    o.found(Status::Fail, format!("{at}: no Strict-Transport-Security"));
                }
                Some(v) => {
                    let parts: Vec<String> = v.split(';').map(|p| p.trim().to_ascii_lowercase()).collect();
                    let max_age =
                        parts.iter().find_map(|p| p.strip_prefix("max-age=")?.trim_matches('"').parse::<f64>().ok());
                    let min = cfg.hsts_min_age_seconds as f64;
                    o.measure(Measurement::judged(
                        format!("hsts_max_age_s ({at})"),
                        max_age.unwrap_or(f64::NAN),
                        "s",
                        Threshold { warn: None, fail: Some(min), direction: Direction::Below },
                    ));
                    if parts.iter().any(|p| p == "preload") {
                        o.found(Status::Warn, format!("{at}: HSTS preload binds every subdomain, for months: be sure"));
                    }
                }
            }
            let single = |name: &str| header(&h, name).first().map(|v| v.trim().to_ascii_lowercase());
            if single("x-content-type-options").as_deref() != Some("nosniff") {
                o.found(Status::Fail, format!("{at}: X-Content-Type-Options is not nosniff"));
            }
            // The last policy the browser understands wins.
            let referrer =
                single("referrer-policy").and_then(|v| v.split(',').map(|p| p.trim().to_owned()).next_back());
            match referrer {
                Some(r) if PRIVATE_REFERRER_POLICIES.contains(&r.as_str()) => {}
                other => {
                    o.found(
                        Status::Fail,
                        format!(
                            "{at}: Referrer-Policy is {}: use one of {}",
                            other.as_deref().unwrap_or("missing"),
                            PRIVATE_REFERRER_POLICIES.join(", ")
                        ),
                    );
                }
            }
            let token = |v: Option<String>| v.map(|v| v.split(';').next().unwrap_or_default().trim().to_owned());
            let coop = token(single("cross-origin-opener-policy"));
            let coep = token(single("cross-origin-embedder-policy"));
            let coop_ok = coop.as_deref() == Some("same-origin");
            let coep_ok = matches!(coep.as_deref(), Some("require-corp" | "credentialless"));
            if !coop_ok {
                o.found(
                    Status::Fail,
                    format!(
                        "{at}: Cross-Origin-Opener-Policy is {}, not same-origin",
                        coop.as_deref().unwrap_or("missing")
                    ),
                );
            }
            if !coep_ok {
                o.found(
                    Status::Fail,
                    format!(
                        "{at}: Cross-Origin-Embedder-Policy is {}, not require-corp or credentialless",
                        coep.as_deref().unwrap_or("missing")
                    ),
                );
            }
            // Isolation needs both headers and a secure context (https, or
            // a loopback host, which browsers treat as secure).
            let secure =
                parsed.scheme() == "https" || matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
            let inferred = coop_ok && coep_ok && secure;
            isolation.push((at.to_owned(), inferred));
            if cfg.report_probe
                && let Some(p) = policies.first()
            {
                let endpoints = header(&h, "reporting-endpoints");
                match report_url(&parsed, p, &endpoints) {
                    Some(report) => probe_reports(&mut o, &client, at, &report).await,
                    None => {
                        if p.get("report-uri").is_some() || p.get("report-to").is_some() {
                            o.found(
                                Status::Fail,
                                format!("{at}: the CSP's report endpoint cannot be resolved to a URL"),
                            );
                        }
                    }
                }
            }
            pages.push(serde_json::json!({
                "url": at, "status": response.status().as_u16(),
                "content_security_policy": enforced, "content_security_policy_report_only": report_only,
                "cross_origin_isolated_inferred": inferred,
            }));
        }
        isolated(&mut o, &cfg.chromium, &isolation).await;
        used_origins.sort();
        used_origins.dedup();
        for origin in &used_origins {
            if !allowed(origin, &cfg.allowed_origins) {
                o.found(Status::Fail, format!("the CSP allows {origin}, which headers.allowed_origins does not list"));
            }
        }
        for a in &cfg.allowed_origins {
            if !used_origins.iter().any(|u| allowed(u, std::slice::from_ref(a))) {
                o.found(Status::Warn, format!("headers.allowed_origins lists {a}, which no CSP uses: remove it"));
            }
        }
        o.measure(Measurement::info("urls", cfg.urls.len() as f64, "count"));
        o.detail("pages", pages).detail("third_party_origins", &used_origins);
        o.finish(&format!("{} URL(s) send every security header", cfg.urls.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings(csp: &str) -> Vec<String> {
        let mut o = Outcome::new("headers");
        judge_policy(&mut o, "u", &Policy::parse(csp));
        o.findings.into_iter().map(|f| f.message).collect()
    }

    #[test]
    fn a_strict_policy_has_no_findings() {
        let csp = "default-src 'none'; frame-ancestors 'none'; report-uri /csp-report; report-to csp-endpoint";
        assert!(findings(csp).is_empty(), "{:?}", findings(csp));
    }

    #[test]
    fn each_weakness_is_named() {
        let f = findings("script-src 'self' 'unsafe-inline' 'unsafe-eval' data: http://cdn.example.com");
        let all = f.join("\n");
        for needle in [
            "'unsafe-inline' without a nonce",
            "'unsafe-eval'",
            "script-src allows data:",
            "http://cdn.example.com over plain http",
            "frame-ancestors",
            "report-uri nor report-to",
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
        // With a nonce, 'unsafe-inline' is ignored by browsers: no finding.
        let f = findings("script-src 'nonce-abc' 'unsafe-inline'; frame-ancestors 'none'; report-uri /r");
        assert!(f.is_empty(), "{f:?}");
        // object-src falls back to default-src.
        let f = findings("default-src *; frame-ancestors 'none'; report-uri /r").join("\n");
        assert!(f.contains("object-src allows *") && f.contains("default-src allows *"), "{f}");
    }

    #[test]
    fn third_party_origins_are_collected_and_matched() {
        let mut o = Outcome::new("headers");
        let origins = judge_policy(
            &mut o,
            "u",
            &Policy::parse("default-src 'self' https://cdn.example.com/ blob:; img-src https://img.example.net"),
        );
        assert_eq!(origins, ["https://cdn.example.com", "https://img.example.net"]);
        assert!(allowed("https://cdn.example.com", &["https://cdn.example.com/".to_owned()]));
        assert!(allowed("img.example.net", &["*.example.net".to_owned()]));
        assert!(!allowed("https://evil.com", &["https://cdn.example.com".to_owned()]));
    }

    #[test]
    fn the_report_url_comes_from_report_uri_or_the_reporting_endpoints_header() {
        let base = reqwest::Url::parse("http://127.0.0.1:8080/v1/orders").unwrap();
        let p = Policy::parse("default-src 'none'; report-uri /csp-report");
        assert_eq!(report_url(&base, &p, &[]).unwrap().as_str(), "http://127.0.0.1:8080/csp-report");
        let p = Policy::parse("default-src 'none'; report-to csp");
        let url = report_url(&base, &p, &["other=\"/x\", csp=\"https://r.example.com/r\""]).unwrap();
        assert_eq!(url.as_str(), "https://r.example.com/r");
    }
}
