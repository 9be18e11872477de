//! Tokenizer training through `VqTrainer`: a tiny tokenizer with a random LPIPS learns to
//! reconstruct real photos, the adversarial terms switch on at `disc_start`, a checkpoint
//! resumes to the bit-identical final checkpoint, and `init_from` starts a fine-tune.

mod common;

use std::path::{Path, PathBuf};

use common::{photos, psnr};
use llamagen_models::lpips::Lpips;
use llamagen_models::patchgan::PatchGanConfig;
use llamagen_models::tiny::trainable_vq_config as tiny_vq_config;
use llamagen_models::vq_loss::VqLossConfig;
use llamagen_models::vq_train::{VqTrainConfig, VqTrainer};
use llamagen_models::weights;
use tch::{Device, Tensor, nn};

/// A narrow LPIPS with seeded random weights, saved as the trainer reads it.
fn random_lpips(dir: &Path) -> PathBuf {
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = Lpips::with_widths(&vs.root(), [4, 8, 16, 32, 32]);
    let path = dir.join("lpips.safetensors");
    weights::save(&vs, &path).unwrap();
    path
}

fn config(disc_start: i64) -> VqTrainConfig {
    VqTrainConfig {
        lr: 1e-3,
        ema_decay: 0.9,
        loss: VqLossConfig {
            disc_start,
            discriminator: PatchGanConfig {
                channels: 8,
                layers: 2,
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

fn sha(path: &Path) -> String {
    std::fs::read_to_string(path.with_extension("safetensors.sha256")).unwrap()
}

fn disc_weights(t: &VqTrainer) -> Tensor {
    t.disc_vs.variables()["main.0.weight"].copy()
}

#[test]
fn trains_switches_on_the_discriminator_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let lpips = random_lpips(dir.path());
    let x = photos();
    let mut t = VqTrainer::new(tiny_vq_config(), config(4), &lpips, Device::Cpu).unwrap();
    let before = tch::no_grad(|| psnr(&t.vq.reconstruct(&x, false).unwrap().0, &x));
    let initial_disc = disc_weights(&t);
    for _ in 0..3 {
        let losses = t.train_step(&x).unwrap();
        assert_eq!(losses.adversarial, 0.0);
        assert_eq!(losses.discriminator, 0.0);
    }
    // Zero discriminator gradients before disc_start: Adam leaves its weights where they were.
    assert!(disc_weights(&t).equal(&initial_disc));
    let straight = dir.path().join("straight.safetensors");
    let halfway = dir.path().join("halfway.safetensors");
    t.save(&halfway).unwrap();
    let mut last = None;
    for _ in 3..12 {
        last = Some(t.train_step(&x).unwrap());
    }
    let last = last.unwrap();
    assert!(
        last.adversarial != 0.0 && last.discriminator > 0.0,
        "{last:?}"
    );
    assert!(!disc_weights(&t).equal(&initial_disc));
    t.save(&straight).unwrap();
    let after = tch::no_grad(|| psnr(&t.vq.reconstruct(&x, false).unwrap().0, &x));
    eprintln!("PSNR {before:.2} -> {after:.2} dB; last step {last:?}");
    assert!(after > before + 1.0, "PSNR {before:.2} -> {after:.2} dB");
    assert_eq!(t.images_seen, 36);
    assert!(t.ema().is_some());

    let mut resumed = VqTrainer::resume(&halfway, &lpips, Device::Cpu).unwrap();
    assert_eq!(resumed.step, 3);
    for _ in 3..12 {
        resumed.train_step(&x).unwrap();
    }
    let again = dir.path().join("resumed.safetensors");
    resumed.save(&again).unwrap();
    assert_eq!(
        sha(&again),
        sha(&straight),
        "a resumed run must end where the straight one did"
    );

    // The checkpoint is VQ weights for every command that loads a tokenizer.
    let vs = nn::VarStore::new(Device::Cpu);
    let vq = llamagen_models::vq::VqModel::new(&vs.root(), tiny_vq_config()).unwrap();
    weights::load_strict(&vs, &straight).unwrap();
    let (recon, _) = tch::no_grad(|| vq.reconstruct(&x, false).unwrap());
    assert!((psnr(&recon, &x) - after).abs() < 1e-6);
}

#[test]
fn resume_refuses_other_lpips_weights_and_init_from_starts_a_fine_tune() {
    let dir = tempfile::tempdir().unwrap();
    let lpips = random_lpips(dir.path());
    let x = photos();
    let mut t = VqTrainer::new(tiny_vq_config(), config(1), &lpips, Device::Cpu).unwrap();
    t.train_step(&x).unwrap();
    let path = dir.path().join("0000001.safetensors");
    t.save(&path).unwrap();

    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    tch::manual_seed(99);
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = Lpips::with_widths(&vs.root(), [4, 8, 16, 32, 32]);
    weights::save(&vs, &other.join("lpips.safetensors")).unwrap();
    let err = VqTrainer::resume(&path, &other.join("lpips.safetensors"), Device::Cpu)
        .err()
        .unwrap();
    assert!(err.to_string().contains("not the ones"), "{err}");

    let mut fine = VqTrainer::new(tiny_vq_config(), config(1), &lpips, Device::Cpu).unwrap();
    fine.init_from(&path).unwrap();
    assert_eq!(fine.step, 0);
    let a = t.vs.variables()["decoder.conv_out.weight"].copy();
    let b = fine.vs.variables()["decoder.conv_out.weight"].copy();
    assert!(a.equal(&b));
    assert!(fine.ema().unwrap()["decoder.conv_out.weight"].equal(&a));
}
