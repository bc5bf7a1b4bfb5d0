//! `slo-alerts`: every SLO has its burn-rate alerts loaded and healthy in
//! Prometheus, and no Alertmanager silence mutes them.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::check::{Check, Measurement, Outcome, Status};
use crate::checks::http;
use crate::context::Context;

/// Prometheus `/api/v1/rules?type=alert`: for each SLO of `slo.names` and
/// each window of `slo.windows` (1h, 6h), an alerting rule labelled
/// `slo_label = <name>` and `window_label = <window>` (`slo="orders"`,
/// `window="1h"`) is loaded and evaluates without error. Alertmanager
/// `/api/v2/status` answers, and no active or pending silence of
/// `/api/v2/silences` matches those rules' alerts.
///
/// A silence matches a rule when all its matchers match the labels the
/// rule gives its alerts (`alertname` and the rule's own labels; a label
/// the rule does not set is empty), or the labels of an alert the rule has
/// right now. Matchers use Alertmanager's semantics: regexes are anchored,
/// `!=` and `!~` negate.
#[derive(Debug, Clone, Copy, Default)]
pub struct SloAlertsCheck;

#[derive(Debug, Deserialize)]
struct Envelope<T> {
    data: T,
}

#[derive(Debug, Deserialize)]
struct Rules {
    groups: Vec<Group>,
}

#[derive(Debug, Deserialize)]
struct Group {
    name: String,
    #[serde(default)]
    file: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    health: String,
    #[serde(default)]
    last_error: String,
    #[serde(default)]
    alerts: Vec<Alert>,
    #[serde(rename = "type", default)]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct Alert {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Silence {
    id: String,
    status: SilenceStatus,
    matchers: Vec<Matcher>,
    #[serde(default)]
    created_by: String,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    ends_at: String,
}

#[derive(Debug, Deserialize)]
struct SilenceStatus {
    state: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Matcher {
    name: String,
    value: String,
    #[serde(default)]
    is_regex: bool,
    /// Since Alertmanager 0.22; before, every matcher was an equality.
    #[serde(default = "yes")]
    is_equal: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AmStatus {
    #[serde(default)]
    cluster: Option<serde_json::Value>,
    #[serde(default)]
    version_info: Option<serde_json::Value>,
}

impl Matcher {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.name).map_or("", String::as_str);
        let hit = if self.is_regex {
            // Alertmanager anchors every regex; one that does not compile
            // here matches nothing (Alertmanager would not have stored it).
            regex::Regex::new(&format!("^(?:{})$", self.value)).is_ok_and(|re| re.is_match(value))
        } else {
            value == self.value
        };
        hit == self.is_equal
    }
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match (self.is_equal, self.is_regex) {
            (true, false) => "=",
            (false, false) => "!=",
            (true, true) => "=~",
            (false, true) => "!~",
        };
        write!(f, "{}{op}{:?}", self.name, self.value)
    }
}

#[async_trait::async_trait]
impl Check for SloAlertsCheck {
    fn id(&self) -> &'static str {
        "slo-alerts"
    }

    async fn run(&self, ctx: &Context) -> Outcome {
        let config = ctx.config();
        let cfg = &config.slo;
        let Some(prometheus) = config.prometheus.url.as_deref() else {
            return Outcome::skip(self.id(), "no Prometheus configured: set prometheus.url or SPARK_PROMETHEUS_URL");
        };
        if cfg.names.is_empty() {
            return Outcome::skip(self.id(), "no SLOs configured: set slo.names");
        }
        let mut o = Outcome::new(self.id());
        let client = match http::client() {
            Ok(c) => c,
            Err(e) => return Outcome::unreachable(self.id(), e),
        };
        let rules = match http::get_json::<Envelope<Rules>>(&client, prometheus, "/api/v1/rules?type=alert").await {
            Ok(envelope) => envelope.data,
            Err(e) => return Outcome::unreachable(self.id(), format!("Prometheus rules: {e}")),
        };
        // (slo, window, group, rule) for every burn-rate rule found.
        let mut found: Vec<(&str, &str, &Group, &Rule)> = Vec::new();
        for name in &cfg.names {
            for window in &cfg.windows {
                let matching: Vec<(&Group, &Rule)> = rules
                    .groups
                    .iter()
                    .flat_map(|g| g.rules.iter().map(move |r| (g, r)))
                    .filter(|(_, r)| {
                        r.kind == "alerting"
                            && r.labels.get(&cfg.slo_label) == Some(name)
                            && r.labels.get(&cfg.window_label) == Some(window)
                    })
                    .collect();
                if matching.is_empty() {
                    o.found(
                        Status::Fail,
                        format!(
                            "SLO {name:?} has no {window} burn-rate alert: no alerting rule labelled {}={name:?}, {}={window:?} is loaded",
                            cfg.slo_label, cfg.window_label
                        ),
                    );
                }
                for (group, rule) in matching {
                    let who = format!("rule {} (group {:?}, SLO {name:?}, {window})", rule.name, group.name);
                    match rule.health.as_str() {
                        "ok" => {}
                        "err" => {
                            o.found(Status::Fail, format!("{who} fails to evaluate: {}", rule.last_error));
                        }
                        other => {
                            o.found(Status::Warn, format!("{who} has not been evaluated yet (health {other:?})"));
                        }
                    }
                    found.push((name, window, group, rule));
                }
            }
        }
        o.measure(Measurement::info("burn_rate_rules", found.len() as f64, "count"));
        o.detail(
            "rules",
            found
                .iter()
                .map(|(slo, window, g, r)| {
                    serde_json::json!({"slo": slo, "window": window, "rule": r.name, "group": g.name, "file": g.file,
                        "health": r.health, "last_error": r.last_error, "alerts": r.alerts.len()})
                })
                .collect::<Vec<_>>(),
        );
        let mut summary = format!("{} SLO(s) with {} burn-rate rule(s) loaded", cfg.names.len(), found.len());
        match config.alertmanager.url.as_deref() {
            None => {
                o.found(Status::Warn, "alertmanager.url is not set: silences on the burn-rate alerts not checked");
            }
            Some(am) => {
                if let Some(s) = alertmanager(&mut o, &client, am, &found).await {
                    summary.push_str("; ");
                    summary.push_str(&s);
                }
            }
        }
        o.finish(&summary)
    }
}

async fn alertmanager(
    o: &mut Outcome,
    client: &reqwest::Client,
    url: &str,
    rules: &[(&str, &str, &Group, &Rule)],
) -> Option<String> {
    let status = match http::get_json::<AmStatus>(client, url, "/api/v2/status").await {
        Ok(s) => s,
        Err(e) => {
            o.found(Status::Fail, format!("Alertmanager status: {e}"));
            return None;
        }
    };
    let version =
        status.version_info.as_ref().and_then(|v| v.get("version")).and_then(|v| v.as_str()).unwrap_or("?").to_owned();
    o.detail("alertmanager_version", &version);
    o.detail("alertmanager_cluster", status.cluster.as_ref().and_then(|c| c.get("status")).cloned());
    let silences: Vec<Silence> = match http::get_json(client, url, "/api/v2/silences").await {
        Ok(s) => s,
        Err(e) => {
            o.found(Status::Fail, format!("Alertmanager silences: {e}"));
            return None;
        }
    };
    let live: Vec<&Silence> =
        silences.iter().filter(|s| matches!(s.status.state.as_str(), "active" | "pending")).collect();
    let mut muting = 0;
    for silence in &live {
        for (slo, window, _, rule) in rules {
            let mut own = rule.labels.clone();
            own.insert("alertname".to_owned(), rule.name.clone());
            let mut label_sets = std::iter::once(&own).chain(rule.alerts.iter().map(|a| &a.labels));
            if label_sets.any(|labels| silence.matchers.iter().all(|m| m.matches(labels))) {
                muting += 1;
                let matchers: Vec<String> = silence.matchers.iter().map(ToString::to_string).collect();
                o.found(
                    Status::Fail,
                    format!(
                        "silence {} ({}, by {:?} until {}: {:?}) mutes {} of SLO {slo:?} ({window}): {{{}}}",
                        silence.id,
                        silence.status.state,
                        silence.created_by,
                        silence.ends_at,
                        silence.comment,
                        rule.name,
                        matchers.join(", ")
                    ),
                );
            }
        }
    }
    o.measure(Measurement::info("live_silences", live.len() as f64, "count"));
    o.measure(Measurement::info("silences_muting_burn_rate_alerts", f64::from(muting), "count"));
    Some(format!("Alertmanager {version} answers, {} live silence(s), none on them", live.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())).collect()
    }

    fn matcher(name: &str, value: &str, is_regex: bool, is_equal: bool) -> Matcher {
        Matcher { name: name.to_owned(), value: value.to_owned(), is_regex, is_equal }
    }

    #[test]
    fn matchers_follow_alertmanager() {
        let alert = labels(&[("alertname", "SparkErrorBudgetBurn1h"), ("slo", "orders")]);
        assert!(matcher("alertname", "SparkErrorBudgetBurn1h", false, true).matches(&alert));
        assert!(matcher("alertname", "SparkErrorBudget.*", true, true).matches(&alert));
        // Anchored: a regex must match the whole value.
        assert!(!matcher("alertname", "Burn1h", true, true).matches(&alert));
        assert!(matcher("slo", "payments", false, false).matches(&alert));
        // An absent label is empty.
        assert!(matcher("severity", "", false, true).matches(&alert));
        assert!(!matcher("severity", "page", false, true).matches(&alert));
        assert!(matcher("severity", "page", true, false).matches(&alert));
        assert_eq!(matcher("slo", "o.*", true, false).to_string(), "slo!~\"o.*\"");
    }
}
