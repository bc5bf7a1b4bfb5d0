//! `pgbouncer` against a real pgBouncer in front of a fresh database on the
//! shared server.
//!
//! The tests of this module run one at a time: the check reads
//! `pg_stat_activity` server-wide, so one test's connections held in a
//! transaction would show in another's measurements. (Another process's
//! session idle in a transaction on the shared server for seconds would
//! show too; the tests with second-scale limits say so where it matters.)

use std::str::FromStr as _;
use std::time::Duration;

use spark_checks::checks::PgbouncerCheck;
use spark_checks::{Outcome, Status};
use spark_testkit::PgTestDb;
use spark_testkit::pgbouncer::{Pgbouncer, PoolMode};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection};
use tokio::sync::{Mutex, MutexGuard};

use crate::{assert_status, config, has_finding, measurement, run};

async fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::const_new(());
    SERIAL.lock().await
}

/// A fresh database, a pgBouncer in front of its server, and the pool for
/// the database opened through pgBouncer.
struct Setup {
    db: PgTestDb,
    bouncer: Pgbouncer,
    name: String,
}

impl Setup {
    async fn start(mode: PoolMode, pool_size: u32) -> Option<Setup> {
        let db = spark_testkit::postgres().await?;
        let bouncer = Pgbouncer::builder(&db.url).pool_mode(mode).default_pool_size(pool_size).start().await?;
        let name = PgConnectOptions::from_str(&db.url).unwrap().get_database().unwrap().to_owned();
        let setup = Setup { db, bouncer, name };
        // The pool exists once a client has used it.
        let mut conn = setup.client().await;
        sqlx::raw_sql("SELECT 1").execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        Some(setup)
    }

    /// The application's database through pgBouncer.
    fn pooled_url(&self) -> String {
        self.bouncer.url(&self.name)
    }

    async fn client(&self) -> PgConnection {
        PgConnection::connect(&self.pooled_url()).await.unwrap()
    }

    /// `n` clients through pgBouncer, each holding a server connection in
    /// an open transaction.
    async fn hold(&self, n: usize) -> Vec<PgConnection> {
        let mut held = Vec::new();
        for _ in 0..n {
            let mut conn = self.client().await;
            sqlx::raw_sql("BEGIN; SELECT 1;").execute(&mut conn).await.unwrap();
            held.push(conn);
        }
        held
    }

    /// The configuration: the direct URL, the admin console, the pool name,
    /// then `extra`.
    fn config(&self, extra: &str) -> spark_checks::Config {
        config(&format!(
            "[database]\nurl = {:?}\n{extra}\n[pgbouncer]\nadmin_url = {:?}\ndatabase = {:?}\n",
            self.db.url,
            self.bouncer.admin_url(),
            self.name
        ))
    }
}

async fn check(setup: &Setup) -> Outcome {
    run(&PgbouncerCheck, setup.config("")).await
}

#[tokio::test]
async fn session_mode_fails() {
    let _serial = serial().await;
    let Some(s) = Setup::start(PoolMode::Session, 10).await else { return };
    // LISTEN through a session pool works: only the pool mode fails.
    let o = run(&PgbouncerCheck, s.config(&format!("listen_url = {:?}\n", s.pooled_url()))).await;
    assert_status(&o, Status::Fail);
    assert!(has_finding(&o, Status::Fail, &format!("pool {:?} is in session mode", s.name)), "{o:#?}");
    assert_eq!(o.findings.len(), 1, "{o:#?}");
    assert_eq!(o.details["pool_mode"], "session");
    measurement(&o, "notify_delivered_ms (listen_url)");
}

#[tokio::test]
async fn a_pool_pgbouncer_does_not_know_fails() {
    let _serial = serial().await;
    let Some(s) = Setup::start(PoolMode::Transaction, 10).await else { return };
    let o = run(
        &PgbouncerCheck,
        config(&format!(
            "[database]\nurl = {:?}\n[pgbouncer]\nadmin_url = {:?}\ndatabase = \"no_such_pool\"\n",
            s.db.url,
            s.bouncer.admin_url()
        )),
    )
    .await;
    assert_status(&o, Status::Fail);
    assert!(has_finding(&o, Status::Fail, "pgBouncer has no database \"no_such_pool\""), "{o:#?}");
}

#[tokio::test]
async fn an_idle_transaction_pool_passes() {
    let _serial = serial().await;
    let Some(s) = Setup::start(PoolMode::Transaction, 10).await else { return };
    let o = check(&s).await;
    assert_status(&o, Status::Pass);
    assert_eq!(o.details["pool_mode"], "transaction");
    assert_eq!(o.details["pool_size"], 10.0);
    assert_eq!(o.details["version"], "1.18");
    assert_eq!(measurement(&o, "saturation").value, 0.0);
    assert!(o.summary.contains("in transaction mode, 0/10 server connections active"), "{o:#?}");
}

#[tokio::test]
async fn seven_of_ten_busy_server_connections_warn() {
    let _serial = serial().await;
    let Some(s) = Setup::start(PoolMode::Transaction, 10).await else { return };
    let _held = s.hold(7).await;
    let o = check(&s).await;
    let saturation = measurement(&o, "saturation");
    assert_eq!((saturation.value, saturation.status), (70.0, Status::Warn), "{o:#?}");
    assert_eq!(measurement(&o, "sv_active").value, 7.0);
    assert_status(&o, Status::Warn);
}

#[tokio::test]
async fn nine_of_ten_busy_server_connections_fail() {
    let _serial = serial().await;
    let Some(s) = Setup::start(PoolMode::Transaction, 10).await else { return };
    let _held = s.hold(9).await;
    let o = check(&s).await;
    let saturation = measurement(&o, "saturation");
    assert_eq!((saturation.value, saturation.status), (90.0, Status::Fail), "{o:#?}");
    assert_status(&o, Status::Fail);
}

#[tokio::test]
async fn a_waiting_client_warns_and_a_long_wait_fails() {
    let _serial = serial().await;
    let Some(s) = Setup::start(PoolMode::Transaction, 2).await else { return };
    let held = s.hold(2).await;
    let mut waiter = s.client().await;
    let waiting = tokio::spawn(async move {
        sqlx::raw_sql("SELECT 1").execute(&mut waiter).await.unwrap();
        waiter
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let o = check(&s).await;
    let waiting_now = measurement(&o, "cl_waiting");
    assert_eq!((waiting_now.value, waiting_now.status), (1.0, Status::Warn), "{o:#?}");
    let maxwait = measurement(&o, "maxwait_ms");
    assert!(maxwait.value < 1000.0 && maxwait.status == Status::Pass, "{o:#?}");

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let o = check(&s).await;
    let maxwait = measurement(&o, "maxwait_ms");
    assert!(maxwait.value > 1000.0 && maxwait.status == Status::Fail, "{o:#?}");
    assert!(maxwait.value < 10_000.0, "maxwait read in the wrong unit: {maxwait:?}");
    eprintln!("measured: maxwait_ms = {} after about 1.5 s", maxwait.value);
    assert_status(&o, Status::Fail);

    // Releasing a server connection lets the waiting client through.
    drop(held);
    tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
}

#[tokio::test]
async fn listen_through_a_transaction_pool_fails() {
    let _serial = serial().await;
    let Some(s) = Setup::start(PoolMode::Transaction, 10).await else { return };
    let o = run(
        &PgbouncerCheck,
        config(&format!(
            "[database]\nurl = {:?}\nlisten_url = {:?}\n[pgbouncer]\nadmin_url = {:?}\ndatabase = {:?}\nnotify_timeout_ms = 1500\n",
            s.db.url,
            s.pooled_url(),
            s.bouncer.admin_url(),
            s.name
        )),
    )
    .await;
    assert_status(&o, Status::Fail);
    assert!(has_finding(&o, Status::Fail, "listen_url postgres://"), "{o:#?}");
    assert!(has_finding(&o, Status::Fail, "did not receive a NOTIFY sent directly within 1500 ms"), "{o:#?}");
    // Migrations go to the direct URL, which hears its NOTIFY.
    measurement(&o, "notify_delivered_ms (migration_url)");

    let o = run(
        &PgbouncerCheck,
        config(&format!(
            "[database]\nurl = {:?}\nlisten_url = {:?}\n[pgbouncer]\nadmin_url = {:?}\ndatabase = {:?}\nnotify_timeout_ms = 1500\n",
            s.db.url, s.db.url, s.bouncer.admin_url(), s.name
        )),
    )
    .await;
    assert!(!o.findings.iter().any(|f| f.message.contains("listen_url")), "{o:#?}");
    measurement(&o, "notify_delivered_ms (listen_url and migration_url)");
    assert_status(&o, Status::Pass);
}

#[tokio::test]
async fn an_application_url_through_a_transaction_pool_without_prepared_statements_fails() {
    let _serial = serial().await;
    let Some(s) = Setup::start(PoolMode::Transaction, 10).await else { return };
    let o = run(
        &PgbouncerCheck,
        config(&format!(
            "[database]\nurl = {:?}\ndirect_url = {:?}\nlisten_url = {:?}\n[pgbouncer]\nadmin_url = {:?}\n",
            s.pooled_url(),
            s.db.url,
            s.db.url,
            s.bouncer.admin_url()
        )),
    )
    .await;
    assert_status(&o, Status::Fail);
    assert!(has_finding(&o, Status::Fail, "does not track prepared statements (pgBouncer 1.18"), "{o:#?}");
    // The pool name came from database.url.
    assert_eq!(o.details["pool"], s.name.as_str());
}

#[tokio::test]
async fn sessions_idle_in_a_transaction_warn_then_fail() {
    let _serial = serial().await;
    let Some(db) = spark_testkit::postgres().await else { return };
    let mut idle = PgConnection::connect(&db.url).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut idle).await.unwrap();
    sqlx::raw_sql("BEGIN; SELECT 1;").execute(&mut idle).await.unwrap();
    // The session's age counts from here, so the sleeps below aim at fixed
    // points after it: the checks' own durations (longer on a loaded
    // machine) then do not push a read past the next limit.
    let began = tokio::time::Instant::now();
    let cfg = || {
        crate::config_for(
            &db.url,
            // Limits far apart, so a check slowed down by a loaded machine
            // (CI runs every suite at once) still reads inside the band.
            "[pgbouncer]\nidle_in_transaction_warn_seconds = 1\nidle_in_transaction_fail_seconds = 5\n",
        )
    };
    // Ours among the sessions listed as idle in a transaction too long, and
    // for how long. Only this test's fresh database is read, so the shared
    // server's other sessions do not count.
    let ours = |o: &Outcome| {
        o.details["long_sessions"].as_array().and_then(|sessions| {
            sessions
                .iter()
                .find(|s| s["who"].as_str().is_some_and(|w| w.starts_with(&format!("pid {pid} "))))
                .map(|s| s["seconds"].as_f64().unwrap())
        })
    };
    tokio::time::sleep_until(began + Duration::from_millis(1200)).await;
    let o = run(&PgbouncerCheck, cfg()).await;
    let m = measurement(&o, "longest_idle_in_transaction_s");
    assert_eq!(m.status, Status::Warn, "{o:#?}");
    assert_status(&o, Status::Warn);
    assert!(ours(&o).is_some_and(|s| (1.0..5.0).contains(&s)), "{o:#?}");

    tokio::time::sleep_until(began + Duration::from_millis(5300)).await;
    let o = run(&PgbouncerCheck, cfg()).await;
    assert_eq!(measurement(&o, "longest_idle_in_transaction_s").status, Status::Fail, "{o:#?}");
    assert_status(&o, Status::Fail);
    assert!(ours(&o).is_some_and(|s| s > 5.0), "{o:#?}");
    sqlx::raw_sql("ROLLBACK").execute(&mut idle).await.unwrap();
}

#[tokio::test]
async fn the_checks_refuse_to_read_the_database_through_pgbouncer() {
    let _serial = serial().await;
    let Some(s) = Setup::start(PoolMode::Transaction, 10).await else { return };
    // Only the application's URL, through the transaction pool: the checks'
    // own prepared statements would collide there, or read other clients'
    // rows. Several rounds, as collisions need concurrent checks to meet.
    let cfg = config(&format!(
        "[database]\nurl = {:?}\n[clock]\nntp = false\n[pgbouncer]\nadmin_url = {:?}\n",
        s.pooled_url(),
        s.bouncer.admin_url()
    ));
    for _ in 0..3 {
        let ctx = spark_checks::Context::new(cfg.clone()).with_migrations(&[spark_idempotency::MIGRATIONS]);
        let report = spark_checks::scan(&std::sync::Arc::new(ctx), spark_checks::checks::all()).await;
        // The checks that read no database (Prometheus, dashboards, …) skip
        // here; every one that does must refuse.
        let database: Vec<_> =
            report.checks.iter().filter(|o| crate::scan::DATABASE_CHECKS.contains(&o.id.as_str())).collect();
        assert_eq!(database.len(), crate::scan::DATABASE_CHECKS.len(), "{report:#?}");
        for o in database {
            assert_status(o, Status::Fail);
            assert!(has_finding(o, Status::Fail, "set database.direct_url to a direct URL"), "{o:#?}");
            assert!(!o.findings.iter().any(|f| f.message.contains("prepared statement \"")), "{o:#?}");
        }
        // The admin console was still read: the pool's own verdicts stand.
        let o = report.check("pgbouncer").unwrap();
        assert!(has_finding(o, Status::Fail, "does not track prepared statements"), "{o:#?}");
        assert_eq!(o.details["pool_mode"], "transaction");
    }
}

#[tokio::test]
async fn an_unreachable_admin_console_fails() {
    let _serial = serial().await;
    let Some(db) = spark_testkit::postgres().await else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let o = run(
        &PgbouncerCheck,
        config(&format!(
            "[database]\nurl = {:?}\n[pgbouncer]\nadmin_url = \"postgres://postgres@127.0.0.1:{port}/pgbouncer\"\n",
            db.url
        )),
    )
    .await;
    assert_status(&o, Status::Fail);
    assert!(
        has_finding(
            &o,
            Status::Fail,
            &format!("cannot reach the pgBouncer admin console at postgres://postgres@127.0.0.1:{port}/pgbouncer")
        ),
        "{o:#?}"
    );
}
