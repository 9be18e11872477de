//! Metrics for image generators and tokenizers, computed the way the reference implementations
//! compute them, so that our numbers can be put next to the paper's tables.
//!
//! | metric | module | reference |
//! | --- | --- | --- |
//! | FID, sFID, rFID | [`frechet`] | pytorch-fid / ADM evaluator (`scipy.linalg.sqrtm`) |
//! | KID | [`kernel_distance`] | torch-fidelity 0.4.0 / clean-fid 0.1.35, the same subsets |
//! | confidence intervals | [`resampling`] | seeded half-samples of blocks of samples |
//! | Inception Score | [`inception_score`] | ADM evaluator (improved-GAN formula, splits of 5000) |
//! | precision, recall | [`precision_recall`] | ADM evaluator (Kynkaanniemi et al., k = 3) |
//! | PSNR, SSIM | [`image_quality`] | scikit-image, with LlamaGen's tokenizer-eval convention |
//! | codebook usage | [`codebook`] | LlamaGen: distinct codes among the last 65536 |
//! | Inception features | [`inception`] | pytorch-fid's FID Inception, exported to ONNX |
//! | reference batches | [`npz`] | ADM's `.npz` (`arr_0` images, `mu`/`sigma` statistics) |
//! | reference preprocessing | [`center_crop`] | ADM / LlamaGen `center_crop_arr` on Pillow, pixel for pixel |
//! | text-to-image FID, CLIP-FID, CLIP score | [`text_to_image`] | LlamaGen's `evaluations/t2i` (clean-fid 0.1.35, CLIP) |
//!
//! Features come from the FID Inception network (2048-d pool features for FID and
//! precision/recall, 2023-d spatial `mixed_6` features for sFID, 1008 logits for IS).

/// ADM's center crop on Pillow's resampler (shared with the stages in `llamagen-imaging`).
pub use llamagen_imaging::pillow as center_crop;
pub mod codebook;
pub mod frechet;
pub mod image_quality;
pub mod inception;
pub mod inception_score;
pub mod kernel_distance;
pub mod npz;
pub mod numpy_random;
pub mod precision_recall;
pub mod resampling;
pub mod text_to_image;

/// What can go wrong while computing a metric.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{what}: expected {expected}, got {got}")]
    Shape {
        what: &'static str,
        expected: String,
        got: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("non-finite value in {0}")]
    NonFinite(&'static str),
    #[error("linear algebra: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{path}: {message}")]
    File {
        path: std::path::PathBuf,
        message: String,
    },
}

/// An f64 matrix as a tensor of the same shape.
pub(crate) fn f64_tensor(a: &ndarray::Array2<f64>) -> tch::Tensor {
    let (r, c) = a.dim();
    let a = a.as_standard_layout();
    tch::Tensor::from_slice(a.as_slice().unwrap_or(&[])).view([r as i64, c as i64])
}

/// Feature rows [N, D] as an f32 tensor, refusing non-finite values (`what` names them).
pub(crate) fn feature_tensor(
    features: ndarray::ArrayView2<'_, f32>,
    what: &'static str,
) -> Result<tch::Tensor, EvalError> {
    let (n, d) = features.dim();
    let features = features.as_standard_layout();
    let flat = features
        .as_slice()
        .ok_or_else(|| EvalError::Invalid("features are not contiguous".into()))?;
    if flat.iter().any(|v| !v.is_finite()) {
        return Err(EvalError::NonFinite(what));
    }
    Ok(tch::Tensor::from_slice(flat).view([n as i64, d as i64]))
}
