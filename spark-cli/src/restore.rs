//! `spark restore backup|drill`: a base backup, and the point-in-time
//! restore drill of `spark_chaos`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use spark_chaos::{BackupOptions, DrillOptions, PgBin};
use spark_evidence::EvidenceDir;

use crate::db::SPARK_MIGRATIONS;
use crate::output::{CmdResult, Output};

#[derive(Debug, Subcommand)]
pub(crate) enum RestoreCommand {
    /// Take a plain-format base backup with pg_basebackup (-X stream, fast
    /// checkpoint) into a new or empty directory.
    Backup(BackupArgs),
    /// Restore a base backup and its WAL archive to a point in time in a
    /// private scratch PostgreSQL, verify it, measure RTO and RPO, and
    /// write restore_drill_UTC-STAMP.txt and .json (exit 0 the restore
    /// held, 1 it did not, 2 bad input).
    Drill(DrillArgs),
}

#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// The server to back up (the user needs REPLICATION or superuser).
    #[arg(long, env = "SPARK_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// A new or empty directory for the backup.
    #[arg(long)]
    out: PathBuf,
    /// The directory of the PostgreSQL programs [default: the newest
    /// /usr/lib/postgresql/VERSION/bin, else PATH].
    #[arg(long)]
    pg_bin: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct DrillArgs {
    /// The base backup (`spark restore backup`, or pg_basebackup -F p).
    #[arg(long)]
    base_backup: PathBuf,
    /// The directory the server's archive_command copies WAL into.
    #[arg(long)]
    wal_archive: PathBuf,
    /// The point in time to restore to, RFC 3339 (2026-12-07T11:40:03Z).
    #[arg(long, value_parser = parse_time)]
    target_time: chrono::DateTime<chrono::Utc>,
    /// The scratch server's port, which names its unix socket [default: a
    /// free one].
    #[arg(long)]
    port: Option<u16>,
    /// The database to verify and count.
    #[arg(long, default_value = "postgres")]
    database: String,
    /// How long recovery may take.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    recovery_timeout: Duration,
    /// Where the drill's report goes.
    #[arg(long, default_value = "evidence")]
    evidence_dir: PathBuf,
    /// The directory of the PostgreSQL programs [default: those of the
    /// backup's PG_VERSION in /usr/lib/postgresql, else PATH].
    #[arg(long)]
    pg_bin: Option<PathBuf>,
}

fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.to_utc())
        .map_err(|e| format!("{s:?} is not an RFC 3339 time such as 2026-12-07T11:40:03Z: {e}"))
}

fn bin(dir: Option<PathBuf>) -> Result<PgBin, spark_chaos::ChaosError> {
    dir.map_or_else(PgBin::find, |d| Ok(PgBin::at(d)))
}

pub(crate) async fn run(cmd: RestoreCommand, out: &Output) -> CmdResult {
    let clock = spark_db::system_clock();
    match cmd {
        RestoreCommand::Backup(args) => {
            let options = BackupOptions { database_url: args.database_url, out: args.out };
            let report = spark_chaos::base_backup(&bin(args.pg_bin)?, &options, &clock).await?;
            out.emit(&report, || {
                format!(
                    "base backup in {} ({} bytes, {} ms); {}",
                    report.out.display(),
                    report.bytes,
                    report.millis,
                    report.start_wal.as_deref().unwrap_or("no backup_label")
                )
            })
        }
        RestoreCommand::Drill(args) => {
            let mut options = DrillOptions::new(args.base_backup, args.wal_archive, args.target_time);
            options.port = args.port;
            options.database = args.database;
            options.recovery_timeout = args.recovery_timeout;
            options.migrations = SPARK_MIGRATIONS.to_vec();
            // Fail on a bad evidence directory before the drill runs.
            let evidence = EvidenceDir::create(&args.evidence_dir)?;
            let bin = match args.pg_bin {
                Some(dir) => PgBin::at(dir),
                None if options.base_backup.join("PG_VERSION").is_file() => PgBin::for_data_dir(&options.base_backup)?,
                None => PgBin::find()?,
            };
            let report = spark_chaos::restore_drill(&bin, &options, &clock).await?;
            let files = report.write(&evidence).context("writing the drill's report")?;
            let json = serde_json::json!({"report": report, "files": files});
            let text = || {
                let mut t = report.to_text();
                for f in &files {
                    let _ = write!(t, "\nwritten: {}  {}", f.sha256, f.path.display());
                }
                t
            };
            if report.held { out.emit(&json, text) } else { out.refuse(&json, &text(), true) }
        }
    }
}
