//! `Idempotency-Key` claims: a retried request gets the first outcome back,
//! byte for byte, and the work runs exactly once — even when the retries
//! arrive in parallel, even when the server crashed in the middle.
//!
//! One record per (scope, key) holds the request's [`Fingerprint`], its state
//! (in flight or completed), the stored response, a lease and a fencing
//! number. A claim is a single `INSERT … ON CONFLICT` statement and answers
//! with a [`Claim`]:
//!
//! | the record | the answer |
//! |---|---|
//! | absent, or past its TTL | [`Claim::Acquired`]: run the work |
//! | same fingerprint, completed | [`Claim::Replay`] of the stored response |
//! | same fingerprint, in flight, lease alive | [`Claim::InFlight`] (HTTP 409 with `Retry-After`) |
//! | same fingerprint, lease expired | [`Claim::Acquired`] with a new fencing number (takeover); the old holder's completion is refused |
//! | different fingerprint (body, method or path) | [`Claim::Mismatch`] (HTTP 422) |
//!
//! Definitive outcomes (2xx, 3xx, 4xx other than 408/409/429) are stored and
//! replayed; 5xx, 408 and 429 release the key so a retry executes again
//! (configurable with [`Config::with_store_policy`]).
//!
//! # Two modes
//!
//! - **Leased** ([`IdempotencyStore`]): the claim commits on its own, the
//!   work runs (say, a call to an exchange), and the completion comes later.
//!   A crash leaves a lease that expires; a retry then takes over.
//! - **Transactional** ([`SqlStore::claim_in`], on `PgStore` and
//!   `SqliteStore`): claim and completion run inside the caller's transaction, so the
//!   business write and the stored response commit or roll back together; a
//!   rollback frees the key. When the response is known before the work,
//!   [`SqlStore::claim_and_complete_in`] claims and stores it in one
//!   statement.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use spark_idempotency::{Claim, Config, Fingerprint, IdempotencyKey, SqliteStore, StoredResponse};
//!
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! let store = SqliteStore::new(pool.clone(), Config::default())?;
//! store.migrate().await?;
//! sqlx::query("CREATE TABLE orders (id TEXT PRIMARY KEY)").execute(&pool).await?;
//!
//! let key: IdempotencyKey = "order-42".parse()?;
//! let fp = Fingerprint::of_request("POST", "/v1/orders", b"{}");
//! for _attempt in 0..2 {
//!     let mut tx = pool.begin().await?;
//!     match store.claim_in(&mut tx, "client-a", &key, &fp).await? {
//!         Claim::Acquired(lease) => {
//!             sqlx::query("INSERT INTO orders (id) VALUES ('42')").execute(&mut *tx).await?;
//!             store.complete_in(&mut tx, &lease, &StoredResponse::new(201, "created")).await?;
//!             tx.commit().await?;
//!         }
//!         Claim::Replay(stored) => assert_eq!(stored.body, b"created"),
//!         other => panic!("{other:?}"),
//!     }
//! }
//! let orders: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders").fetch_one(&pool).await?;
//! assert_eq!(orders, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Features
//!
//! - `sqlite` (default): [`SqliteStore`] (`SqlStore<sqlx::Sqlite>`), with
//!   SQLite bundled.
//! - `postgres`: `PgStore` (`SqlStore<sqlx::Postgres>`), the production
//!   backend.
//! - `tower`: `IdempotencyLayer`, a tower layer for axum and other tower
//!   stacks.
//!
//! [`MemoryStore`] is always there, for users' unit tests.
//!
//! # Metrics
//!
//! Through the `metrics` facade (see [`metrics`](mod@metrics)): claims by
//! outcome, completions, GC deletions, live, expired and in-flight keys; spans and
//! events through `tracing`.

mod error;
mod key;
#[cfg(feature = "tower")]
mod layer;
mod memory;
pub mod metrics;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod sql_store;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod store;
mod types;

pub use crate::error::{IdempotencyError, Result};
pub use crate::key::{Fingerprint, IdempotencyKey};
#[cfg(feature = "tower")]
pub use crate::layer::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, IdempotencyLayer, IdempotencyService, LayerConfig};
pub use crate::memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use crate::postgres::PgStore;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use crate::sql_store::{SqlBackend, SqlStore};
#[cfg(feature = "sqlite")]
pub use crate::sqlite::SqliteStore;
pub use crate::store::IdempotencyStore;
pub use crate::types::{Claim, Clock, Config, Lease, ManualClock, Stats, StoredResponse, SystemClock, is_definitive};

/// This crate's migrations, for [`spark_db::Database::migrate`].
pub const MIGRATIONS: spark_db::Migrations = spark_db::crate_migrations!("spark-idempotency");
