//! Tick tables: which prices an exchange accepts.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

use crate::int::{decimal, div_rem, parts, pow10, to_common_scale};
use crate::{MoneyError, Price, Side};

/// How [`TickTable::align`] moves a price that is not on the tick grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TickRounding {
    /// The nearest valid price; on a tie, the even multiple of the tick.
    Nearest,
    /// The nearest valid price at or below.
    Down,
    /// The nearest valid price at or above.
    Up,
    /// Refuse, naming the two nearest valid prices.
    Reject,
    /// Never more aggressive than asked: a buy rounds down, a sell rounds up.
    Passive(Side),
}

/// Error returned when a tick rounding name is not recognised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tick rounding {0:?} (expected nearest, down, up or reject)")]
pub struct UnknownTickRounding(pub String);

impl FromStr for TickRounding {
    type Err = UnknownTickRounding;

    /// Parses `nearest`, `down`, `up` or `reject`; `Passive` needs a side and
    /// has no name of its own.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nearest" => Ok(Self::Nearest),
            "down" => Ok(Self::Down),
            "up" => Ok(Self::Up),
            "reject" => Ok(Self::Reject),
            _ => Err(UnknownTickRounding(s.to_owned())),
        }
    }
}

/// One band of a tick table: from `lower` (inclusive) up to the next band's
/// lower bound, prices move in steps of `tick`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Band {
    lower: Decimal,
    tick: Decimal,
    // The tick as (mantissa, scale), to build results at the tick's scale.
    tick_mantissa: u128,
    tick_scale: u32,
    // The lower bound and the tick as integers at the table's scale, so that
    // lookup and alignment are plain integer arithmetic.
    lower_units: u128,
    tick_units: u128,
}

impl Band {
    /// The inclusive lower bound of the band.
    #[must_use]
    pub const fn lower(&self) -> Decimal {
        self.lower
    }

    /// The tick size in the band.
    #[must_use]
    pub const fn tick(&self) -> Decimal {
        self.tick
    }
}

/// The valid prices of an instrument: a list of price bands, each with its
/// tick size, as exchanges publish them.
///
/// The bands must form one grid: lower bounds strictly increase, every tick is
/// positive, and every lower bound is a multiple of its own band's tick and of
/// the tick below it. Then the valid price just above a band is always that
/// band's next multiple or the next band's lower bound, and alignment near a
/// band edge always lands on a price that is valid where it lands.
///
/// ```
/// use spark_money::{Price, Side, TickRounding, TickTable};
///
/// let bist = TickTable::bist_equity();
/// let p: Price = "101.37".parse()?;
/// assert_eq!(bist.tick_at(p)?.to_string(), "0.10");
/// assert_eq!(bist.align(p, TickRounding::Nearest)?.to_string(), "101.40");
/// assert_eq!(bist.align(p, TickRounding::Passive(Side::Buy))?.to_string(), "101.30");
/// // 49.99 lies between 49.98 (tick 0.02) and 50.00 (where the tick becomes
/// // 0.05): a tie, and 50.00 is the even multiple.
/// assert_eq!(bist.align("49.99".parse()?, TickRounding::Nearest)?.to_string(), "50.00");
/// let err = bist.align(p, TickRounding::Reject).unwrap_err();
/// assert_eq!(err.to_string(), "price 101.37 is not a multiple of tick 0.10 (nearest valid: 101.30, 101.40)");
/// # Ok::<(), spark_money::MoneyError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TickTable {
    bands: Vec<Band>,
    /// The largest scale among the bounds and ticks: every bound and tick is
    /// a whole number of `10^-scale` units.
    scale: u32,
}

/// Where a price sits on its band's grid, in units of the table's scale:
/// `price = q * tick + r + frac / denom`, with `0 <= frac < denom`.
struct Grid<'a> {
    band: &'a Band,
    q: u128,
    r: u128,
    frac: u128,
    denom: u128,
}

impl Grid<'_> {
    fn is_exact(&self) -> bool {
        self.r == 0 && self.frac == 0
    }

    /// Whether `(q + 1) * tick` is nearer than `q * tick`; on a tie, the even
    /// multiple of the tick wins.
    fn nearest_is_above(&self) -> bool {
        // The distance below is `r + f` and above `tick - r - f`, with
        // `f = frac / denom` in [0, 1): compare `2r + 2f` with `tick` without
        // multiplying by `denom`, which could overflow.
        let twice_r = 2 * self.r;
        let tick = self.band.tick_units;
        let order = if twice_r + 2 <= tick {
            std::cmp::Ordering::Less
        } else if twice_r + 1 == tick {
            // 2f against 1.
            (2 * self.frac).cmp(&self.denom)
        } else if twice_r == tick {
            // 2f against 0.
            if self.frac == 0 { std::cmp::Ordering::Equal } else { std::cmp::Ordering::Greater }
        } else {
            std::cmp::Ordering::Greater
        };
        order.is_gt() || (order.is_eq() && self.q % 2 == 1)
    }

    /// The price `k` ticks above zero, at the tick's scale; `None` for zero or
    /// on overflow. Because every lower bound is a multiple of the tick below
    /// it, `q + 1` ticks is at most the next band's lower bound, so it is valid
    /// wherever it lands.
    #[inline(always)]
    fn price_at(&self, k: u128) -> Option<Price> {
        if k == 0 {
            return None;
        }
        let m = k.checked_mul(self.band.tick_mantissa)?;
        decimal(m, false, self.band.tick_scale).map(Price)
    }
}

enum Locate {
    BelowTable,
    Overflow,
}

impl TickTable {
    /// Builds a table from `(lower bound, tick)` pairs in increasing order.
    ///
    /// # Errors
    ///
    /// [`MoneyError::InvalidTickTable`] naming the offending band, or
    /// [`MoneyError::NonPositiveIncrement`] for a tick that is not positive.
    pub fn new<I: IntoIterator<Item = (Decimal, Decimal)>>(bands: I) -> Result<TickTable, MoneyError> {
        let mut out: Vec<Band> = Vec::new();
        for (lower, tick) in bands {
            if tick <= Decimal::ZERO {
                return Err(MoneyError::NonPositiveIncrement { what: "tick", value: tick });
            }
            if lower.is_sign_negative() && !lower.is_zero() {
                return Err(MoneyError::InvalidTickTable { reason: format!("band lower bound {lower} is negative") });
            }
            let (tick_mantissa, tick_scale) = parts(tick);
            let band = Band { lower, tick, tick_mantissa, tick_scale, lower_units: 0, tick_units: 0 };
            if !band.contains_multiple(lower) {
                return Err(MoneyError::InvalidTickTable {
                    reason: format!("band lower bound {lower} is not a multiple of its tick {tick}"),
                });
            }
            if let Some(prev) = out.last() {
                if lower <= prev.lower {
                    return Err(MoneyError::InvalidTickTable {
                        reason: format!("band lower bounds must increase, {lower} follows {}", prev.lower),
                    });
                }
                if !prev.contains_multiple(lower) {
                    return Err(MoneyError::InvalidTickTable {
                        reason: format!(
                            "band lower bound {lower} is not a multiple of the tick below it ({})",
                            prev.tick
                        ),
                    });
                }
            }
            out.push(band);
        }
        if out.is_empty() {
            return Err(MoneyError::InvalidTickTable { reason: "no bands".to_owned() });
        }
        let scale = out.iter().map(|b| b.lower.scale().max(b.tick_scale)).max().unwrap_or(0);
        let units = |d: Decimal| {
            let (m, s) = parts(d);
            pow10(scale - s).and_then(|p| m.checked_mul(p)).ok_or_else(|| MoneyError::InvalidTickTable {
                reason: format!("{d} does not fit at {scale} decimal places"),
            })
        };
        for band in &mut out {
            band.lower_units = units(band.lower)?;
            band.tick_units = units(band.tick)?;
        }
        Ok(TickTable { bands: out, scale })
    }

    /// One tick size for every price.
    ///
    /// # Errors
    ///
    /// [`MoneyError::NonPositiveIncrement`] unless `tick > 0`.
    pub fn fixed(tick: Decimal) -> Result<TickTable, MoneyError> {
        TickTable::new([(Decimal::ZERO, tick)])
    }

    /// Borsa Istanbul's equity tick table, in force since 2023-11-06: below 20
    /// 0.01; 20 to below 50 0.02; 50 to below 100 0.05; 100 to below 250 0.10;
    /// 250 to below 500 0.25; 500 to below 1000 0.50; 1000 to below 2500 1.00;
    /// 2500 and above 2.50.
    #[must_use]
    pub fn bist_equity() -> TickTable {
        const BANDS: [(i64, i64); 8] =
            [(0, 1), (20, 2), (50, 5), (100, 10), (250, 25), (500, 50), (1000, 100), (2500, 250)];
        TickTable::new(BANDS.map(|(lower, cents)| (Decimal::new(lower, 0), Decimal::new(cents, 2))))
            .unwrap_or_else(|e| unreachable!("the BIST table is a valid grid: {e}"))
    }

    /// A table by name: `bist-equity` (also `bist`).
    ///
    /// # Errors
    ///
    /// [`MoneyError::InvalidTickTable`] for an unknown name.
    pub fn preset(name: &str) -> Result<TickTable, MoneyError> {
        match name {
            "bist" | "bist-equity" => Ok(TickTable::bist_equity()),
            _ => Err(MoneyError::InvalidTickTable { reason: format!("unknown preset {name:?} (known: bist-equity)") }),
        }
    }

    /// Reads a table from TOML: either `preset = "bist-equity"`, or
    /// `fixed = "0.05"`, or a list of bands with decimal strings:
    ///
    /// ```toml
    /// [[bands]]
    /// from = "0"
    /// tick = "0.01"
    ///
    /// [[bands]]
    /// from = "20"
    /// tick = "0.02"
    /// ```
    ///
    /// # Errors
    ///
    /// [`MoneyError::Toml`] for malformed TOML (with line and column), and the
    /// errors of [`TickTable::new`].
    pub fn from_toml(text: &str) -> Result<TickTable, MoneyError> {
        toml::from_str(text).map_err(|e| MoneyError::toml(text, &e))
    }

    /// The decimal places a valid price needs: the most of any tick or band
    /// bound, trailing zeros aside (2 for Borsa Istanbul equities, whose
    /// ticks run from 0.01 to 2.50). Carry it with fills so that an average
    /// price is rounded to the instrument's places.
    ///
    /// ```
    /// use spark_money::{Decimal, TickTable};
    ///
    /// assert_eq!(TickTable::bist_equity().price_scale(), 2);
    /// assert_eq!(TickTable::fixed(Decimal::new(50, 2))?.price_scale(), 1);
    /// # Ok::<(), spark_money::MoneyError>(())
    /// ```
    #[must_use]
    pub fn price_scale(&self) -> u32 {
        self.bands.iter().map(|b| b.lower.normalize().scale().max(b.tick.normalize().scale())).max().unwrap_or(0)
    }

    /// The bands, in increasing order.
    #[must_use]
    pub fn bands(&self) -> &[Band] {
        &self.bands
    }

    /// The tick size in force at `price`.
    ///
    /// # Errors
    ///
    /// [`MoneyError::PriceBelowTable`] if the table starts above `price`.
    pub fn tick_at(&self, price: Price) -> Result<Decimal, MoneyError> {
        self.locate(price).map(|g| g.band.tick).map_err(|f| self.failure(price, f))
    }

    /// Whether `price` is on the grid.
    #[must_use]
    pub fn is_aligned(&self, price: Price) -> bool {
        self.locate(price).is_ok_and(|g| g.is_exact())
    }

    /// Moves `price` onto the grid as `mode` says. The result carries the
    /// tick's decimal places (`101.3` becomes `101.30` at tick 0.10).
    ///
    /// # Errors
    ///
    /// [`MoneyError::PriceNotAligned`] with the nearest valid prices for
    /// [`TickRounding::Reject`]; [`MoneyError::NoValidPrice`] when there is no
    /// valid price in the requested direction (below the first tick);
    /// [`MoneyError::PriceBelowTable`].
    pub fn align(&self, price: Price, mode: TickRounding) -> Result<Price, MoneyError> {
        let g = self.locate(price).map_err(|f| self.failure(price, f))?;
        let k = if g.is_exact() {
            g.q
        } else {
            match mode {
                TickRounding::Down | TickRounding::Passive(Side::Buy) => g.q,
                TickRounding::Up | TickRounding::Passive(Side::Sell) => g.q + 1,
                TickRounding::Nearest if g.q == 0 || g.nearest_is_above() => g.q + 1,
                TickRounding::Nearest => g.q,
                TickRounding::Reject => return Err(self.not_aligned(price, &g)),
            }
        };
        g.price_at(k).ok_or_else(|| self.no_valid_price(price, &g, k))
    }

    /// The nearest valid prices strictly below and above `price` (either may
    /// be `None`), or `price` itself twice if it is on the grid.
    ///
    /// # Errors
    ///
    /// As for [`align`](TickTable::align).
    pub fn neighbours(&self, price: Price) -> Result<(Option<Price>, Option<Price>), MoneyError> {
        let g = self.locate(price).map_err(|f| self.failure(price, f))?;
        if g.is_exact() {
            let exact = g.price_at(g.q);
            return Ok((exact, exact));
        }
        Ok((g.price_at(g.q), g.q.checked_add(1).and_then(|k| g.price_at(k))))
    }

    /// Finds the band of `price` and its position on that band's grid. The
    /// failure type is small on purpose: the public error is built only on
    /// the cold path.
    #[inline(always)]
    fn locate(&self, price: Price) -> Result<Grid<'_>, Locate> {
        // Split the price into whole units of the table's scale and a
        // fraction `frac / denom` of one unit (zero unless the price has more
        // places than the table).
        let (m, scale) = parts(price.0);
        let (units, frac, denom) = if scale <= self.scale {
            let p = pow10(self.scale - scale).and_then(|p| m.checked_mul(p)).ok_or(Locate::Overflow)?;
            (p, 0, 1)
        } else {
            let denom = pow10(scale - self.scale).ok_or(Locate::Overflow)?;
            let (units, frac) = div_rem(m, denom);
            (units, frac, denom)
        };
        // Bounds are whole units, so comparing the whole units is exact. Few
        // bands: a binary search is all it takes.
        let i = self.bands.partition_point(|b| b.lower_units <= units);
        let band = &self.bands[i.checked_sub(1).ok_or(Locate::BelowTable)?];
        let (q, r) = div_rem(units, band.tick_units);
        Ok(Grid { band, q, r, frac, denom })
    }

    #[cold]
    fn failure(&self, price: Price, f: Locate) -> MoneyError {
        match f {
            Locate::BelowTable => MoneyError::PriceBelowTable { price, lowest: self.bands[0].lower },
            Locate::Overflow => MoneyError::Overflow { op: "tick alignment" },
        }
    }

    #[cold]
    fn not_aligned(&self, price: Price, g: &Grid<'_>) -> MoneyError {
        MoneyError::PriceNotAligned {
            price,
            tick: g.band.tick,
            below: g.price_at(g.q),
            above: g.q.checked_add(1).and_then(|k| g.price_at(k)),
        }
    }

    #[cold]
    fn no_valid_price(&self, price: Price, g: &Grid<'_>, k: u128) -> MoneyError {
        if k > g.q {
            MoneyError::NoValidPrice { price, tick: g.band.tick, direction: "at or above" }
        } else if k == 0 {
            MoneyError::NoValidPrice { price, tick: g.band.tick, direction: "at or below" }
        } else {
            MoneyError::Overflow { op: "tick alignment" }
        }
    }

    /// `self` rendered as TOML bands, as [`from_toml`](TickTable::from_toml)
    /// reads them.
    #[must_use]
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        for band in &self.bands {
            out.push_str(&format!("[[bands]]\nfrom = \"{}\"\ntick = \"{}\"\n\n", band.lower, band.tick));
        }
        out
    }
}

impl Band {
    fn contains_multiple(&self, value: Decimal) -> bool {
        to_common_scale(parts(value), (self.tick_mantissa, self.tick_scale))
            .is_some_and(|(v, t, _)| div_rem(v, t).1 == 0)
    }
}

impl fmt::Display for TickTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, band) in self.bands.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "from {} tick {}", band.lower, band.tick)?;
        }
        Ok(())
    }
}

/// The TOML/serde form of a tick table.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TickTableDef {
    preset: Option<String>,
    #[serde(default, with = "opt_decimal")]
    fixed: Option<Decimal>,
    bands: Option<Vec<BandDef>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BandDef {
    #[serde(with = "crate::decimal_str")]
    from: Decimal,
    #[serde(with = "crate::decimal_str")]
    tick: Decimal,
}

mod opt_decimal {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    struct Wrapped(#[serde(with = "crate::decimal_str")] Decimal);

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        Option::<Wrapped>::deserialize(d).map(|o| o.map(|w| w.0))
    }
}

impl TryFrom<TickTableDef> for TickTable {
    type Error = MoneyError;

    fn try_from(def: TickTableDef) -> Result<Self, Self::Error> {
        match (def.preset, def.fixed, def.bands) {
            (Some(name), None, None) => TickTable::preset(&name),
            (None, Some(tick), None) => TickTable::fixed(tick),
            (None, None, Some(bands)) => TickTable::new(bands.into_iter().map(|b| (b.from, b.tick))),
            _ => Err(MoneyError::InvalidTickTable {
                reason: "give exactly one of `preset`, `fixed` or `bands`".to_owned(),
            }),
        }
    }
}

impl<'de> serde::Deserialize<'de> for TickTable {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        TickTableDef::deserialize(deserializer)?.try_into().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for TickTable {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let bands: Vec<BandDef> = self.bands.iter().map(|b| BandDef { from: b.lower, tick: b.tick }).collect();
        let mut s = serializer.serialize_struct("TickTable", 1)?;
        s.serialize_field("bands", &bands)?;
        s.end()
    }
}
