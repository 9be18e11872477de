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
use llamagen_evaluate::inception::{InceptionFeatures, POOL_DIM};
use llamagen_models::images::{from_uint8_nhwc, to_uint8_nhwc};
use llamagen_models::vq::VqConfig;
use llamagen_store::results::Metric;
use ndarray::{Array1, Array2, Array4, Axis, s};
use tch::{Device, Tensor};

use crate::benchmark::{
    EvaluationArgs, found_by_every_rank, open_inception, read_inception_features, reference_cache,
    write_inception_features,
};
use crate::feature_cache::{FeatureCache, key};
use crate::image_sets::{ImageSet, gather_features, gather_rows, gather_values};
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
    /// Where each chunk's measurements (the reconstructions' features, PSNR, SSIM, codes) are
    /// kept as the run goes, so that a stopped run resumes after its last whole chunk and a
    /// repeated one measures nothing again.
    #[arg(long, default_value = "samples/reconstruction-features")]
    pub reconstruction_features: PathBuf,
    /// Reference images read, reconstructed, measured and kept at a time: a stopped run loses
    /// at most one chunk's work.
    #[arg(long, default_value_t = 256)]
    pub chunk_size: usize,
    /// Whether the chunks are removed once the result is recorded: the checkpoint evaluator's
    /// choice, as it never measures a recorded checkpoint again, and each tokenizer's chunks
    /// take about 10 KB per reference image (500 MB for ImageNet's validation set).
    #[arg(skip)]
    pub forget_chunks_once_recorded: bool,
    #[command(flatten)]
    pub evaluation: EvaluationArgs,
}

/// What a tokenizer benchmark measured, and its leaderboard row when recorded.
#[derive(Debug)]
pub struct TokenizerResult {
    pub metrics: Vec<Metric>,
    /// The evaluation's id once recorded; `None` with `--no-record` and on ranks that do not
    /// lead; or why recording failed (the database was unreachable, say), kept apart from the
    /// metrics so that they are reported all the same and the next run reads its chunks back.
    pub recorded: anyhow::Result<Option<i64>>,
    /// Whether this process records and reports: rank 0 of a launched group, or a process
    /// alone. Every rank has the same metrics.
    pub leads: bool,
}

/// One process's share of the reference through the tokenizer and the Inception.
struct Share {
    /// The originals' features, unless the cache had them.
    real: Option<InceptionFeatures>,
    /// The reconstructions' pool features, [n, 2048].
    fake: Array2<f32>,
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
            fake: gather_rows(group, &self.fake)?,
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
/// time, so that ImageNet's 50,000 validation images need no more memory than a few hundred,
/// and each chunk's measurements are kept, so that a run started again resumes after its last
/// whole chunk; the originals' Inception features come from the feature cache when a run made
/// them.
///
/// As one rank of `group`, each rank takes a contiguous share of the images on its own device
/// and keeps its own chunks, and the shares' features, per-image PSNR/SSIM and last codes are
/// gathered in rank order, so that every rank computes the metrics one process would; rank 0
/// alone keeps the reference's features and records.
pub async fn run_on(
    args: &TokenizerArgs,
    data_dir: &Path,
    group: Option<&ProcessGroup>,
) -> anyhow::Result<TokenizerResult> {
    let e = &args.evaluation;
    let config = args.vq.config()?;
    if args.batch_size == 0 || args.chunk_size == 0 {
        bail!("--batch-size and --chunk-size must be positive");
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
    let kept = KeptChunks::new(args, &config, &reference_set, device)?;
    let mine = through_the_tokenizer(args, &config, &set, share, cached.is_none(), &kept, device)?;

    let all = match group {
        Some(g) => mine.gathered(g)?,
        None => mine,
    };
    let mut usage = CodebookUsage::llamagen(config.codebook_size as usize);
    usage.push(&all.recent_codes)?;
    let (real, fake, psnrs, ssims) = (all.real, all.fake, all.psnrs, all.ssims);
    let (real, reference_kept) = match real {
        Some(measured) => {
            let written = leads && write_inception_features(&cache, &measured);
            (measured, written)
        }
        None => (
            cached.context("the reference's features were neither cached nor measured")?,
            true,
        ),
    };
    // Every rank has kept its chunks by now: the gathering above waited for them all.
    if leads {
        if reference_kept {
            kept.forget_originals();
        }
        kept.forget_other_chunkings(n, world, args.chunk_size);
    }
    let h = all.height;
    reference_set.num_images = Some(n);
    reference_set.image_size = reference_set.image_size.or(Some(h));
    let metrics = crate::image_sets::reconstruction_metrics(
        real.pool.view(),
        fake.view(),
        &psnrs,
        &ssims,
        usage.usage(),
        &e.intervals,
    )?;
    let mut recorded = Ok(None);
    if leads && !e.no_record {
        let inception_sha256 = file_sha256(&e.inception)?.0;
        recorded = record(
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
                        feature_extractor_sha256: &inception_sha256,
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
        .await
        .map(Some);
    }
    if args.forget_chunks_once_recorded && matches!(recorded, Ok(Some(_))) {
        kept.forget_all();
    }
    Ok(TokenizerResult {
        metrics,
        recorded,
        leads,
    })
}

/// The reference images `rows` through the tokenizer on `device`, the reconstructions through
/// the Inception, and the originals too when `originals_too` (the feature cache lacked them),
/// a chunk of `args.chunk_size` images at a time; a chunk `kept` from an earlier run is read
/// back instead (its originals measured alone when they are needed and were not kept), and
/// each chunk measured here is kept.
fn through_the_tokenizer(
    args: &TokenizerArgs,
    config: &VqConfig,
    set: &ImageSet,
    rows: Range<usize>,
    originals_too: bool,
    kept: &KeptChunks,
    device: Device,
) -> anyhow::Result<Share> {
    let (vs, vq) = args.vq.load(device)?;
    let mut networks = Networks {
        vq,
        net: open_inception(&args.evaluation, device)?,
        batch_size: args.batch_size,
        downsample: config.downsample() as usize,
        codebook_size: config.codebook_size as usize,
        device,
    };
    let n = rows.len();
    let mut recent = CodebookUsage::seen(config.codebook_size as usize, WINDOW);
    let (mut psnrs, mut ssims) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut real = originals_too.then(|| InceptionFeatures::zeros(n));
    let mut fake = Array2::<f32>::zeros((n, POOL_DIM));
    let mut size: Option<(Range<usize>, (usize, usize))> = None;
    let (mut read_back, mut originals_only, mut chunks) = (0, 0, 0);
    let bar = crate::progress::bar(n as u64, "reference images through the tokenizer");
    for part in chunks_of(rows.clone(), args.chunk_size) {
        chunks += 1;
        let chunk = match kept.read(&part, originals_too, networks.downsample) {
            Some(mut chunk) => {
                read_back += 1;
                if originals_too && chunk.real.is_none() {
                    // Kept by a run that had the reference's features: only the originals'
                    // own are missing, so only they go through the Inception.
                    originals_only += 1;
                    let mut real = None;
                    set.read_chunks(part.clone(), part.len(), &mut |_, originals| {
                        real = Some(networks.net.features(originals.view())?);
                        Ok(())
                    })?;
                    let real = real.with_context(|| format!("no reference images {part:?}"))?;
                    kept.keep_originals(&part, &real);
                    chunk.real = Some(real);
                }
                bar.inc(part.len() as u64);
                chunk
            }
            None => {
                let mut measured = None;
                set.read_chunks(part.clone(), part.len(), &mut |_, originals| {
                    measured = Some(networks.measure(originals, originals_too, &bar)?);
                    Ok(())
                })?;
                let chunk = measured.with_context(|| format!("no reference images {part:?}"))?;
                kept.keep(&part, &chunk);
                chunk
            }
        };
        match &size {
            Some((first, (h, w))) if (*h, *w) != chunk.size => bail!(
                "reference images {part:?} are {}x{} but images {first:?} are {w}x{h}: resize the set to one size first, or pass --center-crop SIZE",
                chunk.size.1,
                chunk.size.0
            ),
            Some(_) => {}
            None => size = Some((part.clone(), chunk.size)),
        }
        let mine = part.start - rows.start..part.end - rows.start;
        if let (Some(real), Some(measured)) = (&mut real, &chunk.real) {
            real.assign_rows(mine.clone(), measured);
        }
        fake.slice_mut(s![mine, ..]).assign(&chunk.fake);
        psnrs.extend(chunk.psnrs);
        ssims.extend(chunk.ssims);
        recent.push(&chunk.last_codes)?;
    }
    bar.finish_and_clear();
    if read_back > 0 {
        tracing::info!(
            "{read_back} of {chunks} chunks of reference images read back from {} (measured before); {} measured now",
            kept.dir.display(),
            chunks - read_back
        );
    }
    if originals_only > 0 {
        tracing::info!(
            "{originals_only} chunks read back lacked their originals' features (the reference's were not kept): only the originals went through the Inception"
        );
    }
    Ok(Share {
        real,
        fake,
        psnrs,
        ssims,
        recent_codes: recent.window().collect(),
        height: size.context("no reference images")?.1.0,
        params: llamagen_models::weights::parameter_count(&vs),
    })
}

/// `rows` in consecutive chunks of `chunk` (the last one shorter).
fn chunks_of(rows: Range<usize>, chunk: usize) -> impl Iterator<Item = Range<usize>> {
    let end = rows.end;
    rows.step_by(chunk.max(1))
        .map(move |first| first..(first + chunk.max(1)).min(end))
}

/// What one chunk of reference images gave.
struct Chunk {
    /// The originals' Inception features, when the reference's were not kept.
    real: Option<InceptionFeatures>,
    /// The reconstructions' pool features, [k, 2048]: all that rFID reads.
    fake: Array2<f32>,
    psnrs: Vec<f64>,
    ssims: Vec<f64>,
    /// The chunk's last codes, at most [`WINDOW`], oldest first: all that the set's codebook
    /// usage keeps of them.
    last_codes: Vec<u32>,
    /// (H, W) of its images.
    size: (usize, usize),
}

/// The networks a chunk goes through.
struct Networks {
    vq: llamagen_models::vq::VqModel,
    net: llamagen_evaluate::inception::Inception,
    batch_size: usize,
    downsample: usize,
    codebook_size: usize,
    device: Device,
}

impl Networks {
    /// `originals` ([k, H, W, 3] uint8) through the tokenizer, `batch_size` at a time, and the
    /// reconstructions (and the originals when `originals_too`) through the Inception.
    fn measure(
        &mut self,
        originals: Array4<u8>,
        originals_too: bool,
        bar: &indicatif::ProgressBar,
    ) -> anyhow::Result<Chunk> {
        let (k, h, w, _) = originals.dim();
        let f = self.downsample;
        if h % f != 0 || w % f != 0 {
            bail!(
                "reference images are {w}x{h}; the tokenizer needs sides that are multiples of {f}"
            );
        }
        let mut codes_seen = CodebookUsage::seen(self.codebook_size, WINDOW);
        let (mut psnrs, mut ssims) = (Vec::with_capacity(k), Vec::with_capacity(k));
        let mut reconstructions = Array4::<u8>::zeros(originals.dim());
        for start in (0..k).step_by(self.batch_size) {
            let end = (start + self.batch_size).min(k);
            let batch = originals.slice(s![start..end, .., .., ..]);
            let pixels =
                Tensor::from_slice(batch.as_standard_layout().as_slice().context("layout")?)
                    .view([(end - start) as i64, h as i64, w as i64, 3])
                    .to_device(self.device);
            let (recon, q) =
                tch::no_grad(|| self.vq.reconstruct(&from_uint8_nhwc(&pixels), false))?;
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
        let real = match originals_too {
            true => Some(self.net.features(originals.view())?),
            false => None,
        };
        Ok(Chunk {
            real,
            fake: self.net.features(reconstructions.view())?.pool,
            psnrs,
            ssims,
            last_codes: codes_seen.window().collect(),
            size: (h, w),
        })
    }
}

/// Where each chunk's measurements are kept between runs (`--reconstruction-features`), so
/// that a run stopped part way (a killed process, an evaluator whose host went away) resumes
/// after its last whole chunk, and a run repeated (after the database refused its result, or
/// for other intervals) measures nothing again: a `reconstructions-ID-KEY.npz` per chunk (pool
/// features, PSNR, SSIM, last codes, image size), and while the reference's own features are
/// not kept yet, an `originals-ID-KEY.npz` per chunk with the originals' features, removed once
/// the whole reference's are. ID names what is measured, KEY how and which chunk, so that a
/// finished run finds the files another chunking or batch size left for the same tokenizer
/// and reference, and removes them.
struct KeptChunks {
    dir: PathBuf,
    /// `reconstructions-ID`, where ID hashes what the reconstructions' measurements depend on:
    /// the reference and its crop, the Inception, the tokenizer's weights and architecture.
    reconstructions: String,
    /// How the tokenizer ran (its batch and the kind of device), hashed into each
    /// reconstructions file's KEY with the chunk's rows.
    how: Vec<Vec<u8>>,
    /// `originals-ID`, where ID hashes what the originals' features depend on: the reference
    /// and its crop, the Inception.
    originals: String,
}

impl KeptChunks {
    fn new(
        args: &TokenizerArgs,
        config: &VqConfig,
        reference: &ReferenceIdentity,
        device: Device,
    ) -> anyhow::Result<Self> {
        let e = &args.evaluation;
        let center_crop = e.center_crop.filter(|_| e.reference.is_dir());
        let originals = vec![
            reference.sha256.clone().into_bytes(),
            format!("{center_crop:?}").into_bytes(),
            file_sha256(&e.inception)?.0.into_bytes(),
        ];
        let mut reconstructions = originals.clone();
        reconstructions.extend([
            file_sha256(&args.vq.vq_ckpt)?.0.into_bytes(),
            serde_json::to_vec(config)?,
        ]);
        let id = |parts: &[Vec<u8>]| key(&parts.iter().map(Vec::as_slice).collect::<Vec<_>>());
        Ok(Self {
            dir: args.reconstruction_features.clone(),
            reconstructions: format!("reconstructions-{}", id(&reconstructions)),
            how: vec![
                args.batch_size.to_le_bytes().to_vec(),
                if device.is_cuda() { "cuda" } else { "cpu" }.into(),
            ],
            originals: format!("originals-{}", id(&originals)),
        })
    }

    fn reconstructions_file(&self, rows: &Range<usize>) -> FeatureCache {
        let rows = [rows.start.to_le_bytes(), rows.end.to_le_bytes()].concat();
        let mut parts: Vec<&[u8]> = self.how.iter().map(Vec::as_slice).collect();
        parts.push(&rows);
        FeatureCache::new(&self.dir, &self.reconstructions, &parts)
            .quietly()
            .describing("reconstruction features")
    }

    fn originals_file(&self, rows: &Range<usize>) -> FeatureCache {
        let rows = [rows.start.to_le_bytes(), rows.end.to_le_bytes()].concat();
        FeatureCache::new(&self.dir, &self.originals, &[&rows]).quietly()
    }

    /// The chunk `rows` as an earlier run kept it, if it did, whole; the codes of a tokenizer
    /// that downsamples by `f`. With `originals_too`, the originals' features come with it
    /// where they were kept too; a run that had the reference's features kept none, and its
    /// chunk comes back without them.
    fn read(&self, rows: &Range<usize>, originals_too: bool, f: usize) -> Option<Chunk> {
        let k = rows.len();
        let check = |[fake]: &[Array2<f32>; 1], [psnrs, ssims, codes, size]: &[Array1<f64>; 4]| {
            anyhow::ensure!(
                fake.nrows() == k && psnrs.len() == k && ssims.len() == k,
                "it holds {} images' features, {} PSNRs and {} SSIMs, not {k}",
                fake.nrows(),
                psnrs.len(),
                ssims.len()
            );
            let (h, w) = match size.as_slice() {
                Some(&[h, w]) if h >= 1.0 && w >= 1.0 => (h as usize, w as usize),
                _ => anyhow::bail!("its size is {size}, not height and width"),
            };
            let expected = k.saturating_mul(h / f).saturating_mul(w / f).min(WINDOW);
            anyhow::ensure!(
                codes.len() == expected,
                "it holds {} codes, not {expected}",
                codes.len()
            );
            Ok(())
        };
        let ([fake], [psnrs, ssims, codes, size]) = self.reconstructions_file(rows).read_with(
            ["pool"],
            [POOL_DIM],
            ["psnr", "ssim", "codes", "size"],
            check,
        )?;
        let real = originals_too
            .then(|| read_inception_features(&self.originals_file(rows)))
            .flatten()
            .filter(|f| f.pool.nrows() == k);
        Some(Chunk {
            real,
            fake,
            psnrs: psnrs.to_vec(),
            ssims: ssims.to_vec(),
            // Codes below 2^53 are exact in f64, the one value type the files hold.
            last_codes: codes.iter().map(|&c| c as u32).collect(),
            size: (size[0] as usize, size[1] as usize),
        })
    }

    /// Keeps the originals' features of the images `rows` (a failure is logged: the features
    /// in hand are right, and a later run measures them again).
    fn keep_originals(&self, rows: &Range<usize>, real: &InceptionFeatures) {
        write_inception_features(&self.originals_file(rows), real);
    }

    /// Keeps `chunk`, the measurements of the images `rows` (a failure is logged, as above).
    fn keep(&self, rows: &Range<usize>, chunk: &Chunk) {
        if let Some(real) = &chunk.real {
            self.keep_originals(rows, real);
        }
        let values = |v: &[f64]| Array1::from(v.to_vec());
        let codes: Vec<f64> = chunk.last_codes.iter().map(|&c| f64::from(c)).collect();
        let size = [chunk.size.0 as f64, chunk.size.1 as f64];
        self.reconstructions_file(rows).write_with(
            &[("pool", &chunk.fake)],
            &[
                ("psnr", &values(&chunk.psnrs)),
                ("ssim", &values(&chunk.ssims)),
                ("codes", &values(&codes)),
                ("size", &values(&size)),
            ],
        );
    }

    /// Removes the per-chunk originals, every rank's and every chunking's: the whole
    /// reference's features are kept now.
    fn forget_originals(&self) {
        let removed = self.remove_files_of(&self.originals, |_| false);
        tracing::debug!("{removed} files of originals' features removed");
    }

    /// Removes the reconstructions files of this tokenizer and reference that a run over `n`
    /// images shared among `world` ranks in chunks of `chunk` does not read: those another
    /// chunking, batch size or kind of device left. (A run beside this one in the same folder
    /// with other such settings loses what it kept, not what it measures: it keeps measuring
    /// and keeping, and a run of its settings again measures the removed chunks again.)
    fn forget_other_chunkings(&self, n: usize, world: usize, chunk: usize) {
        let ours: std::collections::HashSet<PathBuf> = (0..world)
            .flat_map(|rank| chunks_of(llamagen_distributed::share(n, rank, world), chunk))
            .map(|part| self.reconstructions_file(&part).path().to_owned())
            .collect();
        let removed = self.remove_files_of(&self.reconstructions, |path| ours.contains(path));
        if removed > 0 {
            tracing::info!(
                "{removed} files of this tokenizer's reconstructions that another chunk size, batch size or device left removed from {}",
                self.dir.display()
            );
        }
    }

    /// Removes this tokenizer's reconstructions files, every chunking's: its result is
    /// recorded, and nothing measures it again.
    fn forget_all(&self) {
        let removed = self.remove_files_of(&self.reconstructions, |_| false);
        tracing::debug!("{removed} files of reconstructions removed: the result is recorded");
    }

    /// Removes the files `PREFIX-*.npz` in the folder that `keep` does not keep; how many.
    fn remove_files_of(&self, prefix: &str, keep: impl Fn(&Path) -> bool) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let ours = name
                .to_str()
                .and_then(|name| name.strip_prefix(prefix))
                .is_some_and(|rest| rest.starts_with('-') && rest.ends_with(".npz"));
            if ours && !keep(&path) {
                match std::fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!("{} not removed: {e}", path.display()),
                }
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_rows_in_order() {
        let chunks: Vec<_> = chunks_of(3..15, 5).collect();
        assert_eq!(chunks, [3..8, 8..13, 13..15]);
        assert_eq!(chunks_of(0..4, 4).collect::<Vec<_>>(), vec![(0..4)]);
        assert_eq!(chunks_of(2..2, 4).count(), 0);
    }

    fn chunk(k: usize, offset: f32, with_originals: bool) -> Chunk {
        let (h, w, f) = (32, 48, 16);
        Chunk {
            real: with_originals.then(|| {
                let mut real = InceptionFeatures::zeros(k);
                real.pool.fill(offset + 1.0);
                real.logits.fill(offset - 1.0);
                real
            }),
            fake: Array2::from_shape_fn((k, POOL_DIM), |(i, j)| offset + (i * 7 + j) as f32),
            psnrs: (0..k).map(|i| 20.0 + 1.0 / (i as f64 + 3.0)).collect(),
            ssims: (0..k).map(|i| 0.5 + 0.1 / (i as f64 + 7.0)).collect(),
            last_codes: (0..(k * (h / f) * (w / f)).min(WINDOW) as u32)
                .map(|c| c * 2_654_435 % 16_384)
                .collect(),
            size: (h, w),
        }
    }

    fn same(a: &Chunk, b: &Chunk) -> bool {
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        a.fake == b.fake
            && bits(&a.psnrs) == bits(&b.psnrs)
            && bits(&a.ssims) == bits(&b.ssims)
            && a.last_codes == b.last_codes
            && a.size == b.size
            && a.real.as_ref().map(|r| (&r.pool, &r.spatial, &r.logits))
                == b.real.as_ref().map(|r| (&r.pool, &r.spatial, &r.logits))
    }

    fn kept_in(dir: &Path, tokenizer: &[u8], batch: &[u8]) -> KeptChunks {
        KeptChunks {
            dir: dir.to_owned(),
            reconstructions: format!("reconstructions-{}", key(&[b"reference", tokenizer])),
            how: vec![batch.to_vec()],
            originals: format!("originals-{}", key(&[b"reference"])),
        }
    }

    #[test]
    fn a_kept_chunk_comes_back_to_the_bit_and_only_for_its_rows_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let kept = |tokenizer: &[u8]| kept_in(dir.path(), tokenizer, b"batch 16");
        let (a, f) = (kept(b"vq a"), 16);
        assert!(a.read(&(0..5), false, f).is_none(), "nothing kept yet");
        let first = chunk(5, 0.5, true);
        a.keep(&(0..5), &first);
        assert!(same(&a.read(&(0..5), true, f).unwrap(), &first));
        let without = a.read(&(0..5), false, f).unwrap();
        assert!(without.real.is_none() && without.fake == first.fake);
        assert!(a.read(&(5..10), false, f).is_none(), "other rows");
        assert!(a.read(&(0..4), false, f).is_none(), "fewer rows");
        assert!(
            kept(b"vq b").read(&(0..5), false, f).is_none(),
            "another tokenizer"
        );

        // A chunk kept without the originals comes back without them, for a run that needs
        // them to measure them alone; once the whole reference's features are kept, the
        // per-chunk originals go.
        let second = chunk(3, -2.0, false);
        a.keep(&(5..8), &second);
        assert!(same(&a.read(&(5..8), true, f).unwrap(), &second));
        assert!(same(&a.read(&(5..8), false, f).unwrap(), &second));
        a.forget_originals();
        assert!(a.read(&(0..5), true, f).unwrap().real.is_none());
        assert!(a.read(&(0..5), false, f).is_some());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.iter().all(|n| n.starts_with("reconstructions-")));

        // A file that disagrees with itself (here: codes of another image size) is a miss.
        let mut odd = chunk(3, 1.0, false);
        odd.size = (64, 48);
        a.keep(&(8..11), &odd);
        assert!(a.read(&(8..11), false, f).is_none());
    }

    #[test]
    fn a_finished_run_removes_what_other_chunkings_of_its_tokenizer_left() {
        let dir = tempfile::tempdir().unwrap();
        let (f, kept) = (16, |tokenizer: &[u8], batch: &[u8]| {
            kept_in(dir.path(), tokenizer, batch)
        });
        let (ours, other_batch, other_vq) = (
            kept(b"vq a", b"batch 16"),
            kept(b"vq a", b"batch 4"),
            kept(b"vq b", b"batch 16"),
        );
        for rows in [0..5, 5..8, 0..4, 4..8] {
            ours.keep(&rows, &chunk(rows.len(), 0.0, true));
        }
        other_batch.keep(&(0..8), &chunk(8, 0.0, false));
        other_vq.keep(&(0..5), &chunk(5, 0.0, true));
        let bystanders = [".tmp.reconstructions-x.npz.abc123", "notes.txt"];
        for name in bystanders {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }

        // A run over 8 images on 2 ranks in chunks of 4 reads 0..4 and 4..8 alone.
        ours.forget_other_chunkings(8, 2, 4);
        assert!(ours.read(&(0..4), false, f).is_some());
        assert!(ours.read(&(4..8), false, f).is_some());
        assert!(ours.read(&(0..5), false, f).is_none(), "another chunk size");
        assert!(ours.read(&(5..8), false, f).is_none(), "another chunk size");
        assert!(
            other_batch.read(&(0..8), false, f).is_none(),
            "another batch"
        );
        assert!(other_vq.read(&(0..5), true, f).unwrap().real.is_some());
        for name in bystanders {
            assert!(dir.path().join(name).exists(), "{name}");
        }
        // The reference's features kept, every tokenizer's per-chunk originals go.
        ours.forget_originals();
        assert!(other_vq.read(&(0..5), true, f).unwrap().real.is_none());
        assert!(ours.read(&(0..4), true, f).unwrap().real.is_none());
    }
}
