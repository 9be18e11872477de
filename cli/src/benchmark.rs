//! `llamagen benchmark`: issue #4's runner. It turns a checkpoint into leaderboard rows.
//!
//! - `generator`: for each guidance scale of the sweep, sample with `llamagen sample`'s code into
//!   a folder named after the checkpoint and the settings (so a re-run resumes and reuses it),
//!   extract Inception features, compute FID, sFID, IS, precision and recall against the
//!   reference set, and record one evaluation per scale with its whole sampling configuration.
//! - `tokenizer`: reconstruct the reference images through a VQ model and record rFID, PSNR,
//!   SSIM (LlamaGen's convention) and codebook usage.
//!
//! Recording the same checkpoint, benchmark and configuration again replaces that evaluation's
//! metrics (`store::results`), so a scheduled re-run never duplicates a row.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use llamagen_cli::provenance::file_sha256;
use llamagen_evaluate::codebook::CodebookUsage;
use llamagen_evaluate::frechet::{Statistics, frechet_distance};
use llamagen_evaluate::image_quality::{Convention, reconstruction_quality};
use llamagen_evaluate::inception::Inception;
use llamagen_models::images::{from_uint8_nhwc, to_uint8_nhwc};
use ndarray::{Array4, Axis, s};
use tch::{Device, Tensor};

use crate::evaluate::{self, Recording};
use crate::sample::{self, SampleArgs, VqArgs};

#[derive(Debug, clap::Subcommand)]
pub enum BenchmarkCommand {
    /// Sample a GPT checkpoint at each guidance scale, evaluate against a reference, record.
    Generator(Box<GeneratorArgs>),
    /// Reconstruct reference images through a VQ tokenizer and record rFID, PSNR, SSIM, usage.
    Tokenizer(Box<TokenizerArgs>),
}

/// Where results go and what they are compared with; shared by both modes.
#[derive(Debug, Clone, clap::Args)]
pub struct EvaluationArgs {
    /// Reference set: ADM npz (arr_0 and/or mu, sigma) or a folder of images. The tokenizer
    /// mode needs images.
    #[arg(long)]
    pub reference: PathBuf,
    /// The FID Inception network exported by scripts/export_inception.py.
    #[arg(long, default_value = "weights/pt_inception-2015-12-05.onnx")]
    pub inception: PathBuf,
    /// Leaderboard name of the model, e.g. LlamaGen-B.
    #[arg(long)]
    pub model: String,
    /// Training step of the checkpoint.
    #[arg(long, default_value_t = 0)]
    pub step: i64,
    /// Benchmark name, e.g. imagenet256-c2i or imagenet256-tokenizer.
    #[arg(long)]
    pub benchmark: String,
    /// Center-crop the images of a reference folder to SIZE first (ADM's center_crop_arr).
    #[arg(long, value_name = "SIZE")]
    pub center_crop: Option<usize>,
    /// Images per Inception batch.
    #[arg(long, default_value_t = 32)]
    pub eval_batch_size: usize,
    /// ONNX Runtime threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Compute and print, but do not write to PostgreSQL.
    #[arg(long)]
    pub no_record: bool,
}

#[derive(Debug, clap::Args)]
pub struct GeneratorArgs {
    #[command(flatten)]
    pub sample: SampleArgs,
    /// Guidance scales to sweep (comma-separated); default: --cfg-scale alone.
    #[arg(long, value_delimiter = ',')]
    pub cfg_scales: Vec<f64>,
    #[command(flatten)]
    pub evaluation: EvaluationArgs,
}

#[derive(Debug, clap::Args)]
pub struct TokenizerArgs {
    #[command(flatten)]
    pub vq: VqArgs,
    /// Images per tokenizer batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[command(flatten)]
    pub evaluation: EvaluationArgs,
}

pub async fn run(command: &BenchmarkCommand, data_dir: &Path) -> anyhow::Result<ExitCode> {
    match command {
        BenchmarkCommand::Generator(args) => generator(args, data_dir).await,
        BenchmarkCommand::Tokenizer(args) => tokenizer(args, data_dir).await,
    }
}

fn open_inception(e: &EvaluationArgs) -> anyhow::Result<Inception> {
    if !e.inception.exists() {
        bail!(
            "no Inception network at {}: export it with scripts/export_inception.py (see its --help)",
            e.inception.display()
        );
    }
    Ok(Inception::open(&e.inception, e.threads, e.eval_batch_size)?)
}

/// The reference set's path and sha256, stored with every evaluation.
fn reference_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    let sha256 = if path.is_file() {
        Some(file_sha256(path)?.0)
    } else {
        None
    };
    Ok(serde_json::json!({ "path": path.display().to_string(), "sha256": sha256 }))
}

async fn generator(args: &GeneratorArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let e = &args.evaluation;
    let scales = if args.cfg_scales.is_empty() {
        vec![args.sample.cfg_scale]
    } else {
        args.cfg_scales.clone()
    };
    let mut net = open_inception(e)?;
    let reference = evaluate::load_side(&e.reference, &mut net, e.center_crop)
        .with_context(|| format!("reference {}", e.reference.display()))?;
    let (gpt_sha, _) = file_sha256(&args.sample.gpt_ckpt)?;
    let base = args
        .sample
        .out
        .join(format!("{}-{}", &gpt_sha[..12], e.benchmark));

    println!(
        "{:>6} {:>10} {:>10} {:>10} {:>10} {:>10}  folder",
        "cfg", "FID", "sFID", "IS", "precision", "recall"
    );
    for scale in scales {
        let mut s = args.sample.clone();
        s.cfg_scale = scale;
        s.out = base.join(format!(
            "cfg{scale}-interval{}-k{}-p{}-t{}-seed{}-from{}-n{}-eval{}",
            s.cfg_interval,
            s.top_k,
            s.top_p,
            s.temperature,
            s.seed,
            s.start,
            s.num_samples,
            s.image_size_eval.unwrap_or(s.image_size)
        ));
        s.no_npz = false;
        let report = sample::sample(&s)?;
        tracing::info!(
            "cfg {scale}: {} sampled, {} reused ({:.1} s GPT, {:.1} s decode)",
            report.made,
            report.skipped,
            report.gpt_seconds,
            report.decode_seconds
        );
        let samples = evaluate::load_side(&s.out.join("samples.npz"), &mut net, None)?;
        let metrics = evaluate::generation_metrics(&reference, &samples)?;
        let value = |name: &str| {
            metrics
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(f64::NAN, |(_, v)| *v)
        };
        println!(
            "{scale:>6} {:>10.4} {:>10.4} {:>10.4} {:>10.4} {:>10.4}  {}",
            value("fid"),
            value("sfid"),
            value("inception_score"),
            value("precision"),
            value("recall"),
            s.out.display()
        );
        if !e.no_record {
            let sampling: serde_json::Value =
                serde_json::from_slice(&std::fs::read(s.out.join("sampling.json"))?)?;
            let id = evaluate::record(
                &Recording {
                    kind: "generator",
                    architecture: "llamagen-gpt",
                    model: &e.model,
                    size: s
                        .gpt_config
                        .is_none()
                        .then(|| s.gpt_model.trim_start_matches("GPT-")),
                    checkpoint: &s.gpt_ckpt,
                    step: e.step,
                    benchmark: &e.benchmark,
                    cfg_scale: Some(scale),
                    cfg_interval: Some(s.cfg_interval as i32),
                    top_k: Some(s.top_k as i32),
                    top_p: Some(s.top_p),
                    temperature: Some(s.temperature),
                    image_size: Some(s.image_size as i32),
                    eval_image_size: Some(s.image_size_eval.unwrap_or(s.image_size) as i32),
                    seed: Some(s.seed as i64),
                    precision: Some(&s.precision),
                    extra: Some(serde_json::json!({
                        "reference": reference_json(&e.reference)?,
                        "sampling": sampling,
                        "first_sample": s.start,
                    })),
                    samples_path: Some(&s.out),
                },
                data_dir,
                &metrics,
                s.num_samples as usize,
            )
            .await?;
            println!("       recorded as evaluation #{id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reference images as one uint8 batch [N, H, W, 3].
fn reference_images(path: &Path, center_crop: Option<usize>) -> anyhow::Result<Array4<u8>> {
    if path.is_dir() {
        return evaluate::read_folder(path, center_crop);
    }
    llamagen_evaluate::npz::read_reference(path)?
        .images
        .with_context(|| {
            format!(
                "{} holds statistics only; the tokenizer needs images",
                path.display()
            )
        })
}

async fn tokenizer(args: &TokenizerArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let e = &args.evaluation;
    let config = args.vq.config()?;
    if args.batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    let originals = reference_images(&e.reference, e.center_crop)
        .with_context(|| format!("reference {}", e.reference.display()))?;
    let (n, h, w, _) = originals.dim();
    let f = config.downsample() as usize;
    if h % f != 0 || w % f != 0 {
        bail!("reference images are {w}x{h}; the tokenizer needs sides that are multiples of {f}");
    }
    if n < 2 {
        bail!("need at least 2 reference images, found {n}");
    }
    let device = sample::device(&args.device)?;
    let (_vs, vq) = args.vq.load(device)?;

    let mut usage = CodebookUsage::llamagen(config.codebook_size as usize);
    let mut reconstructions = Array4::<u8>::zeros(originals.dim());
    let (mut psnr_sum, mut ssim_sum) = (0.0, 0.0);
    for start in (0..n).step_by(args.batch_size) {
        let end = (start + args.batch_size).min(n);
        let batch = originals.slice(s![start..end, .., .., ..]);
        let pixels = Tensor::from_slice(batch.as_standard_layout().as_slice().context("layout")?)
            .view([(end - start) as i64, h as i64, w as i64, 3])
            .to_device(device);
        let (recon, q) = tch::no_grad(|| vq.reconstruct(&from_uint8_nhwc(&pixels), false))?;
        let codes = Vec::<i64>::try_from(&q.codes.view([-1]).to_device(Device::Cpu))?;
        usage.push(&codes.iter().map(|&c| c as u32).collect::<Vec<_>>())?;
        let recon = to_uint8_nhwc(&recon);
        let values = Vec::<u8>::try_from(&recon.view([-1]))?;
        let recon = Array4::from_shape_vec((end - start, h, w, 3), values)?;
        for (i, r) in recon.axis_iter(Axis(0)).enumerate() {
            let (p, s) = reconstruction_quality(
                originals.index_axis(Axis(0), start + i),
                r,
                Convention::LlamaGen,
            )?;
            psnr_sum += p;
            ssim_sum += s;
        }
        reconstructions
            .slice_mut(s![start..end, .., .., ..])
            .assign(&recon);
    }

    let mut net = open_inception(e)?;
    let real = net.features(originals.view())?;
    let fake = net.features(reconstructions.view())?;
    let rfid = frechet_distance(
        &Statistics::from_features(real.pool.view())?,
        &Statistics::from_features(fake.pool.view())?,
    )?;
    let metrics = vec![
        ("rfid", rfid),
        ("psnr", psnr_sum / n as f64),
        ("ssim", ssim_sum / n as f64),
        ("codebook_usage", usage.usage()),
    ];
    for (name, value) in &metrics {
        println!("{name:<16} {value:.6}");
    }
    if !e.no_record {
        let id = evaluate::record(
            &Recording {
                kind: "tokenizer",
                architecture: "llamagen-vq",
                model: &e.model,
                size: None,
                checkpoint: &args.vq.vq_ckpt,
                step: e.step,
                benchmark: &e.benchmark,
                cfg_scale: None,
                cfg_interval: None,
                top_k: None,
                top_p: None,
                temperature: None,
                image_size: Some(h as i32),
                eval_image_size: Some(h as i32),
                seed: None,
                precision: Some("fp32"),
                extra: Some(serde_json::json!({
                    "reference": reference_json(&e.reference)?,
                    "vq": config,
                    "ssim_convention": "llamagen",
                })),
                samples_path: None,
            },
            data_dir,
            &metrics,
            n,
        )
        .await?;
        println!("recorded as evaluation #{id}");
    }
    Ok(ExitCode::SUCCESS)
}
