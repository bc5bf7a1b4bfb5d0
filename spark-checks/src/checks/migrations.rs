//! `migrations`: what this build embeds against `_sqlx_migrations`.

use spark_db::Database;
use sqlx::migrate::Migrator;

use crate::check::{Check, Measurement, Outcome, Status};
use crate::context::Context;

/// Reads `_sqlx_migrations` (read-only): every migration this build embeds
/// is applied with the same checksum, none failed, and versions the build
/// does not know warn (the database is ahead of this build).
#[derive(Debug, Clone, Copy, Default)]
pub struct MigrationsCheck;

/// One row of `_sqlx_migrations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Applied {
    pub(crate) version: i64,
    pub(crate) description: String,
    pub(crate) success: bool,
    pub(crate) checksum: Vec<u8>,
}

/// The applied migrations, or `None` when the table does not exist.
pub(crate) async fn read_applied(db: &Database) -> Result<Option<Vec<Applied>>, sqlx::Error> {
    const SELECT: &str = "SELECT version, description, success, checksum FROM _sqlx_migrations ORDER BY version";
    type Row = (i64, String, bool, Vec<u8>);
    let rows: Vec<Row> = match db {
        Database::Postgres(pool) => {
            let exists: bool =
                sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(pool).await?;
            if !exists {
                return Ok(None);
            }
            sqlx::query_as(SELECT).fetch_all(pool).await?
        }
        Database::Sqlite(pool) => {
            let exists: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
            )
            .fetch_one(pool)
            .await?;
            if exists == 0 {
                return Ok(None);
            }
            sqlx::query_as(SELECT).fetch_all(pool).await?
        }
    };
    Ok(Some(
        rows.into_iter()
            .map(|(version, description, success, checksum)| Applied { version, description, success, checksum })
            .collect(),
    ))
}

/// Compares embedded migrations (by owner name) with the applied ones.
/// Returns the problems, worst first within each kind, and how many embedded
/// migrations matched.
pub(crate) fn compare(
    embedded: &[(&str, &Migrator)],
    applied: &[Applied],
    ignore: &[i64],
) -> (Vec<(Status, String)>, usize) {
    let mut problems = Vec::new();
    let mut matched = 0;
    let mut known = std::collections::BTreeSet::new();
    for (owner, migrator) in embedded {
        for m in migrator.iter().filter(|m| !m.migration_type.is_down_migration()) {
            known.insert(m.version);
            let name = format!("{owner} {} ({})", m.version, m.description);
            match applied.iter().find(|a| a.version == m.version) {
                None => problems.push((Status::Fail, format!("{name} is not applied: run `spark db migrate`"))),
                Some(a) if !a.success => problems.push((
                    Status::Fail,
                    format!("{name} failed when it ran (success = false): fix it by hand, then delete its row"),
                )),
                Some(a) if a.checksum != m.checksum.as_ref() => problems.push((
                    Status::Fail,
                    format!(
                        "{name} was applied with checksum {} but this build embeds {}: the file changed after it ran",
                        short_hex(&a.checksum),
                        short_hex(&m.checksum)
                    ),
                )),
                Some(_) => matched += 1,
            }
        }
    }
    for a in applied.iter().filter(|a| !known.contains(&a.version)) {
        if !a.success {
            problems.push((
                Status::Fail,
                format!("{} ({}) failed when it ran (success = false)", a.version, a.description),
            ));
        } else if !ignore.contains(&a.version) {
            problems.push((
                Status::Warn,
                format!(
                    "{} ({}) is applied but this build does not embed it: the database is ahead of this build \
                     (list it in migrations.ignore_versions if another application owns it)",
                    a.version, a.description
                ),
            ));
        }
    }
    (problems, matched)
}

fn short_hex(bytes: &[u8]) -> String {
    let hex = hex::encode(bytes);
    hex.get(..12).map_or(hex.clone(), |h| format!("{h}…"))
}

#[async_trait::async_trait]
impl Check for MigrationsCheck {
    fn id(&self) -> &'static str {
        "migrations"
    }

    async fn run(&self, ctx: &Context) -> Outcome {
        let mut o = Outcome::new(self.id());
        let Some(db) = crate::checks::database(ctx, &mut o).await else { return o.finish("") };
        let mut embedded = Vec::new();
        for set in ctx.migrations() {
            match set.migrator(db.backend()) {
                Some(m) => embedded.push((set.name, m)),
                None => {
                    o.found(
                        Status::Warn,
                        format!("{} was built without {} migrations: not compared", set.name, db.backend()),
                    );
                }
            }
        }
        if embedded.is_empty() && ctx.migrations().is_empty() {
            o.found(Status::Warn, "this build embeds no migrations to compare (Context::with_migrations)");
        }
        let applied = match read_applied(&db).await {
            Ok(Some(applied)) => applied,
            Ok(None) => {
                o.found(
                    Status::Fail,
                    "_sqlx_migrations does not exist: no migration was ever applied; run `spark db migrate`",
                );
                return o.finish("");
            }
            Err(e) => {
                crate::checks::sql_error(&mut o, "reading _sqlx_migrations", &e);
                return o.finish("");
            }
        };
        let refs: Vec<(&str, &Migrator)> = embedded.iter().map(|(n, m)| (*n, m)).collect();
        let (problems, matched) = compare(&refs, &applied, &ctx.config().migrations.ignore_versions);
        let embedded_count: usize =
            embedded.iter().map(|(_, m)| m.iter().filter(|m| !m.migration_type.is_down_migration()).count()).sum();
        for (status, message) in problems {
            o.found(status, message);
        }
        o.measure(Measurement::info("embedded", embedded_count as f64, "count"));
        o.measure(Measurement::info("applied", applied.len() as f64, "count"));
        o.measure(Measurement::info("matching", matched as f64, "count"));
        o.detail(
            "applied",
            applied
                .iter()
                .map(|a| serde_json::json!({"version": a.version, "description": a.description, "success": a.success}))
                .collect::<Vec<_>>(),
        );
        o.finish(&format!("all {matched} embedded migrations applied with matching checksums"))
    }
}
