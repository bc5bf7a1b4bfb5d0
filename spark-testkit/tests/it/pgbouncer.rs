use spark_testkit::cluster::PgCluster;
use spark_testkit::pgbouncer::{Pgbouncer, PoolMode};
use sqlx::{Column as _, Row as _, TypeInfo as _, ValueRef as _};

#[tokio::test]
async fn a_transaction_mode_bouncer_answers_queries_and_its_admin_console() {
    let Some(pg) = PgCluster::start(&[]).await else { return };
    let Some(bouncer) =
        Pgbouncer::builder(&pg.url()).pool_mode(PoolMode::Transaction).default_pool_size(2).start().await
    else {
        return;
    };
    let pool = sqlx::PgPool::connect(&bouncer.url("postgres")).await.unwrap();
    // Inside a transaction the statement and its execution share one server
    // connection, so a prepared statement works even in transaction mode.
    let mut tx = pool.begin().await.unwrap();
    let two: i32 = sqlx::query_scalar("SELECT $1::int4 + 1").bind(1).fetch_one(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(two, 2);

    let admin = sqlx::PgPool::connect(&bouncer.admin_url()).await.unwrap();
    let rows = sqlx::raw_sql("SHOW POOLS").fetch_all(&admin).await.unwrap();
    let pool_row = rows.iter().find(|r| r.get::<String, _>("database") == "postgres").expect("a pool for postgres");
    for column in pool_row.columns() {
        let raw = pool_row.try_get_raw(column.ordinal()).unwrap();
        let value = if raw.is_null() { "NULL" } else { raw.as_str().unwrap() };
        println!("SHOW POOLS {} ({}, {:?}) = {value}", column.name(), column.type_info().name(), raw.format());
    }
    // The console answers in text format, but types its counters INT4, so
    // they decode as i32 and the names and modes as String.
    assert_eq!(pool_row.get::<String, _>("pool_mode"), "transaction");
    assert_eq!(pool_row.get::<i32, _>("cl_waiting"), 0);
    assert_eq!(pool_row.get::<String, _>("user"), "postgres");
}

#[tokio::test]
async fn a_bouncer_in_front_of_the_shared_server() {
    let Some(url) = spark_testkit::service_url("DATABASE_URL", "PostgreSQL") else { return };
    let Some(bouncer) = Pgbouncer::builder(&url).start().await else { return };
    let upstream: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let pool = sqlx::PgPool::connect(&bouncer.url(upstream.get_database().unwrap_or("postgres"))).await.unwrap();
    // Session mode: the client keeps its server connection, so sqlx's
    // prepared statements work as they do without pgBouncer.
    for i in 0..3 {
        let next: i32 = sqlx::query_scalar("SELECT $1::int4 + 1").bind(i).fetch_one(&pool).await.unwrap();
        assert_eq!(next, i + 1);
    }
}
