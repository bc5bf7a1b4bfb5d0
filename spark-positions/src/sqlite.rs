//! The SQLite backend: one writer at a time, every number computed in Rust
//! (SQLite has no exact decimal type; decimals are stored as text).

use spark_money::Decimal;
use sqlx::{SqliteConnection, SqlitePool};

use crate::book::{ATTEMPTS, BookBackend, PositionFilter, Positions, already_applied, price_scale, record, unique};
use crate::model::{Book, Fill, Position, Step, step};
use crate::row::{self, Row};
use crate::{PositionsError, Result, metrics};

/// The SQLite position book.
///
/// SQLite serializes writers, so a fill reads the open position, computes
/// the change in Rust and writes it back under a version check. Start
/// transactions that read before they apply fills with `BEGIN IMMEDIATE`
/// (`pool.begin_with("BEGIN IMMEDIATE")`), so that they take the write lock
/// up front.
pub type SqlitePositions = Positions<SqliteBackend>;

/// The SQLite backend of [`Positions`].
#[derive(Debug, Clone, Copy)]
pub struct SqliteBackend;

impl crate::book::private::Sealed for SqliteBackend {}

/// The migrations that create the tables; they ignore migrations they do
/// not know, so they run beside an application's own.
#[must_use]
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("./migrations/sqlite");
    m.set_ignore_missing(true);
    m
}

/// Claims the fill id; no row back means it was applied before.
const CLAIM_FILL: &str = "INSERT INTO spark_position_fills
        (fill_id, account_id, instrument, side, quantity, price, currency, applied_at_ms)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
     ON CONFLICT (fill_id) DO NOTHING RETURNING fill_id";

const INSERT_OPEN: &str = "INSERT INTO spark_positions
        (account_id, instrument, status, quantity, cost_basis, realized_pnl, currency, price_scale, opened_at_ms, version)
     VALUES (?1, ?2, 'open', ?3, ?4, '0', ?5, ?6, ?7, 1) RETURNING id";

const UPDATE: &str = "UPDATE spark_positions SET quantity = ?2, cost_basis = ?3, realized_pnl = ?4,
        status = CASE WHEN ?5 IS NULL THEN 'open' ELSE 'closed' END, closed_at_ms = ?5,
        price_scale = ?7, version = version + 1
     WHERE id = ?1 AND version = ?6 RETURNING version";

const SELECT_OPEN: &str = "SELECT id, account_id, instrument, status, quantity, cost_basis, realized_pnl,
        currency, price_scale, opened_at_ms, closed_at_ms, version
     FROM spark_positions WHERE account_id = ?1 AND instrument = ?2 AND status = 'open'";

const SELECT_OPEN_OF_ACCOUNT: &str = "SELECT id, account_id, instrument, status, quantity, cost_basis, realized_pnl,
        currency, price_scale, opened_at_ms, closed_at_ms, version
     FROM spark_positions WHERE account_id = ?1 AND status = 'open' ORDER BY id DESC";

const SELECT_ALL_OF_ACCOUNT: &str = "SELECT id, account_id, instrument, status, quantity, cost_basis, realized_pnl,
        currency, price_scale, opened_at_ms, closed_at_ms, version
     FROM spark_positions WHERE account_id = ?1 ORDER BY id DESC";

const LINK_FILL: &str = "UPDATE spark_position_fills SET position_id = ?1, position_version = ?2 WHERE fill_id = ?3";

impl BookBackend for SqliteBackend {
    type Db = sqlx::Sqlite;
    const NAME: &'static str = "SqlitePositions";

    async fn apply(conn: &mut SqliteConnection, fill: &Fill, q: Decimal, now: i64) -> Result<Step> {
        let claimed: Option<(String,)> = sqlx::query_as(CLAIM_FILL)
            .bind(&fill.fill_id)
            .bind(&fill.account_id)
            .bind(&fill.instrument)
            .bind(fill.side.as_str())
            .bind(fill.quantity.to_string())
            .bind(fill.price.to_string())
            .bind(fill.currency.code())
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
        if claimed.is_none() {
            return Err(already_applied(fill));
        }
        let price_scale = price_scale(fill);
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                metrics::conflict_retried();
            }
            let current: Option<Row> = sqlx::query_as(SELECT_OPEN)
                .bind(&fill.account_id)
                .bind(&fill.instrument)
                .fetch_optional(&mut *conn)
                .await?;
            let current = current.map(row::position).transpose()?;
            if let Some(cur) = current.as_ref().filter(|c| c.currency() != fill.currency) {
                return Err(PositionsError::CurrencyMismatch { fill: fill.currency, position: cur.currency() });
            }
            let step = step(current.as_ref().map(Position::book), q, fill.price, fill.price_scale)?;
            let written = match (step, &current) {
                (Step::Open(b), _) => {
                    insert(conn, fill, b.quantity, b.cost_basis, price_scale, now).await?.map(|id| (id, 1))
                }
                (Step::Increase(b) | Step::Reduce(b), Some(cur)) => {
                    update(conn, cur, b, None, price_scale).await?.map(|v| (cur.id, v))
                }
                (Step::Close(b), Some(cur)) => update(conn, cur, b, Some(now), price_scale).await?.map(|v| (cur.id, v)),
                (Step::Flip { closed, opened }, Some(cur)) => {
                    if update(conn, cur, closed, Some(now), price_scale).await?.is_none() {
                        None
                    } else {
                        let id = insert(conn, fill, opened.quantity, opened.cost_basis, price_scale, now).await?;
                        Some((id.ok_or_else(|| duplicate_open(fill))?, 1))
                    }
                }
                (_, None) => None,
            };
            // None: another writer changed the position; read it again.
            let Some((id, version)) = written else { continue };
            record(match step {
                Step::Open(_) => "open",
                Step::Increase(_) => "increase",
                Step::Reduce(_) => "reduce",
                Step::Close(_) => "close",
                Step::Flip { .. } => "flip",
            });
            sqlx::query(LINK_FILL).bind(id).bind(version).bind(&fill.fill_id).execute(&mut *conn).await?;
            return Ok(step);
        }
        Err(PositionsError::Contention { account_id: fill.account_id.clone(), instrument: fill.instrument.clone() })
    }

    async fn open_position(pool: &SqlitePool, account_id: &str, instrument: &str) -> Result<Option<Position>> {
        let row: Option<Row> =
            sqlx::query_as(SELECT_OPEN).bind(account_id).bind(instrument).fetch_optional(pool).await?;
        row.map(row::position).transpose()
    }

    async fn positions(pool: &SqlitePool, account_id: &str, filter: PositionFilter) -> Result<Vec<Position>> {
        let sql = match filter {
            PositionFilter::Open => SELECT_OPEN_OF_ACCOUNT,
            PositionFilter::All => SELECT_ALL_OF_ACCOUNT,
        };
        let rows: Vec<Row> = sqlx::query_as(sql).bind(account_id).fetch_all(pool).await?;
        rows.into_iter().map(row::position).collect()
    }
}

/// Inserts an open position; `None` if another one is open already (the
/// partial unique index refused it; SQLite keeps the transaction).
async fn insert(
    conn: &mut SqliteConnection,
    fill: &Fill,
    quantity: Decimal,
    cost: Decimal,
    price_scale: i32,
    now: i64,
) -> Result<Option<i64>> {
    let id = sqlx::query_scalar(INSERT_OPEN)
        .bind(&fill.account_id)
        .bind(&fill.instrument)
        .bind(quantity.to_string())
        .bind(cost.to_string())
        .bind(fill.currency.code())
        .bind(price_scale)
        .bind(now)
        .fetch_one(&mut *conn)
        .await;
    match id {
        Ok(id) => Ok(Some(id)),
        Err(e) => match unique(e, fill) {
            PositionsError::DuplicateOpenPosition { .. } => Ok(None),
            other => Err(other),
        },
    }
}

/// Writes the position under a version check; `None` if another writer
/// changed it first.
async fn update(
    conn: &mut SqliteConnection,
    cur: &Position,
    b: Book,
    closed_at: Option<i64>,
    price_scale: i32,
) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar(UPDATE)
        .bind(cur.id)
        .bind(b.quantity.to_string())
        .bind(b.cost_basis.to_string())
        .bind(b.realized.to_string())
        .bind(closed_at)
        .bind(cur.version)
        .bind(price_scale)
        .fetch_optional(&mut *conn)
        .await?)
}

fn duplicate_open(fill: &Fill) -> PositionsError {
    PositionsError::DuplicateOpenPosition { account_id: fill.account_id.clone(), instrument: fill.instrument.clone() }
}
