//! KID, the Kernel Inception Distance (Binkowski et al. 2018): the unbiased estimate of the
//! squared MMD between two feature sets under the cubic polynomial kernel
//! `k(x, y) = (x.y / D + 1)^3`, averaged over random subsets, as torch-fidelity 0.4.0
//! (`kid_features_to_metric`) and clean-fid 0.1.35 (`kernel_distance`) compute it.
//!
//! Both draw each subset with numpy's legacy generator (`choice(n, m, replace=False)`), first
//! from one set, then from the other; [`crate::numpy_random`] reproduces those draws, so with
//! the same seed and order the subsets, and the result, are theirs. torch-fidelity seeds a
//! `RandomState(2020)` and draws from its first input (the generated set) first; clean-fid
//! draws from the global generator, second argument first. Where the sets are smaller than
//! the subset size, the subsets shrink to the smaller set (clean-fid's rule; torch-fidelity
//! refuses). Kernels are computed in f64 (the references use the features' dtype).
//!
//! Resampled values for a confidence interval reuse each subset's kernel matrices: a
//! resample weights each generated sample by how often it was drawn, and the weighted
//! unbiased estimate of a subset is a few matrix-vector products away.

use ndarray::ArrayView2;
use tch::{Kind, Tensor};

use crate::numpy_random::RandomState;
use crate::resampling::Resamples;
use crate::{EvalError, f64_tensor, feature_tensor};

/// The estimator's settings; the default is torch-fidelity's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KidSettings {
    pub subsets: usize,
    pub subset_size: usize,
    pub degree: i32,
    /// `None`: 1 / D.
    pub gamma: Option<f64>,
    pub coef0: f64,
    pub seed: u32,
}

impl Default for KidSettings {
    fn default() -> Self {
        Self {
            subsets: 100,
            subset_size: 1000,
            degree: 3,
            gamma: None,
            coef0: 1.0,
            seed: 2020,
        }
    }
}

/// KID and its spread over subsets.
#[derive(Debug, Clone, PartialEq)]
pub struct Kid {
    /// The mean of the subsets' estimates (torch-fidelity's `kernel_inception_distance_mean`).
    pub mean: f64,
    /// Their population standard deviation (`kernel_inception_distance_std`).
    pub std: f64,
    /// Each subset's estimate.
    pub subsets: Vec<f64>,
    /// The mean under each resample of the first set, when resamples were given.
    pub resampled: Vec<f64>,
}

/// KID between `first` [N1, D] and `second` [N2, D], subsets drawn from `first` then
/// `second` (torch-fidelity's order with the generated set first). `resamples`, drawn for
/// `first`, adds the KID under each of them.
pub fn kernel_distance(
    first: ArrayView2<'_, f32>,
    second: ArrayView2<'_, f32>,
    settings: &KidSettings,
    resamples: Option<&Resamples>,
) -> Result<Kid, EvalError> {
    let (n1, d) = first.dim();
    let n2 = second.nrows();
    if second.ncols() != d {
        return Err(EvalError::Shape {
            what: "KID features",
            expected: format!("equal dimensions ({d})"),
            got: format!("{d} and {}", second.ncols()),
        });
    }
    let m = settings.subset_size.min(n1).min(n2);
    if m < 2 || settings.subsets == 0 {
        return Err(EvalError::Invalid(format!(
            "KID needs subsets of at least 2 samples and at least one subset, got {m} and {}",
            settings.subsets
        )));
    }
    if let Some(r) = resamples
        && r.block_of.len() != n1
    {
        return Err(EvalError::Shape {
            what: "KID resamples",
            expected: format!("{n1} samples (the first set)"),
            got: r.block_of.len().to_string(),
        });
    }
    let (x_all, y_all) = (
        feature_tensor(first, "KID features")?,
        feature_tensor(second, "KID features")?,
    );
    let gamma = settings.gamma.unwrap_or(1.0 / d as f64);
    let kernel = |a: &Tensor, b: &Tensor| -> Tensor {
        (a.matmul(&b.transpose(0, 1)) * gamma + settings.coef0)
            .pow_tensor_scalar(i64::from(settings.degree))
    };
    let weights = resamples.map(|r| f64_tensor(&r.sample_weights()));
    let mf = m as f64;
    let mut estimates = Vec::with_capacity(settings.subsets);
    let mut resampled_sum: Option<Tensor> = None;
    let mut rng = RandomState::new(settings.seed);
    for _ in 0..settings.subsets {
        let i1 = rng.choice_without_replacement(n1, m);
        let i2 = rng.choice_without_replacement(n2, m);
        let (i1, i2): (Vec<i64>, Vec<i64>) = (
            i1.into_iter().map(|i| i as i64).collect(),
            i2.into_iter().map(|i| i as i64).collect(),
        );
        let i1 = Tensor::from_slice(&i1);
        let x = x_all.index_select(0, &i1).to_kind(Kind::Double);
        let y = y_all
            .index_select(0, &Tensor::from_slice(&i2))
            .to_kind(Kind::Double);
        let (kxx, kyy, kxy) = (kernel(&x, &x), kernel(&y, &y), kernel(&x, &y));
        let off_diagonal =
            |k: &Tensor| k.sum(Kind::Double).double_value(&[]) - k.trace().double_value(&[]);
        let (xx, yy) = (off_diagonal(&kxx), off_diagonal(&kyy));
        let xy = kxy.sum(Kind::Double).double_value(&[]);
        estimates.push((xx + yy) / (mf * (mf - 1.0)) - 2.0 * xy / (mf * mf));

        if let Some(weights) = &weights {
            // A resample draws sample i of this subset w_i times: the pairs of distinct draws
            // sum to w^T K w - sum_i w_i K_ii over M(M - 1) of them, M = sum_i w_i.
            let w = weights.index_select(0, &i1);
            let total = w.sum_dim_intlist([0i64].as_slice(), false, Kind::Double);
            let pairs =
                (kxx.matmul(&w) * &w).sum_dim_intlist([0i64].as_slice(), false, Kind::Double)
                    - (kxx.diagonal(0, 0, 1).unsqueeze(1) * &w).sum_dim_intlist(
                        [0i64].as_slice(),
                        false,
                        Kind::Double,
                    );
            let cross = (kxy
                .sum_dim_intlist([1i64].as_slice(), false, Kind::Double)
                .unsqueeze(1)
                * &w)
                .sum_dim_intlist([0i64].as_slice(), false, Kind::Double);
            let estimate = pairs / (&total * (&total - 1.0)) + yy / (mf * (mf - 1.0))
                - cross * 2.0 / (total * mf);
            resampled_sum = Some(match resampled_sum {
                Some(sum) => sum + estimate,
                None => estimate,
            });
        }
    }
    let count = estimates.len() as f64;
    let mean = estimates.iter().sum::<f64>() / count;
    let std = (estimates.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / count).sqrt();
    let resampled = match resampled_sum {
        Some(sum) => Vec::<f64>::try_from(sum / count)?,
        None => Vec::new(),
    };
    if resampled.iter().any(|v| !v.is_finite()) {
        return Err(EvalError::Invalid(
            "a resample drew fewer than 2 samples of a KID subset; use larger sets or fewer blocks"
                .into(),
        ));
    }
    Ok(Kid {
        mean,
        std,
        subsets: estimates,
        resampled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resampling::Resampling;
    use ndarray::Array2;

    fn features(n: usize, d: usize, shift: f32, seed: u32) -> Array2<f32> {
        let mut rng = RandomState::new(seed);
        Array2::from_shape_fn((n, d), |(_, j)| {
            (rng.next_u32() as f32 / u32::MAX as f32) * (1.0 + j as f32 * 0.1) + shift
        })
    }

    #[test]
    fn a_set_against_itself_is_near_zero_and_a_shift_is_positive() {
        let a = features(300, 8, 0.0, 1);
        let b = features(300, 8, 0.0, 2);
        let c = features(300, 8, 0.5, 3);
        let settings = KidSettings {
            subset_size: 100,
            subsets: 20,
            ..Default::default()
        };
        let same = kernel_distance(a.view(), b.view(), &settings, None).unwrap();
        let shifted = kernel_distance(a.view(), c.view(), &settings, None).unwrap();
        assert!(
            same.mean.abs() < 0.05 * shifted.mean,
            "{same:?} vs {shifted:?}"
        );
        assert!(shifted.mean > 0.0 && shifted.std > 0.0);
        assert_eq!(shifted.subsets.len(), 20);
    }

    #[test]
    fn the_resample_that_draws_every_block_once_is_the_estimate() {
        let a = features(120, 6, 0.0, 4);
        let b = features(90, 6, 0.3, 5);
        let mut r = Resampling {
            resamples: 3,
            blocks: 10,
            ..Default::default()
        }
        .draw(120)
        .unwrap();
        r.counts.row_mut(0).fill(1.0);
        let settings = KidSettings {
            subset_size: 50,
            subsets: 7,
            ..Default::default()
        };
        let kid = kernel_distance(a.view(), b.view(), &settings, Some(&r)).unwrap();
        assert!((kid.resampled[0] - kid.mean).abs() < 1e-12 * kid.mean.abs().max(1.0));
        assert_ne!(kid.resampled[1], kid.mean);
    }

    #[test]
    fn bad_input_is_refused() {
        let a = features(10, 4, 0.0, 1);
        let b = features(10, 3, 0.0, 1);
        let s = KidSettings::default();
        assert!(kernel_distance(a.view(), b.view(), &s, None).is_err());
        let mut nan = a.clone();
        nan[[2, 2]] = f32::NAN;
        assert!(kernel_distance(nan.view(), a.view(), &s, None).is_err());
        assert!(kernel_distance(a.slice(ndarray::s![..1, ..]), a.view(), &s, None).is_err());
    }
}
