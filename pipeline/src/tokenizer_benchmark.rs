//! `llamagen benchmark tokenizer`: the reference images through a VQ tokenizer and back, then
//! rFID (the FID Inception on originals against reconstructions), PSNR and SSIM (LlamaGen's
//! convention) and codebook usage, each with its interval where it has one, recorded as a
//! tokenizer row of the leaderboard.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use llamagen_distributed::ProcessGroup;
use llamagen_evaluate::codebook::{CodebookUsage, WINDOW};
use llamagen_evaluate::image_quality::{Convention, reconstruction_quality};
use llamagen_evaluate::inception::InceptionFeatures;
use llamagen_models::images::{from_uint8_nhwc, to_uint8_nhwc};
use llamagen_models::vq::VqConfig;
use llamagen_store::results::Metric;
use ndarray::{Array4, Axis, s};
use tch::{Device, Tensor};

use crate::benchmark::{
    EvaluationArgs, found_by_every_rank, open_inception, read_inception_features, reference_cache,
    write_inception_features,
};
use crate::image_sets::{ImageSet, chunk_of, gather_features, gather_values};
use crate::provenance::file_sha256;
use crate::recording::{MeasurementProtocol, Recording, ReferenceIdentity, record};
use crate::sample::VqArgs;

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
    /// Where the reference's Inception features are kept between runs: the folder
    /// `benchmark generator` keeps them in under its default `--out`, so the two share them.
    #[arg(long, default_value = "samples/reference-features")]
    pub reference_features: PathBuf,
    #[command(flatten)]
    pub evaluation: EvaluationArgs,
}

/// What a tokenizer benchmark measured, and its leaderboard row when recorded.
#[derive(Debug)]
pub struct TokenizerResult {
    pub metrics: Vec<Metric>,
    pub evaluation_id: Option<i64>,
    /// Whether this process records and reports: rank 0 of a launched group, or a process
    /// alone. Every rank has the same metrics.
    pub leads: bool,
}

/// One process's share of the reference through the tokenizer and the Inception.
struct Share {
    /// The originals' features, unless the cache had them.
    real: Option<InceptionFeatures>,
    fake: InceptionFeatures,
    psnrs: Vec<f64>,
    ssims: Vec<f64>,
    /// The last [`WINDOW`] codes the quantizer produced, oldest first; gathered, each rank's
    /// in rank order, which leaves the same last codes as one process would.
    recent_codes: Vec<u32>,
    /// The images' height, recorded as their size.
    height: usize,
    /// The tokenizer's parameters.
    params: i64,
}

impl Share {
    /// Every rank's share, in rank order: the whole set's.
    fn gathered(self, group: &ProcessGroup) -> anyhow::Result<Share> {
        let codes: Vec<i64> = self.recent_codes.iter().map(|&c| i64::from(c)).collect();
        Ok(Share {
            real: match &self.real {
                Some(real) => Some(gather_features(group, real)?),
                None => None,
            },
            fake: gather_features(group, &self.fake)?,
            psnrs: gather_values(group, &self.psnrs)?,
            ssims: gather_values(group, &self.ssims)?,
            recent_codes: gather_values(group, &codes)?
                .into_iter()
                .map(|c| c as u32)
                .collect(),
            height: self.height,
            params: self.params,
        })
    }
}

/// [`run_on`] alone, or as one rank of the group a launcher (torchrun, `srun`, an indexed Job)
/// described in the environment.
pub async fn run_launched(
    args: &TokenizerArgs,
    data_dir: &Path,
) -> anyhow::Result<TokenizerResult> {
    let group = ProcessGroup::from_env()?;
    run_on(args, data_dir, group.as_ref()).await
}

/// Reconstructs the reference images through the tokenizer, measures them and records the
/// result unless `--no-record`. The images are read, reconstructed and measured a chunk at a
/// time, so that ImageNet's 50,000 validation images need no more memory than a few hundred;
/// the originals' Inception features come from the feature cache when a run made them.
///
/// As one rank of `group`, each rank takes a contiguous share of the images on its own device,
/// and the shares' features, per-image PSNR/SSIM and last codes are gathered in rank order, so
/// that every rank computes the metrics one process would; rank 0 alone keeps the features and
/// records.
pub async fn run_on(
    args: &TokenizerArgs,
    data_dir: &Path,
    group: Option<&ProcessGroup>,
) -> anyhow::Result<TokenizerResult> {
    let e = &args.evaluation;
    let config = args.vq.config()?;
    if args.batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    let set = ImageSet::open(&e.reference, e.center_crop)
        .with_context(|| format!("reference {}", e.reference.display()))?
        .with_context(|| {
            format!(
                "{} holds statistics only; the tokenizer needs images",
                e.reference.display()
            )
        })?;
    let n = set.len();
    if n < 2 {
        bail!("need at least 2 reference images, found {n}");
    }
    let world = group.map_or(1, ProcessGroup::world);
    if n < world {
        bail!("{n} reference images cannot be shared among {world} ranks");
    }
    let leads = group.is_none_or(|g| g.rank() == 0);
    let center_crop = e.center_crop.filter(|_| e.reference.is_dir());
    let mut reference_set = ReferenceIdentity::of(&e.reference, center_crop, None, None)
        .with_context(|| format!("reference {}", e.reference.display()))?;
    let cache = reference_cache(e, &reference_set, &args.reference_features)?;
    let cached = read_inception_features(&cache).filter(|f| f.pool.nrows() == n);
    let cached = found_by_every_rank(cached, group)?;
    let device = crate::sample::rank_device(&args.device, group)?;
    let share = group.map_or(0..n, |g| g.share(n));
    let mine = through_the_tokenizer(args, &config, &set, share, cached.is_none(), device)?;

    let all = match group {
        Some(g) => mine.gathered(g)?,
        None => mine,
    };
    let mut usage = CodebookUsage::llamagen(config.codebook_size as usize);
    usage.push(&all.recent_codes)?;
    let (real, fake, psnrs, ssims) = (all.real, all.fake, all.psnrs, all.ssims);
    let real = match real {
        Some(measured) => {
            if leads {
                write_inception_features(&cache, &measured);
            }
            measured
        }
        None => cached.context("the reference's features were neither cached nor measured")?,
    };
    let h = all.height;
    reference_set.num_images = Some(n);
    reference_set.image_size = reference_set.image_size.or(Some(h));
    let metrics = crate::image_sets::reconstruction_metrics(
        real.pool.view(),
        fake.pool.view(),
        &psnrs,
        &ssims,
        usage.usage(),
        &e.intervals,
    )?;
    let mut id = None;
    if leads && !e.no_record {
        id = Some(
            record(
                &Recording {
                    kind: "tokenizer",
                    architecture: "llamagen-vq",
                    model: &e.model,
                    // A named tokenizer (VQ-16, VQ-8), as its training records it.
                    size: args
                        .vq
                        .vq_config
                        .is_none()
                        .then_some(args.vq.vq_model.as_str()),
                    params: Some(all.params),
                    config: serde_json::json!({ "vq": config }),
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
                        "reference": reference_set.json(),
                        "vq": config,
                        "ssim_convention": "llamagen",
                        "intervals": e.intervals.describe(),
                    })),
                    samples_path: None,
                    protocol: Some(MeasurementProtocol {
                        feature_extractor_sha256: &file_sha256(&e.inception)?.0,
                        reference: &reference_set,
                        preprocessing: serde_json::json!({
                            "reconstructions": "the reference images through the tokenizer at their size",
                        }),
                        settings: serde_json::json!({
                            "ssim_convention": "llamagen",
                            "intervals": e.intervals.describe(),
                        }),
                        num_samples: n,
                    }),
                },
                data_dir,
                &metrics,
                n,
            )
            .await?,
        );
    }
    Ok(TokenizerResult {
        metrics,
        evaluation_id: id,
        leads,
    })
}

/// The reference images `rows` through the tokenizer on `device`, the reconstructions through
/// the Inception, and the originals too when `originals_too` (the feature cache lacked them).
fn through_the_tokenizer(
    args: &TokenizerArgs,
    config: &VqConfig,
    set: &ImageSet,
    rows: Range<usize>,
    originals_too: bool,
    device: Device,
) -> anyhow::Result<Share> {
    let (vs, vq) = args.vq.load(device)?;
    let mut net = open_inception(&args.evaluation, device)?;
    let f = config.downsample() as usize;
    let n = rows.len();
    let mut codes_seen = CodebookUsage::seen(config.codebook_size as usize, WINDOW);
    let (mut psnrs, mut ssims) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut real = originals_too.then(|| InceptionFeatures::zeros(n));
    let mut fake = InceptionFeatures::zeros(n);
    let mut height = None;
    let bar = crate::progress::bar(n as u64, "reference images through the tokenizer");
    set.read_chunks(rows.clone(), chunk_of(net.batch_size()), &mut |first, originals| {
        let (k, h, w, _) = originals.dim();
        if h % f != 0 || w % f != 0 {
            bail!(
                "reference images are {w}x{h}; the tokenizer needs sides that are multiples of {f}"
            );
        }
        height.get_or_insert(h);
        let mut reconstructions = Array4::<u8>::zeros(originals.dim());
        for start in (0..k).step_by(args.batch_size) {
            let end = (start + args.batch_size).min(k);
            let batch = originals.slice(s![start..end, .., .., ..]);
            let pixels =
                Tensor::from_slice(batch.as_standard_layout().as_slice().context("layout")?)
                    .view([(end - start) as i64, h as i64, w as i64, 3])
                    .to_device(device);
            let (recon, q) = tch::no_grad(|| vq.reconstruct(&from_uint8_nhwc(&pixels), false))?;
            let codes = Vec::<i64>::try_from(&q.codes.view([-1]).to_device(Device::Cpu))?;
            codes_seen.push(&codes.iter().map(|&c| c as u32).collect::<Vec<_>>())?;
            let recon = to_uint8_nhwc(&recon);
            let values = Vec::<u8>::try_from(&recon.view([-1]))?;
            let recon = Array4::from_shape_vec((end - start, h, w, 3), values)?;
            for (i, r) in recon.axis_iter(Axis(0)).enumerate() {
                let (p, s) = reconstruction_quality(
                    originals.index_axis(Axis(0), start + i),
                    r,
                    Convention::LlamaGen,
                )?;
                psnrs.push(p);
                ssims.push(s);
            }
            reconstructions
                .slice_mut(s![start..end, .., .., ..])
                .assign(&recon);
            bar.inc((end - start) as u64);
        }
        let mine = first - rows.start..first - rows.start + k;
        if let Some(real) = &mut real {
            real.assign_rows(mine.clone(), &net.features(originals.view())?);
        }
        fake.assign_rows(mine, &net.features(reconstructions.view())?);
        Ok(())
    })?;
    bar.finish_and_clear();
    Ok(Share {
        real,
        fake,
        psnrs,
        ssims,
        recent_codes: codes_seen.window().collect(),
        height: height.context("no reference images")?,
        params: llamagen_models::weights::parameter_count(&vs),
    })
}
