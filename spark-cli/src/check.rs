//! `spark check`: the blind-spot scan, and `spark check contract`: the
//! idempotency contract battery against a running service.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::Value;
use spark_checks::contract::{self, Auth, ContractOptions, Credential};
use spark_checks::{ChecksError, Config, Context, Outcome, Status};

use crate::db::SPARK_MIGRATIONS;
use crate::output::{CmdResult, Failure, Output};

/// Where the configuration is when `--config` is not given.
const DEFAULT_CONFIG: &str = "spark.toml";

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    #[command(subcommand)]
    command: Option<CheckCommand>,
    /// The configuration file [default: spark.toml in the working directory,
    /// when present]. Every key can also come from SPARK_SECTION_KEY.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run only these checks (comma-separated ids: clock, migrations,
    /// pgbouncer, decimal, backup, observability, slo-alerts,
    /// supply-chain).
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

#[derive(Debug, Subcommand)]
enum CheckCommand {
    /// The Idempotency-Key contract of a running service's endpoint, over
    /// HTTP: missing and over-long keys 400, replays, 422 for another body,
    /// keys per principal, parallel duplicates, a 5xx releasing the key
    /// (exit 0 nothing failed, 1 a case failed or the service is
    /// unreachable, 2 bad usage).
    Contract(ContractArgs),
}

/// The body sent when `--body` is not given: an order the example service
/// accepts, for an account both principals must be allowed on.
const DEFAULT_BODY: &str =
    r#"{"account_id": "contract-acc-1", "symbol": "THYAO", "side": "buy", "quantity": "{{n}}", "price": "101.30"}"#;

#[derive(Debug, Args)]
pub(crate) struct ContractArgs {
    /// The service's base URL (loopback only, e.g. http://127.0.0.1:8080).
    #[arg(long)]
    url: String,
    /// The endpoint under test.
    #[arg(long, default_value = "/v1/orders")]
    path: String,
    /// The first principal's API token, sent as `Authorization: Bearer`;
    /// best passed in the environment, where `ps` does not show it.
    #[arg(long, env = "SPARK_CONTRACT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A second principal's token, for the case "another principal's key is
    /// independent" (skipped without it).
    #[arg(long, env = "SPARK_CONTRACT_OTHER_TOKEN", hide_env_values = true, requires = "token")]
    other_token: Option<String>,
    /// Without --token: the X-Client-Id of the first principal, for a
    /// service run with `--dev-auth header`.
    #[arg(long, default_value = "spark-contract", conflicts_with = "token")]
    client_id: String,
    /// Without --token: the X-Client-Id of the second principal.
    #[arg(long, default_value = "spark-contract-other", conflicts_with = "token")]
    other_client_id: String,
    /// A JSON request body template; `{{n}}` is replaced by the case's
    /// variant number (1, 2, …), so each case sends another request
    /// [default: an order for contract-acc-1 with quantity {{n}}].
    #[arg(long)]
    body: Option<PathBuf>,
    /// A JSON body template the service answers with a 5xx after claiming
    /// the key (a fault you arranged, such as a database trigger refusing
    /// one account); without it the 5xx case is skipped.
    #[arg(long)]
    failing_body: Option<PathBuf>,
    /// Identical requests sent at once.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(2..=1000))]
    parallel: u32,
    /// The longest Idempotency-Key the service accepts.
    #[arg(long, default_value_t = 255, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    max_key_len: u32,
}

pub(crate) async fn run(args: CheckArgs, out: &Output) -> CmdResult {
    if let Some(CheckCommand::Contract(contract)) = args.command {
        return run_contract(contract, out).await;
    }
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

/// A body template: JSON text in which `{{n}}` stands for the variant.
fn template(text: String, what: &str) -> anyhow::Result<contract::MakeRequest> {
    if !text.contains("{{n}}") {
        anyhow::bail!("{what} has no {{{{n}}}}: each case needs another request, so the template must vary with n");
    }
    let render = move |n: u64| text.replace("{{n}}", &n.to_string());
    for n in [1, 2] {
        serde_json::from_str::<Value>(&render(n)).with_context(|| format!("{what} with n = {n} is not JSON"))?;
    }
    // Validated above for numbers of any length: {{n}} stands where digits
    // are valid JSON, so a later variant cannot fail to parse.
    Ok(Arc::new(move |n| serde_json::from_str(&render(n)).unwrap_or(Value::Null)))
}

fn read_template(path: &std::path::Path, flag: &str) -> anyhow::Result<contract::MakeRequest> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {flag} {}", path.display()))?;
    template(text, &format!("{flag} {}", path.display()))
}

async fn run_contract(args: ContractArgs, out: &Output) -> CmdResult {
    let url = crate::loopback::loopback_url(&args.url, "contract tests target this machine only")?;
    let auth = match args.token {
        Some(token) => {
            let auth = Auth::new(Credential::Bearer(token));
            match args.other_token {
                Some(other) => auth.with_other(Credential::Bearer(other)),
                None => auth,
            }
        }
        None => {
            let header = |value: String| Credential::Header { name: "x-client-id".to_owned(), value };
            Auth::new(header(args.client_id)).with_other(header(args.other_client_id))
        }
    };
    let make_request = match &args.body {
        Some(path) => read_template(path, "--body")?,
        None => template(DEFAULT_BODY.to_owned(), "the default body")?,
    };
    let mut options = ContractOptions::new(auth, make_request);
    options.path = args.path;
    options.make_failing_request =
        args.failing_body.as_deref().map(|p| read_template(p, "--failing-body")).transpose()?;
    options.parallel = args.parallel as usize;
    options.max_key_len = args.max_key_len as usize;
    match contract::idempotency(url.as_str(), options).await {
        Ok(report) => {
            let outcome = report.outcome();
            out.emit(&outcome, || report.table())?;
            if outcome.status == Status::Fail { Err(Failure::No) } else { Ok(()) }
        }
        // No service answering is the check failing, not bad usage.
        Err(e @ ChecksError::Unreachable { .. }) => {
            let outcome = Outcome::unreachable(contract::ID, spark_db::error_chain(&e));
            out.emit(&outcome, || format!("FAIL  {}  {}", outcome.id, outcome.summary))?;
            Err(Failure::No)
        }
        Err(e) => Err(e.into()),
    }
}
