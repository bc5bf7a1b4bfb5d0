//! `Money`: an exact amount in one currency.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

use crate::int::{self, decimal, div_round, parts, pow10};
use crate::{Currency, MoneyError, Rounding, parse_decimal, round};

/// An exact decimal amount in one currency.
///
/// The amount is kept exactly as given, so intermediate values such as a cost
/// basis can carry more places than the currency's minor unit;
/// [`round_to_minor`](Money::round_to_minor) and [`mul`](Money::mul) bring an
/// amount to minor units with a named [`Rounding`]. Arithmetic is checked: a
/// currency mismatch or an overflow is an error, never a panic.
///
/// ```
/// use rust_decimal::Decimal;
/// use spark_money::{Currency, Money, Rounding};
///
/// let price: Money = "1234.5 TRY".parse()?;
/// assert_eq!(price.to_string(), "1234.50 TRY");
///
/// let fee = price.mul(Decimal::new(15, 4), Rounding::HalfEven)?; // 0.15 %
/// assert_eq!(fee.to_string(), "1.85 TRY");
/// assert_eq!(price.add(&fee)?.to_string(), "1236.35 TRY");
///
/// let parts = Money::new(Decimal::new(100, 0), Currency::TRY).allocate(&[1u32, 1, 1])?;
/// let shown: Vec<String> = parts.iter().map(ToString::to_string).collect();
/// assert_eq!(shown, ["33.34 TRY", "33.33 TRY", "33.33 TRY"]);
///
/// assert!(price.add(&Money::new(Decimal::ONE, Currency::USD)).is_err());
/// # Ok::<(), spark_money::MoneyError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    amount: Decimal,
    currency: Currency,
}

impl Money {
    /// An exact amount, at whatever scale it has.
    #[must_use]
    pub fn new(mut amount: Decimal, currency: Currency) -> Money {
        if amount.is_zero() {
            amount.set_sign_positive(true);
        }
        Money { amount, currency }
    }

    /// Zero in `currency`, at its minor units (`0.00 TRY`).
    #[must_use]
    pub fn zero(currency: Currency) -> Money {
        Money::new(Decimal::new(0, currency.minor_units()), currency)
    }

    /// An amount given in minor units: `Money::from_minor(123450, TRY)` is
    /// `1234.50 TRY`.
    #[must_use]
    pub fn from_minor(units: i64, currency: Currency) -> Money {
        Money::new(Decimal::new(units, currency.minor_units()), currency)
    }

    /// The amount.
    #[must_use]
    pub const fn amount(&self) -> Decimal {
        self.amount
    }

    /// The currency.
    #[must_use]
    pub const fn currency(&self) -> Currency {
        self.currency
    }

    /// Whether the amount is zero.
    #[must_use]
    pub fn is_zero(&self) -> bool {
        self.amount.is_zero()
    }

    /// Whether the amount is below zero.
    #[must_use]
    pub fn is_negative(&self) -> bool {
        self.amount.is_sign_negative() && !self.amount.is_zero()
    }

    /// The same amount with the opposite sign.
    #[must_use]
    pub fn neg(&self) -> Money {
        Money::new(-self.amount, self.currency)
    }

    fn same_currency(&self, other: &Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch { left: self.currency, right: other.currency })
        }
    }

    /// `self + other`, exactly.
    ///
    /// # Errors
    ///
    /// [`MoneyError::CurrencyMismatch`], or [`MoneyError::Overflow`] if the
    /// exact sum does not fit (`rust_decimal` would round it silently).
    #[allow(clippy::should_implement_trait, reason = "fallible: returns Result, unlike std::ops::Add")]
    pub fn add(&self, other: &Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        exact_sum(self.amount, other.amount)
            .map(|amount| Money::new(amount, self.currency))
            .ok_or(MoneyError::Overflow { op: "money addition" })
    }

    /// `self - other`, exactly.
    ///
    /// # Errors
    ///
    /// As for [`add`](Money::add).
    #[allow(clippy::should_implement_trait, reason = "fallible: returns Result, unlike std::ops::Sub")]
    pub fn sub(&self, other: &Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        exact_sum(self.amount, -other.amount)
            .map(|amount| Money::new(amount, self.currency))
            .ok_or(MoneyError::Overflow { op: "money subtraction" })
    }

    /// `self * factor`, rounded once, from the exact product, to the
    /// currency's minor units.
    ///
    /// # Errors
    ///
    /// [`MoneyError::Overflow`] if the product does not fit.
    pub fn mul(&self, factor: Decimal, mode: Rounding) -> Result<Money, MoneyError> {
        int::mul_round(self.amount, factor, self.currency.minor_units(), mode)
            .map(|amount| Money::new(amount, self.currency))
            .ok_or(MoneyError::Overflow { op: "money multiplication" })
    }

    /// The amount rounded to the currency's minor units, always carrying
    /// exactly that many places (`1234.5 TRY` becomes `1234.50 TRY`).
    ///
    /// # Errors
    ///
    /// [`MoneyError::Overflow`] if the padded amount does not fit.
    pub fn round_to_minor(&self, mode: Rounding) -> Result<Money, MoneyError> {
        round(self.amount, self.currency.minor_units(), mode).map(|amount| Money::new(amount, self.currency))
    }

    /// Whether the amount is a whole number of minor units.
    #[must_use]
    pub fn is_whole_minor_units(&self) -> bool {
        self.to_minor_units().is_ok()
    }

    /// The amount in minor units (`1234.50 TRY` is `123450`).
    ///
    /// # Errors
    ///
    /// [`MoneyError::NotWholeMinorUnits`] if the amount has a fraction of a
    /// minor unit: it is never truncated silently.
    pub fn to_minor_units(&self) -> Result<i128, MoneyError> {
        let minor = self.currency.minor_units();
        let (m, scale) = parts(self.amount);
        let not_whole =
            || MoneyError::NotWholeMinorUnits { amount: self.amount, currency: self.currency, minor_units: minor };
        let units = if scale <= minor {
            m.checked_mul(pow10(minor - scale).ok_or_else(not_whole)?).ok_or_else(not_whole)?
        } else {
            let (q, exact) = div_round(m, pow10(scale - minor).ok_or_else(not_whole)?, false, Rounding::Down);
            if !exact {
                return Err(not_whole());
            }
            q
        };
        let units = i128::try_from(units).map_err(|_| not_whole())?;
        Ok(if self.is_negative() { -units } else { units })
    }

    /// Splits the amount into parts proportional to `weights` that add up
    /// exactly to it, in minor units, by the largest-remainder method: each
    /// part first gets its share rounded toward zero, then the minor units
    /// left over go one each to the parts with the largest remainders
    /// (earlier parts first on equal remainders).
    ///
    /// # Errors
    ///
    /// [`MoneyError::NotWholeMinorUnits`] if the amount is not in whole minor
    /// units (round it first); [`MoneyError::InvalidWeights`] for no weights,
    /// a negative weight or weights that sum to zero;
    /// [`MoneyError::Overflow`] if the shares cannot be computed exactly.
    pub fn allocate<W: Into<Decimal> + Copy>(&self, weights: &[W]) -> Result<Vec<Money>, MoneyError> {
        let total_units = self.to_minor_units()?;
        // Without trailing zeros, so that `1.000…0` weighs like `1` and the
        // common scale stays small.
        let weights: Vec<Decimal> = weights.iter().map(|&w| w.into().normalize()).collect();
        if weights.is_empty() {
            return Err(MoneyError::InvalidWeights { reason: "no weights given" });
        }
        if weights.iter().any(|w| w.is_sign_negative() && !w.is_zero()) {
            return Err(MoneyError::InvalidWeights { reason: "a weight is negative" });
        }
        // Bring the weights to integers at a common scale so that every share
        // and remainder is computed exactly.
        let scale = weights.iter().map(|w| w.scale()).max().unwrap_or(0);
        let overflow = MoneyError::Overflow { op: "allocation" };
        let int_weights = weights
            .iter()
            .map(|w| {
                let (m, s) = parts(*w);
                pow10(scale - s).and_then(|p| m.checked_mul(p))
            })
            .collect::<Option<Vec<u128>>>()
            .ok_or(overflow.clone())?;
        let weight_sum = int_weights.iter().try_fold(0u128, |acc, w| acc.checked_add(*w)).ok_or(overflow.clone())?;
        if weight_sum == 0 {
            return Err(MoneyError::InvalidWeights { reason: "the weights sum to zero" });
        }
        let negative = total_units < 0;
        let total = total_units.unsigned_abs();
        let mut shares = Vec::with_capacity(int_weights.len());
        let mut remainders = Vec::with_capacity(int_weights.len());
        for (i, w) in int_weights.iter().enumerate() {
            let product = total.checked_mul(*w).ok_or(overflow.clone())?;
            shares.push(product / weight_sum);
            remainders.push((product % weight_sum, i));
        }
        let handed_out: u128 = shares.iter().sum();
        let left_over = usize::try_from(total - handed_out).map_err(|_| overflow.clone())?;
        // Largest remainder first; on equal remainders the earlier part wins.
        remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(_, i) in remainders.iter().take(left_over) {
            shares[i] += 1;
        }
        let minor = self.currency.minor_units();
        shares
            .into_iter()
            .map(|units| decimal(units, negative, minor).map(|amount| Money::new(amount, self.currency)))
            .collect::<Option<Vec<Money>>>()
            .ok_or(overflow)
    }
}

/// `a + b` if it is exact. `rust_decimal`'s `checked_add` rounds when the
/// exact sum needs more than 96 bits at the larger scale (it then lowers the
/// scale); a changed scale betrays that, and money must not be rounded
/// silently.
fn exact_sum(a: Decimal, b: Decimal) -> Option<Decimal> {
    let exact = |a: Decimal, b: Decimal| {
        let sum = a.checked_add(b)?;
        (sum.scale() == a.scale().max(b.scale()) || sum.is_zero()).then_some(sum)
    };
    // Trailing zeros (`1.0000000000000000000000000000`) can push the sum past
    // 96 bits at the larger scale although it fits without them: try again
    // without them before refusing.
    exact(a, b).or_else(|| exact(a.normalize(), b.normalize()))
}

impl fmt::Display for Money {
    /// `1234.50 TRY`: padded to the currency's minor units, never rounded (an
    /// amount with more places shows them all).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let minor = self.currency.minor_units();
        if self.amount.scale() < minor {
            let mut padded = self.amount;
            padded.rescale(minor);
            // `rescale` clamps instead of failing when the mantissa is full:
            // then print the amount as it is rather than a different number.
            if padded == self.amount {
                return write!(f, "{padded} {}", self.currency);
            }
        }
        write!(f, "{} {}", self.amount, self.currency)
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Money({self})")
    }
}

impl FromStr for Money {
    type Err = MoneyError;

    /// Parses `"<decimal> <CODE>"`, e.g. `"1234.50 TRY"`, with exactly one
    /// space.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (amount, code) = s.split_once(' ').ok_or_else(|| MoneyError::Parse {
            input: s.chars().take(64).collect(),
            kind: crate::ParseErrorKind::MissingDigits,
        })?;
        Ok(Money::new(parse_decimal(amount)?, Currency::new(code)?))
    }
}

/// Money serializes as `{"amount": "1234.50", "currency": "TRY"}`; the amount
/// is a string, and a JSON number is refused on input.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MoneyRepr {
    #[serde(with = "crate::decimal_str")]
    amount: Decimal,
    currency: Currency,
}

impl serde::Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        MoneyRepr { amount: self.amount, currency: self.currency }.serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Money {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let repr = MoneyRepr::deserialize(deserializer)?;
        Ok(Money::new(repr.amount, repr.currency))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Money {
        s.parse().unwrap()
    }

    #[test]
    fn display_pads_but_never_rounds() {
        assert_eq!(m("1234.5 TRY").to_string(), "1234.50 TRY");
        assert_eq!(m("7 JPY").to_string(), "7 JPY");
        assert_eq!(m("1.005 USD").to_string(), "1.005 USD");
        assert_eq!(m("1 KWD").to_string(), "1.000 KWD");
    }

    #[test]
    fn minor_units_round_trip_and_refuse_fractions() {
        assert_eq!(m("1234.50 TRY").to_minor_units().unwrap(), 123_450);
        assert_eq!(m("-0.07 USD").to_minor_units().unwrap(), -7);
        assert_eq!(Money::from_minor(-7, Currency::USD), m("-0.07 USD"));
        assert!(matches!(m("1.005 USD").to_minor_units(), Err(MoneyError::NotWholeMinorUnits { .. })));
    }

    #[test]
    fn mismatch_and_overflow_are_errors() {
        let err = m("1 TRY").add(&m("1 USD")).unwrap_err();
        assert_eq!(err.to_string(), "currency mismatch: TRY and USD");
        let max = Money::new(Decimal::MAX, Currency::TRY);
        assert!(matches!(max.add(&m("1 TRY")), Err(MoneyError::Overflow { .. })));
        // Exact sum needs 29 digits: rust_decimal would round it, we refuse.
        let a = m("79228162514264337593543950.34 TRY");
        assert!(matches!(a.add(&m("0.001 TRY")), Err(MoneyError::Overflow { .. })));
    }

    #[test]
    fn allocate_largest_remainder() {
        // 1.5 and 3.5 units: equal remainders, the earlier part gets the unit.
        let parts = m("0.05 TRY").allocate(&[3u32, 7]).unwrap();
        assert_eq!(parts, [m("0.02 TRY"), m("0.03 TRY")]);
        let parts = m("0.05 TRY").allocate(&[2u32, 8]).unwrap();
        assert_eq!(parts, [m("0.01 TRY"), m("0.04 TRY")]);
        let parts = m("-100 TRY").allocate(&[1u32, 1, 1]).unwrap();
        assert_eq!(parts, [m("-33.34 TRY"), m("-33.33 TRY"), m("-33.33 TRY")]);
        let parts = m("10 JPY").allocate(&[Decimal::new(5, 1), Decimal::new(25, 2)]).unwrap();
        assert_eq!(parts, [m("7 JPY"), m("3 JPY")]);
        let parts = m("1 TRY").allocate(&[0u32, 1]).unwrap();
        assert_eq!(parts, [m("0 TRY"), m("1 TRY")]);
        assert!(m("1 TRY").allocate::<u32>(&[]).is_err());
        assert!(m("1 TRY").allocate(&[0u32, 0]).is_err());
        assert!(m("1 TRY").allocate(&[Decimal::NEGATIVE_ONE]).is_err());
        assert!(m("1.001 TRY").allocate(&[1u32]).is_err());
    }

    #[test]
    fn serde_amount_is_a_string() {
        let json = serde_json::to_string(&m("1234.5 TRY")).unwrap();
        assert_eq!(json, r#"{"amount":"1234.5","currency":"TRY"}"#);
        let back: Money = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m("1234.5 TRY"));
        assert!(serde_json::from_str::<Money>(r#"{"amount":1.5,"currency":"TRY"}"#).is_err());
    }
}
