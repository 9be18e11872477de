//! `llamagen evaluate REFERENCE SAMPLES`: the ADM evaluator's job. Both sides are an ADM-style
//! npz (`arr_0` images and/or `mu`/`sigma` statistics) or a folder of PNG/JPEG images; the
//! output is FID, sFID, Inception Score, precision, recall and KID, FID and KID with 95%
//! intervals (docs/metrics.md). `--save-stats` writes a side's statistics as a reference npz
//! for later runs; `--keep-features DIR` keeps both sides' features for the next run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use llamagen_evaluate::inception::Inception;
use llamagen_evaluate::npz::write_reference;
use llamagen_pipeline::benchmark::load_kept_side;
use llamagen_pipeline::image_sets::{IntervalArgs, generation_metrics, load_side};
use llamagen_pipeline::recording::{MeasurementProtocol, Recording, ReferenceIdentity, record};

#[derive(Debug, clap::Args)]
pub struct EvaluateArgs {
    /// Reference set: ADM npz (arr_0 and/or mu, sigma) or a folder of images.
    pub reference: PathBuf,
    /// Generated set: ADM npz with arr_0, or a folder of images.
    pub samples: PathBuf,
    /// A pipeline config whose sections give the Inception, center crop and interval
    /// settings (flags given here override them; relative paths resolve as `llamagen run` resolves them).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The FID Inception network exported by scripts/export_inception.py.
    #[arg(long, default_value = "weights/pt_inception-2015-12-05.onnx")]
    pub inception: PathBuf,
    /// Images per Inception batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// ONNX Runtime threads (0: as many as this process may use; docs/deploy.md).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// cpu, cuda or auto: where the Inception runs (a GPU through ONNX Runtime's CUDA execution
    /// provider; without it, the CPU, and the log says why).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Write the reference side's statistics (mu, sigma, mu_s, sigma_s) to this npz.
    #[arg(long)]
    pub save_stats: Option<PathBuf>,
    /// Keep both sides' Inception features in DIR, named by each set's content, the crop and
    /// the network, and read them back on the next run instead of measuring again (the folder
    /// `benchmark generator` keeps its reference's in may be shared).
    #[arg(long, value_name = "DIR")]
    pub keep_features: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Bring the images of a folder to SIZE x SIZE first, as ADM's and LlamaGen's
    /// center_crop_arr does (Pillow BOX halvings, BICUBIC resize, centre crop); without it a
    /// folder's images must already share one size.
    #[arg(long, value_name = "SIZE")]
    pub center_crop: Option<usize>,
    #[command(flatten)]
    pub intervals: IntervalArgs,
    #[command(flatten)]
    pub record: RecordArgs,
}

/// Where the result goes on the leaderboard (`--record`): the model and checkpoint that made
/// the samples and how they were sampled. Re-recording the same configuration updates its row.
#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// Store the metrics in PostgreSQL (needs --model and --checkpoint).
    #[arg(long, requires_all = ["model", "checkpoint"])]
    pub record: bool,
    /// Model name, e.g. LlamaGen-B.
    #[arg(long)]
    pub model: Option<String>,
    /// GPT size (B, L, XL, XXL, XXXL, 1B, 3B, 7B).
    #[arg(long)]
    pub size: Option<String>,
    /// The checkpoint file that generated the samples (hashed to identify it).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Training step of the checkpoint.
    #[arg(long, default_value_t = 0)]
    pub step: i64,
    /// Benchmark name the result is filed under.
    #[arg(long, default_value = "imagenet256-c2i")]
    pub benchmark: String,
    /// Guidance scale the samples were made with.
    #[arg(long)]
    pub cfg_scale: Option<f64>,
    /// Top-k the samples were made with.
    #[arg(long)]
    pub top_k: Option<i32>,
    /// Top-p the samples were made with.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Temperature the samples were made with.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Side in pixels the samples were made at.
    #[arg(long)]
    pub image_size: Option<i32>,
    /// Sampling seed of the samples.
    #[arg(long)]
    pub seed: Option<i64>,
}

/// What a failed recording says after the metrics were printed.
const NOT_RECORDED: &str = "the metrics printed were measured but not recorded";

pub async fn run(args: &EvaluateArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    if !args.inception.exists() {
        bail!(
            "no Inception network at {}: export it with scripts/export_inception.py (see its --help)",
            args.inception.display()
        );
    }
    let device = llamagen_pipeline::sample::device(&args.device)?;
    let mut net = Inception::open_on(
        &args.inception,
        args.threads,
        args.batch_size,
        llamagen_native::onnx::OnnxDevice::of(device),
    )?;
    // A side whose features are kept comes with its identity by content, which recording
    // would otherwise hash again (a folder of 50,000 images is gigabytes).
    let mut load = |path: &Path, what| match &args.keep_features {
        Some(dir) => load_kept_side(
            path,
            args.center_crop,
            &args.inception,
            &mut net,
            None,
            dir,
            what,
        )
        .map(|(side, identity)| (side, Some(identity))),
        None => load_side(path, &mut net, args.center_crop).map(|side| (side, None)),
    };
    let (reference, reference_identity) = load(&args.reference, "reference features")
        .with_context(|| format!("reference {}", args.reference.display()))?;
    let (samples, _) = load(&args.samples, "sample features")
        .with_context(|| format!("samples {}", args.samples.display()))?;

    let metrics = generation_metrics(&reference, &samples, &args.intervals)?;
    // Printed before anything reaches the database, so that an unreachable one loses nothing.
    if args.json {
        println!("{}", crate::benchmark::metrics_json(&metrics));
    } else {
        crate::benchmark::print_metrics(&metrics);
    }
    if let Some(path) = &args.save_stats {
        write_reference(
            path,
            None,
            Some(&reference.pool),
            reference.spatial.as_ref(),
        )?;
        if args.record.record {
            let mut made = ReferenceIdentity::of(path, None, None, None)?;
            made.num_images = reference.features.as_ref().map(|f| f.pool.nrows());
            made.made = serde_json::json!({
                "format": "npz statistics (mu, sigma, mu_s, sigma_s)",
                "from": args.reference.display().to_string(),
                "center_crop": args.center_crop,
            });
            llamagen_pipeline::recording::file_reference_set(&made, data_dir)
                .await
                .context(NOT_RECORDED)?;
        }
    }
    if args.record.record {
        let r = &args.record;
        let count = samples.features.as_ref().map_or(0, |f| f.pool.nrows());
        let reference_set = match reference_identity {
            Some(identity) => identity,
            None => ReferenceIdentity::of_side(&args.reference, args.center_crop, &reference)?,
        };
        let (Some(model), Some(checkpoint)) = (&r.model, &r.checkpoint) else {
            bail!("--record needs --model and --checkpoint");
        };
        let recording = Recording {
            kind: "generator",
            architecture: "llamagen-gpt",
            model,
            size: r.size.as_deref(),
            // The samples were made elsewhere: the model is not loaded here.
            params: None,
            config: serde_json::json!({}),
            checkpoint,
            step: r.step,
            benchmark: &r.benchmark,
            cfg_scale: r.cfg_scale,
            cfg_interval: None,
            top_k: r.top_k,
            top_p: r.top_p,
            temperature: r.temperature,
            image_size: r.image_size,
            eval_image_size: None,
            seed: r.seed,
            precision: None,
            extra: Some(serde_json::json!({
                "metrics": llamagen_pipeline::image_sets::generator_metric_settings(&args.intervals)
            })),
            samples_path: args.samples.is_dir().then_some(args.samples.as_path()),
            protocol: Some(MeasurementProtocol {
                feature_extractor_sha256: &llamagen_pipeline::provenance::file_sha256(
                    &args.inception,
                )?
                .0,
                reference: &reference_set,
                preprocessing: serde_json::json!({
                    "samples": match args.center_crop {
                        Some(size) if args.samples.is_dir() => format!("ADM center_crop_arr {size}"),
                        _ => "as stored".to_string(),
                    },
                }),
                settings: llamagen_pipeline::image_sets::generator_metric_settings(&args.intervals),
                num_samples: count,
            }),
        };
        let id = record(&recording, data_dir, &metrics, count)
            .await
            .context(NOT_RECORDED)?;
        eprintln!("recorded as evaluation #{id}");
    }
    Ok(ExitCode::SUCCESS)
}
