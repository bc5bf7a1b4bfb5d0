//! `flags`: a flagd flag file (OpenFeature) judged before a release, and the
//! flag service compared with it over OFREP.

use std::collections::BTreeMap;

use flagd_evaluation_engine::{FlagParser, Operator};
use open_feature::EvaluationContext;
use serde_json::Value;

use crate::check::{Check, Measurement, Outcome, Status, Threshold};
use crate::context::{Context, ErrorChain, one_line};

/// Reads `flags.file` (the flagd definition format) and judges it: the
/// structure (`flags`, each with `state` ENABLED or DISABLED, non-empty
/// `variants` of one type, an explicit `defaultVariant` among them,
/// `targeting` an object); every flag in `flags.required` present; each
/// risky flag (`[flags.risky]`, or `metadata.safeVariant` in the file)
/// defaulting to its safe variant; a `fractional` rollout sending no more
/// than `flags.canary_weight_percent` to the new code path (measured by
/// evaluating the targeting for `flags.samples` targeting keys with the
/// flagd evaluation engine); DISABLED flags warn. With `flags.ofrep_url`,
/// the flag service's bulk evaluation must answer and agree with the file.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlagsCheck;

/// The variant value types of the flagd schema.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "boolean",
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::Null => "null",
    }
}

/// Structural problems of one flag, per the flagd flag definition.
fn structure(key: &str, flag: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(flag) = flag.as_object() else {
        return vec![format!("flag {key} is not an object")];
    };
    match flag.get("state").and_then(Value::as_str) {
        Some("ENABLED" | "DISABLED") => {}
        other => problems.push(format!("flag {key}: state is {other:?}, not ENABLED or DISABLED")),
    }
    let variants = flag.get("variants").and_then(Value::as_object);
    match variants {
        None => problems.push(format!("flag {key} has no variants object")),
        Some(v) if v.is_empty() => problems.push(format!("flag {key} has no variants")),
        Some(v) => {
            let mut kinds: Vec<&str> = v.values().map(kind).collect();
            kinds.sort_unstable();
            kinds.dedup();
            if kinds.len() > 1 || kinds.iter().any(|k| matches!(*k, "array" | "null")) {
                problems.push(format!("flag {key}: variants mix or misuse types ({})", kinds.join(", ")));
            }
        }
    }
    match flag.get("defaultVariant") {
        Some(Value::String(d)) if variants.is_some_and(|v| v.contains_key(d)) => {}
        Some(Value::String(d)) => problems.push(format!("flag {key}: defaultVariant {d:?} is not one of its variants")),
        Some(_) | None => problems.push(format!("flag {key} has no explicit defaultVariant")),
    }
    if flag.get("targeting").is_some_and(|t| !t.is_object()) {
        problems.push(format!("flag {key}: targeting is not a JsonLogic object"));
    }
    for field in flag.keys() {
        if !matches!(field.as_str(), "state" | "variants" | "defaultVariant" | "targeting" | "metadata") {
            problems.push(format!("flag {key}: unknown field {field:?}"));
        }
    }
    problems
}

/// The share (percent) each `fractional` operation in `v` declares for
/// variants other than `baseline`: `[["on", 5], ["off", 95]]` → 5. A bucket
/// without a weight weighs 1, as in flagd.
fn declared_shares(v: &Value, baseline: &str, out: &mut Vec<f64>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(args)) = m.get("fractional") {
                let buckets: Vec<(&str, f64)> = args
                    .iter()
                    .filter_map(|b| {
                        let b = b.as_array()?;
                        Some((b.first()?.as_str()?, b.get(1).and_then(Value::as_f64).unwrap_or(1.0)))
                    })
                    .collect();
                let total: f64 = buckets.iter().map(|(_, w)| w).sum();
                if total > 0.0 {
                    let new: f64 = buckets.iter().filter(|(name, _)| *name != baseline).map(|(_, w)| w).sum();
                    out.push(new / total * 100.0);
                }
            }
            m.values().for_each(|x| declared_shares(x, baseline, out));
        }
        Value::Array(a) => a.iter().for_each(|x| declared_shares(x, baseline, out)),
        _ => {}
    }
}

/// The variant the file gives `flag` for a context (targeting, else the
/// default), per the flagd engine.
fn evaluate(
    engine: &Operator,
    key: &str,
    flag: &flagd_evaluation_engine::FeatureFlag,
    ctx: &EvaluationContext,
) -> Result<String, String> {
    if flag.targeting.as_ref().is_none_or(|t| t.as_object().is_some_and(serde_json::Map::is_empty)) {
        return Ok(flag.default_variant.clone());
    }
    match engine.apply(key, &flag.get_targeting(), ctx).map_err(|e| e.to_string())? {
        Some(v) if flag.variants.contains_key(&v) => Ok(v),
        Some(v) => Err(format!("targeting returned {v:?}, which is not one of its variants")),
        None => Ok(flag.default_variant.clone()),
    }
}

#[async_trait::async_trait]
impl Check for FlagsCheck {
    fn id(&self) -> &'static str {
        "flags"
    }

    async fn run(&self, ctx: &Context) -> Outcome {
        let cfg = &ctx.config().flags;
        let Some(path) = &cfg.file else {
            return Outcome::skip(self.id(), "no flag file configured (flags.file)");
        };
        let mut o = Outcome::new(self.id());
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                o.found(Status::Fail, format!("cannot read the flag file {}: {e}", path.display()));
                return o.finish("");
            }
        };
        let doc: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                o.found(Status::Fail, format!("{} is not JSON: {e}", path.display()));
                return o.finish("");
            }
        };
        let Some(raw_flags) = doc.get("flags").and_then(Value::as_object) else {
            o.found(Status::Fail, format!("{} has no \"flags\" object", path.display()));
            return o.finish("");
        };
        for (key, flag) in raw_flags {
            for problem in structure(key, flag) {
                o.found(Status::Fail, problem);
            }
        }
        for key in &cfg.required {
            if !raw_flags.contains_key(key) {
                o.found(
                    Status::Fail,
                    format!("flag {key} is declared by the application (flags.required) but missing from the file"),
                );
            }
        }
        // Risky flags: from the configuration, or marked in the file.
        let mut risky: BTreeMap<String, String> = cfg.risky.clone();
        for (key, flag) in raw_flags {
            if let Some(safe) = flag.pointer("/metadata/safeVariant").and_then(Value::as_str) {
                risky.entry(key.clone()).or_insert_with(|| safe.to_owned());
            }
        }
        for (key, safe) in &risky {
            let Some(flag) = raw_flags.get(key) else {
                o.found(Status::Warn, format!("risky flag {key} is not in the file"));
                continue;
            };
            if flag.pointer(&format!("/variants/{safe}")).is_none() {
                o.found(
                    Status::Fail,
                    format!("risky flag {key}: its safe variant {safe:?} is not one of its variants"),
                );
            } else if let Some(d) = flag.get("defaultVariant").and_then(Value::as_str)
                && d != safe
            {
                o.found(
                    Status::Fail,
                    format!("risky flag {key} defaults to {d:?}; it must default to its safe variant {safe:?}"),
                );
            }
        }
        for (key, flag) in raw_flags {
            if flag.get("state").and_then(Value::as_str) == Some("DISABLED") {
                o.found(
                    Status::Warn,
                    format!("flag {key} is DISABLED: it evaluates to an error, and clients fall back to code defaults"),
                );
            }
        }
        // The engine's own parse, then evaluations.
        let parsed = match FlagParser::parse_string(&text) {
            Ok(p) => p,
            Err(e) => {
                o.found(Status::Fail, format!("the flagd engine cannot load {}: {e}", path.display()));
                return o.finish("");
            }
        };
        let engine = Operator::new();
        let mut shares = BTreeMap::new();
        let mut keys: Vec<&String> = parsed.flags.keys().collect();
        keys.sort();
        for key in keys {
            let flag = &parsed.flags[key];
            if flag.state != "ENABLED" {
                continue;
            }
            if let Err(e) = evaluate(&engine, key, flag, &EvaluationContext::default()) {
                o.found(Status::Fail, format!("flag {key}: {e}"));
                continue;
            }
            let baseline = risky.get(key.as_str()).cloned().unwrap_or_else(|| flag.default_variant.clone());
            let mut declared = Vec::new();
            if let Some(t) = &flag.targeting {
                declared_shares(t, &baseline, &mut declared);
            }
            let Some(declared) = declared.into_iter().reduce(f64::max) else { continue };
            let mut new_path = 0u32;
            for i in 0..cfg.samples {
                let c = EvaluationContext::default().with_targeting_key(format!("spark-check-{i}"));
                match evaluate(&engine, key, flag, &c) {
                    Ok(v) if v != baseline => new_path += 1,
                    Ok(_) => {}
                    Err(e) => {
                        o.found(Status::Fail, format!("flag {key}: {e}"));
                        break;
                    }
                }
            }
            // Judged on the declared weights (the most any fractional of the
            // flag gives the new path); the engine's measured split over
            // the sample keys is recorded beside it, as evidence that the
            // rule does what it says.
            let measured = f64::from(new_path) / f64::from(cfg.samples.max(1)) * 100.0;
            shares.insert(key.clone(), serde_json::json!({"declared": declared, "measured": measured}));
            o.measure(Measurement::judged(
                format!("fractional_share ({key})"),
                declared,
                "%",
                Threshold::above(None, Some(f64::from(cfg.canary_weight_percent))),
            ));
            o.measure(Measurement::info(format!("fractional_share_measured ({key})"), measured, "%"));
        }
        if let Some(url) = &cfg.ofrep_url {
            ofrep(&mut o, url, &engine, &parsed.flags).await;
        }
        o.measure(Measurement::info("flags", raw_flags.len() as f64, "count"));
        o.detail("file", path.display().to_string())
            .detail("risky", &risky)
            .detail("fractional_share_percent", &shares);
        o.finish(&format!(
            "{} flag(s) valid; fractional rollouts within the {} % canary weight",
            raw_flags.len(),
            cfg.canary_weight_percent
        ))
    }
}

/// The flag service's bulk evaluation (OFREP) against the file's, for one
/// fixed context.
async fn ofrep(
    o: &mut Outcome,
    base: &str,
    engine: &Operator,
    flags: &std::collections::HashMap<String, flagd_evaluation_engine::FeatureFlag>,
) {
    const TARGETING_KEY: &str = "spark-check";
    let url = format!("{}/ofrep/v1/evaluate/flags", base.trim_end_matches('/'));
    let client = match crate::checks::http::client() {
        Ok(c) => c,
        Err(e) => {
            o.found(Status::Fail, e);
            return;
        }
    };
    let body = serde_json::json!({"context": {"targetingKey": TARGETING_KEY}});
    let answer =
        client.post(&url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_string()).send().await;
    let response = match answer {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            o.found(Status::Fail, format!("the flag service answered {} at {url}", r.status()));
            return;
        }
        Err(e) => {
            o.found(
                Status::Fail,
                format!("the flag service at {url} did not answer: {}", one_line(&ErrorChain(&e).to_string())),
            );
            return;
        }
    };
    let served: Value = match response.bytes().await.map(|b| serde_json::from_slice(&b)) {
        Ok(Ok(v)) => v,
        _ => {
            o.found(Status::Fail, format!("the flag service at {url} did not answer OFREP JSON"));
            return;
        }
    };
    let served: BTreeMap<String, Value> = served
        .get("flags")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| {
                    Some((f.get("key")?.as_str()?.to_owned(), f.get("value").cloned().unwrap_or(Value::Null)))
                })
                .collect()
        })
        .unwrap_or_default();
    let ctx = EvaluationContext::default().with_targeting_key(TARGETING_KEY);
    let mut agree = 0u32;
    let mut keys: Vec<&String> = flags.keys().collect();
    keys.sort();
    for key in keys {
        let flag = &flags[key];
        if flag.state != "ENABLED" {
            continue;
        }
        let Ok(variant) = evaluate(engine, key, flag, &ctx) else { continue };
        let expected = &flag.variants[&variant];
        match served.get(key) {
            None => {
                o.found(Status::Fail, format!("the flag service does not serve flag {key}"));
            }
            Some(v) if v == expected => agree += 1,
            Some(v) => {
                o.found(
                    Status::Fail,
                    format!("flag {key}: the flag service says {v}, the file says {expected} (variant {variant:?})"),
                );
            }
        }
    }
    o.measure(Measurement::info("ofrep_agreeing_flags", f64::from(agree), "count"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_structure_is_judged_per_flag() {
        let ok =
            serde_json::json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"});
        assert!(structure("f", &ok).is_empty());
        let bad = serde_json::json!({"state": "ON", "variants": {"on": true, "off": "no"}, "targeting": 3, "extra": 1});
        let problems = structure("f", &bad).join("\n");
        for needle in ["state is", "mix", "no explicit defaultVariant", "targeting is not", "unknown field \"extra\""] {
            assert!(problems.contains(needle), "{needle}: {problems}");
        }
    }

    #[test]
    fn declared_shares_count_every_bucket_but_the_baseline() {
        let mut out = Vec::new();
        let t = serde_json::json!({"if": [true, {"fractional": [{"var": "email"}, ["on", 5], ["off", 95]]}, {"fractional": [["a"], ["off"]]}]});
        declared_shares(&t, "off", &mut out);
        assert_eq!(out, [5.0, 50.0]);
    }

    #[test]
    fn the_engine_measures_a_fractional_split() {
        let text = r#"{"flags": {"new-path": {"state": "ENABLED", "variants": {"on": true, "off": false},
            "defaultVariant": "off", "targeting": {"fractional": [["on", 50], ["off", 50]]}}}}"#;
        let parsed = FlagParser::parse_string(text).unwrap();
        let engine = Operator::new();
        let flag = &parsed.flags["new-path"];
        let on = (0..1000)
            .filter(|i| {
                let c = EvaluationContext::default().with_targeting_key(format!("k{i}"));
                evaluate(&engine, "new-path", flag, &c).unwrap() == "on"
            })
            .count();
        assert!((400..600).contains(&on), "{on} of 1000");
    }
}
