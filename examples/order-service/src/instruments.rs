//! Tradable instruments and their exchange rules.

use std::collections::BTreeMap;

use spark_money::InstrumentRules;

/// The default symbols: five Borsa Istanbul equities.
pub const DEFAULT_SYMBOLS: [&str; 5] = ["THYAO", "GARAN", "AKBNK", "ASELS", "BIMAS"];

/// The rules every default symbol trades under: the BIST tick table,
/// whole-share lots up to one million, 100 TRY minimum notional.
pub const DEFAULT_RULES: &str = r#"
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

    /// The default set: [`DEFAULT_SYMBOLS`] under [`DEFAULT_RULES`].
    ///
    /// # Panics
    ///
    /// Never: the default rules are a constant that the tests parse.
    #[must_use]
    pub fn default_set() -> Instruments {
        let rules = InstrumentRules::from_toml(DEFAULT_RULES).expect("the default rules parse");
        Instruments(DEFAULT_SYMBOLS.iter().map(|s| ((*s).to_owned(), rules.clone())).collect())
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
