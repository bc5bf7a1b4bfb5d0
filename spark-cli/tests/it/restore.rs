//! `spark restore backup` and `spark restore drill` against a private
//! PostgreSQL cluster that archives its WAL: the drill restores to a time
//! between two writes and keeps only the first; bad input exits 2.

use std::time::{Duration, Instant};

use spark_testkit::cluster::PgCluster;

use crate::canary::spark_off_runtime;

async fn one(pool: &sqlx::PgPool, sql: &str) -> String {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_then_drill_restores_to_the_target_and_writes_the_report() {
    let Some(pg) = PgCluster::start_archiving(&[]).await else { return };
    let archive = pg.dir().to_owned();
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    let migrate = spark_off_runtime(dir.path(), &["db", "migrate", "--database-url", &pg.url()]).await;
    assert_eq!(migrate.code, 0, "{}", migrate.stderr);
    let backup =
        spark_off_runtime(dir.path(), &["restore", "backup", "--database-url", &pg.url(), "--out", "base"]).await;
    assert_eq!(backup.code, 0, "{}{}", backup.stdout, backup.stderr);
    assert!(backup.stdout.starts_with("base backup in base ("), "{}", backup.stdout);

    sqlx::raw_sql("CREATE TABLE notes (id BIGSERIAL PRIMARY KEY); INSERT INTO notes DEFAULT VALUES")
        .execute(&pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let target =
        one(&pool, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sqlx::raw_sql("INSERT INTO notes DEFAULT VALUES; INSERT INTO notes DEFAULT VALUES").execute(&pool).await.unwrap();
    let file = one(&pool, "SELECT pg_walfile_name(pg_switch_wal())").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while one(&pool, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").await < file {
        assert!(Instant::now() < deadline, "{file} was not archived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let archive = archive.display().to_string();
    let args = ["restore", "drill", "--base-backup", "base", "--wal-archive", &archive, "--target-time", &target];
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let run = spark_off_runtime(dir.path(), &json_args).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let json = run.json();
    let report = &json["report"];
    assert_eq!(report["held"], true, "{report:#}");
    assert_eq!(report["row_counts"]["public.notes"], 1, "{report:#}");
    // The Spark migrations `spark db migrate` applied are there.
    let migrations = report["items"].as_array().unwrap().iter().find(|i| i["name"] == "migrations").unwrap();
    assert!(migrations["value"].as_str().unwrap().contains("of 3 crates applied"), "{migrations}");
    let files = json["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    assert!(dir.path().join(files[1]["path"].as_str().unwrap()).is_file());
    eprintln!("spark restore drill: RTO {} ms, RPO {} ms", report["rto_ms"], report["rpo_ms"]);

    // A target before the backup cannot be reached: exit 1, and why.
    let run = spark_off_runtime(
        dir.path(),
        &[
            "restore",
            "drill",
            "--base-backup",
            "base",
            "--wal-archive",
            &archive,
            "--target-time",
            "2000-01-01T00:00:00Z",
        ],
    )
    .await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("verdict:      FAILED"), "{}", run.stdout);
    assert!(
        run.stdout.contains(
            "recovered        FAILED  the target 2000-01-01T00:00:00.000Z is before this base backup started"
        ),
        "{}",
        run.stdout
    );
    // Both drills' reports are kept, even when they started in one second.
    assert_eq!(std::fs::read_dir(dir.path().join("evidence")).unwrap().count(), 4);
}

#[test]
fn bad_input_exits_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for (args, expected) in [
        (
            &["restore", "drill", "--base-backup", ".", "--wal-archive", ".", "--target-time", "yesterday"][..],
            "is not an RFC 3339 time",
        ),
        (
            &["restore", "drill", "--base-backup", ".", "--wal-archive", ".", "--target-time", "2026-12-07T11:40:03Z"],
            "is not a plain-format base backup",
        ),
    ] {
        let run = crate::spark_with(args, Some(dir.path()), &[]);
        assert_eq!(run.code, 2, "{args:?}: {}{}", run.stdout, run.stderr);
        assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
        assert!(run.stderr.contains(expected), "{}", run.stderr);
    }
}
