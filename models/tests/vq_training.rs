//! A tiny VQ tokenizer trained on real photos (straight-through estimator, codebook and
//! commitment losses) learns to reconstruct them: decode(encode(x)) ends close to x.

mod common;

use common::{photos, psnr};
use llamagen_models::tiny::trainable_vq_config as tiny_vq_config;
use llamagen_models::vq::VqModel;
use tch::{Device, Kind, nn, nn::OptimizerConfig};

#[test]
fn trained_tiny_tokenizer_reconstructs_photos() {
    tch::manual_seed(0);
    let config = tiny_vq_config();
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
