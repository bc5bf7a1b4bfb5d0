//! The SQLite backend: one writer at a time, every number computed in Rust
//! (SQLite has no exact decimal type; decimals are stored as text).

use spark_db::SharedClock;
use sqlx::{Connection, SqliteConnection, SqlitePool};

use crate::model::{Fill, Position, Step, step};
use crate::sql::{self, ATTEMPTS, PositionFilter, position_select, unique};
use crate::{PositionsError, Result, metrics};

/// The SQLite position book.
///
/// SQLite serializes writers, so a fill reads the open position, computes
/// the change in Rust and writes it back under a version check. Start
/// transactions that read before they apply fills with `BEGIN IMMEDIATE`
/// (`pool.begin_with("BEGIN IMMEDIATE")`), so that they take the write lock
/// up front.
#[derive(Clone)]
pub struct SqlitePositions {
    clock: SharedClock,
}

sql::book_impls!(SqlitePositions);

/// The migrations that create the tables; they ignore migrations they do
/// not know, so they run beside an application's own.
#[must_use]
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("./migrations/sqlite");
    m.set_ignore_missing(true);
    m
}

const INSERT_OPEN: &str = "INSERT INTO spark_positions
        (account_id, instrument, status, quantity, cost_basis, realized_pnl, currency, price_scale, opened_at_ms, version)
     VALUES (?1, ?2, 'open', ?3, ?4, '0', ?5, ?6, ?7, 1) RETURNING id";

const UPDATE: &str = "UPDATE spark_positions SET quantity = ?2, cost_basis = ?3, realized_pnl = ?4,
        status = CASE WHEN ?5 IS NULL THEN 'open' ELSE 'closed' END, closed_at_ms = ?5,
        price_scale = ?7, version = version + 1
     WHERE id = ?1 AND version = ?6 RETURNING version";

impl SqlitePositions {
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
    /// [`PositionsError::Contention`], and database errors.
    pub async fn apply_fill(&self, conn: &mut SqliteConnection, fill: &Fill) -> Result<Step> {
        let q = sql::validate(fill)?;
        let mut savepoint = conn.begin().await?;
        let outcome = self.apply_in(&mut savepoint, fill, q).await;
        sql::finish(savepoint, outcome).await
    }

    async fn apply_in(&self, conn: &mut SqliteConnection, fill: &Fill, q: spark_money::Decimal) -> Result<Step> {
        let now = self.clock.now_ms();
        let price_scale = sql::price_scale(fill);
        sql::claim_fill!(&mut *conn, fill, now, "");
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                metrics::conflict_retried();
            }
            let sql = concat!(position_select!(""), "WHERE account_id = ?1 AND instrument = ?2 AND status = 'open'");
            let current: Option<sql::Row> =
                sqlx::query_as(sql).bind(&fill.account_id).bind(&fill.instrument).fetch_optional(&mut *conn).await?;
            let current = current.map(sql::position).transpose()?;
            if let Some(cur) = current.as_ref().filter(|c| c.currency() != fill.currency) {
                return Err(PositionsError::CurrencyMismatch { fill: fill.currency, position: cur.currency() });
            }
            let step = step(current.as_ref().map(Position::book), q, fill.price)?;
            let written = match (step, &current) {
                (Step::Open(b), _) => {
                    self.insert(conn, fill, b.quantity, b.cost_basis, price_scale, now).await?.map(|id| (id, 1))
                }
                (Step::Increase(b) | Step::Reduce(b), Some(cur)) => {
                    self.update(conn, cur, b, None, price_scale).await?.map(|v| (cur.id, v))
                }
                (Step::Close(b), Some(cur)) => {
                    self.update(conn, cur, b, Some(now), price_scale).await?.map(|v| (cur.id, v))
                }
                (Step::Flip { closed, opened }, Some(cur)) => {
                    if self.update(conn, cur, closed, Some(now), price_scale).await?.is_none() {
                        None
                    } else {
                        let id = self.insert(conn, fill, opened.quantity, opened.cost_basis, price_scale, now).await?;
                        Some((id.ok_or_else(|| unique_error(fill))?, 1))
                    }
                }
                (_, None) => None,
            };
            // None: another writer changed the position; read it again.
            let Some((id, version)) = written else { continue };
            sql::record(match step {
                Step::Open(_) => "open",
                Step::Increase(_) => "increase",
                Step::Reduce(_) => "reduce",
                Step::Close(_) => "close",
                Step::Flip { .. } => "flip",
            });
            sqlx::query(LINK.as_str()).bind(id).bind(version).bind(&fill.fill_id).execute(&mut *conn).await?;
            return Ok(step);
        }
        Err(PositionsError::Contention { account_id: fill.account_id.clone(), instrument: fill.instrument.clone() })
    }

    /// Inserts an open position; `None` if another one is open already
    /// (the partial unique index refused it; SQLite keeps the transaction).
    async fn insert(
        &self,
        conn: &mut SqliteConnection,
        fill: &Fill,
        quantity: spark_money::Decimal,
        cost: spark_money::Decimal,
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

    async fn update(
        &self,
        conn: &mut SqliteConnection,
        cur: &Position,
        b: crate::model::Book,
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

    sql::reads!(SqlitePool, "", "?1", "?2");
}

fn unique_error(fill: &Fill) -> PositionsError {
    PositionsError::DuplicateOpenPosition { account_id: fill.account_id.clone(), instrument: fill.instrument.clone() }
}

static LINK: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| sql::LINK_FILL.replace('$', "?"));
