//! Setting the canary's share of traffic: a command (a mesh, a load
//! balancer, `kubectl`) or a flagd flag file's fractional rollout.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::plan::Weight;

/// How `spark canary run` sets each stage's weight (the plan's `[weights]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    /// A command run with `SPARK_CANARY_WEIGHT` (such as `25`) and
    /// `SPARK_CANARY_RELEASE` in its environment; exit 0 means set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// How long the command may take.
    #[serde(default = "default_timeout", with = "crate::plan::duration")]
    pub timeout: Duration,
    /// Or: a flagd flag file whose flag's targeting becomes
    /// `{"fractional": [[canary_variant, w], [baseline_variant, 100 − w]]}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flagd_file: Option<PathBuf>,
    /// The flag in that file.
    #[serde(default = "default_flag")]
    pub flag: String,
    /// The variant the canary's share gets.
    #[serde(default = "default_canary")]
    pub canary_variant: String,
    /// The variant the rest gets.
    #[serde(default = "default_baseline")]
    pub baseline_variant: String,
}

impl Default for Weights {
    fn default() -> Weights {
        Weights {
            command: Vec::new(),
            timeout: default_timeout(),
            flagd_file: None,
            flag: default_flag(),
            canary_variant: default_canary(),
            baseline_variant: default_baseline(),
        }
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_flag() -> String {
    "canary".to_owned()
}
fn default_canary() -> String {
    "canary".to_owned()
}
fn default_baseline() -> String {
    "baseline".to_owned()
}

/// What sets a stage's weight.
#[async_trait]
pub trait WeightSetter: Send + Sync {
    /// Sets the canary's share; the error says why not.
    async fn set(&self, weight: Weight) -> Result<(), String>;
    /// What it does, for the trail.
    fn describe(&self) -> String;
}

/// The setter the plan's `[weights]` describe, for `release`; `None` when
/// neither a command nor a flagd file is configured.
#[must_use]
pub fn setter(weights: &Weights, release: &str) -> Option<Box<dyn WeightSetter>> {
    if !weights.command.is_empty() {
        return Some(Box::new(CommandWeights {
            command: weights.command.clone(),
            timeout: weights.timeout,
            release: release.to_owned(),
        }));
    }
    weights.flagd_file.as_ref().map(|path| {
        Box::new(FlagdWeights {
            path: path.clone(),
            flag: weights.flag.clone(),
            canary: weights.canary_variant.clone(),
            baseline: weights.baseline_variant.clone(),
        }) as Box<dyn WeightSetter>
    })
}

/// The weight as the environment and flagd take it: a number of percent.
fn percent(weight: Weight) -> String {
    weight.percent().normalize().to_string()
}

struct CommandWeights {
    command: Vec<String>,
    timeout: Duration,
    release: String,
}

#[async_trait]
impl WeightSetter for CommandWeights {
    async fn set(&self, weight: Weight) -> Result<(), String> {
        let (program, args) = self.command.split_first().ok_or("an empty weights.command")?;
        let mut child = tokio::process::Command::new(program);
        child
            .args(args)
            .env("SPARK_CANARY_WEIGHT", percent(weight))
            .env("SPARK_CANARY_RELEASE", &self.release)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(self.timeout, child.output())
            .await
            .map_err(|_| format!("{program} did not finish within {}", humantime::format_duration(self.timeout)))?
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: String = stderr.trim().chars().rev().take(300).collect::<Vec<_>>().into_iter().rev().collect();
            Err(format!("{program} exited with {}: {tail}", output.status))
        }
    }

    /// The program only: its arguments may carry a token, and the
    /// description goes into the trail.
    fn describe(&self) -> String {
        format!("command {}", self.command.first().map_or("", String::as_str))
    }
}

struct FlagdWeights {
    path: PathBuf,
    flag: String,
    canary: String,
    baseline: String,
}

#[async_trait]
impl WeightSetter for FlagdWeights {
    async fn set(&self, weight: Weight) -> Result<(), String> {
        let shown = self.path.display();
        let text = tokio::fs::read_to_string(&self.path).await.map_err(|e| format!("{shown}: {e}"))?;
        let mut doc: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{shown} is not JSON: {e}"))?;
        let flag = doc
            .get_mut("flags")
            .and_then(|f| f.get_mut(&self.flag))
            .ok_or_else(|| format!("{shown} has no flag {:?}", self.flag))?;
        let variants = flag.get("variants").and_then(serde_json::Value::as_object);
        for v in [&self.canary, &self.baseline] {
            if !variants.is_some_and(|vs| vs.contains_key(v)) {
                return Err(format!("flag {:?} in {shown} has no variant {v:?}", self.flag));
            }
        }
        let canary: f64 = percent(weight).parse().map_err(|e| format!("{e}"))?;
        let share = |x: f64| serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, serde_json::Value::Number);
        flag["targeting"] = serde_json::json!({
            "fractional": [[self.canary, share(canary)], [self.baseline, share(100.0 - canary)]]
        });
        // Written beside (a name of this process's own), synced, and renamed
        // over, so flagd never reads half a file and a crash never leaves an
        // empty one.
        let tmp = self.path.with_extension(format!("json.spark-{}", std::process::id()));
        let body = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())? + "\n";
        let write = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            tokio::io::AsyncWriteExt::write_all(&mut file, body.as_bytes()).await?;
            file.sync_all().await
        };
        write.await.map_err(|e| format!("{}: {e}", tmp.display()))?;
        tokio::fs::rename(&tmp, &self.path).await.map_err(|e| format!("{shown}: {e}"))
    }

    fn describe(&self) -> String {
        format!("flagd flag {:?} in {}", self.flag, self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flagd_file_gets_the_fractional_split() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flags.json");
        std::fs::write(
            &path,
            r#"{"flags": {"canary": {"state": "ENABLED", "variants": {"canary": true, "baseline": false}, "defaultVariant": "baseline"}}}"#,
        )
        .unwrap();
        let weights = Weights { flagd_file: Some(path.clone()), ..Weights::default() };
        let setter = setter(&weights, "v1").unwrap();
        setter.set("25%".parse().unwrap()).await.unwrap();
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            doc["flags"]["canary"]["targeting"],
            serde_json::json!({"fractional": [["canary", 25.0], ["baseline", 75.0]]})
        );
        let missing = Weights { flag: "nope".to_owned(), ..weights };
        let err = super::setter(&missing, "v1").unwrap().set("5%".parse().unwrap()).await.unwrap_err();
        assert!(err.contains("has no flag \"nope\""), "{err}");
    }

    #[tokio::test]
    async fn a_command_gets_the_weight_and_release() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = format!("echo \"$SPARK_CANARY_WEIGHT $SPARK_CANARY_RELEASE\" > {}", out.display());
        let weights = Weights { command: vec!["sh".into(), "-c".into(), script], ..Weights::default() };
        setter(&weights, "v1.4.0").unwrap().set("0.5%".parse().unwrap()).await.unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "0.5 v1.4.0\n");
        let failing = Weights { command: vec!["sh".into(), "-c".into(), "echo no >&2; exit 3".into()], ..weights };
        let err = setter(&failing, "v1").unwrap().set("5%".parse().unwrap()).await.unwrap_err();
        assert!(err.contains("exit status: 3") && err.ends_with("no"), "{err}");
    }
}
