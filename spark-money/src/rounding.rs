//! Rounding modes and fixed-scale rounding.

use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};

use crate::MoneyError;
use crate::int::{self, MAX_SCALE};

/// How to round a value that falls between two representable ones.
///
/// Every rounding in Spark names its mode; [`Rounding::HalfEven`] (banker's
/// rounding) is the default because it does not drift: over many ties it rounds
/// up as often as down.
///
/// | mode | 2.5 | -2.5 | 2.4 | -2.6 |
/// |---|---|---|---|---|
/// | `HalfEven` | 2 | -2 | 2 | -3 |
/// | `HalfUp` (ties away from zero) | 3 | -3 | 2 | -3 |
/// | `HalfDown` (ties toward zero) | 2 | -2 | 2 | -3 |
/// | `Down` (toward zero) | 2 | -2 | 2 | -2 |
/// | `Up` (away from zero) | 3 | -3 | 3 | -3 |
/// | `Floor` | 2 | -3 | 2 | -3 |
/// | `Ceiling` | 3 | -2 | 3 | -2 |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Rounding {
    /// Nearest; ties to the even neighbour (banker's rounding).
    #[default]
    HalfEven,
    /// Nearest; ties away from zero.
    HalfUp,
    /// Nearest; ties toward zero.
    HalfDown,
    /// Toward zero (truncate).
    Down,
    /// Away from zero.
    Up,
    /// Toward negative infinity.
    Floor,
    /// Toward positive infinity.
    Ceiling,
}

impl Rounding {
    /// Every mode, in declaration order.
    pub const ALL: [Rounding; 7] =
        [Self::HalfEven, Self::HalfUp, Self::HalfDown, Self::Down, Self::Up, Self::Floor, Self::Ceiling];

    /// The kebab-case name used on the command line and in configuration.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HalfEven => "half-even",
            Self::HalfUp => "half-up",
            Self::HalfDown => "half-down",
            Self::Down => "down",
            Self::Up => "up",
            Self::Floor => "floor",
            Self::Ceiling => "ceiling",
        }
    }

    /// The equivalent `rust_decimal` strategy.
    #[must_use]
    pub const fn strategy(self) -> RoundingStrategy {
        match self {
            Self::HalfEven => RoundingStrategy::MidpointNearestEven,
            Self::HalfUp => RoundingStrategy::MidpointAwayFromZero,
            Self::HalfDown => RoundingStrategy::MidpointTowardZero,
            Self::Down => RoundingStrategy::ToZero,
            Self::Up => RoundingStrategy::AwayFromZero,
            Self::Floor => RoundingStrategy::ToNegativeInfinity,
            Self::Ceiling => RoundingStrategy::ToPositiveInfinity,
        }
    }
}

impl fmt::Display for Rounding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error returned when a rounding mode name is not recognised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown rounding mode {0:?} (expected one of half-even, half-up, half-down, down, up, floor, ceiling)")]
pub struct UnknownRounding(pub String);

impl FromStr for Rounding {
    type Err = UnknownRounding;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|mode| mode.as_str() == s).ok_or_else(|| UnknownRounding(s.to_owned()))
    }
}

/// Rounds `value` to exactly `dp` decimal places with `mode`.
///
/// Unlike `rust_decimal`'s `round_dp*`, the result always carries `dp` places
/// (`1.2` at 2 dp is `1.20`), and it never rounds half away from zero behind
/// your back as `Decimal::rescale` does. A negative value that rounds to zero
/// comes back as plain `0`, never `-0`.
///
/// # Errors
///
/// [`MoneyError::ScaleTooLarge`] for `dp > 28`; [`MoneyError::Overflow`] when
/// the value has too many integer digits to carry `dp` places.
///
/// # Examples
///
/// ```
/// use rust_decimal::Decimal;
/// use spark_money::{round, Rounding};
///
/// let d = |s: &str| s.parse::<Decimal>().unwrap();
/// assert_eq!(round(d("2.5"), 0, Rounding::HalfEven)?.to_string(), "2");
/// assert_eq!(round(d("0.135"), 2, Rounding::HalfEven)?.to_string(), "0.14");
/// assert_eq!(round(d("1.2"), 2, Rounding::HalfEven)?.to_string(), "1.20");
/// assert_eq!(round(d("-2.5"), 0, Rounding::HalfUp)?.to_string(), "-3");
/// # Ok::<(), spark_money::MoneyError>(())
/// ```
pub fn round(value: Decimal, dp: u32, mode: Rounding) -> Result<Decimal, MoneyError> {
    if dp > MAX_SCALE {
        return Err(MoneyError::ScaleTooLarge { dp });
    }
    // Exact integer rounding of the mantissa (a `u64` divide for everyday
    // values) is cheaper than `round_dp_with_strategy` followed by a padding
    // `rescale`, and the property tests check it against rust_decimal.
    let (magnitude, scale) = int::parts(value);
    int::round_parts(magnitude, value.is_sign_negative(), scale, dp, mode)
        .ok_or(MoneyError::Overflow { op: "rounding" })
}

/// `a * b / c`, computed exactly and rounded once to `dp` places with
/// `mode`. Use it for proportional shares (the cost of part of a position,
/// a pro-rata fee) where `a * b / c` in `Decimal` steps would round twice.
///
/// # Errors
///
/// [`MoneyError::ScaleTooLarge`] for `dp > 28`; [`MoneyError::Overflow`] for
/// a zero divisor or a result beyond `Decimal` (long mantissas whose exact
/// intermediate exceeds 128 bits are divided in full width, not refused).
///
/// # Examples
///
/// ```
/// use spark_money::{mul_div, parse_decimal, Rounding};
///
/// let d = |s| parse_decimal(s).unwrap();
/// // A third of 100.00: 33.333… rounded once.
/// assert_eq!(mul_div(d("100.00"), d("1"), d("3"), 2, Rounding::HalfEven)?.to_string(), "33.33");
/// // 2.5 * 1 / 1 at 0 dp is a true tie: half-even gives 2.
/// assert_eq!(mul_div(d("2.5"), d("1"), d("1"), 0, Rounding::HalfEven)?.to_string(), "2");
/// # Ok::<(), spark_money::MoneyError>(())
/// ```
pub fn mul_div(a: Decimal, b: Decimal, c: Decimal, dp: u32, mode: Rounding) -> Result<Decimal, MoneyError> {
    if dp > MAX_SCALE {
        return Err(MoneyError::ScaleTooLarge { dp });
    }
    let overflow = MoneyError::Overflow { op: "multiply-divide" };
    if c.is_zero() {
        return Err(overflow);
    }
    let negative = (a.is_sign_negative() != b.is_sign_negative()) != c.is_sign_negative();
    // Trailing zeros change no result, only whether the intermediate fits:
    // they are stripped when the raw mantissas overflow, so `100.000…0`
    // divides exactly like `100`.
    let (numerator, denominator) = match mul_div_terms(int::parts(a), int::parts(b), int::parts(c), dp) {
        Some(terms) => terms,
        // Long mantissas (a cost basis times a 28-place quantity) give terms
        // beyond 128 bits although the quotient fits: divide in full width
        // rather than refuse.
        None => {
            return int::mul_div_wide(int::parts(a), int::parts(b), int::parts(c), dp, negative, mode).ok_or(overflow);
        }
    };
    let (q, _) = int::div_round(numerator, denominator, negative, mode);
    int::decimal(q, negative && q != 0, dp).ok_or(overflow)
}

/// `a * b / c` in units of `10^-dp` as an integer fraction of magnitudes:
/// `(am * bm * 10^(csc + dp)) / (cm * 10^(asc + bsc))`, with the common power
/// of ten cancelled first. `None` if either side exceeds a `u128`.
fn mul_div_terms(a: (u128, u32), b: (u128, u32), c: (u128, u32), dp: u32) -> Option<(u128, u128)> {
    let (up, down) = (c.1 + dp, a.1 + b.1);
    let common = up.min(down);
    let numerator = a.0.checked_mul(b.0)?.checked_mul(int::pow10(up - common)?)?;
    let denominator = c.0.checked_mul(int::pow10(down - common)?)?;
    Some((numerator, denominator))
}
