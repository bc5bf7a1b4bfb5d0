//! Position arithmetic, exact and database-free. Both backends call it; the
//! tests check it against an independent fold over fills.

use spark_money::{Currency, Decimal, Money, MoneyError, Price, Quantity, Rounding, Side, mul_div};

use crate::{PositionsError, Result};

/// One execution to apply to a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fill {
    /// Unique per execution; applying the same id twice has no second effect.
    pub fill_id: String,
    /// The account.
    pub account_id: String,
    /// The instrument (symbol).
    pub instrument: String,
    /// Buy adds to the position, sell takes from it.
    pub side: Side,
    /// The executed quantity (greater than zero).
    pub quantity: Quantity,
    /// The execution price.
    pub price: Price,
    /// The currency of the price.
    pub currency: Currency,
    /// The instrument's price scale: the decimal places of its tick (2 for
    /// Borsa Istanbul equities, see
    /// [`TickTable::price_scale`](spark_money::TickTable::price_scale)). The
    /// average price is rounded, half-even, to this many places; a price
    /// with more places is refused.
    pub price_scale: u32,
}

impl Fill {
    /// The quantity with the side's sign: positive for a buy.
    #[must_use]
    pub fn signed_quantity(&self) -> Decimal {
        match self.side {
            Side::Buy => self.quantity.get(),
            Side::Sell => -self.quantity.get(),
        }
    }
}

/// Whether a position is open or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Quantity is not zero.
    Open,
    /// Flat; kept for history.
    Closed,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Status {
    /// `"open"` or `"closed"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Closed => "closed",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Status> {
        match s {
            "open" => Ok(Status::Open),
            "closed" => Ok(Status::Closed),
            other => Err(PositionsError::Corrupt(format!("unknown status {other:?}"))),
        }
    }
}

/// A position as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Position {
    pub(crate) id: i64,
    pub(crate) account_id: String,
    pub(crate) instrument: String,
    pub(crate) status: Status,
    #[serde(with = "spark_money::decimal_str")]
    pub(crate) quantity: Decimal,
    #[serde(with = "spark_money::decimal_str")]
    pub(crate) cost_basis: Decimal,
    pub(crate) realized_pnl: Money,
    pub(crate) price_scale: u32,
    pub(crate) opened_at_ms: i64,
    pub(crate) closed_at_ms: Option<i64>,
    pub(crate) version: i64,
}

impl Position {
    /// The database id.
    #[must_use]
    pub fn id(&self) -> i64 {
        self.id
    }
    /// The account.
    #[must_use]
    pub fn account_id(&self) -> &str {
        &self.account_id
    }
    /// The instrument.
    #[must_use]
    pub fn instrument(&self) -> &str {
        &self.instrument
    }
    /// Open or closed.
    #[must_use]
    pub fn status(&self) -> Status {
        self.status
    }
    /// Signed quantity: positive long, negative short, zero when closed.
    #[must_use]
    pub fn quantity(&self) -> Decimal {
        self.quantity
    }
    /// The exact signed cost of the open quantity.
    #[must_use]
    pub fn cost_basis(&self) -> Decimal {
        self.cost_basis
    }
    /// Realized profit and loss, exact, in the position's currency.
    #[must_use]
    pub fn realized_pnl(&self) -> Money {
        self.realized_pnl
    }
    /// The currency.
    #[must_use]
    pub fn currency(&self) -> Currency {
        self.realized_pnl.currency()
    }
    /// When it opened (Unix ms).
    #[must_use]
    pub fn opened_at_ms(&self) -> i64 {
        self.opened_at_ms
    }
    /// When it closed (Unix ms), if it did.
    #[must_use]
    pub fn closed_at_ms(&self) -> Option<i64> {
        self.closed_at_ms
    }
    /// Incremented on every change.
    #[must_use]
    pub fn version(&self) -> i64 {
        self.version
    }

    pub(crate) fn book(&self) -> Book {
        Book { quantity: self.quantity, cost_basis: self.cost_basis, realized: self.realized_pnl.amount() }
    }

    /// The instrument's price scale, as the last fill that changed the
    /// position carried it ([`Fill::price_scale`]).
    #[must_use]
    pub fn price_scale(&self) -> u32 {
        self.price_scale
    }

    /// The average entry price, `|cost basis| / |quantity|`, derived here
    /// with banker's rounding to the instrument's price scale
    /// ([`Fill::price_scale`]), the same on both backends (never stored,
    /// never rounded in SQL). `None` when flat.
    ///
    /// # Errors
    ///
    /// On arithmetic overflow, and [`MoneyError::NonPositivePrice`] when the
    /// average of an open position rounds to zero at its price scale.
    pub fn average_price(&self) -> Result<Option<Price>> {
        if self.quantity.is_zero() {
            return Ok(None);
        }
        let avg =
            mul_div(self.cost_basis.abs(), Decimal::ONE, self.quantity.abs(), self.price_scale, Rounding::HalfEven)?;
        // An open position always has an average: one that rounds to zero
        // (a price scale lowered by a later fill, e.g. 0.4 at 0 places) is an
        // error, never `None`, which would read as "flat".
        Ok(Some(Price::new(avg)?))
    }
}

/// The numbers of an open position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Book {
    /// Signed quantity.
    pub quantity: Decimal,
    /// Signed exact cost of the open quantity.
    pub cost_basis: Decimal,
    /// Realized PnL so far.
    pub realized: Decimal,
}

/// What a fill does to the open position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// No open position: one opens.
    Open(Book),
    /// Same direction: it grows.
    Increase(Book),
    /// Opposite direction, smaller: it shrinks and realizes PnL.
    Reduce(Book),
    /// Opposite direction, equal: it closes.
    Close(Book),
    /// Opposite direction, larger: it closes and the rest opens the other way.
    Flip {
        /// The position as it closes.
        closed: Book,
        /// The new position.
        opened: Book,
    },
}

pub(crate) fn overflow() -> PositionsError {
    PositionsError::Money(MoneyError::Overflow { op: "position arithmetic" })
}

/// `a + b`, refusing any rounding `rust_decimal` would do silently.
fn add(a: Decimal, b: Decimal) -> Result<Decimal> {
    let exact = |a: Decimal, b: Decimal| {
        let sum = a.checked_add(b)?;
        (sum.scale() == a.scale().max(b.scale()) || sum.is_zero()).then_some(sum)
    };
    // Trailing zeros (a quantity written `1.0000000000000000000000000000`)
    // can push the sum past 96 bits at the larger scale although the value
    // fits: try again without them, so that `1.000…0` adds like `1`. The
    // result then has no trailing zeros either, which is also how the
    // PostgreSQL book reads back such a sum.
    exact(a, b).or_else(|| exact(a.normalize(), b.normalize()).map(|s| s.normalize())).ok_or_else(overflow)
}

/// `q * p` exactly.
pub(crate) fn times(q: Decimal, price: Price) -> Result<Decimal> {
    let magnitude = spark_money::notional(price, Quantity::new(q.abs())?).ok_or_else(overflow)?;
    Ok(if q.is_sign_negative() { -magnitude } else { magnitude })
}

/// Applies a signed quantity at `price` to `current` (the open position, if
/// any), with average-cost accounting:
///
/// - open or increase: `cost += q * p`;
/// - reduce by `q`: the cost taken out is `cost * |q| / |Q|`, rounded once,
///   half-even, to the places the exact cost basis needs but never fewer
///   than `price_scale` (a rule on values: `10.1` and `10.10` give the same
///   result); `realized += -q * p - taken`;
/// - close: all of the cost is taken out, so a round trip realizes exactly
///   its cash flow;
/// - flip: close, then open the remainder at `p`.
///
/// Whatever the rounding, `realized == cost_basis - Σ(q * p)` holds exactly.
///
/// # Errors
///
/// On arithmetic overflow, and [`MoneyError::ScaleTooLarge`] for a
/// `price_scale` above 28.
pub fn step(current: Option<Book>, q: Decimal, price: Price, price_scale: u32) -> Result<Step> {
    let notional = times(q, price)?;
    let Some(cur) = current.filter(|c| !c.quantity.is_zero()) else {
        return Ok(Step::Open(Book { quantity: q, cost_basis: notional, realized: Decimal::ZERO }));
    };
    if cur.quantity.is_sign_negative() == q.is_sign_negative() {
        return Ok(Step::Increase(Book {
            quantity: add(cur.quantity, q)?,
            cost_basis: add(cur.cost_basis, notional)?,
            realized: cur.realized,
        }));
    }
    match q.abs().cmp(&cur.quantity.abs()) {
        std::cmp::Ordering::Less => {
            // Rounded to a scale read from the value, never from how it was
            // written: the cost basis's scale counts the trailing zeros of
            // every price and quantity that went into it.
            let dp = cur.cost_basis.normalize().scale().max(price_scale);
            let taken = mul_div(cur.cost_basis, q.abs(), cur.quantity.abs(), dp, Rounding::HalfEven)?;
            Ok(Step::Reduce(Book {
                quantity: add(cur.quantity, q)?,
                cost_basis: add(cur.cost_basis, -taken)?,
                realized: add(cur.realized, add(-notional, -taken)?)?,
            }))
        }
        std::cmp::Ordering::Equal => Ok(Step::Close(Book {
            quantity: Decimal::ZERO,
            cost_basis: Decimal::ZERO,
            realized: add(cur.realized, add(-notional, -cur.cost_basis)?)?,
        })),
        std::cmp::Ordering::Greater => {
            let closing = -cur.quantity;
            let closed = Book {
                quantity: Decimal::ZERO,
                cost_basis: Decimal::ZERO,
                realized: add(cur.realized, add(-times(closing, price)?, -cur.cost_basis)?)?,
            };
            let rest = add(q, cur.quantity)?;
            Ok(Step::Flip {
                closed,
                opened: Book { quantity: rest, cost_basis: times(rest, price)?, realized: Decimal::ZERO },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        spark_money::parse_decimal(s).unwrap()
    }
    fn p(s: &str) -> Price {
        s.parse().unwrap()
    }

    #[test]
    fn open_increase_reduce_close() {
        let Step::Open(b) = step(None, d("100"), p("10.00"), 2).unwrap() else { panic!() };
        assert_eq!((b.quantity, b.cost_basis), (d("100"), d("1000.00")));
        let Step::Increase(b) = step(Some(b), d("50"), p("11.00"), 2).unwrap() else { panic!() };
        assert_eq!((b.quantity, b.cost_basis), (d("150"), d("1550.00")));
        // Sell 50 at 12: takes out 1550 * 50/150 = 516.666.. -> 516.67.
        let Step::Reduce(b) = step(Some(b), d("-50"), p("12.00"), 2).unwrap() else { panic!() };
        assert_eq!((b.quantity, b.cost_basis, b.realized), (d("100"), d("1033.33"), d("83.33")));
        let Step::Close(b) = step(Some(b), d("-100"), p("9.00"), 2).unwrap() else { panic!() };
        // Round trip: bought 1550, sold 600 + 900: realized exactly -50.
        assert_eq!((b.quantity, b.cost_basis, b.realized), (d("0"), d("0"), d("-50.00")));
    }

    #[test]
    fn flip_closes_then_opens_the_rest() {
        let Step::Open(b) = step(None, d("-10"), p("5"), 0).unwrap() else { panic!() };
        let Step::Flip { closed, opened } = step(Some(b), d("25"), p("4"), 0).unwrap() else { panic!() };
        // Short 10 at 5, bought back at 4: +10; then long 15 at 4.
        assert_eq!(closed.realized, d("10"));
        assert_eq!((opened.quantity, opened.cost_basis, opened.realized), (d("15"), d("60"), d("0")));
    }
}
