//! `migrations`: what this build embeds against `_sqlx_migrations`, on
//! PostgreSQL and SQLite.

use spark_checks::checks::MigrationsCheck;
use spark_checks::{Config, Context, Outcome, Status};
use spark_db::Database;
use spark_idempotency::MIGRATIONS;

use crate::{assert_status, config_for, has_finding, run_in};

/// A version no crate of the workspace uses.
const FOREIGN: i64 = 29_991_231_000_000;

async fn check(config: Config) -> Outcome {
    run_in(&MigrationsCheck, Context::new(config).with_migrations(&[MIGRATIONS])).await
}

/// The one version spark-idempotency embeds.
fn embedded_version(db: &Database) -> i64 {
    let migrator = MIGRATIONS.migrator(db.backend()).unwrap();
    let versions: Vec<i64> = migrator.iter().map(|m| m.version).collect();
    assert_eq!(versions.len(), 1, "{versions:?}");
    versions[0]
}

use crate::exec;

#[tokio::test]
async fn postgres_applied_migrations_pass_and_tampering_fails() {
    let Some(pg) = spark_testkit::postgres().await else { return };
    let db = pg.database();
    db.migrate(&[MIGRATIONS]).await.unwrap();
    let version = embedded_version(&db);
    let o = check(config_for(&pg.url, "")).await;
    assert_status(&o, Status::Pass);

    exec(&db, &format!("UPDATE _sqlx_migrations SET checksum = '\\x00' WHERE version = {version}")).await;
    let o = check(config_for(&pg.url, "")).await;
    assert_status(&o, Status::Fail);
    assert!(has_finding(&o, Status::Fail, &format!("spark-idempotency {version} (")), "{o:#?}");
    assert!(has_finding(&o, Status::Fail, "was applied with checksum 00 but this build embeds"), "{o:#?}");

    // Restore the checksum through the migrator's own record, then fail it.
    let migrator = MIGRATIONS.migrator(db.backend()).unwrap();
    let checksum = hex(&migrator.iter().next().unwrap().checksum);
    exec(
        &db,
        &format!("UPDATE _sqlx_migrations SET checksum = '\\x{checksum}', success = false WHERE version = {version}"),
    )
    .await;
    let o = check(config_for(&pg.url, "")).await;
    assert_status(&o, Status::Fail);
    assert!(has_finding(&o, Status::Fail, "failed when it ran (success = false)"), "{o:#?}");
}

#[tokio::test]
async fn postgres_an_unknown_version_warns_unless_ignored() {
    let Some(pg) = spark_testkit::postgres().await else { return };
    let db = pg.database();
    db.migrate(&[MIGRATIONS]).await.unwrap();
    exec(
        &db,
        &format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES ({FOREIGN}, 'another app', true, '\\x00', 1)"
        ),
    )
    .await;
    let o = check(config_for(&pg.url, "")).await;
    assert_status(&o, Status::Warn);
    assert!(
        has_finding(&o, Status::Warn, &format!("{FOREIGN} (another app) is applied but this build does not embed it")),
        "{o:#?}"
    );

    let o = check(config_for(&pg.url, &format!("[migrations]\nignore_versions = [{FOREIGN}]\n"))).await;
    assert_status(&o, Status::Pass);
}

#[tokio::test]
async fn postgres_without_a_migrations_table_fails() {
    let Some(pg) = spark_testkit::postgres().await else { return };
    let o = check(config_for(&pg.url, "")).await;
    assert_status(&o, Status::Fail);
    assert!(has_finding(&o, Status::Fail, "_sqlx_migrations does not exist"), "{o:#?}");
}

#[tokio::test]
async fn sqlite_applied_migrations_pass_and_tampering_fails() {
    let lite = spark_testkit::sqlite().await;
    let db = lite.database();
    db.migrate(&[MIGRATIONS]).await.unwrap();
    let version = embedded_version(&db);
    let o = check(config_for(&lite.url, "")).await;
    assert_status(&o, Status::Pass);

    exec(&db, &format!("UPDATE _sqlx_migrations SET checksum = X'00' WHERE version = {version}")).await;
    let o = check(config_for(&lite.url, "")).await;
    assert_status(&o, Status::Fail);
    assert!(has_finding(&o, Status::Fail, &format!("spark-idempotency {version} (")), "{o:#?}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
