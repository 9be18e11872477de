//! One AdamW step over a GPT's parameters, ours written out and through libtorch's fused kernel,
//! against `torch.optim.AdamW` with and without `fused=True` (train_c2i.py's choice) on the same
//! shapes, in the same run: train_c2i.py's groups (decay 0.05 on tensors of two or more
//! dimensions), betas 0.9/0.95, random gradients; one warm-up step, then the mean over
//! `--steps`.
//!
//! ```text
//! cargo bench -p llamagen-models --bench adamw_vs_pytorch -- [--model GPT-B|GPT-L|...]
//!     [--steps N] [--device cpu|cuda]
//! ```
//!
//! The peer is `scripts/bench_adamw.py` with the virtualenv's Python (`LLAMAGEN_PYTHON`
//! overrides it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use llamagen_models::gpt::{Conditioning, Gpt, GptConfig};
use llamagen_models::optim::{AdamW, AdamWSettings};
use tch::{Device, Kind, Tensor, nn::VarStore};

fn main() {
    let mut model = "GPT-B".to_string();
    let mut steps = 5u32;
    let mut device = Device::Cpu;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--model" => model = args.next().unwrap_or_default(),
            "--steps" => steps = args.next().and_then(|s| s.parse().ok()).unwrap_or(5),
            "--device" if args.next().as_deref() == Some("cuda") => {
                device = llamagen_native::torch::cuda_device()
                    .unwrap_or_else(|why| panic!("--device cuda: {why}"));
            }
            _ => {}
        }
    }
    let mut config = GptConfig::named(&model, Conditioning::Class, 16)
        .unwrap_or_else(|e| panic!("--model {model}: {e}"));
    config.vocab_size = 16384;
    config.block_size = 256;
    tch::manual_seed(0);
    let vs = VarStore::new(device);
    Gpt::new(&vs.root(), config).unwrap();
    let params: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let elements: i64 = params.values().map(Tensor::numel).map(|n| n as i64).sum();
    for p in params.values() {
        // A backward pass through a sum gives each parameter its gradient tensor.
        (p * 0.0).sum(Kind::Float).backward();
        p.grad().copy_(&(p.randn_like() * 1e-3));
    }

    let dir = tempfile::tempdir().unwrap();
    let shapes: Vec<Vec<i64>> = params.values().map(Tensor::size).collect();
    let shapes_path = dir.path().join("shapes.json");
    std::fs::write(&shapes_path, serde_json::to_string(&shapes).unwrap()).unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = std::env::var_os("LLAMAGEN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    let peer = Command::new(&python)
        .arg(root.join("scripts/bench_adamw.py"))
        .arg("--shapes")
        .arg(&shapes_path)
        .args(["--steps", &steps.to_string()])
        .args(["--threads", &tch::get_num_threads().to_string()])
        .args(["--device", if device.is_cuda() { "cuda" } else { "cpu" }])
        .output()
        .expect("running scripts/bench_adamw.py");

    let mut ours = Vec::new();
    for fused in [true, false] {
        let settings = AdamWSettings::llamagen_gpt(fused);
        let mut adamw = AdamW::new(&params);
        adamw.update(&params, &settings, 1e-4, 1).unwrap();
        sync(device);
        let t = Instant::now();
        for step in 0..steps {
            adamw
                .update(&params, &settings, 1e-4, i64::from(step) + 2)
                .unwrap();
        }
        sync(device);
        ours.push(t.elapsed().as_secs_f64() / f64::from(steps) * 1e3);
    }

    let on = if device.is_cuda() {
        "CUDA".to_string()
    } else {
        format!("the CPU ({} threads)", tch::get_num_threads())
    };
    println!(
        "one AdamW step on {on}: {model}'s {} tensors, {:.1}M parameters",
        params.len(),
        elements as f64 / 1e6
    );
    println!("  ours, fused kernel              {:>9.1} ms", ours[0]);
    println!("  ours, written out               {:>9.1} ms", ours[1]);
    if !peer.status.success() {
        println!(
            "  PyTorch failed:\n{}",
            String::from_utf8_lossy(&peer.stderr)
        );
        return;
    }
    let theirs: serde_json::Value = serde_json::from_slice(&peer.stdout).unwrap();
    let fused = theirs["fused_ms"].as_f64().unwrap();
    let default = theirs["default_ms"].as_f64().unwrap();
    println!(
        "  torch AdamW(fused=True)         {fused:>9.1} ms   ours fused at {:.2}x its speed",
        fused / ours[0]
    );
    println!(
        "  torch AdamW, default            {default:>9.1} ms   ours written out at {:.2}x its speed",
        default / ours[1]
    );
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}
