//! A Grafana dashboard over the recorded signals the exported rules write:
//! the six gates with the plan's thresholds, the SLO burn rates with the
//! error budget left, outbox lag and pgBouncer saturation, and the canary's
//! rollback alerts and promotions as annotations.
//!
//! Its template variables (`datasource`, `job`, `release`) all have a value
//! when the dashboard opens, and every panel reads the `datasource`
//! variable, so it passes the `observability` check's dashboard rules.

use serde_json::{Value, json};

use crate::export::recorded;
use crate::plan::Plan;
use crate::signal::Signal;

/// The dashboard's uid.
pub const UID: &str = "spark-canary";

fn datasource() -> Value {
    json!({"type": "prometheus", "uid": "${datasource}"})
}

/// A time series panel of `signal` for canary and baseline, with `threshold`
/// drawn as the line a gate or trigger holds it to.
fn signal_panel(id: u32, title: &str, signal: Signal, unit: &str, threshold: Option<f64>, grid: (u32, u32)) -> Value {
    let steps = match threshold {
        Some(t) => json!([{"color": "green", "value": null}, {"color": "red", "value": t}]),
        None => json!([{"color": "green", "value": null}]),
    };
    json!({
        "id": id,
        "type": "timeseries",
        "title": title,
        "datasource": datasource(),
        "gridPos": {"h": 8, "w": 8, "x": grid.0, "y": grid.1},
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": {"mode": "absolute", "steps": steps},
                "custom": {"thresholdsStyle": {"mode": if threshold.is_some() { "line" } else { "off" }}}
            },
            "overrides": []
        },
        "targets": [{
            "refId": "A",
            "datasource": datasource(),
            "expr": recorded(signal),
            "legendFormat": "{{role}}"
        }]
    })
}

/// The dashboard JSON for `plan`.
#[must_use]
pub fn grafana_dashboard(plan: &Plan) -> Value {
    let g = &plan.gates;
    let on = |gate: crate::plan::Gate| gate.enabled.then_some(gate.threshold);
    let t = &plan.triggers;
    let budget = 1.0 - plan.slo.objective;
    let panels = vec![
        signal_panel(1, "API p95 (gate)", Signal::ApiLatencyP95Seconds, "s", on(g.api_p95), (0, 0)),
        signal_panel(2, "5xx ratio (gate)", Signal::Http5xxRatio, "percentunit", on(g.error_rate), (8, 0)),
        signal_panel(3, "WebSocket staleness (gate)", Signal::WsStalenessSeconds, "s", on(g.ws_staleness), (16, 0)),
        signal_panel(
            4,
            "Risk blocks per minute (gate)",
            Signal::RiskBlocksPerMinute,
            "short",
            on(g.risk_blocks),
            (0, 8),
        ),
        signal_panel(
            5,
            "Idempotency conflicts (gate)",
            Signal::IdempotencyConflictRatio,
            "percentunit",
            on(g.idem_conflicts),
            (8, 8),
        ),
        signal_panel(
            6,
            "CSP violations per minute (gate: ≤ baseline + allowance)",
            Signal::CspViolationsPerMinute,
            "short",
            None,
            (16, 8),
        ),
        json!({
            "id": 7,
            "type": "timeseries",
            "title": "SLO burn rate (1 h and 6 h)",
            "datasource": datasource(),
            "gridPos": {"h": 8, "w": 8, "x": 0, "y": 16},
            "fieldConfig": {
                "defaults": {
                    "unit": "x",
                    "thresholds": {"mode": "absolute", "steps": [
                        {"color": "green", "value": null},
                        {"color": "orange", "value": t.slo_burn_slow.factor},
                        {"color": "red", "value": t.slo_burn_fast.factor}
                    ]},
                    "custom": {"thresholdsStyle": {"mode": "line"}}
                },
                "overrides": []
            },
            "targets": [
                {"refId": "A", "datasource": datasource(), "expr": "spark:slo_burn_rate:1h", "legendFormat": "1h {{role}}"},
                {"refId": "B", "datasource": datasource(), "expr": "spark:slo_burn_rate:6h", "legendFormat": "6h {{role}}"}
            ]
        }),
        json!({
            "id": 8,
            "type": "stat",
            "title": format!("Error budget left (30 d, SLO {})", plan.slo.objective),
            "datasource": datasource(),
            "gridPos": {"h": 8, "w": 8, "x": 8, "y": 16},
            "fieldConfig": {
                "defaults": {
                    "unit": "percentunit",
                    "min": 0,
                    "max": 1,
                    "thresholds": {"mode": "absolute", "steps": [
                        {"color": "red", "value": null},
                        {"color": "orange", "value": 0.25},
                        {"color": "green", "value": 0.5}
                    ]}
                },
                "overrides": []
            },
            "targets": [{
                "refId": "A",
                "datasource": datasource(),
                "expr": format!(
                    "1 - sum_over_time(spark:http_5xx_per_second[30d]) / on(role) sum_over_time({}[30d]) / {budget}",
                    recorded(Signal::HttpRequestsPerSecond)
                ),
                "legendFormat": "{{role}}"
            }]
        }),
        signal_panel(
            9,
            "Outbox lag",
            Signal::OutboxLagP99Seconds,
            "s",
            Some(t.outbox_lag_explosion.threshold),
            (16, 16),
        ),
        signal_panel(
            10,
            "pgBouncer saturation",
            Signal::PgbouncerSaturationRatio,
            "percentunit",
            Some(t.pgbouncer_saturation.threshold),
            (0, 24),
        ),
    ];
    json!({
        "uid": UID,
        "title": "Spark canary: ${job} ${release}",
        "tags": ["spark", "canary"],
        "schemaVersion": 39,
        "editable": true,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "refresh": 1,
                "current": {}
            },
            {
                "name": "job",
                "label": "Job",
                "type": "textbox",
                "query": "order-service",
                "current": {"text": "order-service", "value": "order-service"}
            },
            {
                "name": "release",
                "label": "Release",
                "type": "textbox",
                "query": "current",
                "current": {"text": "current", "value": "current"}
            }
        ]},
        "annotations": {"list": [
            {
                "name": "Rollback triggers",
                "datasource": datasource(),
                "enable": true,
                "iconColor": "red",
                "expr": "ALERTS{spark=\"canary\", severity=\"critical\", alertstate=\"firing\"}",
                "titleFormat": "rollback: {{trigger}}",
                "tagKeys": "trigger,role",
                "step": "30s"
            },
            {
                "name": "Promotions",
                "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                "enable": true,
                "iconColor": "green",
                "type": "tags",
                "tags": ["spark-canary", "promote", "${release}"],
                "matchAny": false
            }
        ]},
        "panels": panels
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_panels_on_the_datasource_variable_with_the_plans_thresholds() {
        let d = grafana_dashboard(&Plan::default());
        let panels = d["panels"].as_array().unwrap();
        assert_eq!(panels.len(), 10);
        assert!(panels.iter().all(|p| p["datasource"]["uid"] == "${datasource}"));
        assert_eq!(panels[0]["fieldConfig"]["defaults"]["thresholds"]["steps"][1]["value"], 0.2);
        let vars: Vec<&str> =
            d["templating"]["list"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
        assert_eq!(vars, ["datasource", "job", "release"]);
    }
}
