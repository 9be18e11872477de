//! Activation checkpointing: the memory a training step needs and what the recomputation costs,
//! ours (`TrainConfig::activation_checkpointing`) against PyTorch's `torch.utils.checkpoint`
//! around each of LlamaGen's blocks, on the same weights and batch, in one run. Each of the four
//! trainings runs in its own process, so that its peak resident memory (`VmHWM`, or
//! `ru_maxrss` for Python) is its own.
//!
//! ```text
//! cargo bench -p llamagen-models --bench activation_checkpointing -- [--llamagen DIR]
//!     [--model small|GPT-B] [--batch N] [--steps N]
//! ```
//!
//! A class-conditional GPT (vocabulary 16384, 16 x 16 tokens), fp32 on the CPU, dropouts on,
//! AdamW + clipping; one warm-up step, then `--steps` timed. `small` (the default) is 512 wide
//! with 8 layers, batch 8.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use llamagen_models::gpt::{Conditioning, Gpt, GptConfig};
use llamagen_models::train::{TrainConfig, Trainer};
use llamagen_models::weights;
use tch::{Device, Kind, Tensor, nn::VarStore};

struct Options {
    llamagen: Option<PathBuf>,
    model: String,
    batch: Option<i64>,
    steps: i64,
    /// Set in the child processes: `plain` or `checkpointed`, with the weights' folder.
    child: Option<(String, PathBuf)>,
}

fn options() -> Options {
    let mut o = Options {
        llamagen: std::env::var_os("LLAMAGEN_REPO").map(PathBuf::from),
        model: "small".into(),
        batch: None,
        steps: 3,
        child: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match arg.as_str() {
            "--llamagen" => o.llamagen = Some(PathBuf::from(value())),
            "--model" => o.model = value(),
            "--batch" => o.batch = value().parse().ok(),
            "--steps" => o.steps = value().parse().expect("--steps N"),
            "--child" => {
                let variant = value();
                o.child = Some((variant, PathBuf::from(value())));
            }
            _ => {}
        }
    }
    o
}

fn config(model: &str) -> (GptConfig, i64) {
    let (mut c, batch) = match model {
        "small" => (GptConfig::new(8, 8, 512, Conditioning::Class), 8),
        "GPT-B" => (
            GptConfig::named("GPT-B", Conditioning::Class, 16).expect("GPT-B is a named size"),
            16,
        ),
        other => panic!("--model is small or GPT-B, got {other:?}"),
    };
    c.vocab_size = 16384;
    c.block_size = 256;
    (c, batch)
}

/// Peak resident memory of this process in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// A child: trains from the weights in `dir` and prints tokens/s and its peak memory.
fn child(o: &Options, variant: &str, dir: &Path) {
    let (c, default_batch) = config(&o.model);
    let batch = o.batch.unwrap_or(default_batch);
    let train = TrainConfig {
        activation_checkpointing: variant == "checkpointed",
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(c.clone(), train, Device::Cpu).unwrap();
    weights::load_strict(&trainer.vs, &dir.join("gpt.safetensors")).unwrap();
    tch::manual_seed(0);
    let batches = [(
        Tensor::randint(c.num_classes, [batch], (Kind::Int64, Device::Cpu)),
        Tensor::randint(
            c.vocab_size,
            [batch, c.block_size],
            (Kind::Int64, Device::Cpu),
        ),
    )];
    trainer.train_step(&batches).unwrap();
    let started = Instant::now();
    for _ in 0..o.steps {
        trainer.train_step(&batches).unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    let tokens = (o.steps * batch * c.block_size) as f64;
    println!(
        "{}",
        serde_json::json!({"tokens_per_second": tokens / seconds, "peak_rss_mib": peak_rss_mib()})
    );
}

/// (tokens/s, peak MiB) of a child process's JSON line.
fn measured(out: std::process::Output, what: &str) -> (f64, f64) {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "{what} printed no figures:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    (
        v["tokens_per_second"].as_f64().unwrap_or(f64::NAN),
        v["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
    )
}

fn main() {
    let o = options();
    if let Some((variant, dir)) = &o.child {
        child(&o, variant, dir);
        return;
    }
    let (c, default_batch) = config(&o.model);
    let batch = o.batch.unwrap_or(default_batch);
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(0);
    let init = VarStore::new(Device::Cpu);
    Gpt::new(&init.root(), c.clone()).unwrap();
    weights::save(&init, &dir.path().join("gpt.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("gpt.json"),
        serde_json::to_string(&c).unwrap(),
    )
    .unwrap();
    println!(
        "activation checkpointing on the CPU: {} ({} layers, {} wide), batch {batch}, {} tokens, fp32, {} timed steps",
        o.model, c.n_layer, c.dim, c.block_size, o.steps
    );
    let me = std::env::current_exe().unwrap();
    let ours = |variant: &str| {
        let out = Command::new(&me)
            .args(["--model", &o.model, "--batch", &batch.to_string()])
            .args(["--steps", &o.steps.to_string(), "--child", variant])
            .arg(dir.path())
            .output()
            .unwrap();
        measured(out, variant)
    };
    let (plain, plain_mib) = ours("plain");
    let (checkpointed, checkpointed_mib) = ours("checkpointed");
    let row = |label: &str, rate: f64, mib: f64, note: String| {
        println!("  {label:<44}{rate:>8.0} tokens/s {mib:>8.0} MiB peak   {note}");
    };
    row("ours", plain, plain_mib, String::new());
    row(
        "ours, activation checkpointing",
        checkpointed,
        checkpointed_mib,
        format!(
            "{:.2}x the speed, {:.0} MiB less",
            checkpointed / plain,
            plain_mib - checkpointed_mib
        ),
    );
    let Some(repo) = &o.llamagen else {
        println!("  (PyTorch rows need --llamagen DIR, a LlamaGen checkout)");
        return;
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let theirs = |extra: &[&str]| {
        let out = Command::new(root.join(".venv/bin/python"))
            .arg(root.join("scripts/bench_training.py"))
            .arg("--llamagen")
            .arg(repo)
            .arg("--weights")
            .arg(dir.path().join("gpt.safetensors"))
            .arg("--config")
            .arg(dir.path().join("gpt.json"))
            .args([
                "--batch",
                &batch.to_string(),
                "--steps",
                &o.steps.to_string(),
            ])
            .args(["--threads", &tch::get_num_threads().to_string()])
            .args(extra)
            .output()
            .unwrap();
        measured(out, "scripts/bench_training.py")
    };
    let (torch_plain, torch_plain_mib) = theirs(&[]);
    let (torch_checkpointed, torch_checkpointed_mib) = theirs(&["--checkpoint"]);
    row(
        "LlamaGen + AdamW",
        torch_plain,
        torch_plain_mib,
        format!("ours / theirs {:.2}x", plain / torch_plain),
    );
    row(
        "LlamaGen + AdamW, torch.utils.checkpoint",
        torch_checkpointed,
        torch_checkpointed_mib,
        format!(
            "ours / theirs {:.2}x; {:.0} MiB less than without",
            checkpointed / torch_checkpointed,
            torch_plain_mib - torch_checkpointed_mib
        ),
    );
}
