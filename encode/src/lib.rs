//! `llamagen encode`: VQ image codes for training LlamaGen generators.
//!
//! - [`source`]: the input, webdataset shards or an ImageFolder, cut into shards.
//! - [`crops`]: the views of each image LlamaGen's extraction scripts encode (ten-crop,
//!   center + flip, center).
//! - [`encoder`]: one shard through the VQ tokenizer, decoding overlapped with the model.
//! - [`codes`]: the per-shard output (uint16 codes, labels, keys, summary).
//! - [`export`]: LlamaGen's own layout (`<name>_codes/N.npy`, `<name>_labels/N.npy`), which
//!   its `train_c2i.py` and our `llamagen train` read.
//! - [`caption_clean`]: LlamaGen's caption cleaning before T5.
//! - [`t5`]: FLAN-T5's encoder through ONNX Runtime (tokenizer, batching by length).
//! - [`embeddings`]: the per-shard caption embeddings (f16, valid tokens only, padding
//!   restored on read as LlamaGen places it).
//! - [`t5_shard`]: one shard's captions to embeddings, resumable.
//! - [`dataset`]: training samples from codes (and embeddings) shards, block-shuffled by seed.

pub mod caption_clean;
pub mod codes;
pub mod config;
pub mod crops;
pub mod dataset;
pub mod embeddings;
pub mod encoder;
pub mod export;
pub mod source;
pub mod t5;
pub mod t5_shard;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        /// In the message rather than `source()`, so that a chain prints it once.
        error: std::io::Error,
    },
    #[error("input: {0}")]
    Input(String),
    #[error("output: {0}")]
    Output(String),
    #[error("image: {0}")]
    Image(String),
    #[error("model: {0}")]
    Model(String),
    #[error("{0}")]
    Invalid(String),
}

impl EncodeError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            error: source,
        }
    }
}

/// Everything that determines the codes, kept as `encode.json` in the output folder: a folder
/// refuses to be continued with other settings, so its shards never mix two tokenizers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncodeSettings {
    pub vq_ckpt_sha256: String,
    pub vq: serde_json::Value,
    pub image_size: usize,
    pub augment: crops::Augment,
}

impl EncodeSettings {
    pub const FILE: &'static str = "encode.json";

    /// Writes the settings into a new folder, or checks them against the folder's own.
    pub fn check_or_write(&self, dir: &Path) -> Result<(), EncodeError> {
        llamagen_shards::settings::pin(dir, Self::FILE, self)
            .map_err(|e| EncodeError::Invalid(e.to_string()))
    }
}
