//! The Frechet distance between two Gaussians fitted to feature sets: FID on Inception pool
//! features, sFID on its spatial features, rFID on a tokenizer's reconstructions.
//!
//! `d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})`
//!
//! pytorch-fid and the ADM evaluator take the matrix square root of the non-symmetric product
//! `S1 S2` with `scipy.linalg.sqrtm` (a complex Schur decomposition) and keep the trace of its
//! real part. Only that trace is needed, and it equals `tr((L^T S2 L)^{1/2})` for any `L` with
//! `S1 = L L^T`: that matrix is symmetric positive semi-definite, so a Cholesky factorisation
//! and one symmetric eigenvalue solve give the trace exactly, in real arithmetic, an order of
//! magnitude faster (docs/BENCHMARKS.md).

use ndarray::{Array1, Array2, ArrayView2};
use tch::{Device, Kind, Tensor};

use crate::EvalError;

/// Mean and covariance of a feature set, in f64 (numpy's `np.cov` also works in f64).
#[derive(Debug, Clone, PartialEq)]
pub struct Statistics {
    /// [D]
    pub mu: Array1<f64>,
    /// [D, D], unbiased (divides by N - 1) like `np.cov(x, rowvar=False)`.
    pub sigma: Array2<f64>,
}

/// Rows converted to f64 per step of the covariance, bounding the extra memory to
/// `CHUNK x D x 8` bytes whatever the number of samples.
const CHUNK: usize = 4096;

impl Statistics {
    /// Fits statistics to `features`: [N, D], one row per image, N >= 2.
    pub fn from_features(features: ArrayView2<'_, f32>) -> Result<Self, EvalError> {
        let (n, d) = features.dim();
        if n < 2 {
            return Err(EvalError::Invalid(format!(
                "need at least 2 feature rows for a covariance, got {n}"
            )));
        }
        let features = features.as_standard_layout();
        let flat = features
            .as_slice()
            .ok_or_else(|| EvalError::Invalid("features are not contiguous".into()))?;
        if flat.iter().any(|v| !v.is_finite()) {
            return Err(EvalError::NonFinite("features"));
        }
        let chunk = |start: usize| -> Tensor {
            let end = (start + CHUNK).min(n);
            Tensor::from_slice(&flat[start * d..end * d])
                .view([(end - start) as i64, d as i64])
                .to_kind(Kind::Double)
        };
        let mut sum = Tensor::zeros([d as i64], (Kind::Double, Device::Cpu));
        for start in (0..n).step_by(CHUNK) {
            sum += chunk(start).sum_dim_intlist([0i64].as_slice(), false, Kind::Double);
        }
        let mu = sum / n as f64;
        let mut scatter = Tensor::zeros([d as i64, d as i64], (Kind::Double, Device::Cpu));
        for start in (0..n).step_by(CHUNK) {
            let centered = chunk(start) - &mu;
            scatter += centered.transpose(0, 1).matmul(&centered);
        }
        let sigma = scatter / (n - 1) as f64;
        Ok(Self {
            mu: Array1::from(Vec::<f64>::try_from(&mu)?),
            sigma: Array2::from_shape_vec((d, d), Vec::<f64>::try_from(sigma.view([-1]))?)
                .map_err(|e| EvalError::Invalid(e.to_string()))?,
        })
    }

    pub fn dim(&self) -> usize {
        self.mu.len()
    }

    fn check(&self, what: &'static str) -> Result<(), EvalError> {
        let d = self.dim();
        if self.sigma.dim() != (d, d) {
            return Err(EvalError::Shape {
                what,
                expected: format!("sigma [{d}, {d}]"),
                got: format!("{:?}", self.sigma.dim()),
            });
        }
        if self
            .mu
            .iter()
            .chain(self.sigma.iter())
            .any(|v| !v.is_finite())
        {
            return Err(EvalError::NonFinite(what));
        }
        Ok(())
    }
}

fn to_tensor(a: &Array2<f64>) -> Tensor {
    let (r, c) = a.dim();
    let a = a.as_standard_layout();
    Tensor::from_slice(a.as_slice().unwrap_or(&[])).view([r as i64, c as i64])
}

/// Symmetric square root of a symmetric positive semi-definite matrix; eigenvalues below zero
/// (round-off of a singular covariance) are treated as zero.
fn psd_sqrt(m: &Tensor) -> Tensor {
    let (w, v) = m.linalg_eigh("L");
    (&v * w.clamp_min(0.0).sqrt().unsqueeze(0)).matmul(&v.transpose(0, 1))
}

/// `tr((S1 S2)^{1/2})` for covariances S1, S2.
///
/// With a Cholesky factor `S1 = L L^T`, `S1 S2` is similar to the symmetric `L^T S2 L`, so the
/// trace is the sum of the square roots of that matrix's eigenvalues: one factorisation, two
/// matrix products and one eigenvalue-only solve. A singular covariance (a feature that never
/// varies) has no Cholesky factor; then `L` is replaced by the symmetric square root of S1.
fn trace_sqrt_product(s1: &Tensor, s2: &Tensor) -> f64 {
    let (factor, info) = s1.linalg_cholesky_ex(false, false);
    let factor = if info.int64_value(&[]) == 0 {
        factor
    } else {
        psd_sqrt(s1)
    };
    let m = factor.transpose(0, 1).matmul(s2).matmul(&factor);
    // Symmetrise away the round-off of the two products before the symmetric solver.
    let m = (&m + m.transpose(0, 1)) * 0.5;
    m.linalg_eigvalsh("L")
        .clamp_min(0.0)
        .sqrt()
        .sum(Kind::Double)
        .double_value(&[])
}

/// The Frechet distance between two fitted Gaussians (FID when fed Inception pool features).
pub fn frechet_distance(a: &Statistics, b: &Statistics) -> Result<f64, EvalError> {
    a.check("first statistics")?;
    b.check("second statistics")?;
    if a.dim() != b.dim() {
        return Err(EvalError::Shape {
            what: "statistics",
            expected: format!("equal dimensions ({})", a.dim()),
            got: format!("{} and {}", a.dim(), b.dim()),
        });
    }
    let diff = &a.mu - &b.mu;
    let s1 = to_tensor(&a.sigma);
    let s2 = to_tensor(&b.sigma);
    let tr_covmean = trace_sqrt_product(&s1, &s2);
    let trace = |s: &Tensor| s.trace().double_value(&[]);
    Ok(diff.dot(&diff) + trace(&s1) + trace(&s2) - 2.0 * tr_covmean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_sets_are_at_distance_zero() {
        let x = Array2::from_shape_fn((50, 6), |(i, j)| {
            ((i * 7 + j * 3) % 11) as f32 * 0.3 - j as f32
        });
        let s = Statistics::from_features(x.view()).unwrap();
        assert!(frechet_distance(&s, &s).unwrap().abs() < 1e-9);
    }

    #[test]
    fn one_dimensional_gaussians_have_the_closed_form() {
        // d^2 = (m1 - m2)^2 + (s1 - s2)^2 for 1-d Gaussians with standard deviations s1, s2.
        let a = Statistics {
            mu: Array1::from(vec![1.0]),
            sigma: Array2::from_elem((1, 1), 4.0),
        };
        let b = Statistics {
            mu: Array1::from(vec![-2.0]),
            sigma: Array2::from_elem((1, 1), 9.0),
        };
        assert!((frechet_distance(&a, &b).unwrap() - (9.0 + 1.0)).abs() < 1e-12);
    }

    #[test]
    fn covariance_matches_the_definition() {
        let x = Array2::from_shape_vec((3, 2), vec![1.0f32, 2.0, 3.0, 6.0, 5.0, 10.0]).unwrap();
        let s = Statistics::from_features(x.view()).unwrap();
        assert_eq!(s.mu.to_vec(), vec![3.0, 6.0]);
        // deviations (-2, -4), (0, 0), (2, 4): var 4, 16; cov 8 (divided by N - 1 = 2).
        assert_eq!(
            s.sigma.iter().copied().collect::<Vec<_>>(),
            vec![4.0, 8.0, 8.0, 16.0]
        );
    }

    #[test]
    fn a_singular_covariance_takes_the_eigen_route_to_the_same_answer() {
        // The second feature never varies in `a`: its covariance has no Cholesky factor.
        let a = Array2::from_shape_fn((40, 3), |(i, j)| {
            if j == 1 {
                2.0
            } else {
                ((i * 7 + j) % 5) as f32
            }
        });
        let b = Array2::from_shape_fn((40, 3), |(i, j)| ((i * 3 + j * 5) % 7) as f32 * 0.5);
        let (sa, sb) = (
            Statistics::from_features(a.view()).unwrap(),
            Statistics::from_features(b.view()).unwrap(),
        );
        let ab = frechet_distance(&sa, &sb).unwrap();
        let ba = frechet_distance(&sb, &sa).unwrap();
        assert!((ab - ba).abs() < 1e-9 * ab.abs(), "{ab} vs {ba}");
    }

    #[test]
    fn bad_input_is_refused() {
        let one = Array2::<f32>::zeros((1, 4));
        assert!(Statistics::from_features(one.view()).is_err());
        let mut nan = Array2::<f32>::zeros((3, 2));
        nan[[1, 1]] = f32::NAN;
        assert!(matches!(
            Statistics::from_features(nan.view()),
            Err(EvalError::NonFinite(_))
        ));
        let a = Statistics {
            mu: Array1::zeros(2),
            sigma: Array2::eye(2),
        };
        let b = Statistics {
            mu: Array1::zeros(3),
            sigma: Array2::eye(3),
        };
        assert!(matches!(
            frechet_distance(&a, &b),
            Err(EvalError::Shape { .. })
        ));
    }
}
