//! The committed pacts, and the check that a consumer test wrote exactly
//! what is committed: a contract never drifts from its consumer's test
//! without a diff in `pacts/`.

use std::path::{Path, PathBuf};

use serde_json::Value;

const REGENERATE: &str = "If the change is meant, regenerate the committed pacts with \
     `PACT_UPDATE=1 cargo test -p order-service-contracts --features pact` and commit pacts/";

/// The committed pact `name`.
pub(crate) fn committed(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pacts").join(name)
}

/// Whether `PACT_UPDATE=1` asks the consumer tests to rewrite `pacts/`.
fn updating() -> bool {
    std::env::var("PACT_UPDATE").is_ok_and(|v| v == "1")
}

/// The pact without what may change when nothing in the contract did: the
/// versions of the Pact crates that wrote it.
fn normalised(mut pact: Value) -> Value {
    if let Some(metadata) = pact.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("pactRust");
    }
    pact
}

/// The first place two JSON values differ, as a JSON path, with both sides.
fn first_difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let at = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => first_difference(&at, u, v),
                    (u, v) => Some(format!("{at}: committed {}, written {}", show(u), show(v))),
                }
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (u, v))| first_difference(&format!("{path}[{i}]"), u, v))
        }
        _ if a == b => None,
        _ => Some(format!("{path}: committed {}, written {}", show(Some(a)), show(Some(b)))),
    }
}

fn show(v: Option<&Value>) -> String {
    let text = v.map_or_else(|| "nothing".to_owned(), Value::to_string);
    if text.chars().count() > 300 { text.chars().take(300).chain(['…']).collect() } else { text }
}

fn read(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

/// Compares the pact a consumer test wrote at `written` with the committed
/// pact `name`, or, under `PACT_UPDATE=1`, writes it there.
///
/// # Panics
///
/// When they differ (or the committed one is missing), saying where and how
/// to regenerate.
pub(crate) fn check(written: &Path, name: &str) {
    let target = committed(name);
    let fresh = read(written).unwrap_or_else(|e| panic!("the consumer test wrote no pact: {e}"));
    if updating() {
        // Written beside it and renamed over it, so a provider test running
        // at the same time reads the old pact or the new one, never half.
        let text = serde_json::to_string_pretty(&fresh).unwrap() + "\n";
        let partial = target.with_extension("json.partial");
        std::fs::write(&partial, text)
            .and_then(|()| std::fs::rename(&partial, &target))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", target.display()));
        eprintln!("PACT_UPDATE=1: wrote {}", target.display());
        return;
    }
    let kept = read(&target).unwrap_or_else(|e| panic!("{e}; {REGENERATE}"));
    let (kept, fresh) = (normalised(kept), normalised(fresh));
    if let Some(difference) = first_difference("$", &kept, &fresh) {
        panic!(
            "pacts/{name} is not what the consumer test wrote (first difference at {difference}); \
             the committed contract would drift from its consumer's test. {REGENERATE}"
        );
    }
}

#[test]
fn a_difference_is_found_and_named_and_crate_versions_do_not_count() {
    let a = serde_json::json!({"x": [1, {"y": "a"}], "metadata": {"pactRust": {"models": "1"}}});
    let b = serde_json::json!({"x": [1, {"y": "b"}], "metadata": {"pactRust": {"models": "2"}}});
    assert_eq!(first_difference("$", &normalised(a.clone()), &normalised(a.clone())), None);
    assert_eq!(
        first_difference("$", &normalised(a.clone()), &normalised(b)).as_deref(),
        Some("$.x[1].y: committed \"a\", written \"b\"")
    );
    let c = serde_json::json!({"x": [1]});
    assert_eq!(
        first_difference("$", &a, &c).as_deref(),
        Some("$.metadata: committed {\"pactRust\":{\"models\":\"1\"}}, written nothing")
    );
    assert!(
        first_difference("$", &a, &serde_json::json!({"x": [1], "metadata": {}}))
            .unwrap()
            .starts_with("$.metadata.pactRust")
    );
}
