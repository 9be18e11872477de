//! Image sets through the FID Inception: an ADM npz (images and/or statistics), a folder of
//! images, or a folder of webdataset shards; and the generation metrics between two of them as
//! the ADM evaluator computes them.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use llamagen_distributed::ProcessGroup;
use llamagen_evaluate::frechet::{Statistics, frechet_distance, frechet_resamples};
use llamagen_evaluate::inception::{Inception, InceptionFeatures};
use llamagen_evaluate::inception_score::{ADM_SPLIT_SIZE, inception_score};
use llamagen_evaluate::kernel_distance::{KidSettings, kernel_distance};
use llamagen_evaluate::npz::{NpzImages, read_reference};
use llamagen_evaluate::precision_recall::{ADM_K, precision_recall};
use llamagen_evaluate::resampling::{Interval, MIN_SAMPLES, Resampling};
use llamagen_store::results::Metric;
use ndarray::{Array3, Array4, ArrayView2};

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

/// [`load_side`] as one rank of `group`: each rank passes its contiguous share of the images
/// through the Inception, a chunk at a time, and receives every rank's features.
pub fn load_side_on(
    path: &Path,
    net: &mut Inception,
    center_crop: Option<usize>,
    group: Option<&ProcessGroup>,
) -> anyhow::Result<Side> {
    let Some(set) = ImageSet::open(path, center_crop)? else {
        let batch = read_reference(path)?;
        return Ok(Side {
            pool: batch.pool.context("npz without images has no mu/sigma")?,
            spatial: batch.spatial,
            features: None,
        });
    };
    let n = set.len();
    let world = group.map_or(1, ProcessGroup::world);
    if n < 2 {
        bail!("need at least 2 images, found {n}");
    }
    if n < world {
        bail!("need at least one image per rank ({world} ranks), found {n}");
    }
    let share = group.map_or(0..n, |g| g.share(n));
    let mine = inception_features(net, &set, share, "images through the Inception")?;
    Side::of_features(match group {
        Some(g) => gather_features(g, &mine)?,
        None => mine,
    })
}

/// The Inception features of `set`'s images `rows`, read a chunk at a time with a progress
/// bar (at 14 images/s on a CPU, 50,000 images take an hour). A chunk is a whole number of the
/// network's batches, so the batches, and the features, are those of the set read whole.
pub fn inception_features(
    net: &mut Inception,
    set: &ImageSet,
    rows: Range<usize>,
    what: &str,
) -> anyhow::Result<InceptionFeatures> {
    let mut out = InceptionFeatures::zeros(rows.len());
    let bar = crate::progress::bar(rows.len() as u64, what);
    let chunk = chunk_of(net.batch_size());
    set.read_chunks(rows.clone(), chunk, &mut |first, images| {
        let f = net.features_reporting(images.view(), &mut |k| bar.inc(k as u64))?;
        out.assign_rows(first - rows.start..first - rows.start + images.dim().0, &f);
        Ok(())
    })?;
    bar.finish_and_clear();
    Ok(out)
}

/// Images per chunk for a network of batch size `batch`: a whole number of its batches, and
/// about 256 images (50 MB at 256 x 256; 200 MB at 512), the set's memory bound.
pub fn chunk_of(batch: usize) -> usize {
    let batch = batch.max(1);
    batch * 256usize.div_ceil(batch)
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

/// Every rank's `values` (n_r each, n_r free) concatenated in rank order.
pub(crate) fn gather_values<T>(group: &ProcessGroup, values: &[T]) -> anyhow::Result<Vec<T>>
where
    T: tch::kind::Element,
    for<'a> Vec<T>: TryFrom<&'a tch::Tensor, Error = tch::TchError>,
{
    let gathered = group.gather_rows(&tch::Tensor::from_slice(values))?;
    Ok(Vec::<T>::try_from(&gathered)?)
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

/// An image as RGB [H, W, 3] uint8, as stored (no crop).
pub(crate) fn rgb_array(img: image::DynamicImage) -> anyhow::Result<Array3<u8>> {
    let img = img.to_rgb8();
    let (w, h) = img.dimensions();
    Ok(Array3::from_shape_vec(
        (h as usize, w as usize, 3),
        img.into_raw(),
    )?)
}

/// Each image of a folder, decoded to RGB [H, W, 3] with a label naming it, in
/// [`ImageSet::folder`]'s order. One decoded image in memory at a time.
pub fn visit_folder(
    dir: &Path,
    visit: &mut dyn FnMut(String, Array3<u8>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let set = ImageSet::folder(dir, None)?;
    set.visit(0..set.len(), visit)
}

/// The images of a folder as one batch (see [`ImageSet::read_all`]).
pub fn read_folder(dir: &Path, center_crop: Option<usize>) -> anyhow::Result<Array4<u8>> {
    ImageSet::folder(dir, center_crop)?.read_all()
}

/// A set of images in a fixed order, read a chunk at a time so that a set of any size fits in
/// memory: 50,000 images at 256 x 256 are 9.8 GB of pixels but 1 GB of Inception features.
#[derive(Debug, Clone)]
pub enum ImageSet {
    /// Image files and webdataset shard members, each decoded when read, and center-cropped to
    /// `center_crop` (ADM's preprocessing) when given; else all must have one size.
    Files {
        items: Vec<SetItem>,
        center_crop: Option<usize>,
    },
    /// An npz's `arr_0`, as stored.
    Npz(NpzImages),
}

/// Where one image of an [`ImageSet::Files`] is.
#[derive(Debug, Clone, PartialEq)]
pub enum SetItem {
    File(PathBuf),
    /// A member of a webdataset shard.
    Member {
        tar: PathBuf,
        name: String,
    },
}

impl SetItem {
    fn label(&self) -> String {
        match self {
            SetItem::File(path) => path.display().to_string(),
            SetItem::Member { tar, name } => format!("{}:{name}", tar.display()),
        }
    }
}

impl ImageSet {
    /// A folder's images or an npz's `arr_0`; `None` for an npz of statistics alone.
    /// `center_crop` applies to folders.
    pub fn open(path: &Path, center_crop: Option<usize>) -> anyhow::Result<Option<Self>> {
        if path.is_dir() {
            return Ok(Some(Self::folder(path, center_crop)?));
        }
        Ok(NpzImages::open(path)?.map(ImageSet::Npz))
    }

    /// A folder's images: PNG and JPEG files in name order, then the images of its webdataset
    /// shards (`*.tar`, as `llamagen ingest` writes them) in shard order and, within a shard, in
    /// member-name (sample key) order ([`tar_images`]). Only names are read here.
    pub fn folder(dir: &Path, center_crop: Option<usize>) -> anyhow::Result<Self> {
        let mut items = Vec::new();
        for file in folder_files(dir)? {
            if !is_shard(&file) {
                items.push(SetItem::File(file));
                continue;
            }
            let mut names = llamagen_shards::webdataset::member_names(&file)?;
            names.retain(|name| is_image(&extension(Path::new(name))));
            names.sort();
            items.extend(names.into_iter().map(|name| SetItem::Member {
                tar: file.clone(),
                name,
            }));
        }
        if items.is_empty() {
            bail!(
                "{} holds no PNG or JPEG images and no webdataset shards with images",
                dir.display()
            );
        }
        Ok(ImageSet::Files { items, center_crop })
    }

    /// Image files in the given order (a sample folder's PNGs).
    pub fn files(paths: Vec<PathBuf>) -> Self {
        ImageSet::Files {
            items: paths.into_iter().map(SetItem::File).collect(),
            center_crop: None,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            ImageSet::Files { items, .. } => items.len(),
            ImageSet::Npz(npz) => npz.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `visit(label, image)` for each image of `rows`, decoded to RGB [H, W, 3] as stored
    /// (no crop), one at a time; a shard is read once for all its members in `rows`.
    pub fn visit(
        &self,
        rows: Range<usize>,
        visit: &mut dyn FnMut(String, Array3<u8>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let items = match self {
            ImageSet::Npz(npz) => {
                return npz.read_chunks(rows, 64, &mut |first, images| {
                    for (i, image) in images.outer_iter().enumerate() {
                        visit(format!("arr_0[{}]", first + i), image.to_owned())?;
                    }
                    Ok(())
                });
            }
            ImageSet::Files { items, .. } => items
                .get(rows.clone())
                .with_context(|| format!("images {rows:?} of {}", items.len()))?,
        };
        // The shard whose members are being read, with its images sorted by name.
        type Shard<'a> = (&'a Path, Vec<(String, Vec<u8>)>);
        let mut shard: Option<Shard<'_>> = None;
        for item in items {
            let label = item.label();
            let img = match item {
                SetItem::File(path) => {
                    image::open(path).with_context(|| format!("decoding {label}"))?
                }
                SetItem::Member { tar, name } => {
                    if shard.as_ref().is_none_or(|(t, _)| t != tar) {
                        shard = Some((tar, tar_images(tar)?));
                    }
                    let members = &shard.as_ref().context("shard")?.1;
                    let at = members
                        .binary_search_by(|(m, _)| m.as_str().cmp(name))
                        .map_err(|_| anyhow::anyhow!("{label} is gone from its shard"))?;
                    image::load_from_memory(&members[at].1)
                        .with_context(|| format!("decoding {label}"))?
                }
            };
            visit(label, rgb_array(img)?)?;
        }
        Ok(())
    }

    /// Calls `visit(first, images)` for the images `rows`, in order, `chunk` at a time
    /// (`images`: [k, H, W, 3] uint8, k <= chunk, `first` the row of its first image): files
    /// center-cropped when the set says so, else all of one size.
    pub fn read_chunks(
        &self,
        rows: Range<usize>,
        chunk: usize,
        visit: &mut dyn FnMut(usize, Array4<u8>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let center_crop = match self {
            ImageSet::Npz(npz) => return npz.read_chunks(rows, chunk, visit),
            ImageSet::Files { center_crop, .. } => *center_crop,
        };
        if chunk == 0 {
            bail!("chunks of 0 images");
        }
        let mut pending: Vec<Array3<u8>> = Vec::with_capacity(chunk.min(rows.len()));
        let mut first_image: Option<(String, (usize, usize, usize))> = None;
        let mut next = rows.start;
        self.visit(rows.clone(), &mut |label, mut img| {
            let (h, w, _) = img.dim();
            if let Some(size) = center_crop {
                img = llamagen_evaluate::center_crop::center_crop(img.view(), size)
                    .with_context(|| format!("center-cropping {label}"))?;
            }
            match &first_image {
                Some((first, dim)) if *dim != img.dim() => bail!(
                    "{label} is {w}x{h} but {first} is {}x{}: resize the set to one size first, or pass --center-crop SIZE",
                    dim.1,
                    dim.0
                ),
                Some(_) => {}
                None => first_image = Some((label, img.dim())),
            }
            pending.push(img);
            if pending.len() == chunk {
                let batch = llamagen_evaluate::inception::stack(&pending)?;
                pending.clear();
                visit(next, batch)?;
                next += chunk;
            }
            Ok(())
        })?;
        if !pending.is_empty() {
            visit(next, llamagen_evaluate::inception::stack(&pending)?)?;
        }
        Ok(())
    }

    /// Every image as one batch [N, H, W, 3]: for small sets (tests, the demo); measure large
    /// ones a chunk at a time.
    pub fn read_all(&self) -> anyhow::Result<Array4<u8>> {
        let n = self.len();
        let mut batches = Vec::new();
        self.read_chunks(0..n, n.max(1), &mut |_, images| {
            batches.push(images);
            Ok(())
        })?;
        batches.pop().context("an empty image set")
    }
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
    fn any_range_of_a_set_reads_in_chunks_as_the_whole_set_does() {
        let dir = tempfile::tempdir().unwrap();
        let image = |i: u32| {
            let img =
                image::RgbImage::from_fn(20, 16, |x, y| image::Rgb([x as u8, y as u8, i as u8]));
            let mut out = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
                .unwrap();
            out
        };
        std::fs::write(dir.path().join("a.png"), image(0)).unwrap();
        std::fs::write(dir.path().join("b.png"), image(1)).unwrap();
        for (shard, keys) in [("00000.tar", [5, 3, 4]), ("00001.tar", [7, 6, 8])] {
            let mut tar =
                llamagen_shards::webdataset::TarWriter::create(&dir.path().join(shard)).unwrap();
            for key in keys {
                tar.append(&format!("{key:04}"), "png", &image(key))
                    .unwrap();
                tar.append(&format!("{key:04}"), "txt", b"not an image")
                    .unwrap();
            }
            tar.finish().unwrap();
        }
        let set = ImageSet::folder(dir.path(), Some(16)).unwrap();
        assert_eq!(set.len(), 8);
        let whole = set.read_all().unwrap();
        assert_eq!(whole.dim(), (8, 16, 16, 3));
        // Files first, then each shard's images in key order.
        let order: Vec<u8> = whole.outer_iter().map(|i| i[[0, 0, 2]]).collect();
        assert_eq!(order, [0, 1, 3, 4, 5, 6, 7, 8]);
        for (rows, chunk) in [(0..8, 3), (1..7, 2), (3..8, 5), (6..6, 1)] {
            let mut read = Vec::new();
            set.read_chunks(rows.clone(), chunk, &mut |first, images| {
                assert!(images.dim().0 <= chunk);
                let k = images.dim().0;
                assert_eq!(
                    images,
                    whole.slice(ndarray::s![first..first + k, .., .., ..])
                );
                read.extend(first..first + k);
                Ok(())
            })
            .unwrap();
            assert_eq!(read, rows.collect::<Vec<_>>());
        }
        // An npz of the same images reads the same way.
        let npz = dir.path().join("set.npz");
        llamagen_evaluate::npz::write_reference(&npz, Some(whole.view()), None, None).unwrap();
        let from_npz = ImageSet::open(&npz, None).unwrap().unwrap();
        assert_eq!(from_npz.read_all().unwrap(), whole);
        assert_eq!(chunk_of(32), 256);
        assert_eq!(chunk_of(100), 300);
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
