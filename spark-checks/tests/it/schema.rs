//! The schema assertions on spark-positions' real schema, on PostgreSQL and
//! SQLite.

use spark_checks::schema::{
    DEFAULT_MONEY_PATTERN, assert_migrations_applied, assert_money_columns_exact, assert_partial_unique_index,
    assert_sequences_ahead, index_is_valid,
};
use spark_db::Database;

use crate::exec;

/// The three assertions on a database migrated with spark-positions;
/// `float` is the backend's float type, `checksum` a literal for a wrong
/// checksum.
async fn assertions_hold_and_catch_breakage(
    db: &Database,
    migrator: &sqlx::migrate::Migrator,
    float: &str,
    checksum: &str,
) {
    db.migrate(&[spark_positions::MIGRATIONS]).await.unwrap();

    assert_partial_unique_index(db, "spark_positions", &["account_id", "instrument"], "status = 'open'").await.unwrap();
    let e = assert_partial_unique_index(db, "spark_positions", &["account_id", "instrument"], "status = 'closed'")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("spark_positions_one_open (account_id, instrument) WHERE"), "{e}");
    assert!(e.contains("WHERE status = 'closed'"), "{e}");
    let e = assert_partial_unique_index(db, "spark_positions", &["instrument", "account_id"], "status = 'open'")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("spark_positions_one_open"), "{e}");

    let n = assert_money_columns_exact(db, DEFAULT_MONEY_PATTERN).await.unwrap();
    assert!(n >= 5, "{n} money columns");
    exec(db, &format!("ALTER TABLE spark_position_fills ADD COLUMN fee {float}")).await;
    let e = assert_money_columns_exact(db, DEFAULT_MONEY_PATTERN).await.unwrap_err().to_string();
    assert!(e.contains(&format!("spark_position_fills.fee ({float})")), "{e}");

    assert_migrations_applied(db, migrator).await.unwrap();
    let version = migrator.iter().next().unwrap().version;
    exec(db, &format!("UPDATE _sqlx_migrations SET checksum = {checksum} WHERE version = {version}")).await;
    let e = assert_migrations_applied(db, migrator).await.unwrap_err().to_string();
    assert!(e.contains(&format!("{version} (")) && e.contains("checksum"), "{e}");
}

#[tokio::test]
async fn postgres_schema_assertions() {
    let Some(pg) = spark_testkit::postgres().await else { return };
    assertions_hold_and_catch_breakage(
        &pg.database(),
        &spark_positions::postgres::migrator(),
        "double precision",
        "'\\x00'",
    )
    .await;
}

#[tokio::test]
async fn sqlite_schema_assertions() {
    let lite = spark_testkit::sqlite().await;
    assertions_hold_and_catch_breakage(&lite.database(), &spark_positions::sqlite::migrator(), "REAL", "X'00'").await;
}

#[tokio::test]
async fn the_assertions_take_a_raw_pool_too() {
    let Some(pg) = spark_testkit::postgres().await else { return };
    pg.database().migrate(&[spark_positions::MIGRATIONS]).await.unwrap();
    assert_partial_unique_index(&pg.pool, "spark_positions", &["account_id", "instrument"], "status = 'open'")
        .await
        .unwrap();
    assert_money_columns_exact(&pg.pool, DEFAULT_MONEY_PATTERN).await.unwrap();
    assert_migrations_applied(&pg.pool, &spark_positions::postgres::migrator()).await.unwrap();
}

/// A sequence set behind its column (what a restore without `setval` leaves)
/// is named with the fix; an index left invalid by a failed concurrent build
/// is not valid.
#[tokio::test]
async fn a_sequence_behind_its_column_and_an_invalid_index_are_caught() {
    let Some(pg) = spark_testkit::postgres().await else { return };
    let db = pg.database();
    exec(&db, "CREATE TABLE ledger (id BIGSERIAL PRIMARY KEY, note TEXT NOT NULL)").await;
    exec(&db, "INSERT INTO ledger (note) SELECT 'n' || g FROM generate_series(1, 5) g").await;
    assert_eq!(assert_sequences_ahead(&db).await.unwrap(), 1);
    exec(&db, "SELECT setval('ledger_id_seq', 3)").await;
    let e = assert_sequences_ahead(&db).await.unwrap_err().to_string();
    assert!(e.contains("sequence public.ledger_id_seq would hand out 4 but public.ledger.id already holds 5"), "{e}");
    assert!(e.contains("SELECT setval('public.ledger_id_seq', (SELECT max(id) FROM public.ledger))"), "{e}");

    // The fix the message names makes the next insert work again.
    exec(&db, "SELECT setval('public.ledger_id_seq', (SELECT max(id) FROM public.ledger))").await;
    assert_eq!(assert_sequences_ahead(&db).await.unwrap(), 1);

    exec(&db, "CREATE UNIQUE INDEX ledger_note ON ledger (note)").await;
    assert!(index_is_valid(&db, "ledger_note").await.unwrap());
    assert!(!index_is_valid(&db, "no_such_index").await.unwrap());
    // A concurrent unique build over duplicates fails and leaves the index
    // behind, invalid.
    exec(&db, "INSERT INTO ledger (note) VALUES ('dup'), ('dup2')").await;
    exec(&db, "DROP INDEX ledger_note").await;
    exec(&db, "UPDATE ledger SET note = 'dup' WHERE note = 'dup2'").await;
    let failed = sqlx::raw_sql("CREATE UNIQUE INDEX CONCURRENTLY ledger_note ON ledger (note)").execute(&pg.pool).await;
    assert!(failed.is_err(), "the unique build over duplicates succeeded");
    assert!(!index_is_valid(&db, "ledger_note").await.unwrap(), "a failed concurrent build left a valid index");

    let lite = spark_testkit::sqlite().await;
    assert_eq!(assert_sequences_ahead(&lite.database()).await.unwrap(), 0);
}
