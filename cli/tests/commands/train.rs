//! `llamagen train` on codes in LlamaGen's own layout (written here with numpy's `np.save`, as
//! `extract_codes_c2i.py` writes them), against a real PostgreSQL: checkpoints every N steps,
//! the loss curve and checkpoints recorded, and a second invocation resuming the same run.

use crate::common::{self, repo, text};

use std::path::Path;
use std::process::{Command, Output};

use llamagen_models::gpt::{Conditioning, GptConfig};
use llamagen_store::testing::TestDatabase;

/// 40 samples of 4 classes, two augmentations each, 16 tokens from a learnable rule.
const WRITE_CODES: &str = r#"
import sys, os, numpy as np
root = sys.argv[1]
os.makedirs(f"{root}/imagenet64_codes"); os.makedirs(f"{root}/imagenet64_labels")
for i in range(40):
    c = (i * 7) % 4
    rows = [[(5 * c + 3 * t + a) % 32 for t in range(16)] for a in range(2)]
    np.save(f"{root}/imagenet64_codes/{i}.npy", np.array([rows], dtype=np.int64))
    np.save(f"{root}/imagenet64_labels/{i}.npy", np.array([c], dtype=np.int64))
"#;

/// A training run to its end; a few seconds here, so ten minutes means it stopped answering.
fn train(dir: &Path, db: &TestDatabase, config: &Path, max_steps: &str) -> Output {
    let child = train_command(dir, db, config, max_steps)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::output_within(child, std::time::Duration::from_secs(600))
}

fn train_command(dir: &Path, db: &TestDatabase, config: &Path, max_steps: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llamagen"));
    cmd.arg("--data-dir")
        .arg(dir)
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .args(["train", "--device", "cpu", "--model", "tiny-trained"])
        .arg("--codes")
        .arg(dir.join("codes"))
        .arg("--gpt-config")
        .arg(config)
        .arg("--out")
        .arg(dir.join("checkpoints"))
        .args(["--global-batch-size", "8", "--gradient-accumulation", "2"])
        .args([
            "--lr-per-256",
            "0.1",
            "--checkpoint-every",
            "10",
            "--log-every",
            "5",
        ])
        .args(["--max-steps", max_steps]);
    cmd
}

/// Codes in `dir/codes` and a tiny GPT's config; returns the config's path.
fn codes_and_config(dir: &Path) -> std::path::PathBuf {
    let made = Command::new(repo().join(".venv/bin/python"))
        .args(["-c", WRITE_CODES])
        .arg(dir.join("codes"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    let mut gpt = GptConfig::new(2, 4, 64, Conditioning::Class);
    gpt.vocab_size = 64; // the tiny VQ's codebook, so the checkpoint samples below
    gpt.block_size = 16;
    gpt.num_classes = 4;
    gpt.multiple_of = 32;
    let config = dir.join("gpt.json");
    std::fs::write(&config, serde_json::to_string(&gpt).unwrap()).unwrap();
    config
}

#[tokio::test]
async fn trains_records_and_resumes() {
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = codes_and_config(dir.path());

    let first = train(dir.path(), &db, &config, "30");
    assert!(first.status.success(), "{}", text(&first));
    for step in ["0000010", "0000020", "0000030"] {
        assert!(
            dir.path()
                .join(format!("checkpoints/{step}.safetensors"))
                .is_file()
        );
    }
    let resumed = train(dir.path(), &db, &config, "40");
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(
        text(&resumed).contains("resuming from"),
        "{}",
        text(&resumed)
    );

    let pool = &db.pool;
    let runs: Vec<(i64, String)> = sqlx::query_as("SELECT id, status FROM training_runs")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(runs.len(), 1, "a resume started a second run: {runs:?}");
    assert_eq!(runs[0].1, "succeeded");
    let steps: Vec<i64> =
        sqlx::query_scalar("SELECT step FROM checkpoints WHERE training_run_id = $1 ORDER BY step")
            .bind(runs[0].0)
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(steps, [10, 20, 30, 40]);
    let losses: Vec<(i64, f64)> = sqlx::query_as(
        "SELECT step, value FROM training_metrics WHERE name = 'loss' ORDER BY step",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        losses.iter().map(|l| l.0).collect::<Vec<_>>(),
        [5, 10, 15, 20, 25, 30, 35, 40]
    );
    // Each record holds the process's peak resident memory over its interval (the CPU's
    // figure; on CUDA the caching allocator's peak), in MiB.
    let memory: Vec<(i64, f64)> = sqlx::query_as(
        "SELECT step, value FROM training_metrics WHERE name = 'memory_mib' ORDER BY step",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(memory.len(), losses.len(), "{memory:?}");
    assert!(
        memory.iter().all(|&(_, mib)| mib > 10.0 && mib < 65536.0),
        "{memory:?}"
    );
    let (first_loss, last_loss) = (losses[0].1, losses[losses.len() - 1].1);
    assert!(
        last_loss < 0.5 * first_loss,
        "loss {first_loss} -> {last_loss}"
    );

    // The checkpoint samples as it is, through the tiny VQ (downsample 4: 16 px is 4 x 4 codes).
    let vq = llamagen_models::tiny::write(&dir.path().join("vq"), 1).unwrap();
    let sampled = Command::new(env!("CARGO_BIN_EXE_llamagen"))
        .args([
            "sample",
            "--device",
            "cpu",
            "--image-size",
            "16",
            "--num-samples",
            "4",
        ])
        .arg("--gpt-ckpt")
        .arg(dir.path().join("checkpoints/0000040.safetensors"))
        .arg("--gpt-config")
        .arg(&config)
        .arg("--vq-ckpt")
        .arg(&vq.vq_ckpt)
        .arg("--vq-config")
        .arg(&vq.vq_config)
        .arg("--out")
        .arg(dir.path().join("samples"))
        .output()
        .unwrap();
    assert!(sampled.status.success(), "{}", text(&sampled));
    assert!(dir.path().join("samples/samples.npz").is_file());

    // A damaged newest checkpoint is never trained on: the run falls back to the one before
    // and redoes the steps since, writing a good checkpoint in its place. The same after a
    // power cut that left it empty.
    let newest = dir.path().join("checkpoints/0000040.safetensors");
    let good = std::fs::read(&newest).unwrap();
    let mut bytes = good.clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&newest, bytes).unwrap();
    let fell_back = train(dir.path(), &db, &config, "50");
    let out = text(&fell_back);
    assert!(fell_back.status.success(), "{out}");
    assert!(out.contains("checksum mismatch"), "{out}");
    assert!(
        out.contains("falling back to") && out.contains("0000030"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&newest).unwrap(),
        good,
        "step 40 redone from step 30 exactly"
    );
    std::fs::write(dir.path().join("checkpoints/0000050.safetensors"), b"").unwrap();
    let after_cut = train(dir.path(), &db, &config, "50");
    let out = text(&after_cut);
    assert!(after_cut.status.success(), "{out}");
    assert!(
        out.contains("falling back to") && out.contains("0000040"),
        "{out}"
    );

    // SIGTERM (a preemption) mid-run: the step in hand finishes, a checkpoint is written, the
    // run is recorded as cancelled, the process exits 143.
    let child = train_command(dir.path(), &db, &config, "1000000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let due = dir.path().join("checkpoints/0000070.safetensors.sha256");
    let started = std::time::Instant::now();
    while !due.exists() && started.elapsed() < std::time::Duration::from_secs(120) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // A lost SIGTERM would leave it training towards step 1,000,000.
    let stopped = common::output_within(child, std::time::Duration::from_secs(300));
    let out = text(&stopped);
    assert_eq!(stopped.status.code(), Some(143), "{out}");
    assert!(out.contains("stopped at step"), "{out}");
    let status: String =
        sqlx::query_scalar("SELECT status FROM training_runs ORDER BY id DESC LIMIT 1")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(status, "cancelled");
    let newest: i64 = sqlx::query_scalar("SELECT max(step) FROM checkpoints")
        .fetch_one(pool)
        .await
        .unwrap();
    assert!((70..1_000_000).contains(&newest), "{newest}");
    assert!(
        dir.path()
            .join(format!("checkpoints/{newest:07}.safetensors"))
            .is_file()
    );

    // Only unusable checkpoints: a clear error, nothing overwritten.
    let only = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(only.path().join("checkpoints")).unwrap();
    for name in ["0000010.safetensors", "0000010.safetensors.sha256"] {
        std::fs::write(only.path().join("checkpoints").join(name), b"").unwrap();
    }
    std::os::unix::fs::symlink(dir.path().join("codes"), only.path().join("codes")).unwrap();
    let refused = train(only.path(), &db, &config, "20");
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("no usable checkpoint"),
        "{}",
        text(&refused)
    );

    // The same model name trained afresh into an empty folder would write its own checkpoints
    // at steps the model has: refused before the first step, no run started, nothing written.
    let runs_before: i64 = sqlx::query_scalar("SELECT count(*) FROM training_runs")
        .fetch_one(pool)
        .await
        .unwrap();
    let fresh = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(dir.path().join("codes"), fresh.path().join("codes")).unwrap();
    let afresh = train(fresh.path(), &db, &config, "20");
    let out = text(&afresh);
    assert_eq!(afresh.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "model \"tiny-trained\" already has checkpoints up to step {newest}"
        )) && out.contains(&format!("{newest:07}.safetensors")),
        "{out}"
    );
    let runs_after: i64 = sqlx::query_scalar("SELECT count(*) FROM training_runs")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(runs_after, runs_before);
    let written = std::fs::read_dir(fresh.path().join("checkpoints"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_else(|_| Vec::new());
    assert!(
        written
            .iter()
            .all(|name| !name.to_string_lossy().contains("safetensors")),
        "{written:?}"
    );
}

/// The fault matrix for training: `llamagen train` SIGKILLed at seeded moments of its run
/// (starting, mid-step, writing a checkpoint, before its first checkpoint), three times,
/// then run to the end. The last
/// checkpoint must be byte for byte the one an uninterrupted run writes, each checkpoint must
/// be registered once in one training run, and no temporary file may be left.
/// `LLAMAGEN_FAULT_RUNS=20` runs the long variant (CI runs 2 seeds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_killed_at_random_moments_resumes_exactly() {
    let runs: u64 = std::env::var("LLAMAGEN_FAULT_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    const STEPS: &str = "120";
    let mut mid_run = 0;
    let straight = tempfile::tempdir().unwrap();
    let db = TestDatabase::new().await;
    let config = codes_and_config(straight.path());
    let out = train(straight.path(), &db, &config, STEPS);
    assert!(out.status.success(), "{}", text(&out));
    let last_checkpoint = format!("checkpoints/{STEPS:0>7}.safetensors");
    let expected = std::fs::read(straight.path().join(&last_checkpoint)).unwrap();
    db.drop_database().await;

    for seed in 1..=runs {
        let db = TestDatabase::new().await;
        let dir = tempfile::tempdir().unwrap();
        let config = codes_and_config(dir.path());
        let mut rng = common::Seeded::new(seed);
        // Each kill comes a seeded moment after a seeded checkpoint (0: after the start),
        // so that it lands at start-up, mid-step or while a checkpoint is written.
        let mut after_steps: Vec<u64> = (0..3).map(|_| 10 * rng.below(12)).collect();
        after_steps.sort();
        let mut kills = Vec::new();
        for after_step in after_steps {
            let mut child = train_command(dir.path(), &db, &config, STEPS)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let written = dir
                .path()
                .join(format!("checkpoints/{after_step:07}.safetensors.sha256"));
            let started = std::time::Instant::now();
            while after_step > 0
                && !written.exists()
                && child.try_wait().unwrap().is_none()
                && started.elapsed() < std::time::Duration::from_secs(60)
            {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            let after = rng.below(if after_step == 0 { 800 } else { 80 });
            std::thread::sleep(std::time::Duration::from_millis(after));
            mid_run += usize::from(child.try_wait().unwrap().is_none());
            child.kill().unwrap(); // SIGKILL: no checkpoint, no record
            child.wait().unwrap();
            let newest: Option<i64> = sqlx::query_scalar("SELECT max(step) FROM checkpoints")
                .fetch_one(&db.pool)
                .await
                .unwrap();
            kills.push((after_step, after, newest.unwrap_or(0)));
        }
        let last = train(dir.path(), &db, &config, STEPS);
        assert!(
            last.status.success(),
            "seed {seed}, kills (ms, newest step) {kills:?}:\n{}",
            text(&last)
        );
        let got = std::fs::read(dir.path().join(&last_checkpoint)).unwrap();
        assert!(
            got == expected,
            "seed {seed}, kills {kills:?}: the last checkpoint differs from the uninterrupted run's"
        );
        let steps: Vec<(i64, i64)> =
            sqlx::query_as("SELECT step, count(*) FROM checkpoints GROUP BY step ORDER BY step")
                .fetch_all(&db.pool)
                .await
                .unwrap();
        let every_ten: Vec<(i64, i64)> = (1..=12).map(|i| (10 * i, 1)).collect();
        assert_eq!(steps, every_ten, "seed {seed}, kills {kills:?}");
        let runs_made: Vec<String> = sqlx::query_scalar("SELECT status FROM training_runs")
            .fetch_all(&db.pool)
            .await
            .unwrap();
        assert_eq!(runs_made, ["succeeded"], "seed {seed}, kills {kills:?}");
        let leftovers = common::temporaries(&dir.path().join("checkpoints"));
        assert!(leftovers.is_empty(), "seed {seed}: {leftovers:?}");
        println!(
            "seed {seed}: kills (after step, then ms, newest checkpoint) {kills:?}; last checkpoint identical"
        );
        db.drop_database().await;
    }
    println!(
        "fault matrix, train: {runs} runs x 3 SIGKILLs ({mid_run} while training); every last checkpoint identical"
    );
    assert!(
        mid_run > 0,
        "no kill landed while training: the matrix tests nothing"
    );
}
