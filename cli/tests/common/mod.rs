//! Helpers shared by the command tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Output;

/// The repository root (scripts, fixtures, the virtualenv).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Everything a command printed, stdout then stderr.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
