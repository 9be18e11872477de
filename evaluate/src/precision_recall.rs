//! Improved precision and recall (Kynkaanniemi et al. 2019) as the ADM evaluator computes them.
//!
//! Each feature set estimates a manifold: a ball around every feature whose squared radius is
//! the squared distance to its k-th nearest neighbour in the same set (k = 3; the feature
//! itself is the 0th). Precision is the share of generated features inside some ball of the
//! real set; recall is the share of real features inside some ball of the generated set.
//! Distances are squared Euclidean, `|u|^2 - 2 u.v + |v|^2` clamped at 0, in f32 (the evaluator
//! first tries f16 and falls back to f32; only features exactly on a ball's surface can differ).

use ndarray::ArrayView2;
use tch::{Kind, Tensor};

use crate::EvalError;

/// ADM's neighbourhood size.
pub const ADM_K: usize = 3;
/// Rows per distance block: bounds memory to `BLOCK x N x 4` bytes.
const BLOCK: i64 = 2048;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrecisionRecall {
    pub precision: f64,
    pub recall: f64,
}

/// `real`, `generated`: [N, D] features (Inception pool features), each set with more than
/// `k` rows.
pub fn precision_recall(
    real: ArrayView2<'_, f32>,
    generated: ArrayView2<'_, f32>,
    k: usize,
) -> Result<PrecisionRecall, EvalError> {
    let real = to_tensor(real, "real features", k)?;
    let generated = to_tensor(generated, "generated features", k)?;
    if real.size()[1] != generated.size()[1] {
        return Err(EvalError::Shape {
            what: "features",
            expected: format!("equal dimensions ({})", real.size()[1]),
            got: format!("{}", generated.size()[1]),
        });
    }
    let real_radii = radii(&real, k);
    let generated_radii = radii(&generated, k);
    Ok(PrecisionRecall {
        precision: fraction_inside(&generated, &real, &real_radii),
        recall: fraction_inside(&real, &generated, &generated_radii),
    })
}

fn to_tensor(x: ArrayView2<'_, f32>, what: &'static str, k: usize) -> Result<Tensor, EvalError> {
    let (n, d) = x.dim();
    if n <= k {
        return Err(EvalError::Invalid(format!(
            "{what}: need more than k = {k} rows, got {n}"
        )));
    }
    let x = x.as_standard_layout();
    let flat = x.as_slice().unwrap_or(&[]);
    if flat.iter().any(|v| !v.is_finite()) {
        return Err(EvalError::NonFinite(what));
    }
    Ok(Tensor::from_slice(flat).view([n as i64, d as i64]))
}

/// Squared distances [rows of u, rows of v], as the evaluator's `_batch_pairwise_distances`.
fn squared_distances(u: &Tensor, v: &Tensor) -> Tensor {
    let norm_u = u
        .square()
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
        .unsqueeze(1);
    let norm_v = v
        .square()
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
        .unsqueeze(0);
    (norm_u - u.matmul(&v.transpose(0, 1)) * 2.0 + norm_v).clamp_min(0.0)
}

/// [N]: squared distance from each feature to its k-th nearest neighbour in `x`.
fn radii(x: &Tensor, k: usize) -> Tensor {
    let n = x.size()[0];
    let parts: Vec<Tensor> = (0..n)
        .step_by(BLOCK as usize)
        .map(|start| {
            let rows = x.narrow(0, start, BLOCK.min(n - start));
            // kthvalue counts from 1; the row itself (distance 0) is the first.
            squared_distances(&rows, x)
                .kthvalue(k as i64 + 1, 1, false)
                .0
        })
        .collect();
    Tensor::cat(&parts, 0)
}

/// Share of `queries` within the ball of at least one `reference` feature.
fn fraction_inside(queries: &Tensor, reference: &Tensor, reference_radii: &Tensor) -> f64 {
    let n = queries.size()[0];
    let radii = reference_radii.unsqueeze(0);
    let mut inside = 0i64;
    for start in (0..n).step_by(BLOCK as usize) {
        let rows = queries.narrow(0, start, BLOCK.min(n - start));
        let hit = squared_distances(&rows, reference)
            .le_tensor(&radii)
            .any_dim(1, false);
        inside += hit.sum(Kind::Int64).int64_value(&[]);
    }
    inside as f64 / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn identical_sets_have_full_precision_and_recall() {
        let x = Array2::from_shape_fn((30, 5), |(i, j)| ((i * 13 + j * 7) % 17) as f32);
        let pr = precision_recall(x.view(), x.view(), ADM_K).unwrap();
        assert_eq!((pr.precision, pr.recall), (1.0, 1.0));
    }

    #[test]
    fn a_far_away_set_has_none() {
        let real = Array2::from_shape_fn((20, 3), |(i, j)| (i + j) as f32 * 0.1);
        let far = real.mapv(|v| v + 1000.0);
        let pr = precision_recall(real.view(), far.view(), ADM_K).unwrap();
        assert_eq!((pr.precision, pr.recall), (0.0, 0.0));
    }

    #[test]
    fn collapsed_generations_keep_precision_and_lose_recall() {
        // Real points on a line; generated ones all sit near the first few real points.
        let real = Array2::from_shape_fn((40, 2), |(i, j)| if j == 0 { i as f32 } else { 0.0 });
        let generated =
            Array2::from_shape_fn(
                (40, 2),
                |(i, j)| if j == 0 { (i % 4) as f32 * 0.5 } else { 0.0 },
            );
        let pr = precision_recall(real.view(), generated.view(), ADM_K).unwrap();
        assert_eq!(pr.precision, 1.0);
        assert!(pr.recall < 0.2, "{pr:?}");
    }

    #[test]
    fn too_few_rows_are_refused() {
        let x = Array2::<f32>::zeros((3, 2));
        assert!(precision_recall(x.view(), x.view(), 3).is_err());
    }
}
