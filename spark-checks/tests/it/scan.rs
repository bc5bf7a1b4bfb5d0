//! `scan` over all checks: hung and unreachable targets, nothing
//! configured, and secrets kept out of every output.

use std::sync::Arc;
use std::time::Duration;

use spark_checks::{Check, Config, Context, Measurement, Outcome, Report, Status};

use crate::config;

async fn scan(config: Config) -> Report {
    spark_checks::scan(&Arc::new(Context::new(config)), spark_checks::checks::all()).await
}

/// The checks that read the database (the others read Prometheus,
/// Alertmanager or files).
pub(crate) const DATABASE_CHECKS: [&str; 5] = ["clock", "migrations", "pgbouncer", "decimal", "backup"];

#[tokio::test]
async fn a_hung_target_fails_every_check_within_the_timeout() {
    // Accepts connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let report = scan(config(&format!(
        "[check]\ntimeout_ms = 1000\n[database]\nurl = \"postgres://x@127.0.0.1:{port}/db\"\n[clock]\nntp = false\n"
    )))
    .await;
    acceptor.abort();
    for id in DATABASE_CHECKS {
        let o = report.check(id).unwrap();
        assert_eq!(o.status, Status::Fail, "{o:#?}");
        assert!(o.summary.contains("timed out after 1000 ms"), "{o:#?}");
        assert!(o.duration < Duration::from_millis(1500), "{o:#?}");
    }
    assert_eq!(report.status, Status::Fail);
    eprintln!("measured: the scan of a hung target took {:?}", report.duration);
    // A correctness bound: the checks run concurrently under one timeout.
    assert!(report.duration < Duration::from_secs(3), "the scan took {:?}", report.duration);
}

#[tokio::test]
async fn an_unreachable_port_fails_never_passes() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let report = scan(config(&format!(
        "[check]\ntimeout_ms = 3000\n[database]\nurl = \"postgres://x@127.0.0.1:{port}/db\"\n[clock]\nntp = false\n"
    )))
    .await;
    for id in DATABASE_CHECKS {
        let o = report.check(id).unwrap();
        assert_eq!(o.status, Status::Fail, "{o:#?}");
        // Refused at once, and said so: not a timeout.
        assert!(o.summary.contains(&format!("cannot connect to postgres://x@127.0.0.1:{port}/db")), "{o:#?}");
        assert!(o.summary.contains("refused"), "{o:#?}");
    }
    assert_eq!(report.status, Status::Fail);
    assert!(report.duration < Duration::from_secs(2), "the scan took {:?}", report.duration);
    eprintln!("measured: the scan of a closed port took {:?}", report.duration);
}

#[tokio::test]
async fn nothing_configured_skips_with_reasons_and_is_not_a_pass() {
    let report = scan(config("[clock]\nntp = false\n")).await;
    for o in &report.checks {
        assert_eq!(o.status, Status::Skip, "{o:#?}");
        // Each names the key of spark.toml to set.
        assert!(spark_checks::config::KEYS.iter().any(|k| o.summary.contains(k.key)), "{o:#?}");
    }
    assert_eq!(report.status, Status::Warn);
    assert_eq!(spark_checks::overall(&report.checks), Status::Warn);
}

#[tokio::test]
async fn a_password_never_reaches_any_output() {
    let Some(db) = spark_testkit::postgres().await else { return };
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    let url = format!("postgres://postgres:hunter2@127.0.0.1:5432/{name}");
    let env = move |var: &str| (var == "SPARK_DATABASE_URL").then(|| url.clone());
    let config = Config::from_toml_str("[clock]\nntp = false\n", env).unwrap();
    assert_eq!(config.secrets(), ["hunter2"]);
    let mut checks = spark_checks::checks::all();
    checks.push(Arc::new(Echo));
    let report = spark_checks::scan(&Arc::new(Context::new(config)), checks).await;
    eprintln!(
        "measured: a scan of a fresh database on the shared server took {:?}\n{}",
        report.duration,
        report.table()
    );
    // The checks did reach the database with that URL.
    assert_ne!(report.check("migrations").unwrap().status, Status::Skip);
    assert!(report.check("decimal").unwrap().details["numeric_round_trip"] == "101.30", "{report:#?}");

    let mut outputs =
        vec![report.to_json().to_string(), report.table(), report.junit().unwrap(), report.evidence_text()];
    let dir = tempfile::tempdir().unwrap();
    for file in report.write_evidence(dir.path()).unwrap() {
        outputs.push(std::fs::read_to_string(&file.path).unwrap());
    }
    for out in &outputs {
        assert!(!out.contains("hunter2"), "{out}");
    }
    // What the echoing check wrote is there, with the password starred.
    let echo = report.check("echo").unwrap();
    assert!(echo.summary.contains("postgres://postgres:***@127.0.0.1:5432/"), "{echo:#?}");
}

/// A check whose target echoes the URL back, password and all: the scan
/// must scrub it from wherever it lands.
struct Echo;

#[async_trait::async_trait]
impl Check for Echo {
    fn id(&self) -> &'static str {
        "echo"
    }

    async fn run(&self, ctx: &Context) -> Outcome {
        let url = ctx.config().database.url.clone().unwrap_or_default();
        let mut o = Outcome::new(self.id());
        o.found(Status::Warn, format!("the target said: {url}"));
        o.measure(Measurement::info(format!("latency of {url}"), 1.0, "ms"));
        o.detail("echo", serde_json::json!({"nested": [url.clone()]}));
        o.finish("")
    }
}
