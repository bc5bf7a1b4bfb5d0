//! `backup`: point-in-time-recovery readiness, from the server's own
//! settings and `pg_stat_archiver`.

use std::time::{Duration, SystemTime};

use spark_db::Database;
use sqlx::Row as _;

use crate::check::{Check, Measurement, Outcome, Status, Threshold};
use crate::checks::sql_error;
use crate::context::Context;

/// `archive_mode` on, something archives (`archive_command` or
/// `archive_library`), `wal_level` at least `replica`; no WAL waiting longer
/// than `backup.archive_max_age_seconds` to be archived; the last attempt
/// did not fail and `failed_count` does not rise between two reads; and,
/// when configured, a base-backup directory whose newest entry is young
/// enough.
#[derive(Debug, Clone, Copy, Default)]
pub struct BackupCheck;

const ARCHIVER: &str = "\
SELECT archived_count, last_archived_wal,
       extract(epoch FROM now() - last_archived_time)::float8 AS archived_age_s,
       failed_count, last_failed_wal,
       coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) AS last_attempt_failed,
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END AS current_wal,
       (SELECT setting::int8 FROM pg_settings WHERE name = 'wal_segment_size') AS segment_bytes
FROM pg_stat_archiver";

#[async_trait::async_trait]
impl Check for BackupCheck {
    fn id(&self) -> &'static str {
        "backup"
    }

    async fn run(&self, ctx: &Context) -> Outcome {
        let cfg = &ctx.config().backup;
        let mut o = Outcome::new(self.id());
        let Some(db) = crate::checks::database(ctx, &mut o).await else { return o.finish("") };
        let pool = match &db {
            Database::Postgres(pool) => pool.clone(),
            Database::Sqlite(_) => {
                return Outcome::skip(
                    self.id(),
                    "the database is embedded SQLite: PITR readiness applies to PostgreSQL (back the file up with `sqlite3 .backup`)",
                );
            }
        };
        let settings: Vec<(String, String)> = match sqlx::query_as(
            "SELECT name, setting FROM pg_settings WHERE name IN ('archive_mode', 'archive_command', 'archive_library', 'wal_level', 'archive_timeout')",
        )
        .fetch_all(&pool)
        .await
        {
            Ok(rows) => rows,
            Err(e) => {
                sql_error(&mut o, "reading settings", &e);
                return o.finish("");
            }
        };
        let setting = |name: &str| settings.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_default();
        let (mode, command, library, level) =
            (setting("archive_mode"), setting("archive_command"), setting("archive_library"), setting("wal_level"));
        o.detail("archive_mode", &mode)
            .detail("wal_level", &level)
            .detail("archive_timeout_s", setting("archive_timeout"));
        // The command is configuration, not a secret, but it may embed
        // credentials for a remote store: record only whether it is set.
        o.detail("archive_command_set", !command.is_empty() && command != "(disabled)");
        o.detail("archive_library", &library);
        if mode == "off" {
            o.found(Status::Fail, "archive_mode is off: WAL is not archived, so no point-in-time recovery is possible");
        }
        if (command.is_empty() || command == "(disabled)") && library.is_empty() {
            o.found(Status::Fail, "neither archive_command nor archive_library is set: nothing archives WAL");
        }
        if level == "minimal" {
            o.found(Status::Fail, "wal_level is minimal: PITR needs replica or logical");
        }

        let first = match sqlx::query(ARCHIVER).fetch_one(&pool).await {
            Ok(row) => row,
            Err(e) => {
                sql_error(&mut o, "reading pg_stat_archiver", &e);
                return o.finish("");
            }
        };
        let archived: i64 = first.get("archived_count");
        let failed_first: i64 = first.get("failed_count");
        let last_wal: Option<String> = first.get("last_archived_wal");
        let age: Option<f64> = first.get("archived_age_s");
        let current_wal: Option<String> = first.get("current_wal");
        let segment_bytes: i64 = first.get("segment_bytes");
        let last_attempt_failed: bool = first.get("last_attempt_failed");
        let last_failed_wal: Option<String> = first.get("last_failed_wal");

        // A second read after a pause: a failing archive_command retries, so
        // a rising failed_count is a failure in progress.
        tokio::time::sleep(Duration::from_millis(cfg.failed_count_interval_ms)).await;
        let failed_second: i64 =
            match sqlx::query_scalar("SELECT failed_count FROM pg_stat_archiver").fetch_one(&pool).await {
                Ok(v) => v,
                Err(e) => {
                    sql_error(&mut o, "reading pg_stat_archiver again", &e);
                    failed_first
                }
            };
        o.measure(Measurement::info("archived_count", archived as f64, "count"));
        o.measure(Measurement::judged(
            "failed_count_delta",
            (failed_second - failed_first) as f64,
            "count",
            Threshold::above(None, Some(0.0)),
        ));
        if last_attempt_failed {
            o.found(
                Status::Fail,
                format!(
                    "the last archive attempt failed (WAL {}); failed_count is {failed_second}: check archive_command and the server log",
                    last_failed_wal.as_deref().unwrap_or("?")
                ),
            );
        }
        let pending = match (&current_wal, &last_wal) {
            (Some(current), Some(last)) => segments_between(current, last, segment_bytes),
            _ => None,
        };
        if let Some(pending) = pending {
            o.measure(Measurement::info("segments_waiting", pending as f64, "count"));
        }
        match age {
            Some(age) => {
                let max = cfg.archive_max_age_seconds as f64;
                // An old last archive is only a problem when WAL waits to be
                // archived: an idle server has nothing to archive.
                let mut m = Measurement::judged("last_archived_age_s", age, "s", Threshold::above(None, Some(max)));
                if pending == Some(0) {
                    m.status = Status::Pass;
                    o.detail("idle", "no completed WAL segment waits to be archived");
                }
                o.measure(m);
            }
            None if archived == 0 => {
                o.found(Status::Warn, "nothing has been archived yet: no evidence that archiving works (SELECT pg_switch_wal() to test it)");
            }
            None => {}
        }
        if let Some(dir) = &cfg.base_backup_dir {
            base_backup(&mut o, dir, cfg.base_backup_max_age_hours);
        }
        o.finish(&format!(
            "archiving works: {archived} WAL segment(s) archived, {} waiting, last {} ago",
            pending.unwrap_or(0),
            age.map_or_else(|| "never".to_owned(), |a| format!("{a:.0} s"))
        ))
    }
}

/// Completed segments after `last` and before `current` (the one being
/// written): what waits to be archived. `None` across timelines or for
/// names that are not plain segments.
fn segments_between(current: &str, last: &str, segment_bytes: i64) -> Option<i64> {
    let parse = |name: &str| -> Option<(u64, u64)> {
        let name = name.get(..24)?;
        let timeline = u64::from_str_radix(&name[..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
        let per_log = 0x1_0000_0000u64 / u64::try_from(segment_bytes).ok().filter(|b| *b > 0)?;
        Some((timeline, log * per_log + seg))
    };
    let (current_tl, current_no) = parse(current)?;
    let (last_tl, last_no) = parse(last)?;
    if current_tl != last_tl {
        return None;
    }
    i64::try_from(current_no.saturating_sub(last_no).saturating_sub(1)).ok()
}

fn base_backup(o: &mut Outcome, dir: &std::path::Path, max_age_hours: u64) {
    let newest = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(Result::ok).filter_map(|e| e.metadata().ok()?.modified().ok()).max());
    match newest {
        Err(e) => {
            o.found(Status::Fail, format!("base-backup directory {} cannot be read: {e}", dir.display()));
        }
        Ok(None) => {
            o.found(Status::Fail, format!("base-backup directory {} is empty", dir.display()));
        }
        Ok(Some(modified)) => {
            let age_h = SystemTime::now().duration_since(modified).unwrap_or_default().as_secs_f64() / 3600.0;
            let max = max_age_hours as f64;
            o.measure(Measurement::judged("base_backup_age_h", age_h, "h", Threshold::above(None, Some(max))));
            o.detail("base_backup_dir", dir.display().to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::segments_between;

    #[test]
    fn waiting_segments_count_across_log_boundaries() {
        let mb16 = 16 * 1024 * 1024;
        assert_eq!(segments_between("000000010000000000000005", "000000010000000000000004", mb16), Some(0));
        assert_eq!(segments_between("000000010000000000000007", "000000010000000000000004", mb16), Some(2));
        assert_eq!(segments_between("000000010000000100000001", "0000000100000000000000FF", mb16), Some(1));
        assert_eq!(segments_between("000000020000000000000005", "000000010000000000000004", mb16), None);
        assert_eq!(segments_between("000000010000000000000005", "00000001.history", mb16), None);
    }
}
