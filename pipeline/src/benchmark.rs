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
//!
//! Under a launcher the work is split across the ranks of a [`ProcessGroup`]: each rank samples
//! its stride of every scale's folder ([`sample::sample_on`]), passes its contiguous share of
//! the samples (and of an ADM reference's images) through the networks, and the features are
//! gathered so that every rank computes the same metrics; rank 0 alone records and prints.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use llamagen_evaluate::inception::{Inception, InceptionFeatures, POOL_DIM};

use crate::feature_cache::FeatureCache;
use crate::image_sets::{
    IntervalArgs, Side, gather_features, gather_rows, gather_values, generation_metrics,
    inception_features, load_side_on,
};
use crate::provenance::file_sha256;
use crate::recording::{MeasurementProtocol, Recording, ReferenceIdentity};
use crate::sample::{self, SampleArgs, SampleReport};
use crate::text_to_image::{TextToImageArgs, TextToImageFeatures, TextToImageReference};
use llamagen_clip::Clip;
use llamagen_distributed::ProcessGroup;
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
    /// ONNX Runtime threads (0: as many as this process may use; docs/deploy.md).
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
    /// What each scale's sample folder keeps once the sweep is recorded (printed, with
    /// --no-record): all of it; grid, the first 16 PNGs (what the dashboard shows) with their
    /// prompts, and sampling.json; or none.
    #[arg(long, value_enum, default_value_t = KeepSamples::All)]
    pub keep_samples: KeepSamples,
    #[command(flatten)]
    pub evaluation: EvaluationArgs,
}

/// What a scale's sample folder keeps once its result is recorded. ImageNet's 50,000 samples
/// take about 6 GB of PNGs, 9.8 GB of samples.npz and 1 GB of features per scale, so a
/// scheduled evaluator that keeps them all fills its disk within a training run.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum KeepSamples {
    /// The PNGs, samples.npz (for ADM's evaluator), sampling.json and the features.
    #[default]
    All,
    /// The first [`GRID_SAMPLES`] PNGs in name order, each with its `.txt` prompt if it has
    /// one (what the dashboard's model page shows), and sampling.json.
    Grid,
    /// Nothing: the folder is removed.
    None,
}

/// How many samples the dashboard's grid shows (`llamagen_dashboard::samples::GRID`), the
/// first in name order.
pub const GRID_SAMPLES: usize = 16;

/// The Inception on `device` (a GPU through ONNX Runtime's CUDA execution provider where the
/// library has it, else the CPU; the log says which).
pub fn open_inception(e: &EvaluationArgs, device: tch::Device) -> anyhow::Result<Inception> {
    if !e.inception.exists() {
        bail!(
            "no Inception network at {}: export it with scripts/export_inception.py (see its --help)",
            e.inception.display()
        );
    }
    Ok(Inception::open_on(
        &e.inception,
        e.threads,
        e.eval_batch_size,
        llamagen_native::onnx::OnnxDevice::of(device),
    )?)
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
/// identity by content. Features of a reference with images are kept in `cache_dir` and read
/// from there by later runs (`crate::feature_cache`); under a group, only when every rank
/// finds them, as the ranks otherwise share the measuring.
pub fn load_reference(
    e: &EvaluationArgs,
    net: &mut Inception,
    group: Option<&ProcessGroup>,
    cache_dir: &Path,
) -> anyhow::Result<(Side, ReferenceIdentity)> {
    load_kept_side(
        &e.reference,
        e.center_crop,
        &e.inception,
        net,
        group,
        cache_dir,
        "reference features",
    )
    .with_context(|| format!("reference {}", e.reference.display()))
}

/// The image set at `path` (an npz's `arr_0`, or a folder center-cropped to `center_crop`)
/// through the Inception `inception` (opened as `net`), or an npz's statistics, with its
/// identity by content. The features are kept in `cache_dir`, logged as `what`, and read back
/// by later runs: under a group, only when every rank finds them.
pub fn load_kept_side(
    path: &Path,
    center_crop: Option<usize>,
    inception: &Path,
    net: &mut Inception,
    group: Option<&ProcessGroup>,
    cache_dir: &Path,
    what: &'static str,
) -> anyhow::Result<(Side, ReferenceIdentity)> {
    let mut identity =
        ReferenceIdentity::of(path, center_crop.filter(|_| path.is_dir()), None, None)?;
    let cache =
        features_cache(path, center_crop, inception, &identity, cache_dir)?.describing(what);
    let cached = found_by_every_rank(read_inception_features(&cache), group)?;
    let side = match cached {
        Some(features) => Side::of_features(features)?,
        None => {
            let side = load_side_on(path, net, center_crop, group)?;
            // An npz of statistics alone has no features to keep, and takes no time to read.
            if let Some(f) = side
                .features
                .as_ref()
                .filter(|_| group.is_none_or(|g| g.rank() == 0))
            {
                write_inception_features(&cache, f);
            }
            side
        }
    };
    identity.num_images = side.features.as_ref().map(|f| f.pool.nrows());
    Ok((side, identity))
}

/// `cached` where every rank of `group` found its copy, else `None` on every rank: the ranks
/// either all read the features or all share the measuring.
pub(crate) fn found_by_every_rank<T>(
    cached: Option<T>,
    group: Option<&ProcessGroup>,
) -> anyhow::Result<Option<T>> {
    let Some(g) = group else {
        return Ok(cached);
    };
    let found = g.sum_f64(&[f64::from(u8::from(cached.is_some()))])?;
    Ok(cached.filter(|_| found[0] == g.world() as f64))
}

/// Where the Inception features of an ADM-protocol reference (the generator and the tokenizer
/// benchmarks alike) are kept: named by the reference's content, the crop of a folder, and the
/// network's sha256.
pub fn reference_cache(
    e: &EvaluationArgs,
    identity: &ReferenceIdentity,
    cache_dir: &Path,
) -> anyhow::Result<FeatureCache> {
    features_cache(
        &e.reference,
        e.center_crop,
        &e.inception,
        identity,
        cache_dir,
    )
}

/// [`reference_cache`] for any image set: `path`'s `identity` and crop, the Inception's sha256.
fn features_cache(
    path: &Path,
    center_crop: Option<usize>,
    inception: &Path,
    identity: &ReferenceIdentity,
    cache_dir: &Path,
) -> anyhow::Result<FeatureCache> {
    let center_crop = center_crop.filter(|_| path.is_dir());
    Ok(FeatureCache::new(
        cache_dir,
        "adm",
        &[
            identity.sha256.as_bytes(),
            format!("{center_crop:?}").as_bytes(),
            file_sha256(inception)?.0.as_bytes(),
        ],
    ))
}

const FEATURE_NAMES: [&str; 3] = ["pool", "spatial", "logits"];

/// The Inception features `cache` holds (a reference's or samples'), if a previous run kept
/// them intact.
pub fn read_inception_features(cache: &FeatureCache) -> Option<InceptionFeatures> {
    use llamagen_evaluate::inception::{LOGITS_DIM, POOL_DIM, SPATIAL_DIM};
    let [pool, spatial, logits] = cache.read(FEATURE_NAMES, [POOL_DIM, SPATIAL_DIM, LOGITS_DIM])?;
    Some(InceptionFeatures {
        pool,
        spatial,
        logits,
    })
}

/// Keeps `features` in `cache`; whether they were kept (a failure is logged: the features in
/// hand are right).
pub fn write_inception_features(cache: &FeatureCache, features: &InceptionFeatures) -> bool {
    let [pool, spatial, logits] = FEATURE_NAMES;
    cache.write(&[
        (pool, &features.pool),
        (spatial, &features.spatial),
        (logits, &features.logits),
    ])
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
    /// The ranks that share the work, if a launcher started this process.
    pub group: Option<ProcessGroup>,
    /// What a sample's features depend on beyond its pixels: the networks' sha256 (and the
    /// text-to-image protocol's resolution), part of every sample folder's cache key.
    networks: Vec<Vec<u8>>,
}

impl Measurer {
    /// Opens the Inception (and CLIP for a text-to-image benchmark, `text`) and reads the
    /// reference; a text-to-image reference folder's features are cached under
    /// `samples_out/reference-features/`. The networks run on the `--device` named `device`.
    pub fn open(
        e: &EvaluationArgs,
        text: bool,
        samples_out: &Path,
        device: &str,
    ) -> anyhow::Result<Self> {
        Self::open_on(e, text, samples_out, device, None)
    }

    /// [`Measurer::open`] alone, or as one rank of the group a launcher described in the
    /// environment.
    pub fn open_launched(
        e: &EvaluationArgs,
        text: bool,
        samples_out: &Path,
        device: &str,
    ) -> anyhow::Result<Self> {
        Self::open_on(e, text, samples_out, device, ProcessGroup::from_env()?)
    }

    /// [`Measurer::open`] as one rank of `group`: an ADM reference's images are split across
    /// the ranks; a text-to-image reference is measured by rank 0 into its cache, which the
    /// other ranks then read.
    pub fn open_on(
        e: &EvaluationArgs,
        text: bool,
        samples_out: &Path,
        device: &str,
        group: Option<ProcessGroup>,
    ) -> anyhow::Result<Self> {
        let device = crate::sample::rank_device(device, group.as_ref())?;
        let mut net = open_inception(e, device)?;
        if !text {
            let (side, reference_set) = load_reference(
                e,
                &mut net,
                group.as_ref(),
                &samples_out.join("reference-features"),
            )?;
            return Ok(Self {
                net,
                reference: Reference::Images(side),
                reference_set,
                group,
                networks: vec![file_sha256(&e.inception)?.0.into_bytes()],
            });
        }
        let t = &e.text_to_image;
        let mut clip = t.open_clip(device)?;
        let rank = group.as_ref().map_or(0, ProcessGroup::rank);
        let load = |net: &mut Inception, clip: &mut Clip| {
            crate::text_to_image::load_reference(
                &e.reference,
                net,
                &e.inception,
                clip,
                t.eval_resolution,
                &samples_out.join("reference-features"),
            )
            .with_context(|| format!("reference {}", e.reference.display()))
        };
        let mut reference = None;
        if rank == 0 {
            reference = Some(load(&mut net, &mut clip)?);
        }
        if let Some(g) = &group {
            g.barrier()?;
        }
        let reference = match reference {
            Some(r) => r,
            None => load(&mut net, &mut clip)?,
        };
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
        let networks = crate::text_to_image::networks_key(&e.inception, &clip, t.eval_resolution)?;
        Ok(Self {
            networks,
            net,
            reference: Reference::TextToImage {
                reference,
                clip: Box::new(clip),
                resolution: t.eval_resolution,
            },
            reference_set,
            group,
        })
    }

    /// Whether this process records and reports: rank 0, or a process alone.
    pub fn leads(&self) -> bool {
        self.group.as_ref().is_none_or(|g| g.rank() == 0)
    }

    /// Where the features of the samples `rows` of one scale's folder are kept: its
    /// `features/`, named by the settings the sampler pinned there (`settings`, the bytes of
    /// its `sampling.json`), each sample file's length and modification time (a sample made
    /// again is measured again), the networks and the protocol.
    fn samples_cache(
        &self,
        s: &SampleArgs,
        settings: &[u8],
        rows: std::ops::Range<u64>,
    ) -> anyhow::Result<FeatureCache> {
        use std::os::unix::fs::MetadataExt as _;
        let mut files = Vec::with_capacity(rows.clone().count() * 24);
        for index in rows {
            let png = sample::png_path(&s.out, index);
            let meta =
                std::fs::metadata(&png).with_context(|| format!("reading {}", png.display()))?;
            files.extend(index.to_le_bytes());
            files.extend(meta.len().to_le_bytes());
            files.extend(meta.mtime().to_le_bytes());
            files.extend(meta.mtime_nsec().to_le_bytes());
        }
        let kind = match &self.reference {
            Reference::Images(_) => "adm",
            Reference::TextToImage { .. } => "t2i",
        };
        let mut parts = vec![settings, files.as_slice()];
        parts.extend(self.networks.iter().map(Vec::as_slice));
        Ok(FeatureCache::new(&s.out.join("features"), kind, &parts).describing("sample features"))
    }

    /// The metrics of one scale's sample folder, sampled with `settings` (the bytes of its
    /// `sampling.json`), against the reference. Under a group, this rank's contiguous share of
    /// the samples goes through the networks and every rank's features are gathered, so that
    /// each rank computes the same metrics.
    fn measure_folder(
        &mut self,
        s: &SampleArgs,
        settings: &[u8],
        intervals: &IntervalArgs,
    ) -> anyhow::Result<Vec<Metric>> {
        let n = s.num_samples as usize;
        let group = self.group.as_ref();
        let world = group.map_or(1, ProcessGroup::world);
        if n < world {
            bail!(
                "{n} samples cannot be shared among {world} ranks; ask for at least one per rank"
            );
        }
        let share = group.map_or(0..n, |g| g.share(n));
        let first = s.start + share.start as u64;
        let rows = first..s.start + share.end as u64;
        let images = sample::sample_set(&s.out, rows.clone());
        let cache = self.samples_cache(s, settings, rows)?;
        match &mut self.reference {
            Reference::Images(reference) => {
                let mine = match read_inception_features(&cache) {
                    Some(f) if f.pool.nrows() == images.len() => f,
                    _ => {
                        let f = inception_features(
                            &mut self.net,
                            &images,
                            0..images.len(),
                            "samples through the Inception",
                        )?;
                        write_inception_features(&cache, &f);
                        f
                    }
                };
                let features = match group {
                    Some(g) => gather_features(g, &mine)?,
                    None => mine,
                };
                generation_metrics(reference, &Side::of_features(features)?, intervals)
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
                let k = images.len();
                let cached = cache
                    .read_with(
                        ["inception", "clip"],
                        [POOL_DIM, clip.spec.embed_dim],
                        ["clip_score"],
                        |[inception, _], [scores]| {
                            anyhow::ensure!(
                                inception.nrows() == k && scores.len() == k,
                                "it holds {} samples' features and {} scores, not {k}",
                                inception.nrows(),
                                scores.len()
                            );
                            Ok(())
                        },
                    )
                    .map(|([inception, clip], [scores])| {
                        (TextToImageFeatures { inception, clip }, scores.to_vec())
                    });
                let (mine, scores) = match cached {
                    Some(cached) => cached,
                    None => {
                        let prompts = sample::read_prompts(prompts_file)?;
                        let (mine, scores) = crate::text_to_image::measure_samples(
                            &images,
                            first,
                            &prompts,
                            &mut self.net,
                            clip,
                            *resolution,
                        )?;
                        cache.write_with(
                            &[("inception", &mine.inception), ("clip", &mine.clip)],
                            &[("clip_score", &ndarray::Array1::from(scores.clone()))],
                        );
                        (mine, scores)
                    }
                };
                let Some(g) = group else {
                    return crate::text_to_image::metrics(reference, &mine, &scores, intervals);
                };
                let features = TextToImageFeatures {
                    inception: gather_rows(g, &mine.inception)?,
                    clip: gather_rows(g, &mine.clip)?,
                };
                let scores = gather_values(g, &scores)?;
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
            // Plain decoding's folders keep the names they had before speculative decoding.
            let jacobi = if s.jacobi_window > 0 {
                format!("-jacobi{}", s.jacobi_window)
            } else {
                String::new()
            };
            s.out = base.join(format!(
                "cfg{scale}-interval{}-k{}-p{}-t{}-seed{}-from{}-n{}-eval{}{jacobi}",
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

/// Samples one scale into its folder (resuming what an earlier run left), as one rank of
/// `group` where there is one, with the networks `models` keeps from the scale before.
pub fn sample_scale(
    s: &SampleArgs,
    group: Option<&ProcessGroup>,
    models: &mut Option<sample::LoadedModels>,
) -> anyhow::Result<SampleReport> {
    let report = sample::sample_with(s, group, models)?;
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
    let mut models = None;
    for s in scale_settings(args)? {
        let report = sample_scale(&s, m.group.as_ref(), &mut models)?;
        let settings_file = s.out.join("sampling.json");
        let settings = std::fs::read(&settings_file)
            .with_context(|| format!("reading {}", settings_file.display()))?;
        let metrics = m.measure_folder(&s, &settings, &args.evaluation.intervals)?;
        let sampling: serde_json::Value = serde_json::from_slice(&settings)
            .with_context(|| format!("reading {}", settings_file.display()))?;
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

/// The evaluations a sweep's recording made: one per scale, in scale order, up to the first
/// that failed.
#[derive(Debug)]
pub struct SweepRecorded {
    /// The ids of the scales recorded, the first `ids.len()` of the sweep.
    pub ids: Vec<i64>,
    /// Why the rest were not: the database was unreachable, say. The scales before stay
    /// recorded, and a run again records every scale, updating those.
    pub outcome: anyhow::Result<()>,
}

impl SweepRecorded {
    /// Each scale's id, `None` past the failure.
    pub fn per_scale(&self, scales: usize) -> Vec<Option<i64>> {
        let mut ids: Vec<_> = self.ids.iter().copied().map(Some).collect();
        ids.resize(scales, None);
        ids
    }
}

/// Clears each scale's sample folder down to what `keep` keeps, once its result is recorded,
/// and with `none` the sweep's folder too once no scale's is left in it. What cannot be
/// removed is logged, not an error: the result is recorded.
pub fn clear_samples(results: &[ScaleResult], keep: KeepSamples) {
    for r in results {
        let (cleared, what) = match keep {
            KeepSamples::All => continue,
            KeepSamples::Grid => (keep_grid(&r.folder), "all but its grid removed"),
            KeepSamples::None => (remove_tree(&r.folder), "removed"),
        };
        match cleared {
            Ok(bytes) => tracing::info!(
                "cfg {}: {} {what} ({:.1} MB freed)",
                r.cfg_scale,
                r.folder.display(),
                bytes as f64 / 1e6
            ),
            Err(e) => tracing::warn!(
                "cfg {}: {} not cleared: {e:#}",
                r.cfg_scale,
                r.folder.display()
            ),
        }
    }
    if keep == KeepSamples::None {
        // Fails, and so stays, while another sweep's scales are in it.
        for sweep in results.iter().filter_map(|r| r.folder.parent()) {
            let _ = std::fs::remove_dir(sweep);
        }
    }
}

/// Removes everything in the sample folder `dir` but its first [`GRID_SAMPLES`] PNGs, their
/// `.txt` prompts and sampling.json; the bytes freed.
fn keep_grid(dir: &Path) -> anyhow::Result<u64> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort();
    let png =
        |p: &PathBuf| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")) && p.is_file();
    let grid: Vec<PathBuf> = entries
        .iter()
        .filter(|p| png(p))
        .take(GRID_SAMPLES)
        .cloned()
        .collect();
    let kept = |p: &PathBuf| {
        p.file_name().is_some_and(|n| n == "sampling.json")
            || grid.contains(p)
            || grid.iter().any(|g| g.with_extension("txt") == *p)
    };
    let mut freed = 0;
    for path in entries.iter().filter(|p| !kept(p)) {
        freed += remove_tree(path)?;
    }
    Ok(freed)
}

/// Removes the file or folder `path`; the bytes its files held.
fn remove_tree(path: &Path) -> anyhow::Result<u64> {
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_dir() {
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        return Ok(meta.len());
    }
    let mut freed = 0;
    for entry in std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))? {
        freed += remove_tree(
            &entry
                .with_context(|| format!("reading {}", path.display()))?
                .path(),
        )?;
    }
    std::fs::remove_dir(path).with_context(|| format!("removing {}", path.display()))?;
    Ok(freed)
}

/// Records one evaluation per scale, each under the protocol of its measurement.
pub async fn record(
    args: &GeneratorArgs,
    results: &[ScaleResult],
    reference_set: &ReferenceIdentity,
    data_dir: &Path,
) -> SweepRecorded {
    let mut ids = Vec::new();
    let outcome = async {
        let inception_sha256 = file_sha256(&args.evaluation.inception)?.0;
        let options = llamagen_store::StoreOptions::from_env(data_dir);
        let store = llamagen_store::Store::open(&options).await?;
        let recorded = record_scales(
            args,
            results,
            reference_set,
            &store,
            &inception_sha256,
            &mut ids,
        )
        .await;
        store.close().await?;
        recorded
    }
    .await;
    SweepRecorded { ids, outcome }
}

async fn record_scales(
    args: &GeneratorArgs,
    results: &[ScaleResult],
    reference_set: &ReferenceIdentity,
    store: &llamagen_store::Store,
    inception_sha256: &str,
    ids: &mut Vec<i64>,
) -> anyhow::Result<()> {
    let e = &args.evaluation;
    let reference = reference_set.json();
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
        let id = crate::recording::record_in(
            store,
            &Recording {
                kind: "generator",
                architecture: "llamagen-gpt",
                model: &e.model,
                size: s
                    .gpt_config
                    .is_none()
                    .then(|| s.gpt_model.trim_start_matches("GPT-")),
                params: Some(r.report.gpt_params),
                config: serde_json::json!({ "gpt": r.sampling.get("gpt") }),
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
                    feature_extractor_sha256: inception_sha256,
                    reference: reference_set,
                    preprocessing: preprocessing.clone(),
                    settings: crate::image_sets::generator_metric_settings(&e.intervals),
                    num_samples: s.num_samples as usize,
                }),
            },
            &r.metrics,
            s.num_samples as usize,
        )
        .await?;
        ids.push(id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cleared_sample_folder_keeps_its_grid_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("cfg1.5");
        std::fs::create_dir_all(folder.join("features")).unwrap();
        for i in 0..20 {
            std::fs::write(sample::png_path(&folder, i), [0u8; 100]).unwrap();
        }
        std::fs::write(folder.join("000003.txt"), b"a prompt").unwrap();
        std::fs::write(folder.join("000019.txt"), b"a prompt past the grid").unwrap();
        std::fs::write(folder.join("samples.npz"), [0u8; 1000]).unwrap();
        std::fs::write(folder.join("sampling.json"), b"{}").unwrap();
        std::fs::write(folder.join("features/adm-0123.npz"), [0u8; 500]).unwrap();
        std::fs::write(folder.join(".tmp.samples.npz.x1y2z3"), [0u8; 10]).unwrap();

        let freed = keep_grid(&folder).unwrap();
        assert_eq!(freed, 4 * 100 + 22 + 1000 + 500 + 10);
        let mut left: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut expected: Vec<String> = (0..GRID_SAMPLES).map(|i| format!("{i:06}.png")).collect();
        expected.extend(["000003.txt".into(), "sampling.json".into()]);
        expected.sort();
        assert_eq!(left, expected);
        // Cleared again, nothing more goes.
        assert_eq!(keep_grid(&folder).unwrap(), 0);

        assert_eq!(
            remove_tree(&folder).unwrap(),
            GRID_SAMPLES as u64 * 100 + 8 + 2
        );
        assert!(!folder.exists());
        assert!(keep_grid(&folder).is_err(), "a folder that is gone");
    }
}
