//! Sampling speed on this machine, ours against LlamaGen's own PyTorch code on the same weights
//! in the same run:
//!
//! - GPT-B token generation (KV cache, fp32) for 16 images without guidance and for 8 images
//!   with guidance (scale 4, so a doubled batch of 16), at 256 px (16 x 16 tokens) and 384 px
//!   (24 x 24 tokens); LlamaGen's `generate` on the same safetensors. The paper's Table 7 is
//!   the 384 px row with guidance. `--models GPT-B,GPT-L,GPT-XL` adds the larger models.
//! - VQ-16 `decode_code` of 8 images at 256 px, ours against LlamaGen's `VQModel`.
//!
//! ```text
//! cargo bench -p llamagen-models --bench sampling_vs_llamagen -- [--llamagen DIR] [--sizes 256,384] [--repeat N]
//!     [--device cpu|cuda] [--precision fp32|bf16] [--models GPT-B,...]
//!     [--decoders eager,static,graph,sjd] [--jacobi-window 16]
//! ```
//!
//! Our side runs once per decoder (`llamagen_models::generate::Decoder`): by default the eager
//! loop on the CPU, and the eager loop and the CUDA graph on CUDA, each row against the same
//! LlamaGen figure. `static` times the fixed-shape step run eagerly (what the graph records).
//! `sjd` times speculative Jacobi decoding over `--jacobi-window` positions per pass and prints
//! its forward passes beside plain decoding's. How many drafts a model accepts depends on its
//! distributions: these seeded random weights give nearly uniform ones, under which almost
//! every redrawn draft passes its test, so the passes here are far fewer than a trained model's
//! would be. The row shows what a pass of W positions costs, not what a checkpoint saves.
//!
//! On CUDA both sides run one untimed warm-up first (CUDA context, cuBLAS handles) and the
//! clock stops after a device synchronise; `--precision bf16` casts the GPT's weights as
//! LlamaGen's `sample_c2i.py --precision bf16` does (the VQ stays fp32 on both sides).
//!
//! `--llamagen` (or `LLAMAGEN_REPO`) names a checkout of FoundationVision/LlamaGen; without one
//! only our figures are printed. Weights are seeded random (real ones cannot be downloaded
//! here), which changes nothing for speed: every token goes through the same computation.
//! Results go to docs/BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use llamagen_models::generate::{Decoder, Sampling, generate_speculative, generate_with};
use llamagen_models::gpt::{Conditioning, Gpt, GptConfig};
use llamagen_models::vq::{VqConfig, VqModel};
use llamagen_models::weights;
use tch::{Device, Kind, Tensor, nn::VarStore};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The peer's interpreter: `LLAMAGEN_PYTHON`, else the project's virtualenv (on a GPU machine
/// that has its own CUDA PyTorch, point `LLAMAGEN_PYTHON` at it).
fn python() -> PathBuf {
    std::env::var_os("LLAMAGEN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"))
}

/// What our side of a row runs.
#[derive(Clone, Copy)]
enum Runner {
    /// One token per forward pass, through this decode loop.
    Plain(Decoder),
    /// Speculative Jacobi decoding.
    Speculative,
}

struct Options {
    llamagen: Option<PathBuf>,
    device: Device,
    /// "fp32" or "bf16" (CUDA only), as `llamagen sample --precision`.
    precision: String,
    sizes: Vec<i64>,
    /// GPT sizes by name, as `GptConfig::named`.
    models: Vec<String>,
    decoders: Vec<Runner>,
    /// Positions per pass of the `sjd` rows.
    jacobi_window: i64,
    /// Runs per measurement; the best is reported (these machines are shared and noisy).
    repeat: usize,
}

fn options() -> Options {
    let mut llamagen = std::env::var_os("LLAMAGEN_REPO").map(PathBuf::from);
    let mut sizes = vec![256, 384];
    let mut repeat = 1;
    let mut device = Device::Cpu;
    let mut precision = "fp32".to_string();
    let mut models = vec!["GPT-B".to_string()];
    let mut decoders = None;
    let mut jacobi_window = 16;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--llamagen" => llamagen = args.next().map(PathBuf::from),
            "--sizes" => {
                sizes = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|s| s.parse().ok())
                    .collect()
            }
            "--device" => {
                device = match args.next().as_deref() {
                    // libtorch's CUDA half, which the linker leaves out, is loaded on the way.
                    Some("cuda") => llamagen_native::torch::cuda_device()
                        .unwrap_or_else(|why| panic!("--device cuda: {why}")),
                    _ => Device::Cpu,
                }
            }
            "--models" => {
                models = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            "--decoders" => {
                decoders = Some(
                    args.next()
                        .unwrap_or_default()
                        .split(',')
                        .map(|d| match d {
                            "eager" => Runner::Plain(Decoder::Eager),
                            "static" => Runner::Plain(Decoder::Static),
                            "graph" => Runner::Plain(Decoder::CudaGraph),
                            "sjd" => Runner::Speculative,
                            other => {
                                panic!("--decoders takes eager, static, graph, sjd; got {other}")
                            }
                        })
                        .collect(),
                )
            }
            "--jacobi-window" => {
                jacobi_window = args.next().and_then(|s| s.parse().ok()).unwrap_or(16)
            }
            "--precision" => precision = args.next().unwrap_or_else(|| "fp32".into()),
            "--repeat" => repeat = args.next().and_then(|s| s.parse().ok()).unwrap_or(1).max(1),
            _ => {} // cargo bench passes --bench
        }
    }
    assert!(
        precision == "fp32" || (precision == "bf16" && device.is_cuda()),
        "--precision is fp32, or bf16 with --device cuda"
    );
    let decoders = decoders.unwrap_or_else(|| {
        if device.is_cuda() {
            vec![
                Runner::Plain(Decoder::Eager),
                Runner::Plain(Decoder::CudaGraph),
            ]
        } else {
            vec![Runner::Plain(Decoder::Eager)]
        }
    });
    Options {
        llamagen,
        device,
        precision,
        sizes,
        models,
        decoders,
        jacobi_window,
        repeat,
    }
}

/// Best of `repeat` runs of LlamaGen's side, or None without a checkout.
fn peer(llamagen: Option<&Path>, repeat: usize, args: &[&str]) -> Option<f64> {
    (0..repeat)
        .filter_map(|_| peer_once(llamagen, args))
        .min_by(f64::total_cmp)
}

fn peer_once(llamagen: Option<&Path>, args: &[&str]) -> Option<f64> {
    let llamagen = llamagen?;
    let out = Command::new(python())
        .arg(repo().join("scripts/bench_sampling.py"))
        .arg("--llamagen")
        .arg(llamagen)
        .args(args)
        .output()
        .expect("running scripts/bench_sampling.py (scripts/setup.sh installs its virtualenv)");
    if !out.status.success() {
        eprintln!(
            "LlamaGen side failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON from the peer");
    v["seconds"].as_f64()
}

fn best_of(device: Device, repeat: usize, mut run: impl FnMut()) -> f64 {
    if device.is_cuda() {
        run();
        tch::Cuda::synchronize(0);
    }
    (0..repeat)
        .map(|_| {
            let t = Instant::now();
            run();
            if device.is_cuda() {
                tch::Cuda::synchronize(0);
            }
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn row(what: &str, ours: f64, theirs: Option<f64>) {
    match theirs {
        Some(t) => println!(
            "  {what:<64} ours {ours:>7.2} s   LlamaGen {t:>7.2} s   {:.2}x",
            t / ours
        ),
        None => println!("  {what:<64} ours {ours:>7.2} s   LlamaGen (no checkout given)"),
    }
}

fn gpt(name: &str, dir: &Path, grid: i64, opts: &Options) -> (VarStore, Gpt, PathBuf) {
    tch::manual_seed(1);
    let mut config = GptConfig::named(name, Conditioning::Class, grid).unwrap();
    config.vocab_size = 16384;
    let mut vs = VarStore::new(opts.device);
    let model = Gpt::new(&vs.root(), config).unwrap();
    // The zero-initialised output layer would make sampling trivially uniform.
    tch::no_grad(|| {
        let mut output = vs.variables()["output.weight"].shallow_clone();
        output.copy_(&(Tensor::randn(output.size(), (Kind::Float, opts.device)) * 0.02));
    });
    let path = dir.join(format!("{name}_{grid}.safetensors"));
    weights::save(&vs, &path).unwrap();
    if opts.precision == "bf16" {
        vs.set_kind(Kind::BFloat16);
    }
    (vs, model, path)
}

fn main() {
    let opts = options();
    let dir = tempfile::tempdir().unwrap();
    let llamagen = opts.llamagen.as_deref();
    let threads = tch::get_num_threads();
    let device_flag = if opts.device.is_cuda() { "cuda" } else { "cpu" };
    let on = if opts.device.is_cuda() {
        "CUDA".to_string()
    } else {
        format!("the CPU ({threads} libtorch threads)")
    };
    println!(
        "sampling on {on}, {} with KV cache, top-k 0, top-p 1",
        opts.precision
    );

    for (name, size) in opts
        .models
        .iter()
        .flat_map(|m| opts.sizes.iter().map(move |s| (m, s)))
    {
        let grid = size / 16;
        let (_vs, model, path) = gpt(name, dir.path(), grid, &opts);
        let w = path.to_str().unwrap();
        let size_s = size.to_string();
        for (images, cfg) in [(16i64, 1.0f64), (8, 4.0)] {
            let cond = Tensor::arange(images, (Kind::Int64, opts.device));
            let seeds: Vec<u64> = (0..images as u64).collect();
            let sampling = Sampling {
                cfg_scale: cfg,
                top_k: 0,
                ..Sampling::default()
            };
            let theirs = peer(
                llamagen,
                opts.repeat,
                &[
                    "--threads",
                    &threads.to_string(),
                    "--device",
                    device_flag,
                    "--precision",
                    &opts.precision,
                    "gpt",
                    "--weights",
                    w,
                    "--gpt-model",
                    name,
                    "--image-size",
                    &size_s,
                    "--classes",
                    &images.to_string(),
                    "--cfg-scale",
                    &cfg.to_string(),
                ],
            );
            let label = if cfg > 1.0 {
                format!("{name} {size} px, {images} images, CFG {cfg} (batch 16)")
            } else {
                format!("{name} {size} px, {images} images, no CFG")
            };
            for &runner in &opts.decoders {
                let mut passes = 0;
                let ours = best_of(opts.device, opts.repeat, || {
                    let codes = match runner {
                        Runner::Plain(decoder) => {
                            generate_with(&model, &cond, None, &sampling, &seeds, decoder).unwrap()
                        }
                        Runner::Speculative => {
                            let sjd = Sampling {
                                jacobi_window: opts.jacobi_window,
                                ..sampling.clone()
                            };
                            let (codes, stats) =
                                generate_speculative(&model, &cond, None, &sjd, &seeds).unwrap();
                            passes = stats.passes;
                            codes
                        }
                    };
                    assert_eq!(codes.size(), [images, grid * grid]);
                });
                let name = match runner {
                    Runner::Plain(decoder) => format!("{decoder:?}"),
                    Runner::Speculative => format!(
                        "SJD window {} ({passes} passes, plain {})",
                        opts.jacobi_window,
                        grid * grid - 1
                    ),
                };
                row(&format!("{label}, {name}"), ours, theirs);
            }
        }
    }

    tch::manual_seed(2);
    let vs = VarStore::new(opts.device);
    let vq = VqModel::new(&vs.root(), VqConfig::vq16()).unwrap();
    let path = dir.path().join("vq16.safetensors");
    weights::save(&vs, &path).unwrap();
    let images = 8i64;
    let codes = Tensor::randint(16384, [images, 16, 16], (Kind::Int64, opts.device));
    let ours = best_of(opts.device, opts.repeat, || {
        let decoded = tch::no_grad(|| vq.decode_codes(&codes).unwrap());
        assert_eq!(decoded.size(), [images, 3, 256, 256]);
    });
    let theirs = peer(
        llamagen,
        opts.repeat,
        &[
            "--threads",
            &threads.to_string(),
            "--device",
            device_flag,
            "vq",
            "--weights",
            path.to_str().unwrap(),
            "--image-size",
            "256",
            "--images",
            &images.to_string(),
        ],
    );
    row("VQ-16 decode, 8 images at 256 px", ours, theirs);
}
