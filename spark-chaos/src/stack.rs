//! `spark chaos up`: a complete deployment on loopback to break — a private
//! PostgreSQL cluster with WAL archiving, the fault proxy in front of it,
//! pgBouncer in front of the proxy, the order service behind pgBouncer,
//! and a Prometheus scraping the service when one is installed — and the
//! `chaos.toml` describing it.
//!
//! The relay and the webhook sink are not part of the standing deployment:
//! each experiment starts its own from `[relay] command` and its own
//! recording sink, because a relay left running would take the events an
//! experiment counts.
//!
//! pgBouncer runs a *session* pool: Debian 12's pgBouncer 1.18 does not
//! track protocol-level prepared statements, and sqlx prepares every
//! parameterised statement, so a transaction pool mixes clients'
//! statements (measured; `spark check`'s pgbouncer check fails such a URL).
//! With pgBouncer >= 1.21 and `max_prepared_statements` a transaction pool
//! works; `chaos.toml` can describe one.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::deployment::{
    DatabaseSection, Deployment, PgbouncerSection, PrometheusSection, ProxySection, RelaySection, ServiceSection,
};
use crate::error::{ChaosError, io};
use crate::pg::{self, PgBin};
use crate::proxy::{FaultProxy, ProxyClient};

/// Where Debian installs pgBouncer and Prometheus.
const PGBOUNCER: &str = "/usr/sbin/pgbouncer";
const PROMETHEUS: &str = "/usr/bin/prometheus";

/// The database the service and the experiments use (and `CREATE
/// DATABASE chaos` below).
const DATABASE: &str = "chaos";

/// pgBouncer's server connections per pool: the service's own pool (16)
/// plus room for the experiments' probes.
const POOL_SIZE: u32 = 20;

/// The file `up` writes last, once everything answers.
pub const CHAOS_TOML: &str = "chaos.toml";
/// The supervisor's process id, for `down`.
pub const PID_FILE: &str = "up.pid";
/// The process ids of the parts (`name pid start-time` per line), for
/// `down` when the supervisor is gone.
const PARTS_FILE: &str = "parts.pid";
/// Marks a directory `up` made a deployment in: only there does a later
/// `up` replace `pg/`, `pgbouncer/` and `prometheus/`.
const MARKER: &str = ".spark-chaos";
/// The files that say a deployment runs here: removed once nothing of it
/// does, so a later `up` may start.
const RUN_FILES: [&str; 3] = [PID_FILE, PARTS_FILE, CHAOS_TOML];

/// What `spark chaos up` needs.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// The directory for the cluster, the logs and `chaos.toml`; created
    /// when missing. A deployment stopped there earlier is replaced; a
    /// running one is refused.
    pub dir: PathBuf,
    /// The `order-service` program.
    pub order_service: PathBuf,
    /// The `spark` program, for the relay command.
    pub spark: PathBuf,
    /// The PostgreSQL programs.
    pub pg: PgBin,
}

/// A running deployment. Dropping it stops everything at once;
/// [`Stack::down`] stops it gracefully and says what failed.
#[derive(Debug)]
pub struct Stack {
    deployment: Deployment,
    dir: PathBuf,
    pg: PgBin,
    children: Vec<(&'static str, std::process::Child)>,
    proxy: Option<FaultProxy>,
    pg_running: bool,
}

impl Stack {
    /// Starts the deployment in `options.dir` and writes its `chaos.toml`
    /// there, last. Everything binds to 127.0.0.1 on free ports.
    ///
    /// # Errors
    /// [`ChaosError::Input`] for a directory that holds a deployment
    /// already, or one the `postgres` user cannot reach when run as root;
    /// [`ChaosError::MissingProgram`] without PostgreSQL or pgBouncer;
    /// [`ChaosError::Program`] when a part does not start, with the end of
    /// its log. What was started is stopped again.
    pub async fn up(options: &StackOptions) -> Result<Stack, ChaosError> {
        let dir = &options.dir;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let dir = dir.canonicalize().map_err(io(dir))?;
        if running(&dir) {
            return Err(ChaosError::Input(format!(
                "{} holds a running deployment: `spark chaos down --dir {0}` stops it",
                dir.display()
            )));
        }
        // A stopped deployment of ours is replaced, so a weekly run starts
        // afresh; a directory holding these names without our marker is
        // someone else's, and is left alone.
        let ours = ["pg", "pgbouncer", "prometheus", PARTS_FILE, PID_FILE];
        if !dir.join(MARKER).exists()
            && let Some(taken) = ours.iter().find(|p| dir.join(p).exists())
        {
            return Err(ChaosError::Input(format!(
                "{} holds {taken} but was not made by `spark chaos up`: choose an empty or new directory",
                dir.display()
            )));
        }
        for part in ours {
            let path = dir.join(part);
            if path.is_dir() {
                std::fs::remove_dir_all(&path).map_err(io(&path))?;
            } else if path.exists() {
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        std::fs::write(dir.join(MARKER), "made by spark chaos up\n").map_err(io(dir.join(MARKER)))?;
        reachable_by_server_user(&dir)?;
        let mut stack = Stack {
            deployment: Deployment {
                database: DatabaseSection { url: String::new(), stop: vec![], start: vec![] },
                relay: RelaySection { command: vec![] },
                service: None,
                pgbouncer: None,
                proxy: None,
                prometheus: None,
            },
            dir: dir.clone(),
            pg: options.pg.clone(),
            children: Vec::new(),
            proxy: None,
            pg_running: false,
        };
        let me = std::process::id();
        std::fs::write(dir.join(PID_FILE), format!("{me} {}\n", start_time(me).unwrap_or(0)))
            .map_err(io(dir.join(PID_FILE)))?;

        // PostgreSQL, archiving its WAL.
        let pg_port = stack.start_postgres().await?;
        let direct = format!("postgres://postgres@127.0.0.1:{pg_port}/{DATABASE}");
        stack.deployment.database.url.clone_from(&direct);

        // The fault proxy in front of it.
        let proxy = FaultProxy::start("127.0.0.1:0").await?;
        let client = ProxyClient::new(&proxy.api_url())?;
        let info = client.create("postgres", "127.0.0.1:0", &format!("127.0.0.1:{pg_port}")).await?;
        let proxied_port = port_of(&info.listen)?;
        stack.deployment.proxy = Some(ProxySection { api: proxy.api_url(), postgres: "postgres".to_owned() });
        stack.proxy = Some(proxy);

        // pgBouncer in front of the proxy.
        let bouncer_port = stack.start_pgbouncer(proxied_port).await?;
        let pooled = format!("postgres://postgres@127.0.0.1:{bouncer_port}/{DATABASE}");
        stack.deployment.pgbouncer = Some(PgbouncerSection {
            url: pooled.clone(),
            admin_url: format!("postgres://postgres@127.0.0.1:{bouncer_port}/pgbouncer"),
            hold_url: Some(format!("postgres://postgres@127.0.0.1:{bouncer_port}/{DATABASE}_hold")),
            pool_size: POOL_SIZE,
        });

        // The order service behind pgBouncer.
        let service_port = pg::free_port()?;
        let log = dir.join("order-service.log");
        let mut service = std::process::Command::new(&options.order_service);
        service
            .args(["--listen", &format!("127.0.0.1:{service_port}"), "--dev-auth", "header"])
            .args(["--database-url", &pooled, "--listen-url", &direct])
            .env("SPARK_LOG", "warn");
        stack.spawn("order-service", service, &log)?;
        let service_url = format!("http://127.0.0.1:{service_port}");
        stack.wait_http("order-service", &format!("{service_url}/healthz"), &log).await?;
        stack.deployment.service = Some(ServiceSection {
            url: service_url,
            headers: [("X-Client-Id".to_owned(), "chaos".to_owned())].into(),
            account_prefix: "chaos-".to_owned(),
        });

        // The relay command the experiments start.
        stack.deployment.relay.command = [
            options.spark.display().to_string().as_str(),
            "outbox",
            "relay",
            "--sink",
            "webhook",
            "--url",
            "{sink_url}",
            "--database-url",
            "{database_url}",
        ]
        .map(str::to_owned)
        .to_vec();

        // Prometheus, when installed.
        if let Some(program) = find_program(PROMETHEUS, "prometheus") {
            stack.start_prometheus(&program, service_port).await?;
        } else {
            tracing::warn!("Prometheus is not installed: the experiments that read its metrics will say so");
        }
        // Written whole, then renamed: `up_detached` reads it as soon as it
        // appears.
        let (tmp, toml) = (dir.join(".chaos.toml.tmp"), dir.join(CHAOS_TOML));
        std::fs::write(&tmp, stack.deployment.to_toml()).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &toml).map_err(io(&toml))?;
        tracing::info!(dir = %dir.display(), "chaos deployment up");
        Ok(stack)
    }

    /// What `chaos.toml` says.
    #[must_use]
    pub fn deployment(&self) -> &Deployment {
        &self.deployment
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops everything: the service, pgBouncer and Prometheus with SIGTERM
    /// (SIGKILL after 10 s), the proxy, then PostgreSQL (fast). Removes
    /// `chaos.toml` and the pid file; keeps the logs and the cluster.
    ///
    /// # Errors
    /// [`ChaosError::Program`] naming each part that did not stop cleanly.
    pub async fn down(mut self) -> Result<(), ChaosError> {
        let mut failed = Vec::new();
        let children = std::mem::take(&mut self.children);
        for (name, mut child) in children.into_iter().rev() {
            if let Err(e) = stop_child(&mut child).await {
                failed.push(format!("{name}: {e}"));
            }
        }
        if let Some(proxy) = self.proxy.take() {
            proxy.shutdown().await;
        }
        let (bin, data) = (self.pg.clone(), self.dir.join("pg/data"));
        match tokio::task::spawn_blocking(move || pg::pg_ctl_stop(&bin, &data, "fast")).await {
            Ok(Ok(())) => self.pg_running = false,
            Ok(Err(e)) => failed.push(e),
            Err(e) => failed.push(e.to_string()),
        }
        let _ = std::fs::remove_file(self.dir.join(CHAOS_TOML));
        let _ = std::fs::remove_file(self.dir.join(PID_FILE));
        let _ = std::fs::remove_file(self.dir.join(PARTS_FILE));
        if failed.is_empty() {
            return Ok(());
        }
        Err(ChaosError::Program {
            program: "spark chaos down".to_owned(),
            status: "1".to_owned(),
            output: failed.join("; "),
        })
    }

    /// initdb, the settings, `pg_ctl start`, the database; its port.
    async fn start_postgres(&mut self) -> Result<u16, ChaosError> {
        let root = self.dir.join("pg");
        let (data, archive, sockets) = (root.join("data"), root.join("wal-archive"), root.join("sockets"));
        for d in [&root, &archive, &sockets] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        pg::give_to_server_user(&root)?;
        let mut initdb = self.pg.server("initdb")?;
        initdb.arg("-D").arg(&data).args(["--auth=trust", "--username=postgres", "--encoding=UTF8", "--locale=C"]);
        pg::blocking(move || pg::run(initdb, "initdb")).await?;
        let port = pg::free_port()?;
        // The archive command never overwrites a segment: a second copy
        // would hide a gap the restore drill must find.
        let settings = format!(
            "\n# spark chaos up\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             wal_level = replica\narchive_mode = on\narchive_command = 'test ! -f {1}/%f && cp %p {1}/%f'\n\
             max_connections = 200\n",
            sockets.display(),
            archive.display()
        );
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).map_err(io(&conf))?;
        text.push_str(&settings);
        std::fs::write(&conf, text).map_err(io(&conf))?;
        let log = root.join("server.log");
        let start = self.pg_ctl_argv("start", &data, &log);
        let stop = self.pg_ctl_argv("stop", &data, &log);
        self.pg_running = true;
        run_argv(&start, "pg_ctl start").await?;
        self.deployment.database.start = start;
        self.deployment.database.stop = stop;
        let admin = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let pool =
            sqlx::PgPool::connect(&admin).await.map_err(|e| ChaosError::Input(format!("the new cluster: {e}")))?;
        sqlx::raw_sql("CREATE DATABASE chaos")
            .execute(&pool)
            .await
            .map_err(|e| ChaosError::Input(format!("CREATE DATABASE {DATABASE}: {e}")))?;
        pool.close().await;
        Ok(port)
    }

    /// The argv of `pg_ctl start|stop` for this cluster, as the server user.
    fn pg_ctl_argv(&self, action: &str, data: &Path, log: &Path) -> Vec<String> {
        let mut argv = Vec::new();
        if pg::is_root() {
            argv.extend(["runuser", "-u", pg::SERVER_USER, "--"].map(str::to_owned));
        }
        argv.push(self.pg.dir().join("pg_ctl").display().to_string());
        argv.extend([action.to_owned(), "-D".to_owned(), data.display().to_string()]);
        if action == "start" {
            argv.extend(["-l".to_owned(), log.display().to_string()]);
        } else {
            argv.extend(["-m".to_owned(), "fast".to_owned()]);
        }
        argv.extend(["-w", "-t", "60", "-s"].map(str::to_owned));
        argv
    }

    /// pgBouncer in session mode in front of `upstream_port`; its port.
    async fn start_pgbouncer(&mut self, upstream_port: u16) -> Result<u16, ChaosError> {
        let program = find_program(PGBOUNCER, "pgbouncer").ok_or_else(|| ChaosError::MissingProgram {
            program: "pgbouncer".to_owned(),
            looked: format!("{PGBOUNCER} and PATH (Debian: apt-get install pgbouncer)"),
        })?;
        let root = self.dir.join("pgbouncer");
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        let (ini, users, log) = (root.join("pgbouncer.ini"), root.join("userlist.txt"), root.join("pgbouncer.log"));
        std::fs::write(&users, "\"postgres\" \"\"\n").map_err(io(&users))?;
        let port = pg::free_port()?;
        // server_login_retry 1: after a database restart pgBouncer tries
        // again within a second, not the default 15. query_wait_timeout 2:
        // a client waiting for a server connection is refused after 2 s
        // instead of 120, so the service can answer 503 quickly.
        // `chaos_hold` is a second pool on the same database and user: with
        // max_user_connections equal to the pool size, a client holding
        // its server connections takes them from the service's pool, which
        // is how pool-exhaustion exhausts it. No forced `user=` on these
        // two: a forced user gets a limit of its own, not the client's.
        let text = format!(
            "[databases]\n{DATABASE} = host=127.0.0.1 port={upstream_port} dbname={DATABASE}\n\
             {DATABASE}_hold = host=127.0.0.1 port={upstream_port} dbname={DATABASE}\n\
             * = host=127.0.0.1 port={upstream_port} user=postgres\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = trust\n\
             auth_file = {}\nadmin_users = postgres\npool_mode = session\ndefault_pool_size = {POOL_SIZE}\n\
             max_client_conn = 500\nmax_user_connections = {POOL_SIZE}\nserver_login_retry = 1\nquery_wait_timeout = 2\n\
             ignore_startup_parameters = extra_float_digits\nlogfile = {}\n",
            users.display(),
            log.display()
        );
        std::fs::write(&ini, text).map_err(io(&ini))?;
        pg::give_to_server_user(&root)?;
        let mut command = std::process::Command::new(program);
        if pg::is_root() {
            command.args(["-u", pg::SERVER_USER]);
        }
        command.arg(&ini);
        self.spawn("pgbouncer", command, &root.join("stderr.log"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            let exited = self.children.iter_mut().any(|(n, c)| *n == "pgbouncer" && !matches!(c.try_wait(), Ok(None)));
            if exited || Instant::now() > deadline {
                return Err(self.failed("pgbouncer", &log));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(port)
    }

    /// Prometheus scraping the service every second.
    async fn start_prometheus(&mut self, program: &Path, service_port: u16) -> Result<(), ChaosError> {
        let root = self.dir.join("prometheus");
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: order-service\n    \
             static_configs:\n      - targets: ['127.0.0.1:{service_port}']\n        labels:\n          role: canary\n"
        );
        std::fs::write(root.join("prometheus.yml"), config).map_err(io(root.join("prometheus.yml")))?;
        let port = pg::free_port()?;
        let mut command = std::process::Command::new(program);
        command
            .arg(format!("--config.file={}", root.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", root.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let log = root.join("prometheus.log");
        self.spawn("prometheus", command, &log)?;
        let url = format!("http://127.0.0.1:{port}");
        self.wait_http("prometheus", &format!("{url}/-/ready"), &log).await?;
        self.deployment.prometheus = Some(PrometheusSection { url, scrape_seconds: 1 });
        Ok(())
    }

    /// Starts `command` in a process group of its own, output to `log`.
    fn spawn(&mut self, name: &'static str, mut command: std::process::Command, log: &Path) -> Result<(), ChaosError> {
        use std::os::unix::process::CommandExt as _;
        let out = std::fs::File::create(log).map_err(io(log))?;
        let err = out.try_clone().map_err(io(log))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(io(PathBuf::from(command.get_program())))?;
        // Recorded before anything else can fail: `down` finds it even when
        // the supervisor died.
        let parts = self.dir.join(PARTS_FILE);
        let line = format!("{name} {} {}\n", child.id(), start_time(child.id()).unwrap_or(0));
        let recorded = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&parts)
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
        self.children.push((name, child));
        recorded.map_err(io(parts))
    }

    /// Waits up to 20 s for `url` to answer 200.
    async fn wait_http(&mut self, name: &'static str, url: &str, log: &Path) -> Result<(), ChaosError> {
        let http = crate::http::client(Duration::from_secs(2))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if http.get(url).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            let exited = self.children.iter_mut().any(|(n, c)| *n == name && !matches!(c.try_wait(), Ok(None)));
            if exited || Instant::now() > deadline {
                return Err(self.failed(name, log));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn failed(&self, name: &str, log: &Path) -> ChaosError {
        ChaosError::Program {
            program: name.to_owned(),
            status: "did not start".to_owned(),
            output: pg::tail(&std::fs::read_to_string(log).unwrap_or_default(), 15),
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            if matches!(child.try_wait(), Ok(None)) {
                signal_group(child.id(), "KILL");
                let _ = child.wait();
            }
        }
        if self.pg_running {
            let _ = pg::pg_ctl_stop(&self.pg, &self.dir.join("pg/data"), "immediate");
        }
        // Nothing of this deployment runs any more: a later `up` may start.
        for file in RUN_FILES {
            let _ = std::fs::remove_file(self.dir.join(file));
        }
    }
}

/// SIGTERM to the child's group, SIGKILL after 10 s.
async fn stop_child(child: &mut std::process::Child) -> Result<(), String> {
    if !matches!(child.try_wait(), Ok(None)) {
        return Ok(());
    }
    signal_group(child.id(), "TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal_group(child.id(), "KILL");
    let _ = child.wait();
    Err("did not stop within 10 s of SIGTERM; killed".to_owned())
}

/// Sends `signal` to process group `pgid`.
pub(crate) fn signal_group(pgid: u32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .args([format!("-{signal}"), "--".to_owned(), format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs an argv to completion, for at most two minutes. Its output goes to
/// a file, not a pipe: a server it starts in the background would hold a
/// pipe open, and the wait would never end.
pub(crate) async fn run_argv(argv: &[String], name: &str) -> Result<(), ChaosError> {
    let (program, args) = argv.split_first().ok_or_else(|| ChaosError::Input(format!("{name}: empty command")))?;
    let log = tempfile::NamedTempFile::new().map_err(io("temporary file"))?;
    let out = log.reopen().map_err(io(log.path()))?;
    let err = log.reopen().map_err(io(log.path()))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(io(PathBuf::from(program)))?;
    let status = match tokio::time::timeout(Duration::from_secs(120), child.wait()).await {
        Ok(status) => status.map_err(io(PathBuf::from(program)))?,
        Err(_) => {
            let _ = child.kill().await;
            return Err(ChaosError::Program {
                program: name.to_owned(),
                status: "still running after 120 s; killed".to_owned(),
                output: pg::tail(&std::fs::read_to_string(log.path()).unwrap_or_default(), 10),
            });
        }
    };
    if status.success() {
        return Ok(());
    }
    Err(ChaosError::Program {
        program: name.to_owned(),
        status: status.to_string(),
        output: pg::tail(&std::fs::read_to_string(log.path()).unwrap_or_default(), 10),
    })
}

/// `program` at its Debian path, else on `PATH`.
pub(crate) fn find_program(debian: &str, name: &str) -> Option<PathBuf> {
    let path = PathBuf::from(debian);
    if path.is_file() {
        return Some(path);
    }
    std::env::var_os("PATH").iter().flat_map(std::env::split_paths).map(|d| d.join(name)).find(|p| p.is_file())
}

/// The port of `host:port`.
fn port_of(listen: &str) -> Result<u16, ChaosError> {
    listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| ChaosError::Input(format!("the proxy listens on {listen:?}, not host:port")))
}

/// As root the server runs as `postgres`, which must be able to reach
/// `dir`: every ancestor searchable by others.
fn reachable_by_server_user(dir: &Path) -> Result<(), ChaosError> {
    use std::os::unix::fs::PermissionsExt as _;
    if !pg::is_root() {
        return Ok(());
    }
    for ancestor in dir.ancestors().skip(1) {
        let mode = std::fs::metadata(ancestor).map_err(io(ancestor))?.permissions().mode();
        if mode & 0o001 == 0 {
            return Err(ChaosError::Input(format!(
                "{} is not searchable by others, so the `postgres` user cannot reach {}: choose a directory under a \
                 world-searchable path (chmod o+x {0})",
                ancestor.display(),
                dir.display()
            )));
        }
    }
    let mode = std::fs::metadata(dir).map_err(io(dir))?.permissions().mode();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o711)).map_err(io(dir))
}

/// `spark chaos down`: stops the deployment in `dir` — its supervisor
/// (SIGTERM, SIGKILL after 45 s), every part it recorded that is still the
/// very process it started (pid and start time: a pid reused after a
/// reboot is left alone), and its PostgreSQL — and removes `up.pid`,
/// `parts.pid` and `chaos.toml`. Whether anything was running; stopping a
/// stopped deployment succeeds (a scheduler's cleanup step may run after
/// the supervisor has stopped itself).
///
/// # Errors
/// [`ChaosError::Program`] when PostgreSQL would not stop.
pub async fn down(dir: &Path, pg: &PgBin) -> Result<bool, ChaosError> {
    let data = dir.join("pg/data");
    let was_running = running(dir);
    if let Some((pid, started)) = recorded(&dir.join(PID_FILE)).first().map(|(_, p, t)| (*p, *t)) {
        // The supervisor alone: it stops its parts itself.
        let term = || {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        };
        stop(pid, started, Duration::from_secs(45), term).await;
    }
    // Whatever the supervisor left (it died, or did not stop a part in
    // time): each part leads its own process group, and is signalled only
    // while it is the very process recorded (pid and start time).
    for (_, pid, started) in recorded(&dir.join(PARTS_FILE)) {
        stop(pid, started, Duration::from_secs(10), || {
            signal_group(pid, "TERM");
        })
        .await;
    }
    if postmaster_alive(&data) {
        let (bin, d) = (pg.clone(), data.clone());
        pg::blocking(move || pg::pg_ctl_stop(&bin, &d, "fast")).await.map_err(|e| ChaosError::Program {
            program: "pg_ctl stop".to_owned(),
            status: "1".to_owned(),
            output: e,
        })?;
    }
    for file in RUN_FILES {
        let _ = std::fs::remove_file(dir.join(file));
    }
    Ok(was_running)
}

/// Stops the process `pid` while it is the very one recorded (its start
/// time): `term`, then SIGKILL to its group after `grace`.
async fn stop(pid: u32, started: u64, grace: Duration, term: impl FnOnce()) {
    if !same_process(pid, started) {
        return;
    }
    term();
    let deadline = Instant::now() + grace;
    while same_process(pid, started) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if same_process(pid, started) {
        signal_group(pid, "KILL");
    }
}

/// Whether a deployment runs in `dir`: its supervisor, a part, or its
/// PostgreSQL.
fn running(dir: &Path) -> bool {
    recorded(&dir.join(PID_FILE)).iter().chain(&recorded(&dir.join(PARTS_FILE))).any(|(_, p, t)| same_process(*p, *t))
        || postmaster_alive(&dir.join("pg/data"))
}

/// Whether the postmaster of `data` runs: its `postmaster.pid` names a
/// live process (a stale file after a reboot does not count).
fn postmaster_alive(data: &Path) -> bool {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid))
}

/// The processes recorded in a pid file: `pid start` (the supervisor) or
/// `name pid start` (the parts) per line.
fn recorded(file: &Path) -> Vec<(String, u32, u64)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let (name, pid, start) = match words.as_slice() {
                [pid, start] => ("up", pid, start),
                [name, pid, start] => (*name, pid, start),
                _ => return None,
            };
            Some((name.to_owned(), pid.parse().ok()?, start.parse().ok()?))
        })
        .collect()
}

/// A process's start time in clock ticks after boot (`/proc/PID/stat`
/// field 22): with the pid, it names one process, never a later one that
/// reused the pid.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which may hold spaces, in parentheses.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is still the process that started at `started`, alive.
fn same_process(pid: u32, started: u64) -> bool {
    started != 0 && start_time(pid) == Some(started) && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// `spark chaos up` without `--foreground`: starts `argv` (the same
/// command with `--foreground`) detached, its output in `dir/up.log`, and
/// waits until it has written `chaos.toml` (at most `timeout`). The
/// deployment keeps running after this returns; `down` stops it.
///
/// # Errors
/// [`ChaosError::Program`] with the end of `up.log` when the supervisor
/// exits or is not ready in time.
pub async fn up_detached(argv: &[String], dir: &Path, timeout: Duration) -> Result<Deployment, ChaosError> {
    use std::os::unix::process::CommandExt as _;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let toml = dir.join(CHAOS_TOML);
    if running(dir) {
        return Err(ChaosError::Input(format!(
            "a deployment is up in {0}: `spark chaos down --dir {0}` stops it",
            dir.display()
        )));
    }
    // What a deployment that died left: it would be read as this one's.
    let _ = std::fs::remove_file(&toml);
    let (program, args) = argv.split_first().ok_or_else(|| ChaosError::Input("empty command".to_owned()))?;
    let log = dir.join("up.log");
    let out = std::fs::File::create(&log).map_err(io(&log))?;
    let err = out.try_clone().map_err(io(&log))?;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(io(PathBuf::from(program)))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(ChaosError::Program {
                program: "spark chaos up".to_owned(),
                status: status.to_string(),
                output: pg::tail(&std::fs::read_to_string(&log).unwrap_or_default(), 15),
            });
        }
        if toml.exists() {
            return Deployment::load(&toml);
        }
        if Instant::now() > deadline {
            signal_group(child.id(), "TERM");
            return Err(ChaosError::Program {
                program: "spark chaos up".to_owned(),
                status: format!("not up within {} s", timeout.as_secs()),
                output: pg::tail(&std::fs::read_to_string(&log).unwrap_or_default(), 15),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_is_the_recorded_process_only_with_its_start_time() {
        let me = std::process::id();
        let started = start_time(me).expect("this process has a start time");
        assert!(same_process(me, started));
        assert!(!same_process(me, started + 1), "a reused pid starts at another time");
        assert!(!same_process(me, 0), "an unknown start time never matches");
    }

    #[test]
    fn pid_files_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("parts.pid");
        std::fs::write(&file, "pgbouncer 12 345\norder-service 13 346\ngarbage\n").unwrap();
        assert_eq!(recorded(&file), [("pgbouncer".to_owned(), 12, 345), ("order-service".to_owned(), 13, 346)]);
        std::fs::write(&file, "77 99\n").unwrap();
        assert_eq!(recorded(&file), [("up".to_owned(), 77, 99)]);
    }

    /// What a deployment that died (or a reboot) left: down cleans it up and
    /// succeeds, saying nothing ran, and signals no process.
    #[tokio::test]
    async fn down_cleans_what_a_dead_deployment_left() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let me = std::process::id();
        // This very pid, but with another start time: a reused pid.
        let other = start_time(me).unwrap() + 1;
        std::fs::write(dir.join(PID_FILE), format!("{me} {other}\n")).unwrap();
        std::fs::write(dir.join(PARTS_FILE), format!("order-service {me} {other}\n")).unwrap();
        std::fs::write(dir.join(CHAOS_TOML), "stale").unwrap();
        std::fs::create_dir_all(dir.join("pg/data")).unwrap();
        // A postmaster.pid naming a process that is gone.
        std::fs::write(dir.join("pg/data/postmaster.pid"), "4194304\n").unwrap();
        assert!(!running(dir));
        let was_running = down(dir, &PgBin::at("/nonexistent")).await.unwrap();
        assert!(!was_running);
        for file in RUN_FILES {
            assert!(!dir.join(file).exists(), "{file} left behind");
        }
    }
}
