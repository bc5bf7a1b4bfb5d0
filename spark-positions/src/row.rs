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
    let dec = |s: &str| {
        parse_decimal(s)
            .or_else(|e| {
                // PostgreSQL's NUMERIC sum keeps every trailing zero of its
                // terms (`10000000000 + 1.0000000000000000000000000000` has
                // 39 digits); the value may still fit a Decimal without
                // them, as it does in the Rust sum (`model::add`). Dropping
                // zeros changes no value.
                let trimmed = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { s };
                if trimmed.len() < s.len() { parse_decimal(trimmed).map(|d| d.normalize()) } else { Err(e) }
            })
            .map_err(|e| PositionsError::Corrupt(format!("position {id}: {e}")))
    };
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
