//! The PostgreSQL backend: concurrent writers, serialized per position by
//! the partial unique index and row locks.

use spark_db::SharedClock;
use sqlx::{Connection, PgConnection, PgPool};

use crate::model::{Book, Fill, Position, Step, step};
use crate::sql::{self, ATTEMPTS, LINK_FILL, PositionFilter, position_select, unique};
use crate::{PositionsError, Result, metrics};

/// Inserts an open position; `$conflict` is what to do if one is open.
macro_rules! insert_open {
    ($conflict:literal) => {
        concat!(
            "INSERT INTO spark_positions
                (account_id, instrument, status, quantity, cost_basis, realized_pnl, currency, price_scale, opened_at_ms, version)
             VALUES ($1, $2, 'open', $3::numeric, $4::numeric, 0, $5, $6, $7, 1) ",
            $conflict,
            " RETURNING id, account_id, instrument, status, quantity::text, cost_basis::text, realized_pnl::text,
                currency, price_scale, opened_at_ms, closed_at_ms, version"
        )
    };
}

/// The open/increase path: SQL adds the fill (exact NUMERIC addition) when a
/// position in the same direction is open, and does nothing (no row back)
/// when it goes the other way.
const OPEN_OR_INCREASE: &str = insert_open!(
    "ON CONFLICT (account_id, instrument) WHERE status = 'open' DO UPDATE SET
        quantity = spark_positions.quantity + excluded.quantity,
        cost_basis = spark_positions.cost_basis + excluded.cost_basis,
        price_scale = excluded.price_scale,
        version = spark_positions.version + 1
     WHERE sign(spark_positions.quantity) = sign(excluded.quantity)
       AND spark_positions.currency = excluded.currency"
);

/// The PostgreSQL position book.
///
/// Opening and increasing is one `INSERT … ON CONFLICT (account_id,
/// instrument) WHERE status = 'open' DO UPDATE` that adds the fill in SQL
/// (exact `NUMERIC` addition); reducing, closing and flipping lock the open
/// row (`FOR UPDATE`) and write values computed in Rust. Two concurrent
/// fills can therefore never create two open positions: the partial unique
/// index makes the second insert an update of the first.
#[derive(Clone)]
pub struct PgPositions {
    clock: SharedClock,
}

sql::book_impls!(PgPositions);

/// The migrations that create the tables; they ignore migrations they do
/// not know, so they run beside an application's own.
#[must_use]
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("./migrations/postgres");
    m.set_ignore_missing(true);
    m
}

impl PgPositions {
    /// Applies `fill` inside the caller's transaction, in a savepoint of its
    /// own: a refused fill leaves nothing behind (not even its id, so the
    /// corrected fill can be sent again under the same id) and the
    /// transaction stays usable. On a connection outside a transaction the
    /// fill is applied in a transaction of its own.
    ///
    /// # Errors
    ///
    /// [`PositionsError::AlreadyApplied`] for a fill id applied before,
    /// [`PositionsError::InvalidFill`] and [`PositionsError::PriceScale`]
    /// for a fill that cannot be applied, [`PositionsError::CurrencyMismatch`],
    /// [`PositionsError::DuplicateOpenPosition`] if the partial index refuses
    /// a row, and database errors.
    pub async fn apply_fill(&self, conn: &mut PgConnection, fill: &Fill) -> Result<Step> {
        let q = sql::validate(fill)?;
        let mut savepoint = conn.begin().await?;
        let outcome = self.apply_in(&mut savepoint, fill, q).await;
        sql::finish(savepoint, outcome).await
    }

    async fn apply_in(&self, conn: &mut PgConnection, fill: &Fill, q: spark_money::Decimal) -> Result<Step> {
        let now = self.clock.now_ms();
        let price_scale = sql::price_scale(fill);
        sql::claim_fill!(&mut *conn, fill, now, "::numeric");
        let notional = crate::model::times(q, fill.price)?;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                metrics::conflict_retried();
            }
            // The open/increase path, in one statement.
            let row: Option<sql::Row> = sqlx::query_as(OPEN_OR_INCREASE)
                .bind(&fill.account_id)
                .bind(&fill.instrument)
                .bind(q.to_string())
                .bind(notional.to_string())
                .bind(fill.currency.code())
                .bind(price_scale)
                .bind(now)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| unique(e, fill))?;
            if let Some(row) = row {
                let pos = sql::position(row)?;
                let step = if pos.version == 1 { Step::Open(pos.book()) } else { Step::Increase(pos.book()) };
                sql::record(if pos.version == 1 { "open" } else { "increase" });
                self.link(conn, fill, pos.id, pos.version).await?;
                return Ok(step);
            }
            // Opposite direction (or another currency): lock and compute.
            let sql = concat!(
                position_select!("::text"),
                "WHERE account_id = $1 AND instrument = $2 AND status = 'open' FOR UPDATE"
            );
            let current: Option<sql::Row> =
                sqlx::query_as(sql).bind(&fill.account_id).bind(&fill.instrument).fetch_optional(&mut *conn).await?;
            let Some(current) = current.map(sql::position).transpose()? else { continue };
            if current.currency() != fill.currency {
                return Err(PositionsError::CurrencyMismatch { fill: fill.currency, position: current.currency() });
            }
            let step = step(Some(current.book()), q, fill.price)?;
            let (id, version) = match step {
                Step::Reduce(b) => (current.id, self.write(conn, &current, b, None, price_scale).await?),
                Step::Close(b) => (current.id, self.write(conn, &current, b, Some(now), price_scale).await?),
                Step::Flip { closed, opened } => {
                    self.write(conn, &current, closed, Some(now), price_scale).await?;
                    let row: sql::Row = sqlx::query_as(insert_open!(""))
                        .bind(&fill.account_id)
                        .bind(&fill.instrument)
                        .bind(opened.quantity.to_string())
                        .bind(opened.cost_basis.to_string())
                        .bind(fill.currency.code())
                        .bind(price_scale)
                        .bind(now)
                        .fetch_one(&mut *conn)
                        .await
                        .map_err(|e| unique(e, fill))?;
                    (row.0, 1)
                }
                Step::Open(_) | Step::Increase(_) => continue,
            };
            sql::record(match step {
                Step::Reduce(_) => "reduce",
                Step::Close(_) => "close",
                _ => "flip",
            });
            self.link(conn, fill, id, version).await?;
            return Ok(step);
        }
        Err(PositionsError::Contention { account_id: fill.account_id.clone(), instrument: fill.instrument.clone() })
    }

    /// Writes a reduced or closed position (we hold its row lock).
    async fn write(
        &self,
        conn: &mut PgConnection,
        pos: &Position,
        b: Book,
        closed_at: Option<i64>,
        price_scale: i32,
    ) -> Result<i64> {
        let version: i64 = sqlx::query_scalar(
            "UPDATE spark_positions SET quantity = $2::numeric, cost_basis = $3::numeric, realized_pnl = $4::numeric,
                status = CASE WHEN $5::bigint IS NULL THEN 'open' ELSE 'closed' END, closed_at_ms = $5,
                price_scale = $7, version = version + 1
             WHERE id = $1 AND version = $6 RETURNING version",
        )
        .bind(pos.id)
        .bind(b.quantity.to_string())
        .bind(b.cost_basis.to_string())
        .bind(b.realized.to_string())
        .bind(closed_at)
        .bind(pos.version)
        .bind(price_scale)
        .fetch_one(&mut *conn)
        .await?;
        Ok(version)
    }

    async fn link(&self, conn: &mut PgConnection, fill: &Fill, id: i64, version: i64) -> Result<()> {
        sqlx::query(LINK_FILL).bind(id).bind(version).bind(&fill.fill_id).execute(&mut *conn).await?;
        Ok(())
    }

    sql::reads!(PgPool, "::text", "$1", "$2");
}
