//! A real pgBouncer for one test, in front of a PostgreSQL server.
//!
//! [`Pgbouncer`] writes a `pgbouncer.ini` in a fresh temporary directory and
//! runs `pgbouncer` on a free `127.0.0.1` port. Every database name is
//! forwarded to the same name on the upstream server, clients log in without
//! a password (`auth_type = trust`, the upstream user listed in the auth
//! file), and the upstream user is an admin, so the `pgbouncer` virtual
//! database answers `SHOW POOLS` and the like. pgBouncer is killed when the
//! value is dropped.
//!
//! pgBouncer refuses to run as root; when the tests run as root it is started
//! with `-u postgres`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use spark_testkit::cluster::PgCluster;
//! use spark_testkit::pgbouncer::{Pgbouncer, PoolMode};
//!
//! let Some(pg) = PgCluster::start(&[]).await else { return };
//! let Some(bouncer) = Pgbouncer::builder(&pg.url()).pool_mode(PoolMode::Transaction).start().await else {
//!     return; // pgBouncer is not installed: one skip line was printed
//! };
//! let pool = sqlx::PgPool::connect(&bouncer.url("postgres")).await.unwrap();
//! // Simple queries only: see `Pgbouncer` on prepared statements.
//! sqlx::raw_sql("SELECT 1").execute(&pool).await.unwrap();
//! # }
//! ```

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;

use crate::server;

/// Where Debian and Ubuntu install pgBouncer.
const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

/// How long pgBouncer may take to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// When pgBouncer hands a server connection back to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolMode {
    /// When the client disconnects (pgBouncer's default).
    Session,
    /// When a transaction ends; a statement outside a transaction is one.
    Transaction,
    /// After every statement; multi-statement transactions are refused.
    Statement,
}

impl PoolMode {
    fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        }
    }
}

/// A running pgBouncer, killed on drop.
///
/// pgBouncer 1.18 does not track protocol-level prepared statements (1.21
/// added `max_prepared_statements`). In transaction and statement mode,
/// sqlx's default `sqlx::query(..)` therefore fails, and at times silently
/// runs another client's statement: named statements (`sqlx_s_N`) collide
/// between clients that share a server connection, and sqlx sends `Parse`
/// and `Bind` under separate `Sync`s, so outside a transaction even an
/// unnamed statement can be bound on another server connection. What works
/// there: `.persistent(false)` queries inside an explicit transaction, or
/// `sqlx::raw_sql`. `statement-cache-capacity=0` does not help: sqlx then
/// still prepares named statements, and never closes them.
#[derive(Debug)]
pub struct Pgbouncer {
    port: u16,
    user: String,
    child: Child,
    log: PathBuf,
    // Removed after `Drop::drop` has killed pgBouncer.
    _dir: tempfile::TempDir,
}

/// Configures a [`Pgbouncer`] before it starts.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `start` is awaited"]
pub struct PgbouncerBuilder {
    upstream: String,
    settings: Vec<(String, String)>,
}

impl Pgbouncer {
    /// A builder for a pgBouncer in front of the server at `upstream_url`
    /// (such as `postgres://postgres@127.0.0.1:5432/test`; its database name
    /// is ignored). The upstream must let that user in without a password.
    pub fn builder(upstream_url: &str) -> PgbouncerBuilder {
        PgbouncerBuilder {
            upstream: upstream_url.to_owned(),
            settings: [("pool_mode", "session"), ("default_pool_size", "20"), ("max_client_conn", "100")]
                .iter()
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    /// The URL of database `db` through pgBouncer.
    #[must_use]
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{}@127.0.0.1:{}/{db}", self.user, self.port)
    }

    /// The URL of the admin console, the `pgbouncer` virtual database. It
    /// answers simple queries only (`sqlx::raw_sql`), and every column comes
    /// back as text.
    #[must_use]
    pub fn admin_url(&self) -> String {
        self.url("pgbouncer")
    }

    /// The TCP port on `127.0.0.1`.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// pgBouncer's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        server::read_log(&self.log)
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        // A test's bouncer holds nothing worth a graceful shutdown.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PgbouncerBuilder {
    /// When server connections go back to the pool (default: session).
    pub fn pool_mode(self, mode: PoolMode) -> Self {
        self.setting("pool_mode", mode.as_str())
    }

    /// Server connections per database and user pair (default: 20).
    pub fn default_pool_size(self, size: u32) -> Self {
        self.setting("default_pool_size", &size.to_string())
    }

    /// Client connections pgBouncer accepts (default: 100).
    pub fn max_client_conn(self, max: u32) -> Self {
        self.setting("max_client_conn", &max.to_string())
    }

    /// Any other `[pgbouncer]` setting, written as `name = value`; a later
    /// call for the same name replaces the earlier one.
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.retain(|(k, _)| k != name);
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Starts pgBouncer and waits until it accepts connections, or returns
    /// `None` after one skip line when pgBouncer is not installed (at
    /// `/usr/sbin/pgbouncer` or in `PATH`).
    ///
    /// # Panics
    ///
    /// When the upstream URL does not parse, when pgBouncer exits or does not
    /// listen within 10 s (the message carries the end of its log), and when
    /// pgBouncer is missing under `SPARK_REQUIRE_SERVICES=1`.
    pub async fn start(self) -> Option<Pgbouncer> {
        let Some(program) = server::find_program([PathBuf::from(PGBOUNCER)], "pgbouncer") else {
            return crate::skip("pgBouncer", &format!("pgbouncer (not at {PGBOUNCER} or in PATH)"));
        };
        Some(server::blocking(move || self.start_blocking(&program)).await)
    }

    fn start_blocking(self, program: &Path) -> Pgbouncer {
        let upstream = PgConnectOptions::from_str(&self.upstream)
            .unwrap_or_else(|e| panic!("upstream {:?} is not a PostgreSQL URL: {e}", self.upstream));
        let host = match upstream.get_socket() {
            Some(socket) => socket.to_str().expect("socket path is UTF-8").to_owned(),
            None => upstream.get_host().to_owned(),
        };
        let user = upstream.get_username().to_owned();
        let dir = tempfile::Builder::new().prefix("spark-pgbouncer-").tempdir().expect("temporary directory");
        let (ini, auth_file, log) =
            (dir.path().join("pgbouncer.ini"), dir.path().join("userlist.txt"), dir.path().join("pgbouncer.log"));
        std::fs::write(&auth_file, format!("{} \"\"\n", quoted(&user))).expect("write the auth file");
        for attempt in 1.. {
            let port = server::free_port();
            let mut text =
                format!("[databases]\n* = host={host} port={} user={user}\n\n[pgbouncer]\n", upstream.get_port());
            let fixed = [
                ("listen_addr", "127.0.0.1".to_owned()),
                ("listen_port", port.to_string()),
                // No unix socket: it would land in /tmp, shared by all tests.
                ("unix_socket_dir", String::new()),
                ("auth_type", "trust".to_owned()),
                ("auth_file", auth_file.display().to_string()),
                ("admin_users", user.clone()),
                // sqlx sends it at startup, and pgBouncer refuses unknown
                // startup parameters.
                ("ignore_startup_parameters", "extra_float_digits".to_owned()),
                ("logfile", log.display().to_string()),
            ];
            for (name, value) in fixed
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .chain(self.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            {
                text.push_str(&format!("{name} = {value}\n"));
            }
            std::fs::write(&ini, text).expect("write pgbouncer.ini");
            server::give_to_server_user(dir.path());
            let mut command = Command::new(program);
            if server::is_root() {
                command.args(["-u", server::SERVER_USER]);
            }
            let mut child = command
                .arg(&ini)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
            match wait_until_listening(&mut child, &log, port) {
                Ok(()) => return Pgbouncer { port, user, child, log, _dir: dir },
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let text = server::read_log(&log);
                    if attempt < 3 && server::port_was_taken(&text) {
                        continue;
                    }
                    panic!(
                        "pgBouncer did not start: {why}\n--- last lines of {} ---\n{}",
                        log.display(),
                        server::tail(&text, 30)
                    );
                }
            }
        }
        unreachable!("the start loop either returns or panics")
    }
}

/// Waits until pgBouncer says in its log that it listens on `port` and a
/// connection to it succeeds, or says why not. The log line makes sure the
/// listener is this pgBouncer, not another process that took the port.
fn wait_until_listening(child: &mut Child, log: &Path, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let listening = format!("listening on 127.0.0.1:{port}");
    loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("cannot watch the process: {e}"))? {
            return Err(format!("it exited ({status})"));
        }
        if server::read_log(log).contains(&listening) && TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("it did not listen on port {port} within {READY_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A name in double quotes, as the auth file wants it.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
