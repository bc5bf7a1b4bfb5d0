//! What starting a real server process for a test needs from the operating
//! system: the user it runs as, a free loopback port, a program on disk, and
//! the tail of its log for a failure message.

use std::ffi::OsStr;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The OS user PostgreSQL and pgBouncer run as when the tests run as root:
/// both refuse to run as root.
pub(crate) const SERVER_USER: &str = "postgres";

/// Whether this process runs as root. The owner of a file it creates is its
/// effective user, which needs neither `libc` nor `unsafe`.
pub(crate) fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        let file = tempfile::tempfile().expect("temporary file");
        file.metadata().expect("metadata of a temporary file").uid() == 0
    })
}

/// A command that runs `program` as [`SERVER_USER`] when we are root, and as
/// ourselves otherwise.
pub(crate) fn command_as_server_user(program: impl AsRef<OsStr>) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", SERVER_USER, "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Hands `path` (recursively) to [`SERVER_USER`] when we are root, so the
/// server can write its files there.
///
/// # Panics
///
/// When `chown` fails, for example because the user does not exist.
pub(crate) fn give_to_server_user(path: &Path) {
    if !is_root() {
        return;
    }
    let output = Command::new("chown")
        .arg("-R")
        .arg(format!("{SERVER_USER}:"))
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run chown on {}: {e}", path.display()));
    assert!(
        output.status.success(),
        "cannot give {} to the {SERVER_USER} user ({}): {}",
        path.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// A loopback port that was free a moment ago. Another process can take it
/// before the server binds it, so callers retry on "address in use".
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind a free loopback port");
    listener.local_addr().expect("local address of a bound listener").port()
}

/// Whether a server log says the port was taken.
pub(crate) fn port_was_taken(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("could not bind")
}

/// The first of `candidates` that is a file, else `name` found in `PATH`.
pub(crate) fn find_program(candidates: impl IntoIterator<Item = PathBuf>, name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    candidates.into_iter().chain(std::env::split_paths(&path).map(|d| d.join(name))).find(|p| p.is_file())
}

/// The whole file, or an empty string when it cannot be read.
pub(crate) fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The last `lines` lines of a log, for a failure message.
pub(crate) fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs blocking process work off the test's runtime thread, and carries a
/// panic (with its message) back to the test.
pub(crate) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("blocking task did not finish: {e}"),
    }
}
