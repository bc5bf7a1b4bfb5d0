//! `Price`, `Quantity` and `Side`.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

use crate::decimal_str::StrictVisitor;
use crate::{MoneyError, parse_decimal};

/// Implements the parts `Price` and `Quantity` share: strict parsing, display
/// with the value's own scale, conversions and string-only serde.
macro_rules! decimal_newtype {
    ($name:ident, $check:path, $expecting:literal) => {
        impl $name {
            /// The value as a `Decimal`.
            #[must_use]
            pub const fn get(self) -> Decimal {
                self.0
            }
        }

        impl FromStr for $name {
            type Err = MoneyError;

            /// Parses strictly (see [`parse_decimal`](crate::parse_decimal)),
            /// then checks the range.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_decimal(s).and_then($check)
            }
        }

        impl TryFrom<Decimal> for $name {
            type Error = MoneyError;

            fn try_from(value: Decimal) -> Result<Self, Self::Error> {
                $check(value)
            }
        }

        impl From<$name> for Decimal {
            fn from(value: $name) -> Decimal {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_str(StrictVisitor::new($expecting, $check))
            }
        }
    };
}

/// A price: a decimal greater than zero.
///
/// Equality and ordering are numeric (`101.3 == 101.30`); `Display` keeps the
/// scale the value was made with, so an aligned price prints with its tick's
/// decimal places.
///
/// ```
/// use spark_money::Price;
///
/// let p: Price = "101.30".parse()?;
/// assert_eq!(p.to_string(), "101.30");
/// assert!("0".parse::<Price>().is_err());
/// assert!("1e2".parse::<Price>().is_err());
/// assert_eq!(serde_json::to_string(&p).unwrap(), r#""101.30""#);
/// assert!(serde_json::from_str::<Price>("101.3").is_err());
/// # Ok::<(), spark_money::MoneyError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Price(pub(crate) Decimal);

impl Price {
    /// Makes a price from a decimal.
    ///
    /// # Errors
    ///
    /// [`MoneyError::NonPositivePrice`] unless `value > 0`.
    pub fn new(value: Decimal) -> Result<Price, MoneyError> {
        if value > Decimal::ZERO { Ok(Price(value)) } else { Err(MoneyError::NonPositivePrice { value }) }
    }
}

decimal_newtype!(Price, Price::new, "a price as a decimal string such as \"101.30\"");

/// A quantity: a decimal that is zero or more.
///
/// ```
/// use spark_money::Quantity;
///
/// let q: Quantity = "100".parse()?;
/// assert_eq!(q.get(), rust_decimal::Decimal::ONE_HUNDRED);
/// assert!("-1".parse::<Quantity>().is_err());
/// # Ok::<(), spark_money::MoneyError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(pub(crate) Decimal);

impl Quantity {
    /// Zero.
    pub const ZERO: Quantity = Quantity(Decimal::ZERO);

    /// Makes a quantity from a decimal.
    ///
    /// # Errors
    ///
    /// [`MoneyError::NegativeQuantity`] if `value < 0`.
    pub fn new(mut value: Decimal) -> Result<Quantity, MoneyError> {
        if value.is_sign_negative() && !value.is_zero() {
            return Err(MoneyError::NegativeQuantity { value });
        }
        value.set_sign_positive(true);
        Ok(Quantity(value))
    }

    /// Whether the quantity is zero.
    #[must_use]
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

decimal_newtype!(Quantity, Quantity::new, "a quantity as a decimal string such as \"100\"");

/// The side of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Buy: a higher price is more aggressive.
    Buy,
    /// Sell: a lower price is more aggressive.
    Sell,
}

impl Side {
    /// `"buy"` or `"sell"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }

    /// The other side.
    #[must_use]
    pub const fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error returned when a side name is neither `buy` nor `sell`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown side {0:?} (expected buy or sell)")]
pub struct UnknownSide(pub String);

impl FromStr for Side {
    type Err = UnknownSide;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "buy" => Ok(Side::Buy),
            "sell" => Ok(Side::Sell),
            _ => Err(UnknownSide(s.to_owned())),
        }
    }
}
