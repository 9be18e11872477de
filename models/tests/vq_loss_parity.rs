//! The tokenizer's training objective against LlamaGen's own `vq_loss.py`, `lpips.py` and
//! `discriminator_patchgan.py`, on the weights and photos `scripts/make_vq_loss_fixtures.py`
//! ran them with (see its docstring): every loss term and the discriminator's logits before
//! and at `disc_start`, the gradients of one generator and one discriminator step, the batch
//! norms' statistics after it, and the loss options. Both sides compute in float64, so that
//! the tolerances measure the mathematics rather than float32 rounding.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{assert_close, expected, fixture, manifest, vq_config_from};
use llamagen_models::lpips::Lpips;
use llamagen_models::patchgan::{PatchGan, PatchGanConfig};
use llamagen_models::vq::VqModel;
use llamagen_models::vq_loss::{DiscLoss, GenLoss, RecLoss, VqLoss, VqLossConfig};
use llamagen_models::weights;
use tch::{Device, Kind, Tensor, nn::VarStore};

/// Losses and logits: LlamaGen's figure within this relative error.
const LOSS_TOLERANCE: f64 = 1e-5;
/// Gradients of one step.
const GRADIENT_TOLERANCE: f64 = 1e-4;

/// The fixture's weights under `prefix`, written to their own file in `dir` so that each model
/// loads through the strict loader.
fn part(dir: &Path, prefix: &str) -> std::path::PathBuf {
    let all = weights::read(&fixture("vq_loss.safetensors")).unwrap();
    let tensors: Vec<(String, Tensor)> = all
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_owned(), v)))
        .collect();
    assert!(!tensors.is_empty(), "no {prefix}* tensors in the fixture");
    let path = dir.join(format!("{prefix}safetensors"));
    Tensor::write_safetensors(&tensors, &path).unwrap();
    path
}

struct Fixture {
    _dir: tempfile::TempDir,
    vq_vs: VarStore,
    vq: VqModel,
    lpips: std::path::PathBuf,
    discriminator: std::path::PathBuf,
    disc_start: i64,
    expected: BTreeMap<String, Tensor>,
}

impl Fixture {
    fn load() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let m = &manifest()["vq_loss"];
        let mut vq_vs = VarStore::new(Device::Cpu);
        let vq = VqModel::new(&vq_vs.root(), vq_config_from(&m["vq"])).unwrap();
        vq_vs.double();
        weights::load_strict(&vq_vs, &part(dir.path(), "vq.")).unwrap();
        Fixture {
            lpips: part(dir.path(), "lpips."),
            discriminator: part(dir.path(), "discriminator."),
            _dir: dir,
            vq_vs,
            vq,
            disc_start: m["disc_start"].as_i64().unwrap(),
            expected: expected("vq_loss"),
        }
    }

    /// The objective with a fresh discriminator (the fixture's initial batch-norm statistics);
    /// the VarStores are returned so that they outlive the modules.
    fn loss(&self, config: VqLossConfig) -> (VarStore, VarStore, VqLoss) {
        let (mut lpips_vs, lpips) = Lpips::load(&self.lpips, Device::Cpu).unwrap();
        lpips_vs.double();
        let mut disc_vs = VarStore::new(Device::Cpu);
        let discriminator = PatchGan::new(&disc_vs.root(), config.discriminator.clone());
        disc_vs.double();
        weights::load_strict(&disc_vs, &self.discriminator).unwrap();
        (lpips_vs, disc_vs, VqLoss::new(config, lpips, discriminator))
    }

    fn config(&self) -> VqLossConfig {
        let m = &manifest()["vq_loss"];
        VqLossConfig {
            disc_start: self.disc_start,
            disc_weight: m["disc_weight"].as_f64().unwrap(),
            // The fixtures ran LPIPS with its head dropout off.
            perceptual_dropout: false,
            discriminator: PatchGanConfig {
                input_channels: 3,
                channels: m["disc_channels"].as_i64().unwrap(),
                layers: m["disc_layers"].as_i64().unwrap(),
            },
            ..VqLossConfig::default()
        }
    }

    fn scalar(&self, name: &str, index: i64) -> f64 {
        self.expected[name].double_value(&[index])
    }
}

#[track_caller]
fn assert_scalar(what: &str, ours: f64, theirs: f64) {
    let err = (ours - theirs).abs() / theirs.abs().max(1e-6);
    eprintln!("{what}: {ours:.8} vs LlamaGen {theirs:.8} (relative error {err:.1e})");
    assert!(
        err <= LOSS_TOLERANCE,
        "{what}: {ours} vs LlamaGen {theirs} (relative error {err:.2e})"
    );
}

fn value(t: &Tensor) -> f64 {
    t.double_value(&[])
}

/// Gradients below this fraction of the network's largest are zero by symmetry (a bias
/// before a group norm, the key bias of an attention) and hold rounding noise only.
const SYMMETRY_ZERO: f64 = 1e-9;

/// The largest |gradient| LlamaGen recorded for the parameters under `prefix`.
fn largest_gradient(expected: &BTreeMap<String, Tensor>, prefix: &str) -> f64 {
    expected
        .iter()
        .filter(|(k, _)| k.starts_with(prefix) && !k.ends_with(".norm"))
        .map(|(_, v)| v.abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

/// A gradient against its fixture entry (whole, or the strided sample and the norm), within
/// [`GRADIENT_TOLERANCE`] of its own largest element; a gradient that is zero by symmetry in
/// LlamaGen's must be as small in ours.
#[track_caller]
fn assert_gradient(expected: &BTreeMap<String, Tensor>, key: &str, grad: &Tensor, largest: f64) {
    let flat = grad.reshape([-1]);
    let theirs_max = expected
        .iter()
        .filter(|(k, _)| k.as_str() == key || k.starts_with(&format!("{key}.strided")))
        .map(|(_, v)| v.abs().max().double_value(&[]))
        .next()
        .unwrap_or_else(|| panic!("the fixture has no gradient for {key}"));
    if theirs_max < SYMMETRY_ZERO * largest {
        let ours_max = flat.abs().max().double_value(&[]);
        eprintln!("{key}: zero by symmetry, ours {ours_max:.1e}, LlamaGen {theirs_max:.1e}");
        assert!(
            ours_max < SYMMETRY_ZERO * largest,
            "{key}: LlamaGen's gradient is 0 up to rounding ({theirs_max:.1e}), ours reaches {ours_max:.1e}"
        );
        return;
    }
    let scale = theirs_max;
    let compare = |what: &str, ours: &Tensor, theirs: &Tensor| {
        let ours = ours.to_kind(Kind::Double);
        let theirs = theirs.to_kind(Kind::Double);
        assert_eq!(ours.size(), theirs.size(), "{what}: shapes differ");
        let err = (ours - theirs).abs().max().double_value(&[]) / scale;
        eprintln!("{what}: relative error {err:.2e}");
        assert!(
            err <= GRADIENT_TOLERANCE,
            "{what}: relative error {err:.3e} > {GRADIENT_TOLERANCE:.0e}"
        );
    };
    if let Some(whole) = expected.get(key) {
        compare(key, &flat, whole);
        return;
    }
    let (name, sample) = expected
        .iter()
        .find(|(k, _)| k.starts_with(&format!("{key}.strided")))
        .unwrap_or_else(|| panic!("the fixture has no gradient for {key}"));
    let stride: i64 = name.rsplit("strided").next().unwrap().parse().unwrap();
    compare(key, &flat.slice(0, 0, None, stride), sample);
    let norm = flat.to_kind(Kind::Double).norm();
    assert_close(
        &format!("{key} norm"),
        &norm.reshape([1]),
        &expected[&format!("{key}.norm")],
        GRADIENT_TOLERANCE,
    );
}

#[test]
fn every_loss_term_and_the_logits_match_llamagen_before_and_at_disc_start() {
    let f = Fixture::load();
    let e = &f.expected;
    let x = &e["images"];
    let (recon, q) = f.vq.reconstruct(x, true).unwrap();
    assert_close("reconstruction", &recon, &e["recon"], LOSS_TOLERANCE);
    let quantizer = [
        q.codebook_loss.as_ref().map(value),
        q.commit_loss.as_ref().map(value),
        q.entropy_loss.as_ref().map(value),
        q.codebook_usage,
    ];
    for (i, (name, ours)) in ["codebook", "commitment", "entropy", "usage"]
        .iter()
        .zip(quantizer)
        .enumerate()
    {
        assert_scalar(name, ours.unwrap(), f.scalar("quantizer", i as i64));
    }

    for (label, step) in [("before", f.disc_start - 1), ("after", f.disc_start)] {
        let (_l, _d, loss) = f.loss(f.config());
        let g = loss
            .generator(x, &recon, &q, step, Some(f.vq.last_layer()), true)
            .unwrap();
        let d = loss.discriminator(x, &recon, step, true);
        let terms = format!("terms_{label}");
        assert_scalar(
            &format!("reconstruction ({label})"),
            value(&g.reconstruction),
            f.scalar(&terms, 0),
        );
        assert_scalar(
            &format!("perceptual ({label})"),
            value(&g.perceptual),
            f.scalar(&terms, 1),
        );
        assert_scalar(
            &format!("weighted adversarial ({label})"),
            value(&g.adversarial),
            f.scalar(&terms, 2),
        );
        assert_scalar(
            &format!("discriminator loss ({label})"),
            value(&d.total),
            f.scalar(&terms, 3),
        );
        assert_scalar(
            &format!("mean real logit ({label})"),
            d.logits_real,
            f.scalar(&terms, 4),
        );
        assert_scalar(
            &format!("mean fake logit ({label})"),
            d.logits_fake,
            f.scalar(&terms, 5),
        );
        assert_scalar(
            &format!("generator total ({label})"),
            value(&g.total),
            f.scalar(&format!("generator_total_{label}"), 0),
        );
        assert_scalar(
            &format!("discriminator total ({label})"),
            value(&d.total),
            f.scalar(&format!("discriminator_total_{label}"), 0),
        );
        assert_close(
            &format!("real logits ({label})"),
            &loss.discriminator.forward(x, true),
            &e[&format!("logits_real_{label}")],
            LOSS_TOLERANCE,
        );
    }
}

#[test]
fn one_generator_and_one_discriminator_step_have_llamagens_gradients() {
    let f = Fixture::load();
    let e = &f.expected;
    let x = &e["images"];
    let (_l, disc_vs, loss) = f.loss(f.config());
    let (recon, q) = f.vq.reconstruct(x, true).unwrap();
    let g = loss
        .generator(x, &recon, &q, f.disc_start, Some(f.vq.last_layer()), true)
        .unwrap();
    g.total.backward();
    let mut checked = 0;
    let largest = largest_gradient(e, "grad.vq.");
    for (name, var) in f.vq_vs.variables() {
        if var.requires_grad() {
            assert_gradient(e, &format!("grad.vq.{name}"), &var.grad(), largest);
            checked += 1;
        }
    }
    for mut var in disc_vs.trainable_variables() {
        var.zero_grad();
    }
    let d = loss.discriminator(x, &recon, f.disc_start, true);
    d.total.backward();
    let largest = largest_gradient(e, "grad.discriminator.");
    for (name, var) in disc_vs.variables() {
        if var.requires_grad() {
            assert_gradient(
                e,
                &format!("grad.discriminator.{name}"),
                &var.grad(),
                largest,
            );
            checked += 1;
        } else {
            // Running statistics after the three discriminator passes of the step.
            assert_close(
                &format!("{name} after the step"),
                &var.to_kind(Kind::Double),
                &e[&format!("after_step.discriminator.{name}")].to_kind(Kind::Double),
                LOSS_TOLERANCE,
            );
        }
    }
    let expected_grads = e
        .keys()
        .filter(|k| k.starts_with("grad.") && !k.ends_with(".norm"))
        .count();
    assert_eq!(checked, expected_grads, "a gradient was not compared");
    assert_scalar(
        "generator step loss",
        value(&g.total),
        f.scalar("step_totals", 0),
    );
    assert_scalar(
        "discriminator step loss",
        value(&d.total),
        f.scalar("step_totals", 1),
    );
}

#[test]
fn the_loss_options_match_llamagen() {
    let f = Fixture::load();
    let x = &f.expected["images"];
    type Change = fn(&mut VqLossConfig);
    let variants: [(&str, Change); 4] = [
        ("adaptive", |c| c.disc_adaptive_weight = true),
        ("vanilla", |c| c.disc_loss = DiscLoss::Vanilla),
        ("non_saturating", |c| {
            c.disc_loss = DiscLoss::NonSaturating;
            c.gen_loss = GenLoss::NonSaturating;
        }),
        ("l1", |c| {
            c.reconstruction_loss = RecLoss::L1;
            c.perceptual_weight = 0.5;
            c.reconstruction_weight = 2.0;
        }),
    ];
    for (name, change) in variants {
        let mut config = f.config();
        change(&mut config);
        let (_l, _d, loss) = f.loss(config);
        let (recon, q) = f.vq.reconstruct(x, true).unwrap();
        let g = loss
            .generator(x, &recon, &q, f.disc_start, Some(f.vq.last_layer()), true)
            .unwrap();
        let d = loss.discriminator(x, &recon, f.disc_start, true);
        let key = format!("variant_{name}");
        assert_scalar(
            &format!("{name}: generator"),
            value(&g.total),
            f.scalar(&key, 0),
        );
        assert_scalar(
            &format!("{name}: discriminator"),
            value(&d.total),
            f.scalar(&key, 1),
        );
    }
}
