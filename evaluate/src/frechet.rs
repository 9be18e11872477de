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

use crate::resampling::Resamples;
use crate::{EvalError, f64_tensor, feature_tensor};

/// Mean and covariance of a feature set, in f64 (numpy's `np.cov` also works in f64).
#[derive(Debug, Clone, PartialEq)]
pub struct Statistics {
    /// [D]
    pub mu: Array1<f64>,
    /// [D, D], unbiased (divides by N - 1) like `np.cov(x, rowvar=False)`.
    pub sigma: Array2<f64>,
    /// [N - 1, D]: a factor of sigma, `sigma = low_rank^T low_rank`, that
    /// [`Statistics::from_features`] keeps for sets of no more samples than dimensions (a
    /// quick check, a small reference, a demo). sigma's rank is then below N, and
    /// [`frechet_distance`] solves an (N - 1) x (N - 1) problem where it would otherwise
    /// decompose a D x D one. `None` for statistics read from a file (pytorch-fid's and ADM's
    /// `.npz` files hold mu and sigma only) and for large sets.
    pub low_rank: Option<Array2<f64>>,
}

/// The N - 1 rows that carry all of `centred` ([N, D], rows summing to zero): `Q^T centred` for
/// an orthonormal basis Q of the vectors orthogonal to the all-ones vector, so that
/// `centred^T centred` is unchanged. Keeping N rows would leave a zero eigenvalue in every
/// N x N problem built from them, and the square root turns its round-off (eps relative) into
/// an error of sqrt(eps). Q is the last N - 1 columns of the Householder reflection that maps
/// the first unit vector to `1 / sqrt(N)`. Returns [N - 1, D].
fn drop_the_mean_direction(centred: &Tensor) -> Tensor {
    let n = centred.size()[0];
    let v = Tensor::full([n], -1.0 / (n as f64).sqrt(), (Kind::Double, Device::Cpu));
    let _ = v.get(0).g_add_scalar_(1.0);
    // v = e1 - 1/sqrt(N), |v|^2 = 2 - 2/sqrt(N) > 0 for N >= 2.
    let scale = 2.0 / v.dot(&v).double_value(&[]);
    let reflected = centred - v.outer(&v.matmul(centred)) * scale;
    reflected.narrow(0, 1, n - 1)
}

/// A [rows, cols] f64 tensor as an array.
fn array2(t: &Tensor, dims: (usize, usize)) -> Result<Array2<f64>, EvalError> {
    Array2::from_shape_vec(dims, Vec::<f64>::try_from(t.contiguous().view([-1]))?)
        .map_err(|e| EvalError::Invalid(e.to_string()))
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
        let rows = |start: usize| -> (i64, Tensor) {
            let end = (start + CHUNK).min(n);
            let rows = (end - start) as i64;
            let x = Tensor::from_slice(&flat[start * d..end * d]).view([rows, d as i64]);
            (rows, x)
        };
        let mut sum = Tensor::zeros([d as i64], (Kind::Double, Device::Cpu));
        for start in (0..n).step_by(CHUNK) {
            sum += rows(start)
                .1
                .sum_dim_intlist([0i64].as_slice(), false, Kind::Double);
        }
        let mu = sum / n as f64;
        // One f64 buffer for every chunk: allocating each anew costs a page fault per page.
        let buffer = Tensor::zeros([CHUNK.min(n) as i64, d as i64], (Kind::Double, Device::Cpu));
        let mut scatter = Tensor::zeros([d as i64, d as i64], (Kind::Double, Device::Cpu));
        for start in (0..n).step_by(CHUNK) {
            let (count, x) = rows(start);
            let mut centered = buffer.narrow(0, 0, count);
            centered.copy_(&x);
            centered -= &mu;
            add_upper_scatter(&mut scatter, &centered);
        }
        let upper = scatter.triu(0);
        let sigma = (&upper + upper.triu(1).transpose(0, 1)) / (n - 1) as f64;
        let low_rank = if n <= d {
            let x = Tensor::from_slice(flat).view([n as i64, d as i64]);
            let centred = (x.to_kind(Kind::Double) - &mu) / ((n - 1) as f64).sqrt();
            Some(array2(&drop_the_mean_direction(&centred), (n - 1, d))?)
        } else {
            None
        };
        Ok(Self {
            mu: Array1::from(Vec::<f64>::try_from(&mu)?),
            sigma: array2(&sigma, (d, d))?,
            low_rank,
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
        if let Some(low_rank) = &self.low_rank
            && low_rank.ncols() != d
        {
            return Err(EvalError::Shape {
                what,
                expected: format!("low-rank factor [R, {d}]"),
                got: format!("{:?}", low_rank.dim()),
            });
        }
        if self
            .mu
            .iter()
            .chain(self.sigma.iter())
            .chain(self.low_rank.iter().flatten())
            .any(|v| !v.is_finite())
        {
            return Err(EvalError::NonFinite(what));
        }
        Ok(())
    }
}

/// Column blocks of the scatter matrix [`add_upper_scatter`] splits it into.
const COLUMN_BLOCKS: i64 = 4;

/// Adds `x^T x` ([D, D], for `x`: [C, D]) to `scatter`, computing only its blocks on and above
/// the diagonal: the matrix is symmetric, so (B + 1) / 2B of a full product's work does
/// (62.5% for B = 4; more blocks save more flops but run smaller, slower products, and
/// measured no faster). numpy's `X^T X` gets the same saving from BLAS's symmetric rank-k
/// update, which libtorch does not expose; each block here is one general matrix product on
/// strided views.
/// Below the diagonal blocks, `scatter` is left as it was.
fn add_upper_scatter(scatter: &mut Tensor, x: &Tensor) {
    let d = x.size()[1];
    let width = (d + COLUMN_BLOCKS - 1) / COLUMN_BLOCKS;
    for i in (0..d).step_by(width as usize) {
        let wi = width.min(d - i);
        let left = x.narrow(1, i, wi).transpose(0, 1);
        for j in (i..d).step_by(width as usize) {
            let wj = width.min(d - j);
            let mut block = scatter.narrow(0, i, wi).narrow(1, j, wj);
            let _ = block.addmm_(&left, &x.narrow(1, j, wj));
        }
    }
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
    let m = match factor(s1) {
        Factor::Cholesky(l) => lower_congruence_upper(&l, s2),
        Factor::SquareRoot(r) => symmetrised(&r.transpose(0, 1).matmul(s2).matmul(&r)),
    };
    trace_sqrt_psd(&m)
}

/// A factor `L` of a covariance, `S = L L^T` [D, D].
enum Factor {
    /// Lower-triangular.
    Cholesky(Tensor),
    /// The symmetric square root, for a singular S (a feature that never varies, or fewer
    /// samples than dimensions in statistics without their low-rank factor).
    SquareRoot(Tensor),
}

impl Factor {
    fn matrix(&self) -> &Tensor {
        match self {
            Factor::Cholesky(l) | Factor::SquareRoot(l) => l,
        }
    }
}

/// S's Cholesky factor, or its symmetric square root where S has none.
fn factor(s: &Tensor) -> Factor {
    let (l, info) = s.linalg_cholesky_ex(false, false);
    if info.int64_value(&[]) == 0 {
        Factor::Cholesky(l)
    } else {
        Factor::SquareRoot(psd_sqrt(s))
    }
}

/// `tr((S1 S2)^{1/2})` with `S1 = A^T A` for `A` [R, D]: the non-zero eigenvalues of `S1 S2`
/// are those of the symmetric R x R matrix `A S2 A^T`, so one product of R x D by D x D and an
/// R x R eigenvalue solve give the trace, whatever the rank of S2. For R well below D (16
/// samples of 2048-d features) this costs milliseconds where the D x D route decomposes S1
/// (singular at that size) in seconds.
fn trace_sqrt_low_rank(a: &Tensor, s2: &Tensor) -> f64 {
    trace_sqrt_psd(&symmetrised(&a.matmul(s2).matmul(&a.transpose(0, 1))))
}

/// `tr(M^{1/2})` of a symmetric positive semi-definite `M` from its upper triangle: the sum of
/// the square roots of its eigenvalues, those below zero (round-off) taken as zero.
fn trace_sqrt_psd(m: &Tensor) -> f64 {
    m.linalg_eigvalsh("U")
        .clamp_min(0.0)
        .sqrt()
        .sum(Kind::Double)
        .double_value(&[])
}

/// `(M + M^T) / 2`: a product that is symmetric in exact arithmetic, without the round-off
/// that makes it not quite so, before a symmetric solver reads one triangle of it.
fn symmetrised(m: &Tensor) -> Tensor {
    (m + m.transpose(0, 1)) * 0.5
}

/// The upper block triangle of `L^T S L` for a lower-triangular `L` [D, D] and a symmetric
/// `S` [D, D]; the blocks below it are zero (the symmetric solver reads the upper triangle).
///
/// `P = S L` needs, for each column block j of L, only L's rows from j on (the rest are zero):
/// 10 of 16 block products for 4 x 4 blocks. `L^T P` needs, for row block i, only P's rows
/// from i on, and only the blocks right of the diagonal, the rest following by symmetry: 30 of
/// 64. Together 55 % of the two general products' flops, measured 0.16 s against 0.25 s at
/// D = 2048 on two cores.
fn lower_congruence_upper(l: &Tensor, s: &Tensor) -> Tensor {
    let d = l.size()[0];
    let width = (d + COLUMN_BLOCKS - 1) / COLUMN_BLOCKS;
    let p = Tensor::empty([d, d], (Kind::Double, Device::Cpu));
    for j in (0..d).step_by(width as usize) {
        let wj = width.min(d - j);
        let mut block = p.narrow(1, j, wj);
        block.copy_(
            &s.narrow(1, j, d - j)
                .matmul(&l.narrow(0, j, d - j).narrow(1, j, wj)),
        );
    }
    let m = Tensor::zeros([d, d], (Kind::Double, Device::Cpu));
    for i in (0..d).step_by(width as usize) {
        let wi = width.min(d - i);
        let left = l.narrow(0, i, d - i).narrow(1, i, wi).transpose(0, 1);
        let mut rows = m.narrow(0, i, wi).narrow(1, i, d - i);
        rows.copy_(&left.matmul(&p.narrow(0, i, d - i).narrow(1, i, d - i)));
    }
    m
}

/// The Frechet distance between two fitted Gaussians (FID when fed Inception pool features).
///
/// Through the smaller low-rank factor when either side has one (the other side's
/// covariance can be of any rank, so its factor is the better choice only when it has fewer
/// rows: then no zero eigenvalue is left to square-root), else through the D x D route.
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
    let s1 = f64_tensor(&a.sigma);
    let s2 = f64_tensor(&b.sigma);
    let rows = |s: &Statistics| s.low_rank.as_ref().map_or(usize::MAX, |x| x.nrows());
    let tr_covmean = match (&a.low_rank, &b.low_rank) {
        (Some(x), _) if rows(a) <= rows(b) => trace_sqrt_low_rank(&f64_tensor(x), &s2),
        (_, Some(x)) => trace_sqrt_low_rank(&f64_tensor(x), &s1),
        _ => trace_sqrt_product(&s1, &s2),
    };
    let trace = |s: &Tensor| s.trace().double_value(&[]);
    Ok(diff.dot(&diff) + trace(&s1) + trace(&s2) - 2.0 * tr_covmean)
}

/// The most memory [`frechet_resamples`] gives the blocks' scatter matrices.
pub const MAX_SCATTER_BYTES: u64 = 8 << 30;

/// The Frechet distance of every resample of `samples` ([N, D] features) to `reference`, for
/// [`crate::resampling::Resampling::interval`].
///
/// Cheap because nothing is refitted per resample. With the reference's factor
/// `S_ref = L L^T`, `tr((S_ref S)^{1/2}) = tr((L^T S L)^{1/2})`, and `L^T S L` is the covariance
/// of the projected features `Y = (X - mu) L`. One pass projects the features and sums each
/// block's `Y^T Y`, `Y`, `X - mu` and `|X - mu|^2`; a resample's covariance is then the
/// count-weighted sum of those block sums (one matrix product over the blocks) less the
/// rank-one correction of its mean, and its trace term is one eigenvalue-only solve. The
/// full-set value is [`frechet_distance`]'s. The blocks' scatter matrices take
/// `blocks x D^2 x 8` bytes (2 GiB for 64 blocks of 2048-d features); they stay in f64 because
/// the square root amplifies round-off in small eigenvalues (f32 storage moved a resample by
/// 3e-4 relative on a rank-deficient test set). Sets of no more samples than dimensions take
/// an N x N route instead, with the same result.
pub fn frechet_resamples(
    samples: ArrayView2<'_, f32>,
    reference: &Statistics,
    resamples: &Resamples,
) -> Result<Vec<f64>, EvalError> {
    reference.check("reference statistics")?;
    let (n, d) = samples.dim();
    if d != reference.dim() {
        return Err(EvalError::Shape {
            what: "sample features",
            expected: format!("{} columns (the reference's dimension)", reference.dim()),
            got: d.to_string(),
        });
    }
    if n != resamples.block_of.len() {
        return Err(EvalError::Shape {
            what: "sample features",
            expected: format!(
                "{} rows (one per resampled sample)",
                resamples.block_of.len()
            ),
            got: n.to_string(),
        });
    }
    let x = feature_tensor(samples, "features")?;
    let di = d as i64;
    let f64_opts = (Kind::Double, Device::Cpu);
    let mut mu = Tensor::zeros([di], f64_opts);
    for start in (0..n).step_by(CHUNK) {
        let len = CHUNK.min(n - start) as i64;
        mu += x
            .narrow(0, start as i64, len)
            .to_kind(Kind::Double)
            .sum_dim_intlist([0i64].as_slice(), false, Kind::Double);
    }
    let mu = mu / n as f64;
    let s_ref = f64_tensor(&reference.sigma);
    let mu_offset = &mu - Tensor::from_slice(reference.mu.as_slice().unwrap_or(&[]));
    let trace_ref = s_ref.trace().double_value(&[]);
    let scatter_bytes = resamples.blocks() as u64 * (d as u64).pow(2) * 8;
    if n > d && scatter_bytes > MAX_SCATTER_BYTES {
        return Err(EvalError::Invalid(format!(
            "{} blocks of {d}-dimensional features need {:.1} GiB of scatter matrices (at most {} GiB): use fewer blocks",
            resamples.blocks(),
            scatter_bytes as f64 / (1u64 << 30) as f64,
            MAX_SCATTER_BYTES >> 30
        )));
    }
    let fitted = Fitted {
        x: &x,
        mu: &mu,
        s_ref: &s_ref,
        mu_offset: &mu_offset,
        trace_ref,
    };
    Ok(if n <= d {
        few_samples(&fitted, resamples)
    } else {
        blockwise(&fitted, resamples)
    })
}

/// What every resample shares: the features [N, D], their mean [D], the reference's
/// covariance `S_ref` [D, D], the mean's offset from the reference's [D], and `tr(S_ref)`.
struct Fitted<'a> {
    x: &'a Tensor,
    mu: &'a Tensor,
    s_ref: &'a Tensor,
    mu_offset: &'a Tensor,
    trace_ref: f64,
}

/// One resample's sums, relative to the full set's mean.
struct Resampled<'a> {
    /// Its (weighted) sample count.
    total: f64,
    /// [D] its mean less the full set's.
    delta: &'a Tensor,
    /// Its weighted sum of squared deviations from the full set's mean.
    square_sum: f64,
    /// The eigenvalues of its projected scatter matrix (not yet divided by `total - 1`).
    scatter_eigenvalues: Tensor,
}

/// The Frechet distance of a resample from its sums: the mean term, the trace of its
/// covariance, the reference's trace, and the trace of the square root from the eigenvalues.
fn resampled_distance(r: &Resampled<'_>, mu_offset: &Tensor, trace_ref: f64) -> f64 {
    let trace_sqrt = (&r.scatter_eigenvalues / (r.total - 1.0))
        .clamp_min(0.0)
        .sqrt()
        .sum(Kind::Double)
        .double_value(&[]);
    let trace = (r.square_sum - r.total * r.delta.dot(r.delta).double_value(&[])) / (r.total - 1.0);
    let shift = mu_offset + r.delta;
    shift.dot(&shift).double_value(&[]) + trace + trace_ref - 2.0 * trace_sqrt
}

/// [`frechet_resamples`] through the blocks' sums, for sets of more samples than dimensions.
fn blockwise(f: &Fitted<'_>, resamples: &Resamples) -> Vec<f64> {
    let Fitted {
        x,
        mu,
        s_ref,
        mu_offset,
        trace_ref,
    } = *f;
    let (k, di) = (resamples.blocks(), x.size()[1]);
    let factor_f32 = factor(s_ref).matrix().to_kind(Kind::Float);
    let mut members: Vec<Vec<i64>> = vec![Vec::new(); k];
    for (i, &b) in resamples.block_of.iter().enumerate() {
        members[b].push(i as i64);
    }
    let grams = Tensor::zeros([k as i64, di * di], (Kind::Double, Device::Cpu));
    let mut x_sums = Vec::with_capacity(k);
    let mut y_sums = Vec::with_capacity(k);
    let (mut squares, mut sizes) = (Vec::with_capacity(k), Vec::with_capacity(k));
    for (b, rows) in members.iter().enumerate() {
        let centered = x
            .index_select(0, &Tensor::from_slice(rows))
            .to_kind(Kind::Double)
            - mu;
        // The projection in f32: a rounded Y is the exact projection of features perturbed by
        // 1e-7, which moves each singular value of Y, and so each square root of an
        // eigenvalue, by at most that much. (Rounding the scatter matrices instead would
        // perturb the eigenvalues themselves, which the square root amplifies.)
        let y = centered
            .to_kind(Kind::Float)
            .matmul(&factor_f32)
            .to_kind(Kind::Double);
        // The upper block triangle only: the solver below reads the upper triangle.
        add_upper_scatter(&mut grams.get(b as i64).view([di, di]), &y);
        x_sums.push(centered.sum_dim_intlist([0i64].as_slice(), false, Kind::Double));
        y_sums.push(y.sum_dim_intlist([0i64].as_slice(), false, Kind::Double));
        squares.push(centered.square().sum(Kind::Double).double_value(&[]));
        sizes.push(rows.len() as f64);
    }
    let (x_sums, y_sums) = (Tensor::stack(&x_sums, 0), Tensor::stack(&y_sums, 0));

    let counts = f64_tensor(&resamples.counts);
    // Eight resamples' summed scatter matrices at a time bound the extra memory.
    const GROUP: i64 = 8;
    let mut out = Vec::with_capacity(resamples.resamples());
    for start in (0..resamples.resamples() as i64).step_by(GROUP as usize) {
        let len = GROUP.min(resamples.resamples() as i64 - start);
        let c = counts.narrow(0, start, len);
        let scatter = c.matmul(&grams);
        for r in 0..len {
            let c = c.get(r);
            let total: f64 = (0..k).map(|b| c.double_value(&[b as i64]) * sizes[b]).sum();
            let delta = c.matmul(&x_sums) / total;
            let delta_y = c.matmul(&y_sums) / total;
            // The scatter less its mean's rank-one part, updated in place; the solver reads the
            // upper triangle only, and the 1 / (n - 1) goes onto the eigenvalues.
            let mut projected = scatter.get(r).view([di, di]);
            let _ = projected.addr_(&(&delta_y * -total), &delta_y);
            let square_sum: f64 = (0..k)
                .map(|b| c.double_value(&[b as i64]) * squares[b])
                .sum();
            out.push(resampled_distance(
                &Resampled {
                    total,
                    delta: &delta,
                    square_sum,
                    scatter_eigenvalues: projected.linalg_eigvalsh("U"),
                },
                mu_offset,
                trace_ref,
            ));
        }
    }
    out
}

/// [`frechet_resamples`] for sets of no more samples than dimensions (a demo, a quick check):
/// the covariance has rank below N, and the non-zero eigenvalues of `Y^T C Y` (Y the centred
/// features projected by a factor `L` of `S_ref = L L^T`, C the weighted centring of a
/// resample) are those of the N x N matrix `B (Y Y^T) B^T` with `C = B^T B`,
/// `B = W^{1/2} (I - 1 w^T / n)`, so each resample solves an N x N problem instead of D x D.
/// `Y Y^T` is `X S_ref X^T` for the centred features X, so no factor of `S_ref` is needed
/// (none exists in Cholesky form when the reference has fewer images than dimensions).
fn few_samples(f: &Fitted<'_>, resamples: &Resamples) -> Vec<f64> {
    let Fitted {
        x,
        mu,
        s_ref,
        mu_offset,
        trace_ref,
    } = *f;
    let centered = x.to_kind(Kind::Double) - mu;
    let gram = symmetrised(&centered.matmul(s_ref).matmul(&centered.transpose(0, 1)));
    let squares = centered
        .square()
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Double);
    let weights = f64_tensor(&resamples.sample_weights())
        .transpose(0, 1)
        .contiguous();
    (0..resamples.resamples() as i64)
        .map(|r| {
            let w = weights.get(r);
            let total = w.sum(Kind::Double).double_value(&[]);
            // P K P^T with P = I - 1 w^T / n, then both sides scaled by sqrt(w).
            let pk = &gram - w.matmul(&gram).unsqueeze(0) / total;
            let pkp = &pk - pk.matmul(&w).unsqueeze(1) / total;
            let root = w.sqrt();
            let m = &pkp * root.unsqueeze(1) * root.unsqueeze(0);
            let delta = w.matmul(&centered) / total;
            resampled_distance(
                &Resampled {
                    total,
                    delta: &delta,
                    square_sum: w.dot(&squares).double_value(&[]),
                    scatter_eigenvalues: m.linalg_eigvalsh("L"),
                },
                mu_offset,
                trace_ref,
            )
        })
        .collect()
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
            low_rank: None,
        };
        let b = Statistics {
            mu: Array1::from(vec![-2.0]),
            sigma: Array2::from_elem((1, 1), 9.0),
            low_rank: None,
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
        // The zero eigenvalue comes out as round-off of about eps x |M|, and its square root,
        // a few times sqrt(eps) relative, is the agreement any route can promise; where in
        // that range it lands depends on the CPU's BLAS kernels (2.4e-8 on an AMD EPYC).
        let floor = f64::EPSILON.sqrt();
        assert!((ab - ba).abs() < 4.0 * floor * ab.abs(), "{ab} vs {ba}");
    }

    #[test]
    fn small_sets_take_the_low_rank_route_to_the_same_answer() {
        // 20 and 30 samples of 48 dimensions: both covariances are singular.
        let (a, b) = (gaussian(20, 48, 0.3, 21), gaussian(30, 48, 0.0, 22));
        let (sa, sb) = (
            Statistics::from_features(a.view()).unwrap(),
            Statistics::from_features(b.view()).unwrap(),
        );
        assert_eq!(sa.low_rank.as_ref().map(|x| x.dim()), Some((19, 48)));
        let strip = |s: &Statistics| Statistics {
            low_rank: None,
            ..s.clone()
        };
        let low_rank = frechet_distance(&sa, &sb).unwrap();
        // Either order, and against sb as a file gives it back: the same 19-row problem.
        for (x, y) in [(&sb, &sa), (&sa, &strip(&sb))] {
            let other = frechet_distance(x, y).unwrap();
            assert!(
                (other - low_rank).abs() < 1e-12 * low_rank,
                "{other} vs {low_rank}"
            );
        }
        // The floor of a route is sqrt(eps) relative per zero eigenvalue it square-roots from
        // round-off (see the singular-covariance test). sb's 29 rows against sa's rank-19
        // covariance leave 10 (measured 6.9e-9 relative); the D x D route leaves 29 (1.9e-8).
        let floor = f64::EPSILON.sqrt() * low_rank;
        let other_side = frechet_distance(&strip(&sa), &sb).unwrap();
        assert!(
            (other_side - low_rank).abs() < 10.0 * floor,
            "{other_side} vs {low_rank}"
        );
        let square_route = frechet_distance(&strip(&sa), &strip(&sb)).unwrap();
        assert!(
            (square_route - low_rank).abs() < 29.0 * floor,
            "{square_route} vs {low_rank}"
        );
        // Against itself: no zero eigenvalue is left once the mean's direction is dropped
        // (8.5e-14 here, where the D x D route gives -2.5e-6).
        let trace = sa.sigma.diag().sum();
        let same = frechet_distance(&sa, &sa).unwrap();
        assert!(same.abs() < 1e-12 * trace, "{same}");
        // More samples than dimensions: no low-rank factor is kept.
        let large = Statistics::from_features(gaussian(60, 48, 0.0, 23).view()).unwrap();
        assert!(large.low_rank.is_none());
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
            low_rank: None,
        };
        let b = Statistics {
            mu: Array1::zeros(3),
            sigma: Array2::eye(3),
            low_rank: None,
        };
        assert!(matches!(
            frechet_distance(&a, &b),
            Err(EvalError::Shape { .. })
        ));
    }

    fn gaussian(n: usize, d: usize, shift: f64, seed: i64) -> Array2<f32> {
        // libtorch's generator is global and the tests run on several threads: seeding and
        // drawing under one lock keeps each set the same whatever runs beside it.
        static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let x = {
            let _drawing = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
            tch::manual_seed(seed);
            Tensor::randn([n as i64, d as i64], (Kind::Double, Device::Cpu))
        };
        // Correlated, with a scale and a mean that differ from the reference's N(0, I).
        let mix = Tensor::eye(d as i64, (Kind::Double, Device::Cpu)) * 1.2
            + Tensor::ones([d as i64, d as i64], (Kind::Double, Device::Cpu)) * 0.05;
        let x = x.matmul(&mix) + shift;
        Array2::from_shape_vec(
            (n, d),
            Vec::<f32>::try_from(x.to_kind(Kind::Float).view([-1])).unwrap(),
        )
        .unwrap()
    }

    fn standard_normal(d: usize) -> Statistics {
        Statistics {
            mu: Array1::zeros(d),
            sigma: Array2::eye(d),
            low_rank: None,
        }
    }

    #[test]
    fn the_resample_that_draws_every_block_once_is_the_full_set() {
        let x = gaussian(300, 12, 0.2, 1);
        let reference = Statistics::from_features(gaussian(400, 12, 0.0, 2).view()).unwrap();
        let mut r = crate::resampling::Resampling {
            resamples: 9,
            blocks: 16,
            ..Default::default()
        }
        .draw(300)
        .unwrap();
        r.counts.row_mut(4).fill(1.0);
        let full =
            frechet_distance(&Statistics::from_features(x.view()).unwrap(), &reference).unwrap();
        let resampled = frechet_resamples(x.view(), &reference, &r).unwrap();
        assert_eq!(resampled.len(), 9);
        assert!(
            (resampled[4] - full).abs() < 1e-5 * full,
            "{} vs {full}",
            resampled[4]
        );
        assert!(resampled.iter().any(|v| (v - full).abs() > 1e-3 * full));
    }

    #[test]
    fn the_sample_route_and_the_block_route_agree() {
        // 40 samples of 48 dimensions: frechet_resamples takes the N x N route; the blocks'
        // D x D route must give the same values for the same resamples.
        let x = gaussian(40, 48, 0.3, 3);
        let reference = Statistics::from_features(gaussian(200, 48, 0.0, 4).view()).unwrap();
        let r = crate::resampling::Resampling {
            resamples: 5,
            blocks: 8,
            ..Default::default()
        }
        .draw(40)
        .unwrap();
        let small = frechet_resamples(x.view(), &reference, &r).unwrap();
        let x_t = Tensor::from_slice(x.as_slice().unwrap()).view([40, 48]);
        let mu = x_t
            .to_kind(Kind::Double)
            .mean_dim([0i64].as_slice(), false, Kind::Double);
        let s_ref = f64_tensor(&reference.sigma);
        let mu_offset = &mu - Tensor::from_slice(reference.mu.as_slice().unwrap());
        let trace_ref = s_ref.trace().double_value(&[]);
        let fitted = Fitted {
            x: &x_t,
            mu: &mu,
            s_ref: &s_ref,
            mu_offset: &mu_offset,
            trace_ref,
        };
        let blocks = blockwise(&fitted, &r);
        for (a, b) in small.iter().zip(&blocks) {
            assert!((a - b).abs() < 1e-5 * a.abs(), "{small:?} vs {blocks:?}");
        }
        // And the resample drawing every block once is the full-set distance.
        let mut all = r.clone();
        all.counts.fill(1.0);
        let full =
            frechet_distance(&Statistics::from_features(x.view()).unwrap(), &reference).unwrap();
        // 40 samples in 48 dimensions leave 9 zero eigenvalues, each square-rooted from
        // round-off (see the singular-covariance test): sqrt(eps) per direction is the floor.
        let floor = 9.0 * f64::EPSILON.sqrt();
        for v in frechet_resamples(x.view(), &reference, &all).unwrap() {
            assert!((v - full).abs() < floor * full, "{v} vs {full}");
        }
    }

    #[test]
    fn blocks_beyond_the_memory_bound_are_refused() {
        // 1,026 blocks of 1024-d scatter matrices would take 8.02 GiB.
        let (n, d) = (1100, 1024);
        let x = Array2::from_shape_fn((n, d), |(i, j)| ((i * 31 + j * 7) % 13) as f32);
        let reference = Statistics {
            mu: Array1::zeros(d),
            sigma: Array2::eye(d),
            low_rank: None,
        };
        let r = crate::resampling::Resampling {
            resamples: 2,
            blocks: 1026,
            ..Default::default()
        }
        .draw(n)
        .unwrap();
        let err = frechet_resamples(x.view(), &reference, &r)
            .unwrap_err()
            .to_string();
        assert!(err.contains("use fewer blocks"), "{err}");
    }

    #[test]
    fn the_interval_holds_the_full_set_fid_and_shrinks_as_one_over_root_n() {
        let d = 16;
        let reference = standard_normal(d);
        let settings = crate::resampling::Resampling::default();
        let mut widths = Vec::new();
        for (n, seed) in [(500, 11), (2000, 12), (8000, 13)] {
            let x = gaussian(n, d, 0.15, seed);
            let full = frechet_distance(&Statistics::from_features(x.view()).unwrap(), &reference)
                .unwrap();
            let r = settings.draw(n).unwrap();
            let interval = settings
                .interval(full, &frechet_resamples(x.view(), &reference, &r).unwrap())
                .unwrap();
            assert!(interval.contains(full), "n {n}: {interval:?} vs {full}");
            widths.push(interval.high - interval.low);
        }
        // Four times the samples, half the width (within the resampling's own noise).
        for pair in widths.windows(2) {
            let ratio = pair[0] / pair[1];
            assert!((1.5..2.7).contains(&ratio), "widths {widths:?}");
        }
    }

    #[test]
    fn the_interval_is_as_wide_as_the_spread_of_independent_sample_sets() {
        let (d, n) = (16, 1000);
        let reference = standard_normal(d);
        let fid = |x: &Array2<f32>| {
            frechet_distance(&Statistics::from_features(x.view()).unwrap(), &reference).unwrap()
        };
        let independent: Vec<f64> = (0..60)
            .map(|s| fid(&gaussian(n, d, 0.15, 100 + s)))
            .collect();
        let mean = independent.iter().sum::<f64>() / 60.0;
        let spread = (independent.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 59.0).sqrt();
        let x = gaussian(n, d, 0.15, 7);
        let settings = crate::resampling::Resampling {
            resamples: 400,
            ..Default::default()
        };
        let resampled =
            frechet_resamples(x.view(), &reference, &settings.draw(n).unwrap()).unwrap();
        let interval = settings.interval(fid(&x), &resampled).unwrap();
        // A 95% interval of a near-normal statistic is 3.92 standard deviations wide.
        let ratio = (interval.high - interval.low) / 3.92 / spread;
        assert!(
            (0.7..1.4).contains(&ratio),
            "half-sample / independent spread {ratio}"
        );
    }
}
