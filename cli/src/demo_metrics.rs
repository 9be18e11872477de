//! The metrics part of `llamagen demo`: the bundled photos against JPEG-degraded copies.
//!
//! PSNR and SSIM are real figures. FID, sFID, IS and precision/recall go through an Inception
//! with seeded random weights (exported once into the data directory by the project's script),
//! because the real weights cannot be downloaded here: they show the machinery, not image
//! quality. `scripts/export_inception.py --weights ...` makes the real network.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use llamagen_evaluate::frechet::{Statistics, frechet_distance};
use llamagen_evaluate::image_quality::{Convention, reconstruction_quality};
use llamagen_evaluate::inception::{Inception, export_random_weights, stack};
use llamagen_evaluate::inception_score::{ADM_SPLIT_SIZE, inception_score};
use llamagen_evaluate::precision_recall::{ADM_K, precision_recall};
use ndarray::{Array3, s};

/// (name, original PNG, JPEG-degraded PNG), made by scripts/make_metric_fixtures.py from
/// scikit-image's sample photos.
const PHOTOS: [(&str, &[u8], &[u8]); 3] = [
    (
        "astronaut",
        include_bytes!("../../evaluate/tests/fixtures/astronaut_original.png"),
        include_bytes!("../../evaluate/tests/fixtures/astronaut_restored.png"),
    ),
    (
        "coffee",
        include_bytes!("../../evaluate/tests/fixtures/coffee_original.png"),
        include_bytes!("../../evaluate/tests/fixtures/coffee_restored.png"),
    ),
    (
        "chelsea",
        include_bytes!("../../evaluate/tests/fixtures/chelsea_original.png"),
        include_bytes!("../../evaluate/tests/fixtures/chelsea_restored.png"),
    ),
];

fn decode(bytes: &[u8]) -> anyhow::Result<Array3<u8>> {
    let img = image::load_from_memory(bytes)?.to_rgb8();
    let (w, h) = img.dimensions();
    Ok(Array3::from_shape_vec(
        (h as usize, w as usize, 3),
        img.into_raw(),
    )?)
}

pub fn run(data_dir: &Path) -> anyhow::Result<()> {
    let mut originals = Vec::new();
    let mut degraded = Vec::new();
    for (name, original, restored) in PHOTOS {
        let (a, b) = (decode(original)?, decode(restored)?);
        let (psnr, ssim) = reconstruction_quality(a.view(), b.view(), Convention::LlamaGen)?;
        let (_, ssim_std) = reconstruction_quality(a.view(), b.view(), Convention::Standard)?;
        println!(
            "  {name:<10} PSNR {psnr:6.2} dB   SSIM {ssim:.4} (LlamaGen's convention; textbook {ssim_std:.4})"
        );
        // Four 80 x 80 quarters per photo, so each set has enough images for k-NN precision/recall.
        for (y, x) in [(0, 0), (0, 80), (80, 0), (80, 80)] {
            originals.push(a.slice(s![y..y + 80, x..x + 80, ..]).to_owned());
            degraded.push(b.slice(s![y..y + 80, x..x + 80, ..]).to_owned());
        }
    }

    let model = random_inception(data_dir)?;
    let mut net = Inception::open(&model, 0, 16)?;
    let real = net.features(stack(&originals)?.view())?;
    let fake = net.features(stack(&degraded)?.view())?;
    let fid = frechet_distance(
        &Statistics::from_features(real.pool.view())?,
        &Statistics::from_features(fake.pool.view())?,
    )?;
    let sfid = frechet_distance(
        &Statistics::from_features(real.spatial.view())?,
        &Statistics::from_features(fake.spatial.view())?,
    )?;
    let is = inception_score(fake.logits.view(), ADM_SPLIT_SIZE)?;
    let pr = precision_recall(real.pool.view(), fake.pool.view(), ADM_K)?;
    println!(
        "  {} crops, random-weight Inception: FID {fid:.4}  sFID {sfid:.4}  IS {:.4}  precision {:.3}  recall {:.3}",
        originals.len(),
        is.mean,
        pr.precision,
        pr.recall
    );
    println!(
        "  (random Inception weights show the machinery, not quality; real ones: scripts/export_inception.py --weights)"
    );
    Ok(())
}

/// The random-weight FID Inception, exported on first use into `<data_dir>/demo/`.
pub(crate) fn random_inception(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let model = data_dir.join("demo/inception-random-seed0.onnx");
    // An export from before the graph took float input cannot serve the text-to-image
    // protocol: made again.
    if model.exists() && Inception::open(&model, 1, 1).is_ok_and(|net| net.takes_float()) {
        return Ok(model);
    }
    let Some(root) = option_env!("LLAMAGEN_ROOT").map(PathBuf::from) else {
        bail!(
            "this binary was built outside the repository; export an Inception with scripts/export_inception.py"
        );
    };
    std::fs::create_dir_all(model.parent().unwrap_or(data_dir))
        .context("creating the demo folder")?;
    println!(
        "  exporting a random-weight FID Inception (once) with scripts/export_inception.py ..."
    );
    export_random_weights(&root, &model, 0, &[])?;
    Ok(model)
}
