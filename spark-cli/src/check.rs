//! `spark check`: the blind-spot scan.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use spark_checks::{Config, Context, Status};

use crate::db::SPARK_MIGRATIONS;
use crate::output::{CmdResult, Failure, Output};

/// Where the configuration is when `--config` is not given.
const DEFAULT_CONFIG: &str = "spark.toml";

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The configuration file [default: spark.toml in the working directory,
    /// when present]. Every key can also come from SPARK_SECTION_KEY.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run only these checks (comma-separated ids: clock, migrations,
    /// pgbouncer, decimal, backup, observability, slo-alerts).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also write the report as JUnit XML to this file.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Write blind_spots_scan.txt, blind_spots_scan.json and one
    /// blind_spots_ID.json per check into this directory.
    #[arg(long)]
    evidence_dir: Option<PathBuf>,
}

pub(crate) async fn run(args: CheckArgs, out: &Output) -> CmdResult {
    let mut config = match &args.config {
        Some(path) => Config::load(path, true)?,
        None => Config::load(DEFAULT_CONFIG.as_ref(), false)?,
    };
    if !args.only.is_empty() {
        config.check.only = args.only;
    }
    let checks = spark_checks::select(spark_checks::checks::all(), &config.check.only)?;
    let ctx = Arc::new(Context::new(config).with_migrations(&SPARK_MIGRATIONS));
    let report = spark_checks::scan(&ctx, checks).await;
    if let Some(path) = &args.junit {
        let xml = report.junit()?;
        std::fs::write(path, xml).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    let mut json = report.to_json();
    if let Some(dir) = &args.evidence_dir {
        let files = report.write_evidence(dir)?;
        json["evidence"] = serde_json::to_value(&files)?;
    }
    out.emit(&json, || report.table())?;
    if report.status == Status::Fail { Err(Failure::No) } else { Ok(()) }
}
