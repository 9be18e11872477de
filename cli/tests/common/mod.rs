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

/// `cmd` run against a PostgreSQL address where nothing listens: it must fail after printing
/// what it measured, saying so. Its output, for the caller to compare what was printed.
pub fn output_without_a_database(cmd: &mut std::process::Command) -> Output {
    let out = cmd
        .env("DATABASE_URL", "postgres://llamagen@127.0.0.1:1/llamagen")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("measured but not recorded")
            && text(&out).contains("cannot reach PostgreSQL"),
        "{}",
        text(&out)
    );
    out
}

/// A child's output, killing it and failing the test if it has not exited within `limit`: a
/// command that stops answering (a lost signal, a lock never released) fails here, with what
/// it printed, instead of holding the whole test run until CI's own time limit ends it.
pub fn output_within(child: std::process::Child, limit: std::time::Duration) -> Output {
    outputs_within(vec![child], limit).remove(0)
}

/// [`output_within`] for commands running side by side (workers, ranks): every pipe is
/// drained while they run, so that one blocked on a full pipe cannot stall the others, and all
/// are killed if any is still running at `limit`.
pub fn outputs_within(
    mut children: Vec<std::process::Child>,
    limit: std::time::Duration,
) -> Vec<Output> {
    fn drain(
        pipe: Option<impl std::io::Read + Send + 'static>,
    ) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let pipes: Vec<_> = children
        .iter_mut()
        .map(|c| (drain(c.stdout.take()), drain(c.stderr.take())))
        .collect();
    let started = std::time::Instant::now();
    let mut statuses = vec![None; children.len()];
    while statuses.iter().any(Option::is_none) {
        for (child, status) in children.iter_mut().zip(&mut statuses) {
            if status.is_none() {
                *status = child.try_wait().unwrap();
            }
        }
        if statuses.iter().any(Option::is_none) && started.elapsed() > limit {
            for (child, status) in children.iter_mut().zip(&mut statuses) {
                if status.is_none() {
                    let _ = child.kill();
                    *status = Some(child.wait().unwrap());
                }
            }
            let printed: Vec<String> = statuses
                .into_iter()
                .zip(pipes)
                .enumerate()
                .map(|(i, (status, (stdout, stderr)))| {
                    let out = Output {
                        status: status.unwrap(),
                        stdout: stdout.join().unwrap(),
                        stderr: stderr.join().unwrap(),
                    };
                    format!("command {i}:\n{}", text(&out))
                })
                .collect();
            panic!(
                "a command had not exited after {limit:?}; killed. They printed:\n{}",
                printed.join("\n")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    statuses
        .into_iter()
        .zip(pipes)
        .map(|(status, (stdout, stderr))| Output {
            status: status.unwrap(),
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        })
        .collect()
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

/// A small deterministic generator (xorshift64*), so that a failing seed of a fault matrix
/// runs again the same.
pub struct Seeded(u64);

impl Seeded {
    pub fn new(seed: u64) -> Self {
        Seeded(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Waits until `child`, a `--leases` worker, holds a shard (or has ended), then SIGKILLs it a
/// seeded moment below `max_ms` later: mid-shard, between shards, or while it closes the
/// stage. Returns that moment and whether a shard was in hand when it died.
pub async fn kill_after_a_claim(
    mut child: std::process::Child,
    pool: &sqlx::PgPool,
    rng: &mut Seeded,
    max_ms: u64,
) -> (u128, bool) {
    let held = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM shards WHERE status = 'running' AND lease_expires_at > now()",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    };
    let started = std::time::Instant::now();
    while held().await == 0
        && child.try_wait().unwrap().is_none()
        && started.elapsed() < std::time::Duration::from_secs(60)
    {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let after = std::time::Duration::from_millis(rng.below(max_ms));
    tokio::time::sleep(after).await;
    let in_hand = held().await > 0;
    child.kill().unwrap(); // SIGKILL: no destructor, no release, no cleanup
    child.wait().unwrap();
    (after.as_millis(), in_hand)
}

/// Fails unless the sample folder `folder` holds its first `n` PNGs and sampling.json alone:
/// what a folder cleared to its grid keeps when it has no more samples than the grid shows.
pub fn assert_only_samples_and_settings(folder: &std::path::Path, n: usize) {
    let mut left: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut expected: Vec<String> = (0..n).map(|i| format!("{i:06}.png")).collect();
    expected.push("sampling.json".into());
    assert_eq!(left, expected, "{}", folder.display());
}

/// The names in `dir` of what a killed attempt could have left: temporary files (`.tmp*`) and
/// ingest's staged attempts (`.attempt-*`).
pub fn temporaries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(".tmp") || n.starts_with(".attempt-"))
        .collect()
}

/// One run of a fault matrix: `spawn()` a `--leases` worker and SIGKILL it at a seeded moment
/// after its claim ([`kill_after_a_claim`]), three times, then run one to the end, which must
/// succeed. Returns the kill moments (ms) and how many kills landed with a shard in hand.
pub async fn kill_three_times_then_finish(
    spawn: impl Fn() -> std::process::Child,
    pool: &sqlx::PgPool,
    seed: u64,
    max_ms: u64,
) -> (Vec<u128>, usize) {
    let mut rng = Seeded::new(seed);
    let (mut kills, mut in_hand) = (Vec::new(), 0);
    for _ in 0..3 {
        let (after, in_shard) = kill_after_a_claim(spawn(), pool, &mut rng, max_ms).await;
        in_hand += usize::from(in_shard);
        kills.push(after);
    }
    let last = spawn().wait_with_output().unwrap();
    assert!(
        last.status.success(),
        "seed {seed}, kills at {kills:?} ms:\n{}",
        text(&last)
    );
    (kills, in_hand)
}

/// The flags that point `sample` and `benchmark generator` at tiny models, at 32 px on the CPU
/// with `batch_size` conditions per batch.
pub fn tiny_model_args(
    models: &llamagen_models::tiny::TinyModels,
    batch_size: usize,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    for (flag, path) in [
        ("--gpt-ckpt", &models.gpt_ckpt),
        ("--gpt-config", &models.gpt_config),
        ("--vq-ckpt", &models.vq_ckpt),
        ("--vq-config", &models.vq_config),
    ] {
        args.push(flag.into());
        args.push(path.into());
    }
    for a in ["--image-size", "32", "--device", "cpu", "--batch-size"] {
        args.push(a.into());
    }
    args.push(batch_size.to_string().into());
    args
}
