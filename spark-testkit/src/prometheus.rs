//! A real Prometheus and a real Alertmanager for one test.
//!
//! [`Prometheus::start`] writes the given `prometheus.yml` and `rules.yml`
//! into a fresh temporary directory and runs `prometheus` on a free
//! `127.0.0.1` port with `--web.enable-lifecycle`, so a test can rewrite
//! either file and [`Prometheus::reload`]. A relative `rule_files` entry is
//! read from that directory: write `rule_files: ["rules.yml"]`.
//! [`Alertmanager::start`] does the same for `prometheus-alertmanager`, with
//! clustering off (Alertmanager would otherwise listen on port 9094 of every
//! interface). Both are killed when the value is dropped, and both skip when
//! the binary is not installed (Debian's `prometheus` and
//! `prometheus-alertmanager` packages).
//!
//! Prometheus reads its targets at most every 5 s after start-up, so a test
//! waits for its first scrape rather than assuming it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use spark_testkit::prometheus::{Alertmanager, Prometheus};
//!
//! let Some(am) = Alertmanager::start(Alertmanager::NULL_RECEIVER).await else { return };
//! let config = format!(
//!     "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
//!      rule_files: [rules.yml]\n\
//!      alerting: {{alertmanagers: [{{static_configs: [{{targets: ['127.0.0.1:{}']}}]}}]}}\n",
//!     am.port()
//! );
//! let Some(prom) = Prometheus::start(&config, "groups: []\n").await else { return };
//! assert!(prom.url().starts_with("http://127.0.0.1:"));
//! prom.write_rules("groups: []\n");
//! prom.reload().await;
//! # }
//! ```

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::server;

/// Where Debian installs Prometheus.
const PROMETHEUS: &str = "/usr/bin/prometheus";
/// Where Debian installs Alertmanager.
const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

/// How long either may take to answer `/-/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running process with a directory and a port, killed on drop.
#[derive(Debug)]
struct Running {
    port: u16,
    child: Child,
    log: PathBuf,
    // Removed after `Drop::drop` has killed the process.
    dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        // A test's server holds nothing worth a graceful shutdown.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running Prometheus, killed on drop.
#[derive(Debug)]
pub struct Prometheus(Running);

/// A running Alertmanager, killed on drop.
#[derive(Debug)]
pub struct Alertmanager(Running);

impl Prometheus {
    /// Starts Prometheus with `config` as `prometheus.yml` and `rules` as
    /// `rules.yml` beside it, and waits until it is ready; `None` after one
    /// skip line when Prometheus is not installed (at `/usr/bin/prometheus`
    /// or in `PATH`).
    ///
    /// # Panics
    ///
    /// When Prometheus exits or is not ready within 20 s (the message carries
    /// the end of its log), and when it is missing under
    /// `SPARK_REQUIRE_SERVICES=1`.
    pub async fn start(config: &str, rules: &str) -> Option<Prometheus> {
        let Some(program) = server::find_program([PathBuf::from(PROMETHEUS)], "prometheus") else {
            return crate::skip("Prometheus", &format!("prometheus (not at {PROMETHEUS} or in PATH)"));
        };
        let (config, rules) = (config.to_owned(), rules.to_owned());
        let running = server::blocking(move || {
            start_blocking("Prometheus", "spark-prometheus-", |dir, port| {
                std::fs::write(dir.join("prometheus.yml"), &config).expect("write prometheus.yml");
                std::fs::write(dir.join("rules.yml"), &rules).expect("write rules.yml");
                let mut command = Command::new(&program);
                command
                    .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
                    .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                    .arg("--web.enable-lifecycle");
                command
            })
        })
        .await;
        Some(Prometheus(running))
    }

    /// `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.0.port)
    }

    /// The TCP port on `127.0.0.1`.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// The directory holding `prometheus.yml` and `rules.yml`.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.0.dir.path()
    }

    /// Rewrites `prometheus.yml`; takes effect on [`Prometheus::reload`].
    ///
    /// # Panics
    ///
    /// When the file cannot be written.
    pub fn write_config(&self, config: &str) {
        std::fs::write(self.dir().join("prometheus.yml"), config).expect("write prometheus.yml");
    }

    /// Rewrites `rules.yml`; takes effect on [`Prometheus::reload`].
    ///
    /// # Panics
    ///
    /// When the file cannot be written.
    pub fn write_rules(&self, rules: &str) {
        std::fs::write(self.dir().join("rules.yml"), rules).expect("write rules.yml");
    }

    /// `POST /-/reload`: Prometheus rereads both files before it answers.
    ///
    /// # Panics
    ///
    /// When the reload is refused (a file that does not parse), with
    /// Prometheus's answer.
    pub async fn reload(&self) {
        let port = self.0.port;
        let (status, body) = server::blocking(move || request(port, "POST", "/-/reload"))
            .await
            .unwrap_or_else(|e| panic!("cannot reach Prometheus on port {port}: {e}"));
        assert_eq!(status, 200, "Prometheus refused the reload: {body}");
    }

    /// Prometheus's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        server::read_log(&self.0.log)
    }
}

impl Alertmanager {
    /// A configuration that routes every alert to a receiver that sends
    /// nothing.
    pub const NULL_RECEIVER: &'static str = "route: {receiver: \"null\"}\nreceivers: [{name: \"null\"}]\n";

    /// Starts Alertmanager with `config` as `alertmanager.yml` (see
    /// [`Alertmanager::NULL_RECEIVER`]) and waits until it is ready; `None`
    /// after one skip line when it is not installed (at
    /// `/usr/bin/prometheus-alertmanager`, or `alertmanager` in `PATH`).
    ///
    /// # Panics
    ///
    /// As [`Prometheus::start`].
    pub async fn start(config: &str) -> Option<Alertmanager> {
        let candidates = [PathBuf::from(ALERTMANAGER)];
        let Some(program) = server::find_program(candidates, "alertmanager") else {
            return crate::skip("Alertmanager", &format!("prometheus-alertmanager (not at {ALERTMANAGER} or in PATH)"));
        };
        let config = config.to_owned();
        let running = server::blocking(move || {
            start_blocking("Alertmanager", "spark-alertmanager-", |dir, port| {
                std::fs::write(dir.join("alertmanager.yml"), &config).expect("write alertmanager.yml");
                let mut command = Command::new(&program);
                command
                    .arg(format!("--config.file={}", dir.join("alertmanager.yml").display()))
                    .arg(format!("--storage.path={}", dir.join("data").display()))
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                    // No gossip: it would listen on 0.0.0.0:9094, shared by
                    // every test.
                    .arg("--cluster.listen-address=");
                command
            })
        })
        .await;
        Some(Alertmanager(running))
    }

    /// `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.0.port)
    }

    /// The TCP port on `127.0.0.1`.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// Alertmanager's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        server::read_log(&self.0.log)
    }
}

/// Starts `command(dir, port)` with its output in `dir/server.log` until it
/// answers `/-/ready`, retrying on another port when the port was taken.
fn start_blocking(name: &str, prefix: &str, command: impl Fn(&Path, u16) -> Command) -> Running {
    for attempt in 1.. {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().expect("temporary directory");
        let log = dir.path().join("server.log");
        let port = server::free_port();
        let out = std::fs::File::create(&log).expect("create the server log");
        let err = out.try_clone().expect("clone the server log handle");
        let mut cmd = command(dir.path(), port);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
        let mut running = Running { port, child, log: log.clone(), dir };
        match wait_until_ready(&mut running.child, port) {
            Ok(()) => return running,
            Err(why) => {
                let text = server::read_log(&log);
                let _ = running.child.kill();
                let _ = running.child.wait();
                if attempt < 3 && (server::port_was_taken(&text) || text.contains("address already in use")) {
                    continue;
                }
                panic!("{name} did not start: {why}\n--- last lines of its log ---\n{}", server::tail(&text, 30));
            }
        }
    }
    unreachable!("the start loop either returns or panics")
}

fn wait_until_ready(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("cannot watch the process: {e}"))? {
            return Err(format!("it exited ({status})"));
        }
        // 200 only from the process that was started on this port: another
        // program that took the port would not speak this endpoint.
        if matches!(request(port, "GET", "/-/ready"), Ok((200, _))) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("it was not ready on port {port} within {READY_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One plain HTTP/1.1 request without a body: the status and the body.
fn request(port: u16, method: &str, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {response:?}"))?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok((status, body))
}
