//! A private PostgreSQL server for one test, started with the
//! `postgresql.conf` settings the test asks for.
//!
//! [`crate::postgres`] hands out a fresh database on a shared server, which
//! is enough for tests of SQL. Tests of server configuration (archiving, WAL
//! level, connection limits) need a server of their own: [`PgCluster`] runs
//! `initdb` in a fresh temporary directory and starts PostgreSQL on a free
//! loopback port, with trust authentication for the `postgres` role. The
//! server is stopped and its directory removed when the value is dropped.
//!
//! When the tests run as root, the server runs as the `postgres` OS user,
//! because `initdb` and `postgres` refuse to run as root.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use spark_testkit::cluster::PgCluster;
//!
//! let Some(pg) = PgCluster::start(&[("wal_level", "minimal"), ("max_wal_senders", "0")]).await else {
//!     return; // PostgreSQL is not installed: one skip line was printed
//! };
//! let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
//! let level: String = sqlx::query_scalar("SHOW wal_level").fetch_one(&pool).await.unwrap();
//! assert_eq!(level, "minimal");
//! # }
//! ```

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use crate::server;

/// Where Debian and Ubuntu install the server binaries, one directory per
/// major version.
const DEBIAN_LIB: &str = "/usr/lib/postgresql";

/// A PostgreSQL server of the test's own, stopped and removed on drop.
#[derive(Debug)]
pub struct PgCluster {
    port: u16,
    bin: PathBuf,
    data: PathBuf,
    files: PathBuf,
    log: PathBuf,
    // Dropped after `Drop::drop` has stopped the server.
    _dir: tempfile::TempDir,
}

impl PgCluster {
    /// Initialises and starts a server with `settings` appended to its
    /// `postgresql.conf`, or returns `None` after one skip line when the
    /// PostgreSQL server binaries are not installed.
    ///
    /// The server listens on `127.0.0.1` only, on a free port, and on a unix
    /// socket in its temporary directory. `fsync` is off for speed; a test
    /// that checks `fsync` sets it again in `settings`, which come last and
    /// so win. The binaries are taken from the newest
    /// `/usr/lib/postgresql/<version>/bin`, else from `PATH`.
    ///
    /// # Panics
    ///
    /// When `initdb` or the server fails (the message carries the end of the
    /// server log), when a setting name is not a plain identifier, and when
    /// the binaries are missing under `SPARK_REQUIRE_SERVICES=1`.
    pub async fn start(settings: &[(&str, &str)]) -> Option<PgCluster> {
        let bin = bin_dir()?;
        let settings = owned(settings);
        Some(server::blocking(move || PgCluster::start_blocking(bin, &settings)).await)
    }

    /// A server that archives its WAL into [`PgCluster::dir`]
    /// (`wal_level = replica`, `archive_mode = on`, an `archive_command`
    /// copying each segment there), with `settings` as in
    /// [`PgCluster::start`]; `None` after a skip line when PostgreSQL is not
    /// installed.
    ///
    /// # Panics
    ///
    /// As [`PgCluster::start`] and [`PgCluster::restart`].
    pub async fn start_archiving(settings: &[(&str, &str)]) -> Option<PgCluster> {
        let mut all = vec![("wal_level", "replica"), ("archive_mode", "on")];
        all.extend_from_slice(settings);
        let mut pg = PgCluster::start(&all).await?;
        // The directory exists only once the cluster does; the restart makes
        // the archive_command part of the server's configuration file.
        let command = format!("cp %p {}/%f", pg.dir().display());
        pg.restart(&[("archive_command", &command)]).await;
        Some(pg)
    }

    /// Appends `settings` to `postgresql.conf` and restarts the server, for
    /// settings that only take effect at server start. The port stays the
    /// same, but existing connections are closed.
    ///
    /// # Panics
    ///
    /// When the server does not come back up, with the end of its log.
    pub async fn restart(&mut self, settings: &[(&str, &str)]) {
        append_settings(&self.data, &owned(settings));
        let (bin, data, log) = (self.bin.clone(), self.data.clone(), self.log.clone());
        server::blocking(move || {
            let output = pg_ctl(&bin, &data, &log, &["restart", "-m", "fast"]);
            assert!(output.status.success(), "{}", failure("PostgreSQL did not restart", &output, &log));
        })
        .await;
    }

    /// The URL of the `postgres` database as the `postgres` superuser.
    #[must_use]
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The TCP port on `127.0.0.1`.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// An empty directory the server can write, for archive targets and
    /// similar files; removed with the cluster.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.files
    }

    /// The data directory, holding `postgresql.conf`.
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server log so far.
    #[must_use]
    pub fn log(&self) -> String {
        server::read_log(&self.log)
    }

    fn start_blocking(bin: PathBuf, settings: &[(String, String)]) -> PgCluster {
        let dir = tempfile::Builder::new().prefix("spark-pg-").tempdir().expect("temporary directory");
        let (data, files, log) = (dir.path().join("data"), dir.path().join("files"), dir.path().join("server.log"));
        std::fs::create_dir(&files).expect("create the cluster's files directory");
        server::give_to_server_user(dir.path());
        // --no-sync: the directory is thrown away, durability buys nothing.
        let output = server::command_as_server_user(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["--no-sync", "--auth=trust", "--username=postgres", "--encoding=UTF8", "--locale=C"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.join("initdb").display()));
        assert!(output.status.success(), "{}", failure("initdb failed", &output, &log));
        let socket_dir = dir.path().to_str().expect("temporary directory path is UTF-8").to_owned();
        // Another process can take the free port before the server binds it:
        // then the next free port is tried.
        for attempt in 1.. {
            let port = server::free_port();
            let mut conf =
                owned(&[("listen_addresses", "127.0.0.1"), ("unix_socket_directories", &socket_dir), ("fsync", "off")]);
            conf.push(("port".to_owned(), port.to_string()));
            conf.extend_from_slice(settings);
            append_settings(&data, &conf);
            let output = pg_ctl(&bin, &data, &log, &["start"]);
            if output.status.success() {
                return PgCluster { port, bin, data, files, log, _dir: dir };
            }
            if attempt < 3 && server::port_was_taken(&server::read_log(&log)) {
                continue;
            }
            panic!("{}", failure("PostgreSQL did not start", &output, &log));
        }
        unreachable!("the start loop either returns or panics")
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Immediate: the cluster is thrown away, so nothing needs to be
        // flushed, and the stop takes milliseconds.
        let stopped = server::command_as_server_user(self.bin.join("pg_ctl"))
            .arg("stop")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !stopped.is_ok_and(|s| s.success()) {
            let _ = writeln!(std::io::stderr(), "warning: could not stop the PostgreSQL cluster on port {}", self.port);
        }
    }
}

/// The newest server binary directory, or `None` after a skip line.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(DEBIAN_LIB)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    versions.sort();
    let candidates = versions.into_iter().rev().map(|(_, bin)| bin.join("initdb"));
    match server::find_program(candidates, "initdb") {
        Some(initdb) => Some(initdb.parent().expect("a program path has a parent").to_owned()),
        None => crate::skip("PostgreSQL cluster", &format!("initdb (not in {DEBIAN_LIB}/*/bin or PATH)")),
    }
}

/// Runs `pg_ctl` with `args`, waiting for the server, its output to `log`.
fn pg_ctl(bin: &Path, data: &Path, log: &Path, args: &[&str]) -> Output {
    server::command_as_server_user(bin.join("pg_ctl"))
        .args(args)
        .arg("-D")
        .arg(data)
        .arg("-l")
        .arg(log)
        .args(["-w", "-t", "60", "-s"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.join("pg_ctl").display()))
}

/// Appends `settings` to `postgresql.conf`, where later lines win.
///
/// # Panics
///
/// When a name is not a plain setting name: it would break the file.
fn append_settings(data: &Path, settings: &[(String, String)]) {
    let mut text = String::from("\n# spark-testkit\n");
    for (name, value) in settings {
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.'),
            "setting name {name:?} is not a PostgreSQL setting name"
        );
        let _ = writeln!(text, "{name} = '{}'", value.replace('\'', "''"));
    }
    let path = data.join("postgresql.conf");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    file.write_all(text.as_bytes()).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// A failure message: what failed, the tool's output, and the end of the
/// server log.
fn failure(what: &str, output: &Output, log: &Path) -> String {
    format!(
        "{what} ({}): {}{}\n--- last lines of {} ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        log.display(),
        server::tail(&server::read_log(log), 30)
    )
}

fn owned(settings: &[(&str, &str)]) -> Vec<(String, String)> {
    settings.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())).collect()
}
