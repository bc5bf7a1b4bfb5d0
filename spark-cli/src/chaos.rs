//! `spark chaos up|down|run`: a deployment on loopback to break, and fault
//! experiments against any deployment described in `chaos.toml`, by
//! `spark_chaos`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use spark_chaos::{Deployment, ExperimentReport, PgBin, SCENARIOS, Scenario, Stack, StackOptions};
use spark_evidence::EvidenceDir;

use crate::output::{CmdResult, Failure, Output};

#[derive(Debug, Subcommand)]
pub(crate) enum ChaosCommand {
    /// Start a deployment on loopback (PostgreSQL with WAL archiving, the
    /// fault proxy, pgBouncer, the order service, Prometheus when
    /// installed) and write DIR/chaos.toml; it runs until `spark chaos
    /// down`.
    Up(UpArgs),
    /// Stop the deployment `up` started in DIR.
    Down(DownArgs),
    /// Run experiments against the deployment in chaos.toml and write
    /// chaos_SCENARIO_UTC-STAMP.txt and .json for each (exit 0 every
    /// hypothesis held, 1 one did not, 2 bad input).
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// The deployment's directory (cluster, logs, chaos.toml).
    #[arg(long, default_value = "chaos")]
    dir: PathBuf,
    /// The order-service program [default: next to spark, else on PATH].
    #[arg(long)]
    order_service: Option<PathBuf>,
    /// Stay in the foreground until Ctrl-C or SIGTERM (what `up` runs
    /// detached).
    #[arg(long)]
    foreground: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DownArgs {
    /// The deployment's directory.
    #[arg(long, default_value = "chaos")]
    dir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The deployment (`spark chaos up` writes DIR/chaos.toml).
    #[arg(long, default_value = "chaos/chaos.toml")]
    config: PathBuf,
    /// A built-in scenario: relay-crash, db-restart, db-latency,
    /// sink-outage, pool-exhaustion, clock-skew.
    #[arg(long, conflicts_with_all = ["scenario_file", "all"])]
    scenario: Option<String>,
    /// A scenario file of your own (a copy of a built-in one, changed).
    #[arg(long, conflicts_with = "all")]
    scenario_file: Option<PathBuf>,
    /// Every built-in scenario, one after another.
    #[arg(long)]
    all: bool,
    /// Where the reports go.
    #[arg(long, default_value = "evidence")]
    evidence_dir: PathBuf,
}

pub(crate) async fn run(cmd: ChaosCommand, out: &Output) -> CmdResult {
    match cmd {
        ChaosCommand::Up(args) => up(args, out).await,
        ChaosCommand::Down(args) => {
            let was_running = spark_chaos::down(&args.dir, &PgBin::find()?).await?;
            let json = serde_json::json!({"dir": args.dir, "stopped": was_running});
            out.emit(&json, || {
                if was_running {
                    format!("the chaos deployment in {} is stopped", args.dir.display())
                } else {
                    format!("nothing was running in {}", args.dir.display())
                }
            })
        }
        ChaosCommand::Run(args) => run_experiments(args, out).await,
    }
}

async fn up(args: UpArgs, out: &Output) -> CmdResult {
    let spark = std::env::current_exe().context("cannot find the spark program")?;
    let order_service = match args.order_service {
        Some(path) => path,
        None => find_order_service(&spark)?,
    };
    if !args.foreground {
        let argv: Vec<String> = [
            spark.display().to_string(),
            "chaos".into(),
            "up".into(),
            "--foreground".into(),
            "--dir".into(),
            args.dir.display().to_string(),
            "--order-service".into(),
            order_service.display().to_string(),
        ]
        .into();
        let deployment = spark_chaos::up_detached(&argv, &args.dir, Duration::from_secs(120)).await?;
        return out.emit(&deployment, || {
            format!(
                "chaos deployment up in {0} ({0}/up.log)\n{1}\nnext: spark chaos run --all --config {0}/chaos.toml",
                args.dir.display(),
                summary(&deployment)
            )
        });
    }
    let options = StackOptions { dir: args.dir.clone(), order_service, spark, pg: PgBin::find()? };
    // A signal while starting drops the half-built deployment, which stops
    // what it had started.
    let stack = tokio::select! {
        stack = Stack::up(&options) => stack?,
        () = interrupted() => return Err(anyhow::anyhow!("interrupted while starting; what had started is stopped").into()),
    };
    eprintln!("chaos deployment up in {}\n{}", stack.dir().display(), summary(stack.deployment()));
    interrupted().await;
    stack.down().await?;
    eprintln!("chaos deployment stopped");
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn interrupted() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `order-service` beside the `spark` program (a cargo target directory),
/// else on `PATH`.
fn find_order_service(spark: &std::path::Path) -> anyhow::Result<PathBuf> {
    let beside = spark.with_file_name("order-service");
    if beside.is_file() {
        return Ok(beside);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("order-service"))
        .find(|p| p.is_file())
        .context("order-service is neither beside spark nor on PATH: build it (cargo build -p order-service) or pass --order-service")
}

fn summary(d: &Deployment) -> String {
    let mut t = format!("  database    {}", d.database.url);
    if let Some(p) = &d.proxy {
        let _ = write!(t, "\n  fault proxy {} (proxy {:?})", p.api, p.postgres);
    }
    if let Some(b) = &d.pgbouncer {
        let _ = write!(t, "\n  pgbouncer   {}", b.url);
    }
    if let Some(s) = &d.service {
        let _ = write!(t, "\n  service     {}", s.url);
    }
    match &d.prometheus {
        Some(p) => {
            let _ = write!(t, "\n  prometheus  {}", p.url);
        }
        None => t.push_str("\n  prometheus  not installed"),
    }
    t
}

async fn run_experiments(args: RunArgs, out: &Output) -> CmdResult {
    let deployment = Deployment::load(&args.config)?;
    let scenarios: Vec<Scenario> = match (&args.scenario, &args.scenario_file, args.all) {
        (_, _, true) => SCENARIOS.iter().map(|(name, _)| Scenario::builtin(name)).collect::<Result<_, _>>()?,
        (_, Some(path), _) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            vec![Scenario::from_toml(&text)?]
        }
        (Some(name), None, false) => vec![Scenario::builtin(name)?],
        (None, None, false) => {
            return Err(anyhow::anyhow!(
                "name a --scenario ({}), a --scenario-file or --all",
                SCENARIOS.map(|(n, _)| n).join(", ")
            )
            .into());
        }
    };
    let evidence = EvidenceDir::create(&args.evidence_dir)?;
    let clock = spark_db::system_clock();
    let bar = crate::progress::bar(scenarios.len() as u64, "experiments", out.is_json());
    let mut reports: Vec<ExperimentReport> = Vec::new();
    let mut files = Vec::new();
    for scenario in &scenarios {
        bar.set_message(scenario.name().to_owned());
        // Ctrl-C or SIGTERM drops the experiment, which kills its relays
        // and stops its sink; then its faults are cleared.
        let report = tokio::select! {
            report = spark_chaos::run(scenario, &deployment, &clock) => report,
            () = interrupted() => {
                bar.finish_and_clear();
                let cleared = spark_chaos::clear_faults(&deployment).await;
                return Err(anyhow::anyhow!(
                    "interrupted during {}: nothing was judged; {}",
                    scenario.name(),
                    cleared.join("; ")
                )
                .into());
            }
        };
        let report = match report {
            Ok(report) => report,
            Err(e) => {
                bar.finish_and_clear();
                return Err(Failure::Input(
                    anyhow::Error::from(e).context(format!("{} could not run", scenario.name())),
                ));
            }
        };
        files.extend(report.write(&evidence)?);
        bar.println(format!(
            "{:<16} {:<6} {:.1} s",
            report.scenario,
            if report.held { "held" } else { "FAILED" },
            Duration::from_millis(report.duration_ms).as_secs_f64()
        ));
        bar.inc(1);
        reports.push(report);
    }
    bar.finish_and_clear();
    let held = reports.iter().all(|r| r.held);
    let json = serde_json::json!({"experiments": &reports, "held": held, "files": files});
    let text = || {
        let mut t = String::new();
        for r in &reports {
            t.push_str(&r.to_text());
            t.push('\n');
        }
        for f in &files {
            let _ = writeln!(t, "written: {}", f.path.display());
        }
        let failed: Vec<&str> = reports.iter().filter(|r| !r.held).map(|r| r.scenario.as_str()).collect();
        if failed.is_empty() {
            let _ = write!(t, "every hypothesis held ({} experiments)", reports.len());
        } else {
            let _ = write!(t, "FAILED: {}", failed.join(", "));
        }
        t
    };
    if held { out.emit(&json, text) } else { out.refuse(&json, &text(), true) }
}
