//! Grafana dashboard JSON: template variables that have a value when the
//! dashboard opens, and data sources that exist.
//!
//! The rules, as the `observability` check applies them:
//!
//! - A template variable has a default when `current.value` (or
//!   `current.text`) is a non-empty string or list, or, for `constant` and
//!   `textbox` variables, a non-empty `query`; otherwise it must refresh on
//!   load (`refresh` 1, "on dashboard load", or 2, "on time range change",
//!   which also runs at load). Without either the dashboard opens empty.
//! - A data source (on a panel, a panel's query, or a query variable)
//!   resolves when it is absent or null (the default data source), one of
//!   Grafana's own (`-- Grafana --`, `grafana`, `-- Mixed --`,
//!   `-- Dashboard --`), a reference (`$name`, `${name}`, `[[name]]`) to a
//!   `datasource` variable of the same dashboard, or a uid or name listed in
//!   `observability.datasources`. A `${DS_…}` placeholder from an exported
//!   dashboard's `__inputs` never resolves: it is replaced only when the
//!   dashboard is imported through the UI, never when it is provisioned.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Grafana's built-in data sources.
const BUILT_IN: [&str; 5] = ["-- Grafana --", "grafana", "-- Mixed --", "-- Dashboard --", "default"];

/// The files `patterns` name: a path as given, every `*.json` in a
/// directory, or the files whose name matches a `*`/`?` pattern. A pattern
/// that matches nothing is a problem of its own.
pub(crate) fn files(patterns: &[String]) -> (Vec<PathBuf>, Vec<String>) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for pattern in patterns {
        let path = Path::new(pattern);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let found = if name.contains(['*', '?']) {
            if parent.to_str().is_some_and(|p| p.contains(['*', '?'])) {
                problems.push(format!("dashboard pattern {pattern:?}: * and ? work only in the file name"));
                continue;
            }
            list(parent, |file| wildcard(name, file))
        } else if path.is_dir() {
            list(path, |file| file.ends_with(".json"))
        } else {
            // A missing file is reported when it is read.
            Ok(vec![path.to_path_buf()])
        };
        match found {
            Ok(found) if found.is_empty() => problems.push(format!("no dashboard file matches {pattern:?}")),
            Ok(found) => files.extend(found),
            Err(e) => problems.push(format!("dashboards {pattern:?}: cannot read {}: {e}", parent.display())),
        }
    }
    files.sort();
    files.dedup();
    (files, problems)
}

fn list(dir: &Path, keep: impl Fn(&str) -> bool) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() && path.file_name().and_then(|n| n.to_str()).is_some_and(&keep) {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Whether `name` matches `pattern`, where `*` is any run of characters and
/// `?` any one character.
fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// What is wrong with one dashboard (the model itself, or an API export
/// that wraps it in `{"dashboard": …}`), one line per problem.
pub(crate) fn problems(doc: &Value, datasources: &[String]) -> Vec<String> {
    let dash = doc.get("dashboard").filter(|d| d.is_object()).unwrap_or(doc);
    let mut problems = Vec::new();
    let variables = dash.pointer("/templating/list").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let ds_variables: Vec<&str> = variables
        .iter()
        .filter(|v| v.get("type").and_then(Value::as_str) == Some("datasource"))
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .collect();
    let inputs: Vec<&str> = dash
        .get("__inputs")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|i| i.get("name").and_then(Value::as_str)).collect())
        .unwrap_or_default();
    let resolve = |ds: Option<&Value>| resolve(ds, datasources, &ds_variables, &inputs);
    for v in variables {
        let name = v.get("name").and_then(Value::as_str).unwrap_or("?");
        if !has_default(v) && !refreshes_on_load(v) {
            problems.push(format!(
                "variable {name:?} has no current value and does not refresh on load: the dashboard opens without it"
            ));
        }
        if v.get("type").and_then(Value::as_str) == Some("query")
            && let Err(why) = resolve(v.get("datasource"))
        {
            problems.push(format!("variable {name:?}: {why}"));
        }
    }
    let mut panels = Vec::new();
    collect_panels(dash, &mut panels);
    for panel in panels {
        let title = panel.get("title").and_then(Value::as_str).unwrap_or("");
        let who = match panel.get("id").and_then(Value::as_i64) {
            Some(id) => format!("panel {title:?} (id {id})"),
            None => format!("panel {title:?}"),
        };
        if let Err(why) = resolve(panel.get("datasource")) {
            problems.push(format!("{who}: {why}"));
        }
        for target in panel.get("targets").and_then(Value::as_array).into_iter().flatten() {
            if let Err(why) = resolve(target.get("datasource")) {
                let query = target.get("refId").and_then(Value::as_str).unwrap_or("?");
                problems.push(format!("{who}, query {query}: {why}"));
            }
        }
    }
    problems
}

/// Panels, with those inside rows (`panels[].panels`, collapsed rows) and
/// in the old `rows[].panels` layout.
fn collect_panels<'a>(node: &'a Value, out: &mut Vec<&'a Value>) {
    for key in ["panels", "rows"] {
        for child in node.get(key).and_then(Value::as_array).into_iter().flatten() {
            if key == "panels" {
                out.push(child);
            }
            collect_panels(child, out);
        }
    }
}

fn non_empty(v: Option<&Value>) -> bool {
    match v {
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Number(_) | Value::Bool(_)) => true,
        _ => false,
    }
}

fn has_default(v: &Value) -> bool {
    let current = v.get("current");
    if non_empty(current.and_then(|c| c.get("value"))) || non_empty(current.and_then(|c| c.get("text"))) {
        return true;
    }
    matches!(v.get("type").and_then(Value::as_str), Some("constant" | "textbox")) && non_empty(v.get("query"))
}

fn refreshes_on_load(v: &Value) -> bool {
    match v.get("refresh") {
        Some(Value::Number(n)) => matches!(n.as_i64(), Some(1 | 2)),
        Some(Value::Bool(b)) => *b,
        _ => false,
    }
}

/// Whether a data source reference resolves; the error says why not.
fn resolve(ds: Option<&Value>, known: &[String], variables: &[&str], inputs: &[&str]) -> Result<(), String> {
    let reference = match ds {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Object(o)) => match o.get("uid") {
            Some(Value::String(uid)) => uid.as_str(),
            // `{"type": "prometheus"}` alone: that type's default.
            _ => return Ok(()),
        },
        Some(other) => return Err(format!("data source {other} is neither a name nor a {{type, uid}} object")),
    };
    if reference.is_empty() || BUILT_IN.contains(&reference) {
        return Ok(());
    }
    if let Some(var) = variable_name(reference) {
        if variables.contains(&var) {
            return Ok(());
        }
        if inputs.contains(&var) {
            return Err(format!(
                "data source {reference} is an import placeholder (__inputs) that provisioning never replaces"
            ));
        }
        return Err(format!("data source {reference} names no data source variable of this dashboard"));
    }
    if known.iter().any(|k| k == reference) {
        Ok(())
    } else if known.is_empty() {
        Err(format!("data source {reference:?} cannot be resolved: observability.datasources is empty"))
    } else {
        Err(format!("data source {reference:?} is not among observability.datasources"))
    }
}

/// `name` from `$name`, `${name}`, `${name:format}` or `[[name]]`.
fn variable_name(reference: &str) -> Option<&str> {
    if let Some(rest) = reference.strip_prefix("${") {
        let inner = rest.strip_suffix('}')?;
        return Some(inner.split(':').next().unwrap_or(inner));
    }
    if let Some(rest) = reference.strip_prefix("[[") {
        return rest.strip_suffix("]]");
    }
    reference.strip_prefix('$')
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn wildcards_match_file_names() {
        assert!(wildcard("*.json", "orders.json"));
        assert!(wildcard("ord?rs-*.json", "orders-v2.json"));
        assert!(!wildcard("*.json", "orders.yaml"));
        assert!(wildcard("*", ""));
    }

    #[test]
    fn variable_references_are_recognised() {
        assert_eq!(variable_name("$ds"), Some("ds"));
        assert_eq!(variable_name("${ds}"), Some("ds"));
        assert_eq!(variable_name("${ds:raw}"), Some("ds"));
        assert_eq!(variable_name("[[ds]]"), Some("ds"));
        assert_eq!(variable_name("prom-main"), None);
    }

    #[test]
    fn a_good_dashboard_has_no_problems_and_a_bad_one_names_each() {
        let known = vec!["prom-main".to_owned()];
        let good = json!({
            "templating": {"list": [
                {"name": "ds", "type": "datasource", "query": "prometheus", "refresh": 1},
                {"name": "env", "type": "query", "datasource": {"uid": "${ds}"}, "refresh": 2},
                {"name": "window", "type": "custom", "current": {"text": "5m", "value": "5m"}},
                {"name": "site", "type": "constant", "query": "ist"}
            ]},
            "panels": [
                {"id": 1, "title": "Orders", "datasource": {"type": "prometheus", "uid": "prom-main"},
                 "targets": [{"refId": "A", "datasource": {"uid": "prom-main"}}]},
                {"id": 2, "type": "row", "collapsed": true, "panels": [{"id": 3, "title": "Latency", "datasource": "$ds"}]},
                {"id": 4, "title": "Note", "datasource": {"type": "datasource", "uid": "grafana"}},
                {"id": 5, "title": "Default"}
            ]
        });
        assert_eq!(problems(&good, &known), Vec::<String>::new());
        // The API's export format wraps the model.
        assert_eq!(problems(&json!({"dashboard": good, "overwrite": true}), &known), Vec::<String>::new());

        let bad = json!({
            "__inputs": [{"name": "DS_PROM", "type": "datasource"}],
            "templating": {"list": [{"name": "env", "type": "custom", "current": {}, "refresh": 0}]},
            "rows": [{"panels": [{"id": 7, "title": "Old", "datasource": "prom-old"}]}],
            "panels": [{"id": 8, "title": "Exported", "datasource": {"uid": "${DS_PROM}"},
                        "targets": [{"refId": "B", "datasource": {"uid": "$nope"}}]}]
        });
        let found = problems(&bad, &known);
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(found[0].starts_with("variable \"env\" has no current value"), "{found:#?}");
        assert!(found.iter().any(|p| p.contains("panel \"Old\" (id 7)") && p.contains("\"prom-old\" is not among")));
        assert!(found.iter().any(|p| p.contains("(id 8)") && p.contains("import placeholder")));
        assert!(found.iter().any(|p| p.contains("query B") && p.contains("$nope")));
    }
}
