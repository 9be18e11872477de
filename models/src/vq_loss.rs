//! The objective of LlamaGen's tokenizer training (`tokenizer/tokenizer_image/vq_loss.py`):
//! for the tokenizer, reconstruction + perceptual (LPIPS) + adversarial (PatchGAN) + the
//! quantizer's codebook, commitment and entropy terms; for the discriminator, a hinge (or
//! vanilla, or non-saturating) loss on real images against reconstructions. Both adversarial
//! terms are weighted 0 before `disc_start` and `disc_weight` from it on.
//!
//! Each term is returned on its own, weighted as it enters the total, so that a trainer can log
//! what LlamaGen logs.

use tch::Tensor;

use crate::ModelError;
use crate::lpips::Lpips;
use crate::patchgan::{PatchGan, PatchGanConfig};
use crate::vq::Quantized;

/// The discriminator's objective.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiscLoss {
    /// mean(relu(1 - real)) / 2 + mean(relu(1 + fake)) / 2 (LlamaGen's default).
    Hinge,
    /// mean(softplus(-real)) / 2 + mean(softplus(fake)) / 2.
    Vanilla,
    /// The reference's `non_saturating_d_loss`, arguments as it passes them.
    NonSaturating,
}

/// The tokenizer's adversarial objective.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GenLoss {
    /// -mean(fake) (LlamaGen's default).
    Hinge,
    /// The reference's `non_saturating_gen_loss`, arguments as it passes them.
    NonSaturating,
}

/// Pixel reconstruction loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecLoss {
    L1,
    /// Mean squared error (LlamaGen's default).
    L2,
}

macro_rules! parse_enum {
    ($ty:ty, $what:literal, $($text:literal => $value:expr),+) => {
        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($value),)+
                    other => Err(format!(concat!($what, " is one of {}, got {:?}"),
                        [$($text),+].join(", "), other)),
                }
            }
        }
    };
}
parse_enum!(DiscLoss, "the discriminator loss", "hinge" => DiscLoss::Hinge,
    "vanilla" => DiscLoss::Vanilla, "non-saturating" => DiscLoss::NonSaturating);
parse_enum!(GenLoss, "the generator's adversarial loss", "hinge" => GenLoss::Hinge,
    "non-saturating" => GenLoss::NonSaturating);
parse_enum!(RecLoss, "the reconstruction loss", "l1" => RecLoss::L1, "l2" => RecLoss::L2);

/// Weights and switches of the objective; defaults are those of LlamaGen's `vq_train.py`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VqLossConfig {
    /// The first step (counted from 1) with adversarial terms (the paper: 20,000).
    pub disc_start: i64,
    /// Weight of both adversarial terms from `disc_start` on (LlamaGen's runs: 0.5).
    pub disc_weight: f64,
    /// Scale the tokenizer's adversarial term by |grad rec| / |grad adv| at the decoder's last
    /// layer (taming-transformers' rule; LlamaGen has it and leaves it off).
    pub disc_adaptive_weight: bool,
    pub disc_loss: DiscLoss,
    pub gen_loss: GenLoss,
    pub reconstruction_loss: RecLoss,
    pub reconstruction_weight: f64,
    pub perceptual_weight: f64,
    /// LPIPS' head dropout while training. LlamaGen's trainer switches its whole loss module to
    /// training mode, so its perceptual loss trains with dropout on; false computes the metric
    /// as LPIPS defines it.
    pub perceptual_dropout: bool,
    pub discriminator: PatchGanConfig,
}

impl Default for VqLossConfig {
    fn default() -> Self {
        VqLossConfig {
            disc_start: 20_000,
            disc_weight: 0.5,
            disc_adaptive_weight: false,
            disc_loss: DiscLoss::Hinge,
            gen_loss: GenLoss::Hinge,
            reconstruction_loss: RecLoss::L2,
            reconstruction_weight: 1.0,
            perceptual_weight: 1.0,
            perceptual_dropout: true,
            discriminator: PatchGanConfig::default(),
        }
    }
}

impl VqLossConfig {
    /// The adversarial weight at `step` (counted from 1, as the reference's `global_step`).
    pub fn disc_weight_at(&self, step: i64) -> f64 {
        if step < self.disc_start {
            0.0
        } else {
            self.disc_weight
        }
    }
}

/// The tokenizer's loss and its parts, each as it enters `total`.
pub struct GeneratorLoss {
    /// Scalar to back-propagate.
    pub total: Tensor,
    pub reconstruction: Tensor,
    pub perceptual: Tensor,
    /// Adversarial term times its weight (0 before `disc_start`).
    pub adversarial: Tensor,
    pub codebook: Tensor,
    pub commit: Tensor,
    pub entropy: Tensor,
    /// The adaptive factor (1 unless `disc_adaptive_weight`).
    pub adaptive_weight: f64,
}

/// The discriminator's loss and its mean logits.
pub struct DiscriminatorLoss {
    /// Scalar to back-propagate (0 before `disc_start`).
    pub total: Tensor,
    pub logits_real: f64,
    pub logits_fake: f64,
}

/// The objective's modules: LPIPS (frozen) and the discriminator (trained by its own optimizer).
pub struct VqLoss {
    pub config: VqLossConfig,
    pub lpips: Lpips,
    pub discriminator: PatchGan,
}

impl VqLoss {
    pub fn new(config: VqLossConfig, lpips: Lpips, discriminator: PatchGan) -> Self {
        VqLoss {
            config,
            lpips,
            discriminator,
        }
    }

    /// The tokenizer's loss at `step` (from 1). inputs and reconstructions: [B, 3, H, W] in
    /// [-1, 1]; `quantized` is the training-mode quantization of inputs; `last_layer` is the
    /// decoder's last weight, needed for the adaptive weight. `train` is the loss modules' mode
    /// (LPIPS dropout if configured, batch statistics in the discriminator).
    pub fn generator(
        &self,
        inputs: &Tensor,
        reconstructions: &Tensor,
        quantized: &Quantized,
        step: i64,
        last_layer: Option<&Tensor>,
        train: bool,
    ) -> Result<GeneratorLoss, ModelError> {
        let c = &self.config;
        let acc = crate::accumulation(reconstructions);
        let rec = match c.reconstruction_loss {
            RecLoss::L2 => (inputs - reconstructions).square().mean(acc),
            RecLoss::L1 => (inputs - reconstructions).abs().mean(acc),
        } * c.reconstruction_weight;
        let perceptual = self
            .lpips
            .forward(inputs, reconstructions, train && c.perceptual_dropout)
            .mean(acc)
            * c.perceptual_weight;
        let logits_fake = self.discriminator.forward(reconstructions, train);
        let adversarial = match c.gen_loss {
            GenLoss::Hinge => -logits_fake.mean(acc),
            GenLoss::NonSaturating => {
                bce_with_logits_as_called(&logits_fake.ones_like(), &logits_fake)
            }
        };
        let adaptive_weight = if c.disc_adaptive_weight {
            let last = last_layer.ok_or_else(|| {
                ModelError::Input("the adaptive weight needs the decoder's last layer".into())
            })?;
            adaptive_weight(&(&rec + &perceptual), &adversarial, last)?
        } else {
            1.0
        };
        let adversarial = adversarial * (adaptive_weight * c.disc_weight_at(step));
        let term = |t: &Option<Tensor>, name: &str| {
            t.as_ref().map(Tensor::shallow_clone).ok_or_else(|| {
                ModelError::Input(format!(
                    "the {name} loss needs a training-mode quantization"
                ))
            })
        };
        let codebook = term(&quantized.codebook_loss, "codebook")?;
        let commit = term(&quantized.commit_loss, "commitment")?;
        let entropy = term(&quantized.entropy_loss, "entropy")?;
        let total = &rec + &perceptual + &adversarial + &codebook + &commit + &entropy;
        Ok(GeneratorLoss {
            total,
            reconstruction: rec,
            perceptual,
            adversarial,
            codebook,
            commit,
            entropy,
            adaptive_weight,
        })
    }

    /// The discriminator's loss at `step` (from 1) on real inputs and (detached)
    /// reconstructions, both [B, 3, H, W].
    pub fn discriminator(
        &self,
        inputs: &Tensor,
        reconstructions: &Tensor,
        step: i64,
        train: bool,
    ) -> DiscriminatorLoss {
        let acc = crate::accumulation(reconstructions);
        let real = self.discriminator.forward(&inputs.detach(), train);
        let fake = self.discriminator.forward(&reconstructions.detach(), train);
        let loss = match self.config.disc_loss {
            DiscLoss::Hinge => {
                ((-&real + 1.0).relu().mean(acc) + (&fake + 1.0).relu().mean(acc)) * 0.5
            }
            DiscLoss::Vanilla => ((-&real).softplus().mean(acc) + fake.softplus().mean(acc)) * 0.5,
            DiscLoss::NonSaturating => {
                (bce_with_logits_as_called(&real.ones_like(), &real)
                    + bce_with_logits_as_called(&fake.zeros_like(), &fake))
                    * 0.5
            }
        };
        DiscriminatorLoss {
            total: loss * self.config.disc_weight_at(step),
            logits_real: real.mean(acc).double_value(&[]),
            logits_fake: fake.mean(acc).double_value(&[]),
        }
    }
}

/// `F.binary_cross_entropy_with_logits(input, target)` with the reference's argument order: its
/// non-saturating losses pass the constant as the logits and the logits as the target. Kept
/// as written so that the option trains as LlamaGen's does.
fn bce_with_logits_as_called(input: &Tensor, target: &Tensor) -> Tensor {
    // (1 - t) x + log(1 + exp(-x)), the mean over elements.
    ((-target + 1.0) * input + (-input).softplus()).mean(crate::accumulation(target))
}

/// taming-transformers' adaptive weight: |d rec / d W| / (|d adv / d W| + 1e-4), clamped to
/// [0, 1e4], with W the decoder's last weight; a constant for the backward pass.
fn adaptive_weight(rec: &Tensor, adversarial: &Tensor, last: &Tensor) -> Result<f64, ModelError> {
    let rec_grad = Tensor::f_run_backward(&[rec], &[last], true, false)?;
    let adv_grad = Tensor::f_run_backward(&[adversarial], &[last], true, false)?;
    let norm = |g: &[Tensor]| g[0].norm().double_value(&[]);
    Ok((norm(&rec_grad) / (norm(&adv_grad) + 1e-4)).clamp(0.0, 1e4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adversarial_weight_switches_on_at_disc_start() {
        let c = VqLossConfig {
            disc_start: 3,
            ..Default::default()
        };
        assert_eq!(c.disc_weight_at(2), 0.0);
        assert_eq!(c.disc_weight_at(3), 0.5);
        assert_eq!(
            "non-saturating".parse::<DiscLoss>(),
            Ok(DiscLoss::NonSaturating)
        );
        assert!("wgan".parse::<GenLoss>().unwrap_err().contains("hinge"));
    }

    #[test]
    fn bce_matches_its_definition() {
        // x = 0.3, t = 0.8: max(x, 0) - x t + log(1 + exp(-|x|)).
        let x = Tensor::from_slice(&[0.3f32]);
        let t = Tensor::from_slice(&[0.8f32]);
        let expected = 0.3 - 0.3 * 0.8 + (1.0f64 + (-0.3f64).exp()).ln();
        let got = bce_with_logits_as_called(&x, &t).double_value(&[]);
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
    }
}
