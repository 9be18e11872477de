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

/// Metadata scores that pass every default rule.
pub const GOOD_SCORES: [f64; 6] = [640.0, 480.0, 0.33, 6.0, 0.1, 0.01];

/// A LAION-COCO metadata row for `url` that every default rule keeps.
pub fn metadata_row(url: String) -> llamagen_ingest::reader::MetaRow {
    llamagen_ingest::reader::MetaRow {
        caption: Some(format!("caption of {url}")),
        url: Some(url),
        scores: GOOD_SCORES,
    }
}

/// A scheduled pipeline config that ingests `urls` (one shard each) into its own folder
/// `dir/name`, with cron entry `schedule` and missed-run policy `missed`.
pub fn scheduled_ingest(
    dir: &std::path::Path,
    name: &str,
    schedule: &str,
    missed: &str,
    urls: &[String],
    timeout: f64,
) -> PathBuf {
    use llamagen_ingest::reader::write_metadata;
    let folder = dir.join(name);
    std::fs::create_dir_all(folder.join("metadata")).unwrap();
    let rows: Vec<_> = urls.iter().cloned().map(metadata_row).collect();
    write_metadata(
        &folder.join("metadata/part-0.parquet"),
        "URL",
        "TEXT",
        &rows,
    )
    .unwrap();
    let path = folder.join("pipeline.toml");
    std::fs::write(
        &path,
        format!(
            "[pipeline]\nname = \"{name}\"\nstages = [\"ingest\"]\nschedule = [\"{schedule}\"]\n\
             missed_runs = \"{missed}\"\n\n[ingest]\ninput = \"{}\"\noutput = \"{}\"\n\
             rows_per_shard = 1\nconcurrency = 2\ntimeout_secs = {timeout}\nretries = 0\n\
             image_size = 32\nallow_private_addresses = true\n",
            folder.join("metadata/*.parquet").display(),
            folder.join("shards").display()
        ),
    )
    .unwrap();
    path
}
