//! Instrument rules: tick table, lot size, minimum notional, all at once.

use std::fmt;

use rust_decimal::Decimal;

use crate::lot::notional;
use crate::{Currency, LotSize, MinNotional, MoneyError, Price, Quantity, Side, TickRounding, TickTable};

/// What an exchange accepts for one instrument.
///
/// ```
/// use spark_money::{InstrumentRules, Side};
///
/// let rules = InstrumentRules::from_toml(r#"
///     currency = "TRY"
///     tick_table = { preset = "bist-equity" }
///     min_notional = "100"
///     [lot]
///     step = "1"
///     min = "1"
///     max = "1000000"
/// "#)?;
/// assert!(rules.validate(Side::Buy, "101.30".parse()?, "10".parse()?).is_ok());
///
/// let violations = rules.validate(Side::Buy, "101.37".parse()?, "0.5".parse()?).unwrap_err();
/// // Off tick, off the lot step, below the lot minimum, below the minimum notional.
/// assert_eq!(violations.len(), 4);
/// for v in &violations {
///     println!("{v}");
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "RulesDef")]
pub struct InstrumentRules {
    tick_table: TickTable,
    lot: LotSize,
    min_notional: Option<MinNotional>,
    currency: Currency,
}

impl InstrumentRules {
    /// Rules from their parts.
    #[must_use]
    pub fn new(tick_table: TickTable, lot: LotSize, min_notional: Option<MinNotional>, currency: Currency) -> Self {
        InstrumentRules { tick_table, lot, min_notional, currency }
    }

    /// Reads rules from TOML: `currency`, `tick_table` (as
    /// [`TickTable::from_toml`] reads it), `[lot]` with `step`, optional `min`
    /// (default: one step) and `max`, and optional `min_notional`. Every
    /// decimal is a string.
    ///
    /// # Errors
    ///
    /// [`MoneyError::Toml`] naming the line and what was wrong.
    pub fn from_toml(text: &str) -> Result<InstrumentRules, MoneyError> {
        toml::from_str(text).map_err(|e| MoneyError::toml(text, &e))
    }

    /// The tick table.
    #[must_use]
    pub fn tick_table(&self) -> &TickTable {
        &self.tick_table
    }

    /// The lot size.
    #[must_use]
    pub const fn lot(&self) -> &LotSize {
        &self.lot
    }

    /// The minimum notional, if any.
    #[must_use]
    pub const fn min_notional(&self) -> Option<MinNotional> {
        self.min_notional
    }

    /// The currency prices and notionals are in.
    #[must_use]
    pub const fn currency(&self) -> Currency {
        self.currency
    }

    /// Checks an order against every rule and reports every violation at
    /// once, each with the nearest valid value. Allocates nothing, even when
    /// it fails.
    ///
    /// The suggested price for an off-tick price is the passive one for
    /// `side` (a buy rounds down, a sell up), so following the suggestion
    /// never makes the order more aggressive.
    ///
    /// # Errors
    ///
    /// [`Violations`], never empty.
    #[allow(
        clippy::result_large_err,
        reason = "Violations is returned inline so that validation never allocates, even on failure"
    )]
    pub fn validate(&self, side: Side, price: Price, qty: Quantity) -> Result<(), Violations> {
        let mut out = Violations::default();

        // The price the remaining checks use: the suggestion if the given one
        // is off the grid, so the notional hint matches a price that can trade.
        let mut effective_price = price;
        match self.tick_table.neighbours(price) {
            Ok((below, above)) if below == above => {}
            Ok((below, above)) => {
                let suggested = self.tick_table.align(price, TickRounding::Passive(side)).ok();
                effective_price = suggested.or(below).or(above).unwrap_or(price);
                out.push(Violation::PriceOffTick {
                    price,
                    tick: self.tick_table.tick_at(price).unwrap_or_default(),
                    below,
                    above,
                    suggested,
                });
            }
            Err(_) => {
                let lowest = self.tick_table.bands()[0].lower();
                out.push(Violation::PriceBelowTable { price, lowest });
            }
        }

        match self.lot.snap(qty) {
            Ok((_, _, true, _)) => {}
            Ok((below, above, false, _)) => out.push(Violation::QuantityOffStep {
                quantity: qty,
                step: self.lot.step_size(),
                below: Some(below).filter(|b| !b.is_zero()),
                above,
            }),
            Err(_) => out.push(Violation::QuantityOffStep {
                quantity: qty,
                step: self.lot.step_size(),
                below: None,
                above: None,
            }),
        }
        if qty < self.lot.min() {
            out.push(Violation::QuantityBelowMin { quantity: qty, min: self.lot.min() });
        }
        if let Some(max) = self.lot.max().filter(|max| qty > *max) {
            out.push(Violation::QuantityAboveMax { quantity: qty, max });
        }

        if let Some(min) = self.min_notional.filter(|min| !min.is_met(effective_price, qty)) {
            out.push(Violation::NotionalBelowMin {
                notional: notional(price, qty),
                min_notional: min.get(),
                min_quantity: self.min_quantity_for(min, effective_price),
            });
        }
        if out.is_empty() { Ok(()) } else { Err(out) }
    }

    /// The smallest valid quantity whose notional at `price` meets `min`.
    fn min_quantity_for(&self, min: MinNotional, price: Price) -> Option<Quantity> {
        // The rounded quotient can be a hair below the exact one: align it up,
        // then step up until the exact product meets the minimum.
        let raw = Quantity::new(min.get().checked_div(price.get())?).ok()?;
        let mut q = match self.lot.align(raw, crate::LotRounding::Up) {
            Ok(q) => q,
            Err(MoneyError::QuantityOutOfRange { quantity, min: lot_min, .. }) => quantity.max(lot_min),
            Err(_) => return None,
        };
        for _ in 0..2 {
            if min.is_met(price, q) {
                return self.lot.max().is_none_or(|max| q <= max).then_some(q);
            }
            q = Quantity::new(q.get().checked_add(self.lot.step_size().get())?).ok()?;
        }
        None
    }
}

/// One broken rule, with the nearest valid values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Violation {
    /// The price is not on the tick grid.
    PriceOffTick {
        /// The price given.
        price: Price,
        /// The tick in force at that price.
        #[serde(with = "crate::decimal_str")]
        tick: Decimal,
        /// The nearest valid price below.
        below: Option<Price>,
        /// The nearest valid price above.
        above: Option<Price>,
        /// The passive choice for the order's side.
        suggested: Option<Price>,
    },
    /// The price is below the first band of the tick table.
    PriceBelowTable {
        /// The price given.
        price: Price,
        /// Where the table starts.
        #[serde(with = "crate::decimal_str")]
        lowest: Decimal,
    },
    /// The quantity is not a multiple of the lot step.
    QuantityOffStep {
        /// The quantity given.
        quantity: Quantity,
        /// The lot step.
        step: Quantity,
        /// The nearest multiple below (none if that is zero).
        below: Option<Quantity>,
        /// The nearest multiple above.
        above: Option<Quantity>,
    },
    /// The quantity is below the lot minimum.
    QuantityBelowMin {
        /// The quantity given.
        quantity: Quantity,
        /// The minimum.
        min: Quantity,
    },
    /// The quantity is above the lot maximum.
    QuantityAboveMax {
        /// The quantity given.
        quantity: Quantity,
        /// The maximum.
        max: Quantity,
    },
    /// `price * quantity` is below the minimum notional.
    NotionalBelowMin {
        /// The order's notional, if it fits a decimal.
        #[serde(serialize_with = "opt_decimal_str")]
        notional: Option<Decimal>,
        /// The minimum.
        #[serde(with = "crate::decimal_str")]
        min_notional: Decimal,
        /// The smallest valid quantity that meets the minimum at the
        /// (suggested) price.
        min_quantity: Option<Quantity>,
    },
}

fn opt_decimal_str<S: serde::Serializer>(value: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(d) => s.collect_str(d),
        None => s.serialize_none(),
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::PriceOffTick { price, tick, below, above, suggested } => {
                write!(f, "price {price} is not a multiple of tick {tick} (nearest valid: ")?;
                list(f, below, above)?;
                if let Some(s) = suggested {
                    write!(f, "; passive: {s}")?;
                }
                f.write_str(")")
            }
            Violation::PriceBelowTable { price, lowest } => {
                write!(f, "price {price} is below the tick table, which starts at {lowest}")
            }
            Violation::QuantityOffStep { quantity, step, below, above } => {
                write!(f, "quantity {quantity} is not a multiple of lot step {step} (nearest valid: ")?;
                list(f, below, above)?;
                f.write_str(")")
            }
            Violation::QuantityBelowMin { quantity, min } => {
                write!(f, "quantity {quantity} is below the minimum {min}")
            }
            Violation::QuantityAboveMax { quantity, max } => {
                write!(f, "quantity {quantity} is above the maximum {max}")
            }
            Violation::NotionalBelowMin { notional, min_notional, min_quantity } => {
                match notional {
                    Some(n) => write!(f, "notional {n} is below the minimum {min_notional}")?,
                    None => write!(f, "notional is below the minimum {min_notional}")?,
                }
                match min_quantity {
                    Some(q) => write!(f, " (smallest valid quantity: {q})"),
                    None => Ok(()),
                }
            }
        }
    }
}

fn list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, a: &Option<T>, b: &Option<T>) -> fmt::Result {
    match (a, b) {
        (Some(a), Some(b)) => write!(f, "{a}, {b}"),
        (Some(x), None) | (None, Some(x)) => write!(f, "{x}"),
        (None, None) => f.write_str("none"),
    }
}

/// Every rule an order breaks. At most one violation per rule, so it is
/// stored inline without a heap allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Violations {
    items: [Option<Violation>; Violations::CAPACITY],
    len: usize,
}

impl Violations {
    /// Price, step, min, max, notional: one slot per rule.
    const CAPACITY: usize = 5;

    fn push(&mut self, v: Violation) {
        // One push per rule, so there is always room.
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = Some(v);
            self.len += 1;
        }
    }

    /// The number of violations.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The violations, in rule order: price, lot step, lot range, notional.
    pub fn iter(&self) -> impl Iterator<Item = &Violation> {
        self.items[..self.len].iter().flatten()
    }
}

impl<'a> IntoIterator for &'a Violations {
    type Item = &'a Violation;
    type IntoIter = std::iter::Flatten<std::slice::Iter<'a, Option<Violation>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.items[..self.len].iter().flatten()
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            v.fmt(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

impl serde::Serialize for Violations {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesDef {
    currency: Currency,
    tick_table: TickTable,
    lot: LotDef,
    #[serde(default)]
    min_notional: Option<Quantity>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LotDef {
    step: Quantity,
    min: Option<Quantity>,
    max: Option<Quantity>,
}

impl TryFrom<RulesDef> for InstrumentRules {
    type Error = MoneyError;

    fn try_from(def: RulesDef) -> Result<Self, Self::Error> {
        let lot = LotSize::new(def.lot.step, def.lot.min.unwrap_or(def.lot.step), def.lot.max)?;
        let min_notional = def.min_notional.map(|q| MinNotional::new(q.get())).transpose()?;
        Ok(InstrumentRules::new(def.tick_table, lot, min_notional, def.currency))
    }
}
