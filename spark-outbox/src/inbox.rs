//! The consumer side: apply each event once per consumer.

use spark_db::Clock;

use crate::OutboxConnection;

/// What [`Inbox::process`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed<T> {
    /// First time for this consumer: the handler ran and returned this.
    Applied(T),
    /// This consumer processed the id before; the handler did not run.
    Duplicate,
}

/// Applies each delivered message once per consumer: delivery is at least
/// once, so a redelivered message must find its id already recorded.
///
/// [`Inbox::process`] records `(consumer, message_id)` with `INSERT … ON
/// CONFLICT DO NOTHING` and runs the handler, both inside a savepoint of the
/// caller's transaction:
///
/// - two consumers of one message (billing and shipping) each process it
///   once, because the key includes the consumer;
/// - a handler error rolls back to the savepoint: the id is not recorded
///   (the message is retried) and the handler's writes are undone, while the
///   caller's own transaction stays usable;
/// - if the caller rolls back, the record goes with its writes.
///
/// Called on a connection outside a transaction, the savepoint is a
/// transaction of its own.
///
/// Rows recorded before consumers had names (the first migration) belong to
/// the consumer `"default"`, which is what [`Inbox::default`] uses.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use spark_outbox::{Inbox, Processed};
///
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// spark_outbox::sqlite::migrator().run(&pool).await?;
/// let billing = Inbox::new("billing");
/// for _ in 0..2 {
///     let mut tx = pool.begin().await?;
///     let outcome = billing.process(&mut *tx, "event-1", async |_conn| Ok::<_, sqlx::Error>("applied")).await?;
///     tx.commit().await?;
///     println!("{outcome:?}"); // Applied("applied"), then Duplicate
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbox {
    consumer: String,
}

impl Default for Inbox {
    /// The consumer `"default"`, which also owns the ids recorded before
    /// the inbox was keyed by consumer.
    fn default() -> Self {
        Inbox::new(Inbox::DEFAULT_CONSUMER)
    }
}

impl Inbox {
    /// The consumer of [`Inbox::default`] and of rows recorded before the
    /// inbox was keyed by consumer.
    pub const DEFAULT_CONSUMER: &'static str = "default";

    /// The inbox of one consumer. Each consumer that applies a message
    /// stream on its own (a projection, a mailer) needs its own name, or
    /// the first to process a message hides it from the others.
    #[must_use]
    pub fn new(consumer: impl Into<String>) -> Inbox {
        Inbox { consumer: consumer.into() }
    }

    /// The consumer's name.
    #[must_use]
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Runs `handler` on the caller's connection unless this consumer
    /// processed `message_id` before; see [`Inbox`] for the savepoint.
    ///
    /// # Errors
    ///
    /// The handler's error (nothing recorded, the handler's writes rolled
    /// back), or a database error (through `E: From<sqlx::Error>`).
    pub async fn process<C, T, E, F>(&self, conn: &mut C, message_id: &str, handler: F) -> Result<Processed<T>, E>
    where
        C: OutboxConnection,
        C::Database: sqlx::Database<Connection = C>,
        F: AsyncFnOnce(&mut C) -> Result<T, E>,
        E: From<sqlx::Error>,
    {
        // sqlx turns `begin` on a connection already in a transaction into
        // a SAVEPOINT, and rolls it back if this future is dropped midway.
        let mut savepoint = conn.begin().await?;
        let now_ms = spark_db::SystemClock.now_ms();
        if !savepoint.record(&self.consumer, message_id, now_ms).await? {
            savepoint.rollback().await?;
            return Ok(Processed::Duplicate);
        }
        match handler(&mut *savepoint).await {
            Ok(value) => {
                savepoint.commit().await?;
                Ok(Processed::Applied(value))
            }
            Err(err) => {
                savepoint.rollback().await?;
                Err(err)
            }
        }
    }
}
