//! Decoding a position row, the same on both backends.

use spark_money::{Currency, Money, parse_decimal};

use crate::model::{Position, Status};
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
