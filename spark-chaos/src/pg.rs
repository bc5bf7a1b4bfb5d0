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
