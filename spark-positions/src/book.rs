//! The position book: what both backends share, written once over the
//! sealed [`BookBackend`] trait; each backend's statements live in its own
//! module as plain Rust.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;

use spark_db::{Clock, SharedClock};
use spark_money::Decimal;
use sqlx::{Connection, Database, Pool};

use crate::model::{Fill, Position, Step};
use crate::{PositionsError, Result};

/// Which positions [`Positions::positions`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PositionFilter {
    /// Open positions only.
    #[default]
    Open,
    /// Open and closed, newest first.
    All,
}

/// A database a book runs on: `postgres::PgBackend` or
/// `sqlite::SqliteBackend` (each behind its cargo feature). Sealed: the
/// methods are each backend's statements, called only by [`Positions`].
pub trait BookBackend: private::Sealed + Send + Sync + 'static {
    /// The sqlx database.
    type Db: Database;

    /// The book's type name, for `Debug`.
    #[doc(hidden)]
    const NAME: &'static str;

    /// Claims the fill id and applies the fill (already validated) at
    /// `now`, on a connection inside the savepoint of
    /// [`Positions::apply_fill`] or the transaction of
    /// [`Positions::apply_fill_or_roll_back`]: on an error, the caller rolls
    /// back whatever this wrote.
    #[doc(hidden)]
    fn apply(
        conn: &mut <Self::Db as Database>::Connection,
        fill: &Fill,
        q: Decimal,
        now: i64,
    ) -> impl Future<Output = Result<Step>> + Send;

    /// The open position of an account in an instrument.
    #[doc(hidden)]
    fn open_position(
        pool: &Pool<Self::Db>,
        account_id: &str,
        instrument: &str,
    ) -> impl Future<Output = Result<Option<Position>>> + Send;

    /// The positions of an account, newest first.
    #[doc(hidden)]
    fn positions(
        pool: &Pool<Self::Db>,
        account_id: &str,
        filter: PositionFilter,
    ) -> impl Future<Output = Result<Vec<Position>>> + Send;
}

pub(crate) mod private {
    /// Only this crate's backends implement [`BookBackend`](super::BookBackend).
    pub trait Sealed {}
}

/// A position book on backend `B`; use the aliases `PgPositions` and
/// `SqlitePositions`. The logic is written once here; the statements live
/// in each backend's module.
///
/// It holds no connection: every call takes the caller's transaction or
/// pool, so fills join the caller's own writes atomically.
pub struct Positions<B> {
    clock: SharedClock,
    backend: PhantomData<fn() -> B>,
}

impl<B> Clone for Positions<B> {
    fn clone(&self) -> Self {
        Positions { clock: self.clock.clone(), backend: PhantomData }
    }
}

impl<B: BookBackend> fmt::Debug for Positions<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(B::NAME).field("clock", &self.clock).finish()
    }
}

impl<B: BookBackend> Default for Positions<B> {
    fn default() -> Self {
        Positions { clock: spark_db::system_clock(), backend: PhantomData }
    }
}

impl<B: BookBackend> Positions<B> {
    /// A book on the system clock.
    #[must_use]
    pub fn new() -> Self {
        Positions::default()
    }

    /// A book whose timestamps (opened, closed, applied) come from `clock`,
    /// e.g. a [`spark_db::ManualClock`] in tests.
    #[must_use]
    pub fn with_clock(clock: impl Clock + 'static) -> Self {
        Positions { clock: std::sync::Arc::new(clock), backend: PhantomData }
    }

    /// Applies `fill` inside the caller's transaction, in a savepoint of its
    /// own: a refused fill leaves nothing behind (not even its id, so the
    /// corrected fill can be sent again under the same id) and the
    /// transaction stays usable. On a connection outside a transaction the
    /// fill is applied in a transaction of its own.
    ///
    /// On PostgreSQL, opening and increasing is one `INSERT … ON CONFLICT
    /// (account_id, instrument) WHERE status = 'open' DO UPDATE`; reducing,
    /// closing and flipping lock the open row. On SQLite, which serializes
    /// writers, the fill reads the open position and writes it back under a
    /// version check: start transactions that read before they apply fills
    /// with `BEGIN IMMEDIATE`.
    ///
    /// # Errors
    ///
    /// [`PositionsError::AlreadyApplied`] for a fill id applied before,
    /// [`PositionsError::InvalidFill`] and [`PositionsError::PriceScale`]
    /// for a fill that cannot be applied, [`PositionsError::CurrencyMismatch`],
    /// [`PositionsError::DuplicateOpenPosition`] if the partial index refuses
    /// a row, [`PositionsError::Contention`], and database errors.
    pub async fn apply_fill(&self, conn: &mut <B::Db as Database>::Connection, fill: &Fill) -> Result<Step> {
        let q = validate(fill)?;
        let now = self.clock.now_ms();
        let mut savepoint = conn.begin().await?;
        let outcome = B::apply(&mut savepoint, fill, q, now).await;
        finish(savepoint, outcome).await
    }

    /// Applies `fill` as one more write of the caller's transaction, without
    /// the savepoint [`apply_fill`](Self::apply_fill) opens and releases: two
    /// round trips fewer, and on PostgreSQL a fill that opens or increases a
    /// position is one statement in all. For a caller that rolls back
    /// whenever a fill is refused anyway, such as a service that writes an
    /// order and its fill together.
    ///
    /// It takes the transaction and gives it back only with the applied
    /// fill: a refused fill rolls the whole transaction back, so it leaves
    /// no trace (its id is free for the corrected fill) and nothing the
    /// transaction wrote before it can be committed without it.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use spark_money::{Currency, Side};
    /// use spark_positions::{Fill, SqlitePositions};
    ///
    /// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
    /// spark_positions::sqlite::migrator().run(&pool).await?;
    /// let book = SqlitePositions::new();
    /// let fill = Fill {
    ///     fill_id: "o-1".into(),
    ///     account_id: "acc-1".into(),
    ///     instrument: "THYAO".into(),
    ///     side: Side::Buy,
    ///     quantity: "100".parse()?,
    ///     price: "101.30".parse()?,
    ///     currency: Currency::TRY,
    ///     price_scale: 2,
    /// };
    /// let tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    /// // … the order's own writes on `tx` …
    /// let (tx, _step) = book.apply_fill_or_roll_back(tx, &fill).await?;
    /// tx.commit().await?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// As [`apply_fill`](Self::apply_fill); the transaction is rolled back
    /// (or, if the rollback fails, dropped, which rolls it back too).
    pub async fn apply_fill_or_roll_back<'c>(
        &self,
        mut tx: sqlx::Transaction<'c, B::Db>,
        fill: &Fill,
    ) -> Result<(sqlx::Transaction<'c, B::Db>, Step)> {
        let applied = match validate(fill) {
            Ok(q) => B::apply(&mut tx, fill, q, self.clock.now_ms()).await,
            Err(refused) => Err(refused),
        };
        match applied {
            Ok(step) => Ok((tx, step)),
            Err(refused) => {
                // The refusal is the error the caller needs; a failed
                // rollback drops the connection, which rolls back as well.
                let _ = tx.rollback().await;
                Err(refused)
            }
        }
    }

    /// The open position of `account_id` in `instrument`, if any.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn open_position(
        &self,
        pool: &Pool<B::Db>,
        account_id: &str,
        instrument: &str,
    ) -> Result<Option<Position>> {
        B::open_position(pool, account_id, instrument).await
    }

    /// The positions of `account_id`, newest first.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn positions(
        &self,
        pool: &Pool<B::Db>,
        account_id: &str,
        filter: PositionFilter,
    ) -> Result<Vec<Position>> {
        B::positions(pool, account_id, filter).await
    }
}

/// The checks a fill must pass before anything about it is written. Returns
/// the signed quantity.
fn validate(fill: &Fill) -> Result<Decimal> {
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

/// Ends the savepoint `apply_fill` runs in (or the transaction of its own on
/// a connection outside one): released when the fill was applied, rolled
/// back when it was refused, so that a refused fill never leaves its id
/// behind to make a corrected retry `AlreadyApplied`, and a failed statement
/// does not poison the caller's transaction.
async fn finish<DB: Database, T>(savepoint: sqlx::Transaction<'_, DB>, outcome: Result<T>) -> Result<T> {
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

/// The price scale as the `INTEGER` column stores it (at most 28, checked
/// by `validate`).
pub(crate) fn price_scale(fill: &Fill) -> i32 {
    i32::try_from(fill.price_scale).unwrap_or(i32::MAX)
}

/// How many times a fill re-reads a position that changed under it.
pub(crate) const ATTEMPTS: usize = 16;

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

/// The claim found the fill id recorded: a repeat, which changes nothing.
pub(crate) fn already_applied(fill: &Fill) -> PositionsError {
    crate::metrics::duplicate();
    PositionsError::AlreadyApplied { fill_id: fill.fill_id.clone() }
}
