//! The inbox applies each message once per consumer, records nothing when
//! the handler fails, and keeps the caller's transaction usable: one suite,
//! run on SQLite and PostgreSQL.

use spark_outbox::{Inbox, Processed};

/// The handler's error: a database error or a refusal of its own.
#[derive(Debug)]
enum HandlerError {
    Db(#[allow(dead_code, reason = "read through Debug in assertion messages")] sqlx::Error),
    Refused,
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        HandlerError::Db(e)
    }
}

/// Writes one suite against a backend: the statements differ only in the
/// connection type, so the scenarios are written once.
macro_rules! inbox_suite {
    ($backend:ident, $conn:ty, $db:expr, $migrator:expr, $initial:literal) => {
        mod $backend {
            use super::*;

            type Conn = $conn;

            async fn applied(pool: &sqlx::Pool<<Conn as sqlx::Connection>::Database>, what: &str) -> i64 {
                let sql = format!("SELECT COUNT(*) FROM applied WHERE what = '{what}'");
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(pool).await.unwrap()
            }

            async fn recorded(pool: &sqlx::Pool<<Conn as sqlx::Connection>::Database>) -> i64 {
                sqlx::query_scalar("SELECT COUNT(*) FROM spark_inbox").fetch_one(pool).await.unwrap()
            }

            async fn write(conn: &mut Conn, what: &str) -> Result<(), sqlx::Error> {
                let sql = format!("INSERT INTO applied (what) VALUES ('{what}')");
                sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *conn).await.map(|_| ())
            }

            macro_rules! setup {
                () => {{
                    let Some(db) = $db else { return };
                    $migrator.run(&db.pool).await.unwrap();
                    sqlx::query("CREATE TABLE applied (what TEXT NOT NULL)").execute(&db.pool).await.unwrap();
                    db
                }};
            }

            /// Two consumers of one message each apply it once: the key is
            /// (consumer, message id), not the message id alone.
            #[tokio::test]
            async fn two_consumers_each_process_a_message_once() {
                let db = setup!();
                let deliveries = [
                    ("billing", Processed::Applied(())),
                    ("shipping", Processed::Applied(())),
                    ("billing", Processed::Duplicate),
                    ("shipping", Processed::Duplicate),
                ];
                for (consumer, expected) in deliveries {
                    let inbox = Inbox::new(consumer);
                    let mut tx = db.pool.begin().await.unwrap();
                    let out =
                        inbox.process(&mut *tx, "m1", async |c: &mut Conn| write(c, consumer).await).await.unwrap();
                    tx.commit().await.unwrap();
                    assert_eq!(out, expected, "{consumer}");
                }
                assert_eq!(applied(&db.pool, "billing").await, 1);
                assert_eq!(applied(&db.pool, "shipping").await, 1);
                assert_eq!(recorded(&db.pool).await, 2);
            }

            /// A failing handler records nothing, even when the caller then
            /// commits its transaction: the next delivery runs the handler.
            #[tokio::test]
            async fn a_failed_handler_leaves_no_record_and_is_retried() {
                let db = setup!();
                let inbox = Inbox::new("billing");
                let mut tx = db.pool.begin().await.unwrap();
                let failed =
                    inbox.process(&mut *tx, "m1", async |_: &mut Conn| Err::<(), _>(HandlerError::Refused)).await;
                assert!(matches!(failed, Err(HandlerError::Refused)), "{failed:?}");
                // The same transaction retries: the id was not recorded.
                let retried =
                    inbox.process(&mut *tx, "m1", async |c: &mut Conn| write(c, "retry").await).await.unwrap();
                assert_eq!(retried, Processed::Applied(()));
                tx.commit().await.unwrap();

                // Failed, and the caller commits anyway (say, to log it).
                let mut tx = db.pool.begin().await.unwrap();
                let failed =
                    inbox.process(&mut *tx, "m2", async |_: &mut Conn| Err::<(), _>(HandlerError::Refused)).await;
                assert!(failed.is_err());
                tx.commit().await.unwrap();
                assert_eq!(recorded(&db.pool).await, 1, "only m1 is recorded");
                let mut tx = db.pool.begin().await.unwrap();
                let redelivered =
                    inbox.process(&mut *tx, "m2", async |c: &mut Conn| write(c, "m2").await).await.unwrap();
                tx.commit().await.unwrap();
                assert_eq!(redelivered, Processed::Applied(()));
                assert_eq!(applied(&db.pool, "m2").await, 1);
            }

            /// A handler that writes, then fails on the database: its writes
            /// are undone, the caller's earlier writes stay, and the caller's
            /// transaction keeps working (a savepoint, not an aborted
            /// transaction).
            #[tokio::test]
            async fn a_handler_failing_midway_rolls_back_to_its_savepoint() {
                let db = setup!();
                let inbox = Inbox::default();
                let mut tx = db.pool.begin().await.unwrap();
                write(&mut tx, "caller-before").await.unwrap();
                let failed = inbox
                    .process(&mut *tx, "m1", async |c: &mut Conn| {
                        write(c, "handler").await?;
                        sqlx::query("INSERT INTO no_such_table VALUES (1)").execute(&mut *c).await?;
                        Ok::<_, HandlerError>(())
                    })
                    .await;
                assert!(matches!(failed, Err(HandlerError::Db(_))), "{failed:?}");
                write(&mut tx, "caller-after").await.expect("the caller's transaction is still usable");
                tx.commit().await.unwrap();
                assert_eq!(applied(&db.pool, "caller-before").await, 1);
                assert_eq!(applied(&db.pool, "caller-after").await, 1);
                assert_eq!(applied(&db.pool, "handler").await, 0, "the handler's write is rolled back");
                assert_eq!(recorded(&db.pool).await, 0);
            }

            /// A caller rollback forgets the id with the handler's writes.
            #[tokio::test]
            async fn a_caller_rollback_forgets_the_id() {
                let db = setup!();
                let inbox = Inbox::default();
                let mut tx = db.pool.begin().await.unwrap();
                let out = inbox.process(&mut *tx, "m1", async |c: &mut Conn| write(c, "m1").await).await.unwrap();
                assert_eq!(out, Processed::Applied(()));
                tx.rollback().await.unwrap();
                // Outside a transaction the inbox commits on its own.
                let mut conn = db.pool.acquire().await.unwrap();
                let out = inbox.process(&mut *conn, "m1", async |c: &mut Conn| write(c, "m1").await).await.unwrap();
                assert_eq!(out, Processed::Applied(()));
                let again = inbox.process(&mut *conn, "m1", async |c: &mut Conn| write(c, "m1").await).await.unwrap();
                assert_eq!(again, Processed::Duplicate);
                drop(conn);
                assert_eq!(applied(&db.pool, "m1").await, 1);
            }

            /// 16 concurrent redeliveries of one message: one applies.
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_redeliveries_apply_once() {
                let db = setup!();
                let tasks: Vec<_> = (0..16)
                    .map(|_| {
                        let pool = db.pool.clone();
                        tokio::spawn(async move {
                            let mut tx = pool.begin().await.unwrap();
                            let out = Inbox::new("billing")
                                .process(&mut *tx, "m1", async |c: &mut Conn| write(c, "m1").await)
                                .await
                                .unwrap();
                            tx.commit().await.unwrap();
                            out
                        })
                    })
                    .collect();
                let mut outcomes = Vec::new();
                for t in tasks {
                    outcomes.push(t.await.unwrap());
                }
                assert_eq!(outcomes.iter().filter(|o| **o == Processed::Applied(())).count(), 1, "{outcomes:?}");
                assert_eq!(applied(&db.pool, "m1").await, 1);
            }

            /// Ids recorded before the inbox had consumers belong to the
            /// consumer "default" after the migration.
            #[tokio::test]
            async fn ids_recorded_before_the_consumer_key_belong_to_default() {
                let Some(db) = $db else { return };
                // The schema as the first migration left it, with one id.
                sqlx::raw_sql(include_str!($initial)).execute(&db.pool).await.unwrap();
                sqlx::query("INSERT INTO spark_inbox (message_id, processed_at_ms) VALUES ('old', 1)")
                    .execute(&db.pool)
                    .await
                    .unwrap();
                $migrator.run(&db.pool).await.unwrap();
                sqlx::query("CREATE TABLE applied (what TEXT NOT NULL)").execute(&db.pool).await.unwrap();
                let mut conn = db.pool.acquire().await.unwrap();
                let (legacy, audit) = (Inbox::default(), Inbox::new("audit"));
                let old = legacy.process(&mut *conn, "old", async |c: &mut Conn| write(c, "old").await);
                assert_eq!(old.await.unwrap(), Processed::Duplicate);
                let other = audit.process(&mut *conn, "old", async |c: &mut Conn| write(c, "old").await);
                assert_eq!(other.await.unwrap(), Processed::Applied(()));
            }
        }
    };
}

inbox_suite!(
    sqlite,
    sqlx::SqliteConnection,
    Some(spark_testkit::sqlite().await),
    spark_outbox::sqlite::migrator(),
    "../../migrations/sqlite/20261125000300_outbox.sql"
);
inbox_suite!(
    postgres,
    sqlx::PgConnection,
    spark_testkit::postgres().await,
    spark_outbox::postgres::migrator(),
    "../../migrations/postgres/20261125000300_outbox.sql"
);
