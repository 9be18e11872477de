//! `llamagen train vq` on webdataset shards of real photos, against a real PostgreSQL: a tiny
//! tokenizer (random LPIPS from `scripts/export_lpips.py --random`) trains with the
//! discriminator switching on midway, writes and registers its checkpoints, and the checkpoint
//! evaluator (`llamagen benchmark checkpoints`) puts every one of them on the leaderboard with
//! the tokenizer benchmark, the last one better than the first. A run SIGKILLed after its
//! first checkpoint, and one stopped by SIGTERM (checkpoint written, exit 143), both resume to
//! the uninterrupted run's final checkpoint, byte for byte; an undecodable image is left out.
//! Two ranks under torchrun train as one process on the same global batch.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::{self, llamagen_on, repo, text};
use llamagen_shards::webdataset::TarWriter;
use llamagen_store::testing::TestDatabase;

const STEPS: &str = "24";

/// Two shards of the bundled photos (PNG and JPEG of each) and one image that does not decode.
fn shards(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let photos = llamagen_ingest::testing::bundled_photos();
    let mut names: Vec<&String> = photos.keys().collect();
    names.sort();
    for (shard, half) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let mut tar = TarWriter::create(&dir.join(format!("{shard:05}.tar"))).unwrap();
        for (i, name) in half.iter().enumerate() {
            let ext = if name.ends_with(".png") { "png" } else { "jpg" };
            tar.append(&format!("{shard:05}{i:04}"), ext, &photos[*name])
                .unwrap();
        }
        if shard == 1 {
            tar.append("broken", "jpg", b"\xff\xd8 not a JPEG").unwrap();
        }
        tar.finish().unwrap();
    }
}

/// The photos center-cropped to 32 px: the benchmark's reference images.
fn reference(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in llamagen_ingest::testing::bundled_photos() {
        let img = image::load_from_memory(&bytes).unwrap().into_rgb8();
        let (w, h) = img.dimensions();
        let side = w.min(h);
        let crop =
            image::imageops::crop_imm(&img, (w - side) / 2, (h - side) / 2, side, side).to_image();
        let small = image::imageops::resize(&crop, 32, 32, image::imageops::FilterType::Triangle);
        small
            .save(dir.join(format!("{}.png", name.replace('.', "_"))))
            .unwrap();
    }
}

/// The shards, the tiny tokenizer's config and random LPIPS weights under `dir`.
fn setup(dir: &Path) {
    shards(&dir.join("shards"));
    tiny_vq(&dir.join("vq.json"));
    let exported = Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("scripts/export_lpips.py"))
        .args(["--random", "--widths", "4,8,16,32,32", "--seed", "3"])
        .arg(dir.join("lpips.safetensors"))
        .output()
        .unwrap();
    assert!(exported.status.success(), "{}", text(&exported));
}

fn tiny_vq(path: &Path) {
    let config = llamagen_models::tiny::trainable_vq_config();
    std::fs::write(path, serde_json::to_vec(&config).unwrap()).unwrap();
}

fn train(dir: &Path, db: &TestDatabase, out: &str, extra: &[&str]) -> Command {
    let mut cmd = llamagen_on(dir, &db.url());
    cmd.env("RUST_LOG", "warn")
        .args(vq_args(dir, out, STEPS, "4"))
        .args(["--precision", "fp32"])
        .args(extra);
    cmd
}

/// `train vq ...` on the tiny tokenizer to `steps` with a checkpoint `every` steps, into
/// `dir/out`.
fn vq_args(dir: &Path, out: &str, steps: &str, every: &str) -> Vec<std::ffi::OsString> {
    let mut cmd = Command::new("");
    cmd.args(["train", "vq", "--device", "cpu"])
        .arg("--images")
        .arg(dir.join("shards"))
        .arg("--lpips")
        .arg(dir.join("lpips.safetensors"))
        .arg("--vq-config")
        .arg(dir.join("vq.json"))
        .arg("--out")
        .arg(dir.join(out))
        // One model per folder: a model's checkpoints come from one training run.
        .arg("--model")
        .arg(format!("tiny-vq-{out}"))
        .args(["--image-size", "32"])
        .args([
            "--global-batch-size",
            "4",
            "--lr",
            "0.003",
            "--ema-decay",
            "0.9",
        ])
        .args([
            "--disc-start",
            "20",
            "--disc-weight",
            "0.1",
            "--disc-channels",
            "8",
            "--disc-layers",
            "2",
        ])
        .args([
            "--checkpoint-every",
            every,
            "--log-every",
            "2",
            "--max-steps",
            steps,
        ]);
    cmd.get_args().map(|a| a.to_os_string()).collect()
}

fn run(mut cmd: Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    out
}

fn sha(path: PathBuf) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

#[tokio::test]
async fn trains_records_benchmarks_and_resumes_after_a_kill() {
    let db = TestDatabase::new().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    reference(&dir.join("reference"));

    let out = run(train(dir, &db, "straight", &["--json"]));
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(report["step"], 24, "{report}");
    let last = &report["last"];
    assert!(last["discriminator"].as_f64().unwrap() > 0.0, "{report}");
    assert!(last["adversarial"].as_f64().unwrap() != 0.0, "{report}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("left out"), "the broken image: {stderr}");
    let straight = dir.join("straight");
    let final_sha = sha(straight.join("0000024.safetensors.sha256"));

    let pool = &db.pool;
    let (kind, architecture): (String, String) =
        sqlx::query_as("SELECT kind, architecture FROM models WHERE name = 'tiny-vq-straight'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(
        (kind.as_str(), architecture.as_str()),
        ("tokenizer", "llamagen-vq")
    );
    let steps: Vec<i64> = sqlx::query_scalar(
        "SELECT c.step FROM checkpoints c JOIN training_runs t ON t.id = c.training_run_id
         WHERE t.status = 'succeeded' ORDER BY c.step",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(steps, [4, 8, 12, 16, 20, 24]);
    let logged: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT name FROM training_metrics ORDER BY name")
            .fetch_all(pool)
            .await
            .unwrap();
    for name in [
        "loss",
        "perceptual_loss",
        "discriminator_loss",
        "codebook_usage",
        "images_per_s",
        "memory_mib",
    ] {
        assert!(logged.iter().any(|n| n == name), "{name} not in {logged:?}");
    }

    // Every checkpoint on the leaderboard through the checkpoint evaluator.
    let inception = dir.join("inception.onnx");
    llamagen_evaluate::inception::export_random_weights(&repo(), &inception, 0, &[]).unwrap();
    let config = dir.join("evaluate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[pipeline]
name = "vq-evaluation"
stages = ["evaluate"]

[model]
task = "c2i"

[evaluate]
benchmark = "photos32-reconstruction"
models = ["tiny-vq-straight"]
reference = "{reference}"
inception_model = "{inception}"
eval_image_size = 32
checkpoint_every = 4
"#,
            reference = dir.join("reference").display(),
            inception = inception.display(),
        ),
    )
    .unwrap();
    let evaluated = llamagen_on(dir, &db.url())
        .args(["benchmark", "checkpoints", "--device", "cpu", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(evaluated.status.success(), "{}", text(&evaluated));
    let rows: Vec<(i64, f64, f64)> = sqlx::query_as(
        "SELECT c.step,
                max(m.value) FILTER (WHERE m.name = 'psnr'),
                max(m.value) FILTER (WHERE m.name = 'rfid')
         FROM evaluations e JOIN metrics m ON m.evaluation_id = e.id
         JOIN checkpoints c ON c.id = e.checkpoint_id JOIN models mo ON mo.id = c.model_id
         WHERE mo.name = 'tiny-vq-straight' GROUP BY c.step ORDER BY c.step",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    eprintln!("(step, PSNR, rFID): {rows:?}");
    // Each checkpoint's chunks went once its result was recorded; the reference's features
    // stay for the next checkpoint.
    let (mut kept, mut chunk_folders) = (Vec::new(), 0);
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                chunk_folders += usize::from(path.ends_with("reconstruction-features"));
                dirs.push(path);
            } else if path.parent().unwrap().ends_with("reconstruction-features")
                || path.parent().unwrap().ends_with("reference-features")
            {
                kept.push(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    assert!(
        chunk_folders == 1 && kept.len() == 1 && kept[0].starts_with("adm-"),
        "{chunk_folders} {kept:?}"
    );
    let steps: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(steps, [4, 8, 12, 16, 20, 24], "{rows:?}");
    let (first, last) = (&rows[0], &rows[5]);
    assert!(last.1 > first.1 + 1.0, "PSNR did not improve: {rows:?}");
    assert!(last.2 < first.2, "rFID did not improve: {rows:?}");

    // SIGKILL once the first checkpoint is written, then the same command again.
    let mut child = train(dir, &db, "killed", &[]).spawn().unwrap();
    let first = dir.join("killed/0000004.safetensors.sha256");
    let started = Instant::now();
    while !first.exists() && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the run finished before the kill; nothing was tested"
    );
    assert!(!dir.join("killed/0000024.safetensors").exists());
    let resumed = run(train(dir, &db, "killed", &[]));
    assert!(
        text(&resumed).contains("resuming from"),
        "{}",
        text(&resumed)
    );
    assert_eq!(
        sha(dir.join("killed/0000024.safetensors.sha256")),
        final_sha,
        "the resumed run must end on the uninterrupted run's checkpoint"
    );
    // Its checkpoints have the same bytes as the other model's, which registered them first;
    // the resume still continues this model's own run, not the run that registered them.
    let killed_runs: Vec<(i64, Option<i64>)> = sqlx::query_as(
        "SELECT t.id, (SELECT max(step) FROM training_metrics WHERE training_run_id = t.id)
         FROM training_runs t JOIN models m ON m.id = t.model_id WHERE m.name = 'tiny-vq-killed'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(killed_runs.len(), 1, "{killed_runs:?}");
    assert_eq!(killed_runs[0].1, Some(24), "{killed_runs:?}");

    // SIGTERM (a preemption): the step in hand finishes, a checkpoint is written, the run is
    // recorded as cancelled, the process exits 143; the same command finishes the run.
    let child = train(dir, &db, "preempted", &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let first = dir.join("preempted/0000004.safetensors.sha256");
    let started = Instant::now();
    while !first.exists() && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stopped = common::output_within(child, Duration::from_secs(300));
    assert_eq!(stopped.status.code(), Some(143), "{}", text(&stopped));
    assert!(
        text(&stopped).contains("stopped at step"),
        "{}",
        text(&stopped)
    );
    let written: Vec<String> = std::fs::read_dir(dir.join("preempted"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    let newest = written.iter().max().unwrap().clone();
    assert!(
        newest.as_str() > "0000004.safetensors" && newest.as_str() < "0000024.safetensors",
        "the stop's checkpoint: {written:?}"
    );
    let cancelled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM training_runs WHERE status = 'cancelled'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert!(cancelled >= 1);
    run(train(dir, &db, "preempted", &[]));
    assert_eq!(
        sha(dir.join("preempted/0000024.safetensors.sha256")),
        final_sha,
        "a preempted run must end on the uninterrupted run's checkpoint"
    );
}

/// The tiny tokenizer's weights in a checkpoint.
fn vq_weights(path: &Path) -> std::collections::BTreeMap<String, tch::Tensor> {
    tch::Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter(|(name, _)| name.starts_with("model."))
        .collect()
}

#[tokio::test]
async fn ranks_train_the_tokenizer_as_one_process() {
    let db = TestDatabase::new().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);

    // Before --disc-start (20) every term of the loss is a mean over samples, so 2 ranks
    // averaging their gradients take one process's step on the global batch of 4.
    let mut alone = train_steps(
        dir,
        &db,
        "alone",
        Command::new(env!("CARGO_BIN_EXE_llamagen")),
    );
    alone.arg("--no-record");
    run(alone);
    let mut ranks = Command::new(repo().join(".venv/bin/torchrun"));
    ranks
        .args(["--standalone", "--nproc-per-node", "2", "--no-python"])
        .arg(env!("CARGO_BIN_EXE_llamagen"))
        .env("LLAMAGEN_DIST_TIMEOUT", "120");
    let printed = text(&run(train_steps(dir, &db, "ranks", ranks)));
    assert!(printed.contains("trained to step 4"), "{printed}");
    let alone = vq_weights(&dir.join("alone/0000004.safetensors"));
    let ranked = vq_weights(&dir.join("ranks/0000004.safetensors"));
    let start = vq_weights(&dir.join("alone/0000002.safetensors"));
    // The usage counter, a buffer, is each rank's own, as under DDP. Tensors whose true
    // gradient is zero (attention's key biases, biases ahead of a GroupNorm) start at zero and
    // move by rounding noise alone (about 1e-15), so they are compared within the model's
    // norm, and every other tensor on its own.
    let (mut largest, mut moved, mut difference, mut norm) = (0f64, 0f64, 0f64, 0f64);
    for (name, a) in alone.iter().filter(|(n, _)| !n.ends_with("codebook_used")) {
        let sq = |t: &tch::Tensor| t.square().sum(tch::Kind::Double).double_value(&[]);
        difference += sq(&(&ranked[name] - a));
        norm += sq(a);
        let scale = a.abs().max().double_value(&[]);
        if scale > 1e-6 {
            largest = largest.max((&ranked[name] - a).abs().max().double_value(&[]) / scale);
            moved = moved.max((&start[name] - a).abs().max().double_value(&[]) / scale);
        }
    }
    let whole = (difference / norm).sqrt();
    assert!(moved > 1e-3, "training moves the weights: {moved}");
    assert!(
        largest < 1e-6 && whole < 1e-9,
        "2 ranks differ from one process by {largest} in a tensor, {whole} over the model"
    );
    println!(
        "tokenizer, 2 ranks against one process: {largest:e} in a tensor, {whole:e} over the model"
    );
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM training_runs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(runs, 1, "the ranks' run, recorded by rank 0 alone");
    let checkpoints: Vec<i64> = sqlx::query_scalar("SELECT step FROM checkpoints ORDER BY step")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(checkpoints, [2, 4]);
}

/// `train vq` to step 4 (checkpoints at 2 and 4) into `dir/out` with `cmd` (the binary, or
/// torchrun in front of it).
fn train_steps(dir: &Path, db: &TestDatabase, out: &str, mut cmd: Command) -> Command {
    cmd.arg("--data-dir")
        .arg(dir.join("data"))
        .env("DATABASE_URL", db.url())
        .env("LLAMAGEN_GIT_REVISION", "test")
        .args(vq_args(dir, out, "4", "2"))
        // Each rank draws its own dropout masks, as under DDP.
        .arg("--no-perceptual-dropout")
        // float64, so that the comparison is of the arithmetic, not of float32's rounding of
        // sums taken in another order, which Adam amplifies where a gradient is zero.
        .args(["--precision", "fp64"]);
    cmd
}
