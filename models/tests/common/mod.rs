//! Loading the fixtures that `scripts/make_model_fixtures.py` made by running LlamaGen's own
//! PyTorch code (see its docstring and `fixtures/manifest.json`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use llamagen_models::gpt::{Conditioning, Gpt, GptConfig};
use llamagen_models::vq::{VqConfig, VqModel};
use llamagen_models::weights;
use serde_json::Value;
use tch::{Device, Kind, Tensor, nn::VarStore};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn manifest() -> Value {
    let text = std::fs::read_to_string(fixture("manifest.json")).expect("fixture manifest");
    serde_json::from_str(&text).expect("manifest is JSON")
}

pub fn expected(name: &str) -> BTreeMap<String, Tensor> {
    weights::read(&fixture(&format!("{name}_expected.safetensors"))).expect("expected outputs")
}

fn int(v: &Value, key: &str) -> i64 {
    v[key]
        .as_i64()
        .unwrap_or_else(|| panic!("manifest lacks {key}"))
}

/// The GPT config of a fixture, dropouts off (the fixtures ran LlamaGen with them off).
pub fn gpt_config(name: &str) -> GptConfig {
    let m = &manifest()[name];
    let conditioning = match m["model_type"].as_str() {
        Some("c2i") => Conditioning::Class,
        Some("t2i") => Conditioning::Text,
        other => panic!("unknown model type {other:?}"),
    };
    let mut c = GptConfig::new(
        int(m, "n_layer"),
        int(m, "n_head"),
        int(m, "dim"),
        conditioning,
    );
    c.n_kv_head = m["n_kv_head"].as_i64();
    c.multiple_of = int(m, "multiple_of");
    c.vocab_size = int(m, "vocab_size");
    c.block_size = int(m, "block_size");
    c.num_classes = int(m, "num_classes");
    c.caption_dim = int(m, "caption_dim");
    c.cls_token_num = int(m, "cls_token_num");
    c.token_dropout_p = 0.0;
    c.resid_dropout_p = 0.0;
    c.ffn_dropout_p = 0.0;
    c
}

/// A fixture GPT with its weights loaded (the VarStore must outlive the model's use).
pub fn gpt(name: &str) -> (VarStore, Gpt) {
    gpt_on(name, Device::Cpu)
}

/// [`gpt`] on `device`.
pub fn gpt_on(name: &str, device: Device) -> (VarStore, Gpt) {
    let vs = VarStore::new(device);
    let model = Gpt::new(&vs.root(), gpt_config(name)).expect("fixture config is valid");
    weights::load_strict(&vs, &fixture(&format!("{name}.safetensors")))
        .expect("fixture weights load");
    (vs, model)
}

pub fn vq_config() -> VqConfig {
    vq_config_from(&manifest()["vq"])
}

/// A VQ config from a manifest entry written by the fixture scripts.
pub fn vq_config_from(m: &Value) -> VqConfig {
    let mult: Vec<i64> = m["ch_mult"]
        .as_array()
        .expect("ch_mult")
        .iter()
        .map(|v| v.as_i64().expect("integer multiplier"))
        .collect();
    VqConfig {
        codebook_size: int(m, "codebook_size"),
        codebook_embed_dim: int(m, "codebook_embed_dim"),
        encoder_ch_mult: mult.clone(),
        decoder_ch_mult: mult,
        z_channels: int(m, "z_channels"),
        ch: int(m, "ch"),
        num_res_blocks: int(m, "num_res_blocks"),
        entropy_loss_ratio: m["entropy_loss_ratio"].as_f64().expect("ratio"),
        ..VqConfig::vq16()
    }
}

pub fn vq() -> (VarStore, VqModel) {
    let vs = VarStore::new(Device::Cpu);
    let model = VqModel::new(&vs.root(), vq_config()).expect("fixture config is valid");
    weights::load_strict(&vs, &fixture("vq.safetensors")).expect("fixture weights load");
    (vs, model)
}

/// max |ours - theirs| / max |theirs|, after checking the shapes agree.
pub fn relative_error(ours: &Tensor, theirs: &Tensor) -> f64 {
    assert_eq!(ours.size(), theirs.size(), "shapes differ");
    let ours = ours.to_kind(Kind::Double);
    let theirs = theirs.to_kind(Kind::Double);
    let scale = theirs.abs().max().double_value(&[]).max(1e-30);
    (ours - theirs).abs().max().double_value(&[]) / scale
}

#[track_caller]
pub fn assert_close(what: &str, ours: &Tensor, theirs: &Tensor, tolerance: f64) {
    let err = relative_error(ours, theirs);
    // Shown with `cargo test -- --nocapture`: the figures quoted in docs/models.md.
    eprintln!("{what}: relative error {err:.2e}");
    assert!(
        err <= tolerance,
        "{what}: relative error {err:.3e} > {tolerance:.0e}"
    );
}

/// The three 160 px photos the evaluate crate ships (skimage.data), downscaled to 32 px:
/// [3, 3, 32, 32] in [-1, 1].
pub fn photos() -> Tensor {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../evaluate/tests/fixtures");
    let mut pixels = Vec::new();
    for name in ["astronaut", "coffee", "chelsea"] {
        let img = image::open(dir.join(format!("{name}_original.png")))
            .unwrap()
            .resize_exact(32, 32, image::imageops::FilterType::Triangle)
            .into_rgb8();
        pixels.extend_from_slice(img.as_raw());
    }
    llamagen_models::images::from_uint8_nhwc(&Tensor::from_slice(&pixels).view([3, 32, 32, 3]))
}

/// PSNR in dB of images in [-1, 1] (peak-to-peak 2).
pub fn psnr(a: &Tensor, b: &Tensor) -> f64 {
    let mse = (a - b).square().mean(Kind::Float).double_value(&[]);
    10.0 * (4.0 / mse).log10()
}
