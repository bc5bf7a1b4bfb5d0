//! ISO 4217 currencies with their minor units.

use std::fmt;
use std::str::FromStr;

use crate::MoneyError;

/// An ISO 4217 currency that has a minor unit, such as `TRY` (2 decimal
/// places), `JPY` (0) or `KWD` (3).
///
/// The code table comes from the `iso_currency` crate. Codes without a minor
/// unit (gold `XAU`, `XDR`, the testing code `XXX`, ...) are refused: they are
/// not amounts of money Spark can round.
///
/// ```
/// use spark_money::Currency;
///
/// let kwd: Currency = "KWD".parse()?;
/// assert_eq!(kwd.minor_units(), 3);
/// assert_eq!(Currency::JPY.minor_units(), 0);
/// assert!("XAU".parse::<Currency>().is_err());
/// assert!("try".parse::<Currency>().unwrap_err().to_string().contains("did you mean \"TRY\""));
/// # Ok::<(), spark_money::MoneyError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    iso: iso_currency::Currency,
    minor_units: u8,
}

impl Currency {
    /// Turkish lira, 2 decimal places.
    pub const TRY: Currency = Currency::known(iso_currency::Currency::TRY, 2);
    /// US dollar, 2 decimal places.
    pub const USD: Currency = Currency::known(iso_currency::Currency::USD, 2);
    /// Euro, 2 decimal places.
    pub const EUR: Currency = Currency::known(iso_currency::Currency::EUR, 2);
    /// Japanese yen, 0 decimal places.
    pub const JPY: Currency = Currency::known(iso_currency::Currency::JPY, 0);

    const fn known(iso: iso_currency::Currency, minor_units: u8) -> Currency {
        Currency { iso, minor_units }
    }

    /// Looks up an upper-case ISO 4217 alphabetic code.
    ///
    /// # Errors
    ///
    /// [`MoneyError::UnknownCurrency`] for a code that is not in ISO 4217
    /// (with a hint when only the case is wrong), [`MoneyError::NoMinorUnit`]
    /// for a code without a minor unit.
    pub fn new(code: &str) -> Result<Currency, MoneyError> {
        let Some(iso) = iso_currency::Currency::from_code(code) else {
            let upper = code.to_ascii_uppercase();
            let suggestion = (upper != code && iso_currency::Currency::from_code(&upper).is_some()).then_some(upper);
            return Err(MoneyError::UnknownCurrency { code: code.chars().take(16).collect(), suggestion });
        };
        let minor_units = iso
            .exponent()
            .and_then(|e| u8::try_from(e).ok())
            .ok_or_else(|| MoneyError::NoMinorUnit { code: iso.code().to_owned() })?;
        Ok(Currency { iso, minor_units })
    }

    /// The three-letter code, e.g. `"TRY"`.
    #[must_use]
    pub fn code(self) -> &'static str {
        self.iso.code()
    }

    /// The number of decimal places of the minor unit (TRY 2, JPY 0, KWD 3).
    #[must_use]
    pub const fn minor_units(self) -> u32 {
        self.minor_units as u32
    }

    /// The English name, e.g. `"Turkish lira"`.
    #[must_use]
    pub fn name(&self) -> &str {
        self.iso.name()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.code())
    }
}

impl FromStr for Currency {
    type Err = MoneyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::new(s)
    }
}

impl serde::Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> serde::Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Currency;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an ISO 4217 currency code such as \"TRY\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Currency, E> {
                Currency::new(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_units_of_well_known_codes() {
        for (code, units) in [
            ("TRY", 2),
            ("USD", 2),
            ("EUR", 2),
            ("JPY", 0),
            ("KRW", 0),
            ("ISK", 0),
            ("CLP", 0),
            ("BHD", 3),
            ("KWD", 3),
            ("JOD", 3),
            ("OMR", 3),
            ("TND", 3),
            ("IQD", 3),
            ("LYD", 3),
            ("CLF", 4),
            ("UYW", 4),
            ("MGA", 2),
            ("MRU", 2),
        ] {
            assert_eq!(Currency::new(code).unwrap().minor_units(), units, "{code}");
        }
    }

    #[test]
    fn constants_match_the_table() {
        for c in [Currency::TRY, Currency::USD, Currency::EUR, Currency::JPY] {
            assert_eq!(Currency::new(c.code()).unwrap(), c);
        }
    }

    #[test]
    fn unknown_and_unitless_codes_are_errors() {
        assert_eq!(Currency::new("ABC").unwrap_err().to_string(), "unknown currency code \"ABC\"");
        assert_eq!(
            Currency::new("usd").unwrap_err().to_string(),
            "unknown currency code \"usd\" (did you mean \"USD\"?)"
        );
        assert!(matches!(Currency::new("XAU"), Err(MoneyError::NoMinorUnit { .. })));
        assert!(matches!(Currency::new("XXX"), Err(MoneyError::NoMinorUnit { .. })));
        assert!(Currency::new("").is_err());
    }
}
