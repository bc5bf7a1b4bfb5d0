//! The one error type of the crate.

use std::fmt;

use rust_decimal::Decimal;

use crate::{Currency, Price, Quantity};

/// Everything that can go wrong in `spark-money`.
///
/// Messages are lower-case, name the offending value and, where there is one,
/// the nearest valid alternative, so they can be shown to an operator as they
/// are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MoneyError {
    /// A string is not a plain decimal number.
    #[error("invalid decimal {input:?}: {kind}")]
    Parse {
        /// The rejected input, cut to at most 64 characters.
        input: String,
        /// What exactly was wrong with it.
        kind: ParseErrorKind,
    },
    /// A number of decimal places above 28, the most a `Decimal` can carry.
    #[error("{dp} decimal places requested, at most 28 are supported")]
    ScaleTooLarge {
        /// The requested number of decimal places.
        dp: u32,
    },
    /// A result does not fit into a `Decimal` (96-bit mantissa, scale 0..=28).
    #[error("{op} overflows the decimal range")]
    Overflow {
        /// The operation that overflowed, e.g. `"money multiplication"`.
        op: &'static str,
    },
    /// A price must be greater than zero.
    #[error("price must be greater than zero, got {value}")]
    NonPositivePrice {
        /// The rejected value.
        value: Decimal,
    },
    /// A quantity must not be negative.
    #[error("quantity must not be negative, got {value}")]
    NegativeQuantity {
        /// The rejected value.
        value: Decimal,
    },
    /// A currency code that is not an active ISO 4217 code.
    #[error("unknown currency code {code:?}{}", DidYouMean(.suggestion))]
    UnknownCurrency {
        /// The rejected code.
        code: String,
        /// The code the caller probably meant (`"TRY"` for `"try"`).
        suggestion: Option<String>,
    },
    /// An ISO 4217 code that has no minor unit (precious metals, funds, `XXX`).
    #[error("{code} has no minor unit in ISO 4217 and cannot be used as money")]
    NoMinorUnit {
        /// The code.
        code: String,
    },
    /// Two amounts in different currencies were combined.
    #[error("currency mismatch: {left} and {right}")]
    CurrencyMismatch {
        /// The currency of the left operand.
        left: Currency,
        /// The currency of the right operand.
        right: Currency,
    },
    /// An amount has more decimal places than its currency's minor unit.
    #[error("{amount} {currency} is not a whole number of minor units ({minor_units} decimal places); round it first")]
    NotWholeMinorUnits {
        /// The amount.
        amount: Decimal,
        /// Its currency.
        currency: Currency,
        /// The currency's minor units.
        minor_units: u32,
    },
    /// Allocation weights that cannot split an amount.
    #[error("invalid allocation weights: {reason}")]
    InvalidWeights {
        /// Why.
        reason: &'static str,
    },
    /// A tick size or lot step that is not greater than zero.
    #[error("{what} must be greater than zero, got {value}")]
    NonPositiveIncrement {
        /// `"tick"` or `"lot step"`.
        what: &'static str,
        /// The rejected value.
        value: Decimal,
    },
    /// A tick table whose bands do not form one valid price grid.
    #[error("invalid tick table: {reason}")]
    InvalidTickTable {
        /// Why, naming the band.
        reason: String,
    },
    /// A lot size whose bounds contradict each other.
    #[error("invalid lot size: {reason}")]
    InvalidLotSize {
        /// Why.
        reason: String,
    },
    /// A price below the first band of a tick table.
    #[error("price {price} is below the tick table, whose first band starts at {lowest}")]
    PriceBelowTable {
        /// The price.
        price: Price,
        /// Where the first band starts.
        lowest: Decimal,
    },
    /// A price that is not on the tick grid, with the valid prices around it.
    #[error("price {price} is not a multiple of tick {tick} ({})", Nearest(*.below, *.above))]
    PriceNotAligned {
        /// The price.
        price: Price,
        /// The tick in force at that price.
        tick: Decimal,
        /// The nearest valid price below, if there is one.
        below: Option<Price>,
        /// The nearest valid price above, if there is one.
        above: Option<Price>,
    },
    /// Rounding in the requested direction leaves the range of valid prices.
    #[error("no valid price {direction} {price} (tick {tick})")]
    NoValidPrice {
        /// The price.
        price: Price,
        /// The tick in force at that price.
        tick: Decimal,
        /// `"at or below"` or `"at or above"`.
        direction: &'static str,
    },
    /// A quantity that is not a multiple of the lot step.
    #[error("quantity {quantity} is not a multiple of lot step {step} ({})", Nearest(*.below, *.above))]
    QuantityNotAligned {
        /// The quantity.
        quantity: Quantity,
        /// The lot step.
        step: Decimal,
        /// The nearest valid quantity below, if there is one.
        below: Option<Quantity>,
        /// The nearest valid quantity above, if there is one.
        above: Option<Quantity>,
    },
    /// A step-aligned quantity outside the lot's minimum and maximum.
    #[error("quantity {quantity} is outside the lot limits {min}..={}", OrUnbounded(*.max))]
    QuantityOutOfRange {
        /// The quantity after alignment.
        quantity: Quantity,
        /// The smallest valid quantity.
        min: Quantity,
        /// The largest valid quantity, if bounded.
        max: Option<Quantity>,
    },
    /// A TOML rules or tick-table document that cannot be read.
    #[error("invalid TOML: {message}")]
    Toml {
        /// The parser's message, with line and column.
        message: String,
    },
}

impl MoneyError {
    /// A one-line TOML error: `line 4, column 8: <what was wrong>`.
    pub(crate) fn toml(text: &str, err: &toml::de::Error) -> MoneyError {
        let message = match err.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {column}: {}", err.message().trim_end())
            }
            None => err.message().trim_end().to_owned(),
        };
        MoneyError::Toml { message: message.replace('\n', " ") }
    }
}

/// What made [`parse_decimal`](crate::parse_decimal) reject a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The string is empty.
    Empty,
    /// Leading or trailing whitespace.
    Whitespace,
    /// Scientific notation such as `1e5`.
    Exponent,
    /// Digit separators such as `1_000`.
    Underscore,
    /// A comma, as in `1,5` or `1,000`.
    Comma,
    /// `NaN`, `inf` or `infinity`.
    NotANumber,
    /// A leading `+`.
    PlusSign,
    /// No digit before or after the decimal point (`.5`, `5.`, `-`).
    MissingDigits,
    /// A character that has no place in a decimal number.
    InvalidCharacter(char),
    /// More than 28 digits after the decimal point.
    TooManyFractionDigits,
    /// More significant digits than a 96-bit mantissa holds.
    OutOfRange,
}

impl fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty string"),
            Self::Whitespace => f.write_str("surrounding whitespace is not allowed"),
            Self::Exponent => f.write_str("exponent notation is not allowed; write the digits out"),
            Self::Underscore => f.write_str("digit separators '_' are not allowed"),
            Self::Comma => {
                f.write_str("commas are not allowed; use '.' as the decimal point and no thousands separator")
            }
            Self::NotANumber => f.write_str("NaN and infinity are not numbers"),
            Self::PlusSign => f.write_str("a leading '+' is not allowed"),
            Self::MissingDigits => f.write_str("expected digits on both sides of the decimal point, like 0.5"),
            Self::InvalidCharacter(c) => write!(f, "unexpected character {c:?}"),
            Self::TooManyFractionDigits => f.write_str("more than 28 digits after the decimal point"),
            Self::OutOfRange => f.write_str("out of the decimal range (at most 28-29 significant digits)"),
        }
    }
}

/// Renders `nearest valid: a, b` for alignment errors.
struct Nearest<T>(Option<T>, Option<T>);

impl<T: fmt::Display> fmt::Display for Nearest<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.0, &self.1) {
            (Some(a), Some(b)) => write!(f, "nearest valid: {a}, {b}"),
            (Some(a), None) | (None, Some(a)) => write!(f, "nearest valid: {a}"),
            (None, None) => f.write_str("no valid value nearby"),
        }
    }
}

struct OrUnbounded<T>(Option<T>);

impl<T: fmt::Display> fmt::Display for OrUnbounded<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => Ok(()),
        }
    }
}

struct DidYouMean<'a>(&'a Option<String>);

impl fmt::Display for DidYouMean<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(s) => write!(f, " (did you mean {s:?}?)"),
            None => Ok(()),
        }
    }
}
