//! The inbox applies each message once, and forgets it on rollback.

use spark_outbox::{Inbox, Processed};

#[tokio::test]
async fn sqlite_inbox_dedupes_and_rolls_back() {
    let db = spark_testkit::sqlite().await;
    spark_outbox::sqlite::migrator().run(&db.pool).await.unwrap();
    sqlx::query("CREATE TABLE applied (n INTEGER)").execute(&db.pool).await.unwrap();
    let apply = async |conn: &mut sqlx::SqliteConnection| {
        sqlx::query("INSERT INTO applied (n) VALUES (1)").execute(&mut *conn).await.map(|_| ())
    };
    // A rollback forgets the id: the redelivery applies.
    let mut tx = db.pool.begin().await.unwrap();
    assert_eq!(Inbox::process(&mut *tx, "m1", apply).await.unwrap(), Processed::Applied(()));
    tx.rollback().await.unwrap();
    for expected in [Processed::Applied(()), Processed::Duplicate, Processed::Duplicate] {
        let mut tx = db.pool.begin().await.unwrap();
        assert_eq!(Inbox::process(&mut *tx, "m1", apply).await.unwrap(), expected);
        tx.commit().await.unwrap();
    }
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM applied").fetch_one(&db.pool).await.unwrap();
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_inbox_applies_concurrent_redeliveries_once() {
    let Some(db) = spark_testkit::postgres().await else { return };
    spark_outbox::postgres::migrator().run(&db.pool).await.unwrap();
    sqlx::query("CREATE TABLE applied (n INTEGER)").execute(&db.pool).await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                let mut tx = pool.begin().await.unwrap();
                let out = Inbox::process(&mut *tx, "m1", async |conn: &mut sqlx::PgConnection| {
                    sqlx::query("INSERT INTO applied (n) VALUES (1)").execute(&mut *conn).await.map(|_| ())
                })
                .await
                .unwrap();
                tx.commit().await.unwrap();
                out
            })
        })
        .collect();
    let mut applied = 0;
    for t in tasks {
        if t.await.unwrap() == Processed::Applied(()) {
            applied += 1;
        }
    }
    assert_eq!(applied, 1);
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM applied").fetch_one(&db.pool).await.unwrap();
    assert_eq!(n, 1);
}
