//! Serde glue: decimals travel as JSON strings, never as JSON numbers.
//!
//! A JSON number is parsed as a binary floating-point number by most clients
//! and many servers, so
//! `101.3` may already be `101.29999999999999715782905696` before it reaches
//! us. Spark therefore serializes every decimal as a string and refuses a JSON
//! number on input with an error that says to send a string.
//!
//! Use this module for your own `Decimal` fields:
//!
//! ```
//! use rust_decimal::Decimal;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct Fee {
//!     #[serde(with = "spark_money::decimal_str")]
//!     rate: Decimal,
//! }
//!
//! let fee: Fee = serde_json::from_str(r#"{"rate": "0.0015"}"#)?;
//! assert_eq!(serde_json::to_string(&fee)?, r#"{"rate":"0.0015"}"#);
//! let err = serde_json::from_str::<Fee>(r#"{"rate": 0.0015}"#).unwrap_err();
//! assert!(err.to_string().contains("send decimals as JSON strings"));
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::fmt;

use rust_decimal::Decimal;
use serde::de::{Error, Visitor};
use serde::{Deserializer, Serializer};

use crate::{MoneyError, parse_decimal};

/// Serializes a decimal as a string such as `"101.30"`, keeping its scale.
///
/// # Errors
///
/// Only those of the serializer.
pub fn serialize<S: Serializer>(value: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// Deserializes a decimal from a plain decimal string (see
/// [`parse_decimal`]); a number is refused.
///
/// # Errors
///
/// A deserializer error explaining what was wrong.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    deserializer.deserialize_str(StrictVisitor::new("a decimal string such as \"101.30\"", Ok))
}

/// A visitor that accepts only strings, parses them strictly and then applies
/// `check` (e.g. "greater than zero"). Shared by every decimal newtype.
pub(crate) struct StrictVisitor<T> {
    expecting: &'static str,
    check: fn(Decimal) -> Result<T, MoneyError>,
}

impl<T> StrictVisitor<T> {
    pub(crate) const fn new(expecting: &'static str, check: fn(Decimal) -> Result<T, MoneyError>) -> Self {
        StrictVisitor { expecting, check }
    }
}

impl<T> Visitor<'_> for StrictVisitor<T> {
    type Value = T;

    // serde's default `visit_i64`/`visit_u64`/`visit_f64` report "invalid
    // type: floating point `0.1`, expected ..." followed by this text, which is
    // how a JSON number gets its explanation without this crate ever touching
    // a float.
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}; send decimals as JSON strings, a JSON number may already have lost precision as a float",
            self.expecting
        )
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<T, E> {
        parse_decimal(v).and_then(self.check).map_err(E::custom)
    }
}
