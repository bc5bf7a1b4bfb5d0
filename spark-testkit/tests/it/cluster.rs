use spark_testkit::cluster::PgCluster;

#[tokio::test]
async fn a_cluster_answers_queries_with_the_settings_it_was_started_with() {
    let Some(pg) = PgCluster::start(&[("archive_mode", "on"), ("archive_command", "cp %p /nowhere/%f")]).await else {
        return;
    };
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await.unwrap();
    assert_eq!(one, 1);
    let archive_mode: String = sqlx::query_scalar("SHOW archive_mode").fetch_one(&pool).await.unwrap();
    assert_eq!(archive_mode, "on");
    let command: String = sqlx::query_scalar("SHOW archive_command").fetch_one(&pool).await.unwrap();
    assert_eq!(command, "cp %p /nowhere/%f");
    assert!(pg.url().ends_with(&format!(":{}/postgres", pg.port())));
}

#[tokio::test]
async fn the_server_can_write_the_cluster_dir() {
    let Some(pg) = PgCluster::start(&[]).await else { return };
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let file = pg.dir().join("out.txt");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("COPY (SELECT 42) TO '{}'", file.display())))
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "42\n");
}

#[tokio::test]
async fn a_restart_applies_settings_that_need_one() {
    let Some(mut pg) = PgCluster::start(&[]).await else { return };
    let port = pg.port();
    pg.restart(&[("max_connections", "42")]).await;
    assert_eq!(pg.port(), port);
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let max: String = sqlx::query_scalar("SHOW max_connections").fetch_one(&pool).await.unwrap();
    assert_eq!(max, "42");
}

#[tokio::test]
async fn a_cluster_that_cannot_start_panics_with_its_log() {
    let Some(_) = PgCluster::start(&[]).await else { return };
    let failed = tokio::spawn(async { PgCluster::start(&[("shared_buffers", "not a size")]).await }).await.unwrap_err();
    let message = failed.into_panic();
    let message = message.downcast_ref::<String>().unwrap();
    assert!(message.contains("PostgreSQL did not start"), "{message}");
    assert!(message.contains("shared_buffers"), "the log tail names the setting: {message}");
}
