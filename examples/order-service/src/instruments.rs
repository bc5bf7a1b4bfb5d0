//! Tradable instruments and their exchange rules.

use std::collections::BTreeMap;

use spark_money::InstrumentRules;

/// A sensible default: five Borsa Istanbul equities on the BIST tick table,
/// whole-share lots up to one million, 100 TRY minimum notional.
pub const DEFAULT: &str = r#"
[instruments.THYAO]
currency = "TRY"
tick_table = { preset = "bist-equity" }
min_notional = "100"
lot = { step = "1", min = "1", max = "1000000" }

[instruments.GARAN]
currency = "TRY"
tick_table = { preset = "bist-equity" }
min_notional = "100"
lot = { step = "1", min = "1", max = "1000000" }

[instruments.AKBNK]
currency = "TRY"
tick_table = { preset = "bist-equity" }
min_notional = "100"
lot = { step = "1", min = "1", max = "1000000" }

[instruments.ASELS]
currency = "TRY"
tick_table = { preset = "bist-equity" }
min_notional = "100"
lot = { step = "1", min = "1", max = "1000000" }

[instruments.BIMAS]
currency = "TRY"
tick_table = { preset = "bist-equity" }
min_notional = "100"
lot = { step = "1", min = "1", max = "1000000" }
"#;

/// Instruments by symbol.
#[derive(Debug, Clone)]
pub struct Instruments(BTreeMap<String, InstrumentRules>);

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    instruments: BTreeMap<String, InstrumentRules>,
}

impl Instruments {
    /// Reads `[instruments.SYMBOL]` tables of instrument rules.
    ///
    /// # Errors
    ///
    /// A one-line message naming the line that is wrong.
    pub fn from_toml(text: &str) -> anyhow::Result<Instruments> {
        let file: File = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().replace('\n', " ")))?;
        Ok(Instruments(file.instruments))
    }

    /// The default set ([`DEFAULT`]).
    ///
    /// # Panics
    ///
    /// Never: the default set is tested.
    #[must_use]
    pub fn default_set() -> Instruments {
        Instruments::from_toml(DEFAULT).expect("the default instruments parse")
    }

    /// The rules of `symbol`.
    #[must_use]
    pub fn get(&self, symbol: &str) -> Option<&InstrumentRules> {
        self.0.get(symbol)
    }

    /// The symbols.
    pub fn symbols(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}
