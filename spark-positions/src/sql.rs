//! What both backends share: row decoding, and the parts of the store that
//! are the same SQL on both (written in `$n` syntax; SQLite gets `?n`).

use spark_money::{Currency, Decimal, Money, parse_decimal};

use crate::model::{Fill, Position, Status};
use crate::{PositionsError, Result};

/// The columns of a position row; decimals as text.
pub(crate) type Row = (i64, String, String, String, String, String, String, String, i32, i64, Option<i64>, i64);

pub(crate) fn position(row: Row) -> Result<Position> {
    let (
        id,
        account_id,
        instrument,
        status,
        quantity,
        cost_basis,
        realized,
        currency,
        price_scale,
        opened,
        closed,
        version,
    ) = row;
    let dec = |s: &str| parse_decimal(s).map_err(|e| PositionsError::Corrupt(format!("position {id}: {e}")));
    let currency = Currency::new(&currency).map_err(|e| PositionsError::Corrupt(format!("position {id}: {e}")))?;
    Ok(Position {
        id,
        account_id,
        instrument,
        status: Status::parse(&status)?,
        quantity: dec(&quantity)?,
        cost_basis: dec(&cost_basis)?,
        realized_pnl: Money::new(dec(&realized)?, currency),
        price_scale: u32::try_from(price_scale)
            .map_err(|_| PositionsError::Corrupt(format!("position {id}: scale")))?,
        opened_at_ms: opened,
        closed_at_ms: closed,
        version,
    })
}

/// Which positions a book's `positions` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PositionFilter {
    /// Open positions only.
    #[default]
    Open,
    /// Open and closed, newest first.
    All,
}

/// `SELECT` list and `FROM` for positions; `$dec` casts a decimal column to
/// text where the backend stores NUMERIC.
macro_rules! position_select {
    ($dec:literal) => {
        concat!(
            "SELECT id, account_id, instrument, status, quantity",
            $dec,
            ", cost_basis",
            $dec,
            ", realized_pnl",
            $dec,
            ", currency, price_scale, opened_at_ms, closed_at_ms, version FROM spark_positions "
        )
    };
}

pub(crate) use position_select;

/// The read methods, the same on both backends but for the pool type, the
/// text cast of decimal columns and the placeholder syntax.
macro_rules! reads {
    ($pool:ty, $dec:literal, $p1:literal, $p2:literal) => {
        /// The open position of `account_id` in `instrument`, if any.
        ///
        /// # Errors
        ///
        /// Database errors.
        pub async fn open_position(
            &self,
            pool: &$pool,
            account_id: &str,
            instrument: &str,
        ) -> Result<Option<Position>> {
            let sql = concat!(
                position_select!($dec),
                "WHERE account_id = ",
                $p1,
                " AND instrument = ",
                $p2,
                " AND status = 'open'"
            );
            let row: Option<sql::Row> =
                sqlx::query_as(sql).bind(account_id).bind(instrument).fetch_optional(pool).await?;
            row.map(sql::position).transpose()
        }

        /// The positions of `account_id`, newest first.
        ///
        /// # Errors
        ///
        /// Database errors.
        pub async fn positions(&self, pool: &$pool, account_id: &str, filter: PositionFilter) -> Result<Vec<Position>> {
            let sql = match filter {
                PositionFilter::Open => {
                    concat!(position_select!($dec), "WHERE account_id = ", $p1, " AND status = 'open' ORDER BY id DESC")
                }
                PositionFilter::All => concat!(position_select!($dec), "WHERE account_id = ", $p1, " ORDER BY id DESC"),
            };
            let rows: Vec<sql::Row> = sqlx::query_as(sql).bind(account_id).fetch_all(pool).await?;
            rows.into_iter().map(sql::position).collect()
        }
    };
}

pub(crate) use reads;

/// Claims the fill id; no row back means it was applied before.
macro_rules! claim_fill_sql {
    ($num:literal) => {
        concat!(
            "INSERT INTO spark_position_fills
                (fill_id, account_id, instrument, side, quantity, price, currency, applied_at_ms)
             VALUES ($1, $2, $3, $4, $5",
            $num,
            ", $6",
            $num,
            ", $7, $8)
             ON CONFLICT (fill_id) DO NOTHING RETURNING fill_id"
        )
    };
}

pub(crate) use claim_fill_sql;

/// How many times a fill re-reads a position that changed under it.
pub(crate) const ATTEMPTS: usize = 16;

/// The constructors and trait impls a position book type shares.
macro_rules! book_impls {
    ($book:ident) => {
        impl std::fmt::Debug for $book {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($book)).field("clock", &self.clock).finish()
            }
        }

        impl Default for $book {
            fn default() -> Self {
                $book { clock: spark_db::system_clock() }
            }
        }

        impl $book {
            /// A book on the system clock.
            #[must_use]
            pub fn new() -> Self {
                $book::default()
            }

            /// A book whose timestamps (opened, closed, applied) come from
            /// `clock`, e.g. a [`spark_db::ManualClock`] in tests.
            #[must_use]
            pub fn with_clock(clock: impl spark_db::Clock + 'static) -> Self {
                $book { clock: std::sync::Arc::new(clock) }
            }
        }
    };
}

pub(crate) use book_impls;

/// The checks a fill must pass before anything about it is written: a
/// refused fill leaves no trace, so the same id can be sent again once
/// corrected. Returns the signed quantity.
pub(crate) fn validate(fill: &Fill) -> Result<Decimal> {
    let q = fill.signed_quantity();
    if q.is_zero() {
        return Err(PositionsError::InvalidFill { fill_id: fill.fill_id.clone(), reason: "quantity is zero" });
    }
    if fill.price_scale > MAX_PRICE_SCALE || fill.price.get().normalize().scale() > fill.price_scale {
        return Err(PositionsError::PriceScale {
            fill_id: fill.fill_id.clone(),
            price: fill.price,
            price_scale: fill.price_scale,
        });
    }
    Ok(q)
}

/// The most decimal places a `Decimal` carries.
const MAX_PRICE_SCALE: u32 = 28;

/// The price scale as the `INTEGER` column stores it (at most 28, checked
/// by [`validate`]).
pub(crate) fn price_scale(fill: &Fill) -> i32 {
    i32::try_from(fill.price_scale).unwrap_or(i32::MAX)
}

/// Claims the fill id (a repeat is `AlreadyApplied` and changes nothing).
/// Run inside the savepoint of `apply_fill`, so that a fill refused later
/// gives its id back.
macro_rules! claim_fill {
    ($conn:expr, $fill:ident, $now:ident, $cast:literal) => {{
        let claimed = sqlx::query(crate::sql::claim_fill_sql!($cast))
            .bind(&$fill.fill_id)
            .bind(&$fill.account_id)
            .bind(&$fill.instrument)
            .bind($fill.side.as_str())
            .bind($fill.quantity.to_string())
            .bind($fill.price.to_string())
            .bind($fill.currency.code())
            .bind($now)
            .fetch_optional($conn)
            .await?;
        if claimed.is_none() {
            crate::metrics::duplicate();
            return Err(PositionsError::AlreadyApplied { fill_id: $fill.fill_id.clone() });
        }
    }};
}

pub(crate) use claim_fill;

/// Ends the savepoint `apply_fill` runs in (or the transaction of its own on
/// a connection outside one): released when the fill was applied, rolled
/// back when it was refused, so that a refused fill never leaves its id
/// behind to make a corrected retry `AlreadyApplied`, and a failed statement
/// does not poison the caller's transaction.
pub(crate) async fn finish<DB: sqlx::Database, T>(
    savepoint: sqlx::Transaction<'_, DB>,
    outcome: Result<T>,
) -> Result<T> {
    match outcome {
        Ok(done) => {
            savepoint.commit().await?;
            Ok(done)
        }
        Err(refused) => {
            savepoint.rollback().await?;
            Err(refused)
        }
    }
}

pub(crate) const LINK_FILL: &str =
    "UPDATE spark_position_fills SET position_id = $1, position_version = $2 WHERE fill_id = $3";

pub(crate) fn record(transition: &'static str) {
    tracing::debug!(transition, "fill applied");
    metrics::counter!(crate::metrics::FILLS_APPLIED, "transition" => transition).increment(1);
}

/// A unique violation on the partial index, as a typed error.
pub(crate) fn unique(e: sqlx::Error, fill: &Fill) -> PositionsError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => PositionsError::DuplicateOpenPosition {
            account_id: fill.account_id.clone(),
            instrument: fill.instrument.clone(),
        },
        _ => PositionsError::Database(e),
    }
}
