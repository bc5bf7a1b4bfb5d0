//! The consumer side: apply each event once.

use std::future::Future;
use std::pin::Pin;

/// What [`Inbox::process`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed<T> {
    /// First time: the handler ran and returned this.
    Applied(T),
    /// The id was processed before; the handler did not run.
    Duplicate,
}

/// A connection the inbox can record ids on: `PgConnection` or
/// `SqliteConnection` (sealed).
pub trait InboxConnection: private::Sealed + Send {
    /// Records `message_id`; `true` if it was not there before.
    #[doc(hidden)]
    fn record<'a>(
        &'a mut self,
        message_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<bool, sqlx::Error>> + Send + 'a>>;
}

mod private {
    pub trait Sealed {}
}

macro_rules! inbox_connection {
    ($conn:ty, $sql:literal) => {
        impl private::Sealed for $conn {}
        impl InboxConnection for $conn {
            fn record<'a>(
                &'a mut self,
                message_id: &'a str,
            ) -> Pin<Box<dyn Future<Output = Result<bool, sqlx::Error>> + Send + 'a>> {
                Box::pin(async move {
                    let row =
                        sqlx::query($sql).bind(message_id).bind(crate::event::now_ms()).fetch_optional(self).await?;
                    Ok(row.is_some())
                })
            }
        }
    };
}

#[cfg(feature = "postgres")]
inbox_connection!(
    sqlx::PgConnection,
    "INSERT INTO spark_inbox (message_id, processed_at_ms) VALUES ($1, $2)
     ON CONFLICT (message_id) DO NOTHING RETURNING message_id"
);
#[cfg(feature = "sqlite")]
inbox_connection!(
    sqlx::SqliteConnection,
    "INSERT INTO spark_inbox (message_id, processed_at_ms) VALUES (?1, ?2)
     ON CONFLICT (message_id) DO NOTHING RETURNING message_id"
);

/// Records processed message ids with `INSERT … ON CONFLICT DO NOTHING` in
/// the consumer's own transaction, so a redelivered event (delivery is at
/// least once) is applied once: if the handler's writes roll back, so does
/// the record of the id.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use spark_outbox::{Inbox, Processed};
///
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// spark_outbox::sqlite::migrator().run(&pool).await?;
/// for _ in 0..2 {
///     let mut tx = pool.begin().await?;
///     let outcome = Inbox::process(&mut *tx, "event-1", async |_conn| Ok::<_, sqlx::Error>("applied")).await?;
///     tx.commit().await?;
///     println!("{outcome:?}"); // Applied("applied"), then Duplicate
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Inbox;

impl Inbox {
    /// Runs `handler` on the caller's transaction unless `message_id` was
    /// processed before.
    ///
    /// # Errors
    ///
    /// The handler's error, or a database error (through `E: From<sqlx::Error>`).
    pub async fn process<C, T, E, F>(conn: &mut C, message_id: &str, handler: F) -> Result<Processed<T>, E>
    where
        C: InboxConnection + ?Sized,
        F: AsyncFnOnce(&mut C) -> Result<T, E>,
        E: From<sqlx::Error>,
    {
        if !conn.record(message_id).await? {
            return Ok(Processed::Duplicate);
        }
        handler(conn).await.map(Processed::Applied)
    }
}
