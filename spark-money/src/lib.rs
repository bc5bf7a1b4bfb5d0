//! Decimal-only money for trading services.
//!
//! `spark-money` makes the usual money mistakes impossible to write:
//!
//! - **No floats.** Every price, quantity and amount is a `rust_decimal`
//!   [`Decimal`]; the crate contains no binary floating-point number, and JSON
//!   numbers are refused on input because they may already have lost
//!   precision.
//! - **Every rounding names its mode**, and the default is banker's rounding
//!   ([`Rounding::HalfEven`]). [`round`] always returns exactly the requested
//!   decimal places and never rounds half away from zero behind your back.
//! - **Strict parsing.** [`parse_decimal`] accepts plain decimal strings only:
//!   no exponent, no `_`, no `,`, no whitespace, no `NaN`.
//! - **Exchange rules as types.** A [`TickTable`] (with Borsa Istanbul's equity
//!   bands built in) aligns prices side-aware, so a passive order never
//!   becomes more aggressive; [`LotSize`] aligns quantities; [`MinNotional`]
//!   checks order value; [`InstrumentRules::validate`] reports every broken
//!   rule at once with the nearest valid values.
//! - **Checked arithmetic.** [`Money`] refuses to add two currencies, and
//!   refuses a sum or product it cannot represent exactly instead of rounding
//!   it silently.
//! - **No heap allocation** in [`round`], [`TickTable::align`] or
//!   [`InstrumentRules::validate`].
//!
//! ```
//! use spark_money::{round, InstrumentRules, Price, Quantity, Rounding, Side, TickRounding, TickTable};
//!
//! // Banker's rounding with exact places.
//! let d = spark_money::parse_decimal("2.345")?;
//! assert_eq!(round(d, 2, Rounding::HalfEven)?.to_string(), "2.34");
//!
//! // Align a price to Borsa Istanbul's tick table, never crossing the spread.
//! let bist = TickTable::bist_equity();
//! let bid: Price = "249.97".parse()?;
//! assert_eq!(bist.align(bid, TickRounding::Passive(Side::Buy))?.to_string(), "249.90");
//! assert_eq!(bist.align(bid, TickRounding::Passive(Side::Sell))?.to_string(), "250.00");
//! # Ok::<(), spark_money::MoneyError>(())
//! ```
//!
//! # Features
//!
//! The crate has no optional features: its dependencies are `rust_decimal`
//! (with `std` only), `iso_currency`, `serde`, `toml` and `thiserror`.

#![deny(clippy::float_arithmetic, clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod currency;
pub mod decimal_str;
mod error;
mod int;
mod lot;
mod money;
mod parse;
mod price;
mod rounding;
mod rules;
mod tick;

pub use rust_decimal::Decimal;

pub use crate::currency::Currency;
pub use crate::error::{MoneyError, ParseErrorKind};
pub use crate::lot::{LotRounding, LotSize, MinNotional, UnknownLotRounding, notional};
pub use crate::money::Money;
pub use crate::parse::parse_decimal;
pub use crate::price::{Price, Quantity, Side, UnknownSide};
pub use crate::rounding::{Rounding, UnknownRounding, mul_div, round};
pub use crate::rules::{InstrumentRules, Violation, Violations};
pub use crate::tick::{Band, TickRounding, TickTable, UnknownTickRounding};
