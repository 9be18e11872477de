//! Tiny random-weight models with the real architectures, for the demo and for tests of the
//! commands that load weights from disk (real weights cannot be downloaded on these machines).
//! Their samples are noise by construction; what they exercise is every code path.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor, nn::VarStore};

use crate::ModelError;
use crate::gpt::{Conditioning, Gpt, GptConfig};
use crate::vq::{VqConfig, VqModel};
use crate::weights;

/// Where [`write`] put the weights and the JSON configs (`llamagen sample --gpt-config ...`).
#[derive(Debug, Clone)]
pub struct TinyModels {
    pub gpt_ckpt: PathBuf,
    pub gpt_config: PathBuf,
    /// The same GPT text-conditioned: a 120-token caption prefix as wide as the tiny FLAN-T5
    /// that `scripts/export_t5.py --tiny-random` makes (32), for text-to-image tests and the
    /// demo (no weights: training starts from this config).
    pub text_gpt_config: PathBuf,
    pub vq_ckpt: PathBuf,
    pub vq_config: PathBuf,
    /// Image side the pair generates.
    pub image_size: i64,
    pub num_classes: i64,
}

/// A 32 px class-conditional pair: VQ with downsample 4 and 64 codes, GPT of width 64 with two
/// layers over 8 x 8 tokens and 10 classes.
pub fn configs() -> (GptConfig, VqConfig) {
    let vq = VqConfig {
        codebook_size: 64,
        encoder_ch_mult: vec![1, 1, 2],
        decoder_ch_mult: vec![1, 1, 2],
        z_channels: 32,
        ch: 32,
        num_res_blocks: 1,
        ..VqConfig::vq16()
    };
    let mut gpt = GptConfig::new(2, 4, 64, Conditioning::Class);
    gpt.vocab_size = vq.codebook_size;
    gpt.block_size = 64;
    gpt.num_classes = 10;
    gpt.multiple_of = 32;
    (gpt, vq)
}

/// A tokenizer small enough to train in seconds (tokenizer-training tests): 32 wide,
/// multipliers 1, 2 (downsample 2), 64 codes.
pub fn trainable_vq_config() -> VqConfig {
    VqConfig {
        codebook_size: 64,
        encoder_ch_mult: vec![1, 2],
        decoder_ch_mult: vec![1, 2],
        z_channels: 32,
        ch: 32,
        num_res_blocks: 1,
        ..VqConfig::vq16()
    }
}

/// Writes the pair into `dir` with weights drawn from `seed`.
pub fn write(dir: &Path, seed: i64) -> Result<TinyModels, ModelError> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_owned(),
        error: source,
    })?;
    let (gpt_config, vq_config) = configs();
    tch::manual_seed(seed);
    let gpt_vs = VarStore::new(Device::Cpu);
    Gpt::new(&gpt_vs.root(), gpt_config.clone())?;
    // LlamaGen zero-initialises the output layer, which would make every token equally likely.
    tch::no_grad(|| {
        let mut output = gpt_vs.variables()["output.weight"].shallow_clone();
        let noise = Tensor::randn(output.size(), (Kind::Float, Device::Cpu)) * 0.5;
        output.copy_(&noise);
    });
    let vq_vs = VarStore::new(Device::Cpu);
    VqModel::new(&vq_vs.root(), vq_config.clone())?;

    let paths = TinyModels {
        gpt_ckpt: dir.join("tiny_gpt.safetensors"),
        gpt_config: dir.join("tiny_gpt.json"),
        text_gpt_config: dir.join("tiny_gpt_t2i.json"),
        vq_ckpt: dir.join("tiny_vq.safetensors"),
        vq_config: dir.join("tiny_vq.json"),
        image_size: 32,
        num_classes: gpt_config.num_classes,
    };
    weights::save(&gpt_vs, &paths.gpt_ckpt)?;
    weights::save(&vq_vs, &paths.vq_ckpt)?;
    let json = |value: serde_json::Result<String>, path: &Path| -> Result<(), ModelError> {
        let text = value.map_err(|e| ModelError::Config(e.to_string()))?;
        std::fs::write(path, text + "\n").map_err(|source| ModelError::Io {
            path: path.to_owned(),
            error: source,
        })
    };
    json(serde_json::to_string_pretty(&gpt_config), &paths.gpt_config)?;
    let text = GptConfig {
        conditioning: Conditioning::Text,
        cls_token_num: 120,
        caption_dim: 32,
        ..gpt_config.clone()
    };
    json(serde_json::to_string_pretty(&text), &paths.text_gpt_config)?;
    json(serde_json::to_string_pretty(&vq_config), &paths.vq_config)?;
    Ok(paths)
}
