//! At most one open position per account and instrument, with exact
//! arithmetic.
//!
//! # The guarantee lives in the database
//!
//! ```sql
//! CREATE UNIQUE INDEX spark_positions_one_open
//!     ON spark_positions (account_id, instrument) WHERE status = 'open';
//! ```
//!
//! Two concurrent fills can never create two open positions, and neither can
//! code that bypasses this crate: the partial unique index refuses the
//! second row. Every indexed column is `NOT NULL`, so a `NULL` cannot slip a
//! duplicate past it. To add the index to a live PostgreSQL table without
//! blocking writes, create it by hand with `CREATE UNIQUE INDEX CONCURRENTLY`
//! (outside a transaction) before running the migration, which then finds it
//! present (`IF NOT EXISTS`).
//!
//! On PostgreSQL, opening and increasing is one `INSERT … ON CONFLICT
//! (account_id, instrument) WHERE status = 'open' DO UPDATE` that adds the
//! fill in SQL; reducing, closing and flipping lock the open row and write
//! values computed in Rust. A violation of the index surfaces as
//! [`PositionsError::DuplicateOpenPosition`], never a panic.
//!
//! # Rounding never happens in SQL
//!
//! Quantities, cost basis and realized PnL are exact decimals. SQL only adds,
//! subtracts and compares them: PostgreSQL's `round()` breaks ties away from
//! zero, and SQLite has no exact decimal type at all (decimals are stored as
//! text there and every computation happens in Rust). The one rounding —
//! the share of cost taken out by a partial reduction — is done once, in
//! Rust, with banker's rounding ([`model::step`] explains the accounting),
//! and the average price is derived on read ([`Position::average_price`]),
//! rounded half-even to the instrument's price scale that every [`Fill`]
//! carries ([`Fill::price_scale`]), the same on both backends.
//!
//! # A refused fill leaves no trace
//!
//! `apply_fill` checks what it can before touching the database, then works
//! in a savepoint of the caller's transaction: a fill refused for any reason
//! (another currency, a price finer than its scale, a contended row) rolls
//! back to it, so its id is not recorded and the corrected fill can be sent
//! again under the same id. Only an applied fill makes a repeat
//! [`PositionsError::AlreadyApplied`].
//!
//! # Time
//!
//! Timestamps come from a [`spark_db::Clock`]: the system clock by default,
//! or any other through `with_clock` (a [`spark_db::ManualClock`] in tests).
//!
//! Whatever the rounding, `realized PnL == cost basis − Σ(signed qty × price)`
//! holds exactly, so a position that goes flat has realized exactly its cash
//! flow.
//!
//! # Example
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use spark_money::{Currency, Side};
//! use spark_positions::{Fill, PositionFilter, SqlitePositions, Step};
//!
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! spark_positions::sqlite::migrator().run(&pool).await?;
//! let book = SqlitePositions::new();
//! let fill = |id: &str, side, qty: &str, price: &str| Fill {
//!     fill_id: id.into(),
//!     account_id: "acc-1".into(),
//!     instrument: "THYAO".into(),
//!     side,
//!     quantity: qty.parse().unwrap(),
//!     price: price.parse().unwrap(),
//!     currency: Currency::TRY,
//!     price_scale: 2, // BIST equities: TickTable::bist_equity().price_scale()
//! };
//!
//! let mut tx = pool.begin().await?;
//! book.apply_fill(&mut tx, &fill("f1", Side::Buy, "100", "101.30")).await?;
//! book.apply_fill(&mut tx, &fill("f2", Side::Buy, "50", "101.60")).await?;
//! let step = book.apply_fill(&mut tx, &fill("f3", Side::Sell, "150", "102.00")).await?;
//! assert!(matches!(step, Step::Close(_)));
//! // The same fill again has no effect.
//! assert!(book.apply_fill(&mut tx, &fill("f1", Side::Buy, "100", "101.30")).await.is_err());
//! tx.commit().await?;
//!
//! let all = book.positions(&pool, "acc-1", PositionFilter::All).await?;
//! assert_eq!(all[0].realized_pnl().to_string(), "90.00 TRY"); // 15300 − 15210
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Features
//!
//! - `sqlite` (default): `SqlitePositions`, with SQLite bundled.
//! - `postgres`: `PgPositions`, the production backend.

mod book;
mod error;
pub mod metrics;
pub mod model;
#[cfg(feature = "postgres")]
pub mod postgres;
mod row;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use crate::book::{BookBackend, PositionFilter, Positions};
pub use crate::error::{PositionsError, Result};
pub use crate::model::{Fill, Position, Status, Step};
#[cfg(feature = "postgres")]
pub use crate::postgres::PgPositions;
#[cfg(feature = "sqlite")]
pub use crate::sqlite::SqlitePositions;

/// This crate's migrations, for [`spark_db::Database::migrate`].
pub const MIGRATIONS: spark_db::Migrations = spark_db::crate_migrations!("spark-positions");
