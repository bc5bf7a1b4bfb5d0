//! spark-db against real servers.

use spark_db::{Backend, Database, DbError, Migrations};

#[tokio::test]
async fn sqlite_connects_and_reports_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("x.db").display());
    let db = Database::connect(&url, 2).await.unwrap();
    assert_eq!(db.backend(), Backend::Sqlite);
    let host = spark_db::Clock::now_ms(&spark_db::SystemClock);
    let server = db.server_time_ms().await.unwrap();
    assert!((server - host).abs() < 5_000, "sqlite time {server} vs host {host}");
}

#[tokio::test]
async fn postgres_time_is_close_to_the_host_clock() {
    let Some(test_db) = spark_testkit::postgres().await else { return };
    let db = Database::connect(&test_db.url, 2).await.unwrap();
    assert_eq!(db.backend(), Backend::Postgres);
    let host = spark_db::Clock::now_ms(&spark_db::SystemClock);
    let server = db.server_time_ms().await.unwrap();
    assert!((server - host).abs() < 5_000, "postgres time {server} vs host {host}");
    db.close().await;
}

#[tokio::test]
async fn bad_urls_are_typed_errors_without_passwords() {
    let err = Database::connect("mysql://u:secret@h/d", 1).await.unwrap_err();
    assert!(matches!(err, DbError::UnsupportedUrl { .. }), "{err:?}");
    assert!(!err.to_string().contains("secret"), "{err}");
    let err = Database::connect("postgres://u:secret@127.0.0.1:1/d", 1).await.unwrap_err();
    assert!(matches!(err, DbError::Connect { .. }), "{err:?}");
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[tokio::test]
async fn a_crate_without_the_backend_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("x.db").display());
    let db = Database::connect(&url, 1).await.unwrap();
    let err = db.migrate(&[Migrations { name: "spark-nothing", postgres: None, sqlite: None }]).await.unwrap_err();
    assert!(err.to_string().contains("spark-nothing"), "{err}");
}

/// A pooled PostgreSQL connection is not pinged when it was in use a moment
/// ago (a round trip on every request), but one that sat idle for a second
/// is: a connection the server dropped meanwhile is replaced, not handed
/// out to fail the caller's first query.
#[tokio::test]
async fn a_postgres_connection_idle_for_a_second_is_checked_before_use() {
    let Some(test_db) = spark_testkit::postgres().await else { return };
    let db = Database::connect(&test_db.url, 1).await.unwrap();
    let Database::Postgres(pool) = &db else { unreachable!() };
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(pool).await.unwrap();
    let ended: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(pid).fetch_one(&test_db.pool).await.unwrap();
    assert!(ended);
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let again: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(pool).await.unwrap();
    assert_ne!(again, pid, "the dropped connection was replaced");
    db.close().await;
}
