//! Schema assertions for test suites: call them from a service's own tests
//! to prove its database keeps the guarantees its code relies on.
//!
//! Each takes a pool (`sqlx::PgPool`, `sqlx::SqlitePool` or
//! [`spark_db::Database`]) and returns a typed error naming what is wrong.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use spark_checks::schema;
//!
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
//! sqlx::raw_sql("CREATE TABLE fills (id INTEGER PRIMARY KEY, price TEXT, fee REAL)").execute(&pool).await.unwrap();
//! let err = schema::assert_money_columns_exact(&pool, schema::DEFAULT_MONEY_PATTERN).await.unwrap_err();
//! assert_eq!(err.to_string(), "money columns are not exact: main.fills.fee (REAL)");
//! # }
//! ```

use spark_db::Database;
use sqlx::migrate::Migrator;

use crate::checks::{Exactness, compare, exactness, money_columns, read_applied, sequence_rows};
use crate::error::ChecksError;

pub use crate::config::DEFAULT_MONEY_PATTERN;

mod sealed {
    pub trait Sealed {}
    impl Sealed for sqlx::PgPool {}
    impl Sealed for sqlx::SqlitePool {}
    impl Sealed for spark_db::Database {}
}

/// A pool the schema assertions can read: `PgPool`, `SqlitePool` or
/// [`Database`].
pub trait SchemaPool: sealed::Sealed {
    /// The workspace's handle on the same pool.
    fn database(&self) -> Database;
}

impl SchemaPool for sqlx::PgPool {
    fn database(&self) -> Database {
        Database::Postgres(self.clone())
    }
}

impl SchemaPool for sqlx::SqlitePool {
    fn database(&self) -> Database {
        Database::Sqlite(self.clone())
    }
}

impl SchemaPool for Database {
    fn database(&self) -> Database {
        self.clone()
    }
}

/// Every column whose name matches `pattern` (a case-insensitive regular
/// expression, e.g. [`DEFAULT_MONEY_PATTERN`]) has an exact type: on
/// PostgreSQL `numeric` or an integer type (minor units); on SQLite any type
/// without float affinity (Spark keeps decimals there as canonical text).
/// Returns how many columns matched.
///
/// # Errors
///
/// [`ChecksError::InexactMoneyColumns`] naming each column and its type
/// (`real`, `double precision`, `money`, and on PostgreSQL also `text`),
/// [`ChecksError::InvalidPattern`], [`ChecksError::Database`].
pub async fn assert_money_columns_exact(pool: &impl SchemaPool, pattern: &str) -> Result<usize, ChecksError> {
    let db = pool.database();
    let regex = regex::RegexBuilder::new(pattern)
        .case_insensitive(true)
        .build()
        .map_err(|e| ChecksError::InvalidPattern { pattern: pattern.to_owned(), message: e.to_string() })?;
    let columns = money_columns(&db, &regex).await.map_err(ChecksError::Database)?;
    let bad: Vec<String> = columns
        .iter()
        .filter(|c| exactness(db.backend(), &c.data_type) != Exactness::Exact)
        .map(|c| format!("{} ({})", c.name, c.data_type))
        .collect();
    if bad.is_empty() { Ok(columns.len()) } else { Err(ChecksError::InexactMoneyColumns { columns: bad }) }
}

/// `table` has a unique index on exactly `columns` (in order) whose
/// predicate is `predicate` (compared ignoring case, whitespace,
/// parentheses and casts, so `status = 'open'` matches PostgreSQL's
/// `(status = 'open'::text)`).
///
/// # Errors
///
/// [`ChecksError::PartialUniqueIndexMissing`] listing the table's unique
/// indexes as found, [`ChecksError::Database`].
pub async fn assert_partial_unique_index(
    pool: &impl SchemaPool,
    table: &str,
    columns: &[&str],
    predicate: &str,
) -> Result<(), ChecksError> {
    let indexes = unique_indexes(&pool.database(), table).await.map_err(ChecksError::Database)?;
    let want = normalize_predicate(predicate);
    let found = indexes.iter().any(|(_, cols, pred)| {
        cols.iter().map(String::as_str).eq(columns.iter().copied())
            && pred.as_deref().map(normalize_predicate).as_deref() == Some(want.as_str())
    });
    if found {
        return Ok(());
    }
    Err(ChecksError::PartialUniqueIndexMissing {
        table: table.to_owned(),
        columns: columns.iter().map(|c| (*c).to_owned()).collect(),
        predicate: predicate.to_owned(),
        found: indexes
            .iter()
            .map(|(name, cols, pred)| {
                let pred = pred.as_ref().map(|p| format!(" WHERE {p}")).unwrap_or_default();
                format!("{name} ({}){pred}", cols.join(", "))
            })
            .collect(),
    })
}

/// Every migration of `migrator` is applied, succeeded, and has the same
/// checksum as the embedded file.
///
/// # Errors
///
/// [`ChecksError::Migrations`] with one line per missing, failed or changed
/// migration; [`ChecksError::Database`].
pub async fn assert_migrations_applied(pool: &impl SchemaPool, migrator: &Migrator) -> Result<(), ChecksError> {
    let applied = read_applied(&pool.database()).await.map_err(ChecksError::Database)?.unwrap_or_default();
    let (problems, _) = compare(&[("", migrator)], &applied, &[]);
    // Versions only in the database belong to other crates sharing the
    // table: not this assertion's business.
    let problems: Vec<String> = problems
        .into_iter()
        .filter(|(status, _)| *status == crate::check::Status::Fail)
        .map(|(_, m)| m.trim_start().to_owned())
        .filter(|m| !m.contains("does not embed"))
        .collect();
    if problems.is_empty() { Ok(()) } else { Err(ChecksError::Migrations { problems }) }
}

/// Every sequence owned by a column would hand out a value above the
/// largest its column holds — what a point-in-time restore or a data copy
/// without `setval` breaks, and the next insert then collides. Returns how
/// many sequences were checked; SQLite has none (0).
///
/// # Errors
///
/// [`ChecksError::SequencesBehind`] naming each sequence, the value it would
/// hand out, the column's largest value and the `setval` that fixes it;
/// [`ChecksError::Database`].
pub async fn assert_sequences_ahead(pool: &impl SchemaPool) -> Result<usize, ChecksError> {
    let Database::Postgres(pool) = pool.database() else { return Ok(0) };
    let rows = sequence_rows(&pool).await.map_err(ChecksError::Database)?;
    let mut problems = Vec::new();
    for row in &rows {
        let max = row.column_max(&pool).await.map_err(ChecksError::Database)?;
        problems.extend(row.behind(max));
    }
    if problems.is_empty() { Ok(rows.len()) } else { Err(ChecksError::SequencesBehind { problems }) }
}

/// Whether the index `name` exists and is valid (`pg_index.indisvalid`: a
/// `CREATE INDEX CONCURRENTLY` that failed leaves an invalid index that
/// enforces nothing). SQLite has no invalid indexes: there it only exists.
///
/// # Errors
///
/// [`ChecksError::Database`].
pub async fn index_is_valid(pool: &impl SchemaPool, name: &str) -> Result<bool, ChecksError> {
    let valid: Option<bool> = match pool.database() {
        Database::Postgres(pool) => {
            sqlx::query_scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)")
                .bind(name)
                .fetch_optional(&pool)
                .await
        }
        Database::Sqlite(pool) => {
            sqlx::query_scalar("SELECT 1 = 1 FROM sqlite_master WHERE type = 'index' AND name = ?1")
                .bind(name)
                .fetch_optional(&pool)
                .await
        }
    }
    .map_err(ChecksError::Database)?;
    Ok(valid.unwrap_or(false))
}

/// (name, columns in order, predicate) of each unique index on `table`.
async fn unique_indexes(db: &Database, table: &str) -> Result<Vec<(String, Vec<String>, Option<String>)>, sqlx::Error> {
    match db {
        Database::Postgres(pool) => {
            sqlx::query_as(
                "SELECT i.relname::text,
                        ARRAY(SELECT a.attname::text FROM unnest(ix.indkey) WITH ORDINALITY AS k(attnum, ord)
                              JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = k.attnum ORDER BY k.ord),
                        pg_get_expr(ix.indpred, ix.indrelid)
                 FROM pg_index ix JOIN pg_class i ON i.oid = ix.indexrelid
                 WHERE ix.indrelid = to_regclass($1) AND ix.indisunique
                 ORDER BY 1",
            )
            .bind(table)
            .fetch_all(pool)
            .await
        }
        Database::Sqlite(pool) => {
            let indexes: Vec<(String, Option<String>)> = sqlx::query_as(
                "SELECT l.name, m.sql FROM pragma_index_list(?1) l LEFT JOIN sqlite_master m ON m.name = l.name
                 WHERE l.\"unique\" = 1 ORDER BY l.name",
            )
            .bind(table)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::new();
            for (name, sql) in indexes {
                let cols: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")
                    .bind(&name)
                    .fetch_all(pool)
                    .await?;
                let pred = sql.and_then(|s| {
                    let upper = s.to_ascii_uppercase();
                    upper.rfind(" WHERE ").map(|i| s[i + 7..].trim().to_owned())
                });
                out.push((name, cols, pred));
            }
            Ok(out)
        }
    }
}

/// A predicate without case, whitespace, parentheses or casts.
fn normalize_predicate(p: &str) -> String {
    static CASTS: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"::(character varying|double precision|timestamp with(out)? time zone|[a-z_][a-z0-9_]*)(\[\])?",
        )
        .unwrap_or_else(|e| unreachable!("a constant pattern: {e}"))
    });
    let lower = p.to_ascii_lowercase();
    CASTS.replace_all(&lower, "").chars().filter(|c| !c.is_whitespace() && *c != '(' && *c != ')').collect()
}

#[cfg(test)]
mod tests {
    use super::normalize_predicate;

    #[test]
    fn predicates_compare_without_casts_or_parentheses() {
        assert_eq!(normalize_predicate("(status = 'open'::text)"), normalize_predicate("status = 'open'"));
        assert_eq!(
            normalize_predicate("((kind)::text = 'x'::character varying AND closed_at IS NULL)"),
            normalize_predicate("kind = 'x' and closed_at is null")
        );
        assert_ne!(normalize_predicate("status = 'open'"), normalize_predicate("status = 'closed'"));
    }
}
