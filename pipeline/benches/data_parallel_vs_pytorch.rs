//! Data-parallel training throughput, ours over libtorch's c10d against PyTorch's
//! DistributedDataParallel, on the same weights and per-rank batches, in one run:
//!
//! - the cost of the data-parallel path itself: one process training alone, and the same
//!   process in a process group of one (every step's gradients go through the all-reduce);
//! - `--ranks` processes (one thread each) against one process with as many threads, at the
//!   same global batch, ours and PyTorch's (LlamaGen's `Transformer` under torchrun, DDP on
//!   Gloo; `scripts/bench_training.py`), ours with the gradients reduced during the backward
//!   pass (the default, as DDP does) and after it;
//! - the same ranks with AdamW's state sharded (ZeRO stage 1: `--shard-optimizer`), against
//!   DDP with PyTorch's `ZeroRedundancyOptimizer`, and the optimizer state each rank holds.
//!
//! ```text
//! cargo bench -p llamagen-pipeline --bench data_parallel_vs_pytorch -- [--llamagen DIR]
//!     [--ranks 2] [--batch 4] [--steps 5] [--device cpu|cuda]
//! ```
//!
//! With `--device cuda` only the first measure runs, on the GPU: the group of one is an NCCL
//! group, its gradient buckets reduced in place on the GPU during the backward pass (the
//! multi-rank rows need a GPU per rank).
//!
//! The model is a class-conditional GPT 384 wide with 6 layers, vocabulary 16384, 256 tokens,
//! fp32, dropouts on, AdamW with clipping; `--batch` is per rank. Without `--llamagen` (a
//! checkout of LlamaGen) the peer rows are left out.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use llamagen_distributed::{ProcessGroup, Rendezvous};
use llamagen_models::gpt::{Conditioning, Gpt, GptConfig};
use llamagen_models::train::{MicroBatch, Replicas, TrainConfig, Trainer};
use llamagen_models::weights;
use llamagen_pipeline::train::Ranks;
use tch::{Device, Kind, Tensor, nn::VarStore};

struct Options {
    llamagen: Option<PathBuf>,
    ranks: usize,
    batch: i64,
    steps: usize,
    /// Set in the rank processes of the sharded rows.
    shard: bool,
    /// Set in the rank processes of the row that reduces after the backward pass.
    after_backward: bool,
    device: Device,
}

fn options() -> Options {
    let mut o = Options {
        llamagen: std::env::var_os("LLAMAGEN_REPO").map(PathBuf::from),
        ranks: 2,
        batch: 4,
        steps: 5,
        shard: false,
        after_backward: false,
        device: Device::Cpu,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match arg.as_str() {
            "--llamagen" => o.llamagen = Some(PathBuf::from(value())),
            "--ranks" => o.ranks = value().parse().expect("--ranks N"),
            "--batch" => o.batch = value().parse().expect("--batch N"),
            "--steps" => o.steps = value().parse().expect("--steps N"),
            "--shard" => o.shard = true,
            "--after-backward" => o.after_backward = true,
            "--device" => {
                o.device = match value().as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => llamagen_native::torch::cuda_device()
                        .unwrap_or_else(|why| panic!("--device cuda: {why}")),
                    other => panic!("--device cpu|cuda, not {other}"),
                }
            }
            _ => {}
        }
    }
    o
}

fn config() -> GptConfig {
    let mut c = GptConfig::new(6, 6, 384, Conditioning::Class);
    c.vocab_size = 16384;
    c.block_size = 256;
    c
}

/// Trains `steps` timed steps (after one warm-up) at `batch` samples from `weights`, in the
/// group when given (with the optimizer state sharded over it when `shard`); returns the
/// seconds of the timed steps, the optimizer bytes this process held and, in a group, the
/// seconds one averaging of the gradients takes (timed apart, after the steps), in place in
/// their buckets and through copies.
fn train(
    device: Device,
    weights_path: &Path,
    batch: i64,
    steps: usize,
    group: Option<&ProcessGroup>,
    shard: bool,
    after_backward: bool,
) -> (f64, usize, Option<(f64, f64)>) {
    // Timings end when the GPU's queued work has, not when the host has queued it.
    let sync = || {
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
    };
    let mut trainer = Trainer::new(config(), TrainConfig::default(), device).unwrap();
    weights::load_strict(&trainer.vs, weights_path).unwrap();
    if let (Some(g), true) = (group, shard) {
        trainer.shard_optimizer(g.rank(), g.world());
    }
    let rank = group.map_or(0, |g| g.rank() as i64);
    tch::manual_seed(rank);
    let c = config();
    let batches = [MicroBatch {
        cond: Tensor::randint(c.num_classes, [batch], (Kind::Int64, device)),
        codes: Tensor::randint(c.vocab_size, [batch, c.block_size], (Kind::Int64, device)),
        caption_lengths: None,
        valid: None,
    }];
    let ranks = group.map(|g| {
        if after_backward {
            Ranks::reducing_after_backward(g)
        } else {
            Ranks::new(g)
        }
    });
    let step = |trainer: &mut Trainer| match &ranks {
        Some(r) => trainer.train_step_replicated(&batches, r).unwrap(),
        None => trainer.train_step_on(&batches).unwrap(),
    };
    step(&mut trainer);
    if let Some(g) = group {
        g.barrier().unwrap();
    }
    let started = Instant::now();
    for _ in 0..steps {
        step(&mut trainer);
    }
    sync();
    let seconds = started.elapsed().as_secs_f64();
    // The gradients in the trainer's order (by name), still the views of the attached buckets.
    let grads: Vec<Tensor> = trainer
        .vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect::<std::collections::BTreeMap<_, _>>()
        .values()
        .map(Tensor::grad)
        .collect();
    // Averaging the bucket views in place, and (for comparison) the same gradients as
    // separate tensors, which are flattened into buckets and copied back.
    let averaging = ranks.as_ref().zip(group).filter(|_| !shard).map(|(r, g)| {
        let started = Instant::now();
        for _ in 0..steps {
            r.mean(&grads).unwrap();
        }
        sync();
        let in_place = started.elapsed().as_secs_f64() / steps as f64;
        let copies: Vec<Tensor> = grads.iter().map(Tensor::copy).collect();
        let started = Instant::now();
        for _ in 0..steps {
            g.all_reduce_mean(&copies).unwrap();
        }
        sync();
        (in_place, started.elapsed().as_secs_f64() / steps as f64)
    });
    (seconds, trainer.optimizer_bytes(), averaging)
}

fn row(label: &str, tokens_per_s: f64, note: String) {
    println!("  {label:<42}{tokens_per_s:>8.0} tokens/s   {note}");
}

fn tokens_per_second(samples: i64, steps: usize, seconds: f64) -> f64 {
    (samples * config().block_size) as f64 * steps as f64 / seconds
}

/// One rank of `--ranks` processes (this binary again, with the rank in the environment):
/// rank 0 prints the global tokens/s and the optimizer bytes it held.
fn as_rank(o: &Options, weights_path: &Path) {
    let rendezvous = Rendezvous::from_env()
        .unwrap()
        .expect("RANK and WORLD_SIZE");
    let group = ProcessGroup::gloo(&rendezvous).unwrap();
    let (seconds, bytes, _) = train(
        o.device,
        weights_path,
        o.batch,
        o.steps,
        Some(&group),
        o.shard,
        o.after_backward,
    );
    if group.rank() == 0 {
        let samples = o.batch * group.world() as i64;
        println!("{} {bytes}", tokens_per_second(samples, o.steps, seconds));
    }
}

/// The ranks' tokens/s and the optimizer bytes rank 0 held.
fn launch_ranks(
    o: &Options,
    weights_path: &Path,
    shard: bool,
    after_backward: bool,
) -> (f64, usize) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let me = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..o.ranks)
        .map(|rank| {
            Command::new(&me)
                .args([
                    "--ranks",
                    &o.ranks.to_string(),
                    "--batch",
                    &o.batch.to_string(),
                ])
                .args(["--steps", &o.steps.to_string()])
                .args(shard.then_some("--shard"))
                .args(after_backward.then_some("--after-backward"))
                .env("BENCH_RANK_WEIGHTS", weights_path)
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", o.ranks.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("OMP_NUM_THREADS", "1")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let printed = String::from_utf8_lossy(&outs[0].stdout).into_owned();
    let mut fields = printed.split_whitespace();
    let rate = fields.next().and_then(|f| f.parse().ok());
    let bytes = fields.next().and_then(|f| f.parse().ok());
    rate.zip(bytes)
        .unwrap_or_else(|| panic!("rank 0 prints its tokens/s and bytes, not {printed:?}"))
}

/// LlamaGen's model under PyTorch: one process with `threads` threads, or `ranks` DDP ranks.
fn pytorch(
    o: &Options,
    repo: &Path,
    dir: &Path,
    ranks: usize,
    batch: i64,
    zero: bool,
) -> Option<f64> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("scripts/bench_training.py");
    let mut cmd = if ranks > 1 {
        let mut c = Command::new(root.join(".venv/bin/torchrun"));
        c.args(["--standalone", "--nproc-per-node", &ranks.to_string()])
            .arg(&script)
            .args(["--threads", "1"]);
        c
    } else {
        let mut c = Command::new(root.join(".venv/bin/python"));
        c.arg(&script).args(["--threads", &o.ranks.to_string()]);
        c
    };
    let out = cmd
        .arg("--llamagen")
        .arg(repo)
        .arg("--weights")
        .arg(dir.join("gpt.safetensors"))
        .arg("--config")
        .arg(dir.join("gpt.json"))
        .args([
            "--batch",
            &batch.to_string(),
            "--steps",
            &o.steps.to_string(),
        ])
        .args(zero.then_some("--zero"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with('{'))?;
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    value["tokens_per_second"].as_f64()
}

fn main() {
    let o = options();
    if let Some(weights_path) = std::env::var_os("BENCH_RANK_WEIGHTS") {
        as_rank(&o, Path::new(&weights_path));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(0);
    let init = VarStore::new(Device::Cpu);
    Gpt::new(&init.root(), config()).unwrap();
    let weights_path = dir.path().join("gpt.safetensors");
    weights::save(&init, &weights_path).unwrap();
    std::fs::write(
        dir.path().join("gpt.json"),
        serde_json::to_string(&config()).unwrap(),
    )
    .unwrap();
    let global = o.batch * o.ranks as i64;
    println!(
        "data-parallel training on {}: GPT 384 wide, 6 layers, vocab 16384, 256 tokens, fp32, \
         {} ranks x batch {} (global {global}), {} timed steps",
        match o.device {
            Device::Cuda(_) => "CUDA",
            _ => "the CPU",
        },
        o.ranks,
        o.batch,
        o.steps
    );

    // The data-parallel path's own cost, at one rank and the global batch.
    let threads = tch::get_num_threads();
    // Alternated, two rounds each, so that drift in this shared machine's speed lands on both.
    let one = ProcessGroup::alone_on(o.device).unwrap();
    let (mut alone_seconds, mut grouped_seconds, mut whole_bytes) = (Vec::new(), Vec::new(), 0);
    let (mut in_place, mut copied) = (0.0, 0.0);
    for _ in 0..2 {
        let (seconds, bytes, _) =
            train(o.device, &weights_path, global, o.steps, None, false, false);
        alone_seconds.push(seconds);
        whole_bytes = bytes;
        let (seconds, _, mean) = train(
            o.device,
            &weights_path,
            global,
            o.steps,
            Some(&one),
            false,
            false,
        );
        grouped_seconds.push(seconds);
        let (a, b) = mean.unwrap_or((f64::NAN, f64::NAN));
        in_place += a / 2.0;
        copied += b / 2.0;
    }
    let one_backend = one.backend();
    drop(one);
    let rate =
        |seconds: &[f64]| tokens_per_second(global, o.steps, seconds.iter().sum::<f64>() / 2.0);
    let (alone, grouped) = (rate(&alone_seconds), rate(&grouped_seconds));
    let rounds = |seconds: &[f64]| {
        seconds
            .iter()
            .map(|&s| format!("{:.0}", tokens_per_second(global, o.steps, s)))
            .collect::<Vec<_>>()
            .join(" and ")
    };
    row(
        &match o.device {
            Device::Cuda(_) => "ours, one process (CUDA)".to_string(),
            _ => format!("ours, one process ({threads} threads)"),
        },
        alone,
        format!("rounds: {}", rounds(&alone_seconds)),
    );
    row(
        &format!("ours, in a group of one ({})", one_backend),
        grouped,
        format!(
            "overhead {:+.1} %; rounds: {}",
            (alone / grouped - 1.0) * 100.0,
            rounds(&grouped_seconds)
        ),
    );
    let step_seconds = alone_seconds.iter().sum::<f64>() / (2.0 * o.steps as f64);
    println!(
        "  averaging the gradients in the group of one: {:.1} ms per step ({:.2} % of a step) \
         in their buckets; {:.1} ms ({:.2} %) copied through buckets",
        in_place * 1e3,
        in_place / step_seconds * 100.0,
        copied * 1e3,
        copied / step_seconds * 100.0
    );
    if o.device.is_cuda() {
        println!("  (the rank rows run on the CPU: one GPU per rank)");
        return;
    }
    let (ranks, _) = launch_ranks(&o, &weights_path, false, false);
    row(
        &format!("ours, {} ranks x 1 thread (Gloo)", o.ranks),
        ranks,
        format!("{:.2}x one process", ranks / alone),
    );
    let (after, _) = launch_ranks(&o, &weights_path, false, true);
    row(
        &format!("ours, {} ranks, reduced after the backward pass", o.ranks),
        after,
        format!(
            "reducing during the backward pass: {:+.1} %",
            (ranks / after - 1.0) * 100.0
        ),
    );
    let (sharded, sharded_bytes) = launch_ranks(&o, &weights_path, true, false);
    row(
        &format!("ours, {} ranks, optimizer sharded", o.ranks),
        sharded,
        format!(
            "{:.2}x unsharded; optimizer state {:.1} MB on rank 0 of {:.1} MB",
            sharded / ranks,
            sharded_bytes as f64 / 1e6,
            whole_bytes as f64 / 1e6
        ),
    );
    let Some(repo) = &o.llamagen else {
        println!("  (PyTorch rows need --llamagen DIR, a LlamaGen checkout)");
        return;
    };
    let torch_alone = pytorch(&o, repo, dir.path(), 1, global, false);
    let torch_ddp = pytorch(&o, repo, dir.path(), o.ranks, o.batch, false);
    let torch_zero = pytorch(&o, repo, dir.path(), o.ranks, o.batch, true);
    match (torch_alone, torch_ddp, torch_zero) {
        (Some(single), Some(ddp), Some(zero)) => {
            row(
                &format!("PyTorch, one process ({} threads)", o.ranks),
                single,
                format!("ours / theirs {:.2}x", alone / single),
            );
            row(
                &format!("PyTorch DDP, {} ranks x 1 thread (Gloo)", o.ranks),
                ddp,
                format!("ours / theirs {:.2}x", ranks / ddp),
            );
            row(
                &format!("PyTorch DDP + ZeroRedundancyOptimizer, {} ranks", o.ranks),
                zero,
                format!("ours / theirs {:.2}x", sharded / zero),
            );
        }
        _ => println!("  PyTorch did not report (see scripts/bench_training.py)"),
    }
}
