//! The PostgreSQL backend: concurrent writers, serialized per position by
//! the partial unique index and row locks.

use spark_money::Decimal;
use sqlx::{PgConnection, PgPool, Row as _};

use crate::book::{ATTEMPTS, BookBackend, PositionFilter, Positions, already_applied, price_scale, record, unique};
use crate::model::{Book, Fill, Position, Step, step};
use crate::row::{self, Row};
use crate::{PositionsError, Result, metrics};

/// The PostgreSQL position book.
///
/// Opening and increasing is one `INSERT … ON CONFLICT (account_id,
/// instrument) WHERE status = 'open' DO UPDATE` that adds the fill in SQL
/// (exact `NUMERIC` addition); reducing, closing and flipping lock the open
/// row (`FOR UPDATE`) and write values computed in Rust. Two concurrent
/// fills can therefore never create two open positions: the partial unique
/// index makes the second insert an update of the first.
pub type PgPositions = Positions<PgBackend>;

/// The PostgreSQL backend of [`Positions`].
#[derive(Debug, Clone, Copy)]
pub struct PgBackend;

impl crate::book::private::Sealed for PgBackend {}

/// The migrations that create the tables; they ignore migrations they do
/// not know, so they run beside an application's own.
#[must_use]
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("./migrations/postgres");
    m.set_ignore_missing(true);
    m
}

/// The first attempt of a fill, in one statement: claims the fill id, runs
/// the open/increase path ([`OPEN_OR_INCREASE`]) and records which position
/// version the fill produced. Returns whether the fill id was claimed, and
/// the position when the open/increase path applied it (all `NULL` when the
/// fill goes the other way or is in another currency; the fill is claimed
/// then, and linked once the locking path has applied it).
///
/// The upsert skips a fill id already recorded. A concurrent transaction
/// applying the same fill id can still slip past that check (it has not
/// committed yet); its fill insert then waits for it and claims nothing,
/// and `apply_fill` answers `AlreadyApplied`, rolling back what the upsert
/// did.
///
/// `$1` fill id, `$2` account, `$3` instrument, `$4` side, `$5` quantity,
/// `$6` price, `$7` currency, `$8` now, `$9` signed quantity, `$10`
/// notional, `$11` price scale.
const CLAIM_AND_OPEN_OR_INCREASE: &str = "WITH opened AS (
        INSERT INTO spark_positions
            (account_id, instrument, status, quantity, cost_basis, realized_pnl, currency, price_scale,
             opened_at_ms, version)
        SELECT $2, $3, 'open', $9::numeric, $10::numeric, 0, $7, $11, $8, 1
        WHERE NOT EXISTS (SELECT FROM spark_position_fills WHERE fill_id = $1)
        ON CONFLICT (account_id, instrument) WHERE status = 'open' DO UPDATE SET
            quantity = spark_positions.quantity + excluded.quantity,
            cost_basis = spark_positions.cost_basis + excluded.cost_basis,
            price_scale = excluded.price_scale,
            version = spark_positions.version + 1
        WHERE sign(spark_positions.quantity) = sign(excluded.quantity)
          AND spark_positions.currency = excluded.currency
        RETURNING id, account_id, instrument, status, quantity::text, cost_basis::text, realized_pnl::text,
            currency, price_scale, opened_at_ms, closed_at_ms, version
     ), claimed AS (
        INSERT INTO spark_position_fills
            (fill_id, account_id, instrument, side, quantity, price, currency, applied_at_ms,
             position_id, position_version)
        SELECT $1, $2, $3, $4, $5::numeric, $6::numeric, $7, $8, opened.id, opened.version
        FROM (SELECT) AS one LEFT JOIN opened ON true
        ON CONFLICT (fill_id) DO NOTHING RETURNING fill_id
     )
     SELECT EXISTS (SELECT FROM claimed), opened.* FROM (SELECT) AS one LEFT JOIN opened ON true";

/// The open/increase path: SQL adds the fill (exact NUMERIC addition) when a
/// position in the same direction is open, and does nothing (no row back)
/// when it goes the other way or is in another currency.
const OPEN_OR_INCREASE: &str = "INSERT INTO spark_positions
        (account_id, instrument, status, quantity, cost_basis, realized_pnl, currency, price_scale, opened_at_ms, version)
     VALUES ($1, $2, 'open', $3::numeric, $4::numeric, 0, $5, $6, $7, 1)
     ON CONFLICT (account_id, instrument) WHERE status = 'open' DO UPDATE SET
        quantity = spark_positions.quantity + excluded.quantity,
        cost_basis = spark_positions.cost_basis + excluded.cost_basis,
        price_scale = excluded.price_scale,
        version = spark_positions.version + 1
     WHERE sign(spark_positions.quantity) = sign(excluded.quantity)
       AND spark_positions.currency = excluded.currency
     RETURNING id, account_id, instrument, status, quantity::text, cost_basis::text, realized_pnl::text,
        currency, price_scale, opened_at_ms, closed_at_ms, version";

/// Opens the other side of a flip (the closed row no longer blocks it).
const INSERT_OPEN: &str = "INSERT INTO spark_positions
        (account_id, instrument, status, quantity, cost_basis, realized_pnl, currency, price_scale, opened_at_ms, version)
     VALUES ($1, $2, 'open', $3::numeric, $4::numeric, 0, $5, $6, $7, 1) RETURNING id";

const SELECT_OPEN_FOR_UPDATE: &str = "SELECT id, account_id, instrument, status, quantity::text, cost_basis::text,
        realized_pnl::text, currency, price_scale, opened_at_ms, closed_at_ms, version
     FROM spark_positions WHERE account_id = $1 AND instrument = $2 AND status = 'open' FOR UPDATE";

const SELECT_OPEN: &str = "SELECT id, account_id, instrument, status, quantity::text, cost_basis::text,
        realized_pnl::text, currency, price_scale, opened_at_ms, closed_at_ms, version
     FROM spark_positions WHERE account_id = $1 AND instrument = $2 AND status = 'open'";

const SELECT_OPEN_OF_ACCOUNT: &str = "SELECT id, account_id, instrument, status, quantity::text, cost_basis::text,
        realized_pnl::text, currency, price_scale, opened_at_ms, closed_at_ms, version
     FROM spark_positions WHERE account_id = $1 AND status = 'open' ORDER BY id DESC";

const SELECT_ALL_OF_ACCOUNT: &str = "SELECT id, account_id, instrument, status, quantity::text, cost_basis::text,
        realized_pnl::text, currency, price_scale, opened_at_ms, closed_at_ms, version
     FROM spark_positions WHERE account_id = $1 ORDER BY id DESC";

/// Writes a reduced or closed position (the fill holds its row lock).
const UPDATE: &str = "UPDATE spark_positions SET quantity = $2::numeric, cost_basis = $3::numeric,
        realized_pnl = $4::numeric, status = CASE WHEN $5::bigint IS NULL THEN 'open' ELSE 'closed' END,
        closed_at_ms = $5, price_scale = $7, version = version + 1
     WHERE id = $1 AND version = $6 RETURNING version";

/// Stores an increased position's sums without the trailing zeros that
/// made them too long for a `Decimal`; the values are unchanged.
const TRIM: &str = "UPDATE spark_positions SET quantity = $2::numeric, cost_basis = $3::numeric WHERE id = $1";

/// [`UPDATE`] and [`LINK_FILL`] in one statement, for a reduction or a
/// close: `$8` is the fill id.
const UPDATE_AND_LINK: &str = "WITH written AS (
        UPDATE spark_positions SET quantity = $2::numeric, cost_basis = $3::numeric,
            realized_pnl = $4::numeric, status = CASE WHEN $5::bigint IS NULL THEN 'open' ELSE 'closed' END,
            closed_at_ms = $5, price_scale = $7, version = version + 1
        WHERE id = $1 AND version = $6 RETURNING id, version
     ), linked AS (
        UPDATE spark_position_fills SET position_id = written.id, position_version = written.version
        FROM written WHERE fill_id = $8
     )
     SELECT version FROM written";

const LINK_FILL: &str = "UPDATE spark_position_fills SET position_id = $1, position_version = $2 WHERE fill_id = $3";

impl BookBackend for PgBackend {
    type Db = sqlx::Postgres;
    const NAME: &'static str = "PgPositions";

    async fn apply(conn: &mut PgConnection, fill: &Fill, q: Decimal, now: i64) -> Result<Step> {
        let price_scale = price_scale(fill);
        let notional = crate::model::times(q, fill.price)?;
        // The first attempt claims the fill id, opens or increases, and
        // links the fill in one statement; the usual fill (a buy onto a
        // long, a sell onto a short) costs no other round trip.
        let row = claim_and_open_or_increase(conn, fill, q, notional, price_scale, now).await?;
        let mut first = Some(row);
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                metrics::conflict_retried();
            }
            // The open/increase path, in one statement.
            let (row, linked) = match first.take() {
                Some(row) => (row, true),
                None => {
                    let row: Option<Row> = sqlx::query_as(OPEN_OR_INCREASE)
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
                    (row, false)
                }
            };
            if let Some(row) = row {
                // NUMERIC adds without limit; a sum this row cannot carry
                // back (more than 28 significant places) is an overflow, as
                // the same sum is in Rust on SQLite. The rollback undoes it.
                let written = (row.4.clone(), row.5.clone());
                let pos = row::position(row).map_err(|e| match e {
                    PositionsError::Corrupt(_) => crate::model::overflow(),
                    other => other,
                })?;
                // A sum read back without its trailing zeros (see
                // `row::position`) is stored that way too, as the Rust sum
                // on SQLite stores it: later sums then keep the same places
                // on both backends. The upsert holds the row lock.
                if written != (pos.quantity.to_string(), pos.cost_basis.to_string()) {
                    sqlx::query(TRIM)
                        .bind(pos.id)
                        .bind(pos.quantity.to_string())
                        .bind(pos.cost_basis.to_string())
                        .execute(&mut *conn)
                        .await?;
                }
                let step = if pos.version == 1 { Step::Open(pos.book()) } else { Step::Increase(pos.book()) };
                record(if pos.version == 1 { "open" } else { "increase" });
                if !linked {
                    link(conn, fill, pos.id, pos.version).await?;
                }
                return Ok(step);
            }
            // Opposite direction (or another currency): lock and compute.
            let current: Option<Row> = sqlx::query_as(SELECT_OPEN_FOR_UPDATE)
                .bind(&fill.account_id)
                .bind(&fill.instrument)
                .fetch_optional(&mut *conn)
                .await?;
            let Some(current) = current.map(row::position).transpose()? else { continue };
            if current.currency() != fill.currency {
                return Err(PositionsError::CurrencyMismatch { fill: fill.currency, position: current.currency() });
            }
            let step = step(Some(current.book()), q, fill.price, fill.price_scale)?;
            let (id, version) = match step {
                Step::Reduce(b) => {
                    write_and_link(conn, fill, &current, b, None, price_scale).await?;
                    record("reduce");
                    return Ok(step);
                }
                Step::Close(b) => {
                    write_and_link(conn, fill, &current, b, Some(now), price_scale).await?;
                    record("close");
                    return Ok(step);
                }
                Step::Flip { closed, opened } => {
                    write(conn, &current, closed, Some(now), price_scale).await?;
                    let id: i64 = sqlx::query_scalar(INSERT_OPEN)
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
                    (id, 1)
                }
                Step::Open(_) | Step::Increase(_) => continue,
            };
            record("flip");
            link(conn, fill, id, version).await?;
            return Ok(step);
        }
        Err(PositionsError::Contention { account_id: fill.account_id.clone(), instrument: fill.instrument.clone() })
    }

    async fn open_position(pool: &PgPool, account_id: &str, instrument: &str) -> Result<Option<Position>> {
        let row: Option<Row> =
            sqlx::query_as(SELECT_OPEN).bind(account_id).bind(instrument).fetch_optional(pool).await?;
        row.map(row::position).transpose()
    }

    async fn positions(pool: &PgPool, account_id: &str, filter: PositionFilter) -> Result<Vec<Position>> {
        let sql = match filter {
            PositionFilter::Open => SELECT_OPEN_OF_ACCOUNT,
            PositionFilter::All => SELECT_ALL_OF_ACCOUNT,
        };
        let rows: Vec<Row> = sqlx::query_as(sql).bind(account_id).fetch_all(pool).await?;
        rows.into_iter().map(row::position).collect()
    }
}

/// Writes a reduced or closed position (the fill holds its row lock).
async fn write(
    conn: &mut PgConnection,
    pos: &Position,
    b: Book,
    closed_at: Option<i64>,
    price_scale: i32,
) -> Result<i64> {
    let version: i64 = sqlx::query_scalar(UPDATE)
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

/// Writes a reduced or closed position (the fill holds its row lock) and
/// records which version the fill produced.
async fn write_and_link(
    conn: &mut PgConnection,
    fill: &Fill,
    pos: &Position,
    b: Book,
    closed_at: Option<i64>,
    price_scale: i32,
) -> Result<()> {
    let _version: i64 = sqlx::query_scalar(UPDATE_AND_LINK)
        .bind(pos.id)
        .bind(b.quantity.to_string())
        .bind(b.cost_basis.to_string())
        .bind(b.realized.to_string())
        .bind(closed_at)
        .bind(pos.version)
        .bind(price_scale)
        .bind(&fill.fill_id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(())
}

/// The first attempt of a fill ([`CLAIM_AND_OPEN_OR_INCREASE`]): the
/// position when the open/increase path applied the fill.
///
/// # Errors
///
/// [`PositionsError::AlreadyApplied`] when the fill id was recorded before.
async fn claim_and_open_or_increase(
    conn: &mut PgConnection,
    fill: &Fill,
    q: Decimal,
    notional: Decimal,
    price_scale: i32,
    now: i64,
) -> Result<Option<Row>> {
    let row = sqlx::query(CLAIM_AND_OPEN_OR_INCREASE)
        .bind(&fill.fill_id)
        .bind(&fill.account_id)
        .bind(&fill.instrument)
        .bind(fill.side.as_str())
        .bind(fill.quantity.to_string())
        .bind(fill.price.to_string())
        .bind(fill.currency.code())
        .bind(now)
        .bind(q.to_string())
        .bind(notional.to_string())
        .bind(price_scale)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| unique(e, fill))?;
    let claimed: bool = row.try_get(0)?;
    if !claimed {
        return Err(already_applied(fill));
    }
    let Some(id) = row.try_get::<Option<i64>, _>(1)? else { return Ok(None) };
    Ok(Some((
        id,
        row.try_get(2)?,
        row.try_get(3)?,
        row.try_get(4)?,
        row.try_get(5)?,
        row.try_get(6)?,
        row.try_get(7)?,
        row.try_get(8)?,
        row.try_get(9)?,
        row.try_get(10)?,
        row.try_get(11)?,
        row.try_get(12)?,
    )))
}

/// Records which position version the fill produced.
async fn link(conn: &mut PgConnection, fill: &Fill, id: i64, version: i64) -> Result<()> {
    sqlx::query(LINK_FILL).bind(id).bind(version).bind(&fill.fill_id).execute(&mut *conn).await?;
    Ok(())
}
