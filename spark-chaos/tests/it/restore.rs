//! The restore drill against a private PostgreSQL cluster with WAL
//! archiving: rows written before and after a target time, a base backup
//! taken first, the drill restoring to the target. The restored database
//! has the first rows and not the second; a gap in the archive fails it.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use spark_chaos::{BackupOptions, DrillOptions, PgBin, base_backup, restore_drill};
use spark_db::Database;
use spark_testkit::cluster::PgCluster;

async fn exec(db: &Database, sql: &str) {
    let Database::Postgres(pool) = db else { unreachable!("a PostgreSQL cluster") };
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(pool).await.unwrap();
}

async fn scalar(db: &Database, sql: &str) -> String {
    let Database::Postgres(pool) = db else { unreachable!("a PostgreSQL cluster") };
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(pool).await.unwrap()
}

/// Switches to a new WAL segment and waits until the old one is archived.
async fn archive_current_wal(db: &Database) {
    let file = scalar(db, "SELECT pg_walfile_name(pg_switch_wal())").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let archived = scalar(db, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").await;
        if archived >= file {
            return;
        }
        assert!(Instant::now() < deadline, "{file} was not archived within 30 s (last {archived:?})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every file below `dir` with its SHA-256, to prove a drill changed
/// nothing.
fn listing(dir: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(listing(&path));
        } else {
            files.push((path.display().to_string(), spark_evidence::sha256_hex(&std::fs::read(&path).unwrap())));
        }
    }
    files.sort();
    files
}

/// Whether a scratch server of a drill is still running.
fn scratch_server_running() -> bool {
    std::process::Command::new("pgrep").args(["-f", "postgres: spark-restore-drill"]).status().unwrap().success()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A cluster archiving into its files directory, migrated with the Spark
/// crates, with a base backup taken, 3 rows written, a target time taken
/// from the database clock, then 5 more rows, all archived.
struct Scene {
    pg: PgCluster,
    backup: tempfile::TempDir,
    target: DateTime<Utc>,
}

async fn scene() -> Option<Scene> {
    let pg = PgCluster::start_archiving(&[("max_wal_senders", "4")]).await?;
    let db = Database::connect(&pg.url(), 2).await.unwrap();
    db.migrate(&[spark_positions::MIGRATIONS, spark_outbox::MIGRATIONS]).await.unwrap();
    exec(&db, "CREATE TABLE marks (id BIGSERIAL PRIMARY KEY, phase TEXT NOT NULL)").await;

    let backup = tempfile::tempdir().unwrap();
    let options = BackupOptions { database_url: pg.url(), out: backup.path().join("base") };
    let report = base_backup(&PgBin::find().unwrap(), &options, &spark_db::system_clock()).await.unwrap();
    assert!(report.start_wal.is_some() && report.bytes > 1_000_000, "{report:?}");
    eprintln!("base backup: {} ms, {} bytes", report.millis, report.bytes);

    exec(&db, "INSERT INTO marks (phase) SELECT 'before' FROM generate_series(1, 3)").await;
    // The 'before' rows in a segment of their own, so that a test can take
    // it out and leave a gap in front of the target.
    archive_current_wal(&db).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let target =
        scalar(&db, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    exec(&db, "INSERT INTO marks (phase) SELECT 'after' FROM generate_series(1, 5)").await;
    archive_current_wal(&db).await;
    db.close().await;
    let target = DateTime::parse_from_rfc3339(&target).unwrap().to_utc();
    Some(Scene { pg, backup, target })
}

fn options(scene: &Scene, archive: &Path) -> DrillOptions {
    let mut options = DrillOptions::new(scene.backup.path().join("base"), archive, scene.target);
    options.migrations = vec![spark_positions::MIGRATIONS, spark_outbox::MIGRATIONS];
    options.recovery_timeout = Duration::from_secs(120);
    options
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drill_restores_to_the_target_time_and_a_gap_in_the_archive_fails_it() {
    let Some(scene) = scene().await else { return };
    let bin = PgBin::find().unwrap();
    let clock = spark_db::system_clock();

    let archive_before = listing(scene.pg.dir());
    let backup_before = listing(&scene.backup.path().join("base"));
    let report = restore_drill(&bin, &options(&scene, scene.pg.dir()), &clock).await.unwrap();
    eprintln!("{}", report.to_text());
    assert!(report.held, "{}", report.to_text());
    // Only read: the archive and the backup are as they were, and the
    // scratch server is gone.
    assert_eq!(listing(scene.pg.dir()), archive_before);
    assert_eq!(listing(&scene.backup.path().join("base")), backup_before);
    assert!(!scratch_server_running(), "the drill left its scratch server running");
    assert!(report.item("recovered").unwrap().value.contains("recovery stopping before commit"), "{report:?}");
    // The rows before the target and not the ones after it.
    assert_eq!(report.row_counts.get("public.marks"), Some(&3), "{:?}", report.row_counts);
    let rto = report.rto_ms.unwrap();
    let rpo = report.rpo_ms.unwrap();
    // The newest commit kept is the 'before' insert, about 1.1 s before the
    // target: never after it, and not a whole sleep earlier.
    assert!((0..1_100 + 1_000).contains(&rpo), "RPO {rpo} ms");
    assert!(report.recovery_stop.as_deref().unwrap_or("").contains("recovery stopping before commit"), "{report:?}");
    for name in ["wal-archive", "recovered", "migrations", "sequences", "money-columns", "positions-index", "rpo"] {
        assert!(report.item(name).is_some_and(|i| i.held), "{name}: {:?}", report.items);
    }
    eprintln!("restore drill: RTO {rto} ms, RPO {rpo} ms, {} ms in all", report.duration_ms);

    // Evidence: text and JSON, never overwritten.
    let evidence = tempfile::tempdir().unwrap();
    let dir = spark_evidence::EvidenceDir::create(evidence.path()).unwrap();
    let files = report.write(&dir).unwrap();
    assert_eq!(files.len(), 2);
    assert!(files[0].name.starts_with("restore_drill_") && files[0].name.ends_with(".txt"), "{files:?}");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&files[1].path).unwrap()).unwrap();
    assert_eq!(json["held"], true);
    assert_eq!(json["row_counts"]["public.marks"], 3);
    // Written again (a second report in the same second): kept beside the
    // first, which is not overwritten.
    let first = std::fs::read(&files[0].path).unwrap();
    let again = report.write(&dir).unwrap();
    assert_eq!(again[0].name, files[0].name.replace(".txt", "_2.txt"));
    assert_eq!(std::fs::read(&files[0].path).unwrap(), first);

    // A gap: the archive without the segment that holds the 'before' rows.
    let broken = tempfile::tempdir().unwrap();
    copy_dir(scene.pg.dir(), broken.path());
    let start = report.wal.start.clone().unwrap();
    let mut segments: Vec<String> = std::fs::read_dir(broken.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| n.len() == 24 && *n > start)
        .collect();
    segments.sort();
    assert!(segments.len() >= 2, "the scene archived too little: {segments:?}");
    std::fs::remove_file(broken.path().join(&segments[0])).unwrap();
    let report = restore_drill(&bin, &options(&scene, broken.path()), &clock).await.unwrap();
    eprintln!("{}", report.to_text());
    assert!(!report.held);
    assert!(!scratch_server_running(), "a failed drill left its scratch server running");
    let wal = report.item("wal-archive").unwrap();
    assert!(!wal.held && wal.value.contains(&segments[0]), "{wal:?}");
    let recovered = report.item("recovered").unwrap();
    assert!(!recovered.held, "recovery passed a gap: {recovered:?}");
    assert!(report.rto_ms.is_none());

    // A backup whose START TIME is in another zone (the server's
    // log_timezone), and a target an hour before it: the server would stop
    // at the first commit after the backup; the drill must not call that
    // recovered.
    let cet = tempfile::tempdir().unwrap();
    copy_dir(&scene.backup.path().join("base"), cet.path());
    let label = std::fs::read_to_string(cet.path().join("backup_label")).unwrap();
    let line = label.lines().find(|l| l.starts_with("START TIME:")).unwrap();
    let utc = chrono::NaiveDateTime::parse_from_str(
        line["START TIME: ".len()..].trim_end_matches(" UTC"),
        "%Y-%m-%d %H:%M:%S",
    )
    .unwrap()
    .and_utc();
    let in_cet = (utc + chrono::Duration::hours(1)).format("START TIME: %Y-%m-%d %H:%M:%S CET").to_string();
    std::fs::write(cet.path().join("backup_label"), label.replace(line, &in_cet)).unwrap();
    let mut early = options(&scene, scene.pg.dir());
    early.base_backup = cet.path().to_owned();
    early.target_time = utc - chrono::Duration::hours(1);
    let report = restore_drill(&bin, &early, &clock).await.unwrap();
    let recovered = report.item("recovered").unwrap();
    assert!(!recovered.held && recovered.value.contains("before this base backup started"), "{}", report.to_text());
    assert!(!report.held);
}

#[tokio::test]
async fn not_a_backup_and_a_missing_archive_are_input_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let Ok(bin) = PgBin::find() else {
        assert!(std::env::var_os("SPARK_REQUIRE_SERVICES").is_none(), "PostgreSQL server programs are required");
        eprintln!("skipped: PostgreSQL server programs are not installed");
        return;
    };
    let clock = spark_db::system_clock();
    let target = DateTime::<Utc>::from_timestamp_millis(clock.now_ms()).unwrap();
    let e = restore_drill(&bin, &DrillOptions::new(tmp.path(), tmp.path(), target), &clock).await.unwrap_err();
    assert!(e.to_string().contains("is not a plain-format base backup"), "{e}");
    std::fs::write(tmp.path().join("backup_label"), "").unwrap();
    std::fs::write(tmp.path().join("PG_VERSION"), "15\n").unwrap();
    let e =
        restore_drill(&bin, &DrillOptions::new(tmp.path(), tmp.path().join("nope"), target), &clock).await.unwrap_err();
    assert!(e.to_string().contains("is not a directory"), "{e}");
    std::fs::write(tmp.path().join("PG_VERSION"), "9\n").unwrap();
    let e = restore_drill(&bin, &DrillOptions::new(tmp.path(), tmp.path(), target), &clock).await.unwrap_err();
    assert!(e.to_string().starts_with("the base backup is PostgreSQL 9 but the programs in"), "{e}");
    let shell = tmp.path().join("a b");
    std::fs::create_dir(&shell).unwrap();
    std::fs::write(tmp.path().join("PG_VERSION"), format!("{}\n", bin.major_version().unwrap())).unwrap();
    let e = restore_drill(&bin, &DrillOptions::new(tmp.path(), &shell, target), &clock).await.unwrap_err();
    assert!(e.to_string().contains("cannot quote safely"), "{e}");
    std::fs::write(tmp.path().join("x"), "").unwrap();
    let options =
        BackupOptions { database_url: "postgres://postgres@127.0.0.1:9/x".to_owned(), out: tmp.path().to_owned() };
    let e = base_backup(&bin, &options, &clock).await.unwrap_err();
    assert!(e.to_string().contains("is not empty"), "{e}");
}
