//! The transactional outbox: an event is written in the same transaction as
//! the business change, so it is announced if and only if the change
//! commits; relays then publish it at least once, in order per aggregate.
//!
//! - **Enqueue** ([`enqueue`], generic over the sealed [`OutboxConnection`]:
//!   `PgConnection` or `SqliteConnection`) inside the caller's transaction;
//!   ids are UUIDv7. On PostgreSQL it takes an advisory lock on the
//!   aggregate (insertion order is commit order) and, at commit, NOTIFYs
//!   only if some relay is waiting for work: a NOTIFY serializes the commits
//!   of all notifying transactions.
//! - **Relays** ([`Relay`]) share the work through `FOR UPDATE SKIP LOCKED`
//!   (several relays, processes or hosts, no other coordination). A claim
//!   returns each aggregate's run in order; the relay publishes a run one
//!   event at a time and different aggregates in parallel. On PostgreSQL a
//!   claim is a transaction holding its events' row locks while they are
//!   published: [`OutboxStore::finish`] deletes the published ones and
//!   commits, a crash rolls back (the events are claimable at once), and a
//!   relay silent past its lease (and a quarter) is cut off by the server, so its late
//!   commit fails. On SQLite claims are leases fenced by a [`ClaimToken`]
//!   and events are marked as each publish completes. The claim's cost is
//!   the batch, not the backlog.
//! - **Per-aggregate order is absolute:** an aggregate's next event is not
//!   claimed while an earlier one is in flight, backing off, or dead
//!   ([`DeadLetterPolicy::Block`], the default) until the dead letter is
//!   retried or skipped on purpose. On PostgreSQL the events queued behind
//!   such an event are held aside (status `held`, out of the scanned index),
//!   so one stuck aggregate costs the others nothing.
//! - **Failures:** exponential backoff with full jitter (cap 5 min);
//!   transient failures are retried for a time budget (24 h), errors the
//!   sink refused a few times; then a dead letter with its last error. A
//!   whole batch failing transiently (the sink is down) makes the relay back
//!   off as a whole. Unreadable rows are dead-lettered; a panicking
//!   publisher is a failed attempt.
//! - **Runner:** [`RelayBuilder::spawn`] starts N relays and the LISTEN
//!   wake-up; [`RelayHandle::shutdown`] stops them and reports.
//! - **Wakeup:** [`postgres::Listen`] on a dedicated connection, which
//!   probes itself with a NOTIFY and reconnects when the probe does not
//!   arrive, plus polling as a fallback.
//! - **Sinks:** [`Publisher`] — [`WebhookPublisher`] (HMAC-signed),
//!   [`NatsPublisher`] (JetStream, `Nats-Msg-Id` dedupe), [`ChannelPublisher`]
//!   for tests, [`NullPublisher`] for benchmarks.
//! - **Inbox:** [`Inbox::process`] applies each delivered event once.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use spark_outbox::{ChannelPublisher, OutboxEvent, Relay, SqliteOutbox};
//!
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! spark_outbox::sqlite::migrator().run(&pool).await?;
//!
//! // In the business transaction:
//! let mut tx = pool.begin().await?;
//! let event = OutboxEvent::new("order", "ord-1", "order.accepted", serde_json::json!({"qty": "100"}));
//! let id = spark_outbox::sqlite::enqueue(&mut tx, &event).await?;
//! tx.commit().await?;
//!
//! // A relay publishes it.
//! let (publisher, mut received) = ChannelPublisher::new();
//! let relay = Relay::builder(SqliteOutbox::new(pool.clone())).build()?;
//! relay.run_once(&publisher).await?;
//! assert_eq!(received.recv().await.unwrap().id, id);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Features
//!
//! - `sqlite` (default): [`SqliteOutbox`], one polling relay.
//! - `postgres`: [`PgOutbox`], SKIP LOCKED relays and LISTEN/NOTIFY.
//! - `webhook`: [`WebhookPublisher`] (reqwest on rustls).
//! - `nats`: [`NatsPublisher`] (async-nats JetStream).

// The docs link the backends and sinks; built with only some features (the
// default is `sqlite` alone) those items do not exist, and a link to them is
// not an error in the docs of the features that were chosen.
#![cfg_attr(
    not(all(feature = "postgres", feature = "sqlite", feature = "webhook", feature = "nats")),
    allow(rustdoc::broken_intra_doc_links, reason = "links to items of features not enabled in this build")
)]
// Without a backend (spark-rollback takes only `webhook`, to sign its
// rollback webhooks like the relay's) the shared row decoding and SQL have
// no caller.
#![cfg_attr(
    not(any(feature = "postgres", feature = "sqlite")),
    allow(dead_code, reason = "the row and SQL helpers serve the backends only")
)]

mod connection;
mod error;
mod event;
mod inbox;
pub mod metrics;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
mod publisher;
mod relay;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod store;
#[cfg(feature = "webhook")]
pub mod webhook;

pub use crate::connection::{OutboxConnection, enqueue};
pub use crate::error::{OutboxError, PublishError, Result};
pub use crate::event::{DeadLetter, Event, OutboxEvent, OutboxStats};
pub use crate::inbox::{Inbox, Processed};
#[cfg(feature = "nats")]
pub use crate::nats::{DuplicateWindow, NatsPublisher};
#[cfg(feature = "postgres")]
pub use crate::postgres::PgOutbox;
pub use crate::publisher::{ChannelPublisher, NullPublisher, Publisher};
pub use crate::relay::{BatchReport, DeadLetterPolicy, Relay, RelayBuilder, RelayHandle, RelayReport};
#[cfg(feature = "sqlite")]
pub use crate::sqlite::SqliteOutbox;
pub use crate::store::{Claim, ClaimToken, Failed, Failure, OutboxStore, Unreadable};
#[cfg(feature = "webhook")]
pub use crate::webhook::WebhookPublisher;

/// This crate's migrations, for [`spark_db::Database::migrate`].
pub const MIGRATIONS: spark_db::Migrations = spark_db::crate_migrations!("spark-outbox");
