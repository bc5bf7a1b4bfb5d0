//! The point-in-time restore drill: a base backup and its WAL archive
//! restored to a timestamp in a scratch PostgreSQL on loopback, verified,
//! measured (RTO and RPO) and written down as evidence.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use spark_checks::schema;
use spark_db::{Database, Migrations, SharedClock};
use spark_evidence::{EvidenceDir, EvidenceFile, Redactor};

use crate::error::{ChaosError, io};
use crate::experiment::{elapsed_ms, rfc3339};
use crate::pg::{self, PgBin};

/// The `format` of a drill report.
pub const DRILL_FORMAT: &str = "spark-restore-drill/v1";

/// PostgreSQL's default WAL segment size, 16 MiB.
#[cfg(test)]
const DEFAULT_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// At most this many tables are counted: a drill measures, it does not
/// scan a warehouse.
const MAX_COUNTED_TABLES: i64 = 500;

/// What `spark restore backup` takes.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The server to back up, `postgres://USER@HOST:PORT/DB` (a replication
    /// connection is made; the user needs `REPLICATION` or superuser).
    pub database_url: String,
    /// A new or empty directory for the plain-format backup.
    pub out: PathBuf,
}

/// A base backup taken.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupReport {
    /// Where it is.
    pub out: PathBuf,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// How long it took.
    pub millis: u64,
    /// Its `START WAL LOCATION` line from `backup_label`.
    pub start_wal: Option<String>,
    /// Its size on disk.
    pub bytes: u64,
}

/// Takes a plain-format base backup with `pg_basebackup` (`-X stream`, so
/// the backup holds the WAL it needs to be consistent; fast checkpoint).
/// The WAL after it must come from the server's archive
/// (`archive_command`), which [`restore_drill`] replays.
///
/// # Errors
/// [`ChaosError::Input`] when `out` exists and is not empty,
/// [`ChaosError::MissingProgram`], [`ChaosError::Program`] when
/// `pg_basebackup` fails (its output, any URL password redacted).
pub async fn base_backup(
    bin: &PgBin,
    options: &BackupOptions,
    clock: &SharedClock,
) -> Result<BackupReport, ChaosError> {
    let out = options.out.clone();
    if out.exists() && std::fs::read_dir(&out).map_err(io(&out))?.next().is_some() {
        return Err(ChaosError::Input(format!(
            "{} is not empty: a base backup goes into a new or empty directory",
            out.display()
        )));
    }
    let started_ms = clock.now_ms();
    let started = Instant::now();
    let mut command = bin.client("pg_basebackup")?;
    // The password goes in the environment, not on the command line where
    // `ps` shows it to every local user.
    let (url, password) = split_password(&options.database_url);
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    command.arg("-d").arg(&url).arg("-D").arg(&out).args(["-F", "p", "-X", "stream", "-c", "fast", "--no-password"]);
    let result = pg::blocking(move || pg::run(command, "pg_basebackup")).await;
    if let Err(ChaosError::Program { program, status, output }) = result {
        let output = Redactor::default().redact(&output);
        return Err(ChaosError::Program { program, status, output });
    }
    result?;
    let label = std::fs::read_to_string(out.join("backup_label")).unwrap_or_default();
    Ok(BackupReport {
        start_wal: label.lines().find(|l| l.starts_with("START WAL LOCATION:")).map(str::to_owned),
        bytes: disk_bytes(&out),
        out,
        started_at: rfc3339(started_ms),
        millis: elapsed_ms(started),
    })
}

/// What [`restore_drill`] restores and how it verifies it.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// A plain-format base backup (`spark restore backup`, `pg_basebackup
    /// -F p`).
    pub base_backup: PathBuf,
    /// The WAL archive the server's `archive_command` fills.
    pub wal_archive: PathBuf,
    /// The point in time to restore to.
    pub target_time: DateTime<Utc>,
    /// The loopback port of the scratch server [default: a free one].
    pub port: Option<u16>,
    /// The database verified and counted.
    pub database: String,
    /// The role the drill connects as (trusted on loopback in the scratch
    /// server only).
    pub user: String,
    /// The migrations the restored database must have applied; with
    /// `spark-positions` among them, its one-open-position index is checked
    /// too.
    pub migrations: Vec<Migrations>,
    /// How long recovery may take before the drill gives up.
    pub recovery_timeout: Duration,
}

impl DrillOptions {
    /// Restores `base_backup` plus `wal_archive` to `target_time`,
    /// verifying the `postgres` database as `postgres`, no migrations
    /// expected, recovery bounded to 10 minutes.
    #[must_use]
    pub fn new(base_backup: impl Into<PathBuf>, wal_archive: impl Into<PathBuf>, target_time: DateTime<Utc>) -> Self {
        DrillOptions {
            base_backup: base_backup.into(),
            wal_archive: wal_archive.into(),
            target_time,
            port: None,
            database: "postgres".to_owned(),
            user: "postgres".to_owned(),
            migrations: Vec::new(),
            recovery_timeout: Duration::from_secs(600),
        }
    }
}

/// One thing the drill verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrillItem {
    /// `wal-archive`, `recovered`, `migrations`, `sequences`,
    /// `money-columns`, `positions-index` or `rpo`.
    pub name: &'static str,
    /// Whether it held.
    pub held: bool,
    /// What was measured, or why it did not hold.
    pub value: String,
}

/// The WAL archive as the drill found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalArchive {
    /// WAL segments in the archive.
    pub segments: usize,
    /// The first segment recovery needs (from `backup_label`).
    pub start: Option<String>,
    /// The newest segment in the archive.
    pub last: Option<String>,
    /// Segments missing between the start and the newest one.
    pub gaps: Vec<String>,
    /// The segment size.
    pub segment_bytes: u64,
}

/// What a drill did and found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DrillReport {
    /// Always [`DRILL_FORMAT`].
    pub format: &'static str,
    /// Whether every item held.
    pub held: bool,
    /// The target, RFC 3339.
    pub target_time: String,
    /// When the drill started, RFC 3339.
    pub started_at: String,
    /// The base backup.
    pub base_backup: PathBuf,
    /// The archive.
    pub wal_archive: PathBuf,
    /// The scratch server's port (its unix socket's name; no TCP).
    pub port: u16,
    /// Recovery time: from the start of the drill (copy included) to the
    /// first query on the promoted database, milliseconds.
    pub rto_ms: Option<u64>,
    /// The newest commit recovered, RFC 3339.
    pub last_recovered_commit: Option<String>,
    /// Recovery point: the target minus the newest commit recovered,
    /// milliseconds (what a restore to this target gives up is whatever
    /// committed in that window — by construction, nothing did).
    pub rpo_ms: Option<i64>,
    /// The server's own line about where recovery stopped.
    pub recovery_stop: Option<String>,
    /// The archive.
    pub wal: WalArchive,
    /// Each verification.
    pub items: Vec<DrillItem>,
    /// Rows per table (`schema.table`) in the restored database.
    pub row_counts: BTreeMap<String, i64>,
    /// The whole drill, milliseconds.
    pub duration_ms: u64,
    /// The end of the scratch server's log.
    pub log_tail: String,
}

impl DrillReport {
    /// The item `name`.
    #[must_use]
    pub fn item(&self, name: &str) -> Option<&DrillItem> {
        self.items.iter().find(|i| i.name == name)
    }

    /// The report as the text of `restore_drill_<stamp>.txt`.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "Spark restore drill ({DRILL_FORMAT})");
        let _ = writeln!(t, "verdict:      {}", if self.held { "HELD" } else { "FAILED" });
        let _ = writeln!(t, "target time:  {}", self.target_time);
        let _ = writeln!(t, "started at:   {}", self.started_at);
        let _ = writeln!(t, "base backup:  {}", self.base_backup.display());
        let _ = writeln!(t, "WAL archive:  {}", self.wal_archive.display());
        let _ = writeln!(t, "scratch port: {} (unix socket only)", self.port);
        let ms = |v: Option<u64>| v.map_or_else(|| "not reached".to_owned(), |v| format!("{v} ms"));
        let _ = writeln!(t, "\nRTO (start to a usable database): {}", ms(self.rto_ms));
        let _ = writeln!(
            t,
            "RPO (target minus the newest recovered commit): {}",
            self.rpo_ms.map_or_else(|| "unknown".to_owned(), |v| format!("{v} ms"))
        );
        let _ = writeln!(t, "newest recovered commit: {}", self.last_recovered_commit.as_deref().unwrap_or("unknown"));
        let _ = writeln!(t, "recovery stop: {}", self.recovery_stop.as_deref().unwrap_or("(none logged)"));
        let w = &self.wal;
        let _ = writeln!(
            t,
            "\nWAL archive: {} segments of {} bytes; recovery starts at {}, newest {}; gaps: {}",
            w.segments,
            w.segment_bytes,
            w.start.as_deref().unwrap_or("?"),
            w.last.as_deref().unwrap_or("none"),
            if w.gaps.is_empty() { "none".to_owned() } else { w.gaps.join(", ") }
        );
        let _ = writeln!(t, "\nVerifications");
        for i in &self.items {
            let _ = writeln!(t, "  {:<16} {}  {}", i.name, if i.held { "held" } else { "FAILED" }, i.value);
        }
        let _ = writeln!(t, "\nRows per table in the restored database");
        if self.row_counts.is_empty() {
            let _ = writeln!(t, "  (none counted)");
        }
        for (table, n) in &self.row_counts {
            let _ = writeln!(t, "  {table}: {n}");
        }
        let _ = writeln!(t, "\nduration: {} ms", self.duration_ms);
        let _ = writeln!(t, "\nScratch server log (end)");
        for line in self.log_tail.lines() {
            let _ = writeln!(t, "  | {line}");
        }
        t
    }

    /// Writes `restore_drill_<stamp>.txt` and `.json` (the stamp is the
    /// drill's start) into `dir`.
    ///
    /// # Errors
    /// [`ChaosError::Evidence`] when a file cannot be written (or exists).
    pub fn write(&self, dir: &EvidenceDir) -> Result<Vec<EvidenceFile>, ChaosError> {
        crate::experiment::write_pair(dir, "restore_drill", &self.started_at, &self.to_text(), self)
    }
}

/// Restores `options.base_backup` plus `options.wal_archive` to
/// `options.target_time` in a scratch PostgreSQL on 127.0.0.1 (a copy of
/// the backup in a temporary directory, `restore_command` copying from the
/// archive, `recovery_target_time`, promoted at the target), waits for it,
/// verifies it — the archive has no gap, recovery reached the target,
/// every migration is applied, every sequence is ahead of its column, money
/// columns are exact, the one-open-position index is valid — counts the
/// rows, measures RTO and RPO, and stops and removes the scratch server.
/// The backup and the archive are only read.
///
/// A restore that fails (a gap in the archive, recovery ending before the
/// target, a check that does not hold) is a report with `held: false`, not
/// an error.
///
/// # Errors
/// [`ChaosError::Input`] when the backup is not a plain-format base backup
/// or the archive is not a directory; [`ChaosError::Io`] and
/// [`ChaosError::Program`] when the scratch server cannot be prepared.
pub async fn restore_drill(
    bin: &PgBin,
    options: &DrillOptions,
    clock: &SharedClock,
) -> Result<DrillReport, ChaosError> {
    let backup = &options.base_backup;
    if !backup.join("backup_label").is_file() || !backup.join("PG_VERSION").is_file() {
        return Err(ChaosError::Input(format!(
            "{} is not a plain-format base backup (no backup_label or PG_VERSION): take one with spark restore backup",
            backup.display()
        )));
    }
    if !options.wal_archive.is_dir() {
        return Err(ChaosError::Input(format!("the WAL archive {} is not a directory", options.wal_archive.display())));
    }
    // A server of another major version cannot read the backup; say so
    // before copying anything.
    let wanted = std::fs::read_to_string(backup.join("PG_VERSION")).map_err(io(backup.join("PG_VERSION")))?;
    let have = bin.major_version()?;
    if wanted.trim() != have {
        return Err(ChaosError::Input(format!(
            "the base backup is PostgreSQL {} but the programs in {} are PostgreSQL {have}: install {0} or pass its bin directory",
            wanted.trim(),
            bin.dir().display()
        )));
    }
    let started_ms = clock.now_ms();
    let started = Instant::now();
    let port = match options.port {
        Some(p) => p,
        None => pg::free_port()?,
    };

    // The scratch cluster: a copy of the backup, configured for recovery.
    let scratch = tempfile::Builder::new().prefix("spark-restore-").tempdir().map_err(io("temporary directory"))?;
    let data = scratch.path().join("data");
    let log = scratch.path().join("server.log");
    let prepared = {
        let (backup, data, options) = (backup.clone(), data.clone(), options.clone());
        let socket = scratch.path().to_owned();
        pg::blocking(move || prepare(&backup, &data, &socket, &options, port)).await
    };
    prepared?;
    pg::give_to_server_user(scratch.path())?;
    let wal = match segment_bytes(bin, &data) {
        Some(bytes) => scan_archive(&options.wal_archive, &data, bytes)?,
        None => WalArchive { segments: 0, start: None, last: None, gaps: Vec::new(), segment_bytes: 0 },
    };

    let mut report = DrillReport {
        format: DRILL_FORMAT,
        held: false,
        target_time: options.target_time.to_rfc3339_opts(SecondsFormat::Millis, true),
        started_at: rfc3339(started_ms),
        base_backup: backup.clone(),
        wal_archive: options.wal_archive.clone(),
        port,
        rto_ms: None,
        last_recovered_commit: None,
        rpo_ms: None,
        recovery_stop: None,
        items: vec![wal_item(&wal)],
        wal,
        row_counts: BTreeMap::new(),
        duration_ms: 0,
        log_tail: String::new(),
    };

    let server = Server { bin: bin.clone(), data: data.clone(), log: log.clone(), running: false };
    // A target before the backup started cannot be reached from it: the
    // server would stop at the first commit after the backup and promote,
    // a restore to the wrong time that looks like success.
    if let Some(backup_start) = backup_started(&data)
        && options.target_time < backup_start
    {
        report.items.push(DrillItem {
            name: "recovered",
            held: false,
            value: format!(
                "the target {} is before this base backup started ({}): no restore from it can reach the target; use an older base backup",
                report.target_time,
                backup_start.to_rfc3339_opts(SecondsFormat::Secs, true)
            ),
        });
        report.duration_ms = elapsed_ms(started);
        drop(scratch);
        return Ok(report);
    }
    let mut server = server;
    // Recovery renames backup_label to backup_label.old: read it first.
    let label = std::fs::read_to_string(data.join("backup_label")).unwrap_or_default();
    let start = server.start(options.recovery_timeout).await;
    // Through the socket in the scratch directory only (no TCP listener).
    let url =
        format!("postgres://{}@localhost:{port}/{}?host={}", options.user, options.database, scratch.path().display());
    let promoted = match start {
        Ok(()) => wait_promoted(&url, &log, options.recovery_timeout).await,
        Err(e) => Err(fatal_line(&read(&log)).unwrap_or_else(|| e.to_string())),
    };
    match promoted {
        Ok(db) => {
            report.rto_ms = Some(elapsed_ms(started));
            let recovered = reached_target(&db, &read(&log), &label, options.target_time).await;
            report.items.push(recovered);
            verify(&db, options, &mut report).await;
            db.close().await;
        }
        Err(why) => report.items.push(DrillItem { name: "recovered", held: false, value: why }),
    }
    let text = read(&log);
    rpo(&text, options.target_time, &mut report);
    if let Err(why) = server.stop().await {
        report.items.push(DrillItem { name: "stopped", held: false, value: why });
    }
    report.log_tail = pg::tail(&read(&log), 15);
    report.held = report.items.iter().all(|i| i.held);
    report.duration_ms = elapsed_ms(started);
    tracing::info!(held = report.held, rto_ms = ?report.rto_ms, rpo_ms = ?report.rpo_ms, "restore drill");
    drop(scratch);
    Ok(report)
}

/// Copies the backup into `data` and writes the recovery settings.
fn prepare(backup: &Path, data: &Path, socket: &Path, options: &DrillOptions, port: u16) -> Result<(), ChaosError> {
    copy_dir(backup, data)?;
    set_mode(data, 0o700)?;
    for stale in ["postmaster.pid", "postmaster.opts", "standby.signal"] {
        let path = data.join(stale);
        if path.exists() {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    // A backup of a Debian cluster has no postgresql.conf (it lives in
    // /etc): the server needs one, even empty.
    let conf = data.join("postgresql.conf");
    if !conf.exists() {
        std::fs::write(&conf, "").map_err(io(&conf))?;
    }
    // Only this drill connects, through the unix socket in the scratch
    // directory (mode 0700): no TCP listener, so no other local user can
    // reach a trusting superuser. The source's pg_hba.conf may ask for
    // passwords the drill does not have.
    let hba = data.join("pg_hba.conf");
    std::fs::write(&hba, "local all all trust\n").map_err(io(&hba))?;
    let archive = options.wal_archive.canonicalize().map_err(io(&options.wal_archive))?;
    let archive = archive.to_str().filter(|p| safe_in_shell(p)).ok_or_else(|| {
        ChaosError::Input(format!(
            "the WAL archive path {} has characters a restore_command cannot quote safely: use letters, digits and / . _ - + @ , :",
            archive.display()
        ))
    })?;
    let target = options.target_time.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string();
    let settings = [
        ("port", port.to_string()),
        ("listen_addresses", String::new()),
        ("unix_socket_directories", socket.display().to_string()),
        ("hba_file", hba.display().to_string()),
        ("ssl", "off".to_owned()),
        ("logging_collector", "off".to_owned()),
        ("log_destination", "stderr".to_owned()),
        ("cluster_name", "spark-restore-drill".to_owned()),
        // The restored server must never write into, or delete from, the
        // archive it reads, nor follow the source's primary: whatever the
        // copied configuration says.
        ("archive_mode", "off".to_owned()),
        ("archive_command", String::new()),
        ("archive_cleanup_command", String::new()),
        ("recovery_end_command", String::new()),
        ("primary_conninfo", String::new()),
        ("primary_slot_name", String::new()),
        ("restore_command", format!("cp {archive}/%f %p")),
        ("recovery_target_time", target),
        ("recovery_target_action", "promote".to_owned()),
        // No queries before promotion: and with hot standby off, recovery
        // never pauses because a copied empty postgresql.conf has lower
        // limits than the primary's.
        ("hot_standby", "off".to_owned()),
    ];
    let mut text = String::from("\n# spark restore drill\n");
    for (name, value) in settings {
        let _ = writeln!(text, "{name} = '{}'", value.replace('\'', "''"));
    }
    let auto = data.join("postgresql.auto.conf");
    let mut existing = std::fs::read_to_string(&auto).unwrap_or_default();
    existing.push_str(&text);
    std::fs::write(&auto, existing).map_err(io(&auto))?;
    let signal = data.join("recovery.signal");
    std::fs::write(&signal, "").map_err(io(&signal))
}

/// The scratch server. Dropped while running (a panic, a cancelled
/// future), it is stopped at once, before its directory is removed.
struct Server {
    bin: PgBin,
    data: PathBuf,
    log: PathBuf,
    running: bool,
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.running {
            let _ = pg::pg_ctl_stop(&self.bin, &self.data, "immediate");
        }
    }
}

impl Server {
    /// `pg_ctl start`, waiting until it accepts connections (during
    /// recovery, once consistent) or `timeout`.
    async fn start(&mut self, timeout: Duration) -> Result<(), ChaosError> {
        // From here a failed or cancelled start may have left a postmaster.
        self.running = true;
        let mut command = self.bin.server("pg_ctl")?;
        command.arg("start").arg("-D").arg(&self.data).arg("-l").arg(&self.log).args([
            "-w",
            "-t",
            &timeout.as_secs().max(1).to_string(),
            "-s",
        ]);
        pg::blocking(move || pg::run(command, "pg_ctl start")).await.map(drop)
    }

    /// Stops it, fast, then immediately if that fails; says why when even
    /// that fails (the server may still be running).
    async fn stop(&mut self) -> Result<(), String> {
        let (bin, data) = (self.bin.clone(), self.data.clone());
        let result = pg::blocking(move || {
            pg::pg_ctl_stop(&bin, &data, "fast").or_else(|_| pg::pg_ctl_stop(&bin, &data, "immediate"))
        })
        .await;
        self.running = result.is_err();
        result
    }
}

/// Connects and waits until the server has left recovery (promoted at the
/// target), or says why not: the FATAL line of its log when it died.
async fn wait_promoted(url: &str, log: &Path, timeout: Duration) -> Result<Database, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = async {
            let db = Database::connect(url, 2).await.map_err(|e| e.to_string())?;
            let in_recovery: bool = match &db {
                Database::Postgres(pool) => {
                    sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(pool).await.map_err(|e| e.to_string())?
                }
                Database::Sqlite(_) => false,
            };
            Ok::<_, String>((db, in_recovery))
        };
        match attempt.await {
            Ok((db, false)) => return Ok(db),
            Ok((db, true)) => db.close().await,
            Err(e) => {
                if let Some(fatal) = fatal_line(&read(log)) {
                    return Err(fatal);
                }
                if Instant::now() >= deadline {
                    return Err(format!("no usable database within {} s: {e}", timeout.as_secs()));
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("still in recovery after {} s", timeout.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the promoted server stopped at the target: the log must say
/// where recovery stopped (a server that ran out of WAL and promoted
/// anyway did not restore to the target), and the target must not be
/// before the backup started (then PostgreSQL stops at the first commit
/// after the backup, the wrong time). The backup's START TIME is read by
/// the server itself, which knows the time zone names it wrote; `label` is
/// `backup_label` as read before the start (recovery renames it).
async fn reached_target(db: &Database, log: &str, label: &str, target: DateTime<Utc>) -> DrillItem {
    let item = |held, value: String| DrillItem { name: "recovered", held, value };
    let Some(stop) = log.lines().find(|l| l.contains("recovery stopping")).map(strip_prefix) else {
        return item(
            false,
            "promoted, but the server never logged where recovery stopped: not at the target".to_owned(),
        );
    };
    let start_text = label.lines().find_map(|l| l.strip_prefix("START TIME:")).map(str::trim);
    if let (Some(text), Database::Postgres(pool)) = (start_text, db) {
        let start: Result<i64, _> = sqlx::query_scalar("SELECT (extract(epoch FROM $1::timestamptz) * 1000)::bigint")
            .bind(text)
            .fetch_one(pool)
            .await;
        match start {
            Ok(ms) if target.timestamp_millis() < ms => {
                return item(
                    false,
                    format!(
                        "the target is before this base backup started ({text}): the server stopped at the first commit after the backup instead; use an older base backup"
                    ),
                );
            }
            Ok(_) => {}
            Err(e) => return item(false, format!("cannot read the backup's START TIME {text:?}: {e}")),
        }
    }
    item(true, format!("promoted at the target ({stop})"))
}

/// The checks on the promoted database.
async fn verify(db: &Database, options: &DrillOptions, report: &mut DrillReport) {
    let item = |name, result: Result<String, String>| match result {
        Ok(value) => DrillItem { name, held: true, value },
        Err(value) => DrillItem { name, held: false, value },
    };
    let mut problems = Vec::new();
    let mut applied = 0;
    for m in &options.migrations {
        let Some(migrator) = m.postgres.map(|f| f()) else { continue };
        match schema::assert_migrations_applied(db, &migrator).await {
            Ok(()) => applied += migrator.iter().count(),
            Err(e) => problems.push(format!("{}: {e}", m.name)),
        }
    }
    let migrations = if problems.is_empty() {
        Ok(format!("{applied} migrations of {} crates applied", options.migrations.len()))
    } else {
        Err(problems.join("; "))
    };
    report.items.push(item("migrations", migrations));
    let sequences = schema::assert_sequences_ahead(db).await;
    report.items.push(item(
        "sequences",
        sequences.map(|n| format!("{n} sequences ahead of their columns")).map_err(|e| e.to_string()),
    ));
    let money = schema::assert_money_columns_exact(db, schema::DEFAULT_MONEY_PATTERN).await;
    report
        .items
        .push(item("money-columns", money.map(|n| format!("{n} money columns exact")).map_err(|e| e.to_string())));
    if options.migrations.iter().any(|m| m.name == "spark-positions") {
        let index = async {
            schema::assert_partial_unique_index(
                db,
                "spark_positions",
                &["account_id", "instrument"],
                "status = 'open'",
            )
            .await
            .map_err(|e| e.to_string())?;
            match schema::index_is_valid(db, "spark_positions_one_open").await {
                Ok(true) => {
                    Ok("spark_positions_one_open is unique on (account_id, instrument) WHERE status = 'open' and valid"
                        .to_owned())
                }
                Ok(false) => Err("spark_positions_one_open is INVALID: it enforces nothing; REINDEX it".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        };
        report.items.push(item("positions-index", index.await));
    }
    match row_counts(db).await {
        Ok(counts) => report.row_counts = counts,
        Err(e) => report.items.push(DrillItem { name: "row-counts", held: false, value: e }),
    }
}

/// Exact row counts of the user tables.
async fn row_counts(db: &Database) -> Result<BTreeMap<String, i64>, String> {
    let Database::Postgres(pool) = db else { return Ok(BTreeMap::new()) };
    let tables: Vec<(String, String)> =
        sqlx::query_as("SELECT schemaname::text, relname::text FROM pg_stat_user_tables ORDER BY 1, 2 LIMIT $1")
            .bind(MAX_COUNTED_TABLES)
            .fetch_all(pool)
            .await
            .map_err(|e| format!("listing tables: {e}"))?;
    let mut counts = BTreeMap::new();
    for (schema, table) in tables {
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let sql = format!("SELECT count(*) FROM {}.{}", quote(&schema), quote(&table));
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(pool)
            .await
            .map_err(|e| format!("counting {schema}.{table}: {e}"))?;
        counts.insert(format!("{schema}.{table}"), n);
    }
    Ok(counts)
}

/// RPO from the server's log: where recovery stopped and the newest commit
/// it kept.
fn rpo(log: &str, target: DateTime<Utc>, report: &mut DrillReport) {
    report.recovery_stop =
        log.lines().filter(|l| l.contains("recovery stopping")).map(|l| strip_prefix(l).to_owned()).next_back();
    let last = log
        .lines()
        .filter_map(|l| l.split_once("last completed transaction was at log time ").map(|(_, t)| t.trim()))
        .next_back()
        .and_then(parse_pg_time);
    let Some(last) = last else {
        if report.rto_ms.is_some() {
            report.items.push(DrillItem {
                name: "rpo",
                held: false,
                value: "the server logged no last completed transaction: the restore point is unknown".to_owned(),
            });
        }
        return;
    };
    let rpo_ms = (target - last).num_milliseconds();
    report.last_recovered_commit = Some(last.to_rfc3339_opts(SecondsFormat::Micros, true));
    report.rpo_ms = Some(rpo_ms);
    if report.rto_ms.is_some() {
        report.items.push(DrillItem {
            name: "rpo",
            held: rpo_ms >= 0,
            value: if rpo_ms >= 0 {
                format!("newest recovered commit {rpo_ms} ms before the target")
            } else {
                format!("a commit {} ms AFTER the target was recovered", -rpo_ms)
            },
        });
    }
}

/// `2026-12-07 11:40:02.123456+00` as the server logs it.
fn parse_pg_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    // `+00` has no minutes, which `%#z` reads.
    DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z").ok().map(|t| t.with_timezone(&Utc))
}

/// The message of a log line without the `2026-… [pid] ` prefix.
fn strip_prefix(line: &str) -> &str {
    line.find("LOG:").or_else(|| line.find("FATAL:")).map_or(line, |i| line[i..].trim())
}

/// The first FATAL or PANIC line of the log that says why the server died
/// (not the ones refusing the drill's own early connections).
fn fatal_line(log: &str) -> Option<String> {
    log.lines()
        .filter(|l| l.contains("FATAL:") || l.contains("PANIC:"))
        .find(|l| !l.contains("the database system is starting up") && !l.contains("not yet accepting connections"))
        .map(|l| strip_prefix(l).to_owned())
}

fn wal_item(wal: &WalArchive) -> DrillItem {
    if wal.segment_bytes == 0 {
        return DrillItem {
            name: "wal-archive",
            held: false,
            value: "pg_controldata did not give the WAL segment size: the archive could not be checked".to_owned(),
        };
    }
    if wal.last.is_none() {
        return DrillItem {
            name: "wal-archive",
            held: false,
            value: format!(
                "no WAL segment from {} on in the archive ({} segment files in all): no restore past the backup can work (a compressed archive or another tool's format is not read by cp)",
                wal.start.as_deref().unwrap_or("the backup's start"),
                wal.segments
            ),
        };
    }
    if wal.gaps.is_empty() {
        DrillItem {
            name: "wal-archive",
            held: true,
            value: format!(
                "{} segments, continuous from {} to {}",
                wal.segments,
                wal.start.as_deref().unwrap_or("?"),
                wal.last.as_deref().unwrap_or("the backup's own WAL")
            ),
        }
    } else {
        DrillItem {
            name: "wal-archive",
            held: false,
            value: format!(
                "gap: {} missing; recovery cannot pass the first one (restore the segments or take a new base backup)",
                wal.gaps.join(", ")
            ),
        }
    }
}

/// A WAL segment file name: timeline, log and segment, 8 hex digits each.
fn segment(name: &str) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let timeline = u32::from_str_radix(&name[..8], 16).ok()?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..], 16).ok()?;
    Some((timeline, log << 32 | seg))
}

/// The name of segment `n` (log << 32 | seg in `segment`'s encoding, which
/// is turned into a segment number with `per_log`).
fn segment_name(timeline: u32, number: u64, per_log: u64) -> String {
    format!("{timeline:08X}{:08X}{:08X}", number / per_log, number % per_log)
}

/// The archive's segments on the backup's timeline, from the backup's start
/// segment to the newest, and the ones missing in between (the backup's
/// own `pg_wal` counts: `-X stream` puts the segments it needs there).
fn scan_archive(archive: &Path, data: &Path, segment_bytes: u64) -> Result<WalArchive, ChaosError> {
    let per_log = 0x1_0000_0000 / segment_bytes.max(1);
    let label = std::fs::read_to_string(data.join("backup_label")).unwrap_or_default();
    // START WAL LOCATION: 0/2000028 (file 000000010000000000000002)
    let start = label
        .lines()
        .find(|l| l.starts_with("START WAL LOCATION:"))
        .and_then(|l| l.split("(file ").nth(1))
        .map(|s| s.trim_end_matches(')').trim().to_owned());
    let to_number = |name: &str| segment(name).map(|(tl, raw)| (tl, (raw >> 32) * per_log + (raw & 0xFFFF_FFFF)));
    let list = |dir: &Path| -> Result<Vec<String>, ChaosError> {
        Ok(std::fs::read_dir(dir)
            .map_err(io(dir))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| segment(n).is_some())
            .collect())
    };
    let archived = list(archive)?;
    let own = list(&data.join("pg_wal")).unwrap_or_default();
    let Some((timeline, first)) = start.as_deref().and_then(to_number) else {
        return Ok(WalArchive {
            segments: archived.len(),
            start,
            last: archived.iter().max().cloned(),
            gaps: Vec::new(),
            segment_bytes,
        });
    };
    let have: BTreeSet<u64> = archived
        .iter()
        .chain(&own)
        .filter_map(|n| to_number(n))
        .filter(|(tl, n)| *tl == timeline && *n >= first)
        .map(|(_, n)| n)
        .collect();
    let newest = archived
        .iter()
        .filter_map(|n| to_number(n))
        .filter(|(tl, n)| *tl == timeline && *n >= first)
        .map(|(_, n)| n)
        .max();
    let gaps = match newest {
        Some(last) => {
            (first..=last).filter(|n| !have.contains(n)).map(|n| segment_name(timeline, n, per_log)).collect()
        }
        None => Vec::new(),
    };
    Ok(WalArchive {
        segments: archived.len(),
        start,
        last: newest.map(|n| segment_name(timeline, n, per_log)),
        gaps,
        segment_bytes,
    })
}

/// `scheme://user:password@host/…` without its password, and the password
/// (percent-decoded, as libpq reads it).
fn split_password(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else { return (url.to_owned(), None) };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else { return (url.to_owned(), None) };
    let Some((user, password)) = userinfo.split_once(':') else { return (url.to_owned(), None) };
    (format!("{scheme}://{user}@{host}{tail}"), Some(percent_decode(password)))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2))
            && let (Some(h), Some(l)) = (hex(h), hex(l))
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` can go into a shell command unquoted: `restore_command`
/// runs under `sh -c`, and `%` is PostgreSQL's own escape.
fn safe_in_shell(path: &str) -> bool {
    !path.is_empty() && path.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+@,:".contains(c))
}

/// When the backup started, from `backup_label` (`START TIME: 2026-12-07
/// 11:49:30 UTC`); `None` when it is not there or not in UTC.
fn backup_started(data: &Path) -> Option<DateTime<Utc>> {
    let label = std::fs::read_to_string(data.join("backup_label")).ok()?;
    let text = label.lines().find_map(|l| l.strip_prefix("START TIME:"))?.trim();
    let text = text.strip_suffix(" UTC").or_else(|| text.strip_suffix(" GMT"))?;
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").ok().map(|t| t.and_utc())
}

/// The backup's WAL segment size from `pg_controldata` (in the C locale,
/// so the label is not translated); `None` when it cannot tell: guessing
/// would invent gaps or hide real ones.
fn segment_bytes(bin: &PgBin, data: &Path) -> Option<u64> {
    let mut command = bin.server("pg_controldata").ok()?;
    command.env("LC_ALL", "C").arg("-D").arg(data);
    let output = pg::run(command, "pg_controldata").ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Bytes per WAL segment:"))
        .and_then(|v| v.trim().parse().ok())
        .filter(|b: &u64| b.is_power_of_two())
}

/// Copies `from` into a new directory `to`, recursively (files and
/// directories; a symlinked tablespace is refused: the drill restores the
/// main data directory only).
fn copy_dir(from: &Path, to: &Path) -> Result<(), ChaosError> {
    std::fs::create_dir(to).map_err(io(to))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(io(&src))?;
        if kind.is_dir() {
            copy_dir(&src, &dst)?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst).map_err(io(&src))?;
        } else {
            return Err(ChaosError::Input(format!(
                "{} is neither a file nor a directory (a tablespace link?): the drill restores plain data directories only",
                src.display()
            )));
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ChaosError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => disk_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_gaps_are_found() {
        let per_log = 0x1_0000_0000 / DEFAULT_SEGMENT_BYTES;
        assert_eq!(per_log, 256);
        let (tl, raw) = segment("0000000100000000000000FF").unwrap();
        assert_eq!((tl, raw), (1, 0xFF));
        assert_eq!(segment_name(1, 0xFF, per_log), "0000000100000000000000FF");
        assert_eq!(segment_name(1, 0x100, per_log), "000000010000000100000000");
        assert_eq!(segment("00000001000000000000000"), None);
        assert_eq!(segment("000000010000000000000002.partial"), None);

        let tmp = tempfile::tempdir().unwrap();
        let (archive, data) = (tmp.path().join("archive"), tmp.path().join("data"));
        std::fs::create_dir_all(data.join("pg_wal")).unwrap();
        std::fs::create_dir(&archive).unwrap();
        std::fs::write(
            data.join("backup_label"),
            "START WAL LOCATION: 0/FE000028 (file 0000000100000000000000FE)\nSTART TIMELINE: 1\n",
        )
        .unwrap();
        std::fs::write(data.join("pg_wal/0000000100000000000000FE"), "").unwrap();
        for name in [
            "0000000100000000000000FD",
            "0000000100000000000000FF",
            "000000010000000100000001",
            "00000001000000000000000A.00000028.backup",
        ] {
            std::fs::write(archive.join(name), "").unwrap();
        }
        let wal = scan_archive(&archive, &data, DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!(wal.start.as_deref(), Some("0000000100000000000000FE"));
        assert_eq!(wal.last.as_deref(), Some("000000010000000100000001"));
        assert_eq!(wal.gaps, ["000000010000000100000000"]);
        assert!(!wal_item(&wal).held);
        std::fs::write(archive.join("000000010000000100000000"), "").unwrap();
        let wal = scan_archive(&archive, &data, DEFAULT_SEGMENT_BYTES).unwrap();
        assert!(wal.gaps.is_empty() && wal_item(&wal).held, "{wal:?}");
    }

    #[test]
    fn server_times_and_lines_are_read() {
        let t = parse_pg_time("2026-12-07 11:40:02.123456+00").unwrap();
        assert_eq!(t.to_rfc3339_opts(SecondsFormat::Micros, true), "2026-12-07T11:40:02.123456Z");
        assert_eq!(parse_pg_time("yesterday"), None);
        let log = "2026-12-07 11:40:09.1 UTC [77] LOG:  recovery stopping before commit of transaction 745, time 2026-12-07 11:40:05.5+00\n\
                   2026-12-07 11:40:09.1 UTC [77] LOG:  last completed transaction was at log time 2026-12-07 11:40:02.123456+00\n";
        let mut report = DrillReport {
            format: DRILL_FORMAT,
            held: false,
            target_time: String::new(),
            started_at: String::new(),
            base_backup: PathBuf::new(),
            wal_archive: PathBuf::new(),
            port: 0,
            rto_ms: Some(1),
            last_recovered_commit: None,
            rpo_ms: None,
            recovery_stop: None,
            wal: WalArchive { segments: 0, start: None, last: None, gaps: Vec::new(), segment_bytes: 0 },
            items: Vec::new(),
            row_counts: BTreeMap::new(),
            duration_ms: 0,
            log_tail: String::new(),
        };
        let target = parse_pg_time("2026-12-07 11:40:03.123456+00").unwrap();
        rpo(log, target, &mut report);
        assert_eq!(report.rpo_ms, Some(1000));
        assert_eq!(
            report.recovery_stop.as_deref(),
            Some("LOG:  recovery stopping before commit of transaction 745, time 2026-12-07 11:40:05.5+00")
        );
        assert!(report.item("rpo").unwrap().held);
        assert_eq!(
            fatal_line("x\n2026 [1] FATAL:  recovery ended before configured recovery target was reached\n").as_deref(),
            Some("FATAL:  recovery ended before configured recovery target was reached")
        );
        assert_eq!(fatal_line("LOG: fine"), None);
    }

    #[test]
    fn a_url_password_leaves_the_command_line_and_paths_are_shell_safe() {
        assert_eq!(
            split_password("postgres://backup:p%40ss%3Aw@db:5432/orders?sslmode=require"),
            ("postgres://backup@db:5432/orders?sslmode=require".to_owned(), Some("p@ss:w".to_owned()))
        );
        assert_eq!(split_password("postgres://backup@db/x"), ("postgres://backup@db/x".to_owned(), None));
        assert_eq!(split_password("host=db user=x"), ("host=db user=x".to_owned(), None));
        assert!(safe_in_shell("/var/lib/postgresql/wal-archive_1"));
        for bad in ["/tmp/$(reboot)", "/tmp/a b", "/tmp/`x`", "/tmp/a\"b", "/tmp/100%", ""] {
            assert!(!safe_in_shell(bad), "{bad:?}");
        }
    }

    #[test]
    fn segment_numbers_follow_the_segment_size() {
        let tmp = tempfile::tempdir().unwrap();
        let (archive, data) = (tmp.path().join("archive"), tmp.path().join("data"));
        std::fs::create_dir_all(data.join("pg_wal")).unwrap();
        std::fs::create_dir(&archive).unwrap();
        // 1 GiB segments: four per log id, so 0/3 is followed by 1/0.
        std::fs::write(data.join("backup_label"), "START WAL LOCATION: 0/C0000028 (file 000000010000000000000003)\n")
            .unwrap();
        for name in ["000000010000000000000003", "000000010000000100000000", "000000010000000100000001"] {
            std::fs::write(archive.join(name), "").unwrap();
        }
        let wal = scan_archive(&archive, &data, 1 << 30).unwrap();
        assert!(wal.gaps.is_empty(), "{wal:?}");
        // 1 MiB segments: 4096 per log id, so 0/3 to 1/0 has a gap.
        let wal = scan_archive(&archive, &data, 1 << 20).unwrap();
        assert_eq!(wal.gaps.len(), 4096 - 4, "{:?}", wal.gaps.first());
        // Nothing archived after the start: not continuous, not held.
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        std::fs::write(empty.join("000000010000000000000001"), "").unwrap();
        std::fs::write(empty.join("00000002.history"), "").unwrap();
        let wal = scan_archive(&empty, &data, 1 << 30).unwrap();
        assert!(wal.last.is_none() && !wal_item(&wal).held, "{wal:?}");
        let unknown = WalArchive { segments: 3, start: None, last: None, gaps: Vec::new(), segment_bytes: 0 };
        assert!(wal_item(&unknown).value.contains("segment size"));
    }

    #[test]
    fn the_backup_start_is_read_from_backup_label_in_utc_only() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("backup_label"),
            "START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\nSTART TIME: 2026-12-07 11:49:30 UTC\n",
        )
        .unwrap();
        let t = backup_started(tmp.path()).unwrap();
        assert_eq!(t.to_rfc3339_opts(SecondsFormat::Secs, true), "2026-12-07T11:49:30Z");
        std::fs::write(tmp.path().join("backup_label"), "START TIME: 2026-12-07 12:49:30 CET\n").unwrap();
        assert_eq!(
            backup_started(tmp.path()),
            None,
            "a zone abbreviation is not guessed here (the scratch server reads it)"
        );
    }
}
