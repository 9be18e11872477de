//! The `[encode]` section of a pipeline config: the tokenizer, the views and the text encoder.
//! The pipeline config (`llamagen-pipeline`) assembles the sections; the stage's command maps
//! its flags onto the same type.

use serde::{Deserialize, Serialize};

/// VQ codes and FLAN-T5 embeddings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncodeConfig {
    pub vq_checkpoint: String,
    /// A JSON VqConfig for a tokenizer of another shape; empty: LlamaGen's VQ-<downsample>.
    pub vq_config: String,
    pub codebook_size: u32,
    pub codebook_embed_dim: u32,
    pub downsample: u32,
    pub image_size: u32,
    /// LlamaGen's ten-crop augmentation (class-conditional data); else a center crop.
    pub ten_crop: bool,
    /// The export folder of scripts/export_t5.py (t5_encoder.onnx, tokenizer.json).
    pub t5: String,
    pub t5_max_length: u32,
    pub batch_size: u32,
    /// Where the codes go (relative paths are under the data folder).
    pub codes_output: String,
    /// Where the caption embeddings go (text-to-image pipelines).
    pub t5_output: String,
}

impl Default for EncodeConfig {
    fn default() -> Self {
        Self {
            vq_checkpoint: "weights/vq_ds16_t2i.safetensors".into(),
            vq_config: String::new(),
            codebook_size: 16384,
            codebook_embed_dim: 8,
            downsample: 16,
            image_size: 256,
            ten_crop: false,
            t5: "weights/flan-t5-xl-onnx".into(),
            t5_max_length: 120,
            batch_size: 64,
            codes_output: "codes".into(),
            t5_output: "t5".into(),
        }
    }
}

impl EncodeConfig {
    /// What the section must satisfy, as a message naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.downsample == 0 || !self.image_size.is_multiple_of(self.downsample) {
            return Err("encode.image_size must be a multiple of encode.downsample".into());
        }
        if self.codebook_size == 0 || self.codebook_size > 65536 {
            return Err("encode.codebook_size must fit the u16 codes (1..=65536)".into());
        }
        if self.t5_max_length == 0 {
            return Err("encode.t5_max_length must be positive".into());
        }
        Ok(())
    }
}
