//! Image sets through the FID Inception: an ADM npz (images and/or statistics), a folder of
//! images, or a folder of webdataset shards; and the generation metrics between two of them as
//! the ADM evaluator computes them.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use llamagen_distributed::ProcessGroup;
use llamagen_evaluate::frechet::{Statistics, frechet_distance, frechet_resamples};
use llamagen_evaluate::inception::{Inception, InceptionFeatures};
use llamagen_evaluate::inception_score::{ADM_SPLIT_SIZE, inception_score};
use llamagen_evaluate::kernel_distance::{KidSettings, kernel_distance};
use llamagen_evaluate::npz::read_reference;
use llamagen_evaluate::precision_recall::{ADM_K, precision_recall};
use llamagen_evaluate::resampling::{Interval, MIN_SAMPLES, Resampling};
use llamagen_store::results::Metric;
use ndarray::{Array3, Array4, ArrayView2, Axis};

/// One side of the comparison.
pub struct Side {
    pub features: Option<InceptionFeatures>,
    pub pool: Statistics,
    pub spatial: Option<Statistics>,
}

/// How the confidence intervals of an evaluation are drawn (part of its protocol).
#[derive(Debug, Clone, Copy, PartialEq, clap::Args, serde::Serialize)]
pub struct IntervalArgs {
    /// Half-sample resamples behind each 95% confidence interval (FID, KID, rFID, PSNR, SSIM);
    /// 0 records no intervals.
    #[arg(long, default_value_t = 100)]
    pub interval_resamples: usize,
    /// Blocks of random samples, half of which each resample keeps (fewer samples: one block each).
    #[arg(long, default_value_t = 64)]
    pub interval_blocks: usize,
    /// Seed of the deal into blocks and of the resamples.
    #[arg(long, default_value_t = 0)]
    pub interval_seed: u32,
}

impl Default for IntervalArgs {
    fn default() -> Self {
        let r = Resampling::default();
        Self {
            interval_resamples: r.resamples,
            interval_blocks: r.blocks,
            interval_seed: r.seed,
        }
    }
}

impl IntervalArgs {
    /// The resampling settings, or `None` when intervals are off.
    pub fn resampling(&self) -> Option<Resampling> {
        (self.interval_resamples > 0).then(|| Resampling {
            resamples: self.interval_resamples,
            blocks: self.interval_blocks,
            seed: self.interval_seed,
            ..Resampling::default()
        })
    }

    /// How the intervals were drawn, as the evaluation row records it (null: none).
    pub fn describe(&self) -> serde_json::Value {
        match self.resampling() {
            Some(r) => serde_json::json!({
                "method": "half-samples of blocks of samples, percentile interval centred on the full-set value",
                "resamples": r.resamples,
                "blocks": r.blocks,
                "seed": r.seed,
                "level": r.level,
            }),
            None => serde_json::Value::Null,
        }
    }
}

/// What a generator evaluation records about how its metrics were computed beyond the ADM
/// evaluator's fixed recipe: the intervals and KID's estimator.
pub fn generator_metric_settings(intervals: &IntervalArgs) -> serde_json::Value {
    let kid = KidSettings::default();
    serde_json::json!({
        "intervals": intervals.describe(),
        "kid": {
            "reference": "torch-fidelity 0.4.0 (generated set first)",
            "subsets": kid.subsets,
            "subset_size": kid.subset_size,
            "degree": kid.degree,
            "coef0": kid.coef0,
            "seed": kid.seed,
        },
    })
}

fn with_interval(metric: Metric, interval: Option<Interval>) -> Metric {
    match interval {
        Some(i) => metric.with_interval(i.low, i.high),
        None => metric,
    }
}

/// FID with its interval, sFID (when both sides have spatial statistics), IS, and, when the
/// reference has images, precision/recall (as the ADM evaluator computes them) and KID with its
/// standard deviation over subsets and its interval.
pub fn generation_metrics(
    reference: &Side,
    samples: &Side,
    intervals: &IntervalArgs,
) -> anyhow::Result<Vec<Metric>> {
    let Some(sample_features) = &samples.features else {
        bail!("the generated set must hold images (arr_0 or a folder), not only statistics");
    };
    let count = sample_features.pool.nrows();
    let resampling = intervals.resampling().filter(|_| count >= MIN_SAMPLES);
    let resamples = resampling.map(|r| r.draw(count)).transpose()?;
    let mut metrics = Vec::new();
    let is = inception_score(sample_features.logits.view(), ADM_SPLIT_SIZE)?;
    metrics.push(Metric::new("inception_score", is.mean));
    let fid = frechet_distance(&reference.pool, &samples.pool)?;
    let fid_interval = match (&resampling, &resamples) {
        (Some(settings), Some(r)) => Some(settings.interval(
            fid,
            &frechet_resamples(sample_features.pool.view(), &reference.pool, r)?,
        )?),
        _ => None,
    };
    metrics.push(with_interval(Metric::new("fid", fid), fid_interval));
    if let (Some(r), Some(s)) = (&reference.spatial, &samples.spatial) {
        metrics.push(Metric::new("sfid", frechet_distance(r, s)?));
    }
    if let Some(ref_features) = &reference.features {
        let pr = precision_recall(ref_features.pool.view(), sample_features.pool.view(), ADM_K)?;
        metrics.push(Metric::new("precision", pr.precision));
        metrics.push(Metric::new("recall", pr.recall));
        let kid = kernel_distance(
            sample_features.pool.view(),
            ref_features.pool.view(),
            &KidSettings::default(),
            resamples.as_ref(),
        )?;
        let kid_interval = resampling
            .map(|settings| settings.interval(kid.mean, &kid.resampled))
            .transpose()?;
        metrics.push(with_interval(Metric::new("kid", kid.mean), kid_interval));
        metrics.push(Metric::new("kid_std", kid.std));
    }
    Ok(metrics)
}

/// A tokenizer's reconstruction metrics: rFID between the originals' and the reconstructions'
/// pool features ([N, 2048] each, row i the reconstruction of image i), mean PSNR and SSIM over
/// the images, and the codebook usage; rFID, PSNR and SSIM with their intervals.
///
/// The intervals resample the images: PSNR and SSIM as half-sample means, rFID as the
/// reconstructions' half-samples against the originals' full-set statistics. Originals and
/// reconstructions are paired, so resampling both together would cancel part of the noise;
/// holding the originals fixed errs on the wide side.
pub fn reconstruction_metrics(
    originals: ArrayView2<'_, f32>,
    reconstructions: ArrayView2<'_, f32>,
    psnrs: &[f64],
    ssims: &[f64],
    codebook_usage: f64,
    intervals: &IntervalArgs,
) -> anyhow::Result<Vec<Metric>> {
    let n = originals.nrows();
    let real = Statistics::from_features(originals)?;
    let rfid = frechet_distance(&real, &Statistics::from_features(reconstructions)?)?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let mut metrics = vec![
        Metric::new("rfid", rfid),
        Metric::new("psnr", mean(psnrs)),
        Metric::new("ssim", mean(ssims)),
        Metric::new("codebook_usage", codebook_usage),
    ];
    if let Some(settings) = intervals.resampling().filter(|_| n >= MIN_SAMPLES) {
        let resamples = settings.draw(n)?;
        let intervals = [
            settings.interval(
                rfid,
                &frechet_resamples(reconstructions, &real, &resamples)?,
            )?,
            settings.interval(mean(psnrs), &resamples.means(psnrs)?)?,
            settings.interval(mean(ssims), &resamples.means(ssims)?)?,
        ];
        for (m, i) in metrics.iter_mut().zip(intervals) {
            m.interval = Some((i.low, i.high));
        }
    }
    Ok(metrics)
}

/// Images (npz arr_0 or a folder) through the Inception, or an npz's stored statistics.
/// `center_crop` applies to folders (see [`read_folder`]).
pub fn load_side(
    path: &Path,
    net: &mut Inception,
    center_crop: Option<usize>,
) -> anyhow::Result<Side> {
    load_side_on(path, net, center_crop, None)
}

/// [`load_side`] as one rank of `group`: every rank reads the images, passes its contiguous
/// share through the Inception, and receives every rank's features.
pub fn load_side_on(
    path: &Path,
    net: &mut Inception,
    center_crop: Option<usize>,
    group: Option<&ProcessGroup>,
) -> anyhow::Result<Side> {
    let images = if path.is_dir() {
        Some(read_folder(path, center_crop)?)
    } else {
        let batch = read_reference(path)?;
        if batch.images.is_none() {
            let pool = batch.pool.context("npz without images has no mu/sigma")?;
            return Ok(Side {
                features: None,
                pool,
                spatial: batch.spatial,
            });
        }
        batch.images
    };
    let images = images.context("no images")?;
    let n = images.dim().0;
    let world = group.map_or(1, ProcessGroup::world);
    if n < 2 {
        bail!("need at least 2 images, found {n}");
    }
    if n < world {
        bail!("need at least one image per rank ({world} ranks), found {n}");
    }
    let share = group.map_or(0..n, |g| g.share(n));
    let bar = crate::progress::bar(share.len() as u64, "images through the Inception");
    let mine = net.features_reporting(images.slice(ndarray::s![share, .., .., ..]), &mut |k| {
        bar.inc(k as u64)
    })?;
    bar.finish_and_clear();
    Side::of_features(match group {
        Some(g) => gather_features(g, &mine)?,
        None => mine,
    })
}

/// Every rank's Inception features, stacked in rank order.
pub(crate) fn gather_features(
    group: &ProcessGroup,
    mine: &InceptionFeatures,
) -> anyhow::Result<InceptionFeatures> {
    Ok(InceptionFeatures {
        pool: gather_rows(group, &mine.pool)?,
        spatial: gather_rows(group, &mine.spatial)?,
        logits: gather_rows(group, &mine.logits)?,
    })
}

/// Every rank's rows of `rows` ([n_r, D]) stacked in rank order: [sum n_r, D].
pub(crate) fn gather_rows(
    group: &ProcessGroup,
    rows: &ndarray::Array2<f32>,
) -> anyhow::Result<ndarray::Array2<f32>> {
    let d = rows.ncols();
    let flat: Vec<f32> = rows.iter().copied().collect();
    let local = tch::Tensor::from_slice(&flat).view([rows.nrows() as i64, d as i64]);
    let gathered = group.gather_rows(&local)?;
    let n = gathered.size()[0] as usize;
    let values = Vec::<f32>::try_from(gathered.view([-1]))?;
    Ok(ndarray::Array2::from_shape_vec((n, d), values)?)
}

impl Side {
    /// A side of images through the Inception: the features and their statistics.
    pub fn of_features(features: InceptionFeatures) -> anyhow::Result<Self> {
        let pool = Statistics::from_features(features.pool.view())?;
        let spatial = Some(Statistics::from_features(features.spatial.view())?);
        Ok(Side {
            features: Some(features),
            pool,
            spatial,
        })
    }
}

/// The files [`read_folder`] reads, in its order: PNG and JPEG files in name order, then
/// webdataset tars in name order (each tar's images in member-name order).
pub fn folder_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let (mut images, tars): (Vec<PathBuf>, Vec<PathBuf>) = files
        .into_iter()
        .filter(|f| is_image(&extension(f)) || is_shard(f))
        .partition(|f| is_image(&extension(f)));
    images.extend(tars);
    Ok(images)
}

fn extension(p: &Path) -> String {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default()
}

fn is_image(extension: &str) -> bool {
    matches!(extension, "png" | "jpg" | "jpeg")
}

/// Whether a file of a folder is a webdataset shard (`*.tar`, any case), as [`folder_files`]
/// tells them from images.
pub fn is_shard(path: &Path) -> bool {
    extension(path) == "tar"
}

/// The image members of a webdataset shard as (name, bytes), in name (sample key) order.
///
/// Ingest appends samples as their downloads finish, so the archive order of the same images
/// differs from one ingest to the next; in key order (the metadata's) a set reads, and hashes,
/// the same however its downloads raced, and KID, which draws its subsets by position, gives
/// the same value for the same images.
pub fn tar_images(tar: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut members = llamagen_shards::webdataset::read_members(tar)?;
    members.retain(|(name, _)| is_image(&extension(Path::new(name))));
    members.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(members)
}

/// Each image of a folder, decoded to RGB [H, W, 3] with a label naming it: PNG and JPEG files
/// in name order, then the images of its webdataset shards (`*.tar`, as `llamagen ingest`
/// writes them) in shard order and, within a shard, in member-name (sample key) order. One
/// decoded image in memory at a time.
pub fn visit_folder(
    dir: &Path,
    visit: &mut dyn FnMut(String, Array3<u8>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let files = folder_files(dir)?;
    let rgb = |img: image::DynamicImage| -> anyhow::Result<Array3<u8>> {
        let img = img.to_rgb8();
        let (w, h) = img.dimensions();
        Ok(Array3::from_shape_vec(
            (h as usize, w as usize, 3),
            img.into_raw(),
        )?)
    };
    for file in files.iter().filter(|f| is_image(&extension(f))) {
        let img = image::open(file).with_context(|| format!("decoding {}", file.display()))?;
        visit(file.display().to_string(), rgb(img)?)?;
    }
    for tar in files.iter().filter(|f| is_shard(f)) {
        for (name, bytes) in tar_images(tar)? {
            let label = format!("{}:{name}", tar.display());
            let img =
                image::load_from_memory(&bytes).with_context(|| format!("decoding {label}"))?;
            visit(label, rgb(img)?)?;
        }
    }
    Ok(())
}

/// The images of [`visit_folder`] as one batch: each center-cropped to `center_crop` when given
/// (ADM's preprocessing), else all must have one size.
pub fn read_folder(dir: &Path, center_crop: Option<usize>) -> anyhow::Result<Array4<u8>> {
    let mut images: Vec<Array3<u8>> = Vec::new();
    let mut first_label = String::new();
    visit_folder(dir, &mut |label, mut img| {
        let (h, w, _) = img.dim();
        if let Some(size) = center_crop {
            img = llamagen_evaluate::center_crop::center_crop(img.view(), size)
                .with_context(|| format!("center-cropping {label}"))?;
        }
        match images.first() {
            Some(first) if first.dim() != img.dim() => bail!(
                "{label} is {w}x{h} but {first_label} is {}x{}: resize the set to one size first, or pass --center-crop SIZE",
                first.dim().1,
                first.dim().0
            ),
            Some(_) => {}
            None => first_label = label,
        }
        images.push(img);
        Ok(())
    })?;
    let views: Vec<_> = images
        .iter()
        .map(|i| i.view().insert_axis(Axis(0)))
        .collect();
    if views.is_empty() {
        bail!(
            "{} holds no PNG or JPEG images and no webdataset shards",
            dir.display()
        );
    }
    Ok(ndarray::concatenate(Axis(0), &views)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(w: u32, h: u32, format: image::ImageFormat) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 9]));
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), format)
            .unwrap();
        out
    }

    #[test]
    fn folders_and_their_webdataset_shards_read_as_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.png"),
            encoded(40, 50, image::ImageFormat::Png),
        )
        .unwrap();
        let mut tar =
            llamagen_shards::webdataset::TarWriter::create(&dir.path().join("00000.tar")).unwrap();
        // Appended as downloads finish, read in key order.
        for key in ["0001", "0000"] {
            tar.append(key, "jpg", &encoded(48, 48, image::ImageFormat::Jpeg))
                .unwrap();
            tar.append(key, "txt", b"a caption").unwrap();
        }
        tar.finish().unwrap();
        let mut labels = Vec::new();
        visit_folder(dir.path(), &mut |label, _| {
            labels.push(label);
            Ok(())
        })
        .unwrap();
        let tar_path = dir.path().join("00000.tar").display().to_string();
        assert_eq!(
            labels,
            [
                dir.path().join("a.png").display().to_string(),
                format!("{tar_path}:0000.jpg"),
                format!("{tar_path}:0001.jpg"),
            ]
        );
        let batch = read_folder(dir.path(), Some(32)).unwrap();
        assert_eq!(batch.dim(), (3, 32, 32, 3));
        let err = read_folder(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("00000.tar:0000.jpg is 48x48"), "{err}");
    }

    #[test]
    fn a_reference_folder_hashes_its_images_not_their_archive_order() {
        let shard = |order: [&str; 2], caption: &[u8], size: u32| {
            let dir = tempfile::tempdir().unwrap();
            let mut tar =
                llamagen_shards::webdataset::TarWriter::create(&dir.path().join("00000.tar"))
                    .unwrap();
            for key in order {
                let side = if key == "0000" { size } else { 48 };
                tar.append(key, "jpg", &encoded(side, side, image::ImageFormat::Jpeg))
                    .unwrap();
                tar.append(key, "txt", caption).unwrap();
            }
            tar.finish().unwrap();
            let sha = crate::provenance::folder_sha256(dir.path()).unwrap();
            (dir, sha)
        };
        let (_a, first) = shard(["0000", "0001"], b"a caption", 40);
        // The same images ingested again: the downloads finished in another order, and the
        // captions were rewritten.
        let (_b, again) = shard(["0001", "0000"], b"another caption", 40);
        assert_eq!(first, again);
        let (_c, changed) = shard(["0000", "0001"], b"a caption", 41);
        assert_ne!(first, changed);
    }
}
