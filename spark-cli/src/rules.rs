//! `spark rules export`: Prometheus rules, their promtool tests and a
//! Grafana dashboard, generated from the canary plan's triggers.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use serde_json::json;
use spark_rollback::Plan;
use spark_rollback::export::{ExportOptions, prometheus_rules, promtool_tests};

use crate::output::{CmdResult, Output};

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The plan file (TOML) [default: the built-in plan].
    #[arg(long)]
    plan: Option<PathBuf>,
    /// Where to write the Prometheus rules (YAML).
    #[arg(long)]
    prometheus_rules: PathBuf,
    /// Where to write the promtool unit tests; they name the rules file
    /// relative to their own directory.
    #[arg(long)]
    promtool_tests: Option<PathBuf>,
    /// Where to write the Grafana dashboard (JSON).
    #[arg(long)]
    grafana: Option<PathBuf>,
    /// The rules' evaluation interval: the step the engine's snapshots use.
    #[arg(long, default_value_t = 15)]
    step_seconds: u32,
    /// Where the runbook lives; each alert links `<this>#<trigger id>`.
    #[arg(long, default_value = "spark-rollback/README.md")]
    runbook_base: String,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum RulesCommand {
    /// Write the Prometheus rules (recording rules, an alert per trigger,
    /// absent() companions), promtool tests proving each alert fires when
    /// the engine rolls back, and a Grafana dashboard.
    Export(ExportArgs),
}

/// The path from `from_dir` to `file` (with `..` where needed), which is
/// how promtool resolves a test file's `rule_files`.
fn relative(file: &Path, from_dir: &Path) -> anyhow::Result<String> {
    let abs = |p: &Path| std::path::absolute(p).with_context(|| format!("resolving {}", p.display()));
    let (file, dir) = (abs(file)?, abs(from_dir)?);
    let (file, dir): (Vec<_>, Vec<_>) = (file.components().collect(), dir.components().collect());
    let common = file.iter().zip(&dir).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..dir.len() {
        out.push("..");
    }
    for part in &file[common..] {
        out.push(part);
    }
    Ok(out.display().to_string())
}

pub(crate) fn run(cmd: RulesCommand, out: &Output) -> CmdResult {
    let RulesCommand::Export(args) = cmd;
    let plan = match &args.plan {
        Some(path) => Plan::load(path)?,
        None => Plan::default(),
    };
    let options = ExportOptions { step_seconds: args.step_seconds.max(1), runbook_base: args.runbook_base };
    let write =
        |path: &Path, text: &str| std::fs::write(path, text).with_context(|| format!("writing {}", path.display()));
    write(&args.prometheus_rules, &prometheus_rules(&plan, &options))?;
    let mut written = vec![args.prometheus_rules.display().to_string()];
    if let Some(tests) = &args.promtool_tests {
        let dir = tests.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let text = promtool_tests(&plan, &options, &relative(&args.prometheus_rules, dir)?)?;
        write(tests, &text)?;
        written.push(tests.display().to_string());
    }
    if let Some(dashboard) = &args.grafana {
        let text = serde_json::to_string_pretty(&spark_rollback::dashboard::grafana_dashboard(&plan))?;
        write(dashboard, &(text + "\n"))?;
        written.push(dashboard.display().to_string());
    }
    out.emit(&json!({ "written": written }), || format!("wrote {}", written.join(", ")))
}
