//! Data-parallel `llamagen train` on CPU processes over Gloo: launched by torchrun (the
//! virtualenv's, `--no-python`) and by plain rank variables (what Slurm's `srun` and a
//! Kubernetes indexed Job give). The weights after N steps must equal one process's at the same
//! global batch, with gradient accumulation, clipping and condition dropout on; a run moves
//! between rank counts at a checkpoint and reads the same samples; a rank killed mid-run
//! stops the others with an error.

use crate::common::{self, repo, text};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use llamagen_models::gpt::{Conditioning, GptConfig};
use llamagen_store::testing::TestDatabase;
use tch::Tensor;

/// 48 samples of 4 classes, one augmentation, 16 tokens from a learnable rule, in LlamaGen's
/// layout.
const WRITE_CODES: &str = r#"
import sys, os, numpy as np
root = sys.argv[1]
os.makedirs(f"{root}/imagenet64_codes"); os.makedirs(f"{root}/imagenet64_labels")
for i in range(48):
    c = (i * 7) % 4
    rows = [[(5 * c + 3 * t + i) % 32 for t in range(16)]]
    np.save(f"{root}/imagenet64_codes/{i}.npy", np.array([rows], dtype=np.int64))
    np.save(f"{root}/imagenet64_labels/{i}.npy", np.array([c], dtype=np.int64))
"#;

/// Codes and a tiny GPT config under `dir`. The network's dropouts are off, since each rank
/// draws its own masks (as in PyTorch's DDP); condition dropout stays on, drawn globally.
fn setup(dir: &Path) {
    let made = Command::new(repo().join(".venv/bin/python"))
        .args(["-c", WRITE_CODES])
        .arg(dir.join("codes"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    let mut gpt = GptConfig::new(2, 4, 64, Conditioning::Class);
    gpt.vocab_size = 64;
    gpt.block_size = 16;
    gpt.num_classes = 4;
    gpt.multiple_of = 32;
    gpt.token_dropout_p = 0.0;
    gpt.attn_dropout_p = 0.0;
    gpt.resid_dropout_p = 0.0;
    gpt.ffn_dropout_p = 0.0;
    gpt.class_dropout_prob = 0.25;
    std::fs::write(dir.join("gpt.json"), serde_json::to_string(&gpt).unwrap()).unwrap();
}

/// `llamagen --data-dir DIR train ...` to `--max-steps steps` in `DIR/out`: global batch 12 in
/// two micro-batches, a learning rate high enough that the gradient clipping (1.0) acts.
fn train_args(dir: &Path, out: &str, steps: u32, record: bool) -> Vec<String> {
    let path = |p: &str| dir.join(p).display().to_string();
    let mut args = vec!["--data-dir".into(), path("data"), "train".into()];
    for (flag, value) in [
        ("--device", "cpu".to_string()),
        ("--model", format!("dp-{out}")),
        ("--codes", path("codes")),
        ("--gpt-config", path("gpt.json")),
        ("--out", path(out)),
        ("--global-batch-size", "12".into()),
        ("--gradient-accumulation", "2".into()),
        ("--lr-per-256", "0.5".into()),
        // float64, so that what is compared is the arithmetic and not float32's rounding of
        // sums taken in another order, which Adam amplifies where a gradient nearly cancels
        // (in float32 the ranks differ from one process by about 1e-5 after 6 steps).
        ("--precision", "fp64".into()),
        ("--checkpoint-every", "3".into()),
        ("--log-every", "1".into()),
        ("--max-steps", steps.to_string()),
    ] {
        args.push(flag.into());
        args.push(value);
    }
    if !record {
        args.push("--no-record".into());
    }
    args
}

fn one_process(dir: &Path, db: &TestDatabase, out: &str, steps: u32) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llamagen"))
        .args(train_args(dir, out, steps, false))
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap()
}

/// `torchrun --standalone --nproc-per-node ranks --no-python llamagen train ...`, with `extra`
/// flags for `llamagen train`.
fn torchrun(
    dir: &Path,
    db: &TestDatabase,
    out: &str,
    steps: u32,
    ranks: u32,
    record: bool,
    extra: &[&str],
) -> Output {
    torchrun_command(ranks, db)
        .args(train_args(dir, out, steps, record))
        .args(extra)
        .output()
        .unwrap()
}

fn succeeded(out: Output, what: &str) -> String {
    let printed = text(&out);
    assert!(out.status.success(), "{what}:\n{printed}");
    printed
}

fn checkpoint(dir: &Path, out: &str, step: u32) -> PathBuf {
    dir.join(out).join(format!("{step:07}.safetensors"))
}

/// The `model.*` tensors of a checkpoint.
fn weights(path: &Path) -> BTreeMap<String, Tensor> {
    tensors(path, "model.")
}

/// The tensors of a checkpoint whose names start with `prefix`.
fn tensors(path: &Path, prefix: &str) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .collect()
}

/// The largest |a - b| / max|b| over the tensors of two checkpoints' models.
fn relative_difference(a: &Path, b: &Path) -> f64 {
    let (a, b) = (weights(a), weights(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .map(|(name, x)| {
            let y = &b[name];
            let scale = y.abs().max().double_value(&[]).max(1e-12);
            (x - y).abs().max().double_value(&[]) / scale
        })
        .fold(0.0, f64::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranks_train_as_one_process_and_move_between_rank_counts() {
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);

    succeeded(one_process(d, &db, "one", 6), "one process");
    let reference = checkpoint(d, "one", 6);
    let before = relative_difference(&checkpoint(d, "one", 3), &reference);
    assert!(before > 1e-3, "training moves the weights: {before}");

    // Two and three ranks from the start, recorded by rank 0 alone.
    let two = succeeded(torchrun(d, &db, "two", 6, 2, true, &[]), "2 ranks");
    assert!(
        two.contains("joined the Gloo process group") || two.contains("trained to step 6"),
        "{two}"
    );
    let mut figures = Vec::new();
    for (out, ranks) in [("two", 2), ("three", 3)] {
        if ranks == 3 {
            // Reducing after the backward pass rather than during it: the same training.
            succeeded(
                torchrun(d, &db, out, 6, 3, false, &["--reduce-after-backward"]),
                "3 ranks",
            );
        }
        let difference = relative_difference(&checkpoint(d, out, 6), &reference);
        assert!(
            difference < 1e-6,
            "{ranks} ranks differ from one process by {difference}"
        );
        figures.push((ranks, difference));
    }
    let runs: Vec<(String, String)> = sqlx::query_as(
        "SELECT m.name, r.status FROM training_runs r JOIN models m ON m.id = r.model_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(runs, [("dp-two".to_string(), "succeeded".to_string())]);
    let steps: Vec<i64> = sqlx::query_scalar("SELECT step FROM checkpoints ORDER BY step")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(steps, [3, 6], "each checkpoint registered once, by rank 0");

    // 2 ranks to step 3, then 2 ranks on: the uninterrupted 2-rank run, byte for byte.
    succeeded(
        torchrun(d, &db, "again", 3, 2, false, &[]),
        "2 ranks to step 3",
    );
    succeeded(
        torchrun(d, &db, "again", 6, 2, false, &[]),
        "2 ranks resumed",
    );
    let uninterrupted_weights = weights(&checkpoint(d, "two", 6));
    for (name, t) in weights(&checkpoint(d, "again", 6)) {
        assert!(
            t.equal(&uninterrupted_weights[&name]),
            "{name} differs after a 2-rank resume"
        );
    }

    // 2 ranks then 1 process, and 1 process then 2 ranks: the same samples, the same weights.
    succeeded(
        torchrun(d, &db, "down", 3, 2, false, &[]),
        "2 ranks to step 3",
    );
    let resumed = succeeded(one_process(d, &db, "down", 6), "1 process resumed");
    assert!(resumed.contains("resuming from"), "{resumed}");
    succeeded(one_process(d, &db, "up", 3), "1 process to step 3");
    succeeded(torchrun(d, &db, "up", 6, 2, false, &[]), "2 ranks resumed");
    for out in ["down", "up"] {
        let difference = relative_difference(&checkpoint(d, out, 6), &reference);
        assert!(difference < 1e-6, "{out}: {difference}");
        figures.push((if out == "down" { 21 } else { 12 }, difference));
    }
    println!(
        "data parallel: largest relative difference from one process (ranks, difference): {figures:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_optimizer_trains_the_same_weights_and_checkpoints_whole() {
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let shard = ["--shard-optimizer"];

    // Sharded and unsharded 2-rank runs: the same arithmetic, so the same bytes, in the
    // weights and in the (gathered) optimizer state of both checkpoints.
    succeeded(torchrun(d, &db, "whole", 6, 2, false, &[]), "2 ranks");
    let printed = succeeded(
        torchrun(d, &db, "sharded", 6, 2, false, &shard),
        "2 ranks, sharded",
    );
    // "... sharded over 2 ranks: X MB on rank R of Y MB": about half on each rank.
    for rank in 0..2 {
        let marker = format!(" MB on rank {rank} of ");
        let line = printed
            .lines()
            .find(|l| l.contains("optimizer state sharded over 2 ranks") && l.contains(&marker))
            .unwrap_or_else(|| panic!("no sharding line for rank {rank}: {printed}"));
        let held: f64 = line
            .split(&marker)
            .next()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let whole: f64 = line
            .split(&marker)
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            held > 0.3 * whole && held < 0.7 * whole,
            "rank {rank} holds {held} of {whole} MB"
        );
    }
    for step in [3, 6] {
        let whole = tensors(&checkpoint(d, "whole", step), "");
        let sharded = tensors(&checkpoint(d, "sharded", step), "");
        assert_eq!(
            whole.keys().collect::<Vec<_>>(),
            sharded.keys().collect::<Vec<_>>(),
            "step {step}"
        );
        for (name, t) in &sharded {
            assert!(t.equal(&whole[name]), "step {step}: {name} differs");
        }
    }

    // A sharded 3-rank checkpoint resumes on one process, and that on 2 sharded ranks.
    succeeded(
        torchrun(d, &db, "moves", 3, 3, false, &shard),
        "3 ranks, sharded, to step 3",
    );
    succeeded(one_process(d, &db, "moves", 5), "1 process resumed");
    succeeded(
        torchrun(d, &db, "moves", 6, 2, false, &shard),
        "2 ranks, sharded, resumed",
    );
    let difference = relative_difference(&checkpoint(d, "moves", 6), &checkpoint(d, "whole", 6));
    assert!(difference < 1e-6, "moved between rank counts: {difference}");
    println!("sharded optimizer: moved between 3, 1 and 2 ranks, {difference:e} from 2 ranks");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_rank_stops_the_others_without_a_partial_checkpoint() {
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    // Plain rank variables, as srun or an indexed Job sets them: rank 0 hosts the store.
    let mut ranks = spawn_ranks(d, &db, "killed");
    wait_for(&checkpoint(d, "killed", 9).with_extension("safetensors.sha256"));
    ranks[1].kill().unwrap();
    ranks[1].wait().unwrap();
    let killed_at = Instant::now();
    let rank0 = ranks.remove(0);
    let out = common::output_within(rank0, Duration::from_secs(600));
    let waited = killed_at.elapsed();
    let printed = text(&out);
    assert!(!out.status.success(), "rank 0 went on alone:\n{printed}");
    assert!(
        waited < Duration::from_secs(60),
        "rank 0 took {waited:?} to stop"
    );
    assert!(printed.contains("all-reduce on rank 0 of 2"), "{printed}");

    let status: String = sqlx::query_scalar("SELECT status FROM training_runs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(status, "failed");
    let registered: Vec<(i64, String)> =
        sqlx::query_as("SELECT step, sha256 FROM checkpoints ORDER BY step")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(registered.len() >= 3, "{registered:?}");
    for (step, sha) in &registered {
        let on_disk = std::fs::read_to_string(
            checkpoint(d, "killed", *step as u32).with_extension("safetensors.sha256"),
        )
        .unwrap();
        assert!(
            on_disk.starts_with(sha.as_str()),
            "step {step}: {on_disk} vs {sha}"
        );
        weights(&checkpoint(d, "killed", *step as u32));
    }
    let leftovers = common::temporaries(&d.join("killed"));
    assert!(leftovers.is_empty(), "{leftovers:?}");
    println!(
        "data parallel: rank 0 stopped {waited:?} after rank 1's SIGKILL; {} checkpoints registered, all whole",
        registered.len()
    );
}

/// Two ranks launched with plain rank variables (rank 0 hosts the store), training until
/// stopped.
fn spawn_ranks(d: &Path, db: &TestDatabase, out: &str) -> Vec<std::process::Child> {
    let port = free_port().to_string();
    (0..2)
        .map(|rank| {
            Command::new(env!("CARGO_BIN_EXE_llamagen"))
                .args(train_args(d, out, 1_000_000, true))
                .env("DATABASE_URL", db.url())
                .env("SLURM_PROCID", rank.to_string())
                .env("SLURM_NTASKS", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("LLAMAGEN_DIST_TIMEOUT", "300")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

fn wait_for(path: &Path) {
    let started = Instant::now();
    while !path.exists() && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(path.exists(), "{} never came", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_one_rank_stops_both_at_one_step_with_a_checkpoint() {
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let ranks = spawn_ranks(d, &db, "stopped");
    wait_for(&checkpoint(d, "stopped", 6).with_extension("safetensors.sha256"));
    // A launcher may signal one process before the others: the stop is agreed at the next step.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ranks[1].id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let outs = common::outputs_within(ranks, Duration::from_secs(600));
    for (rank, out) in outs.iter().enumerate() {
        assert_eq!(out.status.code(), Some(143), "rank {rank}:\n{}", text(out));
    }
    let (status, newest): (String, i64) = sqlx::query_as(
        "SELECT r.status, max(c.step) FROM training_runs r
         JOIN checkpoints c ON c.training_run_id = r.id GROUP BY r.status",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(status, "cancelled");
    assert!(newest > 6, "no checkpoint at the stop: newest {newest}");
    let stopped_at = |out: &Output| {
        text(out)
            .lines()
            .find_map(|l| l.split("stopped at step ").nth(1).map(str::to_owned))
    };
    assert_eq!(
        stopped_at(&outs[0]),
        stopped_at(&outs[1]),
        "the ranks stopped apart"
    );
    assert!(
        stopped_at(&outs[0]).is_some_and(|s| s.starts_with(&newest.to_string())),
        "{:?} vs checkpoint {newest}",
        stopped_at(&outs[0])
    );
    // The same command resumes from that checkpoint, on one process.
    let resumed = one_process(d, &db, "stopped", newest as u32 + 2);
    let printed = succeeded(resumed, "resume after the stop");
    assert!(printed.contains("resuming from"), "{printed}");
}

/// `llamagen ARGS` under torchrun with `ranks` CPU ranks.
fn torchrun_command(ranks: u32, db: &TestDatabase) -> Command {
    let mut cmd = Command::new(repo().join(".venv/bin/torchrun"));
    cmd.args([
        "--standalone",
        "--nproc-per-node",
        &ranks.to_string(),
        "--no-python",
    ])
    .arg(env!("CARGO_BIN_EXE_llamagen"))
    .env("DATABASE_URL", db.url())
    .env("LLAMAGEN_DIST_TIMEOUT", "120");
    cmd
}

/// The PNG names of a sample folder and the largest difference of a pixel between two folders.
fn compare_folders(a: &Path, b: &Path) -> (Vec<String>, Vec<String>, u8) {
    let names = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".png"))
            .collect();
        names.sort();
        names
    };
    let (na, nb) = (names(a), names(b));
    let mut largest = 0u8;
    for name in na.iter().filter(|n| nb.contains(n)) {
        let pa = image::open(a.join(name)).unwrap().into_rgb8();
        let pb = image::open(b.join(name)).unwrap().into_rgb8();
        for (x, y) in pa.as_raw().iter().zip(pb.as_raw()) {
            largest = largest.max(x.abs_diff(*y));
        }
    }
    (na, nb, largest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranks_sample_and_benchmark_as_one_process() {
    let db = TestDatabase::new().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let models = llamagen_models::tiny::write(&d.join("models"), 9).unwrap();

    // Sampling: 3 ranks stride through 10 samples from index 2; the images are one process's
    // (the tokens are the same; the decoder may round a pixel one level apart where the batch
    // shape differs), and rank 0 wrote the npz once every rank was done.
    let sample = |cmd: &mut Command, out: &str| {
        cmd.arg("sample")
            .args(common::tiny_model_args(&models, 4))
            .args(["--num-samples", "10", "--first-sample", "2", "--seed", "5"])
            .arg("--out")
            .arg(d.join(out))
            .output()
            .unwrap()
    };
    let mut alone = Command::new(env!("CARGO_BIN_EXE_llamagen"));
    succeeded(sample(&mut alone, "one"), "one process");
    let printed = succeeded(
        sample(torchrun_command(3, &db).env("RUST_LOG", "warn"), "three"),
        "3 ranks",
    );
    assert_eq!(
        printed.matches("made ").count(),
        1,
        "rank 0 alone reports:\n{printed}"
    );
    assert!(printed.contains("made 10 image(s)"), "{printed}");
    let (one, three, largest) = compare_folders(&d.join("one"), &d.join("three"));
    assert_eq!(one.len(), 10);
    assert_eq!(one, three);
    assert!(largest <= 1, "pixels differ by {largest} levels");
    let npz = llamagen_evaluate::npz::read_reference(&d.join("three/samples.npz")).unwrap();
    assert_eq!(npz.images.unwrap().dim(), (10, 32, 32, 3));
    // A re-run finds every sample made.
    let again = succeeded(
        sample(torchrun_command(2, &db).env("RUST_LOG", "warn"), "three"),
        "resumed",
    );
    assert!(again.contains("made 0 image(s), kept 10"), "{again}");

    // The benchmark: 2 ranks sample the scale's folder, split the reference's and the samples' images
    // through the Inception and record once; one process measuring the same folders gets the
    // same metrics.
    let inception = d.join("inception.onnx");
    llamagen_evaluate::inception::export_random_weights(&repo(), &inception, 0, &[]).unwrap();
    let benchmark = |cmd: &mut Command, out: &Path, record: bool| {
        cmd.arg("--data-dir")
            .arg(d.join("data"))
            .args(["benchmark", "generator"])
            .args(common::tiny_model_args(&models, 4))
            .args(["--num-samples", "7", "--cfg-scale", "2.0"])
            .args(["--model", "tiny-dp", "--benchmark", "tiny32-c2i", "--json"])
            .args(["--threads", "1", "--interval-resamples", "10"])
            .arg("--reference")
            .arg(d.join("one/samples.npz"))
            .arg("--inception")
            .arg(&inception)
            .arg("--out")
            .arg(out);
        if !record {
            cmd.arg("--no-record");
        }
        cmd.output().unwrap()
    };
    let ranked = succeeded(
        benchmark(
            torchrun_command(2, &db).env("RUST_LOG", "warn"),
            &d.join("runs"),
            true,
        ),
        "2-rank benchmark",
    );
    let json_of = |printed: &str| -> serde_json::Value {
        let start = printed.find("[\n").expect("a JSON array");
        let end = printed.rfind("\n]").expect("the array's end") + 2;
        serde_json::from_str(&printed[start..end]).unwrap()
    };
    let ranked = json_of(&ranked);
    let copy = d.join("runs-copy");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(d.join("runs"))
        .arg(&copy)
        .output()
        .unwrap();
    assert!(copied.status.success());
    // The ranks kept the reference's features; the single process measures them itself.
    std::fs::remove_dir_all(copy.join("reference-features")).unwrap();
    let mut alone = Command::new(env!("CARGO_BIN_EXE_llamagen"));
    alone.env("DATABASE_URL", db.url());
    let single = json_of(&succeeded(
        benchmark(&mut alone, &copy, false),
        "one-process benchmark",
    ));
    let (ranked, single) = (ranked.as_array().unwrap(), single.as_array().unwrap());
    assert_eq!(ranked.len(), 1);
    for (r, s) in ranked.iter().zip(single) {
        assert_eq!(r["cfg_scale"], s["cfg_scale"]);
        let (rm, sm) = (
            r["metrics"].as_object().unwrap(),
            s["metrics"].as_object().unwrap(),
        );
        assert_eq!(rm.keys().collect::<Vec<_>>(), sm.keys().collect::<Vec<_>>());
        for (name, value) in rm {
            let (a, b) = (value.as_f64(), sm[name].as_f64());
            let (Some(a), Some(b)) = (a, b) else {
                continue;
            };
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "cfg {}: {name} {a} on 2 ranks, {b} alone",
                r["cfg_scale"]
            );
        }
        assert!(r["evaluation_id"].is_i64(), "{r}");
    }
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM evaluations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 1, "rank 0 alone records");

    // Run again, both ranks read the kept features of the reference and measure the same.
    let cached = succeeded(
        benchmark(
            torchrun_command(2, &db).env("RUST_LOG", "warn,llamagen_pipeline::feature_cache=info"),
            &d.join("runs"),
            false,
        ),
        "2-rank benchmark from the kept features",
    );
    assert_eq!(
        cached.matches("reference features from").count(),
        2,
        "{cached}"
    );
    let cached = json_of(&cached);
    assert_eq!(cached[0]["metrics"], ranked[0]["metrics"]);

    // The tokenizer benchmark: 2 ranks reconstruct and measure half of the reference each
    // (batches of 3, so neither share is a whole number of batches) and rank 0 alone records
    // and prints what one process measures; the codebook usage, taken over the last codes in
    // order, is the same figure.
    let tokenizer = |cmd: &mut Command, features: &str, record: bool| {
        cmd.arg("--data-dir")
            .arg(d.join("data"))
            .args([
                "benchmark",
                "tokenizer",
                "--device",
                "cpu",
                "--batch-size",
                "3",
            ])
            .arg("--vq-ckpt")
            .arg(&models.vq_ckpt)
            .arg("--vq-config")
            .arg(&models.vq_config)
            .arg("--reference")
            .arg(d.join("one/samples.npz"))
            .arg("--inception")
            .arg(&inception)
            .args([
                "--model",
                "tiny-vq-dp",
                "--benchmark",
                "tiny32-reconstruction",
            ])
            .args(["--json", "--threads", "1", "--interval-resamples", "10"])
            .arg("--reference-features")
            .arg(d.join(features))
            .arg("--reconstruction-features")
            .arg(d.join(format!("{features}-chunks")));
        if !record {
            cmd.arg("--no-record");
        }
        cmd.output().unwrap()
    };
    let metrics_of = |printed: &str| -> serde_json::Value {
        assert_eq!(
            printed.matches("\"evaluation_id\"").count(),
            1,
            "one result printed:\n{printed}"
        );
        let start = printed.find("{\n").expect("a JSON object");
        let end = printed.rfind("\n}").expect("the object's end") + 2;
        serde_json::from_str(&printed[start..end]).unwrap()
    };
    let ranked = metrics_of(&succeeded(
        tokenizer(
            torchrun_command(2, &db).env("RUST_LOG", "warn"),
            "tokenizer-features",
            true,
        ),
        "2-rank tokenizer benchmark",
    ));
    assert!(ranked["evaluation_id"].is_i64(), "{ranked}");
    let mut alone = Command::new(env!("CARGO_BIN_EXE_llamagen"));
    alone.env("DATABASE_URL", db.url());
    let single = metrics_of(&succeeded(
        tokenizer(&mut alone, "tokenizer-features-alone", false),
        "one-process tokenizer benchmark",
    ));
    let (rm, sm) = (
        ranked["metrics"].as_object().unwrap(),
        single["metrics"].as_object().unwrap(),
    );
    assert_eq!(rm.keys().collect::<Vec<_>>(), sm.keys().collect::<Vec<_>>());
    assert!(rm.contains_key("codebook_usage") && rm.contains_key("rfid"));
    for (name, value) in rm {
        let (Some(a), Some(b)) = (value.as_f64(), sm[name].as_f64()) else {
            continue;
        };
        assert!(
            (a - b).abs() <= 1e-4 * b.abs().max(1.0),
            "{name} {a} on 2 ranks, {b} alone"
        );
    }
    assert_eq!(rm["codebook_usage"], sm["codebook_usage"]);
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM evaluations WHERE benchmark = 'tiny32-reconstruction'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(recorded, 1, "rank 0 alone records");
    // Rank 0 kept the originals' features; both ranks read them the next time...
    let cached = succeeded(
        tokenizer(
            torchrun_command(2, &db).env(
                "RUST_LOG",
                "warn,llamagen_pipeline::feature_cache=info,llamagen_pipeline::tokenizer_benchmark=info",
            ),
            "tokenizer-features",
            false,
        ),
        "2-rank tokenizer benchmark from the kept features",
    );
    assert_eq!(
        cached.matches("reference features from").count(),
        2,
        "{cached}"
    );
    // And each its share's reconstructions, measured nothing again.
    assert_eq!(
        cached
            .matches("1 of 1 chunks of reference images read back")
            .count(),
        2,
        "{cached}"
    );
    assert_eq!(metrics_of(&cached)["metrics"], ranked["metrics"]);
}
