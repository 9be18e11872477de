//! A tiny VQ tokenizer trained on real photos (straight-through estimator, codebook and
//! commitment losses) learns to reconstruct them: decode(encode(x)) ends close to x.

use std::path::PathBuf;

use llamagen_models::images::from_uint8_nhwc;
use llamagen_models::vq::{VqConfig, VqModel};
use tch::{Device, Kind, Tensor, nn, nn::OptimizerConfig};

/// The three 160 px photos the evaluate crate ships (skimage.data), downscaled to 32 px.
fn photos() -> Tensor {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../evaluate/tests/fixtures");
    let mut pixels = Vec::new();
    for name in ["astronaut", "coffee", "chelsea"] {
        let img = image::open(dir.join(format!("{name}_original.png")))
            .unwrap()
            .resize_exact(32, 32, image::imageops::FilterType::Triangle)
            .into_rgb8();
        pixels.extend_from_slice(img.as_raw());
    }
    from_uint8_nhwc(&Tensor::from_slice(&pixels).view([3, 32, 32, 3]))
}

fn psnr(a: &Tensor, b: &Tensor) -> f64 {
    // Images in [-1, 1]: peak-to-peak 2.
    let mse = (a - b).square().mean(Kind::Float).double_value(&[]);
    10.0 * (4.0 / mse).log10()
}

#[test]
fn trained_tiny_tokenizer_reconstructs_photos() {
    tch::manual_seed(0);
    let config = VqConfig {
        codebook_size: 64,
        encoder_ch_mult: vec![1, 2],
        decoder_ch_mult: vec![1, 2],
        z_channels: 32,
        ch: 32,
        num_res_blocks: 1,
        ..VqConfig::vq16()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let model = VqModel::new(&vs.root(), config).unwrap();
    let x = photos();
    let initial = tch::no_grad(|| psnr(&model.reconstruct(&x, false).unwrap().0, &x));

    let mut opt = nn::Adam::default().build(&vs, 2e-3).unwrap();
    let mut usage = 0.0;
    for _ in 0..150 {
        let (recon, q) = model.reconstruct(&x, true).unwrap();
        let loss = (&recon - &x).square().mean(Kind::Float)
            + q.codebook_loss.unwrap()
            + q.commit_loss.unwrap();
        opt.backward_step(&loss);
        usage = q.codebook_usage.unwrap();
    }

    let (recon, q) = tch::no_grad(|| model.reconstruct(&x, false).unwrap());
    let trained = psnr(&recon, &x);
    let decoded = tch::no_grad(|| model.decode_codes(&q.codes).unwrap());
    assert!(
        (&decoded - &recon).abs().max().double_value(&[]) < 1e-5,
        "decode_codes(codes) differs from the reconstruction"
    );
    let distinct = q.codes.view([-1]).internal_unique(false, false).0.size()[0];
    eprintln!("PSNR {initial:.1} -> {trained:.1} dB, {distinct} codes, usage {usage}");
    assert!(
        trained > 22.0 && trained > initial + 10.0,
        "PSNR {initial:.1} dB before training, {trained:.1} dB after"
    );
    assert!(distinct >= 8, "only {distinct} codes in use");
    assert!(usage > 0.0);
}
