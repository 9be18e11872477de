//! LlamaGen's models in tch (libtorch), with the official state-dict names and layouts so that
//! converted checkpoints of FoundationVision/LlamaGen load unchanged.
//!
//! - [`vq`]: the VQ tokenizer (VQGAN encoder, l2-normalised codebook quantizer, decoder).
//! - [`gpt`]: the Llama-style generator (RMSNorm, SwiGLU, 2D RoPE, class or caption prefix) with
//!   a KV cache for decoding.
//! - [`lpips`], [`patchgan`], [`vq_loss`]: the tokenizer's training objective (LPIPS, the
//!   PatchGAN discriminator, reconstruction + perceptual + adversarial + quantizer terms).
//! - [`generate`]: prefill plus one-token decoding, classifier-free guidance, top-k / top-p /
//!   temperature sampling; on CUDA the decode step is captured once as a graph and replayed.
//! - [`cuda_graph`]: CUDA graph capture and replay (libtorch's `CUDAGraph`).
//! - [`train`]: AdamW training steps and exactly resumable checkpoints.
//! - [`memory`]: the peak memory of an interval (CUDA's caching allocator, or the CPU's
//!   resident set), for the training metrics.
//! - [`optim`]: PyTorch's AdamW, written out or through libtorch's fused kernel, and gradient
//!   clipping.
//! - [`vq_train`]: tokenizer training (tokenizer and discriminator steps, resumable
//!   checkpoints).
//! - [`autocast`]: bf16 autocast on CUDA for the trainer.
//! - [`weights`]: strict safetensors loading that names every missing, extra or misshaped tensor.
//! - [`tiny`]: tiny random-weight models for the demo and command tests.
//! - [`images`]: decoder output in [-1, 1] to uint8 pixels exactly as LlamaGen's samplers do.
//!
//! Shapes in doc comments use B = batch, L = sequence length, V = vocabulary, D = model width,
//! H = heads, h x w = token grid.

pub mod autocast;
mod checkpoint;
pub mod cuda_graph;
pub mod generate;
pub mod gpt;
pub mod images;
pub mod jacobi;
pub mod lpips;
pub mod memory;
pub mod optim;
pub mod patchgan;
pub mod tiny;
pub mod train;
pub mod vq;
pub mod vq_loss;
pub mod vq_train;
pub mod weights;

use std::path::PathBuf;

/// The kind reductions accumulate in: float32 (also under bf16 autocast), or float64 for
/// float64 inputs (which the parity tests use to compare the mathematics, not the rounding).
pub(crate) fn accumulation(t: &tch::Tensor) -> tch::Kind {
    if t.kind() == tch::Kind::Double {
        tch::Kind::Double
    } else {
        tch::Kind::Float
    }
}

/// Everything that can go wrong building, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        /// In the message rather than `source()`, so that a chain prints it once.
        error: std::io::Error,
    },
    #[error("weights {path}: {problem}")]
    Weights { path: PathBuf, problem: String },
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("invalid input: {0}")]
    Input(String),
    /// A data-parallel collective failed (a rank died or timed out).
    #[error("data parallelism: {0}")]
    Replicas(String),
    /// CUDA graphs are unavailable here, or capturing or replaying one failed.
    #[error("CUDA graph: {0}")]
    Cuda(String),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}
