//! `backup` against private PostgreSQL clusters with real WAL archiving.

use std::time::{Duration, Instant};

use spark_checks::checks::BackupCheck;
use spark_checks::{Outcome, Status};
use spark_testkit::cluster::PgCluster;
use sqlx::PgPool;

use crate::{assert_status, config_for, has_finding, measurement, run};

/// Keeps the check's second read of `failed_count` short.
const FAST: &str = "[backup]\nfailed_count_interval_ms = 200\n";

/// Writes something, switches to a new WAL segment, and waits (at most
/// 10 s) until `column` of `pg_stat_archiver` is above zero.
async fn switch_wal_and_wait(pool: &PgPool, column: &str) -> Duration {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS filler AS SELECT g FROM generate_series(1, 1000) g; SELECT pg_switch_wal();",
    )
    .execute(pool)
    .await
    .unwrap();
    let start = Instant::now();
    let sql = format!("SELECT {column} FROM pg_stat_archiver");
    loop {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone())).fetch_one(pool).await.unwrap();
        if n > 0 {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "pg_stat_archiver.{column} still 0 after 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn archiving_cluster(archive_command: Option<&str>) -> Option<(PgCluster, PgPool)> {
    let pg = PgCluster::start(&[("archive_mode", "on"), ("wal_level", "replica")]).await?;
    let pool = PgPool::connect(&pg.url()).await.unwrap();
    // The archive directory is known only once the cluster exists;
    // archive_command takes effect on reload.
    let command = archive_command.map_or_else(|| format!("cp %p {}/%f", pg.dir().display()), str::to_owned);
    // Two statements: ALTER SYSTEM refuses to run in the implicit
    // transaction of a multi-statement query.
    let alter = format!("ALTER SYSTEM SET archive_command = '{}'", command.replace('\'', "''"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(alter)).execute(&pool).await.unwrap();
    sqlx::raw_sql("SELECT pg_reload_conf()").execute(&pool).await.unwrap();
    // The reload is asynchronous: wait until this session sees it.
    let start = Instant::now();
    loop {
        let now: String = sqlx::query_scalar("SELECT setting FROM pg_settings WHERE name = 'archive_command'")
            .fetch_one(&pool)
            .await
            .unwrap();
        if now == command {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "archive_command not reloaded: {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some((pg, pool))
}

fn backup_config(url: &str, extra: &str) -> spark_checks::Config {
    config_for(url, &format!("{FAST}{extra}"))
}

#[tokio::test]
async fn working_archiving_passes_and_the_base_backup_dir_is_judged() {
    let Some((pg, pool)) = archiving_cluster(None).await else { return };
    let waited = switch_wal_and_wait(&pool, "archived_count").await;
    let started = Instant::now();
    let o = run(&BackupCheck, backup_config(&pg.url(), "")).await;
    eprintln!("measured: archived after {waited:?}; the check took {:?}", started.elapsed());
    assert_status(&o, Status::Pass);
    let archived = measurement(&o, "archived_count");
    assert!(archived.value > 0.0, "{archived:?}");
    assert_eq!(measurement(&o, "failed_count_delta").value, 0.0);
    // The segment just switched away from is archived; the current one is
    // still being written.
    assert_eq!(measurement(&o, "segments_waiting").value, 0.0, "{o:#?}");
    let age = measurement(&o, "last_archived_age_s");
    assert!(age.value >= 0.0 && age.value < 10.0 && age.status == Status::Pass, "{age:?}");
    assert_eq!(o.details["archive_command_set"], true);
    // The archive really is in the directory.
    assert!(std::fs::read_dir(pg.dir()).unwrap().count() > 0);

    let missing = pg.dir().join("no-such-base-backups");
    let o = run(
        &BackupCheck,
        backup_config(&pg.url(), &format!("base_backup_dir = {:?}\n", missing.display().to_string())),
    )
    .await;
    assert_status(&o, Status::Fail);
    assert!(has_finding(&o, Status::Fail, "cannot be read"), "{o:#?}");

    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().display().to_string();
    let o = run(&BackupCheck, backup_config(&pg.url(), &format!("base_backup_dir = {dir:?}\n"))).await;
    assert_status(&o, Status::Fail);
    assert!(has_finding(&o, Status::Fail, "is empty"), "{o:#?}");

    std::fs::write(empty.path().join("base.tar"), b"backup").unwrap();
    let o = run(&BackupCheck, backup_config(&pg.url(), &format!("base_backup_dir = {dir:?}\n"))).await;
    assert_status(&o, Status::Pass);
    let age = measurement(&o, "base_backup_age_h");
    assert!(age.value < 0.1 && age.status == Status::Pass, "{age:?}");
}

#[tokio::test]
async fn a_failing_archive_command_fails() {
    let Some((pg, pool)) = archiving_cluster(Some("false")).await else { return };
    let waited = switch_wal_and_wait(&pool, "failed_count").await;
    let started = Instant::now();
    let o: Outcome = run(&BackupCheck, backup_config(&pg.url(), "")).await;
    eprintln!("measured: first archive failure after {waited:?}; the check took {:?}", started.elapsed());
    assert_status(&o, Status::Fail);
    assert!(o.summary.contains("the last archive attempt failed"), "{o:#?}");
    assert_eq!(measurement(&o, "archived_count").value, 0.0);
}

#[tokio::test]
async fn archive_mode_off_fails_naming_it() {
    let Some(pg) = PgCluster::start(&[]).await else { return };
    let o = run(&BackupCheck, backup_config(&pg.url(), "")).await;
    assert_status(&o, Status::Fail);
    assert!(o.summary.contains("archive_mode is off"), "{o:#?}");
    assert_eq!(o.details["archive_mode"], "off");
}
