//! `observability`: Prometheus scrapes what it should, and the Grafana
//! dashboards open with values and data sources that exist.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::check::{Check, Measurement, Outcome, Status, Threshold};
use crate::checks::{grafana, http};
use crate::context::Context;

/// Prometheus `/api/v1/targets`: every active target `up`, each job of
/// `observability.expected_targets` with exactly that many active targets,
/// every last scrape younger than `scrape_age_fail_intervals` (2) of its
/// scrape intervals. Grafana dashboard files (`observability.dashboards`):
/// every template variable has a default or refreshes on load, every data
/// source resolves (see `checks/grafana.rs` for the rules).
#[derive(Debug, Clone, Copy, Default)]
pub struct ObservabilityCheck;

#[derive(Debug, Deserialize)]
struct Envelope<T> {
    data: T,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Targets {
    active_targets: Vec<Target>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Target {
    #[serde(default)]
    discovered_labels: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    scrape_pool: String,
    #[serde(default)]
    last_error: String,
    #[serde(default)]
    last_scrape: String,
    #[serde(default)]
    health: String,
    /// Since Prometheus 2.29; older servers have `__scrape_interval__`.
    #[serde(default)]
    scrape_interval: Option<String>,
}

impl Target {
    fn job(&self) -> &str {
        self.labels.get("job").map_or(self.scrape_pool.as_str(), String::as_str)
    }

    fn instance(&self) -> &str {
        self.labels.get("instance").map_or("?", String::as_str)
    }

    fn interval_s(&self) -> Option<f64> {
        self.scrape_interval
            .as_deref()
            .or(self.discovered_labels.get("__scrape_interval__").map(String::as_str))
            .and_then(parse_duration_s)
    }
}

#[async_trait::async_trait]
impl Check for ObservabilityCheck {
    fn id(&self) -> &'static str {
        "observability"
    }

    async fn run(&self, ctx: &Context) -> Outcome {
        let config = ctx.config();
        let cfg = &config.observability;
        if config.prometheus.url.is_none() && cfg.dashboards.is_empty() {
            return Outcome::skip(
                self.id(),
                "nothing to observe: set prometheus.url (SPARK_PROMETHEUS_URL) and/or observability.dashboards",
            );
        }
        let mut o = Outcome::new(self.id());
        let mut summary = Vec::new();
        match &config.prometheus.url {
            Some(url) => summary.extend(targets(&mut o, ctx, url).await),
            None => {
                o.detail("targets", "not measured: prometheus.url is not set");
            }
        }
        if !cfg.dashboards.is_empty() {
            summary.push(dashboards(&mut o, &cfg.dashboards, &cfg.datasources));
        }
        o.finish(&summary.join("; "))
    }
}

async fn targets(o: &mut Outcome, ctx: &Context, url: &str) -> Option<String> {
    let cfg = &ctx.config().observability;
    let client = match http::client() {
        Ok(c) => c,
        Err(e) => {
            o.found(Status::Fail, e);
            return None;
        }
    };
    let targets: Targets = match http::get_json::<Envelope<Targets>>(&client, url, "/api/v1/targets?state=active").await
    {
        Ok(envelope) => envelope.data,
        Err(e) => {
            o.found(Status::Fail, format!("Prometheus targets: {e}"));
            return None;
        }
    };
    let now_ms = ctx.clock().now_ms();
    if targets.active_targets.is_empty() {
        o.found(Status::Fail, "Prometheus has no active scrape targets: nothing is monitored");
    }
    let mut jobs: BTreeMap<&str, Vec<&Target>> = BTreeMap::new();
    for t in &targets.active_targets {
        jobs.entry(t.job()).or_default().push(t);
    }
    let mut listed = Vec::new();
    for (job, members) in &jobs {
        // The target of this job furthest behind, as (age, limit) in s.
        let mut worst: Option<(f64, f64)> = None;
        for t in members {
            let who = format!("target {} of job {job:?}", t.instance());
            let age_s = scrape_age_s(&t.last_scrape, now_ms);
            match t.health.as_str() {
                "up" => {}
                "unknown" => {
                    o.found(Status::Warn, format!("{who} has not been scraped yet"));
                }
                health => {
                    let why = if t.last_error.is_empty() { String::new() } else { format!(": {}", t.last_error) };
                    o.found(Status::Fail, format!("{who} is {health}{why}"));
                }
            }
            match (age_s, t.interval_s()) {
                (Some(age), Some(interval)) => {
                    let limit = interval * f64::from(cfg.scrape_age_fail_intervals);
                    if worst.is_none_or(|(a, l)| age / limit > a / l) {
                        worst = Some((age, limit));
                    }
                }
                (None, _) if t.health != "unknown" => {
                    o.found(Status::Warn, format!("{who}: last scrape time {:?} not understood", t.last_scrape));
                }
                (Some(_), None) => {
                    o.found(Status::Warn, format!("{who}: no scrape interval, so its last scrape cannot be judged"));
                }
                _ => {}
            }
            listed.push(serde_json::json!({
                "job": job, "instance": t.instance(), "health": t.health, "last_scrape": t.last_scrape,
                "last_scrape_age_s": age_s, "scrape_interval_s": t.interval_s(), "last_error": t.last_error,
            }));
        }
        if let Some((age, limit)) = worst {
            o.measure(Measurement::judged(
                format!("last_scrape_age_s ({job})"),
                age,
                "s",
                Threshold::above(None, Some(limit)),
            ));
        }
        let count = members.len();
        o.measure(Measurement::info(format!("targets ({job})"), count as f64, "count"));
    }
    for (job, &expected) in &cfg.expected_targets {
        let count = jobs.get(job.as_str()).map_or(0, Vec::len);
        if count > expected as usize {
            o.found(
                Status::Fail,
                format!(
                    "job {job:?} has {count} active targets, {expected} expected: an instance too many (a stale one?)"
                ),
            );
        } else if count < expected as usize {
            o.found(Status::Fail, format!("job {job:?} has {count} active targets, {expected} expected"));
        }
    }
    o.detail("targets", listed);
    let up = targets.active_targets.iter().filter(|t| t.health == "up").count();
    Some(format!("{up}/{} targets up in {} job(s)", targets.active_targets.len(), jobs.len()))
}

/// Seconds since an RFC 3339 scrape time; `None` for Go's zero time (never
/// scraped) or text that does not parse.
fn scrape_age_s(last_scrape: &str, now_ms: i64) -> Option<f64> {
    let at = chrono::DateTime::parse_from_rfc3339(last_scrape).ok()?;
    if at.timestamp() <= 0 {
        return None;
    }
    #[allow(clippy::cast_precision_loss, reason = "milliseconds since a scrape, far below 2^52")]
    let age = (now_ms - at.timestamp_millis()) as f64 / 1000.0;
    Some(age.max(0.0))
}

/// A Prometheus duration (`15s`, `1m30s`, `500ms`, `1h`, `1d`, `1w`, `1y`)
/// in seconds.
pub(crate) fn parse_duration_s(text: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "w" => 604_800.0,
            "y" => 31_536_000.0,
            _ => return None,
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    Some(total)
}

fn dashboards(o: &mut Outcome, patterns: &[String], datasources: &[String]) -> String {
    let (files, problems) = grafana::files(patterns);
    for p in problems {
        o.found(Status::Fail, p);
    }
    let mut clean = 0;
    let mut listed = Vec::new();
    for file in &files {
        let shown = file.display().to_string();
        let found = match std::fs::read_to_string(file) {
            Err(e) => vec![format!("cannot be read: {e}")],
            Ok(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                Err(e) => vec![format!("is not JSON: {e}")],
                Ok(doc) => grafana::problems(&doc, datasources),
            },
        };
        if found.is_empty() {
            clean += 1;
        }
        for p in &found {
            o.found(Status::Fail, format!("dashboard {shown}: {p}"));
        }
        listed.push(serde_json::json!({"file": shown, "problems": found}));
    }
    o.measure(Measurement::info("dashboards", files.len() as f64, "count"));
    o.detail("dashboards", listed);
    format!("{clean}/{} dashboard(s) open with values and known data sources", files.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_durations_parse() {
        assert_eq!(parse_duration_s("15s"), Some(15.0));
        assert_eq!(parse_duration_s("1m30s"), Some(90.0));
        assert_eq!(parse_duration_s("500ms"), Some(0.5));
        assert_eq!(parse_duration_s("1h"), Some(3600.0));
        assert_eq!(parse_duration_s(""), None);
        assert_eq!(parse_duration_s("10x"), None);
        assert_eq!(parse_duration_s("s"), None);
    }

    #[test]
    fn go_zero_time_is_never_scraped() {
        assert_eq!(scrape_age_s("0001-01-01T00:00:00Z", 1_000_000), None);
        let age = scrape_age_s("1970-01-01T00:16:39.5Z", 1_000_000).unwrap();
        assert!((age - 0.5).abs() < 1e-9, "{age}");
    }
}
