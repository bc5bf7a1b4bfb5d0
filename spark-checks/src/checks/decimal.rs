//! `decimal`: money columns are exact, this build's money arithmetic matches
//! its golden vectors, and NUMERIC keeps its scale through the database.

use std::str::FromStr as _;

use spark_db::Database;
use spark_money::{Decimal, Price, Rounding, TickRounding, TickTable};

use crate::check::{Check, Measurement, Outcome, Status};
use crate::context::Context;

/// Columns named like money (`decimal.pattern`) must be exact: on
/// PostgreSQL `numeric` (integers pass as minor units; `real`, `double
/// precision` and `money` fail, text warns); on SQLite any type but a
/// floating one (Spark stores decimals there as canonical text). Then
/// spark-money's banker's-rounding and BIST tick vectors, and a NUMERIC
/// round trip (`101.30` must come back `101.30`).
#[derive(Debug, Clone, Copy, Default)]
pub struct DecimalCheck;

/// How exact a column type is for money.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exactness {
    /// `numeric`, an integer type (minor units), or SQLite text/numeric.
    Exact,
    /// A float or PostgreSQL `money`: fails.
    Inexact,
    /// Exact only if the application writes canonical decimals (text on
    /// PostgreSQL): warns.
    Unchecked,
}

/// Judges a column's declared type on `backend`.
pub(crate) fn exactness(backend: spark_db::Backend, data_type: &str) -> Exactness {
    let t = data_type.to_ascii_lowercase();
    match backend {
        spark_db::Backend::Postgres => match t.as_str() {
            "numeric" | "smallint" | "integer" | "bigint" => Exactness::Exact,
            "real" | "double precision" | "money" => Exactness::Inexact,
            _ => Exactness::Unchecked,
        },
        // SQLite's affinity rules: a declared type containing REAL, FLOA or
        // DOUB stores floats.
        spark_db::Backend::Sqlite => {
            if t.contains("real") || t.contains("floa") || t.contains("doub") {
                Exactness::Inexact
            } else {
                Exactness::Exact
            }
        }
    }
}

/// A money column: `schema.table.column` and its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    pub(crate) name: String,
    pub(crate) data_type: String,
}

/// Every user column whose name matches `pattern` (case-insensitive).
pub(crate) async fn money_columns(db: &Database, pattern: &regex::Regex) -> Result<Vec<Column>, sqlx::Error> {
    let all: Vec<(String, String, String, String)> = match db {
        Database::Postgres(pool) => {
            sqlx::query_as(
                "SELECT table_schema::text, table_name::text, column_name::text, data_type::text
                 FROM information_schema.columns
                 WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_schema NOT LIKE 'pg\\_%'
                 ORDER BY 1, 2, ordinal_position",
            )
            .fetch_all(pool)
            .await?
        }
        Database::Sqlite(pool) => {
            sqlx::query_as(
                "SELECT 'main', m.name, p.name, p.type FROM sqlite_master m JOIN pragma_table_info(m.name) p
                 WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY m.name, p.cid",
            )
            .fetch_all(pool)
            .await?
        }
    };
    Ok(all
        .into_iter()
        .filter(|(_, _, column, _)| pattern.is_match(column))
        .map(|(schema, table, column, data_type)| Column { name: format!("{schema}.{table}.{column}"), data_type })
        .collect())
}

/// Golden vectors for this build's money arithmetic: (what, got, expected).
fn vectors() -> Vec<(String, Result<String, String>, &'static str)> {
    let d = |s: &str| Decimal::from_str(s).unwrap_or_default();
    let mut out = Vec::new();
    for (input, dp, expected) in [
        ("2.345", 2, "2.34"),
        ("2.355", 2, "2.36"),
        ("-2.5", 0, "-2"),
        ("0.125", 2, "0.12"),
        ("1.005", 2, "1.00"),
        ("101.305", 2, "101.30"),
    ] {
        let got =
            spark_money::round(d(input), dp, Rounding::HalfEven).map(|v| v.to_string()).map_err(|e| e.to_string());
        out.push((format!("round({input}, {dp}, half-even)"), got, expected));
    }
    let bist = TickTable::bist_equity();
    for (input, expected) in
        [("49.99", "50.00"), ("101.37", "101.40"), ("101.35", "101.40"), ("19.994", "19.99"), ("2502.00", "2502.50")]
    {
        let got = Price::new(d(input))
            .and_then(|p| bist.align(p, TickRounding::Nearest))
            .map(|p| p.get().to_string())
            .map_err(|e| e.to_string());
        out.push((format!("bist align({input}, nearest)"), got, expected));
    }
    out
}

#[async_trait::async_trait]
impl Check for DecimalCheck {
    fn id(&self) -> &'static str {
        "decimal"
    }

    async fn run(&self, ctx: &Context) -> Outcome {
        let mut o = Outcome::new(self.id());
        // The arithmetic vectors need no database.
        let vectors = vectors();
        let failed: Vec<String> = vectors
            .iter()
            .filter(|(_, got, expected)| got.as_deref() != Ok(*expected))
            .map(|(what, got, expected)| format!("{what} gave {got:?}, expected {expected}"))
            .collect();
        for f in &failed {
            o.found(Status::Fail, format!("spark-money vector broken: {f}"));
        }
        o.measure(Measurement::info("money_vectors_passed", (vectors.len() - failed.len()) as f64, "count"));
        // Without a database only the vectors are checked.
        let Some(db) = crate::checks::database(ctx, &mut o).await else { return o.finish("") };
        let pattern = &ctx.config().decimal.pattern;
        let Ok(regex) = regex::RegexBuilder::new(pattern).case_insensitive(true).build() else {
            o.found(Status::Fail, format!("decimal.pattern {pattern:?} is not a valid regular expression"));
            return o.finish("");
        };
        let columns = match money_columns(&db, &regex).await {
            Ok(columns) => columns,
            Err(e) => {
                crate::checks::sql_error(&mut o, "reading column types", &e);
                return o.finish("");
            }
        };
        let mut exact = 0usize;
        for c in &columns {
            match exactness(db.backend(), &c.data_type) {
                Exactness::Exact => exact += 1,
                Exactness::Inexact => {
                    o.found(
                        Status::Fail,
                        format!("{} is {}: money must be numeric (ALTER COLUMN … TYPE numeric)", c.name, c.data_type),
                    );
                }
                Exactness::Unchecked => {
                    o.found(
                        Status::Warn,
                        format!(
                            "{} is {}, not numeric: the database cannot keep it exact or compare it",
                            c.name, c.data_type
                        ),
                    );
                }
            }
        }
        if columns.is_empty() {
            // No data is never a pass: the wrong database, or a pattern
            // that matches nothing this schema calls money.
            o.found(
                Status::Warn,
                format!("no column matches decimal.pattern {pattern:?}: is this the application's database?"),
            );
        }
        o.measure(Measurement::info("money_columns", columns.len() as f64, "count"));
        o.measure(Measurement::info("exact_columns", exact as f64, "count"));
        o.detail(
            "columns",
            columns.iter().map(|c| serde_json::json!({"column": c.name, "type": c.data_type})).collect::<Vec<_>>(),
        );
        if let Database::Postgres(pool) = &db {
            match sqlx::query_scalar::<_, String>("SELECT ($1::text)::numeric::text")
                .bind("101.30")
                .fetch_one(pool)
                .await
            {
                Ok(back) if back == "101.30" => {
                    o.detail("numeric_round_trip", back);
                }
                Ok(back) => {
                    o.found(Status::Fail, format!("NUMERIC round trip changed 101.30 into {back}"));
                }
                Err(e) => crate::checks::sql_error(&mut o, "the NUMERIC round trip", &e),
            }
        }
        o.finish(&format!("{exact} of {} money column(s) exact; {} money vectors pass", columns.len(), vectors.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_money_vectors_hold_in_this_build() {
        for (what, got, expected) in vectors() {
            assert_eq!(got.as_deref(), Ok(expected), "{what}");
        }
    }

    #[test]
    fn types_are_judged_per_backend() {
        use spark_db::Backend::{Postgres, Sqlite};
        assert_eq!(exactness(Postgres, "double precision"), Exactness::Inexact);
        assert_eq!(exactness(Postgres, "money"), Exactness::Inexact);
        assert_eq!(exactness(Postgres, "numeric"), Exactness::Exact);
        assert_eq!(exactness(Postgres, "text"), Exactness::Unchecked);
        assert_eq!(exactness(Sqlite, "TEXT"), Exactness::Exact);
        assert_eq!(exactness(Sqlite, "DOUBLE PRECISION"), Exactness::Inexact);
        assert_eq!(exactness(Sqlite, "FLOAT"), Exactness::Inexact);
    }
}
