//! Lot sizes and minimum notional.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

use crate::int::{decimal, div_rem, parts, stripped_parts, to_common_scale};
use crate::{MoneyError, Price, Quantity};

/// How [`LotSize::align`] moves a quantity that is not a multiple of the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LotRounding {
    /// The multiple at or below.
    Down,
    /// The multiple at or above.
    Up,
    /// The nearest multiple; on a tie, the even one.
    Nearest,
    /// Refuse, naming the two nearest multiples.
    Reject,
}

/// Error returned when a lot rounding name is not recognised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown lot rounding {0:?} (expected down, up, nearest or reject)")]
pub struct UnknownLotRounding(pub String);

impl FromStr for LotRounding {
    type Err = UnknownLotRounding;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "down" => Ok(Self::Down),
            "up" => Ok(Self::Up),
            "nearest" => Ok(Self::Nearest),
            "reject" => Ok(Self::Reject),
            _ => Err(UnknownLotRounding(s.to_owned())),
        }
    }
}

/// The valid order quantities: multiples of `step`, from `min` up to `max`
/// (if any).
///
/// ```
/// use spark_money::{LotRounding, LotSize, Quantity};
///
/// let lot = LotSize::new("0.001".parse()?, "0.01".parse()?, Some("100".parse()?))?;
/// let q: Quantity = "1.23456".parse()?;
/// assert_eq!(lot.align(q, LotRounding::Down)?.to_string(), "1.234");
/// assert_eq!(lot.align(q, LotRounding::Nearest)?.to_string(), "1.235");
/// assert!(lot.align("0.001".parse()?, LotRounding::Down).is_err()); // below min
/// # Ok::<(), spark_money::MoneyError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LotSize {
    step: Quantity,
    min: Quantity,
    max: Option<Quantity>,
}

impl LotSize {
    /// A lot size.
    ///
    /// # Errors
    ///
    /// [`MoneyError::NonPositiveIncrement`] for a zero step;
    /// [`MoneyError::InvalidLotSize`] if `max < min`.
    pub fn new(step: Quantity, min: Quantity, max: Option<Quantity>) -> Result<LotSize, MoneyError> {
        if step.is_zero() {
            return Err(MoneyError::NonPositiveIncrement { what: "lot step", value: step.0 });
        }
        if let Some(max) = max.filter(|max| *max < min) {
            return Err(MoneyError::InvalidLotSize { reason: format!("max {max} is below min {min}") });
        }
        Ok(LotSize { step, min, max })
    }

    /// Multiples of `step`, at least one step, no maximum.
    ///
    /// # Errors
    ///
    /// As for [`LotSize::new`].
    pub fn step(step: Quantity) -> Result<LotSize, MoneyError> {
        LotSize::new(step, step, None)
    }

    /// The step.
    #[must_use]
    pub const fn step_size(&self) -> Quantity {
        self.step
    }

    /// The smallest valid quantity.
    #[must_use]
    pub const fn min(&self) -> Quantity {
        self.min
    }

    /// The largest valid quantity, if bounded.
    #[must_use]
    pub const fn max(&self) -> Option<Quantity> {
        self.max
    }

    /// The multiples of the step at or below and at or above `qty`, and
    /// whether `qty` is itself one.
    pub(crate) fn snap(&self, qty: Quantity) -> Result<(Quantity, Option<Quantity>, bool, bool), MoneyError> {
        let overflow = MoneyError::Overflow { op: "lot alignment" };
        let (step_m, step_scale) = parts(self.step.0);
        // Trailing zeros (`100.000…0`) make no difference to the multiple,
        // only to whether the common scale fits: strip them when it does not.
        // The results below are built from the step as given, so they keep
        // its decimal places.
        let (q_m, s_m, _) = to_common_scale(parts(qty.0), (step_m, step_scale))
            .or_else(|| to_common_scale(stripped_parts(qty.0), stripped_parts(self.step.0)))
            .ok_or(overflow.clone())?;
        let (k, r) = div_rem(q_m, s_m);
        // At the step's scale if that fits, else at the fewest places that
        // hold the value exactly.
        let (short_m, short_scale) = stripped_parts(self.step.0);
        let at = |k: u128| {
            k.checked_mul(step_m)
                .and_then(|m| decimal(m, false, step_scale))
                .or_else(|| k.checked_mul(short_m).and_then(|m| decimal(m, false, short_scale)))
                .map(Quantity)
        };
        let below = at(k).ok_or(overflow)?;
        let above = if r == 0 { Some(below) } else { k.checked_add(1).and_then(at) };
        let nearest_is_above = r != 0 && (s_m - r < r || (s_m - r == r && k % 2 == 1));
        Ok((below, above, r == 0, nearest_is_above))
    }

    /// Whether `qty` is a multiple of the step within `min..=max`.
    #[must_use]
    pub fn is_valid(&self, qty: Quantity) -> bool {
        self.snap(qty).is_ok_and(|(_, _, exact, _)| exact) && self.in_range(qty)
    }

    fn in_range(&self, qty: Quantity) -> bool {
        qty >= self.min && self.max.is_none_or(|max| qty <= max)
    }

    /// Moves `qty` onto a multiple of the step as `mode` says, and checks the
    /// result against `min` and `max`. The result carries the step's decimal
    /// places.
    ///
    /// # Errors
    ///
    /// [`MoneyError::QuantityNotAligned`] for [`LotRounding::Reject`];
    /// [`MoneyError::QuantityOutOfRange`] if the aligned quantity is outside
    /// `min..=max`; [`MoneyError::Overflow`].
    pub fn align(&self, qty: Quantity, mode: LotRounding) -> Result<Quantity, MoneyError> {
        let (below, above, exact, nearest_is_above) = self.snap(qty)?;
        let overflow = MoneyError::Overflow { op: "lot alignment" };
        let aligned = match mode {
            _ if exact => below,
            LotRounding::Down => below,
            LotRounding::Up => above.ok_or(overflow)?,
            LotRounding::Nearest if nearest_is_above => above.ok_or(overflow)?,
            LotRounding::Nearest => below,
            LotRounding::Reject => {
                return Err(MoneyError::QuantityNotAligned {
                    quantity: qty,
                    step: self.step.0,
                    below: Some(below).filter(|b| self.in_range(*b)),
                    above: above.filter(|a| self.in_range(*a)),
                });
            }
        };
        if self.in_range(aligned) {
            Ok(aligned)
        } else {
            Err(MoneyError::QuantityOutOfRange { quantity: aligned, min: self.min, max: self.max })
        }
    }
}

/// The smallest order value (`price * quantity`) an exchange accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MinNotional(Decimal);

impl MinNotional {
    /// A minimum notional.
    ///
    /// # Errors
    ///
    /// [`MoneyError::NegativeQuantity`] for a negative value.
    pub fn new(value: Decimal) -> Result<MinNotional, MoneyError> {
        Quantity::new(value).map(|q| MinNotional(q.0))
    }

    /// The minimum value.
    #[must_use]
    pub const fn get(&self) -> Decimal {
        self.0
    }

    /// Whether `price * qty` reaches the minimum, compared exactly: the
    /// product is never rounded, however many digits it has, and trailing
    /// zeros on either operand make no difference.
    ///
    /// ```
    /// use spark_money::{MinNotional, parse_decimal};
    ///
    /// let min = MinNotional::new(parse_decimal("10130")?)?;
    /// assert!(min.is_met("101.30".parse()?, "100.00000000000000000000000".parse()?));
    /// assert!(!min.is_met("101.30".parse()?, "99.99999999999999999999999".parse()?));
    /// # Ok::<(), spark_money::MoneyError>(())
    /// ```
    #[must_use]
    pub fn is_met(&self, price: Price, qty: Quantity) -> bool {
        crate::int::product_at_least(price.0, qty.0, self.0)
    }
}

impl fmt::Display for MinNotional {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The exact `price * qty`, or `None` if it does not fit a `Decimal`.
#[must_use]
pub fn notional(price: Price, qty: Quantity) -> Option<Decimal> {
    crate::int::mul_exact(price.0, qty.0)
}
