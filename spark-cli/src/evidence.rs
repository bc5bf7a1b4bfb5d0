//! `spark keygen` and `spark evidence seal|verify`: signed, verifiable
//! evidence bundles.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;
use spark_evidence::keys;

use crate::output::{CmdResult, Output};

#[derive(Debug, Args)]
pub(crate) struct KeygenArgs {
    /// Where to write the private key (hex seed, mode 0600); the public key
    /// goes to the same path with `.pub` appended. Neither may exist.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum EvidenceCommand {
    /// Write `manifest.json` into a directory: an in-toto statement of every
    /// file's SHA-256 in a DSSE envelope, signed when `--sign-key` is given.
    Seal(SealArgs),
    /// Check a directory against its `manifest.json`: every modified,
    /// missing or added file, and with `--key` a missing or bad signature
    /// (exit 0 intact, 1 a problem, one line each, 2 bad input). Without
    /// `--key` signatures are not checked; an unsigned bundle is a note.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct SealArgs {
    /// The evidence directory.
    dir: PathBuf,
    /// The private key file from `spark keygen`.
    #[arg(long)]
    sign_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The evidence directory.
    dir: PathBuf,
    /// The public key file (`FILE.pub` from `spark keygen`).
    #[arg(long)]
    key: Option<PathBuf>,
}

pub(crate) fn run_keygen(args: KeygenArgs, out: &Output) -> CmdResult {
    let key = keys::generate()?;
    let public = keys::write_key_pair(&args.out, &key)?;
    let keyid = keys::key_id(&key.verifying_key());
    let summary = json!({"private_key": args.out, "public_key": public, "keyid": keyid});
    out.emit(&summary, || {
        format!("wrote {} (private) and {} (public), keyid {keyid}", args.out.display(), public.display())
    })
}

pub(crate) fn run(cmd: EvidenceCommand, out: &Output) -> CmdResult {
    match cmd {
        EvidenceCommand::Seal(args) => {
            let key = args.sign_key.as_deref().map(keys::load_signing_key).transpose()?;
            let now_ms =
                i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis())?;
            let file = spark_evidence::seal(&args.dir, key.as_ref(), now_ms)?;
            let keyid = key.map(|k| keys::key_id(&k.verifying_key()));
            let summary = json!({"manifest": file.path, "sha256": file.sha256, "keyid": keyid});
            out.emit(&summary, || match &keyid {
                Some(id) => format!("wrote {} signed by keyid {id}", file.path.display()),
                None => format!("wrote {} unsigned", file.path.display()),
            })
        }
        EvidenceCommand::Verify(args) => {
            let key = args.key.as_deref().map(keys::load_verifying_key).transpose()?;
            let report = spark_evidence::verify(&args.dir, key.as_ref())?;
            if report.is_intact() {
                out.emit(&report, || {
                    let n = report.files();
                    let mut text = format!("intact: {n} file{}", if n == 1 { "" } else { "s" });
                    if report.signature_checked() {
                        text.push_str(", signature verified");
                    }
                    if let Some(note) = report.note() {
                        text = format!("{text}\n{note}");
                    }
                    text
                })
            } else {
                out.refuse(&report, &report.to_string(), true)
            }
        }
    }
}
