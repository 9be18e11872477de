//! Inception Score as the ADM evaluator computes it (the improved-GAN formula): split the
//! samples into groups of `split_size` (5000, i.e. 10 splits of 50,000 samples), and in each
//! `exp(mean_i KL(p(y|x_i) || p(y)))` with `p(y)` the group's mean prediction.
//!
//! The evaluator applies a softmax to the Inception logits in float32 and takes `log p`, which
//! gives NaN when a probability underflows to zero; we work from the logits with a log-softmax
//! in f64, where such terms are zero, as their limit is.

use ndarray::{ArrayView2, Axis};

use crate::EvalError;

/// ADM's split size.
pub const ADM_SPLIT_SIZE: usize = 5000;

#[derive(Debug, Clone, PartialEq)]
pub struct InceptionScore {
    /// The mean over splits: the number papers report.
    pub mean: f64,
    /// Population standard deviation over splits (torch-fidelity's `inception_score_std`).
    pub std: f64,
    pub splits: Vec<f64>,
}

/// `logits`: [N, C] classifier logits (1008 for the FID Inception network).
pub fn inception_score(
    logits: ArrayView2<'_, f32>,
    split_size: usize,
) -> Result<InceptionScore, EvalError> {
    let (n, c) = logits.dim();
    if n == 0 || c == 0 || split_size == 0 {
        return Err(EvalError::Invalid(format!(
            "inception score needs samples, classes and a split size (got {n} x {c}, split {split_size})"
        )));
    }
    if logits.iter().any(|v| !v.is_finite()) {
        return Err(EvalError::NonFinite("logits"));
    }
    let log_probs: Vec<Vec<f64>> = logits
        .axis_iter(Axis(0))
        .map(|row| {
            let max = row
                .iter()
                .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
            let lse = max
                + row
                    .iter()
                    .map(|&v| (f64::from(v) - max).exp())
                    .sum::<f64>()
                    .ln();
            row.iter().map(|&v| f64::from(v) - lse).collect()
        })
        .collect();
    let mut splits = Vec::new();
    for part in log_probs.chunks(split_size) {
        let mut mean_p = vec![0.0f64; c];
        for row in part {
            for (m, lp) in mean_p.iter_mut().zip(row) {
                *m += lp.exp();
            }
        }
        let log_mean: Vec<f64> = mean_p
            .iter()
            .map(|m| (m / part.len() as f64).ln())
            .collect();
        let kl_sum: f64 = part
            .iter()
            .map(|row| {
                row.iter()
                    .zip(&log_mean)
                    .map(|(lp, lm)| {
                        let p = lp.exp();
                        if p == 0.0 { 0.0 } else { p * (lp - lm) }
                    })
                    .sum::<f64>()
            })
            .sum();
        splits.push((kl_sum / part.len() as f64).exp());
    }
    let mean = splits.iter().sum::<f64>() / splits.len() as f64;
    let std = (splits.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / splits.len() as f64).sqrt();
    Ok(InceptionScore { mean, std, splits })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn confident_and_diverse_predictions_score_the_class_count() {
        // Each sample certain of its own class, classes spread evenly: IS = number of classes.
        let logits = Array2::from_shape_fn((40, 4), |(i, j)| if i % 4 == j { 50.0 } else { -50.0 });
        let is = inception_score(logits.view(), 20).unwrap();
        assert_eq!(is.splits.len(), 2);
        assert!((is.mean - 4.0).abs() < 1e-9, "{is:?}");
        assert!(is.std < 1e-9);
    }

    #[test]
    fn uniform_predictions_score_one() {
        let logits = Array2::<f32>::zeros((10, 7));
        assert!((inception_score(logits.view(), ADM_SPLIT_SIZE).unwrap().mean - 1.0).abs() < 1e-12);
    }

    #[test]
    fn refuses_nan() {
        let mut logits = Array2::<f32>::zeros((3, 3));
        logits[[0, 0]] = f32::NAN;
        assert!(inception_score(logits.view(), 2).is_err());
    }
}
