//! The PostgreSQL programs a drill runs: where they are, and running the
//! server ones as the `postgres` OS user when we are root (`initdb`,
//! `pg_ctl` and `postgres` refuse to run as root).

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::error::{ChaosError, io};

/// Where Debian and Ubuntu install the server binaries, one directory per
/// major version.
const DEBIAN_LIB: &str = "/usr/lib/postgresql";

/// The OS user the server runs as when we are root.
pub(crate) const SERVER_USER: &str = "postgres";

/// A directory of PostgreSQL programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBin {
    dir: PathBuf,
}

impl PgBin {
    /// The programs in `dir`.
    #[must_use]
    pub fn at(dir: impl Into<PathBuf>) -> PgBin {
        PgBin { dir: dir.into() }
    }

    /// The newest `/usr/lib/postgresql/<major>/bin` holding `pg_ctl`, else
    /// the directory of `pg_ctl` on `PATH`.
    ///
    /// # Errors
    /// [`ChaosError::MissingProgram`] when there is neither.
    pub fn find() -> Result<PgBin, ChaosError> {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(DEBIAN_LIB)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .filter(|(_, bin)| bin.join("pg_ctl").is_file())
            .collect();
        versions.sort();
        if let Some((_, dir)) = versions.pop() {
            return Ok(PgBin { dir });
        }
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .find(|dir| dir.join("pg_ctl").is_file())
            .map(|dir| PgBin { dir })
            .ok_or_else(|| ChaosError::MissingProgram {
                program: "pg_ctl".to_owned(),
                looked: format!("{DEBIAN_LIB}/*/bin and PATH"),
            })
    }

    /// The programs of the PostgreSQL major version a data directory (or a
    /// base backup) was made by, from its `PG_VERSION`:
    /// `/usr/lib/postgresql/<major>/bin` when it is there, else as
    /// [`PgBin::find`].
    ///
    /// # Errors
    /// [`ChaosError::Io`] when `PG_VERSION` cannot be read,
    /// [`ChaosError::MissingProgram`] as [`PgBin::find`].
    pub fn for_data_dir(data: &Path) -> Result<PgBin, ChaosError> {
        let path = data.join("PG_VERSION");
        let major = std::fs::read_to_string(&path).map_err(io(&path))?;
        let dir = Path::new(DEBIAN_LIB).join(major.trim()).join("bin");
        if major.trim().chars().all(|c| c.is_ascii_digit()) && dir.join("pg_ctl").is_file() {
            return Ok(PgBin { dir });
        }
        PgBin::find()
    }

    /// The major version of these programs (`15`), from `pg_ctl --version`.
    ///
    /// # Errors
    /// [`ChaosError::MissingProgram`], [`ChaosError::Program`].
    pub fn major_version(&self) -> Result<String, ChaosError> {
        let mut command = self.client("pg_ctl")?;
        command.arg("--version");
        let output = run(command, "pg_ctl --version")?;
        let text = String::from_utf8_lossy(&output.stdout);
        // "pg_ctl (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)"
        text.split(") ")
            .nth(1)
            .and_then(|v| v.split(['.', ' ']).next())
            .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()))
            .map(str::to_owned)
            .ok_or_else(|| ChaosError::Program {
                program: "pg_ctl --version".to_owned(),
                status: "0".to_owned(),
                output: format!("no version in {:?}", text.trim()),
            })
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of `program`, which must exist.
    pub(crate) fn program(&self, program: &str) -> Result<PathBuf, ChaosError> {
        let path = self.dir.join(program);
        if path.is_file() {
            Ok(path)
        } else {
            Err(ChaosError::MissingProgram { program: program.to_owned(), looked: self.dir.display().to_string() })
        }
    }

    /// `program` run as ourselves (a client program such as
    /// `pg_basebackup`).
    pub(crate) fn client(&self, program: &str) -> Result<Command, ChaosError> {
        Ok(Command::new(self.program(program)?))
    }

    /// `program` run as [`SERVER_USER`] when we are root.
    pub(crate) fn server(&self, program: &str) -> Result<Command, ChaosError> {
        Ok(as_server_user(self.program(program)?))
    }
}

/// A command that runs `program` as [`SERVER_USER`] when we are root, and as
/// ourselves otherwise.
pub(crate) fn as_server_user(program: impl AsRef<OsStr>) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", SERVER_USER, "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Whether this process runs as root: the owner of a file it creates is its
/// effective user, which needs neither `libc` nor `unsafe`.
pub(crate) fn is_root() -> bool {
    tempfile::tempfile().and_then(|f| f.metadata()).is_ok_and(|m| m.uid() == 0)
}

/// Hands `path` (recursively) to [`SERVER_USER`] when we are root.
pub(crate) fn give_to_server_user(path: &Path) -> Result<(), ChaosError> {
    if !is_root() {
        return Ok(());
    }
    let mut chown = Command::new("chown");
    chown.arg("-R").arg(format!("{SERVER_USER}:")).arg(path);
    run(chown, "chown").map(drop)
}

/// Runs `command` to completion with no input; its output, or
/// [`ChaosError::Program`] with the end of what it printed.
pub(crate) fn run(mut command: Command, name: &str) -> Result<Output, ChaosError> {
    let output = command.stdin(Stdio::null()).output().map_err(io(name))?;
    if output.status.success() {
        return Ok(output);
    }
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    Err(ChaosError::Program { program: name.to_owned(), status: output.status.to_string(), output: tail(&text, 10) })
}

/// The last `lines` lines of `text`, trimmed.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> Result<u16, ChaosError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(io("127.0.0.1:0"))?;
    Ok(listener.local_addr().map_err(io("127.0.0.1:0"))?.port())
}

/// `pg_ctl stop -m MODE` on `data`, waiting; a server that is not running
/// is stopped.
pub(crate) fn pg_ctl_stop(bin: &PgBin, data: &Path, mode: &str) -> Result<(), String> {
    if !data.join("postmaster.pid").exists() {
        return Ok(());
    }
    let mut command = bin.server("pg_ctl").map_err(|e| e.to_string())?;
    command.arg("stop").arg("-D").arg(data).args(["-m", mode, "-w", "-t", "30", "-s"]);
    command.stdout(Stdio::null()).stderr(Stdio::null());
    match command.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("pg_ctl stop -m {mode} failed ({s}); the server in {} may still run", data.display())),
        Err(e) => Err(format!("cannot run pg_ctl stop: {e}")),
    }
}

/// Runs blocking work (processes, file copies) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
