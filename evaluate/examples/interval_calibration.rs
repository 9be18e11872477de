//! How well the confidence intervals match reality: the spread of FID (or KID) over many
//! independent sample sets of one synthetic "model", against the spread the resampling of a
//! single set predicts, for half-samples (what `llamagen-evaluate` uses) and for the
//! with-replacement bootstrap (what it does not, and why).
//!
//! `cargo run --release -p llamagen-evaluate --example interval_calibration -- fid 4000 128 40`
//! `cargo run --release -p llamagen-evaluate --example interval_calibration -- kid 5000 256 20`
//!
//! Arguments: the metric, samples per set, feature dimensions, independent sets. Features are
//! Inception-like (non-negative, correlated); docs/metrics.md keeps the figures.

use llamagen_evaluate::frechet::{Statistics, frechet_distance, frechet_resamples};
use llamagen_evaluate::kernel_distance::{KidSettings, kernel_distance};
use llamagen_evaluate::numpy_random::RandomState;
use llamagen_evaluate::resampling::{Resamples, Resampling};
use ndarray::Array2;
use tch::{Device, Kind, Tensor};

/// `relu(z M)` with M near a fixed random mixing matrix; `perturb` moves the "model" away from
/// the reference.
fn features(n: usize, d: usize, seed: i64, perturb: f64) -> Array2<f32> {
    let opts = (Kind::Float, Device::Cpu);
    tch::manual_seed(7);
    let mix = Tensor::randn([d as i64, d as i64], opts) / (d as f64).sqrt();
    tch::manual_seed(1000 + (perturb * 10.0) as i64);
    let mix = &mix + Tensor::randn([d as i64, d as i64], opts) * perturb / (d as f64).sqrt();
    tch::manual_seed(seed);
    let x = Tensor::randn([n as i64, d as i64], opts)
        .matmul(&mix)
        .relu();
    Array2::from_shape_vec((n, d), Vec::<f32>::try_from(x.view([-1])).unwrap()).unwrap()
}

fn spread(values: &[f64]) -> (f64, f64) {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len() - 1) as f64;
    (mean, var.sqrt())
}

/// The same blocks, each resample drawing as many blocks with replacement.
fn with_replacement(halves: &Resamples, seed: u32) -> Resamples {
    let mut r = halves.clone();
    let k = r.blocks();
    let mut rng = RandomState::new(seed);
    for mut row in r.counts.rows_mut() {
        row.fill(0.0);
        for _ in 0..k {
            row[rng.interval(k as u64 - 1) as usize] += 1.0;
        }
    }
    r
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (metric, n, d, sets) = match args.as_slice() {
        [m, n, d, s] => (
            m.as_str(),
            n.parse().unwrap(),
            d.parse().unwrap(),
            s.parse().unwrap(),
        ),
        _ => ("fid", 4000usize, 128usize, 40usize),
    };
    let reference = features(if metric == "fid" { n * 20 } else { n }, d, 1, 0.0);
    let reference_stats = Statistics::from_features(reference.view()).unwrap();
    let measure = |x: &Array2<f32>, seed: u32, resamples: Option<&Resamples>| -> (f64, Vec<f64>) {
        if metric == "fid" {
            let s = Statistics::from_features(x.view()).unwrap();
            let v = frechet_distance(&s, &reference_stats).unwrap();
            let r = resamples.map_or_else(Vec::new, |r| {
                frechet_resamples(x.view(), &reference_stats, r).unwrap()
            });
            (v, r)
        } else {
            let settings = KidSettings {
                seed,
                ..Default::default()
            };
            let k = kernel_distance(x.view(), reference.view(), &settings, resamples).unwrap();
            (k.mean, k.resampled)
        }
    };
    let independent: Vec<f64> = (0..sets)
        .map(|s| measure(&features(n, d, 100 + s as i64, 0.3), s as u32, None).0)
        .collect();
    let (mean, sd) = spread(&independent);
    println!(
        "{metric}, {n} samples x {d} dimensions: over {sets} independent sets mean {mean:.6}, sd {sd:.6}"
    );
    let x = features(n, d, 5, 0.3);
    // Single samples as blocks for KID; for FID that needs blocks x D^2 x 8 bytes, so 1,000.
    let fine = if metric == "fid" { 1000.min(n) } else { n };
    for blocks in [64, fine] {
        let settings = Resampling {
            resamples: 200,
            blocks,
            ..Default::default()
        };
        let halves = settings.draw(n).unwrap();
        let k = halves.blocks();
        for (name, r) in [
            ("half-samples", halves.clone()),
            ("bootstrap", with_replacement(&halves, 1)),
        ] {
            let (value, resampled) = measure(&x, 0, Some(&r));
            let (m, s) = spread(&resampled);
            println!(
                "  {name:<12} of {k:>5} blocks: one set {value:.6}, resampled mean {m:.6}, sd {s:.6} = {:.2}x the independent sd",
                s / sd
            );
        }
    }
}
