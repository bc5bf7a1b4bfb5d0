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
