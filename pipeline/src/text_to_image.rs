//! The text-to-image benchmark: generated images and a reference folder through LlamaGen's
//! `evaluations/t2i` protocol (`llamagen_evaluate::text_to_image` has it step by step): FID
//! and KID on clean-fid's Inception view, CLIP-FID on CLIP's image embeddings, and the CLIP
//! score of each image against the prompt it was sampled from, each with its interval.
//!
//! A reference folder (COCO val2014 for the paper's table) is read one image at a time, and its
//! features are kept in `reference-features/` under the samples folder, named by the hash of
//! the folder, both networks and the resolution: the 40,504 COCO images take an hour of CPU
//! through the Inception, and every scheduled run would pay it again.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use llamagen_clip::Clip;
use llamagen_evaluate::frechet::{Statistics, frechet_distance, frechet_resamples};
use llamagen_evaluate::inception::{Inception, POOL_DIM};
use llamagen_evaluate::kernel_distance::{KidSettings, kernel_distance};
use llamagen_evaluate::resampling::MIN_SAMPLES;
use llamagen_evaluate::text_to_image::{
    INCEPTION_SIZE, clean_resize, clip_features, clip_scores, eval_view,
};
use llamagen_store::results::Metric;
use ndarray::{Array2, Array3, Array4, ArrayView3, Axis, concatenate};

use crate::feature_cache::FeatureCache;
use crate::image_sets::{ImageSet, IntervalArgs};
use crate::provenance::file_sha256;

/// The networks of the protocol beyond the FID Inception.
#[derive(Debug, Clone, clap::Args)]
pub struct TextToImageArgs {
    /// Text-to-image: the CLIP export (scripts/export_filter_models.py; OpenAI's ViT-B/32 for
    /// LlamaGen's protocol) behind CLIP-FID and the CLIP score.
    #[arg(long, value_name = "DIR")]
    pub clip: Option<PathBuf>,
    /// Text-to-image: every image's centre square is resized to this side (LANCZOS) first.
    #[arg(long, default_value_t = llamagen_evaluate::text_to_image::EVAL_RESOLUTION)]
    pub eval_resolution: usize,
}

impl Default for TextToImageArgs {
    fn default() -> Self {
        Self {
            clip: None,
            eval_resolution: llamagen_evaluate::text_to_image::EVAL_RESOLUTION,
        }
    }
}

impl TextToImageArgs {
    /// CLIP on `device` (a GPU through ONNX Runtime's CUDA execution provider where the library
    /// has it, else the CPU; the log says which).
    pub fn open_clip(&self, device: tch::Device) -> anyhow::Result<Clip> {
        let dir = self.clip.as_ref().context(
            "a text-to-image benchmark needs --clip DIR (evaluate.clip_model): a CLIP export of scripts/export_filter_models.py",
        )?;
        Clip::open_on(dir, 0, llamagen_native::onnx::OnnxDevice::of(device))
            .with_context(|| format!("opening CLIP at {}", dir.display()))
    }

    /// How images reach the networks and which CLIP (its files by sha256), as the protocol
    /// records it.
    pub fn protocol_json(&self) -> anyhow::Result<serde_json::Value> {
        if let Some(dir) = self.clip.as_ref().filter(|d| !d.is_dir()) {
            bail!(
                "no CLIP export at {}: make one with scripts/export_filter_models.py (--clip, evaluate.clip_model)",
                dir.display()
            );
        }
        let clip = match &self.clip {
            Some(dir) => llamagen_clip::FILES
                .iter()
                .map(|f| {
                    Ok((
                        f.to_string(),
                        serde_json::json!(file_sha256(&dir.join(f))?.0),
                    ))
                })
                .collect::<anyhow::Result<serde_json::Map<_, _>>>()?
                .into(),
            None => serde_json::Value::Null,
        };
        Ok(serde_json::json!({
            "protocol": "LlamaGen evaluations/t2i (GigaGAN): CenterCropLongEdge, LANCZOS to the evaluation resolution",
            "eval_resolution": self.eval_resolution,
            "inception": "clean-fid 0.1.35 clean mode: per-channel float Pillow BICUBIC to 299, not quantised",
            "clip_fid": "clean-fid clip_vit_b_32 mode: CLIP's Resize(S, BICUBIC) + CenterCrop(S)",
            "clip_score": "LlamaGen compute_clip_score: tensor2pil round trip, CLIP preprocessing, 'A photo depicts ' spliced after the start token, cosine",
            "clip": clip,
        }))
    }
}

/// The features of one image set under the protocol.
pub struct TextToImageFeatures {
    /// [N, 2048] Inception pool features of the clean 299 view.
    pub inception: Array2<f32>,
    /// [N, D] CLIP image embeddings of the CLIP view.
    pub clip: Array2<f32>,
}

/// The reference side, with its statistics fitted once.
pub struct TextToImageReference {
    pub features: TextToImageFeatures,
    pub inception: Statistics,
    pub clip: Statistics,
    /// The reference folder by content ([`crate::provenance::folder_sha256`]).
    pub folder_sha256: String,
}

impl TextToImageReference {
    fn new(features: TextToImageFeatures, folder_sha256: String) -> anyhow::Result<Self> {
        Ok(Self {
            folder_sha256,
            inception: Statistics::from_features(features.inception.view())?,
            clip: Statistics::from_features(features.clip.view())?,
            features,
        })
    }
}

/// Images processed a batch at a time, each made into its protocol view once: at most
/// `batch` views in memory.
pub struct FeatureCollector<'a> {
    net: &'a mut Inception,
    clip: &'a mut Clip,
    resolution: usize,
    batch: usize,
    pending: Vec<Array3<u8>>,
    /// The prompt of each pending view, for generated images (their CLIP scores).
    captions: Vec<String>,
    inception: Vec<Array2<f32>>,
    clip_rows: Vec<Array2<f32>>,
    clip_scores: Vec<f64>,
}

impl<'a> FeatureCollector<'a> {
    pub fn new(net: &'a mut Inception, clip: &'a mut Clip, resolution: usize) -> Self {
        Self {
            net,
            clip,
            resolution,
            batch: 32,
            pending: Vec::new(),
            captions: Vec::new(),
            inception: Vec::new(),
            clip_rows: Vec::new(),
            clip_scores: Vec::new(),
        }
    }

    /// Adds one image [H, W, 3] u8 as it was stored or generated, with the prompt it was
    /// generated from (every image of a set, or none).
    pub fn push(&mut self, image: ArrayView3<'_, u8>, caption: Option<&str>) -> anyhow::Result<()> {
        self.pending.push(eval_view(image, self.resolution)?);
        self.captions.extend(caption.map(str::to_string));
        if self.captions.len() != self.pending.len() && !self.captions.is_empty() {
            bail!("every generated image needs its prompt");
        }
        if self.pending.len() >= self.batch {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let views: Vec<ArrayView3<'_, u8>> = self.pending.iter().map(|v| v.view()).collect();
        self.clip_rows.push(clip_features(self.clip, &views)?);
        if !self.captions.is_empty() {
            let captions: Vec<&str> = self.captions.iter().map(String::as_str).collect();
            self.clip_scores.extend(
                clip_scores(self.clip, &views, &captions)?
                    .into_iter()
                    .map(f64::from),
            );
        }
        let clean: Vec<Array3<f32>> = self
            .pending
            .iter()
            .map(|v| clean_resize(v.view(), INCEPTION_SIZE))
            .collect::<Result<_, _>>()?;
        let stacked: Array4<f32> =
            ndarray::stack(Axis(0), &clean.iter().map(|c| c.view()).collect::<Vec<_>>())?;
        let features = self.net.features_f32(stacked.view(), &mut |_| {})?;
        self.inception.push(features.pool);
        self.pending.clear();
        self.captions.clear();
        Ok(())
    }

    /// The features, and the CLIP scores of captioned images (empty for a reference set).
    pub fn finish(mut self) -> anyhow::Result<(TextToImageFeatures, Vec<f64>)> {
        self.flush()?;
        let join = |parts: &[Array2<f32>]| -> anyhow::Result<Array2<f32>> {
            let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
            Ok(concatenate(Axis(0), &views)?)
        };
        if self.inception.is_empty() {
            bail!("no images");
        }
        let features = TextToImageFeatures {
            inception: join(&self.inception)?,
            clip: join(&self.clip_rows)?,
        };
        Ok((features, self.clip_scores))
    }
}

/// What an image's features under this protocol depend on beyond its pixels: the sha256 of the
/// Inception and of CLIP's files, and the resolution, as parts of a [`FeatureCache`] key.
pub fn networks_key(
    inception: &Path,
    clip: &Clip,
    resolution: usize,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut parts = vec![file_sha256(inception)?.0.into_bytes()];
    for f in clip.files() {
        parts.push(file_sha256(&f)?.0.into_bytes());
    }
    parts.push(resolution.to_le_bytes().to_vec());
    Ok(parts)
}

/// The cache of a reference folder's features: its name hashes everything they depend on, so
/// another folder, network or resolution never reads a stale one.
fn cache_of(
    cache_dir: &Path,
    folder_sha256: &str,
    inception: &Path,
    clip: &Clip,
    resolution: usize,
) -> anyhow::Result<FeatureCache> {
    let networks = networks_key(inception, clip, resolution)?;
    let mut parts: Vec<&[u8]> = vec![folder_sha256.as_bytes()];
    parts.extend(networks.iter().map(Vec::as_slice));
    Ok(FeatureCache::new(cache_dir, "t2i", &parts))
}

/// The reference folder's features, from the cache when a previous run made them.
pub fn load_reference(
    folder: &Path,
    net: &mut Inception,
    inception_path: &Path,
    clip: &mut Clip,
    resolution: usize,
    cache_dir: &Path,
) -> anyhow::Result<TextToImageReference> {
    if !folder.is_dir() {
        bail!(
            "a text-to-image reference is a folder of images (COCO val2014 for LlamaGen's table), not {}",
            folder.display()
        );
    }
    let folder_sha256 = crate::provenance::folder_sha256(folder)?;
    let cache = cache_of(cache_dir, &folder_sha256, inception_path, clip, resolution)?;
    if let Some([inception, clip]) =
        cache.read(["inception", "clip"], [POOL_DIM, clip.spec.embed_dim])
    {
        return TextToImageReference::new(TextToImageFeatures { inception, clip }, folder_sha256);
    }
    let mut collector = FeatureCollector::new(net, clip, resolution);
    let bar = crate::progress::bar(0, "reference images");
    crate::image_sets::visit_folder(folder, &mut |label, image| {
        bar.inc(1);
        collector
            .push(image.view(), None)
            .with_context(|| format!("reference image {label}"))
    })?;
    bar.finish_and_clear();
    let (features, _) = collector.finish()?;
    if features.inception.nrows() < 2 {
        bail!("{} holds fewer than 2 images", folder.display());
    }
    cache.write(&[("inception", &features.inception), ("clip", &features.clip)]);
    TextToImageReference::new(features, folder_sha256)
}

/// The generated side: the samples (`samples`, in sample order, the first being sample
/// `first`) through both networks one at a time, and each one's CLIP score against the prompt
/// it was sampled from (`prompts[i % len]` for sample index i).
pub fn measure_samples(
    samples: &ImageSet,
    first: u64,
    prompts: &[String],
    net: &mut Inception,
    clip: &mut Clip,
    resolution: usize,
) -> anyhow::Result<(TextToImageFeatures, Vec<f64>)> {
    if prompts.is_empty() {
        bail!("a text-to-image benchmark needs the prompts its samples were drawn from");
    }
    let n = samples.len();
    let bar = crate::progress::bar(n as u64, "samples through Inception and CLIP");
    let mut collector = FeatureCollector::new(net, clip, resolution);
    let mut i = first;
    samples.visit(0..n, &mut |label, image| {
        collector
            .push(
                image.view(),
                Some(&prompts[(i % prompts.len() as u64) as usize]),
            )
            .with_context(|| format!("sample {label}"))?;
        i += 1;
        bar.inc(1);
        Ok(())
    })?;
    bar.finish_and_clear();
    collector.finish()
}

/// FID and KID (Inception), CLIP-FID, and the mean CLIP score, each with its 95% interval
/// (half-samples of the generated set, as the other generator metrics), and KID's standard
/// deviation over its subsets.
pub fn metrics(
    reference: &TextToImageReference,
    samples: &TextToImageFeatures,
    clip_scores: &[f64],
    intervals: &IntervalArgs,
) -> anyhow::Result<Vec<Metric>> {
    let n = samples.inception.nrows();
    if clip_scores.len() != n {
        bail!("{} CLIP scores for {n} samples", clip_scores.len());
    }
    let settings = intervals.resampling().filter(|_| n >= MIN_SAMPLES);
    let resamples = settings.map(|r| r.draw(n)).transpose()?;
    let interval = |m: Metric, value: f64, values: Option<Vec<f64>>| -> anyhow::Result<Metric> {
        Ok(match (&settings, values) {
            (Some(s), Some(v)) => {
                let i = s.interval(value, &v)?;
                m.with_interval(i.low, i.high)
            }
            _ => m,
        })
    };
    let mut out = Vec::new();
    for (name, features, stats) in [
        ("fid", &samples.inception, &reference.inception),
        ("clip_fid", &samples.clip, &reference.clip),
    ] {
        let value = frechet_distance(stats, &Statistics::from_features(features.view())?)?;
        let resampled = resamples
            .as_ref()
            .map(|r| frechet_resamples(features.view(), stats, r))
            .transpose()?;
        out.push(interval(Metric::new(name, value), value, resampled)?);
    }
    let kid = kernel_distance(
        samples.inception.view(),
        reference.features.inception.view(),
        &KidSettings::default(),
        resamples.as_ref(),
    )?;
    out.push(interval(
        Metric::new("kid", kid.mean),
        kid.mean,
        settings.map(|_| kid.resampled.clone()),
    )?);
    out.push(Metric::new("kid_std", kid.std));
    let mean = clip_scores.iter().sum::<f64>() / n as f64;
    let means = resamples
        .as_ref()
        .map(|r| r.means(clip_scores))
        .transpose()?;
    out.push(interval(Metric::new("clip_score", mean), mean, means)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(n: usize, d: usize, shift: f32, seed: u32) -> Array2<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        Array2::from_shape_fn((n, d), |(_, j)| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state as f32 / u32::MAX as f32 - 0.5) * (1.0 + j as f32 * 0.1) + shift
        })
    }

    #[test]
    fn the_metrics_come_with_intervals_around_their_values() {
        let reference = TextToImageReference::new(
            TextToImageFeatures {
                inception: features(300, 8, 0.0, 1),
                clip: features(300, 6, 0.0, 2),
            },
            String::new(),
        )
        .unwrap();
        let samples = TextToImageFeatures {
            inception: features(200, 8, 0.3, 3),
            clip: features(200, 6, 0.1, 4),
        };
        let scores: Vec<f64> = (0..200).map(|i| 0.25 + (i % 7) as f64 * 0.01).collect();
        let metrics = metrics(&reference, &samples, &scores, &IntervalArgs::default()).unwrap();
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["fid", "clip_fid", "kid", "kid_std", "clip_score"]);
        for m in &metrics {
            if m.name == "kid_std" {
                assert!(m.interval.is_none());
                continue;
            }
            let (low, high) = m.interval.expect("an interval");
            assert!(
                low <= m.value && m.value <= high,
                "{}: {low} {} {high}",
                m.name,
                m.value
            );
        }
        let mean = scores.iter().sum::<f64>() / 200.0;
        assert!((metrics[4].value - mean).abs() < 1e-12);
        // The shifted features are farther from the reference than the nearly unshifted ones.
        assert!(metrics[0].value > metrics[1].value);
        assert!(
            super::metrics(
                &reference,
                &samples,
                &scores[..10],
                &IntervalArgs::default()
            )
            .is_err()
        );
    }
}
