//! Tokenizer training throughput, ours ([`VqTrainer::train_step`]) against LlamaGen's
//! `vq_train.py` loop (its VQModel and VQLoss, `scripts/bench_vq_training.py`) on the same
//! weights and images, in the same run: one tokenizer step and one discriminator step per
//! iteration, the discriminator on from the first step (the costlier half of a run), LPIPS
//! with VGG16's real widths (random weights), fp32; one warm-up step, then the mean over
//! `--steps`. The two sides alternate for `--rounds` rounds and each reports its best round, so
//! that a neighbour's burst on a shared machine does not decide the ratio.
//!
//! ```text
//! cargo bench -p llamagen-models --bench vq_training_vs_llamagen -- [--llamagen DIR]
//!     [--steps N] [--rounds N] [--model small|VQ-16] [--batch N] [--size PX]
//!     [--device cpu|cuda]
//! ```
//!
//! `small` (the default, for this 2-core machine) is a tokenizer 64 wide with channel
//! multipliers 1, 1, 2, 2 on 64 px images, batch 4; `VQ-16` is the paper's tokenizer at 256 px,
//! batch 8 (for a GPU).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use llamagen_models::lpips::Lpips;
use llamagen_models::patchgan::PatchGan;
use llamagen_models::vq::{VqConfig, VqModel};
use llamagen_models::vq_loss::VqLossConfig;
use llamagen_models::vq_train::{VqTrainConfig, VqTrainer};
use llamagen_models::weights;
use tch::{Device, Kind, Tensor, nn::VarStore};

fn main() {
    let mut llamagen = std::env::var_os("LLAMAGEN_REPO").map(PathBuf::from);
    let mut steps = 3i64;
    let mut rounds = 3usize;
    let mut model = "small".to_string();
    let mut batch = None;
    let mut size = None;
    let mut device = Device::Cpu;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--llamagen" => llamagen = args.next().map(PathBuf::from),
            "--steps" => steps = args.next().and_then(|s| s.parse().ok()).unwrap_or(3),
            "--rounds" => rounds = args.next().and_then(|s| s.parse().ok()).unwrap_or(3),
            "--model" => model = args.next().unwrap_or_default(),
            "--batch" => batch = args.next().and_then(|s| s.parse().ok()),
            "--size" => size = args.next().and_then(|s| s.parse().ok()),
            "--device" => {
                device = match args.next().as_deref() {
                    // libtorch's CUDA half, which the linker leaves out, is loaded on the way.
                    Some("cuda") => llamagen_native::torch::cuda_device()
                        .unwrap_or_else(|why| panic!("--device cuda: {why}")),
                    _ => Device::Cpu,
                }
            }
            _ => {}
        }
    }
    let (vq_config, default_batch, default_size) = match model.as_str() {
        "small" => (
            VqConfig {
                ch: 64,
                encoder_ch_mult: vec![1, 1, 2, 2],
                decoder_ch_mult: vec![1, 1, 2, 2],
                z_channels: 64,
                num_res_blocks: 1,
                ..VqConfig::vq16()
            },
            4,
            64,
        ),
        "VQ-16" => (VqConfig::vq16(), 8, 256),
        other => panic!("--model is small or VQ-16, got {other:?}"),
    };
    let batch: i64 = batch.unwrap_or(default_batch);
    let size: i64 = size.unwrap_or(default_size);
    let config = VqTrainConfig {
        loss: VqLossConfig {
            disc_start: 0,
            // The peer trains with LPIPS' dropout on, as vq_train.py does.
            perceptual_dropout: true,
            ..VqLossConfig::default()
        },
        ..VqTrainConfig::default()
    };

    // Both sides start from these weights, made on the CPU; the peer runs first.
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(0);
    let vq_vs = VarStore::new(Device::Cpu);
    VqModel::new(&vq_vs.root(), vq_config.clone()).unwrap();
    weights::save(&vq_vs, &dir.path().join("vq.safetensors")).unwrap();
    let disc_vs = VarStore::new(Device::Cpu);
    PatchGan::new(&disc_vs.root(), config.loss.discriminator.clone());
    save_all(&disc_vs, &dir.path().join("discriminator.safetensors"));
    let lpips_vs = VarStore::new(Device::Cpu);
    Lpips::new(&lpips_vs.root());
    let lpips = dir.path().join("lpips.safetensors");
    weights::save(&lpips_vs, &lpips).unwrap();
    let images = Tensor::rand([batch, 3, size, size], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let values = Vec::<f32>::try_from(&images.view([-1])).unwrap();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(dir.path().join("images.bin"), bytes).unwrap();
    let json = serde_json::json!({ "vq": vq_config, "loss": config.loss, "image_size": size });
    std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();

    let mut trainer = VqTrainer::new(vq_config, config, &lpips, device).unwrap();
    weights::load_strict(&trainer.vs, &dir.path().join("vq.safetensors")).unwrap();
    weights::load_strict(
        &trainer.disc_vs,
        &dir.path().join("discriminator.safetensors"),
    )
    .unwrap();
    let images = images.to_device(device);
    let sync = || {
        if device.is_cuda() {
            tch::Cuda::synchronize(0)
        }
    };
    trainer.train_step(&images).unwrap();
    sync();
    let mut ours = Vec::new();
    let mut theirs: Option<Result<Vec<f64>, String>> = llamagen.as_ref().map(|_| Ok(Vec::new()));
    for _ in 0..rounds {
        // The peer is a fresh process from the weights the bench wrote, warm-up included.
        if let (Some(checkout), Some(Ok(rates))) = (llamagen.as_deref(), theirs.as_mut()) {
            match peer(checkout, dir.path(), steps, device) {
                Ok(rate) => rates.push(rate),
                Err(e) => theirs = Some(Err(e)),
            }
        }
        let start = Instant::now();
        for _ in 0..steps {
            trainer.train_step(&images).unwrap();
        }
        sync();
        ours.push(steps as f64 / start.elapsed().as_secs_f64());
    }
    let best = |rates: &[f64]| rates.iter().copied().fold(0.0, f64::max);
    let list = |rates: &[f64]| {
        rates
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };

    println!(
        "tokenizer training, {model} at {size} px, batch {batch}, {rounds} rounds of {steps} timed steps, {} threads, {device:?}",
        tch::get_num_threads()
    );
    println!(
        "  ours (VqTrainer::train_step)        best {:.3} steps/s (rounds: {})",
        best(&ours),
        list(&ours)
    );
    match theirs {
        Some(Ok(t)) => {
            println!(
                "  LlamaGen vq_train.py loop          best {:.3} steps/s (rounds: {})",
                best(&t),
                list(&t)
            );
            println!(
                "  ours / theirs                      {:.2}x",
                best(&ours) / best(&t)
            );
        }
        Some(Err(e)) => println!("  LlamaGen: not measured ({e})"),
        None => println!("  LlamaGen: not measured (pass --llamagen DIR or set LLAMAGEN_REPO)"),
    }
}

/// Every variable, integer counters included (the batch norms' `num_batches_tracked`), as the
/// peer's strict `load_state_dict` wants them.
fn save_all(vs: &VarStore, path: &Path) {
    let tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    Tensor::write_safetensors(&tensors, path).unwrap();
}

fn peer(llamagen: &Path, dir: &Path, steps: i64, device: Device) -> Result<f64, String> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = std::env::var_os("LLAMAGEN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".venv/bin/python"));
    let out = Command::new(&python)
        .arg(repo.join("scripts/bench_vq_training.py"))
        .arg("--llamagen")
        .arg(llamagen)
        .arg("--dir")
        .arg(dir)
        .args(["--steps", &steps.to_string()])
        .args(["--threads", &tch::get_num_threads().to_string()])
        .args(["--device", if device.is_cuda() { "cuda" } else { "cpu" }])
        .output()
        .map_err(|e| format!("running scripts/bench_vq_training.py: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
    value["steps_per_second"]
        .as_f64()
        .ok_or_else(|| format!("no steps_per_second in {line}"))
}
