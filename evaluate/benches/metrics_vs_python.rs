//! Our metrics against the Python references, side by side in one run:
//!
//! - Frechet distance of two sets of N x 2048 features (default N = 50,000): statistics and
//!   distance (the best of three runs on each side), ours (f64 covariance, a Cholesky factor
//!   and one symmetric eigenvalue solve) vs pytorch-fid's (`np.cov` and
//!   `scipy.linalg.sqrtm`), with the relative difference of the two FIDs;
//! - PSNR + SSIM throughput on the fixture photos, ours vs scikit-image;
//! - the cost of the confidence intervals: 100 half-sample resamples of the second set's FID
//!   against one FID from features (that set's statistics and the distance);
//! - KID (100 subsets of 1000), ours (f64, tch) vs torch-fidelity 0.4.0's loop on the same
//!   features and subsets (f64 numpy), and ours again with the 100 resampled values;
//! - the Frechet distance of 16 and of 1,000 samples (fewer than the 2048 dimensions, so the
//!   N x N route) against a 10,000-sample reference, ours vs pytorch-fid;
//! - FID Inception feature throughput, ours (ONNX Runtime) vs pytorch-fid (PyTorch), on the same
//!   seeded random weights and the same 256 x 256 images, batch 32.
//!
//! `cargo bench -p llamagen-evaluate --bench metrics_vs_python` (set `LLAMAGEN_BENCH_N` for
//! fewer samples). The Python side runs in the project's virtualenv with OPENBLAS_CORETYPE and
//! OPENBLAS_L2_SIZE unset, so numpy uses its fastest kernels. Results go to docs/BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use llamagen_evaluate::frechet::{Statistics, frechet_distance, frechet_resamples};
use llamagen_evaluate::image_quality::{Convention, reconstruction_quality};
use llamagen_evaluate::kernel_distance::{KidSettings, kernel_distance};
use llamagen_evaluate::resampling::Resampling;
use ndarray::{Array2, Array3};
use tch::{Device, Kind, Tensor};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python(args: &[&str]) -> serde_json::Value {
    let out = Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("scripts/bench_metrics.py"))
        .args(args)
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove("OPENBLAS_L2_SIZE")
        .output()
        .expect("running the Python reference (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from bench_metrics.py")
}

/// Inception-like features: non-negative, correlated through a random mixing matrix.
fn features(n: i64, d: i64, seed: i64, perturb: f64) -> Array2<f32> {
    tch::manual_seed(seed);
    let opts = (Kind::Float, Device::Cpu);
    tch::manual_seed(7);
    let mix = Tensor::randn([d, d], opts) / (d as f64).sqrt();
    tch::manual_seed(seed);
    let mix = &mix + Tensor::randn([d, d], opts) * perturb / (d as f64).sqrt();
    let x = Tensor::randn([n, d], opts).matmul(&mix).relu();
    let v: Vec<f32> = Vec::try_from(x.view([-1])).unwrap();
    Array2::from_shape_vec((n as usize, d as usize), v).unwrap()
}

fn bench_frechet(dir: &Path) {
    let n: i64 = std::env::var("LLAMAGEN_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000);
    let d = 2048;
    println!("Frechet distance, 2 x {n} x {d} features");
    let a = features(n, d, 1, 0.0);
    let b = features(n, d, 2, 0.3);
    let (pa, pb) = (dir.join("a.npy"), dir.join("b.npy"));
    ndarray_npy::write_npy(&pa, &a).unwrap();
    ndarray_npy::write_npy(&pb, &b).unwrap();

    let t0 = Instant::now();
    let sa = Statistics::from_features(a.view()).unwrap();
    let sb = Statistics::from_features(b.view()).unwrap();
    let stats_s = t0.elapsed().as_secs_f64();
    // The best of three, as the Python side takes: one run's time varies up to 2x here.
    let (mut ours, mut dist_s) = (f64::NAN, f64::INFINITY);
    for _ in 0..3 {
        let t1 = Instant::now();
        ours = frechet_distance(&sa, &sb).unwrap();
        dist_s = dist_s.min(t1.elapsed().as_secs_f64());
    }

    // One FID of a generated set against a stored reference: the set's statistics and the
    // distance. Its interval: the resamples of the same set.
    let t2 = Instant::now();
    let again = frechet_distance(&sa, &Statistics::from_features(b.view()).unwrap()).unwrap();
    let one_fid_s = t2.elapsed().as_secs_f64();
    let settings = Resampling::default();
    let t3 = Instant::now();
    let resampled = frechet_resamples(b.view(), &sa, &settings.draw(n as usize).unwrap()).unwrap();
    let interval = settings.interval(again, &resampled).unwrap();
    let interval_s = t3.elapsed().as_secs_f64();

    let t4 = Instant::now();
    let kid = kernel_distance(b.view(), a.view(), &KidSettings::default(), None).unwrap();
    let kid_s = t4.elapsed().as_secs_f64();
    let t5 = Instant::now();
    let resamples = settings.draw(n as usize).unwrap();
    let kid_resampled = kernel_distance(
        b.view(),
        a.view(),
        &KidSettings::default(),
        Some(&resamples),
    )
    .unwrap();
    let kid_interval = settings
        .interval(kid_resampled.mean, &kid_resampled.resampled)
        .unwrap();
    let kid_resampled_s = t5.elapsed().as_secs_f64();
    drop((a, b));

    let py = python(&["frechet", pa.to_str().unwrap(), pb.to_str().unwrap()]);
    let theirs = py["fid"].as_f64().unwrap();
    let (py_stats, py_dist) = (
        py["stats_s"].as_f64().unwrap(),
        py["distance_s"].as_f64().unwrap(),
    );
    println!(
        "  {:<34} {:>12} {:>12} {:>14}",
        "", "statistics", "distance", "FID"
    );
    println!(
        "  {:<34} {:>10.2} s {:>10.2} s {:>14.6}",
        "llamagen-evaluate (tch eigh)", stats_s, dist_s, ours
    );
    println!(
        "  {:<34} {:>10.2} s {:>10.2} s {:>14.6}",
        "pytorch-fid (np.cov, scipy sqrtm)", py_stats, py_dist, theirs
    );
    println!(
        "  distance speed-up {:.1}x, total speed-up {:.1}x, relative FID difference {:.2e}",
        py_dist / dist_s,
        (py_stats + py_dist) / (stats_s + dist_s),
        (ours - theirs).abs() / theirs.abs()
    );
    println!(
        "95% interval of FID {again:.4}: [{:.4}, {:.4}] from {} resamples of {} blocks",
        interval.low, interval.high, settings.resamples, settings.blocks
    );
    println!(
        "  one FID from features {one_fid_s:.2} s; its interval {interval_s:.2} s ({:.1}x one FID)",
        interval_s / one_fid_s
    );
    let py = python(&["kid", pb.to_str().unwrap(), pa.to_str().unwrap()]);
    let (py_kid, py_kid_s) = (py["kid"].as_f64().unwrap(), py["seconds"].as_f64().unwrap());
    println!("KID, 100 subsets of 1000, same subsets on both sides");
    println!(
        "  {:<44} {:>9.2} s  KID {:.8} +- {:.8}",
        "llamagen-evaluate (tch, f64)", kid_s, kid.mean, kid.std
    );
    println!(
        "  {:<44} {:>9.2} s  KID {:.8} +- {:.8}",
        py["implementation"].as_str().unwrap_or("?"),
        py_kid_s,
        py_kid,
        py["kid_std"].as_f64().unwrap()
    );
    println!(
        "  speed-up {:.1}x, relative KID difference {:.2e}; with the 100 resampled values {kid_resampled_s:.2} s, interval [{:.8}, {:.8}]",
        py_kid_s / kid_s,
        (kid.mean - py_kid).abs() / py_kid.abs(),
        kid_interval.low,
        kid_interval.high
    );
}

fn bench_quality() {
    let names = ["astronaut", "coffee", "chelsea"];
    let fixtures = repo().join("evaluate/tests/fixtures");
    let load = |file: String| {
        let img = image::open(fixtures.join(file)).unwrap().to_rgb8();
        let (w, h) = img.dimensions();
        Array3::from_shape_vec((h as usize, w as usize, 3), img.into_raw()).unwrap()
    };
    let pairs: Vec<_> = names
        .iter()
        .map(|n| {
            (
                load(format!("{n}_original.png")),
                load(format!("{n}_restored.png")),
            )
        })
        .collect();
    let rounds = 200;
    let t0 = Instant::now();
    let mut checksum = 0.0;
    for _ in 0..rounds {
        for (gt, rs) in &pairs {
            let (p, s) =
                reconstruction_quality(gt.view(), rs.view(), Convention::LlamaGen).unwrap();
            checksum += p + s;
        }
    }
    let ours_s = t0.elapsed().as_secs_f64();
    let images = (rounds * pairs.len()) as f64;
    let py = python(
        &[
            &["quality", &rounds.to_string(), fixtures.to_str().unwrap()],
            &names[..],
        ]
        .concat(),
    );
    let py_s = py["seconds"].as_f64().unwrap();
    println!(
        "PSNR + SSIM, {} pairs of 160 x 160 x 3 photos (LlamaGen convention)",
        images
    );
    println!("  llamagen-evaluate  {:>8.0} images/s", images / ours_s);
    println!("  scikit-image       {:>8.0} images/s", images / py_s);
    println!(
        "  speed-up {:.1}x, checksum difference {:.2e}",
        py_s / ours_s,
        (checksum - py["checksum"].as_f64().unwrap()).abs() / checksum
    );
}

fn bench_inception(dir: &Path) {
    let n = 128;
    let model = dir.join("inception.onnx");
    llamagen_evaluate::inception::export_random_weights(&repo(), &model, 0, &[]).unwrap();
    tch::manual_seed(3);
    let pixels = Tensor::randint(256, [n, 256, 256, 3], (Kind::Uint8, Device::Cpu));
    let pixels: Vec<u8> = Vec::try_from(pixels.view([-1])).unwrap();
    let images = ndarray::Array4::from_shape_vec((n as usize, 256, 256, 3), pixels).unwrap();
    let path = dir.join("images.npy");
    ndarray_npy::write_npy(&path, &images).unwrap();

    let mut net = llamagen_evaluate::inception::Inception::open(&model, 0, 32).unwrap();
    let t0 = Instant::now();
    let features = net.features(images.view()).unwrap();
    let ours_s = t0.elapsed().as_secs_f64();
    let py = python(&["inception", "0", path.to_str().unwrap()]);
    let py_s = py["seconds"].as_f64().unwrap();
    let ours_sum: f64 = features.pool.iter().map(|v| f64::from(*v)).sum();
    println!("FID Inception features, {n} images of 256 x 256, batch 32, same random weights");
    println!(
        "  llamagen-evaluate (ONNX Runtime)  {:>6.1} images/s",
        n as f64 / ours_s
    );
    println!(
        "  pytorch-fid (PyTorch, {} threads)  {:>6.1} images/s",
        py["threads"],
        n as f64 / py_s
    );
    println!(
        "  speed-up {:.2}x, pool-feature sum relative difference {:.2e}",
        py_s / ours_s,
        (ours_sum - py["checksum"].as_f64().unwrap()).abs() / ours_sum.abs()
    );
}

/// The text-to-image protocol's views of COCO-sized photos (crop, LANCZOS to 256, clean-fid's
/// float resize to 299, CLIP's 224 view): the work before the networks, per image.
fn bench_t2i_views(dir: &Path) {
    use llamagen_evaluate::text_to_image::{clean_resize, eval_view};
    let n = 32;
    let fixtures = repo().join("evaluate/tests/fixtures");
    let photos: Vec<image::RgbImage> = ["astronaut", "coffee", "chelsea"]
        .iter()
        .map(|p| {
            image::open(fixtures.join(format!("{p}_original.png")))
                .unwrap()
                .to_rgb8()
        })
        .collect();
    // COCO's typical 640 x 480, from the bundled photos.
    let images: Vec<Array3<u8>> = (0..n)
        .map(|i| {
            let img = image::imageops::resize(
                &photos[i % photos.len()],
                640,
                480,
                image::imageops::FilterType::Triangle,
            );
            Array3::from_shape_vec((480, 640, 3), img.into_raw()).unwrap()
        })
        .collect();
    let stacked = ndarray::stack(
        ndarray::Axis(0),
        &images.iter().map(|i| i.view()).collect::<Vec<_>>(),
    )
    .unwrap();
    let path = dir.join("t2i_images.npy");
    ndarray_npy::write_npy(&path, &stacked).unwrap();
    let res = 256;
    let t0 = Instant::now();
    let mut checksum = 0.0f64;
    for image in &images {
        let view = eval_view(image.view(), res).unwrap();
        let clean = clean_resize(view.view(), 299).unwrap();
        let clip = llamagen_clip::preprocess::clip_view(view.view(), 224).unwrap();
        checksum += clean.iter().map(|v| f64::from(*v)).sum::<f64>()
            + clip.iter().map(|v| f64::from(*v)).sum::<f64>();
    }
    let ours_s = t0.elapsed().as_secs_f64();
    let py = python(&["t2i", path.to_str().unwrap(), &res.to_string()]);
    let py_s = py["seconds"].as_f64().unwrap();
    println!(
        "text-to-image views, {n} photos of 640 x 480: crop, LANCZOS 256, clean 299, CLIP 224"
    );
    println!("  llamagen-evaluate  {:>8.1} images/s", n as f64 / ours_s);
    println!(
        "  {:<18} {:>8.1} images/s",
        py["implementation"].as_str().unwrap_or("python"),
        n as f64 / py_s
    );
    println!(
        "  speed-up {:.2}x, checksum relative difference {:.2e}",
        py_s / ours_s,
        (checksum - py["checksum"].as_f64().unwrap()).abs() / checksum
    );
}

fn main() {
    // `cargo bench` passes --bench; a filter argument picks one benchmark.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let run = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    println!(
        "threads: libtorch {}, machine {}",
        tch::get_num_threads(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if run("quality") {
        bench_quality();
    }
    if run("inception") {
        let dir = tempfile::tempdir().unwrap();
        bench_inception(dir.path());
    }
    if run("t2i") {
        let dir = tempfile::tempdir().unwrap();
        bench_t2i_views(dir.path());
    }
    if run("frechet") {
        let dir = tempfile::tempdir().unwrap();
        bench_frechet(dir.path());
    }
    if run("frechet_small") {
        let dir = tempfile::tempdir().unwrap();
        bench_frechet_small(dir.path());
    }
}

/// FID of sets smaller than the feature dimension (a quick check during training, a demo)
/// against a full-rank reference of 10,000: the distance from stored statistics on each side.
fn bench_frechet_small(dir: &Path) {
    let d = 2048;
    let reference = features(10_000, d, 1, 0.0);
    let pr = dir.join("reference.npy");
    ndarray_npy::write_npy(&pr, &reference).unwrap();
    let sr = Statistics::from_features(reference.view()).unwrap();
    drop(reference);
    println!("Frechet distance of small sets against 10000 x {d} reference features");
    println!(
        "  {:<8} {:>16} {:>16} {:>16} {:>9} {:>14} {:>10}",
        "samples", "ours (N x N)", "ours (D x D)", "pytorch-fid", "speed-up", "FID", "rel. diff."
    );
    for n in [16, 1_000] {
        let x = features(n, d, 2, 0.3);
        let px = dir.join(format!("samples-{n}.npy"));
        ndarray_npy::write_npy(&px, &x).unwrap();
        let (mut ours, mut ours_s) = (f64::NAN, f64::INFINITY);
        for _ in 0..3 {
            let t0 = Instant::now();
            ours = frechet_distance(&Statistics::from_features(x.view()).unwrap(), &sr).unwrap();
            ours_s = ours_s.min(t0.elapsed().as_secs_f64());
        }
        let stored = Statistics {
            low_rank: None,
            ..Statistics::from_features(x.view()).unwrap()
        };
        let t1 = Instant::now();
        let square = frechet_distance(&stored, &sr).unwrap();
        let square_s = t1.elapsed().as_secs_f64();
        // The Python side's statistics include the reference's; its distance step alone is
        // the comparable part (ours above includes the small set's statistics).
        let py = python(&["frechet", px.to_str().unwrap(), pr.to_str().unwrap()]);
        let (theirs, theirs_s) = (
            py["fid"].as_f64().unwrap(),
            py["distance_s"].as_f64().unwrap(),
        );
        println!(
            "  {n:<8} {:>14.3} s {:>14.3} s {:>14.3} s {:>8.0}x {:>14.6} {:>10.2e}",
            ours_s,
            square_s,
            theirs_s,
            theirs_s / ours_s,
            ours,
            (ours - theirs).abs() / theirs.abs()
        );
        assert!(
            (square - ours).abs() < 1e-6 * ours.abs(),
            "{square} vs {ours}"
        );
    }
}
