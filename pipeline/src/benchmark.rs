//! A generator checkpoint benchmarked: for each guidance scale of the sweep, sample into a
//! folder named after the checkpoint and the settings (a re-run resumes and reuses it), extract
//! features, compute the metrics against the reference set, and record one evaluation per scale
//! with its whole sampling configuration, under the protocol of its measurement.
//!
//! Class-conditional checkpoints are measured as the ADM evaluator does (FID, sFID, IS,
//! precision, recall, KID); text-conditional ones, sampled from a prompts file, under LlamaGen's
//! text-to-image protocol ([`crate::text_to_image`]: FID, KID, CLIP-FID, CLIP score). FID, KID,
//! CLIP-FID and CLIP score come with 95% intervals.
//!
//! [`measure`] is the blocking part (sampling and features); [`record`] writes the results.
//! Recording the same checkpoint, benchmark and configuration again replaces that evaluation's
//! metrics, so a scheduled re-run never duplicates a row.

use std::path::{Path, PathBuf};

use anyhow::bail;
use llamagen_evaluate::inception::Inception;

use crate::image_sets::{IntervalArgs, Side, generation_metrics, load_side};
use crate::provenance::file_sha256;
use crate::recording::{MeasurementProtocol, Recording, ReferenceIdentity};
use crate::sample::{self, SampleArgs, SampleReport};
use crate::text_to_image::{TextToImageArgs, TextToImageReference};
use llamagen_clip::Clip;
use llamagen_store::results::Metric;

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
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub intervals: IntervalArgs,
    #[command(flatten)]
    pub text_to_image: TextToImageArgs,
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

pub fn open_inception(e: &EvaluationArgs) -> anyhow::Result<Inception> {
    if !e.inception.exists() {
        bail!(
            "no Inception network at {}: export it with scripts/export_inception.py (see its --help)",
            e.inception.display()
        );
    }
    Ok(Inception::open(&e.inception, e.threads, e.eval_batch_size)?)
}

/// One guidance scale's outcome.
#[derive(Debug)]
pub struct ScaleResult {
    pub cfg_scale: f64,
    /// The folder of the PNGs, samples.npz and sampling.json.
    pub folder: PathBuf,
    pub metrics: Vec<Metric>,
    pub report: SampleReport,
    /// The settings the sampler pinned in the folder.
    pub sampling: serde_json::Value,
    /// The sampler's settings at this scale.
    pub sample: SampleArgs,
}

impl ScaleResult {
    pub fn value(&self, name: &str) -> f64 {
        self.metrics
            .iter()
            .find(|m| m.name == name)
            .map_or(f64::NAN, |m| m.value)
    }
}

/// The guidance scales of a run: `--cfg-scales`, or the sampler's one scale.
pub fn scales(args: &GeneratorArgs) -> Vec<f64> {
    if args.cfg_scales.is_empty() {
        vec![args.sample.cfg_scale]
    } else {
        args.cfg_scales.clone()
    }
}

/// The reference set's features (loaded once, shared by every checkpoint and scale) and its
/// identity by content.
pub fn load_reference(
    e: &EvaluationArgs,
    net: &mut Inception,
) -> anyhow::Result<(Side, ReferenceIdentity)> {
    use anyhow::Context as _;
    let side = load_side(&e.reference, net, e.center_crop)
        .with_context(|| format!("reference {}", e.reference.display()))?;
    let identity = ReferenceIdentity::of_side(&e.reference, e.center_crop, &side)?;
    Ok((side, identity))
}

/// The reference side under the checkpoint's protocol.
pub enum Reference {
    /// The ADM evaluator's: the images (or statistics) through the Inception as stored.
    Images(Side),
    /// LlamaGen's text-to-image protocol, with CLIP.
    TextToImage {
        reference: TextToImageReference,
        clip: Box<Clip>,
        /// The side every image's centre square is resized to.
        resolution: usize,
    },
}

/// The networks and the reference set of a benchmark, opened once and shared by every
/// checkpoint and scale.
pub struct Measurer {
    pub net: Inception,
    pub reference: Reference,
    pub reference_set: ReferenceIdentity,
}

impl Measurer {
    /// Opens the Inception (and CLIP for a text-to-image benchmark, `text`) and reads the
    /// reference; a text-to-image reference folder's features are cached under
    /// `samples_out/reference-features/`.
    pub fn open(e: &EvaluationArgs, text: bool, samples_out: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let mut net = open_inception(e)?;
        if !text {
            let (side, reference_set) = load_reference(e, &mut net)?;
            return Ok(Self {
                net,
                reference: Reference::Images(side),
                reference_set,
            });
        }
        let t = &e.text_to_image;
        let mut clip = t.open_clip()?;
        let reference = crate::text_to_image::load_reference(
            &e.reference,
            &mut net,
            &e.inception,
            &mut clip,
            t.eval_resolution,
            &samples_out.join("reference-features"),
        )
        .with_context(|| format!("reference {}", e.reference.display()))?;
        let reference_set = ReferenceIdentity {
            path: e.reference.clone(),
            sha256: reference.folder_sha256.clone(),
            num_images: Some(reference.features.inception.nrows()),
            image_size: Some(t.eval_resolution),
            made: serde_json::json!({
                "format": "folder",
                "preprocessing": format!("CenterCropLongEdge, LANCZOS to {}", t.eval_resolution),
            }),
        };
        Ok(Self {
            net,
            reference: Reference::TextToImage {
                reference,
                clip: Box::new(clip),
                resolution: t.eval_resolution,
            },
            reference_set,
        })
    }

    /// The metrics of one scale's sample folder against the reference.
    fn measure_folder(
        &mut self,
        s: &SampleArgs,
        intervals: &IntervalArgs,
    ) -> anyhow::Result<Vec<Metric>> {
        use anyhow::Context as _;
        let npz = s.out.join("samples.npz");
        match &mut self.reference {
            Reference::Images(reference) => {
                let samples = load_side(&npz, &mut self.net, None)?;
                generation_metrics(reference, &samples, intervals)
            }
            Reference::TextToImage {
                reference,
                clip,
                resolution,
            } => {
                let prompts_file = s
                    .prompts
                    .as_ref()
                    .context("a text-to-image benchmark samples from --prompts")?;
                let prompts = sample::read_prompts(prompts_file)?;
                let batch = llamagen_evaluate::npz::read_reference(&npz)?;
                let images = batch
                    .images
                    .with_context(|| format!("{} holds no images", npz.display()))?;
                let (features, scores) = crate::text_to_image::measure_samples(
                    &images,
                    &prompts,
                    &mut self.net,
                    clip,
                    *resolution,
                )?;
                crate::text_to_image::metrics(reference, &features, &scores, intervals)
            }
        }
    }
}

/// The sampler's settings at each scale of the sweep, each with its own folder under
/// `OUT/<checkpoint sha256[..12]>-<benchmark>/`, named after every setting that changes the
/// images, so a re-run resumes the same folder.
pub fn scale_settings(args: &GeneratorArgs) -> anyhow::Result<Vec<SampleArgs>> {
    let (gpt_sha, _) = file_sha256(&args.sample.gpt_ckpt)?;
    let base = args
        .sample
        .out
        .join(format!("{}-{}", &gpt_sha[..12], args.evaluation.benchmark));
    Ok(scales(args)
        .into_iter()
        .map(|scale| {
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
            s
        })
        .collect())
}

/// Samples one scale into its folder (resuming what an earlier run left).
pub fn sample_scale(s: &SampleArgs) -> anyhow::Result<SampleReport> {
    let report = sample::sample(s)?;
    tracing::info!(
        "cfg {}: {} sampled, {} reused ({:.1} s GPT, {:.1} s decode)",
        s.cfg_scale,
        report.made,
        report.skipped,
        report.gpt_seconds,
        report.decode_seconds
    );
    Ok(report)
}

/// Samples the checkpoint at every scale and measures each scale against the reference.
/// Blocking: run it off the async threads.
pub fn measure(args: &GeneratorArgs, m: &mut Measurer) -> anyhow::Result<Vec<ScaleResult>> {
    let mut results = Vec::new();
    for s in scale_settings(args)? {
        let report = sample_scale(&s)?;
        let metrics = m.measure_folder(&s, &args.evaluation.intervals)?;
        let sampling: serde_json::Value =
            serde_json::from_slice(&std::fs::read(s.out.join("sampling.json"))?)?;
        results.push(ScaleResult {
            cfg_scale: s.cfg_scale,
            folder: s.out.clone(),
            metrics,
            report,
            sampling,
            sample: s,
        });
    }
    Ok(results)
}

/// Records one evaluation per scale, each under the protocol of its measurement; returns their
/// ids in scale order.
pub async fn record(
    args: &GeneratorArgs,
    results: &[ScaleResult],
    reference_set: &ReferenceIdentity,
    data_dir: &Path,
) -> anyhow::Result<Vec<i64>> {
    let e = &args.evaluation;
    let reference = reference_set.json();
    let inception_sha256 = file_sha256(&e.inception)?.0;
    let mut ids = Vec::new();
    for r in results {
        let s = &r.sample;
        let preprocessing = if s.prompts.is_some() {
            e.text_to_image.protocol_json()?
        } else {
            serde_json::json!({
                "samples": format!(
                    "generated at {} px, resized to {} px",
                    s.image_size,
                    s.image_size_eval.unwrap_or(s.image_size)
                ),
            })
        };
        let id = crate::recording::record(
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
                cfg_scale: Some(r.cfg_scale),
                cfg_interval: Some(s.cfg_interval as i32),
                top_k: Some(s.top_k as i32),
                top_p: Some(s.top_p),
                temperature: Some(s.temperature),
                image_size: Some(s.image_size as i32),
                eval_image_size: Some(s.image_size_eval.unwrap_or(s.image_size) as i32),
                seed: Some(s.seed as i64),
                precision: Some(&s.precision),
                extra: Some(serde_json::json!({
                    "reference": reference,
                    "sampling": r.sampling,
                    "first_sample": s.start,
                    "metrics": crate::image_sets::generator_metric_settings(&e.intervals),
                })),
                samples_path: Some(&r.folder),
                protocol: Some(MeasurementProtocol {
                    feature_extractor_sha256: &inception_sha256,
                    reference: reference_set,
                    preprocessing: preprocessing.clone(),
                    settings: crate::image_sets::generator_metric_settings(&e.intervals),
                    num_samples: s.num_samples as usize,
                }),
            },
            data_dir,
            &r.metrics,
            s.num_samples as usize,
        )
        .await?;
        ids.push(id);
    }
    Ok(ids)
}
