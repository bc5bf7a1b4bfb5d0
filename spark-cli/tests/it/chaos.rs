//! `spark chaos up`, `run --all` and `down` end to end on loopback; `spark
//! chaos run --scenario relay-crash` against a fresh PostgreSQL database and
//! the real `spark outbox relay`, SIGKILLed: the hypothesis holds; a relay
//! that publishes nowhere breaks it; bad input exits 2.

use crate::canary::spark_off_runtime;

fn deployment(dir: &std::path::Path, database_url: &str, sink: &str) {
    let config = format!(
        "[database]\nurl = \"{database_url}\"\n[relay]\ncommand = [\"{}\", \"outbox\", \"relay\", \"--sink\", \"webhook\", \"--url\", \"{sink}\", \"--database-url\", \"{{database_url}}\", \"--poll-interval-ms\", \"100\"]\n",
        env!("CARGO_BIN_EXE_spark")
    );
    std::fs::write(dir.join("chaos.toml"), config).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_crash_holds_against_the_real_relay() {
    let Some(pg) = spark_testkit::postgres().await else { return };
    let dir = tempfile::tempdir().unwrap();
    deployment(dir.path(), &pg.url, "{sink_url}");
    let run = spark_off_runtime(
        dir.path(),
        &["chaos", "run", "--scenario", "relay-crash", "--config", "chaos.toml", "--json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let json = run.json();
    let report = &json["experiments"][0];
    assert_eq!(report["scenario"], "relay-crash");
    assert_eq!(report["held"], true, "{report:#}");
    let invariants = report["invariants"].as_array().unwrap();
    let names: Vec<&str> = invariants.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["lost", "per-aggregate-order", "one-effect-per-event", "fault-injected", "drained"]);
    assert!(invariants[3]["value"].as_str().unwrap().starts_with("10 of 10 relays died of SIGKILL; "), "{report:#}");
    let after = &report["measurements"]["after"];
    // The fault met a relay at work: events were applied while it was
    // being killed.
    assert!(report["measurements"]["during"]["events_applied"].as_u64().unwrap() > 0, "{report:#}");
    eprintln!(
        "relay-crash: {} ms, {} duplicates absorbed, drain {} ms ({} events/s)",
        report["duration_ms"], after["duplicates"], after["drain_ms"], after["drain_events_per_second"]
    );
    let files = json["files"].as_array().unwrap();
    assert!(files[0]["name"].as_str().unwrap().starts_with("chaos_relay-crash_"), "{files:?}");

    // It leaves the outbox empty, so it runs again on the same database.
    let small =
        spark_chaos::RELAY_CRASH_TOML.replace("events = 2000", "events = 100").replace("rounds = 10", "rounds = 2");
    std::fs::write(dir.path().join("small.toml"), small).unwrap();
    let again =
        spark_off_runtime(dir.path(), &["chaos", "run", "--scenario-file", "small.toml", "--config", "chaos.toml"])
            .await;
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_that_publishes_nowhere_breaks_the_hypothesis() {
    let Some(pg) = spark_testkit::postgres().await else { return };
    let dir = tempfile::tempdir().unwrap();
    // Port 9 (discard) is closed on loopback: every publish fails.
    deployment(dir.path(), &pg.url, "http://127.0.0.1:9/hook");
    let scenario = spark_chaos::RELAY_CRASH_TOML
        .replace("events = 2000", "events = 50")
        .replace("aggregates = 40", "aggregates = 5")
        .replace("rounds = 10", "rounds = 1")
        .replace("kill_every = \"500ms\"", "kill_every = \"200ms\"")
        .replace("drain_timeout = \"60s\"", "drain_timeout = \"2s\"");
    std::fs::write(dir.path().join("small.toml"), scenario).unwrap();
    let run =
        spark_off_runtime(dir.path(), &["chaos", "run", "--scenario-file", "small.toml", "--config", "chaos.toml"])
            .await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("verdict:    FAILED"), "{}", run.stdout);
    assert!(run.stdout.contains("lost                   BROKEN  50 of 50 events never applied"), "{}", run.stdout);
}

#[test]
fn bad_input_exits_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    deployment(dir.path(), "postgres://postgres@db.example:5432/x", "{sink_url}");
    std::fs::write(
        dir.path().join("local.toml"),
        "[database]\nurl = \"postgres://postgres@127.0.0.1:5432/x\"\n[relay]\ncommand = [\"spark\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("elsewhere.toml"),
        "[database]\nurl = \"postgres://postgres@127.0.0.1:5432/x\"\n[relay]\ncommand = [\"spark\", \"--url\", \"https://hooks.example.com/x\"]\n",
    )
    .unwrap();
    for (args, expected) in [
        (&["chaos", "run", "--scenario", "meteor", "--config", "chaos.toml"][..], "no built-in scenario \"meteor\""),
        (&["chaos", "run", "--config", "chaos.toml"], "name a --scenario"),
        (&["chaos", "run", "--scenario", "relay-crash", "--config", "chaos.toml"], "loopback only"),
        (&["chaos", "run", "--scenario", "db-restart", "--config", "local.toml"], "db-restart needs [service] url"),
        (&["chaos", "run", "--scenario", "relay-crash", "--config", "missing.toml"], "missing.toml: No such file"),
        (&["chaos", "run", "--scenario", "relay-crash", "--config", "elsewhere.toml"], "loopback only"),
    ] {
        let run = crate::spark_with(args, Some(dir.path()), &[]);
        assert_eq!(run.code, 2, "{args:?}: {}{}", run.stdout, run.stderr);
        assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
        assert!(run.stderr.contains(expected), "{args:?}: {}", run.stderr);
    }
}

/// Stops the deployment however the test ends.
struct Down(std::path::PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = crate::spark_with(&["chaos", "down", "--dir", &self.0.display().to_string()], None, &[]);
    }
}

/// One deployment at a time: two at once on two cores would measure each
/// other.
static ONE_STACK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether `spark chaos up` can run here: pgBouncer, Prometheus, the
/// PostgreSQL server programs and the order-service binary (one skip line
/// otherwise; a failure under SPARK_REQUIRE_SERVICES=1).
async fn stack_available() -> bool {
    if !spark_testkit::binary_available("pgbouncer", "chaos up")
        || !spark_testkit::binary_available("prometheus", "chaos up")
        || !spark_testkit::binary_available("faketime", "chaos up")
        || spark_testkit::cluster::PgCluster::start(&[]).await.is_none()
    {
        return false;
    }
    let order_service = std::path::Path::new(env!("CARGO_BIN_EXE_spark")).with_file_name("order-service");
    if !order_service.is_file() {
        assert!(
            !spark_testkit::services_required(),
            "{} is missing: `cargo test --workspace` builds it",
            order_service.display()
        );
        eprintln!("skipped: chaos up tests need {} (cargo build -p order-service)", order_service.display());
        return false;
    }
    true
}

/// `spark chaos up --dir DIR/stack` with `env`; stopped when the guard drops.
async fn up(dir: &std::path::Path, env: &[(&str, &str)]) -> Down {
    let down = Down(dir.join("stack"));
    let (cwd, env): (std::path::PathBuf, Vec<(String, String)>) =
        (dir.to_owned(), env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect());
    let run = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        crate::spark_with(&["chaos", "up", "--dir", "stack"], Some(&cwd), &env)
    })
    .await
    .unwrap();
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("next: spark chaos run --all"), "{}", run.stdout);
    down
}

/// The whole suite on the deployment `spark chaos up` starts: every
/// hypothesis holds, each experiment writes its evidence, and `down` stops
/// every process. Bounded: each experiment bounds itself in time and count.
#[tokio::test(flavor = "multi_thread")]
async fn chaos_up_run_all_down() {
    let _one = ONE_STACK.lock().await;
    if !stack_available().await {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stack");
    let started = std::time::Instant::now();
    let _down = up(tmp.path(), &[]).await;
    let up_s = started.elapsed().as_secs_f64();
    let config = std::fs::read_to_string(dir.join("chaos.toml")).unwrap();
    for section in ["[database]", "[relay]", "[service]", "[pgbouncer]", "[proxy]", "[prometheus]"] {
        assert!(config.contains(section), "{section} missing from {config}");
    }

    let run = spark_off_runtime(tmp.path(), &["chaos", "run", "--all", "--config", "stack/chaos.toml", "--json"]).await;
    let json = run.json();
    let experiments = json["experiments"].as_array().unwrap();
    let names: Vec<&str> = experiments.iter().map(|e| e["scenario"].as_str().unwrap()).collect();
    assert_eq!(names, spark_chaos::SCENARIOS.map(|(n, _)| n));
    for e in experiments {
        eprintln!("{}: held {} in {} ms", e["scenario"], e["held"], e["duration_ms"]);
        for i in e["invariants"].as_array().unwrap() {
            eprintln!("  {} {} {}", i["name"], i["held"], i["value"]);
        }
        eprintln!("  measurements {}", e["measurements"]);
    }
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(experiments.iter().all(|e| e["held"] == true));
    assert_eq!(json["files"].as_array().unwrap().len(), 2 * experiments.len());
    eprintln!("chaos up {up_s:.1} s; the suite {:.1} s", started.elapsed().as_secs_f64() - up_s);

    // Every part `up` started, by the process ids it recorded.
    let parts: Vec<(String, u32)> = std::fs::read_to_string(dir.join("parts.pid"))
        .unwrap()
        .lines()
        .map(|l| {
            // `name pid start-time`
            let words: Vec<&str> = l.split_whitespace().collect();
            (words[0].to_owned(), words[1].parse().unwrap())
        })
        .collect();
    let names: Vec<&str> = parts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["pgbouncer", "order-service", "prometheus"]);
    let down = spark_off_runtime(tmp.path(), &["chaos", "down", "--dir", "stack"]).await;
    assert_eq!(down.code, 0, "{}{}", down.stdout, down.stderr);
    assert!(!dir.join("pg/data/postmaster.pid").exists(), "PostgreSQL still runs");
    for (name, pid) in &parts {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let running = stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'));
        assert!(!running, "{name} (pid {pid}) still runs after down");
    }
    assert!(!dir.join("chaos.toml").exists());
    // A second down (a scheduler's cleanup after the run stopped it)
    // succeeds, saying nothing was running; up starts afresh in the
    // directory a stopped deployment left.
    let again = spark_off_runtime(tmp.path(), &["chaos", "down", "--dir", "stack"]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.contains("nothing was running"), "{}", again.stdout);
}

/// The experiment catches what it is about: a service whose pool waits 10 s
/// for a connection (load queued, not shed; the service's default is 2 s)
/// breaks pool-exhaustion's `sheds-quickly`.
#[tokio::test(flavor = "multi_thread")]
async fn pool_exhaustion_catches_a_service_that_queues_instead_of_shedding() {
    let _one = ONE_STACK.lock().await;
    if !stack_available().await {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let _down = up(tmp.path(), &[("ORDER_SERVICE_DB_ACQUIRE_TIMEOUT_MS", "10000")]).await;
    let scenario = spark_chaos::SCENARIOS[4].1.replace("steady = \"5s\"", "steady = \"3s\"");
    std::fs::write(tmp.path().join("queues.toml"), scenario).unwrap();
    let run = spark_off_runtime(
        tmp.path(),
        &["chaos", "run", "--scenario-file", "queues.toml", "--config", "stack/chaos.toml", "--json"],
    )
    .await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let report = &run.json()["experiments"][0];
    let invariant =
        |name: &str| report["invariants"].as_array().unwrap().iter().find(|i| i["name"] == name).unwrap().clone();
    assert_eq!(invariant("fault-injected")["held"], true, "{report:#}");
    assert_eq!(invariant("sheds-quickly")["held"], false, "{report:#}");
    eprintln!("a service that queues: {}", invariant("sheds-quickly")["value"]);
}
