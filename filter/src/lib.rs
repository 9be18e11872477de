//! The post-download filter: what the paper's stage I data went through after the metadata
//! filter ("valid image URL, aesthetic score, watermark score, CLIP image-text similarity score
//! and image size"), computed on the downloaded images themselves.
//!
//! - [`preprocess`]: image decoding under a pixel limit and the watermark detector's
//!   preprocessing, pixel-exact with LAION's transform (CLIP's is in `llamagen_clip`);
//! - [`scorers`]: the four ONNX models (CLIP's image and text towers through `llamagen_clip`,
//!   the aesthetic MLP, the watermark detector) through ONNX Runtime, batched;
//! - [`rules`]: the keep/drop decision and its reason per sample, and the funnel;
//! - [`output`]: `NNNNN_filter.parquet` next to the shard;
//! - [`shard`]: one shard from tar to decisions.
//!
//! `scripts/export_filter_models.py` turns the public weights into the ONNX files (and makes
//! the tiny random-weight ones the tests use).

pub mod config;
pub mod output;
pub mod preprocess;
pub mod rules;
pub mod scorers;
pub mod shard;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error(transparent)]
    Clip(#[from] llamagen_clip::ClipError),
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        /// In the message rather than `source()`, so that a chain prints it once.
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Output(String),
    #[error("bad settings: {0}")]
    Invalid(String),
}

impl FilterError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        FilterError::Io {
            path: path.to_owned(),
            error: source,
        }
    }
}

/// What determines a folder's decisions, kept as `filter.json` in it: the models (by sha256)
/// and the thresholds. A folder refuses to be continued with other ones, so its shards never
/// mix two filters.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FilterSettings {
    pub thresholds: rules::Thresholds,
    /// sha256 of each model file, by file name.
    pub models: std::collections::BTreeMap<String, String>,
}

impl FilterSettings {
    pub const FILE: &'static str = "filter.json";

    pub fn check_or_write(&self, dir: &Path) -> Result<(), FilterError> {
        llamagen_shards::settings::pin(dir, Self::FILE, self)
            .map_err(|e| FilterError::Invalid(e.to_string()))
    }
}
