//! The remaining risks a release ships with, from a TOML file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ReleaseError;

/// The number of risks the seed's release checklist asks to name.
pub const RISKS_ASKED: usize = 3;

/// A risk's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RiskStatus {
    /// Nothing done yet.
    Open,
    /// Being worked on.
    Mitigating,
    /// Accepted as it is.
    Accepted,
    /// Dealt with.
    Closed,
}

impl RiskStatus {
    /// As written in the file.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RiskStatus::Open => "open",
            RiskStatus::Mitigating => "mitigating",
            RiskStatus::Accepted => "accepted",
            RiskStatus::Closed => "closed",
        }
    }
}

/// One remaining risk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Risk {
    /// What could go wrong.
    pub description: String,
    /// Who owns it.
    pub owner: String,
    /// By when it is dealt with, `YYYY-MM-DD`.
    pub due: chrono::NaiveDate,
    /// What limits it meanwhile.
    pub mitigation: String,
    /// Its state.
    pub status: RiskStatus,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RisksFile {
    #[serde(default)]
    risk: Vec<Risk>,
}

/// Reads `[[risk]]` tables: description, owner, due (a TOML date or a
/// `"YYYY-MM-DD"` string), mitigation, status (open, mitigating, accepted,
/// closed). Every field is required and unknown ones are refused.
///
/// ```
/// let risks = spark_release::parse_risks(r#"
/// [[risk]]
/// description = "pgBouncer 1.18 in transaction mode with prepared statements"
/// owner = "DevOps lead"
/// due = 2026-12-20
/// mitigation = "statement cache off on the pooled URL"
/// status = "mitigating"
/// "#, "risks.toml".as_ref())?;
/// assert_eq!(risks[0].due.to_string(), "2026-12-20");
/// assert!(spark_release::parse_risks("[[risk]]\ndescription = \"x\"\n", "r.toml".as_ref()).is_err());
/// # Ok::<(), spark_release::ReleaseError>(())
/// ```
///
/// # Errors
/// [`ReleaseError::Invalid`] naming the file, the line and the field.
pub fn parse_risks(text: &str, path: &Path) -> Result<Vec<Risk>, ReleaseError> {
    // A TOML date is not a string: turn `due = 2026-12-20` into the string
    // chrono reads, so both spellings work.
    let mut table: toml::Table = toml::from_str(text)
        .map_err(|e| ReleaseError::Invalid { path: path.to_owned(), message: crate::one_line(&e.to_string()) })?;
    if let Some(toml::Value::Array(risks)) = table.get_mut("risk") {
        for risk in risks.iter_mut().filter_map(toml::Value::as_table_mut) {
            if let Some(toml::Value::Datetime(d)) = risk.get("due") {
                let text = d.to_string();
                risk.insert("due".to_owned(), toml::Value::String(text));
            }
        }
    }
    let file: RisksFile = toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| ReleaseError::Invalid {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })?;
    for (i, r) in file.risk.iter().enumerate() {
        for (field, value) in [("description", &r.description), ("owner", &r.owner), ("mitigation", &r.mitigation)] {
            if value.trim().is_empty() {
                return Err(ReleaseError::Invalid {
                    path: path.to_owned(),
                    message: format!("risk[{i}].{field} is empty"),
                });
            }
        }
    }
    Ok(file.risk)
}

/// Reads a risks file.
///
/// # Errors
/// [`ReleaseError::Read`], and as [`parse_risks`].
pub fn load_risks(path: &Path) -> Result<Vec<Risk>, ReleaseError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReleaseError::Read { path: path.to_owned(), source })?;
    parse_risks(&text, path)
}
