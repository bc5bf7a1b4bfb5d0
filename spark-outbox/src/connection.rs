//! The one backend seam of this crate: what a database connection must do
//! for the outbox and the inbox, written once per backend as plain
//! statements. Everything else (validation, ids, metrics, savepoints) is
//! written once, generically, in `enqueue` and `Inbox::process`.

use std::future::Future;
use std::pin::Pin;

use uuid::Uuid;

use crate::{OutboxEvent, Result};

type Fut<'a, T> = Pin<Box<dyn Future<Output = std::result::Result<T, sqlx::Error>> + Send + 'a>>;

/// A connection events can be enqueued and inbox ids recorded on:
/// `PgConnection` or `SqliteConnection` (sealed). Pass `&mut *tx` for a
/// transaction.
pub trait OutboxConnection: private::Sealed + sqlx::Connection + Send {
    /// Inserts one validated event with its id at `now_ms`.
    #[doc(hidden)]
    fn insert_event<'a>(&'a mut self, id: Uuid, event: &'a OutboxEvent, now_ms: i64) -> Fut<'a, ()>;

    /// Records `(consumer, message_id)`; `true` if it was not there before.
    #[doc(hidden)]
    fn record<'a>(&'a mut self, consumer: &'a str, message_id: &'a str, now_ms: i64) -> Fut<'a, bool>;
}

mod private {
    pub trait Sealed {}
}

/// Writes `event` inside the caller's transaction and returns its id (a
/// UUIDv7, the message id sinks deduplicate on). The event is published
/// only if the transaction commits, and after every event of its aggregate
/// written by transactions that committed before it.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use spark_outbox::OutboxEvent;
///
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// spark_outbox::sqlite::migrator().run(&pool).await?;
/// let mut tx = pool.begin().await?;
/// // … the business writes …
/// let event = OutboxEvent::new("order", "o-1", "order.accepted", serde_json::json!({ "qty": 10 }));
/// let id = spark_outbox::enqueue(&mut *tx, &event).await?;
/// tx.commit().await?;
/// # let _ = id;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
///
/// On PostgreSQL see [`postgres::enqueue`](crate::postgres::enqueue) for
/// the advisory lock and the NOTIFY.
///
/// # Errors
///
/// [`OutboxError::InvalidEvent`](crate::OutboxError::InvalidEvent) for an
/// empty type, aggregate or event type; database errors.
pub async fn enqueue<C: OutboxConnection + ?Sized>(conn: &mut C, event: &OutboxEvent) -> Result<Uuid> {
    event.validate()?;
    let id = Uuid::now_v7();
    conn.insert_event(id, event, spark_db::Clock::now_ms(&spark_db::SystemClock)).await?;
    ::metrics::counter!(crate::metrics::ENQUEUED).increment(1);
    Ok(id)
}

fn headers(event: &OutboxEvent) -> String {
    // A map of strings always serializes.
    serde_json::to_string(&event.headers).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(feature = "postgres")]
impl private::Sealed for sqlx::PgConnection {}

#[cfg(feature = "postgres")]
impl OutboxConnection for sqlx::PgConnection {
    fn insert_event<'a>(&'a mut self, id: Uuid, event: &'a OutboxEvent, now_ms: i64) -> Fut<'a, ()> {
        Box::pin(async move {
            sqlx::query(crate::postgres::ENQUEUE)
                .bind(id.to_string())
                .bind(&event.aggregate_type)
                .bind(&event.aggregate_id)
                .bind(&event.event_type)
                .bind(event.payload.to_string())
                .bind(headers(event))
                .bind(now_ms)
                .execute(self)
                .await?;
            Ok(())
        })
    }

    fn record<'a>(&'a mut self, consumer: &'a str, message_id: &'a str, now_ms: i64) -> Fut<'a, bool> {
        Box::pin(async move {
            let row = sqlx::query(
                "INSERT INTO spark_inbox (consumer, message_id, processed_at_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (consumer, message_id) DO NOTHING RETURNING message_id",
            )
            .bind(consumer)
            .bind(message_id)
            .bind(now_ms)
            .fetch_optional(self)
            .await?;
            Ok(row.is_some())
        })
    }
}

#[cfg(feature = "sqlite")]
impl private::Sealed for sqlx::SqliteConnection {}

#[cfg(feature = "sqlite")]
impl OutboxConnection for sqlx::SqliteConnection {
    fn insert_event<'a>(&'a mut self, id: Uuid, event: &'a OutboxEvent, now_ms: i64) -> Fut<'a, ()> {
        Box::pin(async move {
            sqlx::query(crate::sqlite::ENQUEUE)
                .bind(id.to_string())
                .bind(&event.aggregate_type)
                .bind(&event.aggregate_id)
                .bind(&event.event_type)
                .bind(event.payload.to_string())
                .bind(headers(event))
                .bind(now_ms)
                .execute(self)
                .await?;
            Ok(())
        })
    }

    fn record<'a>(&'a mut self, consumer: &'a str, message_id: &'a str, now_ms: i64) -> Fut<'a, bool> {
        Box::pin(async move {
            let row = sqlx::query(
                "INSERT INTO spark_inbox (consumer, message_id, processed_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (consumer, message_id) DO NOTHING RETURNING message_id",
            )
            .bind(consumer)
            .bind(message_id)
            .bind(now_ms)
            .fetch_optional(self)
            .await?;
            Ok(row.is_some())
        })
    }
}
