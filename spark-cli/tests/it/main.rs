//! The real `spark` binary: output and exit codes.

mod canary;
mod chaos;
mod check;
mod contract;
mod db;
mod demo;
mod evidence;
mod incident;
mod money;
mod outbox;
mod release;
mod restore;
mod rollback;
mod rules;
mod supply_chain;
mod watch;

use std::process::Command;

/// What one run of `spark` printed and how it exited.
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    /// Parses stdout as one JSON object.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

pub(crate) fn spark(args: &[&str]) -> Run {
    spark_with(args, None, &[])
}

/// Runs `spark` in `dir` (if given) with extra environment variables;
/// `SPARK_DATABASE_URL` is cleared unless given.
pub(crate) fn spark_with(args: &[&str], dir: Option<&std::path::Path>, env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spark"));
    cmd.args(args).env_remove("SPARK_DATABASE_URL").envs(env.iter().copied());
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd.output().expect("run spark");
    Run {
        code: out.status.code().expect("spark exited by signal"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    for args in [&["bogus"][..], &["money", "align", "1"], &["money", "round", "1", "--dp", "x"], &["--json"]] {
        let run = spark(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        if !run.stderr.starts_with("Usage") {
            assert_eq!(run.stderr.trim_end().lines().count(), 1, "{args:?}: {}", run.stderr);
            assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
        }
    }
}

#[test]
fn help_and_version_exit_0() {
    let run = spark(&["--help"]);
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("money"));
    let run = spark(&["--version"]);
    assert_eq!(run.code, 0);
    assert!(run.stdout.starts_with("spark "));
}
