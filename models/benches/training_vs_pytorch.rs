//! Training throughput, ours against LlamaGen's PyTorch model and train_c2i.py's optimizer setup
//! on the same weights and batch sizes, in the same run: a class-conditional GPT (vocabulary
//! 16384, 16 x 16 tokens), dropouts on, AdamW + clipping, fp32; one warm-up step, then the mean
//! over `--steps`; `--precision bf16` runs both forward passes under CUDA bf16 autocast (ours
//! through [`llamagen_models::autocast`], LlamaGen's as train_c2i.py's `--mixed-precision bf16`).
//!
//! ```text
//! cargo bench -p llamagen-models --bench training_vs_pytorch -- [--llamagen DIR] [--steps N]
//!     [--model small|GPT-B] [--batch N] [--device cpu|cuda] [--precision fp32|bf16] [--t2i]
//!     [--adamw fused|plain]
//! ```
//!
//! `--adamw fused` (the default) steps both sides with libtorch's fused AdamW kernel, as
//! train_c2i.py does (`fused=True`); `plain` runs ours written out and PyTorch's default
//! (a loop on the CPU, `foreach` on CUDA).
//!
//! `--t2i` trains the text-conditional variant instead: a 120-token FLAN-T5 XL prefix (2048
//! wide, random features) with captions of 20 to 120 valid tokens, LlamaGen's t2i attention
//! mask and the null caption's dropout, as train_t2i.py feeds its model.
//!
//! `small` (the default, for this 2-core machine) is 512 wide with 8 layers, batch 8; `GPT-B`
//! is the paper's 111M model. On CUDA the clock stops after a device synchronise and each side
//! also reports the GPU memory its process holds (nvidia-smi) after the timed steps.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use llamagen_models::gpt::{Conditioning, Gpt, GptConfig};
use llamagen_models::train::{MicroBatch, MixedPrecision, TrainConfig, Trainer};
use llamagen_models::weights;
use tch::{Device, Kind, Tensor, nn::VarStore};

/// GPU memory (MiB) that nvidia-smi reports for this process, if it can tell.
fn gpu_memory_mib() -> Option<u64> {
    let out = Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    let me = std::process::id().to_string();
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let (pid, mib) = l.split_once(',')?;
        (pid.trim() == me).then(|| mib.trim().parse().ok())?
    })
}

fn main() {
    let mut llamagen = std::env::var_os("LLAMAGEN_REPO").map(PathBuf::from);
    let mut steps = 5i64;
    let mut model = "small".to_string();
    let mut batch = None;
    let mut device = Device::Cpu;
    let mut mixed_precision = MixedPrecision::None;
    let mut t2i = false;
    let mut fused_adamw = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--llamagen" => llamagen = args.next().map(PathBuf::from),
            "--steps" => steps = args.next().and_then(|s| s.parse().ok()).unwrap_or(5),
            "--model" => model = args.next().unwrap_or_default(),
            "--batch" => batch = args.next().and_then(|s| s.parse().ok()),
            "--device" => {
                device = match args.next().as_deref() {
                    // libtorch's CUDA half, which the linker leaves out, is loaded on the way.
                    Some("cuda") => llamagen_native::torch::cuda_device()
                        .unwrap_or_else(|why| panic!("--device cuda: {why}")),
                    _ => Device::Cpu,
                }
            }
            "--t2i" => t2i = true,
            "--adamw" => fused_adamw = args.next().as_deref() != Some("plain"),
            "--precision" => {
                mixed_precision = args.next().unwrap_or_default().parse().unwrap();
            }
            _ => {}
        }
    }
    let conditioning = if t2i {
        Conditioning::Text
    } else {
        Conditioning::Class
    };
    let (mut config, default_batch) = match model.as_str() {
        "small" => (GptConfig::new(8, 8, 512, conditioning), 8),
        "GPT-B" => (
            GptConfig::named("GPT-B", conditioning, 16).expect("GPT-B is a named size"),
            64,
        ),
        other => panic!("--model is small or GPT-B, got {other:?}"),
    };
    config.vocab_size = 16384;
    config.block_size = 256;
    let batch: i64 = batch.unwrap_or(default_batch);
    let tokens = config.block_size;
    let dir = tempfile::tempdir().unwrap();
    // Both sides start from these weights. They are made on the CPU and the peer runs first:
    // our process keeps libtorch's CUDA cache once it has trained, which would starve it.
    tch::manual_seed(0);
    let init = VarStore::new(Device::Cpu);
    Gpt::new(&init.root(), config.clone()).unwrap();
    let weights_path = dir.path().join("gpt.safetensors");
    weights::save(&init, &weights_path).unwrap();
    let config_path = dir.path().join("gpt.json");
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
    if t2i {
        let features = Tensor::randn(
            [batch, config.cls_token_num, config.caption_dim],
            (Kind::Float, Device::Cpu),
        );
        let values = Vec::<f32>::try_from(&features.view([-1])).unwrap();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(dir.path().join("features.bin"), bytes).unwrap();
    }
    let peer_rows = llamagen.as_deref().map(|checkout| {
        peer(
            checkout,
            dir.path(),
            &PeerRun {
                batch,
                steps,
                device,
                autocast: mixed_precision == MixedPrecision::Bf16 && device.is_cuda(),
                t2i,
                fused_adamw,
            },
        )
    });

    let train_config = TrainConfig {
        mixed_precision,
        fused_adamw,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(config.clone(), train_config, device).unwrap();
    weights::load_strict(&trainer.vs, &weights_path).unwrap();
    let codes = Tensor::randint(config.vocab_size, [batch, tokens], (Kind::Int64, device));
    let batches = vec![if t2i {
        // The same features and lengths the peer draws (it reads them from these files).
        MicroBatch {
            cond: read_f32(&dir.path().join("features.bin"), device).view([
                batch,
                config.cls_token_num,
                config.caption_dim,
            ]),
            codes: codes.shallow_clone(),
            caption_lengths: Some(Tensor::from_slice(&caption_lengths(batch)).to_device(device)),
            valid: Some(Tensor::ones([batch], (Kind::Int64, device))),
        }
    } else {
        MicroBatch::from(&(
            Tensor::randint(config.num_classes, [batch], (Kind::Int64, device)),
            codes.shallow_clone(),
        ))
    }];
    let sync = || {
        if device.is_cuda() {
            tch::Cuda::synchronize(0)
        }
    };
    trainer.train_step_on(&batches).unwrap();
    sync();
    let t = Instant::now();
    for _ in 0..steps {
        trainer.train_step_on(&batches).unwrap();
    }
    sync();
    let ours = (steps * batch * tokens) as f64 / t.elapsed().as_secs_f64();
    let on = if device.is_cuda() {
        "CUDA".to_string()
    } else {
        format!("the CPU ({} threads)", tch::get_num_threads())
    };
    println!(
        "training on {on}: {model} ({} wide, {} layers, {}), vocab 16384, 256 tokens, batch {batch}, {}, {} AdamW",
        config.dim,
        config.n_layer,
        if t2i {
            "t2i: 120 caption tokens"
        } else {
            "c2i"
        },
        if mixed_precision == MixedPrecision::Bf16 && device.is_cuda() {
            "bf16 autocast"
        } else {
            "fp32"
        },
        if fused_adamw { "fused" } else { "plain" }
    );
    let ours_memory = if device.is_cuda() {
        gpu_memory_mib()
    } else {
        None
    };
    println!(
        "  ours                          {ours:>8.0} tokens/s{}",
        memory(ours_memory)
    );
    match peer_rows {
        None => println!("  LlamaGen / PyTorch            (no checkout given: --llamagen DIR)"),
        Some(Err(e)) => println!("  LlamaGen / PyTorch failed:\n{e}"),
        Some(Ok(rows)) => {
            for (name, theirs, mib) in rows {
                println!(
                    "  {name:<30}{theirs:>8.0} tokens/s{}   ours / theirs {:.2}x",
                    memory(mib),
                    ours / theirs
                );
            }
        }
    }
}

/// Valid caption tokens per sample: 20 to 120, spread over the batch.
fn caption_lengths(batch: i64) -> Vec<i64> {
    (0..batch).map(|i| 20 + (i * 37) % 101).collect()
}

fn read_f32(path: &Path, device: Device) -> Tensor {
    let bytes = std::fs::read(path).unwrap();
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Tensor::from_slice(&values).to_device(device)
}

fn memory(mib: Option<u64>) -> String {
    mib.map(|m| format!("   {m} MiB on the GPU"))
        .unwrap_or_default()
}

/// What the peer trains, as ours does.
struct PeerRun {
    batch: i64,
    steps: i64,
    device: Device,
    /// bf16 autocast of the forward pass.
    autocast: bool,
    t2i: bool,
    fused_adamw: bool,
}

/// LlamaGen's side: (label, tokens/s, GPU MiB) per run, or its stderr.
/// `dir` holds gpt.safetensors and gpt.json (and features.bin for `t2i`).
fn peer(
    llamagen: &Path,
    dir: &Path,
    run: &PeerRun,
) -> Result<Vec<(String, f64, Option<u64>)>, String> {
    let PeerRun {
        batch,
        steps,
        device,
        autocast,
        t2i,
        fused_adamw,
    } = *run;
    let (weights_path, config_path) = (dir.join("gpt.safetensors"), dir.join("gpt.json"));
    let t2i_features = t2i.then(|| dir.join("features.bin"));
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = std::env::var_os("LLAMAGEN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".venv/bin/python"));
    let runs: &[(&str, &[&str])] = if autocast {
        &[(" (bf16 autocast)", &["--autocast-bf16"])]
    } else {
        &[("", &[])]
    };
    let mut rows = Vec::new();
    for (label, extra) in runs {
        let out = Command::new(&python)
            .arg(repo.join("scripts/bench_training.py"))
            .arg("--llamagen")
            .arg(llamagen)
            .arg("--weights")
            .arg(&weights_path)
            .arg("--config")
            .arg(&config_path)
            .args(["--batch", &batch.to_string(), "--steps", &steps.to_string()])
            .args(["--threads", &tch::get_num_threads().to_string()])
            .args(["--device", if device.is_cuda() { "cuda" } else { "cpu" }])
            .args(*extra)
            .args(["--adamw", if fused_adamw { "fused" } else { "default" }])
            .args(
                t2i_features
                    .iter()
                    .flat_map(|f| ["--t2i-features".into(), f.clone().into_os_string()]),
            )
            .output()
            .expect("running scripts/bench_training.py");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        rows.push((
            format!(
                "LlamaGen + AdamW{}{label}",
                if fused_adamw { "(fused)" } else { "" }
            ),
            v["tokens_per_second"].as_f64().unwrap(),
            v["gpu_memory_mib"].as_u64(),
        ));
    }
    Ok(rows)
}
