//! The `[filter]` section of a pipeline config: thresholds and the scoring models.
//! The pipeline config (`llamagen-pipeline`) assembles the sections; the stage's command maps
//! its flags onto the same type.

use serde::{Deserialize, Serialize};

/// Post-download filters with model scores computed on the images themselves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    pub min_width: u32,
    pub min_height: u32,
    pub min_clip_similarity: f64,
    pub min_aesthetic: f64,
    pub max_watermark: f64,
    /// The folder `scripts/export_filter_models.py` writes (four ONNX models, the CLIP
    /// tokenizer, filter_models.json).
    pub models: String,
    pub batch_size: u32,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            min_width: 256,
            min_height: 256,
            min_clip_similarity: 0.28,
            min_aesthetic: 5.0,
            max_watermark: 0.5,
            models: "weights/filter".into(),
            batch_size: 64,
        }
    }
}

impl FilterConfig {
    /// What the section must satisfy, as a message naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.max_watermark) {
            return Err("filter.max_watermark must be a probability in [0, 1]".into());
        }
        if !(-1.0..=1.0).contains(&self.min_clip_similarity) {
            return Err("filter.min_clip_similarity must be a cosine in [-1, 1]".into());
        }
        if self.batch_size == 0 {
            return Err("filter.batch_size must be positive".into());
        }
        Ok(())
    }
}
