//! The one error type of the crate.

use spark_money::{Currency, MoneyError};

/// Everything that can go wrong in `spark-positions`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PositionsError {
    /// The fill was applied before; applying it again has no effect.
    #[error("fill {fill_id:?} was already applied")]
    AlreadyApplied {
        /// The fill.
        fill_id: String,
    },
    /// A second open position for the same account and instrument was
    /// refused by the partial unique index.
    #[error("account {account_id:?} already has an open position in {instrument:?}")]
    DuplicateOpenPosition {
        /// The account.
        account_id: String,
        /// The instrument.
        instrument: String,
    },
    /// A fill in another currency than the open position.
    #[error("fill in {fill} for a position held in {position}")]
    CurrencyMismatch {
        /// The fill's currency.
        fill: Currency,
        /// The position's currency.
        position: Currency,
    },
    /// A fill that cannot move a position (zero quantity).
    #[error("invalid fill {fill_id:?}: {reason}")]
    InvalidFill {
        /// The fill.
        fill_id: String,
        /// Why.
        reason: &'static str,
    },
    /// A fill whose price has more decimal places than the instrument's
    /// price scale (or a scale above 28).
    #[error(
        "fill {fill_id:?}: price {price} does not fit price scale {price_scale} (a price may have at most that many decimal places, and a scale at most 28)"
    )]
    PriceScale {
        /// The fill.
        fill_id: String,
        /// The fill's price.
        price: spark_money::Price,
        /// The price scale the fill carried.
        price_scale: u32,
    },
    /// Concurrent writers kept changing the position; the caller may retry
    /// the transaction.
    #[error("position for account {account_id:?} in {instrument:?} kept changing; retry the transaction")]
    Contention {
        /// The account.
        account_id: String,
        /// The instrument.
        instrument: String,
    },
    /// Arithmetic that cannot be done exactly.
    #[error(transparent)]
    Money(#[from] MoneyError),
    /// A stored row that cannot be read back.
    #[error("stored position is unreadable: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("positions store")]
    Database(#[source] sqlx::Error),
    /// Running migrations failed.
    #[error("positions migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for PositionsError {
    fn from(err: sqlx::Error) -> Self {
        PositionsError::Database(err)
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = PositionsError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// `{:#}` (anyhow) prints the chain; the outer message must not repeat
    /// the cause.
    #[test]
    fn a_cause_is_printed_once() {
        let err = PositionsError::Database(sqlx::Error::RowNotFound);
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert_eq!(chain.matches("no rows returned").count(), 1, "{chain}");
    }
}
