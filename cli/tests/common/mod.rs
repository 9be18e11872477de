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

/// `llamagen --data-dir DIR/data` on the database at `database_url`, with a fixed git
/// revision so recorded rows do not depend on the checkout.
pub fn llamagen_on(dir: &std::path::Path, database_url: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_llamagen"));
    cmd.arg("--data-dir")
        .arg(dir.join("data"))
        .env("DATABASE_URL", database_url)
        .env("LLAMAGEN_GIT_REVISION", "test");
    cmd
}

/// Waits until `path` holds `lines` lines (a journal filling up), at most `limit`; returns how
/// many it holds.
pub fn wait_for_lines(path: &std::path::Path, lines: usize, limit: std::time::Duration) -> usize {
    let started = std::time::Instant::now();
    loop {
        let n = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .count();
        if n >= lines || started.elapsed() > limit {
            return n;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
