//! Printing results as text or JSON, and the exit-code contract.

use std::process::ExitCode;

use serde::Serialize;

/// Why a command did not succeed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A check or decision said no; the command already printed why. Exit 1.
    No,
    /// Bad usage or input. Exit 2 with the message on one line.
    Input(anyhow::Error),
    /// A canary decision is inconclusive (hold); the command already printed
    /// why. Exit 3.
    Hold,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(err: E) -> Self {
        Failure::Input(err.into())
    }
}

pub(crate) type CmdResult = Result<(), Failure>;

/// Where results go: text lines or one JSON object on stdout.
pub(crate) struct Output {
    json: bool,
}

impl Output {
    pub(crate) fn new(json: bool) -> Self {
        Output { json }
    }

    /// Whether output is JSON (progress then stays off stdout and stderr).
    pub(crate) fn is_json(&self) -> bool {
        self.json
    }

    /// Prints `value` as JSON, or `text` otherwise.
    pub(crate) fn emit<T: Serialize>(&self, value: &T, text: impl FnOnce() -> String) -> CmdResult {
        if self.json {
            print_line(&serde_json::to_string(value)?)?;
        } else {
            print_line(&text())?;
        }
        Ok(())
    }

    /// Reports a "no" decision, exit 1: JSON on stdout, or the text on
    /// stdout when it is the command's report (`validate`) and on stderr when
    /// it explains a refusal (`align --mode reject`).
    pub(crate) fn refuse<T: Serialize>(&self, value: &T, text: &str, report: bool) -> CmdResult {
        if self.json {
            print_line(&serde_json::to_string(value)?)?;
        } else if report {
            print_line(text)?;
        } else {
            eprintln!("{text}");
        }
        Err(Failure::No)
    }
}

/// Writes `text` and a newline to stdout. A reader that closed the pipe
/// (`spark canary plan | head`) wants no more: that is not an error, and
/// `println!` would panic on it.
pub(crate) fn print_line(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Collapses a message onto one line.
pub(crate) fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Prints a clap error: help and version as clap renders them (exit 0), any
/// usage error as one line on stderr (exit 2).
pub(crate) fn usage_error(err: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            // clap renders the message, then a blank line, the usage and a
            // hint; keep the message (which may span lines) and drop the rest.
            let rendered = err.render().to_string();
            let message = rendered.split("\n\n").next().unwrap_or("invalid usage");
            let message = message.trim().strip_prefix("error:").unwrap_or(message);
            eprintln!("error: {} (see --help)", one_line(message));
            ExitCode::from(2)
        }
    }
}

/// Writes a new file holding `bytes`; never overwrites one (a report or
/// note someone may have edited).
pub(crate) fn write_new(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {} (it is never overwritten)", path.display()))?;
    std::io::Write::write_all(&mut file, bytes).with_context(|| format!("cannot write {}", path.display()))
}
