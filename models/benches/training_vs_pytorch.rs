//! Training throughput on this machine's CPU, ours against LlamaGen's PyTorch model and
//! train_c2i.py's optimizer setup on the same weights and batch sizes, in the same run:
//! a 512-wide, 8-layer class-conditional GPT (vocabulary 16384, 16 x 16 tokens), batch 8, fp32,
//! dropouts on, AdamW + clipping; one warm-up step, then the mean over `--steps`.
//!
//! ```text
//! cargo bench -p llamagen-models --bench training_vs_pytorch -- [--llamagen DIR] [--steps N]
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use llamagen_models::gpt::{Conditioning, GptConfig};
use llamagen_models::train::{TrainConfig, Trainer};
use llamagen_models::weights;
use tch::{Device, Kind, Tensor};

fn main() {
    let mut llamagen = std::env::var_os("LLAMAGEN_REPO").map(PathBuf::from);
    let mut steps = 5i64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--llamagen" => llamagen = args.next().map(PathBuf::from),
            "--steps" => steps = args.next().and_then(|s| s.parse().ok()).unwrap_or(5),
            _ => {}
        }
    }
    let batch = 8i64;
    let mut config = GptConfig::new(8, 8, 512, Conditioning::Class);
    config.block_size = 256;
    let tokens = config.block_size;
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::new(config.clone(), TrainConfig::default(), Device::Cpu).unwrap();
    let weights_path = dir.path().join("gpt.safetensors");
    weights::save(&trainer.vs, &weights_path).unwrap();
    let config_path = dir.path().join("gpt.json");
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();

    let codes = Tensor::randint(
        config.vocab_size,
        [batch, tokens],
        (Kind::Int64, Device::Cpu),
    );
    let labels = Tensor::randint(config.num_classes, [batch], (Kind::Int64, Device::Cpu));
    let batches = vec![(labels, codes)];
    trainer.train_step(&batches).unwrap();
    let t = Instant::now();
    for _ in 0..steps {
        trainer.train_step(&batches).unwrap();
    }
    let ours = (steps * batch * tokens) as f64 / t.elapsed().as_secs_f64();
    println!(
        "training on the CPU ({} threads): 512 wide, 8 layers, vocab 16384, 256 tokens, batch 8",
        tch::get_num_threads()
    );
    println!("  ours                          {ours:>8.0} tokens/s");

    let Some(llamagen) = llamagen else {
        println!("  LlamaGen / PyTorch            (no checkout given: --llamagen DIR)");
        return;
    };
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(repo.join(".venv/bin/python"))
        .arg(repo.join("scripts/bench_training.py"))
        .arg("--llamagen")
        .arg(&llamagen)
        .arg("--weights")
        .arg(&weights_path)
        .arg("--config")
        .arg(&config_path)
        .args(["--batch", &batch.to_string(), "--steps", &steps.to_string()])
        .args(["--threads", &tch::get_num_threads().to_string()])
        .output()
        .expect("running scripts/bench_training.py");
    if !out.status.success() {
        println!(
            "  LlamaGen / PyTorch failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let theirs = v["tokens_per_second"].as_f64().unwrap();
    println!(
        "  LlamaGen Transformer + AdamW  {theirs:>8.0} tokens/s   ours / theirs {:.2}x",
        ours / theirs
    );
}
